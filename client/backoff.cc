#include "client/backoff.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace eplb::client {

absl::Status Backoff::Validate(const BackoffOptions& options, absl::string_view owner) {
  if (options.initial <= absl::ZeroDuration() || options.max < options.initial) {
    return absl::InvalidArgumentError(absl::StrCat(
        owner, ": backoff must satisfy 0 < initial_backoff (", absl::FormatDuration(options.initial),
        ") ≤ max_backoff (", absl::FormatDuration(options.max), ")"));
  }
  return absl::OkStatus();
}

Backoff::Backoff(BackoffOptions options) : Backoff(options, std::random_device{}()) {}

Backoff::Backoff(BackoffOptions options, uint64_t seed)
    : options_(options), ceiling_(options.initial), rng_(seed) {
  EPLB_CHECK(Validate(options, "Backoff").ok(), Validate(options, "Backoff").message());
}

absl::Duration Backoff::Next() {
  // Nanosecond resolution: a ceiling of up to 292 years fits in int64.
  const int64_t bound = absl::ToInt64Nanoseconds(ceiling_);
  const int64_t wait = std::uniform_int_distribution<int64_t>(0, bound)(rng_);
  ceiling_ = std::min(ceiling_ * 2, options_.max);
  return absl::Nanoseconds(wait);
}

}  // namespace eplb::client
