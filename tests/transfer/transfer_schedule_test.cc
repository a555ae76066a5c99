#include "transfer/transfer_schedule.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <optional>
#include <ostream>
#include <random>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace eplb::transfer {

// Readable failure messages (found by argument-dependent lookup, hence this namespace; static so
// that no other test file can collide with them).
static void PrintTo(const StagedExpert& s, std::ostream* os) {
  *os << "{expert " << s.expert << ", index " << s.staging_index << ", from rank " << s.src_rank
      << " slot " << s.src_slot << ", to slots [" << absl::StrJoin(s.dst_slots, ", ") << "]}";
}
static void PrintTo(const SendTask& s, std::ostream* os) {
  *os << "{expert " << s.expert << " from slot " << s.src_slot << " to rank " << s.dst_rank
      << " index " << s.dst_staging_index << "}";
}

namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

ExpertMap Map(int32_t num_layers, int32_t num_experts, int32_t num_ranks,
              std::vector<int32_t> phy2log) {
  const auto num_slots = static_cast<int32_t>(phy2log.size()) / num_layers;
  auto map = ExpertMap::FromPhy2Log(num_layers, num_experts, SlotLayout(num_slots, num_ranks),
                                    std::move(phy2log));
  EXPECT_TRUE(map.ok()) << map.status();
  return *std::move(map);
}

// The schedule of `rank` for a one-layer pair of maps.
LayerTransfer OneLayer(const ExpertMap& old_map, const ExpertMap& new_map, int32_t rank,
                       int32_t ranks_per_node = 0) {
  auto schedule = BuildTransferSchedule(old_map, new_map, rank, {.ranks_per_node = ranks_per_node});
  EXPECT_TRUE(schedule.ok()) << schedule.status();
  if (!schedule.ok()) return {};
  EXPECT_EQ(schedule->size(), 1u);
  return schedule->empty() ? LayerTransfer{} : schedule->front();
}

StagedExpert Staged(int32_t expert, int32_t index, int32_t src_rank, int32_t src_slot,
                    std::vector<int32_t> dst_slots) {
  return {.expert = expert,
          .staging_index = index,
          .src_rank = src_rank,
          .src_slot = src_slot,
          .dst_slots = std::move(dst_slots)};
}

SendTask Send(int32_t expert, int32_t src_slot, int32_t dst_rank, int32_t dst_index) {
  return {
      .expert = expert, .src_slot = src_slot, .dst_rank = dst_rank, .dst_staging_index = dst_index};
}

// ---- Hand-made cases with exact schedules
// ---------------------------------------------------------

TEST(TransferScheduleTest, IdenticalMapsKeepEverySlot) {
  const ExpertMap map = Map(2, 3, 2,
                            {0, 1, 2, 0,  //
                             2, 2, 1, 0});
  for (int32_t rank = 0; rank < 2; ++rank) {
    auto schedule = BuildTransferSchedule(map, map, rank, {});
    ASSERT_TRUE(schedule.ok()) << schedule.status();
    ASSERT_EQ(schedule->size(), 2u);
    for (int32_t layer = 0; layer < 2; ++layer) {
      const LayerTransfer& transfer = (*schedule)[layer];
      EXPECT_EQ(transfer.layer, layer);
      EXPECT_THAT(transfer.kept_slots, rank == 0 ? ElementsAre(0, 1) : ElementsAre(2, 3));
      EXPECT_THAT(transfer.staged, IsEmpty());
      EXPECT_THAT(transfer.sends, IsEmpty());
    }
  }
}

TEST(TransferScheduleTest, SwapBetweenTwoRanks) {
  const ExpertMap old_map = Map(1, 4, 2, {0, 1, 2, 3});
  const ExpertMap new_map = Map(1, 4, 2, {2, 1, 0, 3});
  const LayerTransfer r0 = OneLayer(old_map, new_map, 0);
  EXPECT_THAT(r0.kept_slots, ElementsAre(1));
  EXPECT_THAT(r0.staged, ElementsAre(Staged(2, 0, 1, 2, {0})));
  EXPECT_THAT(r0.sends, ElementsAre(Send(0, 0, 1, 0)));
  EXPECT_EQ(r0.num_receives(0), 1);
  const LayerTransfer r1 = OneLayer(old_map, new_map, 1);
  EXPECT_THAT(r1.kept_slots, ElementsAre(3));
  EXPECT_THAT(r1.staged, ElementsAre(Staged(0, 0, 0, 0, {2})));
  EXPECT_THAT(r1.sends, ElementsAre(Send(2, 2, 0, 0)));
}

