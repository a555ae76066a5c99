#include "client/load_reporter.h"

#include <algorithm>
#include <iterator>
#include <cmath>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/backoff.h"
#include "core/status_macros.h"
#include "proto/api_limits.h"
#include "proto/convert.h"

namespace eplb::client {
namespace {

constexpr int64_t kMaxFlushEverySteps = 1'000'000;
// Reports sent on one stream, well within the 1024 most recent sequence numbers the planner
// remembers per rank (planner.proto).
constexpr size_t kMaxReportsPerStream = 512;

// Errors that retrying the same report cannot fix: the planner refused its content.
bool IsRefusal(const absl::Status& status) {
  if (status.code() == absl::StatusCode::kInvalidArgument ||
      status.code() == absl::StatusCode::kFailedPrecondition) {
    return true;
  }
  const auto detail = GetErrorDetail(status);
  return status.code() == absl::StatusCode::kNotFound && detail.has_value() &&
         detail->reason() == v1::PLAN_NOT_FOUND;
}

absl::Status OutOfRange(absl::string_view field, int64_t value, absl::string_view range) {
  return absl::InvalidArgumentError(
      absl::StrCat("LoadReporterOptions.", field, " = ", value, " is out of range ", range));
}

}  // namespace

absl::StatusOr<std::unique_ptr<LoadReporter>> LoadReporter::Create(
    PlannerClient* client, const LoadReporterOptions& options) {
  if (client == nullptr) return absl::InvalidArgumentError("LoadReporter needs a PlannerClient");
  if (options.deployment.empty()) {
    return absl::InvalidArgumentError("LoadReporterOptions.deployment is required");
  }
  if (options.rank < 0) return OutOfRange("rank", options.rank, "[0, R)");
  if (options.num_layers < 1) return OutOfRange("num_layers", options.num_layers, "[1, 4096]");
  if (options.num_experts < 1) {
    return OutOfRange("num_experts", options.num_experts, "[1, 65536]");
  }
  if (options.flush_every_steps < 1 || options.flush_every_steps > kMaxFlushEverySteps) {
    return OutOfRange("flush_every_steps", options.flush_every_steps, "[1, 1000000]");
  }
  if (options.max_pending_reports < 2) {
    return OutOfRange("max_pending_reports", options.max_pending_reports, "[2, ∞)");
  }
  if (options.max_report_bytes < (4 << 10) || options.max_report_bytes > (1 << 30)) {
    return OutOfRange("max_report_bytes", options.max_report_bytes, "[4096, 1073741824]");
  }
  if (options.resend_after_restart < 0 || options.resend_after_restart > 1024) {
    return OutOfRange("resend_after_restart", options.resend_after_restart, "[0, 1024]");
  }
  RETURN_IF_ERROR(
      Backoff::Validate({options.initial_backoff, options.max_backoff}, "LoadReporterOptions"));
  std::unique_ptr<LoadReporter> reporter(new LoadReporter(client, options));
  reporter->thread_ = std::thread([r = reporter.get()] { r->Run(); });
  return reporter;
}

LoadReporter::LoadReporter(PlannerClient* client, const LoadReporterOptions& options)
    : client_(client),
      options_(options),
      layers_per_report_(std::min(options.num_layers,
                                  LayersPerReport(options.num_experts, options.max_report_bytes))),
      reports_per_batch_((options.num_layers + layers_per_report_ - 1) / layers_per_report_) {
  if (options_.session == 0) {
    std::random_device random;
    const_cast<uint64_t&>(options_.session) =
        (uint64_t{random()} << 32) ^ random() ^ static_cast<uint64_t>(::getpid());
  }
  batch_counts_.assign(static_cast<size_t>(options_.num_layers) * options_.num_experts, 0.0);
}

LoadReporter::~LoadReporter() {
  {
    absl::MutexLock lock(&mu_);
    CloseBatchLocked();
    stopping_ = true;
  }
  thread_.join();
}

absl::Status LoadReporter::AddStep(int64_t step, int64_t plan_version,
                                   std::span<const double> counts) {
  return AddSteps(step, step, plan_version, counts);
}

absl::Status LoadReporter::AddSteps(int64_t first_step, int64_t last_step, int64_t plan_version,
                                    std::span<const double> counts) {
  const size_t expected = static_cast<size_t>(options_.num_layers) * options_.num_experts;
  if (counts.size() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("counts has ", counts.size(), " entries, expected L × E = ", expected));
  }
  for (size_t i = 0; i < counts.size(); ++i) {
    if (!(counts[i] >= 0.0) || std::isinf(counts[i])) {
      return absl::InvalidArgumentError(absl::StrCat("counts[", i / options_.num_experts, "][",
                                                     i % options_.num_experts, "] = ", counts[i],
                                                     " must be finite and ≥ 0"));
    }
  }
  if (plan_version < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan_version = ", plan_version, " must be ≥ 1"));
  }
  if (last_step > api::kMaxStep) {
    return absl::InvalidArgumentError(
        absl::StrCat("step ", last_step, " is beyond the planner's last step, ", api::kMaxStep));
  }
  if (last_step < first_step || last_step - first_step >= api::kMaxStepsPerReport) {
    return absl::InvalidArgumentError(
        absl::StrCat("steps ", first_step, " to ", last_step, " must be 1 to ",
                     api::kMaxStepsPerReport, " steps in order"));
  }
  absl::MutexLock lock(&mu_);
  if (first_step <= last_step_ || first_step < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("step ", first_step, " must be ≥ 0 and after step ", last_step_));
  }
  // A report covers one plan version and fewer than kMaxStepsPerReport steps.
  if (batch_first_step_ >= 0 && (plan_version != batch_plan_version_ ||
                                 last_step - batch_first_step_ >= api::kMaxStepsPerReport)) {
    CloseBatchLocked();
  }
  if (batch_first_step_ < 0) {
    batch_first_step_ = first_step;
    batch_plan_version_ = plan_version;
  }
  for (size_t i = 0; i < counts.size(); ++i) batch_counts_[i] += counts[i];
  batch_last_step_ = last_step;
  last_step_ = last_step;
  stats_.steps_added += last_step - first_step + 1;
  if (batch_last_step_ - batch_first_step_ + 1 >= options_.flush_every_steps) CloseBatchLocked();
  return absl::OkStatus();
}

