#include "server/lanes.h"

#include <algorithm>
#include <utility>

#include "core/check.h"

namespace eplb::server {
namespace {

thread_local const std::string* current_lane = nullptr;

}  // namespace

LaneExecutor::LaneExecutor(int threads, int max_queued_per_lane)
    : max_queued_per_lane_(max_queued_per_lane) {
  EPLB_CHECK(threads >= 1 && threads <= 1024, "LaneExecutor threads out of range");
  EPLB_CHECK(max_queued_per_lane >= 1, "LaneExecutor max_queued_per_lane out of range");
  threads_.reserve(threads);
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
}

LaneExecutor::~LaneExecutor() { Stop(); }

LaneExecutor::Posted LaneExecutor::Post(const std::string& lane, Task task, bool bounded,
                                        int tag) {
  absl::MutexLock lock(&mu_);
  if (stopped_) return Posted::kStopped;
  Lane& l = lanes_[lane];
  if (bounded && l.bounded_waiting >= max_queued_per_lane_) return Posted::kLaneFull;
  if (tag != kNoTag && std::any_of(l.queue.begin(), l.queue.end(),
                                   [tag](const Entry& e) { return e.tag == tag; })) {
    return Posted::kCoalesced;
  }
  l.queue.push_back({std::move(task), bounded, tag});
  if (bounded) ++l.bounded_waiting;
  if (!l.running && l.queue.size() == 1) ready_.push_back(lane);
  return Posted::kQueued;
}

void LaneExecutor::Run() {
  absl::MutexLock lock(&mu_);
  while (true) {
    const auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !ready_.empty() || (stopping_ && running_ == 0);
    };
    mu_.Await(absl::Condition(&has_work));
    // Stopping, nothing queued and nothing running that could queue more.
    if (ready_.empty()) return;
    const std::string name = std::move(ready_.front());
    ready_.pop_front();
    Lane& lane = lanes_[name];
    Entry entry = std::move(lane.queue.front());
    lane.queue.pop_front();
    if (entry.bounded) --lane.bounded_waiting;
    lane.running = true;
    ++running_;
    mu_.Unlock();
    current_lane = &name;
    entry.task();
    entry.task = nullptr;  // what it captured goes before the lane is released
    current_lane = nullptr;
    mu_.Lock();
    --running_;
    Lane& after = lanes_[name];
    after.running = false;
    if (!after.queue.empty()) {
      ready_.push_back(name);
    } else {
      lanes_.erase(name);
    }
  }
}

void LaneExecutor::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopping_ = true;
  }
  for (std::thread& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
  threads_.clear();
  absl::MutexLock lock(&mu_);
  stopped_ = true;
}

const std::string* LaneExecutor::CurrentLane() { return current_lane; }

}  // namespace eplb::server
