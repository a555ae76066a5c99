// End-to-end tests of `eplbctl plan`: the real binary, real files, exit codes and messages.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/file_io.h"
#include "core/map_format.h"
#include "core/metrics.h"
#include "tests/support/subprocess.h"

namespace eplb {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;
using ::testing::StartsWith;

using Result = testing::ProcessResult;
using testing::Slurp;

class EplbctlPlanTest : public testing::ScratchDirTest {
 protected:
  EplbctlPlanTest() : ScratchDirTest("eplbctl_test") {}

  // Runs eplbctl with `args`, stdout and stderr captured.
  Result Run(std::vector<std::string> args) const {
    args.insert(args.begin(), EPLBCTL_PATH);
    return testing::RunProcess(std::move(args), dir_ / "eplbctl");
  }
};

const std::string kExampleLoad =
    R"({"load": [[90,132,40,61,104,165,39,4,73,56,183,86],
                 [20,107,104,64,19,197,187,157,172,86,16,27]]})";

std::vector<std::string> ExampleArgs(const std::string& load) {
  return {"plan",    "--load",      load, "--num-physical-experts",
          "16",      "--num-ranks", "8",  "--num-groups",
          "4",       "--num-nodes", "2",  "--policy",
          "deepseek"};
}

TEST_F(EplbctlPlanTest, PlansThePublicExampleToStdout) {
  const Result r = Run(ExampleArgs(Write("load.json", kExampleLoad)));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto parsed = ParseExpertMapJson(r.out);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->format, MapFormat::kEplb);
  EXPECT_EQ(parsed->version, 1);
  EXPECT_THAT(parsed->map.phy2log(0),
              ::testing::ElementsAre(5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1));
  EXPECT_THAT(parsed->map.phy2log(1),
              ::testing::ElementsAre(7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1));
  EXPECT_THAT(r.err, HasSubstr("policy deepseek: 2 layers, 12 experts (4 groups), 16 slots on 8 "
                               "ranks (2 nodes)"));
  EXPECT_THAT(r.err, MatchesRegex("(.|\n)*balancedness  contiguous min 0\\.[0-9]{4}  mean "
                                  "0\\.[0-9]{4}\n(.|\n)*"));
  EXPECT_THAT(r.err, MatchesRegex("(.|\n)*balancedness  planned    min 0\\.[0-9]{4}(.|\n)*"));
}

TEST_F(EplbctlPlanTest, SummaryFiguresAreTheMapsMetrics) {
  const std::string load_path = Write("load.json", kExampleLoad);
  std::vector<std::string> args = ExampleArgs(load_path);
  args.insert(args.end(), {"--output", Path("map.json"), "--per-layer"});
  const Result r = Run(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "");
  auto parsed = ParseExpertMapJson(Slurp(Path("map.json")));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  auto load = ParseLoadJson(kExampleLoad);
  ASSERT_TRUE(load.ok());
  const MapQuality q = EvaluateMap(parsed->map, *load);
  char line[128];
  std::snprintf(line, sizeof line, "    1  %-12.4f %-12.4f %.4f\n", 0.0, q.layers[1].balancedness,
                q.layers[1].max_over_bound);
  // The "before" column is the contiguous map's; check the planned columns.
  EXPECT_THAT(r.err, HasSubstr(std::string(line).substr(20)));
  // Two slots per rank: the count bound beside the basic one.
  std::snprintf(line, sizeof line, "(max/bound mean %.4f, max/count bound %.4f)\n",
                q.mean_max_over_bound, q.mean_max_over_count_bound);
  EXPECT_THAT(r.err, HasSubstr(line));
  EXPECT_THAT(r.err, HasSubstr("wrote " + Path("map.json") + " (eplb, version 1)"));

  // Six slots per rank: the basic bound alone.
  const Result six = Run({"plan", "--load", load_path, "--num-physical-experts", "24",
                          "--num-ranks", "4", "--policy", "balanced"});
  ASSERT_EQ(six.exit_code, 0) << six.err;
  EXPECT_THAT(six.err, MatchesRegex("(.|\n)*\\(max/bound mean [0-9.]+\\)\n(.|\n)*"));
  EXPECT_THAT(six.err, Not(HasSubstr("count bound")));
}

