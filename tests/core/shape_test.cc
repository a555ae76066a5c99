#include "core/shape.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace eplb {
namespace {

using ::testing::HasSubstr;

DeploymentShape V3Prefill() {
  return {.num_layers = 58,
          .num_logical_experts = 256,
          .num_groups = 8,
          .num_nodes = 4,
          .num_ranks = 32,
          .num_physical_experts = 288};
}

TEST(SlotLayoutTest, EvenSplit) {
  SlotLayout layout(288, 32);
  EXPECT_EQ(layout.MaxSlotsPerRank(), 9);
  for (int r = 0; r < 32; ++r) {
    EXPECT_EQ(layout.SlotsOnRank(r), 9);
    EXPECT_EQ(layout.FirstSlotOfRank(r), 9 * r);
  }
  EXPECT_EQ(layout.FirstSlotOfRank(32), 288);
  EXPECT_EQ(layout.RankOfSlot(0), 0);
  EXPECT_EQ(layout.RankOfSlot(8), 0);
  EXPECT_EQ(layout.RankOfSlot(9), 1);
  EXPECT_EQ(layout.RankOfSlot(287), 31);
}

TEST(SlotLayoutTest, FirstRanksGetTheExtraSlots) {
  SlotLayout layout(30, 8);  // 4,4,4,4,4,4,3,3
  const int expected[] = {4, 4, 4, 4, 4, 4, 3, 3};
  int slot = 0;
  for (int r = 0; r < 8; ++r) {
    EXPECT_EQ(layout.SlotsOnRank(r), expected[r]) << r;
    EXPECT_EQ(layout.FirstSlotOfRank(r), slot) << r;
    for (int i = 0; i < expected[r]; ++i, ++slot) EXPECT_EQ(layout.RankOfSlot(slot), r) << slot;
  }
  EXPECT_EQ(layout.FirstSlotOfRank(8), 30);
  EXPECT_EQ(layout.MaxSlotsPerRank(), 4);
}

TEST(SlotLayoutTest, RankOfSlotInvertsFirstSlotOfRankForManyLayouts) {
  for (int ranks = 1; ranks <= 17; ++ranks) {
    for (int slots = ranks; slots <= 3 * ranks + 5; ++slots) {
      SlotLayout layout(slots, ranks);
      int total = 0;
      for (int r = 0; r < ranks; ++r) {
        total += layout.SlotsOnRank(r);
        for (int p = layout.FirstSlotOfRank(r); p < layout.FirstSlotOfRank(r + 1); ++p) {
          ASSERT_EQ(layout.RankOfSlot(p), r) << slots << "/" << ranks << " slot " << p;
        }
        // Earlier ranks never hold fewer slots than later ones, and at most one more.
        if (r > 0) {
          ASSERT_GE(layout.SlotsOnRank(r - 1), layout.SlotsOnRank(r));
          ASSERT_LE(layout.SlotsOnRank(r - 1) - layout.SlotsOnRank(r), 1);
        }
      }
      ASSERT_EQ(total, slots);
    }
  }
}

TEST(ShapeTest, ValidShapes) {
  EXPECT_TRUE(ValidateShape(V3Prefill()).ok());
  DeploymentShape decode = V3Prefill();
  decode.num_ranks = 144;
  decode.num_nodes = 18;
  EXPECT_TRUE(ValidateShape(decode).ok());
  DeploymentShape uneven = {
      .num_layers = 1, .num_logical_experts = 30, .num_ranks = 8, .num_physical_experts = 30};
  EXPECT_TRUE(ValidateShape(uneven).ok());
  EXPECT_EQ(V3Prefill().ranks_per_node(), 8);
  EXPECT_EQ(V3Prefill().experts_per_group(), 32);
  EXPECT_EQ(V3Prefill().NodeOfRank(17), 2);
}

struct BadShape {
  const char* name;
  void (*mutate)(DeploymentShape&);
  const char* message;
};

class ShapeErrorTest : public ::testing::TestWithParam<BadShape> {};

TEST_P(ShapeErrorTest, NamesFieldValueAndRange) {
  DeploymentShape shape = V3Prefill();
  GetParam().mutate(shape);
  const absl::Status status = ValidateShape(shape);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), GetParam().message);
}

