#include "proto/convert.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/numeric/int128.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace eplb {
namespace {

constexpr absl::string_view kDetailPayloadUrl = "type.googleapis.com/eplb.v1.ErrorDetail";

}  // namespace

DeploymentShape ShapeFromProto(const v1::Shape& shape) {
  return DeploymentShape{
      .num_layers = shape.num_layers(),
      .num_logical_experts = shape.num_logical_experts(),
      .num_groups = shape.num_groups() == 0 ? 1 : shape.num_groups(),
      .num_nodes = shape.num_nodes() == 0 ? 1 : shape.num_nodes(),
      .num_ranks = shape.num_ranks(),
      .num_physical_experts = shape.num_physical_experts(),
  };
}

void ShapeToProto(const DeploymentShape& shape, v1::Shape* out) {
  out->set_num_layers(shape.num_layers);
  out->set_num_logical_experts(shape.num_logical_experts);
  out->set_num_groups(shape.num_groups);
  out->set_num_nodes(shape.num_nodes);
  out->set_num_ranks(shape.num_ranks);
  out->set_num_physical_experts(shape.num_physical_experts);
}

void ExpertMapToProto(const ExpertMap& map, v1::ExpertMap* out) {
  out->set_num_layers(map.num_layers());
  out->set_num_logical_experts(map.num_logical_experts());
  out->set_num_physical_experts(map.num_physical_experts());
  out->set_num_ranks(map.num_ranks());
  const std::vector<int32_t>& phy2log = map.phy2log_table();
  out->mutable_phy2log()->Assign(phy2log.begin(), phy2log.end());
  auto* replica_rank = out->mutable_replica_rank();
  replica_rank->Resize(static_cast<int>(phy2log.size()), 0);
  const int32_t slots = map.num_physical_experts();
  for (int32_t layer = 0; layer < map.num_layers(); ++layer) {
    for (int32_t expert = 0; expert < map.num_logical_experts(); ++expert) {
      const auto replicas = map.replicas(layer, expert);
      for (size_t k = 0; k < replicas.size(); ++k) {
        replica_rank->Set(layer * slots + replicas[k], static_cast<int32_t>(k));
      }
    }
  }
}

absl::StatusOr<ExpertMap> ExpertMapFromProto(const v1::ExpertMap& map, absl::string_view field) {
  const auto prefixed = [field](const absl::Status& status) {
    return absl::Status(status.code(), absl::StrCat(field, ": ", status.message()));
  };
  if (map.num_layers() < 1 || map.num_logical_experts() < 1 || map.num_ranks() < 1 ||
      map.num_physical_experts() < map.num_ranks() ||
      map.num_physical_experts() < map.num_logical_experts()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": dimensions L=", map.num_layers(), " E=", map.num_logical_experts(),
                     " P=", map.num_physical_experts(), " R=", map.num_ranks(),
                     " must satisfy L, E, R ≥ 1 and P ≥ max(E, R)"));
  }
  const int64_t cells = int64_t{map.num_layers()} * map.num_physical_experts();
  if (map.phy2log_size() != cells) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": phy2log has ", map.phy2log_size(),
                                                   " entries, expected L × P = ", cells));
  }
  std::vector<int32_t> phy2log(map.phy2log().begin(), map.phy2log().end());
  const SlotLayout layout(map.num_physical_experts(), map.num_ranks());
  absl::StatusOr<ExpertMap> result;
  if (map.replica_rank_size() == 0) {
    result = ExpertMap::FromPhy2Log(map.num_layers(), map.num_logical_experts(), layout,
                                    std::move(phy2log));
  } else {
    if (map.replica_rank_size() != cells) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": replica_rank has ",
                                                     map.replica_rank_size(),
                                                     " entries, expected L × P = ", cells));
    }
    const std::vector<int32_t> replica_rank(map.replica_rank().begin(), map.replica_rank().end());
    result = ExpertMap::FromReplicaRanks(map.num_layers(), map.num_logical_experts(), layout,
                                         std::move(phy2log), replica_rank);
  }
  if (!result.ok()) return prefixed(result.status());
  return result;
}

// ---- Map deltas ---------------------------------------------------------------------------------

namespace {

// Bytes per phy2log entry in MapDelta.phy2log.
int Phy2LogWidth(int32_t num_logical_experts) { return num_logical_experts <= 256 ? 1 : 2; }

}  // namespace

