#include "server/planner.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/expert_map.h"
#include "core/load.h"
#include "core/metrics.h"
#include "core/policy.h"
#include "core/status_macros.h"
#include "proto/api_limits.h"
#include "proto/convert.h"
#include "server/api_errors.h"
#include "server/footprint.h"
#include "server/spec.h"
#include "spdlog/spdlog.h"

namespace eplb::server {

// ---- Creation and state loading -----------------------------------------------------------------

Planner::Planner(const PlannerOptions& options, StateStore store, Clock* clock,
                 PlannerMetrics* metrics)
    : options_(options), store_(std::move(store)), clock_(clock), metrics_(metrics) {}

absl::StatusOr<std::unique_ptr<Planner>> Planner::Create(const PlannerOptions& options,
                                                         StateStore store, Clock* clock,
                                                         PlannerMetrics* metrics) {
  if (auto policy = CreatePolicy(options.default_policy); !policy.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("default policy: ", policy.status().message()));
  }
  if (options.worker_threads < 1 || options.worker_threads > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("worker threads: ", options.worker_threads,
                                                   " is out of range [1, 1024]"));
  }
  if (options.max_queued_per_deployment < 1 || options.max_queued_per_deployment > 1 << 16) {
    return absl::InvalidArgumentError(absl::StrCat("operations queued per deployment: ",
                                                   options.max_queued_per_deployment,
                                                   " is out of range [1, 65536]"));
  }
  std::unique_ptr<Planner> planner(new Planner(options, std::move(store), clock, metrics));
  RETURN_IF_ERROR(planner->LoadState());
  {
    absl::MutexLock lock(&planner->wake_target_->mu);
    planner->wake_target_->planner = planner.get();
  }
  clock->OnAdvance([target = planner->wake_target_] {
    absl::MutexLock target_lock(&target->mu);
    if (target->planner == nullptr) return;
    absl::MutexLock lock(&target->planner->timer_mu_);
    target->planner->woken_ = true;
    target->planner->timer_cv_.Signal();
  });
  planner->lanes_ =
      std::make_unique<LaneExecutor>(options.worker_threads, options.max_queued_per_deployment);
  planner->timer_ = std::thread([planner = planner.get()] { planner->TimerLoop(); });
  return planner;
}

absl::Status Planner::LoadState() {
  ASSIGN_OR_RETURN(std::vector<LoadedDeployment> loaded, store_.LoadAll());
  absl::MutexLock registry_lock(&registry_mu_);
  for (LoadedDeployment& stored : loaded) {
    const std::string name = stored.record.spec().name();
    const auto corrupt = [&](const absl::Status& status) {
      return absl::DataLossError(absl::StrCat("state of deployment \"", name, "\" in ",
                                              store_.dir(), ": ", status.message()));
    };
    auto validated = ValidateSpec(stored.record.spec(), options_.default_policy,
                                  options_.plan_threads, SpecSource::kStored);
    if (!validated.ok()) return corrupt(validated.status());
    auto d = Deployment::Restore(*std::move(validated), std::move(stored), clock_->Now(),
                                 metrics_ != nullptr ? metrics_->AddDeployment(name) : nullptr);
    if (!d.ok()) return corrupt(d.status());
    const v1::Deployment state = (*d)->ToProto();
    const int64_t pending = (*d)->PendingVersion();
    spdlog::info("deployment {}: loaded, committed version {}, latest {}{}", name,
                 state.committed_version(), state.latest_version(),
                 pending != 0 ? absl::StrCat(", version ", pending, " in flight") : "");
    reserved_bytes_ += (*d)->footprint().total_bytes();
    deployments_.emplace(name, *std::move(d));
  }
  if (options_.deployment_memory_bytes > 0 && reserved_bytes_ > options_.deployment_memory_bytes) {
    std::vector<std::pair<int64_t, std::string>> largest;
    for (const auto& [name, d] : deployments_) {
      largest.emplace_back(d->footprint().total_bytes(), name);
    }
    std::sort(largest.rbegin(), largest.rend());
    std::string names;
    for (size_t i = 0; i < largest.size() && i < 8; ++i) {
      absl::StrAppend(&names, i == 0 ? "" : ", ", largest[i].second, " (",
                      FormatBytes(largest[i].first), ")");
    }
    return absl::ResourceExhaustedError(absl::StrCat(
        "the ", deployments_.size(), " deployments in ", store_.dir(), " need up to ",
        FormatBytes(reserved_bytes_), ", more than the memory budget of ",
        FormatBytes(options_.deployment_memory_bytes), " for deployments; largest: ", names,
        ". Start with a larger --max-memory, then delete deployments"));
  }
  if (static_cast<int64_t>(deployments_.size()) > options_.max_deployments) {
    return absl::ResourceExhaustedError(
        absl::StrCat(store_.dir(), " holds ", deployments_.size(),
                     " deployments, more than --max-deployments=", options_.max_deployments));
  }
  return absl::OkStatus();
}

