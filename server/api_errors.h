// Errors of the planner's API with the ErrorDetail it promises (reason and field path): the
// helpers the spec validation (spec.h) and the planner share.
#ifndef EPLB_SERVER_API_ERRORS_H_
#define EPLB_SERVER_API_ERRORS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "eplb/v1/errors.pb.h"

namespace eplb::server {

// INVALID_ARGUMENT, FIELD_OUT_OF_RANGE: "<field> <message>".
absl::Status OutOfRange(absl::string_view field, absl::string_view message);
// INVALID_ARGUMENT, FIELD_REQUIRED: "<field> is required".
absl::Status Required(absl::string_view field);
// OK when low ≤ value ≤ high, else OutOfRange "<field> = <value> is out of range [low, high]".
absl::Status CheckRange(absl::string_view field, int64_t value, int64_t low, int64_t high);
// An error from core (which names the field in its message) with the API's field path and reason.
absl::Status Tagged(const absl::Status& status, v1::ErrorReason reason, absl::string_view field);
// A value taken from a request, fit to quote in an error message: C-escaped, and cut to its
// first 64 bytes with its length named when longer ("abc…" (10000 bytes)).
std::string Echo(absl::string_view text);
// NOT_FOUND, DEPLOYMENT_NOT_FOUND on field "deployment": deployment "<name>" not found (Echo).
absl::Status DeploymentNotFound(absl::string_view name);
// UNAVAILABLE: the planner is shutting down.
absl::Status ShuttingDown();

}  // namespace eplb::server

#endif  // EPLB_SERVER_API_ERRORS_H_
