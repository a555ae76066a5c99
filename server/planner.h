// Planner: the planner service's logic, independent of the gRPC transport.
//
// It owns the registry of deployments (each a Deployment: its state and state machine), the state
// directory and a pool of worker threads, and orchestrates the two: what a deployment decides, the
// planner persists and carries out. The workers run everything slow or blocking: policies, file
// writes (fsync), ack timeouts and load checkpoints, in one lane per deployment name
// (LaneExecutor): one deployment's work runs in order, one task at a time, and never waits for
// another deployment's. The other methods are cheap, never block on I/O and may be called from
// gRPC reactor threads.
//
// Locking: a registry mutex guards the set of deployments; each deployment has its own mutex.
// Order: registry, then deployment, then a watch sink's own lock (inside WatchSink::Send).
#ifndef EPLB_SERVER_PLANNER_H_
#define EPLB_SERVER_PLANNER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "core/expert_map.h"
#include "eplb/v1/planner.pb.h"
#include "server/deployment.h"
#include "server/lanes.h"
#include "server/metrics.h"
#include "server/state_store.h"

namespace eplb::server {

struct PlannerOptions {
  // Policy of deployments created without one.
  std::string default_policy = "balanced";
  // Threads the balanced policy plans layers on (0: one per hardware thread). 0 ≤ plan_threads ≤
  // 1024; the plans do not depend on it.
  int32_t plan_threads = 4;
  // How often the smoothed load of a deployment that received reports is written to disk.
  absl::Duration checkpoint_interval = absl::Seconds(10);
  // Memory the deployments may hold together, in bytes, as their footprints (footprint.h) count
  // it; 0: no limit. A create that would exceed it is refused (RESOURCE_EXHAUSTED, OVER_BUDGET)
  // before anything is written, and the planner refuses to start on a state directory whose
  // deployments exceed it.
  int64_t deployment_memory_bytes = 0;
  // Deployments at most (a create beyond is OVER_BUDGET).
  int32_t max_deployments = 1000;
  // The server's limit on what it sends: shapes whose GetLoad response or plan would exceed it
  // are refused at create (INVALID_ARGUMENT, MESSAGE_WOULD_NOT_FIT).
  int64_t max_message_bytes = 64 << 20;
  // Worker threads: how many deployments plan, validate and write at once. 1 ≤ worker_threads ≤
  // 1024.
  int32_t worker_threads = 4;
  // Creates, deletes and rebalances one deployment name may have waiting for its lane; beyond,
  // RESOURCE_EXHAUSTED (OVER_BUDGET). Across all names at most 64 times as many.
  int32_t max_queued_per_deployment = 16;
};

class Planner {
 public:
  // A watch's registration, returned by Subscribe and handed back to Unsubscribe. It keeps the
  // deployment it watches reachable, also after a delete or re-create of the same name.
  class Subscription {
   private:
    friend class Planner;
    std::shared_ptr<Deployment> deployment_;
  };

  // Loads every deployment from `store` and starts the worker. `clock` and `metrics` must outlive
  // the planner; `metrics` may be null.
  static absl::StatusOr<std::unique_ptr<Planner>> Create(const PlannerOptions& options,
                                                         StateStore store, Clock* clock,
                                                         PlannerMetrics* metrics);
  // Shutdown() if not done.
  ~Planner();
  Planner(const Planner&) = delete;
  Planner& operator=(const Planner&) = delete;

  // ---- Run on the deployment's lane; `done` is called there (or inline when refused up front:
  // shutting down, or RESOURCE_EXHAUSTED (OVER_BUDGET) with max_queued_per_deployment calls of
  // that name waiting). ----
  using DeploymentCallback = std::function<void(absl::StatusOr<v1::Deployment>)>;
  using PlanCallback = std::function<void(absl::StatusOr<v1::Plan>)>;
  // Validates the spec (INVALID_ARGUMENT / FAILED_PRECONDITION naming the field), fills defaults,
  // persists the deployment with plan version 1 and returns it. Identical re-create: the existing
  // deployment; different spec: ALREADY_EXISTS.
  void CreateDeployment(const v1::DeploymentSpec& spec, DeploymentCallback done);
  void DeleteDeployment(const std::string& name, std::function<void(absl::Status)> done);
  // Plans from the current smoothed load. Publishes a new version (FAILED_PRECONDITION
  // PLAN_IN_FLIGHT while one is being staged), or with dry_run returns the candidate as version 0.
  void Rebalance(const std::string& name, bool dry_run, PlanCallback done);

  // ---- Cheap, any thread. ----
  absl::StatusOr<v1::Deployment> GetDeployment(const std::string& name) const;
  std::vector<v1::Deployment> ListDeployments() const;
  // version 0: the newest committed plan.
  absl::StatusOr<v1::Plan> GetPlan(const std::string& name, int64_t version) const;
  absl::StatusOr<std::vector<v1::Plan>> ListPlans(const std::string& name, bool include_maps) const;
  absl::StatusOr<v1::GetLoadResponse> GetLoad(const std::string& name) const;

  // Rendezvous values (see the proto): in memory, per deployment.
  absl::Status PublishRendezvous(const v1::PublishRendezvousRequest& request);
  absl::StatusOr<std::string> GetRendezvous(const v1::GetRendezvousRequest& request) const;

  // Validates and counts one load report. Errors name the field; a refused report changes nothing.
  absl::StatusOr<ReportOutcome> Report(const v1::LoadReport& report);

