// Integration tests of the planner: a real server on 127.0.0.1:0, real gRPC calls. Deployments,
// load ingestion, smoothing, triggers, and bad input.
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <thread>

#include "core/contiguous_policy.h"
#include "google/protobuf/util/message_differencer.h"
#include "tests/server/test_env.h"
#include "tests/support/raw_calls.h"

namespace eplb {
namespace {

using ::eplb::testing::Create;
using ::eplb::testing::Delete;
using ::eplb::testing::GetLoad;
using ::eplb::testing::GetPlan;
using ::eplb::testing::ListPlans;
using ::eplb::testing::PlannerEnv;
using ::eplb::testing::Reason;
using ::eplb::testing::Rebalance;
using ::eplb::testing::Report;
using ::eplb::testing::SendReports;
using ::eplb::testing::Spec;
using ::eplb::testing::WithFirstLayer;
using ::google::protobuf::util::MessageDifferencer;
using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pointwise;

v1::DeploymentSpec SmallSpec(const std::string& name) {
  v1::DeploymentSpec spec = Spec(name, 1, 4, 4, 2);
  spec.set_policy("deepseek");
  spec.mutable_trigger()->set_interval_steps(0);  // no automatic rebalance
  return spec;
}

std::vector<double> Smoothed(v1::Planner::Stub& stub, const std::string& deployment) {
  auto load = GetLoad(stub, deployment);
  EXPECT_TRUE(load.ok()) << load.status();
  return load.ok() ? std::vector<double>(load->smoothed_load().begin(), load->smoothed_load().end())
                   : std::vector<double>{};
}

// ---- Deployments --------------------------------------------------------------------------------

// What a deployment may hold is counted before it is created: beyond the budget, the deployment
// cap or the message limit, the create is refused and nothing is written.
TEST(PlannerDeploymentTest, TheMemoryBudgetAndLimitsRefuseACreateBeforeAnythingIsWritten) {
  server::PlannerServerOptions options;
  options.max_memory_bytes = int64_t{256} << 20;  // 192 MiB for deployments, 64 MiB for gRPC
  options.planner.max_deployments = 3;
  PlannerEnv env(options);
  // About 77 MiB each: 64 layers × 8192 experts on 8256 slots, 5 plans retained.
  const auto big = [](const std::string& name) {
    v1::DeploymentSpec spec = Spec(name, 64, 8192, 8256, 64);
    spec.set_policy("contiguous");
    spec.set_plan_history(3);
    return spec;
  };
  {
    auto created = Create(env.stub(), big("a"));
    ASSERT_TRUE(created.ok()) << created.status();
  }
  ASSERT_TRUE(Create(env.stub(), big("b")).ok());
  ASSERT_TRUE(Create(env.stub(), big("b")).ok());  // an identical re-create is not a new one
  const absl::Status over = Create(env.stub(), big("c")).status();
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Reason(over), v1::OVER_BUDGET);
  EXPECT_THAT(std::string(over.message()),
              ::testing::MatchesRegex("deployment \"c\" needs up to [0-9.]+ MiB \\(smoothing .*, "
                                      "5 plans of .*\\); [0-9.]+ MiB of the planner's 192.0 MiB "
                                      "for deployments are left \\(--max-memory\\)"));
  EXPECT_FALSE(std::filesystem::exists(env.state_dir() + "/deployments/c"));
  // Admission comes before the policy's probe (which takes memory of the deployment's order): a
  // shape deepseek cannot serve is refused for the budget first.
  v1::DeploymentSpec unservable = big("d");
  unservable.set_policy("deepseek");
  unservable.mutable_shape()->set_num_physical_experts(8193);
  EXPECT_EQ(Reason(Create(env.stub(), unservable).status()), v1::OVER_BUDGET);
  // Small ones still fit, up to the cap on deployments.
  ASSERT_TRUE(Create(env.stub(), SmallSpec("small")).ok());
  const absl::Status capped = Create(env.stub(), SmallSpec("more")).status();
  EXPECT_EQ(capped.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(capped.message(), "the planner holds 3 deployments, its limit (--max-deployments)");
  // Deleting one makes room again.
  ASSERT_TRUE(Delete(env.stub(), "a").ok());
  ASSERT_TRUE(Create(env.stub(), big("c")).ok());
  env.Restart();  // what was admitted fits at start-up
  EXPECT_TRUE(GetPlan(env.stub(), "c", 0).ok());
}

TEST(PlannerDeploymentTest, AStateOverTheBudgetIsRefusedAtStartNamingTheDeployments) {
  PlannerEnv env;
  v1::DeploymentSpec spec = Spec("wide", 64, 8192, 8256, 64);
  spec.set_policy("contiguous");
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  ASSERT_TRUE(Create(env.stub(), SmallSpec("small")).ok());
  env.Stop();
  server::PlannerServerOptions options;
  options.listen = "127.0.0.1:0";
  options.state_dir = env.state_dir();
  options.max_memory_bytes = int64_t{256} << 20;
  FakeClock clock;
  const absl::Status status = server::PlannerServer::Start(options, &clock, nullptr).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(
      std::string(status.message()),
      ::testing::MatchesRegex("the 2 deployments in .* need up to [0-9.]+ MiB, more than "
                              "the memory budget of 192.0 MiB for deployments; largest: "
                              "wide \\([0-9.]+ MiB\\), small \\([0-9.]+ KiB\\)\\. Start with a "
                              "larger --max-memory, then delete deployments"));
  env.Start();  // without the budget it starts
}

TEST(PlannerDeploymentTest, AShapeWhoseMessagesCannotFitIsRefused) {
  server::PlannerServerOptions options;
  options.max_message_bytes = 1 << 20;
  options.max_request_bytes = 1 << 20;
  PlannerEnv env(options);
  v1::DeploymentSpec spec = Spec("wide", 64, 4096, 4096, 64);
  spec.set_policy("contiguous");
  const absl::Status status = Create(env.stub(), spec).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Reason(status), v1::MESSAGE_WOULD_NOT_FIT);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("makes a GetLoad response of up to 2.0 MiB, more than the message limit "
                        "of 1.0 MiB (--max-message-bytes)"));
  EXPECT_FALSE(std::filesystem::exists(env.state_dir() + "/deployments/wide"));
}

