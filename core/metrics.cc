#include "core/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <queue>

#include "core/check.h"
#include "core/replica_bounds.h"

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

namespace {

// The replica counts (num_slots in all) that minimise the heaviest replica: greedy replication is
// optimal for that, always splitting the expert whose replicas are the heaviest.
std::vector<int32_t> MinMaxReplicaCounts(std::span<const double> load, int32_t num_slots) {
  const int32_t E = static_cast<int32_t>(load.size());
  std::vector<int32_t> count(E, 1);
  std::priority_queue<std::pair<double, int32_t>> heap;
  for (int32_t e = 0; e < E; ++e) heap.emplace(load[e], e);
  for (int32_t i = E; i < num_slots; ++i) {
    const int32_t e = heap.top().second;
    heap.pop();
    heap.emplace(load[e] / ++count[e], e);
  }
  return count;
}

// MaxRankLoadLowerBound with what it is made of, which the tighter bounds start from.
struct BasicBound {
  double total = 0;            // the layer's load
  std::vector<int32_t> count;  // MinMaxReplicaCounts
  double value = 0;            // max(total / R, the heaviest replica of `count`)
};

BasicBound ComputeBasicBound(std::span<const double> load, int32_t num_slots, int32_t num_ranks) {
  const int32_t E = static_cast<int32_t>(load.size());
  EPLB_CHECK(E >= 1 && num_slots >= E && num_ranks >= 1, E, " ", num_slots, " ", num_ranks);
  BasicBound b;
  for (double v : load) b.total += v;
  b.count = MinMaxReplicaCounts(load, num_slots);
  double heaviest = 0;
  for (int32_t e = 0; e < E; ++e) heaviest = std::max(heaviest, load[e] / b.count[e]);
  b.value = std::max(b.total / num_ranks, heaviest);
  return b;
}

}  // namespace

double MaxRankLoadLowerBound(std::span<const double> load, int32_t num_slots, int32_t num_ranks) {
  return ComputeBasicBound(load, num_slots, num_ranks).value;
}

namespace {

// Rules out busiest-rank values T for placements on R ranks of two slots each. Necessary
// conditions of a placement with every rank at most T, with any replica counts c (Σ c = 2R, each
// replica weighing w / c):
//  - every replica weighs at most T: c ≥ m = ⌈w / T⌉;
//  - for each y in (0, T/2]: a replica heavier than T − y ("big") shares its rank with one of at
//    most y ("tiny"; two bigs exceed T together), so #big ≤ #tiny.
// For λ in [0, 1], λ(#big − #tiny + 2R) + (1 − λ) 2R ≤ 2R, a sum over experts of
// λ(big(c) − tiny(c) + c) + (1 − λ)c: (1 + λ)c while big, c in between, (1 − λ)c while tiny. Each
// term is at least its least over c ≥ m: min((1 + λ)m, b, (1 − λ)s), with b the fewest replicas
// that are not big and s the fewest that are tiny. If that sum exceeds 2R for some y, T is ruled
// out. Swept over y, the terms change where s or b does (y = w / j, y = T − w / k); the event
// positions are sorted once for the range of T tested (w / j and w / k do not depend on T).
class PairingTest {
 public:
  // For T in [lo, hi].
  PairingTest(std::span<const double> load, int32_t R, double lo, double hi) : load_(load), R_(R) {
    const int32_t E = static_cast<int32_t>(load.size());
    for (int32_t e = 0; e < E; ++e) {
      const double w = std::max(0.0, load[e]);
      if (w <= 0) continue;
      const double most = std::min(Fewest(w / lo), 2.0 * R + 1), least = Fewest(w / hi);
      for (double j = 1; j < 3 * most; ++j) s_events_.push_back({w / j * (1 - 1e-12), e, j});
      for (double k = least; k < 1.5 * most; ++k) b_events_.push_back({w / k, e, k});
    }
    std::sort(s_events_.begin(), s_events_.end(),
              [](const Event& a, const Event& b) { return a.at < b.at; });
    // By T − w / k ascending.
    std::sort(b_events_.begin(), b_events_.end(),
              [](const Event& a, const Event& b) { return a.at > b.at; });
  }

