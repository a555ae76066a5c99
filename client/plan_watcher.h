// PlanWatcher: connects one rank's PlacementAgent to the planner. It keeps a WatchPlans stream
// open (reconnecting with backoff while the planner is unreachable or restarting), hands every plan
// it receives to a callback (PlacementAgent::OfferPlan) and sends the agent's acknowledgements on
// the stream.
//
// Usage, with the agent acknowledging through the watcher:
//   auto watcher = PlanWatcher::Create(client, {.deployment = "m", .rank = r});
//   agent_options.on_ack = [w = watcher->get()](const AgentAck& ack) { w->Ack(ack); };
//   auto agent = PlacementAgent::Create(agent_options, comm, device);
//   (*watcher)->Start([a = agent->get()](const AgentPlan& plan) { a->OfferPlan(plan); });
//   ...
//   (*watcher)->Stop();  // no more plans reach the agent
//   agent->reset();      // may still acknowledge
//   watcher->reset();
//
// Errors: while the planner is unreachable or restarting (UNAVAILABLE, DEADLINE_EXCEEDED and the
// other transient codes) the watcher reconnects with jittered exponential backoff (backoff.h). An
// error that reconnecting cannot fix stops it and reaches `on_error`: NOT_FOUND (the deployment was
// deleted), UNAUTHENTICATED and PERMISSION_DENIED (the token), INVALID_ARGUMENT, OUT_OF_RANGE,
// UNIMPLEMENTED and FAILED_PRECONDITION. One exception: when the planner does not know the version
// the watcher last received (the deployment was deleted and created again), the watcher
// subscribes again from version 0 and delivers the new deployment's plans.
//
// Thread-safe. Plans are delivered on the watcher's thread, in the order the planner sent them.
#ifndef EPLB_CLIENT_PLAN_WATCHER_H_
#define EPLB_CLIENT_PLAN_WATCHER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/planner_client.h"
#include "core/plan_delivery.h"

namespace eplb::client {

struct PlanWatcherOptions {
  std::string deployment;  // required
  int32_t rank = 0;        // ≥ 0
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  // Called once, on the watcher's thread, with the error that stopped the watcher (see above); no
  // plan is delivered after it. May be empty. Must not call Stop() or destroy the watcher.
  std::function<void(const absl::Status&)> on_error;
};

class PlanWatcher {
 public:
  // `client` must outlive the watcher. INVALID_ARGUMENT for an empty deployment, a negative rank
  // or a non-positive backoff.
  static absl::StatusOr<std::unique_ptr<PlanWatcher>> Create(PlannerClient* client,
                                                             PlanWatcherOptions options);
  ~PlanWatcher();  // Stop()
  PlanWatcher(const PlanWatcher&) = delete;
  PlanWatcher& operator=(const PlanWatcher&) = delete;

  // Opens the stream and delivers plans to `on_plan` from now on. Call once.
  void Start(std::function<void(const AgentPlan&)> on_plan);
  // Ends the stream and joins the thread; no callback runs after it returns. Idempotent.
  void Stop();

  // Sends an acknowledgement on the current stream, or after the next reconnect (the newest one
  // per version is kept while disconnected). Never blocks on the network for long.
  void Ack(const AgentAck& ack);

  struct Stats {
    int64_t plans_received = 0;
    int64_t acks_sent = 0;
    int64_t reconnects = 0;
    // How the plans' maps arrived, over every stream so far (PlannerClient::Watch::MapArrivals).
    int64_t maps_whole = 0;
    int64_t maps_delta = 0;    // as the changed layers, applied to a held map
    int64_t maps_held = 0;     // a state change of a plan whose map was held
    int64_t maps_fetched = 0;  // with GetPlan
    bool connected = false;
    std::string last_error;
    absl::Status stopped_by;  // the error that stopped the watcher; OK while it runs
  };
  Stats stats() const;

 private:
  PlanWatcher(PlannerClient* client, PlanWatcherOptions options);
  void Run();
  // Sends the queued acks on `watch`; keeps those that fail. REQUIRES: mu_ held.
  void FlushAcksLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  PlannerClient* const client_;
  const PlanWatcherOptions options_;
  std::function<void(const AgentPlan&)> on_plan_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<PlannerClient::Watch> watch_ ABSL_GUARDED_BY(mu_);
  std::map<int64_t, AgentAck> unsent_acks_ ABSL_GUARDED_BY(mu_);  // by version
  std::map<int64_t, std::string> nonces_ ABSL_GUARDED_BY(mu_);    // last nonce per version
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace eplb::client

#endif  // EPLB_CLIENT_PLAN_WATCHER_H_
