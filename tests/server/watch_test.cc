// Integration tests of plan distribution and acknowledgement, persistence across restarts, and
// the operational surface (health, bearer token, TLS, metrics): a real server on 127.0.0.1:0.
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <numeric>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "eplb/state/v1/state.pb.h"
#include "google/protobuf/util/message_differencer.h"
#include "proto/eplb/test/reflection_wire.pb.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
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
using ::eplb::testing::WatchClient;
using ::google::protobuf::util::MessageDifferencer;
using ::testing::HasSubstr;

v1::DeploymentSpec AckedSpec(const std::string& name) {
  v1::DeploymentSpec spec = Spec(name, 2, 8, 8, 2);
  spec.set_policy("deepseek");
  spec.mutable_trigger()->set_interval_steps(0);
  return spec;
}

// Skewed load so that a rebalance changes the map.
void ReportSkew(PlannerEnv& env, const std::string& d) {
  ASSERT_TRUE(
      SendReports(env.stub(),
                  {Report(d, 0, 1, 0, 9, {{9, 8, 7, 6, 1, 1, 1, 1}, {1, 1, 1, 1, 9, 9, 9, 9}}),
                   Report(d, 1, 1, 0, 9, {{9, 8, 7, 6, 1, 1, 1, 1}, {1, 1, 1, 1, 9, 9, 9, 9}})})
          .ok());
}

// ---- Watch delivery -----------------------------------------------------------------------------

TEST(PlannerWatchTest, SubscribeSendsTheCurrentPlanAndKnownVersionsAreSkipped) {
  PlannerEnv env;
  ASSERT_TRUE(Create(env.stub(), AckedSpec("d")).ok());
  WatchClient fresh(env.stub(), "d", 0);
  auto first = fresh.Get(0);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->plan().version(), 1);
  EXPECT_EQ(first->plan().state(), v1::COMMITTED);
  EXPECT_FALSE(first->nonce().empty());
  EXPECT_EQ(first->plan().map().phy2log_size(), 16);

  ReportSkew(env, "d");
  ASSERT_TRUE(Rebalance(env.stub(), "d").ok());  // version 2, PENDING
  // A watcher that already holds version 1 gets only the plan in flight.
  WatchClient known(env.stub(), "d", 1, /*known_version=*/1);
  auto pending = known.Get(0);
  ASSERT_TRUE(pending.has_value());
  EXPECT_EQ(pending->plan().version(), 2);
  EXPECT_EQ(pending->plan().state(), v1::PENDING);
  // Bad subscriptions end the stream with the error.
  v1::Planner::Stub& stub = env.stub();
  for (const auto& [deployment, rank, code] :
       std::vector<std::tuple<std::string, int, grpc::StatusCode>>{
           {"nope", 0, grpc::StatusCode::NOT_FOUND},
           {"d", 2, grpc::StatusCode::INVALID_ARGUMENT},
           {"d", -2, grpc::StatusCode::INVALID_ARGUMENT}}) {
    grpc::ClientContext context;
    auto stream = stub.WatchPlans(&context);
    v1::WatchPlansRequest request;
    request.mutable_subscribe()->set_deployment(deployment);
    request.mutable_subscribe()->set_rank(rank);
    stream->Write(request);
    v1::WatchPlansResponse response;
    EXPECT_FALSE(stream->Read(&response));
    EXPECT_EQ(stream->Finish().error_code(), code) << deployment << " " << rank;
  }
}

TEST(PlannerWatchTest, EveryWatcherGetsEveryPlanAndAStuckOneHoldsUpNobody) {
  PlannerEnv env;
  // Big maps (64 layers × 512 slots) so that the stuck stream's flow-control window fills up.
  v1::DeploymentSpec spec = Spec("big", 64, 256, 512, 8);
  spec.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
  spec.mutable_trigger()->set_interval_steps(0);
  ASSERT_TRUE(Create(env.stub(), spec).ok());

  // A watcher that subscribes and never reads.
  grpc::ClientContext stuck_context;
  auto stuck = env.stub().WatchPlans(&stuck_context);
  v1::WatchPlansRequest subscribe;
  subscribe.mutable_subscribe()->set_deployment("big");
  subscribe.mutable_subscribe()->set_rank(-1);
  ASSERT_TRUE(stuck->Write(subscribe));

  constexpr int kWatchers = 50;
  constexpr int kPlans = 12;
  std::vector<std::unique_ptr<WatchClient>> watchers;
  for (int i = 0; i < kWatchers; ++i) {
    watchers.push_back(std::make_unique<WatchClient>(env.stub(), "big", -1));
    ASSERT_TRUE(watchers.back()->Get(0).has_value());
  }
  for (int v = 2; v <= kPlans + 1; ++v) {
    auto plan = Rebalance(env.stub(), "big");
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_EQ(plan->version(), v);
  }
  for (auto& watcher : watchers) {
    for (int v = 1; v <= kPlans + 1; ++v) {
      auto response = watcher->Get(v - 1);
      ASSERT_TRUE(response.has_value()) << "version " << v;
      EXPECT_EQ(response->plan().version(), v);
      EXPECT_EQ(response->plan().state(), v1::COMMITTED);
    }
  }
  stuck_context.TryCancel();
  EXPECT_THAT(env.MetricsText(), HasSubstr("eplb_watchers{deployment=\"big\"}"));
}

// Waits (bounded) until the planner counts `expected` open watches of `deployment`.
bool WaitForWatchers(PlannerEnv& env, const std::string& deployment, int expected) {
  const std::string line =
      absl::StrCat("eplb_watchers{deployment=\"", deployment, "\"} ", expected, "\n");
  for (int i = 0; i < 20'000; ++i) {
    if (absl::StrContains(env.MetricsText(), line)) return true;
    std::this_thread::yield();
  }
  return false;
}