  bool RulesOut(double T) {
    const double S = 2.0 * R_;
    experts_.clear();
    double count = 0;
    for (const double v : load_) {
      const double w = std::max(0.0, v);
      const double m = w > 0 ? Fewest(w / T) : 1.0;
      count += m;
      if (count > S) return true;  // the replicas do not fit
      // As y → 0: nothing is tiny (s beyond every term), and b = m unless w / T is m exactly
      // (then its event at y = 0 follows).
      experts_.push_back({m, m, w > 0 ? 4 * m : 1.0});
    }
    double sum[2] = {0, 0};
    for (const Expert& x : experts_) {
      for (int i = 0; i < 2; ++i) sum[i] += Term(x, kLambda[i]);
    }
    const auto over = [&] { return sum[0] > S + 1e-9 || sum[1] > S + 1e-9; };
    if (over()) return true;
    // b becomes k + 1 just above y = T − w / k (applied late: b smaller meanwhile) while it can be
    // the least term (k < 1.5 m); s becomes j from y = w / j on (applied early: s smaller
    // meanwhile) while (1 − λ) s can be (j < 3 m). Both below T / 2.
    const auto b_at = [&](const Event& ev) { return std::max(0.0, T - ev.at + 1e-12 * T); };
    size_t i = 0, j = 0;
    const auto skip = [&] {
      while (i < s_events_.size() && s_events_[i].value >= 3 * experts_[s_events_[i].e].m) ++i;
      while (j < b_events_.size() && (b_events_[j].value < experts_[b_events_[j].e].m ||
                                      b_events_[j].value >= 1.5 * experts_[b_events_[j].e].m)) {
        ++j;
      }
    };
    const auto apply = [&](const Event& ev, bool tiny) {
      Expert& x = experts_[ev.e];
      for (int l = 0; l < 2; ++l) sum[l] -= Term(x, kLambda[l]);
      (tiny ? x.s : x.b) = tiny ? ev.value : ev.value + 1;
      for (int l = 0; l < 2; ++l) sum[l] += Term(x, kLambda[l]);
    };
    for (skip();; skip()) {
      const double ys = i < s_events_.size() ? s_events_[i].at : T;
      const double yb = j < b_events_.size() ? b_at(b_events_[j]) : T;
      const double y = std::min(ys, yb);
      if (y >= T / 2) return false;
      // Every change at this y, then the terms of the interval above it.
      for (skip(); i < s_events_.size() && s_events_[i].at == y; skip())
        apply(s_events_[i++], true);
      for (skip(); j < b_events_.size() && b_at(b_events_[j]) == y; skip()) {
        apply(b_events_[j++], false);
      }
      if (over()) return true;
    }
  }

 private:
  static constexpr double kLambda[] = {0.25, 0.5};
  struct Expert {
    double m, b, s;
  };
  struct Event {
    double at;  // s events: y; b events: w / k
    int32_t e;
    double value;  // j (s becomes j) or k (b becomes k + 1)
  };
  // Rounded towards fewer replicas (each term smaller: the test weaker, never wrong).
  static double Fewest(double x) { return std::max(1.0, std::ceil(x * (1 - 1e-12))); }
  static double Term(const Expert& x, double lambda) {
    return std::min({(1 + lambda) * x.m, x.b, (1 - lambda) * x.s});
  }

  std::span<const double> load_;
  const int32_t R_;
  std::vector<Event> s_events_, b_events_;
  std::vector<Expert> experts_;
};

// PairingLowerBound from the basic bound of the same load on 2R slots.
double PairingBound(std::span<const double> load, int32_t R, const BasicBound& basic) {
  if (basic.value <= 0) return basic.value;
  // Between the basic bound and a placement's busiest rank (the pairing of the counts that
  // minimise the heaviest replica), to a relative 1e-5: the largest T ruled out.
  std::vector<ReplicaRun> runs;
  RunsOf(load, basic.count, runs);
  double lo = basic.value, hi = PairedMax(runs);
  PairingTest test(load, R, lo, hi);
  if (!test.RulesOut(lo) || test.RulesOut(hi)) return basic.value;
  while (hi - lo > 1e-5 * hi) {
    const double mid = (lo + hi) / 2;
    (test.RulesOut(mid) ? lo : hi) = mid;
  }
  return lo;
}

// Whether CountLowerBound enumerates count vectors for this shape.
bool CountsEnumerated(int32_t num_experts, int32_t num_slots, int32_t num_ranks) {
  return num_slots % num_ranks == 0 && num_slots / num_ranks >= 2 && num_slots / num_ranks <= 4 &&
         num_experts <= 12;
}

// CountLowerBound from the basic bound of the same load and shape.
double CountBoundFrom(std::span<const double> load, int32_t P, int32_t R, const BasicBound& basic,
                      int64_t max_steps) {
  const int32_t E = static_cast<int32_t>(load.size());
  const int32_t slots = P / R;
  if (basic.value <= 0) return basic.value;
  // Without the enumeration (or when it is cut short): the pairing bound with two slots per rank.
  const auto without_enumeration = [&] {
    return P == 2 * R ? PairingBound(load, R, basic) : basic.value;
  };
  if (!CountsEnumerated(E, P, R)) return without_enumeration();
  std::vector<ReplicaRun> runs;
  const auto bound_of = [&](std::span<const int32_t> count) {
    RunsOf(load, count, runs);
    return slots == 2 ? PairedMax(runs) : CountBound(runs, R, slots, basic.total);
  };
  // Start from the counts minimising the heaviest replica, then every count vector whose heaviest
  // replica lies below the best bound found (any count vector's bound is at least its heaviest
  // replica).
  double best = bound_of(basic.count);
  const bool finished = EnumerateReplicaCounts(
      load, P, P - E + 1, [&] { return best; },
      [&](std::span<const int32_t> count) { best = std::min(best, bound_of(count)); }, max_steps);
  return finished ? std::max(basic.value, best) : without_enumeration();
}

}  // namespace