TEST(PlannerDeploymentTest, NamesFromRequestsAreQuotedShortInErrors) {
  PlannerEnv env;
  grpc::ClientContext context;
  v1::GetDeploymentRequest request;
  request.set_name(std::string(10'000, 'a') + "\n");
  v1::Deployment response;
  const absl::Status status =
      FromGrpcStatus(env.stub().GetDeployment(&context, request, &response));
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(status.message(),
            absl::StrCat("deployment \"", std::string(64, 'a'), "…\" (10001 bytes) not found"));
  EXPECT_EQ(Reason(status), v1::DEPLOYMENT_NOT_FOUND);
}

// Deployments do not wait on each other: while a large deployment is being created (its policy
// probed on its shape, its files written), a small one's rebalance runs and finishes. With one
// worker for all deployments it would wait behind the create.
TEST(PlannerDeploymentTest, ASlowCreateDoesNotHoldUpAnotherDeploymentsRebalance) {
  server::PlannerServerOptions options;
  options.planner.worker_threads = 2;
  PlannerEnv env(options);
  ASSERT_TRUE(Create(env.stub(), Spec("small", 2, 8, 8, 2)).ok());
  absl::Notification big_done;
  const absl::Time start = absl::Now();
  absl::Duration create_time;
  env.server().planner().CreateDeployment(Spec("big", 512, 4096, 4096, 64),
                                          [&](absl::StatusOr<v1::Deployment> d) {
                                            EXPECT_TRUE(d.ok()) << d.status();
                                            create_time = absl::Now() - start;
                                            big_done.Notify();
                                          });
  auto plan = Rebalance(env.stub(), "small", /*dry_run=*/true);
  const absl::Duration rebalance_time = absl::Now() - start;
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(big_done.HasBeenNotified());
  big_done.WaitForNotification();
  std::cerr << "create of big: " << create_time << ", rebalance of small: " << rebalance_time
            << "\n";
}

// One name's operations wait in a bounded queue: with a slow create running (or about to) and the
// lane full, further calls for that name are refused at once, and the ones queued complete.
TEST(PlannerDeploymentTest, OperationsOfOneNameWaitInABoundedQueue) {
  server::PlannerServerOptions options;
  options.planner.max_queued_per_deployment = 2;
  PlannerEnv env(options);
  server::Planner& planner = env.server().planner();
  constexpr int kCalls = 8;
  absl::Mutex mu;
  std::vector<absl::Status> results;
  // The first runs for about a second, so all 8 are posted while it runs or waits: the lane takes
  // it (once it started it no longer waits) and 2 more, and refuses the rest.
  for (int i = 0; i < kCalls; ++i) {
    planner.CreateDeployment(Spec("big", 512, 4096, 4096, 64),
                             [&](absl::StatusOr<v1::Deployment> d) {
                               absl::MutexLock lock(&mu);
                               results.push_back(d.status());
                             });
  }
  absl::MutexLock lock(&mu);
  const auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return results.size() == kCalls; };
  mu.Await(absl::Condition(&all));
  int completed = 0;
  for (const absl::Status& status : results) {
    if (status.ok()) {
      ++completed;
      continue;
    }
    EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
    EXPECT_EQ(status.message(),
              "deployment \"big\" has 2 creates, deletes and rebalances waiting; retry later");
    EXPECT_EQ(Reason(status), v1::OVER_BUDGET);
  }
  EXPECT_GE(completed, 2);
  EXPECT_LE(completed, 3);
}

TEST(PlannerDeploymentTest, CreateStartsWithTheContiguousPlanAsVersionOne) {
  PlannerEnv env;
  auto deployment = Create(env.stub(), Spec("v3", 2, 30, 32, 8));
  ASSERT_TRUE(deployment.ok()) << deployment.status();
  EXPECT_EQ(deployment->committed_version(), 1);
  EXPECT_EQ(deployment->latest_version(), 1);
  EXPECT_EQ(deployment->spec().policy(), "balanced");  // the planner's default
  EXPECT_EQ(deployment->spec().smoothing().ema_half_life_steps(), 1000);
  EXPECT_EQ(deployment->spec().commit_mode(), v1::COMMIT_MODE_ACKED);

  auto plan = GetPlan(env.stub(), "v3");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->version(), 1);
  EXPECT_EQ(plan->parent_version(), 0);
  EXPECT_EQ(plan->state(), v1::COMMITTED);
  EXPECT_EQ(plan->reason(), v1::INITIAL);
  EXPECT_EQ(plan->policy(), "contiguous");
  auto map = ExpertMapFromProto(plan->map());
  ASSERT_TRUE(map.ok()) << map.status();
  DeploymentShape shape{
      .num_layers = 2, .num_logical_experts = 30, .num_ranks = 8, .num_physical_experts = 32};
  auto expected = ContiguousPolicy().Plan({shape, nullptr, nullptr});
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(*map, *expected);
  EXPECT_EQ(plan->map_hash(), expected->Hash());
  EXPECT_EQ(plan->ranks_size(), 8);
}

// A map of one layer with the given phy2log, 2 ranks.
v1::ExpertMap MapProto(int experts, std::vector<int32_t> phy2log) {
  const int32_t slots = static_cast<int32_t>(phy2log.size());
  auto map = ExpertMap::FromPhy2Log(1, experts, SlotLayout(slots, 2), std::move(phy2log));
  EXPECT_TRUE(map.ok()) << map.status();
  v1::ExpertMap proto;
  ExpertMapToProto(*map, &proto);
  return proto;
}

TEST(PlannerDeploymentTest, InitialMapBecomesVersionOne) {
  PlannerEnv env;
  v1::DeploymentSpec spec = Spec("sg", 1, 4, 4, 2);
  spec.set_policy("contiguous");
  *spec.mutable_initial_map() = MapProto(4, {3, 2, 1, 0});
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  auto plan = GetPlan(env.stub(), "sg");
  ASSERT_TRUE(plan.ok());
  EXPECT_THAT(plan->map().phy2log(), ElementsAre(3, 2, 1, 0));
  EXPECT_EQ(plan->policy(), "initial_map");
}

TEST(PlannerDeploymentTest, IdenticalReCreateIsIdempotentAndConflictIsRefused) {
  PlannerEnv env;
  const v1::DeploymentSpec spec = SmallSpec("d");
  auto first = Create(env.stub(), spec);
  ASSERT_TRUE(first.ok());
  auto again = Create(env.stub(), spec);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(MessageDifferencer::Equals(*first, *again));

  v1::DeploymentSpec other = spec;
  other.mutable_shape()->set_num_physical_experts(6);
  auto conflict = Create(env.stub(), other);
  EXPECT_EQ(conflict.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(conflict.status().message(), "deployment \"d\" already exists with a different shape");
  EXPECT_EQ(Reason(conflict.status()), v1::DEPLOYMENT_CONFLICT);
  auto plan = GetPlan(env.stub(), "d");
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->map().num_physical_experts(), 4);  // unchanged
}

