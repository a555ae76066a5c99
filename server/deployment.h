// Deployment: one deployment's state and its state machine, behind its own mutex.
//
// It holds the spec and shape (immutable), the smoothed load with each rank's report bookkeeping,
// the retained plan history with the ranks' acknowledgements, the watchers and the rendezvous
// values, and it is the only code that changes them. The plan state machine:
//   - Version 1 is COMMITTED at creation. Each later version is published PENDING (COMMITTED at
//     once with commit: immediate), and at most one version is PENDING, always newer than the
//     committed one.
//   - A PENDING version becomes COMMITTED once every rank acknowledged it STAGED or ACTIVE with the
//     plan's map hash, or ABORTED at the first FAILED ack, the first ack with another map hash, or
//     the ack timeout. The decision is made once (RecordAck or CheckAckTimeout return it and mark
//     the version finishing); FinishPlan applies it after the caller persisted it. A commit is
//     re-checked against the acks that arrived meanwhile (PrepareFinish).
//   - The history keeps spec.plan_history versions, never pruning the committed or pending one.
//
// It does no I/O, starts no threads and never blocks: the planner persists what these methods hand
// it and calls the next step (the split that keeps fsyncs and policy runs out of the lock). The
// steps the planner runs on its worker (trigger evaluation, commit, abort) are returned as values,
// not queued from here.
//
// Thread-safe: every method takes the deployment's lock. WatchSink calls are made with it held.
#ifndef EPLB_SERVER_DEPLOYMENT_H_
#define EPLB_SERVER_DEPLOYMENT_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/expert_map.h"
#include "core/load.h"
#include "core/policy.h"
#include "core/shape.h"
#include "core/smoothed_load.h"
#include "eplb/state/v1/state.pb.h"
#include "eplb/v1/planner.pb.h"
#include "server/footprint.h"
#include "server/metrics.h"
#include "server/spec.h"
#include "server/state_store.h"

namespace eplb::server {

// One plan update for watchers in each form a stream may send, serialized once and shared by every
// stream that sends it (each a serialized v1::WatchPlansResponse).
struct WatchUpdate {
  int64_t version = 0;
  v1::PlanState state = v1::PLAN_STATE_UNSPECIFIED;
  grpc::ByteBuffer bytes;  // with the whole map
  // For streams subscribed with accept_map_delta:
  // every layer, compact (a MapDelta without a base);
  grpc::ByteBuffer compact_bytes;
  // the map as the layers that differ from version `delta_base`'s (the plan's parent); 0 when
  // that map is no longer held and there is no such form;
  int64_t delta_base = 0;
  grpc::ByteBuffer delta_bytes;
  // Without the map's rows (a delta against the plan's own version), for a stream that has
  // already carried this version's map.
  grpc::ByteBuffer state_bytes;
};

// The receiving end of a watch (the gRPC stream). Both methods are called with the deployment's
// lock held: they must not block and must not call back into the deployment or the planner.
class WatchSink {
 public:
  virtual ~WatchSink() = default;
  virtual void Send(std::shared_ptr<const WatchUpdate> update) = 0;
  // The watch ends (deployment deleted, planner shutting down). No Send follows.
  virtual void Close(const absl::Status& status) = 0;
};

struct ReportOutcome {
  bool duplicate = false;     // already counted; not counted again
  int64_t last_sequence = 0;  // the rank's highest accepted sequence in this session
  // The automatic trigger is due: the caller runs an evaluation (BeginPlan with kTrigger). Set at
  // most once until that evaluation begins.
  bool evaluate = false;
};

// The end of a plan in flight: COMMITTED, or ABORTED with the reason.
struct PlanDecision {
  int64_t version = 0;
  v1::PlanState state = v1::PLAN_STATE_UNSPECIFIED;
  std::string reason;  // ABORTED only
};

// What a planning run starts from, taken under the lock.
struct PlanInput {
  LoadMatrix load;  // the smoothed load now
  ExpertMap current;
  int64_t parent_version = 0;  // the committed version `current` belongs to
};

enum class PlanReason { kTrigger, kOnDemand };

class Deployment {
 public:
  // How a plan's rank acks stand, kept up to date ack by ack so that an ack costs O(1) in the
  // number of ranks.
  struct AckTally {
    int32_t by_state[4] = {0, 0, 0, 0};  // unacknowledged, STAGED, ACTIVE, FAILED
    int32_t good = 0;                    // STAGED or ACTIVE with the plan's hash
    int32_t bad = 0;                     // FAILED, or holding another map
  };
  // A new deployment: `first_plan` (made by FirstPlan and persisted by the caller) is version 1,
  // committed, with `first_map`.
  static std::shared_ptr<Deployment> Create(ValidatedSpec validated, uint64_t uid,
                                            absl::Time create_time, v1::Plan first_plan,
                                            ExpertMap first_map,
                                            std::shared_ptr<DeploymentMetrics> metrics);
  // A deployment as the state store loaded it. The committed version is the one the version
  // counter records (for older state, the newest COMMITTED plan): its plan is COMMITTED whatever
  // its file says, and newer plans that say COMMITTED become ABORTED (their commit was never
  // recorded). The newest PENDING plan newer than the committed one stays in flight (the ranks
  // re-acknowledge it); other PENDING plans become ABORTED. A load checkpoint that does not fit
  // the shape is ignored with a warning. DATA_LOSS (without the deployment's name) for a plan
  // whose map does not fit the shape or does not match its map_hash, or no committed plan.
  static absl::StatusOr<std::shared_ptr<Deployment>> Restore(
      ValidatedSpec validated, LoadedDeployment stored, absl::Time now,
      std::shared_ptr<DeploymentMetrics> metrics);

