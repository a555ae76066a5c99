#include "transfer/transfer_schedule.h"

#include <algorithm>
#include <span>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace eplb::transfer {
namespace {

// One expert that one destination rank stages in the layer being planned, with its source.
struct Need {
  int32_t dst_rank = 0;
  int32_t expert = 0;
  int32_t src_rank = 0;
  int32_t src_slot = 0;
  int32_t staging_index = 0;
  // Its new slots: [slots_begin, slots_end) of GroupPlanner::changed_slots_.
  int32_t slots_begin = 0;
  int32_t slots_end = 0;
};

// Turns counts stored at offsets[i + 1] into prefix sums: offsets[i] becomes the first index of i.
void PrefixSum(std::vector<int32_t>& offsets) {
  for (size_t i = 1; i < offsets.size(); ++i) offsets[i] += offsets[i - 1];
}

// Plans the transfer of the whole group, one layer at a time, and answers for one rank. Every
// pass is a counting sort or a scan over slots, experts or ranks; the buffers are sized once and
// reused for every layer.
class GroupPlanner {
 public:
  GroupPlanner(const ExpertMap& old_map, const ExpertMap& new_map, int32_t ranks_per_node);

  LayerTransfer PlanLayer(int32_t layer, int32_t rank);

 private:
  int32_t NodeOfRank(int32_t rank) const { return rank / ranks_per_node_; }
  // Fills holder_*: for each expert, the ranks holding it in the old map (ascending) and each
  // one's first slot of it.
  void IndexHolders(std::span<const int32_t> old_row);
  // Fills rank_offsets_ and changed_slots_: for each rank, its slots whose expert changes,
  // ordered by (new expert, slot).
  void IndexChangedSlots(std::span<const int32_t> old_row, std::span<const int32_t> new_row);
  // Fills needs_ and need_offsets_, choosing sources in the order of the header's contract.
  void ChooseSources(std::span<const int32_t> old_row, std::span<const int32_t> new_row);
  // The index into holder_* of the source of a network transfer of `expert` to `dst_rank`.
  int32_t ChooseRemoteSource(int32_t dst_rank, int32_t expert) const;
  // Sets each need's staging_index and fills by_src_ and src_offsets_.
  void AssignStagingIndexes();

  const ExpertMap& old_map_;
  const ExpertMap& new_map_;
  const SlotLayout layout_;
  const int32_t num_experts_;
  const int32_t ranks_per_node_;  // never 0 here

  std::vector<int32_t> rank_of_slot_;  // P

  std::vector<int32_t> holder_offsets_;   // E + 1
  std::vector<int32_t> holder_rank_;      // ≤ P
  std::vector<int32_t> holder_slot_;      // ≤ P
  std::vector<int32_t> expert_offsets_;   // E + 1, scratch of the counting sorts
  std::vector<int32_t> expert_cursor_;    // E, scratch of the counting sorts
  std::vector<int32_t> slots_by_expert_;  // ≤ P, changed slots ordered by (new expert, slot)

  std::vector<int32_t> rank_offsets_;   // R + 1, into changed_slots_
  std::vector<int32_t> rank_cursor_;    // R, scratch: sort cursor, then next staging index
  std::vector<int32_t> changed_slots_;  // ≤ P

