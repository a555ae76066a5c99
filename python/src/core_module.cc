// eplb._core: the placement model, policies, metrics and map formats of core/, for Python.
//
// Arrays cross as numpy arrays (the `eplb` package converts torch tensors). Loads may have any
// integer or floating dtype and are read as float64; index tables any integer dtype, read as
// int32 after a range check. Tables come back as new int64 arrays. Errors of core/ keep their
// message: bad input (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE) raises ValueError, a
// missing file FileNotFoundError, any other failure to read or write a file OSError. Nothing
// returns half-done: a call either returns a whole new value or raises and changes nothing.
//
// Planning releases the GIL; ExpertMap is immutable, so a map may be shared across threads.
#include <pybind11/numpy.h>
#include <pybind11/operators.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/balanced_policy.h"
#include "core/check.h"
#include "core/expert_map.h"
#include "core/layer_ids.h"
#include "core/load.h"
#include "core/load_formats.h"
#include "core/map_files.h"
#include "core/map_format.h"
#include "core/metrics.h"
#include "core/policy.h"
#include "core/shape.h"

namespace py = pybind11;

namespace eplb::python {
namespace {

[[noreturn]] void RaiseAs(PyObject* type, const std::string& message) {
  PyErr_SetString(type, message.c_str());
  throw py::error_already_set();
}

// Raises the Python exception for a core error. `file_io`: the status of reading or writing a file,
// where anything but malformed content or a missing file is an OSError.
[[noreturn]] void Raise(const absl::Status& status, bool file_io = false) {
  const std::string message(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      throw py::value_error(message);
    case absl::StatusCode::kNotFound:
      RaiseAs(PyExc_FileNotFoundError, message);
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      if (!file_io) throw py::value_error(message);
      RaiseAs(PyExc_OSError, message);
    default:
      if (file_io) RaiseAs(PyExc_OSError, message);
      throw std::runtime_error(message);
  }
}

void ThrowIfError(const absl::Status& status, bool file_io = false) {
  if (!status.ok()) Raise(status, file_io);
}

template <typename T>
T ValueOrThrow(absl::StatusOr<T> value, bool file_io = false) {
  if (!value.ok()) Raise(value.status(), file_io);
  return *std::move(value);
}

std::string ShapeText(const py::array& a) {
  std::vector<std::string> dims;
  for (py::ssize_t d = 0; d < a.ndim(); ++d) dims.push_back(std::to_string(a.shape(d)));
  return absl::StrCat("(", absl::StrJoin(dims, ", "), a.ndim() == 1 ? ",)" : ")");
}

// Dimension d of `a` (checked to fit int32; the core factories check the real ranges).
int32_t Dim(const py::array& a, py::ssize_t d, const char* name) {
  if (a.shape(d) > std::numeric_limits<int32_t>::max()) {
    throw py::value_error(absl::StrCat(name, " has shape ", ShapeText(a), ", too large"));
  }
  return static_cast<int32_t>(a.shape(d));
}

// Checks that `a` has `ndim` dimensions and a dtype of one of `kinds` (numpy kind letters).
void CheckArray(const py::array& a, const char* name, py::ssize_t ndim, const char* what,
                const char* kinds, const char* kinds_text) {
  const char kind = a.dtype().kind();
  if (std::string_view(kinds).find(kind) == std::string_view::npos) {
    throw py::value_error(absl::StrCat(name, " has dtype ", std::string(py::str(a.dtype())),
                                       ", expected ", kinds_text));
  }
  if (a.ndim() != ndim) {
    throw py::value_error(
        absl::StrCat(name, " has shape ", ShapeText(a), ", expected ", ndim, "-D ", what));
  }
}

// Calls visit(data, size) with the elements of `array`, C-contiguous, as their own C type for the
// integer and floating dtypes of 1 to 8 bytes in native byte order (each element is read once:
// no intermediate array), or else converted to Fallback first (float16, byte-swapped arrays).
template <typename Fallback, typename Visit>
void VisitElements(const py::array& array, Visit&& visit) {
  const py::array a = py::array::ensure(array, py::array::c_style);
  if (!a) throw py::error_already_set();
  const size_t n = static_cast<size_t>(a.size());
  const char kind = a.dtype().kind();
  const py::ssize_t size = a.itemsize();
  const void* data = a.data();
  if (a.dtype().byteorder() != '>') {
    if (kind == 'f' && size == 8) return visit(static_cast<const double*>(data), n);
    if (kind == 'f' && size == 4) return visit(static_cast<const float*>(data), n);
    if (kind == 'i' && size == 8) return visit(static_cast<const int64_t*>(data), n);
    if (kind == 'i' && size == 4) return visit(static_cast<const int32_t*>(data), n);
    if (kind == 'i' && size == 2) return visit(static_cast<const int16_t*>(data), n);
    if (kind == 'i' && size == 1) return visit(static_cast<const int8_t*>(data), n);
    if (kind == 'u' && size == 8) return visit(static_cast<const uint64_t*>(data), n);
    if (kind == 'u' && size == 4) return visit(static_cast<const uint32_t*>(data), n);
    if (kind == 'u' && size == 2) return visit(static_cast<const uint16_t*>(data), n);
    if (kind == 'u' && size == 1) return visit(static_cast<const uint8_t*>(data), n);
  }
  const auto converted =
      py::array_t<Fallback, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!converted) throw py::error_already_set();
  visit(converted.data(), n);
}

// Any array-like (a numpy array, a CPU torch tensor, nested lists) as a numpy array, without a
// copy where it already is one.
py::array AsArray(const py::object& value) {
  py::array array = py::array::ensure(value);
  if (!array) throw py::error_already_set();
  return array;
}

// A load [L, E] of any integer or floating dtype as a LoadMatrix (not validated: the callers'
// core functions name bad entries).
LoadMatrix ToLoad(const py::array& array, const char* name) {
  CheckArray(array, name, 2, "[layers, experts]", "iuf", "an integer or floating dtype");
  LoadMatrix load;
  load.num_layers = Dim(array, 0, name);
  load.num_experts = Dim(array, 1, name);
  VisitElements<double>(array,
                        [&](const auto* data, size_t n) { load.values.assign(data, data + n); });
  return load;
}

// Integer values as int32, refusing those outside its range.
template <typename T>
void ToInt32(const char* name, const T* data, size_t n, std::vector<int32_t>& out) {
  out.resize(n);
  for (size_t i = 0; i < n; ++i) {
    if (!std::in_range<int32_t>(data[i])) {
      throw py::value_error(absl::StrCat(name, " holds ", data[i], " at flat index ", i,
                                         ", outside the int32 range"));
    }
    out[i] = static_cast<int32_t>(data[i]);
  }
}

// An index table of `ndim` dimensions and any integer dtype as int32 values, row-major. Values
// outside int32 are refused here; the core factories check the real ranges.
std::vector<int32_t> ToIndices(const py::array& array, const char* name, py::ssize_t ndim,
                               const char* what) {
  CheckArray(array, name, ndim, what, "iu", "an integer dtype");
  std::vector<int32_t> out;
  VisitElements<int64_t>(array, [&](const auto* data, size_t n) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(data)>>;
    if constexpr (!std::is_integral_v<T>) {
      EPLB_CHECK(false, "CheckArray let a floating dtype through");
    } else {
      ToInt32(name, data, n, out);
    }
  });
  return out;
}