TEST(TransferScheduleTest, OneReceiveFillsEverySlotOfTheExpert) {
  const ExpertMap old_map = Map(1, 2, 2, {0, 0, 1, 1});
  const ExpertMap new_map = Map(1, 2, 2, {1, 1, 0, 0});
  const LayerTransfer r0 = OneLayer(old_map, new_map, 0);
  EXPECT_THAT(r0.kept_slots, IsEmpty());
  EXPECT_THAT(r0.staged, ElementsAre(Staged(1, 0, 1, 2, {0, 1})));
  EXPECT_THAT(r0.sends, ElementsAre(Send(0, 0, 1, 0)));
  const LayerTransfer r1 = OneLayer(old_map, new_map, 1);
  EXPECT_THAT(r1.staged, ElementsAre(Staged(0, 0, 0, 0, {2, 3})));
  EXPECT_THAT(r1.sends, ElementsAre(Send(1, 2, 0, 0)));
}

TEST(TransferScheduleTest, ExpertsAlreadyOnTheRankAreCopiedLocally) {
  // Rank 0 keeps expert 0 in slot 0 and also needs it in slot 1; expert 1 moves from slot 1 to
  // slot 2. Rank 1 keeps expert 2 in slot 5 and copies it into slots 3 and 4. Nothing is sent.
  const ExpertMap old_map = Map(1, 3, 2, {0, 1, 2, 0, 1, 2});
  const ExpertMap new_map = Map(1, 3, 2, {0, 0, 1, 2, 2, 2});
  const LayerTransfer r0 = OneLayer(old_map, new_map, 0);
  EXPECT_THAT(r0.kept_slots, ElementsAre(0));
  EXPECT_THAT(r0.staged, ElementsAre(Staged(0, 0, 0, 0, {1}), Staged(1, 1, 0, 1, {2})));
  EXPECT_THAT(r0.sends, IsEmpty());
  EXPECT_EQ(r0.num_receives(0), 0);
  const LayerTransfer r1 = OneLayer(old_map, new_map, 1);
  EXPECT_THAT(r1.kept_slots, ElementsAre(5));
  EXPECT_THAT(r1.staged, ElementsAre(Staged(2, 0, 1, 5, {3, 4})));
  EXPECT_THAT(r1.sends, IsEmpty());
}

TEST(TransferScheduleTest, LocalCopiesComeFirstThenReceivesBySourceRank) {
  // old: r0 [0 1 2]  r1 [4 1 0]  r2 [3 2 3]
  // new: r0 [3 2 4]  r1 [0 1 1]  r2 [3 2 3]
  // Rank 0 copies expert 2 from its slot 2, receives 4 from rank 1 and 3 from rank 2: receives are
  // ordered by source rank, not by expert. Rank 1 swaps experts 0 and 1 within itself through
  // staging (slot 5 is the source of expert 0 and takes expert 1).
  const ExpertMap old_map = Map(1, 5, 3, {0, 1, 2, 4, 1, 0, 3, 2, 3});
  const ExpertMap new_map = Map(1, 5, 3, {3, 2, 4, 0, 1, 1, 3, 2, 3});
  const LayerTransfer r0 = OneLayer(old_map, new_map, 0);
  EXPECT_THAT(r0.kept_slots, IsEmpty());
  EXPECT_THAT(r0.staged, ElementsAre(Staged(2, 0, 0, 2, {1}), Staged(4, 1, 1, 3, {2}),
                                     Staged(3, 2, 2, 6, {0})));
  EXPECT_THAT(r0.sends, IsEmpty());
  EXPECT_EQ(r0.num_receives(0), 2);
  const LayerTransfer r1 = OneLayer(old_map, new_map, 1);
  EXPECT_THAT(r1.kept_slots, ElementsAre(4));
  EXPECT_THAT(r1.staged, ElementsAre(Staged(0, 0, 1, 5, {3}), Staged(1, 1, 1, 4, {5})));
  EXPECT_THAT(r1.sends, ElementsAre(Send(4, 3, 0, 1)));
  const LayerTransfer r2 = OneLayer(old_map, new_map, 2);
  EXPECT_THAT(r2.kept_slots, ElementsAre(6, 7, 8));
  EXPECT_THAT(r2.staged, IsEmpty());
  EXPECT_THAT(r2.sends, ElementsAre(Send(3, 6, 0, 2)));
}

