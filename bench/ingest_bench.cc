// ingest_bench: the planner's own cost per load report, without the network. Planner::Report on
// the DeepSeek-V3 decode shape (58 layers × 256 experts, 144 ranks, 288 slots), with logical and
// with local-slot counts: what planner_loadgen measures end to end, minus gRPC and the client
// sharing the machine. No automatic trigger, so only ingestion is timed.
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "core/check.h"
#include "core/clock.h"
#include "server/planner.h"

namespace eplb::server {
namespace {

constexpr int kLayers = 58;
constexpr int kExperts = 256;
constexpr int kRanks = 144;
constexpr int kSlots = 288;

void BM_Report(benchmark::State& state) {
  const bool local_slots = state.range(0) != 0;
  std::string dir = (std::filesystem::temp_directory_path() / "eplb-ingest-XXXXXX").string();
  EPLB_CHECK(::mkdtemp(dir.data()) != nullptr, "mkdtemp");
  {
    auto store = StateStore::Open(dir);
    EPLB_CHECK(store.ok(), store.status().ToString());
    FakeClock clock;
    auto planner = Planner::Create({.plan_threads = 1}, *std::move(store), &clock, nullptr);
    EPLB_CHECK(planner.ok(), planner.status().ToString());

    v1::DeploymentSpec spec;
    spec.set_name("v3");
    v1::Shape& shape = *spec.mutable_shape();
    shape.set_num_layers(kLayers);
    shape.set_num_logical_experts(kExperts);
    shape.set_num_physical_experts(kSlots);
    shape.set_num_ranks(kRanks);
    spec.set_policy("deepseek");
    spec.mutable_trigger()->set_interval_steps(0);
    absl::Notification created;
    (*planner)->CreateDeployment(spec, [&](absl::StatusOr<v1::Deployment> d) {
      EPLB_CHECK(d.ok(), d.status().ToString());
      created.Notify();
    });
    created.WaitForNotification();

    // One report per rank, with skewed counts; each iteration sends the next rank's next step.
    std::mt19937_64 random(7);
    std::exponential_distribution<double> skew(1.0 / 40.0);
    const int width = local_slots ? kSlots / kRanks : kExperts;
    std::vector<v1::LoadReport> reports(kRanks);
    for (int r = 0; r < kRanks; ++r) {
      v1::LoadReport& report = reports[r];
      report.set_deployment("v3");
      report.set_rank(r);
      report.set_session(1);
      report.set_plan_version(1);
      report.set_counts_kind(local_slots ? v1::LoadReport::LOCAL_SLOT : v1::LoadReport::LOGICAL);
      for (int l = 0; l < kLayers; ++l) {
        auto* counts = report.add_layers()->mutable_counts();
        for (int e = 0; e < width; ++e) counts->Add(std::round(skew(random)));
      }
    }
    int64_t sent = 0;
    for (auto _ : state) {
      v1::LoadReport& report = reports[sent % kRanks];
      const int64_t step = sent / kRanks;
      report.set_sequence(step + 1);
      report.set_first_step(step);
      report.set_last_step(step);
      auto outcome = (*planner)->Report(report);
      if (!outcome.ok()) {
        state.SkipWithError(outcome.status().ToString().c_str());
        break;
      }
      ++sent;
    }
    state.SetItemsProcessed(sent);
    (*planner)->Shutdown();
  }
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_Report)->ArgName("local_slots")->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace eplb::server
