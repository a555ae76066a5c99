#include "core/map_format.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/json.h"
#include "core/shape.h"
#include "core/status_macros.h"
#include "core/trtllm_map.h"

namespace eplb {
namespace {

constexpr char kEplbFormatId[] = "eplb.expert_map.v1";
constexpr int64_t kInt32Min = std::numeric_limits<int32_t>::min();
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int64_t kInt64Min = std::numeric_limits<int64_t>::min();
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

// ---- Reading helpers ---------------------------------------------------------------------------
//
// Field names in messages are built only when something is wrong: helpers take the name as a
// callable returning it, so the hot loops over large tables allocate nothing.

std::string NumberText(const JsonValue& v) {
  if (v.is_integer()) return absl::StrCat(v.int_value());
  const double d = v.number_value();
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  std::string text;
  AppendJsonNumber(&text, d);
  return text;
}

std::string WithArticle(JsonValue::Type type) {
  const absl::string_view name = JsonTypeName(type);
  const bool vowel = name[0] == 'a' || name[0] == 'o';
  return absl::StrCat(vowel ? "an " : "a ", name);
}

absl::Status OutOfRange(const std::string& name, const std::string& value, int64_t lo, int64_t hi) {
  return Invalid(absl::StrCat(name, " = ", value, " is out of range [", lo, ", ", hi, "]"));
}

// The slow path of ReadInt: everything but an in-range integer literal.
absl::Status ReadIntSlow(const JsonValue& v, const std::string& name, int64_t lo, int64_t hi,
                         int64_t* out) {
  if (!v.is_number()) return Invalid(absl::StrCat(name, " is not a number"));
  if (v.is_integer()) return OutOfRange(name, NumberText(v), lo, hi);
  const double d = v.number_value();
  if (d != std::trunc(d)) {
    return Invalid(absl::StrCat(name, " = ", NumberText(v), " is not an integer"));
  }
  // Integral values written as 3.0 or 1e2 are accepted. 0x1p63 is the first double beyond int64.
  if (d >= 0x1p63 || d < static_cast<double>(lo) || d > static_cast<double>(hi)) {
    return OutOfRange(name, NumberText(v), lo, hi);
  }
  *out = static_cast<int64_t>(d);
  return absl::OkStatus();
}

// Reads an integer in [lo, hi].
template <typename NameFn>
absl::Status ReadInt(const JsonValue& v, const NameFn& name, int64_t lo, int64_t hi, int64_t* out) {
  if (v.is_integer() && v.int_value() >= lo && v.int_value() <= hi) [[likely]] {
    *out = v.int_value();
    return absl::OkStatus();
  }
  return ReadIntSlow(v, name(), lo, hi, out);
}

// The items of the array `v`, or INVALID_ARGUMENT "<name> is not an array". A packed array (all
// integers, see core/json.h) is unpacked into *scratch: readers of integer rows read packed
// arrays directly (ReadIntRow), so this happens for small arrays and for input of the wrong shape
// (integers where rows or objects belong), which the caller then refuses.
template <typename NameFn>
absl::StatusOr<const JsonValue::Array*> ReadArray(const JsonValue& v, const NameFn& name,
                                                  JsonValue::Array* scratch) {
  if (!v.is_array()) return Invalid(absl::StrCat(name(), " is not an array"));
  if (!v.is_int_array()) return &v.array_items();
  scratch->clear();
  for (const int64_t item : v.int_array_items()) scratch->push_back(JsonValue::Int(item));
  return scratch;
}

template <typename NameFn>
absl::Status CheckObject(const JsonValue& v, const NameFn& name) {
  if (!v.is_object()) return Invalid(absl::StrCat(name(), " is not an object"));
  return absl::OkStatus();
}

// The member `key` of `object`; `owner` names the object in messages (empty: the top level).
absl::StatusOr<const JsonValue*> RequireMember(const JsonValue& object, const char* key,
                                               const std::string& owner = "") {
  if (const JsonValue* v = object.Find(key)) return v;
  return Invalid(absl::StrCat("missing key \"", key, "\"", owner.empty() ? "" : " in ", owner));
}

// Copies items[begin…] to dest[begin…] while they are integer literals in [lo, hi]; returns the
// index of the first item that is not, or items.size(). The fast path of ReadIntRow(), kept out of
// line so that its loop stays in registers.
ABSL_ATTRIBUTE_NOINLINE size_t CopyInts(const JsonValue::Array& items, size_t begin, int64_t lo,
                                        int64_t hi, int32_t* dest) {
  const size_t n = items.size();
  for (size_t k = begin; k < n; ++k) {
    const JsonValue& v = items[k];
    if (!v.is_integer() || v.int_value() < lo || v.int_value() > hi) return k;
    dest[k] = static_cast<int32_t>(v.int_value());
  }
  return n;
}

// Copies items to dest while they are in [lo, hi]; returns the index of the first that is not, or
// items.size().
ABSL_ATTRIBUTE_NOINLINE size_t CopyPackedInts(std::span<const int64_t> items, int64_t lo, int64_t hi,
                                              int32_t* dest) {
  bool in_range = true;
  for (size_t k = 0; k < items.size(); ++k) {  // branch-free, so that it vectorizes
    in_range &= static_cast<uint64_t>(items[k]) - static_cast<uint64_t>(lo) <=
                static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);
    dest[k] = static_cast<int32_t>(items[k]);
  }
  if (in_range) return items.size();
  for (size_t k = 0;; ++k) {
    if (items[k] < lo || items[k] > hi) return k;
  }
}

// Appends the integers of the array `v` (each in [lo, hi]) to `out`. `expected_size`, if not
// negative, is the required length, described by `expected_what` in the message.
// REQUIRES: [lo, hi] lies within the range of int32.
template <typename NameFn>
absl::Status ReadIntRow(const JsonValue& v, const NameFn& name, int64_t expected_size,
                        const std::string& expected_what, int64_t lo, int64_t hi,
                        std::vector<int32_t>* out) {
  if (v.is_int_array()) {  // the common case: all integers
    const std::span<const int64_t> items = v.int_array_items();
    if (expected_size >= 0 && static_cast<int64_t>(items.size()) != expected_size) {
      return Invalid(
          absl::StrCat(name(), " has ", items.size(), " entries, expected ", expected_what));
    }
    const size_t old_size = out->size();
    out->resize(old_size + items.size());
    const size_t k = CopyPackedInts(items, lo, hi, out->data() + old_size);
    if (k < items.size()) {
      out->resize(old_size);
      return OutOfRange(absl::StrCat(name(), "[", k, "]"), absl::StrCat(items[k]), lo, hi);
    }
    return absl::OkStatus();
  }
  JsonValue::Array scratch;
  ASSIGN_OR_RETURN(const JsonValue::Array* items, ReadArray(v, name, &scratch));
  if (expected_size >= 0 && static_cast<int64_t>(items->size()) != expected_size) {
    return Invalid(
        absl::StrCat(name(), " has ", items->size(), " entries, expected ", expected_what));
  }
  const size_t old_size = out->size();
  out->resize(old_size + items->size());
  int32_t* dest = out->data() + old_size;
  for (size_t k = CopyInts(*items, 0, lo, hi, dest); k < items->size();
       k = CopyInts(*items, k + 1, lo, hi, dest)) {
    int64_t value = 0;
    RETURN_IF_ERROR(ReadIntSlow((*items)[k], absl::StrCat(name(), "[", k, "]"), lo, hi, &value));
    dest[k] = static_cast<int32_t>(value);
  }
  return absl::OkStatus();
}

// Checks a shape read from a file with ValidateShape(). Values beyond int32 are out of every
// allowed range; they are clamped for the check and the message shows them as read.
absl::Status CheckShape(int64_t num_layers, int64_t num_logical_experts, int64_t num_ranks,
                        int64_t num_physical_experts, DeploymentShape* shape) {
  struct Field {
    const char* name;
    int64_t value;
    int32_t* target;
  };
  const Field fields[] = {
      {"num_layers", num_layers, &shape->num_layers},
      {"num_logical_experts", num_logical_experts, &shape->num_logical_experts},
      {"num_ranks", num_ranks, &shape->num_ranks},
      {"num_physical_experts", num_physical_experts, &shape->num_physical_experts},
  };
  for (const Field& f : fields) {
    *f.target = static_cast<int32_t>(std::clamp(f.value, kInt32Min, kInt32Max));
  }
  absl::Status status = ValidateShape(*shape);
  if (status.ok()) return status;
  for (const Field& f : fields) {
    if (*f.target == f.value) continue;
    const std::string clamped = absl::StrCat(f.name, " = ", *f.target, " ");
    if (absl::StartsWith(status.message(), clamped)) {
      return Invalid(
          absl::StrCat(f.name, " = ", f.value, " ", status.message().substr(clamped.size())));
    }
  }
  return status;
}

// "288 slots on 32 ranks: 9 on every rank", "30 slots on 8 ranks: 4 on ranks 0-5, 3 on the
// others".
std::string DescribeLayout(const SlotLayout& layout) {
  const int32_t base = layout.num_slots() / layout.num_ranks();
  const int32_t extra = layout.num_slots() % layout.num_ranks();
  std::string text = absl::StrCat(layout.num_slots(), " slots on ", layout.num_ranks(), " ranks: ");
  if (extra == 0) return absl::StrCat(text, base, " on every rank");
  const std::string ranks = extra == 1 ? "rank 0" : absl::StrCat("ranks 0-", extra - 1);
  return absl::StrCat(text, base + 1, " on ", ranks, ", ", base, " on the others");
}

absl::Status CheckHints(const MapShapeHints& hints) {
  if (hints.num_logical_experts < 0) {
    return Invalid(absl::StrCat("MapShapeHints.num_logical_experts = ", hints.num_logical_experts,
                                " is negative"));
  }
  if (hints.num_ranks < 0) {
    return Invalid(absl::StrCat("MapShapeHints.num_ranks = ", hints.num_ranks, " is negative"));
  }
  return absl::OkStatus();
}

absl::Status CheckHint(const char* field, int64_t file_value, int32_t hint) {
  if (hint == 0 || hint == file_value) return absl::OkStatus();
  return Invalid(absl::StrCat("the file has ", field, " = ", file_value, ", but ", field, " = ",
                              hint, " was given"));
}

// The largest index an expert may have: the hint's, or the largest any shape allows.
int64_t MaxExpertIndex(const MapShapeHints& hints) {
  return (hints.num_logical_experts > 0 ? hints.num_logical_experts
                                        : ShapeLimits::kMaxLogicalExperts) -
         1;
}

// E from the hint, or the largest index in phy2log + 1.
int64_t LogicalExperts(const MapShapeHints& hints, const std::vector<int32_t>& phy2log) {
  if (hints.num_logical_experts > 0) return hints.num_logical_experts;
  return phy2log.empty() ? 0 : int64_t{*std::max_element(phy2log.begin(), phy2log.end())} + 1;
}

absl::Status PrefixShapeError(absl::Status status) {
  if (status.ok()) return status;
  return Invalid(absl::StrCat("the map implies an invalid shape: ", status.message()));
}

// ---- eplb.expert_map.v1 ------------------------------------------------------------------------

// The numbers of replica_share: L rows of P (their values are checked by CheckReplicaShares).
absl::StatusOr<std::vector<double>> ReadReplicaShares(const JsonValue& v, int32_t L, int32_t P) {
  JsonValue::Array rows_scratch, row_scratch;
  ASSIGN_OR_RETURN(const JsonValue::Array* rows,
                   ReadArray(
                       v, [] { return std::string("replica_share"); }, &rows_scratch));
  if (static_cast<int64_t>(rows->size()) != L) {
    return Invalid(
        absl::StrCat("replica_share has ", rows->size(), " rows, expected num_layers = ", L));
  }
  std::vector<double> share;
  share.reserve(static_cast<size_t>(L) * P);
  for (int32_t l = 0; l < L; ++l) {
    ASSIGN_OR_RETURN(const JsonValue::Array* row,
                     ReadArray((*rows)[l], [&] { return absl::StrCat("replica_share[", l, "]"); },
                               &row_scratch));
    if (static_cast<int64_t>(row->size()) != P) {
      return Invalid(absl::StrCat("replica_share[", l, "] has ", row->size(),
                                  " entries, expected num_physical_experts = ", P));
    }
    for (int32_t p = 0; p < P; ++p) {
      const JsonValue& item = (*row)[p];
      if (!item.is_number()) {
        return Invalid(absl::StrCat("replica_share[", l, "][", p, "] is not a number"));
      }
      share.push_back(item.number_value());
    }
  }
  return share;
}

absl::StatusOr<ParsedExpertMap> ParseEplbMap(const JsonValue& root, const MapShapeHints& hints) {
  ASSIGN_OR_RETURN(const JsonValue* format, RequireMember(root, "format"));
  if (!format->is_string()) return Invalid("format is not a string");
  if (format->string_value() != kEplbFormatId) {
    std::string message = "format = ";
    AppendJsonString(&message, format->string_value());
    absl::StrAppend(&message, " is not supported: expected \"", kEplbFormatId, "\"");
    return Invalid(std::move(message));
  }
  const auto read_field = [&](const char* key, int64_t lo, int64_t hi) -> absl::StatusOr<int64_t> {
    ASSIGN_OR_RETURN(const JsonValue* v, RequireMember(root, key));
    int64_t value = 0;
    RETURN_IF_ERROR(ReadInt(
        *v, [&] { return std::string(key); }, lo, hi, &value));
    return value;
  };
  ASSIGN_OR_RETURN(const int64_t version, read_field("version", 0, kInt64Max));
  ASSIGN_OR_RETURN(const int64_t num_layers, read_field("num_layers", kInt64Min, kInt64Max));
  ASSIGN_OR_RETURN(const int64_t num_experts,
                   read_field("num_logical_experts", kInt64Min, kInt64Max));
  ASSIGN_OR_RETURN(const int64_t num_slots,
                   read_field("num_physical_experts", kInt64Min, kInt64Max));
  ASSIGN_OR_RETURN(const int64_t num_ranks, read_field("num_ranks", kInt64Min, kInt64Max));
  DeploymentShape shape;
  RETURN_IF_ERROR(CheckShape(num_layers, num_experts, num_ranks, num_slots, &shape));
  RETURN_IF_ERROR(CheckHint("num_logical_experts", num_experts, hints.num_logical_experts));
  RETURN_IF_ERROR(CheckHint("num_ranks", num_ranks, hints.num_ranks));
  const int32_t L = shape.num_layers, E = shape.num_logical_experts, P = shape.num_physical_experts;
  const int32_t R = shape.num_ranks, W = P - E + 1;
  const SlotLayout layout = shape.slot_layout();

  {
    ASSIGN_OR_RETURN(const JsonValue* v, RequireMember(root, "slots_per_rank"));
    std::vector<int32_t> slots_per_rank;
    RETURN_IF_ERROR(ReadIntRow(
        *v, [] { return std::string("slots_per_rank"); }, R, absl::StrCat("num_ranks = ", R),
        kInt32Min, kInt32Max, &slots_per_rank));
    for (int32_t r = 0; r < R; ++r) {
      if (slots_per_rank[r] != layout.SlotsOnRank(r)) {
        return Invalid(absl::StrCat("slots_per_rank[", r, "] = ", slots_per_rank[r], ", expected ",
                                    layout.SlotsOnRank(r), " (", DescribeLayout(layout), ")"));
      }
    }
  }

  // Reads the L rows of a table whose rows hold `row_size` entries in [lo, hi] each.
  const auto read_table = [&](const char* key, int64_t row_size, const std::string& row_what,
                              int64_t lo, int64_t hi) -> absl::StatusOr<std::vector<int32_t>> {
    ASSIGN_OR_RETURN(const JsonValue* v, RequireMember(root, key));
    JsonValue::Array scratch;
    ASSIGN_OR_RETURN(const JsonValue::Array* rows,
                     ReadArray(*v, [&] { return std::string(key); }, &scratch));
    if (static_cast<int64_t>(rows->size()) != L) {
      return Invalid(absl::StrCat(key, " has ", rows->size(), " rows, expected num_layers = ", L));
    }
    std::vector<int32_t> table;
    table.reserve(static_cast<size_t>(L) * row_size);
    for (int32_t l = 0; l < L; ++l) {
      RETURN_IF_ERROR(ReadIntRow((*rows)[l], [&] { return absl::StrCat(key, "[", l, "]"); },
                                 row_size, row_what, lo, hi, &table));
    }
    return table;
  };

  ASSIGN_OR_RETURN(std::vector<int32_t> phy2log,
                   read_table("phy2log", P, absl::StrCat("num_physical_experts = ", P), 0, E - 1));

  std::vector<int32_t> log2phy;
  {
    ASSIGN_OR_RETURN(const JsonValue* v, RequireMember(root, "log2phy"));
    JsonValue::Array layers_scratch, experts_scratch;
    ASSIGN_OR_RETURN(const JsonValue::Array* layers,
                     ReadArray(*v, [] { return std::string("log2phy"); }, &layers_scratch));
    if (static_cast<int64_t>(layers->size()) != L) {
      return Invalid(
          absl::StrCat("log2phy has ", layers->size(), " rows, expected num_layers = ", L));
    }
    const std::string width_what =
        absl::StrCat("num_physical_experts − num_logical_experts + 1 = ", W);
    log2phy.reserve(static_cast<size_t>(L) * E * W);
    for (int32_t l = 0; l < L; ++l) {
      const auto layer_name = [&] { return absl::StrCat("log2phy[", l, "]"); };
      ASSIGN_OR_RETURN(const JsonValue::Array* experts,
                       ReadArray((*layers)[l], layer_name, &experts_scratch));
      if (static_cast<int64_t>(experts->size()) != E) {
        return Invalid(absl::StrCat(layer_name(), " has ", experts->size(),
                                    " rows, expected num_logical_experts = ", E));
      }
      for (int32_t e = 0; e < E; ++e) {
        RETURN_IF_ERROR(ReadIntRow((*experts)[e],
                                   [&] { return absl::StrCat("log2phy[", l, "][", e, "]"); }, W,
                                   width_what, -1, P - 1, &log2phy));
      }
    }
  }

  ASSIGN_OR_RETURN(std::vector<int32_t> logcnt,
                   read_table("logcnt", E, absl::StrCat("num_logical_experts = ", E), 1, W));

  ASSIGN_OR_RETURN(ExpertMap map,
                   ExpertMap::FromTables(L, E, layout, std::move(phy2log), log2phy, logcnt));
  ParsedExpertMap parsed{std::move(map), MapFormat::kEplb, version, {}};
  if (const JsonValue* v = root.Find("replica_share")) {
    ASSIGN_OR_RETURN(parsed.replica_share, ReadReplicaShares(*v, L, P));
    RETURN_IF_ERROR(CheckReplicaShares(parsed.map, parsed.replica_share));
  }
  return parsed;
}

// ---- vllm-ascend -------------------------------------------------------------------------------

absl::StatusOr<ParsedExpertMap> ParseVllmAscendMap(const JsonValue& root,
                                                   const MapShapeHints& hints) {
  ASSIGN_OR_RETURN(const JsonValue* count, RequireMember(root, "moe_layer_count"));
  int64_t num_layers = 0;
  RETURN_IF_ERROR(ReadInt(
      *count, [] { return std::string("moe_layer_count"); }, 1, ShapeLimits::kMaxLayers,
      &num_layers));
  ASSIGN_OR_RETURN(const JsonValue* list, RequireMember(root, "layer_list"));
  JsonValue::Array layers_scratch, devices_scratch;
  ASSIGN_OR_RETURN(const JsonValue::Array* layers,
                   ReadArray(*list, [] { return std::string("layer_list"); }, &layers_scratch));
  if (static_cast<int64_t>(layers->size()) != num_layers) {
    return Invalid(absl::StrCat("layer_list has ", layers->size(),
                                " entries, expected moe_layer_count = ", num_layers));
  }
  const int64_t max_expert = MaxExpertIndex(hints);

  std::vector<int32_t> phy2log;
  int64_t num_ranks = 0;
  int64_t num_slots = 0;
  std::optional<SlotLayout> layout;  // from layer 0
  std::vector<int64_t> held_in_layer0;
  for (int64_t l = 0; l < num_layers; ++l) {
    const JsonValue& layer = (*layers)[l];
    const auto layer_name = [&] { return absl::StrCat("layer_list[", l, "]"); };
    RETURN_IF_ERROR(CheckObject(layer, layer_name));
    if (const JsonValue* id = layer.Find("layer_id")) {
      int64_t value = 0;
      RETURN_IF_ERROR(ReadInt(
          *id, [&] { return layer_name() + ".layer_id"; }, kInt64Min, kInt64Max, &value));
      if (value != l) {
        return Invalid(absl::StrCat(layer_name(), ".layer_id = ", value, ", expected ", l,
                                    " (layers are listed in order)"));
      }
    }
    ASSIGN_OR_RETURN(const JsonValue* device_list_value,
                     RequireMember(layer, "device_list", layer_name()));
    const auto devices_name = [&] { return layer_name() + ".device_list"; };
    ASSIGN_OR_RETURN(const JsonValue::Array* devices,
                     ReadArray(*device_list_value, devices_name, &devices_scratch));
    const int64_t size = static_cast<int64_t>(devices->size());
    if (l == 0) {
      if (size == 0) return Invalid("layer_list[0].device_list is empty");
      if (size > ShapeLimits::kMaxRanks) {
        return Invalid(absl::StrCat("layer_list[0].device_list has ", size, " entries, more than ",
                                    ShapeLimits::kMaxRanks, " ranks"));
      }
      num_ranks = size;
      if (hints.num_ranks != 0 && hints.num_ranks != num_ranks) {
        return Invalid(absl::StrCat(
            "the file has ", num_ranks,
            " ranks (entries of layer_list[0].device_list), but num_ranks = ", hints.num_ranks,
            " was given"));
      }
    } else if (size != num_ranks) {
      return Invalid(absl::StrCat(devices_name(), " has ", size, " entries, expected ", num_ranks,
                                  " (as layer_list[0].device_list)"));
    }
    if (const JsonValue* device_count = layer.Find("device_count")) {
      int64_t value = 0;
      RETURN_IF_ERROR(ReadInt(
          *device_count, [&] { return layer_name() + ".device_count"; }, kInt64Min, kInt64Max,
          &value));
      if (value != size) {
        return Invalid(absl::StrCat(layer_name(), ".device_count = ", value, ", but ",
                                    devices_name(), " has ", size, " entries"));
      }
    }
    const size_t row_begin = phy2log.size();
    for (int64_t r = 0; r < num_ranks; ++r) {
      const JsonValue& device = (*devices)[r];
      const auto device_name = [&] { return absl::StrCat(devices_name(), "[", r, "]"); };
      RETURN_IF_ERROR(CheckObject(device, device_name));
      if (const JsonValue* id = device.Find("device_id")) {
        int64_t value = 0;
        RETURN_IF_ERROR(ReadInt(
            *id, [&] { return device_name() + ".device_id"; }, kInt64Min, kInt64Max, &value));
        if (value != r) {
          return Invalid(absl::StrCat(device_name(), ".device_id = ", value, ", expected ", r,
                                      " (devices are listed in rank order)"));
        }
      }
      ASSIGN_OR_RETURN(const JsonValue* experts,
                       RequireMember(device, "device_expert", device_name()));
      const size_t before = phy2log.size();
      RETURN_IF_ERROR(ReadIntRow(
          *experts, [&] { return device_name() + ".device_expert"; }, -1, "", 0, max_expert,
          &phy2log));
      const int64_t held = static_cast<int64_t>(phy2log.size() - before);
      if (held == 0) {
        return Invalid(absl::StrCat(
            device_name(), ".device_expert is empty (every rank holds at least one slot)"));
      }
      if (l == 0) held_in_layer0.push_back(held);
      if (layout && held != layout->SlotsOnRank(static_cast<int32_t>(r))) {
        return Invalid(absl::StrCat(device_name(), " holds ", held, " experts, expected ",
                                    layout->SlotsOnRank(static_cast<int32_t>(r)), " (",
                                    DescribeLayout(*layout), "; slots are numbered rank by rank)"));
      }
    }
    if (l == 0) {
      num_slots = static_cast<int64_t>(phy2log.size() - row_begin);
      const int64_t max_slots =
          int64_t{ShapeLimits::kMaxRedundancyFactor} * ShapeLimits::kMaxLogicalExperts;
      if (num_slots > max_slots) {
        return Invalid(absl::StrCat("layer_list[0] holds ", num_slots, " slots in all, more than ",
                                    max_slots));
      }
      // Every rank holds at least one slot, so num_slots ≥ num_ranks.
      layout.emplace(static_cast<int32_t>(num_slots), static_cast<int32_t>(num_ranks));
      // Slots are numbered rank by rank: the ranks' slot counts must follow the layout.
      for (int32_t r = 0; r < num_ranks; ++r) {
        if (held_in_layer0[r] != layout->SlotsOnRank(r)) {
          return Invalid(absl::StrCat("layer_list[0].device_list[", r, "] holds ",
                                      held_in_layer0[r], " experts, expected ",
                                      layout->SlotsOnRank(r), " (", DescribeLayout(*layout),
                                      "; slots are numbered rank by rank)"));
        }
      }
    }
  }

  const int64_t num_experts = LogicalExperts(hints, phy2log);
  DeploymentShape shape;
  RETURN_IF_ERROR(
      PrefixShapeError(CheckShape(num_layers, num_experts, num_ranks, num_slots, &shape)));
  ASSIGN_OR_RETURN(ExpertMap map,
                   ExpertMap::FromPhy2Log(shape.num_layers, shape.num_logical_experts, *layout,
                                          std::move(phy2log)));
  return ParsedExpertMap{std::move(map), MapFormat::kVllmAscend, 0};
}

// ---- sglang ------------------------------------------------------------------------------------

absl::StatusOr<ParsedExpertMap> ParseSglangMap(const JsonValue& root, const MapShapeHints& hints) {
  if (hints.num_ranks == 0) {
    return Invalid("sglang maps carry no rank count: num_ranks is required");
  }
  constexpr char kKey[] = "physical_to_logical_map";
  // SGLang passes the file's keys as keyword arguments: any other key fails its start.
  for (const JsonValue::Member& member : root.object_members()) {
    if (member.first != kKey) {
      std::string key;
      AppendJsonString(&key, member.first);
      return Invalid(absl::StrCat("unexpected key ", key, ": an sglang map holds only ", kKey,
                                  " (SGLang refuses any other key)"));
    }
  }
  ASSIGN_OR_RETURN(const JsonValue* v, RequireMember(root, kKey));
  JsonValue::Array scratch;
  ASSIGN_OR_RETURN(const JsonValue::Array* rows,
                   ReadArray(*v, [&] { return std::string(kKey); }, &scratch));
  if (rows->empty()) return Invalid(absl::StrCat(kKey, " has no rows"));
  const int64_t num_rows = static_cast<int64_t>(rows->size());
  if (hints.layer_ids && num_rows != hints.layer_ids->num_hidden_layers()) {
    return Invalid(absl::StrCat(kKey, " has ", num_rows, " rows, but the layer ids name ",
                                hints.layer_ids->num_hidden_layers(), " hidden layers (",
                                hints.layer_ids->DebugString(), ")"));
  }
  if (!hints.layer_ids && num_rows > ShapeLimits::kMaxLayers) {
    return Invalid(absl::StrCat(kKey, " has ", num_rows, " rows, more than ",
                                ShapeLimits::kMaxLayers, " layers"));
  }
  const int64_t num_layers = hints.layer_ids ? hints.layer_ids->num_moe_layers() : num_rows;
  const int64_t max_expert = MaxExpertIndex(hints);
  // Every row is read and checked; the rows of dense layers are then dropped.
  std::vector<int32_t> phy2log;
  int64_t num_slots = -1;
  std::string row_what;
  for (int64_t h = 0; h < num_rows; ++h) {
    const size_t row_begin = phy2log.size();
    RETURN_IF_ERROR(ReadIntRow((*rows)[h], [&] { return absl::StrCat(kKey, "[", h, "]"); },
                               num_slots, row_what, 0, max_expert, &phy2log));
    if (h == 0) {
      num_slots = static_cast<int64_t>(phy2log.size());
      if (num_slots == 0) return Invalid(absl::StrCat(kKey, "[0] is empty"));
      row_what = absl::StrCat(num_slots, " (as ", kKey, "[0])");
      phy2log.reserve(static_cast<size_t>(num_slots * (num_layers + 1)));
    }
    if (hints.layer_ids && hints.layer_ids->MoeLayerOf(static_cast<int32_t>(h)) < 0) {
      phy2log.resize(row_begin);
    }
  }
  const int64_t num_experts = LogicalExperts(hints, phy2log);
  DeploymentShape shape;
  RETURN_IF_ERROR(
      PrefixShapeError(CheckShape(num_layers, num_experts, hints.num_ranks, num_slots, &shape)));
  ASSIGN_OR_RETURN(ExpertMap map,
                   ExpertMap::FromPhy2Log(shape.num_layers, shape.num_logical_experts,
                                          shape.slot_layout(), std::move(phy2log)));
  return ParsedExpertMap{std::move(map), MapFormat::kSglang, 0};
}

// ---- Writing -----------------------------------------------------------------------------------

// Collects output in a buffer and hands it to the sink in pieces of about kPieceBytes, so that a
// large map is written without ever holding its whole text.
class PieceWriter {
 public:
  static constexpr size_t kPieceBytes = 64 << 10;
  explicit PieceWriter(absl::FunctionRef<void(absl::string_view)> sink) : sink_(sink) {
    out_.reserve(2 * kPieceBytes);
  }
  ~PieceWriter() { Flush(); }
  std::string* out() { return &out_; }
  void MaybeFlush() {
    if (out_.size() >= kPieceBytes) Flush();
  }
  void Flush() {
    if (!out_.empty()) sink_(out_);
    out_.clear();
  }

