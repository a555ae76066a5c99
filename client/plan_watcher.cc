#include "client/plan_watcher.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/backoff.h"
#include "core/status_macros.h"
#include "proto/convert.h"
#include "spdlog/spdlog.h"

namespace eplb::client {
namespace {

constexpr size_t kMaxKeptVersions = 16;

v1::AckState ToProto(AckKind kind) {
  switch (kind) {
    case AckKind::kStaged:
      return v1::STAGED;
    case AckKind::kActive:
      return v1::ACTIVE;
    case AckKind::kFailed:
      return v1::FAILED;
  }
  return v1::ACK_STATE_UNSPECIFIED;
}

// What the watcher does when a subscription fails or a stream ends.
enum class Outcome { kRetry, kResubscribe, kGiveUp };

Outcome Classify(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kNotFound:          // the deployment was deleted
    case absl::StatusCode::kUnauthenticated:   // the token is missing or wrong
    case absl::StatusCode::kPermissionDenied:  // the token may not watch this deployment
    case absl::StatusCode::kInvalidArgument:   // a rank or deployment name the planner refuses
    case absl::StatusCode::kUnimplemented:     // not an eplb planner
    case absl::StatusCode::kOutOfRange:
      return Outcome::kGiveUp;
    case absl::StatusCode::kFailedPrecondition: {
      // A known version the deployment never reached: it was deleted and created again. Its
      // plans start over.
      const auto detail = GetErrorDetail(status);
      if (detail.has_value() && detail->reason() == v1::PLAN_NOT_FOUND) {
        return Outcome::kResubscribe;
      }
      return Outcome::kGiveUp;
    }
    default:  // UNAVAILABLE (planner restarting), DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, …
      return Outcome::kRetry;
  }
}

template <typename Map>
void KeepNewest(Map& map) {
  while (map.size() > kMaxKeptVersions) map.erase(map.begin());
}

}  // namespace

absl::StatusOr<std::unique_ptr<PlanWatcher>> PlanWatcher::Create(PlannerClient* client,
                                                                 PlanWatcherOptions options) {
  if (options.deployment.empty()) return absl::InvalidArgumentError("deployment is required");
  if (options.rank < 0) {
    return absl::InvalidArgumentError(absl::StrCat("rank = ", options.rank, " is negative"));
  }
  RETURN_IF_ERROR(
      Backoff::Validate({options.initial_backoff, options.max_backoff}, "PlanWatcherOptions"));
  return std::unique_ptr<PlanWatcher>(new PlanWatcher(client, std::move(options)));
}

PlanWatcher::PlanWatcher(PlannerClient* client, PlanWatcherOptions options)
    : client_(client), options_(std::move(options)) {}

PlanWatcher::~PlanWatcher() { Stop(); }

void PlanWatcher::Start(std::function<void(const AgentPlan&)> on_plan) {
  on_plan_ = std::move(on_plan);
  thread_ = std::thread([this] { Run(); });
}

void PlanWatcher::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (watch_ != nullptr) watch_->Cancel();
  }
  if (thread_.joinable()) thread_.join();
}

void PlanWatcher::Ack(const AgentAck& ack) {
  absl::MutexLock lock(&mu_);
  unsent_acks_[ack.version] = ack;
  KeepNewest(unsent_acks_);
  FlushAcksLocked();
}

void PlanWatcher::FlushAcksLocked() {
  if (watch_ == nullptr) return;
  for (auto it = unsent_acks_.begin(); it != unsent_acks_.end();) {
    v1::WatchPlansRequest::Ack ack;
    ack.set_version(it->second.version);
    ack.set_state(ToProto(it->second.kind));
    ack.set_map_hash(it->second.map_hash);
    ack.set_error_detail(it->second.error.substr(0, 4096));
    if (const auto nonce = nonces_.find(it->first); nonce != nonces_.end()) {
      ack.set_nonce(nonce->second);
    }
    if (absl::Status status = watch_->Ack(ack); !status.ok()) {
      stats_.last_error = status.ToString();
      return;  // the stream ended; the reader reconnects and flushes again
    }
    stats_.acks_sent++;
    it = unsent_acks_.erase(it);
  }
}