TEST(TransferScheduleTest, UnevenSlotsAndLoadSpreading) {
  // P = 7 on R = 3: rank 0 holds slots 0-2, rank 1 slots 3-4, rank 2 slots 5-6.
  // old: r0 [0 1 2]  r1 [3 4]  r2 [0 1]
  // new: r0 [3 4 2]  r1 [0 1]  r2 [0 1]
  // Rank 0's receives come first (ranks ascending) and give rank 1 two sends. Rank 1 then takes
  // expert 0 from rank 0 (a tie at zero sends, lowest rank) and expert 1 from rank 2, which has
  // fewer sends than rank 0 by then.
  const ExpertMap old_map = Map(1, 5, 3, {0, 1, 2, 3, 4, 0, 1});
  const ExpertMap new_map = Map(1, 5, 3, {3, 4, 2, 0, 1, 0, 1});
  const LayerTransfer r0 = OneLayer(old_map, new_map, 0);
  EXPECT_THAT(r0.kept_slots, ElementsAre(2));
  EXPECT_THAT(r0.staged, ElementsAre(Staged(3, 0, 1, 3, {0}), Staged(4, 1, 1, 4, {1})));
  EXPECT_THAT(r0.sends, ElementsAre(Send(0, 0, 1, 0)));
  const LayerTransfer r1 = OneLayer(old_map, new_map, 1);
  EXPECT_THAT(r1.kept_slots, IsEmpty());
  EXPECT_THAT(r1.staged, ElementsAre(Staged(0, 0, 0, 0, {3}), Staged(1, 1, 2, 6, {4})));
  EXPECT_THAT(r1.sends, ElementsAre(Send(3, 3, 0, 0), Send(4, 4, 0, 1)));
  const LayerTransfer r2 = OneLayer(old_map, new_map, 2);
  EXPECT_THAT(r2.kept_slots, ElementsAre(5, 6));
  EXPECT_THAT(r2.staged, IsEmpty());
  EXPECT_THAT(r2.sends, ElementsAre(Send(1, 6, 1, 1)));
}

TEST(TransferScheduleTest, SpreadsSendsOverReplicas) {
  // Expert 0 lives on ranks 0-2 and moves to ranks 3-5: each holder sends it once.
  const ExpertMap old_map = Map(1, 4, 6, {0, 0, 0, 1, 2, 3});
  const ExpertMap new_map = Map(1, 4, 6, {1, 2, 3, 0, 0, 0});
  for (int32_t holder = 0; holder < 3; ++holder) {
    SCOPED_TRACE(absl::StrCat("holder ", holder));
    EXPECT_THAT(OneLayer(old_map, new_map, holder).sends,
                ElementsAre(Send(0, holder, holder + 3, 0)));
  }
  EXPECT_THAT(OneLayer(old_map, new_map, 4).staged, ElementsAre(Staged(0, 0, 1, 1, {4})));
  // With nodes {0, 1} {2, 3} {4, 5}, rank 3 takes expert 0 from rank 2, on its node; ranks 4 and
  // 5 have no holder on their node and take ranks 0 and 1, which have sent the least.
  EXPECT_THAT(OneLayer(old_map, new_map, 2, 2).sends, ElementsAre(Send(0, 2, 3, 0)));
  EXPECT_THAT(OneLayer(old_map, new_map, 0, 2).sends, ElementsAre(Send(0, 0, 4, 0)));
  EXPECT_THAT(OneLayer(old_map, new_map, 1, 2).sends, ElementsAre(Send(0, 1, 5, 0)));
}