double PairingLowerBound(std::span<const double> load, int32_t num_ranks) {
  const int32_t E = static_cast<int32_t>(load.size());
  EPLB_CHECK(E >= 1 && E <= 2 * num_ranks && num_ranks >= 1, E, " ", num_ranks);
  return PairingBound(load, num_ranks, ComputeBasicBound(load, 2 * num_ranks, num_ranks));
}

bool CountLowerBoundApplies(int32_t num_experts, int32_t num_slots, int32_t num_ranks) {
  return CountsEnumerated(num_experts, num_slots, num_ranks) || num_slots == 2 * num_ranks;
}

double CountLowerBound(std::span<const double> load, int32_t num_slots, int32_t num_ranks,
                       int64_t max_steps) {
  return CountBoundFrom(load, num_slots, num_ranks, ComputeBasicBound(load, num_slots, num_ranks),
                        max_steps);
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
  std::vector<double> sum_balancedness(maps.size(), 0.0), sum_over_bound(maps.size(), 0.0),
      sum_over_count_bound(maps.size(), 0.0);
  for (MapQuality& quality : out) quality.layers.resize(first.num_layers());
  for (int32_t l = 0; l < first.num_layers(); ++l) {
    // The bounds depend on the load and the shape only: once for every map, the count bound
    // from the basic one.
    const BasicBound basic =
        ComputeBasicBound(load.row(l), first.num_physical_experts(), first.num_ranks());
    const double bound = basic.value;
    const double count_bound =
        CountLowerBoundApplies(first.num_logical_experts(), first.num_physical_experts(),
                               first.num_ranks())
            ? CountBoundFrom(load.row(l), first.num_physical_experts(), first.num_ranks(), basic,
                             kCountBoundSteps)
            : bound;
    for (size_t m = 0; m < maps.size(); ++m) {
      const std::vector<double> rank_loads = RankLoads(*maps[m], l, load.row(l));
      const double max = *std::max_element(rank_loads.begin(), rank_loads.end());
      MapQuality& quality = out[m];
      LayerQuality& q = quality.layers[l];
      q.balancedness = Balancedness(rank_loads);
      q.max_over_bound = bound > 0.0 ? max / bound : 1.0;
      q.max_over_count_bound = count_bound > 0.0 ? max / count_bound : 1.0;
      sum_balancedness[m] += q.balancedness;
      sum_over_bound[m] += q.max_over_bound;
      sum_over_count_bound[m] += q.max_over_count_bound;
      quality.min_balancedness =
          l == 0 ? q.balancedness : std::min(quality.min_balancedness, q.balancedness);
    }
  }
  for (size_t m = 0; m < maps.size(); ++m) {
    out[m].mean_balancedness = sum_balancedness[m] / first.num_layers();
    out[m].mean_max_over_bound = sum_over_bound[m] / first.num_layers();
    out[m].mean_max_over_count_bound = sum_over_count_bound[m] / first.num_layers();
  }
  return out;
}

MapQuality EvaluateMap(const ExpertMap& map, const LoadMatrix& load) {
  const ExpertMap* maps[] = {&map};
  return std::move(EvaluateMaps(maps, load).front());
}

namespace {

// Maximum flow (Dinic) on a small graph with real capacities.
class MaxFlow {
 public:
  // Residual capacities at or below this are treated as none.
  static constexpr double kEpsilon = 1e-12;

