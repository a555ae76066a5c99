#include "core/metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/policy.h"
#include "core/testing/random_inputs.h"

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
  // Two slots per rank: the count bound of layer 0 is 9 (counts 2, 1, 1 pair 5 + 4 and 5 + 2; every
  // other count vector pairs worse), so the map is optimal; layer 1's is 6 (6 + 0, 3 + 3).
  EXPECT_DOUBLE_EQ(q.layers[0].max_over_count_bound, 1.0);
  EXPECT_DOUBLE_EQ(q.layers[1].max_over_count_bound, 9.0 / 6.0);
  EXPECT_DOUBLE_EQ(q.mean_max_over_count_bound, (1.0 + 9.0 / 6.0) / 2);
}

TEST(MetricsTest, CountLowerBoundIsTighterWithFewSlotsAndTheBasicBoundElsewhere) {
  // The published example, 8 ranks × 2 slots: counts (5, 3, 2, 2, 1, 1, 1, 1) pair to 560 / 3 +
  // 10, the optimum; the basic bound is only the mean.
  const std::vector<double> example = {600, 560, 120, 120, 20, 10, 10, 10};
  EXPECT_DOUBLE_EQ(MaxRankLoadLowerBound(example, 16, 8), 1450.0 / 8);
  EXPECT_NEAR(CountLowerBound(example, 16, 8), 560.0 / 3 + 10, 1e-9);
  // An enumeration cut short proves nothing: not the least found so far, but with two slots the
  // pairing bound (here no tighter than the basic one), with more the basic bound.
  EXPECT_EQ(CountLowerBound(example, 16, 8, /*max_steps=*/3), PairingLowerBound(example, 8));
  EXPECT_EQ(PairingLowerBound(example, 8), 1450.0 / 8);
  const std::vector<double> three_slots = {600, 560, 120, 120, 20, 10, 10, 10, 5, 5, 5, 5};
  EXPECT_EQ(CountLowerBound(three_slots, 24, 8, /*max_steps=*/3),
            MaxRankLoadLowerBound(three_slots, 24, 8));
  // With two slots and 13 experts, the pairing bound. Elsewhere the basic bound, exactly: 5 slots
  // per rank, slots not a multiple of the ranks, one slot per rank.
  std::mt19937_64 rng(3);
  std::lognormal_distribution<double> share(0.0, 1.5);
  std::vector<double> many(13);
  for (double& v : many) v = share(rng);
  const std::vector<double> few(many.begin(), many.begin() + 8);
  EXPECT_EQ(CountLowerBound(few, 20, 4), MaxRankLoadLowerBound(few, 20, 4));
  EXPECT_EQ(CountLowerBound(many, 26, 13), PairingLowerBound(many, 13));
  EXPECT_EQ(CountLowerBound(few, 15, 4), MaxRankLoadLowerBound(few, 15, 4));
  EXPECT_EQ(CountLowerBound(few, 8, 8), MaxRankLoadLowerBound(few, 8, 8));
  EXPECT_EQ(CountLowerBound(std::vector<double>{0, 0}, 4, 2), 0.0);
}

