// Time as the planner sees it. Components take a Clock* so that timeouts and checkpoint periods are
// tested by advancing a FakeClock instead of sleeping.
#ifndef EPLB_CORE_CLOCK_H_
#define EPLB_CORE_CLOCK_H_

#include <functional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace eplb {

// Thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // Whether time moves on its own. Waiters on a clock that does not (FakeClock) are woken by the
  // callbacks registered with OnAdvance instead of by deadlines.
  virtual bool IsReal() const = 0;
  // Registers a callback run (on the advancing thread) after every advance of a fake clock. A real
  // clock never calls it. The callback must outlive the clock's use.
  virtual void OnAdvance(std::function<void()> callback) = 0;
};

// The system clock. Get() returns a process-wide instance that is never destroyed.
class RealClock final : public Clock {
 public:
  static Clock* Get() {
    static RealClock* const clock = new RealClock;
    return clock;
  }
  absl::Time Now() const override { return absl::Now(); }
  bool IsReal() const override { return true; }
  void OnAdvance(std::function<void()>) override {}
};

// A clock that moves only when told to.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000)) : now_(start) {}

  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  bool IsReal() const override { return false; }
  void OnAdvance(std::function<void()> callback) override {
    absl::MutexLock lock(&mu_);
    callbacks_.push_back(std::move(callback));
  }
  // Moves time forward by `delta` (≥ 0) and runs the registered callbacks.
  void Advance(absl::Duration delta) {
    std::vector<std::function<void()>> callbacks;
    {
      absl::MutexLock lock(&mu_);
      now_ += delta;
      callbacks = callbacks_;
    }
    for (const auto& callback : callbacks) callback();
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void()>> callbacks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace eplb

#endif  // EPLB_CORE_CLOCK_H_
