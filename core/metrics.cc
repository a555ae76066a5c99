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

namespace {

// REQUIRES of the functions scoring several maps on one load: every map of the first one's shape,
// and the load of their layers and experts.
void CheckSameShape(std::span<const ExpertMap* const> maps, const LoadMatrix& load) {
  const ExpertMap& first = *maps.front();
  for (const ExpertMap* map : maps) {
    EPLB_CHECK(map->num_layers() == load.num_layers &&
                   map->num_logical_experts() == load.num_experts &&
                   map->num_physical_experts() == first.num_physical_experts() &&
                   map->num_ranks() == first.num_ranks(),
               "maps of different shapes, or a load of another shape (", load.num_layers, " x ",
               load.num_experts, ")");
  }
}

}  // namespace

std::vector<MapQuality> EvaluateMaps(std::span<const ExpertMap* const> maps,
                                     const LoadMatrix& load) {
  std::vector<MapQuality> out(maps.size());
  if (maps.empty()) return out;
  const ExpertMap& first = *maps.front();
  CheckSameShape(maps, load);
  std::vector<double> sum_balancedness(maps.size(), 0.0), sum_over_bound(maps.size(), 0.0);
  for (MapQuality& quality : out) quality.layers.resize(first.num_layers());
  for (int32_t l = 0; l < first.num_layers(); ++l) {
    // The bound depends on the load and the shape only: once for every map.
    const double bound =
        MaxRankLoadLowerBound(load.row(l), first.num_physical_experts(), first.num_ranks());
    for (size_t m = 0; m < maps.size(); ++m) {
      const std::vector<double> rank_loads = RankLoads(*maps[m], l, load.row(l));
      const double max = *std::max_element(rank_loads.begin(), rank_loads.end());
      MapQuality& quality = out[m];
      LayerQuality& q = quality.layers[l];
      q.balancedness = Balancedness(rank_loads);
      q.max_over_bound = bound > 0.0 ? max / bound : 1.0;
      sum_balancedness[m] += q.balancedness;
      sum_over_bound[m] += q.max_over_bound;
      quality.min_balancedness =
          l == 0 ? q.balancedness : std::min(quality.min_balancedness, q.balancedness);
    }
  }
  for (size_t m = 0; m < maps.size(); ++m) {
    out[m].mean_balancedness = sum_balancedness[m] / first.num_layers();
    out[m].mean_max_over_bound = sum_over_bound[m] / first.num_layers();
  }
  return out;
}