 private:
  absl::FunctionRef<void(absl::string_view)> sink_;
  std::string out_;
};

// Appends "[\n<indent>  row,\n…\n<indent>]" with one line per row, each written by `write_row`.
template <typename WriteRow>
void AppendRows(PieceWriter& w, int64_t num_rows, absl::string_view indent,
                const WriteRow& write_row) {
  std::string* out = w.out();
  out->append("[\n");
  for (int64_t i = 0; i < num_rows; ++i) {
    out->append(indent.data(), indent.size());
    out->append("  ");
    write_row(i);
    out->append(i + 1 < num_rows ? ",\n" : "\n");
    w.MaybeFlush();
  }
  out->append(indent.data(), indent.size());
  out->push_back(']');
}

void AppendKey(std::string* out, absl::string_view indent, absl::string_view key) {
  out->append(indent.data(), indent.size());
  AppendJsonString(out, key);
  out->append(": ");
}

void WriteEplbMap(const ExpertMap& map, int64_t version, std::span<const double> replica_share,
                  PieceWriter& w) {
  const int32_t L = map.num_layers(), E = map.num_logical_experts(), P = map.num_physical_experts();
  const int32_t R = map.num_ranks(), W = map.log2phy_width();
  std::string* out = w.out();
  out->append("{\n");
  AppendKey(out, "  ", "format");
  AppendJsonString(out, kEplbFormatId);
  const auto append_int_field = [&](absl::string_view key, int64_t value) {
    out->append(",\n");
    AppendKey(out, "  ", key);
    AppendJsonInt(out, value);
  };
  append_int_field("version", version);
  append_int_field("num_layers", L);
  append_int_field("num_logical_experts", E);
  append_int_field("num_physical_experts", P);
  append_int_field("num_ranks", R);
  out->append(",\n");
  AppendKey(out, "  ", "slots_per_rank");
  std::vector<int32_t> slots_per_rank(R);
  for (int32_t r = 0; r < R; ++r) slots_per_rank[r] = map.layout().SlotsOnRank(r);
  AppendJsonIntArray(out, slots_per_rank);

  out->append(",\n");
  AppendKey(out, "  ", "phy2log");
  AppendRows(w, L, "  ", [&](int64_t l) { AppendJsonIntArray(out, map.phy2log(l)); });
  out->append(",\n");
  AppendKey(out, "  ", "log2phy");
  // log2phy is mostly padding (P − E + 1 entries per expert, where most experts have one or two
  // replicas), so its rows are written without spaces: 3 bytes per padding entry, not 4. Each
  // expert's padding is copied from one prepared run of ",-1".
  std::string padding;
  for (int32_t i = 0; i < W; ++i) padding.append(",-1");
  AppendRows(w, L, "  ", [&](int64_t l) {
    out->push_back('[');
    for (int32_t e = 0; e < E; ++e) {
      if (e > 0) out->push_back(',');
      // One slot or more: an ExpertMap places every expert.
      const std::span<const int32_t> slots = map.replicas(static_cast<int32_t>(l), e);
      AppendJsonIntArray(out, slots, ",");
      out->pop_back();  // its ']'
      out->append(padding, 0, 3 * (static_cast<size_t>(W) - slots.size()));
      out->push_back(']');
    }
    out->push_back(']');
  });
  out->append(",\n");
  AppendKey(out, "  ", "logcnt");
  AppendRows(w, L, "  ", [&](int64_t l) { AppendJsonIntArray(out, map.logcnt(l)); });
  if (!replica_share.empty()) {
    out->append(",\n");
    AppendKey(out, "  ", "replica_share");
    AppendRows(w, L, "  ", [&](int64_t l) {
      out->push_back('[');
      for (int32_t p = 0; p < P; ++p) {
        if (p > 0) out->append(", ");
        AppendJsonNumber(out, replica_share[static_cast<size_t>(l) * P + p]);
      }
      out->push_back(']');
    });
  }
  out->append("\n}\n");
}

void WriteVllmAscendMap(const ExpertMap& map, PieceWriter& w) {
  const int32_t L = map.num_layers(), R = map.num_ranks();
  const SlotLayout& layout = map.layout();
  std::string* out = w.out();
  out->append("{\n");
  AppendKey(out, "  ", "moe_layer_count");
  AppendJsonInt(out, L);
  out->append(",\n");
  AppendKey(out, "  ", "layer_list");
  AppendRows(w, L, "  ", [&](int64_t l) {
    out->append("{\"layer_id\": ");
    AppendJsonInt(out, l);
    out->append(", \"device_count\": ");
    AppendJsonInt(out, R);
    out->append(", \"device_list\": ");
    const auto row = map.phy2log(static_cast<int32_t>(l));
    AppendRows(w, R, "    ", [&](int64_t r) {
      const int32_t rank = static_cast<int32_t>(r);
      out->append("{\"device_id\": ");
      AppendJsonInt(out, r);
      out->append(", \"device_expert\": ");
      AppendJsonIntArray(out, row.subspan(layout.FirstSlotOfRank(rank), layout.SlotsOnRank(rank)));
      out->push_back('}');
    });
    out->push_back('}');
  });
  out->append("\n}\n");
}

// A row per hidden layer; a dense layer's row is SGLang's trivial one, slot p holding expert
// p mod E.
void WriteSglangMap(const ExpertMap& map, const LayerIds& layer_ids, PieceWriter& w) {
  const int32_t P = map.num_physical_experts(), E = map.num_logical_experts();
  std::vector<int32_t> trivial(P);
  for (int32_t p = 0; p < P; ++p) trivial[p] = p % E;
  std::string* out = w.out();
  out->append("{\n");
  AppendKey(out, "  ", "physical_to_logical_map");
  AppendRows(w, layer_ids.num_hidden_layers(), "  ", [&](int64_t h) {
    const int32_t layer = layer_ids.MoeLayerOf(static_cast<int32_t>(h));
    AppendJsonIntArray(out, layer < 0 ? std::span<const int32_t>(trivial) : map.phy2log(layer));
  });
  out->append("\n}\n");
}

}  // namespace