template <typename T>
py::array_t<int64_t> ToNumpy(const T& values, std::vector<py::ssize_t> shape) {
  py::array_t<int64_t> out(shape);
  std::copy(values.begin(), values.end(), out.mutable_data());
  return out;
}

py::array_t<double> ToNumpyDouble(const std::vector<double>& values) {
  py::array_t<double> out(static_cast<py::ssize_t>(values.size()));
  std::copy(values.begin(), values.end(), out.mutable_data());
  return out;
}

// An integer argument as int32. Python integers are unbounded: a value outside int32 is refused
// here with the field's documented range [lo, hi] (core checks the values inside int32).
int32_t Narrow(const char* name, int64_t value, int64_t lo, int64_t hi) {
  if (!std::in_range<int32_t>(value)) {
    throw py::value_error(
        absl::StrCat(name, " = ", value, " is out of range [", lo, ", ", hi, "]"));
  }
  return static_cast<int32_t>(value);
}

int32_t NumRanks(int64_t value) { return Narrow("num_ranks", value, 1, ShapeLimits::kMaxRanks); }
int32_t NumExperts(int64_t value, int64_t lo = 1) {
  return Narrow("num_logical_experts", value, lo, ShapeLimits::kMaxLogicalExperts);
}

// P slots on R ranks. SlotLayout requires 1 ≤ R ≤ P.
SlotLayout LayoutOf(int32_t num_slots, int64_t num_ranks) {
  if (num_ranks < 1 || num_ranks > num_slots) {
    throw py::value_error(absl::StrCat("num_ranks = ", num_ranks, " is out of range [1, ",
                                       num_slots, "] (the slots)"));
  }
  return SlotLayout(num_slots, static_cast<int32_t>(num_ranks));
}

// phy2log [L, P] → ExpertMap with R ranks (replicas numbered in slot order).
ExpertMap MapFromPhy2Log(const py::object& phy2log_object, int64_t num_logical_experts,
                         int64_t num_ranks) {
  const py::array phy2log = AsArray(phy2log_object);
  std::vector<int32_t> table = ToIndices(phy2log, "phy2log", 2, "[layers, slots]");
  const int32_t L = Dim(phy2log, 0, "phy2log"), P = Dim(phy2log, 1, "phy2log");
  return ValueOrThrow(ExpertMap::FromPhy2Log(L, NumExperts(num_logical_experts),
                                             LayoutOf(P, num_ranks), std::move(table)));
}