TEST(PlannerWatchTest, AWatchThatFallsBehindIsEndedAndOneThatNeverReadsIsCancelled) {
  server::PlannerServerOptions options;
  options.service.max_watch_queue = 2;
  PlannerEnv env(options);
  v1::DeploymentSpec spec = Spec("big", 128, 256, 512, 8);  // maps of ~180 KB: over a window
  spec.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
  spec.mutable_trigger()->set_interval_steps(0);
  ASSERT_TRUE(Create(env.stub(), spec).ok());

  // Two watchers that do not read for now, on a channel that takes in 64 KiB of a stream before
  // the application reads (no window growth): version 1's write stays in progress on both.
  grpc::ChannelArguments window;
  window.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 10);
  window.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  auto narrow = v1::Planner::NewStub(grpc::CreateCustomChannel(
      absl::StrCat("127.0.0.1:", env.port()), grpc::InsecureChannelCredentials(), window));
  v1::WatchPlansRequest subscribe;
  subscribe.mutable_subscribe()->set_deployment("big");
  subscribe.mutable_subscribe()->set_rank(-1);
  grpc::ClientContext slow_context, deaf_context;
  auto slow = narrow->WatchPlans(&slow_context);
  auto deaf = narrow->WatchPlans(&deaf_context);
  ASSERT_TRUE(slow->Write(subscribe));
  ASSERT_TRUE(deaf->Write(subscribe));
  ASSERT_TRUE(WaitForWatchers(env, "big", 2));
  // Versions 2 and 3 fill both queues; version 4 overflows them: each stream is finished with
  // WATCH_FELL_BEHIND and keeps only its write in progress.
  for (int v = 2; v <= 4; ++v) ASSERT_EQ(Rebalance(env.stub(), "big")->version(), v);

  // The slow one reads now: the plan that was being written, then the status.
  v1::WatchPlansResponse response;
  ASSERT_TRUE(slow->Read(&response));
  EXPECT_EQ(response.plan().version(), 1);
  EXPECT_FALSE(slow->Read(&response));
  const absl::Status behind = FromGrpcStatus(slow->Finish());
  EXPECT_EQ(behind.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(behind.message(),
            "watch stream fell behind by 3 plan updates (--max-watch-queue=2); resubscribe");
  EXPECT_EQ(Reason(behind), v1::WATCH_FELL_BEHIND);
  ASSERT_TRUE(WaitForWatchers(env, "big", 1));

  // The deaf one has not taken its write by the next plan: it is cancelled, and the planner
  // forgets it without its ever reading.
  ASSERT_EQ(Rebalance(env.stub(), "big")->version(), 5);
  EXPECT_TRUE(WaitForWatchers(env, "big", 0));
  while (deaf->Read(&response)) {
  }
  EXPECT_EQ(deaf->Finish().error_code(), grpc::StatusCode::CANCELLED);

  // A new watch gets the current plan.
  WatchClient again(env.stub(), "big", -1);
  auto current = again.Get(0);
  ASSERT_TRUE(current.has_value());
  EXPECT_EQ(current->plan().version(), 5);
}

// The layers whose rows differ between two maps of one shape.
std::vector<int32_t> ChangedLayers(const v1::ExpertMap& a, const v1::ExpertMap& b) {
  std::vector<int32_t> layers;
  const int slots = a.num_physical_experts();
  for (int layer = 0; layer < a.num_layers(); ++layer) {
    for (int p = layer * slots; p < (layer + 1) * slots; ++p) {
      if (a.phy2log(p) != b.phy2log(p) || a.replica_rank(p) != b.replica_rank(p)) {
        layers.push_back(layer);
        break;
      }
    }
  }
  return layers;
}

// Checks that `response` carries `plan`'s map as a delta against `base` (a plan of the same
// deployment, or nullptr: every layer, compact): exactly the layers that differ, rows that rebuild
// the map, replica ranks left out (the planner's maps rank replicas in slot order), and the shape
// without rows.
void ExpectDelta(const v1::WatchPlansResponse& response, const v1::Plan* base,
                 const v1::Plan& plan) {
  ASSERT_TRUE(response.has_map_delta());
  const v1::MapDelta& delta = response.map_delta();
  EXPECT_EQ(delta.base_version(), base != nullptr ? base->version() : 0);
  EXPECT_EQ(delta.base_map_hash(), base != nullptr ? MapContentHash(base->map()) : 0);
  std::vector<int32_t> changed(plan.map().num_layers());
  std::iota(changed.begin(), changed.end(), 0);
  if (base != nullptr) changed = ChangedLayers(base->map(), plan.map());
  EXPECT_THAT(delta.layers(), ::testing::ElementsAreArray(changed));
  EXPECT_EQ(delta.replica_rank_size(), 0);
  const int slots = plan.map().num_physical_experts();
  const int width = plan.map().num_logical_experts() <= 256 ? 1 : 2;
  EXPECT_EQ(delta.phy2log().size(), changed.size() * slots * width);
  const v1::ExpertMap& shape = response.plan().map();
  EXPECT_EQ(shape.num_layers(), plan.map().num_layers());
  EXPECT_EQ(shape.num_logical_experts(), plan.map().num_logical_experts());
  EXPECT_EQ(shape.num_physical_experts(), slots);
  EXPECT_EQ(shape.num_ranks(), plan.map().num_ranks());
  EXPECT_EQ(shape.phy2log_size(), 0);
  EXPECT_EQ(shape.replica_rank_size(), 0);
  EXPECT_EQ(response.plan().map_hash(), plan.map_hash());
  auto rebuilt = ApplyMapDelta(base != nullptr ? &base->map() : nullptr, shape, delta);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status();
  EXPECT_TRUE(MessageDifferencer::Equals(*rebuilt, plan.map()));
}

