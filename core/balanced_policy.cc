#include "core/balanced_policy.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
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
#include "core/replica_bounds.h"
#include "core/status_macros.h"

namespace eplb {
namespace {

// What Packing::Improve may do, and where it stops.
struct ImproveOptions {
  // Stop once the busiest rank is at or below this load.
  double target = 0;
  int64_t max_steps = 0;
  // R × E: which rank held which expert before. With it, the step that puts the fewest replicas on
  // ranks that did not hold them goes first (then the one lowering the busiest rank most), and the
  // budgets below apply. Without it, the step lowering the busiest rank most goes first.
  const std::vector<uint8_t>* home = nullptr;
  // With `home`: no rank holds more than this many replicas away from home (0: no limit) ...
  int32_t rank_budget = 0;
  // ... and the layer holds no more than this many in all (0: no limit).
  int32_t layer_budget = 0;
  // Besides swapping replicas between ranks, a rank's replica of an expert with two or more may be
  // replaced by one more replica of an expert on the busiest rank (replica counts change).
  bool retarget = false;
  // With `home`: once the busiest rank is at the target, steps go on while one lowers it by more
  // than this load per replica it places away from home (net of those it returns home). Negative:
  // stop at the target.
  double move_price = -1;
};

// One layer's packing: which experts each rank holds (one replica each), the replica counts and the
// rank loads. A replica of expert e weighs load[e] / count[e].
class Packing {
 public:
  Packing(std::vector<int32_t> capacity, std::span<const double> load, std::vector<int32_t> count)
      : E_(static_cast<int32_t>(load.size())),
        capacity_(std::move(capacity)),
        expert_load_(load),
        count_(std::move(count)),
        weight_(E_),
        on_(capacity_.size()),
        holders_(E_),
        load_(capacity_.size(), 0.0),
        holds_(capacity_.size() * static_cast<size_t>(E_), 0),
        touched_(capacity_.size(), 0) {
    for (int32_t e = 0; e < E_; ++e) weight_[e] = expert_load_[e] / count_[e];
  }

  int32_t num_ranks() const { return static_cast<int32_t>(capacity_.size()); }
  bool Holds(int32_t r, int32_t e) const { return holds_[static_cast<size_t>(r) * E_ + e] != 0; }
  bool Full(int32_t r) const { return static_cast<int32_t>(on_[r].size()) == capacity_[r]; }
  double load(int32_t r) const { return load_[r]; }
  const std::vector<int32_t>& on(int32_t r) const { return on_[r]; }
  int32_t count(int32_t e) const { return count_[e]; }
  double weight(int32_t e) const { return weight_[e]; }

