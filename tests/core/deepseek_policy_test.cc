#include "core/deepseek_policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "tests/core/reference_deepseek.h"

namespace eplb {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

LoadMatrix ToLoad(const std::vector<std::vector<double>>& rows) {
  LoadMatrix load{.num_layers = static_cast<int32_t>(rows.size()),
                  .num_experts = static_cast<int32_t>(rows[0].size())};
  for (const auto& row : rows) load.values.insert(load.values.end(), row.begin(), row.end());
  return load;
}

absl::StatusOr<ExpertMap> PlanDeepSeek(const LoadMatrix& load, int P, int G, int N, int R) {
  const DeploymentShape shape{.num_layers = load.num_layers,
                              .num_logical_experts = load.num_experts,
                              .num_groups = G,
                              .num_nodes = N,
                              .num_ranks = R,
                              .num_physical_experts = P};
  return DeepSeekPolicy().Plan({.shape = shape, .load = &load});
}

// The worked example of DeepSeek's EPLB README.
TEST(DeepSeekPolicyTest, PublicExample) {
  const LoadMatrix load = ToLoad({{90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86},
                                  {20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27}});
  auto map = PlanDeepSeek(load, /*P=*/16, /*G=*/4, /*N=*/2, /*R=*/8);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_THAT(map->phy2log(0), ElementsAre(5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1));
  EXPECT_THAT(map->phy2log(1), ElementsAre(7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1));
  EXPECT_THAT(map->logcnt(0), ElementsAre(1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1));
  EXPECT_THAT(map->logcnt(1), ElementsAre(1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1));
  // Replica order, not slot order.
  EXPECT_THAT(map->replicas(0, 1), ElementsAre(15, 13));
  EXPECT_THAT(map->replicas(0, 4), ElementsAre(7, 5));
  EXPECT_THAT(map->replicas(0, 5), ElementsAre(0, 2));
  EXPECT_THAT(map->replicas(0, 10), ElementsAre(8, 10));
  EXPECT_THAT(map->replicas(0, 0), ElementsAre(12));
  const std::vector<int32_t> log2phy = map->PaddedLog2Phy();
  // Layer 0, expert 1: [15, 13, -1, -1, -1] (width P − E + 1 = 5).
  EXPECT_THAT(std::vector<int32_t>(log2phy.begin() + 5, log2phy.begin() + 10),
              ElementsAre(15, 13, -1, -1, -1));
}

struct OracleCase {
  const char* name;
  int L, E, P, G, N, R;
};

void PrintTo(const OracleCase& c, std::ostream* os) { *os << c.name; }

class DeepSeekOracleTest : public ::testing::TestWithParam<OracleCase> {};

// Equal to the literal transcription of the reference on random integer loads, drawn from small
// ranges (many ties) and large ones, and on fractional loads.
TEST_P(DeepSeekOracleTest, MatchesReferenceBitForBit) {
  const OracleCase c = GetParam();
  std::mt19937_64 rng(0x5eed + c.E * 131 + c.P * 7 + c.R);
  for (int trial = 0; trial < 30; ++trial) {
    std::vector<std::vector<double>> rows(c.L, std::vector<double>(c.E));
    const int kind = trial % 5;
    for (auto& row : rows) {
      for (double& v : row) {
        switch (kind) {
          case 0:
            v = static_cast<double>(rng() % 4);
            break;  // heavy ties
          case 1:
            v = static_cast<double>(rng() % 100000);
            break;  // counts
          case 2:
            v = static_cast<double>(rng() % 2 ? 7 : 0);
            break;  // two values
          case 3:
            v = static_cast<double>(rng() % 1000) / 8.0;
            break;  // fractional
          default:
            v = std::floor(std::exp(std::normal_distribution<double>(6, 1.5)(rng)));
        }
      }
    }
    const LoadMatrix load = ToLoad(rows);
    auto map = PlanDeepSeek(load, c.P, c.G, c.N, c.R);
    ASSERT_TRUE(map.ok()) << map.status();
    const auto expected = testing_reference::RefRebalance(rows, c.P, c.G, c.N, c.R);
    ASSERT_THAT(map->phy2log_table(), ElementsAreArray(expected.phy2log)) << "trial " << trial;
    ASSERT_THAT(map->PaddedLog2Phy(), ElementsAreArray(expected.log2phy)) << "trial " << trial;
    ASSERT_THAT(map->logcnt_table(), ElementsAreArray(expected.logcnt)) << "trial " << trial;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DeepSeekOracleTest,
    ::testing::Values(OracleCase{"hierarchical", 4, 16, 24, 4, 2, 4},
                      OracleCase{"hierarchical_no_redundancy", 3, 16, 16, 4, 2, 8},
                      OracleCase{"hierarchical_one_slot_per_rank", 3, 12, 16, 4, 2, 16},
                      OracleCase{"hierarchical_v3_node", 2, 256, 288, 8, 4, 32},
                      OracleCase{"global_groups_not_multiple_of_nodes", 4, 24, 32, 3, 2, 8},
                      OracleCase{"global_one_group", 4, 20, 30, 1, 1, 10},
                      OracleCase{"global_no_redundancy", 3, 20, 20, 1, 1, 5},
                      OracleCase{"global_decode_like", 2, 64, 128, 1, 1, 64},
                      OracleCase{"global_v3_replica_heap", 2, 256, 288, 1, 1, 32},
                      OracleCase{"global_many_packs_heap", 2, 96, 192, 1, 1, 48},
                      OracleCase{"single_rank", 2, 6, 9, 2, 1, 1},
                      OracleCase{"groups_equal_nodes", 3, 16, 32, 4, 4, 8},
                      OracleCase{"heavy_redundancy", 2, 8, 64, 2, 2, 8}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(DeepSeekPolicyTest, FallsBackToGlobalWhenGroupsDoNotSplitOverNodes) {
  std::mt19937 rng(7);
  std::vector<std::vector<double>> rows(3, std::vector<double>(24));
  for (auto& row : rows) {
    for (double& v : row) v = rng() % 50;
  }
  const LoadMatrix load = ToLoad(rows);
  auto fallback = PlanDeepSeek(load, 32, /*G=*/3, /*N=*/2, 8);
  auto global = PlanDeepSeek(load, 32, /*G=*/1, /*N=*/1, 8);
  ASSERT_TRUE(fallback.ok() && global.ok());
  EXPECT_EQ(*fallback, *global);
}

TEST(DeepSeekPolicyTest, RefusesSlotsNotAMultipleOfRanks) {
  const LoadMatrix load = ToLoad({std::vector<double>(30, 1.0)});
  auto map = PlanDeepSeek(load, /*P=*/30, 1, 1, /*R=*/8);
  EXPECT_EQ(map.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(map.status().message(),
            "policy deepseek needs num_physical_experts (30) to be a multiple of num_ranks (8)");
}

TEST(DeepSeekPolicyTest, AllZeroLoadIsPlanned) {
  const LoadMatrix load = ToLoad({std::vector<double>(16, 0.0)});
  auto map = PlanDeepSeek(load, 24, 4, 2, 4);
  ASSERT_TRUE(map.ok()) << map.status();
  const auto expected =
      testing_reference::RefRebalance({std::vector<double>(16, 0.0)}, 24, 4, 2, 4);
  EXPECT_THAT(map->phy2log_table(), ElementsAreArray(expected.phy2log));
}

TEST(DeepSeekPolicyTest, Deterministic) {
  std::mt19937 rng(11);
  std::vector<std::vector<double>> rows(4, std::vector<double>(64));
  for (auto& row : rows) {
    for (double& v : row) v = rng() % 10;
  }
  const LoadMatrix load = ToLoad(rows);
  auto a = PlanDeepSeek(load, 80, 8, 2, 16);
  auto b = PlanDeepSeek(load, 80, 8, 2, 16);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
}

}  // namespace
}  // namespace eplb
