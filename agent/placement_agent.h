// PlacementAgent: one rank's side of expert placement. It holds the map the rank serves with,
// receives plans, moves expert weights to their new slots and switches the map, in lockstep with
// the other ranks of the EP group.
//
// How a plan becomes active (every rank runs the same agent; DESIGN §6 invariants 2–4):
//   1. A plan arrives (OfferPlan, usually from PlanWatcher). The agent checks it (shape, content
//      hash) and acknowledges STAGED: the rank holds the plan and can apply it. A plan it cannot
//      apply is acknowledged FAILED, with the reason. Plans older than what the rank holds,
//      repeated or aborted ones are ignored, so delivery may be late, repeated or reordered.
//   2. The serving loop calls OnStepBoundary(step) between steps, on every rank with the same step
//      numbers. Every `sync_every_steps` steps (a *sync step*) it hands the agent's thread a sync
//      point; the agent's thread runs one tiny collective on the group's communicator. The decision
//      each collective yields is the same on every rank and takes effect at the next sync step.
//   3. While idle, the collective is an all-gather of (committed plan held, its hash, active map
//      hash). When every rank holds the same committed plan, newer than the active map, the group
//      starts applying it: the layers whose map changes anywhere are cut into chunks of
//      `layers_per_chunk` layers; chunk by chunk, each rank stages the experts its new slots need
//      into a staging area (local copies, and receives from one rank that holds the expert; see
//      transfer_schedule.h), off the serving stream, on the agent's thread. The local copies and
//      the transfers run at the same time; the chunk counts as staged once both completed.
//   4. At each following sync step the group all-reduces the minimum number of chunks staged (or
//      −1 for a failure). Once a chunk is staged on every rank, every rank switches it at the next
//      sync step: the staged weights are copied into the slots after every step already queued on
//      the serving stream (so no running step sees a half-written expert), the map tables of those
//      layers change, and later steps use them. Two staging areas alternate, so the next chunk
//      stages while the previous one waits for its switch.
//   5. After the last chunk switched, the ranks all-gather their map hashes, compare them, and
//      acknowledge ACTIVE with their hash; a rank that differs is named in the log and in
//      status().
// A rank therefore never runs a step with a layer's map different from another rank's: maps change
// only at sync steps, by decisions every rank took from the same collective.
//
// Failure: if staging fails on any rank (an error, the communicator's timeout, a dead peer), the
// chunk in flight and every later chunk keep their old map and old weights on every rank (their
// slots were never written); chunks switched before stay switched on every rank, so all ranks keep
// the same map. The plan is acknowledged FAILED. When the communicator itself failed, the agent
// stops applying plans (status() says why): the group has to be rebuilt.
//
// Threads: OnStepBoundary and the accessors of the active map belong to the serving thread.
// OfferPlan may be called from any thread. The agent runs one thread of its own, which owns the
// communicator and the staging side of the device context.
#ifndef EPLB_AGENT_PLACEMENT_AGENT_H_
#define EPLB_AGENT_PLACEMENT_AGENT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/expert_map.h"
#include "core/plan_delivery.h"
#include "transfer/communicator.h"
#include "transfer/device.h"