  std::vector<int32_t> local_slot_;    // E: a rank's first old slot of each expert, or −1
  std::vector<int32_t> sends_;         // R: sends assigned so far in the layer
  std::vector<Need> needs_;            // ordered by (dst_rank, expert)
  std::vector<int32_t> need_offsets_;  // R + 1, into needs_ by destination
  std::vector<int32_t> src_offsets_;   // R + 1, into by_src_ by source
  std::vector<int32_t> src_cursor_;    // R, scratch of the counting sort by source
  std::vector<int32_t> by_src_;        // indexes of the network needs, by (src, dst, expert)
};

GroupPlanner::GroupPlanner(const ExpertMap& old_map, const ExpertMap& new_map,
                           int32_t ranks_per_node)
    : old_map_(old_map),
      new_map_(new_map),
      layout_(old_map.layout()),
      num_experts_(old_map.num_logical_experts()),
      ranks_per_node_(ranks_per_node == 0 ? old_map.num_ranks() : ranks_per_node) {
  const int32_t P = layout_.num_slots(), R = layout_.num_ranks(), E = num_experts_;
  rank_of_slot_.resize(P);
  for (int32_t r = 0; r < R; ++r) {
    std::fill(rank_of_slot_.begin() + layout_.FirstSlotOfRank(r),
              rank_of_slot_.begin() + layout_.FirstSlotOfRank(r + 1), r);
  }
  holder_offsets_.resize(E + 1);
  holder_rank_.resize(P);
  holder_slot_.resize(P);
  expert_offsets_.resize(E + 1);
  expert_cursor_.resize(E);
  slots_by_expert_.resize(P);
  rank_offsets_.resize(R + 1);
  rank_cursor_.resize(R);
  changed_slots_.resize(P);
  local_slot_.assign(E, -1);
  sends_.resize(R);
  need_offsets_.resize(R + 1);
  src_offsets_.resize(R + 1);
  src_cursor_.resize(R);
  by_src_.resize(P);
}

void GroupPlanner::IndexHolders(std::span<const int32_t> old_row) {
  // Slots are scanned in order, so each expert's ranks come out ascending and the slot recorded
  // with a rank is its first. expert_cursor_ holds the last rank seen per expert, then the fill
  // position.
  std::fill(holder_offsets_.begin(), holder_offsets_.end(), 0);
  std::fill(expert_cursor_.begin(), expert_cursor_.end(), -1);
  const int32_t P = layout_.num_slots();
  for (int32_t p = 0; p < P; ++p) {
    const int32_t e = old_row[p], r = rank_of_slot_[p];
    if (expert_cursor_[e] != r) {
      expert_cursor_[e] = r;
      ++holder_offsets_[e + 1];
    }
  }
  PrefixSum(holder_offsets_);
  std::copy(holder_offsets_.begin(), holder_offsets_.end() - 1, expert_cursor_.begin());
  for (int32_t p = 0; p < P; ++p) {
    const int32_t e = old_row[p], r = rank_of_slot_[p];
    const int32_t i = expert_cursor_[e];
    if (i > holder_offsets_[e] && holder_rank_[i - 1] == r) continue;
    holder_rank_[i] = r;
    holder_slot_[i] = p;
    ++expert_cursor_[e];
  }
}

void GroupPlanner::IndexChangedSlots(std::span<const int32_t> old_row,
                                     std::span<const int32_t> new_row) {
  // Counting sort of the changed slots by new expert, then a stable one by rank.
  const int32_t P = layout_.num_slots();
  std::fill(expert_offsets_.begin(), expert_offsets_.end(), 0);
  for (int32_t p = 0; p < P; ++p) {
    if (old_row[p] != new_row[p]) ++expert_offsets_[new_row[p] + 1];
  }
  PrefixSum(expert_offsets_);
  std::copy(expert_offsets_.begin(), expert_offsets_.end() - 1, expert_cursor_.begin());
  for (int32_t p = 0; p < P; ++p) {
    if (old_row[p] != new_row[p]) slots_by_expert_[expert_cursor_[new_row[p]]++] = p;
  }
  const int32_t num_changed = expert_offsets_[num_experts_];

  std::fill(rank_offsets_.begin(), rank_offsets_.end(), 0);
  for (int32_t i = 0; i < num_changed; ++i) ++rank_offsets_[rank_of_slot_[slots_by_expert_[i]] + 1];
  PrefixSum(rank_offsets_);
  std::copy(rank_offsets_.begin(), rank_offsets_.end() - 1, rank_cursor_.begin());
  for (int32_t i = 0; i < num_changed; ++i) {
    const int32_t p = slots_by_expert_[i];
    changed_slots_[rank_cursor_[rank_of_slot_[p]]++] = p;
  }
}

int32_t GroupPlanner::ChooseRemoteSource(int32_t dst_rank, int32_t expert) const {
  const int32_t dst_node = NodeOfRank(dst_rank);
  int32_t best = -1;
  bool best_off_node = true;
  int32_t best_sends = 0;
  // Holders are in ascending rank order, so strict comparisons keep the lowest rank on ties.
  for (int32_t i = holder_offsets_[expert]; i < holder_offsets_[expert + 1]; ++i) {
    const int32_t r = holder_rank_[i];
    const bool off_node = NodeOfRank(r) != dst_node;
    if (best < 0 || off_node < best_off_node ||
        (off_node == best_off_node && sends_[r] < best_sends)) {
      best = i;
      best_off_node = off_node;
      best_sends = sends_[r];
    }
  }
  EPLB_CHECK(best >= 0, "expert ", expert, " has no slot in the old map");
  return best;
}

void GroupPlanner::ChooseSources(std::span<const int32_t> old_row,
                                 std::span<const int32_t> new_row) {
  needs_.clear();
  std::fill(sends_.begin(), sends_.end(), 0);
  const int32_t R = layout_.num_ranks();
  for (int32_t d = 0; d < R; ++d) {
    need_offsets_[d] = static_cast<int32_t>(needs_.size());
    const int32_t first = layout_.FirstSlotOfRank(d), end = layout_.FirstSlotOfRank(d + 1);
    // Descending, so that each expert ends with its first slot on d.
    for (int32_t q = end - 1; q >= first; --q) local_slot_[old_row[q]] = q;
    for (int32_t i = rank_offsets_[d], j = i; i < rank_offsets_[d + 1]; i = j) {
      const int32_t e = new_row[changed_slots_[i]];
      while (j < rank_offsets_[d + 1] && new_row[changed_slots_[j]] == e) ++j;
      Need need;
      need.dst_rank = d;
      need.expert = e;
      need.slots_begin = i;
      need.slots_end = j;
      if (local_slot_[e] >= 0) {
        need.src_rank = d;
        need.src_slot = local_slot_[e];
      } else {
        const int32_t h = ChooseRemoteSource(d, e);
        need.src_rank = holder_rank_[h];
        need.src_slot = holder_slot_[h];
        ++sends_[need.src_rank];
      }
      needs_.push_back(need);
    }
    for (int32_t q = first; q < end; ++q) local_slot_[old_row[q]] = -1;
  }
  need_offsets_[R] = static_cast<int32_t>(needs_.size());
}

void GroupPlanner::AssignStagingIndexes() {
  const int32_t R = layout_.num_ranks();
  // Local copies first, in expert order (the order of needs_ within a destination).
  for (int32_t d = 0; d < R; ++d) {
    int32_t index = 0;
    for (int32_t k = need_offsets_[d]; k < need_offsets_[d + 1]; ++k) {
      if (needs_[k].src_rank == d) needs_[k].staging_index = index++;
    }
    rank_cursor_[d] = index;
  }
  // Then receives: a stable counting sort of the network needs by source orders them by
  // (src, dst, expert), which visits each destination's receives in (src, expert) order.
  std::fill(src_offsets_.begin(), src_offsets_.end(), 0);
  for (const Need& need : needs_) {
    if (need.src_rank != need.dst_rank) ++src_offsets_[need.src_rank + 1];
  }
  PrefixSum(src_offsets_);
  std::copy(src_offsets_.begin(), src_offsets_.end() - 1, src_cursor_.begin());
  for (int32_t k = 0; k < need_offsets_[R]; ++k) {
    const Need& need = needs_[k];
    if (need.src_rank != need.dst_rank) by_src_[src_cursor_[need.src_rank]++] = k;
  }
  for (int32_t k = 0; k < src_offsets_[R]; ++k) {
    Need& need = needs_[by_src_[k]];
    need.staging_index = rank_cursor_[need.dst_rank]++;
  }
}

LayerTransfer GroupPlanner::PlanLayer(int32_t layer, int32_t rank) {
  const std::span<const int32_t> old_row = old_map_.phy2log(layer);
  const std::span<const int32_t> new_row = new_map_.phy2log(layer);
  LayerTransfer transfer;
  transfer.layer = layer;
  const int32_t first = layout_.FirstSlotOfRank(rank), end = layout_.FirstSlotOfRank(rank + 1);
  for (int32_t p = first; p < end; ++p) {
    if (old_row[p] == new_row[p]) transfer.kept_slots.push_back(p);
  }
  if (std::equal(old_row.begin(), old_row.end(), new_row.begin())) return transfer;

  IndexHolders(old_row);
  IndexChangedSlots(old_row, new_row);
  ChooseSources(old_row, new_row);
  AssignStagingIndexes();

  transfer.staged.resize(need_offsets_[rank + 1] - need_offsets_[rank]);
  for (int32_t k = need_offsets_[rank]; k < need_offsets_[rank + 1]; ++k) {
    const Need& need = needs_[k];
    EPLB_CHECK(need.staging_index < static_cast<int32_t>(transfer.staged.size()), "index ",
               need.staging_index, " of expert ", need.expert);
    StagedExpert& staged = transfer.staged[need.staging_index];
    staged.expert = need.expert;
    staged.staging_index = need.staging_index;
    staged.src_rank = need.src_rank;
    staged.src_slot = need.src_slot;
    staged.dst_slots.assign(changed_slots_.begin() + need.slots_begin,
                            changed_slots_.begin() + need.slots_end);
  }
  for (int32_t k = src_offsets_[rank]; k < src_offsets_[rank + 1]; ++k) {
    const Need& need = needs_[by_src_[k]];
    transfer.sends.push_back(SendTask{.expert = need.expert,
                                      .src_slot = need.src_slot,
                                      .dst_rank = need.dst_rank,
                                      .dst_staging_index = need.staging_index});
  }
  return transfer;
}

absl::Status CheckSameShape(const ExpertMap& old_map, const ExpertMap& new_map) {
  const auto differs = [](const char* field, int32_t new_value, int32_t old_value) {
    return absl::InvalidArgumentError(
        absl::StrCat("new map has ", field, " = ", new_value, ", but the old map has ", old_value));
  };
  if (new_map.num_layers() != old_map.num_layers()) {
    return differs("num_layers", new_map.num_layers(), old_map.num_layers());
  }
  if (new_map.num_logical_experts() != old_map.num_logical_experts()) {
    return differs("num_logical_experts", new_map.num_logical_experts(),
                   old_map.num_logical_experts());
  }
  if (new_map.num_physical_experts() != old_map.num_physical_experts()) {
    return differs("num_physical_experts", new_map.num_physical_experts(),
                   old_map.num_physical_experts());
  }
  if (new_map.num_ranks() != old_map.num_ranks()) {
    return differs("num_ranks", new_map.num_ranks(), old_map.num_ranks());
  }
  return absl::OkStatus();
}

}  // namespace