absl::StatusOr<MapFormat> ParseMapFormat(absl::string_view name) {
  for (MapFormat format :
       {MapFormat::kEplb, MapFormat::kVllmAscend, MapFormat::kSglang, MapFormat::kTrtllm}) {
    if (name == MapFormatName(format)) return format;
  }
  std::string message = "unknown map format ";
  AppendJsonString(&message, name);
  absl::StrAppend(&message, ": expected eplb, vllm-ascend, sglang or trtllm");
  return Invalid(std::move(message));
}

absl::string_view MapFormatName(MapFormat format) {
  switch (format) {
    case MapFormat::kEplb:
      return "eplb";
    case MapFormat::kVllmAscend:
      return "vllm-ascend";
    case MapFormat::kSglang:
      return "sglang";
    case MapFormat::kTrtllm:
      return "trtllm";
  }
  return "unknown";
}

absl::StatusOr<LoadMatrix> ParseLoadJson(absl::string_view json) {
  ASSIGN_OR_RETURN(const JsonValue root, ParseJson(json));
  if (!root.is_object()) {
    return Invalid(
        absl::StrCat("expected a JSON object at the top level, found ", WithArticle(root.type())));
  }
  ASSIGN_OR_RETURN(const JsonValue* load_value, RequireMember(root, "load"));
  JsonValue::Array rows_scratch, values_scratch;
  ASSIGN_OR_RETURN(const JsonValue::Array* rows,
                   ReadArray(*load_value, [] { return std::string("load"); }, &rows_scratch));
  if (rows->empty()) return Invalid("load has no rows");
  if (rows->size() > static_cast<size_t>(ShapeLimits::kMaxLayers)) {
    return Invalid(absl::StrCat("load has ", rows->size(), " rows, more than ",
                                ShapeLimits::kMaxLayers, " layers"));
  }
  LoadMatrix load;
  load.num_layers = static_cast<int32_t>(rows->size());
  for (int32_t l = 0; l < load.num_layers; ++l) {
    const JsonValue& row = (*rows)[l];
    if (row.is_int_array() && l > 0 && row.array_size() == static_cast<size_t>(load.num_experts)) {
      for (const int64_t v : row.int_array_items()) load.values.push_back(static_cast<double>(v));
      continue;  // the common case: integer counts
    }
    ASSIGN_OR_RETURN(const JsonValue::Array* values,
                     ReadArray(row, [&] { return absl::StrCat("load[", l, "]"); }, &values_scratch));
    if (l == 0) {
      if (values->empty()) return Invalid("load[0] is empty");
      if (values->size() > static_cast<size_t>(ShapeLimits::kMaxLogicalExperts)) {
        return Invalid(absl::StrCat("load[0] has ", values->size(), " values, more than ",
                                    ShapeLimits::kMaxLogicalExperts, " experts"));
      }
      load.num_experts = static_cast<int32_t>(values->size());
      load.values.reserve(static_cast<size_t>(load.num_layers) * load.num_experts);
    } else if (values->size() != static_cast<size_t>(load.num_experts)) {
      return Invalid(absl::StrCat("load[", l, "] has ", values->size(), " values, expected ",
                                  load.num_experts, " (as load[0])"));
    }
    for (size_t e = 0; e < values->size(); ++e) {
      const JsonValue& v = (*values)[e];
      if (!v.is_number()) return Invalid(absl::StrCat("load[", l, "][", e, "] is not a number"));
      load.values.push_back(v.number_value());
    }
  }
  RETURN_IF_ERROR(ValidateLoad(load, load.num_layers, load.num_experts));
  return load;
}