TEST(PlannerWatchTest, ADeltaStreamGetsOnlyTheChangedLayersAndOthersTheWholeMap) {
  PlannerEnv env;
  v1::DeploymentSpec spec = Spec("d", 3, 8, 8, 2);
  spec.set_policy("deepseek");
  spec.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
  spec.mutable_trigger()->set_interval_steps(0);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  WatchClient delta(env.stub(), "d", -1, 0, /*accept_map_delta=*/true);
  WatchClient whole(env.stub(), "d", -1);
  // The first plan goes whole to both, compact to the delta stream (it holds no map yet).
  auto first = delta.Get(0);
  ASSERT_TRUE(first.has_value());
  auto first_whole = whole.Get(0);
  ASSERT_TRUE(first_whole.has_value());
  EXPECT_FALSE(first_whole->has_map_delta());
  EXPECT_EQ(first_whole->plan().map().phy2log_size(), 24);
  ExpectDelta(*first, nullptr, first_whole->plan());

  // Version 2 from skewed load, version 3 from load that differs in layer 1 only (the other
  // layers keep version 2's rows), version 4 from the same load (the same map again).
  std::vector<std::vector<double>> load = {
      {9, 8, 7, 6, 1, 1, 1, 1}, {1, 1, 1, 1, 9, 9, 9, 9}, {9, 1, 9, 1, 9, 1, 9, 1}};
  ASSERT_TRUE(
      SendReports(env.stub(), {Report("d", 0, 1, 0, 9, load), Report("d", 1, 1, 0, 9, load)}).ok());
  ASSERT_TRUE(Rebalance(env.stub(), "d").ok());
  load[1] = {40, 1, 1, 1, 1, 1, 1, 1};
  ASSERT_TRUE(
      SendReports(env.stub(), {Report("d", 0, 2, 10, 19, load), Report("d", 1, 2, 10, 19, load)})
          .ok());
  ASSERT_TRUE(Rebalance(env.stub(), "d").ok());
  ASSERT_TRUE(Rebalance(env.stub(), "d").ok());
  std::vector<v1::Plan> plans(5);
  for (int v = 1; v <= 4; ++v) {
    auto plan = GetPlan(env.stub(), "d", v);
    ASSERT_TRUE(plan.ok()) << plan.status();
    plans[v] = *plan;
  }
  ASSERT_EQ(ChangedLayers(plans[2].map(), plans[3].map()), std::vector<int32_t>{1});

  auto second = delta.WaitFor(2, v1::COMMITTED);
  ASSERT_TRUE(second.has_value());
  ExpectDelta(*second, &plans[1], plans[2]);
  // Sent once persisted: after it was planned.
  ASSERT_TRUE(second->plan().has_publish_time());
  EXPECT_GE(TimeFromProto(second->plan().publish_time()),
            TimeFromProto(second->plan().create_time()));
  EXPECT_TRUE(MessageDifferencer::Equals(second->plan().publish_time(), plans[2].publish_time()));
  auto third = delta.WaitFor(3, v1::COMMITTED);
  ASSERT_TRUE(third.has_value());
  ExpectDelta(*third, &plans[2], plans[3]);
  EXPECT_THAT(third->map_delta().layers(), ::testing::ElementsAre(1));
  auto fourth = delta.WaitFor(4, v1::COMMITTED);
  ASSERT_TRUE(fourth.has_value());
  ExpectDelta(*fourth, &plans[3], plans[4]);
  EXPECT_TRUE(fourth->map_delta().layers().empty());

  // A stream without accept_map_delta gets every map whole, as before.
  for (int v = 2; v <= 4; ++v) {
    auto got = whole.WaitFor(v, v1::COMMITTED);
    ASSERT_TRUE(got.has_value());
    EXPECT_FALSE(got->has_map_delta());
    EXPECT_TRUE(MessageDifferencer::Equals(got->plan().map(), plans[v].map())) << v;
  }
  // A delta stream that says it holds version 3 gets version 4 against it; one that holds
  // nothing gets it whole.
  WatchClient known(env.stub(), "d", -1, /*known_version=*/3, /*accept_map_delta=*/true);
  auto resumed = known.Get(0);
  ASSERT_TRUE(resumed.has_value());
  ExpectDelta(*resumed, &plans[3], plans[4]);
  WatchClient fresh(env.stub(), "d", -1, 0, /*accept_map_delta=*/true);
  auto current = fresh.Get(0);
  ASSERT_TRUE(current.has_value());
  ExpectDelta(*current, nullptr, plans[4]);
}

TEST(PlannerWatchTest, AStateChangeOfAPlanTheStreamCarriedComesWithoutTheMap) {
  PlannerEnv env;
  ASSERT_TRUE(Create(env.stub(), AckedSpec("d")).ok());
  WatchClient rank0(env.stub(), "d", 0, 0, /*accept_map_delta=*/true);
  WatchClient rank1(env.stub(), "d", 1, 0, /*accept_map_delta=*/true);
  ASSERT_TRUE(rank0.Get(0).has_value());
  ASSERT_TRUE(rank1.Get(0).has_value());
  ReportSkew(env, "d");
  ASSERT_TRUE(Rebalance(env.stub(), "d").ok());
  auto pending = rank0.WaitFor(2, v1::PENDING);
  ASSERT_TRUE(pending.has_value());
  auto v1_plan = GetPlan(env.stub(), "d", 1);
  auto v2_plan = GetPlan(env.stub(), "d", 2);
  ASSERT_TRUE(v1_plan.ok() && v2_plan.ok());
  ExpectDelta(*pending, &*v1_plan, *v2_plan);
  ASSERT_TRUE(rank0.Ack(2, v1::STAGED, v2_plan->map_hash()));
  ASSERT_TRUE(rank1.Ack(2, v1::STAGED, v2_plan->map_hash()));
  auto committed = rank0.WaitFor(2, v1::COMMITTED);
  ASSERT_TRUE(committed.has_value());
  ExpectDelta(*committed, &*v2_plan, *v2_plan);  // against itself: no layers, no rows
  EXPECT_TRUE(committed->map_delta().layers().empty());
  EXPECT_EQ(committed->nonce(), pending->nonce());
}