  void Add(int32_t r, int32_t e) {
    Touch(r);
    on_[r].push_back(e);
    holders_[e].push_back(r);
    load_[r] += weight_[e];
    holds_[static_cast<size_t>(r) * E_ + e] = 1;
  }
  void Remove(int32_t r, int32_t e) {
    auto it = std::find(on_[r].begin(), on_[r].end(), e);
    EPLB_CHECK(it != on_[r].end(), "expert ", e, " is not on rank ", r);
    Touch(r);
    on_[r].erase(it);
    holders_[e].erase(std::find(holders_[e].begin(), holders_[e].end(), r));
    load_[r] -= weight_[e];
    holds_[static_cast<size_t>(r) * E_ + e] = 0;
  }
  // Rank r's replica of c becomes a replica of a: c loses a replica, a gains one.
  void Retarget(int32_t r, int32_t c, int32_t a) {
    Remove(r, c);
    SetCount(c, count_[c] - 1);
    SetCount(a, count_[a] + 1);
    Add(r, a);
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

  // Lowers the busiest rank, one step at a time, while it is above `options.target` and some step
  // lowers it. Returns the number of steps taken.
  int64_t Improve(const ImproveOptions& options) {
    return options.home == nullptr ? ImproveBySwaps(options) : ImproveNearHome(options);
  }

 private:
  void SetCount(int32_t e, int32_t n) {
    const double w = expert_load_[e] / n;
    for (const int32_t r : holders_[e]) {
      Touch(r);
      load_[r] += w - weight_[e];
    }
    weight_[e] = w;
    count_[e] = n;
  }

  // Swaps only, the one lowering the busiest rank most first. The best swap with rank r lowers the
  // pair's maximum by at most half the gap lh − lr, so ranks are tried least loaded first and the
  // scan stops at a rank whose half gap cannot beat the best swap found.
  int64_t ImproveBySwaps(const ImproveOptions& options) {
    int64_t steps = 0;
    std::vector<int32_t> order;
    while (steps < options.max_steps) {
      const int32_t h = Busiest();
      const double lh = load_[h];
      if (lh <= options.target) break;
      SortByLoad(order);
      double best = lh * (1 - 1e-12);
      int32_t best_a = -1, best_r = -1, best_b = -1;
      for (const int32_t r : order) {
        const double lr = load_[r];
        if (r == h) continue;
        if (lr >= lh || lh - (lh - lr) / 2 >= best) break;
        for (const int32_t a : on_[h]) {
          if (Holds(r, a)) continue;
          const double wa = weight_[a];
          for (const int32_t b : on_[r]) {
            const double wb = weight_[b];
            if (wb >= wa || Holds(h, b)) continue;
            const double m = std::max(lh - wa + wb, lr - wb + wa);
            if (m < best) {
              best = m;
              best_a = a;
              best_r = r;
              best_b = b;
            }
          }
        }
      }
      if (best_a < 0) break;
      Remove(h, best_a);
      Remove(best_r, best_b);
      Add(h, best_b);
      Add(best_r, best_a);
      ++steps;
    }
    return steps;
  }

  // Swaps and (with options.retarget) retargets. A step that brings the busiest rank, and every
  // rank it touches, to the target wins over one that does not; among those, the one placing the
  // fewest replicas away from home, then the one leaving the busiest rank lowest (the most load
  // taken off it: under drift, a rank just under the target is the likeliest to exceed it at the
  // next rebalance). When no step reaches the target, the one lowering the busiest rank most,
  // then the cheapest. Within the budgets.
  int64_t ImproveNearHome(const ImproveOptions& options) {
    const std::vector<uint8_t>& home = *options.home;
    const auto away = [&](int32_t r, int32_t e) -> int {
      return home[static_cast<size_t>(r) * E_ + e] ? 0 : 1;
    };
    std::vector<int32_t> away_count(capacity_.size(), 0);
    int32_t away_total = 0;
    for (int32_t r = 0; r < num_ranks(); ++r) {
      for (const int32_t e : on_[r]) away_count[r] += away(r, e);
      away_total += away_count[r];
    }
    // A step that adds no replica away from home is always within a budget (the start may
    // already exceed one, e.g. when the previous placement held an expert twice on a rank).
    const auto within_budget = [&](int32_t r, int rank_change, int layer_change) {
      return (options.rank_budget == 0 || rank_change <= 0 ||
              away_count[r] + rank_change <= options.rank_budget) &&
             (options.layer_budget == 0 || layer_change <= 0 ||
              away_total + layer_change <= options.layer_budget);
    };
    // The replicas a step places away from home (net of those it returns), if within the budgets.
    // A swap of a (on h) with b (on r); a retarget of r's replica of b into one of a.
    const auto swap_cost = [&](int32_t h, int32_t a, int32_t r, int32_t b) -> std::optional<int> {
      const int dh = away(h, b) - away(h, a), dr = away(r, a) - away(r, b);
      if (!within_budget(h, dh, dh + dr) || !within_budget(r, dr, dh + dr)) return std::nullopt;
      return dh + dr;
    };
    const auto retarget_cost = [&](int32_t a, int32_t r, int32_t b) -> std::optional<int> {
      const int cost = away(r, a) - away(r, b);
      if (!within_budget(r, cost, cost)) return std::nullopt;
      return cost;
    };
    const double target = options.target;
    std::vector<int32_t> order;
    int64_t steps = 0;
    while (steps < options.max_steps) {
      const int32_t h = Busiest();
      const double lh = load_[h];
      if (lh <= target && options.move_price < 0) break;
      SortByLoad(order);
      Step best;
      if (options.retarget) RankHolders();
      // The highest load after retargeting r's replica of b into one more replica of a.
      // The load of x, a holder of a, after some rank's replica of b becomes one more replica of
      // a (x's share of b grows too if it holds b).
      const auto holder_after_retarget = [&](int32_t x, int32_t a, int32_t b) {
        return load_[x] - (weight_[a] - expert_load_[a] / (count_[a] + 1)) +
               (Holds(x, b) ? rise_[b] : 0.0);
      };
      const auto retarget_max = [&](int32_t a, int32_t r, int32_t b) {
        double m = load_[r] - weight_[b] + expert_load_[a] / (count_[a] + 1);
        for (const int32_t x : holders_[a]) m = std::max(m, holder_after_retarget(x, a, b));
        for (const int32_t y : holders_[b]) {
          if (y != r && !Holds(y, a)) m = std::max(m, load_[y] + rise_[b]);
        }
        return m;
      };

      // Swaps of a replica a of h with a lighter replica b of rank r, ranks in load order until
      // stop(load of r): visit(a, r, b).
      const auto for_each_swap = [&](auto stop, auto visit) {
        for (const int32_t a : on_[h]) {
          const double wa = weight_[a];
          for (const int32_t r : order) {
            if (stop(load_[r])) break;
            if (r == h || Holds(r, a)) continue;
            for (const int32_t b : on_[r]) {
              if (weight_[b] < wa && !Holds(h, b)) visit(a, r, b);
            }
          }
        }
      };
      // Retargets of rank r's replica of b (an expert with two or more) into one more replica of
      // a (on h) that leave r, and b's most loaded other holder, at or below limit(); a is
      // skipped when skip(a, its weight with one more replica): visit(a, r, b).
      const auto for_each_retarget = [&](auto skip, auto limit, auto visit) {
        for (const int32_t a : on_[h]) {
          const double wa_more = expert_load_[a] / (count_[a] + 1);
          if (skip(a, wa_more)) continue;
          for (const int32_t b : donors_) {
            if (b == a) continue;
            for (const int32_t r : holders_[b]) {
              if (r == h || Holds(r, a) || load_[r] - weight_[b] + wa_more > limit() ||
                  OtherHolderOver(b, r, a, limit())) {
                continue;
              }
              visit(a, r, b);
            }
          }
        }
      };

      if (lh <= target) {
        // At the target: the step with the most gain on the busiest rank (the load it takes off
        // h, down to the highest rank it touches) less the price of the replicas it places away
        // from home, if that is positive. Without a price (infinite), one returning replicas home
        // counts as more than any gain, and gains order the rest. A swap with r gains at most half
        // the gap lh − lr and returns at most two replicas home.
        const double price = std::isinf(options.move_price) ? 2 * lh + 1 : options.move_price;
        double best_value = 0;
        const auto consider = [&](Step::Kind kind, int cost, double m, int32_t a, int32_t r,
                                  int32_t b) {
          const double value = (lh - m) - price * cost;
          if (m < lh * (1 - 1e-12) && value > best_value) {
            best_value = value;
            best = {kind, cost, m, a, r, b};
          }
        };
        for_each_swap(
            [&](double lr) { return lr >= lh || (lh - lr) / 2 + 2 * price <= best_value; },
            [&](int32_t a, int32_t r, int32_t b) {
              const double wa = weight_[a], wb = weight_[b], lr = load_[r];
              if (const std::optional<int> cost = swap_cost(h, a, r, b)) {
                consider(Step::kSwap, *cost, std::max(lh - wa + wb, lr - wb + wa), a, r, b);
              }
            });
        if (options.retarget) {
          for_each_retarget([](int32_t, double) { return false; }, [&] { return lh; },
                            [&](int32_t a, int32_t r, int32_t b) {
                              if (const std::optional<int> cost = retarget_cost(a, r, b)) {
                                consider(Step::kRetarget, *cost, retarget_max(a, r, b), a, r, b);
                              }
                            });
        }
        if (best.kind == Step::kNone) break;
      }

      // Steps reaching the target: a swap needs lh − target ≤ wa − wb ≤ target − lr, so only
      // ranks up to 2 · target − lh qualify; a retarget needs a's share on h to drop by lh −
      // target.
      const double fix_limit = 2 * target - lh;
      if (best.kind == Step::kNone) {
        for_each_swap([&](double lr) { return lr > fix_limit; },
                      [&](int32_t a, int32_t r, int32_t b) {
                        const double wa = weight_[a], wb = weight_[b], lr = load_[r];
                        if (wa - wb < lh - target || lr - wb + wa > target) return;
                        const std::optional<int> cost = swap_cost(h, a, r, b);
                        const double h_after = lh - wa + wb;
                        if (cost && best.Beaten(*cost, h_after)) {
                          best = {Step::kSwap, *cost, h_after, a, r, b};
                        }
                      });
      }
      if (options.retarget && best.kind == Step::kNone) {
        for_each_retarget(
            [&](int32_t a, double wa_more) { return weight_[a] - wa_more < lh - target; },
            [&] { return target; },
            [&](int32_t a, int32_t r, int32_t b) {
              const std::optional<int> cost = retarget_cost(a, r, b);
              if (!cost || !best.Beaten(*cost, -1)) return;
              const double h_after = holder_after_retarget(h, a, b);
              if (best.Beaten(*cost, h_after) && retarget_max(a, r, b) <= target) {
                best = {Step::kRetarget, *cost, h_after, a, r, b};
              }
            });
      }

      if (best.kind == Step::kNone) {
        // No step reaches the target: the one lowering the busiest rank most. A swap with r
        // lowers the pair's maximum by at most half the gap lh − lr.
        double lowest = lh * (1 - 1e-12);
        int lowest_cost = 3;
        const auto lower = [&](Step::Kind kind, int cost, double m, int32_t a, int32_t r,
                               int32_t b) {
          if (m < lowest || (m == lowest && cost < lowest_cost)) {
            lowest = m;
            lowest_cost = cost;
            best = {kind, cost, m, a, r, b};
          }
        };
        for_each_swap([&](double lr) { return lr >= lh || lh - (lh - lr) / 2 > lowest; },
                      [&](int32_t a, int32_t r, int32_t b) {
                        const double wa = weight_[a], wb = weight_[b], lr = load_[r];
                        if (const std::optional<int> cost = swap_cost(h, a, r, b)) {
                          lower(Step::kSwap, *cost, std::max(lh - wa + wb, lr - wb + wa), a, r, b);
                        }
                      });
        if (options.retarget) {
          for_each_retarget([](int32_t, double) { return false; }, [&] { return lowest; },
                            [&](int32_t a, int32_t r, int32_t b) {
                              if (const std::optional<int> cost = retarget_cost(a, r, b)) {
                                lower(Step::kRetarget, *cost, retarget_max(a, r, b), a, r, b);
                              }
                            });
        }
      }

      if (best.kind == Step::kNone) break;
      away_total += best.cost;
      if (best.kind == Step::kRetarget) {
        away_count[best.r] += away(best.r, best.a) - away(best.r, best.b);
        Retarget(best.r, best.b, best.a);
      } else {
        away_count[h] += away(h, best.b) - away(h, best.a);
        away_count[best.r] += away(best.r, best.a) - away(best.r, best.b);
        Remove(h, best.a);
        Remove(best.r, best.b);
        Add(h, best.b);
        Add(best.r, best.a);
      }
      ++steps;
    }
    return steps;
  }

  // Marks rank r's load as changed since the last SortByLoad.
  void Touch(int32_t r) {
    if (!touched_[r]) {
      touched_[r] = 1;
      touched_ranks_.push_back(r);
    }
  }

  // `order` as the ranks by (load, rank): sorted when empty, otherwise kept sorted by moving only
  // the ranks whose load changed since the last call (a step changes a few).
  void SortByLoad(std::vector<int32_t>& order) {
    const auto before = [&](int32_t x, int32_t y) {
      return load_[x] < load_[y] || (load_[x] == load_[y] && x < y);
    };
    if (order.empty()) {
      order.resize(capacity_.size());
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), before);
    } else {
      std::erase_if(order, [&](int32_t r) { return touched_[r] != 0; });
      for (const int32_t r : touched_ranks_) {
        order.insert(std::lower_bound(order.begin(), order.end(), r, before), r);
      }
    }
    for (const int32_t r : touched_ranks_) touched_[r] = 0;
    touched_ranks_.clear();
  }