std::string LoadToJson(const LoadMatrix& load) {
  std::string json;
  // PieceWriter keeps a reference to the sink: it must outlive the writer.
  const auto append = [&json](absl::string_view piece) { json.append(piece.data(), piece.size()); };
  PieceWriter writer(append);
  std::string* out = writer.out();
  out->append("{\n");
  AppendKey(out, "  ", "load");
  AppendRows(writer, load.num_layers, "  ", [&](int64_t l) {
    out->push_back('[');
    const auto row = load.row(static_cast<int32_t>(l));
    for (size_t e = 0; e < row.size(); ++e) {
      if (e > 0) out->append(", ");
      AppendJsonNumber(out, row[e]);
    }
    out->push_back(']');
  });
  out->append("\n}\n");
  writer.Flush();
  return json;
}

absl::Status CheckReplicaShares(const ExpertMap& map, std::span<const double> share) {
  const int32_t L = map.num_layers(), E = map.num_logical_experts(), P = map.num_physical_experts();
  const size_t expected = static_cast<size_t>(L) * P;
  if (share.size() != expected) {
    return Invalid(absl::StrCat("replica_share has ", share.size(),
                                " entries, expected num_layers × num_physical_experts = ", L, " × ",
                                P, " = ", expected));
  }
  for (int32_t l = 0; l < L; ++l) {
    const std::span<const double> row = share.subspan(static_cast<size_t>(l) * P, P);
    for (int32_t p = 0; p < P; ++p) {
      if (!(row[p] >= 0.0 && row[p] <= 1.0)) {  // NaN fails both
        return Invalid(
            absl::StrCat("replica_share[", l, "][", p, "] = ", row[p], " is out of range [0, 1]"));
      }
    }
    for (int32_t e = 0; e < E; ++e) {
      const std::span<const int32_t> slots = map.replicas(l, e);
      double sum = 0;
      for (const int32_t p : slots) sum += row[p];
      if (!(std::abs(sum - 1.0) <= kReplicaShareSumTolerance)) {
        constexpr size_t kNamed = 8;
        std::string named = absl::StrJoin(slots.subspan(0, std::min(slots.size(), kNamed)), ", ");
        if (slots.size() > kNamed) absl::StrAppend(&named, ", …");
        return Invalid(absl::StrCat("replica_share[", l, "]: the shares of expert ", e, " (slot",
                                    slots.size() > 1 ? "s " : " ", named, ") sum to ",
                                    absl::StrFormat("%.9g", sum), ", expected 1"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckMapWritable(const ExpertMap& map, MapFormat format, const LayerIds* layer_ids,
                              std::span<const double> replica_share) {
  if (layer_ids != nullptr) RETURN_IF_ERROR(layer_ids->CheckFits(map.num_layers(), "the map"));
  if (!replica_share.empty()) {
    if (format != MapFormat::kEplb) {
      return Invalid(absl::StrCat("replica shares are carried by the eplb format only, not ",
                                  MapFormatName(format)));
    }
    RETURN_IF_ERROR(CheckReplicaShares(map, replica_share));
  }
  if (format == MapFormat::kTrtllm && map.num_physical_experts() % map.num_ranks() != 0) {
    return Invalid(
        absl::StrCat("the map has ", map.num_physical_experts(), " slots on ", map.num_ranks(),
                     " ranks: TensorRT-LLM needs the same number of slots on every rank"));
  }
  return absl::OkStatus();
}

void WriteExpertMapText(const ExpertMap& map, MapFormat format, int64_t version,
                        absl::FunctionRef<void(absl::string_view)> sink, const LayerIds* layer_ids,
                        std::span<const double> replica_share) {
  const absl::Status writable = CheckMapWritable(map, format, layer_ids, replica_share);
  EPLB_CHECK(writable.ok(), writable.message());
  if (format == MapFormat::kTrtllm) {
    internal::WriteTrtllmMap(map, layer_ids ? *layer_ids : LayerIds::AllMoe(map.num_layers()),
                             sink);
    return;
  }
  PieceWriter writer(sink);
  switch (format) {
    case MapFormat::kEplb:
      EPLB_CHECK(version >= 0, "version ", version);
      WriteEplbMap(map, version, replica_share, writer);
      return;  // ~PieceWriter hands over the rest
    case MapFormat::kVllmAscend:
      WriteVllmAscendMap(map, writer);
      return;
    case MapFormat::kSglang:
      WriteSglangMap(map, layer_ids ? *layer_ids : LayerIds::AllMoe(map.num_layers()), writer);
      return;
    case MapFormat::kTrtllm:
      break;  // above
  }
  EPLB_CHECK(false, "unknown map format ", static_cast<int>(format));
}

std::string ExpertMapToText(const ExpertMap& map, MapFormat format, int64_t version,
                            const LayerIds* layer_ids, std::span<const double> replica_share) {
  std::string json;
  WriteExpertMapText(
      map, format, version,
      [&json](absl::string_view piece) { json.append(piece.data(), piece.size()); }, layer_ids,
      replica_share);
  return json;
}

absl::StatusOr<ParsedExpertMap> ParseExpertMapJson(absl::string_view json,
                                                   const MapShapeHints& hints) {
  RETURN_IF_ERROR(CheckHints(hints));
  ASSIGN_OR_RETURN(const JsonValue root, ParseJson(json));
  if (!root.is_object()) {
    return Invalid(
        absl::StrCat("expected a JSON object at the top level, found ", WithArticle(root.type())));
  }
  const bool eplb = root.Find("format") != nullptr || root.Find("phy2log") != nullptr;
  const bool vllm = root.Find("moe_layer_count") != nullptr || root.Find("layer_list") != nullptr;
  const bool sglang = root.Find("physical_to_logical_map") != nullptr;
  const int matches = int{eplb} + int{vllm} + int{sglang};
  if (matches == 0) {
    return Invalid(
        "not an expert map in a known format: expected {\"format\": \"eplb.expert_map.v1\", …} "
        "(eplb), {\"moe_layer_count\": …, \"layer_list\": […]} (vllm-ascend) or "
        "{\"physical_to_logical_map\": […]} (sglang)");
  }
  if (matches > 1) {
    std::vector<std::string> names;
    if (eplb) names.push_back("eplb");
    if (vllm) names.push_back("vllm-ascend");
    if (sglang) names.push_back("sglang");
    return Invalid(absl::StrCat("ambiguous expert map: it has keys of the ",
                                absl::StrJoin(names, " and the "), " formats"));
  }
  if (sglang) return ParseSglangMap(root, hints);
  ASSIGN_OR_RETURN(ParsedExpertMap parsed,
                   eplb ? ParseEplbMap(root, hints) : ParseVllmAscendMap(root, hints));
  // Rows are MoE layers: they must be as many as the layer ids name.
  if (hints.layer_ids)
    RETURN_IF_ERROR(hints.layer_ids->CheckFits(parsed.map.num_layers(), "the map"));
  return parsed;
}

absl::StatusOr<ParsedExpertMap> ParseExpertMap(absl::string_view text, const MapShapeHints& hints) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != absl::string_view::npos && text[first] == '{') {
    return ParseExpertMapJson(text, hints);
  }
  RETURN_IF_ERROR(CheckHints(hints));
  return internal::ParseTrtllmMap(text, hints);
}

}  // namespace eplb
