#include "core/metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace eplb {
namespace {

using ::testing::DoubleEq;
using ::testing::ElementsAre;

ExpertMap Map(int layers, int experts, int slots, int ranks, std::vector<int32_t> phy2log) {
  auto map = ExpertMap::FromPhy2Log(layers, experts, SlotLayout(slots, ranks), std::move(phy2log));
  EXPECT_TRUE(map.ok()) << map.status();
  return *map;
}

TEST(MetricsTest, RankLoadsSplitAnExpertOverItsReplicas) {
  // Expert 0 has two replicas (slots 0 and 3); ranks hold slots {0,1} and {2,3}.
  const ExpertMap map = Map(1, 3, 4, 2, {0, 1, 2, 0});
  const std::vector<double> load = {10, 4, 2};
  EXPECT_THAT(RankLoads(map, 0, load), ElementsAre(DoubleEq(9), DoubleEq(7)));
}

TEST(MetricsTest, RankLoadsWithUnevenSlots) {
  const ExpertMap map = Map(1, 3, 3, 2, {0, 1, 2});  // rank 0: slots 0,1; rank 1: slot 2
  EXPECT_THAT(RankLoads(map, 0, std::vector<double>{1, 2, 4}),
              ElementsAre(DoubleEq(3), DoubleEq(4)));
}

TEST(MetricsTest, Balancedness) {
  EXPECT_DOUBLE_EQ(Balancedness(std::vector<double>{9, 7}), 8.0 / 9.0);
  EXPECT_DOUBLE_EQ(Balancedness(std::vector<double>{5, 5, 5}), 1.0);
  EXPECT_DOUBLE_EQ(Balancedness(std::vector<double>{0, 0}), 1.0);
  EXPECT_DOUBLE_EQ(Balancedness(std::vector<double>{4, 0, 0, 0}), 0.25);
}

TEST(MetricsTest, LowerBound) {
  // Total / R dominates.
  EXPECT_DOUBLE_EQ(MaxRankLoadLowerBound(std::vector<double>{1, 1, 1, 1}, 4, 2), 2.0);
  // One hot expert, no spare slot: its whole load sits on one rank.
  EXPECT_DOUBLE_EQ(MaxRankLoadLowerBound(std::vector<double>{100, 1, 1, 1}, 4, 2), 100.0);
  // Two spare slots both go to the hot expert: 100 / 3.
  EXPECT_DOUBLE_EQ(MaxRankLoadLowerBound(std::vector<double>{100, 1, 1, 1}, 6, 3), 103.0 / 3.0);
  EXPECT_DOUBLE_EQ(MaxRankLoadLowerBound(std::vector<double>{100, 1, 1, 1}, 6, 6), 100.0 / 3.0);
  // Spare slots split between two hot experts: 60/2 vs 40/2, then max is 30.
  EXPECT_DOUBLE_EQ(MaxRankLoadLowerBound(std::vector<double>{60, 40, 0, 0}, 6, 6), 30.0);
  EXPECT_DOUBLE_EQ(MaxRankLoadLowerBound(std::vector<double>{0, 0}, 2, 2), 0.0);
}

TEST(MetricsTest, EvaluateMap) {
  const ExpertMap map = Map(2, 3, 4, 2,
                            {0, 1, 2, 0,  //
                             1, 2, 0, 1});
  LoadMatrix load{.num_layers = 2, .num_experts = 3, .values = {10, 4, 2, 6, 6, 0}};
  const MapQuality q = EvaluateMap(map, load);
  ASSERT_EQ(q.layers.size(), 2u);
  // Layer 0: ranks 9 and 7; bound = max(16/2, min-max per replica = 5... 4) = 8.
  EXPECT_DOUBLE_EQ(q.layers[0].balancedness, 8.0 / 9.0);
  EXPECT_DOUBLE_EQ(q.layers[0].max_over_bound, 9.0 / 8.0);
  // Layer 1: expert 1 in slots 0 and 3 → ranks {3+6, 0+3} = {9, 3}; bound = max(6, 6) = 6.
  EXPECT_DOUBLE_EQ(q.layers[1].balancedness, 6.0 / 9.0);
  EXPECT_DOUBLE_EQ(q.layers[1].max_over_bound, 9.0 / 6.0);
  EXPECT_DOUBLE_EQ(q.min_balancedness, 6.0 / 9.0);
  EXPECT_DOUBLE_EQ(q.mean_balancedness, (8.0 / 9.0 + 6.0 / 9.0) / 2);
  EXPECT_DOUBLE_EQ(q.mean_max_over_bound, (9.0 / 8.0 + 9.0 / 6.0) / 2);
}

TEST(MetricsTest, MigrationCountsExpertsNewToARank) {
  // 4 experts, 6 slots, 2 ranks (3 slots each).
  const ExpertMap before = Map(1, 4, 6, 2, {0, 1, 2, 3, 0, 1});
  // Rank 0: {0,1,2} → {2,0,3}: 3 is new (received), 0 and 2 stay on the rank (local moves).
  // Rank 1: {3,0,1} → {1,2,2}: 2 is new, received once although it fills two slots.
  const ExpertMap after = Map(1, 4, 6, 2, {2, 0, 3, 1, 2, 2});
  const Migration m = ComputeMigration(before, after, /*bytes_per_expert=*/1000);
  EXPECT_EQ(m.slots_changed, 6);
  EXPECT_THAT(m.experts_received_per_rank, ElementsAre(1, 1));
  EXPECT_EQ(m.experts_received, 2);
  EXPECT_EQ(m.max_experts_received_by_a_rank, 1);
  EXPECT_EQ(m.bytes_moved, 2000);
}

TEST(MetricsTest, MigrationSumsLayersAndIsZeroForTheSameMap) {
  const ExpertMap a = Map(2, 2, 2, 2, {0, 1, 0, 1});
  const ExpertMap b = Map(2, 2, 2, 2, {1, 0, 0, 1});
  const Migration same = ComputeMigration(a, a, 7);
  EXPECT_EQ(same.slots_changed, 0);
  EXPECT_EQ(same.experts_received, 0);
  EXPECT_EQ(same.bytes_moved, 0);
  const Migration swap = ComputeMigration(a, b, 7);
  EXPECT_EQ(swap.slots_changed, 2);
  EXPECT_THAT(swap.experts_received_per_rank, ElementsAre(1, 1));
  EXPECT_EQ(swap.bytes_moved, 14);
}

// 4 experts in 2 groups on 4 ranks of 2 nodes (one slot each). Each token picks one group and
// both of its experts.
TEST(CrossNodeTrafficShareTest, FollowsTheRoutingModel) {
  const RoutingModel model{.experts_per_token = 2, .groups_per_token = 1, .tokens = 4096};
  const std::vector<double> load{30, 10, 5, 15};
  // Group 0 (experts 0, 1) on node 0 (ranks 0, 1), group 1 on node 1: a token reaches one node,
  // its own half the time, so 0.5 remote copies per 2 dispatches.
  auto grouped = ExpertMap::FromPhy2Log(1, 4, SlotLayout(4, 4), {0, 1, 2, 3});
  ASSERT_TRUE(grouped.ok());
  EXPECT_NEAR(CrossNodeTrafficShare(*grouped, 0, load, 2, 2, model), 0.25, 0.02);
  // Each group split over both nodes: every token reaches both nodes, one of them remote.
  auto split = ExpertMap::FromPhy2Log(1, 4, SlotLayout(4, 4), {0, 2, 1, 3});
  ASSERT_TRUE(split.ok());
  EXPECT_DOUBLE_EQ(CrossNodeTrafficShare(*split, 0, load, 2, 2, model), 0.5);
  // One node: nothing crosses. The same inputs give the same value.
  EXPECT_DOUBLE_EQ(CrossNodeTrafficShare(*split, 0, load, 2, 1, model), 0.0);
  EXPECT_EQ(CrossNodeTrafficShare(*grouped, 0, load, 2, 2, model),
            CrossNodeTrafficShare(*grouped, 0, load, 2, 2, model));
  // Idle experts are picked uniformly rather than never.
  EXPECT_NEAR(CrossNodeTrafficShare(*grouped, 0, std::vector<double>(4, 0.0), 2, 2, model), 0.25,
              0.02);
}

}  // namespace
}  // namespace eplb