  explicit MaxFlow(int32_t nodes) : first_(nodes, -1), level_(nodes), next_edge_(nodes) {}
  // An edge u → v of capacity c; returns its index (for flow(index)).
  int32_t Add(int32_t u, int32_t v, double c) {
    edges_.push_back({v, first_[u], c, c});
    first_[u] = static_cast<int32_t>(edges_.size()) - 1;
    edges_.push_back({u, first_[v], 0, 0});
    first_[v] = static_cast<int32_t>(edges_.size()) - 1;
    return static_cast<int32_t>(edges_.size()) - 2;
  }
  // Raises an edge's capacity to c ≥ its capacity, keeping the flow found so far.
  void RaiseCapacity(int32_t edge, double c) {
    edges_[edge].left += c - edges_[edge].capacity;
    edges_[edge].capacity = c;
  }
  // Augments the current flow to a maximum one; returns the flow added.
  double Augment(int32_t source, int32_t sink) {
    double total = 0;
    while (Levels(source, sink)) {
      next_edge_ = first_;
      while (const double pushed = Push(source, sink, kInfinity)) total += pushed;
    }
    return total;
  }
  // The flow on an edge (never negative: augmenting a flow in floating point can leave -1e-15).
  double flow(int32_t edge) const {
    return std::max(0.0, edges_[edge].capacity - edges_[edge].left);
  }
  // After Augment: whether `node` is reachable from the source in the residual graph (the source
  // side of a minimum cut).
  bool SourceSide(int32_t node) const { return level_[node] >= 0; }

 private:
  static constexpr double kInfinity = std::numeric_limits<double>::infinity();
  struct Edge {
    int32_t to, next;
    double capacity, left;
  };
  bool Levels(int32_t source, int32_t sink) {
    std::fill(level_.begin(), level_.end(), -1);
    std::vector<int32_t> queue = {source};
    level_[source] = 0;
    for (size_t i = 0; i < queue.size(); ++i) {
      for (int32_t e = first_[queue[i]]; e >= 0; e = edges_[e].next) {
        if (edges_[e].left > kEpsilon && level_[edges_[e].to] < 0) {
          level_[edges_[e].to] = level_[queue[i]] + 1;
          queue.push_back(edges_[e].to);
        }
      }
    }
    return level_[sink] >= 0;
  }
  double Push(int32_t u, int32_t sink, double limit) {
    if (u == sink) return limit;
    for (int32_t& e = next_edge_[u]; e >= 0; e = edges_[e].next) {
      Edge& edge = edges_[e];
      if (edge.left <= kEpsilon || level_[edge.to] != level_[u] + 1) continue;
      if (const double pushed = Push(edge.to, sink, std::min(limit, edge.left)); pushed > 0) {
        edge.left -= pushed;
        edges_[e ^ 1].left += pushed;
        return pushed;
      }
    }
    return 0;
  }
  std::vector<Edge> edges_;
  std::vector<int32_t> first_, level_, next_edge_;
};

}  // namespace

