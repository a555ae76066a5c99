// policy_quality: the balance and the weight movement of `deepseek` and `balanced`.
//
// For each shape and skew (per-expert log-normal load, σ 0.5, 1.0, 1.5; 58 layers): the busiest
// rank over the lower bound (max/LB, mean over layers), the balancedness (mean / max rank load)
// with uniform routing over replicas and with the optimal routing shares ("weighted"), and the
// planning time of each policy (best of 3). Then shapes with few slots per rank: max over the
// count bound, and the balance decode steps realize. Then node affinity: max/LB and the cross-node
// share of token traffic (core/metrics.h RoutingModel: 8 experts in 4 groups per token). Then a
// drift sequence per shape: 50 rebalances, the load multiplied before each by log-normal noise
// (σ 0.1) per expert; `deepseek` plans from scratch, `balanced` from its previous placement.
// Experts moved (received by a rank that did not hold them), summed over the sequence, the mean
// max/LB of `balanced` with and without the previous placement, the mean ratio of their busiest
// ranks per layer, the ranks of the previous placement above 1.01 and 1.003 × the fresh plan's
// busiest rank before each plan (what the repair must lower), and its mean planning time; with
// the default options, then with a gain per move or a narrower tolerance (balance bought with
// moves), then under move budgets.
//
//   policy_quality [--drift-rounds 50] [--drift-seed 99]
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>

#include "bench/bench_shapes.h"
#include "core/balanced_policy.h"
#include "core/deepseek_policy.h"
#include "core/metrics.h"
#include "core/testing/random_inputs.h"