Planner::~Planner() { Shutdown(); }

void Planner::BeginShutdown() {
  std::vector<std::shared_ptr<Deployment>> all;
  {
    absl::MutexLock lock(&registry_mu_);
    if (shut_down_) return;
    shut_down_ = true;
    for (const auto& [name, d] : deployments_) all.push_back(d);
  }
  for (const auto& d : all) d->Close();
}

void Planner::Shutdown() {
  BeginShutdown();
  std::vector<std::shared_ptr<Deployment>> all;
  {
    absl::MutexLock lock(&registry_mu_);
    if (worker_stopped_) return;
    worker_stopped_ = true;
    for (const auto& [name, d] : deployments_) all.push_back(d);
  }
  {
    absl::MutexLock lock(&timer_mu_);
    timer_stopping_ = true;
    timer_cv_.Signal();
  }
  if (timer_.joinable()) timer_.join();
  if (lanes_ != nullptr) lanes_->Stop();
  {
    absl::MutexLock lock(&wake_target_->mu);
    wake_target_->planner = nullptr;
  }
  for (const auto& d : all) Checkpoint(*d, /*force=*/true);
}

std::shared_ptr<Deployment> Planner::Find(const std::string& name) const {
  absl::MutexLock lock(&registry_mu_);
  const auto it = deployments_.find(name);
  return it == deployments_.end() ? nullptr : it->second;
}

absl::StatusOr<std::shared_ptr<Deployment>> Planner::FindOrError(const std::string& name) const {
  if (name.empty()) return Required("deployment");
  std::shared_ptr<Deployment> d = Find(name);
  if (d == nullptr) return DeploymentNotFound(name);
  return d;
}

// ---- Worker -------------------------------------------------------------------------------------

absl::Status Planner::PostOperation(const std::string& lane, Task task) {
  const int64_t limit = int64_t{64} * options_.max_queued_per_deployment;
  if (queued_operations_.fetch_add(1) >= limit) {
    queued_operations_.fetch_sub(1);
    return ErrorWithDetail(absl::StatusCode::kResourceExhausted, v1::OVER_BUDGET, "",
                           absl::StrCat("the planner has ", limit,
                                        " creates, deletes and rebalances waiting; retry later"));
  }
  const LaneExecutor::Posted posted = lanes_->Post(
      lane,
      [this, task = std::move(task)] {
        queued_operations_.fetch_sub(1);
        task();
      },
      /*bounded=*/true);
  if (posted == LaneExecutor::Posted::kQueued) return absl::OkStatus();
  queued_operations_.fetch_sub(1);
  if (posted == LaneExecutor::Posted::kStopped) return ShuttingDown();
  return ErrorWithDetail(
      absl::StatusCode::kResourceExhausted, v1::OVER_BUDGET, "",
      absl::StrCat("deployment ", Echo(lane), " has ", options_.max_queued_per_deployment,
                   " creates, deletes and rebalances waiting; retry later"));
}

void Planner::AddTimerTask(std::function<void()> task) {
  absl::MutexLock lock(&timer_mu_);
  timer_tasks_.push_back(std::move(task));
}