TEST_F(EplbctlPlanTest, ReplicaSharesAreWrittenWithTheMapAndTheirBalancePrinted) {
  const std::string load_path = Write("load.json", kExampleLoad);
  std::vector<std::string> args = ExampleArgs(load_path);
  args.insert(args.end(), {"--output", Path("map.json"), "--per-layer", "--replica-shares"});
  const Result r = Run(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto parsed = ParseExpertMapJson(Slurp(Path("map.json")));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  auto load = ParseLoadJson(kExampleLoad);
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(parsed->replica_share, OptimalReplicaShareTable(parsed->map, *load));
  const RoutedBalance routed = EvaluateRouting(parsed->map, *load, parsed->replica_share);
  const MapQuality q = EvaluateMap(parsed->map, *load);
  char line[160];
  std::snprintf(line, sizeof line,
                "balancedness  weighted   min %.4f  mean %.4f  (routed by the replica shares in "
                "the map)\n",
                routed.min_balancedness, routed.mean_balancedness);
  EXPECT_THAT(r.err, HasSubstr(line));
  EXPECT_THAT(r.err, HasSubstr("max/bound    weighted\n"));
  std::snprintf(line, sizeof line, "%-12.4f %.4f       %.4f\n", q.layers[1].balancedness,
                q.layers[1].max_over_bound, routed.balancedness[1]);
  EXPECT_THAT(r.err, HasSubstr(line));
  // deepseek's plan of the example leaves something to route better.
  EXPECT_GT(routed.mean_balancedness, q.mean_balancedness + 0.01);

  // Without the flag: no shares in the map, no weighted figures.
  args.pop_back();
  const Result plain = Run(args);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_THAT(plain.err, Not(HasSubstr("weighted")));
  parsed = ParseExpertMapJson(Slurp(Path("map.json")));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->replica_share.empty());

  // Refused where shares cannot go or cannot be computed, the output kept.
  const std::string kept = Slurp(Path("map.json"));
  args.insert(args.end(), {"--replica-shares", "--format", "vllm-ascend"});
  Result refused = Run(args);
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_EQ(refused.err,
            "eplbctl plan: --replica-shares needs --format eplb: vllm-ascend cannot carry routing "
            "shares (see eplbctl plan --help)\n");
  refused = Run({"plan", "--policy", "contiguous", "--num-layers", "2", "--num-logical-experts",
                 "30", "--num-physical-experts", "30", "--num-ranks", "8", "--output",
                 Path("map.json"), "--replica-shares"});
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_EQ(refused.err,
            "eplbctl plan: --replica-shares needs --load: shares follow the load (see eplbctl "
            "plan --help)\n");
  EXPECT_EQ(Slurp(Path("map.json")), kept);
}