TEST(TransferScheduleTest, PrefersASourceOnTheDestinationsNode) {
  // old: r0 [1 2]  r1 [0 5]  r2 [5 3]  r3 [4 6]
  // new: r0 [0 5]  r1 [1 2]  r2 [5 3]  r3 [4 6]
  // Rank 0 takes expert 0 from rank 1 (its only holder). For expert 5, rank 1 has one send and
  // rank 2 none: on one node rank 2 wins, with nodes {0, 1} {2, 3} rank 1 does.
  const ExpertMap old_map = Map(1, 7, 4, {1, 2, 0, 5, 5, 3, 4, 6});
  const ExpertMap new_map = Map(1, 7, 4, {0, 5, 1, 2, 5, 3, 4, 6});
  for (const int32_t ranks_per_node : {0, 1, 4}) {
    SCOPED_TRACE(absl::StrCat("ranks_per_node ", ranks_per_node));
    EXPECT_THAT(OneLayer(old_map, new_map, 0, ranks_per_node).staged,
                ElementsAre(Staged(0, 0, 1, 2, {0}), Staged(5, 1, 2, 4, {1})));
    EXPECT_THAT(OneLayer(old_map, new_map, 2, ranks_per_node).sends, ElementsAre(Send(5, 4, 0, 1)));
  }
  const LayerTransfer r0 = OneLayer(old_map, new_map, 0, 2);
  EXPECT_THAT(r0.staged, ElementsAre(Staged(0, 0, 1, 2, {0}), Staged(5, 1, 1, 3, {1})));
  EXPECT_THAT(r0.sends, ElementsAre(Send(1, 0, 1, 0), Send(2, 1, 1, 1)));
  const LayerTransfer r1 = OneLayer(old_map, new_map, 1, 2);
  EXPECT_THAT(r1.staged, ElementsAre(Staged(1, 0, 0, 0, {2}), Staged(2, 1, 0, 1, {3})));
  EXPECT_THAT(r1.sends, ElementsAre(Send(0, 2, 0, 0), Send(5, 3, 0, 1)));
  EXPECT_THAT(OneLayer(old_map, new_map, 2, 2).sends, IsEmpty());
}

TEST(TransferScheduleTest, SourceSlotIsTheFirstOldSlotOfTheExpert) {
  // Rank 1 holds expert 1 in slots 3 and 2 (replica order 3, 2); the first slot is 2.
  auto old_map = ExpertMap::FromReplicaRanks(1, 2, SlotLayout(4, 2), {0, 0, 1, 1}, {0, 1, 1, 0});
  ASSERT_TRUE(old_map.ok()) << old_map.status();
  const ExpertMap new_map = Map(1, 2, 2, {1, 0, 1, 0});
  EXPECT_THAT(OneLayer(*old_map, new_map, 0).staged, ElementsAre(Staged(1, 0, 1, 2, {0})));
  EXPECT_THAT(OneLayer(*old_map, new_map, 1).staged, ElementsAre(Staged(0, 0, 0, 0, {3})));
}

TEST(TransferScheduleTest, LayersArePlannedIndependently) {
  // Both layers move the same way: rank 1 takes expert 1 from rank 2, rank 2 takes expert 0 from
  // rank 0 (a tie at zero sends). Were send counts carried over from layer 0, rank 0 would have one
  // and layer 1 would take expert 0 from rank 1 instead.
  const ExpertMap old_map = Map(2, 2, 3,
                                {0, 0, 1,  //
                                 0, 0, 1});
  const ExpertMap new_map = Map(2, 2, 3,
                                {0, 1, 0,  //
                                 0, 1, 0});
  for (int32_t rank = 0; rank < 3; ++rank) {
    auto schedule = BuildTransferSchedule(old_map, new_map, rank, {});
    ASSERT_TRUE(schedule.ok()) << schedule.status();
    ASSERT_EQ(schedule->size(), 2u);
    EXPECT_EQ((*schedule)[0].layer, 0);
    EXPECT_EQ((*schedule)[1].layer, 1);
    LayerTransfer layer1 = (*schedule)[1];
    layer1.layer = 0;
    EXPECT_EQ(layer1, (*schedule)[0]) << "rank " << rank;
  }
  auto r2 = BuildTransferSchedule(old_map, new_map, 2, {});
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_THAT((*r2)[1].staged, ElementsAre(Staged(0, 0, 0, 0, {2})));
  EXPECT_THAT((*r2)[1].sends, ElementsAre(Send(1, 2, 1, 0)));
}

// ---- Bad input --------------------------------------------------------------------------------

absl::Status Error(const ExpertMap& old_map, const ExpertMap& new_map, int32_t rank,
                   int32_t ranks_per_node = 0) {
  auto schedule = BuildTransferSchedule(old_map, new_map, rank, {.ranks_per_node = ranks_per_node});
  EXPECT_EQ(schedule.status().code(), absl::StatusCode::kInvalidArgument) << schedule.status();
  return schedule.status();
}

