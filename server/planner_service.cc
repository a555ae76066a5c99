#include "server/planner_service.h"

#include <grpcpp/impl/codegen/proto_utils.h>

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <atomic>
#include <deque>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "proto/convert.h"
#include "server/report_wire.h"
#include "spdlog/spdlog.h"

namespace eplb::server {

class PlannerService::Gate {
 public:
  Gate(AccessControl access, PlannerMetrics* metrics)
      : access_(std::move(access)), metrics_(metrics) {}

  // The caller's credential, or UNAUTHENTICATED (recorded).
  absl::StatusOr<const Credential*> Identify(grpc::CallbackServerContext* context) const {
    if (!access_.enforcing()) return access_.Identify(std::nullopt, {});
    std::optional<absl::string_view> authorization;
    const auto& metadata = context->client_metadata();
    if (const auto it = metadata.find("authorization"); it != metadata.end()) {
      authorization = absl::string_view(it->second.data(), it->second.size());
    }
    std::vector<std::string> identities;
    if (const std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
        auth != nullptr && auth->IsPeerAuthenticated()) {
      for (const char* property : {GRPC_X509_CN_PROPERTY_NAME, GRPC_X509_SAN_PROPERTY_NAME}) {
        for (const grpc::string_ref& value : auth->FindPropertyValues(property)) {
          identities.emplace_back(value.data(), value.size());
        }
      }
    }
    absl::StatusOr<const Credential*> caller = access_.Identify(authorization, identities);
    if (!caller.ok()) Record(context, caller.status(), /*unauthenticated=*/true);
    return caller;
  }

  // `status` (a scope check) as it is; a refusal is recorded.
  absl::Status Check(grpc::CallbackServerContext* context, absl::Status status) const {
    if (!status.ok()) Record(context, status, /*unauthenticated=*/false);
    return status;
  }

 private:
  // Counted always, logged at most once a second (a client guessing must not flood the log) with
  // the count since start.
  void Record(grpc::CallbackServerContext* context, const absl::Status& status,
              bool unauthenticated) const {
    if (metrics_ != nullptr) metrics_->AuthRefused(unauthenticated);
    const int64_t refused = refused_calls_.fetch_add(1) + 1;
    const int64_t now_ms = absl::ToUnixMillis(absl::Now());
    int64_t last_ms = last_log_ms_.load();
    if (now_ms - last_ms >= 1000 && last_log_ms_.compare_exchange_strong(last_ms, now_ms)) {
      spdlog::warn("refused a call from {}: {} ({} refused so far)", context->peer(),
                   std::string(status.message()), refused);
    }
  }

