// LoadReporter against a real planner on 127.0.0.1:0: counts arrive exactly once, across a
// planner restart and an outage long enough to merge reports; bad input is refused.
#include "client/load_reporter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/client/connect.h"
#include "tests/server/test_env.h"

namespace eplb::client {
namespace {

using ::eplb::testing::Create;
using ::eplb::testing::GetLoad;
using ::eplb::testing::PlannerEnv;
using ::eplb::testing::Spec;
using ::testing::DoubleNear;
using ::testing::Pointwise;

// One layer, four experts, one rank; a window of 64 steps: the smoothed load is the mean per step
// over everything reported (as long as fewer than 64 steps were).
void CreateDeployment(PlannerEnv& env) {
  v1::DeploymentSpec spec = Spec("r", 1, 4, 4, 1);
  spec.set_policy("contiguous");
  spec.mutable_trigger()->set_interval_steps(0);
  spec.mutable_smoothing()->set_window_steps(64);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
}

std::unique_ptr<PlannerClient> Client(PlannerEnv& env) {
  return ::eplb::testing::Connect(env, {.rpc_timeout = absl::Seconds(5)});
}

LoadReporterOptions Options() {
  return {.deployment = "r",
          .rank = 0,
          .num_layers = 1,
          .num_experts = 4,
          .flush_every_steps = 4,
          .max_pending_reports = 3,
          .initial_backoff = absl::Milliseconds(5),
          .max_backoff = absl::Milliseconds(50)};
}

std::vector<double> Smoothed(PlannerEnv& env) {
  auto load = GetLoad(env.stub(), "r");
  EXPECT_TRUE(load.ok()) << load.status();
  return std::vector<double>(load->smoothed_load().begin(), load->smoothed_load().end());
}

TEST(LoadReporterTest, EveryStepIsCountedOnce) {
  PlannerEnv env;
  CreateDeployment(env);
  auto client = Client(env);
  LoadReporterOptions options = Options();
  options.max_pending_reports = 64;  // no merging here
  auto reporter = LoadReporter::Create(client.get(), options);
  ASSERT_TRUE(reporter.ok()) << reporter.status();
  for (int step = 0; step < 30; ++step) {
    ASSERT_TRUE((*reporter)->AddStep(step, 1, std::vector<double>{1, 2, 3, 4}).ok());
  }
  ASSERT_TRUE((*reporter)->Flush(absl::Seconds(30)).ok());
  // 30 steps of [1, 2, 3, 4]: the mean per step is [1, 2, 3, 4].
  EXPECT_THAT(Smoothed(env), Pointwise(DoubleNear(1e-12), std::vector<double>{1, 2, 3, 4}));
  const LoadReporter::Stats stats = (*reporter)->stats();
  EXPECT_EQ(stats.steps_added, 30);
  EXPECT_EQ(stats.reports_pending, 0);
  EXPECT_EQ(stats.reports_accepted, 8);  // 7 full reports of 4 steps and one of 2
  EXPECT_EQ(GetLoad(env.stub(), "r")->steps_seen(), 30);
}

TEST(LoadReporterTest, NothingIsLostAcrossAPlannerRestart) {
  PlannerEnv env;
  CreateDeployment(env);
  auto client = Client(env);
  auto reporter = LoadReporter::Create(client.get(), Options());
  ASSERT_TRUE(reporter.ok());
  for (int step = 0; step < 12; ++step) {
    ASSERT_TRUE((*reporter)->AddStep(step, 1, std::vector<double>{4, 0, 0, 4}).ok());
  }
  ASSERT_TRUE((*reporter)->Flush(absl::Seconds(30)).ok());
  env.Stop();  // the planner is down: 40 more steps queue up, and unsent reports get merged
  for (int step = 12; step < 52; ++step) {
    ASSERT_TRUE((*reporter)->AddStep(step, 1, std::vector<double>{4, 0, 0, 4}).ok());
  }
  const auto flush = (*reporter)->Flush(absl::Milliseconds(50));
  EXPECT_EQ(flush.code(), absl::StatusCode::kDeadlineExceeded) << flush;
  const LoadReporter::Stats outage = (*reporter)->stats();
  // Bounded: max_pending_reports + 2 (the batches sent before the outage was noticed stay apart).
  EXPECT_LE(outage.reports_pending, 5);
  EXPECT_GT(outage.reports_merged, 0);
  EXPECT_GT(outage.failed_attempts, 0);
  env.Start();  // same port, same state directory
  ASSERT_TRUE((*reporter)->Flush(absl::Seconds(30)).ok());
  // 52 steps of [4, 0, 0, 4], each counted once.
  EXPECT_THAT(Smoothed(env), Pointwise(DoubleNear(1e-9), std::vector<double>{4, 0, 0, 4}));
  EXPECT_EQ(GetLoad(env.stub(), "r")->steps_seen(), 52);
}

// Counts summed over step ranges (a GPU-side accumulator copied out every few steps) count as
// their steps: batches close once they span flush_every_steps steps, and the smoothed load is the
// per-step mean.
TEST(LoadReporterTest, CountsSummedOverStepRangesCountAsTheirSteps) {
  PlannerEnv env;
  CreateDeployment(env);
  auto client = Client(env);
  LoadReporterOptions options = Options();
  options.flush_every_steps = 10;
  options.max_pending_reports = 64;
  auto reporter = LoadReporter::Create(client.get(), options);
  ASSERT_TRUE(reporter.ok()) << reporter.status();
  const auto times = [](int n) { return std::vector<double>{1.0 * n, 2.0 * n, 3.0 * n, 4.0 * n}; };
  ASSERT_TRUE((*reporter)->AddSteps(0, 9, 1, times(10)).ok());   // a batch of its own
  ASSERT_TRUE((*reporter)->AddSteps(10, 14, 1, times(5)).ok());  // with the next: 10 steps
  ASSERT_TRUE((*reporter)->AddSteps(15, 19, 1, times(5)).ok());
  ASSERT_TRUE((*reporter)->AddStep(20, 1, times(1)).ok());
  EXPECT_EQ((*reporter)->AddSteps(22, 21, 1, times(1)).message(),
            "steps 22 to 21 must be 1 to 1000000 steps in order");
  EXPECT_EQ((*reporter)->AddSteps(20, 25, 1, times(6)).message(),
            "step 20 must be ≥ 0 and after step 20");
  EXPECT_EQ((*reporter)->AddSteps(21, 1'000'021, 1, times(1)).message(),
            "steps 21 to 1000021 must be 1 to 1000000 steps in order");
  ASSERT_TRUE((*reporter)->Flush(absl::Seconds(30)).ok());
  EXPECT_THAT(Smoothed(env), Pointwise(DoubleNear(1e-12), std::vector<double>{1, 2, 3, 4}));
  const LoadReporter::Stats stats = (*reporter)->stats();
  EXPECT_EQ(stats.steps_added, 21);
  EXPECT_EQ(stats.reports_accepted, 3);  // steps 0-9, 10-19, 20
  EXPECT_EQ(GetLoad(env.stub(), "r")->steps_seen(), 21);
}

// A batch larger than max_report_bytes goes as reports over layer ranges (3 of 2 layers here),
// each its own sequence number; through an outage whole batches are merged, and every step still
// counts exactly once in every layer.
TEST(LoadReporterTest, ABatchOverMaxReportBytesIsSentInPartsAndCountedAsTheWhole) {
  PlannerEnv env;
  constexpr int kLayers = 6, kExperts = 512;
  v1::DeploymentSpec spec = Spec("r", kLayers, kExperts, kExperts, 1);
  spec.set_policy("contiguous");
  spec.mutable_trigger()->set_interval_steps(0);
  spec.mutable_smoothing()->set_window_steps(64);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  auto client = Client(env);
  LoadReporterOptions options = Options();
  options.num_layers = kLayers;
  options.num_experts = kExperts;
  options.max_report_bytes = 2 * (8 * kExperts + 12) + 256;
  ASSERT_EQ(LayersPerReport(kExperts, options.max_report_bytes), 2);
  auto reporter = LoadReporter::Create(client.get(), options);
  ASSERT_TRUE(reporter.ok()) << reporter.status();
  std::vector<double> counts(kLayers * kExperts);
  for (size_t i = 0; i < counts.size(); ++i) counts[i] = static_cast<double>(i % 7);
  for (int step = 0; step < 8; ++step) ASSERT_TRUE((*reporter)->AddStep(step, 1, counts).ok());
  ASSERT_TRUE((*reporter)->Flush(absl::Seconds(30)).ok());
  EXPECT_EQ((*reporter)->stats().reports_accepted, 6);  // 2 batches × 3 parts

  env.Stop();
  for (int step = 8; step < 48; ++step) ASSERT_TRUE((*reporter)->AddStep(step, 1, counts).ok());
  EXPECT_EQ((*reporter)->Flush(absl::Milliseconds(50)).code(), absl::StatusCode::kDeadlineExceeded);
  const LoadReporter::Stats outage = (*reporter)->stats();
  EXPECT_LE(outage.reports_pending, 3 * 5);  // max_pending_reports + 2 batches
  EXPECT_GT(outage.reports_merged, 0);
  EXPECT_EQ(outage.reports_merged % 3, 0);  // whole batches
  env.Start();
  ASSERT_TRUE((*reporter)->Flush(absl::Seconds(30)).ok());
  EXPECT_THAT(Smoothed(env), Pointwise(DoubleNear(1e-9), counts));
  EXPECT_EQ(GetLoad(env.stub(), "r")->steps_seen(), 48);
}

TEST(ReportPartsTest, SplitByLayersCoversEveryLayerOnceWithinTheLimit) {
  v1::LoadReport whole;
  whole.set_deployment("d");
  whole.set_sequence(10);
  whole.set_first_layer(3);
  for (int l = 0; l < 7; ++l) whole.add_layers()->mutable_counts()->Resize(100, l + 1.0);
  const std::vector<v1::LoadReport> fits = SplitByLayers(whole, 1 << 20);
  ASSERT_EQ(fits.size(), 1u);
  EXPECT_EQ(fits[0].SerializeAsString(), whole.SerializeAsString());

  const int64_t limit = 3 * (8 * 100 + 12) + 256;  // 3 layers a part
  const std::vector<v1::LoadReport> parts = SplitByLayers(whole, limit);
  ASSERT_EQ(parts.size(), 3u);
  int next_layer = 3;
  for (size_t i = 0; i < parts.size(); ++i) {
    EXPECT_LE(static_cast<int64_t>(parts[i].ByteSizeLong()), limit);
    EXPECT_EQ(parts[i].sequence(), 10 + static_cast<int64_t>(i));
    EXPECT_EQ(parts[i].deployment(), "d");
    EXPECT_EQ(parts[i].first_layer(), next_layer);
    for (const v1::LayerCounts& layer : parts[i].layers()) {
      EXPECT_EQ(layer.counts(0), next_layer - 2);  // layer l of whole holds l + 1
      ++next_layer;
    }
  }
  EXPECT_EQ(next_layer, 10);
  // A layer is never split, however small the limit.
  EXPECT_EQ(SplitByLayers(whole, 16).size(), 7u);
}

// A long outage with many failed attempts: each attempt retries only what an earlier one sent, so
// newer batches stay unsent and are merged, and the queue stays bounded however long it lasts.
TEST(LoadReporterTest, ALongOutageWithManyRetriesStaysBounded) {
  PlannerEnv env;
  CreateDeployment(env);
  auto client = Client(env);
  auto reporter = LoadReporter::Create(client.get(), Options());  // 4 steps a batch, 3 pending
  ASSERT_TRUE(reporter.ok());
  env.Stop();
  int64_t step = 0;
  for (int round = 0; round < 20; ++round) {
    const int64_t attempts = (*reporter)->stats().failed_attempts;
    for (int k = 0; k < 4 * 4; ++k, ++step) {
      ASSERT_TRUE((*reporter)->AddStep(step, 1, std::vector<double>{4, 0, 0, 4}).ok());
    }
    // Wait (real time, bounded) for the reporter's next attempt to fail.
    for (int i = 0; i < 2000 && (*reporter)->stats().failed_attempts == attempts; ++i) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    ASSERT_GT((*reporter)->stats().failed_attempts, attempts);
    EXPECT_LE((*reporter)->stats().reports_pending, 5) << "round " << round;
  }
  env.Start();
  ASSERT_TRUE((*reporter)->Flush(absl::Seconds(30)).ok());
  EXPECT_THAT(Smoothed(env), Pointwise(DoubleNear(1e-9), std::vector<double>{4, 0, 0, 4}));
  EXPECT_EQ(GetLoad(env.stub(), "r")->steps_seen(), step);
}

TEST(LoadReporterTest, BadInputIsRefusedAndAddsNothing) {
  PlannerEnv env;
  CreateDeployment(env);
  auto client = Client(env);
  auto reporter = LoadReporter::Create(client.get(), Options());
  ASSERT_TRUE(reporter.ok());
  ASSERT_TRUE((*reporter)->AddStep(5, 1, std::vector<double>{1, 1, 1, 1}).ok());
  EXPECT_EQ((*reporter)->AddStep(6, 1, std::vector<double>{1, 1, 1}).message(),
            "counts has 3 entries, expected L × E = 4");
  EXPECT_EQ((*reporter)->AddStep(6, 1, std::vector<double>{1, -1, 1, 1}).message(),
            "counts[0][1] = -1 must be finite and ≥ 0");
  EXPECT_EQ((*reporter)->AddStep(6, 1, std::vector<double>{1, 1, std::nan(""), 1}).message(),
            "counts[0][2] = nan must be finite and ≥ 0");
  EXPECT_EQ((*reporter)->AddStep(5, 1, std::vector<double>{1, 1, 1, 1}).message(),
            "step 5 must be ≥ 0 and after step 5");
  EXPECT_EQ((*reporter)->AddStep(6, 0, std::vector<double>{1, 1, 1, 1}).message(),
            "plan_version = 0 must be ≥ 1");
  EXPECT_EQ((*reporter)->AddStep(int64_t{1} << 62, 1, std::vector<double>{1, 1, 1, 1}).message(),
            "step 4611686018427387904 is beyond the planner's last step, 4611686018427387903");
  EXPECT_EQ((*reporter)->stats().steps_added, 1);
  ASSERT_TRUE((*reporter)->Flush(absl::Seconds(30)).ok());
  EXPECT_THAT(Smoothed(env), Pointwise(DoubleNear(1e-12), std::vector<double>{1, 1, 1, 1}));

  auto bad = LoadReporter::Create(
      client.get(), {.deployment = "r", .num_layers = 1, .num_experts = 4, .flush_every_steps = 0});
  EXPECT_EQ(bad.status().message(),
            "LoadReporterOptions.flush_every_steps = 0 is out of range [1, 1000000]");
  LoadReporterOptions forgetful = Options();
  forgetful.resend_after_restart = 1025;
  EXPECT_EQ(LoadReporter::Create(client.get(), forgetful).status().message(),
            "LoadReporterOptions.resend_after_restart = 1025 is out of range [0, 1024]");
  LoadReporterOptions slow = Options();
  slow.max_backoff = absl::Milliseconds(1);
  EXPECT_EQ(LoadReporter::Create(client.get(), slow).status().message(),
            "LoadReporterOptions: backoff must satisfy 0 < initial_backoff (5ms) ≤ max_backoff "
            "(1ms)");
}

TEST(LoadReporterTest, AReportThePlannerRefusesIsDroppedNotRetriedForever) {
  PlannerEnv env;
  CreateDeployment(env);
  auto client = Client(env);
  auto reporter = LoadReporter::Create(client.get(), Options());
  ASSERT_TRUE(reporter.ok());
  // Plan version 9 was never published: the planner refuses that report.
  ASSERT_TRUE((*reporter)->AddStep(0, 9, std::vector<double>{5, 5, 5, 5}).ok());
  ASSERT_TRUE((*reporter)->AddStep(1, 1, std::vector<double>{2, 2, 2, 2}).ok());
  ASSERT_TRUE((*reporter)->Flush(absl::Seconds(30)).ok());
  const LoadReporter::Stats stats = (*reporter)->stats();
  EXPECT_EQ(stats.reports_dropped, 1);
  EXPECT_THAT(stats.last_error, ::testing::HasSubstr("plan_version 9 was never published"));
  EXPECT_THAT(Smoothed(env), Pointwise(DoubleNear(1e-12), std::vector<double>{2, 2, 2, 2}));
}

}  // namespace
}  // namespace eplb::client
