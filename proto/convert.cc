#include "proto/convert.h"

#include <utility>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

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