TEST(PlannerDeploymentTest, BadSpecsAreRefusedWithTheFieldAndNothingIsCreated) {
  PlannerEnv env;
  struct Case {
    std::function<void(v1::DeploymentSpec&)> mutate;
    absl::StatusCode code;
    v1::ErrorReason reason;
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](auto& s) { s.set_name(""); }, absl::StatusCode::kInvalidArgument, v1::FIELD_REQUIRED,
       "spec.name is required"},
      {[](auto& s) { s.set_name("Bad_Name"); }, absl::StatusCode::kInvalidArgument,
       v1::FIELD_OUT_OF_RANGE,
       "spec.name \"Bad_Name\" must be 1 to 63 characters of [a-z0-9-] starting with a letter"},
      {[](auto& s) { s.mutable_shape()->set_num_ranks(0); }, absl::StatusCode::kInvalidArgument,
       v1::FIELD_OUT_OF_RANGE, ""},
      {[](auto& s) { s.set_policy("magic"); }, absl::StatusCode::kInvalidArgument,
       v1::FIELD_OUT_OF_RANGE, ""},
      {[](auto& s) { s.mutable_shape()->set_num_physical_experts(5); },
       absl::StatusCode::kFailedPrecondition, v1::POLICY_CANNOT_SERVE, ""},
      {[](auto& s) { s.set_bytes_per_expert(-1); }, absl::StatusCode::kInvalidArgument,
       v1::FIELD_OUT_OF_RANGE, "spec.bytes_per_expert = -1 is out of range [0, 1099511627776]"},
      {[](auto& s) { s.mutable_smoothing()->set_window_steps(100'001); },
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "spec.smoothing.window_steps = 100001 is out of range [1, 100000]"},
      {[](auto& s) { s.mutable_smoothing()->set_ema_half_life_steps(0); },
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "spec.smoothing.ema_half_life_steps = 0 is out of range [1, 1000000]"},
      {[](auto& s) { s.mutable_trigger()->set_min_gain(std::nan("")); },
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "spec.trigger.min_gain = nan is out of range [0, 1]"},
      {[](auto& s) { s.mutable_trigger()->set_interval_steps(-5); },
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "spec.trigger.interval_steps = -5 is out of range [1, 10000000]"},
      {[](auto& s) { s.set_ack_timeout_ms(50); }, absl::StatusCode::kInvalidArgument,
       v1::FIELD_OUT_OF_RANGE, "spec.ack_timeout_ms = 50 is out of range [100, 3600000]"},
      {[](auto& s) { s.set_plan_history(1); }, absl::StatusCode::kInvalidArgument,
       v1::FIELD_OUT_OF_RANGE, "spec.plan_history = 1 is out of range [2, 1000]"},
      {[](auto& s) {
         *s.mutable_initial_map() = MapProto(2, {0, 1});
       },
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "map has num_logical_experts = 2, but the deployment has 4"},
      {[](auto& s) {
         *s.mutable_initial_map() = MapProto(2, {0, 1});
         s.mutable_initial_map()->set_phy2log(1, 7);
       },
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "spec.initial_map: phy2log[0][1] = 7 is out of range [0, 1]"},
      {[](auto& s) { s.mutable_balanced()->set_min_gain(0.1); }, absl::StatusCode::kInvalidArgument,
       v1::FIELD_OUT_OF_RANGE, "spec.balanced applies to policy balanced, not deepseek"},
      {[](auto& s) {
         s.set_policy("balanced");
         s.mutable_balanced()->set_tolerance(-0.1);
       },
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "spec.balanced.tolerance = -0.1 is out of range [0, 1]"},
      {[](auto& s) {
         s.set_policy("balanced");
         s.mutable_balanced()->set_min_gain(2);
       },
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "spec.balanced.min_gain = 2 is out of range [0, 1]"},
      {[](auto& s) {
         s.set_policy("balanced");
         s.mutable_balanced()->set_gain_per_move(-0.5);
       },
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "spec.balanced.gain_per_move = -0.5 is out of range [0, 1]"},
      {[](auto& s) {
         s.set_policy("balanced");
         s.mutable_balanced()->set_max_received_per_rank(5);
       },
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "spec.balanced.max_received_per_rank = 5 is out of range [0, 4]"},
      {[](auto& s) {
         s.set_policy("balanced");
         s.mutable_balanced()->set_max_received_per_layer(-1);
       },
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "spec.balanced.max_received_per_layer = -1 is out of range [0, 4]"},
      {[](auto& s) {
         s.set_policy("balanced");
         s.mutable_shape()->set_num_nodes(2);
         s.mutable_balanced()->set_node_affinity(true);
       },
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "spec.balanced.node_affinity needs num_groups (1) to be a multiple of num_nodes (2)"},
  };
  for (const Case& c : cases) {
    v1::DeploymentSpec spec = SmallSpec("d");
    c.mutate(spec);
    auto result = Create(env.stub(), spec);
    EXPECT_EQ(result.status().code(), c.code) << result.status();
    EXPECT_EQ(Reason(result.status()), c.reason) << result.status();
    if (!c.message.empty()) {
      EXPECT_EQ(result.status().message(), c.message) << std::string(result.status().message());
    }
  }
  grpc::ClientContext context;
  v1::ListDeploymentsResponse list;
  ASSERT_TRUE(env.stub().ListDeployments(&context, {}, &list).ok());
  EXPECT_EQ(list.deployments_size(), 0);
  EXPECT_FALSE(std::filesystem::exists(env.state_dir() + "/deployments/d"));
}

