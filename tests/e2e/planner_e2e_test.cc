// End-to-end: the real eplb-planner binary and the real eplbctl, talking over gRPC on 127.0.0.1.
// Covers the life of a deployment (create, report, rebalance, plans, load, watch, delete), acked
// commits with ranks acknowledging through `eplbctl watch --ack`, and the invariants that survive a
// crash: after kill -9 and a restart on the same state directory the plans, their maps and the
// version counter are as before (a new plan never reuses a version).
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "client/load_reporter.h"
#include "client/planner_client.h"
#include "client/report_parts.h"
#include "core/map_format.h"
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "eplb/v1/planner.pb.h"
#include "tests/support/raw_calls.h"
#include "tests/support/subprocess.h"

namespace eplb {
namespace {

namespace fs = std::filesystem;
using testing::ChildProcess;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using testing::ProcessResult;
using ::testing::StartsWith;

constexpr auto kStartTimeout = std::chrono::seconds(30);
constexpr auto kWaitTimeout = std::chrono::seconds(20);

// Polls `done` every 50 ms until it holds or `timeout` passes; returns whether it held.
bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return true;
}

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

// A load file for the test shape: skewed, different per rank, so that rebalancing pays.
std::string LoadJson(int layers, int experts, int rank) {
  std::string json = "{\"load\": [";
  for (int l = 0; l < layers; ++l) {
    absl::StrAppend(&json, l == 0 ? "[" : ", [");
    for (int e = 0; e < experts; ++e) {
      const int hot = (e * 7 + l * 3 + rank) % experts + 1;
      absl::StrAppend(&json, e == 0 ? "" : ", ", hot * hot * (rank + 1));
    }
    absl::StrAppend(&json, "]");
  }
  absl::StrAppend(&json, "]}");
  return json;
}

// The fields of a plan summary line that the tests check.
struct PlanSummary {
  int64_t version = -1;
  std::string state;
  std::string hash;
  double balancedness_before = -1, balancedness_after = -1;
};

PlanSummary ParsePlanLine(const std::string& line) {
  static const std::regex kPattern(
      "version ([0-9]+)  parent [0-9]+  ([A-Z_]+)  [A-Z_]+  policy [a-z-]+  hash ([0-9a-f]{16})  "
      "balancedness ([0-9.]+|-) -> ([0-9.]+|-)  slots changed [0-9]+  experts moved [0-9]+  bytes "
      "[0-9]+.*");
  std::smatch m;
  PlanSummary s;
  if (!std::regex_match(line, m, kPattern)) {
    ADD_FAILURE() << "not a plan line: " << line;
    return s;
  }
  s.version = std::stoll(m[1]);
  s.state = m[2];
  s.hash = m[3];
  if (m[4] != "-") s.balancedness_before = std::stod(m[4]);  // "-": the initial plan
  if (m[5] != "-") s.balancedness_after = std::stod(m[5]);
  return s;
}

class PlannerE2eTest : public testing::ScratchDirTest {
 protected:
  PlannerE2eTest() : ScratchDirTest("eplb_e2e") {}

  void SetUp() override {
    ScratchDirTest::SetUp();
    fs::create_directories(dir_ / "state");
  }
  void TearDown() override {
    planner_.reset();
    if (HasFailure()) {
      std::cerr << "planner log:\n" << testing::Slurp(dir_ / "planner.log");
    }
    ScratchDirTest::TearDown();
  }

  // Starts the planner on the state directory and waits until it serves (it writes its port).
  void StartPlanner(const std::string& extra_flags = "") {
    const fs::path port_file = dir_ / "port";
    fs::remove(port_file);
    // The flags as an operator writes them: dashes, in a flag file.
    const std::string flagfile =
        Write("planner.flags",
              absl::StrCat("# e2e planner\n--listen=127.0.0.1:0\n--state-dir=", Path("state"),
                           "\n--metrics-port=0\n--port-file=", port_file.string(),
                           "\n--log-level=debug\n", extra_flags));
    planner_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{EPLB_PLANNER_PATH, "--flagfile=" + flagfile},
        dir_ / "planner.stdout", dir_ / "planner.log");
    int port = 0;
    const bool serving = WaitFor(
        [&] {
          if (!planner_->Running()) return true;
          const std::string text(absl::StripAsciiWhitespace(testing::Slurp(port_file)));
          return absl::SimpleAtoi(text, &port) && port > 0;
        },
        kStartTimeout);
    ASSERT_TRUE(serving) << "the planner wrote no port file in time";
    ASSERT_TRUE(planner_->Running())
        << "the planner exited: " << testing::Slurp(dir_ / "planner.log");
    server_ = absl::StrCat("127.0.0.1:", port);
  }

  // kill -9: no graceful shutdown, no final checkpoint.
  void CrashPlanner() { EXPECT_EQ(planner_->Kill(SIGKILL), 128 + SIGKILL); }

  // Runs eplbctl against the planner (through EPLB_SERVER, as an operator would).
  ProcessResult Ctl(std::vector<std::string> args) const {
    args.insert(args.begin(), EPLBCTL_PATH);
    return testing::RunProcess(std::move(args), dir_ / "eplbctl",
                               {"EPLB_SERVER=" + server_, "EPLB_TOKEN="});
  }

  // Runs eplbctl and expects success; returns its standard output.
  std::string CtlOk(std::vector<std::string> args) const {
    const ProcessResult r = Ctl(args);
    EXPECT_EQ(r.exit_code, 0) << absl::StrJoin(args, " ") << ": " << r.err;
    EXPECT_EQ(r.err, "") << absl::StrJoin(args, " ");
    return r.out;
  }

  // eplbctl watch as a long-running child.
  std::unique_ptr<ChildProcess> StartCtl(std::vector<std::string> args, const std::string& name) {
    args.insert(args.begin(), EPLBCTL_PATH);
    return std::make_unique<ChildProcess>(std::move(args), dir_ / (name + ".out"),
                                          dir_ / (name + ".err"),
                                          std::vector<std::string>{"EPLB_SERVER=" + server_});
  }

  std::unique_ptr<ChildProcess> planner_;
  std::string server_;
};