// A delta stream that stops reading while plans are published and committed: its queued updates
// are superseded (PENDING by COMMITTED of the same version) while earlier ones wait on flow
// control. Whatever it then reads, every delta's base and every state change's map came earlier on
// the stream, and the maps it rebuilds are the planner's.
TEST(PlannerWatchTest, ADeltaStreamThatFellQuietStillCarriesEveryMapItsUpdatesNeed) {
  PlannerEnv env;
  v1::DeploymentSpec spec = Spec("big", 16, 1024, 2048, 2);  // acked; 64 KB compact maps
  spec.set_policy("deepseek");
  spec.mutable_trigger()->set_interval_steps(0);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  // The quiet stream on a connection of its own whose flow-control window does not grow (no
  // bandwidth-delay probing), so that it fills after a few maps.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt("eplb.test.quiet", 1);  // a channel not shared with the stub's
  auto quiet_stub = v1::Planner::NewStub(grpc::CreateCustomChannel(
      absl::StrCat("127.0.0.1:", env.port()), grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext quiet_context;
  auto quiet = quiet_stub->WatchPlans(&quiet_context);
  v1::WatchPlansRequest subscribe;
  subscribe.mutable_subscribe()->set_deployment("big");
  subscribe.mutable_subscribe()->set_rank(-1);
  subscribe.mutable_subscribe()->set_accept_map_delta(true);
  ASSERT_TRUE(quiet->Write(subscribe));
  WatchClient rank0(env.stub(), "big", 0);
  WatchClient rank1(env.stub(), "big", 1);
  ASSERT_TRUE(rank0.Get(0).has_value());

  constexpr int kPlans = 12;
  for (int round = 1; round <= kPlans; ++round) {
    std::vector<std::vector<double>> load(16, std::vector<double>(1024));
    for (int l = 0; l < 16; ++l) {
      for (int e = 0; e < 1024; ++e) load[l][e] = 1 + (e * 7 + l * 13 + round * 31) % 97;
    }
    // Counted against the plan the ranks run: version `round` (1, then each round's).
    ASSERT_TRUE(
        SendReports(env.stub(), {Report("big", 0, round, round * 10, round * 10 + 9, load, round),
                                 Report("big", 1, round, round * 10, round * 10 + 9, load, round)})
            .ok());
    auto published = Rebalance(env.stub(), "big");
    ASSERT_TRUE(published.ok()) << published.status();
    const int64_t v = published->version();
    ASSERT_TRUE(rank0.WaitFor(v, v1::PENDING).has_value());
    ASSERT_TRUE(rank0.Ack(v, v1::STAGED, published->map_hash()));
    ASSERT_TRUE(rank1.Ack(v, v1::STAGED, published->map_hash()));
    ASSERT_TRUE(rank0.WaitFor(v, v1::COMMITTED).has_value());
  }

  // Now read it all, as a client would, holding every map it carried.
  std::map<int64_t, v1::ExpertMap> held;
  std::map<int64_t, int> messages_of;
  v1::WatchPlansResponse response;
  int64_t last_committed = 0;
  while (last_committed < kPlans + 1 && quiet->Read(&response)) {
    const v1::Plan& plan = response.plan();
    messages_of[plan.version()]++;
    v1::ExpertMap map = plan.map();
    if (response.has_map_delta()) {
      const v1::MapDelta& delta = response.map_delta();
      const v1::ExpertMap* base = nullptr;
      if (delta.base_version() != 0) {
        ASSERT_TRUE(held.contains(delta.base_version()))
            << "version " << plan.version() << " names base " << delta.base_version()
            << ", which the stream never carried";
        base = &held.at(delta.base_version());
        ASSERT_EQ(MapContentHash(*base), delta.base_map_hash());
      }
      auto rebuilt = ApplyMapDelta(base, plan.map(), delta);
      ASSERT_TRUE(rebuilt.ok()) << rebuilt.status();
      map = *rebuilt;
    }
    auto parsed = ExpertMapFromProto(map);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    ASSERT_EQ(parsed->Hash(), plan.map_hash()) << "version " << plan.version();
    held[plan.version()] = map;
    if (plan.state() == v1::COMMITTED) last_committed = plan.version();
  }
  ASSERT_EQ(last_committed, kPlans + 1);
  auto stored = GetPlan(env.stub(), "big", kPlans + 1);
  ASSERT_TRUE(stored.ok());
  EXPECT_TRUE(MessageDifferencer::Equals(held.at(kPlans + 1), stored->map()));
  // The scenario happened: some version's PENDING update was superseded by its COMMITTED one.
  int superseded = 0;
  for (const auto& [version, count] : messages_of) superseded += version > 1 && count == 1;
  EXPECT_GT(superseded, 0);
  quiet_context.TryCancel();
}

// ---- Acknowledgements ---------------------------------------------------------------------------

TEST(PlannerAckTest, APlanCommitsWhenEveryRankStagedIt) {
  PlannerEnv env;
  ASSERT_TRUE(Create(env.stub(), AckedSpec("d")).ok());
  WatchClient rank0(env.stub(), "d", 0);
  WatchClient rank1(env.stub(), "d", 1);
  ASSERT_TRUE(rank0.Get(0).has_value());
  ASSERT_TRUE(rank1.Get(0).has_value());
  ReportSkew(env, "d");
  auto published = Rebalance(env.stub(), "d");
  ASSERT_TRUE(published.ok()) << published.status();
  EXPECT_EQ(published->state(), v1::PENDING);
  EXPECT_EQ(GetPlan(env.stub(), "d")->version(), 1);  // the committed one

  auto pending = rank0.WaitFor(2, v1::PENDING);
  ASSERT_TRUE(pending.has_value());
  ASSERT_TRUE(rank1.WaitFor(2, v1::PENDING).has_value());
  // No second plan while one is in flight.
  auto second = Rebalance(env.stub(), "d");
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Reason(second.status()), v1::PLAN_IN_FLIGHT);
  EXPECT_EQ(second.status().message(),
            "version 2 of deployment \"d\" is still being staged; retry when it commits or "
            "aborts");

  const uint64_t hash = pending->plan().map_hash();
  ASSERT_TRUE(rank0.Ack(2, v1::STAGED, hash));
  ASSERT_TRUE(rank1.Ack(2, v1::STAGED, hash));
  ASSERT_TRUE(rank0.WaitFor(2, v1::COMMITTED).has_value());
  ASSERT_TRUE(rank1.WaitFor(2, v1::COMMITTED).has_value());
  auto committed = GetPlan(env.stub(), "d");
  ASSERT_TRUE(committed.ok());
  EXPECT_EQ(committed->version(), 2);
  EXPECT_EQ(committed->ranks(0).state(), v1::STAGED);
  EXPECT_EQ(committed->ranks(1).map_hash(), hash);
  EXPECT_THAT(env.MetricsText(),
              HasSubstr("eplb_plan_version{deployment=\"d\",kind=\"committed\"} 2"));
  EXPECT_THAT(env.MetricsText(),
              HasSubstr("eplb_plans_total{deployment=\"d\",outcome=\"committed\"} 1"));
}

TEST(PlannerAckTest, AFailedRankAbortsThePlanAndVersionsAreNotReused) {
  PlannerEnv env;
  ASSERT_TRUE(Create(env.stub(), AckedSpec("d")).ok());
  WatchClient rank0(env.stub(), "d", 0);
  WatchClient rank1(env.stub(), "d", 1);
  ReportSkew(env, "d");
  ASSERT_TRUE(Rebalance(env.stub(), "d").ok());
  auto pending = rank0.WaitFor(2, v1::PENDING);
  ASSERT_TRUE(pending.has_value());
  ASSERT_TRUE(rank0.Ack(2, v1::STAGED, pending->plan().map_hash()));
  ASSERT_TRUE(rank1.Ack(2, v1::FAILED, 0, "out of device memory"));
  auto aborted = rank0.WaitFor(2, v1::ABORTED);
  ASSERT_TRUE(aborted.has_value());
  EXPECT_EQ(aborted->plan().abort_reason(), "rank 1 failed: out of device memory");
  EXPECT_EQ(GetPlan(env.stub(), "d")->version(), 1);
  auto next = Rebalance(env.stub(), "d");
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->version(), 3);
  EXPECT_EQ(next->parent_version(), 1);
}

