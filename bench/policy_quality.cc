// policy_quality: the balance and the weight movement of `deepseek` and `balanced`.
//
// For each shape and skew (per-expert log-normal load, σ 0.5, 1.0, 1.5; 58 layers): the busiest
// rank over the lower bound (max/LB, mean over layers), the balancedness (mean / max rank load)
// and the planning time of each policy. Then a drift sequence per shape: 50 rebalances, the load
// multiplied before each by log-normal noise (σ 0.1) per expert; `deepseek` plans from scratch,
// `balanced` from its previous placement. Experts moved (received by a rank that did not hold
// them), summed over the sequence, and the mean max/LB of `balanced` with and without the previous
// placement.
//
//   policy_quality [--drift-rounds 50]
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
#include "tests/support/random_inputs.h"

namespace eplb {
namespace {

struct NamedShape {
  const char* name;
  DeploymentShape shape;
};

const NamedShape kShapes[] = {
    {"V3 prefill (R 32, 9 slots/rank)", bench::kV3Prefill},
    {"V3 decode (R 144, 2 slots/rank)", bench::kV3Decode},
    {"R 64, 8 nodes, 5 slots/rank", bench::kR64},
};

using testing::LogNormalLoad;

double Millis(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace
}  // namespace eplb

int main(int argc, char** argv) {
  using namespace eplb;
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  int rounds = 50;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--drift-rounds") rounds = std::atoi(argv[i + 1]);
  }
  const DeepSeekPolicy deepseek;
  const BalancedPolicy balanced;
  std::printf("| shape | σ | deepseek max/LB | balanced max/LB | deepseek balancedness | "
              "balanced balancedness | deepseek ms | balanced ms |\n|---|---|---|---|---|---|---|---|\n");
  for (const NamedShape& named : kShapes) {
    for (const double sigma : {0.5, 1.0, 1.5}) {
      std::mt19937_64 rng(1234);
      const LoadMatrix load = LogNormalLoad(named.shape, sigma, rng);
      const auto t0 = std::chrono::steady_clock::now();
      auto ds = deepseek.Plan({.shape = named.shape, .load = &load});
      const auto t1 = std::chrono::steady_clock::now();
      auto bal = balanced.Plan({.shape = named.shape, .load = &load});
      const auto t2 = std::chrono::steady_clock::now();
      if (!ds.ok() || !bal.ok()) {
        std::fprintf(stderr, "%s: %s %s\n", named.name, ds.status().ToString().c_str(),
                     bal.status().ToString().c_str());
        return 1;
      }
      const MapQuality qd = EvaluateMap(*ds, load), qb = EvaluateMap(*bal, load);
      std::printf("| %s | %.1f | %.4f | %.4f | %.4f | %.4f | %.2f | %.2f |\n", named.name, sigma,
                  qd.mean_max_over_bound, qb.mean_max_over_bound, qd.mean_balancedness,
                  qb.mean_balancedness, Millis(t0, t1), Millis(t1, t2));
    }
  }

  {
    // Layers in parallel: the prefill shape on 1 and 2 threads, best of 5.
    std::mt19937_64 rng(1234);
    const LoadMatrix load = LogNormalLoad(kShapes[0].shape, 1.0, rng);
    for (const int threads : {1, 2}) {
      const BalancedPolicy policy({.threads = threads});
      double best = 1e30;
      for (int i = 0; i < 5; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        auto map = policy.Plan({.shape = kShapes[0].shape, .load = &load});
        best = std::min(best, Millis(t0, std::chrono::steady_clock::now()));
        if (!map.ok()) return 1;
      }
      std::printf("%sbalanced on the prefill shape, %d thread%s: %.2f ms\n", threads == 1 ? "\n" : "", threads,
                  threads == 1 ? "" : "s", best);
    }
  }
  {
    // Node affinity: groups kept on one node, σ 1.0.
    std::printf("\n| shape | deepseek max/LB | nodes per group | balanced max/LB | nodes per group | "
                "balanced + affinity max/LB | nodes per group |\n|---|---|---|---|---|---|---|\n");
    BalancedOptions affine_options;
    affine_options.node_affinity = true;
    const BalancedPolicy affine(affine_options);
    for (const NamedShape& named : {kShapes[0], kShapes[2]}) {
      std::mt19937_64 rng(1234);
      const LoadMatrix load = LogNormalLoad(named.shape, 1.0, rng);
      const ExpertMap maps[] = {*deepseek.Plan({.shape = named.shape, .load = &load}),
                                *balanced.Plan({.shape = named.shape, .load = &load}),
                                *affine.Plan({.shape = named.shape, .load = &load})};
      std::printf("| %s", named.name);
      for (const ExpertMap& map : maps) {
        double spread = 0;
        for (int32_t l = 0; l < map.num_layers(); ++l) {
          spread += NodesPerGroup(map, l, load.row(l), named.shape.num_groups,
                                  named.shape.num_nodes) / map.num_layers();
        }
        std::printf(" | %.4f | %.2f", EvaluateMap(map, load).mean_max_over_bound, spread);
      }
      std::printf(" |\n");
    }
  }
  std::printf("\n| shape | rounds | deepseek experts moved | balanced experts moved | ratio | "
              "balanced max/LB with previous | from scratch |\n|---|---|---|---|---|---|---|\n");
  for (const NamedShape& named : kShapes) {
    std::mt19937_64 rng(99);
    LoadMatrix load = LogNormalLoad(named.shape, 1.0, rng);
    std::lognormal_distribution<double> noise(0.0, 0.1);
    auto ds_prev = *deepseek.Plan({.shape = named.shape, .load = &load});
    auto bal_prev = *balanced.Plan({.shape = named.shape, .load = &load});
    int64_t ds_moved = 0, bal_moved = 0;
    double with_prev = 0, scratch = 0;
    for (int round = 0; round < rounds; ++round) {
      for (double& v : load.values) v = std::round(v * noise(rng));
      auto ds = *deepseek.Plan({.shape = named.shape, .load = &load});
      auto bal = *balanced.Plan({.shape = named.shape, .load = &load, .previous = &bal_prev});
      auto fresh = *balanced.Plan({.shape = named.shape, .load = &load});
      ds_moved += ComputeMigration(ds_prev, ds, 1).experts_received;
      bal_moved += ComputeMigration(bal_prev, bal, 1).experts_received;
      with_prev += EvaluateMap(bal, load).mean_max_over_bound / rounds;
      scratch += EvaluateMap(fresh, load).mean_max_over_bound / rounds;
      ds_prev = std::move(ds);
      bal_prev = std::move(bal);
    }
    std::printf("| %s | %d | %ld | %ld | %.1f%% | %.4f | %.4f |\n", named.name, rounds,
                static_cast<long>(ds_moved), static_cast<long>(bal_moved),
                100.0 * bal_moved / std::max<int64_t>(ds_moved, 1), with_prev, scratch);
  }
  return 0;
}