// The balanced policy's options: echoed with defaults, part of the identity of a deployment, kept
// across a restart, and used when planning (a move budget of one expert per layer).
TEST(PlannerDeploymentTest, BalancedOptionsAreEchoedKeptAndUsed) {
  PlannerEnv env;
  v1::DeploymentSpec plain = Spec("plain", 1, 4, 4, 2);
  auto created = Create(env.stub(), plain);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(created->spec().balanced().has_tolerance());
  EXPECT_DOUBLE_EQ(created->spec().balanced().tolerance(), 0.01);
  EXPECT_EQ(created->spec().balanced().max_received_per_layer(), 0);

  v1::DeploymentSpec spec = Spec("budget", 3, 16, 20, 4);
  spec.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
  spec.mutable_trigger()->set_interval_steps(0);
  spec.mutable_smoothing()->set_window_steps(1);
  spec.mutable_balanced()->set_tolerance(0);
  spec.mutable_balanced()->set_max_received_per_layer(1);
  created = Create(env.stub(), spec);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(created->spec().balanced().has_tolerance());
  EXPECT_EQ(created->spec().balanced().tolerance(), 0);
  EXPECT_EQ(created->spec().balanced().max_received_per_layer(), 1);

  v1::DeploymentSpec other = spec;
  other.mutable_balanced()->set_max_received_per_layer(2);
  auto conflict = Create(env.stub(), other);
  EXPECT_EQ(conflict.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(conflict.status().message(),
            "deployment \"budget\" already exists with a different balanced");

  // Skewed load on every layer: each layer may still receive one expert only.
  std::vector<v1::LoadReport> reports;
  for (int rank = 0; rank < 4; ++rank) {
    std::vector<std::vector<double>> counts(3, std::vector<double>(16, 1.0));
    for (auto& layer : counts) layer[rank * 4] = 50;
    reports.push_back(Report("budget", rank, 1, 0, 0, counts));
  }
  ASSERT_TRUE(SendReports(env.stub(), reports).ok());
  auto plan = Rebalance(env.stub(), "budget");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_GT(plan->metrics().experts_moved(), 0);
  EXPECT_LE(plan->metrics().experts_moved(), 3);

  env.Restart();
  auto listed = GetPlan(env.stub(), "budget");
  ASSERT_TRUE(listed.ok());
  grpc::ClientContext context;
  v1::GetDeploymentRequest request;
  request.set_name("budget");
  v1::Deployment after;
  ASSERT_TRUE(env.stub().GetDeployment(&context, request, &after).ok());
  EXPECT_TRUE(MessageDifferencer::Equals(after.spec().balanced(), created->spec().balanced()));
}

TEST(PlannerDeploymentTest, DeleteRemovesEverythingAndUnknownNamesAreNotFound) {
  PlannerEnv env;
  ASSERT_TRUE(Create(env.stub(), SmallSpec("gone")).ok());
  ASSERT_TRUE(Delete(env.stub(), "gone").ok());
  auto plan = GetPlan(env.stub(), "gone");
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(plan.status().message(), "deployment \"gone\" not found");
  EXPECT_EQ(Reason(plan.status()), v1::DEPLOYMENT_NOT_FOUND);
  EXPECT_FALSE(std::filesystem::exists(env.state_dir() + "/deployments/gone"));
  // A new deployment of the same name starts over.
  ASSERT_TRUE(Create(env.stub(), SmallSpec("gone")).ok());
}

// ---- Smoothing ----------------------------------------------------------------------------------

TEST(PlannerSmoothingTest, EmaMatchesHandComputedValuesInEveryArrivalOrder) {
  PlannerEnv env;
  // Four ranks, one layer, four experts. Step 0: ranks 0 and 1 route 4 tokens to experts 0 and 1;
  // step 1: ranks 2 and 3 route 8 to experts 2 and 3. Half-life 1 step: at step 1 the weights are
  // 1 (step 1) and 1/2 (step 0), sum 3/2, so the EMA is [2, 2, 8, 8] / 1.5.
  const std::vector<double> expected = {4.0 / 3, 4.0 / 3, 16.0 / 3, 16.0 / 3};
  std::vector<int> order = {0, 1, 2, 3};
  int permutation = 0;
  do {
    const std::string name = absl::StrCat("ema-", permutation++);
    v1::DeploymentSpec spec = Spec(name, 1, 4, 4, 4);
    spec.mutable_trigger()->set_interval_steps(0);
    spec.mutable_smoothing()->set_ema_half_life_steps(1);
    ASSERT_TRUE(Create(env.stub(), spec).ok());
    const std::vector<v1::LoadReport> reports = {
        Report(name, 0, 1, 0, 0, {{4, 0, 0, 0}}), Report(name, 1, 1, 0, 0, {{0, 4, 0, 0}}),
        Report(name, 2, 1, 1, 1, {{0, 0, 8, 0}}), Report(name, 3, 1, 1, 1, {{0, 0, 0, 8}})};
    for (const int i : order) ASSERT_TRUE(SendReports(env.stub(), {reports[i]}).ok());
    EXPECT_THAT(Smoothed(env.stub(), name), Pointwise(DoubleNear(1e-12), expected)) << name;
  } while (std::next_permutation(order.begin(), order.end()));
  EXPECT_EQ(permutation, 24);
}

TEST(PlannerSmoothingTest, LateReportsOfOtherRanksGiveTheSameResult) {
  PlannerEnv env;
  // Rank 1's reports arrive after rank 0 already reported steps far ahead.
  for (const bool rank1_first : {true, false}) {
    const std::string name = rank1_first ? "early" : "late";
    v1::DeploymentSpec spec = SmallSpec(name);
    spec.mutable_smoothing()->set_ema_half_life_steps(3);
    ASSERT_TRUE(Create(env.stub(), spec).ok());
    std::vector<v1::LoadReport> rank0, rank1;
    for (int s = 0; s < 10; ++s) {
      rank0.push_back(Report(name, 0, s + 1, 10 * s, 10 * s + 9, {{1.0 * s, 2, 0, 3}}));
      rank1.push_back(Report(name, 1, s + 1, 5 * s, 5 * s + 4, {{0, 1, 7.0 * s, 1}}));
    }
    if (rank1_first) {
      ASSERT_TRUE(SendReports(env.stub(), rank1).ok());
      ASSERT_TRUE(SendReports(env.stub(), rank0).ok());
    } else {
      ASSERT_TRUE(SendReports(env.stub(), rank0).ok());
      ASSERT_TRUE(SendReports(env.stub(), rank1).ok());
    }
  }
  const auto early = Smoothed(env.stub(), "early");
  const auto late = Smoothed(env.stub(), "late");
  ASSERT_EQ(early.size(), 4u);
  for (size_t i = 0; i < early.size(); ++i) {
    EXPECT_NEAR(early[i], late[i], 1e-12 * std::max(1.0, std::abs(early[i])));
  }
}

TEST(PlannerSmoothingTest, WindowIsTheMeanOfTheLastSteps) {
  PlannerEnv env;
  v1::DeploymentSpec spec = Spec("w", 1, 2, 2, 1);
  spec.set_policy("contiguous");
  spec.mutable_trigger()->set_interval_steps(0);
  spec.mutable_smoothing()->set_window_steps(2);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  ASSERT_TRUE(SendReports(env.stub(),
                          {Report("w", 0, 1, 0, 0, {{10, 0}}), Report("w", 0, 2, 1, 1, {{0, 10}})})
                  .ok());
  // Steps 0 and 1: [10, 10] / 2.
  EXPECT_THAT(Smoothed(env.stub(), "w"), ElementsAre(5, 5));
  ASSERT_TRUE(SendReports(env.stub(), {Report("w", 0, 3, 2, 2, {{6, 6}})}).ok());
  // Steps 1 and 2: [6, 16] / 2.
  EXPECT_THAT(Smoothed(env.stub(), "w"), ElementsAre(3, 8));
  // A report over steps 3..6 spreads 8 tokens over 4 steps: steps 5 and 6 hold [4, 0] in all.
  ASSERT_TRUE(SendReports(env.stub(), {Report("w", 0, 4, 3, 6, {{8, 0}})}).ok());
  EXPECT_THAT(Smoothed(env.stub(), "w"), ElementsAre(2, 0));
  auto load = GetLoad(env.stub(), "w");
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(load->steps_seen(), 7);
  EXPECT_EQ(load->first_step(), 0);
  EXPECT_EQ(load->last_step(), 6);
  EXPECT_EQ(load->plan_version(), 1);
}

TEST(PlannerSmoothingTest, ManyRanksReportingConcurrentlyAddUp) {
  PlannerEnv env;
  static constexpr int kRanks = 16;
  static constexpr int kSteps = 40;
  v1::DeploymentSpec spec = Spec("many", 2, 8, 16, kRanks);
  spec.set_policy("contiguous");
  spec.mutable_trigger()->set_interval_steps(0);
  spec.mutable_smoothing()->set_window_steps(64);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  std::vector<std::thread> ranks;
  for (int r = 0; r < kRanks; ++r) {
    ranks.emplace_back([&env, r] {
      std::vector<v1::LoadReport> reports;
      for (int s = 0; s < kSteps; ++s) {
        reports.push_back(Report("many", r, s + 1, s, s,
                                 {std::vector<double>(8, r + 1.0), std::vector<double>(8, 1.0)}));
      }
      auto summary = SendReports(env.stub(), reports);
      ASSERT_TRUE(summary.ok()) << summary.status();
      EXPECT_EQ(summary->accepted(), kSteps);
      EXPECT_EQ(summary->last_sequence(), kSteps);
    });
  }
  for (std::thread& t : ranks) t.join();
  // Every step: layer 0 gets 1 + 2 + … + 16 = 136 per expert, layer 1 gets 16.
  std::vector<double> expected(8, 136.0);
  expected.insert(expected.end(), 8, 16.0);
  EXPECT_THAT(Smoothed(env.stub(), "many"), Pointwise(DoubleNear(1e-9), expected));
  EXPECT_THAT(env.MetricsText(),
              HasSubstr("eplb_reports_total{deployment=\"many\",result=\"accepted\"} 640"));
}

TEST(PlannerSmoothingTest, LocalSlotCountsAreMappedThroughThePlanVersion) {
  PlannerEnv env;
  v1::DeploymentSpec spec = Spec("slots", 1, 4, 6, 2);
  spec.set_policy("contiguous");
  spec.mutable_trigger()->set_interval_steps(0);
  spec.mutable_smoothing()->set_window_steps(1);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  auto plan = GetPlan(env.stub(), "slots");
  ASSERT_TRUE(plan.ok());
  v1::LoadReport report = Report("slots", 1, 1, 0, 0, {{1, 10, 100}});
  report.set_counts_kind(v1::LoadReport::LOCAL_SLOT);
  ASSERT_TRUE(SendReports(env.stub(), {report}).ok());
  std::vector<double> expected(4, 0.0);
  for (int k = 0; k < 3; ++k) expected[plan->map().phy2log(3 + k)] += report.layers(0).counts(k);
  EXPECT_THAT(Smoothed(env.stub(), "slots"), Pointwise(DoubleNear(0), expected));
}

// A report split over layer ranges (what LoadReporter sends when the whole would exceed the
// request limit) counts exactly as the whole, in logical and in local-slot counts.
TEST(PlannerSmoothingTest, ReportsOverLayerRangesAddUpToTheWholeReport) {
  PlannerEnv env;
  for (const std::string name : {"whole", "parts"}) {
    v1::DeploymentSpec spec = Spec(name, 3, 4, 6, 2);
    spec.set_policy("contiguous");
    spec.mutable_trigger()->set_interval_steps(0);
    spec.mutable_smoothing()->set_window_steps(1);
    ASSERT_TRUE(Create(env.stub(), spec).ok());
  }
  const std::vector<std::vector<double>> logical = {{1, 2, 3, 4}, {5, 6, 7, 8}, {9, 10, 11, 12}};
  v1::LoadReport slots = Report("whole", 1, 2, 0, 0, {{1, 10, 100}, {2, 20, 200}, {3, 30, 300}});
  slots.set_counts_kind(v1::LoadReport::LOCAL_SLOT);
  ASSERT_TRUE(SendReports(env.stub(), {Report("whole", 0, 1, 0, 0, logical), slots}).ok());

  v1::LoadReport slots_tail = Report("parts", 1, 3, 0, 0, {{2, 20, 200}, {3, 30, 300}});
  slots_tail.set_counts_kind(v1::LoadReport::LOCAL_SLOT);
  v1::LoadReport slots_head = Report("parts", 1, 4, 0, 0, {{1, 10, 100}});
  slots_head.set_counts_kind(v1::LoadReport::LOCAL_SLOT);
  auto summary = SendReports(
      env.stub(), {Report("parts", 0, 1, 0, 0, {logical[0]}),
                   WithFirstLayer(Report("parts", 0, 2, 0, 0, {logical[1], logical[2]}), 1),
                   WithFirstLayer(slots_tail, 1), slots_head});
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->accepted(), 4);
  const std::vector<double> whole = Smoothed(env.stub(), "whole");
  EXPECT_THAT(whole, ::testing::Contains(::testing::Gt(100.0)));  // the slot counts are in
  EXPECT_THAT(Smoothed(env.stub(), "parts"), Pointwise(DoubleNear(1e-12), whole));
  // A part is a report of its own: the same sequence with another range is a different report.
  auto reused = SendReports(
      env.stub(), {WithFirstLayer(Report("parts", 0, 2, 0, 0, {logical[0], logical[1]}), 0)});
  EXPECT_EQ(Reason(reused.status()), v1::SEQUENCE_REUSED) << reused.status();
}

