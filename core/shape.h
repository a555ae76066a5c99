// The shape of one expert-parallel deployment (one model instance) and how its physical slots map
// to ranks and nodes.
//
// Terms: L MoE layers, E logical experts per layer in G groups of E/G consecutive
// experts, R ranks (GPUs) in N nodes of R/N consecutive ranks, P physical slots in all. Slots are
// numbered rank by rank; when P is not a multiple of R, the first P mod R ranks hold one slot more.
#ifndef EPLB_CORE_SHAPE_H_
#define EPLB_CORE_SHAPE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace eplb {

// Inclusive limits on a shape, checked by ValidateShape(). They keep every table the planner holds
// or writes bounded (the padded log2phy table of the map format has L × E × (P − E + 1) entries).
struct ShapeLimits {
  static constexpr int32_t kMaxLayers = 4096;
  static constexpr int32_t kMaxLogicalExperts = 65536;
  static constexpr int32_t kMaxRanks = 65536;
  static constexpr int32_t kMaxRedundancyFactor = 16;       // P ≤ 16 · E
  static constexpr int64_t kMaxTotalSlots = 1LL << 24;      // L · P
  static constexpr int64_t kMaxLog2PhyEntries = 1LL << 27;  // L · E · (P − E + 1)
};

// How P slots are spread over R ranks. Cheap to copy.
class SlotLayout {
 public:
  // REQUIRES: 1 ≤ num_ranks ≤ num_slots.
  SlotLayout(int32_t num_slots, int32_t num_ranks);

  int32_t num_slots() const { return num_slots_; }
  int32_t num_ranks() const { return num_ranks_; }
  // Slots held by rank r: ⌊P/R⌋, plus one for the first P mod R ranks.
  int32_t SlotsOnRank(int32_t rank) const;
  // The first slot of rank r; the rank's slots are [FirstSlotOfRank(r), FirstSlotOfRank(r + 1)).
  // FirstSlotOfRank(R) == P.
  int32_t FirstSlotOfRank(int32_t rank) const;
  int32_t RankOfSlot(int32_t slot) const;
  // The largest number of slots on one rank.
  int32_t MaxSlotsPerRank() const { return base_ + (extra_ > 0 ? 1 : 0); }

  friend bool operator==(const SlotLayout&, const SlotLayout&) = default;

 private:
  int32_t num_slots_;
  int32_t num_ranks_;
  int32_t base_;   // ⌊P/R⌋
  int32_t extra_;  // P mod R
};

struct DeploymentShape {
  int32_t num_layers = 0;            // L, in [1, 4096]
  int32_t num_logical_experts = 0;   // E, in [1, 65536]
  int32_t num_groups = 1;            // G, in [1, E], E % G == 0
  int32_t num_nodes = 1;             // N, in [1, R], R % N == 0
  int32_t num_ranks = 0;             // R, in [1, 65536], R ≤ P
  int32_t num_physical_experts = 0;  // P, in [max(E, R), 16 · E]

  // REQUIRES: ValidateShape(*this).ok() for all of these.
  SlotLayout slot_layout() const { return SlotLayout(num_physical_experts, num_ranks); }
  int32_t experts_per_group() const { return num_logical_experts / num_groups; }
  int32_t ranks_per_node() const { return num_ranks / num_nodes; }
  int32_t NodeOfRank(int32_t rank) const { return rank / ranks_per_node(); }

  std::string DebugString() const;
  friend bool operator==(const DeploymentShape&, const DeploymentShape&) = default;
};

// OK, or INVALID_ARGUMENT naming the first field out of range, its value and the allowed range,
// e.g. "num_ranks = 0 is out of range [1, 65536]". Fields are checked in declaration order.
absl::Status ValidateShape(const DeploymentShape& shape);

}  // namespace eplb

#endif  // EPLB_CORE_SHAPE_H_