  // For every expert with two or more replicas: its two most loaded holders, and how much each
  // holder's load would rise if it lost one replica.
  void RankHolders() {
    top_.assign(E_, {-1, -1});
    rise_.assign(E_, 0.0);
    donors_.clear();
    for (int32_t e = 0; e < E_; ++e) {
      if (count_[e] < 2) continue;
      donors_.push_back(e);
      rise_[e] = expert_load_[e] / (count_[e] - 1) - weight_[e];
      auto& [first, second] = top_[e];
      for (const int32_t y : holders_[e]) {
        if (first < 0 || load_[y] > load_[first]) {
          second = first;
          first = y;
        } else if (second < 0 || load_[y] > load_[second]) {
          second = y;
        }
      }
    }
  }
  // Whether the most loaded holder of b other than r (if it does not hold a) would exceed `limit`
  // once b loses r's replica: then retargeting r's b into a cannot reach `limit`.
  bool OtherHolderOver(int32_t b, int32_t r, int32_t a, double limit) const {
    const auto [first, second] = top_[b];
    const int32_t y = first != r ? first : second;
    return y >= 0 && !Holds(y, a) && load_[y] + rise_[b] > limit;
  }

  // A candidate step of ImproveNearHome: swap a (busiest → r) with b (r → busiest), or retarget
  // r's replica of b into one more replica of a.
  struct Step {
    enum Kind { kNone, kSwap, kRetarget } kind = kNone;
    int cost = 0;  // change in replicas away from home
    // Lower wins among steps of equal cost: for steps reaching the target, the busiest rank's load
    // after the step; otherwise the highest load among the ranks it touches, after it.
    double score = 0;
    int32_t a = -1, r = -1, b = -1;
    // Whether a step of `c` moves scoring `m` is preferred to this one (m < 0: could it be).
    bool Beaten(int c, double m) const {
      return kind == kNone || c < cost || (c == cost && m < score);
    }
  };

