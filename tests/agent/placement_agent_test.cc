// PlacementAgent with R host-backend ranks, each serving loop on its own thread, expert weights in
// host memory filled with a pattern unique to (layer, expert, buffer). After every step boundary
// each rank checks that every slot holds exactly its expert's bytes under the rank's current map;
// the harness records each rank's map at every step and checks that all ranks ran every step with
// the same map.
#include "agent/placement_agent.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/testing/random_inputs.h"
#include "transfer/hierarchical_communicator.h"
#include "transfer/host_communicator.h"

namespace eplb::agent {
namespace {

using ::eplb::testing::RandomExpertMap;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using transfer::HostCommunicatorGroup;
using transfer::HostDeviceContext;

constexpr size_t kBufferBytes[] = {40, 24};  // e.g. w13 and w2 of one expert

uint8_t PatternByte(int32_t layer, int32_t expert, size_t buffer, size_t i) {
  uint64_t x = (static_cast<uint64_t>(layer) << 40) ^ (static_cast<uint64_t>(expert) << 20) ^
               (buffer << 10) ^ i;
  x *= 0x9E3779B97F4A7C15ULL;
  return static_cast<uint8_t>(x >> 56);
}

AgentPlan Plan(int64_t version, PlanStatus status, std::shared_ptr<const ExpertMap> map) {
  AgentPlan plan{version, status, map, map ? map->Hash() : 0};
  return plan;
}

// Host memory, but every switch takes a while, and a staging area is checked not to be staged into
// while a switch still reads it (the agent must order the two). It also counts staging left
// unfinished: StageCopies not followed by FinishStaging before the next chunk or the end.
class SlowSwitchDevice final : public transfer::DeviceContext {
 public:
  absl::StatusOr<void*> Allocate(size_t bytes, transfer::MemoryKind kind) override {
    return host_.Allocate(bytes, kind);
  }
  void Free(void* ptr, transfer::MemoryKind kind) override { host_.Free(ptr, kind); }
  absl::Status WaitForArea(int area) override {
    if (reading_[area].load()) overlaps_++;
    if (staging_open_) unfinished_++;
    return host_.WaitForArea(area);
  }
  absl::Status StageCopies(std::span<const transfer::CopyOp> ops) override {
    staging_open_ = true;
    return host_.StageCopies(ops);
  }
  absl::Status FinishStaging() override {
    staging_open_ = false;
    return host_.FinishStaging();
  }
  // Staging calls never finished (counting one still open now).
  int unfinished() const { return unfinished_.load() + (staging_open_.load() ? 1 : 0); }
  absl::Status WaitForSwitches() override { return absl::OkStatus(); }
  absl::Status SwitchCopies(std::span<const transfer::CopyOp> ops, int area) override {
    reading_[area] = true;
    absl::SleepFor(absl::Milliseconds(3));  // widens the window a misordered agent would hit
    absl::Status status = host_.SwitchCopies(ops, area);
    reading_[area] = false;
    return status;
  }
  int overlaps() const { return overlaps_.load(); }