  // The record of version 1 of a new deployment: COMMITTED, reason INITIAL, one unacknowledged
  // RankAck per rank.
  static v1::Plan FirstPlan(const std::string& name, const DeploymentShape& shape,
                            const ExpertMap& map, const std::string& policy, absl::Time now);
  // A uid for a new deployment: random, never 0.
  static uint64_t NewUid();
  // The uid of a deployment stored before uids existed: stable across restarts.
  static uint64_t LegacyUid(const std::string& name, absl::Time created);

  Deployment(const Deployment&) = delete;
  Deployment& operator=(const Deployment&) = delete;

  const std::string& name() const { return spec_.name(); }
  uint64_t uid() const { return uid_; }
  const v1::DeploymentSpec& spec() const { return spec_; }
  const DeploymentShape& shape() const { return shape_; }
  const PlacementPolicy& policy() const { return *policy_; }
  DeploymentMetrics* metrics() const { return metrics_.get(); }
  // The most memory it holds (computed from the spec).
  const Footprint& footprint() const { return footprint_; }

  // ---- Reports ----
  // Validates `report` (errors name the field; a refused report changes nothing) and counts it
  // once: a retry of an accepted report (same session, sequence and content) is a duplicate.
  // last_step may move the newest step ahead by at most api::kMaxStepJump plus
  // api::kMaxStepsPerSecond per second since it last moved (as of `now`). NOT_FOUND once deleted.
  absl::StatusOr<ReportOutcome> Report(const v1::LoadReport& report, absl::Time now);

