#include "core/metrics.h"

#include <algorithm>
#include <numeric>
#include <queue>

#include "core/check.h"

namespace eplb {

std::vector<double> RankLoads(const ExpertMap& map, int32_t layer, std::span<const double> load) {
  EPLB_CHECK(load.size() == static_cast<size_t>(map.num_logical_experts()), load.size());
  const SlotLayout& layout = map.layout();
  const auto phy2log = map.phy2log(layer);
  const auto logcnt = map.logcnt(layer);
  std::vector<double> rank_loads(layout.num_ranks(), 0.0);
  for (int32_t r = 0; r < layout.num_ranks(); ++r) {
    double sum = 0.0;
    for (int32_t p = layout.FirstSlotOfRank(r); p < layout.FirstSlotOfRank(r + 1); ++p) {
      const int32_t e = phy2log[p];
      sum += load[e] / logcnt[e];
    }
    rank_loads[r] = sum;
  }
  return rank_loads;
}

double Balancedness(std::span<const double> rank_loads) {
  if (rank_loads.empty()) return 1.0;
  double total = 0.0, max = 0.0;
  for (double v : rank_loads) {
    total += v;
    max = std::max(max, v);
  }
  if (max <= 0.0) return 1.0;
  return total / static_cast<double>(rank_loads.size()) / max;
}

double MaxRankLoadLowerBound(std::span<const double> load, int32_t num_slots, int32_t num_ranks) {
  const int32_t E = static_cast<int32_t>(load.size());
  EPLB_CHECK(E >= 1 && num_slots >= E && num_ranks >= 1, E, " ", num_slots, " ", num_ranks);
  double total = 0.0;
  for (double v : load) total += v;
  // Greedy replication is optimal for the min-max per-replica load: always split the expert whose
  // replicas are the heaviest.
  std::vector<int32_t> count(E, 1);
  std::priority_queue<std::pair<double, int32_t>> heap;
  for (int32_t e = 0; e < E; ++e) heap.emplace(load[e], e);
  for (int32_t i = E; i < num_slots; ++i) {
    const int32_t e = heap.top().second;
    heap.pop();
    ++count[e];
    heap.emplace(load[e] / count[e], e);
  }
  return std::max(total / num_ranks, heap.top().first);
}

MapQuality EvaluateMap(const ExpertMap& map, const LoadMatrix& load) {
  EPLB_CHECK(load.num_layers == map.num_layers() && load.num_experts == map.num_logical_experts(),
             load.num_layers, "x", load.num_experts);
  MapQuality quality;
  quality.layers.resize(map.num_layers());
  double sum_balancedness = 0.0, sum_over_bound = 0.0;
  for (int32_t l = 0; l < map.num_layers(); ++l) {
    const std::vector<double> rank_loads = RankLoads(map, l, load.row(l));
    const double max = *std::max_element(rank_loads.begin(), rank_loads.end());
    const double bound =
        MaxRankLoadLowerBound(load.row(l), map.num_physical_experts(), map.num_ranks());
    LayerQuality& q = quality.layers[l];
    q.balancedness = Balancedness(rank_loads);
    q.max_over_bound = bound > 0.0 ? max / bound : 1.0;
    sum_balancedness += q.balancedness;
    sum_over_bound += q.max_over_bound;
    quality.min_balancedness =
        l == 0 ? q.balancedness : std::min(quality.min_balancedness, q.balancedness);
  }
  quality.mean_balancedness = sum_balancedness / map.num_layers();
  quality.mean_max_over_bound = sum_over_bound / map.num_layers();
  return quality;
}

Migration ComputeMigration(const ExpertMap& before, const ExpertMap& after,
                           int64_t bytes_per_expert) {
  EPLB_CHECK(before.num_layers() == after.num_layers() &&
                 before.num_logical_experts() == after.num_logical_experts() &&
                 before.layout() == after.layout(),
             "maps of different shapes");
  const SlotLayout& layout = after.layout();
  const int32_t R = layout.num_ranks();
  Migration m;
  m.experts_received_per_rank.assign(R, 0);
  // held[e] == stamp: the rank being visited held e before; got[e] == stamp: e already counted.
  std::vector<int64_t> held(after.num_logical_experts(), -1), got(after.num_logical_experts(), -1);
  int64_t stamp = 0;
  for (int32_t l = 0; l < after.num_layers(); ++l) {
    const auto old_row = before.phy2log(l), new_row = after.phy2log(l);
    for (int32_t r = 0; r < R; ++r, ++stamp) {
      const int32_t first = layout.FirstSlotOfRank(r), end = layout.FirstSlotOfRank(r + 1);
      for (int32_t p = first; p < end; ++p) held[old_row[p]] = stamp;
      for (int32_t p = first; p < end; ++p) {
        const int32_t e = new_row[p];
        if (e != old_row[p]) ++m.slots_changed;
        if (held[e] != stamp && got[e] != stamp) {
          got[e] = stamp;
          ++m.experts_received_per_rank[r];
        }
      }
    }
  }
  for (int64_t n : m.experts_received_per_rank) {
    m.experts_received += n;
    m.max_experts_received_by_a_rank = std::max(m.max_experts_received_by_a_rank, n);
  }
  m.bytes_moved = m.experts_received * bytes_per_expert;
  return m;
}

double NodesPerGroup(const ExpertMap& map, int32_t layer, std::span<const double> load,
                     int32_t num_groups, int32_t num_nodes) {
  const int32_t rpn = map.num_ranks() / num_nodes;
  const int32_t per_group = map.num_logical_experts() / num_groups;
  double weighted = 0, total = 0;
  for (int32_t g = 0; g < num_groups; ++g) {
    std::vector<bool> on_node(num_nodes, false);
    double group_load = 0;
    for (int32_t e = g * per_group; e < (g + 1) * per_group; ++e) {
      group_load += load[e];
      for (const int32_t slot : map.replicas(layer, e)) {
        on_node[map.layout().RankOfSlot(slot) / rpn] = true;
      }
    }
    const auto nodes = static_cast<double>(std::count(on_node.begin(), on_node.end(), true));
    weighted += group_load * nodes;
    total += group_load;
  }
  return total > 0 ? weighted / total : 1.0;
}

namespace {

// splitmix64: a fixed sequence on every platform (the standard distributions are not).
class SampleStream {
 public:
  explicit SampleStream(uint64_t seed) : state_(seed) {}
  // Uniform in [0, 1).
  double Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) * 0x1.0p-53;
  }
  // An id drawn in proportion to `weights` (uniformly when they are all 0), then removed by
  // swapping with the last entry of both vectors.
  // `total`: the sum of `weights`, lowered by the weight taken.
  int32_t Take(std::vector<double>& weights, std::vector<int32_t>& ids, double& total) {
    if (total <= 0) {  // rounding may have eaten a small remainder
      total = 0;
      for (const double w : weights) total += w;
    }
    size_t pick = weights.size() - 1;
    if (total > 0) {
      double u = Next() * total;
      bool found = false;
      for (size_t i = 0; i < weights.size() && !found; ++i) {
        if (u < weights[i]) {
          pick = i;
          found = true;
        }
        u -= weights[i];
      }
      // Rounding can leave `u` past the remaining weights: take the last one that has weight.
      while (!found && pick > 0 && weights[pick] <= 0) --pick;
    } else {
      pick = std::min(weights.size() - 1, static_cast<size_t>(Next() * weights.size()));
    }
    const int32_t id = ids[pick];
    total = std::max(0.0, total - weights[pick]);
    weights[pick] = weights.back();
    ids[pick] = ids.back();
    weights.pop_back();
    ids.pop_back();
    return id;
  }

