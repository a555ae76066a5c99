// One deployment's state machine on its own (server/deployment.h): reports, the plan lifecycle,
// acknowledgements, watchers and checkpoints, driven the way the planner drives them, with no gRPC
// server, no worker thread and no disk.
#include "server/deployment.h"

#include <gmock/gmock.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/policy.h"
#include "proto/convert.h"

namespace eplb::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);
constexpr int32_t kLayers = 2;
constexpr int32_t kExperts = 8;
constexpr int32_t kRanks = 4;

v1::DeploymentSpec Spec() {
  v1::DeploymentSpec spec;
  spec.set_name("d");
  v1::Shape& shape = *spec.mutable_shape();
  shape.set_num_layers(kLayers);
  shape.set_num_logical_experts(kExperts);
  shape.set_num_physical_experts(12);
  shape.set_num_ranks(kRanks);
  spec.set_policy("deepseek");
  spec.set_ack_timeout_ms(5'000);
  spec.mutable_trigger()->set_interval_steps(0);  // no automatic trigger unless a test sets one
  return spec;
}

ValidatedSpec Validated(const v1::DeploymentSpec& spec) {
  auto validated = ValidateSpec(spec, "deepseek", 1);
  EXPECT_TRUE(validated.ok()) << validated.status();
  return *std::move(validated);
}

ExpertMap Contiguous(const DeploymentShape& shape) {
  auto policy = CreatePolicy("contiguous");
  EXPECT_TRUE(policy.ok());
  auto map = (*policy)->Plan({shape, nullptr, nullptr});
  EXPECT_TRUE(map.ok()) << map.status();
  return *std::move(map);
}

constexpr uint64_t kUid = 0x00c0ffee12345678;

std::shared_ptr<Deployment> NewDeployment(const v1::DeploymentSpec& spec = Spec()) {
  ValidatedSpec validated = Validated(spec);
  const ExpertMap map = Contiguous(validated.shape);
  v1::Plan first = Deployment::FirstPlan(spec.name(), validated.shape, map, "contiguous", kT0);
  return Deployment::Create(std::move(validated), kUid, kT0, std::move(first), map, nullptr);
}

// Records what a watch receives, decoded.
class RecordingSink : public WatchSink {
 public:
  void Send(std::shared_ptr<const WatchUpdate> update) override {
    grpc::ByteBuffer copy(update->bytes);
    v1::WatchPlansResponse response;
    const grpc::Status status =
        grpc::SerializationTraits<v1::WatchPlansResponse>::Deserialize(&copy, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.plan().version(), update->version);
    EXPECT_EQ(response.plan().state(), update->state);
    received.push_back(std::move(response));
  }
  void Close(const absl::Status& status) override { closed = status; }

  std::vector<std::pair<int64_t, v1::PlanState>> Seen() const {
    std::vector<std::pair<int64_t, v1::PlanState>> seen;
    for (const v1::WatchPlansResponse& r : received) {
      seen.emplace_back(r.plan().version(), r.plan().state());
    }
    return seen;
  }

  std::vector<v1::WatchPlansResponse> received;
  std::optional<absl::Status> closed;
};

// A plan from the deployment's own policy, published as the planner publishes it (without the
// files): the version it got.
int64_t Publish(Deployment& d, absl::Time now, std::vector<int64_t>* pruned = nullptr) {
  auto input = d.BeginPlan(PlanReason::kOnDemand, /*dry_run=*/false);
  EXPECT_TRUE(input.ok()) << input.status();
  auto map = d.policy().Plan({d.shape(), &input->load, &input->current});
  EXPECT_TRUE(map.ok()) << map.status();
  v1::Plan plan;
  plan.set_deployment(d.name());
  plan.set_parent_version(input->parent_version);
  ExpertMapToProto(*map, plan.mutable_map());
  plan.set_map_hash(map->Hash());
  const int64_t version = d.NextVersion();
  d.SpendVersion(version);
  plan = d.Versioned(std::move(plan), version);
  auto removed = d.AddPlan(plan, *std::move(map), now);
  EXPECT_TRUE(removed.ok()) << removed.status();
  if (pruned != nullptr && removed.ok()) *pruned = *removed;
  return version;
}

uint64_t HashOf(const Deployment& d, int64_t version) {
  auto plan = d.GetPlan(version);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? plan->map_hash() : 0;
}

v1::WatchPlansRequest::Ack MakeAck(int64_t version, v1::AckState state, uint64_t hash,
                                   std::string nonce = "") {
  v1::WatchPlansRequest::Ack ack;
  ack.set_version(version);
  ack.set_state(state);
  ack.set_map_hash(hash);
  ack.set_nonce(std::move(nonce));
  return ack;
}

std::string Nonce(int64_t version) { return absl::StrFormat("%016x.%d", kUid, version); }

v1::LoadReport MakeReport(int32_t rank, int64_t sequence, int64_t first_step, int64_t last_step,
                          double count = 1.0) {
  v1::LoadReport report;
  report.set_deployment("d");
  report.set_rank(rank);
  report.set_session(7);
  report.set_sequence(sequence);
  report.set_first_step(first_step);
  report.set_last_step(last_step);
  report.set_plan_version(1);
  for (int32_t l = 0; l < kLayers; ++l) {
    v1::LayerCounts& layer = *report.add_layers();
    for (int32_t e = 0; e < kExperts; ++e) layer.add_counts(e == 0 ? 100 * count : count);
  }
  return report;
}

v1::ErrorReason Reason(const absl::Status& status) {
  const auto detail = GetErrorDetail(status);
  return detail.has_value() ? detail->reason() : v1::ERROR_REASON_UNSPECIFIED;
}

TEST(DeploymentTest, StartsAtACommittedVersionOne) {
  auto d = NewDeployment();
  const v1::Deployment state = d->ToProto();
  EXPECT_EQ(state.committed_version(), 1);
  EXPECT_EQ(state.latest_version(), 1);
  EXPECT_EQ(state.steps_seen(), 0);
  auto plan = d->GetPlan(0);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->version(), 1);
  EXPECT_EQ(plan->state(), v1::COMMITTED);
  EXPECT_EQ(plan->reason(), v1::INITIAL);
  EXPECT_EQ(plan->ranks_size(), kRanks);
  EXPECT_EQ(plan->map_hash(), Contiguous(d->shape()).Hash());
  EXPECT_EQ(d->NextVersion(), 2);

  const absl::Status never = d->GetPlan(2).status();
  EXPECT_EQ(never.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(never.message(), "version 2 of deployment \"d\" was never published (latest: 1)");
  EXPECT_EQ(d->GetPlan(-1).status().message(), "version = -1 is negative");
}

TEST(DeploymentTest, ARefusedReportNamesTheFieldAndChangesNothing) {
  auto d = NewDeployment();
  v1::LoadReport bad = MakeReport(0, 1, 0, 9);
  bad.mutable_layers(1)->set_counts(3, -1.0);
  const absl::Status negative = d->Report(bad, kT0).status();
  EXPECT_EQ(negative.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(negative.message(), "layers[1].counts[3] = -1 must be a finite count in [0, 2^53]");
  EXPECT_EQ(Reason(negative), v1::MALFORMED_COUNTS);

  const absl::Status rank = d->Report(MakeReport(kRanks, 1, 0, 9), kT0).status();
  EXPECT_EQ(rank.message(), "rank = 4 is out of range [0, 3]");
  EXPECT_EQ(Reason(rank), v1::UNKNOWN_RANK);

  v1::LoadReport future = MakeReport(0, 1, 0, 9);
  future.set_plan_version(2);
  const absl::Status plan = d->Report(future, kT0).status();
  EXPECT_EQ(plan.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(plan.message(), "plan_version 2 was never published (latest: 1)");

  // Nothing was counted, and nothing is to be checkpointed.
  EXPECT_EQ(d->ToProto().steps_seen(), 0);
  EXPECT_FALSE(d->TakeCheckpoint(kT0 + absl::Hours(1), absl::Seconds(10), false).has_value());
  // The same sequence number is still free.
  auto accepted = d->Report(MakeReport(0, 1, 0, 9), kT0);
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_FALSE(accepted->duplicate);
  EXPECT_EQ(d->ToProto().steps_seen(), 10);
}

TEST(DeploymentTest, TheNewestStepMayNotRunAheadOfTime) {
  auto d = NewDeployment();
  ASSERT_TRUE(d->Report(MakeReport(0, 1, 0, 9), kT0).ok());
  const v1::GetLoadResponse before = d->GetLoad();
  // A counter that jumped: a million steps plus 100,000 per second are allowed, no more.
  const absl::Status jump =
      d->Report(MakeReport(0, 2, 5'000'000, 5'000'000), kT0 + absl::Seconds(10)).status();
  EXPECT_EQ(jump.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(jump.message(),
            "last_step = 5000000 is 4999991 steps ahead of the deployment's newest step (9), "
            "more than the 2000000 allowed 10 s after it; did the step counter jump?");
  EXPECT_EQ(Reason(jump), v1::FIELD_OUT_OF_RANGE);
  EXPECT_EQ(d->GetLoad().DebugString(), before.DebugString());
  // The same steps are fine 40 s after the newest step, and later steps of other ranks count.
  ASSERT_TRUE(d->Report(MakeReport(0, 2, 5'000'000, 5'000'000), kT0 + absl::Seconds(40)).ok());
  ASSERT_TRUE(d->Report(MakeReport(1, 1, 5'000'000, 5'000'009), kT0 + absl::Seconds(40)).ok());
  EXPECT_EQ(d->GetLoad().last_step(), 5'000'009);
  // Far beyond, right after: refused, with the time counted from the step's last move.
  EXPECT_EQ(d->Report(MakeReport(2, 1, int64_t{1} << 61, int64_t{1} << 61), kT0 + absl::Seconds(40))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(DeploymentTest, ARetryIsCountedOnceAndAReusedSequenceIsRefused) {
  auto d = NewDeployment();
  ASSERT_TRUE(d->Report(MakeReport(0, 1, 0, 9), kT0).ok());
  const v1::GetLoadResponse before = d->GetLoad();
  auto retry = d->Report(MakeReport(0, 1, 0, 9), kT0);
  ASSERT_TRUE(retry.ok());
  EXPECT_TRUE(retry->duplicate);
  EXPECT_EQ(retry->last_sequence, 1);
  EXPECT_THAT(d->GetLoad().smoothed_load(), ::testing::ElementsAreArray(before.smoothed_load()));

  const absl::Status reused = d->Report(MakeReport(0, 1, 0, 9, /*count=*/2.0), kT0).status();
  EXPECT_EQ(reused.message(), "sequence 1 of rank 0 was already accepted with different counts");
  EXPECT_EQ(Reason(reused), v1::SEQUENCE_REUSED);
}

// A rank's report split over layer ranges counts toward the trigger once the part with the last
// layer arrives: a rebalance never plans on a step range some of whose layers are still coming.
TEST(DeploymentTest, TheTriggerWaitsForThePartWithTheLastLayer) {
  v1::DeploymentSpec spec = Spec();
  spec.mutable_trigger()->set_interval_steps(10);
  spec.mutable_trigger()->set_min_steps(10);
  auto d = NewDeployment(spec);
  const auto part = [](int32_t rank, int64_t sequence, int32_t layer) {
    v1::LoadReport report = MakeReport(rank, sequence, 0, 9);
    v1::LayerCounts kept = report.layers(layer);
    report.clear_layers();
    *report.add_layers() = kept;
    report.set_first_layer(layer);
    return report;
  };
  for (int32_t r = 0; r < kRanks; ++r) {
    auto first = d->Report(part(r, 1, 0), kT0);
    ASSERT_TRUE(first.ok()) << first.status();
    EXPECT_FALSE(first->evaluate);
  }
  for (int32_t r = 0; r + 1 < kRanks; ++r) {
    auto last = d->Report(part(r, 2, kLayers - 1), kT0);
    ASSERT_TRUE(last.ok());
    EXPECT_FALSE(last->evaluate) << "rank " << r;
  }
  auto last = d->Report(part(kRanks - 1, 2, kLayers - 1), kT0);
  ASSERT_TRUE(last.ok());
  EXPECT_TRUE(last->evaluate);
}

TEST(DeploymentTest, TheTriggerIsDueOnceEveryRankReportedAnIntervalAndOnceUntilEvaluated) {
  v1::DeploymentSpec spec = Spec();
  spec.mutable_trigger()->set_interval_steps(10);
  spec.mutable_trigger()->set_min_steps(10);
  auto d = NewDeployment(spec);
  for (int32_t r = 0; r + 1 < kRanks; ++r) {
    auto outcome = d->Report(MakeReport(r, 1, 0, 9), kT0);
    ASSERT_TRUE(outcome.ok());
    EXPECT_FALSE(outcome->evaluate) << "rank " << r;  // the last rank has not reported yet
  }
  auto last = d->Report(MakeReport(kRanks - 1, 1, 0, 9), kT0);
  ASSERT_TRUE(last.ok());
  EXPECT_TRUE(last->evaluate);
  // Queued: later reports do not queue another until the evaluation begins.
  for (int32_t r = 0; r < kRanks; ++r) {
    auto outcome = d->Report(MakeReport(r, 2, 10, 19), kT0);
    ASSERT_TRUE(outcome.ok());
    EXPECT_FALSE(outcome->evaluate);
  }
  ASSERT_TRUE(d->BeginPlan(PlanReason::kTrigger, /*dry_run=*/false).ok());
  // The evaluation moved the frontier to step 19: due again only at step 29.
  for (int32_t r = 0; r < kRanks; ++r) {
    auto outcome = d->Report(MakeReport(r, 3, 20, 28), kT0);
    ASSERT_TRUE(outcome.ok());
    EXPECT_FALSE(outcome->evaluate);
  }
  int due = 0;
  for (int32_t r = 0; r < kRanks; ++r) {
    auto outcome = d->Report(MakeReport(r, 4, 29, 29), kT0);
    ASSERT_TRUE(outcome.ok());
    due += outcome->evaluate ? 1 : 0;
  }
  EXPECT_EQ(due, 1);
}

TEST(DeploymentTest, APendingPlanCommitsWhenTheLastRankStagesIt) {
  auto d = NewDeployment();
  RecordingSink sink;
  v1::WatchPlansRequest::Subscribe subscribe;
  subscribe.set_rank(0);
  ASSERT_TRUE(d->Subscribe(subscribe, &sink).ok());
  EXPECT_THAT(sink.Seen(), ElementsAre(std::make_pair(1, v1::COMMITTED)));

  const int64_t version = Publish(*d, kT0);
  ASSERT_EQ(version, 2);
  EXPECT_THAT(sink.Seen(),
              ElementsAre(std::make_pair(1, v1::COMMITTED), std::make_pair(2, v1::PENDING)));
  EXPECT_EQ(sink.received.back().nonce(), Nonce(2));
  EXPECT_EQ(sink.received.back().plan().ranks_size(), 0);  // acks are not broadcast

  // One plan in flight at a time.
  const absl::Status busy = d->BeginPlan(PlanReason::kOnDemand, /*dry_run=*/false).status();
  EXPECT_EQ(busy.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Reason(busy), v1::PLAN_IN_FLIGHT);
  EXPECT_TRUE(d->BeginPlan(PlanReason::kOnDemand, /*dry_run=*/true).ok());

  const uint64_t hash = HashOf(*d, 2);
  for (int32_t r = 0; r + 1 < kRanks; ++r) {
    auto decision = d->RecordAck(r, MakeAck(2, v1::STAGED, hash, Nonce(2)), kT0);
    ASSERT_TRUE(decision.ok()) << decision.status();
    EXPECT_FALSE(decision->has_value()) << "rank " << r;
  }
  auto decision = d->RecordAck(kRanks - 1, MakeAck(2, v1::ACTIVE, hash), kT0);
  ASSERT_TRUE(decision.ok());
  ASSERT_TRUE(decision->has_value());
  EXPECT_EQ((*decision)->version, 2);
  EXPECT_EQ((*decision)->state, v1::COMMITTED);
  // Decided once: a repeated ack decides nothing more.
  auto again = d->RecordAck(kRanks - 1, MakeAck(2, v1::ACTIVE, hash), kT0);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->has_value());

  PlanDecision commit = **decision;
  std::optional<v1::Plan> record = d->PrepareFinish(commit);
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->state(), v1::COMMITTED);
  EXPECT_EQ(d->ToProto().committed_version(), 1);  // not before FinishPlan
  EXPECT_FALSE(d->FinishPlan(commit));
  EXPECT_EQ(d->ToProto().committed_version(), 2);
  EXPECT_EQ(d->GetPlan(0)->version(), 2);
  EXPECT_EQ(sink.Seen().back(), std::make_pair(int64_t{2}, v1::COMMITTED));
  // Applied once: the same decision again changes nothing.
  EXPECT_FALSE(d->PrepareFinish(commit).has_value());
  EXPECT_FALSE(d->FinishPlan(commit));
  EXPECT_EQ(sink.received.size(), 3u);
}

TEST(DeploymentTest, AFailedRankOrAnotherMapAbortsWithTheReason) {
  auto d = NewDeployment();
  ASSERT_EQ(Publish(*d, kT0), 2);
  auto failed = d->RecordAck(2, MakeAck(2, v1::FAILED, 0, Nonce(2)), kT0);
  ASSERT_TRUE(failed.ok());
  ASSERT_TRUE(failed->has_value());
  EXPECT_EQ((*failed)->state, v1::ABORTED);
  EXPECT_EQ((*failed)->reason, "rank 2 failed: ");
  PlanDecision abort = **failed;
  ASSERT_TRUE(d->PrepareFinish(abort).has_value());
  d->FinishPlan(abort);
  auto plan = d->GetPlan(2);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->state(), v1::ABORTED);
  EXPECT_EQ(plan->abort_reason(), "rank 2 failed: ");
  EXPECT_EQ(d->ToProto().committed_version(), 1);

  ASSERT_EQ(Publish(*d, kT0), 3);
  auto mismatch = d->RecordAck(1, MakeAck(3, v1::STAGED, 0xabc), kT0);
  ASSERT_TRUE(mismatch.ok());
  ASSERT_TRUE(mismatch->has_value());
  EXPECT_EQ((*mismatch)->reason,
            absl::StrFormat("rank 1 holds map hash 0000000000000abc, the plan's is %016x",
                            HashOf(*d, 3)));
  EXPECT_TRUE(d->GetPlan(3)->ranks(1).hash_mismatch());
}

TEST(DeploymentTest, ACommitIsRecheckedAgainstAcksThatArrivedSinceItWasDecided) {
  auto d = NewDeployment();
  ASSERT_EQ(Publish(*d, kT0), 2);
  const uint64_t hash = HashOf(*d, 2);
  std::optional<PlanDecision> decided;
  for (int32_t r = 0; r < kRanks; ++r) {
    auto decision = d->RecordAck(r, MakeAck(2, v1::STAGED, hash), kT0);
    ASSERT_TRUE(decision.ok());
    if (decision->has_value()) decided = **decision;
  }
  ASSERT_TRUE(decided.has_value());
  ASSERT_EQ(decided->state, v1::COMMITTED);
  // Before the commit is applied, rank 3 reports that it failed after all.
  auto late = d->RecordAck(3, MakeAck(2, v1::FAILED, 0), kT0);
  ASSERT_TRUE(late.ok());
  EXPECT_FALSE(late->has_value());  // the decision was already handed out
  std::optional<v1::Plan> record = d->PrepareFinish(*decided);
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(decided->state, v1::ABORTED);
  EXPECT_EQ(record->state(), v1::ABORTED);
  EXPECT_EQ(record->abort_reason(), "rank 3 failed: ");
  d->FinishPlan(*decided);
  EXPECT_EQ(d->ToProto().committed_version(), 1);
}

TEST(DeploymentTest, TheAckTimeoutAbortsNamingTheRanksThatDidNotStage) {
  auto d = NewDeployment();
  EXPECT_FALSE(d->CheckAckTimeout(kT0 + absl::Hours(1)).has_value());  // nothing in flight
  ASSERT_EQ(Publish(*d, kT0), 2);
  ASSERT_TRUE(d->RecordAck(1, MakeAck(2, v1::STAGED, HashOf(*d, 2)), kT0).ok());
  EXPECT_FALSE(d->CheckAckTimeout(kT0 + absl::Milliseconds(4'999)).has_value());
  std::optional<PlanDecision> expired = d->CheckAckTimeout(kT0 + absl::Seconds(5));
  ASSERT_TRUE(expired.has_value());
  EXPECT_EQ(expired->version, 2);
  EXPECT_EQ(expired->state, v1::ABORTED);
  EXPECT_EQ(expired->reason,
            "ack timeout after 5000 ms: 3 of 4 ranks did not stage it (ranks 0, 2, 3)");
  EXPECT_FALSE(d->CheckAckTimeout(kT0 + absl::Seconds(6)).has_value());  // decided once
  // The last ack arriving now decides nothing either.
  for (int32_t r : {0, 2, 3}) {
    auto decision = d->RecordAck(r, MakeAck(2, v1::STAGED, HashOf(*d, 2)), kT0);
    ASSERT_TRUE(decision.ok());
    EXPECT_FALSE(decision->has_value());
  }
}

TEST(DeploymentTest, BadAcksAreRefusedAndAcksOfAnEarlierDeploymentIgnored) {
  auto d = NewDeployment();
  ASSERT_EQ(Publish(*d, kT0), 2);
  const uint64_t hash = HashOf(*d, 2);
  const v1::Plan before = *d->GetPlan(2);

  const absl::Status observer = d->RecordAck(-1, MakeAck(2, v1::STAGED, hash), kT0).status();
  EXPECT_EQ(observer.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(observer.message(), "an observer stream (rank -1) cannot acknowledge plans");
  EXPECT_EQ(d->RecordAck(0, MakeAck(3, v1::STAGED, hash), kT0).status().message(),
            "ack.version = 3 was never published (latest: 2)");
  EXPECT_EQ(d->RecordAck(0, MakeAck(2, v1::ACK_STATE_UNSPECIFIED, hash), kT0).status().message(),
            "ack.state = 0 must be STAGED, ACTIVE or FAILED");
  EXPECT_EQ(d->RecordAck(0, MakeAck(2, v1::STAGED, hash, "x.2"), kT0).status().message(),
            "ack.nonce = \"x.2\" is not a nonce this planner sent");
  EXPECT_EQ(d->RecordAck(0, MakeAck(2, v1::STAGED, hash, Nonce(1)), kT0).status().message(),
            "ack.nonce names version 1, the ack version 2");
  // The nonce of a deployment of the same name deleted before this one was created.
  auto stale =
      d->RecordAck(0, MakeAck(2, v1::FAILED, 0, absl::StrFormat("%016x.%d", kUid + 1, 2)), kT0);
  ASSERT_TRUE(stale.ok());
  EXPECT_FALSE(stale->has_value());

  const v1::Plan after = *d->GetPlan(2);
  EXPECT_EQ(after.DebugString(), before.DebugString());  // no ack recorded
}

TEST(DeploymentTest, TheHistoryIsPrunedButNeverTheCommittedOrPendingVersion) {
  v1::DeploymentSpec spec = Spec();
  spec.set_plan_history(2);
  auto d = NewDeployment(spec);
  std::vector<int64_t> pruned;
  // Version 2 aborts, 3 stays pending: version 1 (committed) is kept, 2 goes.
  ASSERT_EQ(Publish(*d, kT0, &pruned), 2);
  EXPECT_THAT(pruned, IsEmpty());
  PlanDecision abort{2, v1::ABORTED, "test"};
  ASSERT_TRUE(d->PrepareFinish(abort).has_value());
  d->FinishPlan(abort);
  ASSERT_EQ(Publish(*d, kT0, &pruned), 3);
  EXPECT_THAT(pruned, ElementsAre(2));
  std::vector<int64_t> kept;
  for (const v1::Plan& plan : d->ListPlans(/*include_maps=*/false)) {
    kept.push_back(plan.version());
    EXPECT_FALSE(plan.has_map());
  }
  EXPECT_THAT(kept, ElementsAre(3, 1));
  const absl::Status gone = d->GetPlan(2).status();
  EXPECT_EQ(gone.message(),
            "version 2 of deployment \"d\" is no longer retained (oldest "
            "retained: 1)");
  // An ack of the pruned version is not an error and records nothing.
  auto ack = d->RecordAck(0, MakeAck(2, v1::STAGED, 0), kT0);
  ASSERT_TRUE(ack.ok());
  EXPECT_FALSE(ack->has_value());
}

TEST(DeploymentTest, ImmediateCommitNeedsNoAcks) {
  v1::DeploymentSpec spec = Spec();
  spec.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
  auto d = NewDeployment(spec);
  ASSERT_EQ(Publish(*d, kT0), 2);
  EXPECT_EQ(d->ToProto().committed_version(), 2);
  EXPECT_EQ(d->GetPlan(2)->state(), v1::COMMITTED);
  ASSERT_EQ(Publish(*d, kT0), 3);  // nothing in flight
  EXPECT_FALSE(d->CheckAckTimeout(kT0 + absl::Hours(1)).has_value());
}

TEST(DeploymentTest, SubscribersGetWhatTheyMissedAndAreClosedOnDeleteOrShutdown) {
  auto d = NewDeployment();
  ASSERT_EQ(Publish(*d, kT0), 2);

  v1::WatchPlansRequest::Subscribe subscribe;
  subscribe.set_rank(kRanks);
  RecordingSink refused;
  const absl::Status rank = d->Subscribe(subscribe, &refused);
  EXPECT_EQ(rank.message(), "subscribe.rank = 4 is out of range [-1, 3]");
  subscribe.set_rank(-1);
  subscribe.set_known_version(3);
  const absl::Status newer = d->Subscribe(subscribe, &refused);
  EXPECT_EQ(newer.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Reason(newer), v1::PLAN_NOT_FOUND);
  EXPECT_THAT(std::string(newer.message()), HasSubstr("was it deleted and created again?"));
  EXPECT_TRUE(refused.received.empty());

  // Knowing version 1: only the pending version 2 is sent.
  subscribe.set_known_version(1);
  RecordingSink knows_one;
  ASSERT_TRUE(d->Subscribe(subscribe, &knows_one).ok());
  EXPECT_THAT(knows_one.Seen(), ElementsAre(std::make_pair(2, v1::PENDING)));
  subscribe.set_known_version(0);
  RecordingSink fresh;
  ASSERT_TRUE(d->Subscribe(subscribe, &fresh).ok());
  EXPECT_THAT(fresh.Seen(),
              ElementsAre(std::make_pair(1, v1::COMMITTED), std::make_pair(2, v1::PENDING)));

  // An unsubscribed sink hears nothing more.
  d->Unsubscribe(&knows_one);
  PlanDecision abort{2, v1::ABORTED, "test"};
  ASSERT_TRUE(d->PrepareFinish(abort).has_value());
  d->FinishPlan(abort);
  EXPECT_EQ(knows_one.received.size(), 1u);
  EXPECT_EQ(fresh.received.size(), 3u);

  d->MarkDeleted();
  ASSERT_TRUE(fresh.closed.has_value());
  EXPECT_EQ(fresh.closed->code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(fresh.closed->message(), "deployment \"d\" not found");
  EXPECT_FALSE(knows_one.closed.has_value());
  d->Unsubscribe(&fresh);  // already closed: not an error
  EXPECT_EQ(d->Subscribe(subscribe, &refused).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(d->Report(MakeReport(0, 1, 0, 9), kT0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(d->BeginPlan(PlanReason::kOnDemand, false).status().code(),
            absl::StatusCode::kNotFound);

  auto other = NewDeployment();
  RecordingSink watcher;
  ASSERT_TRUE(other->Subscribe(subscribe, &watcher).ok());
  other->Close();
  ASSERT_TRUE(watcher.closed.has_value());
  EXPECT_EQ(watcher.closed->code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(other->Subscribe(subscribe, &refused).code(), absl::StatusCode::kUnavailable);
}

TEST(DeploymentTest, WatchesAreCappedAtTwoPerRankAndAThousandObservers) {
  auto d = NewDeployment();
  ASSERT_EQ(d->MaxWatchers(), 2 * kRanks + 1024);
  std::vector<RecordingSink> sinks(d->MaxWatchers() + 1);
  v1::WatchPlansRequest::Subscribe subscribe;
  subscribe.set_rank(-1);
  for (int64_t i = 0; i < d->MaxWatchers(); ++i)
    ASSERT_TRUE(d->Subscribe(subscribe, &sinks[i]).ok());
  const absl::Status full = d->Subscribe(subscribe, &sinks.back());
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Reason(full), v1::TOO_MANY_WATCHERS);
  EXPECT_EQ(full.message(),
            "deployment \"d\" has 1032 watches open, its limit (2 per rank and 1024)");
  d->Unsubscribe(&sinks[0]);
  EXPECT_TRUE(d->Subscribe(subscribe, &sinks.back()).ok());
}

TEST(DeploymentTest, CheckpointsFollowTheIntervalAndRestoreTheLoadAndTheRetries) {
  auto d = NewDeployment();
  EXPECT_FALSE(d->TakeCheckpoint(kT0, absl::Seconds(10), /*force=*/true).has_value());  // clean
  ASSERT_TRUE(d->Report(MakeReport(0, 1, 0, 9), kT0).ok());
  EXPECT_FALSE(d->TakeCheckpoint(kT0 + absl::Seconds(9), absl::Seconds(10), false).has_value());
  std::optional<state::v1::LoadCheckpoint> checkpoint =
      d->TakeCheckpoint(kT0 + absl::Seconds(10), absl::Seconds(10), false);
  ASSERT_TRUE(checkpoint.has_value());
  EXPECT_EQ(checkpoint->ranks_size(), kRanks);
  EXPECT_EQ(checkpoint->ranks(0).last_sequence(), 1);
  EXPECT_EQ(checkpoint->ranks(0).reported_through(), 9);
  // Written: nothing new to write, unless the write failed.
  EXPECT_FALSE(d->TakeCheckpoint(kT0 + absl::Hours(1), absl::Seconds(10), true).has_value());
  d->CheckpointFailed();
  EXPECT_TRUE(d->TakeCheckpoint(kT0 + absl::Seconds(11), absl::Seconds(10), true).has_value());

  // A deployment restored from the record, the plans and the checkpoint.
  LoadedDeployment stored;
  *stored.record.mutable_spec() = Validated(Spec()).spec;
  TimeToProto(kT0, stored.record.mutable_create_time());
  stored.record.set_uid(kUid);
  stored.last_version = 1;
  stored.plans.push_back(*d->GetPlan(1));
  stored.load = *checkpoint;
  auto restored =
      Deployment::Restore(Validated(Spec()), std::move(stored), kT0 + absl::Hours(1), nullptr);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_THAT((*restored)->GetLoad().smoothed_load(),
              ::testing::ElementsAreArray(d->GetLoad().smoothed_load()));
  EXPECT_EQ((*restored)->uid(), kUid);
  // The retry of the report the checkpoint holds is known to be one.
  auto retry = (*restored)->Report(MakeReport(0, 1, 0, 9), kT0);
  ASSERT_TRUE(retry.ok());
  EXPECT_TRUE(retry->duplicate);
}

TEST(DeploymentTest, RestoreKeepsTheNewestPendingPlanInFlightAndAbortsTheOthers) {
  auto d = NewDeployment();
  ASSERT_EQ(Publish(*d, kT0), 2);
  LoadedDeployment stored;
  *stored.record.mutable_spec() = Validated(Spec()).spec;
  TimeToProto(kT0, stored.record.mutable_create_time());
  stored.last_version = 7;  // versions spent and never written
  stored.plans.push_back(*d->GetPlan(1));
  v1::Plan older = *d->GetPlan(2);
  stored.plans.push_back(older);
  v1::Plan newer = older;
  newer.set_version(3);
  stored.plans.push_back(newer);
  auto restored = Deployment::Restore(Validated(Spec()), stored, kT0, nullptr);
  ASSERT_TRUE(restored.ok()) << restored.status();
  const Deployment& r = **restored;
  EXPECT_EQ(r.GetPlan(2)->state(), v1::ABORTED);
  EXPECT_EQ(r.GetPlan(2)->abort_reason(), "superseded while the planner was down");
  EXPECT_EQ(r.GetPlan(3)->state(), v1::PENDING);
  EXPECT_EQ(r.PendingVersion(), 3);
  EXPECT_EQ(r.NextVersion(), 8);
  EXPECT_EQ(r.uid(), Deployment::LegacyUid("d", kT0));  // stored before uids existed

  // Without a committed plan the state is refused.
  stored.plans.erase(stored.plans.begin());
  const absl::Status lost = Deployment::Restore(Validated(Spec()), stored, kT0, nullptr).status();
  EXPECT_EQ(lost.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(lost.message(), "no committed plan");
}

TEST(DeploymentTest, RestoreRefusesAPlanWhoseRankAcksAreNotOnePerRankInOrder) {
  auto d = NewDeployment();
  LoadedDeployment stored;
  *stored.record.mutable_spec() = Validated(Spec()).spec;
  TimeToProto(kT0, stored.record.mutable_create_time());
  stored.last_version = 1;
  const v1::Plan good = *d->GetPlan(1);
  const int32_t ranks = good.ranks_size();
  ASSERT_GE(ranks, 2);
  const auto refused = [&](v1::Plan plan) {
    LoadedDeployment copy = stored;
    copy.plans.push_back(std::move(plan));
    return Deployment::Restore(Validated(Spec()), std::move(copy), kT0, nullptr).status();
  };
  const std::string message = absl::StrCat(
      "plan 1 has ", ranks - 1, " rank acks, not one per rank 0 … ", ranks - 1, " in order");
  v1::Plan short_list = good;
  short_list.mutable_ranks()->RemoveLast();
  EXPECT_EQ(refused(short_list), absl::DataLossError(message));
  v1::Plan swapped = good;
  swapped.mutable_ranks()->SwapElements(0, 1);
  EXPECT_EQ(refused(swapped), absl::DataLossError(absl::StrCat("plan 1 has ", ranks,
                                                               " rank acks, not one per rank 0 … ",
                                                               ranks - 1, " in order")));
  EXPECT_TRUE(refused(good).ok());
}

TEST(DeploymentTest, RendezvousValuesAreBoundedAndGoneWithTheDeployment) {
  auto d = NewDeployment();
  EXPECT_EQ(d->PublishRendezvous("", "v").message(), "key is required");
  EXPECT_EQ(d->GetRendezvous(std::string(200, 'k')).status().message(),
            "key has 200 bytes, more than 128");
  EXPECT_EQ(d->PublishRendezvous(std::string(200, 'k'), "v").message(),
            "key has 200 bytes, more than 128");
  ASSERT_TRUE(d->PublishRendezvous("nccl", "id").ok());
  EXPECT_EQ(*d->GetRendezvous("nccl"), "id");
  EXPECT_EQ(d->GetRendezvous("other").status().message(),
            "rendezvous key \"other\" was not published in deployment d");
  d->MarkDeleted();
  EXPECT_EQ(d->GetRendezvous("nccl").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(d->PublishRendezvous("nccl", "id2").code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace eplb::server
