#include "server/planner.h"

#include <grpcpp/impl/codegen/proto_utils.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/expert_map.h"
#include "core/load.h"
#include "core/metrics.h"
#include "core/policy.h"
#include "core/smoothed_load.h"
#include "core/status_macros.h"
#include "proto/api_limits.h"
#include "proto/convert.h"
#include "server/api_errors.h"
#include "server/spec.h"
#include "spdlog/spdlog.h"

namespace eplb::server {
namespace {

// The API's limits and defaults: proto/api_limits.h.
using api::kMaxCount;
using api::kMaxErrorDetailBytes;
using api::kMaxSequence;
using api::kMaxStep;
using api::kMaxStepsPerReport;
constexpr size_t kRecentSequences = 1024;  // sequence numbers remembered per rank (planner.proto)

absl::Status DeploymentNotFound(absl::string_view name) {
  return ErrorWithDetail(absl::StatusCode::kNotFound, v1::DEPLOYMENT_NOT_FOUND, "deployment",
                         absl::StrCat("deployment \"", name, "\" not found"));
}

absl::Status ShuttingDown() { return absl::UnavailableError("the planner is shutting down"); }

// A content hash of a report (everything but deployment, rank, sequence and session), to tell a
// retry from a different report reusing a sequence number. Word-wise multiply-xorshift: fast on
// the hot path and stable across processes (it is checkpointed).
uint64_t ReportHash(const v1::LoadReport& report) {
  uint64_t hash = 0x9e3779b97f4a7c15ULL;
  const auto mix = [&hash](uint64_t word) {
    hash ^= word + 0x9e3779b97f4a7c15ULL + (hash << 6) + (hash >> 2);
    hash *= 0xff51afd7ed558ccdULL;
    hash ^= hash >> 33;
  };
  mix(static_cast<uint64_t>(report.first_step()));
  mix(static_cast<uint64_t>(report.last_step()));
  mix(static_cast<uint64_t>(report.plan_version()));
  mix(static_cast<uint64_t>(report.counts_kind()));
  for (const v1::LayerCounts& layer : report.layers()) {
    mix(static_cast<uint64_t>(layer.counts_size()));
    for (const double count : layer.counts()) mix(std::bit_cast<uint64_t>(count));
  }
  return hash;
}

std::string Hex(uint64_t value) { return absl::StrFormat("%016x", value); }

// A deployment's uid (StoredDeployment.uid): random and never 0.
uint64_t NewUid() {
  std::random_device device;
  for (;;) {
    const uint64_t uid = (uint64_t{device()} << 32) ^ device();
    if (uid != 0) return uid;
  }
}

// The uid of a deployment stored before uids existed: stable across restarts.
uint64_t LegacyUid(absl::string_view name, absl::Time created) {
  uint64_t hash = 0xcbf29ce484222325;  // FNV-1a
  for (const unsigned char c : absl::StrCat(name, "@", absl::ToUnixNanos(created))) {
    hash = (hash ^ c) * 0x100000001b3;
  }
  return hash == 0 ? 1 : hash;
}

// What the ranks' acknowledgements of a plan in flight decide: ABORTED with the reason at the first
// rank (in rank order) that failed or holds another map, COMMITTED once every rank staged (or
// already serves) the plan's map, nothing yet otherwise.
std::optional<std::pair<v1::PlanState, std::string>> AckDecision(const v1::Plan& plan) {
  bool all_staged = true;
  for (const v1::RankAck& ack : plan.ranks()) {
    if (ack.state() == v1::FAILED) {
      return std::make_pair(v1::ABORTED,
                            absl::StrCat("rank ", ack.rank(), " failed: ", ack.error_detail()));
    }
    if (ack.hash_mismatch()) {
      return std::make_pair(
          v1::ABORTED, absl::StrCat("rank ", ack.rank(), " holds map hash ", Hex(ack.map_hash()),
                                    ", the plan's is ", Hex(plan.map_hash())));
    }
    all_staged = all_staged && (ack.state() == v1::STAGED || ack.state() == v1::ACTIVE);
  }
  if (all_staged) return std::make_pair(v1::COMMITTED, std::string());
  return std::nullopt;
}

// The nonce of a plan update: "<uid, 16 hex digits>.<version>".
std::string PlanNonce(uint64_t uid, int64_t version) {
  return absl::StrCat(Hex(uid), ".", version);
}

std::optional<std::pair<uint64_t, int64_t>> ParsePlanNonce(absl::string_view nonce) {
  const size_t dot = nonce.find('.');
  uint64_t uid = 0;
  int64_t version = 0;
  if (dot != 16 || !absl::SimpleHexAtoi(nonce.substr(0, 16), &uid) ||
      !absl::SimpleAtoi(nonce.substr(17), &version) || version < 1) {
    return std::nullopt;
  }
  return std::make_pair(uid, version);
}

}  // namespace

// ---- Deployment ---------------------------------------------------------------------------------

namespace {

struct PlanEntry {
  v1::Plan plan;  // with its map and R rank acks
  ExpertMap map;
  absl::Time publish_time;
  bool finishing = false;  // a commit or abort is queued on the worker
  std::shared_ptr<const WatchUpdate> update;
};

struct RankReportState {
  uint64_t session = 0;
  int64_t last_sequence = 0;                        // 0: nothing accepted in this session
  std::deque<std::pair<int64_t, uint64_t>> recent;  // (sequence, hash), oldest first
  int64_t reported_through = -1;
};

}  // namespace

struct Planner::Deployment {
  Deployment(ValidatedSpec validated, SmoothedLoad smoothed, absl::Time created, uint64_t uid,
             std::shared_ptr<DeploymentMetrics> deployment_metrics)
      : uid(uid),
        spec(std::move(validated.spec)),
        shape(validated.shape),
        layout(shape.num_physical_experts, shape.num_ranks),
        policy(std::move(validated.policy)),
        create_time(created),
        metrics(std::move(deployment_metrics)),
        load(std::move(smoothed)),
        ranks(static_cast<size_t>(shape.num_ranks)),
        scratch(static_cast<size_t>(shape.num_layers) * shape.num_logical_experts) {}

  const std::string& name() const { return spec.name(); }

  // Immutable after construction.
  const uint64_t uid;  // see StoredDeployment.uid
  const v1::DeploymentSpec spec;
  const DeploymentShape shape;
  const SlotLayout layout;
  const std::unique_ptr<const PlacementPolicy> policy;
  const absl::Time create_time;
  const std::shared_ptr<DeploymentMetrics> metrics;  // null without PlannerMetrics