MapQuality EvaluateMap(const ExpertMap& map, const LoadMatrix& load) {
  const ExpertMap* maps[] = {&map};
  return std::move(EvaluateMaps(maps, load).front());
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

// A bound at 95% confidence on |mean − expected value| for `n` independent, identically
// distributed samples within a range of width `range`, from their sum and sum of squares: the
// smaller of Hoeffding's bound and the empirical Bernstein bound (Maurer and Pontil 2009, Theorem
// 4, both sides), each at 97.5% so that both hold together at 95%. The Bernstein bound uses the
// samples' variance: scores that vary far less than their range are bounded far more tightly.
double SampleMeanBound95(double range, double n, double sum, double sum_of_squares) {
  if (n < 2) return range;
  const double delta = 0.025;
  const double hoeffding = range * std::sqrt(std::log(2.0 / delta) / (2.0 * n));
  const double variance = std::max(0.0, (sum_of_squares - sum * sum / n) / (n - 1));
  const double log_term = std::log(4.0 / delta);
  const double bernstein =
      std::sqrt(2.0 * variance * log_term / n) + 7.0 * range * log_term / (3.0 * (n - 1));
  return std::min(hoeffding, bernstein);
}

// One layer's sampler: tokens drawn under the routing model, each scored by its expected
// cross-node copies given its experts (origin node and replicas averaged exactly).
class LayerTrafficSampler {
 public:
  // Tokens are drawn from the layer's load alone, so one draw scores every map in `maps` (all of
  // one shape): their estimates share their sample, and differ by the maps alone. Reused layer
  // after layer (SetLayer), so that its buffers are allocated once.
  LayerTrafficSampler(std::span<const ExpertMap* const> maps, int32_t num_groups, int32_t num_nodes,
                      const RoutingModel& model)
      : maps_(maps),
        num_groups_(num_groups),
        num_nodes_(num_nodes),
        per_group_(maps.front()->num_logical_experts() / num_groups),
        groups_per_token_(std::min(model.groups_per_token, num_groups)),
        experts_per_token_(std::min(model.experts_per_token, groups_per_token_ * per_group_)),
        seed_(model.seed),
        group_load_(num_groups, 0.0),
        node_shares_(maps.size()),
        count_(num_nodes, 0),
        miss_(num_nodes) {}

  void SetLayer(int32_t layer, std::span<const double> load) {
    load_ = load;
    stream_ = SampleStream(seed_ ^ (static_cast<uint64_t>(layer) << 32));
    const int32_t E = maps_.front()->num_logical_experts();
    std::fill(group_load_.begin(), group_load_.end(), 0.0);
    for (int32_t e = 0; e < E; ++e) group_load_[e / per_group_] += std::max(0.0, load[e]);
    layer_total_ = 0;
    for (const double g : group_load_) layer_total_ += g;
    // Each expert's share of replicas per node: a token sent to it reaches node n with that share.
    for (size_t m = 0; m < maps_.size(); ++m) {
      const ExpertMap& map = *maps_[m];
      const int32_t rpn = map.num_ranks() / num_nodes_;
      NodeShares& shares = node_shares_[m];
      shares.begin.resize(E + 1);
      shares.shares.clear();
      for (int32_t e = 0; e < E; ++e) {
        // The nodes of the expert's replicas (usually one or two), each with its replica count,
        // in the order first seen; then the counts become shares.
        const int32_t first = static_cast<int32_t>(shares.shares.size());
        shares.begin[e] = first;
        const auto replicas = map.replicas(layer, e);
        for (const int32_t slot : replicas) {
          const int32_t node = map.layout().RankOfSlot(slot) / rpn;
          int32_t i = first;
          while (i < static_cast<int32_t>(shares.shares.size()) && shares.shares[i].node != node) {
            ++i;
          }
          if (i == static_cast<int32_t>(shares.shares.size())) {
            shares.shares.push_back({node, 1.0});
          } else {
            shares.shares[i].share += 1.0;
          }
        }
        const double replica_count = static_cast<double>(replicas.size());
        for (size_t i = first; i < shares.shares.size(); ++i) {
          shares.shares[i].share /= replica_count;
        }
      }
      shares.begin[E] = static_cast<int32_t>(shares.shares.size());
    }
    BuildAliasTables();
  }

  // The per-token score's range: between 1 and min(nodes, experts per token) nodes reached.
  double range() const { return Scale() * (std::min(num_nodes_, experts_per_token_) - 1); }

  // Adds the scores of `tokens` tokens to sums[m], and their squares to squares[m], for each map m.
  void Sample(int32_t tokens, std::span<double> sums, std::span<double> squares) {
    for (int32_t t = 0; t < tokens; ++t) {
      DrawExperts();
      for (size_t m = 0; m < node_shares_.size(); ++m) {
        const double score = Score(node_shares_[m]);
        sums[m] += score;
        squares[m] += score * score;
      }
    }
  }

 private:
  struct NodeShare {
    int32_t node;
    double share;
  };
  struct NodeShares {  // of one map: expert e's are shares[begin[e], begin[e + 1])
    std::vector<int32_t> begin;
    std::vector<NodeShare> shares;
  };

  // Copies per token per dispatch: a node reached is remote for a token from any other node.
  double Scale() const {
    return static_cast<double>(num_nodes_ - 1) /
           (static_cast<double>(num_nodes_) * experts_per_token_);
  }

  // Walker's alias table of `n` items from `first`, in proportion to `weight(i)` (uniform when
  // they are all 0), into probability[first, first + n) and alias[first, first + n).
  template <typename Weight>
  void BuildAlias(int32_t first, int32_t n, const Weight& weight, std::vector<double>& probability,
                  std::vector<int32_t>& alias) {
    double total = 0;
    for (int32_t i = 0; i < n; ++i) total += weight(i);
    std::vector<double>& scaled = scaled_;
    std::vector<int32_t>& small = small_;
    std::vector<int32_t>& large = large_;
    scaled.resize(n);
    small.clear();
    large.clear();
    for (int32_t i = 0; i < n; ++i) {
      alias[first + i] = first + i;
      probability[first + i] = 1.0;
      scaled[i] = total > 0 ? weight(i) * n / total : 1.0;
      (scaled[i] < 1.0 ? small : large).push_back(i);
    }
    while (!small.empty() && !large.empty()) {
      const int32_t s = small.back(), l = large.back();
      small.pop_back();
      probability[first + s] = scaled[s];
      alias[first + s] = first + l;
      scaled[l] -= 1.0 - scaled[s];
      if (scaled[l] < 1.0) {
        large.pop_back();
        small.push_back(l);
      }
    }
    // What remains has probability 1 up to rounding (already set).
  }

  void BuildAliasTables() {
    group_alias_probability_.resize(num_groups_);
    group_alias_.resize(num_groups_);
    BuildAlias(
        0, num_groups_, [&](int32_t g) { return group_load_[g]; }, group_alias_probability_,
        group_alias_);
    alias_probability_.resize(load_.size());
    alias_.resize(load_.size());
    for (int32_t g = 0; g < num_groups_; ++g) {
      const int32_t first = g * per_group_;
      BuildAlias(
          first, per_group_, [&](int32_t i) { return std::max(0.0, load_[first + i]); },
          alias_probability_, alias_);
    }
  }

  // One of the `n` items from `first` of an alias table.
  int32_t DrawAlias(int32_t first, int32_t n, const std::vector<double>& probability,
                    const std::vector<int32_t>& alias) {
    const double u = stream_.Next() * n;
    const int32_t i = first + std::min(n - 1, static_cast<int32_t>(u));
    return u - static_cast<double>(i - first) < probability[i] ? i : alias[i];
  }

  static bool Contains(const std::vector<int32_t>& v, int32_t x) {
    return std::find(v.begin(), v.end(), x) != v.end();
  }

  // Draws a token's experts into chosen_experts_.
  void DrawExperts() {
    // Groups, then experts of those groups, each without replacement in proportion to load.
    chosen_groups_.clear();
    TakeWithoutReplacement(
        groups_per_token_, layer_total_ > 0,
        [&] { return DrawAlias(0, num_groups_, group_alias_probability_, group_alias_); },
        [&](int32_t g) { return group_load_[g]; },
        [&](const auto& visit) {
          for (int32_t g = 0; g < num_groups_; ++g) visit(g);
        },
        chosen_groups_);
    double chosen_total = 0;
    for (const int32_t g : chosen_groups_) chosen_total += group_load_[g];
    chosen_experts_.clear();
    TakeWithoutReplacement(
        experts_per_token_, chosen_total > 0,
        [&] {
          // A chosen group in proportion to its load, then one of its experts.
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
          return DrawAlias(g * per_group_, per_group_, alias_probability_, alias_);
        },
        [&](int32_t e) { return std::max(0.0, load_[e]); },
        [&](const auto& visit) {
          for (const int32_t g : chosen_groups_) {
            for (int32_t e = g * per_group_; e < (g + 1) * per_group_; ++e) visit(e);
          }
        },
        chosen_experts_);
  }

  // Appends to `chosen` until it holds `k` ids, drawn without replacement in proportion to
  // `weight(id)` (uniformly once the candidates left weigh nothing). `draw()` draws with
  // replacement in proportion to weight (uniformly when `weighted` is false); an id already chosen,
  // or weightless while weight is left, is rejected, which gives the same distribution. After 8
  // rejections in a row (a few ids hold nearly all the weight) the rest are taken from the
  // candidates left (`for_each_candidate(visit)` visits every candidate id) directly.
  template <typename Draw, typename Weight, typename ForEachCandidate>
  void TakeWithoutReplacement(int32_t k, bool weighted, const Draw& draw, const Weight& weight,
                              const ForEachCandidate& for_each_candidate,
                              std::vector<int32_t>& chosen) {
    int32_t rejected = 0;
    while (static_cast<int32_t>(chosen.size()) < k && rejected < 8) {
      const int32_t id = draw();
      if (Contains(chosen, id) || (weighted && weight(id) <= 0)) {
        ++rejected;
        continue;
      }
      rejected = 0;
      chosen.push_back(id);
    }
    if (static_cast<int32_t>(chosen.size()) == k) return;
    weights_.clear();
    ids_.clear();
    double total = 0;
    for_each_candidate([&](int32_t id) {
      if (Contains(chosen, id)) return;
      weights_.push_back(weight(id));
      ids_.push_back(id);
      total += weights_.back();
    });
    while (static_cast<int32_t>(chosen.size()) < k) {
      chosen.push_back(stream_.Take(weights_, ids_, total));
    }
  }

  // A token's expected copies to other nodes per dispatch, given its experts, under one map's
  // replicas: node n is reached unless every chosen expert's replica lies elsewhere.
  double Score(const NodeShares& map) {
    std::fill(miss_.begin(), miss_.end(), 1.0);
    for (const int32_t e : chosen_experts_) {
      for (int32_t i = map.begin[e]; i < map.begin[e + 1]; ++i) {
        miss_[map.shares[i].node] *= 1.0 - map.shares[i].share;
      }
    }
    double reached = 0;
    for (const double m : miss_) reached += 1.0 - m;
    return Scale() * reached;
  }

  std::span<const ExpertMap* const> maps_;
  std::span<const double> load_;
  const int32_t num_groups_, num_nodes_, per_group_, groups_per_token_, experts_per_token_;
  const uint64_t seed_;
  std::vector<double> group_load_;
  double layer_total_ = 0;
  std::vector<NodeShares> node_shares_;  // per map
  std::vector<double> alias_probability_, group_alias_probability_;
  std::vector<int32_t> alias_, group_alias_;
  SampleStream stream_{0};
  std::vector<int32_t> count_;
  std::vector<double> weights_, miss_, scaled_;
  std::vector<int32_t> ids_, chosen_groups_, chosen_experts_, small_, large_;
};

}  // namespace