TEST_F(EplbctlPlanTest, ContiguousWithoutLoad) {
  const Result r =
      Run({"plan", "--policy", "contiguous", "--num-layers", "2", "--num-logical-experts", "30",
           "--num-physical-experts", "30", "--num-ranks", "8", "--output", Path("map.json")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto parsed = ParseExpertMapJson(Slurp(Path("map.json")));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->map.num_layers(), 2);
  for (int p = 0; p < 30; ++p) EXPECT_EQ(parsed->map.phy2log(1)[p], p);
  EXPECT_EQ(parsed->map.layout().SlotsOnRank(0), 4);
  EXPECT_EQ(parsed->map.layout().SlotsOnRank(7), 3);
}

TEST_F(EplbctlPlanTest, EveryFormatIsWrittenAndReadsBack) {
  const std::string load_path = Write("load.json", kExampleLoad);
  auto eplb = Run(ExampleArgs(load_path));
  ASSERT_EQ(eplb.exit_code, 0);
  const auto reference = ParseExpertMapJson(eplb.out);
  ASSERT_TRUE(reference.ok());
  // SGLang's rows are hidden layers: here a dense layer 0, then the example's 2 MoE layers;
  // TensorRT-LLM keys the MoE layers by their hidden-layer index.
  const auto layer_ids = LayerIds::FromRange(1, 3);
  ASSERT_TRUE(layer_ids.ok());
  for (const char* format : {"vllm-ascend", "sglang", "trtllm"}) {
    const bool numbered = std::string(format) != "vllm-ascend";
    std::vector<std::string> args = ExampleArgs(load_path);
    args.insert(args.end(), {"--format", format});
    if (numbered) args.insert(args.end(), {"--first-moe-layer", "1", "--num-hidden-layers", "3"});
    const Result r = Run(args);
    ASSERT_EQ(r.exit_code, 0) << format << ": " << r.err;
    auto parsed = ParseExpertMap(
        r.out, {.num_logical_experts = 12,
                .num_ranks = 8,
                .layer_ids = numbered ? std::optional<LayerIds>(*layer_ids) : std::nullopt});
    ASSERT_TRUE(parsed.ok()) << format << ": " << parsed.status();
    EXPECT_EQ(MapFormatName(parsed->format), format);
    EXPECT_EQ(parsed->map.phy2log_table(), reference->map.phy2log_table()) << format;
    if (std::string(format) == "sglang") {
      EXPECT_THAT(r.out, HasSubstr("[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3]"))
          << "the dense layer's trivial row";
    }
    if (std::string(format) == "trtllm") {
      EXPECT_THAT(r.out, StartsWith("initial_global_assignments:\n  1: ["));
      EXPECT_THAT(r.out, HasSubstr("\n  2: ["));
      EXPECT_THAT(r.out, HasSubstr("layer_updates_per_iter: 0\nnum_slots: 16\n"));
    }
  }
}

TEST_F(EplbctlPlanTest, PlansFromWhatEnginesRecorded) {
  const std::string golden = EPLB_GOLDEN_DIR;
  // TensorRT-LLM's statistics name their layers, which then number its load balancer file.
  Result r = Run({"plan", "--load", golden + "/trtllm_stats", "--load-format", "trtllm-stats",
                  "--num-physical-experts", "6", "--num-ranks", "2", "--format", "trtllm"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("load: " + golden +
                               "/trtllm_stats, 2 layers × 4 experts, 2 iterations from 2 rank "
                               "files (MoE layers 1-2 of 3 hidden layers)\n"));
  EXPECT_THAT(r.out, StartsWith("initial_global_assignments:\n  1: ["));
  auto map = ParseExpertMap(r.out, {.num_ranks = 2});
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->map.num_layers(), 2);

  r = Run({"plan", "--load", golden + "/trtllm_stats", "--load-format", "trtllm-stats",
           "--iterations", "101-102", "--num-physical-experts", "6", "--num-ranks", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("2 layers × 4 experts, 1 iterations from 2 rank files"));

  // SGLang's expert distribution: a row per hidden layer, steps summed.
  r = Run({"plan", "--load", golden + "/sglang_logical_count.json", "--load-format", "sglang",
           "--first-moe-layer", "1", "--num-hidden-layers", "4", "--num-physical-experts", "6",
           "--num-ranks", "2", "--format", "sglang"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("3 layers × 4 experts, 2 steps (MoE layers 1-3 of 4 hidden "
                               "layers)"));
  auto sglang = ParseExpertMap(r.out, {.num_ranks = 2, .layer_ids = *LayerIds::FromRange(1, 4)});
  ASSERT_TRUE(sglang.ok()) << sglang.status();
  EXPECT_EQ(sglang->map.num_layers(), 3);

  r = Run({"plan", "--load", golden + "/sglang_logical_count.json", "--iterations", "1-2",
           "--num-physical-experts", "6", "--num-ranks", "2"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--iterations applies to --load-format trtllm-stats"));
  r = Run({"plan", "--load", golden + "/trtllm_stats", "--load-format", "trtllm-stats",
           "--iterations", "9-3", "--num-physical-experts", "6", "--num-ranks", "2"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--iterations = \"9-3\" is not A-B with 0 ≤ A < B"));
  r = Run({"plan", "--load", golden + "/trtllm_stats", "--load-format", "csv",
           "--num-physical-experts", "6", "--num-ranks", "2"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err,
              HasSubstr("unknown load format \"csv\": expected eplb, sglang or trtllm-stats"));
}

void SetFlag(std::vector<std::string>& args, const std::string& flag, const std::string& value);

TEST_F(EplbctlPlanTest, EngineRowsNeedTheLayerNumbering) {
  const std::string load_path = Write("load.json", kExampleLoad);
  std::vector<std::string> args = ExampleArgs(load_path);
  args.insert(args.end(), {"--format", "sglang", "--output", Path("map.json")});
  Result r = Run(args);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--format sglang writes a row per hidden layer: give "
                               "--first-moe-layer K --num-hidden-layers H"));

  std::vector<std::string> trtllm = args;
  SetFlag(trtllm, "--format", "trtllm");
  r = Run(trtllm);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--format trtllm keys the MoE layers by their hidden-layer index: "
                               "give --first-moe-layer K --num-hidden-layers H"));

  args.insert(args.end(), {"--first-moe-layer", "3", "--num-hidden-layers", "61"});
  r = Run(args);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "eplbctl plan: the plan has 2 MoE layers, but the layer ids name 58 (MoE layers 3-60 "
            "of 61 hidden layers)\n");
  EXPECT_FALSE(std::filesystem::exists(Path("map.json")));

  for (const auto& [flags, message] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--layer-ids", "3-60", "--first-moe-layer", "3"},
            "--layer-ids and --first-moe-layer exclude each other"},
           {{"--first-moe-layer", "3"}, "--first-moe-layer needs --num-hidden-layers"},
           {{"--layer-ids", "5-3"}, "--layer-ids: layer ids: \"5-3\" is not an increasing range"},
           {{"--layer-ids", "1,1"}, "--layer-ids: layer ids must increase: 1 follows 1"},
           {{"--layer-ids", "1-2", "--num-hidden-layers", "2"},
            "--layer-ids: num_hidden_layers = 2 is out of range [3, 65536] (above the largest "
            "layer id, 2)"},
       }) {
    std::vector<std::string> bad = ExampleArgs(load_path);
    bad.insert(bad.end(), flags.begin(), flags.end());
    r = Run(bad);
    EXPECT_EQ(r.exit_code, 2) << message;
    EXPECT_THAT(r.err, HasSubstr(message));
  }

  // Reading SGLang's file back: its rows must be the hidden layers the numbering names.
  args = ExampleArgs(load_path);
  args.insert(args.end(), {"--format", "sglang", "--first-moe-layer", "1", "--num-hidden-layers",
                           "3", "--output", Path("sglang.json")});
  ASSERT_EQ(Run(args).exit_code, 0);
  args = ExampleArgs(load_path);
  args.insert(args.end(), {"--previous", Path("sglang.json"), "--first-moe-layer", "2",
                           "--num-hidden-layers", "4"});
  r = Run(args);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err,
              HasSubstr("physical_to_logical_map has 3 rows, but the layer ids name 4 hidden "
                        "layers (MoE layers 2-3 of 4 hidden layers)"));
  args = ExampleArgs(load_path);
  args.insert(args.end(), {"--previous", Path("sglang.json"), "--layer-ids", "1-2"});
  r = Run(args);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("vs previous: 0 of 32 slots changed"));
}