  // Registers `sink` and sends it the current plans. Until Unsubscribe (which the sink's owner
  // must call before destroying it), the sink receives every update. A known_version newer than
  // the deployment's latest (a client of a deleted deployment of the same name) is
  // FAILED_PRECONDITION.
  absl::StatusOr<Subscription> Subscribe(const v1::WatchPlansRequest::Subscribe& subscribe,
                                         WatchSink* sink);
  // After it returns, no call reaches `sink` any more.
  void Unsubscribe(const Subscription& subscription, WatchSink* sink);
  // Records a rank's acknowledgement; may commit or abort the plan in flight. An ack of a version
  // never published is INVALID_ARGUMENT; one of a pruned version is ignored.
  absl::Status Ack(const std::string& name, int32_t rank, const v1::WatchPlansRequest::Ack& ack);

  // Runs `task` on the timer thread at every tick: every 100 ms on a real clock, at every advance
  // of a fake one. Until Shutdown.
  void AddTimerTask(std::function<void()> task);
  Clock* clock() const { return clock_; }
  // This planner process, as ReportSummary.planner_instance tells reporters: random, non-zero,
  // different at every start.
  uint64_t instance() const { return instance_; }

  // Ends every watch with UNAVAILABLE; from now on creating, deleting, rebalancing and subscribing
  // fail with UNAVAILABLE (reports and queries still work, so in-flight RPCs can finish).
  // Idempotent.
  void BeginShutdown();
  // BeginShutdown, then stops the workers after their queued work and writes the load
  // checkpoints. Idempotent.
  void Shutdown();

 private:
  using Task = std::function<void()>;

  Planner(const PlannerOptions& options, StateStore store, Clock* clock, PlannerMetrics* metrics);
  absl::Status LoadState();
  std::shared_ptr<Deployment> Find(const std::string& name) const;
  absl::StatusOr<std::shared_ptr<Deployment>> FindOrError(const std::string& name) const;

  // Tags of coalesced lane tasks.
  enum LaneTag { kEvaluate = 0, kTick = 1 };
  // A caller's operation on `lane`: refused (done is not called, the error returned) when the lane
  // or the planner holds too many waiting.
  absl::Status PostOperation(const std::string& lane, Task task);
  void TimerLoop();
  // Dies unless called on the lane of `name`: the methods named *OnWorker, Tick and Publish own
  // a deployment's plan state and run only there.
  static void CheckOnLane(const std::string& name);
  // Ack timeout and checkpoint of one deployment, on its lane.
  void Tick(const std::shared_ptr<Deployment>& d);
  void Checkpoint(Deployment& d, bool force);

  void CreateOnWorker(const v1::DeploymentSpec& spec, const DeploymentCallback& done);
  void DeleteOnWorker(const std::string& name, const std::function<void(absl::Status)>& done);
  absl::StatusOr<v1::Plan> PlanOnWorker(const std::shared_ptr<Deployment>& d, PlanReason reason,
                                        bool dry_run);
  absl::StatusOr<v1::Plan> Publish(const std::shared_ptr<Deployment>& d, v1::Plan plan,
                                   ExpertMap map);
  // Queues the trigger evaluation a deployment said is due.
  void QueueEvaluation(const std::shared_ptr<Deployment>& d);
  // Persists and applies the decision on a plan in flight.
  void FinishPendingOnWorker(const std::shared_ptr<Deployment>& d, PlanDecision decision);

  const PlannerOptions options_;
  StateStore store_;
  Clock* const clock_;
  const uint64_t instance_ = Deployment::NewUid();
  PlannerMetrics* const metrics_;

  mutable absl::Mutex registry_mu_;
  std::map<std::string, std::shared_ptr<Deployment>> deployments_ ABSL_GUARDED_BY(registry_mu_);
  // The footprints of the deployments and of the creates admitted but not yet registered.
  int64_t reserved_bytes_ ABSL_GUARDED_BY(registry_mu_) = 0;
  int32_t creating_ ABSL_GUARDED_BY(registry_mu_) = 0;  // creates admitted, not yet registered
  bool shut_down_ ABSL_GUARDED_BY(registry_mu_) = false;
  bool worker_stopped_ ABSL_GUARDED_BY(registry_mu_) = false;

  std::unique_ptr<LaneExecutor> lanes_;
  std::atomic<int64_t> queued_operations_{0};  // caller operations waiting in all lanes

  // The timer thread: posts a Tick to every deployment's lane every 100 ms (a real clock) or when
  // a fake clock advances.
  absl::Mutex timer_mu_;
  bool timer_stopping_ ABSL_GUARDED_BY(timer_mu_) = false;
  bool woken_ ABSL_GUARDED_BY(timer_mu_) = false;
  std::vector<std::function<void()>> timer_tasks_ ABSL_GUARDED_BY(timer_mu_);
  absl::CondVar timer_cv_;
  std::thread timer_;

  // What the clock's advance callback reaches; cleared before the planner goes away, since the
  // clock may outlive it.
  struct WakeTarget {
    absl::Mutex mu;
    Planner* planner ABSL_GUARDED_BY(mu) = nullptr;
  };
  std::shared_ptr<WakeTarget> wake_target_ = std::make_shared<WakeTarget>();
};

}  // namespace eplb::server

#endif  // EPLB_SERVER_PLANNER_H_
