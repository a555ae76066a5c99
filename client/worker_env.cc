#include "client/worker_env.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/status_macros.h"

namespace eplb::client {
namespace {

class Reader {
 public:
  explicit Reader(const std::function<const char*(const char*)>& lookup) : lookup_(lookup) {}

  const char* Raw(const char* name) const { return lookup_ ? lookup_(name) : std::getenv(name); }
  absl::StatusOr<std::string> Required(const char* name) const {
    const char* value = Raw(name);
    if (value == nullptr || *value == '\0') {
      return absl::InvalidArgumentError(absl::StrCat(name, " is required"));
    }
    return std::string(value);
  }
  std::string Optional(const char* name) const {
    const char* value = Raw(name);
    return value == nullptr ? std::string() : std::string(value);
  }
  // The variable as an integer in [lo, hi]; `fallback` when unset or empty.
  absl::StatusOr<int64_t> Int(const char* name, int64_t fallback, int64_t lo, int64_t hi,
                              bool required = false) const {
    const char* value = Raw(name);
    if (value == nullptr || *value == '\0') {
      if (required) return absl::InvalidArgumentError(absl::StrCat(name, " is required"));
      return fallback;
    }
    int64_t parsed = 0;
    if (!absl::SimpleAtoi(value, &parsed)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " = \"", value, "\" is not an integer"));
    }
    if (parsed < lo || parsed > hi) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " = ", parsed, " is out of range [", lo, ", ", hi, "]"));
    }
    return parsed;
  }

 private:
  const std::function<const char*(const char*)>& lookup_;
};

}  // namespace

absl::StatusOr<WorkerEnv> WorkerEnvFromEnvironment(
    const std::function<const char*(const char*)>& lookup) {
  const Reader env(lookup);
  WorkerEnv out;
  ASSIGN_OR_RETURN(out.planner, env.Required("EPLB_PLANNER"));
  ASSIGN_OR_RETURN(out.deployment, env.Required("EPLB_DEPLOYMENT"));
  ASSIGN_OR_RETURN(const int64_t rank, env.Int("EPLB_RANK", 0, 0, 65535, /*required=*/true));
  out.rank = static_cast<int32_t>(rank);
  ASSIGN_OR_RETURN(const int64_t device, env.Int("EPLB_LOCAL_DEVICE", -1, 0, 1023));
  out.local_device = static_cast<int32_t>(device);
  // A Secret made from a file often ends in a newline, which is not valid in a header.
  out.token = std::string(absl::StripAsciiWhitespace(env.Optional("EPLB_TOKEN")));
  out.tls_ca_file = env.Optional("EPLB_TLS_CA");
  ASSIGN_OR_RETURN(out.sync_every_steps, env.Int("EPLB_SYNC_EVERY_STEPS", 16, 1, 1'000'000));
  ASSIGN_OR_RETURN(out.report_every_steps, env.Int("EPLB_REPORT_EVERY_STEPS", 100, 1, 1'000'000));
  return out;
}

}  // namespace eplb::client