  // ---- Plans ----
  // Takes the input of a planning run. kTrigger ends the queued evaluation and moves the
  // evaluation frontier. FAILED_PRECONDITION PLAN_IN_FLIGHT while a version is pending (unless
  // `dry_run`); NOT_FOUND once deleted.
  absl::StatusOr<PlanInput> BeginPlan(PlanReason reason, bool dry_run);
  // Publishing a plan, in three steps the caller interleaves with persisting:
  //   version = NextVersion(); persist the version counter; SpendVersion(version);
  //   record = Versioned(plan, version); persist record; AddPlan(record, map, now);
  //   remove the pruned plans' files.
  int64_t NextVersion() const;
  // `version` is on disk as the version counter: it is never handed out again.
  void SpendVersion(int64_t version);
  // `plan` as version `version`: PENDING (COMMITTED with commit: immediate), one unacknowledged
  // RankAck per rank.
  v1::Plan Versioned(v1::Plan plan, int64_t version) const;
  // Adds the versioned plan, makes it pending (or committed), sends it to the watchers and prunes
  // the history. Returns the versions pruned. NOT_FOUND once deleted.
  // REQUIRES: no version pending unless immediate; plan.version() spent and not yet added.
  absl::StatusOr<std::vector<int64_t>> AddPlan(const v1::Plan& plan, ExpertMap map, absl::Time now);

  // ---- Acknowledgements ----
  // Records rank `rank`'s ack. INVALID_ARGUMENT/FAILED_PRECONDITION naming the field for a bad
  // ack (observer rank, state, version never published, malformed nonce or one of another
  // version); an ack of a pruned version, or whose nonce names an earlier deployment of the same
  // name, is ignored. Returns the decision on the pending version when this ack made it.
  absl::StatusOr<std::optional<PlanDecision>> RecordAck(int32_t rank,
                                                        const v1::WatchPlansRequest::Ack& ack,
                                                        absl::Time now);
  // ABORTED (naming up to 16 ranks that did not stage it) when the pending version's ack timeout
  // passed at `now` and no decision was made yet.
  std::optional<PlanDecision> CheckAckTimeout(absl::Time now);
  // The record to persist for `decision`, or nothing when the version is no longer pending. A
  // COMMITTED decision becomes ABORTED if an ack that arrived since failed the plan.
  std::optional<v1::Plan> PrepareFinish(PlanDecision& decision) const;
  // Applies `decision` (persisted, or an abort that could not be) and sends it to the watchers.
  // Returns whether the automatic trigger is due (see ReportOutcome::evaluate).
  bool FinishPlan(const PlanDecision& decision);

  // ---- Watchers ----
  // Registers `sink` and sends it the committed plan (if newer than known_version) and the pending
  // one. Until Unsubscribe, the sink receives every update. Errors: rank out of [-1, R),
  // known_version negative or newer than the latest (FAILED_PRECONDITION PLAN_NOT_FOUND: a client
  // of a deleted deployment of the same name), RESOURCE_EXHAUSTED (TOO_MANY_WATCHERS) with
  // MaxWatchers() watches open, UNAVAILABLE once closed, NOT_FOUND once deleted.
  absl::Status Subscribe(const v1::WatchPlansRequest::Subscribe& subscribe, WatchSink* sink);
  // Watches a deployment may have open: two per rank (a rank's stream and its replacement while
  // the old one is noticed dead) and 1024 observers.
  int64_t MaxWatchers() const { return 2 * int64_t{shape_.num_ranks} + 1024; }
  // After it returns, no call reaches `sink` any more. A sink already closed is not an error.
  void Unsubscribe(WatchSink* sink);
  // Deleted: every watch ends with NOT_FOUND; reports, subscriptions, plans and rendezvous refuse.
  void MarkDeleted();
  // Shutting down: every watch ends with UNAVAILABLE and new subscriptions are refused.
  void Close();

  // ---- Load checkpoints ----
  // The load checkpoint to write when the load changed since the last one and `interval` passed
  // (or `force`); nothing otherwise. Counts as written: CheckpointFailed() undoes that.
  std::optional<state::v1::LoadCheckpoint> TakeCheckpoint(absl::Time now, absl::Duration interval,
                                                          bool force);
  void CheckpointFailed();

  // ---- Queries ----
  v1::Deployment ToProto() const;
  // The version in flight; 0 when none.
  int64_t PendingVersion() const;
  int64_t CommittedVersion() const;
  // version 0: the committed one. NOT_FOUND PLAN_NOT_FOUND for a version never published or
  // pruned.
  absl::StatusOr<v1::Plan> GetPlan(int64_t version) const;
  // Newest first.
  std::vector<v1::Plan> ListPlans(bool include_maps) const;
  v1::GetLoadResponse GetLoad() const;

