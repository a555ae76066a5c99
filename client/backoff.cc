#include "client/backoff.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
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

void WaitBeforeRetry(grpc::Channel* channel, absl::Duration delay, absl::Mutex* mu,
                     const bool* stop) {
  const auto stopping = [stop]() { return *stop; };
  if (channel->GetState(/*try_to_connect=*/false) == GRPC_CHANNEL_READY) {
    absl::MutexLock lock(mu);
    mu->AwaitWithTimeout(absl::Condition(&stopping), delay);
    return;
  }
  const absl::Time start = absl::Now();
  const absl::Time until = start + delay;
  // Even when the channel connects at once (a server that accepts and then fails every call),
  // at least this much of the delay is waited: no retry loop without a pause.
  const absl::Time earliest = start + std::min(delay, absl::Milliseconds(100));
  for (absl::Time now = start; now < until; now = absl::Now()) {
    {
      absl::MutexLock lock(mu);
      if (*stop) return;
    }
    const absl::Time slice = std::min(until, now + absl::Milliseconds(50));
    if (channel->WaitForConnected(absl::ToChronoTime(slice))) {
      if (absl::Now() >= earliest) return;
      absl::MutexLock lock(mu);
      mu->AwaitWithTimeout(absl::Condition(&stopping), earliest - absl::Now());
      return;
    }
  }
}

}  // namespace eplb::client
