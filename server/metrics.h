// PlannerMetrics: the planner's state as Prometheus metrics (served by main() on --metrics-port).
//
//   eplb_plan_version{deployment, kind="committed"|"latest"}       gauge
//   eplb_balancedness{deployment}        gauge: the committed plan under the smoothed load
//   eplb_reports_total{deployment, result="accepted"|"duplicate"|<ErrorReason>}   counter
//   eplb_rebalance_seconds{deployment}   histogram: policy + metrics time per planning run
//   eplb_bytes_moved_total{deployment}   counter: bytes_to_move of committed plans
//   eplb_plans_total{deployment, outcome="committed"|"aborted"}   counter
//   eplb_ranks{deployment, state="none"|"staged"|"active"|"failed"}  gauge: ack states of the
//                                        newest plan
//   eplb_rank_hash_mismatch{deployment, rank}   gauge: 1 while the rank's map hash differs from the
//                                        plan's
//   eplb_watchers{deployment}            gauge: open WatchPlans streams
//   eplb_auth_refusals_total{reason="unauthenticated"|"permission_denied"}   counter: calls
//                                        refused for a missing or unknown credential, or one
//                                        whose scope does not cover the call
//   eplb_report_reads{state="reading"|"waiting"}   gauge: ReportLoad streams holding part of the
//                                        read budget for their next message, and waiting for it
//   eplb_report_reads_overdue_total      counter: streams cancelled for holding it longer than
//                                        --report-read-timeout without a message arriving
//
// Thread-safe (prometheus-cpp metrics are atomic; families lock internally).
#ifndef EPLB_SERVER_METRICS_H_
#define EPLB_SERVER_METRICS_H_

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace eplb::server {

// The metrics of one deployment name. Created by PlannerMetrics::AddDeployment, shared by every
// holder of that name (a deleted deployment's late work and its re-created successor write the
// same series); the series disappear when the last holder lets go.
class DeploymentMetrics {
 public:
  ~DeploymentMetrics();
  DeploymentMetrics(const DeploymentMetrics&) = delete;
  DeploymentMetrics& operator=(const DeploymentMetrics&) = delete;

  void SetVersions(int64_t committed, int64_t latest);
  void SetBalancedness(double value) { balancedness_->Set(value); }
  void ReportAccepted() { accepted_->Increment(); }
  void ReportDuplicate() { duplicate_->Increment(); }
  // `reason` is an ErrorReason name, e.g. "MALFORMED_COUNTS".
  void ReportRejected(const std::string& reason);
  void ObserveRebalanceSeconds(double seconds) { rebalance_seconds_->Observe(seconds); }
  void PlanCommitted(int64_t bytes_moved);
  void PlanAborted() { aborted_->Increment(); }
  // Ack states of the newest plan: counts of ranks with no ack, STAGED, ACTIVE and FAILED.
  void SetRankStates(int64_t none, int64_t staged, int64_t active, int64_t failed);
  void SetHashMismatch(int32_t rank, bool mismatch);
  void AddWatchers(int delta) { watchers_->Increment(delta); }

 private:
  friend class PlannerMetrics;
  DeploymentMetrics(class PlannerMetrics* owner, std::string deployment);

  class PlannerMetrics* owner_;
  std::string deployment_;
  prometheus::Gauge* committed_version_;
  prometheus::Gauge* latest_version_;
  prometheus::Gauge* balancedness_;
  prometheus::Counter* accepted_;
  prometheus::Counter* duplicate_;
  prometheus::Histogram* rebalance_seconds_;
  prometheus::Counter* bytes_moved_;
  prometheus::Counter* committed_;
  prometheus::Counter* aborted_;
  prometheus::Gauge* ranks_[4];
  prometheus::Gauge* watchers_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, prometheus::Counter*> rejected_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<int32_t, prometheus::Gauge*> mismatch_ ABSL_GUARDED_BY(mu_);
};

class PlannerMetrics {
 public:
  explicit PlannerMetrics(std::shared_ptr<prometheus::Registry> registry);
  std::shared_ptr<DeploymentMetrics> AddDeployment(const std::string& deployment);
  prometheus::Registry& registry() { return *registry_; }
  // One refused call: no or an unknown credential (`unauthenticated`), or out of its scope.
  void AuthRefused(bool unauthenticated) {
    (unauthenticated ? unauthenticated_ : permission_denied_)->Increment();
  }
  void SetReportReads(int64_t reading, int64_t waiting) {
    reads_reading_->Set(static_cast<double>(reading));
    reads_waiting_->Set(static_cast<double>(waiting));
  }
  void ReportReadsOverdue(int count) { reads_overdue_->Increment(count); }

 private:
  friend class DeploymentMetrics;
  std::shared_ptr<prometheus::Registry> registry_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::weak_ptr<DeploymentMetrics>> live_ ABSL_GUARDED_BY(mu_);
  prometheus::Family<prometheus::Gauge>& plan_version_;
  prometheus::Family<prometheus::Gauge>& balancedness_;
  prometheus::Family<prometheus::Counter>& reports_;
  prometheus::Family<prometheus::Histogram>& rebalance_seconds_;
  prometheus::Family<prometheus::Counter>& bytes_moved_;
  prometheus::Family<prometheus::Counter>& plans_;
  prometheus::Family<prometheus::Gauge>& ranks_;
  prometheus::Family<prometheus::Gauge>& hash_mismatch_;
  prometheus::Family<prometheus::Gauge>& watchers_;
  prometheus::Family<prometheus::Counter>& auth_refusals_;
  prometheus::Counter* unauthenticated_;
  prometheus::Counter* permission_denied_;
  prometheus::Gauge* reads_reading_;
  prometheus::Gauge* reads_waiting_;
  prometheus::Counter* reads_overdue_;
};

}  // namespace eplb::server

#endif  // EPLB_SERVER_METRICS_H_