ExpertMap MapFromTables(const py::object& phy2log_object, const py::object& log2phy_object,
                        const py::object& logcnt_object, int64_t num_ranks) {
  const py::array phy2log = AsArray(phy2log_object), log2phy = AsArray(log2phy_object),
                  logcnt = AsArray(logcnt_object);
  std::vector<int32_t> p2l = ToIndices(phy2log, "phy2log", 2, "[layers, slots]");
  const std::vector<int32_t> l2p =
      ToIndices(log2phy, "log2phy", 3, "[layers, experts, slots - experts + 1]");
  const std::vector<int32_t> cnt = ToIndices(logcnt, "logcnt", 2, "[layers, experts]");
  const int32_t L = Dim(phy2log, 0, "phy2log"), P = Dim(phy2log, 1, "phy2log");
  const int32_t E = Dim(logcnt, 1, "logcnt");
  const SlotLayout layout = LayoutOf(P, num_ranks);
  if (Dim(log2phy, 0, "log2phy") != L || Dim(logcnt, 0, "logcnt") != L) {
    throw py::value_error(absl::StrCat("phy2log has ", L, " layers, log2phy ",
                                       Dim(log2phy, 0, "log2phy"), ", logcnt ",
                                       Dim(logcnt, 0, "logcnt")));
  }
  if (Dim(log2phy, 1, "log2phy") != E || Dim(log2phy, 2, "log2phy") != P - E + 1) {
    throw py::value_error(absl::StrCat("log2phy has shape ", ShapeText(log2phy), ", expected (", L,
                                       ", ", E, ", ", P - E + 1, ")"));
  }
  return ValueOrThrow(ExpertMap::FromTables(L, E, layout, std::move(p2l), l2p, cnt));
}

// The padded log2phy table [L, E, P − E + 1], written straight into the array.
py::array_t<int64_t> Log2PhyArray(const ExpertMap& map) {
  const int32_t L = map.num_layers(), E = map.num_logical_experts(), W = map.log2phy_width();
  py::array_t<int64_t> out({py::ssize_t{L}, py::ssize_t{E}, py::ssize_t{W}});
  int64_t* data = out.mutable_data();
  std::fill(data, data + out.size(), -1);
  for (int32_t l = 0; l < L; ++l) {
    for (int32_t e = 0; e < E; ++e) {
      const std::span<const int32_t> slots = map.replicas(l, e);
      std::copy(slots.begin(), slots.end(), data + (static_cast<size_t>(l) * E + e) * W);
    }
  }
  return out;
}

std::vector<int32_t> SlotsPerRank(const ExpertMap& map) {
  std::vector<int32_t> slots(map.num_ranks());
  for (int32_t r = 0; r < map.num_ranks(); ++r) slots[r] = map.layout().SlotsOnRank(r);
  return slots;
}

MapFormat FormatOf(const std::string& name) { return ValueOrThrow(ParseMapFormat(name)); }

// A map version to write (the eplb format carries it; ≥ 0).
int64_t Version(int64_t version) {
  if (version < 0) throw py::value_error(absl::StrCat("version = ", version, " is negative"));
  return version;
}

// The numbering of an engine file's rows: `layer_ids` is None, a list such as "3-60" or a
// sequence of hidden-layer indices; `num_hidden_layers` alone numbers every hidden layer a MoE
// layer (as eplbctl's flags do).
std::optional<LayerIds> LayerIdsOf(const py::object& layer_ids,
                                   std::optional<int64_t> num_hidden_layers) {
  if (layer_ids.is_none() && !num_hidden_layers) return std::nullopt;
  const int64_t hidden = num_hidden_layers.value_or(0);
  if (layer_ids.is_none()) return ValueOrThrow(LayerIds::FromRange(0, hidden));
  if (py::isinstance<py::str>(layer_ids)) {
    return ValueOrThrow(LayerIds::Parse(layer_ids.cast<std::string>(), hidden));
  }
  std::vector<int64_t> ids;
  for (const py::handle id : layer_ids) {
    if (!py::isinstance<py::int_>(id)) {
      throw py::value_error("layer ids: " + std::string(py::repr(id)) + " is not an integer");
    }
    ids.push_back(id.cast<int64_t>());
  }
  return ValueOrThrow(LayerIds::FromIds(std::move(ids), hidden));
}

MapShapeHints Hints(std::optional<int64_t> num_logical_experts, std::optional<int64_t> num_ranks,
                    std::optional<LayerIds> layer_ids) {
  return {.num_logical_experts = num_logical_experts ? NumExperts(*num_logical_experts) : 0,
          .num_ranks = num_ranks ? NumRanks(*num_ranks) : 0,
          .layer_ids = std::move(layer_ids)};
}

