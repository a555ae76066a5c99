// The one conversion between eplb.v1 wire messages and core types, and between absl::Status and
// grpc::Status (with the ErrorDetail the API promises). Used by server/ and client/; core/ never
// sees a proto type.
#ifndef EPLB_PROTO_CONVERT_H_
#define EPLB_PROTO_CONVERT_H_

#include <grpcpp/support/status.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/expert_map.h"
#include "core/shape.h"
#include "eplb/v1/errors.pb.h"
#include "eplb/v1/planner.pb.h"
#include "google/protobuf/timestamp.pb.h"

namespace eplb {

// ---- Shapes and maps ----------------------------------------------------------------------------

// 0 for num_groups / num_nodes means 1. Does not validate (ValidateShape does).
DeploymentShape ShapeFromProto(const v1::Shape& shape);
void ShapeToProto(const DeploymentShape& shape, v1::Shape* out);

void ExpertMapToProto(const ExpertMap& map, v1::ExpertMap* out);
// Validates the sizes and the tables (INVALID_ARGUMENT naming the first offending entry, prefixed
// with `field`, e.g. "plan.map.phy2log[3]: ...").
absl::StatusOr<ExpertMap> ExpertMapFromProto(const v1::ExpertMap& map,
                                             absl::string_view field = "map");

// ---- Map deltas (v1::MapDelta, on WatchPlans streams) ------------------------------------------

// A hash of everything in `map` (its counts, phy2log and replica_rank; FNV-1a, 64 bits): what
// MapDelta.base_map_hash names. Unlike ExpertMap::Hash (phy2log only) it tells apart maps whose
// replicas are ranked differently.
uint64_t MapContentHash(const v1::ExpertMap& map);
// Appends `layers` (ascending, after any already there) and their rows in `map` to `delta`:
// phy2log packed, replica_rank left out while every row ranks its replicas in slot order. REQUIRES:
// `map` lists every slot (phy2log and replica_rank both L × P) and the layers are in range.
void AppendMapRows(const v1::ExpertMap& map, std::span<const int32_t> layers, v1::MapDelta* delta);
// The map that `delta` describes: `base` (nullptr for base_version 0) with the delta's layers
// replaced, in the shape of `shape` (its four counts; its rows are ignored). INVALID_ARGUMENT
// naming what does not fit: a shape outside ValidateShape's limits (checked before anything is
// sized by it), a base of another shape or without every row, layers out of order or
// out of range, rows of the wrong size, base_version 0 without every layer. Neither the rows nor
// the hash are validated here (ExpertMapFromProto and ExpertMap::Hash do that).
absl::StatusOr<v1::ExpertMap> ApplyMapDelta(const v1::ExpertMap* base, const v1::ExpertMap& shape,
                                            const v1::MapDelta& delta);

// ---- Time ---------------------------------------------------------------------------------------

void TimeToProto(absl::Time time, google::protobuf::Timestamp* out);
absl::Time TimeFromProto(const google::protobuf::Timestamp& time);

// ---- Errors -------------------------------------------------------------------------------------

// An error status with an ErrorDetail (reason and field path) attached as a payload. It survives
// ToGrpcStatus, which moves it into the grpc-status-details-bin trailer.
absl::Status ErrorWithDetail(absl::StatusCode code, v1::ErrorReason reason, absl::string_view field,
                             absl::string_view message);
// The detail of a status made by ErrorWithDetail or FromGrpcStatus, if any.
std::optional<v1::ErrorDetail> GetErrorDetail(const absl::Status& status);

// absl → grpc at the server's edge: same code and message; the ErrorDetail, if any, travels as an
// eplb.v1.Status (google.rpc.Status layout) in the error details.
grpc::Status ToGrpcStatus(const absl::Status& status);
// grpc → absl at the client's edge, keeping the ErrorDetail.
absl::Status FromGrpcStatus(const grpc::Status& status);

// "INVALID_ARGUMENT: message" with the reason appended when known: what eplbctl prints.
std::string StatusToDisplayString(const absl::Status& status);

}  // namespace eplb

#endif  // EPLB_PROTO_CONVERT_H_
