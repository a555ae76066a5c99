#include "core/layer_ids.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace eplb {
namespace {

using ::testing::ElementsAre;

std::vector<int32_t> Ids(const LayerIds& ids) {
  return {ids.moe_layers().begin(), ids.moe_layers().end()};
}

TEST(LayerIdsTest, RangesListsAndAllMoe) {
  const auto v3 = LayerIds::FromRange(3, 61);
  ASSERT_TRUE(v3.ok()) << v3.status();
  EXPECT_EQ(v3->num_moe_layers(), 58);
  EXPECT_EQ(v3->num_hidden_layers(), 61);
  EXPECT_EQ(v3->moe_layers().front(), 3);
  EXPECT_EQ(v3->DebugString(), "MoE layers 3-60 of 61 hidden layers");
  EXPECT_EQ(v3->MoeLayerOf(2), -1);
  EXPECT_EQ(v3->MoeLayerOf(3), 0);
  EXPECT_EQ(v3->MoeLayerOf(60), 57);

  const auto parsed = LayerIds::Parse("3-60");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, *v3);

  const auto mixed = LayerIds::Parse(" 1, 3,5-7 ", 10);
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  EXPECT_THAT(Ids(*mixed), ElementsAre(1, 3, 5, 6, 7));
  EXPECT_EQ(mixed->num_hidden_layers(), 10);
  EXPECT_EQ(mixed->DebugString(), "MoE layers 1,3,5-7 of 10 hidden layers");
  EXPECT_EQ(mixed->MoeLayerOf(4), -1);
  EXPECT_EQ(mixed->MoeLayerOf(5), 2);

  const LayerIds all = LayerIds::AllMoe(4);
  EXPECT_THAT(Ids(all), ElementsAre(0, 1, 2, 3));
  EXPECT_EQ(all.num_hidden_layers(), 4);
}

TEST(LayerIdsTest, BadNumberingsNameTheProblem) {
  const struct {
    absl::StatusOr<LayerIds> ids;
    std::string message;
  } cases[] = {
      {LayerIds::FromRange(61, 61),
       "first_moe_layer = 61 is out of range [0, 60] (below "
       "num_hidden_layers = 61)"},
      {LayerIds::FromRange(-1, 61),
       "first_moe_layer = -1 is out of range [0, 60] (below "
       "num_hidden_layers = 61)"},
      {LayerIds::FromRange(0, 0), "num_hidden_layers = 0 is out of range [1, 65536]"},
      {LayerIds::FromRange(0, 70000), "num_hidden_layers = 70000 is out of range [1, 65536]"},
      {LayerIds::FromRange(0, 5000), "layer ids name 5000 MoE layers, more than 4096"},
      {LayerIds::Parse(""), "layer ids: \"\" is not a layer index or a range A-B of them"},
      {LayerIds::Parse("3-x"), "layer ids: \"3-x\" is not a layer index or a range A-B of them"},
      {LayerIds::Parse("1-2-3"),
       "layer ids: \"1-2-3\" is not a layer index or a range A-B of them"},
      {LayerIds::Parse("-3"), "layer ids: \"-3\" is not a layer index or a range A-B of them"},
      {LayerIds::Parse("9-2"), "layer ids: \"9-2\" is not an increasing range"},
      {LayerIds::Parse("4,4"), "layer ids must increase: 4 follows 4"},
      {LayerIds::Parse("5,3"), "layer ids must increase: 3 follows 5"},
      {LayerIds::Parse("70000"),
       "layer ids: \"70000\" names a layer beyond the largest index, 65535"},
      {LayerIds::Parse("0-9", 9),
       "num_hidden_layers = 9 is out of range [10, 65536] (above the largest layer id, 9)"},
      {LayerIds::FromIds({}), "layer ids name no layer"},
  };
  for (const auto& c : cases) {
    ASSERT_FALSE(c.ids.ok()) << c.message;
    EXPECT_EQ(c.ids.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(c.ids.status().message(), c.message);
  }
}

TEST(LayerIdsTest, CheckFitsNamesBothCounts) {
  const auto v3 = LayerIds::FromRange(3, 61);
  ASSERT_TRUE(v3.ok());
  EXPECT_TRUE(v3->CheckFits(58, "the map").ok());
  const absl::Status st = v3->CheckFits(61, "the map");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(),
            "the map has 61 MoE layers, but the layer ids name 58 (MoE layers 3-60 of 61 hidden "
            "layers)");
}

}  // namespace
}  // namespace eplb