// Layer ids that fit `map` (ValueError naming both counts otherwise), or nullptr.
const LayerIds* FittingLayerIds(const ExpertMap& map, const std::optional<LayerIds>& layer_ids) {
  if (!layer_ids) return nullptr;
  ThrowIfError(layer_ids->CheckFits(map.num_layers(), "the map"));
  return &*layer_ids;
}

// A path argument (str, bytes or os.PathLike) as a string. A NUL would cut the path short at the
// system call: refused.
std::string PathOf(const py::object& path) {
  const py::object fspath = py::module_::import("os").attr("fspath")(path);
  std::string text = py::isinstance<py::bytes>(fspath) ? std::string(py::bytes(fspath))
                                                       : fspath.cast<std::string>();
  if (text.find('\0') != std::string::npos) {
    throw py::value_error("path " + std::string(py::repr(path)) + " holds a NUL character");
  }
  return text;
}

// Routing shares [L, P] (any integer or floating dtype) for `map`, checked as the map format
// checks them (ValueError naming the shape or the first bad entry).
std::vector<double> SharesOf(const py::object& object, const ExpertMap& map) {
  const py::array array = AsArray(object);
  CheckArray(array, "replica_shares", 2, "[layers, physical experts]", "iuf",
             "an integer or floating dtype");
  if (array.shape(0) != map.num_layers() || array.shape(1) != map.num_physical_experts()) {
    throw py::value_error(absl::StrCat("replica_shares has shape ", ShapeText(array),
                                       ", expected (", map.num_layers(), ", ",
                                       map.num_physical_experts(), ") as the map"));
  }
  std::vector<double> share;
  VisitElements<double>(array, [&](const auto* data, size_t n) { share.assign(data, data + n); });
  ThrowIfError(CheckReplicaShares(map, share));
  return share;
}

py::array_t<double> SharesArray(const std::vector<double>& share, const ExpertMap& map) {
  py::array_t<double> out({static_cast<py::ssize_t>(map.num_layers()),
                           static_cast<py::ssize_t>(map.num_physical_experts())});
  std::copy(share.begin(), share.end(), out.mutable_data());
  return out;
}

// The shares an argument names: None (none), "optimal" (OptimalReplicaShareTable under `load`,
// which must be given) or a table [L, P].
std::optional<std::vector<double>> SharesArgument(const py::object& object, const ExpertMap& map,
                                                  const LoadMatrix* load) {
  if (object.is_none()) return std::nullopt;
  if (py::isinstance<py::str>(object)) {
    const std::string name = object.cast<std::string>();
    if (name != "optimal" || load == nullptr) {
      throw py::value_error(absl::StrCat("replica_shares = ", std::string(py::repr(object)),
                                         " is not ", load ? "\"optimal\" or " : "",
                                         "an array [layers, physical experts]"));
    }
    py::gil_scoped_release release;
    return OptimalReplicaShareTable(map, *load);
  }
  return SharesOf(object, map);
}

// The result of evaluate(): quality of `map` under a load, and the migration from `previous`.
struct Evaluation {
  std::vector<double> balancedness;
  std::vector<double> max_over_bound;
  std::vector<double> max_over_count_bound;
  double min_balancedness = 1.0;
  double mean_balancedness = 1.0;
  double mean_max_over_bound = 1.0;
  double mean_max_over_count_bound = 1.0;
  std::optional<RoutedBalance> routed;  // with replica shares
  std::optional<Migration> migration;
};

// The getter of a number in an optional part of an Evaluation (`routed`, `migration`): None
// without that part.
template <auto kPart, auto kField>
auto OptionalNumber() {
  return [](const Evaluation& e) {
    const auto& part = e.*kPart;
    using Number = std::remove_cvref_t<decltype((*part).*kField)>;
    return part ? std::optional<Number>((*part).*kField) : std::nullopt;
  };
}

Evaluation Evaluate(const ExpertMap& map, const py::object& load_array, const ExpertMap* previous,
                    int64_t bytes_per_expert, const py::object& replica_shares) {
  const LoadMatrix load = ToLoad(AsArray(load_array), "load");
  ThrowIfError(ValidateLoad(load, map.num_layers(), map.num_logical_experts()));
  if (bytes_per_expert < 0 || bytes_per_expert > kMaxBytesPerExpert) {
    throw py::value_error(absl::StrCat("bytes_per_expert = ", bytes_per_expert,
                                       " is out of range [0, ", kMaxBytesPerExpert, "]"));
  }
  if (previous != nullptr) {
    const DeploymentShape shape = {.num_layers = map.num_layers(),
                                   .num_logical_experts = map.num_logical_experts(),
                                   .num_ranks = map.num_ranks(),
                                   .num_physical_experts = map.num_physical_experts()};
    if (absl::Status st = previous->CheckFits(shape); !st.ok()) {
      throw py::value_error(absl::StrCat("previous ", st.message()));
    }
  }
  const std::optional<std::vector<double>> shares = SharesArgument(replica_shares, map, &load);
  Evaluation e;
  py::gil_scoped_release release;
  if (shares) e.routed = EvaluateRouting(map, load, *shares);
  const MapQuality quality = EvaluateMap(map, load);
  for (const LayerQuality& layer : quality.layers) {
    e.balancedness.push_back(layer.balancedness);
    e.max_over_bound.push_back(layer.max_over_bound);
    e.max_over_count_bound.push_back(layer.max_over_count_bound);
  }
  e.min_balancedness = quality.min_balancedness;
  e.mean_balancedness = quality.mean_balancedness;
  e.mean_max_over_bound = quality.mean_max_over_bound;
  e.mean_max_over_count_bound = quality.mean_max_over_count_bound;
  if (previous != nullptr) e.migration = ComputeMigration(*previous, map, bytes_per_expert);
  return e;
}

