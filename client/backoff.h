// Backoff: the waits between the attempts of one retried operation, exponential with full jitter.
//
// After the n-th failure in a row (n = 0, 1, …) the wait is drawn uniformly from
// [0, min(max, initial × 2^n)]. The randomness spreads clients that failed at the same moment (every
// rank of a deployment when the planner restarts) over the whole interval instead of bringing them
// back in lockstep. Reset() after a success starts again from `initial`.
//
// Not thread-safe: one per retry loop.
#ifndef EPLB_CLIENT_BACKOFF_H_
#define EPLB_CLIENT_BACKOFF_H_

#include <grpcpp/channel.h>

#include <cstdint>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace eplb::client {

struct BackoffOptions {
  absl::Duration initial = absl::Milliseconds(100);  // the first ceiling, > 0
  absl::Duration max = absl::Seconds(5);             // the largest ceiling, ≥ initial
};

class Backoff {
 public:
  // INVALID_ARGUMENT unless 0 < initial ≤ max; the message names `owner`'s fields
  // ("<owner>: backoff must satisfy 0 < initial_backoff (…) ≤ max_backoff (…)").
  static absl::Status Validate(const BackoffOptions& options, absl::string_view owner);

  // `seed` picks the random sequence (tests pass a fixed one); by default every Backoff draws its
  // own from std::random_device. REQUIRES: Validate(options).ok().
  explicit Backoff(BackoffOptions options);
  Backoff(BackoffOptions options, uint64_t seed);

  // The wait before the next attempt, in [0, ceiling()]; then doubles the ceiling, up to max.
  absl::Duration Next();
  // After a success: the next wait is drawn from [0, initial] again.
  void Reset() { ceiling_ = options_.initial; }
  // The bound of the next wait.
  absl::Duration ceiling() const { return ceiling_; }

 private:
  BackoffOptions options_;
  absl::Duration ceiling_;
  std::mt19937_64 rng_;
};

// Waits `delay` before retrying an RPC on `channel` that failed, or less: it returns once `*stop` is
// true (read under `mu`; checked every 50 ms), and, when the channel was not connected (the planner
// away or restarting), as soon as it connects again, so that the retry goes within the channel's
// reconnect delay of the planner serving again instead of at the end of a backoff step (yet never
// before min(delay, 100 ms)). A channel that is connected (the attempt failed for another reason)
// waits the whole delay.
// REQUIRES: `mu` not held.
void WaitBeforeRetry(grpc::Channel* channel, absl::Duration delay, absl::Mutex* mu,
                     const bool* stop);

}  // namespace eplb::client

#endif  // EPLB_CLIENT_BACKOFF_H_