// The pairing bound is a relaxation of the best pairing over every count vector, which
// CountLowerBound enumerates for up to 12 experts: never above it, never below the basic bound.
TEST(MetricsTest, PairingLowerBoundHoldsAndTightensTheBasicBound) {
  std::mt19937_64 rng(21);
  int tighter = 0, exact = 0, instances = 0, gaps = 0;
  double closed = 0;
  for (const double sigma : {0.5, 1.0, 1.5}) {
    std::lognormal_distribution<double> share(0.0, sigma);
    for (int trial = 0; trial < 100; ++trial) {
      const int32_t E = 3 + static_cast<int32_t>(rng() % 10);
      const int32_t R = (E + 1) / 2 + static_cast<int32_t>(rng() % 6);
      std::vector<double> load(E);
      for (double& v : load) v = std::round(share(rng) * 100);
      const double basic = MaxRankLoadLowerBound(load, 2 * R, R);
      const double best = CountLowerBound(load, 2 * R, R, /*max_steps=*/int64_t{1} << 40);
      const double pairing = PairingLowerBound(load, R);
      ASSERT_LE(pairing, best * (1 + 1e-9)) << "E " << E << " R " << R << " trial " << trial;
      ASSERT_GE(pairing, basic);
      ++instances;
      tighter += pairing > basic * (1 + 1e-6);
      exact += pairing > best * (1 - 1e-4);  // found to a relative 1e-5
      if (best > basic * (1 + 1e-6)) {
        ++gaps;
        closed += (pairing - basic) / (best - basic);
      }
    }
  }
  // Measured: 73 of 300 tighter, 52 at the best pairing, 21% of the gap closed on average (small
  // shapes have many spare replicas per expert, where counts matter most).
  EXPECT_EQ(instances, 300);
  EXPECT_GE(tighter, 60);
  EXPECT_GE(exact, 40);
  EXPECT_GT(closed / gaps, 0.15);
}

// On the DeepSeek-V3 decode shape (256 experts, 144 ranks of 2 slots) the basic bound is loose:
// the pairing bound lies below every plan's busiest rank and closes most of the gap to
// `balanced`'s.
TEST(MetricsTest, PairingLowerBoundOnTheDecodeShape) {
  const DeploymentShape shape = {.num_layers = 12,
                                 .num_logical_experts = 256,
                                 .num_groups = 8,
                                 .num_nodes = 18,
                                 .num_ranks = 144,
                                 .num_physical_experts = 288};
  for (const double sigma : {0.5, 1.0, 1.5}) {
    std::mt19937_64 rng(5);
    const LoadMatrix load = testing::LogNormalLoad(shape, sigma, rng);
    double over_basic = 0, over_pairing = 0;
    for (const char* name : {"balanced", "deepseek"}) {
      auto policy = CreatePolicy(name);
      ASSERT_TRUE(policy.ok());
      auto map = (*policy)->Plan({.shape = shape, .load = &load});
      ASSERT_TRUE(map.ok()) << map.status();
      for (int32_t l = 0; l < shape.num_layers; ++l) {
        const std::vector<double> ranks = RankLoads(*map, l, load.row(l));
        const double busiest = *std::max_element(ranks.begin(), ranks.end());
        const double pairing = PairingLowerBound(load.row(l), shape.num_ranks);
        ASSERT_LE(pairing, busiest) << name << " layer " << l << " σ " << sigma;
        if (std::string(name) == "balanced") {
          over_basic += busiest / MaxRankLoadLowerBound(load.row(l), 288, 144) / shape.num_layers;
          over_pairing += busiest / pairing / shape.num_layers;
        }
      }
    }
    // Measured: 1.0457 → 1.0361 (σ 0.5), 1.0195 → 1.0026 (σ 1), 1.0037 → 1.0003 (σ 1.5).
    EXPECT_LT(over_pairing, over_basic - (sigma == 0.5 ? 0.005 : 0.003)) << "σ " << sigma;
    if (sigma >= 1.0) {
      EXPECT_LT(over_pairing, sigma == 1.0 ? 1.004 : 1.001) << "σ " << sigma;
    }
  }
}

TEST(ReplicaSharesTest, SplitAnExpertUnevenlyWhereThatLowersTheBusiestRank) {
  // Expert 0 (load 10) on ranks 0 and 1, expert 1 (load 2) on rank 0: uniform routing loads the
  // ranks 7 and 5; sending 40% of expert 0 to rank 0 loads both 6.
  const ExpertMap map = Map(1, 2, 3, 2, {0, 1, 0});
  const ReplicaShares shares = OptimalReplicaShares(map, 0, std::vector<double>{10, 2});
  EXPECT_NEAR(shares.max_rank_load, 6.0, 1e-8);
  EXPECT_NEAR(shares.share[0], 0.4, 1e-8);
  EXPECT_NEAR(shares.share[1], 1.0, 1e-12);
  EXPECT_NEAR(shares.share[2], 0.6, 1e-8);
  // Nothing to gain: the uniform shares, and uniform routing's busiest rank.
  const ReplicaShares even = OptimalReplicaShares(map, 0, std::vector<double>{10, 0});
  EXPECT_EQ(even.max_rank_load, 5.0);
  EXPECT_EQ(even.share, (std::vector<double>{0.5, 1.0, 0.5}));
}