void Planner::TimerLoop() {
  std::vector<std::function<void()>> tasks;
  while (true) {
    {
      absl::MutexLock lock(&timer_mu_);
      if (!timer_stopping_ && !woken_) {
        // A fake clock wakes us through OnAdvance; a real one by the deadline (the next timer is
        // at most a second away in practice, and checking costs little).
        timer_cv_.WaitWithTimeout(&timer_mu_, absl::Milliseconds(clock_->IsReal() ? 100 : 1000));
      }
      if (timer_stopping_) return;
      woken_ = false;
      tasks = timer_tasks_;
    }
    for (const std::function<void()>& task : tasks) task();
    std::vector<std::shared_ptr<Deployment>> all;
    {
      absl::MutexLock lock(&registry_mu_);
      for (const auto& [name, d] : deployments_) all.push_back(d);
    }
    for (const auto& d : all) {
      lanes_->Post(d->name(), [this, d] { Tick(d); }, /*bounded=*/false, kTick);
    }
  }
}

void Planner::CheckOnLane(const std::string& name) {
  const std::string* lane = LaneExecutor::CurrentLane();
  EPLB_CHECK(lane != nullptr && *lane == name,
             "a planner method of one deployment ran outside that deployment's lane");
}

void Planner::Tick(const std::shared_ptr<Deployment>& d) {
  CheckOnLane(d->name());
  if (Find(d->name()) != d) return;  // deleted (and maybe created again) since it was posted
  if (std::optional<PlanDecision> expired = d->CheckAckTimeout(clock_->Now());
      expired.has_value()) {
    FinishPendingOnWorker(d, *std::move(expired));
  }
  Checkpoint(*d, /*force=*/false);
}

void Planner::Checkpoint(Deployment& d, bool force) {
  std::optional<state::v1::LoadCheckpoint> checkpoint =
      d.TakeCheckpoint(clock_->Now(), options_.checkpoint_interval, force);
  if (!checkpoint.has_value()) return;
  if (absl::Status status = store_.WriteLoad(d.name(), *checkpoint); !status.ok()) {
    spdlog::error("deployment {}: load checkpoint failed: {}", d.name(), status.ToString());
    d.CheckpointFailed();
  }
}

// ---- Deployments --------------------------------------------------------------------------------

void Planner::CreateDeployment(const v1::DeploymentSpec& spec, DeploymentCallback done) {
  {
    absl::MutexLock lock(&registry_mu_);
    if (shut_down_) return done(ShuttingDown());
  }
  if (absl::Status posted =
          PostOperation(spec.name(), [this, spec, done] { CreateOnWorker(spec, done); });
      !posted.ok()) {
    done(posted);
  }
}

