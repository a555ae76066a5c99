#include "server/metrics.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace eplb::server {
namespace {

constexpr const char* kRankStates[4] = {"none", "staged", "active", "failed"};

prometheus::Histogram::BucketBoundaries RebalanceBuckets() {
  return {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5};
}

}  // namespace

PlannerMetrics::PlannerMetrics(std::shared_ptr<prometheus::Registry> registry)
    : registry_(std::move(registry)),
      plan_version_(prometheus::BuildGauge()
                        .Name("eplb_plan_version")
                        .Help("Plan version per deployment: the committed and the latest published")
                        .Register(*registry_)),
      balancedness_(prometheus::BuildGauge()
                        .Name("eplb_balancedness")
                        .Help("Mean over layers of mean/max rank load of the committed plan under "
                              "the smoothed load")
                        .Register(*registry_)),
      reports_(prometheus::BuildCounter()
                   .Name("eplb_reports_total")
                   .Help("Load reports by result: accepted, duplicate, or the rejection reason")
                   .Register(*registry_)),
      rebalance_seconds_(prometheus::BuildHistogram()
                             .Name("eplb_rebalance_seconds")
                             .Help("Time to compute a candidate plan and its metrics")
                             .Register(*registry_)),
      bytes_moved_(prometheus::BuildCounter()
                       .Name("eplb_bytes_moved_total")
                       .Help("Expert weight bytes moved by committed plans")
                       .Register(*registry_)),
      plans_(prometheus::BuildCounter()
                 .Name("eplb_plans_total")
                 .Help("Plans that reached a final state, by outcome")
                 .Register(*registry_)),
      ranks_(prometheus::BuildGauge()
                 .Name("eplb_ranks")
                 .Help("Ranks per acknowledgement state of the newest plan")
                 .Register(*registry_)),
      hash_mismatch_(prometheus::BuildGauge()
                         .Name("eplb_rank_hash_mismatch")
                         .Help("1 while a rank reports a map hash different from the plan's")
                         .Register(*registry_)),
      watchers_(prometheus::BuildGauge()
                    .Name("eplb_watchers")
                    .Help("Open WatchPlans streams")
                    .Register(*registry_)),
      auth_refusals_(prometheus::BuildCounter()
                         .Name("eplb_auth_refusals_total")
                         .Help("Calls refused: without a known credential (unauthenticated) or "
                               "outside the credential's scope (permission_denied)")
                         .Register(*registry_)),
      unauthenticated_(&auth_refusals_.Add({{"reason", "unauthenticated"}})),
      permission_denied_(&auth_refusals_.Add({{"reason", "permission_denied"}})) {
  auto& reads = prometheus::BuildGauge()
                    .Name("eplb_report_reads")
                    .Help("ReportLoad streams holding part of the read budget for their next "
                          "message (reading), and waiting for it (waiting)")
                    .Register(*registry_);
  reads_reading_ = &reads.Add({{"state", "reading"}});
  reads_waiting_ = &reads.Add({{"state", "waiting"}});
  reads_overdue_ = &prometheus::BuildCounter()
                        .Name("eplb_report_reads_overdue_total")
                        .Help("ReportLoad streams cancelled for holding part of the read budget "
                              "longer than --report-read-timeout without a message arriving")
                        .Register(*registry_)
                        .Add({});
}

std::shared_ptr<DeploymentMetrics> PlannerMetrics::AddDeployment(const std::string& deployment) {
  absl::MutexLock lock(&mu_);
  // A name whose last holder just let go is being removed: wait for that, or the new instance
  // would get the series being removed (prometheus-cpp returns existing series for equal labels).
  const auto settled = [this, &deployment]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const auto it = live_.find(deployment);
    return it == live_.end() || !it->second.expired();
  };
  while (true) {
    mu_.Await(absl::Condition(&settled));
    const auto it = live_.find(deployment);
    if (it == live_.end()) break;
    if (std::shared_ptr<DeploymentMetrics> live = it->second.lock()) return live;
  }
  std::shared_ptr<DeploymentMetrics> metrics(new DeploymentMetrics(this, deployment),
                                             [this](DeploymentMetrics* m) {
                                               absl::MutexLock lock(&mu_);
                                               const std::string name = m->deployment_;
                                               delete m;  // removes the series
                                               live_.erase(name);
                                             });
  live_[deployment] = metrics;
  return metrics;
}