  mutable absl::Mutex mu;
  SmoothedLoad load ABSL_GUARDED_BY(mu);
  std::vector<RankReportState> ranks ABSL_GUARDED_BY(mu);
  std::vector<double> scratch ABSL_GUARDED_BY(mu);       // L × E, one report converted to experts
  int64_t last_evaluated_step ABSL_GUARDED_BY(mu) = -1;  // the frontier at the last evaluation
  bool evaluation_queued ABSL_GUARDED_BY(mu) = false;
  std::map<int64_t, PlanEntry> plans ABSL_GUARDED_BY(mu);  // retained history
  int64_t last_version ABSL_GUARDED_BY(mu) = 0;
  int64_t committed_version ABSL_GUARDED_BY(mu) = 0;
  int64_t pending_version ABSL_GUARDED_BY(mu) = 0;  // 0: none in flight
  std::vector<WatchSink*> watchers ABSL_GUARDED_BY(mu);
  bool deleted ABSL_GUARDED_BY(mu) = false;
  std::map<std::string, std::string> rendezvous ABSL_GUARDED_BY(mu);
  bool closed ABSL_GUARDED_BY(mu) = false;  // the planner is shutting down: no new watchers
  bool load_dirty ABSL_GUARDED_BY(mu) = false;
  absl::Time last_checkpoint ABSL_GUARDED_BY(mu) = absl::InfinitePast();

  // The newest step every rank has reported; −1 until each rank reported once.
  int64_t Frontier() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    int64_t frontier = INT64_MAX;
    for (const RankReportState& rank : ranks) frontier = std::min(frontier, rank.reported_through);
    return frontier;
  }
  int64_t StepsSeen() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return load.empty() ? 0 : load.last_step() - load.first_step() + 1;
  }

  // The message watchers get for `entry` as it is now.
  void RefreshUpdate(PlanEntry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    v1::WatchPlansResponse response;
    v1::Plan& plan = *response.mutable_plan();
    plan = entry.plan;
    plan.clear_ranks();
    response.set_nonce(PlanNonce(uid, entry.plan.version()));
    auto update = std::make_shared<WatchUpdate>();
    update->version = entry.plan.version();
    update->state = entry.plan.state();
    bool own_buffer = false;
    const grpc::Status status = grpc::SerializationTraits<v1::WatchPlansResponse>::Serialize(
        response, &update->bytes, &own_buffer);
    EPLB_CHECK(status.ok(), "cannot serialize a plan: ", status.error_message());
    entry.update = std::move(update);
  }

  // Ends every watch with `status`; the sinks are forgotten (their Unsubscribe finds nothing).
  void CloseWatchers(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (WatchSink* sink : watchers) sink->Close(status);
    if (metrics) metrics->AddWatchers(-static_cast<int>(watchers.size()));
    watchers.clear();
  }

  void Broadcast(const PlanEntry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (WatchSink* sink : watchers) sink->Send(entry.update);
  }

  void UpdateVersionMetrics() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (metrics) metrics->SetVersions(committed_version, last_version);
  }

  void UpdateRankMetrics() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!metrics || plans.empty()) return;
    int64_t counts[4] = {0, 0, 0, 0};
    for (const v1::RankAck& ack : plans.rbegin()->second.plan.ranks()) {
      switch (ack.state()) {
        case v1::STAGED:
          ++counts[1];
          break;
        case v1::ACTIVE:
          ++counts[2];
          break;
        case v1::FAILED:
          ++counts[3];
          break;
        default:
          ++counts[0];
          break;
      }
    }
    metrics->SetRankStates(counts[0], counts[1], counts[2], counts[3]);
  }

  v1::Deployment ToProto() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    v1::Deployment result;
    *result.mutable_spec() = spec;
    // The initial map (up to 64 MiB) is plan version 1; it is not echoed back.
    result.mutable_spec()->clear_initial_map();
    TimeToProto(create_time, result.mutable_create_time());
    result.set_committed_version(committed_version);
    result.set_latest_version(last_version);
    result.set_steps_seen(StepsSeen());
    return result;
  }

  state::v1::LoadCheckpoint Checkpoint() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    state::v1::LoadCheckpoint checkpoint;
    checkpoint.set_smoothed_load(load.Serialize());
    for (const RankReportState& rank : ranks) {
      state::v1::RankReports& out = *checkpoint.add_ranks();
      out.set_session(rank.session);
      out.set_last_sequence(rank.last_sequence);
      for (const auto& [sequence, hash] : rank.recent) {
        out.add_recent_sequences(sequence);
        out.add_recent_hashes(hash);
      }
      out.set_reported_through(rank.reported_through);
    }
    checkpoint.set_last_evaluated_step(last_evaluated_step);
    return checkpoint;
  }
};

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
  std::unique_ptr<Planner> planner(new Planner(options, std::move(store), clock, metrics));
  RETURN_IF_ERROR(planner->LoadState());
  {
    absl::MutexLock lock(&planner->wake_target_->mu);
    planner->wake_target_->planner = planner.get();
  }
  clock->OnAdvance([target = planner->wake_target_] {
    absl::MutexLock target_lock(&target->mu);
    if (target->planner == nullptr) return;
    absl::MutexLock lock(&target->planner->queue_mu_);
    target->planner->woken_ = true;
    target->planner->queue_cv_.Signal();
  });
  planner->worker_ = std::thread([planner = planner.get()] { planner->WorkerLoop(); });
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
    const DeploymentShape shape = validated->shape;
    auto smoothed =
        SmoothedLoad::Create(shape.num_layers, shape.num_logical_experts, validated->smoothing);
    if (!smoothed.ok()) return corrupt(smoothed.status());
    std::optional<state::v1::LoadCheckpoint> checkpoint = std::move(stored.load);
    if (checkpoint.has_value()) {
      auto restored = SmoothedLoad::Restore(checkpoint->smoothed_load(), shape.num_layers,
                                            shape.num_logical_experts, validated->smoothing);
      if (restored.ok() && checkpoint->ranks_size() == shape.num_ranks) {
        smoothed = std::move(restored);
      } else {
        spdlog::warn("deployment {}: ignoring its load checkpoint: {}", name,
                     restored.ok() ? "wrong number of ranks" : restored.status().ToString());
        checkpoint.reset();
      }
    }
    const absl::Time created = TimeFromProto(stored.record.create_time());
    const uint64_t uid = stored.record.uid() != 0 ? stored.record.uid() : LegacyUid(name, created);
    auto d =
        std::make_shared<Deployment>(*std::move(validated), *std::move(smoothed), created, uid,
                                     metrics_ != nullptr ? metrics_->AddDeployment(name) : nullptr);
    absl::MutexLock lock(&d->mu);
    d->last_version = stored.last_version;
    for (v1::Plan& plan : stored.plans) {
      auto map = ExpertMapFromProto(plan.map(), absl::StrCat("plan ", plan.version(), " map"));
      if (!map.ok()) return corrupt(map.status());
      if (absl::Status fits = map->CheckFits(shape); !fits.ok()) return corrupt(fits);
      const int64_t version = plan.version();
      d->last_version = std::max(d->last_version, version);
      if (plan.state() == v1::COMMITTED) d->committed_version = version;
      PlanEntry entry{std::move(plan), *std::move(map), clock_->Now()};
      d->plans.emplace(version, std::move(entry));
    }
    if (d->committed_version == 0) return corrupt(absl::DataLossError("no committed plan"));
    for (auto& [version, entry] : d->plans) {
      if (entry.plan.state() == v1::PENDING) {
        if (version > d->committed_version && d->pending_version == 0) {
          d->pending_version = version;  // ranks re-acknowledge it when they reconnect
        } else {
          entry.plan.set_state(v1::ABORTED);
          entry.plan.set_abort_reason("superseded while the planner was down");
        }
      }
      d->RefreshUpdate(entry);
    }
    if (checkpoint.has_value()) {
      for (int32_t r = 0; r < shape.num_ranks; ++r) {
        const state::v1::RankReports& in = checkpoint->ranks(r);
        RankReportState& out = d->ranks[r];
        out.session = in.session();
        out.last_sequence = in.last_sequence();
        for (int i = 0; i < in.recent_sequences_size() && i < in.recent_hashes_size(); ++i) {
          out.recent.emplace_back(in.recent_sequences(i), in.recent_hashes(i));
        }
        out.reported_through = in.reported_through();
      }
      d->last_evaluated_step = checkpoint->last_evaluated_step();
    }
    d->last_checkpoint = clock_->Now();
    d->UpdateVersionMetrics();
    d->UpdateRankMetrics();
    spdlog::info("deployment {}: loaded, committed version {}, latest {}{}", name,
                 d->committed_version, d->last_version,
                 d->pending_version != 0
                     ? absl::StrCat(", version ", d->pending_version, " in flight")
                     : "");
    deployments_.emplace(name, std::move(d));
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
  for (const auto& d : all) {
    absl::MutexLock lock(&d->mu);
    d->closed = true;
    d->CloseWatchers(ShuttingDown());
  }
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
    absl::MutexLock lock(&queue_mu_);
    stopping_ = true;
    queue_cv_.Signal();
  }
  if (worker_.joinable()) worker_.join();
  {
    absl::MutexLock lock(&wake_target_->mu);
    wake_target_->planner = nullptr;
  }
  for (const auto& d : all) Checkpoint(*d, /*force=*/true);
}