  const AccessControl access_;
  PlannerMetrics* const metrics_;
  mutable std::atomic<int64_t> refused_calls_{0};
  mutable std::atomic<int64_t> last_log_ms_{0};
};

namespace {

using Gate = PlannerService::Gate;

template <typename Message>
absl::Status Parse(const grpc::ByteBuffer& bytes, Message* message, absl::string_view what) {
  grpc::ByteBuffer copy = bytes;  // Deserialize consumes its buffer; the copy shares the slices
  if (grpc::SerializationTraits<Message>::Deserialize(&copy, message).ok()) {
    return absl::OkStatus();
  }
  return ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::MALFORMED_MESSAGE, "",
                         absl::StrCat(what, " does not parse as ",
                                      Message::descriptor()->full_name()));
}

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// Finishes a unary call with `response` serialized into `out`, or its error.
template <typename Response>
void FinishWith(grpc::ServerUnaryReactor* reactor, grpc::ByteBuffer* out,
                const absl::StatusOr<Response>& response) {
  if (!response.ok()) {
    reactor->Finish(ToGrpcStatus(response.status()));
    return;
  }
  bool own_buffer = false;
  reactor->Finish(grpc::SerializationTraits<Response>::Serialize(*response, out, &own_buffer));
}

// OK as an empty response of its type, or the error.
template <typename Response>
absl::StatusOr<Response> EmptyOr(const absl::Status& status) {
  if (!status.ok()) return status;
  return Response();
}

// A unary call: identify the caller, parse the request, `check` the caller's scope against it,
// then `run(request, caller, done)`, which calls done(StatusOr<Response>) once, now or later.
template <typename Request, typename Response, typename Check, typename Run>
grpc::ServerUnaryReactor* Serve(const Gate& gate, grpc::CallbackServerContext* context,
                                const grpc::ByteBuffer* in, grpc::ByteBuffer* out, Check check,
                                Run run) {
  absl::StatusOr<const Credential*> caller = gate.Identify(context);
  if (!caller.ok()) return FinishNow(context, caller.status());
  auto request = std::make_shared<Request>();
  if (absl::Status parsed = Parse(*in, request.get(), "the request"); !parsed.ok()) {
    return FinishNow(context, parsed);
  }
  if (absl::Status allowed = gate.Check(context, check(**caller, *request)); !allowed.ok()) {
    return FinishNow(context, allowed);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  run(*request, **caller, [reactor, out, request](absl::StatusOr<Response> response) {
    FinishWith(reactor, out, response);
  });
  return reactor;
}

// ---- ReportLoad ---------------------------------------------------------------------------------

// Each message is received within the service's ReadBudget: the stream reserves the most a
// message may cost before it starts a read and gives it back once the message is counted, so a
// stream waiting for the budget holds no buffered message.
class ReportReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  ReportReactor(Planner* planner, grpc::ByteBuffer* response, const Gate* gate,
                ReadBudget* budget, int64_t read_cost, grpc::CallbackServerContext* context)
      : planner_(planner),
        response_(response),
        gate_(gate),
        budget_(budget),
        read_cost_(read_cost),
        context_(context) {
    absl::StatusOr<const Credential*> caller = gate_->Identify(context_);
    if (!caller.ok()) {
      Finish(ToGrpcStatus(caller.status()));
      return;
    }
    caller_ = *caller;
    summary_.set_planner_instance(planner_->instance());
    ReadNext();
  }

  void OnReadDone(bool ok) override {
    if (ok) budget_->Arrived(Ticket());
    const size_t bytes = ok ? incoming_.Length() : 0;
    const grpc::Status status = ok ? Count() : Summary();
    // The message is consumed: its buffer is empty (Deserialize clears it) and a large parsed
    // report is freed before its bytes go back to the budget.
    if (bytes > kKeepParsedBytes) report_ = v1::LoadReport();
    budget_->Release(Ticket());
    if (ok && status.ok()) {
      ReadNext();
    } else {
      Finish(status);
    }
  }

  void OnCancel() override {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      // A pending read ends with ok = false; a reservation granted meanwhile finishes in Granted.
      if (!waiting_ || !budget_->Withdraw(ticket_)) return;
      waiting_ = false;
    }
    Finish(grpc::Status::CANCELLED);  // may delete this: not under mu_
  }

  void OnDone() override { delete this; }

 private:
  // A report parsed from a message above this size is not kept for the next one.
  static constexpr size_t kKeepParsedBytes = 256 << 10;

  void ReadNext() {
    bool now = false;
    bool cancelled = false;
    {
      absl::MutexLock lock(&mu_);
      cancelled = cancelled_;
      if (!cancelled) {
        // Overdue: the message has not arrived within --report-read-timeout of the grant. The
        // pending read then ends with ok = false.
        ticket_ = budget_->Reserve(
            read_cost_, [this] { Granted(); }, [context = context_] { context->TryCancel(); },
            &now);
        waiting_ = !now;
        // A waiting stream keeps no parsed report outside the budget. (Under mu_: Granted takes
        // it before it starts the read that refills report_.)
        if (waiting_) report_ = v1::LoadReport();
      }
    }
    if (cancelled) {
      Finish(grpc::Status::CANCELLED);
    } else if (now) {
      StartRead(&incoming_);
    }
  }

  // The budget granted a waiting reservation (on the releasing stream's thread).
  void Granted() {
    bool cancelled = false;
    {
      absl::MutexLock lock(&mu_);
      waiting_ = false;
      cancelled = cancelled_;
    }
    if (!cancelled) {
      StartRead(&incoming_);
      return;
    }
    budget_->Release(Ticket());
    Finish(grpc::Status::CANCELLED);
  }