  int32_t E_;
  std::vector<int32_t> capacity_;
  std::span<const double> expert_load_;
  std::vector<int32_t> count_;
  std::vector<double> weight_;
  std::vector<std::vector<int32_t>> on_;
  std::vector<std::vector<int32_t>> holders_;  // per expert: the ranks holding it
  std::vector<double> load_;
  std::vector<uint8_t> holds_;
  std::vector<uint8_t> touched_;        // per rank: load changed since the last SortByLoad
  std::vector<int32_t> touched_ranks_;  // those ranks
  std::vector<std::pair<int32_t, int32_t>> top_;  // RankHolders
  std::vector<double> rise_;                      // RankHolders
  std::vector<int32_t> donors_;                   // RankHolders: experts with 2+ replicas
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

// With two slots on every rank, the best packing for given replica counts pairs the heaviest
// replica with the lightest, the second heaviest with the second lightest, and so on; its busiest
// rank is the heaviest such pair. The counts minimising the heaviest replica need not minimise that
// (a light expert's extra replica can be the partner a heavy one lacks), so replicas move between
// experts while that lowers the heaviest pair: each step gives one more replica to an expert of the
// heaviest pair, taken from one of the experts that can best spare one.
std::vector<int32_t> PairCounts(std::span<const double> load, std::vector<int32_t> count,
                                int32_t R) {
  const int32_t E = static_cast<int32_t>(load.size());
  // The replicas by weight, ascending, for the current counts.
  std::vector<std::pair<double, int32_t>> items;
  const auto sort_items = [&] {
    items.clear();
    for (int32_t e = 0; e < E; ++e) {
      for (int32_t k = 0; k < count[e]; ++k) items.push_back({load[e] / count[e], e});
    }
    std::sort(items.begin(), items.end());
  };
  // The heaviest pair of `sorted` (weights ascending), and the experts of its two replicas.
  std::vector<double> sorted;
  const auto heaviest_pair = [&](int32_t* light, int32_t* heavy) {
    const size_t n = sorted.size();
    double max = -1;
    size_t at = 0;
    for (size_t i = 0; i < n / 2; ++i) {
      const double pair = sorted[i] + sorted[n - 1 - i];
      if (pair > max) {
        max = pair;
        at = i;
      }
    }
    if (light != nullptr) *light = items[at].second;
    if (heavy != nullptr) *heavy = items[n - 1 - at].second;
    return max;
  };
  // `sorted` for the counts with one replica moved from `from` to `to`: the current replicas of
  // other experts merged with the two experts' new runs (each of equal weights).
  const auto with_move = [&](int32_t from, int32_t to) {
    const double wf = load[from] / (count[from] - 1), wt = load[to] / (count[to] + 1);
    struct Run {
      double weight;
      int32_t left;
    } runs[2] = {{wf, count[from] - 1}, {wt, count[to] + 1}};
    if (runs[1].weight < runs[0].weight) std::swap(runs[0], runs[1]);
    sorted.clear();
    int run = 0;
    for (const auto& [weight, e] : items) {
      if (e == from || e == to) continue;
      while (run < 2 && runs[run].weight <= weight) {
        sorted.insert(sorted.end(), runs[run].left, runs[run].weight);
        ++run;
      }
      sorted.push_back(weight);
    }
    for (; run < 2; ++run) sorted.insert(sorted.end(), runs[run].left, runs[run].weight);
  };
  constexpr size_t kDonorsTried = 8;
  sort_items();
  sorted.clear();
  for (const auto& item : items) sorted.push_back(item.first);
  int32_t light = 0, heavy = 0;
  double now = heaviest_pair(&light, &heavy);
  std::vector<int32_t> donors;
  for (int32_t step = 0; step < E; ++step) {
    // Donors: the experts whose replicas grow least when they lose one.
    donors.clear();
    for (int32_t e = 0; e < E; ++e) {
      if (count[e] >= 2) donors.push_back(e);
    }
    const size_t tried = std::min(kDonorsTried, donors.size());
    std::partial_sort(donors.begin(), donors.begin() + tried, donors.end(),
                      [&](int32_t a, int32_t b) {
                        const double wa = load[a] / (count[a] - 1), wb = load[b] / (count[b] - 1);
                        return wa < wb || (wa == wb && a < b);
                      });
    donors.resize(tried);
    double best = now;
    int32_t best_from = -1, best_to = -1;
    for (const int32_t to : {heavy, light}) {
      if (count[to] >= R) continue;
      for (const int32_t from : donors) {
        if (from == to) continue;
        with_move(from, to);
        const double after = heaviest_pair(nullptr, nullptr);
        if (after < best * (1 - 1e-12)) {
          best = after;
          best_from = from;
          best_to = to;
        }
      }
    }
    if (best_from < 0) break;
    --count[best_from];
    ++count[best_to];
    sort_items();
    sorted.clear();
    for (const auto& item : items) sorted.push_back(item.first);
    now = heaviest_pair(&light, &heavy);
  }
  return count;
}

// Replica counts searched jointly with the packing, for parts of few slots per rank where the
// counts that minimise the heaviest replica can be far from the best counts for the packing.
// Enumerates count vectors (at most R replicas each, P in all) whose heaviest replica lies below
// the starting packing's busiest rank, depth first over the experts, heaviest first, and bounds
// each: with two slots per rank by its best pairing (exact but for an expert paired with itself),
// with more by CountBound. Those below the start are packed, with two slots in the order of their
// pairing until the best packing meets the next, with more in the order of a greedy packing's
// busiest rank (skipping those whose bound the best packing meets). Stops after `max_nodes` steps
// of the enumeration and `max_packings` packings.
class CountSearch {
 public:
  // `pack(counts)`: the busiest rank of a packing with those counts.
  using Pack = std::function<double(const std::vector<int32_t>&)>;

  CountSearch(std::span<const double> load, int32_t P, int32_t R, int32_t slots, Pack pack,
              int64_t max_nodes, int32_t max_packings)
      : load_(load),
        P_(P),
        R_(R),
        slots_(slots),
        pack_(std::move(pack)),
        max_nodes_(max_nodes),
        max_packings_(max_packings) {
    for (const double l : load_) total_ += l;
  }

  // Searches below a packing whose busiest rank is `start_max`; the caller's `pack` keeps the best
  // packing it was asked for.
  void Run(double start_max) {
    best_ = start_max;
    // The limit stays fixed during the walk: packings come after it.
    EnumerateReplicaCounts(
        load_, P_, R_, [this] { return Limit(); },
        [this](std::span<const int32_t> count) { Leaf(count); }, max_nodes_);
    std::sort(candidates_.begin(), candidates_.end());
    int32_t packings = 0;
    for (const auto& [estimate, bound, counts] : candidates_) {
      if (estimate >= Limit() && slots_ == 2) break;  // exact but for self-pairs: none left better
      if (bound >= Limit()) continue;
      if (++packings > max_packings_) break;
      best_ = std::min(best_, pack_(counts));
    }
  }

 private:
  // Strictly below the best found (rounding aside).
  double Limit() const { return best_ * (1 - 1e-9); }
  // The busiest rank when runs_' replicas go, heaviest first, to the least loaded rank with a
  // free slot (an expert may land twice on a rank): what the packing starts from, cheaply.
  double GreedyMax() {
    using Open = std::pair<double, int32_t>;  // (load, slots used)
    std::priority_queue<Open, std::vector<Open>, std::greater<>> open;
    for (int32_t r = 0; r < R_; ++r) open.push({0.0, 0});
    double max = 0;
    for (const ReplicaRun& run : runs_) {
      for (int32_t k = 0; k < run.n && !open.empty(); ++k) {
        auto [load, used] = open.top();
        open.pop();
        load += run.weight;
        max = std::max(max, load);
        if (used + 1 < slots_) open.push({load, used + 1});
      }
    }
    return max;
  }