std::shared_ptr<Planner::Deployment> Planner::Find(const std::string& name) const {
  absl::MutexLock lock(&registry_mu_);
  const auto it = deployments_.find(name);
  return it == deployments_.end() ? nullptr : it->second;
}

absl::StatusOr<std::shared_ptr<Planner::Deployment>> Planner::FindOrError(
    const std::string& name) const {
  if (name.empty()) return Required("deployment");
  std::shared_ptr<Deployment> d = Find(name);
  if (d == nullptr) return DeploymentNotFound(name);
  return d;
}

// ---- Worker -------------------------------------------------------------------------------------

void Planner::Post(Task task) {
  absl::MutexLock lock(&queue_mu_);
  queue_.push_back(std::move(task));
  queue_cv_.Signal();
}

void Planner::WorkerLoop() {
  worker_id_.store(std::this_thread::get_id());
  while (true) {
    Task task;
    {
      absl::MutexLock lock(&queue_mu_);
      if (queue_.empty() && !stopping_ && !woken_) {
        // A fake clock wakes us through OnAdvance; a real one by the deadline (the next timer is
        // at most a second away in practice, and checking costs little).
        queue_cv_.WaitWithTimeout(&queue_mu_, absl::Milliseconds(clock_->IsReal() ? 100 : 1000));
      }
      woken_ = false;
      if (!queue_.empty()) {
        task = std::move(queue_.front());
        queue_.pop_front();
      } else if (stopping_) {
        return;
      }
    }
    if (task) task();
    CheckTimers();
  }
}

void Planner::CheckOnWorker() const {
  EPLB_CHECK(std::this_thread::get_id() == worker_id_.load(),
             "a worker-only planner method ran on another thread");
}

void Planner::CheckTimers() {
  CheckOnWorker();
  std::vector<std::shared_ptr<Deployment>> all;
  {
    absl::MutexLock lock(&registry_mu_);
    for (const auto& [name, d] : deployments_) all.push_back(d);
  }
  const absl::Time now = clock_->Now();
  for (const auto& d : all) {
    int64_t expired = 0;
    std::string reason;
    {
      absl::MutexLock lock(&d->mu);
      if (d->pending_version != 0) {
        PlanEntry& entry = d->plans.at(d->pending_version);
        const absl::Time deadline =
            entry.publish_time + absl::Milliseconds(d->spec.ack_timeout_ms());
        if (!entry.finishing && now >= deadline) {
          entry.finishing = true;
          expired = d->pending_version;
          std::vector<int32_t> missing;
          for (const v1::RankAck& ack : entry.plan.ranks()) {
            if (ack.state() != v1::STAGED && ack.state() != v1::ACTIVE)
              missing.push_back(ack.rank());
          }
          reason = absl::StrCat(
              "ack timeout after ", d->spec.ack_timeout_ms(), " ms: ", missing.size(), " of ",
              d->shape.num_ranks, " ranks did not stage it (ranks ",
              absl::StrJoin(missing.begin(), missing.begin() + std::min<size_t>(missing.size(), 16),
                            ", "),
              missing.size() > 16 ? ", …)" : ")");
        }
      }
    }
    if (expired != 0) FinishPendingOnWorker(d, expired, v1::ABORTED, reason);
    Checkpoint(*d, /*force=*/false);
  }
}

void Planner::Checkpoint(Deployment& d, bool force) {
  state::v1::LoadCheckpoint checkpoint;
  {
    absl::MutexLock lock(&d.mu);
    if (d.deleted || !d.load_dirty) return;
    const absl::Time now = clock_->Now();
    if (!force && now - d.last_checkpoint < options_.checkpoint_interval) return;
    checkpoint = d.Checkpoint();
    d.load_dirty = false;
    d.last_checkpoint = now;
  }
  if (absl::Status status = store_.WriteLoad(d.name(), checkpoint); !status.ok()) {
    spdlog::error("deployment {}: load checkpoint failed: {}", d.name(), status.ToString());
    absl::MutexLock lock(&d.mu);
    d.load_dirty = true;
  }
}