TEST_F(EplbctlPlanTest, PreviousMapInAnyFormatIsComparedAndVersioned) {
  const std::string load_path = Write("load.json", kExampleLoad);
  // A contiguous previous map in SGLang's format (no version) and in ours (version 6).
  ASSERT_EQ(Run({"plan", "--policy", "contiguous", "--num-layers", "2", "--num-logical-experts",
                 "12", "--num-physical-experts", "16", "--num-ranks", "8", "--format", "sglang",
                 "--num-hidden-layers", "2", "--output", Path("prev.sglang.json")})
                .exit_code,
            0);
  std::vector<std::string> args = ExampleArgs(load_path);
  args.insert(args.end(), {"--previous", Path("prev.sglang.json"), "--output", Path("next.json"),
                           "--bytes-per-expert", "1000"});
  const Result r = Run(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err,
              MatchesRegex("(.|\n)*vs previous: [0-9]+ of 32 slots changed, [0-9]+ experts "
                           "to receive \\(at most [0-9]+ on one rank\\), [0-9]+ bytes\n(.|\n)*"));
  EXPECT_THAT(r.err, HasSubstr("balancedness  previous"));
  auto next = ParseExpertMapJson(Slurp(Path("next.json")));
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->version, 1);

  args = ExampleArgs(load_path);
  args.insert(args.end(), {"--previous", Path("next.json"), "--output", Path("again.json")});
  const Result again = Run(args);
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_THAT(again.err, HasSubstr("vs previous: 0 of 32 slots changed, 0 experts to receive"));
  auto v2 = ParseExpertMapJson(Slurp(Path("again.json")));
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(v2->version, 2);

  // A move budget of one expert per rank and layer (2 layers: at most 2 per rank in all).
  args = ExampleArgs(load_path);
  SetFlag(args, "--policy", "balanced");
  args.insert(args.end(), {"--previous", Path("prev.sglang.json"), "--max-received-per-rank", "1",
                           "--output", Path("budget.json")});
  const Result budget = Run(args);
  ASSERT_EQ(budget.exit_code, 0) << budget.err;
  EXPECT_THAT(budget.err, MatchesRegex("(.|\n)*\\(at most [012] on one rank\\)(.|\n)*"));

  // Node affinity: each of the 4 groups (3 experts) on the 4 ranks (8 slots) of one node.
  args = ExampleArgs(load_path);
  SetFlag(args, "--policy", "balanced");
  args.insert(args.end(), {"--node-affinity", "--output", Path("affine.json")});
  const Result affine = Run(args);
  ASSERT_EQ(affine.exit_code, 0) << affine.err;
  auto affine_map = ParseExpertMapJson(Slurp(Path("affine.json")));
  ASSERT_TRUE(affine_map.ok());
  for (int l = 0; l < affine_map->map.num_layers(); ++l) {
    std::vector<int> node_of_group(4, -1);
    for (int p = 0; p < 16; ++p) {
      const int group = affine_map->map.phy2log(l)[p] / 3, node = p / 8;
      if (node_of_group[group] < 0) node_of_group[group] = node;
      EXPECT_EQ(node_of_group[group], node) << "layer " << l << " slot " << p;
    }
  }
  // The cross-node share of token traffic drops to what keeping groups on nodes allows.
  EXPECT_THAT(affine.err,
              MatchesRegex("(.|\n)*cross-node share of token traffic \\(8 experts in 4 groups per "
                           "token\\): contiguous [0-9.]+, planned [0-9.]+ "
                           "\\(each ±0\\.[0-9]+\\)\n(.|\n)*"));
  // A per-layer budget: at most 3 experts received per layer, 6 over the 2 layers.
  args = ExampleArgs(load_path);
  SetFlag(args, "--policy", "balanced");
  args.insert(args.end(), {"--previous", Path("prev.sglang.json"), "--max-received-per-layer", "3",
                           "--tolerance", "0", "--output", Path("layer-budget.json")});
  const Result layer_budget = Run(args);
  ASSERT_EQ(layer_budget.exit_code, 0) << layer_budget.err;
  EXPECT_THAT(layer_budget.err, MatchesRegex("(.|\n)*, [0-6] experts to receive(.|\n)*"));

  args = ExampleArgs(load_path);  // --policy deepseek
  args.insert(args.end(), {"--node-affinity", "--output", Path("not-written.json")});
  const Result refused = Run(args);
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_EQ(refused.err,
            "eplbctl plan: --node-affinity applies to --policy balanced, not deepseek (see eplbctl "
            "plan --help)\n");
  EXPECT_FALSE(std::filesystem::exists(Path("not-written.json")));
}

