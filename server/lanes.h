// LaneExecutor: a fixed pool of threads running tasks in lanes. Tasks posted to one lane (a key:
// the planner uses deployment names) run one at a time, in the order posted; tasks of different
// lanes run in parallel. So a deployment's plan state needs no more than its own lane, and a slow
// policy run of one deployment never holds up another's.
//
// A lane's queue is bounded for the tasks posted with `bounded` (callers' operations); tasks
// posted with a coalescing tag are dropped while one with the same tag waits in the lane (a queued
// re-evaluation or timer check covers a second one).
//
// Thread-safe.
#ifndef EPLB_SERVER_LANES_H_
#define EPLB_SERVER_LANES_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

namespace eplb::server {

class LaneExecutor {
 public:
  using Task = std::function<void()>;
  enum class Posted { kQueued, kCoalesced, kLaneFull, kStopped };
  // No coalescing.
  static constexpr int kNoTag = -1;

  // 1 ≤ threads ≤ 1024; 1 ≤ max_queued_per_lane.
  LaneExecutor(int threads, int max_queued_per_lane);
  // Stop().
  ~LaneExecutor();
  LaneExecutor(const LaneExecutor&) = delete;
  LaneExecutor& operator=(const LaneExecutor&) = delete;

  // Queues `task` in `lane`. kLaneFull (nothing queued) when `bounded` and the lane holds
  // max_queued_per_lane bounded tasks waiting; kCoalesced when `tag` ≠ kNoTag and a task with that
  // tag waits (not yet running) in the lane; kStopped after Stop().
  Posted Post(const std::string& lane, Task task, bool bounded = false, int tag = kNoTag);

  // Runs what is queued (and what those tasks queue), then joins the threads; later Posts are
  // kStopped. Idempotent; not from a task, and not from two threads at once.
  void Stop();

  // The lane whose task runs on the calling thread, or nullptr.
  static const std::string* CurrentLane();

 private:
  struct Entry {
    Task task;
    bool bounded;
    int tag;
  };
  struct Lane {
    std::deque<Entry> queue;
    int bounded_waiting = 0;
    bool running = false;
  };

  void Run();

  const int max_queued_per_lane_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Lane> lanes_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> ready_ ABSL_GUARDED_BY(mu_);  // lanes with work and none running
  int running_ ABSL_GUARDED_BY(mu_) = 0;  // tasks running now
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;  // touched by the constructor and Stop() only
};

}  // namespace eplb::server

#endif  // EPLB_SERVER_LANES_H_