// ---- Deployments --------------------------------------------------------------------------------

void Planner::CreateDeployment(const v1::DeploymentSpec& spec, DeploymentCallback done) {
  {
    absl::MutexLock lock(&registry_mu_);
    if (shut_down_) return done(ShuttingDown());
  }
  Post([this, spec, done = std::move(done)] { CreateOnWorker(spec, done); });
}

void Planner::CreateOnWorker(const v1::DeploymentSpec& input, const DeploymentCallback& done) {
  CheckOnWorker();
  auto validated = ValidateSpec(input, options_.default_policy, options_.plan_threads);
  if (!validated.ok()) return done(validated.status());
  const std::string name = validated->spec.name();
  if (std::shared_ptr<Deployment> existing = Find(name); existing != nullptr) {
    const std::string field = FirstDifference(existing->spec, validated->spec);
    absl::MutexLock lock(&existing->mu);
    if (field.empty()) return done(existing->ToProto());
    return done(ErrorWithDetail(
        absl::StatusCode::kAlreadyExists, v1::DEPLOYMENT_CONFLICT, absl::StrCat("spec.", field),
        absl::StrCat("deployment \"", name, "\" already exists with a different ", field)));
  }

  // Version 1: the initial map, or the contiguous one.
  const DeploymentShape shape = validated->shape;
  std::string first_policy = "initial_map";
  std::optional<ExpertMap> first_map = std::move(validated->initial_map);
  if (!first_map.has_value()) {
    first_policy = "contiguous";
    auto contiguous = CreatePolicy(first_policy);
    EPLB_CHECK(contiguous.ok(), contiguous.status().ToString());
    auto map = (*contiguous)->Plan({shape, nullptr, nullptr});
    if (!map.ok()) return done(map.status());
    first_map = *std::move(map);
  }
  const absl::Time now = clock_->Now();
  v1::Plan plan;
  plan.set_deployment(name);
  plan.set_version(1);
  plan.set_state(v1::COMMITTED);
  plan.set_reason(v1::INITIAL);
  plan.set_policy(first_policy);
  ExpertMapToProto(*first_map, plan.mutable_map());
  plan.set_map_hash(first_map->Hash());
  TimeToProto(now, plan.mutable_create_time());
  for (int32_t r = 0; r < shape.num_ranks; ++r) {
    v1::RankAck& ack = *plan.add_ranks();
    ack.set_rank(r);
    ack.set_version(1);
  }
  state::v1::StoredDeployment record;
  *record.mutable_spec() = validated->spec;
  TimeToProto(now, record.mutable_create_time());
  record.set_uid(NewUid());
  if (absl::Status status = store_.CreateDeployment(record, plan); !status.ok()) {
    return done(ErrorWithDetail(
        absl::StatusCode::kInternal, v1::STATE_IO, "",
        absl::StrCat("cannot persist deployment \"", name, "\": ", status.message())));
  }
  auto smoothed =
      SmoothedLoad::Create(shape.num_layers, shape.num_logical_experts, validated->smoothing);
  EPLB_CHECK(smoothed.ok(), smoothed.status().ToString());
  auto d =
      std::make_shared<Deployment>(*std::move(validated), *std::move(smoothed), now, record.uid(),
                                   metrics_ != nullptr ? metrics_->AddDeployment(name) : nullptr);
  v1::Deployment result;
  {
    absl::MutexLock lock(&d->mu);
    PlanEntry& entry =
        d->plans.emplace(1, PlanEntry{std::move(plan), *std::move(first_map), now}).first->second;
    d->RefreshUpdate(entry);
    d->last_version = 1;
    d->committed_version = 1;
    d->last_checkpoint = now;
    d->UpdateVersionMetrics();
    d->UpdateRankMetrics();
    result = d->ToProto();
  }
  {
    absl::MutexLock lock(&registry_mu_);
    deployments_.emplace(name, d);
  }
  spdlog::info("deployment {}: created ({}, policy {}, commit {})", name, shape.DebugString(),
               d->spec.policy(), v1::CommitMode_Name(d->spec.commit_mode()));
  done(std::move(result));
}

void Planner::DeleteDeployment(const std::string& name, std::function<void(absl::Status)> done) {
  {
    absl::MutexLock lock(&registry_mu_);
    if (shut_down_) return done(ShuttingDown());
  }
  Post([this, name, done = std::move(done)] { DeleteOnWorker(name, done); });
}

