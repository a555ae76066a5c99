#include "core/shape.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/check.h"

namespace eplb {

SlotLayout::SlotLayout(int32_t num_slots, int32_t num_ranks)
    : num_slots_(num_slots), num_ranks_(num_ranks) {
  EPLB_CHECK(num_ranks >= 1 && num_ranks <= num_slots, "ranks ", num_ranks, ", slots ", num_slots);
  base_ = num_slots / num_ranks;
  extra_ = num_slots % num_ranks;
}

int32_t SlotLayout::SlotsOnRank(int32_t rank) const { return base_ + (rank < extra_ ? 1 : 0); }

int32_t SlotLayout::FirstSlotOfRank(int32_t rank) const {
  return rank * base_ + std::min(rank, extra_);
}

int32_t SlotLayout::RankOfSlot(int32_t slot) const {
  const int32_t boundary = extra_ * (base_ + 1);  // slots before it belong to the larger ranks
  if (slot < boundary) return slot / (base_ + 1);
  return extra_ + (slot - boundary) / base_;
}

std::string DeploymentShape::DebugString() const {
  return absl::StrFormat("L=%d E=%d G=%d N=%d R=%d P=%d", num_layers, num_logical_experts,
                         num_groups, num_nodes, num_ranks, num_physical_experts);
}

namespace {

absl::Status CheckRange(const char* field, int64_t value, int64_t lo, int64_t hi,
                        const char* why = nullptr) {
  if (value >= lo && value <= hi) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " = ", value, " is out of range [", lo, ", ", hi, "]", why ? why : ""));
}

}  // namespace

absl::Status ValidateShape(const DeploymentShape& s) {
  using L = ShapeLimits;
  if (auto st = CheckRange("num_layers", s.num_layers, 1, L::kMaxLayers); !st.ok()) return st;
  if (auto st = CheckRange("num_logical_experts", s.num_logical_experts, 1, L::kMaxLogicalExperts);
      !st.ok()) {
    return st;
  }
  if (auto st = CheckRange("num_groups", s.num_groups, 1, s.num_logical_experts,
                           " (1 ≤ num_groups ≤ num_logical_experts)");
      !st.ok()) {
    return st;
  }
  if (s.num_logical_experts % s.num_groups != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_groups = ", s.num_groups, " does not divide num_logical_experts = ",
                     s.num_logical_experts, " (groups hold equal numbers of experts)"));
  }
  if (auto st = CheckRange("num_ranks", s.num_ranks, 1, L::kMaxRanks); !st.ok()) return st;
  if (auto st =
          CheckRange("num_nodes", s.num_nodes, 1, s.num_ranks, " (1 ≤ num_nodes ≤ num_ranks)");
      !st.ok()) {
    return st;
  }
  if (s.num_ranks % s.num_nodes != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_nodes = ", s.num_nodes,
                                                   " does not divide num_ranks = ", s.num_ranks,
                                                   " (nodes hold equal numbers of ranks)"));
  }
  const int64_t min_slots = std::max(s.num_logical_experts, s.num_ranks);
  const int64_t max_slots = int64_t{L::kMaxRedundancyFactor} * s.num_logical_experts;
  if (auto st = CheckRange("num_physical_experts", s.num_physical_experts, min_slots, max_slots,
                           " (max(num_logical_experts, num_ranks) ≤ num_physical_experts ≤ 16 × "
                           "num_logical_experts)");
      !st.ok()) {
    return st;
  }
  const int64_t total_slots = int64_t{s.num_layers} * s.num_physical_experts;
  if (total_slots > L::kMaxTotalSlots) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_layers × num_physical_experts = ", total_slots, " exceeds ", L::kMaxTotalSlots));
  }
  const int64_t log2phy_entries = total_slots / s.num_physical_experts * s.num_logical_experts *
                                  (s.num_physical_experts - s.num_logical_experts + 1);
  if (log2phy_entries > L::kMaxLog2PhyEntries) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_layers × num_logical_experts × (num_physical_experts − num_logical_experts + 1) = ",
        log2phy_entries, " exceeds ", L::kMaxLog2PhyEntries, " (the size of the log2phy table)"));
  }
  return absl::OkStatus();
}

}  // namespace eplb