TEST(PlannerAckTest, AnAckTimeoutAbortsThePlan) {
  PlannerEnv env;
  v1::DeploymentSpec spec = AckedSpec("d");
  spec.set_ack_timeout_ms(5000);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  WatchClient rank0(env.stub(), "d", 0);
  ReportSkew(env, "d");
  ASSERT_TRUE(Rebalance(env.stub(), "d").ok());
  auto pending = rank0.WaitFor(2, v1::PENDING);
  ASSERT_TRUE(pending.has_value());
  ASSERT_TRUE(rank0.Ack(2, v1::STAGED, pending->plan().map_hash()));
  ASSERT_TRUE(eplb::testing::WaitForRankState(env.stub(), "d", 2, 0, v1::STAGED));
  env.clock().Advance(absl::Milliseconds(4999));
  // Still pending: a dry run is a barrier on the planner's worker, which checks timers after it.
  ASSERT_TRUE(Rebalance(env.stub(), "d", true).ok());
  EXPECT_EQ(GetPlan(env.stub(), "d", 2)->state(), v1::PENDING);
  env.clock().Advance(absl::Milliseconds(1));
  auto aborted = rank0.WaitFor(2, v1::ABORTED);
  ASSERT_TRUE(aborted.has_value());
  EXPECT_EQ(aborted->plan().abort_reason(),
            "ack timeout after 5000 ms: 1 of 2 ranks did not stage it (ranks 1)");
  EXPECT_THAT(env.MetricsText(),
              HasSubstr("eplb_plans_total{deployment=\"d\",outcome=\"aborted\"} 1"));
}

TEST(PlannerAckTest, ARankWithAnotherMapHashIsNamed) {
  PlannerEnv env;
  ASSERT_TRUE(Create(env.stub(), AckedSpec("d")).ok());
  WatchClient rank0(env.stub(), "d", 0);
  WatchClient rank1(env.stub(), "d", 1);
  ReportSkew(env, "d");
  ASSERT_TRUE(Rebalance(env.stub(), "d").ok());
  auto pending = rank1.WaitFor(2, v1::PENDING);
  ASSERT_TRUE(pending.has_value());
  const uint64_t hash = pending->plan().map_hash();
  ASSERT_TRUE(rank0.Ack(2, v1::STAGED, hash));
  ASSERT_TRUE(rank1.Ack(2, v1::STAGED, 0x1234));
  auto aborted = rank1.WaitFor(2, v1::ABORTED);
  ASSERT_TRUE(aborted.has_value());
  EXPECT_EQ(aborted->plan().abort_reason(),
            absl::StrFormat("rank 1 holds map hash 0000000000001234, the plan's is %016x", hash));
  auto plan = GetPlan(env.stub(), "d", 2);
  ASSERT_TRUE(plan.ok());
  EXPECT_FALSE(plan->ranks(0).hash_mismatch());
  EXPECT_TRUE(plan->ranks(1).hash_mismatch());
  EXPECT_EQ(plan->ranks(1).map_hash(), 0x1234u);
  EXPECT_THAT(env.MetricsText(),
              HasSubstr("eplb_rank_hash_mismatch{deployment=\"d\",rank=\"1\"} 1"));
  // Reporting the right map clears the mismatch.
  ASSERT_TRUE(rank1.Ack(1, v1::ACTIVE, GetPlan(env.stub(), "d", 1)->map_hash()));
  ASSERT_TRUE(eplb::testing::WaitForRankState(env.stub(), "d", 1, 1, v1::ACTIVE));
  EXPECT_THAT(env.MetricsText(),
              HasSubstr("eplb_rank_hash_mismatch{deployment=\"d\",rank=\"1\"} 0"));
}

// Holds the planner's worker thread (a dry run whose callback waits) so that tests can queue work
// behind it deterministically.
class WorkerHold {
 public:
  WorkerHold(server::Planner& planner, const std::string& deployment) {
    planner.Rebalance(deployment, /*dry_run=*/true, [this](absl::StatusOr<v1::Plan>) {
      absl::MutexLock lock(&mu_);
      held_ = true;
      mu_.Await(absl::Condition(&released_));
    });
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&held_));
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    released_ = true;
  }

 private:
  absl::Mutex mu_;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  bool released_ ABSL_GUARDED_BY(mu_) = false;
};

// Nonces name the deployment as well as the version: an ack carrying a nonce of an earlier
// deployment of the same name (a rank that acked across a delete and re-create) is ignored, not
// applied to the new deployment's plan of the same version number.
TEST(PlannerAckTest, AnAckOfAnEarlierDeploymentOfTheSameNameIsIgnored) {
  PlannerEnv env;
  ASSERT_TRUE(Create(env.stub(), AckedSpec("d")).ok());
  ReportSkew(env, "d");
  auto earlier = Rebalance(env.stub(), "d");
  ASSERT_TRUE(earlier.ok());
  std::string earlier_nonce;
  {
    WatchClient watch(env.stub(), "d", 0);
    auto update = watch.WaitFor(2, v1::PENDING);
    ASSERT_TRUE(update.has_value());
    earlier_nonce = update->nonce();
  }
  server::Planner& planner = env.server().planner();
  ASSERT_TRUE(Delete(env.stub(), "d").ok());
  ASSERT_TRUE(Create(env.stub(), AckedSpec("d")).ok());
  ReportSkew(env, "d");
  auto plan = Rebalance(env.stub(), "d");
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->version(), 2);
  std::string nonce;
  {
    WatchClient watch(env.stub(), "d", 0);
    auto update = watch.WaitFor(2, v1::PENDING);
    ASSERT_TRUE(update.has_value());
    nonce = update->nonce();
  }
  ASSERT_NE(nonce, earlier_nonce);

  // The earlier deployment's ack of its version 2, with a hash the new version 2 does not have: it
  // would abort the plan if it counted.
  v1::WatchPlansRequest::Ack stale;
  stale.set_version(2);
  stale.set_nonce(earlier_nonce);
  stale.set_state(v1::STAGED);
  stale.set_map_hash(plan->map_hash() ^ 1);
  ASSERT_TRUE(planner.Ack("d", 0, stale).ok());
  auto after = GetPlan(env.stub(), "d", 2);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->state(), v1::PENDING);
  EXPECT_EQ(after->ranks(0).state(), v1::ACK_STATE_UNSPECIFIED);

  // The current nonce counts; a nonce of another version or not from this planner is refused.
  v1::WatchPlansRequest::Ack current = stale;
  current.set_nonce(nonce);
  current.set_map_hash(plan->map_hash());
  ASSERT_TRUE(planner.Ack("d", 0, current).ok());
  EXPECT_EQ(GetPlan(env.stub(), "d", 2)->ranks(0).state(), v1::STAGED);
  v1::WatchPlansRequest::Ack wrong_version = current;
  wrong_version.set_version(1);
  const absl::Status mismatch = planner.Ack("d", 1, wrong_version);
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(mismatch.message(), "ack.nonce names version 2, the ack version 1");
  v1::WatchPlansRequest::Ack forged = current;
  forged.set_nonce("2-7");
  const absl::Status bad = planner.Ack("d", 1, forged);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.message(), "ack.nonce = \"2-7\" is not a nonce this planner sent");
  EXPECT_EQ(Reason(bad), v1::FIELD_OUT_OF_RANGE);
  EXPECT_EQ(GetPlan(env.stub(), "d", 2)->ranks(1).state(), v1::ACK_STATE_UNSPECIFIED);
}