INSTANTIATE_TEST_SUITE_P(
    AllFields, ShapeErrorTest,
    ::testing::Values(
        BadShape{"layers_zero", [](DeploymentShape& s) { s.num_layers = 0; },
                 "num_layers = 0 is out of range [1, 4096]"},
        BadShape{"layers_high", [](DeploymentShape& s) { s.num_layers = 4097; },
                 "num_layers = 4097 is out of range [1, 4096]"},
        BadShape{"experts_zero", [](DeploymentShape& s) { s.num_logical_experts = 0; },
                 "num_logical_experts = 0 is out of range [1, 65536]"},
        BadShape{"experts_high", [](DeploymentShape& s) { s.num_logical_experts = 65537; },
                 "num_logical_experts = 65537 is out of range [1, 65536]"},
        BadShape{"groups_zero", [](DeploymentShape& s) { s.num_groups = 0; },
                 "num_groups = 0 is out of range [1, 256] (1 ≤ num_groups ≤ num_logical_experts)"},
        BadShape{"groups_high", [](DeploymentShape& s) { s.num_groups = 257; },
                 "num_groups = 257 is out of range [1, 256] (1 ≤ num_groups ≤ "
                 "num_logical_experts)"},
        BadShape{"groups_not_divisor", [](DeploymentShape& s) { s.num_groups = 3; },
                 "num_groups = 3 does not divide num_logical_experts = 256 (groups hold equal "
                 "numbers of experts)"},
        BadShape{"ranks_zero", [](DeploymentShape& s) { s.num_ranks = 0; },
                 "num_ranks = 0 is out of range [1, 65536]"},
        BadShape{"ranks_high", [](DeploymentShape& s) { s.num_ranks = 70000; },
                 "num_ranks = 70000 is out of range [1, 65536]"},
        BadShape{"nodes_zero", [](DeploymentShape& s) { s.num_nodes = 0; },
                 "num_nodes = 0 is out of range [1, 32] (1 ≤ num_nodes ≤ num_ranks)"},
        BadShape{"nodes_not_divisor", [](DeploymentShape& s) { s.num_nodes = 5; },
                 "num_nodes = 5 does not divide num_ranks = 32 (nodes hold equal numbers of "
                 "ranks)"},
        BadShape{"slots_below_experts", [](DeploymentShape& s) { s.num_physical_experts = 255; },
                 "num_physical_experts = 255 is out of range [256, 4096] (max(num_logical_experts, "
                 "num_ranks) ≤ num_physical_experts ≤ 16 × num_logical_experts)"},
        BadShape{"slots_above_factor", [](DeploymentShape& s) { s.num_physical_experts = 4097; },
                 "num_physical_experts = 4097 is out of range [256, 4096] "
                 "(max(num_logical_experts, num_ranks) ≤ num_physical_experts ≤ 16 × "
                 "num_logical_experts)"},
        BadShape{"slots_below_ranks",
                 [](DeploymentShape& s) {
                   s.num_ranks = 512;
                   s.num_nodes = 4;
                   s.num_physical_experts = 300;
                 },
                 "num_physical_experts = 300 is out of range [512, 4096] (max(num_logical_experts, "
                 "num_ranks) ≤ num_physical_experts ≤ 16 × num_logical_experts)"},
        BadShape{"total_slots",
                 [](DeploymentShape& s) {
                   s.num_layers = 4096;
                   s.num_logical_experts = 8192;
                   s.num_groups = 1;
                   s.num_physical_experts = 8192;
                 },
                 "num_layers × num_physical_experts = 33554432 exceeds 16777216"},
        BadShape{"log2phy_entries",
                 [](DeploymentShape& s) {
                   s.num_layers = 64;
                   s.num_logical_experts = 4096;
                   s.num_groups = 1;
                   s.num_physical_experts = 4096 * 16;
                 },
                 "num_layers × num_logical_experts × (num_physical_experts − num_logical_experts "
                 "+ 1) = 16106389504 exceeds 134217728 (the size of the log2phy table)"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(ShapeTest, FieldsAreCheckedInOrder) {
  DeploymentShape shape;  // everything zero
  EXPECT_THAT(std::string(ValidateShape(shape).message()), HasSubstr("num_layers = 0"));
}

}  // namespace
}  // namespace eplb