TrafficShareEstimate EstimateCrossNodeTrafficShare(const ExpertMap& map, int32_t layer,
                                                   std::span<const double> load, int32_t num_groups,
                                                   int32_t num_nodes, const RoutingModel& model) {
  if (num_nodes <= 1) return {};
  const ExpertMap* maps[] = {&map};
  LayerTrafficSampler sampler(maps, num_groups, num_nodes, model);
  sampler.SetLayer(layer, load);
  double sum = 0, squares = 0;
  sampler.Sample(model.tokens, {&sum, 1}, {&squares, 1});
  return {sum / model.tokens, SampleMeanBound95(sampler.range(), model.tokens, sum, squares)};
}

std::vector<TrafficShareEstimate> EstimateMeanCrossNodeTrafficShares(
    std::span<const ExpertMap* const> maps, const LoadMatrix& load, int32_t num_groups,
    int32_t num_nodes, const RoutingModel& model) {
  std::vector<TrafficShareEstimate> out(maps.size());
  if (num_nodes <= 1 || maps.empty()) return out;
  CheckSameShape(maps, load);
  // L × tokens samples, each of a layer drawn uniformly and a token of that layer: identically
  // distributed, with the mean over layers as their expected value. The layers drawn are counted
  // first, so that each layer is set up once.
  const int32_t L = maps.front()->num_layers();
  const int64_t n = int64_t{L} * model.tokens;
  std::vector<int32_t> tokens_of(L, 0);
  SampleStream layers(model.seed ^ 0x6c617965727321ULL);
  for (int64_t i = 0; i < n; ++i) {
    ++tokens_of[std::min(L - 1, static_cast<int32_t>(layers.Next() * L))];
  }
  std::vector<double> sums(maps.size(), 0.0), squares(maps.size(), 0.0);
  double range = 0;
  LayerTrafficSampler sampler(maps, num_groups, num_nodes, model);
  for (int32_t l = 0; l < L; ++l) {
    if (tokens_of[l] == 0) continue;
    sampler.SetLayer(l, load.row(l));
    sampler.Sample(tokens_of[l], sums, squares);
    range = std::max(range, sampler.range());
  }
  for (size_t m = 0; m < maps.size(); ++m) {
    out[m] = {sums[m] / static_cast<double>(n),
              SampleMeanBound95(range, static_cast<double>(n), sums[m], squares[m])};
  }
  return out;
}

TrafficShareEstimate EstimateMeanCrossNodeTrafficShare(const ExpertMap& map, const LoadMatrix& load,
                                                       int32_t num_groups, int32_t num_nodes,
                                                       const RoutingModel& model) {
  const ExpertMap* maps[] = {&map};
  return EstimateMeanCrossNodeTrafficShares(maps, load, num_groups, num_nodes, model).front();
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