TEST(TransferScheduleTest, RefusesMapsOfDifferentShapes) {
  const ExpertMap map = Map(1, 2, 2, {0, 1, 0, 1});
  EXPECT_EQ(Error(map, Map(2, 2, 2, {0, 1, 0, 1, 0, 1, 0, 1}), 0).message(),
            "new map has num_layers = 2, but the old map has 1");
  EXPECT_EQ(Error(map, Map(1, 3, 2, {0, 1, 2, 1}), 0).message(),
            "new map has num_logical_experts = 3, but the old map has 2");
  EXPECT_EQ(Error(map, Map(1, 2, 2, {0, 1, 0, 1, 0, 1}), 0).message(),
            "new map has num_physical_experts = 6, but the old map has 4");
  EXPECT_EQ(Error(map, Map(1, 2, 4, {0, 1, 0, 1}), 0).message(),
            "new map has num_ranks = 4, but the old map has 2");
  // The shape is checked before the rank.
  EXPECT_EQ(Error(map, Map(1, 2, 4, {0, 1, 0, 1}), 7).message(),
            "new map has num_ranks = 4, but the old map has 2");
}

TEST(TransferScheduleTest, RefusesRankOutOfRange) {
  const ExpertMap map = Map(1, 2, 2, {0, 1, 0, 1});
  EXPECT_EQ(Error(map, map, -1).message(), "rank = -1 is out of range [0, 1]");
  EXPECT_EQ(Error(map, map, 2).message(), "rank = 2 is out of range [0, 1]");
}

TEST(TransferScheduleTest, RefusesBadRanksPerNode) {
  const ExpertMap map = Map(1, 4, 4, {0, 1, 2, 3});
  EXPECT_EQ(Error(map, map, 0, -1).message(), "ranks_per_node = -1 is out of range [0, 4]");
  EXPECT_EQ(Error(map, map, 0, 8).message(), "ranks_per_node = 8 is out of range [0, 4]");
  EXPECT_EQ(Error(map, map, 0, 3).message(), "ranks_per_node = 3 does not divide num_ranks = 4");
  for (const int32_t ranks_per_node : {0, 1, 2, 4}) {
    EXPECT_TRUE(BuildTransferSchedule(map, map, 0, {.ranks_per_node = ranks_per_node}).ok());
  }
}

// ---- Properties over random pairs of maps -------------------------------------------------------

struct RandomCase {
  int32_t num_layers = 0;
  int32_t num_experts = 0;
  int32_t num_slots = 0;
  int32_t num_ranks = 0;
  int32_t ranks_per_node = 0;
  std::optional<ExpertMap> old_map;
  std::optional<ExpertMap> new_map;
};

int32_t Uniform(std::mt19937& rng, int32_t lo, int32_t hi) {
  return std::uniform_int_distribution<int32_t>(lo, hi)(rng);
}

// Each expert once, the other slots random, shuffled.
std::vector<int32_t> RandomRow(std::mt19937& rng, int32_t num_experts, int32_t num_slots) {
  std::vector<int32_t> row(num_slots);
  std::iota(row.begin(), row.begin() + num_experts, 0);
  for (int32_t p = num_experts; p < num_slots; ++p) row[p] = Uniform(rng, 0, num_experts - 1);
  std::shuffle(row.begin(), row.end(), rng);
  return row;
}

// A few swaps and reassignments of spare replicas: most slots stay, as in a real rebalance.
std::vector<int32_t> PerturbedRow(std::mt19937& rng, std::vector<int32_t> row,
                                  int32_t num_experts) {
  const auto num_slots = static_cast<int32_t>(row.size());
  std::vector<int32_t> count(num_experts);
  for (const int32_t e : row) ++count[e];
  const int32_t changes = Uniform(rng, 1, std::max(1, num_slots / 3));
  for (int32_t i = 0; i < changes; ++i) {
    const int32_t p = Uniform(rng, 0, num_slots - 1);
    if (Uniform(rng, 0, 1) == 0) {
      std::swap(row[p], row[Uniform(rng, 0, num_slots - 1)]);
    } else if (count[row[p]] > 1) {
      --count[row[p]];
      row[p] = Uniform(rng, 0, num_experts - 1);
      ++count[row[p]];
    }
  }
  return row;
}

