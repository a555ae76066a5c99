#include "core/expert_map.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace eplb {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

// 2 layers, 4 experts, 6 slots on 2 ranks (3 each).
ExpertMap SmallMap() {
  auto map = ExpertMap::FromPhy2Log(2, 4, SlotLayout(6, 2),
                                    {0, 1, 2, 3, 0, 0,  //
                                     3, 2, 1, 0, 3, 1});
  EXPECT_TRUE(map.ok()) << map.status();
  return *map;
}

absl::Status Error(const absl::StatusOr<ExpertMap>& map) { return map.status(); }

TEST(ExpertMapTest, DerivesCountsAndReplicasInSlotOrder) {
  const ExpertMap map = SmallMap();
  EXPECT_EQ(map.num_layers(), 2);
  EXPECT_EQ(map.num_logical_experts(), 4);
  EXPECT_EQ(map.num_physical_experts(), 6);
  EXPECT_EQ(map.num_ranks(), 2);
  EXPECT_EQ(map.log2phy_width(), 3);
  EXPECT_THAT(map.logcnt(0), ElementsAre(3, 1, 1, 1));
  EXPECT_THAT(map.logcnt(1), ElementsAre(1, 2, 1, 2));
  EXPECT_THAT(map.replicas(0, 0), ElementsAre(0, 4, 5));
  EXPECT_THAT(map.replicas(1, 3), ElementsAre(0, 4));
  EXPECT_THAT(map.replicas(1, 1), ElementsAre(2, 5));
  EXPECT_THAT(map.PaddedLog2Phy(), ElementsAreArray({0, 4,  5,  1, -1, -1, 2, -1, -1, 3, -1, -1,
                                                     3, -1, -1, 2, 5,  -1, 1, -1, -1, 0, 4,  -1}));
}

TEST(ExpertMapTest, ReplicaRanksSetTheOrder) {
  auto map = ExpertMap::FromReplicaRanks(1, 2, SlotLayout(4, 2), {1, 0, 1, 1}, {2, 0, 0, 1});
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_THAT(map->replicas(0, 1), ElementsAre(2, 3, 0));
  EXPECT_THAT(map->replicas(0, 0), ElementsAre(1));
}

TEST(ExpertMapTest, TablesRoundTrip) {
  const ExpertMap map = SmallMap();
  auto copy = ExpertMap::FromTables(2, 4, SlotLayout(6, 2), map.phy2log_table(),
                                    map.PaddedLog2Phy(), map.logcnt_table());
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(*copy, map);
}

TEST(ExpertMapTest, Phy2LogErrors) {
  EXPECT_EQ(Error(ExpertMap::FromPhy2Log(1, 4, SlotLayout(6, 2), {0, 1, 2, 3, 0})).message(),
            "phy2log has 5 entries, expected L × P = 6");
  EXPECT_EQ(Error(ExpertMap::FromPhy2Log(1, 4, SlotLayout(6, 2), {0, 1, 2, 3, 4, 0})).message(),
            "phy2log[0][4] = 4 is out of range [0, 3]");
  EXPECT_EQ(Error(ExpertMap::FromPhy2Log(1, 4, SlotLayout(6, 2), {0, 1, 2, -1, 0, 0})).message(),
            "phy2log[0][3] = -1 is out of range [0, 3]");
  EXPECT_EQ(Error(ExpertMap::FromPhy2Log(1, 4, SlotLayout(6, 2), {0, 1, 1, 1, 0, 0})).message(),
            "logical expert 2 of layer 0 has no slot in phy2log");
  EXPECT_EQ(Error(ExpertMap::FromPhy2Log(0, 4, SlotLayout(6, 2), {})).message(),
            "num_layers = 0 is out of range [1, 4096]");
  EXPECT_EQ(Error(ExpertMap::FromPhy2Log(1, 4, SlotLayout(6, 2), {0, 1, 2, 3, 0, 0})).code(),
            absl::StatusCode::kOk);
}

