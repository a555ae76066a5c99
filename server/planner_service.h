// PlannerService: the eplb.v1.Planner gRPC service on top of Planner, with the callback API.
//
// Reactors never block: queries and reports run inline (they only take a deployment's lock for
// microseconds); creating, deleting and rebalancing finish from the planner's worker thread.
// WatchPlans sends pre-serialized messages (one serialization per plan update, shared by every
// stream), each stream with its own bounded queue, so a slow reader never holds up the others.
#ifndef EPLB_SERVER_PLANNER_SERVICE_H_
#define EPLB_SERVER_PLANNER_SERVICE_H_

#include <memory>
#include <string>
#include <vector>

#include "eplb/v1/planner.grpc.pb.h"
#include "server/access.h"
#include "server/metrics.h"
#include "server/planner.h"
#include "server/read_budget.h"

namespace eplb::server {

struct PlannerServiceOptions {
  // An admin credential: every call may carry "authorization: Bearer <token>" metadata with it
  // (kMinTokenBytes … kMaxTokenBytes bytes). May be combined with `credentials`.
  std::string bearer_token;
  // Scoped credentials (see access.h); with none, no token and no client CA, every caller is
  // admin.
  std::vector<Credential> credentials;
  // Updates one watch stream may have queued (distinct versions) before it is ended with
  // RESOURCE_EXHAUSTED (WATCH_FELL_BEHIND) and its queue dropped; the client reconnects and gets
  // the current plans. A stream that has not taken its write in progress by the next update is
  // cancelled.
  int max_watch_queue = 64;
};

// Every method is raw (the service parses its own requests), so that a request that does not
// parse is refused with INVALID_ARGUMENT (MALFORMED_MESSAGE) and an ErrorDetail like any other.
using PlannerServiceBase = v1::Planner::WithRawCallbackMethod_CreateDeployment<
    v1::Planner::WithRawCallbackMethod_GetDeployment<
        v1::Planner::WithRawCallbackMethod_ListDeployments<
            v1::Planner::WithRawCallbackMethod_DeleteDeployment<
                v1::Planner::WithRawCallbackMethod_ReportLoad<
                    v1::Planner::WithRawCallbackMethod_GetPlan<
                        v1::Planner::WithRawCallbackMethod_ListPlans<
                            v1::Planner::WithRawCallbackMethod_WatchPlans<
                                v1::Planner::WithRawCallbackMethod_Rebalance<
                                    v1::Planner::WithRawCallbackMethod_GetLoad<
                                        v1::Planner::WithRawCallbackMethod_PublishRendezvous<
                                            v1::Planner::WithRawCallbackMethod_GetRendezvous<
                                                v1::Planner::Service>>>>>>>>>>>>;

// What the service may hold per call.
struct ServiceLimits {
  int max_watch_queue = 64;  // PlannerServiceOptions::max_watch_queue
  // Bytes ReportLoad messages may take while they are received and parsed, all streams together
  // (0: no limit), and what each message reserves of them: the wire bytes of the largest request
  // and its parsed form (report_wire.h bounds that to about twice the wire bytes).
  int64_t read_budget_bytes = 0;
  int64_t read_cost_bytes = (int64_t{6} << 20) + (512 << 10);
  // A stream holding a reservation this long without its message arriving is cancelled.
  absl::Duration report_read_timeout = absl::Seconds(30);
};

// Every call is first identified (UNAUTHENTICATED before the request is looked at), then
// parsed, then checked against the caller's scope (PERMISSION_DENIED, OUT_OF_SCOPE), then run.
// Refusals of either kind are counted (PlannerMetrics::AuthRefused) and logged at most once a
// second.
//
// `planner` and `metrics` (may be null) must outlive the service.
class PlannerService final : public PlannerServiceBase {
 public:
  PlannerService(Planner* planner, const ServiceLimits& limits, AccessControl access,
                 PlannerMetrics* metrics);
  ~PlannerService() override;

  using Unary = grpc::ServerUnaryReactor;
  using Raw = grpc::ByteBuffer;
  Unary* CreateDeployment(grpc::CallbackServerContext* context, const Raw* request,
                          Raw* response) override;
  Unary* GetDeployment(grpc::CallbackServerContext* context, const Raw* request,
                       Raw* response) override;
  Unary* ListDeployments(grpc::CallbackServerContext* context, const Raw* request,
                         Raw* response) override;
  Unary* DeleteDeployment(grpc::CallbackServerContext* context, const Raw* request,
                          Raw* response) override;
  // A message that does not parse ends the stream with INVALID_ARGUMENT (MALFORMED_MESSAGE)
  // instead of a silent end of input; each report is checked against the caller's scope. Each
  // message is received within the read budget (ServiceLimits): streams beyond it wait.
  grpc::ServerReadReactor<Raw>* ReportLoad(grpc::CallbackServerContext* context,
                                           Raw* response) override;
  Unary* GetPlan(grpc::CallbackServerContext* context, const Raw* request, Raw* response) override;
  Unary* ListPlans(grpc::CallbackServerContext* context, const Raw* request,
                   Raw* response) override;
  grpc::ServerBidiReactor<Raw, Raw>* WatchPlans(grpc::CallbackServerContext* context) override;
  Unary* Rebalance(grpc::CallbackServerContext* context, const Raw* request,
                   Raw* response) override;
  Unary* GetLoad(grpc::CallbackServerContext* context, const Raw* request, Raw* response) override;
  Unary* PublishRendezvous(grpc::CallbackServerContext* context, const Raw* request,
                           Raw* response) override;
  Unary* GetRendezvous(grpc::CallbackServerContext* context, const Raw* request,
                       Raw* response) override;

  // Identifies callers and records refusals; the stream reactors share it.
  class Gate;

 private:
  Planner* const planner_;
  const int max_watch_queue_;
  std::shared_ptr<ReadBudget> read_budget_;  // the planner's timer task holds a weak_ptr
  const int64_t read_cost_;
  std::unique_ptr<Gate> gate_;
};

}  // namespace eplb::server

#endif  // EPLB_SERVER_PLANNER_SERVICE_H_
