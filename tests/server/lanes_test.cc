// LaneExecutor: order within a lane, independence across lanes, bounds, coalescing and stopping.
#include "server/lanes.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

namespace eplb::server {
namespace {

using Posted = LaneExecutor::Posted;

TEST(LaneExecutorTest, ALanesTasksRunInOrderOneAtATime) {
  LaneExecutor lanes(/*threads=*/4, /*max_queued_per_lane=*/1000);
  absl::Mutex mu;
  std::vector<int> order;
  std::atomic<int> running{0};
  std::atomic<int> overlaps{0};
  for (int i = 0; i < 500; ++i) {
    ASSERT_EQ(lanes.Post("a",
                         [&, i] {
                           if (running.fetch_add(1) != 0) overlaps.fetch_add(1);
                           {
                             absl::MutexLock lock(&mu);
                             order.push_back(i);
                           }
                           running.fetch_sub(1);
                         }),
              Posted::kQueued);
  }
  lanes.Stop();
  EXPECT_EQ(overlaps.load(), 0);
  ASSERT_EQ(order.size(), 500u);
  for (int i = 0; i < 500; ++i) EXPECT_EQ(order[i], i);
}

// A lane blocked in a task does not hold up another lane: with two threads, "b" runs to the end
// while "a" waits for it.
TEST(LaneExecutorTest, ABlockedLaneDoesNotHoldUpAnother) {
  LaneExecutor lanes(/*threads=*/2, /*max_queued_per_lane=*/16);
  absl::Notification a_started, b_done;
  lanes.Post("a", [&] {
    a_started.Notify();
    b_done.WaitForNotification();  // would never return if "b" waited behind it
  });
  a_started.WaitForNotification();
  std::string seen_lane;
  lanes.Post("b", [&] {
    seen_lane = *LaneExecutor::CurrentLane();
    b_done.Notify();
  });
  b_done.WaitForNotification();
  lanes.Stop();
  EXPECT_EQ(seen_lane, "b");
  EXPECT_EQ(LaneExecutor::CurrentLane(), nullptr);
}

TEST(LaneExecutorTest, BoundedTasksAreRefusedBeyondTheLanesLimitAndTaggedOnesCoalesce) {
  LaneExecutor lanes(/*threads=*/1, /*max_queued_per_lane=*/2);
  absl::Notification release, started;
  lanes.Post("a", [&] {
    started.Notify();
    release.WaitForNotification();
  });
  started.WaitForNotification();  // running, so no longer waiting
  std::atomic<int> ran{0};
  const auto count = [&] { ran.fetch_add(1); };
  EXPECT_EQ(lanes.Post("a", count, /*bounded=*/true), Posted::kQueued);
  EXPECT_EQ(lanes.Post("a", count, /*bounded=*/true), Posted::kQueued);
  EXPECT_EQ(lanes.Post("a", count, /*bounded=*/true), Posted::kLaneFull);
  EXPECT_EQ(lanes.Post("b", count, /*bounded=*/true), Posted::kQueued);  // per lane
  EXPECT_EQ(lanes.Post("a", count, /*bounded=*/false), Posted::kQueued);  // unbounded ones pass
  EXPECT_EQ(lanes.Post("a", count, false, /*tag=*/7), Posted::kQueued);
  EXPECT_EQ(lanes.Post("a", count, false, /*tag=*/7), Posted::kCoalesced);
  EXPECT_EQ(lanes.Post("a", count, false, /*tag=*/8), Posted::kQueued);
  release.Notify();
  lanes.Stop();
  EXPECT_EQ(ran.load(), 6);
  EXPECT_EQ(lanes.Post("a", count), Posted::kStopped);
}

// Stop runs what is queued, including what running tasks queue meanwhile.
TEST(LaneExecutorTest, StopRunsEverythingQueuedAndWhatItQueues) {
  LaneExecutor lanes(/*threads=*/3, /*max_queued_per_lane=*/16);
  std::atomic<int> ran{0};
  for (int i = 0; i < 20; ++i) {
    lanes.Post(std::to_string(i % 5), [&, i] {
      ran.fetch_add(1);
      lanes.Post(std::to_string(i), [&] { ran.fetch_add(1); });
    });
  }
  lanes.Stop();
  EXPECT_EQ(ran.load(), 40);
  lanes.Stop();  // idempotent
}

}  // namespace
}  // namespace eplb::server