void Planner::CreateOnWorker(const v1::DeploymentSpec& input, const DeploymentCallback& done) {
  CheckOnLane(input.name());
  auto validated = ValidateSpec(input, options_.default_policy, options_.plan_threads);
  if (!validated.ok()) return done(validated.status());
  const std::string name = validated->spec.name();
  if (std::shared_ptr<Deployment> existing = Find(name); existing != nullptr) {
    const std::string field = FirstDifference(existing->spec(), validated->spec);
    if (field.empty()) return done(existing->ToProto());
    return done(ErrorWithDetail(
        absl::StatusCode::kAlreadyExists, v1::DEPLOYMENT_CONFLICT, absl::StrCat("spec.", field),
        absl::StrCat("deployment \"", name, "\" already exists with a different ", field)));
  }

  const DeploymentShape shape = validated->shape;
  // Admission, before anything is written: messages that fit, the deployment cap and the budget.
  const MessageSizes sizes = ShapeMessageSizes(shape);
  for (const auto& [what, bytes] :
       {std::pair<const char*, int64_t>{"a GetLoad response", sizes.get_load_bytes},
        {"a plan", sizes.plan_bytes}}) {
    if (bytes > options_.max_message_bytes) {
      return done(ErrorWithDetail(
          absl::StatusCode::kInvalidArgument, v1::MESSAGE_WOULD_NOT_FIT, "spec.shape",
          absl::StrCat("spec.shape ", shape.DebugString(), " makes ", what, " of up to ",
                       FormatBytes(bytes), ", more than the message limit of ",
                       FormatBytes(options_.max_message_bytes), " (--max-message-bytes)")));
    }
  }
  const Footprint footprint =
      DeploymentFootprint(shape, validated->smoothing, validated->spec.plan_history());
  {
    absl::MutexLock lock(&registry_mu_);
    // Creates of other names run in parallel: each reserves its place and bytes here, under the
    // lock, and gives them back if it fails.
    if (static_cast<int64_t>(deployments_.size()) + creating_ >= options_.max_deployments) {
      return done(ErrorWithDetail(
          absl::StatusCode::kResourceExhausted, v1::OVER_BUDGET, "",
          absl::StrCat("the planner holds ", deployments_.size(), " deployments",
                       creating_ > 0 ? absl::StrCat(" and creates ", creating_) : "",
                       ", its limit (--max-deployments)")));
    }
    if (options_.deployment_memory_bytes > 0 &&
        reserved_bytes_ + footprint.total_bytes() > options_.deployment_memory_bytes) {
      return done(ErrorWithDetail(
          absl::StatusCode::kResourceExhausted, v1::OVER_BUDGET, "spec",
          absl::StrCat(
              "deployment \"", name, "\" needs up to ", footprint.DebugString(), "; ",
              FormatBytes(std::max<int64_t>(0, options_.deployment_memory_bytes - reserved_bytes_)),
              " of the planner's ", FormatBytes(options_.deployment_memory_bytes),
              " for deployments are left (--max-memory)")));
    }
    reserved_bytes_ += footprint.total_bytes();
    ++creating_;
  }
  const auto unreserve = [&] {
    absl::MutexLock lock(&registry_mu_);
    reserved_bytes_ -= footprint.total_bytes();
    --creating_;
  };
  // The policy's probe takes memory of the order of the footprint just reserved.
  if (absl::Status probe = ProbePolicy(*validated); !probe.ok()) {
    unreserve();
    return done(probe);
  }

  // Version 1: the initial map, or the contiguous one.
  std::string first_policy = "initial_map";
  std::optional<ExpertMap> first_map = std::move(validated->initial_map);
  if (!first_map.has_value()) {
    first_policy = "contiguous";
    auto contiguous = CreatePolicy(first_policy);
    EPLB_CHECK(contiguous.ok(), contiguous.status().ToString());
    auto map = (*contiguous)->Plan({shape, nullptr, nullptr});
    if (!map.ok()) {
      unreserve();
      return done(map.status());
    }
    first_map = *std::move(map);
  }
  const absl::Time now = clock_->Now();
  v1::Plan plan = Deployment::FirstPlan(name, shape, *first_map, first_policy, now);
  state::v1::StoredDeployment record;
  *record.mutable_spec() = validated->spec;
  TimeToProto(now, record.mutable_create_time());
  record.set_uid(Deployment::NewUid());
  if (absl::Status status = store_.CreateDeployment(record, plan); !status.ok()) {
    unreserve();
    return done(ErrorWithDetail(
        absl::StatusCode::kInternal, v1::STATE_IO, "",
        absl::StrCat("cannot persist deployment \"", name, "\": ", status.message())));
  }
  std::shared_ptr<Deployment> d = Deployment::Create(
      *std::move(validated), record.uid(), now, std::move(plan), *std::move(first_map),
      metrics_ != nullptr ? metrics_->AddDeployment(name) : nullptr);
  {
    absl::MutexLock lock(&registry_mu_);
    --creating_;  // its bytes stay reserved: d->footprint() is the footprint admitted above
    deployments_.emplace(name, d);
  }
  spdlog::info("deployment {}: created ({}, policy {}, commit {}, up to {})", name,
               shape.DebugString(), d->spec().policy(),
               v1::CommitMode_Name(d->spec().commit_mode()), d->footprint().DebugString());
  done(d->ToProto());
}

