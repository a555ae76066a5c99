// PlanWatcher against a real planner on 127.0.0.1:0: a deleted deployment stops its watchers with
// NOT_FOUND (they no longer reconnect forever), a deployment deleted and created again while a
// watcher was away is watched from its first version, and a load reporter lives through both.
#include "client/plan_watcher.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <vector>

#include "absl/synchronization/notification.h"
#include "client/load_reporter.h"
#include "tests/client/connect.h"
#include "tests/server/test_env.h"

namespace eplb::client {
namespace {

using ::eplb::testing::Create;
using ::eplb::testing::GetLoad;
using ::eplb::testing::PlannerEnv;
using ::eplb::testing::Rebalance;
using ::eplb::testing::Report;
using ::eplb::testing::SendReports;
using ::eplb::testing::Spec;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(30);

// One layer, four experts in six slots, one rank; plans on demand.
void CreateDeployment(PlannerEnv& env) {
  v1::DeploymentSpec spec = Spec("w", 1, 4, 6, 1);
  spec.set_policy("deepseek");
  spec.mutable_trigger()->set_interval_steps(0);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
}

std::unique_ptr<PlannerClient> Client(PlannerEnv& env) {
  return ::eplb::testing::Connect(env, {.rpc_timeout = absl::Seconds(5)});
}

// What a watcher delivered and how it stopped, for the test thread to wait on.
class Recorder {
 public:
  void OnPlan(const AgentPlan& plan) {
    absl::MutexLock lock(&mu_);
    plans_.push_back(plan);
  }
  void OnError(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    EXPECT_TRUE(error_.ok()) << "on_error called twice";
    error_ = status;
    stopped_ = true;
  }
  // Waits until `done` holds for the plans delivered so far.
  bool WaitFor(const std::function<bool(const std::vector<AgentPlan>&)>& done) {
    absl::MutexLock lock(&mu_);
    const auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done(plans_); };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), kWait);
  }
  bool WaitStopped() {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&stopped_), kWait);
  }
  absl::Status error() {
    absl::MutexLock lock(&mu_);
    return error_;
  }
  size_t num_plans() {
    absl::MutexLock lock(&mu_);
    return plans_.size();
  }

 private:
  absl::Mutex mu_;
  std::vector<AgentPlan> plans_ ABSL_GUARDED_BY(mu_);
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

std::unique_ptr<PlanWatcher> StartWatcher(PlannerClient* client, Recorder& recorder) {
  auto watcher = PlanWatcher::Create(
      client, {.deployment = "w",
               .rank = 0,
               .initial_backoff = absl::Milliseconds(5),
               .max_backoff = absl::Milliseconds(50),
               .on_error = [&recorder](const absl::Status& s) { recorder.OnError(s); }});
  EXPECT_TRUE(watcher.ok()) << watcher.status();
  (*watcher)->Start([&recorder](const AgentPlan& plan) { recorder.OnPlan(plan); });
  return *std::move(watcher);
}

bool HasVersion(const std::vector<AgentPlan>& plans, int64_t version, PlanStatus status) {
  for (const AgentPlan& p : plans) {
    if (p.version == version && p.status == status) return true;
  }
  return false;
}

TEST(PlanWatcherTest, ADeletedDeploymentStopsItsWatchersAndReportersCarryOn) {
  PlannerEnv env;
  CreateDeployment(env);
  auto client = Client(env);
  Recorder recorder;
  auto watcher = StartWatcher(client.get(), recorder);
  auto reporter = LoadReporter::Create(client.get(), {.deployment = "w",
                                                      .num_layers = 1,
                                                      .num_experts = 4,
                                                      .flush_every_steps = 2,
                                                      .initial_backoff = absl::Milliseconds(5),
                                                      .max_backoff = absl::Milliseconds(50)});
  ASSERT_TRUE(reporter.ok()) << reporter.status();
  ASSERT_TRUE(recorder.WaitFor([](const std::vector<AgentPlan>& plans) {
    return HasVersion(plans, 1, PlanStatus::kCommitted);
  }));
  ASSERT_TRUE((*reporter)->AddStep(0, 1, std::vector<double>{1, 1, 1, 1}).ok());
  ASSERT_TRUE((*reporter)->AddStep(1, 1, std::vector<double>{1, 1, 1, 1}).ok());
  ASSERT_TRUE((*reporter)->Flush(kWait).ok());

  ASSERT_TRUE(client->DeleteDeployment("w").ok());
  ASSERT_TRUE(recorder.WaitStopped());
  EXPECT_EQ(recorder.error().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(recorder.error().message(), HasSubstr("\"w\""));
  const PlanWatcher::Stats stats = watcher->stats();
  EXPECT_EQ(stats.stopped_by, recorder.error());
  EXPECT_FALSE(stats.connected);

  // Steps reported while the deployment is gone wait in the reporter and reach the deployment
  // created again under the same name; the stopped watcher delivers nothing more.
  const size_t delivered = recorder.num_plans();
  ASSERT_TRUE((*reporter)->AddStep(2, 1, std::vector<double>{2, 2, 2, 2}).ok());
  ASSERT_TRUE((*reporter)->AddStep(3, 1, std::vector<double>{2, 2, 2, 2}).ok());
  CreateDeployment(env);
  ASSERT_TRUE((*reporter)->Flush(kWait).ok());
  auto load = GetLoad(env.stub(), "w");
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->steps_seen(), 2);
  watcher->Stop();
  EXPECT_EQ(recorder.num_plans(), delivered);

  // A new watcher watches the new deployment.
  Recorder again;
  auto second = StartWatcher(client.get(), again);
  EXPECT_TRUE(again.WaitFor([](const std::vector<AgentPlan>& plans) {
    return HasVersion(plans, 1, PlanStatus::kCommitted);
  }));
  EXPECT_TRUE(second->stats().stopped_by.ok());
}