// Against the exact optimum of the split: the largest, over every set S of ranks, of the load of
// the experts held only on S over |S| (Hall's condition), on random maps of 6 and 11 ranks
// (deepseek's included, which may hold an expert twice on a rank).
TEST(ReplicaSharesTest, ReachTheBestSplitOnRandomMaps) {
  std::mt19937_64 rng(8);
  for (int trial = 0; trial < 80; ++trial) {
    const int32_t R = trial % 2 == 0 ? 6 : 11, E = R + 2, P = 3 * R;
    std::vector<int32_t> phy2log(P);
    for (int32_t p = 0; p < P; ++p) phy2log[p] = p < E ? p : static_cast<int32_t>(rng() % E);
    std::shuffle(phy2log.begin(), phy2log.end(), rng);
    const ExpertMap map = Map(1, E, P, R, phy2log);
    std::lognormal_distribution<double> share(0.0, 1.5);
    std::vector<double> load(E);
    for (double& v : load) v = std::round(share(rng) * 100);
    const ReplicaShares shares = OptimalReplicaShares(map, 0, load);
    double best = 0;
    for (uint32_t set = 1; set < (1u << R); ++set) {
      double inside = 0;
      for (int32_t e = 0; e < E; ++e) {
        bool all = true;
        for (const int32_t p : map.replicas(0, e)) all &= (set >> map.layout().RankOfSlot(p)) & 1;
        if (all) inside += load[e];
      }
      best = std::max(best, inside / std::popcount(set));
    }
    EXPECT_NEAR(shares.max_rank_load, best, 1e-7 * best) << "trial " << trial;
    // The shares route every expert's load, and realise that busiest rank.
    std::vector<double> rank_load(R, 0.0), routed(E, 0.0);
    for (int32_t p = 0; p < P; ++p) {
      EXPECT_GE(shares.share[p], 0.0);
      routed[phy2log[p]] += shares.share[p];
      rank_load[map.layout().RankOfSlot(p)] += shares.share[p] * load[phy2log[p]];
    }
    for (int32_t e = 0; e < E; ++e) EXPECT_NEAR(routed[e], 1.0, 1e-9) << "expert " << e;
    EXPECT_LE(*std::max_element(rank_load.begin(), rank_load.end()), best * (1 + 1e-7));
    const std::vector<double> uniform = RankLoads(map, 0, load);
    EXPECT_LE(shares.max_rank_load, *std::max_element(uniform.begin(), uniform.end()));
  }
}

// Experts too light for the flow to carry (below 1e-12 of the layer each, 3e-9 together) keep
// uniform shares and do not keep the others from their best split.
TEST(ReplicaSharesTest, ManyNegligibleExpertsDoNotBlockTheSplit) {
  // Rank 0: expert 0, expert 1, tiny experts 2 … 15001; rank 1: expert 0, tiny 15002 … 30001.
  constexpr int32_t kTiny = 30000;
  std::vector<int32_t> phy2log = {0, 1};
  for (int32_t e = 2; e < 2 + kTiny / 2; ++e) phy2log.push_back(e);
  phy2log.push_back(0);
  for (int32_t e = 2 + kTiny / 2; e < 2 + kTiny; ++e) phy2log.push_back(e);
  const ExpertMap map = Map(1, 2 + kTiny, 3 + kTiny, 2, phy2log);
  ASSERT_EQ(map.layout().RankOfSlot(2 + kTiny / 2), 1);
  std::vector<double> load(2 + kTiny, 1e-13);
  load[0] = load[1] = 1;
  const ReplicaShares shares = OptimalReplicaShares(map, 0, load);
  EXPECT_NEAR(shares.max_rank_load, 1.0, 1e-8);  // uniform: 1.5 and 0.5
  EXPECT_NEAR(shares.share[0], 0.0, 1e-8);
  EXPECT_NEAR(shares.share[2 + kTiny / 2], 1.0, 1e-8);
  EXPECT_EQ(shares.share[2], 1.0);  // a tiny expert, uniform (one replica)
  const std::vector<double> routed = RoutedRankLoads(map, 0, load, shares.share);
  EXPECT_DOUBLE_EQ(shares.max_rank_load, std::max(routed[0], routed[1]));
}

