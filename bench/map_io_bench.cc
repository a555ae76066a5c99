// Reading and writing expert maps as text: the eplb format of a DeepSeek-V3 plan (58 × 256
// experts, 288 slots: about 2 MB) and of a larger map (58 × 512, 704 slots: about 20 MB), and the
// SGLang JSON and TensorRT-LLM YAML of the V3 plan; and parsing the eplb JSON alone (text to
// JSON document, no checks of the map). Counters: bytes per second of text.
#include <benchmark/benchmark.h>

#include <random>
#include <string>

#include "bench/bench_shapes.h"
#include "core/expert_map.h"
#include "core/json.h"
#include "core/map_format.h"
#include "core/policy.h"
#include "core/testing/random_inputs.h"

namespace eplb {
namespace {

ExpertMap PlannedMap(const DeploymentShape& shape) {
  std::mt19937_64 rng(7);
  const LoadMatrix load = testing::LogNormalLoad(shape, 1.0, rng);
  auto policy = CreatePolicy("deepseek");
  return *(*policy)->Plan({.shape = shape, .load = &load});
}

const DeploymentShape kTwentyMb{.num_layers = 58,
                                .num_logical_experts = 512,
                                .num_groups = 8,
                                .num_nodes = 8,
                                .num_ranks = 64,
                                .num_physical_experts = 704};

void BM_Write(benchmark::State& state, DeploymentShape shape, MapFormat format) {
  const ExpertMap map = PlannedMap(shape);
  size_t bytes = 0;
  for (auto _ : state) {
    const std::string text = ExpertMapToText(map, format, 1);
    bytes = text.size();
    benchmark::DoNotOptimize(text.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
  state.counters["MB"] = static_cast<double>(bytes) / 1e6;
}

void BM_Read(benchmark::State& state, DeploymentShape shape, MapFormat format) {
  const ExpertMap map = PlannedMap(shape);
  const std::string text = ExpertMapToText(map, format, 1);
  for (auto _ : state) {
    auto parsed = ParseExpertMap(text, {.num_ranks = shape.num_ranks});
    // phy2log: the engines' formats carry no replica order.
    if (!parsed.ok() || parsed->map.phy2log_table() != map.phy2log_table()) {
      state.SkipWithError(parsed.ok() ? "the map read differs"
                                      : std::string(parsed.status().message()).c_str());
      return;
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(text.size()) * state.iterations());
  state.counters["MB"] = static_cast<double>(text.size()) / 1e6;
}

void BM_ParseJson(benchmark::State& state, DeploymentShape shape) {
  const std::string text = ExpertMapToText(PlannedMap(shape), MapFormat::kEplb, 1);
  for (auto _ : state) {
    auto doc = ParseJson(text);
    if (!doc.ok()) {
      state.SkipWithError(std::string(doc.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(doc->is_object());
  }
  state.SetBytesProcessed(static_cast<int64_t>(text.size()) * state.iterations());
}

BENCHMARK_CAPTURE(BM_ParseJson, v3_eplb, bench::kV3Prefill)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ParseJson, 20mb_eplb, kTwentyMb)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Write, v3_eplb, bench::kV3Prefill, MapFormat::kEplb)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Read, v3_eplb, bench::kV3Prefill, MapFormat::kEplb)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Write, 20mb_eplb, kTwentyMb, MapFormat::kEplb)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Read, 20mb_eplb, kTwentyMb, MapFormat::kEplb)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Write, v3_sglang, bench::kV3Prefill, MapFormat::kSglang)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Read, v3_sglang, bench::kV3Prefill, MapFormat::kSglang)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Write, v3_trtllm, bench::kV3Prefill, MapFormat::kTrtllm)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Read, v3_trtllm, bench::kV3Prefill, MapFormat::kTrtllm)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace eplb
