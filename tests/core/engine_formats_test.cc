// Engine files written by hand from each engine's reader (tests/core/golden/README.md), read by
// eplb and, where eplb writes the same layout, compared with eplb's output byte for byte.
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_replace.h"
#include "core/expert_map.h"
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
  EXPECT_EQ(ExpertMapToText(parsed->map, MapFormat::kSglang, 0, &ids), golden);
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
  auto again = ParseExpertMapJson(ExpertMapToText(parsed->map, MapFormat::kVllmAscend));
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

TEST(TrtllmGoldenTest, ReadsTheLoadBalancerFileAndWritesTheSameFile) {
  const std::string golden = Golden("trtllm_dense_first.yaml");
  const LayerIds ids = *LayerIds::Parse("1-2");
  auto parsed = ParseExpertMap(golden, {.num_ranks = 2, .layer_ids = ids});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->format, MapFormat::kTrtllm);
  EXPECT_EQ(parsed->map.num_layers(), 2);
  EXPECT_EQ(parsed->map.num_logical_experts(), 4);
  EXPECT_EQ(parsed->map.phy2log_table(),
            (std::vector<int32_t>{3, 0, 1, 2, 3, 1, 0, 2, 3, 1, 0, 2}));
  EXPECT_EQ(ExpertMapToText(parsed->map, MapFormat::kTrtllm, 0, &ids), golden);
  // The file's keys are its numbering: without layer ids, the map is read all the same.
  auto unnumbered = ParseExpertMap(golden, {.num_ranks = 2});
  ASSERT_TRUE(unnumbered.ok()) << unnumbered.status();
  EXPECT_EQ(unnumbered->map, parsed->map);
  // Keys in another order, layers out of order: the same map.
  auto reordered = ParseExpertMap(Golden("trtllm_readme_order.yaml"), {.num_ranks = 2});
  ASSERT_TRUE(reordered.ok()) << reordered.status();
  EXPECT_EQ(reordered->map, parsed->map);
}

TEST(TrtllmGoldenTest, RefusesWhatTensorRtLlmRefuses) {
  const std::string golden = Golden("trtllm_dense_first.yaml");
  // Hints as {E, R, layer ids ("": none)}.
  struct Hints {
    int32_t num_logical_experts;
    int32_t num_ranks;
    const char* layer_ids;
  };
  const struct {
    std::string text;
    Hints hints;
    std::string message;
  } cases[] = {
      {golden,
       {0, 0, ""},
       "TensorRT-LLM's load balancer files carry no rank count: num_ranks is required"},
      {golden + "ep_size: 2\n",
       {0, 2, ""},
       "line 6, column 1: unexpected key \"ep_size\": TensorRT-LLM's load balancer config holds "
       "only num_slots, initial_global_assignments and layer_updates_per_iter (it refuses any "
       "other key)"},
      {golden,
       {0, 4, ""},
       "line 5, column 12: num_slots = 6 is not a multiple of num_ranks "
       "= 4 (TensorRT-LLM gives every rank the same number of slots)"},
      {golden,
       {0, 2, "1-3"},
       "initial_global_assignments lists 2 layers, but the layer ids name 3 (MoE layers 1-3 of 4 "
       "hidden layers)"},
      {golden,
       {0, 2, "3-4"},
       "initial_global_assignments lists layers 1,2, but the layer ids name MoE layers 3-4 of 5 "
       "hidden layers"},
      {Edited(golden, "[3, 0, 1, 2, 3, 1]", "[3, 0, 1, 2, 3]"),
       {0, 2, ""},
       "line 2, column 6: initial_global_assignments[1] has 5 entries, expected num_slots = 6"},
      {Edited(golden, "[3, 0, 1, 2, 3, 1]", "[3, 0, 1, 2, 3, 9]"),
       {4, 2, ""},
       "line 2, column 22: initial_global_assignments[1][5] = 9 is out of range [0, 3]"},
      {Edited(golden, "[3, 0, 1, 2, 3, 1]", "[3, 0, 1, 3, 3, 1]"),
       {0, 2, ""},
       "initial_global_assignments (rows in layer order 1,2): logical expert 2 of layer 0 has no "
       "slot in phy2log"},
      {Edited(golden, "num_slots: 6\n", ""), {0, 2, ""}, "num_slots is required"},
      {"num_slots: 6\n",
       {0, 2, ""},
       "initial_global_assignments is required (without it TensorRT-LLM places experts "
       "round-robin: there is no map)"},
      {Edited(golden, "  1: [", "  x: ["),
       {0, 2, ""},
       "line 2, column 3: a layer index of initial_global_assignments is not an integer"},
      {Edited(golden, "  2: [", "  1: ["),
       {0, 2, ""},
       "line 3, column 3: layer 1 is listed twice in initial_global_assignments"},
      {Edited(golden, "[3, 0, 1, 2, 3, 1]", "[3, 0, 1, 2, 3, 1"),
       {0, 2, ""},
       "line 3, column 4: end of sequence flow not found"},
      {"- 1\n- 2\n",
       {0, 2, ""},
       "expected a YAML mapping of num_slots, initial_global_assignments and "
       "layer_updates_per_iter at the top level"},
  };
  for (const auto& c : cases) {
    MapShapeHints hints;
    hints.num_logical_experts = c.hints.num_logical_experts;
    hints.num_ranks = c.hints.num_ranks;
    if (*c.hints.layer_ids != '\0') hints.layer_ids = *LayerIds::Parse(c.hints.layer_ids);
    auto parsed = ParseExpertMap(c.text, hints);
    ASSERT_FALSE(parsed.ok()) << c.message;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(parsed.status().message(), c.message);
  }
}

TEST(TrtllmGoldenTest, WritingNeedsEvenSlotsAndFittingLayerIds) {
  auto uneven = ExpertMap::FromPhy2Log(1, 4, SlotLayout(5, 2), {0, 1, 2, 3, 0});
  ASSERT_TRUE(uneven.ok());
  EXPECT_EQ(CheckMapWritable(*uneven, MapFormat::kTrtllm).message(),
            "the map has 5 slots on 2 ranks: TensorRT-LLM needs the same number of slots on every "
            "rank");
  EXPECT_TRUE(CheckMapWritable(*uneven, MapFormat::kEplb).ok());
  const LayerIds three = *LayerIds::Parse("1-3");
  EXPECT_EQ(CheckMapWritable(*uneven, MapFormat::kEplb, &three).message(),
            "the map has 1 MoE layers, but the layer ids name 3 (MoE layers 1-3 of 4 hidden "
            "layers)");
}

}  // namespace
}  // namespace eplb
