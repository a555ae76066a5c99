// ExpertMap: the placement of every layer of a deployment — which logical expert each physical slot
// holds (phy2log), and for each expert its slots in replica order (log2phy) and its replica count
// (logcnt).
//
// An ExpertMap is immutable and always valid: every factory checks that every logical expert has at
// least one slot, that every index is in range and that the three tables agree, and refuses with
// INVALID_ARGUMENT naming the first offending entry. Copyable; safe to share between threads.
//
// The order of an expert's replicas is part of the map (the `deepseek` policy numbers replicas in
// the order it creates them, not in slot order); maps that compare equal have equal tables, order
// included.
#ifndef EPLB_CORE_EXPERT_MAP_H_
#define EPLB_CORE_EXPERT_MAP_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "core/shape.h"

namespace eplb {

class ExpertMap {
 public:
  // phy2log is num_layers × P, row-major (P = layout.num_slots()). Each expert's replicas are
  // numbered in slot order.
  static absl::StatusOr<ExpertMap> FromPhy2Log(int32_t num_layers, int32_t num_logical_experts,
                                               SlotLayout layout, std::vector<int32_t> phy2log);

  // As FromPhy2Log, with replica_rank[l][p] = k placing slot p as replica k of its expert, i.e.
  // log2phy[l][phy2log[l][p]][k] = p. The ranks of each expert must be 0 … logcnt − 1, once each.
  static absl::StatusOr<ExpertMap> FromReplicaRanks(int32_t num_layers, int32_t num_logical_experts,
                                                    SlotLayout layout, std::vector<int32_t> phy2log,
                                                    const std::vector<int32_t>& replica_rank);

  // From the three tables of the map file format: phy2log (L × P), log2phy (L × E × (P − E + 1),
  // −1 padded) and logcnt (L × E). Checks that they agree.
  static absl::StatusOr<ExpertMap> FromTables(int32_t num_layers, int32_t num_logical_experts,
                                              SlotLayout layout, std::vector<int32_t> phy2log,
                                              const std::vector<int32_t>& log2phy,
                                              const std::vector<int32_t>& logcnt);

  int32_t num_layers() const { return num_layers_; }
  int32_t num_logical_experts() const { return num_logical_experts_; }
  int32_t num_physical_experts() const { return layout_.num_slots(); }
  int32_t num_ranks() const { return layout_.num_ranks(); }
  const SlotLayout& layout() const { return layout_; }
  // Width of a padded log2phy row: P − E + 1, the most replicas one expert can have.
  int32_t log2phy_width() const { return num_physical_experts() - num_logical_experts_ + 1; }

  // REQUIRES for all accessors: 0 ≤ layer < num_layers(), 0 ≤ expert < num_logical_experts().
  std::span<const int32_t> phy2log(int32_t layer) const {
    return {phy2log_.data() + static_cast<size_t>(layer) * num_physical_experts(),
            static_cast<size_t>(num_physical_experts())};
  }
  std::span<const int32_t> logcnt(int32_t layer) const {
    return {logcnt_.data() + static_cast<size_t>(layer) * num_logical_experts_,
            static_cast<size_t>(num_logical_experts_)};
  }
  // The slots of `expert` in replica order (logcnt entries, unpadded).
  std::span<const int32_t> replicas(int32_t layer, int32_t expert) const {
    const size_t base = static_cast<size_t>(layer) * (num_logical_experts_ + 1);
    const int32_t begin = replica_offsets_[base + expert];
    const int32_t end = replica_offsets_[base + expert + 1];
    return {replica_slots_.data() + static_cast<size_t>(layer) * num_physical_experts() + begin,
            static_cast<size_t>(end - begin)};
  }
  // The whole phy2log table, L × P row-major.
  const std::vector<int32_t>& phy2log_table() const { return phy2log_; }
  // The padded log2phy table of the file format: L × E × (P − E + 1), −1 padded.
  std::vector<int32_t> PaddedLog2Phy() const;
  // One row of it: the slots of `expert` in replica order, then −1s.
  // REQUIRES: out.size() == log2phy_width().
  void PaddedLog2PhyRow(int32_t layer, int32_t expert, std::span<int32_t> out) const;
  // The logcnt table, L × E row-major.
  const std::vector<int32_t>& logcnt_table() const { return logcnt_; }

  // Does the map fit the shape (layers, experts, slots, ranks)? INVALID_ARGUMENT naming the field
  // that differs otherwise.
  absl::Status CheckFits(const DeploymentShape& shape) const;

  // The map's content hash, as planner and ranks compare it: 64-bit FNV-1a over the little-endian
  // int32 values L, E, P, R and then phy2log row by row (phy2log determines the rest of the map).
  uint64_t Hash() const;

  friend bool operator==(const ExpertMap&, const ExpertMap&) = default;

 private:
  ExpertMap(int32_t num_layers, int32_t num_logical_experts, SlotLayout layout)
      : num_layers_(num_layers), num_logical_experts_(num_logical_experts), layout_(layout) {}
  absl::Status IndexPhy2Log();

  int32_t num_layers_;
  int32_t num_logical_experts_;
  SlotLayout layout_;
  std::vector<int32_t> phy2log_;          // L × P
  std::vector<int32_t> logcnt_;           // L × E
  std::vector<int32_t> replica_offsets_;  // L × (E + 1): prefix sums of logcnt per layer
  std::vector<int32_t> replica_slots_;    // L × P: slots of each expert, replica order
};

}  // namespace eplb

#endif  // EPLB_CORE_EXPERT_MAP_H_