// A deployment shape from Python integers (refused beyond int32 with each field's range; core's
// ValidateShape checks the rest).
DeploymentShape ShapeOf(int64_t num_layers, int64_t num_logical_experts,
                        int64_t num_physical_experts, int64_t num_ranks, int64_t num_groups,
                        int64_t num_nodes) {
  using Limits = ShapeLimits;
  return {.num_layers = Narrow("num_layers", num_layers, 1, Limits::kMaxLayers),
          .num_logical_experts = NumExperts(num_logical_experts),
          .num_groups = Narrow("num_groups", num_groups, 1, Limits::kMaxLogicalExperts),
          .num_nodes = Narrow("num_nodes", num_nodes, 1, Limits::kMaxRanks),
          .num_ranks = NumRanks(num_ranks),
          .num_physical_experts =
              Narrow("num_physical_experts", num_physical_experts, 1,
                     int64_t{Limits::kMaxRedundancyFactor} * Limits::kMaxLogicalExperts)};
}

// `load` may be None for policies that ignore load (contiguous); num_layers and
// num_logical_experts (0: taken from the load) must then be given.
ExpertMap Plan(const py::object& load_object, int64_t num_layers, int64_t num_logical_experts,
               int64_t num_physical_experts, int64_t num_ranks, int64_t num_groups,
               int64_t num_nodes, const std::string& policy_name, const ExpertMap* previous,
               const BalancedOptions* options) {
  std::optional<LoadMatrix> load;
  if (!load_object.is_none()) {
    load = ToLoad(AsArray(load_object), "load");
    if (num_layers != 0 && num_layers != load->num_layers) {
      throw py::value_error(absl::StrCat("num_layers = ", num_layers, ", but the load has ",
                                         load->num_layers, " layers"));
    }
    if (num_logical_experts != 0 && num_logical_experts != load->num_experts) {
      throw py::value_error(absl::StrCat("num_logical_experts = ", num_logical_experts,
                                         ", but the load has ", load->num_experts,
                                         " experts per layer"));
    }
    num_layers = load->num_layers;
    num_logical_experts = load->num_experts;
  }
  const auto policy = ValueOrThrow(CreatePolicy(policy_name, options));
  const DeploymentShape shape = ShapeOf(num_layers, num_logical_experts, num_physical_experts,
                                        num_ranks, num_groups, num_nodes);
  absl::StatusOr<ExpertMap> map;
  {
    py::gil_scoped_release release;
    map = policy->Plan({.shape = shape, .load = load ? &*load : nullptr, .previous = previous});
  }
  return ValueOrThrow(std::move(map));
}

py::array_t<double> LoadArray(const LoadMatrix& load) {
  py::array_t<double> out({py::ssize_t{load.num_layers}, py::ssize_t{load.num_experts}});
  std::copy(load.values.begin(), load.values.end(), out.mutable_data());
  return out;
}

// A load as an engine recorded it (core/load_formats.h), as a [L, E] float64 array.
py::array_t<double> ReadLoad(const py::object& path, const std::string& format_name,
                             const py::object& layer_ids, std::optional<int64_t> num_hidden_layers,
                             std::optional<std::pair<int64_t, int64_t>> iterations) {
  const LoadFormat format = ValueOrThrow(ParseLoadFormat(format_name));
  const LoadReadOptions options{.layer_ids = LayerIdsOf(layer_ids, num_hidden_layers),
                                .iterations = iterations};
  const std::string file = PathOf(path);
  absl::StatusOr<EngineLoad> load;
  {
    py::gil_scoped_release release;
    load = ReadEngineLoad(file, format, options);
  }
  return LoadArray(ValueOrThrow(std::move(load), /*file_io=*/true).load);
}

// The MoE layers' rows of a [H, E] load with a row per hidden layer (SelectMoeLayers).
py::array_t<double> MoeLayersOf(const py::object& hidden_rows, const py::object& layer_ids,
                                std::optional<int64_t> num_hidden_layers) {
  LoadMatrix load = ToLoad(AsArray(hidden_rows), "load");
  return LoadArray(ValueOrThrow(
      SelectMoeLayers(std::move(load), LayerIdsOf(layer_ids, num_hidden_layers), "the load")));
}

