#include "core/trtllm_map.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <map>
#include <optional>
#include <ostream>
#include <streambuf>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/shape.h"
#include "core/status_macros.h"

namespace eplb::internal {
namespace {

constexpr char kAssignments[] = "initial_global_assignments";
constexpr char kNumSlots[] = "num_slots";
constexpr char kUpdates[] = "layer_updates_per_iter";

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

// "line 3, column 5: " of a node (1-based), for messages.
std::string At(const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return "";
  return absl::StrCat("line ", mark.line + 1, ", column ", mark.column + 1, ": ");
}

// An integer scalar in [lo, hi]; INVALID_ARGUMENT naming the field (`name` is called only then)
// otherwise.
absl::StatusOr<int64_t> ReadInt(const YAML::Node& node, absl::FunctionRef<std::string()> name,
                                int64_t lo, int64_t hi) {
  int64_t value = 0;
  if (!node.IsScalar() || !YAML::convert<int64_t>::decode(node, value)) {
    return Invalid(absl::StrCat(At(node), name(), " is not an integer"));
  }
  if (value < lo || value > hi) {
    return Invalid(
        absl::StrCat(At(node), name(), " = ", value, " is out of range [", lo, ", ", hi, "]"));
  }
  return value;
}

absl::StatusOr<int64_t> ReadInt(const YAML::Node& node, const char* name, int64_t lo, int64_t hi) {
  return ReadInt(
      node, [name] { return std::string(name); }, lo, hi);
}

// "3-60" or "1,3,5-9".
std::string Describe(std::span<const int32_t> ids) {
  return absl::StrCat(
      absl::StrJoin(ids.begin(), ids.begin() + std::min<size_t>(ids.size(), 8), ","),
      ids.size() > 8 ? ",…" : "");
}

// Hands what the emitter writes to a sink in pieces of about 64 KiB.
class SinkBuffer : public std::streambuf {
 public:
  explicit SinkBuffer(absl::FunctionRef<void(absl::string_view)> sink) : sink_(sink) {
    setp(buffer_.data(), buffer_.data() + buffer_.size());
  }
  ~SinkBuffer() override { sync(); }

 protected:
  int_type overflow(int_type c) override {
    sync();
    if (c != traits_type::eof()) {
      *pptr() = traits_type::to_char_type(c);
      pbump(1);
    }
    return traits_type::not_eof(c);
  }
  int sync() override {
    if (pptr() > pbase()) sink_(absl::string_view(pbase(), pptr() - pbase()));
    setp(buffer_.data(), buffer_.data() + buffer_.size());
    return 0;
  }

