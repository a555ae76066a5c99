#include "core/metrics.h"

#include <algorithm>
#include <cmath>
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

namespace {

// Hoeffding's bound at 95% confidence for the mean of `n` independent samples, each within a range
// of width `range`.
double HoeffdingBound95(double range, double n) {
  return n > 0 ? range * std::sqrt(std::log(2.0 / 0.05) / (2.0 * n)) : range;
}

// One layer's sampler: tokens drawn under the routing model, each scored by its expected
// cross-node copies given its experts (origin node and replicas averaged exactly).
class LayerTrafficSampler {
 public:
  LayerTrafficSampler(const ExpertMap& map, int32_t layer, std::span<const double> load,
                      int32_t num_groups, int32_t num_nodes, const RoutingModel& model)
      : load_(load),
        num_groups_(num_groups),
        num_nodes_(num_nodes),
        per_group_(map.num_logical_experts() / num_groups),
        groups_per_token_(std::min(model.groups_per_token, num_groups)),
        experts_per_token_(std::min(model.experts_per_token, groups_per_token_ * per_group_)),
        group_load_(num_groups, 0.0),
        stream_(model.seed ^ (static_cast<uint64_t>(layer) << 32)) {
    const int32_t E = map.num_logical_experts();
    const int32_t rpn = map.num_ranks() / num_nodes;
    for (int32_t e = 0; e < E; ++e) group_load_[e / per_group_] += std::max(0.0, load[e]);
    for (const double g : group_load_) layer_total_ += g;
    // Each expert's share of replicas per node: a token sent to it reaches node n with that share.
    node_share_begin_.reserve(E + 1);
    std::vector<int32_t> count(num_nodes, 0);
    for (int32_t e = 0; e < E; ++e) {
      node_share_begin_.push_back(static_cast<int32_t>(node_shares_.size()));
      const auto replicas = map.replicas(layer, e);
      for (const int32_t slot : replicas) count[map.layout().RankOfSlot(slot) / rpn]++;
      for (int32_t n = 0; n < num_nodes; ++n) {
        if (count[n] == 0) continue;
        node_shares_.push_back({n, static_cast<double>(count[n]) / replicas.size()});
        count[n] = 0;
      }
    }
    node_share_begin_.push_back(static_cast<int32_t>(node_shares_.size()));
    BuildAliasTables();
    miss_.resize(num_nodes);
  }

  // The per-token score's range: between 1 and min(nodes, experts per token) nodes reached.
  double range() const {
    return Scale() * (std::min(num_nodes_, experts_per_token_) - 1);
  }

  // The sum of `tokens` tokens' scores.
  double Sample(int32_t tokens) {
    double sum = 0;
    for (int32_t t = 0; t < tokens; ++t) sum += SampleToken();
    return sum;
  }

 private:
  // Copies per token per dispatch: a node reached is remote for a token from any other node.
  double Scale() const {
    return static_cast<double>(num_nodes_ - 1) / (static_cast<double>(num_nodes_) * experts_per_token_);
  }

  // Walker's alias tables, one per group, over its experts' loads (uniform for an idle group).
  void BuildAliasTables() {
    alias_probability_.assign(load_.size(), 1.0);
    alias_.resize(load_.size());
    std::vector<int32_t> small, large;
    std::vector<double> scaled(per_group_);
    for (int32_t g = 0; g < num_groups_; ++g) {
      const int32_t first = g * per_group_;
      small.clear();
      large.clear();
      for (int32_t i = 0; i < per_group_; ++i) {
        alias_[first + i] = first + i;
        scaled[i] = group_load_[g] > 0
                        ? std::max(0.0, load_[first + i]) * per_group_ / group_load_[g]
                        : 1.0;
        (scaled[i] < 1.0 ? small : large).push_back(i);
      }
      while (!small.empty() && !large.empty()) {
        const int32_t s = small.back(), l = large.back();
        small.pop_back();
        alias_probability_[first + s] = scaled[s];
        alias_[first + s] = first + l;
        scaled[l] -= 1.0 - scaled[s];
        if (scaled[l] < 1.0) {
          large.pop_back();
          small.push_back(l);
        }
      }
      // What remains is 1 up to rounding.
      for (const int32_t i : small) alias_probability_[first + i] = 1.0;
      for (const int32_t i : large) alias_probability_[first + i] = 1.0;
    }
  }

  // An expert of group g in proportion to load (uniformly when the group is idle).
  int32_t DrawFromGroup(int32_t g) {
    const double u = stream_.Next() * per_group_;
    const auto i = std::min(per_group_ - 1, static_cast<int32_t>(u));
    const int32_t e = g * per_group_ + i;
    return u - i < alias_probability_[e] ? e : alias_[e];
  }

