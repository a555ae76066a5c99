// The worker side end to end against a real planner on 127.0.0.1:0: four ranks (threads, host
// communicator, host memory), each with a LoadReporter, a PlanWatcher and a PlacementAgent, serving
// in lockstep. Load flows to the planner, a rebalance publishes a plan, every rank acknowledges
// STAGED, the planner commits, the ranks switch and acknowledge ACTIVE; across a planner restart
// the watchers reconnect and the next plan goes through the same way.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <thread>

#include "agent/placement_agent.h"
#include "client/load_reporter.h"
#include "client/plan_watcher.h"
#include "tests/server/test_env.h"
#include "transfer/host_communicator.h"

namespace eplb::client {
namespace {

using agent::PlacementAgent;
using agent::PlacementAgentOptions;
using ::eplb::testing::Create;
using ::eplb::testing::GetLoad;
using ::eplb::testing::GetPlan;
using ::eplb::testing::PlannerEnv;
using ::eplb::testing::Rebalance;
using ::eplb::testing::Spec;

constexpr int32_t kLayers = 3, kExperts = 8, kSlots = 12, kRanks = 4;
constexpr size_t kExpertBytes = 32;

uint8_t PatternByte(int32_t layer, int32_t expert, size_t i) {
  return static_cast<uint8_t>(layer * 97 + expert * 13 + i);
}

// Waits (real time, bounded) until `done` holds.
template <typename F>
bool WaitFor(F done, absl::Duration timeout = absl::Seconds(30)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return true;
}

bool AllRanks(const v1::Plan& plan, v1::AckState state) {
  if (plan.ranks_size() != kRanks) return false;
  for (const v1::RankAck& ack : plan.ranks()) {
    if (ack.state() != state || ack.hash_mismatch() || ack.map_hash() != plan.map_hash()) {
      return false;
    }
  }
  return true;
}

TEST(AgentPlannerTest, PlansFlowFromLoadToActiveOnEveryRank) {
  PlannerEnv env;
  v1::DeploymentSpec spec = Spec("m", kLayers, kExperts, kSlots, kRanks);
  spec.set_policy("deepseek");
  spec.mutable_trigger()->set_interval_steps(0);  // plans on demand only
  spec.mutable_smoothing()->set_window_steps(64);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  auto v1_plan = GetPlan(env.stub(), "m", 1);
  ASSERT_TRUE(v1_plan.ok());
  auto initial = ExpertMapFromProto(v1_plan->map());
  ASSERT_TRUE(initial.ok());
  auto initial_map = std::make_shared<const ExpertMap>(*std::move(initial));

  auto group = transfer::HostCommunicatorGroup::Create(kRanks, {.timeout = absl::Seconds(20)});
  ASSERT_TRUE(group.ok());
  std::atomic<bool> stop_requested = false;
  bool stop = false;  // read by every rank after the barrier: all stop at the same step
  std::barrier step_barrier(kRanks, [&]() noexcept { stop = stop_requested.load(); });
  std::atomic<int64_t> content_errors = 0;
  std::vector<int64_t> final_versions(kRanks, -1);
  std::vector<std::vector<int32_t>> final_maps(kRanks);

  std::vector<std::thread> ranks;
  for (int32_t rank = 0; rank < kRanks; ++rank) {
    ranks.emplace_back([&, rank] {
      auto client = PlannerClient::Create(
          {.server = absl::StrCat("127.0.0.1:", env.port()), .rpc_timeout = absl::Seconds(5)});
      ASSERT_TRUE(client.ok());
      auto reporter = LoadReporter::Create(client->get(), {.deployment = "m",
                                                           .rank = rank,
                                                           .num_layers = kLayers,
                                                           .num_experts = kExperts,
                                                           .flush_every_steps = 8,
                                                           .initial_backoff = absl::Milliseconds(5),
                                                           .max_backoff = absl::Milliseconds(50)});
      ASSERT_TRUE(reporter.ok());
      auto watcher = PlanWatcher::Create(client->get(), {.deployment = "m",
                                                         .rank = rank,
                                                         .initial_backoff = absl::Milliseconds(5),
                                                         .max_backoff = absl::Milliseconds(50)});
      ASSERT_TRUE(watcher.ok());

      const int32_t S = kSlots / kRanks, first = rank * S;
      std::vector<std::vector<std::vector<uint8_t>>> storage(kLayers);
      PlacementAgentOptions options;
      options.rank = rank;
      options.initial_map = initial_map;
      options.initial_version = 1;
      options.sync_every_steps = 4;
      options.on_ack = [w = watcher->get()](const AgentAck& ack) { w->Ack(ack); };
      options.weights.resize(kLayers);
      for (int32_t l = 0; l < kLayers; ++l) {
        for (int32_t s = 0; s < S; ++s) {
          std::vector<uint8_t> bytes(kExpertBytes);
          for (size_t i = 0; i < kExpertBytes; ++i) {
            bytes[i] = PatternByte(l, initial_map->phy2log(l)[first + s], i);
          }
          storage[l].push_back(std::move(bytes));
        }
        for (auto& bytes : storage[l]) options.weights[l].push_back({{bytes.data(), bytes.size()}});
      }
      std::unique_ptr<transfer::Communicator> comm = group->ForRank(rank);
      transfer::HostDeviceContext device;
      auto agent = PlacementAgent::Create(options, comm.get(), &device);
      ASSERT_TRUE(agent.ok()) << agent.status();
      (*watcher)->Start([a = agent->get()](const AgentPlan& plan) { a->OfferPlan(plan); });

      // Skewed load: expert e of every layer gets e + 1 tokens per step (the same on every rank).
      std::vector<double> counts(kLayers * kExperts);
      for (int32_t i = 0; i < kLayers * kExperts; ++i) counts[i] = (i % kExperts + 1) * 10.0;
      for (int64_t step = 0;; ++step) {
        step_barrier.arrive_and_wait();
        if (stop) break;
        ASSERT_TRUE((*agent)->OnStepBoundary(step).ok());
        ASSERT_TRUE((*reporter)->AddStep(step, (*agent)->layer_version(0), counts).ok());
        for (int32_t l = 0; l < kLayers; ++l) {
          for (int32_t s = 0; s < S; ++s) {
            const int32_t expert = (*agent)->phy2log(l)[first + s];
            for (size_t i = 0; i < kExpertBytes; ++i) {
              if (storage[l][s][i] != PatternByte(l, expert, i)) {
                content_errors++;
                break;
              }
            }
          }
        }
        absl::SleepFor(absl::Microseconds(200));  // a step of serving
      }
      final_versions[rank] = (*agent)->active_version();
      for (int32_t l = 0; l < kLayers; ++l) {
        final_maps[rank].insert(final_maps[rank].end(), (*agent)->phy2log(l).begin(),
                                (*agent)->phy2log(l).end());
      }
      (*watcher)->Stop();
      agent->reset();
    });
  }

  // Load arrives; a rebalance publishes version 2; every rank stages, the planner commits, every
  // rank switches and acknowledges ACTIVE with the plan's hash.
  ASSERT_TRUE(WaitFor([&] {
    auto load = GetLoad(env.stub(), "m");
    return load.ok() && load->steps_seen() >= 16;
  }));
  auto v2 = Rebalance(env.stub(), "m");
  ASSERT_TRUE(v2.ok()) << v2.status();
  ASSERT_EQ(v2->version(), 2);
  ASSERT_GT(v2->metrics().slots_changed(), 0);
  ASSERT_TRUE(WaitFor([&] {
    auto plan = GetPlan(env.stub(), "m", 2);
    return plan.ok() && plan->state() == v1::COMMITTED && AllRanks(*plan, v1::ACTIVE);
  })) << GetPlan(env.stub(), "m", 2)->DebugString();

  // The planner restarts; the watchers reconnect; version 3 goes through the same way.
  env.Stop();
  env.Start();
  auto v3 = Rebalance(env.stub(), "m");
  ASSERT_TRUE(v3.ok()) << v3.status();
  ASSERT_EQ(v3->version(), 3);
  ASSERT_TRUE(WaitFor([&] {
    auto plan = GetPlan(env.stub(), "m", 3);
    return plan.ok() && plan->state() == v1::COMMITTED && AllRanks(*plan, v1::ACTIVE);
  })) << GetPlan(env.stub(), "m", 3)->DebugString();

  stop_requested = true;
  for (auto& t : ranks) t.join();
  EXPECT_EQ(content_errors.load(), 0);
  auto v3_map = ExpertMapFromProto(v3->map());
  ASSERT_TRUE(v3_map.ok());
  for (int32_t rank = 0; rank < kRanks; ++rank) {
    EXPECT_EQ(final_versions[rank], 3) << rank;
    EXPECT_EQ(final_maps[rank], v3_map->phy2log_table()) << rank;
  }
}

}  // namespace
}  // namespace eplb::client
