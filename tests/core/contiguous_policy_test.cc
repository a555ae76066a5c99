#include "core/contiguous_policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

namespace eplb {
namespace {

using ::testing::ElementsAre;

ExpertMap Plan(DeploymentShape shape) {
  auto map = ContiguousPolicy().Plan({.shape = shape});
  EXPECT_TRUE(map.ok()) << map.status();
  return *map;
}

std::vector<int> ExpertsPerRank(const ExpertMap& map, int layer) {
  std::vector<int> out;
  for (int r = 0; r < map.num_ranks(); ++r) {
    std::set<int> experts;
    for (int p = map.layout().FirstSlotOfRank(r); p < map.layout().FirstSlotOfRank(r + 1); ++p) {
      experts.insert(map.phy2log(layer)[p]);
    }
    out.push_back(static_cast<int>(experts.size()));
  }
  return out;
}

TEST(ContiguousPolicyTest, ExpertInItsOwnSlotWithoutRedundancy) {
  const ExpertMap map = Plan(
      {.num_layers = 3, .num_logical_experts = 16, .num_ranks = 4, .num_physical_experts = 16});
  for (int l = 0; l < 3; ++l) {
    for (int p = 0; p < 16; ++p) EXPECT_EQ(map.phy2log(l)[p], p);
  }
}

TEST(ContiguousPolicyTest, ThirtyExpertsOnEightRanks) {
  const ExpertMap map = Plan(
      {.num_layers = 1, .num_logical_experts = 30, .num_ranks = 8, .num_physical_experts = 30});
  EXPECT_THAT(ExpertsPerRank(map, 0), ElementsAre(4, 4, 4, 4, 4, 4, 3, 3));
  for (int p = 0; p < 30; ++p) EXPECT_EQ(map.phy2log(0)[p], p);
}

TEST(ContiguousPolicyTest, ThirtyExpertsOnEightRanksWithFourSlotsEach) {
  // 32 slots: experts still 4,4,4,4,4,4,3,3; the two spare slots hold replicas round-robin.
  const ExpertMap map = Plan(
      {.num_layers = 1, .num_logical_experts = 30, .num_ranks = 8, .num_physical_experts = 32});
  EXPECT_THAT(map.phy2log(0), ElementsAre(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,  //
                                          16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 0,         //
                                          27, 28, 29, 1));
}

TEST(ContiguousPolicyTest, RedundantSlotsSkipExpertsTheRankHolds) {
  // 4 experts, 2 ranks, 8 slots: rank 0 holds 0,1 and must not take 0 or 1 again while it can avoid
  // it.
  const ExpertMap map =
      Plan({.num_layers = 1, .num_logical_experts = 4, .num_ranks = 2, .num_physical_experts = 8});
  EXPECT_THAT(map.phy2log(0), ElementsAre(0, 1, 2, 3, 2, 3, 0, 1));
  EXPECT_THAT(ExpertsPerRank(map, 0), ElementsAre(4, 4));
}

TEST(ContiguousPolicyTest, MoreRanksThanExperts) {
  const ExpertMap map =
      Plan({.num_layers = 1, .num_logical_experts = 3, .num_ranks = 5, .num_physical_experts = 5});
  EXPECT_THAT(map.phy2log(0), ElementsAre(0, 1, 2, 0, 1));
}

TEST(ContiguousPolicyTest, UnevenSlotsAndManyShapesAreValid) {
  for (int E = 1; E <= 20; ++E) {
    for (int R = 1; R <= 9; ++R) {
      for (int P = std::max(E, R); P <= 2 * E + 3 && P <= 16 * E; ++P) {
        const ExpertMap map = Plan(
            {.num_layers = 2, .num_logical_experts = E, .num_ranks = R, .num_physical_experts = P});
        // Each rank's own experts are spread evenly: counts differ by at most one.
        const std::vector<int> per_rank = ExpertsPerRank(map, 0);
        for (int r = 0; r < R; ++r) {
          const int slots = map.layout().SlotsOnRank(r);
          ASSERT_EQ(per_rank[r], std::min(slots, E)) << E << " " << R << " " << P << " rank " << r;
        }
      }
    }
  }
}

TEST(ContiguousPolicyTest, IgnoresLoad) {
  EXPECT_FALSE(ContiguousPolicy().uses_load());
  LoadMatrix bad{.num_layers = 1, .num_experts = 1, .values = {-1.0}};
  auto map = ContiguousPolicy().Plan({.shape = {.num_layers = 1,
                                                .num_logical_experts = 4,
                                                .num_ranks = 2,
                                                .num_physical_experts = 4},
                                      .load = &bad});
  EXPECT_TRUE(map.ok()) << map.status();
}

}  // namespace
}  // namespace eplb