void Planner::DeleteOnWorker(const std::string& name,
                             const std::function<void(absl::Status)>& done) {
  CheckOnWorker();
  auto d = FindOrError(name);
  if (!d.ok()) return done(d.status());
  if (absl::Status status = store_.DeleteDeployment(name); !status.ok()) {
    return done(ErrorWithDetail(
        absl::StatusCode::kInternal, v1::STATE_IO, "",
        absl::StrCat("cannot delete deployment \"", name, "\": ", status.message())));
  }
  {
    absl::MutexLock lock(&(*d)->mu);
    (*d)->deleted = true;
    (*d)->CloseWatchers(DeploymentNotFound(name));
  }
  {
    absl::MutexLock lock(&registry_mu_);
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
  Post([this, d = *std::move(d), dry_run, done = std::move(done)] {
    done(PlanOnWorker(d, PlanReason::kOnDemand, dry_run));
  });
}

void Planner::MaybeTrigger(const std::shared_ptr<Deployment>& d) {
  d->mu.AssertHeld();
  const v1::Trigger& trigger = d->spec.trigger();
  if (trigger.interval_steps() == 0 || d->evaluation_queued || d->pending_version != 0 ||
      d->deleted) {
    return;
  }
  const int64_t frontier = d->Frontier();
  if (frontier < 0) return;
  const int64_t base =
      d->last_evaluated_step >= 0 ? d->last_evaluated_step : d->load.first_step() - 1;
  if (frontier - base < trigger.interval_steps() || d->StepsSeen() < trigger.min_steps()) return;
  d->evaluation_queued = true;
  Post([this, d] {
    auto plan = PlanOnWorker(d, PlanReason::kTrigger, /*dry_run=*/false);
    if (!plan.ok() && plan.status().code() != absl::StatusCode::kNotFound) {
      spdlog::warn("deployment {}: automatic rebalance failed: {}", d->name(),
                   plan.status().ToString());
    }
  });
}

absl::StatusOr<v1::Plan> Planner::PlanOnWorker(const std::shared_ptr<Deployment>& d,
                                               PlanReason reason, bool dry_run) {
  CheckOnWorker();
  LoadMatrix load;
  std::optional<ExpertMap> current;
  int64_t parent = 0;
  {
    absl::MutexLock lock(&d->mu);
    if (d->deleted) return DeploymentNotFound(d->name());
    if (reason == PlanReason::kTrigger) d->evaluation_queued = false;
    if (!dry_run && d->pending_version != 0) {
      return ErrorWithDetail(
          absl::StatusCode::kFailedPrecondition, v1::PLAN_IN_FLIGHT, "",
          absl::StrCat("version ", d->pending_version, " of deployment \"", d->name(),
                       "\" is still being staged; retry when it commits or "
                       "aborts"));
    }
    if (reason == PlanReason::kTrigger) d->last_evaluated_step = d->Frontier();
    d->load.CurrentInto(load);
    parent = d->committed_version;
    current = d->plans.at(parent).map;
  }

  const absl::Time start = absl::Now();
  auto candidate = d->policy->Plan({d->shape, &load, &*current});
  if (!candidate.ok()) return Tagged(candidate.status(), v1::POLICY_CANNOT_SERVE, "spec.policy");
  const MapQuality before = EvaluateMap(*current, load);
  const MapQuality after = EvaluateMap(*candidate, load);
  const Migration migration = ComputeMigration(*current, *candidate, d->spec.bytes_per_expert());
  if (d->metrics) {
    d->metrics->ObserveRebalanceSeconds(absl::ToDoubleSeconds(absl::Now() - start));
    d->metrics->SetBalancedness(before.mean_balancedness);
  }

  v1::Plan plan;
  plan.set_deployment(d->name());
  plan.set_parent_version(parent);
  plan.set_reason(reason == PlanReason::kTrigger ? v1::TRIGGER : v1::ON_DEMAND);
  plan.set_policy(d->spec.policy());
  ExpertMapToProto(*candidate, plan.mutable_map());
  plan.set_map_hash(candidate->Hash());
  TimeToProto(clock_->Now(), plan.mutable_create_time());
  v1::PlanMetrics& metrics = *plan.mutable_metrics();
  metrics.set_balancedness_before(before.mean_balancedness);
  metrics.set_balancedness_after(after.mean_balancedness);
  metrics.set_max_over_bound(after.mean_max_over_bound);
  metrics.set_slots_changed(migration.slots_changed);
  metrics.set_experts_moved(migration.experts_received);
  metrics.set_bytes_to_move(migration.bytes_moved);

  if (reason == PlanReason::kTrigger) {
    const double gain = after.mean_balancedness - before.mean_balancedness;
    if (*candidate == *current || gain < d->spec.trigger().min_gain()) {
      spdlog::debug("deployment {}: candidate gains {:.4f} balancedness, min_gain {}: kept",
                    d->name(), gain, d->spec.trigger().min_gain());
      return plan;
    }
  }
  if (dry_run) return plan;
  return Publish(d, std::move(plan), *std::move(candidate));
}

absl::StatusOr<v1::Plan> Planner::Publish(const std::shared_ptr<Deployment>& d, v1::Plan plan,
                                          ExpertMap map) {
  CheckOnWorker();
  int64_t version = 0;
  {
    absl::MutexLock lock(&d->mu);
    version = d->last_version + 1;
  }
  const bool immediate = d->spec.commit_mode() == v1::COMMIT_MODE_IMMEDIATE;
  plan.set_version(version);
  plan.set_state(immediate ? v1::COMMITTED : v1::PENDING);
  for (int32_t r = 0; r < d->shape.num_ranks; ++r) {
    v1::RankAck& ack = *plan.add_ranks();
    ack.set_rank(r);
    ack.set_version(version);
  }
  const auto io_error = [&](const absl::Status& status) {
    return ErrorWithDetail(absl::StatusCode::kInternal, v1::STATE_IO, "",
                           absl::StrCat("cannot persist version ", version, " of deployment \"",
                                        d->name(), "\": ", status.message()));
  };
  // The counter first: once it is on disk the version is spent, whatever happens next.
  if (absl::Status status = store_.WriteVersionCounter(d->name(), version); !status.ok()) {
    return io_error(status);
  }
  {
    absl::MutexLock lock(&d->mu);
    d->last_version = version;
  }
  if (absl::Status status = store_.WritePlan(plan); !status.ok()) return io_error(status);

  std::vector<int64_t> pruned;
  v1::Plan result;
  {
    absl::MutexLock lock(&d->mu);
    if (d->deleted) return DeploymentNotFound(d->name());
    PlanEntry& entry =
        d->plans.emplace(version, PlanEntry{std::move(plan), std::move(map), clock_->Now()})
            .first->second;
    if (immediate) {
      d->committed_version = version;
      if (d->metrics) {
        d->metrics->PlanCommitted(entry.plan.metrics().bytes_to_move());
        d->metrics->SetBalancedness(entry.plan.metrics().balancedness_after());
      }
    } else {
      d->pending_version = version;
    }
    d->RefreshUpdate(entry);
    d->Broadcast(entry);
    while (d->plans.size() > static_cast<size_t>(d->spec.plan_history())) {
      auto oldest = d->plans.begin();
      while (oldest->first == d->committed_version || oldest->first == d->pending_version) ++oldest;
      pruned.push_back(oldest->first);
      d->plans.erase(oldest);
    }
    d->UpdateVersionMetrics();
    d->UpdateRankMetrics();
    result = entry.plan;
  }
  for (const int64_t old : pruned) {
    if (absl::Status status = store_.RemovePlan(d->name(), old); !status.ok()) {
      spdlog::warn("deployment {}: cannot remove pruned plan {}: {}", d->name(), old,
                   status.ToString());
    }
  }
  spdlog::info(
      "deployment {}: published version {} ({}, {}): balancedness {:.4f} -> {:.4f}, {} "
      "experts to move",
      d->name(), version, v1::PlanReason_Name(result.reason()), v1::PlanState_Name(result.state()),
      result.metrics().balancedness_before(), result.metrics().balancedness_after(),
      result.metrics().experts_moved());
  return result;
}

void Planner::FinishPendingOnWorker(const std::shared_ptr<Deployment>& d, int64_t version,
                                    v1::PlanState state, std::string reason) {
  CheckOnWorker();
  v1::Plan snapshot;
  {
    absl::MutexLock lock(&d->mu);
    const auto it = d->plans.find(version);
    if (d->deleted || it == d->plans.end() || it->second.plan.state() != v1::PENDING) return;
    if (state == v1::COMMITTED) {
      // An ack that arrived after the commit was queued may have failed the plan.
      auto decision = AckDecision(it->second.plan);
      if (decision.has_value() && decision->first == v1::ABORTED) {
        state = v1::ABORTED;
        reason = std::move(decision->second);
      }
    }
    snapshot = it->second.plan;
  }
  snapshot.set_state(state);
  if (state == v1::ABORTED) snapshot.set_abort_reason(reason);
  if (absl::Status status = store_.WritePlan(snapshot); !status.ok()) {
    spdlog::error("deployment {}: cannot persist the {} state of version {}: {}", d->name(),
                  v1::PlanState_Name(state), version, status.ToString());
    if (state == v1::COMMITTED) {
      // A commit that is not on disk is not a commit: the ranks keep the previous plan. (An abort
      // stands in memory; after a restart the plan is in flight again and re-staged.)
      state = v1::ABORTED;
      reason = absl::StrCat("the commit could not be persisted: ", status.message());
    }
  }
  absl::MutexLock lock(&d->mu);
  const auto it = d->plans.find(version);
  if (d->deleted || it == d->plans.end()) return;
  PlanEntry& entry = it->second;
  entry.plan.set_state(state);
  entry.finishing = false;
  if (state == v1::ABORTED) entry.plan.set_abort_reason(reason);
  d->pending_version = 0;
  if (state == v1::COMMITTED) {
    d->committed_version = version;
    if (d->metrics) {
      d->metrics->PlanCommitted(entry.plan.metrics().bytes_to_move());
      d->metrics->SetBalancedness(entry.plan.metrics().balancedness_after());
    }
    spdlog::info("deployment {}: version {} committed", d->name(), version);
  } else {
    if (d->metrics) d->metrics->PlanAborted();
    spdlog::warn("deployment {}: version {} aborted: {}", d->name(), version, reason);
  }
  d->RefreshUpdate(entry);
  d->Broadcast(entry);
  d->UpdateVersionMetrics();
  MaybeTrigger(d);
}

// ---- Queries ------------------------------------------------------------------------------------

absl::StatusOr<v1::Deployment> Planner::GetDeployment(const std::string& name) const {
  if (name.empty()) return Required("name");
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(name));
  absl::MutexLock lock(&d->mu);
  return d->ToProto();
}