ReplicaShares OptimalReplicaShares(const ExpertMap& map, int32_t layer,
                                   std::span<const double> load) {
  const int32_t E = map.num_logical_experts(), R = map.num_ranks();
  EPLB_CHECK(load.size() == static_cast<size_t>(E), load.size());
  const SlotLayout& layout = map.layout();
  // Nodes: source, experts, ranks, sink. Loads scaled to a total of 1 (flows stay well above the
  // tolerance whatever the units).
  double total = 0;
  for (const double v : load) total += v;
  ReplicaShares out;
  out.share.assign(map.num_physical_experts(), 0.0);
  const std::vector<double> uniform = RankLoads(map, layer, load);
  out.max_rank_load = *std::max_element(uniform.begin(), uniform.end());
  for (int32_t e = 0; e < E; ++e) {
    for (const int32_t p : map.replicas(layer, e))
      out.share[p] = 1.0 / map.replicas(layer, e).size();
  }
  if (total <= 0) return out;
  const int32_t source = 0, sink = E + R + 1;
  MaxFlow flow(E + R + 2);
  std::vector<std::vector<std::pair<int32_t, int32_t>>> held(E);  // per expert: (rank, edge)
  for (int32_t e = 0; e < E; ++e) {
    flow.Add(source, 1 + e, load[e] / total);
    for (const int32_t p : map.replicas(layer, e)) {
      const int32_t r = layout.RankOfSlot(p);
      if (std::none_of(held[e].begin(), held[e].end(),
                       [&](const auto& h) { return h.first == r; })) {
        held[e].push_back({r, flow.Add(1 + e, 1 + E + r, 1.0)});
      }
    }
  }
  std::vector<int32_t> rank_edge(R);
  for (int32_t r = 0; r < R; ++r) rank_edge[r] = flow.Add(1 + E + r, sink, 0);
  // Capacities only grow from one t to the next: each test augments the last flow. Experts of a
  // load the flow treats as none are not waited for (they keep uniform shares).
  double routable = 0;
  for (const double v : load) routable += v / total > MaxFlow::kEpsilon ? v / total : 0.0;
  double routed = 0;
  const auto feasible = [&](double t) {
    for (int32_t r = 0; r < R; ++r) flow.RaiseCapacity(rank_edge[r], t);
    routed += flow.Augment(source, sink);
    return routed >= routable - 1e-9;
  };
  // Dinkelbach's iteration on the ratio of Hall's condition, from the mean: when the ranks cannot
  // take every expert's load at t, the minimum cut names a set of ranks B holding all replicas of
  // a set of experts A with load(A) > t × |B| (an edge expert → rank carries the whole load, so
  // no such edge is cut); the busiest rank is at least load(A) / |B|, the next t. Each t is a
  // ratio of some set, strictly larger than the last, so the iteration ends, in a few steps in
  // practice; rounding is caught by requiring progress.
  double t = 1.0 / R;
  const double uniform_max = out.max_rank_load / total;
  for (int32_t step = 0; !feasible(t); ++step) {
    double held_load = 0;
    int32_t held_ranks = 0;
    for (int32_t e = 0; e < E; ++e) held_load += flow.SourceSide(1 + e) ? load[e] / total : 0.0;
    for (int32_t r = 0; r < R; ++r) held_ranks += flow.SourceSide(1 + E + r);
    const double next = held_ranks > 0 ? held_load / held_ranks : uniform_max;
    if (next >= uniform_max || step > 2 * R + 8) return out;  // uniform routing is as good
    // Rounding: a cut that names no larger ratio; the smallest step up ends it.
    t = next > t * (1 + 1e-12) ? next : t * (1 + 1e-9);
  }
  if (t >= uniform_max) return out;  // uniform is as good
  ReplicaShares best = out;
  for (int32_t e = 0; e < E; ++e) {
    double sent = 0;  // e's load routed, normalised to 1 below (the flow is exact to 1e-9)
    for (const auto& [r, edge] : held[e]) sent += flow.flow(edge);
    if (load[e] <= 0 || sent <= 0) continue;
    for (const auto& [r, edge] : held[e]) {
      // The rank's part of e, split evenly over e's slots on it.
      int32_t on_rank = 0;
      for (const int32_t p : map.replicas(layer, e)) on_rank += layout.RankOfSlot(p) == r;
      for (const int32_t p : map.replicas(layer, e)) {
        if (layout.RankOfSlot(p) == r) best.share[p] = flow.flow(edge) / sent / on_rank;
      }
    }
  }
  // The busiest rank these shares give (t × total but for rounding and the experts left uniform).
  const std::vector<double> routed_loads = RoutedRankLoads(map, layer, load, best.share);
  best.max_rank_load = *std::max_element(routed_loads.begin(), routed_loads.end());
  return best.max_rank_load < out.max_rank_load ? best : out;
}

std::vector<double> OptimalReplicaShareTable(const ExpertMap& map, const LoadMatrix& load) {
  EPLB_CHECK(load.num_layers == map.num_layers() && load.num_experts == map.num_logical_experts(),
             "load of ", load.num_layers, " × ", load.num_experts);
  std::vector<double> table;
  table.reserve(static_cast<size_t>(map.num_layers()) * map.num_physical_experts());
  for (int32_t l = 0; l < map.num_layers(); ++l) {
    const ReplicaShares shares = OptimalReplicaShares(map, l, load.row(l));
    table.insert(table.end(), shares.share.begin(), shares.share.end());
  }
  return table;
}

std::vector<double> RoutedRankLoads(const ExpertMap& map, int32_t layer,
                                    std::span<const double> load, std::span<const double> share) {
  EPLB_CHECK(load.size() == static_cast<size_t>(map.num_logical_experts()), load.size());
  EPLB_CHECK(share.size() == static_cast<size_t>(map.num_physical_experts()), share.size());
  const SlotLayout& layout = map.layout();
  std::vector<double> rank_loads(map.num_ranks(), 0.0);
  const std::span<const int32_t> phy2log = map.phy2log(layer);
  for (int32_t p = 0; p < map.num_physical_experts(); ++p) {
    rank_loads[layout.RankOfSlot(p)] += share[p] * load[phy2log[p]];
  }
  return rank_loads;
}