void Planner::DeleteDeployment(const std::string& name, std::function<void(absl::Status)> done) {
  {
    absl::MutexLock lock(&registry_mu_);
    if (shut_down_) return done(ShuttingDown());
  }
  if (absl::Status posted = PostOperation(name, [this, name, done] { DeleteOnWorker(name, done); });
      !posted.ok()) {
    done(posted);
  }
}

void Planner::DeleteOnWorker(const std::string& name,
                             const std::function<void(absl::Status)>& done) {
  CheckOnLane(name);
  auto d = FindOrError(name);
  if (!d.ok()) return done(d.status());
  if (absl::Status status = store_.DeleteDeployment(name); !status.ok()) {
    return done(ErrorWithDetail(
        absl::StatusCode::kInternal, v1::STATE_IO, "",
        absl::StrCat("cannot delete deployment \"", name, "\": ", status.message())));
  }
  (*d)->MarkDeleted();
  {
    absl::MutexLock lock(&registry_mu_);
    reserved_bytes_ -= (*d)->footprint().total_bytes();
    deployments_.erase(name);
  }
  spdlog::info("deployment {}: deleted", name);
  done(absl::OkStatus());
}

void Planner::Rebalance(const std::string& name, bool dry_run, PlanCallback done) {
  {
    absl::MutexLock lock(&registry_mu_);
    if (shut_down_) return done(ShuttingDown());
  }
  auto d = FindOrError(name);
  if (!d.ok()) return done(d.status());
  if (absl::Status posted = PostOperation(
          name, [this, d = *std::move(d), dry_run, done] {
            done(PlanOnWorker(d, PlanReason::kOnDemand, dry_run));
          });
      !posted.ok()) {
    done(posted);
  }
}

void Planner::QueueEvaluation(const std::shared_ptr<Deployment>& d) {
  // Coalesced: one evaluation waiting reads the newest load when it runs, and covers this one.
  lanes_->Post(
      d->name(),
      [this, d] {
        auto plan = PlanOnWorker(d, PlanReason::kTrigger, /*dry_run=*/false);
        if (!plan.ok() && plan.status().code() != absl::StatusCode::kNotFound) {
          spdlog::warn("deployment {}: automatic rebalance failed: {}", d->name(),
                       plan.status().ToString());
        }
      },
      /*bounded=*/false, kEvaluate);
}

absl::StatusOr<v1::Plan> Planner::PlanOnWorker(const std::shared_ptr<Deployment>& d,
                                               PlanReason reason, bool dry_run) {
  CheckOnLane(d->name());
  ASSIGN_OR_RETURN(PlanInput input, d->BeginPlan(reason, dry_run));
  const v1::DeploymentSpec& spec = d->spec();
  const absl::Time start = absl::Now();
  auto candidate = d->policy().Plan({d->shape(), &input.load, &input.current});
  if (!candidate.ok()) return Tagged(candidate.status(), v1::POLICY_CANNOT_SERVE, "spec.policy");
  const ExpertMap* evaluated[] = {&input.current, &*candidate};
  const std::vector<MapQuality> qualities = EvaluateMaps(evaluated, input.load);
  const MapQuality& before = qualities[0];
  const MapQuality& after = qualities[1];
  const Migration migration = ComputeMigration(input.current, *candidate, spec.bytes_per_expert());
  if (DeploymentMetrics* metrics = d->metrics()) {
    metrics->ObserveRebalanceSeconds(absl::ToDoubleSeconds(absl::Now() - start));
    metrics->SetBalancedness(before.mean_balancedness);
  }

  v1::Plan plan;
  plan.set_deployment(d->name());
  plan.set_parent_version(input.parent_version);
  plan.set_reason(reason == PlanReason::kTrigger ? v1::TRIGGER : v1::ON_DEMAND);
  plan.set_policy(spec.policy());
  ExpertMapToProto(*candidate, plan.mutable_map());
  plan.set_map_hash(candidate->Hash());
  TimeToProto(clock_->Now(), plan.mutable_create_time());
  v1::PlanMetrics& metrics = *plan.mutable_metrics();
  metrics.set_balancedness_before(before.mean_balancedness);
  metrics.set_balancedness_after(after.mean_balancedness);
  metrics.set_max_over_bound(after.mean_max_over_bound);
  metrics.set_max_over_count_bound(after.mean_max_over_count_bound);
  metrics.set_slots_changed(migration.slots_changed);
  metrics.set_experts_moved(migration.experts_received);
  metrics.set_bytes_to_move(migration.bytes_moved);

  if (reason == PlanReason::kTrigger) {
    const double gain = after.mean_balancedness - before.mean_balancedness;
    if (*candidate == input.current || gain < spec.trigger().min_gain()) {
      spdlog::debug("deployment {}: candidate gains {:.4f} balancedness, min_gain {}: kept",
                    d->name(), gain, spec.trigger().min_gain());
      return plan;
    }
  }
  if (dry_run) return plan;
  return Publish(d, std::move(plan), *std::move(candidate));
}