RandomCase MakeRandomCase(uint32_t seed) {
  std::mt19937 rng(seed);
  RandomCase c;
  c.num_ranks = Uniform(rng, 1, 16);
  std::vector<int32_t> ranks_per_node = {0};
  for (int32_t d = 1; d <= c.num_ranks; ++d) {
    if (c.num_ranks % d == 0) ranks_per_node.push_back(d);
  }
  c.ranks_per_node =
      ranks_per_node[Uniform(rng, 0, static_cast<int32_t>(ranks_per_node.size()) - 1)];
  c.num_experts = Uniform(rng, 1, 64);
  c.num_slots =
      Uniform(rng, std::max(c.num_experts, c.num_ranks), std::max(4 * c.num_experts, c.num_ranks));
  c.num_layers = Uniform(rng, 1, 3);
  // 0: independent maps, 1: a perturbation of the old map, 2: identical maps.
  const int32_t kind = Uniform(rng, 0, 9) < 4 ? 0 : (Uniform(rng, 0, 9) < 8 ? 1 : 2);
  std::vector<int32_t> old_table, new_table;
  for (int32_t l = 0; l < c.num_layers; ++l) {
    std::vector<int32_t> old_row = RandomRow(rng, c.num_experts, c.num_slots);
    std::vector<int32_t> new_row = kind == 0   ? RandomRow(rng, c.num_experts, c.num_slots)
                                   : kind == 1 ? PerturbedRow(rng, old_row, c.num_experts)
                                               : old_row;
    old_table.insert(old_table.end(), old_row.begin(), old_row.end());
    new_table.insert(new_table.end(), new_row.begin(), new_row.end());
  }
  c.old_map = Map(c.num_layers, c.num_experts, c.num_ranks, std::move(old_table));
  c.new_map = Map(c.num_layers, c.num_experts, c.num_ranks, std::move(new_table));
  return c;
}

// The first old slot of `expert` on `rank`, if any.
std::optional<int32_t> FirstSlotOn(const ExpertMap& map, int32_t layer, int32_t rank,
                                   int32_t expert) {
  const auto row = map.phy2log(layer);
  for (int32_t p = map.layout().FirstSlotOfRank(rank); p < map.layout().FirstSlotOfRank(rank + 1);
       ++p) {
    if (row[p] == expert) return p;
  }
  return std::nullopt;
}

// The rule of the header, written as plainly as possible: the source rank of every network
// transfer of `layer`, keyed by (dst_rank, expert).
std::map<std::pair<int32_t, int32_t>, int32_t> ReferenceSources(const RandomCase& c,
                                                                int32_t layer) {
  const int32_t ranks_per_node = c.ranks_per_node == 0 ? c.num_ranks : c.ranks_per_node;
  const auto old_row = c.old_map->phy2log(layer);
  const auto new_row = c.new_map->phy2log(layer);
  std::vector<int32_t> sends(c.num_ranks, 0);
  std::map<std::pair<int32_t, int32_t>, int32_t> sources;
  for (int32_t d = 0; d < c.num_ranks; ++d) {
    std::set<int32_t> needed;
    for (int32_t p = c.old_map->layout().FirstSlotOfRank(d);
         p < c.old_map->layout().FirstSlotOfRank(d + 1); ++p) {
      if (old_row[p] != new_row[p]) needed.insert(new_row[p]);
    }
    for (const int32_t e : needed) {
      if (FirstSlotOn(*c.old_map, layer, d, e).has_value()) continue;
      std::tuple<bool, int32_t, int32_t> best(true, 0, -1);
      for (int32_t r = 0; r < c.num_ranks; ++r) {
        if (!FirstSlotOn(*c.old_map, layer, r, e).has_value()) continue;
        const std::tuple<bool, int32_t, int32_t> key(r / ranks_per_node != d / ranks_per_node,
                                                     sends[r], r);
        if (std::get<2>(best) < 0 || key < best) best = key;
      }
      sources[{d, e}] = std::get<2>(best);
      ++sends[std::get<2>(best)];
    }
  }
  return sources;
}

// A slot's content in the simulated transfer.
struct Tag {
  int32_t layer = -1;
  int32_t expert = -1;
  friend bool operator==(const Tag&, const Tag&) = default;
};