uint64_t MapContentHash(const v1::ExpertMap& map) {
  uint64_t hash = 14695981039346656037ULL;  // FNV-1a, 64 bits
  const auto mix = [&hash](int32_t value) {
    const auto bits = static_cast<uint32_t>(value);
    for (int shift = 0; shift < 32; shift += 8) {
      hash ^= (bits >> shift) & 0xffu;
      hash *= 1099511628211ULL;
    }
  };
  for (const int32_t count :
       {map.num_layers(), map.num_logical_experts(), map.num_physical_experts(), map.num_ranks(),
        map.phy2log_size(), map.replica_rank_size()}) {
    mix(count);
  }
  for (const int32_t expert : map.phy2log()) mix(expert);
  for (const int32_t rank : map.replica_rank()) mix(rank);
  return hash;
}

void AppendMapRows(const v1::ExpertMap& map, std::span<const int32_t> layers, v1::MapDelta* delta) {
  const int32_t slots = map.num_physical_experts();
  const int width = Phy2LogWidth(map.num_logical_experts());
  std::string& packed = *delta->mutable_phy2log();
  const size_t offset = packed.size();
  packed.resize(offset + layers.size() * static_cast<size_t>(slots) * width);
  char* out = packed.data() + offset;
  bool slot_order = true;
  std::vector<int32_t> seen(map.num_logical_experts());
  for (const int32_t layer : layers) {
    delta->add_layers(layer);
    std::fill(seen.begin(), seen.end(), 0);
    for (int32_t p = layer * slots; p < (layer + 1) * slots; ++p) {
      const auto expert = static_cast<uint32_t>(map.phy2log(p));
      *out++ = static_cast<char>(expert & 0xff);
      if (width == 2) *out++ = static_cast<char>(expert >> 8);
      if (slot_order && map.replica_rank(p) != seen[expert]++) slot_order = false;
    }
  }
  // Rows already in the delta without replica ranks are in slot order; mixing is not expressible.
  if (slot_order && delta->replica_rank_size() == 0) return;
  EPLB_CHECK(delta->replica_rank_size() == static_cast<int>(offset / width),
             "AppendMapRows: earlier rows of this delta left replica_rank out");
  for (const int32_t layer : layers) {
    delta->mutable_replica_rank()->Add(map.replica_rank().begin() + layer * slots,
                                       map.replica_rank().begin() + (layer + 1) * slots);
  }
}

absl::StatusOr<v1::ExpertMap> ApplyMapDelta(const v1::ExpertMap* base, const v1::ExpertMap& shape,
                                            const v1::MapDelta& delta) {
  const int32_t layers = shape.num_layers();
  const int32_t slots = shape.num_physical_experts();
  const int32_t experts = shape.num_logical_experts();
  // A shape within the planner's limits first: nothing below is sized by an unchecked count.
  DeploymentShape checked;
  checked.num_layers = layers;
  checked.num_logical_experts = experts;
  checked.num_ranks = shape.num_ranks();
  checked.num_physical_experts = slots;
  if (const absl::Status valid = ValidateShape(checked); !valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("map_delta: the plan's map shape is not a map's: ", valid.message()));
  }
  // Sizes first: nothing is allocated for a shape the message's own rows do not back.
  const int width = Phy2LogWidth(experts);
  const int64_t rows = delta.layers_size();
  if (absl::uint128(delta.phy2log().size()) != absl::uint128(rows) * slots * width) {
    return absl::InvalidArgumentError(absl::StrCat("map_delta.phy2log has ", delta.phy2log().size(),
                                                   " bytes, expected ", rows, " layers × ", slots,
                                                   " slots × ", width));
  }
  if (delta.replica_rank_size() != 0 && delta.replica_rank_size() != rows * slots) {
    return absl::InvalidArgumentError(absl::StrCat("map_delta.replica_rank has ",
                                                   delta.replica_rank_size(),
                                                   " entries, expected 0 or ", rows * slots));
  }
  if (base == nullptr && rows != layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("map_delta: without a base it must list all ", layers, " layers, not ", rows));
  }
  const int64_t cells = int64_t{layers} * slots;
  v1::ExpertMap map;
  map.set_num_layers(layers);
  map.set_num_logical_experts(experts);
  map.set_num_physical_experts(slots);
  map.set_num_ranks(shape.num_ranks());
  if (base != nullptr) {
    if (base->num_layers() != layers || base->num_logical_experts() != experts ||
        base->num_physical_experts() != slots || base->num_ranks() != shape.num_ranks() ||
        base->phy2log_size() != cells || base->replica_rank_size() != cells) {
      return absl::InvalidArgumentError(
          absl::StrCat("map_delta: the base map (version ", delta.base_version(),
                       ") does not have the plan's shape with every row"));
    }
    *map.mutable_phy2log() = base->phy2log();
    *map.mutable_replica_rank() = base->replica_rank();
  } else {
    map.mutable_phy2log()->Resize(static_cast<int>(cells), 0);
    map.mutable_replica_rank()->Resize(static_cast<int>(cells), 0);
  }
  const auto* in = reinterpret_cast<const uint8_t*>(delta.phy2log().data());
  std::vector<int32_t> seen(experts);
  int32_t previous = -1;
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t layer = delta.layers(static_cast<int>(i));
    if (layer <= previous || layer >= layers) {
      return absl::InvalidArgumentError(absl::StrCat("map_delta.layers[", i, "] = ", layer,
                                                     " is out of order or out of range [0, ",
                                                     layers, ")"));
    }
    previous = layer;
    std::fill(seen.begin(), seen.end(), 0);
    for (int32_t p = 0; p < slots; ++p) {
      int32_t expert = *in++;
      if (width == 2) expert |= int32_t{*in++} << 8;
      const int64_t cell = int64_t{layer} * slots + p;
      map.set_phy2log(static_cast<int>(cell), expert);
      int32_t rank = 0;
      if (delta.replica_rank_size() != 0) {
        rank = delta.replica_rank(static_cast<int>(i * slots + p));
      } else if (expert < experts) {
        rank = seen[expert]++;
      }
      map.set_replica_rank(static_cast<int>(cell), rank);
    }
  }
  return map;
}