absl::StatusOr<v1::Plan> Planner::Publish(const std::shared_ptr<Deployment>& d, v1::Plan plan,
                                          ExpertMap map) {
  CheckOnLane(d->name());
  const int64_t version = d->NextVersion();
  if (version > api::kMaxVersion) {
    return ErrorWithDetail(
        absl::StatusCode::kResourceExhausted, v1::FIELD_OUT_OF_RANGE, "",
        absl::StrCat("deployment \"", d->name(), "\" has used every version up to ",
                     api::kMaxVersion, "; create it again"));
  }
  const int64_t committed = d->CommittedVersion();
  const auto io_error = [&](const absl::Status& status) {
    return ErrorWithDetail(absl::StatusCode::kInternal, v1::STATE_IO, "",
                           absl::StrCat("cannot persist version ", version, " of deployment \"",
                                        d->name(), "\": ", status.message()));
  };
  // The counter first: once it is on disk the version is spent, whatever happens next.
  if (absl::Status status = store_.WriteVersionCounter(d->name(), version, committed);
      !status.ok()) {
    return io_error(status);
  }
  d->SpendVersion(version);
  plan = d->Versioned(std::move(plan), version);
  if (absl::Status status = store_.WritePlan(plan); !status.ok()) return io_error(status);
  // Committed at once: committed when the counter records it (a crash before leaves the plan
  // file COMMITTED but unrecorded, which a restart reads as aborted).
  if (plan.state() == v1::COMMITTED) {
    if (absl::Status status = store_.WriteVersionCounter(d->name(), version, version);
        !status.ok()) {
      return io_error(status);
    }
  }
  const absl::Time publish_time = clock_->Now();
  TimeToProto(publish_time, plan.mutable_publish_time());
  ASSIGN_OR_RETURN(std::vector<int64_t> pruned, d->AddPlan(plan, std::move(map), publish_time));
  for (const int64_t old : pruned) {
    if (absl::Status status = store_.RemovePlan(d->name(), old); !status.ok()) {
      spdlog::warn("deployment {}: cannot remove pruned plan {}: {}", d->name(), old,
                   status.ToString());
    }
  }
  spdlog::info(
      "deployment {}: published version {} ({}, {}): balancedness {:.4f} -> {:.4f}, {} "
      "experts to move",
      d->name(), version, v1::PlanReason_Name(plan.reason()), v1::PlanState_Name(plan.state()),
      plan.metrics().balancedness_before(), plan.metrics().balancedness_after(),
      plan.metrics().experts_moved());
  return plan;
}

