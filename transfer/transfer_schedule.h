// TransferSchedule: what one rank does to move from an old placement to a new one, layer by layer.
//
// Every slot whose expert changes is filled from a *staging buffer*, never straight from another
// slot, because the slots serve the old map until the switch. A rank stages each expert that some
// of its changing slots need once: from its own first old slot of the expert when it held the
// expert anywhere (a local copy), otherwise received from one rank that held it (a network
// transfer). At the switch, staged experts are copied into every slot that needs them. A slot
// whose expert is the same in both maps is kept and takes no part, even when the same expert also
// moves into other slots of the rank (those are then staged from a local copy).
//
// Sources are chosen for the whole EP group at once, deterministically from (old, new, options)
// alone, so every rank computes matching sends and receives without talking. Per layer, the
// network transfers are assigned in a fixed order, destinations by ascending rank and, within one,
// experts ascending; each takes, among the ranks whose old map holds the expert, the one on the
// destination's node if any, then the one with the fewest sends assigned so far in this layer
// (all destinations counted), then the lowest rank. The source slot is that rank's first old slot
// of the expert. Local copies are not sends.
//
// Pure C++: no CUDA, no communicator. Thread-compatible.
#ifndef EPLB_TRANSFER_TRANSFER_SCHEDULE_H_
#define EPLB_TRANSFER_TRANSFER_SCHEDULE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/expert_map.h"

namespace eplb::transfer {

// One expert this rank stages for a layer: where it comes from and which new slots it fills.
struct StagedExpert {
  int32_t expert = 0;
  // Position in this layer's staging area (0, 1, …): staging offset = index × bytes per expert.
  int32_t staging_index = 0;
  // The source: this rank's own old slot (src_rank == this rank) or a remote rank's old slot. A
  // local source slot may itself change at the switch; staging happens before it.
  int32_t src_rank = 0;
  int32_t src_slot = 0;  // global slot number in the old map
  // New slots on this rank that take this expert at the switch (global slot numbers, ascending):
  // those whose new expert is `expert` and whose old one is not. Never empty.
  std::vector<int32_t> dst_slots;
  friend bool operator==(const StagedExpert&, const StagedExpert&) = default;
};

// An expert this rank sends to another rank for a layer.
struct SendTask {
  int32_t expert = 0;
  int32_t src_slot = 0;  // global slot number on this rank, old map
  int32_t dst_rank = 0;
  // Its staging_index on the destination rank (for matching; the wire carries no header).
  int32_t dst_staging_index = 0;
  friend bool operator==(const SendTask&, const SendTask&) = default;
};

struct LayerTransfer {
  int32_t layer = 0;
  // Slots of this rank whose expert is the same in old and new: nothing to do. Ascending.
  std::vector<int32_t> kept_slots;
  // Experts staged by this rank, by staging_index: local copies first (ascending expert), then
  // receives ordered by (src_rank, expert). Each expert appears at most once.
  std::vector<StagedExpert> staged;
  // Sends of this rank, ordered by (dst_rank, expert).
  std::vector<SendTask> sends;

  int32_t num_receives(int32_t rank) const;  // staged entries with src_rank != rank
  friend bool operator==(const LayerTransfer&, const LayerTransfer&) = default;
};

struct ScheduleOptions {
  // Ranks per node (consecutive ranks form a node), to prefer sources on the destination's node.
  // 0 (the default) means all ranks on one node. Must divide the number of ranks.
  int32_t ranks_per_node = 0;
};

// The schedule of `rank`: one LayerTransfer per layer, in layer order (a layer with nothing to do
// for this rank has empty staged and sends lists).
//
// INVALID_ARGUMENT, checked in this order:
//   "new map has num_layers = 3, but the old map has 2" (likewise num_logical_experts,
//     num_physical_experts, num_ranks);
//   "rank = 4 is out of range [0, 3]";
//   "ranks_per_node = -1 is out of range [0, 4]";
//   "ranks_per_node = 3 does not divide num_ranks = 4".
//
// Cost: O(L · (P + E) + the sum, over network transfers, of the number of ranks holding the
// expert), plus sorting each rank's changing slots; it plans the whole group to answer for one
// rank.
absl::StatusOr<std::vector<LayerTransfer>> BuildTransferSchedule(const ExpertMap& old_map,
                                                                 const ExpertMap& new_map,
                                                                 int32_t rank,
                                                                 const ScheduleOptions& options);

}  // namespace eplb::transfer

#endif  // EPLB_TRANSFER_TRANSFER_SCHEDULE_H_