// A deployment stored before deployments had uids keeps one nonce prefix across restarts (derived
// from its name and creation time), so ranks' acks keep counting.
TEST(PlannerAckTest, DeploymentsStoredWithoutAUidKeepTheirNoncesAcrossRestarts) {
  PlannerEnv env;
  ASSERT_TRUE(Create(env.stub(), AckedSpec("d")).ok());
  const auto nonce = [&env]() -> std::string {
    WatchClient watch(env.stub(), "d", 0);
    auto update = watch.Get(0);
    return update.has_value() ? update->nonce() : "";
  };
  const std::string minted = nonce();
  env.Stop();
  const std::string path = env.state_dir() + "/deployments/d/deployment.pb";
  state::v1::StoredDeployment stored;
  {
    std::ifstream in(path, std::ios::binary);
    in.ignore(20);  // the file's header: magic, length, CRC-32
    ASSERT_TRUE(stored.ParseFromIstream(&in));
  }
  ASSERT_NE(stored.uid(), 0u);
  stored.clear_uid();
  {
    // Written as files were before they had a header: read as a bare message.
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    ASSERT_TRUE(stored.SerializeToOstream(&out));
  }
  env.Start();
  const std::string derived = nonce();
  ASSERT_FALSE(derived.empty());
  EXPECT_NE(derived, minted);
  EXPECT_EQ(derived.substr(16), ".1");
  env.Restart();
  EXPECT_EQ(nonce(), derived);
}

TEST(PlannerAckTest, AFailureAfterTheCommitWasDecidedStillAborts) {
  PlannerEnv env;
  ASSERT_TRUE(Create(env.stub(), AckedSpec("d")).ok());
  ReportSkew(env, "d");
  auto plan = Rebalance(env.stub(), "d");
  ASSERT_TRUE(plan.ok());
  server::Planner& planner = env.server().planner();
  WorkerHold hold(planner, "d");
  v1::WatchPlansRequest::Ack staged;
  staged.set_version(2);
  staged.set_state(v1::STAGED);
  staged.set_map_hash(plan->map_hash());
  ASSERT_TRUE(planner.Ack("d", 0, staged).ok());
  ASSERT_TRUE(planner.Ack("d", 1, staged).ok());  // all staged: the commit is queued
  v1::WatchPlansRequest::Ack failed;
  failed.set_version(2);
  failed.set_state(v1::FAILED);
  failed.set_error_detail("lost the staged weights");
  ASSERT_TRUE(planner.Ack("d", 1, failed).ok());
  hold.Release();
  ASSERT_TRUE(Rebalance(env.stub(), "d", true).ok());  // runs after the queued decision
  auto after = GetPlan(env.stub(), "d", 2);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->state(), v1::ABORTED);
  EXPECT_EQ(after->abort_reason(), "rank 1 failed: lost the staged weights");
  EXPECT_EQ(GetPlan(env.stub(), "d")->version(), 1);
}

TEST(PlannerAckTest, AcksOfVersionsNeverPublishedAreRefused) {
  PlannerEnv env;
  ASSERT_TRUE(Create(env.stub(), AckedSpec("d")).ok());
  v1::WatchPlansRequest::Ack ack;
  ack.set_version(7);
  ack.set_state(v1::STAGED);
  const absl::Status status = env.server().planner().Ack("d", 0, ack);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "ack.version = 7 was never published (latest: 1)");
  EXPECT_EQ(GetPlan(env.stub(), "d")->ranks(0).state(), v1::ACK_STATE_UNSPECIFIED);
}

TEST(PlannerAckTest, BadAcksEndTheStream) {
  PlannerEnv env;
  ASSERT_TRUE(Create(env.stub(), AckedSpec("d")).ok());
  {
    WatchClient observer(env.stub(), "d", -1);
    ASSERT_TRUE(observer.Get(0).has_value());
    observer.Ack(1, v1::STAGED, 0);
    EXPECT_FALSE(observer.Get(1).has_value());  // the stream ended
  }
  {
    WatchClient rank(env.stub(), "d", 0);
    ASSERT_TRUE(rank.Get(0).has_value());
    rank.Ack(1, v1::ACK_STATE_UNSPECIFIED, 0);
    EXPECT_FALSE(rank.Get(1).has_value());
  }
}

TEST(PlannerWatchTest, DeleteEndsWatchesAndARecreatedDeploymentStartsOver) {
  PlannerEnv env;
  ASSERT_TRUE(Create(env.stub(), AckedSpec("d")).ok());
  ReportSkew(env, "d");
  {
    WatchClient watcher(env.stub(), "d", 0);
    ASSERT_TRUE(watcher.Get(0).has_value());
    ASSERT_TRUE(Delete(env.stub(), "d").ok());
    EXPECT_FALSE(watcher.Get(1).has_value());  // the stream ended (NOT_FOUND)
  }
  ASSERT_TRUE(Create(env.stub(), AckedSpec("d")).ok());
  // A client of the old deployment that knew version 5 is told, not left waiting.
  grpc::ClientContext context;
  auto stream = env.stub().WatchPlans(&context);
  v1::WatchPlansRequest request;
  request.mutable_subscribe()->set_deployment("d");
  request.mutable_subscribe()->set_rank(0);
  request.mutable_subscribe()->set_known_version(5);
  stream->Write(request);
  v1::WatchPlansResponse response;
  EXPECT_FALSE(stream->Read(&response));
  const absl::Status status = FromGrpcStatus(stream->Finish());
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(status.message(),
            "subscribe.known_version = 5 is newer than the latest version of deployment \"d\" "
            "(1); was it deleted and created again?");
  // The re-created deployment's series are live and start over.
  ReportSkew(env, "d");
  EXPECT_THAT(env.MetricsText(),
              HasSubstr("eplb_reports_total{deployment=\"d\",result=\"accepted\"} 2"));
  EXPECT_THAT(env.MetricsText(),
              HasSubstr("eplb_plan_version{deployment=\"d\",kind=\"committed\"} 1"));
}

// ---- Persistence --------------------------------------------------------------------------------

