#include "server/planner_service.h"

#include <grpcpp/impl/codegen/proto_utils.h>

#include <deque>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "proto/convert.h"
#include "spdlog/spdlog.h"

namespace eplb::server {
namespace {

// Compares the first kMaxCredentialBytes bytes of both, zero-padded, always all of them: the time
// taken reveals neither a matching prefix nor either length. `expected` is at most that long.
bool ConstantTimeEquals(absl::string_view presented, absl::string_view expected) {
  unsigned char diff = presented.size() != expected.size() ? 1 : 0;
  for (size_t i = 0; i < kMaxCredentialBytes; ++i) {
    const unsigned char a = i < presented.size() ? static_cast<unsigned char>(presented[i]) : 0;
    const unsigned char b = i < expected.size() ? static_cast<unsigned char>(expected[i]) : 0;
    diff |= static_cast<unsigned char>(a ^ b);
  }
  return diff == 0;
}

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// ---- ReportLoad ---------------------------------------------------------------------------------

class ReportReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  ReportReactor(Planner* planner, grpc::ByteBuffer* response, const absl::Status& auth)
      : planner_(planner), response_(response) {
    if (!auth.ok()) {
      Finish(ToGrpcStatus(auth));
      return;
    }
    StartRead(&incoming_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client finished writing (or went away)
      bool own_buffer = false;
      const grpc::Status status =
          grpc::SerializationTraits<v1::ReportSummary>::Serialize(summary_, response_, &own_buffer);
      Finish(status);
      return;
    }
    ++received_;
    if (!grpc::SerializationTraits<v1::LoadReport>::Deserialize(&incoming_, &report_).ok()) {
      Finish(ToGrpcStatus(
          ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::MALFORMED_MESSAGE, "",
                          absl::StrCat("message ", received_, " of the stream does not parse as ",
                                       v1::LoadReport::descriptor()->full_name(), "; the ",
                                       received_ - 1, " before it were counted"))));
      return;
    }
    const absl::StatusOr<ReportOutcome> outcome = planner_->Report(report_);
    if (!outcome.ok()) {
      Finish(ToGrpcStatus(outcome.status()));
      return;
    }
    if (outcome->duplicate) {
      summary_.set_duplicates(summary_.duplicates() + 1);
    } else {
      summary_.set_accepted(summary_.accepted() + 1);
    }
    summary_.set_last_sequence(outcome->last_sequence);
    StartRead(&incoming_);
  }

  void OnDone() override { delete this; }

 private:
  Planner* const planner_;
  grpc::ByteBuffer* const response_;
  grpc::ByteBuffer incoming_;
  int64_t received_ = 0;
  v1::LoadReport report_;  // reused: its repeated fields keep their capacity
  v1::ReportSummary summary_;
};

// ---- WatchPlans ---------------------------------------------------------------------------------

class WatchReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                           public WatchSink {
 public:
  WatchReactor(Planner* planner, int max_queue, grpc::CallbackServerContext* context,
               const absl::Status& auth)
      : planner_(planner), max_queue_(max_queue), context_(context) {
    if (!auth.ok()) {
      absl::MutexLock lock(&mu_);
      FinishLocked(auth);
      return;
    }
    StartRead(&incoming_);
  }