namespace eplb {
namespace {

const bench::NamedShape kShapes[] = {
    {"V3 prefill (R 32, 9 slots/rank)", bench::kV3Prefill},
    {"V3 decode (R 144, 2 slots/rank)", bench::kV3Decode},
    {"R 64, 8 nodes, 5 slots/rank", bench::kR64},
};
// Shapes with few slots per rank, where the count bound applies, and their experts per token.
struct FewSlotShape {
  bench::NamedShape named;
  int32_t top_k;
};
const FewSlotShape kFewSlotShapes[] = {
    {{"Mixtral-like (E 8, R 8, 2 slots/rank)", bench::kMixtral}, 2},
    {{"E 12, R 6, 3 slots/rank", bench::kE12ThreeSlots}, 2},
};

// The mean over layers of the balancedness (mean / busiest rank) with each layer's optimal replica
// routing shares (core/metrics.h OptimalReplicaShares) instead of uniform ones.
double WeightedBalancedness(const ExpertMap& map, const LoadMatrix& load) {
  double sum = 0;
  for (int32_t l = 0; l < map.num_layers(); ++l) {
    const double total = std::accumulate(load.row(l).begin(), load.row(l).end(), 0.0);
    const double max = OptimalReplicaShares(map, l, load.row(l)).max_rank_load;
    sum += max > 0 ? total / map.num_ranks() / max : 1.0;
  }
  return sum / map.num_layers();
}

// What a decode step realizes: `tokens_per_rank` tokens per rank, each choosing `top_k` distinct
// experts drawn in proportion to the layer's load, each served by one replica of the expert,
// chosen uniformly at random or round robin (a counter per expert). The mean over `steps` steps
// and the layers of mean / max tokens per rank.
struct Realized {
  double uniform = 0, round_robin = 0;
};
Realized RealizedBalance(const ExpertMap& map, const LoadMatrix& load, int32_t top_k,
                         int32_t tokens_per_rank, int32_t steps, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int32_t R = map.num_ranks(), E = map.num_logical_experts();
  Realized out;
  std::vector<double> cumulative(E);
  std::vector<int32_t> next(E), chosen;
  std::vector<double> uniform(R), round_robin(R);
  const auto balance = [&](const std::vector<double>& per_rank) {
    const double max = *std::max_element(per_rank.begin(), per_rank.end());
    return max > 0 ? std::accumulate(per_rank.begin(), per_rank.end(), 0.0) / R / max : 1.0;
  };
  for (int32_t l = 0; l < map.num_layers(); ++l) {
    std::partial_sum(load.row(l).begin(), load.row(l).end(), cumulative.begin());
    const double total = cumulative.back();
    std::fill(next.begin(), next.end(), 0);
    for (int32_t step = 0; step < steps; ++step) {
      std::fill(uniform.begin(), uniform.end(), 0.0);
      std::fill(round_robin.begin(), round_robin.end(), 0.0);
      for (int64_t t = 0; t < static_cast<int64_t>(tokens_per_rank) * R; ++t) {
        chosen.clear();
        while (static_cast<int32_t>(chosen.size()) < std::min(top_k, E)) {
          const double u = std::uniform_real_distribution<double>(0.0, total)(rng);
          const int32_t e = std::min<int32_t>(
              E - 1,
              static_cast<int32_t>(std::upper_bound(cumulative.begin(), cumulative.end(), u) -
                                   cumulative.begin()));
          if (std::find(chosen.begin(), chosen.end(), e) != chosen.end()) continue;
          chosen.push_back(e);
          const std::span<const int32_t> slots = map.replicas(l, e);
          const int32_t n = static_cast<int32_t>(slots.size());
          uniform[map.layout().RankOfSlot(
              slots[std::uniform_int_distribution<int32_t>(0, n - 1)(rng)])] += 1;
          round_robin[map.layout().RankOfSlot(slots[next[e]++ % n])] += 1;
        }
      }
      out.uniform += balance(uniform) / steps / map.num_layers();
      out.round_robin += balance(round_robin) / steps / map.num_layers();
    }
  }
  return out;
}

using testing::LogNormalLoad;

double Millis(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// The fastest of `n` runs of `run`, in milliseconds.
template <typename Run>
double BestOf(int n, Run run) {
  double best = 1e30;
  for (int i = 0; i < n; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    best = std::min(best, Millis(t0, std::chrono::steady_clock::now()));
  }
  return best;
}

}  // namespace
}  // namespace eplb

int main(int argc, char** argv) {
  using namespace eplb;
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  int rounds = 50;
  uint64_t drift_seed = 99;
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 == argc || (flag != "--drift-rounds" && flag != "--drift-seed")) {
      std::fprintf(stderr, "usage: policy_quality [--drift-rounds N] [--drift-seed S]; got %s\n",
                   flag.c_str());
      return 2;
    }
    if (flag == "--drift-rounds") rounds = std::atoi(argv[i + 1]);
    if (flag == "--drift-seed") drift_seed = std::strtoull(argv[i + 1], nullptr, 10);
  }
  const DeepSeekPolicy deepseek;
  const BalancedPolicy balanced;
  std::printf(
      "| shape | σ | deepseek max/LB | balanced max/LB | deepseek balancedness | weighted | "
      "balanced balancedness | weighted | deepseek ms | balanced ms |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n");
  for (const bench::NamedShape& named : kShapes) {
    for (const double sigma : {0.5, 1.0, 1.5}) {
      std::mt19937_64 rng(1234);
      const LoadMatrix load = LogNormalLoad(named.shape, sigma, rng);
      absl::StatusOr<ExpertMap> ds, bal;
      const double ds_ms =
          BestOf(3, [&] { ds = deepseek.Plan({.shape = named.shape, .load = &load}); });
      const double bal_ms =
          BestOf(3, [&] { bal = balanced.Plan({.shape = named.shape, .load = &load}); });
      if (!ds.ok() || !bal.ok()) {
        std::fprintf(stderr, "%s: %s %s\n", named.name, ds.status().ToString().c_str(),
                     bal.status().ToString().c_str());
        return 1;
      }
      const MapQuality qd = EvaluateMap(*ds, load), qb = EvaluateMap(*bal, load);
      std::printf("| %s | %.1f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.2f | %.2f |\n",
                  named.name, sigma, qd.mean_max_over_bound, qb.mean_max_over_bound,
                  qd.mean_balancedness, WeightedBalancedness(*ds, load), qb.mean_balancedness,
                  WeightedBalancedness(*bal, load), ds_ms, bal_ms);
    }
  }

  {
    // Few slots per rank: the gap to the count bound, and the balance a decode step realizes
    // (64 tokens per rank, 8 steps) with uniform and round-robin replica choice.
    std::printf(
        "\n| shape | σ | deepseek max/LB | max/count bound | balanced max/LB | max/count bound | "
        "deepseek per step, uniform | round robin | balanced per step, uniform | round robin "
        "|\n|---|---|---|---|---|---|---|---|---|---|\n");
    const auto row = [&](const bench::NamedShape& named, int32_t top_k, double sigma) {
      std::mt19937_64 rng(1234);
      const LoadMatrix load = LogNormalLoad(named.shape, sigma, rng);
      const ExpertMap ds = *deepseek.Plan({.shape = named.shape, .load = &load});
      const ExpertMap bal = *balanced.Plan({.shape = named.shape, .load = &load});
      const MapQuality qd = EvaluateMap(ds, load), qb = EvaluateMap(bal, load);
      const Realized rd = RealizedBalance(ds, load, top_k, 64, 8, 7);
      const Realized rb = RealizedBalance(bal, load, top_k, 64, 8, 7);
      std::printf("| %s | %.1f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f |\n",
                  named.name, sigma, qd.mean_max_over_bound, qd.mean_max_over_count_bound,
                  qb.mean_max_over_bound, qb.mean_max_over_count_bound, rd.uniform, rd.round_robin,
                  rb.uniform, rb.round_robin);
    };
    for (const FewSlotShape& few : kFewSlotShapes) {
      for (const double sigma : {0.5, 1.0, 1.5}) row(few.named, few.top_k, sigma);
    }
    // V3 decode: 256 experts on two slots per rank, the count bound is the pairing bound.
    for (const double sigma : {0.5, 1.0, 1.5}) row(kShapes[1], 8, sigma);
  }
  {
    // Layers in parallel: the prefill shape on 1 and 2 threads, best of 5; from scratch, and from
    // a previous placement planned for the load before one drift step.
    std::mt19937_64 rng(1234);
    const LoadMatrix before = LogNormalLoad(kShapes[0].shape, 1.0, rng);
    LoadMatrix load = before;
    std::lognormal_distribution<double> noise(0.0, 0.1);
    for (double& v : load.values) v = std::round(v * noise(rng));
    const ExpertMap previous = *balanced.Plan({.shape = kShapes[0].shape, .load = &before});
    std::printf("\n| balanced, prefill shape | 1 thread | 2 threads |\n|---|---|---|\n");
    for (const bool warm : {false, true}) {
      double ms[2];
      for (const int threads : {1, 2}) {
        const BalancedPolicy policy({.threads = threads});
        bool ok = true;
        ms[threads - 1] = BestOf(5, [&] {
          ok &= policy
                    .Plan({.shape = kShapes[0].shape,
                           .load = &load,
                           .previous = warm ? &previous : nullptr})
                    .ok();
        });
        if (!ok) return 1;
      }
      std::printf("| %s | %.2f ms | %.2f ms |\n",
                  warm ? "from the previous placement" : "from scratch", ms[0], ms[1]);
    }
  }
  {
    // Node affinity: groups kept on one node, σ 1.0.
    std::printf(
        "\n| shape | deepseek max/LB | cross-node share | balanced max/LB | cross-node share | "
        "balanced + affinity max/LB | cross-node share |\n|---|---|---|---|---|---|---|\n");
    BalancedOptions affine_options;
    affine_options.node_affinity = true;
    const BalancedPolicy affine(affine_options);
    for (const bench::NamedShape& named : {kShapes[0], kShapes[2]}) {
      std::mt19937_64 rng(1234);
      const LoadMatrix load = LogNormalLoad(named.shape, 1.0, rng);
      const ExpertMap maps[] = {*deepseek.Plan({.shape = named.shape, .load = &load}),
                                *balanced.Plan({.shape = named.shape, .load = &load}),
                                *affine.Plan({.shape = named.shape, .load = &load})};
      std::printf("| %s", named.name);
      for (const ExpertMap& map : maps) {
        std::printf(
            " | %.4f | %.3f", EvaluateMap(map, load).mean_max_over_bound,
            MeanCrossNodeTrafficShare(map, load, named.shape.num_groups, named.shape.num_nodes));
      }
      std::printf(" |\n");
    }
  }
  std::printf(
      "\n| shape | rounds | deepseek experts moved | balanced experts moved | ratio | "
      "balanced max/LB with previous | from scratch | busiest rank with previous / from scratch "
      "| ranks above 1.01 × / 1.003 × from scratch before the plan | ms per plan with previous "
      "|\n"
      "|---|---|---|---|---|---|---|---|---|---|\n");
  struct DriftCase {
    bench::NamedShape named;
    BalancedOptions options;
    const char* note;
  };
  const DriftCase drift_cases[] = {
      {kShapes[0], {}, ""},
      {kShapes[1], {}, ""},
      {kShapes[2], {}, ""},
      {kShapes[0], {.gain_per_move = 0.005}, ", gain per move 0.005"},
      {kShapes[1], {.gain_per_move = 0.005}, ", gain per move 0.005"},
      {kShapes[2], {.gain_per_move = 0.005}, ", gain per move 0.005"},
      {kShapes[0], {.gain_per_move = 0.002}, ", gain per move 0.002"},
      {kShapes[1], {.gain_per_move = 0.01}, ", gain per move 0.01"},
      {kShapes[2], {.gain_per_move = 0.002}, ", gain per move 0.002"},
      {kShapes[0], {.tolerance = 0.003}, ", tolerance 0.003"},
      {kShapes[1], {.tolerance = 0.003}, ", tolerance 0.003"},
      {kShapes[2], {.tolerance = 0.003}, ", tolerance 0.003"},
      {kShapes[2], {.max_received_per_rank = 1}, ", at most 1 received per rank and layer"},
      {kShapes[2], {.max_received_per_layer = 16}, ", at most 16 received per layer"},
      {kShapes[0], {.node_affinity = true}, ", node affinity"},
      {kShapes[2], {.node_affinity = true}, ", node affinity"},
  };
  for (const DriftCase& drift : drift_cases) {
    const bench::NamedShape& named = drift.named;
    const BalancedPolicy warm_policy(drift.options);
    std::mt19937_64 rng(drift_seed);
    LoadMatrix load = LogNormalLoad(named.shape, 1.0, rng);
    std::lognormal_distribution<double> noise(0.0, 0.1);
    auto ds_prev = *deepseek.Plan({.shape = named.shape, .load = &load});
    auto bal_prev = *warm_policy.Plan({.shape = named.shape, .load = &load});
    int64_t ds_moved = 0, bal_moved = 0;
    double with_prev = 0, scratch = 0, warm_ms = 0, over_fresh = 0;
    // Ranks of the previous placement above 1.01 and 1.003 × the fresh plan's busiest rank under
    // the round's load: what the repair has to lower (per layer and round).
    double above_1 = 0, above_03 = 0;
    for (int round = 0; round < rounds; ++round) {
      for (double& v : load.values) v = std::round(v * noise(rng));
      auto ds = *deepseek.Plan({.shape = named.shape, .load = &load});
      const auto t0 = std::chrono::steady_clock::now();
      auto bal = *warm_policy.Plan({.shape = named.shape, .load = &load, .previous = &bal_prev});
      warm_ms += Millis(t0, std::chrono::steady_clock::now()) / rounds;
      auto fresh = *warm_policy.Plan({.shape = named.shape, .load = &load});
      for (int32_t l = 0; l < named.shape.num_layers; ++l) {
        const std::vector<double> fresh_loads = RankLoads(fresh, l, load.row(l));
        const double fresh_max = *std::max_element(fresh_loads.begin(), fresh_loads.end());
        const double per = 1.0 / named.shape.num_layers / rounds;
        for (const double v : RankLoads(bal_prev, l, load.row(l))) {
          above_1 += v > 1.01 * fresh_max ? per : 0.0;
          above_03 += v > 1.003 * fresh_max ? per : 0.0;
        }
      }
      ds_moved += ComputeMigration(ds_prev, ds, 1).experts_received;
      bal_moved += ComputeMigration(bal_prev, bal, 1).experts_received;
      const MapQuality warm_quality = EvaluateMap(bal, load),
                       fresh_quality = EvaluateMap(fresh, load);
      with_prev += warm_quality.mean_max_over_bound / rounds;
      scratch += fresh_quality.mean_max_over_bound / rounds;
      // Both over the same bound: the ratio of their busiest ranks.
      for (int32_t l = 0; l < named.shape.num_layers; ++l) {
        over_fresh += warm_quality.layers[l].max_over_bound /
                      fresh_quality.layers[l].max_over_bound / named.shape.num_layers / rounds;
      }
      ds_prev = std::move(ds);
      bal_prev = std::move(bal);
    }
    std::printf("| %s%s | %d | %ld | %ld | %.1f%% | %.4f | %.4f | %.4f | %.1f / %.1f | %.1f |\n",
                named.name, drift.note, rounds, static_cast<long>(ds_moved),
                static_cast<long>(bal_moved), 100.0 * bal_moved / std::max<int64_t>(ds_moved, 1),
                with_prev, scratch, over_fresh, above_1, above_03, warm_ms);
  }
  return 0;
}