  void Leaf(std::span<const int32_t> count) {
    RunsOf(load_, count, runs_);
    const double bound = slots_ == 2 ? PairedMax(runs_) : CountBound(runs_, R_, slots_, total_);
    if (bound < Limit() && static_cast<int64_t>(candidates_.size()) < max_nodes_) {
      candidates_.push_back({slots_ == 2 ? bound : GreedyMax(), bound,
                             std::vector<int32_t>(count.begin(), count.end())});
    }
  }

  std::span<const double> load_;
  const int32_t P_, R_, slots_;
  const Pack pack_;
  const int64_t max_nodes_;
  const int32_t max_packings_;
  double total_ = 0;
  double best_ = 0;
  std::vector<ReplicaRun> runs_;
  // (estimate, bound, counts): packed in the order of the estimate.
  std::vector<std::tuple<double, double, std::vector<int32_t>>> candidates_;
};

// Adds the replicas the packing's counts ask for beyond `placed`, heaviest first.
bool FillRemaining(Packing& packing, std::span<const int32_t> placed) {
  std::vector<std::pair<double, int32_t>> items;  // (−weight, expert)
  for (int32_t e = 0; e < static_cast<int32_t>(placed.size()); ++e) {
    for (int32_t k = placed[e]; k < packing.count(e); ++k) items.push_back({-packing.weight(e), e});
  }
  std::sort(items.begin(), items.end());
  // Ranks with a free slot by (load, rank): the first one not holding the expert takes it.
  std::set<std::pair<double, int32_t>> open;
  const auto reopen = [&] {
    open.clear();
    for (int32_t r = 0; r < packing.num_ranks(); ++r) {
      if (!packing.Full(r)) open.insert({packing.load(r), r});
    }
  };
  reopen();
  for (const auto& [neg_weight, e] : items) {
    auto it = open.begin();
    while (it != open.end() && packing.Holds(it->second, e)) ++it;
    if (it == open.end()) {
      // Every rank with room holds `e`: Place makes room elsewhere.
      if (!packing.Place(e)) return false;
      reopen();
      continue;
    }
    const int32_t r = it->second;
    open.erase(it);
    packing.Add(r, e);
    if (!packing.Full(r)) open.insert({packing.load(r), r});
  }
  return true;
}

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

// Renumbers the ranks of `sets` (among ranks of equal capacity) to keep as many experts as
// possible on the rank that held them in `previous` (`num_experts` experts).
std::vector<std::vector<int32_t>> MatchRanks(std::vector<std::vector<int32_t>> sets,
                                             std::span<const int32_t> capacity,
                                             const std::vector<std::vector<int32_t>>& previous,
                                             int32_t num_experts) {
  const int32_t R = static_cast<int32_t>(sets.size());
  std::vector<uint8_t> prev_holds(static_cast<size_t>(R) * num_experts, 0);
  for (int32_t r = 0; r < R; ++r) {
    for (const int32_t e : previous[r]) prev_holds[static_cast<size_t>(r) * num_experts + e] = 1;
  }
  std::vector<std::tuple<int32_t, int32_t, int32_t>> pairs;  // (−overlap, set, rank)
  for (int32_t b = 0; b < R; ++b) {
    for (int32_t r = 0; r < R; ++r) {
      if (capacity[r] != capacity[b]) continue;
      int32_t overlap = 0;
      for (const int32_t e : sets[b])
        overlap += prev_holds[static_cast<size_t>(r) * num_experts + e];
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

std::vector<std::vector<int32_t>> SetsOfRow(std::span<const int32_t> row,
                                            const SlotLayout& layout) {
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

std::vector<int32_t> CountsOf(const std::vector<std::vector<int32_t>>& sets, int32_t E) {
  std::vector<int32_t> count(E, 0);
  for (const auto& set : sets) {
    for (const int32_t e : set) ++count[e];
  }
  return count;
}

// The busiest rank's load of `sets`, each expert's load split over its replicas in them.
double MaxLoadOf(const std::vector<std::vector<int32_t>>& sets, std::span<const double> load) {
  const std::vector<int32_t> count = CountsOf(sets, static_cast<int32_t>(load.size()));
  double max = 0;
  for (const auto& set : sets) {
    double sum = 0;
    for (const int32_t e : set) sum += load[e] / count[e];
    max = std::max(max, sum);
  }
  return max;
}

// Whether `sets` is a complete placement of `num_experts` experts on ranks of `capacity`: every
// rank full, every expert placed, never twice on one rank.
bool IsComplete(const std::vector<std::vector<int32_t>>& sets, std::span<const int32_t> capacity,
                int32_t num_experts) {
  std::vector<bool> placed(num_experts, false);
  for (size_t r = 0; r < sets.size(); ++r) {
    if (static_cast<int32_t>(sets[r].size()) != capacity[r]) return false;
    for (const int32_t e : sets[r]) placed[e] = true;
  }
  return !HasDuplicates(sets) && std::find(placed.begin(), placed.end(), false) == placed.end();
}

// One placement problem: the experts of a layer, or with node affinity those of one node, on some
// ranks. Expert ids are local to the part.
struct Part {
  std::span<const double> load;   // per expert
  std::vector<int32_t> capacity;  // slots per rank
  // The sets now in use, per rank; null: none. May be incomplete (experts that left the part
  // dropped, new ones missing).
  const std::vector<std::vector<int32_t>>* previous = nullptr;
  // Another plan's sets (deepseek's layer), taken when its busiest rank is lower. May place an
  // expert twice on a rank.
  const std::vector<std::vector<int32_t>>* rival = nullptr;
};

// A packing of these counts from scratch: FillRemaining, then Improve; nullopt when the replicas
// do not fit.
std::optional<Packing> PackFresh(const std::vector<int32_t>& capacity, std::span<const double> load,
                                 std::vector<int32_t> count, int64_t max_swaps) {
  Packing packing(capacity, load, std::move(count));
  if (!FillRemaining(packing, std::vector<int32_t>(load.size(), 0))) return std::nullopt;
  packing.Improve({.max_steps = max_swaps});
  return packing;
}

// Parts with at most this many slots on every rank and at most this many experts search their
// replica counts with the packing (CountSearch), within this many steps of the enumeration per
// expert of the part, and this many packings (more in small parts).
constexpr int32_t kFewSlots = 4;
constexpr int32_t kSearchedExperts = 64;
constexpr int64_t kSearchSteps = 100000;
constexpr int32_t kSearchPackings = 16;  // or as many as pack this many replicas in all
constexpr int32_t kSearchPackedReplicas = 2048;

// The fresh packing (or the rival's, when better), then, with a previous placement: the previous
// sets if within options.tolerance of it; else the previous sets repaired by swaps and retargets
// (with the previous replica counts, then the new ones) until within the tolerance, or under a
// move budget as far as it allows; else the fresh packing with its ranks matched to the previous.
absl::StatusOr<std::vector<std::vector<int32_t>>> PlanPart(const Part& part,
                                                           const BalancedOptions& options,
                                                           int64_t max_swaps) {
  const std::span<const double> load = part.load;
  const int32_t E = static_cast<int32_t>(load.size());
  const int32_t R = static_cast<int32_t>(part.capacity.size());
  const int32_t P = std::accumulate(part.capacity.begin(), part.capacity.end(), 0);
  std::vector<int32_t> count = ReplicaCounts(load, P, R);
  if (std::all_of(part.capacity.begin(), part.capacity.end(), [](int32_t c) { return c == 2; })) {
    count = PairCounts(load, std::move(count), R);
  }
  std::optional<Packing> fresh = PackFresh(part.capacity, load, count, max_swaps);
  if (!fresh) return absl::InternalError("no room for every replica");
  std::vector<std::vector<int32_t>> sets(R);
  for (int32_t r = 0; r < R; ++r) sets[r] = fresh->on(r);
  double best = fresh->MaxLoad();

  // Few slots per rank: the replica counts searched with the packing.
  const int32_t slots = part.capacity.front();
  if (slots <= kFewSlots && E <= kSearchedExperts &&
      std::all_of(part.capacity.begin(), part.capacity.end(),
                  [&](int32_t c) { return c == slots; })) {
    std::optional<Packing> best_packing;
    const auto pack = [&](const std::vector<int32_t>& counts) {
      std::optional<Packing> packing = PackFresh(part.capacity, load, counts, max_swaps);
      if (!packing) return std::numeric_limits<double>::infinity();
      const double max = packing->MaxLoad();
      if (max < best) {
        best = max;
        best_packing = std::move(packing);
      }
      return max;
    };
    CountSearch(load, P, R, slots, pack, kSearchSteps / E,
                std::max(kSearchPackings, kSearchPackedReplicas / P))
        .Run(best);
    if (best_packing) {
      for (int32_t r = 0; r < R; ++r) sets[r] = best_packing->on(r);
    }
  }

  if (part.rival != nullptr) {
    const std::vector<std::vector<int32_t>>& rival = *part.rival;
    const double rival_max = MaxLoadOf(rival, load);
    if (rival_max < best * (1 - 1e-9)) {
      if (!HasDuplicates(rival)) {
        sets = rival;
        best = rival_max;
      } else {
        // The rival put two replicas of an expert on one rank: start from its sets with the
        // second copies merged into the first, give the freed slots to the experts with the
        // highest load per replica, place those, and improve.
        std::vector<int32_t> merged(E, 0);
        for (int32_t r = 0; r < R; ++r) {
          std::set<int32_t> unique(rival[r].begin(), rival[r].end());
          for (const int32_t e : unique) ++merged[e];
        }
        Packing repaired(part.capacity, load, ReplicaCounts(load, P, R, merged));
        std::vector<int32_t> placed(E, 0);
        for (int32_t r = 0; r < R; ++r) {
          for (const int32_t e : rival[r]) {
            if (!repaired.Holds(r, e)) {
              repaired.Add(r, e);
              ++placed[e];
            }
          }
        }
        if (FillRemaining(repaired, placed)) {
          repaired.Improve({.max_steps = max_swaps});
          if (repaired.MaxLoad() < best) {
            for (int32_t r = 0; r < R; ++r) sets[r] = repaired.on(r);
            best = repaired.MaxLoad();
          }
        }
      }
    }
  }
  if (part.previous == nullptr) return sets;

  const std::vector<std::vector<int32_t>>& previous = *part.previous;
  const double target = best * (1 + options.tolerance);
  // What a replica placed away from home must gain on the busiest rank, once within the target:
  // gain_per_move of the mean rank load; without it, no gain is enough (only steps placing none
  // away from home are taken).
  const double move_price =
      options.gain_per_move > 0
          ? options.gain_per_move * (std::accumulate(load.begin(), load.end(), 0.0) / R)
          : std::numeric_limits<double>::infinity();
  if (IsComplete(previous, part.capacity, E) && MaxLoadOf(previous, load) <= target &&
      options.gain_per_move == 0) {
    return previous;  // nothing moves: every replica is home
  }
  // Start from the previous placement: first with its replica counts (swaps and retargets change
  // them only where that lowers the busiest rank), then with the new counts.
  // The previous replica counts, made to fit: every expert at least one replica (an expert new to
  // the part takes one from the experts with the most), at most R, and P in all (free slots of
  // experts that left go to the highest load per replica).
  std::vector<int32_t> prev_count(E, 0);  // a second copy of an expert on a rank counts once
  for (const std::vector<int32_t>& set : previous) {
    for (const int32_t e : std::set<int32_t>(set.begin(), set.end())) ++prev_count[e];
  }
  int32_t prev_total = 0;
  for (int32_t& c : prev_count) {
    c = std::clamp(c, 1, R);
    prev_total += c;
  }
  for (; prev_total > P; --prev_total) {
    --*std::max_element(prev_count.begin(), prev_count.end());
  }
  if (prev_total < P) prev_count = ReplicaCounts(load, P, R, std::move(prev_count));
  std::vector<uint8_t> home(static_cast<size_t>(R) * E, 0);
  for (int32_t r = 0; r < R; ++r) {
    for (const int32_t e : previous[r]) home[static_cast<size_t>(r) * E + e] = 1;
  }
  const bool budgeted = options.max_received_per_rank > 0 || options.max_received_per_layer > 0;
  for (const std::vector<int32_t>* counts : {&prev_count, &count}) {
    // Under a budget, only repairs of the previous placement are tried.
    if (budgeted && counts != &prev_count) break;
    Packing warm(part.capacity, load, *counts);
    std::vector<int32_t> placed(E, 0);
    for (int32_t r = 0; r < R; ++r) {
      for (const int32_t e : previous[r]) {
        if (placed[e] < (*counts)[e] && !warm.Holds(r, e) && !warm.Full(r)) {
          warm.Add(r, e);
          ++placed[e];
        }
      }
    }
    if (!FillRemaining(warm, placed)) continue;
    warm.Improve({.target = target,
                  .max_steps = max_swaps,
                  .home = &home,
                  .rank_budget = options.max_received_per_rank,
                  .layer_budget = options.max_received_per_layer,
                  .retarget = true,
                  .move_price = move_price});
    if (warm.MaxLoad() <= target || budgeted) {
      for (int32_t r = 0; r < R; ++r) sets[r] = warm.on(r);
      return sets;
    }
  }
  return MatchRanks(std::move(sets), part.capacity, previous, E);
}

// Node affinity planned afresh tries at most this many assignments of groups to nodes beside the
// packing of group loads, among the first kMaxAssignments (none when there are more).
constexpr int32_t kAssignmentPlans = 4;
constexpr size_t kMaxAssignments = 1024;

// Every assignment of G / N groups to each of N interchangeable nodes (group g joins a node
// already used or the first empty one), as the groups of each node; none when there are more than
// `limit`.
std::vector<std::vector<std::vector<int32_t>>> Assignments(int32_t G, int32_t N, size_t limit) {
  std::vector<std::vector<std::vector<int32_t>>> out;
  std::vector<std::vector<int32_t>> groups_on(N);
  bool over = false;
  const auto assign = [&](auto&& self, int32_t g) -> void {
    if (over) return;
    if (g == G) {
      if (out.size() == limit) {
        over = true;
        return;
      }
      out.push_back(groups_on);
      return;
    }
    for (int32_t n = 0; n < N; ++n) {
      if (static_cast<int32_t>(groups_on[n].size()) == G / N) continue;
      groups_on[n].push_back(g);
      self(self, g + 1);
      groups_on[n].pop_back();
      if (groups_on[n].empty()) break;
    }
  };
  assign(assign, 0);
  if (over) out.clear();
  return out;
}

// Whether every group's replicas lie on the ranks of one node.
bool KeepsGroupsOnNodes(const std::vector<std::vector<int32_t>>& sets,
                        const DeploymentShape& shape) {
  std::vector<int32_t> node_of_group(shape.num_groups, -1);
  for (int32_t r = 0; r < shape.num_ranks; ++r) {
    for (const int32_t e : sets[r]) {
      int32_t& node = node_of_group[e / shape.experts_per_group()];
      if (node >= 0 && node != shape.NodeOfRank(r)) return false;
      node = shape.NodeOfRank(r);
    }
  }
  return true;
}

// The layer with node affinity: groups assigned to nodes (G / N each, balanced by group load; the
// previous assignment kept, or repaired, while within the tolerance), then each node's experts
// planned onto the node's ranks as a part of its own, from the node's previous sets.
absl::StatusOr<std::vector<std::vector<int32_t>>> PlanWithAffinity(
    std::span<const double> load, const DeploymentShape& shape, std::span<const int32_t> capacity,
    const std::vector<std::vector<int32_t>>* previous, const BalancedOptions& options,
    int64_t max_swaps) {
  const int32_t G = shape.num_groups, N = shape.num_nodes, R = shape.num_ranks;
  const int32_t per_group = shape.experts_per_group(), rpn = shape.ranks_per_node();
  std::vector<double> group_load(G, 0.0);
  for (int32_t e = 0; e < shape.num_logical_experts; ++e) group_load[e / per_group] += load[e];
  // The previous assignment, when every group was on one node.
  const std::vector<int32_t> node_capacity(N, G / N);
  std::vector<std::vector<int32_t>> prev_groups_on;
  if (previous != nullptr && KeepsGroupsOnNodes(*previous, shape)) {
    std::vector<int32_t> node_of_group(G, -1);
    for (int32_t r = 0; r < R; ++r) {
      for (const int32_t e : (*previous)[r]) node_of_group[e / per_group] = shape.NodeOfRank(r);
    }
    prev_groups_on.resize(N);
    for (int32_t g = 0; g < G; ++g) {
      if (node_of_group[g] >= 0) prev_groups_on[node_of_group[g]].push_back(g);
    }
  }
  const bool complete = !prev_groups_on.empty() && IsComplete(prev_groups_on, node_capacity, G);
  const bool budgeted = options.max_received_per_rank > 0 || options.max_received_per_layer > 0;
  std::vector<std::vector<int32_t>> groups_on;
  if (complete && budgeted) {
    groups_on = prev_groups_on;  // moving a group moves all its experts: not under a budget
  } else {
    // Groups as the items, nodes as the ranks: kept or repaired like any placement when the
    // previous assignment is complete; otherwise packed afresh, nodes matched to the previous.
    const Part node_part{.load = group_load,
                         .capacity = node_capacity,
                         .previous = complete ? &prev_groups_on : nullptr};
    BalancedOptions node_options = options;
    node_options.max_received_per_rank = 0;
    node_options.max_received_per_layer = 0;
    node_options.gain_per_move = 0;  // a group is many experts: its nodes' parts price the moves
    ASSIGN_OR_RETURN(groups_on, PlanPart(node_part, node_options, max_swaps));
    if (!complete && !prev_groups_on.empty()) {
      groups_on = MatchRanks(std::move(groups_on), node_capacity, prev_groups_on, G);
    }
  }

  // Each node's experts planned on its ranks, from the node's previous sets.
  const auto plan_nodes = [&](const std::vector<std::vector<int32_t>>& groups_on)
      -> absl::StatusOr<std::vector<std::vector<int32_t>>> {
    std::vector<std::vector<int32_t>> sets(R);
    int32_t layer_budget_left = options.max_received_per_layer;
    for (int32_t n = 0; n < N; ++n) {
      std::vector<int32_t> experts;  // global ids, ascending
      std::vector<int32_t> groups = groups_on[n];
      std::sort(groups.begin(), groups.end());
      for (const int32_t g : groups) {
        for (int32_t k = 0; k < per_group; ++k) experts.push_back(g * per_group + k);
      }
      const int32_t ne = static_cast<int32_t>(experts.size());
      std::vector<int32_t> ranks_capacity(capacity.begin() + n * rpn,
                                          capacity.begin() + (n + 1) * rpn);
      const int32_t node_slots = std::accumulate(ranks_capacity.begin(), ranks_capacity.end(), 0);
      if (node_slots < ne || static_cast<int64_t>(ne) * rpn < node_slots) {
        return absl::FailedPreconditionError(absl::StrCat(
            "node affinity: node ", n, " has ", node_slots, " slots for ", ne, " experts on ", rpn,
            " ranks; it needs experts ≤ slots ≤ experts × ranks"));
      }
      std::vector<double> node_load(ne);
      std::vector<int32_t> local(shape.num_logical_experts, -1);
      for (int32_t i = 0; i < ne; ++i) {
        node_load[i] = load[experts[i]];
        local[experts[i]] = i;
      }
      std::vector<std::vector<int32_t>> node_previous;
      if (previous != nullptr) {
        node_previous.resize(rpn);
        for (int32_t i = 0; i < rpn; ++i) {
          for (const int32_t e : (*previous)[n * rpn + i]) {
            if (local[e] >= 0) node_previous[i].push_back(local[e]);
          }
        }
      }
      const Part part{.load = node_load,
                      .capacity = ranks_capacity,
                      .previous = previous != nullptr ? &node_previous : nullptr};
      // The layer's budget is shared by its nodes, in node order.
      BalancedOptions node_options = options;
      node_options.max_received_per_layer = layer_budget_left;
      std::vector<std::vector<int32_t>> node_sets;
      if (options.max_received_per_layer > 0 && layer_budget_left == 0 &&
          IsComplete(node_previous, ranks_capacity, ne)) {
        node_sets = node_previous;
      } else {
        ASSIGN_OR_RETURN(node_sets, PlanPart(part, node_options, max_swaps));
      }
      if (options.max_received_per_layer > 0 && previous != nullptr) {
        for (int32_t i = 0; i < rpn; ++i) {
          for (const int32_t e : node_sets[i]) {
            const auto& before = node_previous[i];
            if (std::find(before.begin(), before.end(), e) == before.end()) --layer_budget_left;
          }
        }
        layer_budget_left = std::max(layer_budget_left, 0);
      }
      for (int32_t i = 0; i < rpn; ++i) {
        for (const int32_t e : node_sets[i]) sets[n * rpn + i].push_back(experts[e]);
      }
    }
    return sets;
  };
  ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> sets, plan_nodes(groups_on));

  // Planned afresh with few slots on every rank (as many on each): the packing of group loads
  // need not be the best assignment for the nodes' own packings, which are coarse. Other
  // assignments are planned too, in the order of their bound (the busiest node's
  // MaxRankLoadLowerBound), while that beats the best so far.
  const int32_t slots = capacity.front();
  if (previous != nullptr || slots > kFewSlots ||
      std::any_of(capacity.begin(), capacity.end(), [&](int32_t c) { return c != slots; })) {
    return sets;
  }
  const int32_t node_slots = slots * rpn;
  std::vector<std::vector<std::vector<int32_t>>> candidates = Assignments(G, N, kMaxAssignments);
  // The assignment already planned, in the enumeration's form (each node's groups ascending,
  // nodes by their first group): not planned again.
  std::vector<std::vector<int32_t>> planned_form = groups_on;
  for (std::vector<int32_t>& groups : planned_form) std::sort(groups.begin(), groups.end());
  std::sort(planned_form.begin(), planned_form.end());
  std::erase(candidates, planned_form);
  std::vector<std::pair<double, size_t>> order;
  std::vector<double> node_load;
  for (size_t i = 0; i < candidates.size(); ++i) {
    double bound = 0;
    for (const std::vector<int32_t>& groups : candidates[i]) {
      node_load.clear();
      for (const int32_t g : groups) {
        for (int32_t k = 0; k < per_group; ++k) node_load.push_back(load[g * per_group + k]);
      }
      bound = std::max(bound, MaxRankLoadLowerBound(node_load, node_slots, rpn));
    }
    order.emplace_back(bound, i);
  }
  std::sort(order.begin(), order.end());
  double best = MaxLoadOf(sets, load);
  int32_t planned = 0;
  for (const auto& [bound, i] : order) {
    if (bound >= best * (1 - 1e-12) || planned == kAssignmentPlans) break;
    ++planned;
    ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> other, plan_nodes(candidates[i]));
    const double max = MaxLoadOf(other, load);
    if (max < best * (1 - 1e-12)) {
      best = max;
      sets = std::move(other);
    }
  }
  return sets;
}

}  // namespace

absl::Status ValidateBalancedOptions(const BalancedOptions& options) {
  const auto fraction = [](absl::string_view field, double value) {
    if (value >= 0 && value <= 1) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(field, " = ", value, " is out of range [0, 1]"));
  };
  const auto count = [](absl::string_view field, int64_t value, int64_t max) {
    if (value >= 0 && value <= max) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat(field, " = ", value, " is out of range [0, ", max, "]"));
  };
  RETURN_IF_ERROR(fraction("tolerance", options.tolerance));
  RETURN_IF_ERROR(fraction("min_gain", options.min_gain));
  RETURN_IF_ERROR(fraction("gain_per_move", options.gain_per_move));
  constexpr int64_t kMax = BalancedOptions::kMaxBudget;
  RETURN_IF_ERROR(count("max_received_per_rank", options.max_received_per_rank, kMax));
  RETURN_IF_ERROR(count("max_received_per_layer", options.max_received_per_layer, kMax));
  RETURN_IF_ERROR(count("threads", options.threads, BalancedOptions::kMaxThreads));
  return absl::OkStatus();
}

absl::StatusOr<ExpertMap> BalancedPolicy::PlanValidated(const PlanInput& input) const {
  RETURN_IF_ERROR(ValidateBalancedOptions(options_));
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
    return absl::FailedPreconditionError(
        absl::StrCat("node affinity needs num_groups (", shape.num_groups,
                     ") to be a multiple of num_nodes (", shape.num_nodes, ")"));
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
    const std::span<const int32_t> previous =
        input.previous != nullptr ? input.previous->phy2log(l) : std::span<const int32_t>();
    std::optional<std::vector<std::vector<int32_t>>> prev_sets;
    if (!previous.empty()) prev_sets = SetsOfRow(previous, layout);
    std::vector<std::vector<int32_t>> sets;
    if (affinity) {
      ASSIGN_OR_RETURN(
          sets, PlanWithAffinity(load, shape, capacity, prev_sets ? &*prev_sets : nullptr, options_,
                                 max_swaps));
    } else {
      std::optional<std::vector<std::vector<int32_t>>> rival;
      if (deepseek.has_value()) rival = SetsOfRow(deepseek->phy2log(l), layout);
      const Part part{.load = load,
                      .capacity = capacity,
                      .previous = prev_sets ? &*prev_sets : nullptr,
                      .rival = rival ? &*rival : nullptr};
      auto planned = PlanPart(part, options_, max_swaps);
      if (!planned.ok()) {
        return absl::Status(planned.status().code(),
                            absl::StrCat("layer ", l, ": ", planned.status().message()));
      }
      sets = *std::move(planned);
    }
    // min_gain: a layer whose busiest rank would not drop by that fraction stays, if it meets
    // the same constraints (one replica per rank; with affinity, every group on one node).
    if (prev_sets && !HasDuplicates(*prev_sets) &&
        (!affinity || KeepsGroupsOnNodes(*prev_sets, shape))) {
      const double prev_max = MaxLoadOf(*prev_sets, load);
      if (prev_max - MaxLoadOf(sets, load) < options_.min_gain * prev_max) {
        sets = *std::move(prev_sets);
      }
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