TEST(PlannerPersistenceTest, PlansVersionsAndLoadSurviveARestart) {
  PlannerEnv env;
  v1::DeploymentSpec spec = AckedSpec("d");
  spec.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
  spec.set_plan_history(3);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  v1::DeploymentSpec acked = AckedSpec("acked");
  ASSERT_TRUE(Create(env.stub(), acked).ok());
  ReportSkew(env, "d");
  ReportSkew(env, "acked");
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Rebalance(env.stub(), "d").ok());  // versions 2..5
  ASSERT_TRUE(Rebalance(env.stub(), "acked").ok());                          // 2, in flight
  auto plans = ListPlans(env.stub(), "d");
  ASSERT_EQ(plans->size(), 3u);  // 5, 4, 3
  auto load = GetLoad(env.stub(), "d");
  auto in_flight = GetPlan(env.stub(), "acked", 2);

  env.Restart();

  auto plans_after = ListPlans(env.stub(), "d");
  ASSERT_TRUE(plans_after.ok()) << plans_after.status();
  ASSERT_EQ(plans_after->size(), plans->size());
  for (size_t i = 0; i < plans->size(); ++i) {
    // When a plan went out is known to the process that sent it, not read back after a restart.
    EXPECT_TRUE((*plans)[i].has_publish_time()) << i;
    EXPECT_FALSE((*plans_after)[i].has_publish_time()) << i;
    (*plans)[i].clear_publish_time();
    EXPECT_TRUE(MessageDifferencer::Equals((*plans)[i], (*plans_after)[i])) << i;
  }
  EXPECT_TRUE(MessageDifferencer::Equals(*load, *GetLoad(env.stub(), "d")));
  // The plan in flight is still in flight and is sent to a watcher at once.
  WatchClient rank0(env.stub(), "acked", 0, /*known_version=*/1);
  auto pending = rank0.Get(0);
  ASSERT_TRUE(pending.has_value());
  EXPECT_EQ(pending->plan().version(), 2);
  EXPECT_EQ(pending->plan().state(), v1::PENDING);
  EXPECT_EQ(pending->plan().map_hash(), in_flight->map_hash());
  // The next version continues the sequence.
  auto next = Rebalance(env.stub(), "d");
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->version(), 6);
  // Retried reports from before the restart are still recognised.
  auto retry = SendReports(
      env.stub(), {Report("d", 0, 1, 0, 9, {{9, 8, 7, 6, 1, 1, 1, 1}, {1, 1, 1, 1, 9, 9, 9, 9}})});
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->duplicates(), 1);
}

TEST(PlannerPersistenceTest, AnUnreadableStateRefusesToStart) {
  const std::string dir = eplb::testing::MakeTempDir();
  std::filesystem::create_directories(dir + "/deployments/broken/plans");
  std::ofstream(dir + "/deployments/broken/deployment.pb") << "not a protobuf \xff\xff\xff";
  server::PlannerServerOptions options;
  options.listen = "127.0.0.1:0";
  options.state_dir = dir;
  FakeClock clock;
  auto server = server::PlannerServer::Start(options, &clock, nullptr);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kDataLoss) << server.status();
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("deployment.pb"));
  std::filesystem::remove_all(dir);
}

// ---- Operations ---------------------------------------------------------------------------------

TEST(PlannerOperationsTest, HealthIsServingUntilShutdown) {
  PlannerEnv env;
  auto health = grpc::health::v1::Health::NewStub(env.channel());
  for (const std::string service : {"", "eplb.v1.Planner"}) {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(&context, request, &response).ok());
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("eplb.v1.Planner");
  auto watch = health->Watch(&context, request);
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  std::thread stop([&env] { env.server().Shutdown(absl::Seconds(5)); });
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  context.TryCancel();
  stop.join();
}

TEST(PlannerOperationsTest, ReflectionListsTheServices) {
  PlannerEnv env;
  grpc::GenericStub generic(env.channel());
  eplb::testing::RawStream call(generic,
                                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo");
  ASSERT_TRUE(call.started());
  eplb::test::ServerReflectionRequest request;
  request.set_list_services("");
  ASSERT_TRUE(call.Write(request.SerializeAsString()));
  const std::optional<std::string> received = call.Read();
  ASSERT_TRUE(received.has_value());
  eplb::test::ServerReflectionResponse response;
  ASSERT_TRUE(response.ParseFromString(*received));
  std::vector<std::string> names;
  for (const auto& service : response.list_services_response().service()) {
    names.push_back(service.name());
  }
  EXPECT_THAT(names, ::testing::IsSupersetOf({"eplb.v1.Planner", "grpc.health.v1.Health"}));
}

TEST(PlannerOperationsTest, ABearerTokenIsRequiredWhenConfigured) {
  server::PlannerServerOptions options;
  options.service.bearer_token = "s3cret-0123456789abcdef";
  PlannerEnv env(options);
  const auto list = [&env](const std::string& authorization) {
    grpc::ClientContext context;
    if (!authorization.empty()) context.AddMetadata("authorization", authorization);
    v1::ListDeploymentsResponse response;
    return FromGrpcStatus(env.stub().ListDeployments(&context, {}, &response));
  };
  const absl::Status missing = list("");
  EXPECT_EQ(missing.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(missing.message(), "missing bearer token (authorization metadata)");
  EXPECT_EQ(Reason(missing), v1::UNAUTHENTICATED_TOKEN);
  EXPECT_EQ(list("Bearer wrong").message(), "wrong bearer token");
  EXPECT_EQ(list("Bearer s3cre").message(), "wrong bearer token");  // a prefix
  EXPECT_EQ(list("Bearer s3cret-0123456789abcdef0").message(), "wrong bearer token");
  EXPECT_EQ(list("Bearer s3cret-0123456789abcdef" + std::string(5000, '0')).message(), "wrong bearer token");
  EXPECT_TRUE(list("Bearer s3cret-0123456789abcdef").ok());
  // Streams too.
  auto reports = SendReports(env.stub(), {Report("d", 0, 1, 0, 0, {{1}})});
  EXPECT_EQ(reports.status().code(), absl::StatusCode::kUnauthenticated);
  WatchClient watch(env.stub(), "d", 0);
  EXPECT_FALSE(watch.Get(0).has_value());
}

TEST(PlannerOperationsTest, ATokenTooShortToResistGuessingOrTooLongIsRefusedAtStart) {
  const auto start = [](const std::string& token) {
    server::PlannerServerOptions options;
    options.listen = "127.0.0.1:0";
    options.state_dir = eplb::testing::MakeTempDir();
    options.service.bearer_token = token;
    FakeClock clock;
    const absl::Status status = server::PlannerServer::Start(options, &clock, nullptr).status();
    std::filesystem::remove_all(options.state_dir);
    return status;
  };
  const auto refusal = [](int bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the bearer token: the token has ", bytes,
        " bytes; a token is 16 … 4089 printable characters without spaces (e.g. openssl rand "
        "-hex 32)"));
  };
  EXPECT_EQ(start(std::string(4090, 't')), refusal(4090));
  EXPECT_EQ(start("s3cret"), refusal(6));
  EXPECT_EQ(start("0123456789abcd f"), refusal(16));
  EXPECT_TRUE(start("0123456789abcdef").ok());
}