  // ---- Rendezvous ----
  absl::Status PublishRendezvous(const std::string& key, const std::string& value);
  absl::StatusOr<std::string> GetRendezvous(const std::string& key) const;

 private:
  struct PlanEntry {
    v1::Plan plan;  // with its map and R rank acks, ranks(r).rank() == r
    ExpertMap map;
    absl::Time publish_time;
    bool finishing = false;  // a decision was handed out and not yet applied
    std::shared_ptr<const WatchUpdate> update;
    AckTally tally;  // of plan.ranks()
  };
  struct RankReportState {
    uint64_t session = 0;
    int64_t last_sequence = 0;                        // 0: nothing accepted in this session
    std::deque<std::pair<int64_t, uint64_t>> recent;  // (sequence, hash), oldest first
    // The largest sequence dropped from `recent` (0: none). Sequences may be accepted out of
    // order, so this is not the oldest remembered one.
    int64_t forgotten_through = 0;
    int64_t reported_through = -1;
  };

  Deployment(ValidatedSpec validated, SmoothedLoad load, absl::Time create_time, uint64_t uid,
             std::shared_ptr<DeploymentMetrics> metrics);

  absl::StatusOr<ReportOutcome> CountReport(const v1::LoadReport& report, absl::Time now);
  // The newest step every rank has reported; −1 until each rank reported once. O(1).
  int64_t Frontier() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves rank `rank`'s reported_through to `step`, keeping reported_through_counts_.
  void SetReportedThrough(int32_t rank, int64_t step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t StepsSeen() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks an evaluation queued and returns true when the automatic trigger is due.
  bool TriggerDue() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The message watchers get for `entry` as it is now.
  void RefreshUpdate(PlanEntry& entry) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Broadcast(const PlanEntry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CloseWatchers(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateVersionMetrics() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateRankMetrics() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status NotFound() const;

  const uint64_t uid_;  // see StoredDeployment.uid
  const v1::DeploymentSpec spec_;
  const DeploymentShape shape_;
  const SlotLayout layout_;
  const std::unique_ptr<const PlacementPolicy> policy_;
  const absl::Time create_time_;
  const std::shared_ptr<DeploymentMetrics> metrics_;  // may be null
  const Footprint footprint_;

  mutable absl::Mutex mu_;
  SmoothedLoad load_ ABSL_GUARDED_BY(mu_);
  std::vector<RankReportState> ranks_ ABSL_GUARDED_BY(mu_);
  // How many ranks have each reported_through value: the frontier is the first key.
  std::map<int64_t, int32_t> reported_through_counts_ ABSL_GUARDED_BY(mu_);
  std::vector<double> scratch_ ABSL_GUARDED_BY(mu_);  // L × E, one report converted to experts
  int64_t last_evaluated_step_ ABSL_GUARDED_BY(mu_) = -1;  // the frontier at the last evaluation
  bool evaluation_queued_ ABSL_GUARDED_BY(mu_) = false;
  std::map<int64_t, PlanEntry> plans_ ABSL_GUARDED_BY(mu_);  // retained history
  int64_t last_version_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t committed_version_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t pending_version_ ABSL_GUARDED_BY(mu_) = 0;  // 0: none in flight
  absl::flat_hash_set<WatchSink*> watchers_ ABSL_GUARDED_BY(mu_);
  bool deleted_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;  // shutting down: no new watchers
  std::map<std::string, std::string> rendezvous_ ABSL_GUARDED_BY(mu_);
  absl::Time newest_step_time_ ABSL_GUARDED_BY(mu_);  // when load_.last_step() last moved
  bool load_dirty_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time last_checkpoint_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace eplb::server

#endif  // EPLB_SERVER_DEPLOYMENT_H_