// Sets `flag` to `value`, replacing the value if the flag is already in `args`.
void SetFlag(std::vector<std::string>& args, const std::string& flag, const std::string& value) {
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == flag) {
      args[i + 1] = value;
      return;
    }
  }
  args.insert(args.end(), {flag, value});
}

struct BadCase {
  const char* name;
  const char* load;                     // contents of load.json; nullptr: no such file
  std::vector<std::string> extra_args;  // appended to the example's arguments
  int exit_code;
  const char* message;  // the whole stderr, one line, after "eplbctl plan: "
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

class EplbctlPlanBadInputTest : public EplbctlPlanTest,
                                public ::testing::WithParamInterface<BadCase> {};

// Bad input: one line naming the problem, a non-zero exit code, no crash, and the existing output
// file untouched.
TEST_P(EplbctlPlanBadInputTest, FailsWithOneLineAndLeavesOutputAlone) {
  const BadCase& c = GetParam();
  const std::string load_path = c.load ? Write("load.json", c.load) : Path("missing.json");
  const std::string output = Write("out.json", "precious\n");
  std::vector<std::string> args = ExampleArgs(load_path);
  for (size_t i = 0; i + 1 < c.extra_args.size(); i += 2) {
    SetFlag(args, c.extra_args[i], c.extra_args[i + 1]);
  }
  args.insert(args.end(), {"--output", output});
  const Result r = Run(args);
  EXPECT_EQ(r.exit_code, c.exit_code) << r.err;
  std::string expected = std::string("eplbctl plan: ") + c.message + "\n";
  size_t pos;
  while ((pos = expected.find("$DIR")) != std::string::npos)
    expected.replace(pos, 4, dir_.string());
  EXPECT_EQ(r.err, expected);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(Slurp(output), "precious\n");
  // No temporary files left beside the output.
  int files = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(dir_)) ++files;
  EXPECT_EQ(files, (c.load ? 1 : 0) + 1);  // load, out.json
}