DeploymentMetrics::DeploymentMetrics(PlannerMetrics* owner, std::string deployment)
    : owner_(owner), deployment_(std::move(deployment)) {
  const std::string& d = deployment_;
  committed_version_ = &owner_->plan_version_.Add({{"deployment", d}, {"kind", "committed"}});
  latest_version_ = &owner_->plan_version_.Add({{"deployment", d}, {"kind", "latest"}});
  balancedness_ = &owner_->balancedness_.Add({{"deployment", d}});
  accepted_ = &owner_->reports_.Add({{"deployment", d}, {"result", "accepted"}});
  duplicate_ = &owner_->reports_.Add({{"deployment", d}, {"result", "duplicate"}});
  rebalance_seconds_ = &owner_->rebalance_seconds_.Add({{"deployment", d}}, RebalanceBuckets());
  bytes_moved_ = &owner_->bytes_moved_.Add({{"deployment", d}});
  committed_ = &owner_->plans_.Add({{"deployment", d}, {"outcome", "committed"}});
  aborted_ = &owner_->plans_.Add({{"deployment", d}, {"outcome", "aborted"}});
  for (int i = 0; i < 4; ++i) {
    ranks_[i] = &owner_->ranks_.Add({{"deployment", d}, {"state", kRankStates[i]}});
  }
  watchers_ = &owner_->watchers_.Add({{"deployment", d}});
}

DeploymentMetrics::~DeploymentMetrics() {
  owner_->plan_version_.Remove(committed_version_);
  owner_->plan_version_.Remove(latest_version_);
  owner_->balancedness_.Remove(balancedness_);
  owner_->reports_.Remove(accepted_);
  owner_->reports_.Remove(duplicate_);
  owner_->rebalance_seconds_.Remove(rebalance_seconds_);
  owner_->bytes_moved_.Remove(bytes_moved_);
  owner_->plans_.Remove(committed_);
  owner_->plans_.Remove(aborted_);
  for (prometheus::Gauge* gauge : ranks_) owner_->ranks_.Remove(gauge);
  owner_->watchers_.Remove(watchers_);
  absl::MutexLock lock(&mu_);
  for (const auto& [reason, counter] : rejected_) owner_->reports_.Remove(counter);
  for (const auto& [rank, gauge] : mismatch_) owner_->hash_mismatch_.Remove(gauge);
}

void DeploymentMetrics::SetVersions(int64_t committed, int64_t latest) {
  committed_version_->Set(static_cast<double>(committed));
  latest_version_->Set(static_cast<double>(latest));
}

void DeploymentMetrics::ReportRejected(const std::string& reason) {
  prometheus::Counter* counter;
  {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = rejected_.try_emplace(reason, nullptr);
    if (inserted) {
      it->second = &owner_->reports_.Add({{"deployment", deployment_}, {"result", reason}});
    }
    counter = it->second;
  }
  counter->Increment();
}

void DeploymentMetrics::PlanCommitted(int64_t bytes_moved) {
  committed_->Increment();
  bytes_moved_->Increment(static_cast<double>(bytes_moved));
}

void DeploymentMetrics::SetRankStates(int64_t none, int64_t staged, int64_t active,
                                      int64_t failed) {
  ranks_[0]->Set(static_cast<double>(none));
  ranks_[1]->Set(static_cast<double>(staged));
  ranks_[2]->Set(static_cast<double>(active));
  ranks_[3]->Set(static_cast<double>(failed));
}

void DeploymentMetrics::SetHashMismatch(int32_t rank, bool mismatch) {
  prometheus::Gauge* gauge;
  {
    absl::MutexLock lock(&mu_);
    auto it = mismatch_.find(rank);
    if (it == mismatch_.end()) {
      if (!mismatch) return;
      it = mismatch_
               .emplace(rank, &owner_->hash_mismatch_.Add(
                                  {{"deployment", deployment_}, {"rank", absl::StrCat(rank)}}))
               .first;
    }
    gauge = it->second;
  }
  gauge->Set(mismatch ? 1 : 0);
}

}  // namespace eplb::server