 private:
  absl::FunctionRef<void(absl::string_view)> sink_;
  std::array<char, 64 << 10> buffer_;
};

}  // namespace

absl::StatusOr<ParsedExpertMap> ParseTrtllmMap(absl::string_view yaml, const MapShapeHints& hints) {
  if (hints.num_ranks == 0) {
    return Invalid("TensorRT-LLM's load balancer files carry no rank count: num_ranks is required");
  }
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& error) {
    return Invalid(absl::StrCat("line ", error.mark.line + 1, ", column ", error.mark.column + 1,
                                ": ", error.msg));
  }
  if (!root.IsMap()) {
    return Invalid(
        "expected a YAML mapping of num_slots, initial_global_assignments and "
        "layer_updates_per_iter at the top level");
  }
  std::optional<YAML::Node> assignments, num_slots_node;
  bool updates_seen = false;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string key = it->first.IsScalar() ? it->first.Scalar() : "";
    if (key != kAssignments && key != kNumSlots && key != kUpdates) {
      return Invalid(absl::StrCat(At(it->first), "unexpected key \"", key,
                                  "\": TensorRT-LLM's load balancer config holds only num_slots, "
                                  "initial_global_assignments and layer_updates_per_iter (it "
                                  "refuses any other key)"));
    }
    const bool seen = key == kAssignments ? assignments.has_value()
                      : key == kNumSlots  ? num_slots_node.has_value()
                                          : updates_seen;
    if (seen) return Invalid(absl::StrCat(At(it->first), key, " is given twice"));
    if (key == kUpdates) {
      updates_seen = true;
      RETURN_IF_ERROR(ReadInt(it->second, kUpdates, 0, ShapeLimits::kMaxLayers).status());
    } else {
      (key == kAssignments ? assignments : num_slots_node) = it->second;
    }
  }
  if (!num_slots_node) return Invalid("num_slots is required");
  if (!assignments) {
    return Invalid(
        "initial_global_assignments is required (without it TensorRT-LLM places experts "
        "round-robin: there is no map)");
  }
  const int64_t max_slots =
      int64_t{ShapeLimits::kMaxRedundancyFactor} * ShapeLimits::kMaxLogicalExperts;
  ASSIGN_OR_RETURN(const int64_t num_slots, ReadInt(*num_slots_node, kNumSlots, 1, max_slots));
  if (num_slots < hints.num_ranks || num_slots % hints.num_ranks != 0) {
    return Invalid(absl::StrCat(At(*num_slots_node), "num_slots = ", num_slots,
                                " is not a multiple of num_ranks = ", hints.num_ranks,
                                " (TensorRT-LLM gives every rank the same number of slots)"));
  }
  if (!assignments->IsMap()) {
    return Invalid(absl::StrCat(At(*assignments),
                                "initial_global_assignments is not a mapping of layer index to "
                                "slot assignments"));
  }
  const int64_t max_expert = (hints.num_logical_experts > 0 ? hints.num_logical_experts
                                                            : ShapeLimits::kMaxLogicalExperts) -
                             1;
  // Layers in increasing index order (the file may list them in any order).
  std::map<int64_t, YAML::Node> layers;
  for (auto it = assignments->begin(); it != assignments->end(); ++it) {
    ASSIGN_OR_RETURN(const int64_t layer,
                     ReadInt(it->first, "a layer index of initial_global_assignments", 0,
                             LayerIds::kMaxHiddenLayers - 1));
    if (!layers.emplace(layer, it->second).second) {
      return Invalid(absl::StrCat(At(it->first), "layer ", layer,
                                  " is listed twice in initial_global_assignments"));
    }
    if (layers.size() > static_cast<size_t>(ShapeLimits::kMaxLayers)) {
      return Invalid(absl::StrCat("initial_global_assignments lists more than ",
                                  ShapeLimits::kMaxLayers, " layers"));
    }
  }
  if (layers.empty()) return Invalid("initial_global_assignments lists no layer");
  std::vector<int64_t> ids;
  for (const auto& [layer, unused] : layers) ids.push_back(layer);
  ASSIGN_OR_RETURN(
      LayerIds file_ids,
      LayerIds::FromIds(ids, hints.layer_ids ? hints.layer_ids->num_hidden_layers() : 0));
  if (hints.layer_ids && file_ids.moe_layers().size() != hints.layer_ids->moe_layers().size()) {
    return Invalid(absl::StrCat("initial_global_assignments lists ", file_ids.num_moe_layers(),
                                " layers, but the layer ids name ",
                                hints.layer_ids->num_moe_layers(), " (",
                                hints.layer_ids->DebugString(), ")"));
  }
  if (hints.layer_ids && !std::equal(file_ids.moe_layers().begin(), file_ids.moe_layers().end(),
                                     hints.layer_ids->moe_layers().begin())) {
    return Invalid(absl::StrCat("initial_global_assignments lists layers ",
                                Describe(file_ids.moe_layers()), ", but the layer ids name ",
                                hints.layer_ids->DebugString()));
  }

  std::vector<int32_t> phy2log;
  phy2log.reserve(static_cast<size_t>(layers.size() * num_slots));
  for (const auto& [layer, slots] : layers) {
    const std::string name = absl::StrCat("initial_global_assignments[", layer, "]");
    if (!slots.IsSequence()) return Invalid(absl::StrCat(At(slots), name, " is not a list"));
    if (static_cast<int64_t>(slots.size()) != num_slots) {
      return Invalid(absl::StrCat(At(slots), name, " has ", slots.size(),
                                  " entries, expected num_slots = ", num_slots));
    }
    size_t p = 0;
    for (const YAML::Node& slot : slots) {
      ASSIGN_OR_RETURN(const int64_t expert,
                       ReadInt(
                           slot, [&] { return absl::StrCat(name, "[", p, "]"); }, 0, max_expert));
      phy2log.push_back(static_cast<int32_t>(expert));
      ++p;
    }
  }
  const int32_t num_layers = static_cast<int32_t>(layers.size());
  const int32_t num_experts = hints.num_logical_experts > 0
                                  ? hints.num_logical_experts
                                  : *std::max_element(phy2log.begin(), phy2log.end()) + 1;
  DeploymentShape shape{.num_layers = num_layers,
                        .num_logical_experts = num_experts,
                        .num_ranks = hints.num_ranks,
                        .num_physical_experts = static_cast<int32_t>(num_slots)};
  if (absl::Status st = ValidateShape(shape); !st.ok()) {
    return Invalid(absl::StrCat("the map implies an invalid shape: ", st.message()));
  }
  absl::StatusOr<ExpertMap> map =
      ExpertMap::FromPhy2Log(num_layers, num_experts, shape.slot_layout(), std::move(phy2log));
  if (!map.ok()) {
    // Name the file's layer, not eplb's row.
    return Invalid(absl::StrCat("initial_global_assignments (rows in layer order ",
                                Describe(file_ids.moe_layers()), "): ", map.status().message()));
  }
  return ParsedExpertMap{*std::move(map), MapFormat::kTrtllm, 0};
}

void WriteTrtllmMap(const ExpertMap& map, const LayerIds& layer_ids,
                    absl::FunctionRef<void(absl::string_view)> sink) {
  EPLB_CHECK(layer_ids.num_moe_layers() == map.num_layers(), layer_ids.DebugString());
  EPLB_CHECK(map.num_physical_experts() % map.num_ranks() == 0, "P ", map.num_physical_experts(),
             " R ", map.num_ranks());
  SinkBuffer buffer(sink);
  std::ostream stream(&buffer);
  YAML::Emitter out(stream);
  out << YAML::BeginMap << YAML::Key << kAssignments << YAML::Value << YAML::BeginMap;
  for (int32_t l = 0; l < map.num_layers(); ++l) {
    out << YAML::Key << layer_ids.moe_layers()[l] << YAML::Value << YAML::Flow << YAML::BeginSeq;
    for (int32_t expert : map.phy2log(l)) out << expert;
    out << YAML::EndSeq;
  }
  out << YAML::EndMap;
  out << YAML::Key << kUpdates << YAML::Value << 0;
  out << YAML::Key << kNumSlots << YAML::Value << map.num_physical_experts();
  out << YAML::EndMap;
  stream << "\n";
  stream.flush();
}

}  // namespace eplb::internal