constexpr int kLayers = 4, kExperts = 16, kSlots = 20, kRanks = 4;

std::vector<std::string> CreateArgs(const std::string& name, const std::string& commit) {
  return {"create-deployment",
          "--name",
          name,
          "--num-layers",
          std::to_string(kLayers),
          "--num-logical-experts",
          std::to_string(kExperts),
          "--num-physical-experts",
          std::to_string(kSlots),
          "--num-ranks",
          std::to_string(kRanks),
          "--commit",
          commit,
          "--bytes-per-expert",
          "1000",
          "--policy",
          "deepseek"};
}

// `args` with `flag`'s value replaced.
std::vector<std::string> WithFlag(std::vector<std::string> args, const std::string& flag,
                                  const std::string& value) {
  const auto it = std::find(args.begin(), args.end(), flag);
  EXPECT_TRUE(it != args.end() && it + 1 != args.end()) << flag;
  if (it != args.end() && it + 1 != args.end()) *(it + 1) = value;
  return args;
}

// The balanced policy's options from eplbctl flags, shown on the deployment's line.
TEST_F(PlannerE2eTest, BalancedOptionsFromTheCommandLine) {
  ASSERT_NO_FATAL_FAILURE(StartPlanner());
  const std::string created = CtlOk(
      {"create-deployment", "--name", "bal", "--num-layers", "2", "--num-logical-experts", "16",
       "--num-physical-experts", "20", "--num-ranks", "4", "--tolerance", "0.01",
       "--max-received-per-layer", "2", "--layer-min-gain", "0.05", "--gain-per-move", "0.002"});
  EXPECT_THAT(created, StartsWith("bal  L=2 E=16 G=1 N=1 R=4 P=20  policy balanced (tolerance "
                                  "0.01, at most 2 received per layer, layer min gain 0.05, gain "
                                  "per move 0.002)  commit acked  "));
  // The planner's checks apply: a budget above the slots is refused and nothing is created.
  const ProcessResult refused =
      Ctl({"create-deployment", "--name", "big", "--num-layers", "2", "--num-logical-experts", "16",
           "--num-physical-experts", "20", "--num-ranks", "4", "--max-received-per-rank", "21"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_THAT(refused.err,
              HasSubstr("spec.balanced.max_received_per_rank = 21 is out of range [0, 20]"));
  EXPECT_EQ(Lines(CtlOk({"list"})).size(), 1u);
}

TEST_F(PlannerE2eTest, DeploymentLifeAcrossACrash) {
  ASSERT_NO_FATAL_FAILURE(StartPlanner());
  EXPECT_EQ(CtlOk({"list"}), "");

  // Create; an identical re-create is idempotent; a conflicting one is refused.
  const std::string created = CtlOk(CreateArgs("e2e", "immediate"));
  EXPECT_THAT(created, StartsWith("e2e  L=4 E=16 G=1 N=1 R=4 P=20  policy deepseek  commit "
                                  "immediate  "));
  EXPECT_THAT(created, HasSubstr("  committed 1  latest 1  steps 0\n"));
  EXPECT_EQ(CtlOk(CreateArgs("e2e", "immediate")), created);
  const ProcessResult conflict =
      Ctl(WithFlag(CreateArgs("e2e", "immediate"), "--num-physical-experts", "24"));
  EXPECT_EQ(conflict.exit_code, 1);
  EXPECT_THAT(conflict.err, StartsWith("eplbctl: ALREADY_EXISTS: "));
  EXPECT_THAT(conflict.err, HasSubstr("[DEPLOYMENT_CONFLICT"));
  EXPECT_EQ(std::count(conflict.err.begin(), conflict.err.end(), '\n'), 1) << conflict.err;
  EXPECT_EQ(Lines(CtlOk({"list"})).size(), 1u);

  // Version 1 is the contiguous map.
  const PlanSummary v1 = ParsePlanLine(Lines(CtlOk({"get-plan", "--deployment", "e2e"}))[0]);
  EXPECT_EQ(v1.version, 1);
  EXPECT_EQ(v1.state, "COMMITTED");

  // Every rank reports 10 steps; a retried report is recognised as a duplicate.
  for (int rank = 0; rank < kRanks; ++rank) {
    const std::string load =
        Write("load" + std::to_string(rank) + ".json", LoadJson(kLayers, kExperts, rank));
    const std::string out =
        CtlOk({"report", "--deployment", "e2e", "--rank", std::to_string(rank), "--load", load,
               "--steps", "10", "--session", "77", "--repeat", rank == 0 ? "2" : "1"});
    EXPECT_EQ(out, absl::StrCat("rank ", rank, ": accepted 1, duplicates ", rank == 0 ? 1 : 0,
                                ", last sequence 1 (steps 0-9, plan version 1)\n"));
  }
  const ProcessResult bad_rank = Ctl({"report", "--deployment", "e2e", "--rank", "4", "--load",
                                      Path("load0.json"), "--sequence", "2"});
  EXPECT_EQ(bad_rank.exit_code, 1);
  EXPECT_THAT(bad_rank.err, StartsWith("eplbctl: INVALID_ARGUMENT: "));
  EXPECT_THAT(bad_rank.err, HasSubstr("[UNKNOWN_RANK"));

  // The smoothed load has the deployment's shape.
  EXPECT_THAT(CtlOk({"get-load", "--deployment", "e2e", "--output", Path("smoothed.json")}),
              StartsWith("e2e: 4 layers x 16 experts, "));
  const auto smoothed = ParseLoadJson(testing::Slurp(Path("smoothed.json")));
  ASSERT_TRUE(smoothed.ok()) << smoothed.status();
  EXPECT_EQ(smoothed->num_layers, kLayers);
  EXPECT_EQ(smoothed->num_experts, kExperts);

  // A dry run publishes nothing; a rebalance publishes version 2, better balanced.
  EXPECT_THAT(CtlOk({"rebalance", "--deployment", "e2e", "--dry-run"}),
              StartsWith("candidate  parent 1  UNPUBLISHED  ON_DEMAND  "));
  EXPECT_EQ(Lines(CtlOk({"list-plans", "--deployment", "e2e"})).size(), 1u);
  const PlanSummary v2 = ParsePlanLine(Lines(CtlOk({"rebalance", "--deployment", "e2e"}))[0]);
  EXPECT_EQ(v2.version, 2);
  EXPECT_EQ(v2.state, "COMMITTED");
  EXPECT_GT(v2.balancedness_after, v2.balancedness_before);

  // The map as written is the plan's (its hash is the one the planner states).
  const std::string get_plan = CtlOk(
      {"get-plan", "--deployment", "e2e", "--output", Path("map-before.json"), "--version", "2"});
  EXPECT_THAT(get_plan, HasSubstr("wrote " + Path("map-before.json") + " (eplb, version 2)\n"));
  EXPECT_EQ(ParsePlanLine(Lines(get_plan)[0]).hash, v2.hash);
  const auto map = ParseExpertMapJson(testing::Slurp(Path("map-before.json")));
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->version, 2);
  EXPECT_EQ(absl::StrFormat("%016x", map->map.Hash()), v2.hash);

  // SGLang's file of the same plan: a row per hidden layer, here one dense layer first.
  const int32_t moe_layers = map->map.num_layers();
  const std::string hidden = std::to_string(moe_layers + 1);
  CtlOk({"get-plan", "--deployment", "e2e", "--version", "2", "--output", Path("map.sglang.json"),
         "--format", "sglang", "--first-moe-layer", "1", "--num-hidden-layers", hidden});
  const auto sglang = ParseExpertMapJson(
      testing::Slurp(Path("map.sglang.json")),
      {.num_ranks = map->map.num_ranks(), .layer_ids = *LayerIds::FromRange(1, moe_layers + 1)});
  ASSERT_TRUE(sglang.ok()) << sglang.status();
  EXPECT_EQ(sglang->map.phy2log_table(), map->map.phy2log_table());
  const ProcessResult misnumbered =
      Ctl({"get-plan", "--deployment", "e2e", "--output", Path("wrong.json"), "--format", "sglang",
           "--first-moe-layer", "0", "--num-hidden-layers", hidden});
  EXPECT_EQ(misnumbered.exit_code, 1);
  EXPECT_THAT(misnumbered.err,
              HasSubstr(absl::StrCat("the plan's map has ", moe_layers,
                                     " MoE layers, but the layer ids name ", moe_layers + 1)));
  EXPECT_FALSE(std::filesystem::exists(Path("wrong.json")));

  // The SGLang file as another deployment's initial map: eplbctl reads it with the numbering and
  // sends the planner the map; version 1 is the same plan.
  std::vector<std::string> create = CreateArgs("from-sglang", "immediate");
  create.insert(create.end(), {"--initial-map", Path("map.sglang.json"), "--layer-ids",
                               absl::StrCat("1-", moe_layers)});
  CtlOk(create);
  EXPECT_THAT(CtlOk({"get-plan", "--deployment", "from-sglang"}),
              AllOf(HasSubstr("INITIAL  policy initial_map"), HasSubstr("hash " + v2.hash)));
  CtlOk({"delete-deployment", "--name", "from-sglang"});

  const std::string plans_before = CtlOk({"list-plans", "--deployment", "e2e"});
  ASSERT_EQ(Lines(plans_before).size(), 2u) << plans_before;
  EXPECT_EQ(ParsePlanLine(Lines(plans_before)[0]).version, 2);
  EXPECT_EQ(ParsePlanLine(Lines(plans_before)[1]).version, 1);
  const std::string plan_before = CtlOk({"get-plan", "--deployment", "e2e"});
  EXPECT_THAT(CtlOk({"status", "--deployment", "e2e"}),
              StartsWith("e2e: committed version 2, latest version 2, "));
  // A watcher gets the committed plan on subscribe.
  EXPECT_THAT(CtlOk({"watch", "--deployment", "e2e", "--count", "1"}),
              ContainsRegex("^version 2  COMMITTED  ON_DEMAND  balancedness [0-9.]+ -> [0-9.]+  "
                            "hash " +
                            v2.hash + "\n$"));

  // kill -9 and restart on the same state directory: plans and maps are as before.
  CrashPlanner();
  ASSERT_NO_FATAL_FAILURE(StartPlanner());
  EXPECT_EQ(CtlOk({"list-plans", "--deployment", "e2e"}), plans_before);
  EXPECT_EQ(CtlOk({"get-plan", "--deployment", "e2e"}), plan_before);
  CtlOk({"get-plan", "--deployment", "e2e", "--output", Path("map-after.json")});
  EXPECT_EQ(testing::Slurp(Path("map-after.json")), testing::Slurp(Path("map-before.json")));
  EXPECT_THAT(CtlOk({"list"}), HasSubstr("  committed 2  latest 2  "));
  // Re-creating it is still idempotent: the restored spec is the same.
  EXPECT_THAT(CtlOk(CreateArgs("e2e", "immediate")), HasSubstr("  committed 2  latest 2  "));

  // The next plan gets the next version, never a used one.
  for (int rank = 0; rank < kRanks; ++rank) {
    CtlOk({"report", "--deployment", "e2e", "--rank", std::to_string(rank), "--load",
           Path("load" + std::to_string((rank + 1) % kRanks) + ".json"), "--first-step", "10",
           "--steps", "10"});
  }
  const PlanSummary v3 = ParsePlanLine(Lines(CtlOk({"rebalance", "--deployment", "e2e"}))[0]);
  EXPECT_EQ(v3.version, 3);
  EXPECT_EQ(Lines(CtlOk({"list-plans", "--deployment", "e2e"})).size(), 3u);

  // And once more across a crash right after publishing.
  CrashPlanner();
  ASSERT_NO_FATAL_FAILURE(StartPlanner());
  EXPECT_EQ(ParsePlanLine(Lines(CtlOk({"get-plan", "--deployment", "e2e"}))[0]).hash, v3.hash);
  const PlanSummary v4 = ParsePlanLine(Lines(CtlOk({"rebalance", "--deployment", "e2e"}))[0]);
  EXPECT_EQ(v4.version, 4);

  // Delete: gone, also for plan queries.
  EXPECT_EQ(CtlOk({"delete-deployment", "--name", "e2e"}), "deleted e2e\n");
  EXPECT_EQ(CtlOk({"list"}), "");
  const ProcessResult gone = Ctl({"get-plan", "--deployment", "e2e"});
  EXPECT_EQ(gone.exit_code, 1);
  EXPECT_THAT(gone.err, StartsWith("eplbctl: NOT_FOUND: "));
  EXPECT_THAT(gone.err, HasSubstr("[DEPLOYMENT_NOT_FOUND"));
}

// kill -9 at arbitrary points while plans are published and load streams in, 30 times: every
// plan the planner answered as committed is there after the restart, with its hash; versions are
// never reused; the load is never more than was accepted; the state always loads.
TEST_F(PlannerE2eTest, KillNineUnderLoadLosesNoCommittedPlan) {
  ASSERT_NO_FATAL_FAILURE(StartPlanner("--checkpoint-interval=1s\n"));
  v1::DeploymentSpec spec;
  spec.set_name("crash");
  v1::Shape& shape = *spec.mutable_shape();
  shape.set_num_layers(8);
  shape.set_num_logical_experts(64);
  shape.set_num_physical_experts(80);
  shape.set_num_ranks(8);
  spec.set_policy("balanced");
  spec.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
  spec.set_plan_history(1000);
  spec.mutable_trigger()->set_interval_steps(0);
  {
    auto client = client::PlannerClient::Create({.server = server_});
    ASSERT_TRUE(client.ok());
    ASSERT_TRUE((*client)->CreateDeployment(spec).ok());
  }
  std::map<int64_t, uint64_t> committed;  // version -> map hash, as answered before a kill
  int64_t accepted_steps = 0;
  std::mt19937 random(12345);
  for (int round = 0; round < 30; ++round) {
    auto client =
        client::PlannerClient::Create({.server = server_, .rpc_timeout = absl::Seconds(5)});
    ASSERT_TRUE(client.ok());
    // The state as the last crash left it.
    for (const auto& [version, hash] : committed) {
      auto plan = (*client)->GetPlan("crash", version);
      ASSERT_TRUE(plan.ok()) << "round " << round << ", version " << version << ": "
                             << plan.status();
      EXPECT_EQ(plan->state(), v1::COMMITTED) << version;
      EXPECT_EQ(plan->map_hash(), hash) << version;
    }
    auto load = (*client)->GetLoad("crash");
    ASSERT_TRUE(load.ok()) << load.status();
    EXPECT_LE(load->steps_seen(), accepted_steps);
    // Load and plans while the kill comes at a random moment after the round's first commit, so
    // that every round has a plan at stake however slowly this machine runs.
    std::atomic<bool> stop = false;
    absl::Notification first_commit;
    std::thread traffic([&, round] {
      for (int64_t i = 0; !stop.load(); ++i) {
        v1::LoadReport report;
        report.set_deployment("crash");
        report.set_rank(static_cast<int32_t>(i % 8));
        report.set_session(static_cast<uint64_t>(round) + 1);
        report.set_sequence(i / 8 + 1);
        const int64_t step = accepted_steps + i / 8;
        report.set_first_step(step);
        report.set_last_step(step);
        report.set_plan_version(1);
        for (int l = 0; l < 8; ++l) {
          auto* counts = report.add_layers()->mutable_counts();
          for (int e = 0; e < 64; ++e) counts->Add(static_cast<double>((e * 7 + l + i) % 13));
        }
        if (!(*client)->ReportLoad({&report, 1}).ok()) break;
        if (i % 8 == 7) {
          auto plan = (*client)->Rebalance("crash");
          if (!plan.ok()) break;
          EXPECT_EQ(committed.count(plan->version()), 0u) << "version reused";
          committed[plan->version()] = plan->map_hash();
          if (!first_commit.HasBeenNotified()) first_commit.Notify();
        }
      }
    });
    const bool commits = first_commit.WaitForNotificationWithTimeout(absl::Seconds(60));
    if (commits) std::this_thread::sleep_for(std::chrono::milliseconds(random() % 180));
    EXPECT_TRUE(commits) << "round " << round << ": no plan committed within 60 s";
    CrashPlanner();
    stop = true;
    traffic.join();
    accepted_steps += 10'000;  // every round's steps begin past the last round's
    ASSERT_NO_FATAL_FAILURE(StartPlanner("--checkpoint-interval=1s\n"));
  }
  EXPECT_GE(committed.size(), 30u);
  std::cerr << committed.size() << " committed plans over 30 kill -9 restarts\n";
}

// A LoadReporter across kill -9: the planner loses what it accepted since its last checkpoint, the
// reporter notices the new planner instance in the next summary and sends its recently accepted
// reports again; every step ends up counted exactly once.
TEST_F(PlannerE2eTest, ReportsAcceptedBeforeAKillNineAreSentAgainAndCountedOnce) {
  // No checkpoint before the kill: everything accepted so far is lost by the planner.
  ASSERT_NO_FATAL_FAILURE(StartPlanner("--checkpoint-interval=1h\n"));
  const std::string port(absl::StripPrefix(server_, "127.0.0.1:"));
  v1::DeploymentSpec spec;
  spec.set_name("resend");
  v1::Shape& shape = *spec.mutable_shape();
  shape.set_num_layers(2);
  shape.set_num_logical_experts(4);
  shape.set_num_physical_experts(4);
  shape.set_num_ranks(1);
  spec.set_policy("contiguous");
  spec.mutable_trigger()->set_interval_steps(0);
  spec.mutable_smoothing()->set_window_steps(1000);
  auto client = client::PlannerClient::Create({.server = server_, .rpc_timeout = absl::Seconds(5)});
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->CreateDeployment(spec).ok());
  // The deployment itself is durable at once; its load only at checkpoints.
  auto reporter = client::LoadReporter::Create(
      client->get(), {.deployment = "resend", .num_layers = 2, .num_experts = 4,
                      .flush_every_steps = 5, .initial_backoff = absl::Milliseconds(5),
                      .max_backoff = absl::Milliseconds(50)});
  ASSERT_TRUE(reporter.ok()) << reporter.status();
  const std::vector<double> counts = {1, 2, 3, 4, 5, 6, 7, 8};
  for (int step = 0; step < 40; ++step) ASSERT_TRUE((*reporter)->AddStep(step, 1, counts).ok());
  ASSERT_TRUE((*reporter)->Flush(absl::Seconds(30)).ok());  // 8 reports accepted

  CrashPlanner();
  ASSERT_NO_FATAL_FAILURE(StartPlanner("--checkpoint-interval=1h\n--listen=127.0.0.1:" + port +
                                       "\n"));
  for (int step = 40; step < 60; ++step) ASSERT_TRUE((*reporter)->AddStep(step, 1, counts).ok());
  ASSERT_TRUE((*reporter)->Flush(absl::Seconds(30)).ok());
  // The first summary named the new instance: the 8 kept reports went again (the retained
  // window is 16 batches), after the 4 new ones.
  ASSERT_TRUE((*reporter)->Flush(absl::Seconds(30)).ok());
  const client::LoadReporter::Stats stats = (*reporter)->stats();
  EXPECT_EQ(stats.reports_resent, 8);
  EXPECT_EQ(stats.reports_dropped, 0);
  auto load = (*client)->GetLoad("resend");
  ASSERT_TRUE(load.ok()) << load.status();
  // 60 steps, each counted once: the window's mean per step is the step's counts.
  EXPECT_EQ(load->first_step(), 0);
  EXPECT_EQ(load->last_step(), 59);
  EXPECT_EQ(load->steps_seen(), 60);
  ASSERT_EQ(load->smoothed_load_size(), 8);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(load->smoothed_load(i), counts[i], 1e-9) << i;
}