  void OnReadDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      if (!ok) {  // the client half-closed or went away: nothing more to acknowledge
        FinishLocked(absl::OkStatus());
        return;
      }
      if (finished_) return;  // closed by the planner while this read was pending
    }
    v1::WatchPlansRequest request;
    const grpc::Status parsed =
        grpc::SerializationTraits<v1::WatchPlansRequest>::Deserialize(&incoming_, &request);
    absl::Status status;
    if (!parsed.ok()) {
      status = ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::MALFORMED_MESSAGE, "",
                               "a message of the stream does not parse as "
                               "eplb.v1.WatchPlansRequest");
    } else if (!subscribed_) {
      if (!request.has_subscribe()) {
        status = ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::FIELD_REQUIRED,
                                 "subscribe", "the first message of a watch must be a subscribe");
      } else {
        deployment_ = request.subscribe().deployment();
        rank_ = request.subscribe().rank();
        auto subscription = planner_->Subscribe(request.subscribe(), this);
        if (subscription.ok()) {
          subscription_ = *std::move(subscription);
          subscribed_ = true;
        }
        status = subscription.status();
      }
    } else if (request.has_ack()) {
      status = planner_->Ack(deployment_, rank_, request.ack());
    } else {
      status = ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::FIELD_OUT_OF_RANGE,
                               "subscribe", "a watch subscribes once; later messages are acks");
    }
    absl::MutexLock lock(&mu_);
    if (!status.ok()) {
      FinishLocked(status);
      return;
    }
    if (!finished_) StartRead(&incoming_);  // a Close may have finished the stream meanwhile
  }

  void Send(std::shared_ptr<const WatchUpdate> update) override {
    absl::MutexLock lock(&mu_);
    if (finished_) {
      // Ended for falling behind, and the write in progress then has still not been taken: the
      // client does not read. The status would wait behind that write forever; cancel the call so
      // that it ends and lets go of its buffers now. (Safe under the locks: gRPC runs this
      // reactor's OnCancel and OnDone on its own threads, never inside TryCancel.)
      if (fell_behind_ && writing_ && !cancelled_) {
        cancelled_ = true;
        context_->TryCancel();
      }
      return;
    }
    // A queued (not yet writing) update of the same version is superseded by the newer one.
    for (size_t i = writing_ ? 1 : 0; i < queue_.size(); ++i) {
      if (queue_[i]->version == update->version) {
        queue_[i] = std::move(update);
        return;
      }
    }
    if (queue_.size() - (writing_ ? 1 : 0) >= static_cast<size_t>(max_queue_)) {
      const size_t behind = queue_.size();
      // Only the write in progress stays (gRPC holds its bytes until it completes).
      queue_.erase(queue_.begin() + (writing_ ? 1 : 0), queue_.end());
      fell_behind_ = true;
      FinishLocked(ErrorWithDetail(
          absl::StatusCode::kResourceExhausted, v1::WATCH_FELL_BEHIND, "",
          absl::StrCat("watch stream fell behind by ", behind,
                       " plan updates (--max-watch-queue=", max_queue_, "); resubscribe")));
      return;
    }
    queue_.push_back(std::move(update));
    if (!writing_) {
      writing_ = true;
      StartWrite(&queue_.front()->bytes);
    }
  }

  void Close(const absl::Status& status) override {
    absl::MutexLock lock(&mu_);
    FinishLocked(status);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    queue_.pop_front();
    if (ok && !finished_ && !queue_.empty()) {
      StartWrite(&queue_.front()->bytes);
    } else {
      writing_ = false;
    }
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    FinishLocked(absl::CancelledError("watch cancelled"));
  }

  void OnDone() override {
    // After Unsubscribe returns the planner holds no pointer to this sink.
    if (subscribed_) planner_->Unsubscribe(subscription_, this);
    delete this;
  }

 private:
  void FinishLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(ToGrpcStatus(status));
  }

  Planner* const planner_;
  const int max_queue_;
  grpc::CallbackServerContext* const context_;  // valid until OnDone
  grpc::ByteBuffer incoming_;
  // Set on the reactor's read path only (reads are sequential).
  bool subscribed_ = false;
  Planner::Subscription subscription_;
  std::string deployment_;
  int32_t rank_ = -1;

  absl::Mutex mu_;
  std::deque<std::shared_ptr<const WatchUpdate>> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;  // queue_.front() is being written
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool fell_behind_ ABSL_GUARDED_BY(mu_) = false;  // finished for a full queue
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

PlannerService::PlannerService(Planner* planner, PlannerServiceOptions options)
    : planner_(planner), options_(std::move(options)) {}

absl::Status PlannerService::Authenticate(grpc::CallbackServerContext* context) const {
  if (options_.bearer_token.empty()) return absl::OkStatus();
  const auto& metadata = context->client_metadata();
  const auto it = metadata.find("authorization");
  if (it != metadata.end()) {
    const absl::string_view value(it->second.data(), it->second.size());
    if (ConstantTimeEquals(value, absl::StrCat("Bearer ", options_.bearer_token))) {
      return absl::OkStatus();
    }
  }
  // Logged at most once a second (a client guessing must not flood the log), with the count since.
  const int64_t refused = refused_calls_.fetch_add(1) + 1;
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  int64_t last_ms = last_refusal_log_ms_.load();
  if (now_ms - last_ms >= 1000 && last_refusal_log_ms_.compare_exchange_strong(last_ms, now_ms)) {
    spdlog::warn("refused a call without a valid bearer token from {} ({} refused so far)",
                 context->peer(), refused);
  }
  return ErrorWithDetail(absl::StatusCode::kUnauthenticated, v1::UNAUTHENTICATED_TOKEN,
                         "authorization",
                         it == metadata.end() ? "missing bearer token (authorization metadata)"
                                              : "wrong bearer token");
}

grpc::ServerUnaryReactor* PlannerService::CreateDeployment(
    grpc::CallbackServerContext* context, const v1::CreateDeploymentRequest* request,
    v1::Deployment* response) {
  if (absl::Status auth = Authenticate(context); !auth.ok()) return FinishNow(context, auth);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  planner_->CreateDeployment(request->spec(),
                             [reactor, response](absl::StatusOr<v1::Deployment> deployment) {
                               if (deployment.ok()) *response = *std::move(deployment);
                               reactor->Finish(ToGrpcStatus(deployment.status()));
                             });
  return reactor;
}