INSTANTIATE_TEST_SUITE_P(
    Cases, EplbctlPlanBadInputTest,
    ::testing::Values(
        BadCase{"missing_file",
                nullptr,
                {},
                1,
                "cannot open $DIR/missing.json: No such file or directory"},
        BadCase{"malformed_json",
                R"({"load": [[1, 2,]]})",
                {},
                1,
                "$DIR/load.json: line 1, column 17: expected a value"},
        BadCase{"ragged_rows",
                R"({"load": [[1,2,3,4,5,6,7,8,9,10,11,12],[1,2]]})",
                {},
                1,
                "$DIR/load.json: load[1] has 2 values, expected 12 (as load[0])"},
        BadCase{"negative",
                R"({"load": [[1,2,3,4,5,6,7,8,9,10,11,-12]]})",
                {},
                1,
                "$DIR/load.json: load[0][11] = -12 is negative"},
        BadCase{"infinite",
                R"({"load": [[1,2,3,4,5,6,7,8,9,10,11,1e999]]})",
                {},
                1,
                "$DIR/load.json: line 1, column 36: number out of the range of a double"},
        BadCase{"nan_literal",
                R"({"load": [[1,2,3,4,5,6,7,8,9,10,11,NaN]]})",
                {},
                1,
                "$DIR/load.json: line 1, column 36: expected a value"},
        BadCase{
            "groups_do_not_divide",
            R"({"load": [[1,2,3,4,5,6,7,8,9,10,11,12]]})",
            {"--num-groups", "5"},
            1,
            "num_groups = 5 does not divide num_logical_experts = 12 (groups hold equal numbers "
            "of experts)"},
        BadCase{"too_few_slots",
                R"({"load": [[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]]})",
                {},
                1,
                "num_physical_experts = 16 is out of range [20, 320] (max(num_logical_experts, "
                "num_ranks) ≤ num_physical_experts ≤ 16 × num_logical_experts)"},
        BadCase{
            "slots_not_multiple_of_ranks",
            R"({"load": [[1,2,3,4,5,6,7,8,9,10,11,12]]})",
            {"--num-ranks", "6", "--num-nodes", "1"},
            1,
            "policy deepseek needs num_physical_experts (16) to be a multiple of num_ranks (6)"},
        BadCase{"unknown_policy",
                R"({"load": [[1]]})",
                {"--policy", "magic"},
                2,
                "policy = \"magic\" is not one of: contiguous, deepseek, balanced (see eplbctl "
                "plan --help)"},
        BadCase{"budget_without_balanced",
                R"({"load": [[1,2,3,4,5,6,7,8,9,10,11,12]]})",
                {"--policy", "deepseek", "--max-received-per-rank", "1"},
                2,
                "--max-received-per-rank applies to --policy balanced, not deepseek (see eplbctl "
                "plan --help)"},
        BadCase{"tolerance_out_of_range",
                R"({"load": [[1,2,3,4,5,6,7,8,9,10,11,12]]})",
                {"--policy", "balanced", "--tolerance", "1.5"},
                2,
                "--tolerance = 1.5 is out of range [0, 1] (see eplbctl plan --help)"},
        BadCase{"layer_min_gain_not_a_number",
                R"({"load": [[1,2,3,4,5,6,7,8,9,10,11,12]]})",
                {"--policy", "balanced", "--layer-min-gain", "some"},
                2,
                "--layer-min-gain = \"some\" is not a number (see eplbctl plan --help)"},
        BadCase{"gain_per_move_out_of_range",
                R"({"load": [[1,2,3,4,5,6,7,8,9,10,11,12]]})",
                {"--policy", "balanced", "--gain-per-move", "2"},
                2,
                "--gain-per-move = 2 is out of range [0, 1] (see eplbctl plan --help)"},
        BadCase{"layer_budget_without_balanced",
                R"({"load": [[1,2,3,4,5,6,7,8,9,10,11,12]]})",
                {"--policy", "deepseek", "--max-received-per-layer", "3"},
                2,
                "--max-received-per-layer applies to --policy balanced, not deepseek (see eplbctl "
                "plan --help)"},
        BadCase{"not_an_integer",
                R"({"load": [[1]]})",
                {"--bytes-per-expert", "12x"},
                2,
                "--bytes-per-expert = \"12x\" is not an integer (see eplbctl plan --help)"},
        BadCase{"unknown_flag",
                R"({"load": [[1]]})",
                {"--num-gpus", "3"},
                2,
                "unknown flag --num-gpus (see eplbctl plan --help)"},
        BadCase{"bad_format",
                R"({"load": [[1]]})",
                {"--format", "yaml"},
                2,
                "unknown map format \"yaml\": expected eplb, vllm-ascend, sglang or trtllm (see "
                "eplbctl "
                "plan --help)"},
        BadCase{"layers_disagree",
                R"({"load": [[1,2,3,4,5,6,7,8,9,10,11,12]]})",
                {"--num-layers", "2"},
                1,
                "--num-layers = 2, but $DIR/load.json has 1 layers"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST_F(EplbctlPlanTest, BadPreviousMapIsNamed) {
  const std::string load_path = Write("load.json", kExampleLoad);
  const std::string prev = Write("prev.json", R"({"physical_to_logical_map": [[0,1,2]]})");
  std::vector<std::string> args = ExampleArgs(load_path);
  args.insert(args.end(), {"--previous", prev});
  const Result r = Run(args);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, AllOf(StartsWith("eplbctl plan: " + prev + ": "), HasSubstr("\n")));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST_F(EplbctlPlanTest, UsageAndUnknownCommand) {
  const Result help = Run({"plan", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("--num-physical-experts P"));
  const Result unknown = Run({"frobnicate"});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_THAT(unknown.err, StartsWith("eplbctl: unknown command \"frobnicate\"\n"));
  const Result none = Run({});
  EXPECT_EQ(none.exit_code, 2);
  const Result missing = Run({"plan", "--load", Write("l.json", "{\"load\": [[1]]}")});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_EQ(missing.err,
            "eplbctl plan: --num-physical-experts is required (see eplbctl plan --help)\n");
  const Result no_load = Run({"plan", "--num-physical-experts", "4", "--num-ranks", "2"});
  EXPECT_EQ(no_load.exit_code, 2);
  EXPECT_EQ(no_load.err,
            "eplbctl plan: --load is required by --policy balanced (see eplbctl plan --help)\n");
}

TEST_F(EplbctlPlanTest, PlansTheShippedDeepSeekV3Example) {
  const Result r = Run({"plan", "--load", std::string(EPLB_EXAMPLES_DIR) + "/load-deepseek-v3.json",
                        "--num-physical-experts", "288", "--num-ranks", "32", "--num-groups", "8",
                        "--num-nodes", "4", "--output", Path("v3.json")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto parsed = ParseExpertMapJson(Slurp(Path("v3.json")));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->map.num_layers(), 58);
  EXPECT_EQ(parsed->map.num_physical_experts(), 288);
}

}  // namespace
}  // namespace eplb