 private:
  HostDeviceContext host_;
  std::atomic<bool> reading_[kNumAreas] = {false, false};
  std::atomic<int> overlaps_ = 0;
  std::atomic<bool> staging_open_ = false;
  std::atomic<int> unfinished_ = 0;
};

struct Delivery {
  int64_t step = 0;   // offered by the rank's serving thread before this step's boundary
  int32_t rank = -1;  // −1: every rank
  AgentPlan plan;
};

struct RankResult {
  std::vector<uint64_t> map_per_step;  // hash of phy2log of every layer, per step
  int64_t content_errors = 0;
  int area_overlaps = 0;       // with slow_switch
  int unfinished_staging = 0;  // with slow_switch
  std::string first_content_error;
  std::vector<AgentAck> acks;
  PlacementAgent::Status status;
  std::vector<int32_t> final_phy2log;  // L × P
  absl::Status boundary_status;
};

struct GroupOptions {
  int32_t L = 4, E = 8, P = 12, R = 4;
  int64_t sync_every_steps = 2;
  int32_t layers_per_chunk = 1;
  int64_t steps = 80;
  std::shared_ptr<const ExpertMap> initial;
  std::map<int32_t, std::shared_ptr<const ExpertMap>> initial_per_rank;  // overrides
  transfer::HostGroupOptions comm;
  bool slow_switch = false;  // SlowSwitchDevice instead of HostDeviceContext
  // > 0: nodes of this many ranks, each rank's communicator a HierarchicalCommunicator over its
  // node's host group and the global one (and the agent's ranks_per_node).
  int32_t ranks_per_node = 0;
  // Set to the group once created, for fault hooks that need it.
  std::function<void(HostCommunicatorGroup*)> on_group;
};

uint64_t HashTables(const PlacementAgent& agent, int32_t L) {
  uint64_t h = 1469598103934665603ULL;
  for (int32_t l = 0; l < L; ++l) {
    for (const int32_t e : agent.phy2log(l)) h = (h ^ static_cast<uint32_t>(e)) * 1099511628211ULL;
  }
  return h;
}

// Runs R ranks for options.steps steps with the given deliveries.
std::vector<RankResult> RunGroup(GroupOptions options, const std::vector<Delivery>& deliveries) {
  auto group = HostCommunicatorGroup::Create(options.R, options.comm);
  EXPECT_TRUE(group.ok()) << group.status();
  if (options.on_group) options.on_group(&*group);
  std::vector<HostCommunicatorGroup> nodes;
  for (int32_t n = 0; options.ranks_per_node > 0 && n < options.R / options.ranks_per_node; ++n) {
    nodes.push_back(*HostCommunicatorGroup::Create(options.ranks_per_node));
  }
  std::vector<RankResult> results(options.R);
  std::vector<std::thread> threads;
  for (int32_t rank = 0; rank < options.R; ++rank) {
    threads.emplace_back([&, rank] {
      RankResult& out = results[rank];
      auto initial = options.initial_per_rank.contains(rank) ? options.initial_per_rank[rank]
                                                             : options.initial;
      const SlotLayout layout = initial->layout();
      const int32_t S = layout.SlotsOnRank(rank);
      const int32_t first = layout.FirstSlotOfRank(rank);
      // weights[l][s][b], filled for the initial map.
      std::vector<std::vector<std::vector<std::vector<uint8_t>>>> storage(options.L);
      PlacementAgentOptions agent_options;
      agent_options.rank = rank;
      agent_options.initial_map = initial;
      agent_options.initial_version = 1;
      agent_options.sync_every_steps = options.sync_every_steps;
      agent_options.layers_per_chunk = options.layers_per_chunk;
      agent_options.ranks_per_node = options.ranks_per_node;
      absl::Mutex acks_mu;
      agent_options.on_ack = [&](const AgentAck& ack) {
        absl::MutexLock lock(&acks_mu);
        out.acks.push_back(ack);
      };
      agent_options.weights.resize(options.L);
      for (int32_t l = 0; l < options.L; ++l) {
        storage[l].resize(S);
        for (int32_t s = 0; s < S; ++s) {
          const int32_t expert = initial->phy2log(l)[first + s];
          for (size_t b = 0; b < std::size(kBufferBytes); ++b) {
            std::vector<uint8_t> bytes(kBufferBytes[b]);
            for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = PatternByte(l, expert, b, i);
            storage[l][s].push_back(std::move(bytes));
          }
          SlotWeights slot;
          for (auto& bytes : storage[l][s]) slot.push_back({bytes.data(), bytes.size()});
          agent_options.weights[l].push_back(std::move(slot));
        }
      }
      std::unique_ptr<transfer::Communicator> comm = group->ForRank(rank);
      if (options.ranks_per_node > 0) {
        const int32_t k = options.ranks_per_node;
        auto hierarchical = transfer::HierarchicalCommunicator::Create(
            nodes[rank / k].ForRank(rank % k), std::move(comm), k);
        ASSERT_TRUE(hierarchical.ok()) << hierarchical.status();
        comm = *std::move(hierarchical);
      }
      HostDeviceContext host_device;
      SlowSwitchDevice slow_device;
      transfer::DeviceContext* device =
          options.slow_switch ? static_cast<transfer::DeviceContext*>(&slow_device) : &host_device;
      auto agent = PlacementAgent::Create(agent_options, comm.get(), device);
      ASSERT_TRUE(agent.ok()) << agent.status();
      for (int64_t step = 0; step < options.steps; ++step) {
        for (const Delivery& d : deliveries) {
          if (d.step == step && (d.rank == -1 || d.rank == rank)) (*agent)->OfferPlan(d.plan);
        }
        if (absl::Status status = (*agent)->OnStepBoundary(step); !status.ok()) {
          out.boundary_status = status;
        }
        // The step runs: check every slot against the map.
        for (int32_t l = 0; l < options.L; ++l) {
          for (int32_t s = 0; s < S; ++s) {
            const int32_t expert = (*agent)->phy2log(l)[first + s];
            for (size_t b = 0; b < std::size(kBufferBytes); ++b) {
              for (size_t i = 0; i < kBufferBytes[b]; ++i) {
                if (storage[l][s][b][i] != PatternByte(l, expert, b, i)) {
                  if (out.content_errors++ == 0) {
                    out.first_content_error = absl::StrCat("step ", step, " layer ", l, " slot ",
                                                           first + s, " buffer ", b, " byte ", i);
                  }
                  break;
                }
              }
            }
          }
        }
        out.map_per_step.push_back(HashTables(**agent, options.L));
      }
      for (int32_t l = 0; l < options.L; ++l) {
        const auto row = (*agent)->phy2log(l);
        out.final_phy2log.insert(out.final_phy2log.end(), row.begin(), row.end());
      }
      out.status = (*agent)->status();
      agent->reset();
      out.area_overlaps = slow_device.overlaps();
      out.unfinished_staging = slow_device.unfinished();
    });
  }
  for (auto& t : threads) t.join();
  return results;
}

// Every rank ran every step with the same map, and every slot always held its expert.
void ExpectConsistent(const std::vector<RankResult>& results) {
  for (size_t r = 0; r < results.size(); ++r) {
    EXPECT_EQ(results[r].content_errors, 0)
        << "rank " << r << ", first at " << results[r].first_content_error;
    EXPECT_TRUE(results[r].boundary_status.ok()) << results[r].boundary_status;
    ASSERT_EQ(results[r].map_per_step.size(), results[0].map_per_step.size());
    for (size_t step = 0; step < results[r].map_per_step.size(); ++step) {
      ASSERT_EQ(results[r].map_per_step[step], results[0].map_per_step[step])
          << "rank " << r << " ran step " << step << " with a map different from rank 0's";
    }
  }
}

std::vector<int64_t> AckVersions(const RankResult& result, AckKind kind) {
  std::vector<int64_t> versions;
  for (const AgentAck& ack : result.acks) {
    if (ack.kind == kind) versions.push_back(ack.version);
  }
  return versions;
}

class AgentGroupTest : public ::testing::TestWithParam<int32_t> {};

TEST_P(AgentGroupTest, EverySlotHoldsItsExpertAfterEverySwitch) {
  const int32_t R = GetParam();
  std::mt19937 rng(1000 + R);
  GroupOptions options;
  options.R = R;
  options.L = 5;
  options.E = 2 * R;
  options.P = 3 * R + 1;  // uneven slots per rank
  options.steps = 120;
  options.layers_per_chunk = R % 2 == 0 ? 1 : 2;
  options.initial = RandomExpertMap(options.L, options.E, options.P, R, rng);
  auto v2 = RandomExpertMap(options.L, options.E, options.P, R, rng);
  auto v3 = RandomExpertMap(options.L, options.E, options.P, R, rng);
  auto v4 = RandomExpertMap(options.L, options.E, options.P, R, rng);
  std::vector<Delivery> deliveries = {
      {0, -1, Plan(2, PlanStatus::kPending, v2)},    {3, -1, Plan(2, PlanStatus::kCommitted, v2)},
      {30, -1, Plan(3, PlanStatus::kPending, v3)},   {31, -1, Plan(3, PlanStatus::kCommitted, v3)},
      {60, -1, Plan(4, PlanStatus::kCommitted, v4)},
  };
  const auto results = RunGroup(options, deliveries);
  ExpectConsistent(results);
  for (int32_t r = 0; r < R; ++r) {
    SCOPED_TRACE(absl::StrCat("rank ", r));
    EXPECT_EQ(results[r].final_phy2log, v4->phy2log_table());
    EXPECT_EQ(results[r].status.active_version, 4);
    EXPECT_EQ(results[r].status.plans_applied, 3);
    EXPECT_EQ(results[r].status.plans_failed, 0);
    EXPECT_THAT(AckVersions(results[r], AckKind::kStaged), ElementsAre(2, 3));
    EXPECT_THAT(AckVersions(results[r], AckKind::kActive), ElementsAre(2, 3, 4));
    for (const AgentAck& ack : results[r].acks) {
      const auto& map = ack.version == 2 ? v2 : ack.version == 3 ? v3 : v4;
      EXPECT_EQ(ack.map_hash, map->Hash()) << "version " << ack.version;
    }
    EXPECT_TRUE(results[r].status.mismatched_ranks.empty());
    // Switches copied exactly the rank's slots whose expert changed, plan after plan.
    const SlotLayout layout = options.initial->layout();
    int64_t changed_slots = 0;
    const ExpertMap* before = options.initial.get();
    for (const ExpertMap* after : {v2.get(), v3.get(), v4.get()}) {
      for (int32_t l = 0; l < options.L; ++l) {
        for (int32_t s = 0; s < layout.SlotsOnRank(r); ++s) {
          const int32_t slot = layout.FirstSlotOfRank(r) + s;
          if (before->phy2log(l)[slot] != after->phy2log(l)[slot]) changed_slots++;
        }
      }
      before = after;
    }
    EXPECT_EQ(results[r].status.bytes_switched,
              changed_slots * static_cast<int64_t>(kBufferBytes[0] + kBufferBytes[1]));
  }
  // Something moved over the network, and not everything was copied locally.
  int64_t received = 0;
  for (const auto& result : results) received += result.status.bytes_received;
  EXPECT_GT(received, 0);
}

INSTANTIATE_TEST_SUITE_P(Ranks, AgentGroupTest, ::testing::Values(2, 3, 4, 8, 16),
                         [](const auto& info) { return absl::StrCat("R", info.param); });

// Nodes of 2 and of 4 ranks behind HierarchicalCommunicator: the plans apply as with one
// communicator, and transfers within a node go through the node's.
TEST(AgentTest, HierarchicalCommunicatorsApplyEveryPlan) {
  for (const int32_t k : {2, 4}) {
    SCOPED_TRACE(absl::StrCat(k, " ranks per node"));
    std::mt19937 rng(77 + k);
    GroupOptions options;
    options.R = 8;
    options.ranks_per_node = k;
    options.L = 4;
    options.E = 16;
    options.P = 24;
    options.steps = 90;
    options.initial = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
    auto v2 = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
    auto v3 = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
    const auto results = RunGroup(options, {{0, -1, Plan(2, PlanStatus::kCommitted, v2)},
                                            {40, -1, Plan(3, PlanStatus::kCommitted, v3)}});
    ExpectConsistent(results);
    for (const RankResult& result : results) {
      EXPECT_EQ(result.final_phy2log, v3->phy2log_table());
      EXPECT_EQ(result.status.plans_applied, 2);
      EXPECT_EQ(result.status.plans_failed, 0);
    }
  }
}

// The switch of a layer happens at the same step on every rank: the step at which each rank's map
// changed is the same, and no layer changes outside a sync step.
TEST(AgentTest, LayersSwitchOneChunkAtATimeAtSyncSteps) {
  std::mt19937 rng(7);
  GroupOptions options;
  options.R = 4;
  options.L = 6;
  options.sync_every_steps = 4;
  options.steps = 80;
  options.initial = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  auto v2 = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  const auto results = RunGroup(options, {{0, -1, Plan(2, PlanStatus::kCommitted, v2)}});
  ExpectConsistent(results);
  std::vector<int64_t> change_steps;
  for (size_t step = 1; step < results[0].map_per_step.size(); ++step) {
    if (results[0].map_per_step[step] != results[0].map_per_step[step - 1]) {
      change_steps.push_back(static_cast<int64_t>(step));
    }
  }
  // Sync at 0 starts the plan and stages layer 0; each later sync decides one layer, applied at
  // the following sync step: layers switch at steps 8, 12, …, 28, one per sync.
  EXPECT_THAT(change_steps, ElementsAre(8, 12, 16, 20, 24, 28));
  EXPECT_EQ(results[0].status.chunks_switched, 6);
  EXPECT_EQ(results[0].final_phy2log, v2->phy2log_table());
}

// Staging into an area waits for the switch that reads it, however slow that switch is.
TEST(AgentTest, AStagingAreaIsReusedOnlyAfterItsSwitchRead) {
  std::mt19937 rng(41);
  GroupOptions options;
  options.R = 2;
  options.L = 6;
  options.steps = 40;
  options.slow_switch = true;
  options.initial = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  auto v2 = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  const auto results = RunGroup(options, {{0, -1, Plan(2, PlanStatus::kCommitted, v2)}});
  ExpectConsistent(results);
  for (const auto& result : results) {
    EXPECT_EQ(result.area_overlaps, 0);
    EXPECT_EQ(result.unfinished_staging, 0);
    EXPECT_EQ(result.final_phy2log, v2->phy2log_table());
  }
}

TEST(AgentTest, LateDuplicateAndReorderedDeliveryNeverSplitsTheGroup) {
  std::mt19937 rng(11);
  GroupOptions options;
  options.R = 4;
  options.steps = 140;
  options.initial = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  auto v2 = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  auto v3 = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  std::vector<Delivery> deliveries = {
      // v2 reaches ranks 0–2 at once, rank 3 only at step 41 (late): nobody moves before.
      {0, 0, Plan(2, PlanStatus::kCommitted, v2)},
      {0, 1, Plan(2, PlanStatus::kPending, v2)},
      {1, 1, Plan(2, PlanStatus::kCommitted, v2)},
      {1, 1, Plan(2, PlanStatus::kCommitted, v2)},  // twice
      {5, 2, Plan(2, PlanStatus::kCommitted, v2)},
      {41, 3, Plan(2, PlanStatus::kCommitted, v2)},
      // v3: rank 0 gets v3 before a repeated v2 (reordered); the others get it later.
      {80, 0, Plan(3, PlanStatus::kCommitted, v3)},
      {81, 0, Plan(2, PlanStatus::kCommitted, v2)},
      {90, 1, Plan(3, PlanStatus::kCommitted, v3)},
      {90, 2, Plan(3, PlanStatus::kCommitted, v3)},
      {90, 3, Plan(3, PlanStatus::kPending, v3)},
      {95, 3, Plan(3, PlanStatus::kCommitted, v3)},
      {96, -1, Plan(3, PlanStatus::kCommitted, v3)},  // duplicate everywhere
  };
  const auto results = RunGroup(options, deliveries);
  ExpectConsistent(results);
  // Until step 42 every rank ran the initial map.
  for (int64_t step = 0; step <= 42; ++step) {
    ASSERT_EQ(results[0].map_per_step[step], results[0].map_per_step[0]) << step;
  }
  // Between the plans, every rank ran v2, and v3 only after step 96.
  EXPECT_NE(results[0].map_per_step[79], results[0].map_per_step[0]);
  EXPECT_EQ(results[0].map_per_step[96], results[0].map_per_step[79]);
  for (const auto& result : results) {
    EXPECT_EQ(result.final_phy2log, v3->phy2log_table());
    EXPECT_THAT(AckVersions(result, AckKind::kActive), ElementsAre(2, 3));
  }
}

TEST(AgentTest, APlanOnlySomeRanksHaveIsNeverApplied) {
  std::mt19937 rng(13);
  GroupOptions options;
  options.R = 4;
  options.steps = 60;
  options.initial = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  auto v2 = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  const auto results = RunGroup(options, {{0, 0, Plan(2, PlanStatus::kCommitted, v2)},
                                          {0, 1, Plan(2, PlanStatus::kCommitted, v2)},
                                          {0, 2, Plan(2, PlanStatus::kPending, v2)}});
  ExpectConsistent(results);
  for (const auto& result : results) {
    EXPECT_EQ(result.final_phy2log, options.initial->phy2log_table());
    EXPECT_EQ(result.status.active_version, 1);
    EXPECT_EQ(result.status.plans_applied, 0);
    EXPECT_TRUE(AckVersions(result, AckKind::kActive).empty());
  }
}

TEST(AgentTest, AnAbortedPlanIsDroppedAndTheNextOneApplies) {
  std::mt19937 rng(17);
  GroupOptions options;
  options.R = 2;
  options.steps = 60;
  options.initial = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  auto v2 = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  auto v3 = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  const auto results = RunGroup(options, {{0, -1, Plan(2, PlanStatus::kPending, v2)},
                                          {4, -1, Plan(2, PlanStatus::kAborted, nullptr)},
                                          {5, -1, Plan(2, PlanStatus::kCommitted, v2)},  // stale
                                          {10, -1, Plan(3, PlanStatus::kCommitted, v3)}});
  ExpectConsistent(results);
  for (const auto& result : results) {
    EXPECT_EQ(result.final_phy2log, v3->phy2log_table());
    EXPECT_THAT(AckVersions(result, AckKind::kActive), ElementsAre(3));
  }
}

// A rank dies while staging: every rank fails the plan; the layer being staged and all later ones
// keep the old map and old weights everywhere.
TEST(AgentTest, ARankFailingMidStageAbortsThePlanOnEveryRank) {
  for (const int64_t fail_at_transfer : {0, 2}) {
    SCOPED_TRACE(absl::StrCat("rank 2 fails at its transfer #", fail_at_transfer));
    std::mt19937 rng(19);
    GroupOptions options;
    options.R = 4;
    options.steps = 60;
    // A rank waiting on a transfer the failed rank's peers withdrew gives up after this.
    options.comm.timeout = absl::Seconds(2);
    options.slow_switch = true;  // counts local copies never waited for
    options.initial = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
    auto v2 = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
    std::atomic<HostCommunicatorGroup*> group = nullptr;
    std::atomic<int64_t> transfers = 0;
    options.on_group = [&](HostCommunicatorGroup* g) { group = g; };
    options.comm.before_op = [&](int32_t rank, absl::string_view op, int64_t) {
      if (rank == 2 && op == "SendRecvGroup" && transfers++ == fail_at_transfer) {
        group.load()->FailRank(2);
      }
      return absl::OkStatus();
    };
    const auto results = RunGroup(options, {{0, -1, Plan(2, PlanStatus::kCommitted, v2)}});
    ExpectConsistent(results);
    for (int32_t r = 0; r < options.R; ++r) {
      SCOPED_TRACE(absl::StrCat("rank ", r));
      const RankResult& result = results[r];
      EXPECT_EQ(result.status.plans_failed, 1);
      EXPECT_EQ(result.status.plans_applied, 0);
      EXPECT_TRUE(result.status.broken);
      // The local copies of the chunk whose transfers failed were waited for all the same.
      EXPECT_EQ(result.unfinished_staging, 0);
      EXPECT_THAT(AckVersions(result, AckKind::kFailed), ElementsAre(2));
      EXPECT_TRUE(AckVersions(result, AckKind::kActive).empty());
      // Layers up to the failed one switched (on every rank alike), the rest are old.
      for (int32_t l = 0; l < options.L; ++l) {
        const auto expected = l < fail_at_transfer ? v2->phy2log(l) : options.initial->phy2log(l);
        EXPECT_TRUE(std::equal(expected.begin(), expected.end(),
                               result.final_phy2log.begin() + l * options.P))
            << "layer " << l;
      }
    }
  }
}

TEST(AgentTest, RanksWithDifferentMapsAreNamedAndApplyNothing) {
  std::mt19937 rng(23);
  GroupOptions options;
  options.R = 4;
  options.steps = 30;
  options.initial = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  options.initial_per_rank[2] = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  auto v2 = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  const auto results = RunGroup(options, {{0, -1, Plan(2, PlanStatus::kCommitted, v2)}});
  for (int32_t r = 0; r < options.R; ++r) {
    EXPECT_THAT(results[r].status.mismatched_ranks, ElementsAre(2));
    EXPECT_EQ(results[r].status.last_error, "map hash differs from rank 0's on ranks 2");
    EXPECT_EQ(results[r].status.plans_applied, 0);
    EXPECT_EQ(results[r].content_errors, 0);
  }
}

TEST(AgentTest, APlanThatDoesNotMatchIsRefusedWithAFailedAck) {
  std::mt19937 rng(29);
  GroupOptions options;
  options.R = 2;
  options.steps = 20;
  options.initial = RandomExpertMap(options.L, options.E, options.P, options.R, rng);
  AgentPlan bad_hash = Plan(2, PlanStatus::kPending,
                            RandomExpertMap(options.L, options.E, options.P, options.R, rng));
  bad_hash.map_hash ^= 1;
  AgentPlan bad_shape = Plan(3, PlanStatus::kPending,
                             RandomExpertMap(options.L + 1, options.E, options.P, options.R, rng));
  const auto results = RunGroup(options, {{0, 0, bad_hash}, {0, 1, bad_shape}});
  ExpectConsistent(results);
  ASSERT_EQ(results[0].acks.size(), 1u);
  EXPECT_EQ(results[0].acks[0].kind, AckKind::kFailed);
  EXPECT_THAT(results[0].acks[0].error, HasSubstr("plan version 2 has map_hash "));
  EXPECT_THAT(results[0].acks[0].error, HasSubstr(", its map hashes to "));
  ASSERT_EQ(results[1].acks.size(), 1u);
  EXPECT_EQ(results[1].acks[0].error,
            "plan version 3 has shape (layers 5, experts 8, slots 12, ranks 2), the agent serves "
            "(4, 8, 12, 2)");
  for (const auto& result : results) {
    EXPECT_EQ(result.final_phy2log, options.initial->phy2log_table());
    EXPECT_EQ(result.status.plans_failed, 1);
  }
}

class AgentCreateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937 rng(31);
    map_ = RandomExpertMap(2, 4, 6, 2, rng);
    auto group = HostCommunicatorGroup::Create(2);
    ASSERT_TRUE(group.ok());
    comm_ = group->ForRank(0);
    storage_.assign(2 * 3, std::vector<uint8_t>(16));
    options_.rank = 0;
    options_.initial_map = map_;
    options_.weights.resize(2);
    for (int l = 0; l < 2; ++l) {
      for (int s = 0; s < 3; ++s) {
        options_.weights[l].push_back({{storage_[l * 3 + s].data(), 16}});
      }
    }
  }
  absl::Status Create() { return PlacementAgent::Create(options_, comm_.get(), &device_).status(); }