void LoadReporter::CloseBatchLocked() {
  if (batch_first_step_ < 0) return;
  const size_t experts = static_cast<size_t>(options_.num_experts);
  for (int32_t first = 0; first < options_.num_layers; first += layers_per_report_) {
    Pending pending;
    v1::LoadReport& report = pending.report;
    report.set_deployment(options_.deployment);
    report.set_rank(options_.rank);
    report.set_session(options_.session);
    report.set_sequence(next_sequence_++);
    report.set_first_step(batch_first_step_);
    report.set_last_step(batch_last_step_);
    report.set_plan_version(batch_plan_version_);
    report.set_counts_kind(v1::LoadReport::LOGICAL);
    report.set_first_layer(first);
    const int32_t end = std::min(options_.num_layers, first + layers_per_report_);
    for (int32_t l = first; l < end; ++l) {
      const double* row = batch_counts_.data() + l * experts;
      report.add_layers()->mutable_counts()->Assign(row, row + experts);
    }
    pending_.push_back(std::move(pending));
  }
  std::fill(batch_counts_.begin(), batch_counts_.end(), 0.0);
  batch_first_step_ = batch_last_step_ = -1;
  if (pending_.size() > static_cast<size_t>(options_.max_pending_reports) * reports_per_batch_) {
    MergeUnsentLocked();
  }
  stats_.reports_pending = static_cast<int64_t>(pending_.size());
}

void LoadReporter::MergeUnsentLocked() {
  // The two newest adjacent unsent batches of one plan version become one, report by report (a
  // batch is reports_per_batch_ reports over the same layer ranges). Only reports never sent are
  // merged: a sent one may already be counted under its sequence number. Unsent reports are
  // whole batches at the back of the queue: batches are queued whole and sent all at once.
  const size_t n = static_cast<size_t>(reports_per_batch_);
  for (size_t later = pending_.size() - n; later >= n; later -= n) {
    const size_t earlier = later - n;
    if (pending_[earlier].sent) break;
    if (pending_[earlier].report.plan_version() != pending_[later].report.plan_version()) {
      continue;
    }
    for (size_t k = 0; k < n; ++k) {
      v1::LoadReport& into = pending_[earlier + k].report;
      const v1::LoadReport& from = pending_[later + k].report;
      into.set_last_step(from.last_step());
      for (int l = 0; l < into.layers_size(); ++l) {
        auto* sum = into.mutable_layers(l)->mutable_counts();
        const auto& add = from.layers(l).counts();
        for (int e = 0; e < sum->size(); ++e) sum->Set(e, sum->Get(e) + add.Get(e));
      }
    }
    pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(later),
                   pending_.begin() + static_cast<std::ptrdiff_t>(later + n));
    stats_.reports_merged += static_cast<int64_t>(n);
    return;
  }
}

absl::Status LoadReporter::Flush(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  CloseBatchLocked();
  const auto drained = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pending_.empty(); };
  if (!mu_.AwaitWithTimeout(absl::Condition(&drained), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat(
        pending_.size(), " load reports not yet accepted by the planner after ",
        absl::FormatDuration(timeout), (stats_.last_error.empty() ? "" : ": "), stats_.last_error));
  }
  return absl::OkStatus();
}

