// LoadReporter: the serving loop's side of load reporting.
//
// The serving loop calls AddStep() once per step with the tokens routed to each logical expert of
// each layer, or AddSteps() with counts summed over several steps. That only adds into an open
// batch (a short lock, no allocation, no network). Every `flush_every_steps` steps the batch
// becomes a report with the next sequence number (several, over layer ranges, when one would
// exceed `max_report_bytes`: see report_parts.h), and a background thread sends the pending
// reports on a ReportLoad stream.
//
// Nothing is lost while the planner is unreachable or restarting: failed reports stay queued and
// are sent again (the planner counts a retried sequence number once), with jittered exponential
// backoff. A report counts as delivered once the planner's summary counts it; what the planner
// accepted since its last checkpoint before it was killed (kill -9) is not lost either: the
// reporter keeps the last `resend_after_restart` batches the planner accepted, and when a summary
// names another planner instance (ReportSummary.planner_instance: the planner restarted) it sends
// them again; the planner counts those it lost and ignores the rest as duplicates. (Exact as long
// as no more batches than that were accepted within one --checkpoint-interval.)
// Memory stays bounded: beyond `max_pending_reports`, batches that were never sent are merged
// pairwise (same plan version; their step ranges and counts add up), so an outage costs resolution,
// not counts. Reports sent in an attempt that failed are retried alone (the planner may have
// counted them: they are never merged), so at most max_pending_reports + 2 batches are queued. A report the planner refuses as invalid (it cannot become valid by retrying) is
// dropped and counted in stats().dropped_reports.
//
// Thread-safe. AddStep() and AddSteps() are meant for one serving thread; Flush() and stats()
// from any thread.
#ifndef EPLB_CLIENT_LOAD_REPORTER_H_
#define EPLB_CLIENT_LOAD_REPORTER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/planner_client.h"
#include "client/report_parts.h"
#include "eplb/v1/planner.pb.h"

namespace eplb::client {

struct LoadReporterOptions {
  std::string deployment;   // required
  int32_t rank = 0;         // 0 ≤ rank < the deployment's R
  int32_t num_layers = 0;   // L of the deployment, ≥ 1
  int32_t num_experts = 0;  // E of the deployment, ≥ 1
  // Steps per report, 1 … 1,000,000.
  int64_t flush_every_steps = 100;
  // Reports kept while the planner is unreachable before unsent ones are merged; ≥ 2. (A batch
  // sent as several reports over layer ranges counts once.)
  int32_t max_pending_reports = 64;
  // Largest report message, 4 KiB … 1 GiB: a batch larger than this is sent as several reports
  // over layer ranges. The default is within every planner's --max-request-bytes.
  int64_t max_report_bytes = kDefaultMaxReportBytes;
  // Accepted batches kept to be sent again after a planner restart (see above); 0 … 1024 (at most
  // 1024 reports, as many as the planner remembers).
  int32_t resend_after_restart = 16;
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(10);
  // Identifies this process to the planner (sequence numbers restart per session); 0 picks a
  // random one.
  uint64_t session = 0;
};

class LoadReporter {
 public:
  // `client` must outlive the reporter. INVALID_ARGUMENT naming the option out of range.
  static absl::StatusOr<std::unique_ptr<LoadReporter>> Create(PlannerClient* client,
                                                              const LoadReporterOptions& options);
  // Closes the open batch, tries once more to send what is pending, and stops the thread.
  ~LoadReporter();
  LoadReporter(const LoadReporter&) = delete;
  LoadReporter& operator=(const LoadReporter&) = delete;

  // Adds one step's counts (L × E, row-major, finite and ≥ 0) recorded under `plan_version`.
  // Steps must increase. INVALID_ARGUMENT (nothing added) for the wrong size, a bad count or a
  // step not after the previous one. A change of plan version closes the open batch first.
  absl::Status AddStep(int64_t step, int64_t plan_version, std::span<const double> counts);
  // Adds counts already summed over steps first_step … last_step (1 to 1,000,000 steps, all after
  // the previous ones), e.g. kept on the GPU and copied to the host once every few steps. The
  // same guarantees as AddStep; the batch closes once it spans flush_every_steps steps.
  absl::Status AddSteps(int64_t first_step, int64_t last_step, int64_t plan_version,
                        std::span<const double> counts);

  // Closes the open batch and waits until the planner accepted every report so far, or
  // DEADLINE_EXCEEDED after `timeout` (they stay queued).
  absl::Status Flush(absl::Duration timeout);

  struct Stats {
    int64_t steps_added = 0;
    int64_t reports_accepted = 0;  // by the planner, duplicates included
    int64_t reports_pending = 0;   // queued, not yet accepted
    int64_t reports_merged = 0;    // unsent reports merged to bound memory
    int64_t reports_dropped = 0;   // refused by the planner as invalid
    int64_t failed_attempts = 0;   // RPCs that failed (planner unreachable, …)
    int64_t reports_resent = 0;    // accepted reports sent again after a planner restart
    std::string last_error;        // of the last failed attempt
  };
  Stats stats() const;

 private:
  struct Pending {
    v1::LoadReport report;
    bool sent = false;  // sent at least once: the planner may have counted it; never merged
  };

  LoadReporter(PlannerClient* client, const LoadReporterOptions& options);
  void CloseBatchLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MergeUnsentLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Run();
  // Sends `reports`; on a refusal, finds the refused one by sending one at a time and drops it.
  void SendBatch(std::vector<v1::LoadReport> reports);
  // Keeps `report`, accepted by the planner instance `instance` (0: unknown), for resending; after
  // a restart first queues the reports kept from the previous instance.
  void AcceptedLocked(v1::LoadReport report, uint64_t instance) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  PlannerClient* const client_;
  const LoadReporterOptions options_;
  const int32_t layers_per_report_;
  const int32_t reports_per_batch_;  // ceil(L / layers_per_report_)

  mutable absl::Mutex mu_;
  // The open batch.
  std::vector<double> batch_counts_ ABSL_GUARDED_BY(mu_);
  int64_t batch_first_step_ ABSL_GUARDED_BY(mu_) = -1;  // −1: empty
  int64_t batch_last_step_ ABSL_GUARDED_BY(mu_) = -1;
  int64_t batch_plan_version_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t last_step_ ABSL_GUARDED_BY(mu_) = -1;
  int64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  std::deque<Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::LoadReport> accepted_ ABSL_GUARDED_BY(mu_);  // the newest accepted, by sequence
  uint64_t planner_instance_ ABSL_GUARDED_BY(mu_) = 0;        // of the last summary
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace eplb::client

#endif  // EPLB_CLIENT_LOAD_REPORTER_H_