TEST(ExpertMapTest, ReplicaRankErrors) {
  const SlotLayout layout(4, 2);
  EXPECT_EQ(Error(ExpertMap::FromReplicaRanks(1, 2, layout, {1, 0, 1, 1}, {0, 0, 1})).message(),
            "replica_rank has 3 entries, expected L × P = 4");
  EXPECT_EQ(Error(ExpertMap::FromReplicaRanks(1, 2, layout, {1, 0, 1, 1}, {0, 0, 3, 1})).message(),
            "replica_rank[0][2] = 3 is out of range [0, 2] for logical expert 1");
  EXPECT_EQ(Error(ExpertMap::FromReplicaRanks(1, 2, layout, {1, 0, 1, 1}, {0, 0, 1, 0})).message(),
            "replica_rank[0][3] = 0 repeats the rank of slot 0 (logical expert 1)");
}

TEST(ExpertMapTest, TableErrorsNameTheFirstOffendingEntry) {
  const ExpertMap map = SmallMap();
  const SlotLayout layout(6, 2);
  auto with = [&](auto mutate) {
    std::vector<int32_t> log2phy = map.PaddedLog2Phy();
    std::vector<int32_t> logcnt = map.logcnt_table();
    mutate(log2phy, logcnt);
    return ExpertMap::FromTables(2, 4, layout, map.phy2log_table(), log2phy, logcnt).status();
  };
  EXPECT_EQ(with([](auto&, auto& c) { c.pop_back(); }).message(),
            "logcnt has 7 entries, expected L × E = 8");
  EXPECT_EQ(with([](auto& t, auto&) { t.push_back(-1); }).message(),
            "log2phy has 25 entries, expected L × E × (P − E + 1) = 24");
  EXPECT_EQ(with([](auto&, auto& c) { c[5] = 1; }).message(),
            "logcnt[1][1] = 1, but phy2log holds expert 1 in 2 slot(s)");
  EXPECT_EQ(with([](auto& t, auto&) { t[2] = 3; }).message(),
            "log2phy[0][0][2] = 3, but phy2log[0][3] = 3");
  EXPECT_EQ(with([](auto& t, auto&) { t[1] = 6; }).message(),
            "log2phy[0][0][1] = 6 is out of range [0, 5]");
  EXPECT_EQ(with([](auto& t, auto&) { t[2] = 0; }).message(),
            "log2phy[0][0][2] = 0 repeats log2phy[0][0][0]");
  EXPECT_EQ(with([](auto& t, auto&) { t[4] = 1; }).message(),
            "log2phy[0][1][1] = 1, expected -1 padding after logcnt = 1 replicas");
  EXPECT_TRUE(with([](auto&, auto&) {}).ok());
}

TEST(ExpertMapTest, CheckFitsNamesTheDifferingField) {
  const ExpertMap map = SmallMap();
  DeploymentShape shape{
      .num_layers = 2, .num_logical_experts = 4, .num_ranks = 2, .num_physical_experts = 6};
  EXPECT_TRUE(map.CheckFits(shape).ok());
  shape.num_ranks = 3;
  EXPECT_EQ(map.CheckFits(shape).message(), "map has num_ranks = 2, but the deployment has 3");
  shape.num_layers = 5;
  EXPECT_EQ(map.CheckFits(shape).message(), "map has num_layers = 2, but the deployment has 5");
}

TEST(ExpertMapTest, HashIsFnv1aOverShapeAndPhy2Log) {
  // Expected values: FNV-1a 64 over the little-endian int32s 2, 4, 6, 2 and then phy2log, computed
  // independently of this code.
  EXPECT_EQ(SmallMap().Hash(), 0x5a82645ebd299e75ULL);
  auto swapped = ExpertMap::FromPhy2Log(2, 4, SlotLayout(6, 2),
                                        {0, 1, 2, 3, 0, 0,  //
                                         3, 2, 1, 0, 1, 3});
  ASSERT_TRUE(swapped.ok()) << swapped.status();
  EXPECT_EQ(swapped->Hash(), 0x58829a60269cb995ULL);
}

}  // namespace
}  // namespace eplb