grpc::ServerUnaryReactor* PlannerService::GetDeployment(grpc::CallbackServerContext* context,
                                                        const v1::GetDeploymentRequest* request,
                                                        v1::Deployment* response) {
  if (absl::Status auth = Authenticate(context); !auth.ok()) return FinishNow(context, auth);
  absl::StatusOr<v1::Deployment> deployment = planner_->GetDeployment(request->name());
  if (deployment.ok()) *response = *std::move(deployment);
  return FinishNow(context, deployment.status());
}

grpc::ServerUnaryReactor* PlannerService::ListDeployments(
    grpc::CallbackServerContext* context, const v1::ListDeploymentsRequest* /*request*/,
    v1::ListDeploymentsResponse* response) {
  if (absl::Status auth = Authenticate(context); !auth.ok()) return FinishNow(context, auth);
  for (v1::Deployment& deployment : planner_->ListDeployments()) {
    *response->add_deployments() = std::move(deployment);
  }
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* PlannerService::DeleteDeployment(
    grpc::CallbackServerContext* context, const v1::DeleteDeploymentRequest* request,
    v1::DeleteDeploymentResponse* /*response*/) {
  if (absl::Status auth = Authenticate(context); !auth.ok()) return FinishNow(context, auth);
  if (request->name().empty()) {
    return FinishNow(context, ErrorWithDetail(absl::StatusCode::kInvalidArgument,
                                              v1::FIELD_REQUIRED, "name", "name is required"));
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  planner_->DeleteDeployment(
      request->name(), [reactor](absl::Status status) { reactor->Finish(ToGrpcStatus(status)); });
  return reactor;
}

grpc::ServerReadReactor<grpc::ByteBuffer>* PlannerService::ReportLoad(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  return new ReportReactor(planner_, response, Authenticate(context));
}

grpc::ServerUnaryReactor* PlannerService::GetPlan(grpc::CallbackServerContext* context,
                                                  const v1::GetPlanRequest* request,
                                                  v1::Plan* response) {
  if (absl::Status auth = Authenticate(context); !auth.ok()) return FinishNow(context, auth);
  absl::StatusOr<v1::Plan> plan = planner_->GetPlan(request->deployment(), request->version());
  if (plan.ok()) *response = *std::move(plan);
  return FinishNow(context, plan.status());
}

grpc::ServerUnaryReactor* PlannerService::ListPlans(grpc::CallbackServerContext* context,
                                                    const v1::ListPlansRequest* request,
                                                    v1::ListPlansResponse* response) {
  if (absl::Status auth = Authenticate(context); !auth.ok()) return FinishNow(context, auth);
  auto plans = planner_->ListPlans(request->deployment(), request->include_maps());
  if (plans.ok()) {
    for (v1::Plan& plan : *plans) *response->add_plans() = std::move(plan);
  }
  return FinishNow(context, plans.status());
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* PlannerService::WatchPlans(
    grpc::CallbackServerContext* context) {
  return new WatchReactor(planner_, options_.max_watch_queue, context, Authenticate(context));
}

grpc::ServerUnaryReactor* PlannerService::Rebalance(grpc::CallbackServerContext* context,
                                                    const v1::RebalanceRequest* request,
                                                    v1::RebalanceResponse* response) {
  if (absl::Status auth = Authenticate(context); !auth.ok()) return FinishNow(context, auth);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  planner_->Rebalance(request->deployment(), request->dry_run(),
                      [reactor, response](absl::StatusOr<v1::Plan> plan) {
                        if (plan.ok()) *response->mutable_plan() = *std::move(plan);
                        reactor->Finish(ToGrpcStatus(plan.status()));
                      });
  return reactor;
}

grpc::ServerUnaryReactor* PlannerService::GetLoad(grpc::CallbackServerContext* context,
                                                  const v1::GetLoadRequest* request,
                                                  v1::GetLoadResponse* response) {
  if (absl::Status auth = Authenticate(context); !auth.ok()) return FinishNow(context, auth);
  absl::StatusOr<v1::GetLoadResponse> load = planner_->GetLoad(request->deployment());
  if (load.ok()) *response = *std::move(load);
  return FinishNow(context, load.status());
}

grpc::ServerUnaryReactor* PlannerService::PublishRendezvous(
    grpc::CallbackServerContext* context, const v1::PublishRendezvousRequest* request,
    v1::PublishRendezvousResponse* /*response*/) {
  if (absl::Status auth = Authenticate(context); !auth.ok()) return FinishNow(context, auth);
  return FinishNow(context, planner_->PublishRendezvous(*request));
}

grpc::ServerUnaryReactor* PlannerService::GetRendezvous(grpc::CallbackServerContext* context,
                                                        const v1::GetRendezvousRequest* request,
                                                        v1::GetRendezvousResponse* response) {
  if (absl::Status auth = Authenticate(context); !auth.ok()) return FinishNow(context, auth);
  absl::StatusOr<std::string> value = planner_->GetRendezvous(*request);
  if (value.ok()) response->set_value(*std::move(value));
  return FinishNow(context, value.status());
}

}  // namespace eplb::server