void CheckLayer(const RandomCase& c, int32_t layer,
                const std::vector<std::vector<LayerTransfer>>& schedules) {
  const ExpertMap& old_map = *c.old_map;
  const ExpertMap& new_map = *c.new_map;
  const SlotLayout& layout = old_map.layout();
  const auto old_row = old_map.phy2log(layer);
  const auto new_row = new_map.phy2log(layer);
  const int32_t ranks_per_node = c.ranks_per_node == 0 ? c.num_ranks : c.ranks_per_node;
  const auto reference = ReferenceSources(c, layer);
  const bool identical = std::equal(old_row.begin(), old_row.end(), new_row.begin());

  // (src, dst, expert) → (src_slot, staging index on dst), from both sides.
  using Key = std::tuple<int32_t, int32_t, int32_t>;
  std::map<Key, std::pair<int32_t, int32_t>> sent, received;
  std::vector<Tag> slots(c.num_slots);
  for (int32_t p = 0; p < c.num_slots; ++p) slots[p] = {layer, old_row[p]};
  std::vector<std::vector<std::optional<Tag>>> staging(c.num_ranks);

  for (int32_t d = 0; d < c.num_ranks; ++d) {
    SCOPED_TRACE(absl::StrCat("rank ", d));
    const LayerTransfer& t = schedules[d][layer];
    EXPECT_EQ(t.layer, layer);
    const int32_t first = layout.FirstSlotOfRank(d), end = layout.FirstSlotOfRank(d + 1);
    std::vector<int32_t> kept;
    for (int32_t p = first; p < end; ++p) {
      if (old_row[p] == new_row[p]) kept.push_back(p);
    }
    EXPECT_EQ(t.kept_slots, kept);
    if (identical) {  // (6)
      EXPECT_THAT(t.staged, IsEmpty());
      EXPECT_THAT(t.sends, IsEmpty());
    }

    // Staged entries: order, sources, destination slots.
    std::vector<int32_t> covered(c.num_slots, 0);
    for (const int32_t p : kept) ++covered[p];
    std::set<int32_t> staged_experts;
    // Local copies by expert, then receives by (src_rank, expert): strictly increasing keys.
    std::tuple<bool, int32_t, int32_t> last_order(false, -1, -1);
    int32_t receives = 0;
    for (size_t i = 0; i < t.staged.size(); ++i) {
      const StagedExpert& s = t.staged[i];
      SCOPED_TRACE(::testing::PrintToString(s));
      EXPECT_EQ(s.staging_index, static_cast<int32_t>(i));
      EXPECT_TRUE(staged_experts.insert(s.expert).second) << "expert staged twice";  // (3)
      const bool local = s.src_rank == d;
      const std::tuple<bool, int32_t, int32_t> order(!local, local ? -1 : s.src_rank, s.expert);
      EXPECT_LT(last_order, order);
      last_order = order;
      ASSERT_FALSE(s.dst_slots.empty());
      EXPECT_TRUE(std::is_sorted(s.dst_slots.begin(), s.dst_slots.end()));
      for (const int32_t p : s.dst_slots) {
        ASSERT_GE(p, first);
        ASSERT_LT(p, end);
        EXPECT_EQ(new_row[p], s.expert);
        EXPECT_NE(old_row[p], s.expert);
        ++covered[p];
      }
      const std::optional<int32_t> own_slot = FirstSlotOn(old_map, layer, d, s.expert);
      if (local) {
        EXPECT_EQ(own_slot, s.src_slot);
      } else {
        ++receives;
        EXPECT_EQ(own_slot, std::nullopt) << "received an expert the rank held";  // (4)
        ASSERT_GE(s.src_rank, 0);
        ASSERT_LT(s.src_rank, c.num_ranks);
        EXPECT_EQ(FirstSlotOn(old_map, layer, s.src_rank, s.expert), s.src_slot);
        // (5) A holder on the destination's node is preferred.
        bool holder_on_node = false;
        for (int32_t r = d / ranks_per_node * ranks_per_node;
             r < (d / ranks_per_node + 1) * ranks_per_node; ++r) {
          holder_on_node = holder_on_node || FirstSlotOn(old_map, layer, r, s.expert).has_value();
        }
        if (holder_on_node) {
          EXPECT_EQ(s.src_rank / ranks_per_node, d / ranks_per_node);
        }
        // The exact choice, load spreading included.
        const auto it = reference.find({d, s.expert});
        ASSERT_NE(it, reference.end());
        EXPECT_EQ(s.src_rank, it->second);
        EXPECT_TRUE(
            received.emplace(Key(s.src_rank, d, s.expert), std::pair(s.src_slot, i)).second);
      }
    }
    EXPECT_EQ(t.num_receives(d), receives);
    for (int32_t p = first; p < end; ++p) EXPECT_EQ(covered[p], 1) << "slot " << p;

    // Sends.
    for (size_t i = 0; i < t.sends.size(); ++i) {
      const SendTask& s = t.sends[i];
      SCOPED_TRACE(::testing::PrintToString(s));
      EXPECT_NE(s.dst_rank, d);
      EXPECT_GE(s.src_slot, first);
      EXPECT_LT(s.src_slot, end);
      if (i > 0) {
        EXPECT_LT(std::pair(t.sends[i - 1].dst_rank, t.sends[i - 1].expert),
                  std::pair(s.dst_rank, s.expert));
      }
      EXPECT_TRUE(
          sent.emplace(Key(d, s.dst_rank, s.expert), std::pair(s.src_slot, s.dst_staging_index))
              .second);
    }
    staging[d].resize(t.staged.size());
  }
  // (1) Every send is a receive and the other way round, with the same slot and staging index;
  // (3) the key (src, dst, expert) being unique, each expert reaches a rank over the network once.
  EXPECT_EQ(sent, received);
  EXPECT_EQ(static_cast<int64_t>(reference.size()), static_cast<int64_t>(received.size()));

  // (2) Stage (local copies and the network, from the old slots), then switch.
  for (int32_t d = 0; d < c.num_ranks; ++d) {
    const LayerTransfer& t = schedules[d][layer];
    for (const StagedExpert& s : t.staged) {
      if (s.src_rank == d) staging[d][s.staging_index] = slots[s.src_slot];
    }
    for (const SendTask& s : t.sends) {
      ASSERT_LT(s.dst_staging_index, static_cast<int32_t>(staging[s.dst_rank].size()));
      std::optional<Tag>& buffer = staging[s.dst_rank][s.dst_staging_index];
      EXPECT_FALSE(buffer.has_value()) << "staging buffer written twice";
      buffer = slots[s.src_slot];
    }
  }
  for (int32_t d = 0; d < c.num_ranks; ++d) {
    for (const StagedExpert& s : schedules[d][layer].staged) {
      const std::optional<Tag>& buffer = staging[d][s.staging_index];
      ASSERT_TRUE(buffer.has_value()) << "rank " << d << " staging index " << s.staging_index;
      for (const int32_t p : s.dst_slots) slots[p] = *buffer;
    }
  }
  for (int32_t p = 0; p < c.num_slots; ++p) {
    EXPECT_EQ(slots[p], (Tag{layer, new_row[p]})) << "slot " << p;
  }
}

