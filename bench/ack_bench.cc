// ack_bench: the planner's cost per plan acknowledgement against the number of ranks, in process
// (Deployment::RecordAck, no gRPC). One deployment of R ranks (1 layer, max(64, R / 16) experts,
// one slot per rank) has a plan in flight; every rank acknowledges it STAGED, then the next plan
// goes out (untimed) and the round repeats. The time per ack should not grow with R.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <memory>
#include <string>

#include "core/check.h"
#include "core/policy.h"
#include "proto/convert.h"
#include "server/deployment.h"
#include "server/spec.h"
#include "spdlog/spdlog.h"

namespace eplb::server {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'700'000'000);

std::shared_ptr<Deployment> MakeDeployment(int32_t ranks) {
  v1::DeploymentSpec spec;
  spec.set_name("wide");
  v1::Shape& shape = *spec.mutable_shape();
  shape.set_num_layers(1);
  shape.set_num_logical_experts(std::max(64, ranks / 16));
  shape.set_num_physical_experts(ranks);
  shape.set_num_ranks(ranks);
  spec.set_policy("contiguous");
  spec.mutable_trigger()->set_interval_steps(0);
  auto validated = ValidateSpec(spec, "deepseek", 1);
  EPLB_CHECK(validated.ok(), validated.status().ToString());
  auto policy = CreatePolicy("contiguous");
  EPLB_CHECK(policy.ok(), policy.status().ToString());
  auto map = (*policy)->Plan({validated->shape, nullptr, nullptr});
  EPLB_CHECK(map.ok(), map.status().ToString());
  v1::Plan first = Deployment::FirstPlan("wide", validated->shape, *map, "contiguous", kT0);
  return Deployment::Create(*std::move(validated), 1, kT0, std::move(first), *map, nullptr);
}

// Publishes the next plan (the same map; what matters is a version in flight); returns its hash.
uint64_t Publish(Deployment& d) {
  auto input = d.BeginPlan(PlanReason::kOnDemand, /*dry_run=*/false);
  EPLB_CHECK(input.ok(), input.status().ToString());
  v1::Plan plan;
  plan.set_deployment(d.name());
  plan.set_parent_version(input->parent_version);
  ExpertMapToProto(input->current, plan.mutable_map());
  plan.set_map_hash(input->current.Hash());
  const int64_t version = d.NextVersion();
  d.SpendVersion(version);
  plan = d.Versioned(std::move(plan), version);
  auto pruned = d.AddPlan(plan, input->current, kT0);
  EPLB_CHECK(pruned.ok(), pruned.status().ToString());
  return plan.map_hash();
}

void BM_AckPerRank(benchmark::State& state) {
  spdlog::set_level(spdlog::level::warn);  // a commit per round is logged otherwise
  const int32_t ranks = static_cast<int32_t>(state.range(0));
  std::shared_ptr<Deployment> d = MakeDeployment(ranks);
  uint64_t hash = Publish(*d);
  v1::WatchPlansRequest::Ack ack;
  ack.set_state(v1::STAGED);
  int32_t rank = 0;
  int64_t decisions = 0;
  for (auto _ : state) {
    ack.set_version(d->PendingVersion());
    ack.set_map_hash(hash);
    auto decision = d->RecordAck(rank, ack, kT0);
    EPLB_CHECK(decision.ok(), decision.status().ToString());
    if (++rank == ranks) {  // every rank staged it: commit, and put the next plan in flight
      state.PauseTiming();
      EPLB_CHECK(decision->has_value(), "no decision after every rank staged");
      auto record = d->PrepareFinish(**decision);
      EPLB_CHECK(record.has_value(), "nothing to finish");
      d->FinishPlan(**decision);
      ++decisions;
      hash = Publish(*d);
      rank = 0;
      state.ResumeTiming();
    }
  }
  state.counters["ranks"] = ranks;
  state.counters["plans_committed"] = static_cast<double>(decisions);
}
BENCHMARK(BM_AckPerRank)->Arg(128)->Arg(16384)->Unit(benchmark::kNanosecond);

}  // namespace
}  // namespace eplb::server