// Version 2: skewed load (two reports), a rebalance, and this (only) rank's STAGED ack commits it.
void CommitVersion2(PlannerEnv& env, PlanWatcher& watcher, Recorder& recorder) {
  std::vector<v1::LoadReport> reports = {Report("w", 0, 1, 0, 9, {{1, 1, 1, 100}}),
                                         Report("w", 0, 2, 10, 19, {{1, 1, 1, 100}})};
  ASSERT_TRUE(SendReports(env.stub(), reports).ok());
  auto v2 = Rebalance(env.stub(), "w");
  ASSERT_TRUE(v2.ok()) << v2.status();
  ASSERT_EQ(v2->version(), 2);
  ASSERT_TRUE(recorder.WaitFor([](const std::vector<AgentPlan>& plans) {
    return HasVersion(plans, 2, PlanStatus::kPending);
  }));
  watcher.Ack({.version = 2, .kind = AckKind::kStaged, .map_hash = v2->map_hash()});
  ASSERT_TRUE(recorder.WaitFor([](const std::vector<AgentPlan>& plans) {
    return HasVersion(plans, 2, PlanStatus::kCommitted);
  }));
}

TEST(PlanWatcherTest, ADeploymentCreatedAgainWhileAwayIsWatchedFromItsFirstVersion) {
  PlannerEnv env;
  CreateDeployment(env);
  // The same deployment, freshly created (version 1 only), in a state directory of its own.
  PlannerEnv fresh;
  CreateDeployment(fresh);
  fresh.Stop();

  auto client = Client(env);
  Recorder recorder;
  auto watcher = StartWatcher(client.get(), recorder);
  ASSERT_NO_FATAL_FAILURE(CommitVersion2(env, *watcher, recorder));

  // While the planner is down, its deployment is replaced by the fresh one (deleted and created
  // again): the watcher comes back knowing version 2, which the new deployment never had.
  env.Stop();
  for (const auto& entry : std::filesystem::directory_iterator(env.state_dir())) {
    std::filesystem::remove_all(entry.path());
  }
  std::filesystem::copy(fresh.state_dir(), env.state_dir(),
                        std::filesystem::copy_options::recursive);
  env.Start();
  EXPECT_TRUE(recorder.WaitFor([](const std::vector<AgentPlan>& plans) {
    return plans.back().version == 1 && plans.back().status == PlanStatus::kCommitted &&
           HasVersion(plans, 2, PlanStatus::kCommitted);
  }));
  const PlanWatcher::Stats stats = watcher->stats();
  EXPECT_TRUE(stats.stopped_by.ok()) << stats.stopped_by;
  EXPECT_GE(stats.reconnects, 1);
}

TEST(PlanWatcherTest, AfterAPlannerRestartPlansStillArriveAsDeltas) {
  PlannerEnv env;
  CreateDeployment(env);
  auto client = Client(env);
  Recorder recorder;
  auto watcher = StartWatcher(client.get(), recorder);
  ASSERT_NO_FATAL_FAILURE(CommitVersion2(env, *watcher, recorder));

  // The planner restarts; the watcher comes back knowing version 2, and version 3 arrives as the
  // layers that changed since, applied to the map the stream before held.
  env.Stop();
  env.Start();
  ASSERT_TRUE(SendReports(env.stub(), {Report("w", 0, 3, 20, 29, {{400, 1, 1, 1}}, 2)}).ok());
  auto v3 = Rebalance(env.stub(), "w");
  ASSERT_TRUE(v3.ok()) << v3.status();
  ASSERT_EQ(v3->version(), 3);
  ASSERT_TRUE(recorder.WaitFor([&](const std::vector<AgentPlan>& plans) {
    for (const AgentPlan& plan : plans) {
      if (plan.version == 3 && plan.status == PlanStatus::kPending) {
        return plan.map != nullptr && plan.map->Hash() == v3->map_hash();
      }
    }
    return false;
  }));
  const PlanWatcher::Stats stats = watcher->stats();
  EXPECT_GE(stats.reconnects, 1);
  EXPECT_EQ(stats.maps_whole, 1);  // version 1, on the first subscribe
  EXPECT_EQ(stats.maps_delta, 2);  // versions 2 and 3
  EXPECT_EQ(stats.maps_held, 1);   // version 2's commit
  EXPECT_EQ(stats.maps_fetched, 0);
}

TEST(PlanWatcherTest, AWatcherWithoutTheTokenStops) {
  server::PlannerServerOptions options;
  options.service.bearer_token = "s3cret-0123456789abcdef";
  PlannerEnv env(options);
  auto client = Client(env);  // no token
  Recorder recorder;
  auto watcher = StartWatcher(client.get(), recorder);
  ASSERT_TRUE(recorder.WaitStopped());
  EXPECT_EQ(recorder.error().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(watcher->stats().stopped_by, recorder.error());
  EXPECT_EQ(recorder.num_plans(), 0u);
}

TEST(PlanWatcherTest, AWatcherOfADeploymentThatDoesNotExistStops) {
  PlannerEnv env;
  auto client = Client(env);
  Recorder recorder;
  auto watcher = StartWatcher(client.get(), recorder);
  ASSERT_TRUE(recorder.WaitStopped());
  EXPECT_EQ(recorder.error().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(recorder.num_plans(), 0u);
}

}  // namespace
}  // namespace eplb::client
