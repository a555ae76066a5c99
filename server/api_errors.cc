#include "server/api_errors.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "proto/convert.h"

namespace eplb::server {

absl::Status OutOfRange(absl::string_view field, absl::string_view message) {
  return ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE, field,
                         absl::StrCat(field, " ", message));
}

absl::Status Required(absl::string_view field) {
  return ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::FIELD_REQUIRED, field,
                         absl::StrCat(field, " is required"));
}

absl::Status CheckRange(absl::string_view field, int64_t value, int64_t low, int64_t high) {
  if (value >= low && value <= high) return absl::OkStatus();
  return OutOfRange(field, absl::StrCat("= ", value, " is out of range [", low, ", ", high, "]"));
}

// Re-tags an error from core (which names the field in its message) with a field path and reason.
absl::Status Tagged(const absl::Status& status, v1::ErrorReason reason, absl::string_view field) {
  return ErrorWithDetail(status.code(), reason, field, status.message());
}

std::string Echo(absl::string_view text) {
  constexpr size_t kMaxEchoBytes = 64;
  if (text.size() <= kMaxEchoBytes) return absl::StrCat("\"", absl::CHexEscape(text), "\"");
  return absl::StrCat("\"", absl::CHexEscape(text.substr(0, kMaxEchoBytes)), "…\" (", text.size(),
                      " bytes)");
}

absl::Status DeploymentNotFound(absl::string_view name) {
  return ErrorWithDetail(absl::StatusCode::kNotFound, v1::DEPLOYMENT_NOT_FOUND, "deployment",
                         absl::StrCat("deployment ", Echo(name), " not found"));
}

absl::Status ShuttingDown() {
  return ErrorWithDetail(absl::StatusCode::kUnavailable, v1::SHUTTING_DOWN, "",
                         "the planner is shutting down");
}

}  // namespace eplb::server
