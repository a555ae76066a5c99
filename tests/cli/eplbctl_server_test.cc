// Tests of eplbctl's planner verbs that need no planner: flag errors (exit 2, one exact line),
// connection and local file errors (exit 1, one line), help texts. The real binary, run with
// fork/exec. The verbs' work against a real planner is tested in tests/e2e.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/support/subprocess.h"

namespace eplb {
namespace {

namespace fs = std::filesystem;
using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// Nothing listens there: connections are refused at once.
constexpr char kNoServer[] = "127.0.0.1:1";

class EplbctlServerTest : public testing::ScratchDirTest {
 protected:
  EplbctlServerTest() : ScratchDirTest("eplbctl_server_test") {}

  // Runs eplbctl with an environment free of EPLB_SERVER and EPLB_TOKEN, plus `env`.
  testing::ProcessResult Run(std::vector<std::string> args,
                             std::vector<std::string> env = {}) const {
    args.insert(args.begin(), EPLBCTL_PATH);
    env.insert(env.begin(), {"EPLB_SERVER=", "EPLB_TOKEN="});
    return testing::RunProcess(std::move(args), dir_ / "eplbctl", env);
  }
};

struct UsageCase {
  const char* name;
  std::vector<std::string> args;
  const char* message;  // stderr after "eplbctl VERB: ", before " (see eplbctl VERB --help)\n"
};

void PrintTo(const UsageCase& c, std::ostream* os) { *os << c.name; }

class EplbctlUsageTest : public EplbctlServerTest,
                         public ::testing::WithParamInterface<UsageCase> {};

// A usage error is found before anything is contacted: exit code 2 and one exact line, also when
// no planner is reachable.
TEST_P(EplbctlUsageTest, ExitsTwoWithOneLine) {
  const UsageCase& c = GetParam();
  std::vector<std::string> args = c.args;
  args.insert(args.begin() + 1, {"--server", kNoServer});
  const testing::ProcessResult r = Run(args);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  const std::string& verb = c.args.front();
  EXPECT_EQ(r.err, "eplbctl " + verb + ": " + c.message + " (see eplbctl " + verb + " --help)\n");
  EXPECT_EQ(r.out, "");
}

const std::vector<std::string> kCreate = {"create-deployment",
                                          "--name",
                                          "d1",
                                          "--num-layers",
                                          "4",
                                          "--num-logical-experts",
                                          "16",
                                          "--num-physical-experts",
                                          "20",
                                          "--num-ranks",
                                          "4"};

std::vector<std::string> Create(std::vector<std::string> extra) {
  std::vector<std::string> args = kCreate;
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, EplbctlUsageTest,
    ::testing::Values(
        UsageCase{
            "create_needs_name", {"create-deployment", "--num-layers", "4"}, "--name is required"},
        UsageCase{"create_needs_ranks",
                  {"create-deployment", "--name", "d", "--num-layers", "4", "--num-logical-experts",
                   "16", "--num-physical-experts", "16"},
                  "--num-ranks is required"},
        UsageCase{"create_groups_not_integer", Create({"--num-groups", "two"}),
                  "--num-groups = \"two\" is not an integer"},
        UsageCase{"create_layers_zero",
                  {"create-deployment", "--name", "d", "--num-layers", "0"},
                  "--num-layers = 0 is out of range [1, 2147483647]"},
        UsageCase{"create_bad_commit", Create({"--commit", "eventually"}),
                  "--commit = \"eventually\" is not one of immediate, acked"},
        UsageCase{"create_two_smoothings",
                  Create({"--ema-half-life-steps", "10", "--window-steps", "10"}),
                  "--ema-half-life-steps and --window-steps exclude each other"},
        UsageCase{"create_window_zero", Create({"--window-steps", "0"}),
                  "--window-steps = 0 is out of range [1, 9223372036854775807]"},
        UsageCase{"create_min_gain_not_number", Create({"--min-gain", "lots"}),
                  "--min-gain = \"lots\" is not a number"},
        UsageCase{"create_tolerance_out_of_range", Create({"--tolerance", "1.5"}),
                  "--tolerance = 1.5 is out of range [0, 1]"},
        UsageCase{"create_affinity_with_deepseek",
                  Create({"--policy", "deepseek", "--node-affinity"}),
                  "--node-affinity applies to --policy balanced, not deepseek"},
        UsageCase{"create_negative_layer_budget", Create({"--max-received-per-layer", "-1"}),
                  "--max-received-per-layer = -1 is out of range [0, 1048576]"},
        UsageCase{"create_negative_bytes", Create({"--bytes-per-expert", "-1"}),
                  "--bytes-per-expert = -1 is out of range [0, 9223372036854775807]"},
        UsageCase{"create_name_twice", Create({"--name", "x"}), "--name is given twice"},
        UsageCase{"create_empty_name", {"create-deployment", "--name="}, "--name is empty"},
        UsageCase{"list_takes_no_name", {"list", "--name", "d"}, "unknown flag --name"},
        UsageCase{"list_positional", {"list", "everything"}, "unexpected argument \"everything\""},
        UsageCase{"delete_needs_name", {"delete-deployment"}, "--name is required"},
        UsageCase{"delete_empty_name", {"delete-deployment", "--name="}, "--name is empty"},
        UsageCase{"report_needs_rank",
                  {"report", "--deployment", "d", "--load", "l.json"},
                  "--rank is required"},
        UsageCase{"report_needs_load",
                  {"report", "--deployment", "d", "--rank", "0"},
                  "--load is required"},
        UsageCase{"report_negative_rank",
                  {"report", "--deployment", "d", "--rank", "-1", "--load", "l.json"},
                  "--rank = -1 is out of range [0, 2147483647]"},
        UsageCase{
            "report_zero_steps",
            {"report", "--deployment", "d", "--rank", "0", "--load", "l.json", "--steps", "0"},
            "--steps = 0 is out of range [1, 1000000]"},
        UsageCase{
            "report_zero_sequence",
            {"report", "--deployment", "d", "--rank", "0", "--load", "l.json", "--sequence", "0"},
            "--sequence = 0 is out of range [1, 4611686018427387904]"},
        // The planner's bound (proto/api_limits.h), checked before anything is sent.
        UsageCase{"report_first_step_beyond_the_api",
                  {"report", "--deployment", "d", "--rank", "0", "--load", "l.json", "--first-step",
                   "4611686018427387904"},
                  "--first-step = 4611686018427387904 is out of range [0, 4611686018427387903]"},
        UsageCase{"rebalance_needs_deployment", {"rebalance"}, "--deployment is required"},
        UsageCase{"rebalance_dry_run_is_a_switch",
                  {"rebalance", "--deployment", "d", "--dry-run=yes"},
                  "--dry-run takes no value"},
        UsageCase{"get_plan_format_without_output",
                  {"get-plan", "--deployment", "d", "--format", "sglang"},
                  "--format applies to --output, which is not given"},
        UsageCase{"get_plan_unknown_format",
                  {"get-plan", "--deployment", "d", "--output", "m.json", "--format", "yaml"},
                  "unknown map format \"yaml\": expected eplb, vllm-ascend, sglang or trtllm"},
        UsageCase{"get_plan_sglang_needs_layer_ids",
                  {"get-plan", "--deployment", "d", "--output", "m.json", "--format", "sglang"},
                  "--format sglang writes a row per hidden layer: give --first-moe-layer K "
                  "--num-hidden-layers H (DeepSeek-V3: 3 and 61) or --layer-ids (a model whose "
                  "layers are all MoE layers: --first-moe-layer 0 --num-hidden-layers L)"},
        UsageCase{"get_plan_layer_ids_without_output",
                  {"get-plan", "--deployment", "d", "--layer-ids", "3-60"},
                  "the layer ids apply to --output, which is not given"},
        UsageCase{"get_plan_version_zero",
                  {"get-plan", "--deployment", "d", "--version", "0"},
                  "--version = 0 is out of range [1, 9223372036854775807]"},
        UsageCase{"list_plans_needs_deployment", {"list-plans"}, "--deployment is required"},
        UsageCase{"get_load_output_needs_value",
                  {"get-load", "--deployment", "d", "--output"},
                  "--output needs a value (FILE)"},
        UsageCase{"status_needs_deployment", {"status"}, "--deployment is required"},
        UsageCase{"status_takes_no_rank",
                  {"status", "--deployment", "d", "--rank", "0"},
                  "unknown flag --rank"},
        UsageCase{
            "watch_ack_needs_rank", {"watch", "--deployment", "d", "--ack"}, "--ack needs --rank"},
        UsageCase{"watch_rank_below_observer",
                  {"watch", "--deployment", "d", "--rank", "-2"},
                  "--rank = -2 is out of range [-1, 2147483647]"},
        UsageCase{"watch_count_zero",
                  {"watch", "--deployment", "d", "--count", "0"},
                  "--count = 0 is out of range [1, 9223372036854775807]"},
        UsageCase{"cert_without_key",
                  {"list", "--tls-ca", "ca.pem", "--tls-cert", "c.pem"},
                  "--tls-cert and --tls-key go together"},
        UsageCase{"cert_without_ca",
                  {"list", "--tls-cert", "c.pem", "--tls-key", "k.pem"},
                  "--tls-cert needs --tls-ca"},
        UsageCase{"server_name_without_ca",
                  {"list", "--tls-server-name", "planner"},
                  "--tls-server-name needs --tls-ca"},
        UsageCase{"timeout_zero",
                  {"list", "--timeout-ms", "0"},
                  "--timeout-ms = 0 is out of range [1, 86400000]"}),
    [](const auto& info) { return std::string(info.param.name); });

// `eplbctl` runs `plan` itself and the other commands through eplbctl-rpc beside it: a copy of
// eplbctl alone still plans, and names the missing program for the rest.
TEST_F(EplbctlServerTest, TheServiceVerbsNeedEplbctlRpcBesideEplbctl) {
  const std::filesystem::path alone = dir_ / "alone";
  std::filesystem::create_directories(alone);
  std::filesystem::copy_file(EPLBCTL_PATH, alone / "eplbctl");
  const testing::ProcessResult list =
      testing::RunProcess({(alone / "eplbctl").string(), "list"}, dir_ / "list");
  EXPECT_EQ(list.exit_code, 2);
  EXPECT_EQ(list.err, "eplbctl: list is run by " + (alone / "eplbctl-rpc").string() +
                          ", which cannot be started: No such file or directory (install "
                          "eplbctl-rpc beside eplbctl)\n");
  const testing::ProcessResult plan = testing::RunProcess(
      {(alone / "eplbctl").string(), "plan", "--policy", "contiguous", "--num-layers", "1",
       "--num-logical-experts", "2", "--num-physical-experts", "2", "--num-ranks", "1"},
      dir_ / "plan");
  EXPECT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_THAT(plan.out, HasSubstr("\"phy2log\""));
  // Beside it, the same verb reaches eplbctl-rpc (here: refused for want of a planner).
  EXPECT_EQ(Run({"list", "--server", kNoServer}).exit_code, 1);
}

// The process `eplbctl plan` runs in needs no gRPC (README: a plan costs little more than its own
// time); eplbctl-rpc does.
TEST_F(EplbctlServerTest, EplbctlLinksNoGrpc) {
  const std::filesystem::path rpc =
      std::filesystem::path(EPLBCTL_PATH).parent_path() / "eplbctl-rpc";
  const testing::ProcessResult plan_side =
      testing::RunProcess({"/usr/bin/readelf", "-d", EPLBCTL_PATH}, dir_ / "readelf-eplbctl");
  ASSERT_EQ(plan_side.exit_code, 0) << plan_side.err;
  EXPECT_THAT(plan_side.out, HasSubstr("(NEEDED)"));
  EXPECT_THAT(plan_side.out, Not(HasSubstr("libgrpc")));
  EXPECT_THAT(plan_side.out, Not(HasSubstr("libprotobuf")));
  const testing::ProcessResult rpc_side =
      testing::RunProcess({"/usr/bin/readelf", "-d", rpc.string()}, dir_ / "readelf-rpc");
  ASSERT_EQ(rpc_side.exit_code, 0) << rpc_side.err;
  EXPECT_THAT(rpc_side.out, HasSubstr("libgrpc"));
}

TEST_F(EplbctlServerTest, EmptyServerIsAUsageError) {
  const testing::ProcessResult r = Run({"list", "--server="});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "eplbctl list: --server is empty (see eplbctl list --help)\n");
}

TEST_F(EplbctlServerTest, UnreachablePlannerIsUnavailable) {
  const testing::ProcessResult r = Run({"list", "--server", kNoServer});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, StartsWith("eplbctl: UNAVAILABLE: "));
  EXPECT_THAT(r.err, EndsWith(" (server 127.0.0.1:1)\n"));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST_F(EplbctlServerTest, ServerComesFromTheEnvironment) {
  const testing::ProcessResult r =
      Run({"list-plans", "--deployment", "d"}, {"EPLB_SERVER=127.0.0.1:1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, StartsWith("eplbctl: UNAVAILABLE: "));
  EXPECT_THAT(r.err, EndsWith(" (server 127.0.0.1:1)\n"));
  // The flag wins over the environment.
  const testing::ProcessResult flag =
      Run({"list", "--server", "127.0.0.1:2"}, {"EPLB_SERVER=127.0.0.1:1"});
  EXPECT_THAT(flag.err, EndsWith(" (server 127.0.0.1:2)\n"));
}

TEST_F(EplbctlServerTest, EveryVerbReportsAnUnreachablePlanner) {
  const std::vector<std::vector<std::string>> commands = {
      kCreate,
      {"list"},
      {"delete-deployment", "--name", "d"},
      {"rebalance", "--deployment", "d"},
      {"get-plan", "--deployment", "d"},
      {"list-plans", "--deployment", "d"},
      {"get-load", "--deployment", "d"},
      {"status", "--deployment", "d"},
      {"watch", "--deployment", "d", "--count", "1"},
  };
  for (std::vector<std::string> args : commands) {
    args.insert(args.end(), {"--server", kNoServer});
    const testing::ProcessResult r = Run(args);
    EXPECT_EQ(r.exit_code, 1) << args.front() << ": " << r.err;
    EXPECT_THAT(r.err, StartsWith("eplbctl: UNAVAILABLE: ")) << args.front();
  }
}

TEST_F(EplbctlServerTest, MissingTlsFilesAreNamed) {
  const std::string missing = Path("missing-ca.pem");
  const testing::ProcessResult r = Run({"list", "--server", kNoServer, "--tls-ca", missing});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "eplbctl: NOT_FOUND: cannot open " + missing + ": No such file or directory\n");

  const std::string ca =
      Write("ca.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
  const std::string key = Path("missing-key.pem");
  const testing::ProcessResult no_key =
      Run({"list", "--server", kNoServer, "--tls-ca", ca, "--tls-cert", ca, "--tls-key", key});
  EXPECT_EQ(no_key.exit_code, 1);
  EXPECT_EQ(no_key.err, "eplbctl: NOT_FOUND: cannot open " + key + ": No such file or directory\n");
}

TEST_F(EplbctlServerTest, FilesThatAreNotPemAreNamed) {
  const std::string ca = Write("ca.pem", "not a certificate\n");
  const testing::ProcessResult r = Run({"list", "--server", kNoServer, "--tls-ca", ca});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "eplbctl: INVALID_ARGUMENT: " + ca + " holds no PEM certificate\n");

  const std::string good_ca =
      Write("good-ca.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
  const testing::ProcessResult key = Run({"list", "--server", kNoServer, "--tls-ca", good_ca,
                                          "--tls-cert", good_ca, "--tls-key", good_ca});
  EXPECT_EQ(key.exit_code, 1);
  EXPECT_EQ(key.err, "eplbctl: INVALID_ARGUMENT: " + good_ca + " holds no PEM private key\n");
}

TEST_F(EplbctlServerTest, LocalFilesAreReadBeforeAnythingIsSent) {
  // The load file is read first: its error, not the unreachable planner, is reported.
  const std::string missing = Path("missing-load.json");
  const testing::ProcessResult r =
      Run({"report", "--server", kNoServer, "--deployment", "d", "--rank", "0", "--load", missing});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "eplbctl: NOT_FOUND: cannot open " + missing + ": No such file or directory\n");

  const std::string bad = Write("bad-load.json", R"({"load": [[1, -2]]})");
  const testing::ProcessResult negative =
      Run({"report", "--server", kNoServer, "--deployment", "d", "--rank", "0", "--load", bad});
  EXPECT_EQ(negative.exit_code, 1);
  EXPECT_EQ(negative.err, "eplbctl: INVALID_ARGUMENT: " + bad + ": load[0][1] = -2 is negative\n");

  const std::string no_map = Path("missing-map.json");
  std::vector<std::string> args = Create({"--initial-map", no_map, "--server", kNoServer});
  const testing::ProcessResult map = Run(args);
  EXPECT_EQ(map.exit_code, 1);
  EXPECT_EQ(map.err, "eplbctl: NOT_FOUND: cannot open " + no_map + ": No such file or directory\n");
}

TEST_F(EplbctlServerTest, FailedGetPlanLeavesTheOutputAlone) {
  const std::string output = Write("map.json", "precious\n");
  const testing::ProcessResult r =
      Run({"get-plan", "--server", kNoServer, "--deployment", "d", "--output", output});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(testing::Slurp(output), "precious\n");
  int files = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(dir_)) ++files;
  EXPECT_EQ(files, 1);
}

TEST_F(EplbctlServerTest, HelpTexts) {
  const testing::ProcessResult top = Run({"help"});
  EXPECT_EQ(top.exit_code, 0);
  for (const char* verb : {"plan", "create-deployment", "list", "delete-deployment", "report",
                           "rebalance", "get-plan", "list-plans", "get-load", "status", "watch"}) {
    EXPECT_THAT(top.out, HasSubstr(std::string("\n  ") + verb + " ")) << verb;
    const testing::ProcessResult help = Run({verb, "--help"});
    EXPECT_EQ(help.exit_code, 0) << verb;
    EXPECT_THAT(help.out, StartsWith(std::string("usage: eplbctl ") + verb)) << verb;
    if (std::string(verb) != "plan") {
      EXPECT_THAT(help.out, HasSubstr("--server HOST:PORT")) << verb;
      EXPECT_THAT(help.out, HasSubstr("--tls-ca FILE")) << verb;
    }
  }
  const testing::ProcessResult create = Run({"create-deployment", "--help"});
  EXPECT_THAT(create.out, HasSubstr("--ema-half-life-steps H"));
  EXPECT_THAT(create.out, HasSubstr("--initial-map FILE"));
}

}  // namespace
}  // namespace eplb