int32_t LayerTransfer::num_receives(int32_t rank) const {
  return static_cast<int32_t>(std::count_if(staged.begin(), staged.end(),
                                            [rank](const auto& s) { return s.src_rank != rank; }));
}

absl::StatusOr<std::vector<LayerTransfer>> BuildTransferSchedule(const ExpertMap& old_map,
                                                                 const ExpertMap& new_map,
                                                                 int32_t rank,
                                                                 const ScheduleOptions& options) {
  if (absl::Status status = CheckSameShape(old_map, new_map); !status.ok()) return status;
  const int32_t R = old_map.num_ranks();
  if (rank < 0 || rank >= R) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank = ", rank, " is out of range [0, ", R - 1, "]"));
  }
  if (options.ranks_per_node < 0 || options.ranks_per_node > R) {
    return absl::InvalidArgumentError(
        absl::StrCat("ranks_per_node = ", options.ranks_per_node, " is out of range [0, ", R, "]"));
  }
  if (options.ranks_per_node != 0 && R % options.ranks_per_node != 0) {
    return absl::InvalidArgumentError(absl::StrCat("ranks_per_node = ", options.ranks_per_node,
                                                   " does not divide num_ranks = ", R));
  }
  GroupPlanner planner(old_map, new_map, options.ranks_per_node);
  std::vector<LayerTransfer> schedule;
  schedule.reserve(old_map.num_layers());
  for (int32_t layer = 0; layer < old_map.num_layers(); ++layer) {
    schedule.push_back(planner.PlanLayer(layer, rank));
  }
  return schedule;
}

}  // namespace eplb::transfer