std::vector<v1::Deployment> Planner::ListDeployments() const {
  std::vector<std::shared_ptr<Deployment>> all;
  {
    absl::MutexLock lock(&registry_mu_);
    for (const auto& [name, d] : deployments_) all.push_back(d);
  }
  std::vector<v1::Deployment> result;
  for (const auto& d : all) {
    absl::MutexLock lock(&d->mu);
    result.push_back(d->ToProto());
  }
  return result;
}

absl::StatusOr<v1::Plan> Planner::GetPlan(const std::string& name, int64_t version) const {
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(name));
  if (version < 0) return OutOfRange("version", absl::StrCat("= ", version, " is negative"));
  absl::MutexLock lock(&d->mu);
  if (version == 0) version = d->committed_version;
  const auto it = d->plans.find(version);
  if (it != d->plans.end()) return it->second.plan;
  const std::string why =
      version > d->last_version
          ? absl::StrCat("was never published (latest: ", d->last_version, ")")
          : absl::StrCat("is no longer retained (oldest retained: ", d->plans.begin()->first, ")");
  return ErrorWithDetail(absl::StatusCode::kNotFound, v1::PLAN_NOT_FOUND, "version",
                         absl::StrCat("version ", version, " of deployment \"", name, "\" ", why));
}

absl::StatusOr<std::vector<v1::Plan>> Planner::ListPlans(const std::string& name,
                                                         bool include_maps) const {
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(name));
  std::vector<v1::Plan> result;
  absl::MutexLock lock(&d->mu);
  for (auto it = d->plans.rbegin(); it != d->plans.rend(); ++it) {
    result.push_back(it->second.plan);
    if (!include_maps) result.back().clear_map();
  }
  return result;
}

absl::Status Planner::PublishRendezvous(const v1::PublishRendezvousRequest& request) {
  if (request.key().empty()) return Required("key");
  if (request.key().size() > api::kMaxRendezvousKeyBytes) {
    return OutOfRange("key", absl::StrCat("has ", request.key().size(), " bytes, more than ",
                                          api::kMaxRendezvousKeyBytes));
  }
  if (request.value().size() > api::kMaxRendezvousValueBytes) {
    return OutOfRange("value", absl::StrCat("has ", request.value().size(), " bytes, more than ",
                                            api::kMaxRendezvousValueBytes));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(request.deployment()));
  absl::MutexLock lock(&d->mu);
  if (d->deleted) return DeploymentNotFound(request.deployment());
  if (!d->rendezvous.contains(request.key()) && d->rendezvous.size() >= api::kMaxRendezvousKeys) {
    return ErrorWithDetail(absl::StatusCode::kResourceExhausted, v1::RENDEZVOUS_FULL, "key",
                           absl::StrCat("deployment ", d->name(), " holds ",
                                        api::kMaxRendezvousKeys, " rendezvous keys already"));
  }
  d->rendezvous[request.key()] = request.value();
  return absl::OkStatus();
}

absl::StatusOr<std::string> Planner::GetRendezvous(const v1::GetRendezvousRequest& request) const {
  if (request.key().empty()) return Required("key");
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(request.deployment()));
  absl::MutexLock lock(&d->mu);
  const auto it = d->rendezvous.find(request.key());
  if (d->deleted || it == d->rendezvous.end()) {
    return ErrorWithDetail(
        absl::StatusCode::kNotFound, v1::RENDEZVOUS_NOT_FOUND, "key",
        absl::StrCat("rendezvous key \"", request.key(), "\" was not published in deployment ",
                     request.deployment()));
  }
  return it->second;
}

absl::StatusOr<v1::GetLoadResponse> Planner::GetLoad(const std::string& name) const {
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(name));
  LoadMatrix load;
  std::optional<ExpertMap> map;
  v1::GetLoadResponse response;
  {
    absl::MutexLock lock(&d->mu);
    d->load.CurrentInto(load);
    map = d->plans.at(d->committed_version).map;
    response.set_steps_seen(d->StepsSeen());
    response.set_plan_version(d->committed_version);
    response.set_first_step(d->load.first_step());
    response.set_last_step(d->load.last_step());
  }
  response.set_num_layers(load.num_layers);
  response.set_num_logical_experts(load.num_experts);
  response.mutable_smoothed_load()->Assign(load.values.begin(), load.values.end());
  const MapQuality quality = EvaluateMap(*map, load);
  for (const LayerQuality& layer : quality.layers) response.add_balancedness(layer.balancedness);
  return response;
}