RoutedBalance EvaluateRouting(const ExpertMap& map, const LoadMatrix& load,
                              std::span<const double> share_table) {
  const int32_t L = map.num_layers(), P = map.num_physical_experts();
  EPLB_CHECK(load.num_layers == L && load.num_experts == map.num_logical_experts(), "load of ",
             load.num_layers, " × ", load.num_experts);
  EPLB_CHECK(share_table.size() == static_cast<size_t>(L) * P, share_table.size());
  RoutedBalance out;
  double sum = 0;
  for (int32_t l = 0; l < L; ++l) {
    const double b = Balancedness(
        RoutedRankLoads(map, l, load.row(l), share_table.subspan(static_cast<size_t>(l) * P, P)));
    out.balancedness.push_back(b);
    out.min_balancedness = l == 0 ? b : std::min(out.min_balancedness, b);
    sum += b;
  }
  out.mean_balancedness = sum / L;
  return out;
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
        group_inverse_(num_groups, 0.0),
        node_shares_(maps.size()),
        miss_(num_nodes),
        taken_(maps.front()->num_logical_experts(), 0),
        group_taken_(num_groups, 0) {
    for (size_t m = 0; m < maps.size(); ++m) {
      const ExpertMap& map = *maps[m];
      const int32_t ranks_per_node = map.num_ranks() / num_nodes_;
      std::vector<int32_t>& node_of_slot = node_shares_[m].node_of_slot;
      node_of_slot.resize(map.num_physical_experts());
      for (int32_t slot = 0; slot < map.num_physical_experts(); ++slot) {
        node_of_slot[slot] = map.layout().RankOfSlot(slot) / ranks_per_node;
      }
    }
  }

  void SetLayer(int32_t layer, std::span<const double> load) {
    stream_ = SampleStream(seed_ ^ (static_cast<uint64_t>(layer) << 32));
    const int32_t E = maps_.front()->num_logical_experts();
    // The weights draws are in proportion to: loads (a negative one as 0), scaled down when they
    // are so large that their sum could overflow.
    weight_.resize(E);
    double largest = 0;
    for (int32_t e = 0; e < E; ++e) {
      weight_[e] = std::max(0.0, load[e]);
      largest = std::max(largest, weight_[e]);
    }
    if (largest > 1e300) {
      for (double& w : weight_) w /= largest;
    }
    // Cumulative weights, over experts and over groups.
    expert_prefix_.resize(E + 1);
    expert_prefix_[0] = 0;
    for (int32_t e = 0; e < E; ++e) expert_prefix_[e + 1] = expert_prefix_[e] + weight_[e];
    group_prefix_.resize(num_groups_ + 1);
    for (int32_t g = 0; g <= num_groups_; ++g) group_prefix_[g] = expert_prefix_[g * per_group_];
    for (int32_t g = 0; g < num_groups_; ++g) {
      group_load_[g] = group_prefix_[g + 1] - group_prefix_[g];
      group_inverse_[g] = group_load_[g] > 0 ? 1.0 / group_load_[g] : 0.0;
    }
    layer_total_ = group_prefix_[num_groups_];
    group_guide_.resize(2 * num_groups_ + 1);
    BuildGuide(group_prefix_, 0, num_groups_, group_guide_);
    expert_guide_.resize(2 * E + 1);
    for (int32_t g = 0; g < num_groups_; ++g) {
      BuildGuide(expert_prefix_, g * per_group_, per_group_, expert_guide_);
    }
    // Each expert's share of replicas per node: a token sent to it reaches node n with that share.
    for (size_t m = 0; m < maps_.size(); ++m) {
      const ExpertMap& map = *maps_[m];
      NodeShares& shares = node_shares_[m];
      shares.two.resize(2 * static_cast<size_t>(E));
      shares.more_begin.resize(E + 1);
      shares.more.clear();
      for (int32_t e = 0; e < E; ++e) {
        shares.more_begin[e] = static_cast<int32_t>(shares.more.size());
        const auto replicas = map.replicas(layer, e);
        NodeShare* two = &shares.two[2 * static_cast<size_t>(e)];
        if (replicas.size() == 1) {
          const int32_t node = shares.node_of_slot[replicas[0]];
          two[0] = {node, 1.0};
          two[1] = {node, 0.0};
          continue;
        }
        // The nodes of the expert's replicas, each with its replica count, in the order first
        // seen; then the counts become shares.
        nodes_.clear();
        for (const int32_t slot : replicas) {
          const int32_t node = shares.node_of_slot[slot];
          auto it = std::find_if(nodes_.begin(), nodes_.end(),
                                 [&](const NodeShare& n) { return n.node == node; });
          if (it == nodes_.end()) {
            nodes_.push_back({node, 1.0});
          } else {
            it->share += 1.0;
          }
        }
        const double replica_count = static_cast<double>(replicas.size());
        for (NodeShare& n : nodes_) n.share /= replica_count;
        two[0] = nodes_[0];
        two[1] = nodes_.size() > 1 ? nodes_[1] : NodeShare{nodes_[0].node, 0.0};
        shares.more.insert(shares.more.end(), nodes_.begin() + std::min<size_t>(2, nodes_.size()),
                           nodes_.end());
      }
      shares.more_begin[E] = static_cast<int32_t>(shares.more.size());
    }
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
  // Of one map: expert e's nodes are two[2e], two[2e + 1] (the second of share 0 when it has one
  // node, so that the common case is scored without branches), then more[more_begin[e],
  // more_begin[e + 1]).
  struct NodeShares {
    std::vector<NodeShare> two;
    std::vector<int32_t> more_begin;
    std::vector<NodeShare> more;
    std::vector<int32_t> node_of_slot;  // the same in every layer
  };

  // Copies per token per dispatch: a node reached is remote for a token from any other node.
  double Scale() const {
    return static_cast<double>(num_nodes_ - 1) /
           (static_cast<double>(num_nodes_) * experts_per_token_);
  }

  // x in [0, 1): NaN (0 × ∞ of a subnormal group's inverse) as 0, beyond 1 just below 1.
  static double UnitInterval(double x) {
    return x >= 0 ? std::min(x, std::nextafter(1.0, 0.0)) : 0.0;
  }

  // Draws in proportion to weight by inversion of cumulative weights with a guide table (Chen and
  // Asau): items [first, first + n) have the cumulative weights `prefix` (prefix[i] sums those
  // before i) and guide[2 first + j] is the item where the j-th of 2n equal parts of their total
  // starts, so that a draw rarely walks more than a step from there.
  // Built without branches: each item marks the first part whose start its range holds or passed
  // (the last item wins), then every part takes the largest mark at or before it. Locate corrects
  // any rounding.
  static void BuildGuide(const std::vector<double>& prefix, int32_t first, int32_t n,
                         std::vector<int32_t>& guide) {
    const int32_t parts = 2 * n;
    const double total = prefix[first + n] - prefix[first];
    const double scale = total > 0 ? parts / total : 0.0;
    int32_t* part = &guide[2 * static_cast<size_t>(first)];
    std::fill(part, part + parts + 1, first);
    for (int32_t i = first; i < first + n; ++i) {
      const double at = std::ceil((prefix[i] - prefix[first]) * scale);
      part[at >= 0 && at < parts ? static_cast<int32_t>(at) : (at >= parts ? parts : 0)] =
          i;  // part[parts]: past the last
    }
    for (int32_t j = 1; j < parts; ++j) part[j] = std::max(part[j], part[j - 1]);
  }
  // The item whose range [prefix[i], prefix[i + 1]) holds prefix[first] + u × total (u in
  // [0, 1), total > 0; the nearest item when rounding put it outside every range). The first two
  // steps from the guide are taken without a branch (the walk's length is what a branch
  // mispredicts).
  static int32_t Locate(const std::vector<double>& prefix, const std::vector<int32_t>& guide,
                        int32_t first, int32_t n, double u, double total) {
    const double target = prefix[first] + u * total;
    const int32_t last = first + n - 1;
    int32_t i = guide[2 * first + std::min(2 * n - 1, static_cast<int32_t>(u * (2 * n)))];
    i += static_cast<int32_t>((i < last) & (prefix[i + 1] <= target));
    i += static_cast<int32_t>((i < last) & (prefix[i + 1] <= target));
    while (i < last && prefix[i + 1] <= target) ++i;
    while (i > first && prefix[i] > target) --i;
    return i;
  }

  // Draws a token's experts into chosen_experts_.
  void DrawExperts() {
    for (const int32_t g : chosen_groups_) group_taken_[g] = 0;
    for (const int32_t e : chosen_experts_) taken_[e] = 0;
    // Groups, then experts of those groups, each without replacement in proportion to load.
    chosen_groups_.clear();
    TakeWithoutReplacement(
        groups_per_token_, layer_total_ > 0,
        [&] {
          const double u = stream_.Next();
          if (layer_total_ <= 0) {
            return std::min(num_groups_ - 1, static_cast<int32_t>(u * num_groups_));
          }
          return Locate(group_prefix_, group_guide_, 0, num_groups_, u, layer_total_);
        },
        [&](int32_t g) { return group_load_[g]; },
        [&](const auto& visit) {
          for (int32_t g = 0; g < num_groups_; ++g) visit(g);
        },
        chosen_groups_, group_taken_);
    chosen_cumulative_.clear();
    double chosen_total = 0;
    for (const int32_t g : chosen_groups_) {
      chosen_total += group_load_[g];
      chosen_cumulative_.push_back(chosen_total);
    }
    chosen_experts_.clear();
    TakeWithoutReplacement(
        experts_per_token_, chosen_total > 0,
        [&] {
          // An expert of the chosen groups in proportion to its load, from one uniform draw: the
          // chosen group whose cumulative range holds it (counted without branches), then the
          // expert of that group whose range holds what is left of it.
          const double u = stream_.Next();
          if (chosen_total <= 0) {
            const int32_t n = groups_per_token_ * per_group_;
            const int32_t i = std::min(n - 1, static_cast<int32_t>(u * n));
            return chosen_groups_[i / per_group_] * per_group_ + i % per_group_;
          }
          const double target = u * chosen_total;
          int32_t k = 0;
          for (int32_t j = 0; j + 1 < groups_per_token_; ++j) k += target >= chosen_cumulative_[j];
          const double below = k > 0 ? chosen_cumulative_[k - 1] : 0.0;
          const int32_t g = chosen_groups_[k];
          if (group_load_[g] <= 0) return g * per_group_;  // rounding past the last weight
          const double within = UnitInterval((target - below) * group_inverse_[g]);
          return Locate(expert_prefix_, expert_guide_, g * per_group_, per_group_, within,
                        group_load_[g]);
        },
        [&](int32_t e) { return weight_[e]; },
        [&](const auto& visit) {
          for (const int32_t g : chosen_groups_) {
            for (int32_t e = g * per_group_; e < (g + 1) * per_group_; ++e) visit(e);
          }
        },
        chosen_experts_, taken_);
  }

  // Appends to `chosen` until it holds `k` ids, drawn without replacement in proportion to
  // `weight(id)` (uniformly once the candidates left weigh nothing), and marks them in `taken`
  // (which marks exactly the ids of `chosen`). `draw()` draws with replacement in proportion to
  // weight (uniformly when `weighted` is false); an id already chosen, or weightless while weight
  // is left, is rejected, which gives the same distribution. After 8 rejections in a row (a few
  // ids hold nearly all the weight) the rest are taken from the candidates left
  // (`for_each_candidate(visit)` visits every candidate id) directly.
  template <typename Draw, typename Weight, typename ForEachCandidate>
  void TakeWithoutReplacement(int32_t k, bool weighted, const Draw& draw, const Weight& weight,
                              const ForEachCandidate& for_each_candidate,
                              std::vector<int32_t>& chosen, std::vector<uint8_t>& taken) {
    int32_t rejected = 0;
    while (static_cast<int32_t>(chosen.size()) < k && rejected < 8) {
      const int32_t id = draw();
      if (taken[id] != 0 || (weighted && weight(id) <= 0)) {
        ++rejected;
        continue;
      }
      rejected = 0;
      taken[id] = 1;
      chosen.push_back(id);
    }
    if (static_cast<int32_t>(chosen.size()) == k) return;
    weights_.clear();
    ids_.clear();
    double total = 0;
    for_each_candidate([&](int32_t id) {
      if (taken[id] != 0) return;
      weights_.push_back(weight(id));
      ids_.push_back(id);
      total += weights_.back();
    });
    while (static_cast<int32_t>(chosen.size()) < k) {
      const int32_t id = stream_.Take(weights_, ids_, total);
      taken[id] = 1;
      chosen.push_back(id);
    }
  }

  // A token's expected copies to other nodes per dispatch, given its experts, under one map's
  // replicas: node n is reached unless every chosen expert's replica lies elsewhere.
  double Score(const NodeShares& map) {
    std::fill(miss_.begin(), miss_.end(), 1.0);
    for (const int32_t e : chosen_experts_) {
      const NodeShare* two = &map.two[2 * static_cast<size_t>(e)];
      miss_[two[0].node] *= 1.0 - two[0].share;
      miss_[two[1].node] *= 1.0 - two[1].share;
      for (int32_t i = map.more_begin[e]; i < map.more_begin[e + 1]; ++i) {
        miss_[map.more[i].node] *= 1.0 - map.more[i].share;
      }
    }
    double reached = 0;
    for (const double m : miss_) reached += 1.0 - m;
    return Scale() * reached;
  }

  std::span<const ExpertMap* const> maps_;
  const int32_t num_groups_, num_nodes_, per_group_, groups_per_token_, experts_per_token_;
  const uint64_t seed_;
  std::vector<double> group_load_, group_inverse_;
  double layer_total_ = 0;
  std::vector<NodeShares> node_shares_;  // per map
  std::vector<double> weight_;           // per expert (SetLayer)
  std::vector<double> expert_prefix_, group_prefix_;  // cumulative loads: [i] sums those before i
  std::vector<int32_t> expert_guide_, group_guide_;   // per group, and over groups (BuildGuide)
  SampleStream stream_{0};
  std::vector<double> weights_, miss_, chosen_cumulative_;
  std::vector<NodeShare> nodes_;
  std::vector<uint8_t> taken_, group_taken_;  // 1 for what the token chose so far
  std::vector<int32_t> ids_, chosen_groups_, chosen_experts_;
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