  ReadBudget::Ticket Ticket() {
    absl::MutexLock lock(&mu_);
    return ticket_;
  }

  // Parses, checks and counts the message just read; OK to read the next.
  grpc::Status Count() {
    ++received_;
    absl::Status wire;
    {
      grpc::ProtoBufferReader reader(&incoming_);
      wire = CheckLoadReportWire(&reader);
    }
    if (wire.ok() &&
        !grpc::SerializationTraits<v1::LoadReport>::Deserialize(&incoming_, &report_).ok()) {
      wire = absl::InvalidArgumentError("it is not a well-formed protobuf message");
    }
    incoming_.Clear();
    if (!wire.ok()) {
      return ToGrpcStatus(
          ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::MALFORMED_MESSAGE, "",
                          absl::StrCat("message ", received_, " of the stream does not parse as ",
                                       v1::LoadReport::descriptor()->full_name(), " (",
                                       wire.message(), "); the ", received_ - 1,
                                       " before it were counted")));
    }
    if (absl::Status allowed = gate_->Check(
            context_, AccessControl::CheckRank(*caller_, "report load", report_.deployment(),
                                               report_.rank()));
        !allowed.ok()) {
      return ToGrpcStatus(allowed);
    }
    const absl::StatusOr<ReportOutcome> outcome = planner_->Report(report_);
    if (!outcome.ok()) return ToGrpcStatus(outcome.status());
    if (outcome->duplicate) {
      summary_.set_duplicates(summary_.duplicates() + 1);
    } else {
      summary_.set_accepted(summary_.accepted() + 1);
    }
    summary_.set_last_sequence(outcome->last_sequence);
    return grpc::Status::OK;
  }

  // The client finished writing (or went away): the summary is the response.
  grpc::Status Summary() {
    bool own_buffer = false;
    return grpc::SerializationTraits<v1::ReportSummary>::Serialize(summary_, response_,
                                                                   &own_buffer);
  }

  Planner* const planner_;
  grpc::ByteBuffer* const response_;
  const Gate* const gate_;
  ReadBudget* const budget_;
  const int64_t read_cost_;
  grpc::CallbackServerContext* const context_;  // valid until OnDone
  const Credential* caller_ = nullptr;           // the AccessControl's, which outlives the call
  absl::Mutex mu_;
  bool waiting_ ABSL_GUARDED_BY(mu_) = false;  // for the budget, without a read
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  ReadBudget::Ticket ticket_ ABSL_GUARDED_BY(mu_) = 0;
  grpc::ByteBuffer incoming_;
  int64_t received_ = 0;
  v1::LoadReport report_;  // reused while small: its repeated fields keep their capacity
  v1::ReportSummary summary_;
};

// ---- WatchPlans ---------------------------------------------------------------------------------

class WatchReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                           public WatchSink {
 public:
  WatchReactor(Planner* planner, int max_queue, const Gate* gate,
               grpc::CallbackServerContext* context)
      : planner_(planner), max_queue_(max_queue), gate_(gate), context_(context) {
    absl::StatusOr<const Credential*> caller = gate_->Identify(context_);
    if (!caller.ok()) {
      absl::MutexLock lock(&mu_);
      FinishLocked(caller.status());
      return;
    }
    caller_ = *caller;
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
      } else if (status = gate_->Check(
                     context_, request.subscribe().rank() < 0
                                   ? AccessControl::CheckRead(*caller_, "watch plans",
                                                              request.subscribe().deployment())
                                   : AccessControl::CheckRank(*caller_, "acknowledge plans",
                                                              request.subscribe().deployment(),
                                                              request.subscribe().rank()));
                 !status.ok()) {
      } else {
        deployment_ = request.subscribe().deployment();
        rank_ = request.subscribe().rank();
        if (request.subscribe().accept_map_delta()) {
          absl::MutexLock lock(&mu_);
          accept_delta_ = true;
          if (request.subscribe().known_version() > 0) Carried(request.subscribe().known_version());
        }
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
    // A queued (not yet writing) update of the same version is superseded by the newer one, in
    // the same form: if the queued one carried the map, so does its replacement.
    for (size_t i = writing_ ? 1 : 0; i < queue_.size(); ++i) {
      if (queue_[i].update->version == update->version) {
        Queued& queued = queue_[i];
        if (queued.form == Form::kDelta && update->delta_base != queued.update->delta_base) {
          queued.form = Form::kCompact;
        }
        queued.update = std::move(update);
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
    Form form = Form::kWhole;
    if (accept_delta_) {
      form = Form::kCompact;
      if (HasCarried(update->version)) {
        form = Form::kState;
      } else if (update->delta_base != 0 && HasCarried(update->delta_base)) {
        form = Form::kDelta;
        Carried(update->delta_base);
      }
      Carried(update->version);
    }
    queue_.push_back(Queued{std::move(update), form});
    if (!writing_) {
      writing_ = true;
      StartWrite(queue_.front().bytes());
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
      StartWrite(queue_.front().bytes());
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
  // How a queued update goes out: with the whole map (kWhole in the map's own fields, kCompact as a
  // delta without a base), as the layers that differ from its parent's map (which this stream
  // carried), or without the map (this stream carried the version's map).
  enum class Form { kWhole, kCompact, kDelta, kState };
  struct Queued {
    std::shared_ptr<const WatchUpdate> update;
    Form form = Form::kWhole;
    const grpc::ByteBuffer* bytes() const {
      switch (form) {
        case Form::kCompact:
          return &update->compact_bytes;
        case Form::kDelta:
          return &update->delta_bytes;
        case Form::kState:
          return &update->state_bytes;
        case Form::kWhole:
          break;
      }
      return &update->bytes;
    }
  };
  // The versions whose maps this stream carried (or the client said it holds), the most recently
  // carried or used as a base last (in acked mode every plan's base is the committed version,
  // which aborted plans must not push out). The client keeps at least this many maps
  // (PlannerClient::Watch keeps 5); a delta whose base it no longer holds still costs only a
  // GetPlan.
  static constexpr size_t kCarriedVersions = 4;
  void Carried(int64_t version) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const auto it = std::find(carried_.begin(), carried_.end(), version);
    if (it != carried_.end()) {
      carried_.erase(it);
    } else if (carried_.size() == kCarriedVersions) {
      carried_.erase(carried_.begin());
    }
    carried_.push_back(version);
  }
  bool HasCarried(int64_t version) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return std::find(carried_.begin(), carried_.end(), version) != carried_.end();
  }

  void FinishLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(ToGrpcStatus(status));
  }

  Planner* const planner_;
  const int max_queue_;
  const Gate* const gate_;
  grpc::CallbackServerContext* const context_;  // valid until OnDone
  const Credential* caller_ = nullptr;
  grpc::ByteBuffer incoming_;
  // Set on the reactor's read path only (reads are sequential).
  bool subscribed_ = false;
  Planner::Subscription subscription_;
  std::string deployment_;
  int32_t rank_ = -1;

  absl::Mutex mu_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  bool accept_delta_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<int64_t> carried_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;  // queue_.front() is being written
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool fell_behind_ ABSL_GUARDED_BY(mu_) = false;  // finished for a full queue
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

PlannerService::PlannerService(Planner* planner, const ServiceLimits& limits,
                               AccessControl access, PlannerMetrics* metrics)
    : planner_(planner),
      max_watch_queue_(limits.max_watch_queue),
      read_budget_(std::make_shared<ReadBudget>(limits.read_budget_bytes, planner->clock(),
                                                limits.report_read_timeout)),
      read_cost_(limits.read_budget_bytes > 0
                     ? std::min(limits.read_cost_bytes, limits.read_budget_bytes)
                     : limits.read_cost_bytes),
      gate_(std::make_unique<Gate>(std::move(access), metrics)) {
  // On the planner's timer: streams that hold the read budget too long are cancelled, and the
  // budget's state is published.
  planner->AddTimerTask([budget = std::weak_ptr<ReadBudget>(read_budget_), metrics,
                         timeout = limits.report_read_timeout] {
    const std::shared_ptr<ReadBudget> live = budget.lock();
    if (live == nullptr) return;
    if (const int cancelled = live->CancelOverdue(); cancelled > 0) {
      spdlog::warn("cancelled {} ReportLoad stream(s) that held the read budget for more than {} "
                   "without a message arriving (--report-read-timeout)",
                   cancelled, absl::FormatDuration(timeout));
      if (metrics != nullptr) metrics->ReportReadsOverdue(cancelled);
    }
    if (metrics != nullptr) {
      const ReadBudget::State state = live->state();
      metrics->SetReportReads(state.holding, state.waiting);
    }
  });
}

PlannerService::~PlannerService() = default;

grpc::ServerUnaryReactor* PlannerService::CreateDeployment(grpc::CallbackServerContext* context,
                                                           const Raw* in, Raw* out) {
  return Serve<v1::CreateDeploymentRequest, v1::Deployment>(
      *gate_, context, in, out,
      [](const Credential& caller, const v1::CreateDeploymentRequest&) {
        return AccessControl::CheckAdmin(caller, "create deployments");
      },
      [this](const v1::CreateDeploymentRequest& request, const Credential&, auto done) {
        planner_->CreateDeployment(request.spec(), std::move(done));
      });
}

grpc::ServerUnaryReactor* PlannerService::GetDeployment(grpc::CallbackServerContext* context,
                                                        const Raw* in, Raw* out) {
  return Serve<v1::GetDeploymentRequest, v1::Deployment>(
      *gate_, context, in, out,
      [](const Credential& caller, const v1::GetDeploymentRequest& request) {
        return AccessControl::CheckRead(caller, "read deployments", request.name());
      },
      [this](const v1::GetDeploymentRequest& request, const Credential&, auto done) {
        done(planner_->GetDeployment(request.name()));
      });
}

grpc::ServerUnaryReactor* PlannerService::ListDeployments(grpc::CallbackServerContext* context,
                                                          const Raw* in, Raw* out) {
  return Serve<v1::ListDeploymentsRequest, v1::ListDeploymentsResponse>(
      *gate_, context, in, out,
      [](const Credential&, const v1::ListDeploymentsRequest&) { return absl::OkStatus(); },
      [this](const v1::ListDeploymentsRequest&, const Credential& caller, auto done) {
        v1::ListDeploymentsResponse response;
        for (v1::Deployment& deployment : planner_->ListDeployments()) {
          if (AccessControl::Sees(caller, deployment.spec().name())) {
            *response.add_deployments() = std::move(deployment);
          }
        }
        done(std::move(response));
      });
}

grpc::ServerUnaryReactor* PlannerService::DeleteDeployment(grpc::CallbackServerContext* context,
                                                           const Raw* in, Raw* out) {
  return Serve<v1::DeleteDeploymentRequest, v1::DeleteDeploymentResponse>(
      *gate_, context, in, out,
      [](const Credential& caller, const v1::DeleteDeploymentRequest&) {
        return AccessControl::CheckAdmin(caller, "delete deployments");
      },
      [this](const v1::DeleteDeploymentRequest& request, const Credential&, auto done) {
        if (request.name().empty()) {
          done(ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::FIELD_REQUIRED, "name",
                               "name is required"));
          return;
        }
        planner_->DeleteDeployment(request.name(),
                                   [done = std::move(done)](absl::Status status) mutable {
                                     done(EmptyOr<v1::DeleteDeploymentResponse>(status));
                                   });
      });
}

grpc::ServerReadReactor<grpc::ByteBuffer>* PlannerService::ReportLoad(
    grpc::CallbackServerContext* context, Raw* response) {
  return new ReportReactor(planner_, response, gate_.get(), read_budget_.get(), read_cost_,
                           context);
}

grpc::ServerUnaryReactor* PlannerService::GetPlan(grpc::CallbackServerContext* context,
                                                  const Raw* in, Raw* out) {
  return Serve<v1::GetPlanRequest, v1::Plan>(
      *gate_, context, in, out,
      [](const Credential& caller, const v1::GetPlanRequest& request) {
        return AccessControl::CheckRead(caller, "read plans", request.deployment());
      },
      [this](const v1::GetPlanRequest& request, const Credential&, auto done) {
        done(planner_->GetPlan(request.deployment(), request.version()));
      });
}

grpc::ServerUnaryReactor* PlannerService::ListPlans(grpc::CallbackServerContext* context,
                                                    const Raw* in, Raw* out) {
  return Serve<v1::ListPlansRequest, v1::ListPlansResponse>(
      *gate_, context, in, out,
      [](const Credential& caller, const v1::ListPlansRequest& request) {
        return AccessControl::CheckRead(caller, "read plans", request.deployment());
      },
      [this](const v1::ListPlansRequest& request, const Credential&, auto done) {
        auto plans = planner_->ListPlans(request.deployment(), request.include_maps());
        if (!plans.ok()) {
          done(plans.status());
          return;
        }
        v1::ListPlansResponse response;
        for (v1::Plan& plan : *plans) *response.add_plans() = std::move(plan);
        done(std::move(response));
      });
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* PlannerService::WatchPlans(
    grpc::CallbackServerContext* context) {
  return new WatchReactor(planner_, max_watch_queue_, gate_.get(), context);
}

grpc::ServerUnaryReactor* PlannerService::Rebalance(grpc::CallbackServerContext* context,
                                                    const Raw* in, Raw* out) {
  return Serve<v1::RebalanceRequest, v1::RebalanceResponse>(
      *gate_, context, in, out,
      [](const Credential& caller, const v1::RebalanceRequest&) {
        return AccessControl::CheckAdmin(caller, "rebalance");
      },
      [this](const v1::RebalanceRequest& request, const Credential&, auto done) {
        planner_->Rebalance(request.deployment(), request.dry_run(),
                            [done = std::move(done)](absl::StatusOr<v1::Plan> plan) mutable {
                              if (!plan.ok()) {
                                done(plan.status());
                                return;
                              }
                              v1::RebalanceResponse response;
                              *response.mutable_plan() = *std::move(plan);
                              done(std::move(response));
                            });
      });
}

grpc::ServerUnaryReactor* PlannerService::GetLoad(grpc::CallbackServerContext* context,
                                                  const Raw* in, Raw* out) {
  return Serve<v1::GetLoadRequest, v1::GetLoadResponse>(
      *gate_, context, in, out,
      [](const Credential& caller, const v1::GetLoadRequest& request) {
        return AccessControl::CheckRead(caller, "read load", request.deployment());
      },
      [this](const v1::GetLoadRequest& request, const Credential&, auto done) {
        done(planner_->GetLoad(request.deployment()));
      });
}

grpc::ServerUnaryReactor* PlannerService::PublishRendezvous(grpc::CallbackServerContext* context,
                                                            const Raw* in, Raw* out) {
  return Serve<v1::PublishRendezvousRequest, v1::PublishRendezvousResponse>(
      *gate_, context, in, out,
      [](const Credential& caller, const v1::PublishRendezvousRequest& request) {
        return AccessControl::CheckPublish(caller, "publish rendezvous values",
                                           request.deployment());
      },
      [this](const v1::PublishRendezvousRequest& request, const Credential&, auto done) {
        done(EmptyOr<v1::PublishRendezvousResponse>(planner_->PublishRendezvous(request)));
      });
}

grpc::ServerUnaryReactor* PlannerService::GetRendezvous(grpc::CallbackServerContext* context,
                                                        const Raw* in, Raw* out) {
  return Serve<v1::GetRendezvousRequest, v1::GetRendezvousResponse>(
      *gate_, context, in, out,
      [](const Credential& caller, const v1::GetRendezvousRequest& request) {
        return AccessControl::CheckRead(caller, "read rendezvous values", request.deployment());
      },
      [this](const v1::GetRendezvousRequest& request, const Credential&, auto done) {
        absl::StatusOr<std::string> value = planner_->GetRendezvous(request);
        if (!value.ok()) {
          done(value.status());
          return;
        }
        v1::GetRendezvousResponse response;
        response.set_value(*std::move(value));
        done(std::move(response));
      });
}

}  // namespace eplb::server