// ---- Reports ------------------------------------------------------------------------------------

absl::StatusOr<ReportOutcome> Planner::Report(const v1::LoadReport& report) {
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(report.deployment()));
  absl::StatusOr<ReportOutcome> outcome = ReportTo(d, report);
  if (d->metrics) {
    if (!outcome.ok()) {
      const auto detail = GetErrorDetail(outcome.status());
      d->metrics->ReportRejected(detail.has_value()
                                     ? v1::ErrorReason_Name(detail->reason())
                                     : absl::StatusCodeToString(outcome.status().code()));
    } else if (outcome->duplicate) {
      d->metrics->ReportDuplicate();
    } else {
      d->metrics->ReportAccepted();
    }
  }
  return outcome;
}

absl::StatusOr<ReportOutcome> Planner::ReportTo(const std::shared_ptr<Deployment>& d,
                                                const v1::LoadReport& report) {
  const DeploymentShape& shape = d->shape;
  const int32_t rank = report.rank();
  if (rank < 0 || rank >= shape.num_ranks) {
    return ErrorWithDetail(
        absl::StatusCode::kInvalidArgument, v1::UNKNOWN_RANK, "rank",
        absl::StrCat("rank = ", rank, " is out of range [0, ", shape.num_ranks - 1, "]"));
  }
  RETURN_IF_ERROR(CheckRange("sequence", report.sequence(), 1, kMaxSequence));
  RETURN_IF_ERROR(CheckRange("first_step", report.first_step(), 0, kMaxStep));
  RETURN_IF_ERROR(CheckRange("last_step", report.last_step(), report.first_step(),
                             report.first_step() + kMaxStepsPerReport - 1));
  if (report.plan_version() < 1) {
    return OutOfRange("plan_version", absl::StrCat("= ", report.plan_version(), " must be ≥ 1"));
  }
  const bool local_slots = report.counts_kind() == v1::LoadReport::LOCAL_SLOT;
  if (!local_slots && report.counts_kind() != v1::LoadReport::LOGICAL &&
      report.counts_kind() != v1::LoadReport::COUNTS_KIND_UNSPECIFIED) {
    return OutOfRange("counts_kind", absl::StrCat("= ", report.counts_kind(), " is unknown"));
  }
  if (report.layers_size() != shape.num_layers) {
    return ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::MALFORMED_COUNTS, "layers",
                           absl::StrCat("layers has ", report.layers_size(), " entries, expected ",
                                        shape.num_layers, " (num_layers)"));
  }
  const int32_t width = local_slots ? d->layout.SlotsOnRank(rank) : shape.num_logical_experts;
  for (int32_t l = 0; l < shape.num_layers; ++l) {
    const auto& counts = report.layers(l).counts();
    if (counts.size() != width) {
      return ErrorWithDetail(
          absl::StatusCode::kInvalidArgument, v1::MALFORMED_COUNTS,
          absl::StrCat("layers[", l, "].counts"),
          absl::StrCat("layers[", l, "].counts has ", counts.size(), " entries, expected ", width,
                       local_slots ? absl::StrCat(" (slots of rank ", rank, ")")
                                   : std::string(" (num_logical_experts)")));
    }
    for (int i = 0; i < counts.size(); ++i) {
      const double count = counts[i];
      if (!(count >= 0.0 && count <= kMaxCount)) {  // also false for NaN
        const std::string field = absl::StrCat("layers[", l, "].counts[", i, "]");
        return ErrorWithDetail(
            absl::StatusCode::kInvalidArgument, v1::MALFORMED_COUNTS, field,
            absl::StrCat(field, " = ", count, " must be a finite count in [0, 2^53]"));
      }
    }
  }
  const uint64_t hash = ReportHash(report);

  absl::MutexLock lock(&d->mu);
  if (d->deleted) return DeploymentNotFound(d->name());
  // Retries first: a report already counted is acknowledged even if its plan was pruned since.
  RankReportState& state = d->ranks[rank];
  const bool same_session = state.last_sequence > 0 && state.session == report.session();
  if (same_session && report.sequence() <= state.last_sequence) {
    for (const auto& [sequence, seen_hash] : state.recent) {
      if (sequence != report.sequence()) continue;
      if (seen_hash == hash)
        return ReportOutcome{.duplicate = true, .last_sequence = state.last_sequence};
      return ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::SEQUENCE_REUSED, "sequence",
                             absl::StrCat("sequence ", report.sequence(), " of rank ", rank,
                                          " was already accepted with different counts"));
    }
    return ErrorWithDetail(absl::StatusCode::kFailedPrecondition, v1::SEQUENCE_OUT_OF_ORDER,
                           "sequence",
                           absl::StrCat("sequence ", report.sequence(), " of rank ", rank,
                                        " is below the last accepted (", state.last_sequence,
                                        ") and not among the recent ones"));
  }

  const auto plan = d->plans.find(report.plan_version());
  if (plan == d->plans.end()) {
    if (report.plan_version() > d->last_version) {
      return ErrorWithDetail(absl::StatusCode::kNotFound, v1::PLAN_NOT_FOUND, "plan_version",
                             absl::StrCat("plan_version ", report.plan_version(),
                                          " was never published (latest: ", d->last_version, ")"));
    }
    return ErrorWithDetail(
        absl::StatusCode::kFailedPrecondition, v1::STALE_PLAN_VERSION, "plan_version",
        absl::StrCat("plan_version ", report.plan_version(),
                     " is no longer retained (oldest retained: ", d->plans.begin()->first, ")"));
  }
  // Accepted: convert to per-expert counts and add.
  const int32_t experts = shape.num_logical_experts;
  if (local_slots) {
    std::fill(d->scratch.begin(), d->scratch.end(), 0.0);
    const ExpertMap& map = plan->second.map;
    const int32_t first_slot = d->layout.FirstSlotOfRank(rank);
    for (int32_t l = 0; l < shape.num_layers; ++l) {
      const auto phy2log = map.phy2log(l);
      const auto& counts = report.layers(l).counts();
      double* row = d->scratch.data() + static_cast<size_t>(l) * experts;
      for (int32_t k = 0; k < width; ++k) row[phy2log[first_slot + k]] += counts[k];
    }
  } else {
    for (int32_t l = 0; l < shape.num_layers; ++l) {
      const auto& counts = report.layers(l).counts();
      std::memcpy(d->scratch.data() + static_cast<size_t>(l) * experts, counts.data(),
                  sizeof(double) * experts);
    }
  }
  d->load.Add(report.first_step(), report.last_step(), d->scratch);
  if (!same_session) {
    state.session = report.session();
    state.recent.clear();
  }
  state.last_sequence = report.sequence();
  state.recent.emplace_back(report.sequence(), hash);
  if (state.recent.size() > kRecentSequences) state.recent.pop_front();
  state.reported_through = std::max(state.reported_through, report.last_step());
  d->load_dirty = true;
  MaybeTrigger(d);
  return ReportOutcome{.duplicate = false, .last_sequence = state.last_sequence};
}

