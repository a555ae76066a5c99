#include "core/balanced_policy.h"

#include <algorithm>
#include <atomic>
#include <numeric>
#include <optional>
#include <queue>
#include <set>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/deepseek_policy.h"
#include "core/metrics.h"
#include "core/status_macros.h"

namespace eplb {
namespace {

// One layer's packing: which experts each rank holds (one replica each) and the rank loads.
class Packing {
 public:
  Packing(int32_t num_experts, std::vector<int32_t> capacity, std::span<const double> weight)
      : E_(num_experts),
        capacity_(std::move(capacity)),
        weight_(weight),
        on_(capacity_.size()),
        load_(capacity_.size(), 0.0),
        holds_(capacity_.size() * static_cast<size_t>(num_experts), 0) {}

  int32_t num_ranks() const { return static_cast<int32_t>(capacity_.size()); }
  bool Holds(int32_t r, int32_t e) const { return holds_[static_cast<size_t>(r) * E_ + e] != 0; }
  bool Full(int32_t r) const { return static_cast<int32_t>(on_[r].size()) == capacity_[r]; }
  double load(int32_t r) const { return load_[r]; }
  const std::vector<int32_t>& on(int32_t r) const { return on_[r]; }
  int32_t capacity(int32_t r) const { return capacity_[r]; }

  void Add(int32_t r, int32_t e) {
    on_[r].push_back(e);
    load_[r] += weight_[e];
    holds_[static_cast<size_t>(r) * E_ + e] = 1;
  }
  void Remove(int32_t r, int32_t e) {
    auto it = std::find(on_[r].begin(), on_[r].end(), e);
    EPLB_CHECK(it != on_[r].end(), "expert ", e, " is not on rank ", r);
    on_[r].erase(it);
    load_[r] -= weight_[e];
    holds_[static_cast<size_t>(r) * E_ + e] = 0;
  }

  double MaxLoad() const { return *std::max_element(load_.begin(), load_.end()); }
  int32_t Busiest() const {
    return static_cast<int32_t>(std::max_element(load_.begin(), load_.end()) - load_.begin());
  }

  // Places one more replica of `e`: on the least loaded rank with a free slot that does not hold
  // `e`; when every such rank is full, a replica of another expert makes room (moved to a rank with
  // a free slot). False if neither is possible.
  bool Place(int32_t e) {
    int32_t best = -1;
    for (int32_t r = 0; r < num_ranks(); ++r) {
      if (Full(r) || Holds(r, e)) continue;
      if (best < 0 || load_[r] < load_[best]) best = r;
    }
    if (best >= 0) {
      Add(best, e);
      return true;
    }
    for (int32_t free = 0; free < num_ranks(); ++free) {
      if (Full(free)) continue;
      for (int32_t r = 0; r < num_ranks(); ++r) {
        if (r == free || Holds(r, e)) continue;
        for (const int32_t f : on_[r]) {
          if (Holds(free, f)) continue;
          Remove(r, f);
          Add(free, f);
          Add(r, e);
          return true;
        }
      }
    }
    return false;
  }

