// Planning time of each policy on production-sized shapes, on synthetic log-normal loads.
//
//   prefill  DeepSeek-V3 prefill: 58 layers × 256 experts, 8 groups, 4 nodes, 32 ranks, 288 slots
//   decode   DeepSeek-V3 decode: 144 ranks on 18 nodes, 288 slots (G % N ≠ 0: deepseek runs global)
//   large    58 layers × 512 experts, 32 groups, 32 nodes, 256 ranks, 768 slots
//
// Counters: `balancedness` (mean over layers) and `max_over_bound` of the planned map.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_shapes.h"
#include "core/metrics.h"
#include "core/policy.h"
#include "core/testing/random_inputs.h"

namespace eplb {
namespace {

const bench::NamedShape kShapes[] = {
    {"prefill", bench::kV3Prefill},
    {"decode", bench::kV3Decode},
    {"large", bench::kLarge},
};

// Integer token counts, log-normal per expert (σ = 1), as a router's histogram looks.
LoadMatrix SyntheticLoad(const DeploymentShape& shape, uint64_t seed) {
  std::mt19937_64 rng(seed);
  return testing::LogNormalLoad(shape, 1.0, rng);
}

void BM_Plan(benchmark::State& state, const char* policy_name, const bench::NamedShape* named) {
  const DeploymentShape& shape = named->shape;
  const LoadMatrix load = SyntheticLoad(shape, 1234);
  auto policy = CreatePolicy(policy_name);
  if (!policy.ok()) {
    state.SkipWithError(std::string(policy.status().message()).c_str());
    return;
  }
  auto planned = (*policy)->Plan({.shape = shape, .load = &load});
  if (!planned.ok()) {
    state.SkipWithError(std::string(planned.status().message()).c_str());
    return;
  }
  for (auto _ : state) {
    auto map = (*policy)->Plan({.shape = shape, .load = &load});
    benchmark::DoNotOptimize(map->phy2log_table().data());
  }
  const MapQuality quality = EvaluateMap(*planned, load);
  state.counters["balancedness"] = quality.mean_balancedness;
  state.counters["max_over_bound"] = quality.mean_max_over_bound;
  state.SetLabel(shape.DebugString());
}

// The cross-node share estimate eplbctl plan and the planner print beside a plan: the planned
// (deepseek) and the contiguous map scored on one sample, with the default routing model and the
// argument's tokens per layer (32, the default; 1: little more than the per-layer setup). Compare
// with deepseek/<shape>, the cheapest plan it accompanies.
void BM_CrossNodeShare(benchmark::State& state, const bench::NamedShape* named) {
  const DeploymentShape& shape = named->shape;
  const LoadMatrix load = SyntheticLoad(shape, 1234);
  auto deepseek = CreatePolicy("deepseek");
  auto contiguous = CreatePolicy("contiguous");
  auto planned = (*deepseek)->Plan({.shape = shape, .load = &load});
  auto current = (*contiguous)->Plan({.shape = shape, .load = &load});
  if (!planned.ok() || !current.ok()) {
    state.SkipWithError("cannot plan");
    return;
  }
  const ExpertMap* maps[] = {&*current, &*planned};
  std::vector<TrafficShareEstimate> estimates;
  for (auto _ : state) {
    estimates =
        EstimateMeanCrossNodeTrafficShares(maps, load, shape.num_groups, shape.num_nodes,
                                           {.tokens = static_cast<int32_t>(state.range(0))});
    benchmark::DoNotOptimize(estimates.data());
  }
  state.counters["share"] = estimates[1].share;
  state.counters["bound"] = estimates[1].error_bound;
  state.SetLabel(shape.DebugString());
}

// Optimal replica routing shares (core/metrics.h OptimalReplicaShares) of every layer of the
// planned map, as `eplbctl plan --replica-shares` computes them. Compare with the plan's own time.
void BM_ReplicaShares(benchmark::State& state, const char* policy_name,
                      const bench::NamedShape* named) {
  const DeploymentShape& shape = named->shape;
  const LoadMatrix load = SyntheticLoad(shape, 1234);
  auto policy = CreatePolicy(policy_name);
  auto planned = (*policy)->Plan({.shape = shape, .load = &load});
  if (!planned.ok()) {
    state.SkipWithError("cannot plan");
    return;
  }
  double sum_max = 0;
  for (auto _ : state) {
    sum_max = 0;
    for (int32_t l = 0; l < shape.num_layers; ++l) {
      sum_max += OptimalReplicaShares(*planned, l, load.row(l)).max_rank_load;
    }
    benchmark::DoNotOptimize(sum_max);
  }
  state.SetLabel(shape.DebugString());
}

// The count bound eplbctl plan, the planner and policy_quality report beside the basic one
// (core/metrics.h CountLowerBound): on the decode shape (two slots per rank) the pairing bound,
// for all 58 layers. Compare with the plans it accompanies.
void BM_CountBound(benchmark::State& state, const bench::NamedShape* named) {
  const DeploymentShape& shape = named->shape;
  const LoadMatrix load = SyntheticLoad(shape, 1234);
  double sum = 0;
  for (auto _ : state) {
    sum = 0;
    for (int32_t l = 0; l < shape.num_layers; ++l) {
      sum += CountLowerBound(load.row(l), shape.num_physical_experts, shape.num_ranks);
    }
    benchmark::DoNotOptimize(sum);
  }
  state.SetLabel(shape.DebugString());
}

int RegisterAll() {
  for (const char* policy : {"contiguous", "deepseek", "balanced"}) {
    for (const bench::NamedShape& named : kShapes) {
      benchmark::RegisterBenchmark((std::string(policy) + "/" + named.name).c_str(), BM_Plan,
                                   policy, &named)
          ->Unit(benchmark::kMicrosecond);
    }
  }
  for (const bench::NamedShape& named : kShapes) {
    benchmark::RegisterBenchmark((std::string("cross_node_share/") + named.name).c_str(),
                                 BM_CrossNodeShare, &named)
        ->Arg(1)
        ->Arg(32)
        ->Unit(benchmark::kMicrosecond);
  }
  for (const char* policy : {"deepseek", "balanced"}) {
    for (const bench::NamedShape& named : kShapes) {
      benchmark::RegisterBenchmark(
          (std::string("replica_shares/") + policy + "/" + named.name).c_str(), BM_ReplicaShares,
          policy, &named)
          ->Unit(benchmark::kMillisecond);
    }
  }
  benchmark::RegisterBenchmark("count_bound/decode", BM_CountBound, &kShapes[1])
      ->Unit(benchmark::kMillisecond);
  return 0;
}

[[maybe_unused]] const int registered = RegisterAll();

}  // namespace
}  // namespace eplb