// bench/python_bench.py's baseline: seconds of each of `repeats` plans of `load` (from
// `previous`), timed around Plan() alone (the map freed inside the timing, as a caller's would
// be), so that Python's cost over C++ is measured against the very same machine code.
std::vector<double> PlanSeconds(const py::object& load_array, int64_t num_physical_experts,
                                int64_t num_ranks, int64_t num_groups, int64_t num_nodes,
                                const std::string& policy_name, const ExpertMap* previous,
                                int32_t repeats) {
  const LoadMatrix load = ToLoad(AsArray(load_array), "load");
  const auto policy = ValueOrThrow(CreatePolicy(policy_name));
  const PlanInput input = {.shape = ShapeOf(load.num_layers, load.num_experts, num_physical_experts,
                                            num_ranks, num_groups, num_nodes),
                           .load = &load,
                           .previous = previous};
  std::vector<double> seconds;
  absl::Status status;
  {
    py::gil_scoped_release release;
    for (int32_t i = 0; i < repeats && status.ok(); ++i) {
      const auto start = std::chrono::steady_clock::now();
      status = policy->Plan(input).status();
      seconds.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  ThrowIfError(status);
  return seconds;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "eplb's placement model, policies, metrics and map formats (core/, no gRPC, no CUDA)";

  py::class_<BalancedOptions>(m, "BalancedOptions",
                              "Options of the balanced policy (core/balanced_policy.h).")
      .def(py::init([](double tolerance, int64_t max_received_per_rank,
                       int64_t max_received_per_layer, double min_gain, double gain_per_move,
                       bool node_affinity, int64_t threads) {
             constexpr int64_t kMaxBudget = BalancedOptions::kMaxBudget;
             BalancedOptions o{
                 .tolerance = tolerance,
                 .max_received_per_rank =
                     Narrow("max_received_per_rank", max_received_per_rank, 0, kMaxBudget),
                 .max_received_per_layer =
                     Narrow("max_received_per_layer", max_received_per_layer, 0, kMaxBudget),
                 .min_gain = min_gain,
                 .gain_per_move = gain_per_move,
                 .node_affinity = node_affinity,
                 .threads = Narrow("threads", threads, 0, BalancedOptions::kMaxThreads)};
             ThrowIfError(ValidateBalancedOptions(o));
             return o;
           }),
           py::kw_only(), py::arg("tolerance") = BalancedOptions{}.tolerance,
           py::arg("max_received_per_rank") = BalancedOptions{}.max_received_per_rank,
           py::arg("max_received_per_layer") = BalancedOptions{}.max_received_per_layer,
           py::arg("min_gain") = BalancedOptions{}.min_gain,
           py::arg("gain_per_move") = BalancedOptions{}.gain_per_move,
           py::arg("node_affinity") = BalancedOptions{}.node_affinity,
           py::arg("threads") = BalancedOptions{}.threads)
      .def_readonly("tolerance", &BalancedOptions::tolerance)
      .def_readonly("max_received_per_rank", &BalancedOptions::max_received_per_rank)
      .def_readonly("max_received_per_layer", &BalancedOptions::max_received_per_layer)
      .def_readonly("min_gain", &BalancedOptions::min_gain)
      .def_readonly("gain_per_move", &BalancedOptions::gain_per_move)
      .def_readonly("node_affinity", &BalancedOptions::node_affinity)
      .def_readonly("threads", &BalancedOptions::threads)
      .def("__repr__", [](const BalancedOptions& o) {
        return absl::StrCat("BalancedOptions(tolerance=", o.tolerance,
                            ", max_received_per_rank=", o.max_received_per_rank,
                            ", max_received_per_layer=", o.max_received_per_layer,
                            ", min_gain=", o.min_gain, ", gain_per_move=", o.gain_per_move,
                            ", node_affinity=", o.node_affinity ? "True" : "False",
                            ", threads=", o.threads, ")");
      });

  py::class_<ExpertMap>(m, "ExpertMap",
                        "An immutable, always valid expert map of every layer (core/expert_map.h).")
      .def_static("from_phy2log", &MapFromPhy2Log, py::arg("phy2log"),
                  py::arg("num_logical_experts"), py::arg("num_ranks"))
      .def_static("from_tables", &MapFromTables, py::arg("phy2log"), py::arg("log2phy"),
                  py::arg("logcnt"), py::arg("num_ranks"))
      .def_static(
          "from_text",
          [](const std::string& text, std::optional<int64_t> num_logical_experts,
             std::optional<int64_t> num_ranks, const py::object& layer_ids,
             std::optional<int64_t> num_hidden_layers) {
            return ValueOrThrow(
                       ParseExpertMap(text, Hints(num_logical_experts, num_ranks,
                                                  LayerIdsOf(layer_ids, num_hidden_layers))))
                .map;
          },
          py::arg("text"), py::kw_only(), py::arg("num_logical_experts") = py::none(),
          py::arg("num_ranks") = py::none(), py::arg("layer_ids") = py::none(),
          py::arg("num_hidden_layers") = py::none())
      .def_static(
          "read",
          [](const py::object& path, std::optional<int64_t> num_logical_experts,
             std::optional<int64_t> num_ranks, const py::object& layer_ids,
             std::optional<int64_t> num_hidden_layers) {
            MapShapeHints hints =
                Hints(num_logical_experts, num_ranks, LayerIdsOf(layer_ids, num_hidden_layers));
            return ValueOrThrow(ReadExpertMapFile(PathOf(path), hints), /*file_io=*/true).map;
          },
          py::arg("path"), py::kw_only(), py::arg("num_logical_experts") = py::none(),
          py::arg("num_ranks") = py::none(), py::arg("layer_ids") = py::none(),
          py::arg("num_hidden_layers") = py::none())
      .def(
          "to_text",
          [](const ExpertMap& map, const std::string& format, int64_t version,
             const py::object& layer_ids, std::optional<int64_t> num_hidden_layers,
             const py::object& replica_shares) {
            const MapFormat f = FormatOf(format);
            const std::optional<LayerIds> ids = LayerIdsOf(layer_ids, num_hidden_layers);
            const LayerIds* fitting = FittingLayerIds(map, ids);
            const std::vector<double> shares =
                SharesArgument(replica_shares, map, nullptr).value_or(std::vector<double>());
            ThrowIfError(CheckMapWritable(map, f, fitting, shares));
            return ExpertMapToText(map, f, Version(version), fitting, shares);
          },
          py::arg("format") = "eplb", py::arg("version") = 0, py::kw_only(),
          py::arg("layer_ids") = py::none(), py::arg("num_hidden_layers") = py::none(),
          py::arg("replica_shares") = py::none())
      .def(
          "write",
          [](const ExpertMap& map, const py::object& path, const std::string& format,
             int64_t version, const py::object& layer_ids, std::optional<int64_t> num_hidden_layers,
             const py::object& replica_shares) {
            const MapFormat f = FormatOf(format);
            version = Version(version);
            const std::optional<LayerIds> ids = LayerIdsOf(layer_ids, num_hidden_layers);
            const LayerIds* fitting = FittingLayerIds(map, ids);
            const std::vector<double> shares =
                SharesArgument(replica_shares, map, nullptr).value_or(std::vector<double>());
            const std::string file = PathOf(path);
            absl::Status written;
            {
              py::gil_scoped_release release;
              written = WriteExpertMapFile(file, map, f, version, fitting, shares);
            }
            ThrowIfError(written, /*file_io=*/true);
          },
          py::arg("path"), py::arg("format") = "eplb", py::arg("version") = 0, py::kw_only(),
          py::arg("layer_ids") = py::none(), py::arg("num_hidden_layers") = py::none(),
          py::arg("replica_shares") = py::none())
      .def_property_readonly("num_layers", &ExpertMap::num_layers)
      .def_property_readonly("num_logical_experts", &ExpertMap::num_logical_experts)
      .def_property_readonly("num_physical_experts", &ExpertMap::num_physical_experts)
      .def_property_readonly("num_ranks", &ExpertMap::num_ranks)
      .def_property_readonly("slots_per_rank", &SlotsPerRank)
      .def_property_readonly(
          "phy2log",
          [](const ExpertMap& map) {
            return ToNumpy(map.phy2log_table(), {map.num_layers(), map.num_physical_experts()});
          })
      .def_property_readonly("log2phy", &Log2PhyArray)
      .def_property_readonly(
          "logcnt",
          [](const ExpertMap& map) {
            return ToNumpy(map.logcnt_table(), {map.num_layers(), map.num_logical_experts()});
          })
      .def_property_readonly("hash", &ExpertMap::Hash,
                             "64-bit FNV-1a content hash, as the planner and the ranks compare it")
      .def(py::self == py::self)
      .def("__hash__", [](const ExpertMap& map) { return static_cast<py::ssize_t>(map.Hash()); })
      .def("__repr__", [](const ExpertMap& map) {
        return absl::StrFormat(
            "ExpertMap(num_layers=%d, num_logical_experts=%d, num_physical_experts=%d, "
            "num_ranks=%d, hash=%016x)",
            map.num_layers(), map.num_logical_experts(), map.num_physical_experts(),
            map.num_ranks(), map.Hash());
      });

  py::class_<Evaluation>(m, "Evaluation",
                         "Quality of a map under a load; with a previous map, what moving costs.")
      .def_property_readonly("balancedness",
                             [](const Evaluation& e) { return ToNumpyDouble(e.balancedness); })
      .def_property_readonly("max_over_bound",
                             [](const Evaluation& e) { return ToNumpyDouble(e.max_over_bound); })
      .def_readonly("min_balancedness", &Evaluation::min_balancedness)
      .def_readonly("mean_balancedness", &Evaluation::mean_balancedness)
      .def_readonly("mean_max_over_bound", &Evaluation::mean_max_over_bound)
      .def_property_readonly(
          "max_over_count_bound",
          [](const Evaluation& e) { return ToNumpyDouble(e.max_over_count_bound); })
      .def_readonly("mean_max_over_count_bound", &Evaluation::mean_max_over_count_bound)
      .def_property_readonly("weighted_balancedness",
                             [](const Evaluation& e) -> py::object {
                               if (!e.routed) return py::none();
                               return ToNumpyDouble(e.routed->balancedness);
                             })
      .def_property_readonly(
          "min_weighted_balancedness",
          OptionalNumber<&Evaluation::routed, &RoutedBalance::min_balancedness>())
      .def_property_readonly(
          "mean_weighted_balancedness",
          OptionalNumber<&Evaluation::routed, &RoutedBalance::mean_balancedness>())
      .def_property_readonly("slots_changed",
                             OptionalNumber<&Evaluation::migration, &Migration::slots_changed>())
      .def_property_readonly("experts_received",
                             OptionalNumber<&Evaluation::migration, &Migration::experts_received>())
      .def_property_readonly(
          "max_experts_received_by_a_rank",
          OptionalNumber<&Evaluation::migration, &Migration::max_experts_received_by_a_rank>())
      .def_property_readonly("experts_received_per_rank",
                             [](const Evaluation& e) -> py::object {
                               if (!e.migration) return py::none();
                               const auto& v = e.migration->experts_received_per_rank;
                               return ToNumpy(v, {static_cast<py::ssize_t>(v.size())});
                             })
      .def_property_readonly("bytes_moved",
                             OptionalNumber<&Evaluation::migration, &Migration::bytes_moved>());

  m.def("plan", &Plan, py::arg("load"), py::arg("num_layers"), py::arg("num_logical_experts"),
        py::arg("num_physical_experts"), py::arg("num_ranks"), py::arg("num_groups"),
        py::arg("num_nodes"), py::arg("policy"), py::arg("previous"), py::arg("options"));
  m.def("_plan_seconds", &PlanSeconds, py::arg("load"), py::arg("num_physical_experts"),
        py::arg("num_ranks"), py::arg("num_groups"), py::arg("num_nodes"), py::arg("policy"),
        py::arg("previous"), py::arg("repeats"));
  m.def("read_load", &ReadLoad, py::arg("path"), py::arg("format"), py::arg("layer_ids"),
        py::arg("num_hidden_layers"), py::arg("iterations"));
  m.def("moe_layers_of", &MoeLayersOf, py::arg("hidden_rows"), py::arg("layer_ids"),
        py::arg("num_hidden_layers"));
  m.def("evaluate", &Evaluate, py::arg("map"), py::arg("load"), py::arg("previous"),
        py::arg("bytes_per_expert"), py::arg("replica_shares"));
  m.def(
      "replica_shares",
      [](const ExpertMap& map, const py::object& load_object) {
        const LoadMatrix load = ToLoad(AsArray(load_object), "load");
        ThrowIfError(ValidateLoad(load, map.num_layers(), map.num_logical_experts()));
        std::vector<double> shares;
        {
          py::gil_scoped_release release;
          shares = OptimalReplicaShareTable(map, load);
        }
        return SharesArray(shares, map);
      },
      py::arg("map"), py::arg("load"));
  m.def(
      "read_replica_shares",
      [](const py::object& path, std::optional<int64_t> num_logical_experts,
         std::optional<int64_t> num_ranks, const py::object& layer_ids,
         std::optional<int64_t> num_hidden_layers) -> py::object {
        MapShapeHints hints =
            Hints(num_logical_experts, num_ranks, LayerIdsOf(layer_ids, num_hidden_layers));
        const ParsedExpertMap parsed =
            ValueOrThrow(ReadExpertMapFile(PathOf(path), hints), /*file_io=*/true);
        if (parsed.replica_share.empty()) return py::none();
        return SharesArray(parsed.replica_share, parsed.map);
      },
      py::arg("path"), py::kw_only(), py::arg("num_logical_experts") = py::none(),
      py::arg("num_ranks") = py::none(), py::arg("layer_ids") = py::none(),
      py::arg("num_hidden_layers") = py::none());
  m.def("policy_names", [] {
    std::vector<std::string> names;
    for (absl::string_view name : PolicyNames()) names.emplace_back(name);
    return names;
  });
  m.def("map_format_names", [] {
    std::vector<std::string> names;
    for (MapFormat format :
         {MapFormat::kEplb, MapFormat::kVllmAscend, MapFormat::kSglang, MapFormat::kTrtllm}) {
      names.emplace_back(MapFormatName(format));
    }
    return names;
  });
}

}  // namespace eplb::python
