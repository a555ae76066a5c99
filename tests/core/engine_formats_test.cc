// Engine files written by hand from each engine's reader (tests/core/golden/README.md), read by
// eplb and, where eplb writes the same layout, compared with eplb's output byte for byte.
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_replace.h"
#include "core/file_io.h"
#include "core/layer_ids.h"
#include "core/map_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace eplb {
namespace {

using ::testing::HasSubstr;

std::string Golden(const std::string& name) {
  auto text = ReadFileToString(std::string(EPLB_GOLDEN_DIR) + "/" + name);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.value_or("");
}

LayerIds DenseFirst() { return *LayerIds::FromRange(1, 4); }

// `text` with its one occurrence of `from` replaced by `to`.
std::string Edited(const std::string& text, absl::string_view from, absl::string_view to) {
  EXPECT_EQ(absl::StrReplaceAll(text, {{from, ""}}).size(), text.size() - from.size()) << from;
  return absl::StrReplaceAll(text, {{from, to}});
}

TEST(SglangGoldenTest, ReadsTheMoeRowsAndWritesTheSameFile) {
  const std::string golden = Golden("sglang_dense_first.json");
  auto parsed = ParseExpertMapJson(golden, {.num_ranks = 2, .layer_ids = DenseFirst()});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->format, MapFormat::kSglang);
  EXPECT_EQ(parsed->map.num_layers(), 3);  // the dense row is not a MoE layer
  EXPECT_EQ(parsed->map.num_logical_experts(), 4);
  EXPECT_EQ(parsed->map.phy2log_table(),
            (std::vector<int32_t>{3, 0, 1, 2, 3, 1, 0, 2, 3, 1, 0, 2, 1, 2, 3, 0, 1, 0}));
  const LayerIds ids = DenseFirst();
  EXPECT_EQ(ExpertMapToJson(parsed->map, MapFormat::kSglang, 0, &ids), golden);
}

TEST(SglangGoldenTest, RefusesWhatSglangRefuses) {
  const std::string golden = Golden("sglang_dense_first.json");
  // Rows that are not the hidden layers the numbering names.
  auto parsed = ParseExpertMapJson(golden, {.num_ranks = 2, .layer_ids = *LayerIds::Parse("2-4")});
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().message(),
            "physical_to_logical_map has 4 rows, but the layer ids name 5 hidden layers (MoE "
            "layers 2-4 of 5 hidden layers)");
  // A key besides physical_to_logical_map (SGLang passes keys as keyword arguments).
  const std::string extra = Edited(golden, "{\n", "{\"logical_count\": [[1, 2, 3, 4]],\n");
  parsed = ParseExpertMapJson(extra, {.num_ranks = 2, .layer_ids = DenseFirst()});
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().message(),
            "unexpected key \"logical_count\": an sglang map holds only physical_to_logical_map "
            "(SGLang refuses any other key)");
  // A dense row is checked like the others.
  const std::string bad_dense = Edited(golden, "[0, 1, 2, 3, 0, 1]", "[0, 1, 2, 9, 0, 1]");
  parsed = ParseExpertMapJson(
      bad_dense, {.num_logical_experts = 4, .num_ranks = 2, .layer_ids = DenseFirst()});
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(parsed.status().message(), HasSubstr("physical_to_logical_map[0][3] = 9"));
  // A missing row.
  const std::string short_file = Edited(golden, ",\n    [1, 2, 3, 0, 1, 0]\n", "\n");
  parsed = ParseExpertMapJson(short_file, {.num_ranks = 2, .layer_ids = DenseFirst()});
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(parsed.status().message(), HasSubstr("has 3 rows, but the layer ids name 4"));
}

TEST(VllmAscendGoldenTest, ReadsTheExpertMapFile) {
  auto parsed = ParseExpertMapJson(Golden("vllm_ascend_one_layer.json"));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->format, MapFormat::kVllmAscend);
  EXPECT_EQ(parsed->map.num_ranks(), 2);
  EXPECT_EQ(parsed->map.num_logical_experts(), 8);
  EXPECT_EQ(parsed->map.phy2log_table(), (std::vector<int32_t>{7, 2, 0, 3, 5, 6, 1, 4, 7, 2}));
  // Written again and read back: the same map.
  auto again = ParseExpertMapJson(ExpertMapToJson(parsed->map, MapFormat::kVllmAscend));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->map, parsed->map);
  // Its rows are MoE layers: numbered otherwise, it does not fit.
  auto misnumbered = ParseExpertMapJson(Golden("vllm_ascend_one_layer.json"),
                                        {.layer_ids = *LayerIds::FromRange(3, 61)});
  ASSERT_FALSE(misnumbered.ok());
  EXPECT_EQ(misnumbered.status().message(),
            "the map has 1 MoE layers, but the layer ids name 58 (MoE layers 3-60 of 61 hidden "
            "layers)");
}

}  // namespace
}  // namespace eplb