LoadReporter::Stats LoadReporter::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void LoadReporter::Run() {
  Backoff backoff({options_.initial_backoff, options_.max_backoff});
  while (true) {
    std::vector<v1::LoadReport> batch;
    {
      absl::MutexLock lock(&mu_);
      const auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !pending_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (pending_.empty()) return;  // stopping, nothing left
      // At most kMaxReportsPerStream: if the summary is lost, the planner still remembers every
      // sequence number of the stream when it is sent again, and counts each once. After a failed
      // attempt only the reports already sent go again (the planner may have counted them, so
      // they are never merged); newer ones wait unsent, and are merged while the planner is away.
      const bool retrying = pending_.front().sent;
      for (Pending& pending : pending_) {
        if (batch.size() == kMaxReportsPerStream || (retrying && !pending.sent)) break;
        pending.sent = true;
        batch.push_back(pending.report);
      }
    }
    const absl::StatusOr<v1::ReportSummary> summary = client_->ReportLoad(batch);
    if (summary.ok()) {
      absl::MutexLock lock(&mu_);
      // The batch is the front of the queue: later reports were appended behind it, and merging
      // never touches sent reports.
      pending_.erase(pending_.begin(),
                     pending_.begin() + static_cast<std::ptrdiff_t>(batch.size()));
      for (v1::LoadReport& report : batch) {
        AcceptedLocked(std::move(report), summary->planner_instance());
      }
      stats_.reports_accepted += static_cast<int64_t>(batch.size());
      stats_.reports_pending = static_cast<int64_t>(pending_.size());
      backoff.Reset();
      continue;
    }
    if (IsRefusal(summary.status())) {
      SendBatch(std::move(batch));
      continue;
    }
    absl::Duration delay;
    {
      absl::MutexLock lock(&mu_);
      ++stats_.failed_attempts;
      stats_.last_error = summary.status().ToString();
      if (stopping_) return;  // one last try was made; what is pending is lost with the process
      delay = backoff.Next();
    }
    WaitBeforeRetry(client_->channel(), delay, &mu_, &stopping_);
  }
}

void LoadReporter::SendBatch(std::vector<v1::LoadReport> reports) {
  // One at a time, to find the report the planner refuses; the others are counted once each.
  for (const v1::LoadReport& report : reports) {
    const absl::StatusOr<v1::ReportSummary> summary =
        client_->ReportLoad(std::span<const v1::LoadReport>(&report, 1));
    absl::MutexLock lock(&mu_);
    if (!summary.ok() && !IsRefusal(summary.status())) {
      ++stats_.failed_attempts;
      stats_.last_error = summary.status().ToString();
      return;  // unreachable again: the normal retry path takes over
    }
    if (summary.ok()) {
      ++stats_.reports_accepted;
      pending_.pop_front();
      // Kept, but a restart is noticed on the next stream: pending_'s front is this batch.
      AcceptedLocked(report, /*instance=*/0);
      stats_.reports_pending = static_cast<int64_t>(pending_.size());
      continue;
    } else {
      ++stats_.reports_dropped;
      stats_.last_error = summary.status().ToString();
    }
    pending_.pop_front();
    stats_.reports_pending = static_cast<int64_t>(pending_.size());
  }
}

void LoadReporter::AcceptedLocked(v1::LoadReport report, uint64_t instance) {
  if (instance != 0 && planner_instance_ != 0 && instance != planner_instance_) {
    // The planner restarted: it may have lost what it accepted since its last checkpoint. Those
    // go first, as already sent (never merged); it counts each sequence number once.
    stats_.reports_resent += static_cast<int64_t>(accepted_.size());
    for (auto it = accepted_.rbegin(); it != accepted_.rend(); ++it) {
      pending_.push_front(Pending{.report = std::move(*it), .sent = true});
    }
    accepted_.clear();
    stats_.reports_pending = static_cast<int64_t>(pending_.size());
  }
  if (instance != 0) planner_instance_ = instance;
  // The newest by sequence number (reports sent again after a restart are accepted after newer
  // ones), at most 1024 of them: the planner remembers that many per rank.
  const size_t keep = std::min<size_t>(static_cast<size_t>(options_.resend_after_restart) *
                                           static_cast<size_t>(reports_per_batch_),
                                       1024);
  if (keep == 0) return;
  auto at = accepted_.end();
  while (at != accepted_.begin() && std::prev(at)->sequence() > report.sequence()) --at;
  accepted_.insert(at, std::move(report));
  while (accepted_.size() > keep) accepted_.pop_front();
}

}  // namespace eplb::client

