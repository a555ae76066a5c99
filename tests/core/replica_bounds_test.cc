#include "core/replica_bounds.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

namespace eplb {
namespace {


using Counts = std::vector<std::vector<int32_t>>;

// Every vector the walk visits, in order.
Counts Walk(const std::vector<double>& load, int32_t P, int32_t cap, double limit,
            int64_t max_steps = 1000, bool* finished = nullptr) {
  Counts seen;
  const bool done = EnumerateReplicaCounts(
      load, P, cap, [&] { return limit; },
      [&](std::span<const int32_t> count) { seen.emplace_back(count.begin(), count.end()); },
      max_steps);
  if (finished != nullptr) *finished = done;
  return seen;
}

TEST(ReplicaBoundsTest, EnumeratesCountVectorsHeaviestExpertFirst) {
  // Loads 2, 4, 1 (expert 1 the heaviest), 5 replicas, at most 3 each, no limit to speak of.
  bool finished = false;
  EXPECT_EQ(Walk({2, 4, 1}, 5, 3, 100, 1000, &finished),
            (Counts{{1, 1, 3}, {2, 1, 2}, {3, 1, 1}, {1, 2, 2}, {2, 2, 1}, {1, 3, 1}}));
  EXPECT_TRUE(finished);
  // At most 2 each.
  EXPECT_EQ(Walk({2, 4, 1}, 5, 2, 100), (Counts{{2, 1, 2}, {1, 2, 2}, {2, 2, 1}}));
  // Below a limit of 1.5 expert 1 needs 3 replicas (4 / 3), expert 0 two, expert 2 one: six.
  EXPECT_EQ(Walk({2, 4, 1}, 5, 3, 1.5), Counts{});
  EXPECT_EQ(Walk({2, 4, 1}, 6, 3, 1.5), (Counts{{2, 3, 1}}));
  // An idle expert needs one replica whatever the limit.
  EXPECT_EQ(Walk({0, 4}, 3, 3, 2.5), (Counts{{1, 2}}));
}

TEST(ReplicaBoundsTest, ALimitThatFallsPrunesTheChoicesStillOpen) {
  // After the first vector the limit falls to 1.5: each expert's later choices start at its
  // fewest replicas below it (expert 0 at 2), the choices already made stay.
  double limit = 100;
  Counts seen;
  EXPECT_TRUE(EnumerateReplicaCounts(
      std::vector<double>{2, 4, 1}, 5, 3, [&] { return limit; },
      [&](std::span<const int32_t> count) {
        seen.emplace_back(count.begin(), count.end());
        limit = 1.5;
      },
      1000));
  EXPECT_EQ(seen, (Counts{{1, 1, 3}, {2, 1, 2}, {3, 1, 1}, {2, 2, 1}}));
}

TEST(ReplicaBoundsTest, StopsAfterItsSteps) {
  bool finished = true;
  const Counts some = Walk({2, 4, 1}, 5, 3, 100, 6, &finished);
  EXPECT_FALSE(finished);
  EXPECT_EQ(some, (Counts{{1, 1, 3}, {2, 1, 2}}));
}

TEST(ReplicaBoundsTest, PairingAndPigeonholeBounds) {
  std::vector<ReplicaRun> runs;
  // Loads 600, 560, 120, 120, 20, 10, 10, 10 with counts 5, 3, 2, 2, 1, 1, 1, 1 on 8 ranks of 2
  // slots: replicas 186.7 × 3, 120 × 5, 60 × 4, 20, 10 × 3; paired heaviest with lightest, the
  // busiest pair is 186.7 + 10.
  RunsOf(std::vector<double>{600, 560, 120, 120, 20, 10, 10, 10},
         std::vector<int32_t>{5, 3, 2, 2, 1, 1, 1, 1}, runs);
  ASSERT_EQ(runs.size(), 8u);
  EXPECT_DOUBLE_EQ(runs[0].weight, 560.0 / 3);
  EXPECT_EQ(runs[0].n, 3);
  EXPECT_NEAR(PairedMax(runs), 560.0 / 3 + 10, 1e-9);
  // Three slots on 4 ranks for loads 9, 9, 9, 9, 9 once each and 1 × 7: the heaviest is 9, the
  // mean 13; 5 replicas of 9 on 4 ranks put two on one rank: 18.
  RunsOf(std::vector<double>{9, 9, 9, 9, 9, 7}, std::vector<int32_t>{1, 1, 1, 1, 1, 7}, runs);
  EXPECT_DOUBLE_EQ(CountBound(runs, 4, 3, 52), 18.0);
}

}  // namespace
}  // namespace eplb