// Beyond loopback, the planner serves only with credentials or when told --insecure.
TEST_F(PlannerE2eTest, ServingTheNetworkWithoutCredentialsIsRefused) {
  const auto check = [&](std::vector<std::string> flags, const std::string& token) {
    flags.insert(flags.begin(), EPLB_PLANNER_PATH);
    flags.insert(flags.end(), {"--state-dir=" + Path("state"), "--check-flags"});
    return testing::RunProcess(std::move(flags), dir_ / "check", {"EPLB_TOKEN=" + token});
  };
  const ProcessResult open = check({"--listen=0.0.0.0:0"}, "");
  EXPECT_EQ(open.exit_code, 1);
  EXPECT_THAT(open.err, HasSubstr("--listen=0.0.0.0:0 accepts calls from the network and no "
                                  "credentials are set: give a bearer token"));
  EXPECT_EQ(check({"--listen=0.0.0.0:0"}, "s3cret-0123456789abcdef").exit_code, 0);
  EXPECT_EQ(check({"--listen=0.0.0.0:0", "--insecure"}, "").exit_code, 0);
  EXPECT_EQ(check({"--listen=127.0.0.1:0"}, "").exit_code, 0);
  EXPECT_EQ(check({"--listen=[::1]:0"}, "").exit_code, 0);
  const ProcessResult memory = check({"--listen=127.0.0.1:0", "--max-memory=12 apples"}, "");
  EXPECT_EQ(memory.exit_code, 1);
  EXPECT_THAT(memory.err, HasSubstr("--max-memory=12 apples is not a size"));
  EXPECT_EQ(check({"--listen=127.0.0.1:0", "--max-memory=1.5Gi"}, "").exit_code, 0);
  EXPECT_THAT(check({"--listen=127.0.0.1:0", "--max-memory=100Mi"}, "").err,
              HasSubstr("--max-memory=100Mi is less than the smallest budget, 256Mi"));
  // Message limits and the read budget they take.
  EXPECT_THAT(check({"--listen=127.0.0.1:0", "--max-request-bytes=512"}, "").err,
              HasSubstr("--max-request-bytes=512 is out of range [1048576, 67108864] (at most "
                        "--max-message-bytes)"));
  const ProcessResult request =
      check({"--listen=127.0.0.1:0", "--max-memory=256Mi", "--max-request-bytes=33554432"}, "");
  EXPECT_EQ(request.exit_code, 1);
  EXPECT_THAT(request.err,
              HasSubstr("a request limit of 32.0 MiB (--max-request-bytes) needs 3 times that "
                        "and 512 KiB for a message being received and parsed, more than the "
                        "64.0 MiB the memory budget keeps for messages in flight (a quarter of "
                        "--max-memory)"));
  EXPECT_EQ(
      check({"--listen=127.0.0.1:0", "--max-memory=1Gi", "--max-request-bytes=33554432"}, "")
          .exit_code,
      0);
  EXPECT_THAT(check({"--listen=127.0.0.1:0", "--report-read-timeout=0s"}, "").err,
              HasSubstr("--report-read-timeout=0 is out of range [1s, 1h]"));
}