void Planner::FinishPendingOnWorker(const std::shared_ptr<Deployment>& d, PlanDecision decision) {
  CheckOnLane(d->name());
  std::optional<v1::Plan> record = d->PrepareFinish(decision);
  if (!record.has_value()) return;
  if (decision.state == v1::COMMITTED) {
    // The commit record first: a commit that is not on disk is not a commit, and the ranks keep
    // the previous plan.
    const int64_t last_version = d->NextVersion() - 1;
    if (absl::Status status = store_.WriteVersionCounter(d->name(), last_version, decision.version);
        !status.ok()) {
      spdlog::error("deployment {}: cannot record the commit of version {}: {}", d->name(),
                    decision.version, status.ToString());
      decision.state = v1::ABORTED;
      decision.reason = absl::StrCat("the commit could not be persisted: ", status.message());
      record->set_state(v1::ABORTED);
      record->set_abort_reason(decision.reason);
    }
  }
  // The plan file follows. If it cannot be written, a commit stands (recorded above) and an abort
  // stands in memory (after a restart the plan is in flight again and re-staged).
  if (absl::Status status = store_.WritePlan(*record); !status.ok()) {
    spdlog::error("deployment {}: cannot persist the {} state of version {}: {}", d->name(),
                  v1::PlanState_Name(decision.state), decision.version, status.ToString());
  }
  if (d->FinishPlan(decision)) QueueEvaluation(d);
}

// ---- Queries ------------------------------------------------------------------------------------

absl::StatusOr<v1::Deployment> Planner::GetDeployment(const std::string& name) const {
  if (name.empty()) return Required("name");
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(name));
  return d->ToProto();
}

std::vector<v1::Deployment> Planner::ListDeployments() const {
  std::vector<std::shared_ptr<Deployment>> all;
  {
    absl::MutexLock lock(&registry_mu_);
    for (const auto& [name, d] : deployments_) all.push_back(d);
  }
  std::vector<v1::Deployment> result;
  for (const auto& d : all) result.push_back(d->ToProto());
  return result;
}

absl::StatusOr<v1::Plan> Planner::GetPlan(const std::string& name, int64_t version) const {
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(name));
  return d->GetPlan(version);
}

absl::StatusOr<std::vector<v1::Plan>> Planner::ListPlans(const std::string& name,
                                                         bool include_maps) const {
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(name));
  return d->ListPlans(include_maps);
}

absl::StatusOr<v1::GetLoadResponse> Planner::GetLoad(const std::string& name) const {
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(name));
  return d->GetLoad();
}

absl::Status Planner::PublishRendezvous(const v1::PublishRendezvousRequest& request) {
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(request.deployment()));
  return d->PublishRendezvous(request.key(), request.value());
}

absl::StatusOr<std::string> Planner::GetRendezvous(const v1::GetRendezvousRequest& request) const {
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(request.deployment()));
  return d->GetRendezvous(request.key());
}

// ---- Reports, watches and acknowledgements ------------------------------------------------------

absl::StatusOr<ReportOutcome> Planner::Report(const v1::LoadReport& report) {
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(report.deployment()));
  absl::StatusOr<ReportOutcome> outcome = d->Report(report, clock_->Now());
  if (outcome.ok() && outcome->evaluate) QueueEvaluation(d);
  return outcome;
}

absl::StatusOr<Planner::Subscription> Planner::Subscribe(
    const v1::WatchPlansRequest::Subscribe& subscribe, WatchSink* sink) {
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(subscribe.deployment()));
  RETURN_IF_ERROR(d->Subscribe(subscribe, sink));
  Subscription subscription;
  subscription.deployment_ = std::move(d);
  return subscription;
}

void Planner::Unsubscribe(const Subscription& subscription, WatchSink* sink) {
  if (subscription.deployment_ != nullptr) subscription.deployment_->Unsubscribe(sink);
}

absl::Status Planner::Ack(const std::string& name, int32_t rank,
                          const v1::WatchPlansRequest::Ack& ack) {
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(name));
  ASSIGN_OR_RETURN(std::optional<PlanDecision> decision, d->RecordAck(rank, ack, clock_->Now()));
  if (decision.has_value()) {
    // Not bounded: at most one decision per plan in flight.
    lanes_->Post(d->name(),
                 [this, d, decision = *std::move(decision)] { FinishPendingOnWorker(d, decision); });
  }
  return absl::OkStatus();
}

}  // namespace eplb::server