// ---- Watch and acknowledge ----------------------------------------------------------------------

absl::StatusOr<Planner::Subscription> Planner::Subscribe(
    const v1::WatchPlansRequest::Subscribe& subscribe, WatchSink* sink) {
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(subscribe.deployment()));
  if (subscribe.rank() < -1 || subscribe.rank() >= d->shape.num_ranks) {
    return ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::UNKNOWN_RANK, "subscribe.rank",
                           absl::StrCat("subscribe.rank = ", subscribe.rank(),
                                        " is out of range [-1, ", d->shape.num_ranks - 1, "]"));
  }
  if (subscribe.known_version() < 0) {
    return OutOfRange("subscribe.known_version",
                      absl::StrCat("= ", subscribe.known_version(), " is negative"));
  }
  absl::MutexLock lock(&d->mu);
  if (d->closed) return ShuttingDown();
  if (d->deleted) return DeploymentNotFound(d->name());
  if (subscribe.known_version() > d->last_version) {
    return ErrorWithDetail(
        absl::StatusCode::kFailedPrecondition, v1::PLAN_NOT_FOUND, "subscribe.known_version",
        absl::StrCat("subscribe.known_version = ", subscribe.known_version(),
                     " is newer than the latest version of deployment \"", d->name(), "\" (",
                     d->last_version, "); was it deleted and created again?"));
  }
  d->watchers.push_back(sink);
  if (d->metrics) d->metrics->AddWatchers(1);
  if (d->committed_version > subscribe.known_version()) {
    sink->Send(d->plans.at(d->committed_version).update);
  }
  if (d->pending_version != 0) sink->Send(d->plans.at(d->pending_version).update);
  Subscription subscription;
  subscription.deployment_ = std::move(d);
  return subscription;
}

void Planner::Unsubscribe(const Subscription& subscription, WatchSink* sink) {
  Deployment* d = subscription.deployment_.get();
  if (d == nullptr) return;
  absl::MutexLock lock(&d->mu);
  const auto it = std::find(d->watchers.begin(), d->watchers.end(), sink);
  if (it == d->watchers.end()) return;  // already closed by a delete or shutdown
  d->watchers.erase(it);
  if (d->metrics) d->metrics->AddWatchers(-1);
}

absl::Status Planner::Ack(const std::string& name, int32_t rank,
                          const v1::WatchPlansRequest::Ack& ack) {
  ASSIGN_OR_RETURN(std::shared_ptr<Deployment> d, FindOrError(name));
  if (rank < 0) {
    return ErrorWithDetail(absl::StatusCode::kFailedPrecondition, v1::UNKNOWN_RANK, "ack",
                           "an observer stream (rank -1) cannot acknowledge plans");
  }
  if (ack.state() != v1::STAGED && ack.state() != v1::ACTIVE && ack.state() != v1::FAILED) {
    return OutOfRange("ack.state",
                      absl::StrCat("= ", ack.state(), " must be STAGED, ACTIVE or FAILED"));
  }
  if (ack.error_detail().size() > kMaxErrorDetailBytes) {
    return OutOfRange("ack.error_detail", absl::StrCat("has ", ack.error_detail().size(),
                                                       " bytes, more than ", kMaxErrorDetailBytes));
  }
  if (!ack.nonce().empty()) {
    const std::optional<std::pair<uint64_t, int64_t>> nonce = ParsePlanNonce(ack.nonce());
    if (!nonce.has_value()) {
      return OutOfRange("ack.nonce",
                        absl::StrCat("= \"", absl::CHexEscape(ack.nonce().substr(0, 64)),
                                     "\" is not a nonce this planner sent"));
    }
    if (nonce->first != d->uid) {
      // An ack meant for an earlier deployment of this name (deleted and created again since,
      // its versions counted anew): it says nothing about this one's plans.
      spdlog::info(
          "deployment {}: ignoring rank {}'s ack of version {} of an earlier deployment "
          "of the same name",
          d->name(), rank, ack.version());
      return absl::OkStatus();
    }
    if (nonce->second != ack.version()) {
      return OutOfRange("ack.nonce", absl::StrCat("names version ", nonce->second,
                                                  ", the ack version ", ack.version()));
    }
  }
  absl::MutexLock lock(&d->mu);
  if (ack.version() < 1 || ack.version() > d->last_version) {
    return OutOfRange(
        "ack.version",
        absl::StrCat("= ", ack.version(), " was never published (latest: ", d->last_version, ")"));
  }
  const auto it = d->plans.find(ack.version());
  if (d->deleted || it == d->plans.end()) return absl::OkStatus();  // pruned: nothing to record
  PlanEntry& entry = it->second;
  v1::RankAck& state = *entry.plan.mutable_ranks(rank);
  const bool mismatch = ack.state() != v1::FAILED && ack.map_hash() != entry.plan.map_hash();
  state.set_state(ack.state());
  state.set_map_hash(ack.map_hash());
  state.set_hash_mismatch(mismatch);
  state.set_error_detail(ack.error_detail());
  TimeToProto(clock_->Now(), state.mutable_update_time());
  if (d->metrics) d->metrics->SetHashMismatch(rank, mismatch);
  if (mismatch) {
    spdlog::warn(
        "deployment {}: rank {} acknowledged version {} as {} with map hash {}, the "
        "plan's is {}",
        d->name(), rank, ack.version(), v1::AckState_Name(ack.state()), Hex(ack.map_hash()),
        Hex(entry.plan.map_hash()));
  }
  d->UpdateRankMetrics();

  if (ack.version() != d->pending_version || entry.finishing) return absl::OkStatus();
  std::optional<std::pair<v1::PlanState, std::string>> decision = AckDecision(entry.plan);
  if (decision.has_value()) {
    entry.finishing = true;
    Post([this, d, version = ack.version(), decision = *std::move(decision)] {
      FinishPendingOnWorker(d, version, decision.first, decision.second);
    });
  }
  return absl::OkStatus();
}

}  // namespace eplb::server