// --credentials: a file of scoped credentials counts as credentials; one the planner would refuse
// is named by --check-flags (and the planner does not start on it).
TEST_F(PlannerE2eTest, ACredentialsFileIsCheckedBeforeServing) {
  const auto check = [&](const std::string& yaml) {
    std::ofstream(Path("creds.yaml")) << yaml;
    return testing::RunProcess({EPLB_PLANNER_PATH, "--state-dir=" + Path("state"),
                                "--listen=0.0.0.0:0", "--credentials=" + Path("creds.yaml"),
                                "--check-flags"},
                               dir_ / "check", {"EPLB_TOKEN="});
  };
  EXPECT_EQ(check("credentials:\n  - {name: w, scope: deployment, deployment: a, "
                  "token: 0123456789abcdef}\n")
                .exit_code,
            0);
  const ProcessResult weak = check("credentials:\n  - {name: w, scope: admin, token: abc}\n");
  EXPECT_EQ(weak.exit_code, 1);
  EXPECT_THAT(weak.err, HasSubstr("--credentials: credentials[0] (\"w\"): the token has 3 bytes"));
  const ProcessResult typo = check(
      "credentials:\n  - {name: w, scope: deployment, deployment: a, rank: [0], "
      "token: 0123456789abcdef}\n");
  EXPECT_EQ(typo.exit_code, 1);
  EXPECT_THAT(typo.err, HasSubstr("unknown key \"rank\""));
  const ProcessResult none = check("credentials: []\n");
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_THAT(none.err, HasSubstr("lists none"));
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kUnderAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kUnderAddressSanitizer = true;
#else
constexpr bool kUnderAddressSanitizer = false;
#endif
#else
constexpr bool kUnderAddressSanitizer = false;
#endif

// A field of /proc/<pid>/status in bytes ("VmRSS", "VmHWM").
int64_t ProcStatusBytes(pid_t pid, const std::string& field) {
  for (absl::string_view line :
       absl::StrSplit(testing::Slurp(absl::StrCat("/proc/", pid, "/status")), '\n')) {
    if (!absl::ConsumePrefix(&line, field + ":")) continue;
    int64_t kib = 0;
    if (!absl::SimpleAtoi(absl::StripSuffix(absl::StripAsciiWhitespace(line), " kB"), &kib)) {
      return -1;
    }
    return kib * 1024;
  }
  return -1;
}

// The budget holds in the process's real memory: deployments are admitted until the next would
// not fit, each then filled to its bound (load reported, every retained plan published), and the
// planner's peak resident memory stays within --max-memory. It restarts on that state, and the
// refused deployment is still refused.
TEST_F(PlannerE2eTest, TheMemoryBudgetHoldsInResidentMemory) {
  if (kUnderAddressSanitizer) {
    GTEST_SKIP() << "under AddressSanitizer resident memory is mostly the sanitizer's";
  }
  ASSERT_NO_FATAL_FAILURE(StartPlanner("--max-memory=512Mi\n"));
  // 64 layers × 8192 experts on 8256 slots, 5 plans retained: about 87 MiB each by the planner's
  // count; 384 MiB of the 512 are for deployments.
  const auto create = [&](const std::string& name) {
    return Ctl({"create-deployment", "--name", name, "--num-layers", "64", "--num-logical-experts",
                "8192", "--num-physical-experts", "8256", "--num-ranks", "64", "--policy",
                "contiguous", "--commit", "immediate", "--plan-history", "3"});
  };
  int admitted = 0;
  ProcessResult refused;
  for (int i = 0; i < 10; ++i) {
    refused = create(absl::StrCat("m", i));
    if (refused.exit_code != 0) break;
    ++admitted;
  }
  EXPECT_EQ(admitted, 4);
  EXPECT_THAT(refused.err,
              StartsWith("eplbctl: RESOURCE_EXHAUSTED: deployment \"m4\" needs up to "));
  EXPECT_THAT(refused.err, HasSubstr("[OVER_BUDGET"));
  const std::string load = Write("wide.json", LoadJson(64, 8192, 0));
  for (int i = 0; i < admitted; ++i) {
    const std::string name = absl::StrCat("m", i);
    CtlOk({"report", "--deployment", name, "--rank", "0", "--load", load, "--steps", "10"});
    for (int v = 0; v < 5; ++v) CtlOk({"rebalance", "--deployment", name});
  }
  const int64_t peak = ProcStatusBytes(planner_->pid(), "VmHWM");
  ASSERT_GT(peak, 0);
  EXPECT_LE(peak, int64_t{512} << 20) << "peak resident memory " << peak;
  std::cerr << "planner peak resident memory: " << (peak >> 20) << " MiB with " << admitted
            << " deployments at their bound\n";

  EXPECT_EQ(planner_->Kill(SIGTERM), 0);
  ASSERT_NO_FATAL_FAILURE(StartPlanner("--max-memory=512Mi\n"));
  EXPECT_EQ(Lines(CtlOk({"list"})).size(), 4u);
  EXPECT_EQ(create("m4").exit_code, 1);
}

// Large reports arriving together, to a planner with --max-memory=512Mi (128 MiB of it for
// messages in flight): 96 streams at once, each sending a 16 MiB load as 2 MiB reports over layer
// ranges (1.5 GiB on the wire); then 64 streams at once, each sending one 63.5 MiB message, beyond
// the 2 MiB request limit. A stream beyond the read budget waits without a read pending, so gRPC
// does not buffer its message: every report is counted, every oversize message is refused
// unread, and the planner's peak resident memory stays within the budget.
TEST_F(PlannerE2eTest, ConcurrentLargeReportsStayWithinTheMemoryBudget) {
  if (kUnderAddressSanitizer) {
    GTEST_SKIP() << "under AddressSanitizer resident memory is mostly the sanitizer's";
  }
  constexpr int kLayers = 128, kExperts = 16384, kStreams = 96, kOversizeStreams = 64;
  ASSERT_NO_FATAL_FAILURE(StartPlanner("--max-memory=512Mi\n"));
  CtlOk({"create-deployment", "--name", "wide", "--num-layers", std::to_string(kLayers),
         "--num-logical-experts", std::to_string(kExperts), "--num-physical-experts",
         std::to_string(kExperts), "--num-ranks", "64", "--policy", "contiguous", "--commit",
         "immediate", "--plan-history", "2"});
  // One load, sent by every stream: the first stream's parts count, the others' are duplicates
  // (counted too), and the planner receives and parses each.
  v1::LoadReport whole;
  whole.set_deployment("wide");
  whole.set_sequence(1);
  whole.set_first_step(1);
  whole.set_last_step(1);
  whole.set_plan_version(1);
  for (int l = 0; l < kLayers; ++l) whole.add_layers()->mutable_counts()->Resize(kExperts, 1.0);
  ASSERT_GT(whole.ByteSizeLong(), size_t{16} << 20);
  // Serialized once; every stream writes the same buffers (static slices, no copies), so the
  // senders push bytes as fast as the connection takes them.
  std::vector<std::string> parts;
  for (const v1::LoadReport& part : client::SplitByLayers(whole, 2 << 20)) {
    parts.push_back(part.SerializeAsString());
  }
  ASSERT_EQ(parts.size(), 9u);
  std::vector<grpc::ByteBuffer> messages;
  for (const std::string& part : parts) {
    grpc::Slice slice(part.data(), part.size(), grpc::Slice::STATIC_SLICE);
    messages.emplace_back(&slice, 1);
  }
  const auto channel = grpc::CreateChannel(server_, grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(channel);
  std::vector<grpc::Status> results(kStreams);
  std::vector<v1::ReportSummary> summaries(kStreams);
  std::vector<std::thread> senders;
  for (int i = 0; i < kStreams; ++i) {
    senders.emplace_back([&, i] {
      testing::RawStream call(generic, "/eplb.v1.Planner/ReportLoad", absl::Minutes(2));
      bool open = true;
      for (const grpc::ByteBuffer& message : messages) open = open && call.Write(message);
      if (open && call.WritesDone()) {
        const std::optional<std::string> summary = call.Read();
        if (summary.has_value()) summaries[i].ParseFromString(*summary);
      }
      results[i] = call.Finish();
    });
  }
  for (std::thread& t : senders) t.join();
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].error_message();
    EXPECT_EQ(summaries[i].accepted() + summaries[i].duplicates(),
              static_cast<int64_t>(parts.size()));
  }

  // 63.5 MiB on each stream, from one buffer shared by all.
  const std::string oversize(size_t{127} << 19, '\x01');
  grpc::Slice slice(oversize.data(), oversize.size(), grpc::Slice::STATIC_SLICE);
  const grpc::ByteBuffer message(&slice, 1);
  std::vector<grpc::Status> refusals(kOversizeStreams);
  senders.clear();
  for (int i = 0; i < kOversizeStreams; ++i) {
    senders.emplace_back([&, i] {
      testing::RawStream call(generic, "/eplb.v1.Planner/ReportLoad", absl::Minutes(2));
      if (call.Write(message)) call.WritesDone();
      refusals[i] = call.Finish();
    });
  }
  for (std::thread& t : senders) t.join();
  for (const grpc::Status& status : refusals) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  }

  const int64_t peak = ProcStatusBytes(planner_->pid(), "VmHWM");
  ASSERT_GT(peak, 0);
  EXPECT_LE(peak, int64_t{512} << 20) << "peak resident memory " << peak;
  std::cerr << "planner peak resident memory: " << (peak >> 20) << " MiB after " << kStreams
            << " concurrent 16 MiB loads and " << kOversizeStreams << " 63.5 MiB messages\n";
  EXPECT_THAT(CtlOk({"list"}), HasSubstr("steps 1"));
}

