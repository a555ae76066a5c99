// policy_quality: the balance and the weight movement of `deepseek` and `balanced`.
//
// For each shape and skew (per-expert log-normal load, σ 0.5, 1.0, 1.5; 58 layers): the busiest
// rank over the lower bound (max/LB, mean over layers), the balancedness (mean / max rank load)
// and the planning time of each policy (best of 3). Then node affinity: max/LB and the cross-node
// share of token traffic (core/metrics.h RoutingModel: 8 experts in 4 groups per token). Then a
// drift sequence per shape: 50 rebalances, the load multiplied before each by log-normal noise
// (σ 0.1) per expert; `deepseek` plans from scratch, `balanced` from its previous placement.
// Experts moved (received by a rank that did not hold them), summed over the sequence, the mean
// max/LB of `balanced` with and without the previous placement, and its mean planning time.
//
//   policy_quality [--drift-rounds 50] [--drift-seed 99]
#include <malloc.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
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
      "| shape | σ | deepseek max/LB | balanced max/LB | deepseek balancedness | "
      "balanced balancedness | deepseek ms | balanced ms |\n|---|---|---|---|---|---|---|---|\n");
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
      std::printf("| %s | %.1f | %.4f | %.4f | %.4f | %.4f | %.2f | %.2f |\n", named.name, sigma,
                  qd.mean_max_over_bound, qb.mean_max_over_bound, qd.mean_balancedness,
                  qb.mean_balancedness, ds_ms, bal_ms);
    }
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
      "balanced max/LB with previous | from scratch | ms per plan with previous |\n"
      "|---|---|---|---|---|---|---|---|\n");
  struct DriftCase {
    bench::NamedShape named;
    BalancedOptions options;
    const char* note;
  };
  const DriftCase drift_cases[] = {
      {kShapes[0], {}, ""},
      {kShapes[1], {}, ""},
      {kShapes[2], {}, ""},
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
    double with_prev = 0, scratch = 0, warm_ms = 0;
    for (int round = 0; round < rounds; ++round) {
      for (double& v : load.values) v = std::round(v * noise(rng));
      auto ds = *deepseek.Plan({.shape = named.shape, .load = &load});
      const auto t0 = std::chrono::steady_clock::now();
      auto bal = *warm_policy.Plan({.shape = named.shape, .load = &load, .previous = &bal_prev});
      warm_ms += Millis(t0, std::chrono::steady_clock::now()) / rounds;
      auto fresh = *warm_policy.Plan({.shape = named.shape, .load = &load});
      ds_moved += ComputeMigration(ds_prev, ds, 1).experts_received;
      bal_moved += ComputeMigration(bal_prev, bal, 1).experts_received;
      with_prev += EvaluateMap(bal, load).mean_max_over_bound / rounds;
      scratch += EvaluateMap(fresh, load).mean_max_over_bound / rounds;
      ds_prev = std::move(ds);
      bal_prev = std::move(bal);
    }
    std::printf("| %s%s | %d | %ld | %ld | %.1f%% | %.4f | %.4f | %.1f |\n", named.name, drift.note,
                rounds, static_cast<long>(ds_moved), static_cast<long>(bal_moved),
                100.0 * bal_moved / std::max<int64_t>(ds_moved, 1), with_prev, scratch, warm_ms);
  }
  return 0;
}