// The table of every layer, and the balance it routes to: uniform shares give EvaluateMap's
// balancedness, the optimal ones mean / OptimalReplicaShares' busiest rank, never less.
TEST(ReplicaSharesTest, TableOfEveryLayerAndTheBalanceItRoutes) {
  // Layer 0 as SplitAnExpertUnevenly…; layer 1 holds expert 1 twice.
  const ExpertMap map = Map(2, 2, 3, 2, {0, 1, 0, /**/ 1, 0, 1});
  LoadMatrix load;
  load.num_layers = 2;
  load.num_experts = 2;
  load.values = {10, 2, /**/ 4, 8};
  const std::vector<double> table = OptimalReplicaShareTable(map, load);
  ASSERT_EQ(table.size(), 6u);
  for (int32_t l = 0; l < 2; ++l) {
    const ReplicaShares shares = OptimalReplicaShares(map, l, load.row(l));
    EXPECT_TRUE(std::equal(shares.share.begin(), shares.share.end(), table.begin() + 3 * l));
  }
  EXPECT_NEAR(table[0], 0.4, 1e-8);
  EXPECT_THAT(RoutedRankLoads(map, 0, load.row(0), std::span(table).subspan(0, 3)),
              ElementsAre(::testing::DoubleNear(6, 1e-7), ::testing::DoubleNear(6, 1e-7)));
  // Layer 1: rank 0 holds expert 1 (slot 0) and expert 0 (slot 1), rank 1 expert 1 (slot 2):
  // uniform loads 8 and 4 (half of expert 1 each way); a quarter of it to rank 0 gives 6 and 6.
  EXPECT_THAT(RoutedRankLoads(map, 1, load.row(1), std::vector<double>{0.5, 1, 0.5}),
              ElementsAre(8, 4));
  EXPECT_NEAR(table[3], 0.25, 1e-8);
  EXPECT_NEAR(table[5], 0.75, 1e-8);

  const std::vector<double> uniform = {0.5, 1, 0.5, /**/ 0.5, 1, 0.5};
  const RoutedBalance even = EvaluateRouting(map, load, uniform);
  const MapQuality quality = EvaluateMap(map, load);
  ASSERT_EQ(even.balancedness.size(), 2u);
  for (int32_t l = 0; l < 2; ++l) {
    EXPECT_DOUBLE_EQ(even.balancedness[l], quality.layers[l].balancedness);
  }
  EXPECT_DOUBLE_EQ(even.min_balancedness, quality.min_balancedness);
  EXPECT_DOUBLE_EQ(even.mean_balancedness, quality.mean_balancedness);
  const RoutedBalance best = EvaluateRouting(map, load, table);
  EXPECT_NEAR(best.balancedness[0], 1.0, 1e-8);  // 6 and 6
  EXPECT_NEAR(best.balancedness[1], 1.0, 1e-8);
  EXPECT_NEAR(best.mean_balancedness, 1.0, 1e-8);
  EXPECT_DOUBLE_EQ(even.mean_balancedness, (6.0 / 7 + 0.75) / 2);  // 7, 5 and 8, 4
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

// The routing model's exact value by enumeration: every order of groups and of experts drawn
// without replacement (in proportion to load, uniformly among what is left once the remaining
// load is 0), every choice of replicas and every origin node, each with its probability.
double ExactCrossNodeShare(const ExpertMap& map, const std::vector<double>& load, int32_t groups,
                           int32_t nodes, int32_t groups_per_token, int32_t experts_per_token) {
  const int32_t per_group = map.num_logical_experts() / groups;
  const int32_t rpn = map.num_ranks() / nodes;
  // Calls `visit(chosen, probability)` for every ordered draw of `k` of `ids`.
  const auto draws = [](const std::vector<int32_t>& ids, const std::vector<double>& weights,
                        int32_t k, const auto& visit) {
    std::vector<int32_t> chosen;
    const auto recurse = [&](const auto& self, double p) -> void {
      if (static_cast<int32_t>(chosen.size()) == k) {
        visit(chosen, p);
        return;
      }
      double total = 0;
      int32_t left = 0;
      for (size_t i = 0; i < ids.size(); ++i) {
        if (std::find(chosen.begin(), chosen.end(), ids[i]) != chosen.end()) continue;
        total += weights[i];
        ++left;
      }
      for (size_t i = 0; i < ids.size(); ++i) {
        if (std::find(chosen.begin(), chosen.end(), ids[i]) != chosen.end()) continue;
        const double q = total > 0 ? weights[i] / total : 1.0 / left;
        if (q == 0) continue;
        chosen.push_back(ids[i]);
        self(self, p * q);
        chosen.pop_back();
      }
    };
    recurse(recurse, 1.0);
  };
  std::vector<int32_t> group_ids(groups);
  std::vector<double> group_load(groups, 0.0);
  for (int32_t g = 0; g < groups; ++g) group_ids[g] = g;
  for (int32_t e = 0; e < map.num_logical_experts(); ++e) group_load[e / per_group] += load[e];
  double expected_remote = 0;
  draws(group_ids, group_load, groups_per_token, [&](const std::vector<int32_t>& gs, double pg) {
    std::vector<int32_t> expert_ids;
    std::vector<double> weights;
    for (const int32_t g : gs) {
      for (int32_t e = g * per_group; e < (g + 1) * per_group; ++e) {
        expert_ids.push_back(e);
        weights.push_back(load[e]);
      }
    }
    draws(expert_ids, weights, experts_per_token, [&](const std::vector<int32_t>& es, double pe) {
      // Every combination of one replica per expert, then every origin.
      std::vector<size_t> pick(es.size(), 0);
      for (;;) {
        double p = pg * pe;
        std::vector<bool> reached(nodes, false);
        for (size_t i = 0; i < es.size(); ++i) {
          const auto replicas = map.replicas(0, es[i]);
          p /= replicas.size();
          reached[map.layout().RankOfSlot(replicas[pick[i]]) / rpn] = true;
        }
        for (int32_t origin = 0; origin < nodes; ++origin) {
          for (int32_t n = 0; n < nodes; ++n) {
            if (reached[n] && n != origin) expected_remote += p / nodes;
          }
        }
        size_t i = 0;
        while (i < es.size() && ++pick[i] == map.replicas(0, es[i]).size()) pick[i++] = 0;
        if (i == es.size()) break;
      }
    });
  });
  return expected_remote / experts_per_token;
}

// 6 experts in 3 groups on 6 ranks of 3 nodes (9 slots: experts 0 and 3 have replicas on two
// nodes, expert 4 two on one node). Loads: spread, concentrated on one expert, with idle experts,
// and all idle.
TEST(CrossNodeTrafficShareTest, EstimateIsWithinItsBoundOfTheExactValue) {
  const ExpertMap map = Map(1, 6, 9, 6, {0, 1, 2, 3, 0, 4, 5, 4, 3});
  const std::vector<std::vector<double>> loads = {{30, 10, 5, 15, 20, 8},
                                                  {1000, 0.5, 0.5, 0.5, 0.5, 0.5},
                                                  {0, 10, 0, 5, 0, 1},
                                                  {0, 0, 0, 0, 0, 0}};
  for (const auto& load : loads) {
    SCOPED_TRACE(::testing::PrintToString(load));
    const double exact = ExactCrossNodeShare(map, load, 3, 3, 2, 3);
    int32_t within = 0;
    for (uint64_t seed = 1; seed <= 40; ++seed) {
      const RoutingModel model{
          .experts_per_token = 3, .groups_per_token = 2, .tokens = 200, .seed = seed};
      const TrafficShareEstimate estimate =
          EstimateCrossNodeTrafficShare(map, 0, load, 3, 3, model);
      // The score of a token lies within [1, 3] nodes × (2/3) / 3 experts: a range of 4/9. The
      // bound is at most Hoeffding's at 97.5%.
      EXPECT_LE(estimate.error_bound, 4.0 / 9 * std::sqrt(std::log(80.0) / 400));
      EXPECT_GT(estimate.error_bound, 0);
      if (std::abs(estimate.share - exact) <= estimate.error_bound) ++within;
    }
    EXPECT_GE(within, 38);  // at least 95% of the time
    const RoutingModel many{.experts_per_token = 3, .groups_per_token = 2, .tokens = 50000};
    EXPECT_NEAR(CrossNodeTrafficShare(map, 0, load, 3, 3, many), exact, 0.002);
  }
}

// An expert with replicas on three nodes (and one with two on one node): every node its replicas
// reach is scored, as exact enumeration counts them.
TEST(CrossNodeTrafficShareTest, ExpertsOnManyNodesCountEveryNode) {
  // 4 experts in 2 groups, 8 slots on 4 ranks, one rank per node: expert 0 on nodes 0, 1, 2;
  // expert 3 twice on node 3.
  const ExpertMap map = Map(1, 4, 8, 4, {0, 1, 0, 2, 0, 3, 3, 1});
  for (const std::vector<double>& load :
       {std::vector<double>{40, 10, 20, 30}, std::vector<double>{5, 0, 1, 100}}) {
    SCOPED_TRACE(::testing::PrintToString(load));
    const double exact = ExactCrossNodeShare(map, load, 2, 4, 1, 2);
    const RoutingModel many{.experts_per_token = 2, .groups_per_token = 1, .tokens = 50000};
    EXPECT_NEAR(CrossNodeTrafficShare(map, 0, load, 2, 4, many), exact, 0.002);
  }
}

// Loads at the ends of the doubles (sums that would overflow, subnormal groups) are drawn in
// proportion as any others: the estimate equals that of the same loads scaled into range.
TEST(CrossNodeTrafficShareTest, LoadsAtTheEndsOfTheDoublesAreDrawnInProportion) {
  const ExpertMap map = Map(1, 6, 9, 6, {0, 1, 2, 3, 0, 4, 5, 4, 3});
  const RoutingModel model{.experts_per_token = 3, .groups_per_token = 2, .tokens = 20000};
  const double huge = std::numeric_limits<double>::max();
  const double exact = ExactCrossNodeShare(map, {4, 2, 1, 4, 0, 1}, 3, 3, 2, 3);
  EXPECT_NEAR(
      CrossNodeTrafficShare(
          map, 0, std::vector<double>{huge, huge / 2, huge / 4, huge, 0, huge / 4}, 3, 3, model),
      exact, 0.004);
  // Group 1 weighs a subnormal 5e-324: it is all but never drawn, and nothing overflows.
  const std::vector<double> tiny = {3, 1, 4.9e-324, 0, 2, 2};
  const double tiny_exact = ExactCrossNodeShare(map, tiny, 3, 3, 2, 3);
  const TrafficShareEstimate estimate = EstimateCrossNodeTrafficShare(map, 0, tiny, 3, 3, model);
  EXPECT_TRUE(std::isfinite(estimate.share));
  EXPECT_NEAR(estimate.share, tiny_exact, 0.004);
}

// The mean over layers, with its bound over every layer's tokens.
TEST(CrossNodeTrafficShareTest, MeanOverLayersPoolsTheTokens) {
  auto map = ExpertMap::FromPhy2Log(2, 4, SlotLayout(4, 4), {0, 1, 2, 3, 0, 2, 1, 3});
  ASSERT_TRUE(map.ok());
  const LoadMatrix load{.num_layers = 2, .num_experts = 4, .values = {1, 2, 3, 4, 4, 3, 2, 1}};
  const RoutingModel model{.experts_per_token = 2, .groups_per_token = 1, .tokens = 100};
  const TrafficShareEstimate mean = EstimateMeanCrossNodeTrafficShare(*map, load, 2, 2, model);
  // Layer 0 keeps each group on a node (0.25 whatever is drawn), layer 1 splits both (0.5): the
  // estimate varies only with how many tokens each layer drew, and its bound covers that.
  EXPECT_NEAR(mean.share, 0.375, mean.error_bound);
  EXPECT_LE(mean.error_bound, 0.25 * std::sqrt(std::log(80.0) / 400));
  EXPECT_EQ(EstimateMeanCrossNodeTrafficShare(*map, load, 2, 1, model).share, 0.0);
  // Layers are drawn uniformly: with many tokens the mean comes out even.
  const RoutingModel many{.experts_per_token = 2, .groups_per_token = 1, .tokens = 50000};
  EXPECT_NEAR(EstimateMeanCrossNodeTrafficShare(*map, load, 2, 2, many).share, 0.375, 0.002);
}

// Scores that do not vary are bounded by the empirical Bernstein term of the range alone, far
// below Hoeffding's bound.
TEST(CrossNodeTrafficShareTest, ScoresThatDoNotVaryAreBoundedTightly) {
  auto map = ExpertMap::FromPhy2Log(1, 4, SlotLayout(4, 4), {0, 1, 2, 3});
  ASSERT_TRUE(map.ok());
  const std::vector<double> load = {1, 2, 3, 4};
  const RoutingModel model{.experts_per_token = 2, .groups_per_token = 1, .tokens = 1000};
  const TrafficShareEstimate estimate = EstimateCrossNodeTrafficShare(*map, 0, load, 2, 2, model);
  EXPECT_DOUBLE_EQ(estimate.share, 0.25);  // each group on a node: every token reaches one node
  const double range = 0.25;
  EXPECT_NEAR(estimate.error_bound, 7 * range * std::log(160.0) / (3 * 999), 1e-12);
  EXPECT_LT(estimate.error_bound, range * std::sqrt(std::log(80.0) / 2000) / 3);
}

// Several maps scored on one sample: each estimate is the one-map call's.
TEST(CrossNodeTrafficShareTest, SeveralMapsShareTheirTokens) {
  std::mt19937 rng(5);
  LoadMatrix load{.num_layers = 3, .num_experts = 16, .values = {}};
  for (int i = 0; i < 3 * 16; ++i) load.values.push_back(1 + rng() % 100);
  const auto a = testing::RandomExpertMap(3, 16, 24, 8, rng);
  const auto b = testing::RandomExpertMap(3, 16, 24, 8, rng);
  const ExpertMap* maps[] = {a.get(), b.get()};
  const RoutingModel model{.experts_per_token = 4, .groups_per_token = 2, .tokens = 50};
  const auto both = EstimateMeanCrossNodeTrafficShares(maps, load, 4, 2, model);
  ASSERT_EQ(both.size(), 2u);
  for (int m = 0; m < 2; ++m) {
    const TrafficShareEstimate alone =
        EstimateMeanCrossNodeTrafficShare(*maps[m], load, 4, 2, model);
    EXPECT_EQ(both[m].share, alone.share) << "map " << m;
    EXPECT_EQ(both[m].error_bound, alone.error_bound) << "map " << m;
  }
  EXPECT_NE(both[0].share, both[1].share);
}

}  // namespace
}  // namespace eplb