// GET /metrics over a plain socket.
std::string FetchMetrics(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      for (ssize_t n; (n = ::read(fd, buffer, sizeof(buffer))) > 0;) response.append(buffer, n);
    }
  }
  ::close(fd);
  return response;
}

TEST_F(PlannerE2eTest, MetricsEndpointAndGracefulShutdownOnSigterm) {
  ASSERT_NO_FATAL_FAILURE(StartPlanner());
  CtlOk(CreateArgs("m", "immediate"));
  CtlOk({"report", "--deployment", "m", "--rank", "0", "--load",
         Write("load.json", R"({"load": [[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16],
           [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1], [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],
           [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]]})"),
         "--steps", "10"});
  // The log names the metrics port.
  std::smatch match;
  const std::string log = testing::Slurp(dir_ / "planner.log");
  ASSERT_TRUE(std::regex_search(log, match, std::regex("metrics on :([0-9]+)/metrics"))) << log;
  const std::string metrics = FetchMetrics(std::stoi(match[1]));
  EXPECT_THAT(metrics, ::testing::HasSubstr("200 OK"));
  EXPECT_THAT(metrics,
              ::testing::HasSubstr("eplb_plan_version{deployment=\"m\",kind=\"committed\"} 1"));
  EXPECT_THAT(metrics,
              ::testing::HasSubstr("eplb_reports_total{deployment=\"m\",result=\"accepted\"} 1"));
  // SIGTERM: exit 0, and the smoothed load is checkpointed on the way out.
  const fs::path checkpoint = dir_ / "state" / "deployments" / "m" / "load.pb";
  EXPECT_FALSE(fs::exists(checkpoint));
  EXPECT_EQ(planner_->Kill(SIGTERM), 0);
  EXPECT_TRUE(fs::exists(checkpoint));
  EXPECT_THAT(testing::Slurp(dir_ / "planner.log"), ::testing::HasSubstr("received SIGTERM"));
  // After a restart the load is back: 10 steps seen.
  ASSERT_NO_FATAL_FAILURE(StartPlanner());
  EXPECT_THAT(CtlOk({"list"}), ::testing::HasSubstr("steps 10"));
}