 private:
  uint64_t state_;
};

}  // namespace

double CrossNodeTrafficShare(const ExpertMap& map, int32_t layer, std::span<const double> load,
                             int32_t num_groups, int32_t num_nodes, const RoutingModel& model) {
  if (num_nodes <= 1) return 0.0;
  const int32_t rpn = map.num_ranks() / num_nodes;
  const int32_t per_group = map.num_logical_experts() / num_groups;
  std::vector<double> group_load(num_groups, 0.0);
  for (int32_t e = 0; e < map.num_logical_experts(); ++e) group_load[e / per_group] += load[e];
  double layer_total = 0;
  for (const double g : group_load) layer_total += g;
  const int32_t groups_per_token = std::min(model.groups_per_token, num_groups);
  const int32_t experts_per_token = std::min(model.experts_per_token, groups_per_token * per_group);
  SampleStream stream(model.seed ^ (static_cast<uint64_t>(layer) << 32));
  std::vector<double> weights;
  std::vector<int32_t> ids;
  std::vector<int32_t> chosen_groups;
  std::vector<bool> reached(num_nodes);
  int64_t remote = 0;
  for (int32_t t = 0; t < model.tokens; ++t) {
    const auto origin = std::min(num_nodes - 1, static_cast<int32_t>(stream.Next() * num_nodes));
    weights.assign(group_load.begin(), group_load.end());
    ids.resize(num_groups);
    std::iota(ids.begin(), ids.end(), 0);
    chosen_groups.clear();
    double total = layer_total;
    for (int32_t k = 0; k < groups_per_token; ++k) {
      chosen_groups.push_back(stream.Take(weights, ids, total));
    }
    weights.clear();
    ids.clear();
    total = 0;
    for (const int32_t g : chosen_groups) {
      for (int32_t e = g * per_group; e < (g + 1) * per_group; ++e) {
        weights.push_back(load[e]);
        ids.push_back(e);
      }
      total += group_load[g];
    }
    std::fill(reached.begin(), reached.end(), false);
    for (int32_t k = 0; k < experts_per_token; ++k) {
      const auto replicas = map.replicas(layer, stream.Take(weights, ids, total));
      const auto which =
          std::min(replicas.size() - 1, static_cast<size_t>(stream.Next() * replicas.size()));
      reached[map.layout().RankOfSlot(replicas[which]) / rpn] = true;
    }
    for (int32_t n = 0; n < num_nodes; ++n) remote += (reached[n] && n != origin) ? 1 : 0;
  }
  return static_cast<double>(remote) / (static_cast<double>(model.tokens) * experts_per_token);
}

double MeanCrossNodeTrafficShare(const ExpertMap& map, const LoadMatrix& load, int32_t num_groups,
                                 int32_t num_nodes, const RoutingModel& model) {
  double sum = 0;
  for (int32_t l = 0; l < map.num_layers(); ++l) {
    sum += CrossNodeTrafficShare(map, l, load.row(l), num_groups, num_nodes, model);
  }
  return sum / map.num_layers();
}

}  // namespace eplb