void TimeToProto(absl::Time time, google::protobuf::Timestamp* out) {
  const int64_t nanos = absl::ToUnixNanos(time);
  int64_t seconds = nanos / 1'000'000'000;
  int64_t remainder = nanos % 1'000'000'000;
  if (remainder < 0) {
    remainder += 1'000'000'000;
    --seconds;
  }
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(remainder));
}

absl::Time TimeFromProto(const google::protobuf::Timestamp& time) {
  return absl::FromUnixSeconds(time.seconds()) + absl::Nanoseconds(time.nanos());
}

absl::Status ErrorWithDetail(absl::StatusCode code, v1::ErrorReason reason, absl::string_view field,
                             absl::string_view message) {
  absl::Status status(code, message);
  v1::ErrorDetail detail;
  detail.set_reason(reason);
  detail.set_field(std::string(field));
  status.SetPayload(kDetailPayloadUrl, absl::Cord(detail.SerializeAsString()));
  return status;
}

std::optional<v1::ErrorDetail> GetErrorDetail(const absl::Status& status) {
  const auto payload = status.GetPayload(kDetailPayloadUrl);
  if (!payload.has_value()) return std::nullopt;
  v1::ErrorDetail detail;
  if (!detail.ParseFromString(std::string(*payload))) return std::nullopt;
  return detail;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const auto code = static_cast<grpc::StatusCode>(status.code());
  const std::string message(status.message());
  const std::optional<v1::ErrorDetail> detail = GetErrorDetail(status);
  if (!detail.has_value()) return grpc::Status(code, message);
  v1::Status wire;
  wire.set_code(static_cast<int32_t>(status.code()));
  wire.set_message(message);
  wire.add_details()->PackFrom(*detail);
  return grpc::Status(code, message, wire.SerializeAsString());
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const auto code = static_cast<absl::StatusCode>(status.error_code());
  v1::Status wire;
  if (!status.error_details().empty() && wire.ParseFromString(status.error_details())) {
    for (const auto& any : wire.details()) {
      v1::ErrorDetail detail;
      if (any.UnpackTo(&detail)) {
        return ErrorWithDetail(code, detail.reason(), detail.field(), status.error_message());
      }
    }
  }
  return absl::Status(code, status.error_message());
}

std::string StatusToDisplayString(const absl::Status& status) {
  std::string text = absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message());
  if (const auto detail = GetErrorDetail(status); detail.has_value()) {
    absl::StrAppend(&text, " [", v1::ErrorReason_Name(detail->reason()));
    if (!detail->field().empty()) absl::StrAppend(&text, " ", detail->field());
    absl::StrAppend(&text, "]");
  }
  return text;
}

}  // namespace eplb