  std::shared_ptr<const ExpertMap> map_;
  std::unique_ptr<transfer::Communicator> comm_;
  HostDeviceContext device_;
  std::vector<std::vector<uint8_t>> storage_;
  PlacementAgentOptions options_;
};

TEST_F(AgentCreateTest, ValidOptionsStartAnAgent) {
  auto agent = PlacementAgent::Create(options_, comm_.get(), &device_);
  ASSERT_TRUE(agent.ok()) << agent.status();
  EXPECT_EQ((*agent)->active_version(), 0);
  EXPECT_THAT((*agent)->phy2log(1), ::testing::ElementsAreArray(map_->phy2log(1)));
  EXPECT_EQ((*agent)->device_tables().log2phy_width, 3);
  // The device tables (host memory here) hold the initial map.
  EXPECT_TRUE(std::equal(map_->phy2log_table().begin(), map_->phy2log_table().end(),
                         (*agent)->device_tables().phy2log));
  EXPECT_TRUE((*agent)->OnStepBoundary(5).ok());
  EXPECT_EQ((*agent)->OnStepBoundary(7).message(),
            "step = 7 does not follow the previous step boundary 5");
}

TEST_F(AgentCreateTest, BadOptionsAreRefusedByName) {
  const auto expect_error = [&](auto mutate, const std::string& message) {
    PlacementAgentOptions saved = options_;
    mutate(options_);
    const absl::Status status = Create();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << message;
    EXPECT_EQ(status.message(), message);
    options_ = saved;
  };
  expect_error([](auto& o) { o.initial_map = nullptr; }, "initial_map is required");
  expect_error([](auto& o) { o.rank = 1; }, "rank = 1 differs from the communicator's rank 0");
  expect_error([](auto& o) { o.initial_version = -1; }, "initial_version = -1 is negative");
  expect_error([](auto& o) { o.sync_every_steps = 0; }, "sync_every_steps = 0 must be ≥ 1");
  expect_error([](auto& o) { o.layers_per_chunk = 0; }, "layers_per_chunk = 0 must be ≥ 1");
  expect_error([](auto& o) { o.weights.pop_back(); }, "weights has 1 layers, the map has 2");
  expect_error([](auto& o) { o.weights[1].pop_back(); }, "weights[1] has 2 slots, rank 0 has 3");
  expect_error(
      [](auto& o) {
        o.weights[0][2].push_back({nullptr, 0});
      },
      "weights[0][2] has 2 buffers, weights[0][0] has 1");
  expect_error([](auto& o) { o.weights[1][1][0].data = nullptr; }, "weights[1][1][0].data is null");
  expect_error([](auto& o) { o.weights[0][1][0].bytes = 8; },
               "weights[0][1][0] has 8 bytes, weights[0][0][0] has 16");
  std::mt19937 rng(37);
  expect_error([&](auto& o) { o.initial_map = RandomExpertMap(2, 4, 6, 3, rng); },
               "the communicator has 2 ranks, the initial map has 3");
}