// Every method of the service, including any added later, refuses a call without the token
// before it looks at the request (an empty one here): UNAUTHENTICATED with its reason.
TEST(PlannerOperationsTest, EveryMethodRefusesACallWithoutTheToken) {
  server::PlannerServerOptions options;
  options.service.bearer_token = "s3cret-0123456789abcdef";
  PlannerEnv env(options);
  grpc::GenericStub stub(env.channel());
  const eplb::testing::PlannerMethods methods = eplb::testing::ListPlannerMethods();
  ASSERT_FALSE(methods.unary.empty());
  for (const google::protobuf::MethodDescriptor* method : methods.unary) {
    // An empty message: valid for every request type.
    const absl::Status refused = FromGrpcStatus(
        eplb::testing::RawUnaryCall(stub, eplb::testing::MethodPath(method), ""));
    EXPECT_EQ(refused.code(), absl::StatusCode::kUnauthenticated) << method->name();
    EXPECT_EQ(Reason(refused), v1::UNAUTHENTICATED_TOKEN) << method->name();
  }
  // Tested above, through their own clients.
  EXPECT_THAT(methods.streaming, ::testing::UnorderedElementsAre("ReportLoad", "WatchPlans"));
  // Nothing was created by any of them.
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer s3cret-0123456789abcdef");
  v1::ListDeploymentsResponse list;
  ASSERT_TRUE(env.stub().ListDeployments(&context, {}, &list).ok());
  EXPECT_EQ(list.deployments_size(), 0);
}

// Writes a CA, a server certificate for 127.0.0.1 and a client certificate with openssl.
class TlsFiles {
 public:
  TlsFiles() : dir_(eplb::testing::MakeTempDir()) {
    const std::string script = absl::StrCat(
        "cd ", dir_, " && ",
        "openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=eplb-test-ca "
        "-keyout ca.key -out ca.pem && ",
        "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key "
        "-out server.csr && ",
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > san.ext && ",
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 "
        "-extfile san.ext -out server.pem && ",
        "openssl req -newkey rsa:2048 -nodes -subj /CN=worker -keyout client.key "
        "-out client.csr && ",
        "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 "
        "-out client.pem");
    ok_ = std::system(absl::StrCat("(", script, ") > ", dir_, "/openssl.log 2>&1").c_str()) == 0;
  }
  ~TlsFiles() { std::filesystem::remove_all(dir_); }
  bool ok() const { return ok_; }
  std::string Read(const std::string& name) const {
    std::ifstream in(dir_ + "/" + name);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 private:
  std::string dir_;
  bool ok_ = false;
};

TEST(PlannerOperationsTest, MutualTlsAcceptsOnlyClientsWithACertificate) {
  TlsFiles files;
  ASSERT_TRUE(files.ok()) << "openssl failed";
  server::PlannerServerOptions options;
  options.tls_cert_pem = files.Read("server.pem");
  options.tls_key_pem = files.Read("server.key");
  options.tls_client_ca_pem = files.Read("ca.pem");
  PlannerEnv env(options);
  const auto list = [&](bool with_client_cert) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = files.Read("ca.pem");
    if (with_client_cert) {
      ssl.pem_private_key = files.Read("client.key");
      ssl.pem_cert_chain = files.Read("client.pem");
    }
    auto channel =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", env.port()), grpc::SslCredentials(ssl));
    auto stub = v1::Planner::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    v1::ListDeploymentsResponse response;
    return stub->ListDeployments(&context, {}, &response);
  };
  EXPECT_TRUE(list(true).ok()) << list(true).error_message();
  EXPECT_EQ(list(false).error_code(), grpc::StatusCode::UNAVAILABLE);
  // A plaintext client cannot talk to it either.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::ListDeploymentsResponse response;
  EXPECT_FALSE(env.stub().ListDeployments(&context, {}, &response).ok());
}

// A client certificate is an identity that scoped credentials name: "worker" (the client
// certificate's common name) may read and report for deployment "a" only; a certificate that no
// credential names is refused once credentials are configured.
TEST(PlannerOperationsTest, ClientCertificatesAreScopedByTheirIdentity) {
  TlsFiles files;
  ASSERT_TRUE(files.ok()) << "openssl failed";
  const auto start = [&](const std::string& identity) {
    server::PlannerServerOptions options;
    options.tls_cert_pem = files.Read("server.pem");
    options.tls_key_pem = files.Read("server.key");
    options.tls_client_ca_pem = files.Read("ca.pem");
    options.service.bearer_token = "admin-token-0123456789";
    options.service.credentials = {{.name = "workers-a",
                                    .scope = server::Scope::kDeployment,
                                    .deployment = "a",
                                    .identity = identity}};
    return std::make_unique<PlannerEnv>(options);
  };
  const auto stub = [&](PlannerEnv& env) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = files.Read("ca.pem");
    ssl.pem_private_key = files.Read("client.key");
    ssl.pem_cert_chain = files.Read("client.pem");
    return v1::Planner::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", env.port()), grpc::SslCredentials(ssl)));
  };
  const auto create = [](v1::Planner::Stub& s, const std::string& name, bool as_admin) {
    grpc::ClientContext context;
    if (as_admin) context.AddMetadata("authorization", "Bearer admin-token-0123456789");
    v1::CreateDeploymentRequest request;
    *request.mutable_spec() = eplb::testing::Spec(name, 1, 4, 4, 2);
    v1::Deployment response;
    return FromGrpcStatus(s.CreateDeployment(&context, request, &response));
  };
  {
    auto env = start("worker");
    auto client = stub(*env);
    ASSERT_TRUE(create(*client, "a", /*as_admin=*/true).ok());
    ASSERT_TRUE(create(*client, "b", /*as_admin=*/true).ok());
    const absl::Status denied = create(*client, "c", /*as_admin=*/false);
    EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(denied.message(),
              "credential \"workers-a\" (scope deployment \"a\") may not create deployments: "
              "that needs scope admin");
    EXPECT_TRUE(GetPlan(*client, "a").ok());
    EXPECT_EQ(GetPlan(*client, "b").status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_TRUE(SendReports(*client, {Report("a", 0, 1, 1, 1, {{1, 2, 3, 4}})}).ok());
  }
  auto env = start("someone-else");
  auto client = stub(*env);
  const absl::Status unknown = GetPlan(*client, "a").status();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(unknown.message(),
            "no credential names the client certificate (\"worker\") and no bearer token was "
            "sent");
}

}  // namespace
}  // namespace eplb