TEST(TransferScheduleTest, RandomPairsOfMapsGiveConsistentSchedules) {
  constexpr int kCases = 500;
  int64_t total_receives = 0, total_local = 0, identical_cases = 0;
  for (uint32_t seed = 1; seed <= kCases; ++seed) {
    const RandomCase c = MakeRandomCase(seed);
    SCOPED_TRACE(absl::StrCat("seed ", seed, ": L=", c.num_layers, " E=", c.num_experts,
                              " P=", c.num_slots, " R=", c.num_ranks,
                              " ranks_per_node=", c.ranks_per_node));
    const ScheduleOptions options{.ranks_per_node = c.ranks_per_node};
    std::vector<std::vector<LayerTransfer>> schedules;
    for (int32_t rank = 0; rank < c.num_ranks; ++rank) {
      auto schedule = BuildTransferSchedule(*c.old_map, *c.new_map, rank, options);
      ASSERT_TRUE(schedule.ok()) << schedule.status();
      ASSERT_EQ(schedule->size(), static_cast<size_t>(c.num_layers));
      // (7) The same inputs give the same schedule.
      auto again = BuildTransferSchedule(*c.old_map, *c.new_map, rank, options);
      ASSERT_TRUE(again.ok());
      EXPECT_EQ(*schedule, *again);
      for (const LayerTransfer& t : *schedule) {
        total_receives += t.num_receives(rank);
        total_local += static_cast<int64_t>(t.staged.size()) - t.num_receives(rank);
      }
      schedules.push_back(*std::move(schedule));
    }
    identical_cases += *c.old_map == *c.new_map;
    for (int32_t layer = 0; layer < c.num_layers; ++layer) {
      SCOPED_TRACE(absl::StrCat("layer ", layer));
      CheckLayer(c, layer, schedules);
    }
    if (HasFailure()) return;  // one failing case is enough to read
  }
  // The generator reaches every kind of case.
  EXPECT_GT(total_receives, 1000);
  EXPECT_GT(total_local, 100);
  EXPECT_GT(identical_cases, 10);
}

}  // namespace
}  // namespace eplb::transfer
