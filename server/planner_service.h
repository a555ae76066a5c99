// PlannerService: the eplb.v1.Planner gRPC service on top of Planner, with the callback API.
//
// Reactors never block: queries and reports run inline (they only take a deployment's lock for
// microseconds); creating, deleting and rebalancing finish from the planner's worker thread.
// WatchPlans sends pre-serialized messages (one serialization per plan update, shared by every
// stream), each stream with its own bounded queue, so a slow reader never holds up the others.
#ifndef EPLB_SERVER_PLANNER_SERVICE_H_
#define EPLB_SERVER_PLANNER_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "eplb/v1/planner.grpc.pb.h"
#include "server/planner.h"

namespace eplb::server {

// The longest bearer token (and authorization value) compared; longer tokens are refused at start.
inline constexpr size_t kMaxCredentialBytes = 4096;

struct PlannerServiceOptions {
  // When non-empty (at most kMaxCredentialBytes − 7 bytes), every call must carry
  // "authorization: Bearer <token>" metadata.
  std::string bearer_token;
  // Updates one watch stream may have queued (distinct versions) before it is ended with
  // RESOURCE_EXHAUSTED (WATCH_FELL_BEHIND) and its queue dropped; the client reconnects and gets
  // the current plans. A stream that has not taken its write in progress by the next update is
  // cancelled.
  int max_watch_queue = 64;
};

using PlannerServiceBase = v1::Planner::WithCallbackMethod_CreateDeployment<
    v1::Planner::WithCallbackMethod_GetDeployment<v1::Planner::WithCallbackMethod_ListDeployments<
        v1::Planner::WithCallbackMethod_DeleteDeployment<
            v1::Planner::WithRawCallbackMethod_ReportLoad<
                v1::Planner::WithCallbackMethod_GetPlan<v1::Planner::WithCallbackMethod_ListPlans<
                    v1::Planner::WithRawCallbackMethod_WatchPlans<
                        v1::Planner::WithCallbackMethod_Rebalance<
                            v1::Planner::WithCallbackMethod_GetLoad<
                                v1::Planner::WithCallbackMethod_PublishRendezvous<
                                    v1::Planner::WithCallbackMethod_GetRendezvous<
                                        v1::Planner::Service>>>>>>>>>>>>;

// `planner` must outlive the service.
class PlannerService final : public PlannerServiceBase {
 public:
  PlannerService(Planner* planner, PlannerServiceOptions options);

  grpc::ServerUnaryReactor* CreateDeployment(grpc::CallbackServerContext* context,
                                             const v1::CreateDeploymentRequest* request,
                                             v1::Deployment* response) override;
  grpc::ServerUnaryReactor* GetDeployment(grpc::CallbackServerContext* context,
                                          const v1::GetDeploymentRequest* request,
                                          v1::Deployment* response) override;
  grpc::ServerUnaryReactor* ListDeployments(grpc::CallbackServerContext* context,
                                            const v1::ListDeploymentsRequest* request,
                                            v1::ListDeploymentsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteDeployment(grpc::CallbackServerContext* context,
                                             const v1::DeleteDeploymentRequest* request,
                                             v1::DeleteDeploymentResponse* response) override;
  // Raw, to parse each report itself: a message that does not parse ends the stream with
  // INVALID_ARGUMENT (MALFORMED_MESSAGE) instead of a silent end of input.
  grpc::ServerReadReactor<grpc::ByteBuffer>* ReportLoad(grpc::CallbackServerContext* context,
                                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetPlan(grpc::CallbackServerContext* context,
                                    const v1::GetPlanRequest* request, v1::Plan* response) override;
  grpc::ServerUnaryReactor* ListPlans(grpc::CallbackServerContext* context,
                                      const v1::ListPlansRequest* request,
                                      v1::ListPlansResponse* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* WatchPlans(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* Rebalance(grpc::CallbackServerContext* context,
                                      const v1::RebalanceRequest* request,
                                      v1::RebalanceResponse* response) override;
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context,
                                    const v1::GetLoadRequest* request,
                                    v1::GetLoadResponse* response) override;
  grpc::ServerUnaryReactor* PublishRendezvous(grpc::CallbackServerContext* context,
                                              const v1::PublishRendezvousRequest* request,
                                              v1::PublishRendezvousResponse* response) override;
  grpc::ServerUnaryReactor* GetRendezvous(grpc::CallbackServerContext* context,
                                          const v1::GetRendezvousRequest* request,
                                          v1::GetRendezvousResponse* response) override;

 private:
  // The bearer-token check, the first thing every method does (the test
  // EveryMethodRefusesACallWithoutTheToken holds every method of the service to it, including
  // ones added later). gRPC's server interceptors can only cancel a call, not finish it with a
  // status and its ErrorDetail, so the check lives here.
  absl::Status Authenticate(grpc::CallbackServerContext* context) const;

  Planner* const planner_;
  const PlannerServiceOptions options_;
  mutable std::atomic<int64_t> refused_calls_{0};
  mutable std::atomic<int64_t> last_refusal_log_ms_{0};
};

}  // namespace eplb::server

#endif  // EPLB_SERVER_PLANNER_SERVICE_H_