// A communicator that records what it was asked to register, and refuses it on request.
class RegisteringCommunicator final : public transfer::Communicator {
 public:
  explicit RegisteringCommunicator(std::unique_ptr<transfer::Communicator> inner)
      : inner_(std::move(inner)) {}
  int32_t rank() const override { return inner_->rank(); }
  int32_t size() const override { return inner_->size(); }
  absl::Status RegisterSendBuffers(std::span<const transfer::MemoryRange> ranges) override {
    registered.insert(registered.end(), ranges.begin(), ranges.end());
    return refusal;
  }
  absl::Status SendRecvGroup(std::span<const transfer::PeerTransfer> sends,
                             std::span<const transfer::PeerTransfer> receives) override {
    return inner_->SendRecvGroup(sends, receives);
  }
  absl::StatusOr<int64_t> AllReduceMin(int64_t value) override {
    return inner_->AllReduceMin(value);
  }
  absl::StatusOr<std::vector<std::vector<uint8_t>>> AllGather(
      std::span<const uint8_t> bytes) override {
    return inner_->AllGather(bytes);
  }
  std::vector<transfer::MemoryRange> registered;
  absl::Status refusal;

 private:
  std::unique_ptr<transfer::Communicator> inner_;
};

TEST_F(AgentCreateTest, EverySlotBufferIsRegisteredForSendsAndARefusalFailsCreate) {
  RegisteringCommunicator comm(std::move(comm_));
  auto agent = PlacementAgent::Create(options_, &comm, &device_);
  ASSERT_TRUE(agent.ok()) << agent.status();
  ASSERT_EQ(comm.registered.size(), storage_.size());
  for (size_t i = 0; i < storage_.size(); ++i) {
    EXPECT_EQ(comm.registered[i].data, storage_[i].data());
    EXPECT_EQ(comm.registered[i].bytes, 16u);
  }
  agent->reset();
  comm.refusal = absl::InvalidArgumentError("range 3 is not device memory");
  EXPECT_EQ(PlacementAgent::Create(options_, &comm, &device_).status(), comm.refusal);
}

}  // namespace
}  // namespace eplb::agent