// ---- Reports: bad input -------------------------------------------------------------------------

TEST(PlannerReportTest, BadReportsAreRefusedAndChangeNothing) {
  server::PlannerServerOptions options;
  options.max_request_bytes = 1 << 20;
  PlannerEnv env(options);
  v1::DeploymentSpec spec = SmallSpec("d");
  spec.set_plan_history(2);
  spec.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  ASSERT_TRUE(SendReports(env.stub(), {Report("d", 0, 5, 0, 9, {{1, 2, 3, 4}})}).ok());
  // Versions 2 and 3: version 1 is pruned (history 2).
  ASSERT_TRUE(Rebalance(env.stub(), "d").ok());
  ASSERT_TRUE(Rebalance(env.stub(), "d").ok());
  auto before = GetLoad(env.stub(), "d");
  ASSERT_TRUE(before.ok());
  const std::string metrics_before = env.MetricsText();

  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  struct Case {
    v1::LoadReport report;
    absl::StatusCode code;
    v1::ErrorReason reason;
    std::string message;
  };
  const std::vector<Case> cases = {
      {Report("nope", 0, 6, 10, 10, {{1, 1, 1, 1}}, 3), absl::StatusCode::kNotFound,
       v1::DEPLOYMENT_NOT_FOUND, "deployment \"nope\" not found"},
      {Report("d", 2, 6, 10, 10, {{1, 1, 1, 1}}, 3), absl::StatusCode::kInvalidArgument,
       v1::UNKNOWN_RANK, "rank = 2 is out of range [0, 1]"},
      {Report("d", -1, 6, 10, 10, {{1, 1, 1, 1}}, 3), absl::StatusCode::kInvalidArgument,
       v1::UNKNOWN_RANK, "rank = -1 is out of range [0, 1]"},
      {Report("d", 0, 6, 10, 10, {{1, 1, 1, 1}, {1, 1, 1, 1}}, 3),
       absl::StatusCode::kInvalidArgument, v1::MALFORMED_COUNTS,
       "layers has 2 entries, more than the 1 from first_layer 0 to num_layers 1"},
      {Report("d", 0, 6, 10, 10, {}, 3), absl::StatusCode::kInvalidArgument,
       v1::MALFORMED_COUNTS, "layers has no entries, expected at least 1"},
      {WithFirstLayer(Report("d", 0, 6, 10, 10, {{1, 1, 1, 1}}, 3), 1),
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "first_layer = 1 is out of range [0, 0]"},
      {WithFirstLayer(Report("d", 0, 6, 10, 10, {{1, 1, 1, 1}}, 3), -1),
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "first_layer = -1 is out of range [0, 0]"},
      {Report("d", 0, 6, 10, 10, {{1, 1, 1}}, 3), absl::StatusCode::kInvalidArgument,
       v1::MALFORMED_COUNTS, "layers[0].counts has 3 entries, expected 4 (num_logical_experts)"},
      {Report("d", 0, 6, 10, 10, {{1, -1, 1, 1}}, 3), absl::StatusCode::kInvalidArgument,
       v1::MALFORMED_COUNTS, "layers[0].counts[1] = -1 must be a finite count in [0, 2^53]"},
      {Report("d", 0, 6, 10, 10, {{1, 1, nan, 1}}, 3), absl::StatusCode::kInvalidArgument,
       v1::MALFORMED_COUNTS, "layers[0].counts[2] = nan must be a finite count in [0, 2^53]"},
      {Report("d", 0, 6, 10, 10, {{inf, 1, 1, 1}}, 3), absl::StatusCode::kInvalidArgument,
       v1::MALFORMED_COUNTS, "layers[0].counts[0] = inf must be a finite count in [0, 2^53]"},
      {Report("d", 0, 5, 10, 10, {{1, 1, 1, 1}}, 3), absl::StatusCode::kInvalidArgument,
       v1::SEQUENCE_REUSED, "sequence 5 of rank 0 was already accepted with different counts"},
      {Report("d", 0, 0, 10, 10, {{1, 1, 1, 1}}, 3), absl::StatusCode::kInvalidArgument,
       v1::FIELD_OUT_OF_RANGE, "sequence = 0 is out of range [1, 4611686018427387904]"},
      {Report("d", 0, 6, 10, 9, {{1, 1, 1, 1}}, 3), absl::StatusCode::kInvalidArgument,
       v1::FIELD_OUT_OF_RANGE, "last_step = 9 is out of range [10, 1000009]"},
      {Report("d", 0, 6, int64_t{1} << 62, int64_t{1} << 62, {{1, 1, 1, 1}}, 3),
       absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
       "first_step = 4611686018427387904 is out of range [0, 4611686018427387903]"},
      {Report("d", 0, 6, 10, 10, {{1, 1, 1, 1}}, 1), absl::StatusCode::kFailedPrecondition,
       v1::STALE_PLAN_VERSION, "plan_version 1 is no longer retained (oldest retained: 2)"},
      {Report("d", 0, 6, 10, 10, {{1, 1, 1, 1}}, 9), absl::StatusCode::kNotFound,
       v1::PLAN_NOT_FOUND, "plan_version 9 was never published (latest: 3)"},
  };
  for (const Case& c : cases) {
    auto summary = SendReports(env.stub(), {c.report});
    EXPECT_EQ(summary.status().code(), c.code) << summary.status();
    EXPECT_EQ(Reason(summary.status()), c.reason) << summary.status();
    EXPECT_EQ(summary.status().message(), c.message);
  }
  // Oversize: 200,000 counts (1.6 MB) against a 1 MiB limit.
  auto oversize =
      SendReports(env.stub(), {Report("d", 0, 6, 10, 10, {std::vector<double>(200'000, 1.0)}, 3)});
  EXPECT_EQ(oversize.status().code(), absl::StatusCode::kResourceExhausted) << oversize.status();

  auto after = GetLoad(env.stub(), "d");
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(MessageDifferencer::Equals(*before, *after));
  EXPECT_THAT(env.MetricsText(),
              HasSubstr("eplb_reports_total{deployment=\"d\",result=\"MALFORMED_COUNTS\"} 6"));
  EXPECT_THAT(env.MetricsText(),
              HasSubstr("eplb_reports_total{deployment=\"d\",result=\"accepted\"} 1"));
}

// Waits (polling, up to 20 s of real time) until the metrics contain `text`; the planner's timer
// publishes the read budget's state at each advance of the fake clock.
bool AwaitMetric(PlannerEnv& env, const std::string& text) {
  for (int i = 0; i < 4000; ++i) {
    env.clock().Advance(absl::ZeroDuration());
    if (env.MetricsText().find(text) != std::string::npos) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return false;
}

// Streams opened and left idle hold the read budget (each reserves 3 × --max-request-bytes for
// its next message); a report behind them waits, then is counted once --report-read-timeout
// passes and the idle streams are cancelled.
TEST(PlannerReportTest, StreamsThatHoldTheReadBudgetIdleAreCancelledAfterTheTimeout) {
  server::PlannerServerOptions options;
  options.max_memory_bytes = int64_t{256} << 20;  // 64 MiB for messages in flight
  options.max_request_bytes = 1 << 20;            // 3.5 MiB a read: 18 at once
  options.report_read_timeout = absl::Seconds(30);
  PlannerEnv env(options);
  ASSERT_TRUE(Create(env.stub(), SmallSpec("d")).ok());
  grpc::GenericStub generic(env.channel());
  std::vector<std::unique_ptr<eplb::testing::RawStream>> idle;
  for (int i = 0; i < 18; ++i) {
    idle.push_back(std::make_unique<eplb::testing::RawStream>(
        generic, "/eplb.v1.Planner/ReportLoad", absl::Seconds(60)));
    ASSERT_TRUE(idle.back()->started());
  }
  ASSERT_TRUE(AwaitMetric(env, "eplb_report_reads{state=\"reading\"} 18"));

  absl::StatusOr<v1::ReportSummary> summary;
  std::thread sender(
      [&] { summary = SendReports(env.stub(), {Report("d", 0, 1, 0, 9, {{1, 2, 3, 4}})}); });
  EXPECT_TRUE(AwaitMetric(env, "eplb_report_reads{state=\"waiting\"} 1"));
  env.clock().Advance(absl::Seconds(29));  // not yet
  EXPECT_TRUE(AwaitMetric(env, "eplb_report_reads{state=\"waiting\"} 1"));
  EXPECT_EQ(GetLoad(env.stub(), "d")->steps_seen(), 0);

  env.clock().Advance(absl::Seconds(2));
  sender.join();
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->accepted(), 1);
  EXPECT_EQ(GetLoad(env.stub(), "d")->steps_seen(), 10);
  for (auto& stream : idle) EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The timer counts the overdue reads once it has cancelled their streams, which can be after
  // the waiting report went through.
  EXPECT_TRUE(AwaitMetric(env, "eplb_report_reads_overdue_total 18"));
  EXPECT_TRUE(AwaitMetric(env, "eplb_report_reads{state=\"reading\"} 0"));
}

// A message that does not parse ends the stream with the error; the reports before it count.
TEST(PlannerReportTest, AnUnparseableMessageEndsTheStreamWithInvalidArgument) {
  PlannerEnv env;
  ASSERT_TRUE(Create(env.stub(), SmallSpec("d")).ok());
  grpc::GenericStub generic(env.channel());
  eplb::testing::RawStream call(generic, "/eplb.v1.Planner/ReportLoad");
  ASSERT_TRUE(call.started());
  const std::string good = Report("d", 0, 1, 0, 9, {{1, 2, 3, 4}}).SerializeAsString();
  const std::string bad = "\xff\xff\xff\xff";  // a truncated varint tag
  for (const std::string& bytes : {good, bad, good}) {
    if (!call.Write(bytes)) break;  // the stream may already be over
  }
  call.WritesDone();
  const grpc::Status grpc_status = call.Finish();
  const absl::Status status = FromGrpcStatus(grpc_status);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "message 2 of the stream does not parse as eplb.v1.LoadReport (it is not a "
            "well-formed protobuf message); the 1 before it were counted");
  EXPECT_EQ(Reason(status), v1::MALFORMED_MESSAGE);
  auto load = GetLoad(env.stub(), "d");
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(load->steps_seen(), 10);  // the first report only
}

TEST(PlannerReportTest, ARetriedReportIsCountedOnce) {
  PlannerEnv env;
  v1::DeploymentSpec spec = SmallSpec("d");
  spec.mutable_smoothing()->set_window_steps(10);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  const v1::LoadReport report = Report("d", 0, 1, 0, 0, {{4, 0, 0, 0}});
  auto first = SendReports(env.stub(), {report, Report("d", 0, 2, 1, 1, {{0, 4, 0, 0}})});
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->accepted(), 2);
  const auto load = Smoothed(env.stub(), "d");
  auto retry = SendReports(env.stub(), {report});
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->accepted(), 0);
  EXPECT_EQ(retry->duplicates(), 1);
  EXPECT_EQ(retry->last_sequence(), 2);
  EXPECT_EQ(Smoothed(env.stub(), "d"), load);
  // A restarted worker (new session) counts from 1 again.
  v1::LoadReport restarted = Report("d", 0, 1, 2, 2, {{0, 0, 2, 0}});
  restarted.set_session(8);
  auto fresh = SendReports(env.stub(), {restarted});
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(fresh->accepted(), 1);
}

// Sequence numbers may arrive out of order (a report the planner lost when killed, sent again after
// newer ones): one never accepted is counted; beyond the 1024 remembered, an older one is refused,
// since it may have been counted and forgotten.
TEST(PlannerReportTest, OutOfOrderSequencesAreCountedOnceUntilTheyAreOlderThanTheRemembered) {
  PlannerEnv env;
  v1::DeploymentSpec spec = SmallSpec("d");
  spec.mutable_smoothing()->set_window_steps(100'000);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  auto newer = SendReports(env.stub(), {Report("d", 0, 5, 5, 5, {{1, 0, 0, 0}})});
  ASSERT_TRUE(newer.ok()) << newer.status();
  auto older = SendReports(env.stub(), {Report("d", 0, 3, 3, 3, {{0, 1, 0, 0}}),
                                        Report("d", 0, 3, 3, 3, {{0, 1, 0, 0}})});
  ASSERT_TRUE(older.ok()) << older.status();
  EXPECT_EQ(older->accepted(), 1);
  EXPECT_EQ(older->duplicates(), 1);
  EXPECT_EQ(older->last_sequence(), 5);  // still the highest
  // Steps 3 and 5: [1, 1, 0, 0] over steps 3 … 5.
  EXPECT_THAT(Smoothed(env.stub(), "d"),
              Pointwise(DoubleNear(1e-12), std::vector<double>{1.0 / 3, 1.0 / 3, 0, 0}));

  // 1023 more: sequence 5, accepted first, is forgotten; 3, accepted after it, is still
  // remembered (so "older than the oldest remembered" would let 5 in again).
  std::vector<v1::LoadReport> many;
  for (int64_t sequence = 6; sequence < 6 + 1023; ++sequence) {
    many.push_back(Report("d", 0, sequence, 10 + sequence, 10 + sequence, {{0, 0, 1, 0}}));
  }
  ASSERT_TRUE(SendReports(env.stub(), many).ok());
  const auto before = Smoothed(env.stub(), "d");
  auto forgotten = SendReports(env.stub(), {Report("d", 0, 5, 5, 5, {{1, 0, 0, 0}})});
  EXPECT_EQ(Reason(forgotten.status()), v1::SEQUENCE_OUT_OF_ORDER) << forgotten.status();
  EXPECT_EQ(forgotten.status().message(),
            "sequence 5 of rank 0 is not among the last 1024 accepted, and sequences up to 5 are "
            "forgotten");
  auto never = SendReports(env.stub(), {Report("d", 0, 4, 4, 4, {{0, 0, 0, 1}})});
  EXPECT_EQ(Reason(never.status()), v1::SEQUENCE_OUT_OF_ORDER) << never.status();
  auto remembered = SendReports(env.stub(), {Report("d", 0, 3, 3, 3, {{0, 1, 0, 0}})});
  ASSERT_TRUE(remembered.ok()) << remembered.status();
  EXPECT_EQ(remembered->duplicates(), 1);
  // A restart keeps what was forgotten (the checkpoint holds it).
  env.Restart();
  auto restarted = SendReports(env.stub(), {Report("d", 0, 5, 5, 5, {{1, 0, 0, 0}})});
  EXPECT_EQ(Reason(restarted.status()), v1::SEQUENCE_OUT_OF_ORDER) << restarted.status();
  EXPECT_EQ(Smoothed(env.stub(), "d"), before);
}

// ---- Triggers and rebalancing -------------------------------------------------------------------

// Load on experts 0 and 1 only: the contiguous plan puts both on rank 0.
std::vector<v1::LoadReport> SkewedReports(const std::string& d, int64_t first_step,
                                          int64_t last_step, int64_t sequence) {
  return {Report(d, 0, sequence, first_step, last_step, {{10, 10, 1, 1}}),
          Report(d, 1, sequence, first_step, last_step, {{10, 10, 1, 1}})};
}

TEST(PlannerTriggerTest, RebalancesEveryIntervalOnceAllRanksReported) {
  PlannerEnv env;
  v1::DeploymentSpec spec = SmallSpec("t");
  spec.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
  spec.mutable_trigger()->set_interval_steps(10);
  ASSERT_TRUE(Create(env.stub(), spec).ok());

  // Rank 0 alone reports 20 steps: rank 1 has not reported, so nothing is due.
  ASSERT_TRUE(SendReports(env.stub(), {Report("t", 0, 1, 0, 19, {{10, 10, 1, 1}})}).ok());
  // A dry run is queued behind any trigger evaluation on the planner's worker: a barrier.
  ASSERT_TRUE(Rebalance(env.stub(), "t", /*dry_run=*/true).ok());
  EXPECT_EQ(ListPlans(env.stub(), "t")->size(), 1u);

  // Rank 1 reports steps 0..4: the frontier is 4, five steps of data, still not due.
  ASSERT_TRUE(SendReports(env.stub(), {Report("t", 1, 1, 0, 4, {{10, 10, 1, 1}})}).ok());
  ASSERT_TRUE(Rebalance(env.stub(), "t", true).ok());
  EXPECT_EQ(ListPlans(env.stub(), "t")->size(), 1u);

  // Steps 5..9 complete ten steps on both ranks: version 2.
  ASSERT_TRUE(SendReports(env.stub(), {Report("t", 1, 2, 5, 9, {{10, 10, 1, 1}})}).ok());
  ASSERT_TRUE(Rebalance(env.stub(), "t", true).ok());
  auto plans = ListPlans(env.stub(), "t");
  ASSERT_EQ(plans->size(), 2u);
  const v1::Plan& plan = plans->front();
  EXPECT_EQ(plan.version(), 2);
  EXPECT_EQ(plan.parent_version(), 1);
  EXPECT_EQ(plan.reason(), v1::TRIGGER);
  EXPECT_EQ(plan.state(), v1::COMMITTED);
  EXPECT_NEAR(plan.metrics().balancedness_before(), 11.0 / 20.0, 1e-6);
  EXPECT_GT(plan.metrics().balancedness_after(), 0.99);
  // Two slots per rank: 10 + 1 on each rank meets the count bound (the pairing 10 + 1, 10 + 1).
  EXPECT_NEAR(plan.metrics().max_over_count_bound(), 1.0, 1e-6);
}

TEST(PlannerTriggerTest, MinGainAndMinStepsHoldBackTheTrigger) {
  PlannerEnv env;
  v1::DeploymentSpec gain = SmallSpec("gain");
  gain.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
  gain.mutable_trigger()->set_interval_steps(10);
  gain.mutable_trigger()->set_min_gain(0.5);  // the candidate gains 0.45
  v1::DeploymentSpec steps = gain;
  steps.set_name("steps");
  steps.mutable_trigger()->set_min_gain(0);
  steps.mutable_trigger()->set_min_steps(30);
  ASSERT_TRUE(Create(env.stub(), gain).ok());
  ASSERT_TRUE(Create(env.stub(), steps).ok());
  for (const std::string d : {"gain", "steps"}) {
    ASSERT_TRUE(SendReports(env.stub(), SkewedReports(d, 0, 19, 1)).ok());
    ASSERT_TRUE(Rebalance(env.stub(), d, true).ok());
    EXPECT_EQ(ListPlans(env.stub(), d)->size(), 1u) << d;
  }
  // 30 steps seen: "steps" rebalances; "gain" still does not.
  for (const std::string d : {"gain", "steps"}) {
    ASSERT_TRUE(SendReports(env.stub(), SkewedReports(d, 20, 29, 2)).ok());
    ASSERT_TRUE(Rebalance(env.stub(), d, true).ok());
  }
  EXPECT_EQ(ListPlans(env.stub(), "gain")->size(), 1u);
  EXPECT_EQ(ListPlans(env.stub(), "steps")->size(), 2u);
  // On demand, min_gain does not apply.
  auto forced = Rebalance(env.stub(), "gain");
  ASSERT_TRUE(forced.ok()) << forced.status();
  EXPECT_EQ(forced->version(), 2);
  EXPECT_EQ(forced->reason(), v1::ON_DEMAND);
}

TEST(PlannerTriggerTest, DryRunReturnsTheCandidateAndPublishesNothing) {
  PlannerEnv env;
  v1::DeploymentSpec spec = SmallSpec("dry");
  spec.set_bytes_per_expert(1000);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  ASSERT_TRUE(SendReports(env.stub(), SkewedReports("dry", 0, 9, 1)).ok());
  auto candidate = Rebalance(env.stub(), "dry", /*dry_run=*/true);
  ASSERT_TRUE(candidate.ok()) << candidate.status();
  EXPECT_EQ(candidate->version(), 0);
  EXPECT_EQ(candidate->parent_version(), 1);
  EXPECT_NEAR(candidate->metrics().balancedness_before(), 0.55, 1e-6);
  EXPECT_GT(candidate->metrics().balancedness_after(), 0.99);
  EXPECT_GT(candidate->metrics().experts_moved(), 0);
  EXPECT_EQ(candidate->metrics().bytes_to_move(), candidate->metrics().experts_moved() * 1000);
  auto map = ExpertMapFromProto(candidate->map());
  ASSERT_TRUE(map.ok());
  EXPECT_EQ(candidate->map_hash(), map->Hash());
  EXPECT_EQ(ListPlans(env.stub(), "dry")->size(), 1u);
  auto deployment = GetPlan(env.stub(), "dry");
  EXPECT_EQ(deployment->version(), 1);
}

}  // namespace
}  // namespace eplb