namespace eplb::agent {

// One buffer of an expert's weights in a slot (e.g. w13, w2, scales).
struct WeightBuffer {
  void* data = nullptr;
  size_t bytes = 0;
};
// The buffers of one slot. Every slot of a layer, on every rank, has the same number of buffers
// with the same sizes (they hold interchangeable experts).
using SlotWeights = std::vector<WeightBuffer>;

struct PlacementAgentOptions {
  int32_t rank = 0;  // this rank; must equal communicator->rank()
  // The map the rank serves with at start, and its plan version (≥ 1; 0 if it comes from no plan).
  // Every rank must start with the same map.
  std::shared_ptr<const ExpertMap> initial_map;  // required
  int64_t initial_version = 0;
  // weights[layer][local slot]: L × S entries (S = the slots of this rank), see SlotWeights.
  std::vector<std::vector<SlotWeights>> weights;
  // Every how many steps the ranks synchronize (≥ 1, the same on every rank).
  int64_t sync_every_steps = 16;
  // Layers staged and switched together (≥ 1). Staging memory: 2 areas of
  // layers_per_chunk × S × (bytes of one slot) each.
  int32_t layers_per_chunk = 1;
  // Ranks per node, to prefer senders on the receiver's node (see ScheduleOptions).
  int32_t ranks_per_node = 0;
  // Receives acknowledgements, on the agent's thread or the caller of OfferPlan. Must not call
  // back into the agent. May be empty.
  std::function<void(const AgentAck&)> on_ack;
};

class PlacementAgent {
 public:
  // `communicator` and `device` must outlive the agent; the agent is their only user while it
  // lives. Every slot buffer is given to communicator->RegisterSendBuffers. INVALID_ARGUMENT
  // naming the option: rank ≠ communicator rank, a group size different from the map's ranks,
  // weights not L × S, a null buffer, slots of a layer with different buffer lists, a
  // sync_every_steps or layers_per_chunk < 1. The error of RegisterSendBuffers; the error of
  // Allocate when the staging memory cannot be had.
  static absl::StatusOr<std::unique_ptr<PlacementAgent>> Create(
      PlacementAgentOptions options, transfer::Communicator* communicator,
      transfer::DeviceContext* device);
  // Stops the agent's thread. A plan being applied stops where it is (every switched chunk
  // complete); destroy the agents of all ranks at the same step boundary.
  ~PlacementAgent();
  PlacementAgent(const PlacementAgent&) = delete;
  PlacementAgent& operator=(const PlacementAgent&) = delete;

  // Hands the agent a plan (see the file comment). Thread-safe, never blocks on the group.
  void OfferPlan(const AgentPlan& plan);

  // Called by the serving loop between two steps: `step` is the step about to run. Steps must
  // increase by 1 from call to call, the same on every rank. Applies the switches due at this step
  // and, at a sync step, starts the next sync. Blocks only when the sync of the previous sync
  // step has not finished yet (the agent's thread is still staging or waiting for another rank);
  // stats().stall_time counts it. FAILED_PRECONDITION for a step that does not follow the last.
  absl::Status OnStepBoundary(int64_t step);

  // ---- The active map (serving thread) ----
  // Map tables, changed only inside OnStepBoundary: phy2log (P), padded log2phy (E × W, W = P −
  // E + 1, −1 padded) and logcnt (E) of a layer, in host memory.
  std::span<const int32_t> phy2log(int32_t layer) const;
  std::span<const int32_t> log2phy(int32_t layer) const;
  std::span<const int32_t> logcnt(int32_t layer) const;
  // The same tables in device memory (MemoryKind::kDevice), whole L × … arrays, for the serving
  // kernels; updated in serving-stream order at each switch. Valid while the agent lives.
  struct DeviceTables {
    const int32_t* phy2log = nullptr;  // L × P
    const int32_t* log2phy = nullptr;  // L × E × W
    const int32_t* logcnt = nullptr;   // L × E
    int32_t log2phy_width = 0;
  };
  DeviceTables device_tables() const;
  // The plan version each layer serves (layers switch one chunk at a time).
  int64_t layer_version(int32_t layer) const;
  // The version every layer serves, or −1 while layers differ.
  int64_t active_version() const;

  struct Status {
    int64_t active_version = 0;    // as active_version()
    int64_t applying_version = 0;  // the plan being staged and switched, 0 if none
    int64_t plans_applied = 0;
    int64_t plans_failed = 0;
    int64_t chunks_switched = 0;
    int64_t syncs = 0;
    int64_t bytes_received = 0;  // from other ranks
    int64_t bytes_copied_locally = 0;
    int64_t bytes_switched = 0;    // copied from staging areas into slots at switches
    double stall_seconds = 0;      // serving thread waiting in OnStepBoundary
    double staging_seconds = 0;    // agent thread staging chunks (copies and transfers)
    double area_wait_seconds = 0;  // agent thread waiting for a switch to free a staging area
    bool broken = false;           // the communicator failed; no more plans are applied
    std::string last_error;        // of the last failed plan or check
    std::vector<int32_t> mismatched_ranks;  // ranks whose map hash differed at the last check
  };
  Status status() const;

 private:
  struct Impl;
  explicit PlacementAgent(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace eplb::agent

#endif  // EPLB_AGENT_PLACEMENT_AGENT_H_