  double SampleToken() {
    // Groups, without replacement in proportion to their load.
    weights_.assign(group_load_.begin(), group_load_.end());
    ids_.resize(num_groups_);
    std::iota(ids_.begin(), ids_.end(), 0);
    chosen_groups_.clear();
    double total = layer_total_;
    for (int32_t k = 0; k < groups_per_token_; ++k) {
      chosen_groups_.push_back(stream_.Take(weights_, ids_, total));
    }
    double chosen_total = 0;
    for (const int32_t g : chosen_groups_) chosen_total += group_load_[g];
    // Experts of those groups, without replacement in proportion to load: draw with replacement
    // and reject an expert already chosen (the same distribution); after a run of rejections
    // (a few experts hold nearly all the load) take the rest from the remaining experts directly.
    chosen_experts_.clear();
    int32_t rejected = 0;
    while (static_cast<int32_t>(chosen_experts_.size()) < experts_per_token_ && rejected < 8) {
      int32_t g = chosen_groups_.back();
      if (chosen_total > 0) {
        double u = stream_.Next() * chosen_total;
        for (const int32_t c : chosen_groups_) {
          if (u < group_load_[c]) {
            g = c;
            break;
          }
          u -= group_load_[c];
        }
      } else {
        g = chosen_groups_[std::min(groups_per_token_ - 1,
                                    static_cast<int32_t>(stream_.Next() * groups_per_token_))];
      }
      const int32_t e = DrawFromGroup(g);
      if (std::find(chosen_experts_.begin(), chosen_experts_.end(), e) != chosen_experts_.end() ||
          (chosen_total > 0 && load_[e] <= 0)) {
        ++rejected;
        continue;
      }
      rejected = 0;
      chosen_experts_.push_back(e);
    }
    if (static_cast<int32_t>(chosen_experts_.size()) < experts_per_token_) {
      weights_.clear();
      ids_.clear();
      total = 0;
      for (const int32_t g : chosen_groups_) {
        for (int32_t e = g * per_group_; e < (g + 1) * per_group_; ++e) {
          if (std::find(chosen_experts_.begin(), chosen_experts_.end(), e) != chosen_experts_.end()) {
            continue;
          }
          weights_.push_back(std::max(0.0, load_[e]));
          ids_.push_back(e);
          total += weights_.back();
        }
      }
      while (static_cast<int32_t>(chosen_experts_.size()) < experts_per_token_) {
        chosen_experts_.push_back(stream_.Take(weights_, ids_, total));
      }
    }
    // Node n is reached unless every chosen expert's replica lies elsewhere.
    std::fill(miss_.begin(), miss_.end(), 1.0);
    for (const int32_t e : chosen_experts_) {
      for (int32_t i = node_share_begin_[e]; i < node_share_begin_[e + 1]; ++i) {
        miss_[node_shares_[i].node] *= 1.0 - node_shares_[i].share;
      }
    }
    double reached = 0;
    for (const double m : miss_) reached += 1.0 - m;
    return Scale() * reached;
  }

  struct NodeShare {
    int32_t node;
    double share;
  };
  std::span<const double> load_;
  const int32_t num_groups_, num_nodes_, per_group_, groups_per_token_, experts_per_token_;
  std::vector<double> group_load_;
  double layer_total_ = 0;
  std::vector<int32_t> node_share_begin_;
  std::vector<NodeShare> node_shares_;
  std::vector<double> alias_probability_;
  std::vector<int32_t> alias_;
  SampleStream stream_;
  std::vector<double> weights_, miss_;
  std::vector<int32_t> ids_, chosen_groups_, chosen_experts_;
};

}  // namespace

TrafficShareEstimate EstimateCrossNodeTrafficShare(const ExpertMap& map, int32_t layer,
                                                   std::span<const double> load,
                                                   int32_t num_groups, int32_t num_nodes,
                                                   const RoutingModel& model) {
  if (num_nodes <= 1) return {};
  LayerTrafficSampler sampler(map, layer, load, num_groups, num_nodes, model);
  return {sampler.Sample(model.tokens) / model.tokens,
          HoeffdingBound95(sampler.range(), model.tokens)};
}

TrafficShareEstimate EstimateMeanCrossNodeTrafficShare(const ExpertMap& map,
                                                       const LoadMatrix& load, int32_t num_groups,
                                                       int32_t num_nodes,
                                                       const RoutingModel& model) {
  if (num_nodes <= 1) return {};
  double sum = 0, range = 0;
  for (int32_t l = 0; l < map.num_layers(); ++l) {
    LayerTrafficSampler sampler(map, l, load.row(l), num_groups, num_nodes, model);
    sum += sampler.Sample(model.tokens);
    range = std::max(range, sampler.range());
  }
  const double n = static_cast<double>(map.num_layers()) * model.tokens;
  return {sum / n, HoeffdingBound95(range, n)};
}

double CrossNodeTrafficShare(const ExpertMap& map, int32_t layer, std::span<const double> load,
                             int32_t num_groups, int32_t num_nodes, const RoutingModel& model) {
  return EstimateCrossNodeTrafficShare(map, layer, load, num_groups, num_nodes, model).share;
}

double MeanCrossNodeTrafficShare(const ExpertMap& map, const LoadMatrix& load, int32_t num_groups,
                                 int32_t num_nodes, const RoutingModel& model) {
  return EstimateMeanCrossNodeTrafficShare(map, load, num_groups, num_nodes, model).share;
}

}  // namespace eplb