TEST_F(PlannerE2eTest, InvalidSpecNamesTheField) {
  ASSERT_NO_FATAL_FAILURE(StartPlanner());
  // More ranks than slots.
  const ProcessResult r = Ctl(WithFlag(CreateArgs("bad", "immediate"), "--num-ranks", "40"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, StartsWith("eplbctl: INVALID_ARGUMENT: "));
  EXPECT_THAT(r.err, HasSubstr("[FIELD_OUT_OF_RANGE"));
  EXPECT_EQ(CtlOk({"list"}), "");
}

TEST_F(PlannerE2eTest, AckedCommitWithRanksWatching) {
  ASSERT_NO_FATAL_FAILURE(StartPlanner());
  CtlOk(CreateArgs("acked", "acked"));
  // Four ranks watch and acknowledge every plan.
  std::vector<std::unique_ptr<ChildProcess>> ranks;
  for (int rank = 0; rank < kRanks; ++rank) {
    ranks.push_back(
        StartCtl({"watch", "--deployment", "acked", "--rank", std::to_string(rank), "--ack"},
                 "watch" + std::to_string(rank)));
  }
  // Each has the committed version 1 and acknowledged it as ACTIVE.
  for (int rank = 0; rank < kRanks; ++rank) {
    const fs::path out = dir_ / ("watch" + std::to_string(rank) + ".out");
    ASSERT_TRUE(WaitFor([&] { return !testing::Slurp(out).empty(); }, kWaitTimeout))
        << "rank " << rank << ": "
        << testing::Slurp(dir_ / ("watch" + std::to_string(rank) + ".err"));
    EXPECT_THAT(testing::Slurp(out), StartsWith("version 1  COMMITTED  INITIAL  "));
  }
  EXPECT_TRUE(WaitFor(
      [&] {
        return Ctl({"status", "--deployment", "acked"}).out.find("ACTIVE 4, STAGED 0") !=
               std::string::npos;
      },
      kWaitTimeout))
      << CtlOk({"status", "--deployment", "acked"});

  for (int rank = 0; rank < kRanks; ++rank) {
    CtlOk({"report", "--deployment", "acked", "--rank", std::to_string(rank), "--load",
           Write("load" + std::to_string(rank) + ".json", LoadJson(kLayers, kExperts, rank))});
  }
  // Published as PENDING; commits once every rank staged it.
  const PlanSummary v2 = ParsePlanLine(Lines(CtlOk({"rebalance", "--deployment", "acked"}))[0]);
  EXPECT_EQ(v2.version, 2);
  EXPECT_THAT(v2.state, ::testing::AnyOf("PENDING", "COMMITTED"));
  EXPECT_TRUE(WaitFor(
      [&] {
        const ProcessResult r = Ctl({"get-plan", "--deployment", "acked"});
        return r.exit_code == 0 && ParsePlanLine(Lines(r.out)[0]).version == 2;
      },
      kWaitTimeout));
  EXPECT_TRUE(WaitFor(
      [&] {
        return Ctl({"status", "--deployment", "acked"})
                   .out.find("committed version 2, latest version 2") != std::string::npos;
      },
      kWaitTimeout));
  // Every watcher saw version 2 commit.
  for (int rank = 0; rank < kRanks; ++rank) {
    const fs::path out = dir_ / ("watch" + std::to_string(rank) + ".out");
    EXPECT_TRUE(WaitFor(
        [&] { return testing::Slurp(out).find("version 2  COMMITTED") != std::string::npos; },
        kWaitTimeout))
        << testing::Slurp(out);
  }
  // Deleting the deployment ends the watches with NOT_FOUND (exit 1).
  CtlOk({"delete-deployment", "--name", "acked"});
  for (int rank = 0; rank < kRanks; ++rank) {
    EXPECT_TRUE(WaitFor([&] { return !ranks[rank]->Running(); }, kWaitTimeout)) << rank;
    EXPECT_EQ(ranks[rank]->Kill(SIGKILL), 1);
    EXPECT_THAT(testing::Slurp(dir_ / ("watch" + std::to_string(rank) + ".err")),
                StartsWith("eplbctl: NOT_FOUND: "));
  }
}

// `status` names the ranks whose acknowledged map differs and the ranks that failed; here the
// ranks are PlannerClient watches in the test, so that they can misbehave.
TEST_F(PlannerE2eTest, StatusNamesMismatchedAndFailedRanks) {
  ASSERT_NO_FATAL_FAILURE(StartPlanner());
  CtlOk(WithFlag(CreateArgs("acks", "acked"), "--num-ranks", "2"));
  auto client = client::PlannerClient::Create({.server = server_});
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<std::unique_ptr<client::PlannerClient::Watch>> ranks;
  std::vector<v1::WatchPlansResponse> current;
  for (int rank = 0; rank < 2; ++rank) {
    v1::WatchPlansRequest::Subscribe subscribe;
    subscribe.set_deployment("acks");
    subscribe.set_rank(rank);
    auto watch = (*client)->StartWatch(subscribe);
    ASSERT_TRUE(watch.ok()) << watch.status();
    auto response = (*watch)->Next();
    ASSERT_TRUE(response.ok()) << response.status();
    current.push_back(*response);
    ranks.push_back(*std::move(watch));
  }
  // Rank 0 runs a map other than version 1's.
  for (int rank = 0; rank < 2; ++rank) {
    v1::WatchPlansRequest::Ack ack;
    ack.set_version(1);
    ack.set_nonce(current[rank].nonce());
    ack.set_state(v1::ACTIVE);
    ack.set_map_hash(rank == 0 ? 0x1234 : current[rank].plan().map_hash());
    ASSERT_TRUE(ranks[rank]->Ack(ack).ok());
  }
  EXPECT_TRUE(WaitFor(
      [&] {
        return Ctl({"status", "--deployment", "acks"})
                   .out.find(
                       "ranks: ACTIVE 2, STAGED 0, FAILED 0, no ack 0; hash mismatch: "
                       "ranks 0\n") != std::string::npos;
      },
      kWaitTimeout))
      << CtlOk({"status", "--deployment", "acks"});

  // Rank 1 cannot stage version 2: the plan is aborted, rank 1 named with its error.
  for (int rank = 0; rank < 2; ++rank) {
    CtlOk({"report", "--deployment", "acks", "--rank", std::to_string(rank), "--load",
           Write("load" + std::to_string(rank) + ".json", LoadJson(kLayers, kExperts, rank))});
  }
  const std::string published = CtlOk({"rebalance", "--deployment", "acks"});
  ASSERT_EQ(ParsePlanLine(Lines(published)[0]).version, 2);
  for (int rank = 0; rank < 2; ++rank) {
    auto pending = ranks[rank]->Next();
    ASSERT_TRUE(pending.ok()) << pending.status();
    ASSERT_EQ(pending->plan().version(), 2);
    v1::WatchPlansRequest::Ack ack;
    ack.set_version(2);
    ack.set_nonce(pending->nonce());
    ack.set_state(rank == 1 ? v1::FAILED : v1::STAGED);
    ack.set_map_hash(pending->plan().map_hash());
    if (rank == 1) ack.set_error_detail("out of staging memory");
    ASSERT_TRUE(ranks[rank]->Ack(ack).ok());
  }
  std::string status;
  EXPECT_TRUE(WaitFor(
      [&] {
        status = Ctl({"status", "--deployment", "acks"}).out;
        return status.find("ABORTED") != std::string::npos;
      },
      kWaitTimeout))
      << status;
  EXPECT_THAT(status, StartsWith("acks: committed version 1, latest version 2, "));
  EXPECT_THAT(status, HasSubstr("failed: rank 1 (out of staging memory)"));
  EXPECT_THAT(status, ContainsRegex("version 2  parent 1  ABORTED  ON_DEMAND  .*  aborted: "));
}

}  // namespace
}  // namespace eplb