  // Swaps replicas between the busiest rank and others while that lowers the busiest rank and it
  // is above `target`. Returns the number of swaps made. Without `home`, the swap that lowers it
  // most goes first. With `home` (R × E: which rank held which expert before), the swap that puts
  // the fewest replicas on ranks that did not hold them goes first, then the one lowering most.
  // With `budget` > 0 (and `home`), no swap leaves a rank holding more than `budget` replicas away
  // from home.
  int64_t Improve(double target, int64_t max_swaps, const std::vector<uint8_t>* home = nullptr,
                  int32_t budget = 0) {
    const auto away = [&](int32_t r, int32_t e) -> int {
      return home == nullptr || (*home)[static_cast<size_t>(r) * E_ + e] ? 0 : 1;
    };
    std::vector<int32_t> away_count(capacity_.size(), 0);
    if (budget > 0 && home != nullptr) {
      for (int32_t r = 0; r < num_ranks(); ++r) {
        for (const int32_t e : on_[r]) away_count[r] += away(r, e);
      }
    }
    int64_t swaps = 0;
    while (swaps < max_swaps) {
      const int32_t h = Busiest();
      const double lh = load_[h];
      if (lh <= target) break;
      double best = lh * (1 - 1e-12);
      int best_cost = 3;
      int32_t best_a = -1, best_r = -1, best_b = -1;
      for (const int32_t a : on_[h]) {
        const double wa = weight_[a];
        for (int32_t r = 0; r < num_ranks(); ++r) {
          if (r == h || load_[r] >= lh || Holds(r, a)) continue;
          const double lr = load_[r];
          for (const int32_t b : on_[r]) {
            const double wb = weight_[b];
            if (wb >= wa || Holds(h, b)) continue;
            const double m = std::max(lh - wa + wb, lr - wb + wa);
            if (m >= lh * (1 - 1e-12)) continue;
            const int cost = away(r, a) - away(h, a) + away(h, b) - away(r, b);
            if (budget > 0 && home != nullptr &&
                (away_count[h] - away(h, a) + away(h, b) > budget ||
                 away_count[r] - away(r, b) + away(r, a) > budget)) {
              continue;
            }
            if (cost < best_cost || (cost == best_cost && m < best)) {
              best_cost = cost;
              best = m;
              best_a = a;
              best_r = r;
              best_b = b;
            }
          }
        }
      }
      if (best_a < 0) break;
      if (budget > 0 && home != nullptr) {
        away_count[h] += away(h, best_b) - away(h, best_a);
        away_count[best_r] += away(best_r, best_a) - away(best_r, best_b);
      }
      Remove(h, best_a);
      Remove(best_r, best_b);
      Add(h, best_b);
      Add(best_r, best_a);
      ++swaps;
    }
    return swaps;
  }