void PlanWatcher::Run() {
  Backoff backoff({options_.initial_backoff, options_.max_backoff});
  int64_t known_version = 0;
  // The watch before this one: a new one starts holding its maps, so that plans arrive as deltas.
  std::shared_ptr<PlannerClient::Watch> previous;
  PlannerClient::Watch::MapArrivals ended_streams;  // of the streams before this one
  // Counts the arrivals of `previous` into ended_streams and lets it go.
  const auto retire_previous = [&] {
    if (previous == nullptr) return;
    ended_streams += previous->map_arrivals();
    previous.reset();
  };
  for (bool first = true;; first = false) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      if (!first) stats_.reconnects++;
    }
    v1::WatchPlansRequest::Subscribe subscribe;
    subscribe.set_deployment(options_.deployment);
    subscribe.set_rank(options_.rank);
    subscribe.set_known_version(known_version);
    absl::StatusOr<std::unique_ptr<PlannerClient::Watch>> watch =
        client_->StartWatch(subscribe, previous.get());
    absl::Status ended;
    if (watch.ok()) {
      std::shared_ptr<PlannerClient::Watch> shared = *std::move(watch);
      retire_previous();
      previous = shared;
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return;
        watch_ = shared;
      }
      for (;;) {
        absl::StatusOr<v1::WatchPlansResponse> response = shared->Next();
        if (!response.ok()) {
          ended = response.status();
          break;
        }
        const v1::Plan& plan = response->plan();
        AgentPlan agent_plan;
        agent_plan.version = plan.version();
        agent_plan.map_hash = plan.map_hash();
        agent_plan.status = plan.state() == v1::COMMITTED ? PlanStatus::kCommitted
                            : plan.state() == v1::ABORTED ? PlanStatus::kAborted
                                                          : PlanStatus::kPending;
        if (agent_plan.status != PlanStatus::kAborted) {
          absl::StatusOr<ExpertMap> map = ExpertMapFromProto(plan.map(), "plan.map");
          if (!map.ok()) {
            spdlog::error("rank {}: plan version {} has a bad map: {}", options_.rank,
                          plan.version(), map.status().ToString());
            Ack(AgentAck{plan.version(), AckKind::kFailed, plan.map_hash(),
                         std::string(map.status().message())});
            continue;
          }
          agent_plan.map = std::make_shared<const ExpertMap>(*std::move(map));
        }
        {
          absl::MutexLock lock(&mu_);
          // The first response after a (re)subscribe re-opens the ack path.
          backoff.Reset();
          stats_.connected = true;
          stats_.plans_received++;
          PlannerClient::Watch::MapArrivals arrivals = ended_streams;
          arrivals += shared->map_arrivals();
          stats_.maps_whole = arrivals.whole;
          stats_.maps_delta = arrivals.delta;
          stats_.maps_held = arrivals.held;
          stats_.maps_fetched = arrivals.fetched;
          nonces_[plan.version()] = response->nonce();
          KeepNewest(nonces_);
        }
        if (plan.state() == v1::COMMITTED) known_version = std::max(known_version, plan.version());
        on_plan_(agent_plan);
        absl::MutexLock lock(&mu_);
        FlushAcksLocked();
      }
    } else {
      ended = watch.status();
    }
    const Outcome outcome = Classify(ended);
    {
      absl::MutexLock lock(&mu_);
      watch_.reset();
      stats_.connected = false;
      if (stopping_) return;
      stats_.last_error = ended.ToString();
      if (outcome == Outcome::kGiveUp) stats_.stopped_by = ended;
    }
    if (outcome == Outcome::kGiveUp) {
      spdlog::error("rank {}: plan watch of {} stopped: {}", options_.rank, options_.deployment,
                    ended.ToString());
      if (options_.on_error) options_.on_error(ended);
      return;
    }
    if (outcome == Outcome::kResubscribe) {
      spdlog::warn(
          "rank {}: deployment {} has no version {} (created again?); subscribing from "
          "the start",
          options_.rank, options_.deployment, known_version);
      known_version = 0;
      retire_previous();  // its maps belong to the earlier deployment
      // Acks of the earlier deployment mean nothing to the new one (the planner would ignore them).
      absl::MutexLock lock(&mu_);
      unsent_acks_.clear();
      nonces_.clear();
    }
    const absl::Duration wait = backoff.Next();
    spdlog::warn("rank {}: plan watch of {} ended ({}); reconnecting in {}", options_.rank,
                 options_.deployment, ended.ToString(), absl::FormatDuration(wait));
    WaitBeforeRetry(client_->channel(), wait, &mu_, &stopping_);
  }
}

PlanWatcher::Stats PlanWatcher::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace eplb::client