 private:
  int32_t E_;
  std::vector<int32_t> capacity_;
  std::span<const double> weight_;
  std::vector<std::vector<int32_t>> on_;
  std::vector<double> load_;
  std::vector<uint8_t> holds_;
};

// Replica counts minimising the highest load per replica: P − E extra slots, one at a time, to the
// expert with the highest load per replica (ties: lower expert), at most R replicas each.
// Starting from `count` (one or more replicas each) instead of ones when given.
std::vector<int32_t> ReplicaCounts(std::span<const double> load, int32_t P, int32_t R,
                                   std::vector<int32_t> count = {}) {
  const int32_t E = static_cast<int32_t>(load.size());
  if (count.empty()) count.assign(E, 1);
  int32_t used = 0;
  using Entry = std::pair<double, int32_t>;  // (load per replica, −expert)
  std::priority_queue<Entry> queue;
  for (int32_t e = 0; e < E; ++e) {
    used += count[e];
    if (count[e] < R) queue.push({load[e] / count[e], -e});
  }
  for (int32_t extra = P - used; extra > 0 && !queue.empty(); --extra) {
    const int32_t e = -queue.top().second;
    queue.pop();
    ++count[e];
    if (count[e] < R) queue.push({load[e] / count[e], -e});
  }
  return count;
}

// `count` with replicas moved, one at a time, from the expert that can best spare one to the
// expert with the highest load per replica, until that is at most `target` (or no expert can spare
// a replica without exceeding it).
std::vector<int32_t> AdjustCounts(std::span<const double> load, std::vector<int32_t> count,
                                  int32_t R, double target) {
  const int32_t E = static_cast<int32_t>(load.size());
  for (int32_t step = 0; step < E; ++step) {
    int32_t hot = 0;
    for (int32_t e = 1; e < E; ++e) {
      if (load[e] / count[e] > load[hot] / count[hot]) hot = e;
    }
    if (load[hot] / count[hot] <= target || count[hot] >= R) break;
    int32_t donor = -1;
    double donor_weight = 0;
    for (int32_t e = 0; e < E; ++e) {
      if (e == hot || count[e] < 2) continue;
      const double after = load[e] / (count[e] - 1);
      if (after <= target && (donor < 0 || after < donor_weight)) {
        donor = e;
        donor_weight = after;
      }
    }
    if (donor < 0) break;
    --count[donor];
    ++count[hot];
  }
  return count;
}

// Adds the replicas `count` asks for beyond what `packing` holds, heaviest first.
bool FillRemaining(Packing& packing, std::span<const int32_t> count, std::span<const double> weight,
                   std::span<const int32_t> placed) {
  std::vector<std::pair<double, int32_t>> items;  // (−weight, expert)
  for (size_t e = 0; e < count.size(); ++e) {
    for (int32_t k = placed[e]; k < count[e]; ++k) {
      items.push_back({-weight[e], static_cast<int32_t>(e)});
    }
  }
  std::sort(items.begin(), items.end());
  for (const auto& item : items) {
    if (!packing.Place(item.second)) return false;
  }
  return true;
}

struct LayerResult {
  std::vector<std::vector<int32_t>> sets;  // experts per rank
  double max_load = 0;
};

// The phy2log row: per rank, experts that were in the rank's previous slots keep those slots; the
// others fill the remaining slots in ascending expert order.
void WriteRow(const std::vector<std::vector<int32_t>>& sets, const SlotLayout& layout,
              std::span<const int32_t> previous, std::span<int32_t> row) {
  for (int32_t r = 0; r < layout.num_ranks(); ++r) {
    const int32_t first = layout.FirstSlotOfRank(r), n = layout.SlotsOnRank(r);
    std::vector<int32_t> rest = sets[r];
    std::sort(rest.begin(), rest.end());
    std::vector<bool> taken(n, false);
    if (!previous.empty()) {
      for (int32_t s = 0; s < n; ++s) {
        auto it = std::find(rest.begin(), rest.end(), previous[first + s]);
        if (it == rest.end()) continue;
        row[first + s] = *it;
        taken[s] = true;
        rest.erase(it);
      }
    }
    size_t next = 0;
    for (int32_t s = 0; s < n; ++s) {
      if (!taken[s]) row[first + s] = rest[next++];
    }
  }
}

// Renumbers the ranks of `sets` (among ranks with equal slot counts) to keep as many experts as
// possible on the rank that held them in `previous`.
// With `ranks_per_node` > 0, a set only moves to a rank of the same node.
std::vector<std::vector<int32_t>> MatchRanks(std::vector<std::vector<int32_t>> sets,
                                             const SlotLayout& layout, int32_t E,
                                             std::span<const int32_t> previous,
                                             int32_t ranks_per_node = 0) {
  const int32_t R = layout.num_ranks();
  std::vector<uint8_t> prev_holds(static_cast<size_t>(R) * E, 0);
  for (int32_t r = 0; r < R; ++r) {
    for (int32_t p = layout.FirstSlotOfRank(r); p < layout.FirstSlotOfRank(r + 1); ++p) {
      prev_holds[static_cast<size_t>(r) * E + previous[p]] = 1;
    }
  }
  std::vector<std::tuple<int32_t, int32_t, int32_t>> pairs;  // (−overlap, set, rank)
  for (int32_t b = 0; b < R; ++b) {
    for (int32_t r = 0; r < R; ++r) {
      if (layout.SlotsOnRank(r) != layout.SlotsOnRank(b)) continue;
      if (ranks_per_node > 0 && r / ranks_per_node != b / ranks_per_node) continue;
      int32_t overlap = 0;
      for (const int32_t e : sets[b]) overlap += prev_holds[static_cast<size_t>(r) * E + e];
      pairs.push_back({-overlap, b, r});
    }
  }
  std::sort(pairs.begin(), pairs.end());
  std::vector<int32_t> rank_of_set(R, -1);
  std::vector<bool> rank_used(R, false);
  for (const auto& [neg, b, r] : pairs) {
    if (rank_of_set[b] >= 0 || rank_used[r]) continue;
    rank_of_set[b] = r;
    rank_used[r] = true;
  }
  std::vector<std::vector<int32_t>> out(R);
  for (int32_t b = 0; b < R; ++b) out[rank_of_set[b]] = std::move(sets[b]);
  return out;
}

std::vector<std::vector<int32_t>> SetsOfRow(std::span<const int32_t> row, const SlotLayout& layout) {
  std::vector<std::vector<int32_t>> sets(layout.num_ranks());
  for (int32_t r = 0; r < layout.num_ranks(); ++r) {
    for (int32_t p = layout.FirstSlotOfRank(r); p < layout.FirstSlotOfRank(r + 1); ++p) {
      sets[r].push_back(row[p]);
    }
  }
  return sets;
}

bool HasDuplicates(const std::vector<std::vector<int32_t>>& sets) {
  for (auto set : sets) {
    std::sort(set.begin(), set.end());
    if (std::adjacent_find(set.begin(), set.end()) != set.end()) return true;
  }
  return false;
}

double MaxLoadOf(const std::vector<std::vector<int32_t>>& sets, std::span<const double> load,
                 std::span<const int32_t> count) {
  double max = 0;
  for (const auto& set : sets) {
    double sum = 0;
    for (const int32_t e : set) sum += load[e] / count[e];
    max = std::max(max, sum);
  }
  return max;
}

std::vector<int32_t> CountsOf(const std::vector<std::vector<int32_t>>& sets, int32_t E) {
  std::vector<int32_t> count(E, 0);
  for (const auto& set : sets) {
    for (const int32_t e : set) ++count[e];
  }
  return count;
}

// Whether every group's replicas lie on the ranks of one node.
bool KeepsGroupsOnNodes(const std::vector<std::vector<int32_t>>& sets, const DeploymentShape& shape) {
  std::vector<int32_t> node_of_group(shape.num_groups, -1);
  for (int32_t r = 0; r < shape.num_ranks; ++r) {
    for (const int32_t e : sets[r]) {
      int32_t& node = node_of_group[e / shape.experts_per_group()];
      if (node < 0) node = shape.NodeOfRank(r);
      if (node != shape.NodeOfRank(r)) return false;
    }
  }
  return true;
}

// The layer with node affinity: groups packed onto nodes (G / N each, balanced by group load),
// then each node's experts planned onto the node's ranks like a deployment of its own.
absl::StatusOr<std::vector<std::vector<int32_t>>> PackWithAffinity(
    std::span<const double> load, const DeploymentShape& shape, std::span<const int32_t> capacity,
    int64_t max_swaps) {
  const int32_t G = shape.num_groups, N = shape.num_nodes, R = shape.num_ranks;
  const int32_t per_group = shape.experts_per_group(), rpn = shape.ranks_per_node();
  std::vector<double> group_load(G, 0.0);
  for (int32_t e = 0; e < shape.num_logical_experts; ++e) group_load[e / per_group] += load[e];
  Packing nodes(G, std::vector<int32_t>(N, G / N), group_load);
  const std::vector<int32_t> ones(G, 1), none(G, 0);
  if (!FillRemaining(nodes, ones, group_load, none)) {
    return absl::InternalError("cannot place the groups on the nodes");
  }
  nodes.Improve(0, max_swaps);
  std::vector<std::vector<int32_t>> sets(R);
  for (int32_t n = 0; n < N; ++n) {
    std::vector<int32_t> experts;  // global ids, ascending
    std::vector<int32_t> groups = nodes.on(n);
    std::sort(groups.begin(), groups.end());
    for (const int32_t g : groups) {
      for (int32_t k = 0; k < per_group; ++k) experts.push_back(g * per_group + k);
    }
    const int32_t ne = static_cast<int32_t>(experts.size());
    std::vector<int32_t> node_capacity(capacity.begin() + n * rpn,
                                       capacity.begin() + (n + 1) * rpn);
    const int32_t node_slots = std::accumulate(node_capacity.begin(), node_capacity.end(), 0);
    if (node_slots < ne || static_cast<int64_t>(ne) * rpn < node_slots) {
      return absl::FailedPreconditionError(absl::StrCat(
          "node affinity: node ", n, " has ", node_slots, " slots for ", ne,
          " experts on ", rpn, " ranks; it needs experts ≤ slots ≤ experts × ranks"));
    }
    std::vector<double> node_load(ne);
    for (int32_t i = 0; i < ne; ++i) node_load[i] = load[experts[i]];
    const std::vector<int32_t> count = ReplicaCounts(node_load, node_slots, rpn);
    std::vector<double> weight(ne);
    for (int32_t i = 0; i < ne; ++i) weight[i] = node_load[i] / count[i];
    Packing packing(ne, node_capacity, weight);
    const std::vector<int32_t> placed(ne, 0);
    if (!FillRemaining(packing, count, weight, placed)) {
      return absl::InternalError(absl::StrCat("node ", n, ": no room for every replica"));
    }
    packing.Improve(0, max_swaps);
    for (int32_t i = 0; i < rpn; ++i) {
      for (const int32_t local : packing.on(i)) sets[n * rpn + i].push_back(experts[local]);
    }
  }
  return sets;
}

}  // namespace

absl::StatusOr<ExpertMap> BalancedPolicy::PlanValidated(const PlanInput& input) const {
  const DeploymentShape& shape = input.shape;
  const int32_t L = shape.num_layers, E = shape.num_logical_experts, P = shape.num_physical_experts,
                R = shape.num_ranks;
  if (static_cast<int64_t>(E) * R < P) {
    return absl::FailedPreconditionError(absl::StrCat(
        "policy balanced places at most one replica of an expert per rank, so it needs "
        "num_physical_experts ≤ num_logical_experts × num_ranks; ",
        P, " > ", E, " × ", R));
  }
  const SlotLayout layout = shape.slot_layout();
  std::vector<int32_t> capacity(R);
  for (int32_t r = 0; r < R; ++r) capacity[r] = layout.SlotsOnRank(r);
  const int64_t max_swaps = 8 * static_cast<int64_t>(P);
  const bool affinity = options_.node_affinity && shape.num_nodes > 1;
  if (affinity && shape.num_groups % shape.num_nodes != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "node affinity needs num_groups (", shape.num_groups, ") to be a multiple of num_nodes (",
        shape.num_nodes, ")"));
  }

  // deepseek's plan, where it can serve the shape: a layer of it that beats ours is taken.
  std::optional<ExpertMap> deepseek;
  {
    PlanInput fresh = input;
    fresh.previous = nullptr;
    if (!affinity) {
      absl::StatusOr<ExpertMap> planned = DeepSeekPolicy().Plan(fresh);
      if (planned.ok()) deepseek = *std::move(planned);
    }
  }

  std::vector<int32_t> phy2log(static_cast<size_t>(L) * P);
  // Layers are independent: plan them on `threads` threads, each taking the next layer.
  std::vector<absl::Status> layer_status(L);
  const auto plan_layer = [&](int32_t l) -> absl::Status {
    const std::span<const double> load = input.load->row(l);
    const std::vector<int32_t> count = ReplicaCounts(load, P, R);
    std::vector<double> weight(E);
    for (int32_t e = 0; e < E; ++e) weight[e] = load[e] / count[e];
    const std::span<const int32_t> previous =
        input.previous != nullptr ? input.previous->phy2log(l) : std::span<const int32_t>();

    if (affinity) {
      ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> sets,
                       PackWithAffinity(load, shape, capacity, max_swaps));
      if (!previous.empty()) {
        const double target = MaxLoadOf(sets, load, CountsOf(sets, E)) * (1 + options_.tolerance);
        auto prev_sets = SetsOfRow(previous, layout);
        if (!HasDuplicates(prev_sets) && KeepsGroupsOnNodes(prev_sets, shape) &&
            MaxLoadOf(prev_sets, load, CountsOf(prev_sets, E)) <= target) {
          std::copy(previous.begin(), previous.end(),
                    phy2log.begin() + static_cast<size_t>(l) * P);
          return absl::OkStatus();
        }
        sets = MatchRanks(std::move(sets), layout, E, previous, shape.ranks_per_node());
      }
      WriteRow(sets, layout, previous,
               std::span<int32_t>(phy2log.data() + static_cast<size_t>(l) * P, P));
      return absl::OkStatus();
    }

    Packing fresh(E, capacity, weight);
    const std::vector<int32_t> none(E, 0);
    if (!FillRemaining(fresh, count, weight, none)) {
      return absl::InternalError(absl::StrCat("layer ", l, ": no room for every replica"));
    }
    fresh.Improve(0, max_swaps);
    std::vector<std::vector<int32_t>> sets(R);
    for (int32_t r = 0; r < R; ++r) sets[r] = fresh.on(r);
    double best = fresh.MaxLoad();
    bool from_fresh = true;

    if (deepseek.has_value()) {
      auto ds_sets = SetsOfRow(deepseek->phy2log(l), layout);
      const std::vector<int32_t> ds_count = CountsOf(ds_sets, E);
      const double ds_max = MaxLoadOf(ds_sets, load, ds_count);
      if (ds_max < best * (1 - 1e-9)) {
        if (!HasDuplicates(ds_sets)) {
          sets = std::move(ds_sets);
          best = ds_max;
        } else {
          // deepseek put two replicas of an expert on one rank: start from its layer with the
          // second copies merged into the first, give the freed slots to the experts with the
          // highest load per replica, place those, and improve.
          std::vector<int32_t> merged(E, 0);
          for (int32_t r = 0; r < R; ++r) {
            std::set<int32_t> unique(ds_sets[r].begin(), ds_sets[r].end());
            for (const int32_t e : unique) ++merged[e];
          }
          const std::vector<int32_t> repaired_count = ReplicaCounts(load, P, R, merged);
          std::vector<double> ds_weight(E);
          for (int32_t e = 0; e < E; ++e) ds_weight[e] = load[e] / repaired_count[e];
          Packing repaired(E, capacity, ds_weight);
          std::vector<int32_t> placed(E, 0);
          for (int32_t r = 0; r < R; ++r) {
            for (const int32_t e : ds_sets[r]) {
              if (!repaired.Holds(r, e)) {
                repaired.Add(r, e);
                ++placed[e];
              }
            }
          }
          if (FillRemaining(repaired, repaired_count, ds_weight, placed)) {
            repaired.Improve(0, max_swaps);
            if (repaired.MaxLoad() < best) {
              for (int32_t r = 0; r < R; ++r) sets[r] = repaired.on(r);
              best = repaired.MaxLoad();
            }
          }
        }
      }
    }

    if (!previous.empty()) {
      const double target = best * (1 + options_.tolerance);
      auto prev_sets = SetsOfRow(previous, layout);
      if (!HasDuplicates(prev_sets) &&
          MaxLoadOf(prev_sets, load, CountsOf(prev_sets, E)) <= target) {
        std::copy(previous.begin(), previous.end(), phy2log.begin() + static_cast<size_t>(l) * P);
        return absl::OkStatus();  // nothing moves
      }
      // Start from the previous placement: first with its replica counts (no replica appears or
      // disappears), then with those counts changed only where the target needs it, then with the
      // new counts.
      const std::vector<int32_t> prev_count = CountsOf(prev_sets, E);
      const std::vector<int32_t> adjusted = AdjustCounts(load, prev_count, R, target);
      std::vector<uint8_t> home(static_cast<size_t>(R) * E, 0);
      for (int32_t r = 0; r < R; ++r) {
        for (const int32_t e : prev_sets[r]) home[static_cast<size_t>(r) * E + e] = 1;
      }
      const int32_t budget = options_.max_received_per_rank;
      for (const std::vector<int32_t>* counts : {&prev_count, &adjusted, &count}) {
        if (!from_fresh) break;
        // Under a budget, replica counts stay: changing one costs moves.
        if (budget > 0 && counts != &prev_count) break;
        std::vector<double> warm_weight(E);
        for (int32_t e = 0; e < E; ++e) warm_weight[e] = load[e] / (*counts)[e];
        if (budget == 0 &&
            *std::max_element(warm_weight.begin(), warm_weight.end()) > target) {
          continue;
        }
        Packing warm(E, capacity, warm_weight);
        std::vector<int32_t> placed(E, 0);
        for (int32_t r = 0; r < R; ++r) {
          for (const int32_t e : prev_sets[r]) {
            if (placed[e] < (*counts)[e] && !warm.Holds(r, e)) {
              warm.Add(r, e);
              ++placed[e];
            }
          }
        }
        if (!FillRemaining(warm, *counts, warm_weight, placed)) continue;
        warm.Improve(target, max_swaps, &home, budget);
        if (warm.MaxLoad() <= target || budget > 0) {
          for (int32_t r = 0; r < R; ++r) sets[r] = warm.on(r);
          from_fresh = false;
        }
      }
      if (from_fresh) sets = MatchRanks(std::move(sets), layout, E, previous);
    }
    WriteRow(sets, layout, previous,
             std::span<int32_t>(phy2log.data() + static_cast<size_t>(l) * P, P));
    return absl::OkStatus();
  };
  const int32_t threads = std::clamp<int32_t>(
      options_.threads > 0 ? options_.threads
                           : static_cast<int32_t>(std::thread::hardware_concurrency()),
      1, L);
  if (threads == 1) {
    for (int32_t l = 0; l < L; ++l) layer_status[l] = plan_layer(l);
  } else {
    std::atomic<int32_t> next = 0;
    std::vector<std::thread> pool;
    for (int32_t t = 0; t < threads; ++t) {
      pool.emplace_back([&] {
        for (int32_t l = next++; l < L; l = next++) layer_status[l] = plan_layer(l);
      });
    }
    for (std::thread& thread : pool) thread.join();
  }
  for (const absl::Status& status : layer_status) RETURN_IF_ERROR(status);
  return ExpertMap::FromPhy2Log(L, E, layout, std::move(phy2log));
}

}  // namespace eplb
