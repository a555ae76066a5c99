#include "server/deployment.h"

#include <grpcpp/impl/codegen/proto_utils.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <numeric>
#include <random>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/metrics.h"
#include "core/status_macros.h"
#include "proto/api_limits.h"
#include "proto/convert.h"
#include "server/api_errors.h"
#include "spdlog/spdlog.h"

namespace eplb::server {
namespace {

constexpr size_t kRecentSequences = 1024;  // sequence numbers remembered per rank (planner.proto)

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
  // A whole-layer report hashes as it did before layer ranges existed (hashes are checkpointed).
  if (report.first_layer() != 0) mix(static_cast<uint64_t>(report.first_layer()) | (1ULL << 63));
  for (const v1::LayerCounts& layer : report.layers()) {
    mix(static_cast<uint64_t>(layer.counts_size()));
    for (const double count : layer.counts()) mix(std::bit_cast<uint64_t>(count));
  }
  return hash;
}

std::string Hex(uint64_t value) { return absl::StrFormat("%016x", value); }

// What the ranks' acknowledgements of a plan in flight decide: ABORTED with the reason at the first
// rank (in rank order) that failed or holds another map, COMMITTED once every rank staged (or
// already serves) the plan's map, nothing yet otherwise.
std::optional<PlanDecision> AckDecision(const v1::Plan& plan) {
  bool all_staged = true;
  for (const v1::RankAck& ack : plan.ranks()) {
    if (ack.state() == v1::FAILED) {
      return PlanDecision{plan.version(), v1::ABORTED,
                          absl::StrCat("rank ", ack.rank(), " failed: ", ack.error_detail())};
    }
    if (ack.hash_mismatch()) {
      return PlanDecision{plan.version(), v1::ABORTED,
                          absl::StrCat("rank ", ack.rank(), " holds map hash ", Hex(ack.map_hash()),
                                       ", the plan's is ", Hex(plan.map_hash()))};
    }
    all_staged = all_staged && (ack.state() == v1::STAGED || ack.state() == v1::ACTIVE);
  }
  if (all_staged) return PlanDecision{plan.version(), v1::COMMITTED, ""};
  return std::nullopt;
}

int AckStateIndex(v1::AckState state) {
  switch (state) {
    case v1::STAGED:
      return 1;
    case v1::ACTIVE:
      return 2;
    case v1::FAILED:
      return 3;
    default:
      return 0;
  }
}

// +1 / −1 of one rank's ack in a tally.
void CountAck(const v1::RankAck& ack, int delta, Deployment::AckTally& tally) {
  tally.by_state[AckStateIndex(ack.state())] += delta;
  if (ack.state() == v1::FAILED || ack.hash_mismatch()) {
    tally.bad += delta;
  } else if (ack.state() == v1::STAGED || ack.state() == v1::ACTIVE) {
    tally.good += delta;
  }
}

Deployment::AckTally TallyAcks(const v1::Plan& plan) {
  Deployment::AckTally tally;
  for (const v1::RankAck& ack : plan.ranks()) CountAck(ack, +1, tally);
  return tally;
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

// A rendezvous key as published or asked for: present, at most kMaxRendezvousKeyBytes.
absl::Status CheckRendezvousKey(const std::string& key) {
  if (key.empty()) return Required("key");
  if (key.size() > api::kMaxRendezvousKeyBytes) {
    return OutOfRange(
        "key", absl::StrCat("has ", key.size(), " bytes, more than ", api::kMaxRendezvousKeyBytes));
  }
  return absl::OkStatus();
}

}  // namespace

// ---- Creation -----------------------------------------------------------------------------------

Deployment::Deployment(ValidatedSpec validated, SmoothedLoad load, absl::Time create_time,
                       uint64_t uid, std::shared_ptr<DeploymentMetrics> metrics)
    : uid_(uid),
      spec_(std::move(validated.spec)),
      shape_(validated.shape),
      layout_(shape_.num_physical_experts, shape_.num_ranks),
      policy_(std::move(validated.policy)),
      create_time_(create_time),
      metrics_(std::move(metrics)),
      footprint_(DeploymentFootprint(shape_, validated.smoothing, spec_.plan_history())),
      load_(std::move(load)),
      ranks_(static_cast<size_t>(shape_.num_ranks)),
      reported_through_counts_{{-1, shape_.num_ranks}},
      scratch_(static_cast<size_t>(shape_.num_layers) * shape_.num_logical_experts) {}

std::shared_ptr<Deployment> Deployment::Create(ValidatedSpec validated, uint64_t uid,
                                               absl::Time create_time, v1::Plan first_plan,
                                               ExpertMap first_map,
                                               std::shared_ptr<DeploymentMetrics> metrics) {
  EPLB_CHECK(first_plan.version() == 1 && first_plan.state() == v1::COMMITTED,
             "a deployment starts from a committed version 1");
  auto load = SmoothedLoad::Create(validated.shape.num_layers, validated.shape.num_logical_experts,
                                   validated.smoothing);
  EPLB_CHECK(load.ok(), load.status().ToString());
  std::shared_ptr<Deployment> d(
      new Deployment(std::move(validated), *std::move(load), create_time, uid, std::move(metrics)));
  absl::MutexLock lock(&d->mu_);
  PlanEntry& entry =
      d->plans_.emplace(1, PlanEntry{std::move(first_plan), std::move(first_map), create_time})
          .first->second;
  entry.tally = TallyAcks(entry.plan);
  d->RefreshUpdate(entry);
  d->last_version_ = 1;
  d->committed_version_ = 1;
  d->last_checkpoint_ = create_time;
  d->newest_step_time_ = create_time;
  d->UpdateVersionMetrics();
  d->UpdateRankMetrics();
  return d;
}

absl::StatusOr<std::shared_ptr<Deployment>> Deployment::Restore(
    ValidatedSpec validated, LoadedDeployment stored, absl::Time now,
    std::shared_ptr<DeploymentMetrics> metrics) {
  const DeploymentShape shape = validated.shape;
  const std::string& name = validated.spec.name();
  ASSIGN_OR_RETURN(
      SmoothedLoad load,
      SmoothedLoad::Create(shape.num_layers, shape.num_logical_experts, validated.smoothing));
  std::optional<state::v1::LoadCheckpoint> checkpoint = std::move(stored.load);
  if (checkpoint.has_value()) {
    auto restored = SmoothedLoad::Restore(checkpoint->smoothed_load(), shape.num_layers,
                                          shape.num_logical_experts, validated.smoothing);
    if (restored.ok() && checkpoint->ranks_size() == shape.num_ranks) {
      load = *std::move(restored);
    } else {
      spdlog::warn("deployment {}: ignoring its load checkpoint: {}", name,
                   restored.ok() ? "wrong number of ranks" : restored.status().ToString());
      checkpoint.reset();
    }
  }
  const absl::Time created = TimeFromProto(stored.record.create_time());
  const uint64_t uid = stored.record.uid() != 0 ? stored.record.uid() : LegacyUid(name, created);
  std::shared_ptr<Deployment> d(
      new Deployment(std::move(validated), std::move(load), created, uid, std::move(metrics)));

  absl::MutexLock lock(&d->mu_);
  d->last_version_ = stored.last_version;
  const int64_t recorded = stored.committed_version;  // 0: not recorded (older state)
  for (v1::Plan& plan : stored.plans) {
    const int64_t version = plan.version();
    ASSIGN_OR_RETURN(ExpertMap map,
                     ExpertMapFromProto(plan.map(), absl::StrCat("plan ", version, " map")));
    RETURN_IF_ERROR(map.CheckFits(shape));
    if (map.Hash() != plan.map_hash()) {
      return absl::DataLossError(absl::StrCat("plan ", version, "'s map hashes to ",
                                              Hex(map.Hash()), ", its map_hash says ",
                                              Hex(plan.map_hash())));
    }
    d->last_version_ = std::max(d->last_version_, version);
    if (recorded != 0) {
      if (version == recorded) {
        plan.set_state(v1::COMMITTED);  // the commit record says so, whatever the file says
      } else if (version > recorded && plan.state() == v1::COMMITTED) {
        plan.set_state(v1::ABORTED);
        plan.set_abort_reason("its commit was not recorded before the planner stopped");
      }
    }
    if (plan.state() == v1::COMMITTED) d->committed_version_ = version;
    // Acks are kept by rank: ranks(r) is rank r's.
    bool by_rank = plan.ranks_size() == shape.num_ranks;
    for (int32_t r = 0; by_rank && r < shape.num_ranks; ++r) by_rank = plan.ranks(r).rank() == r;
    if (!by_rank) {
      return absl::DataLossError(absl::StrCat("plan ", version, " has ", plan.ranks_size(),
                                              " rank acks, not one per rank 0 … ",
                                              shape.num_ranks - 1, " in order"));
    }
    const AckTally tally = TallyAcks(plan);
    PlanEntry& entry =
        d->plans_.emplace(version, PlanEntry{std::move(plan), std::move(map), now}).first->second;
    entry.tally = tally;
  }
  if (d->committed_version_ == 0) return absl::DataLossError("no committed plan");
  EPLB_CHECK(recorded == 0 || d->committed_version_ == recorded,
             "the state store checked that the recorded committed version has a plan");
  // Newest first: an older PENDING plan (its abort was not persisted) was superseded by a newer
  // one.
  for (auto it = d->plans_.rbegin(); it != d->plans_.rend(); ++it) {
    auto& [version, entry] = *it;
    if (entry.plan.state() == v1::PENDING) {
      if (version > d->committed_version_ && d->pending_version_ == 0) {
        d->pending_version_ = version;  // ranks re-acknowledge it when they reconnect
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
      RankReportState& out = d->ranks_[r];
      out.session = in.session();
      out.last_sequence = in.last_sequence();
      for (int i = 0; i < in.recent_sequences_size() && i < in.recent_hashes_size(); ++i) {
        out.recent.emplace_back(in.recent_sequences(i), in.recent_hashes(i));
      }
      d->SetReportedThrough(r, in.reported_through());
      out.forgotten_through = in.forgotten_through();
      if (out.forgotten_through == 0 && out.recent.size() >= kRecentSequences) {
        // A checkpoint from before forgotten_through was kept: anything below the oldest
        // remembered may have been forgotten.
        int64_t oldest = out.last_sequence;
        for (const auto& [sequence, hash] : out.recent) oldest = std::min(oldest, sequence);
        out.forgotten_through = oldest - 1;
      }
    }
    d->last_evaluated_step_ = checkpoint->last_evaluated_step();
  }
  d->last_checkpoint_ = now;
  d->newest_step_time_ = now;
  d->UpdateVersionMetrics();
  d->UpdateRankMetrics();
  return d;
}

v1::Plan Deployment::FirstPlan(const std::string& name, const DeploymentShape& shape,
                               const ExpertMap& map, const std::string& policy, absl::Time now) {
  v1::Plan plan;
  plan.set_deployment(name);
  plan.set_version(1);
  plan.set_state(v1::COMMITTED);
  plan.set_reason(v1::INITIAL);
  plan.set_policy(policy);
  ExpertMapToProto(map, plan.mutable_map());
  plan.set_map_hash(map.Hash());
  TimeToProto(now, plan.mutable_create_time());
  for (int32_t r = 0; r < shape.num_ranks; ++r) {
    v1::RankAck& ack = *plan.add_ranks();
    ack.set_rank(r);
    ack.set_version(1);
  }
  return plan;
}

uint64_t Deployment::NewUid() {
  std::random_device device;
  for (;;) {
    const uint64_t uid = (uint64_t{device()} << 32) ^ device();
    if (uid != 0) return uid;
  }
}

uint64_t Deployment::LegacyUid(const std::string& name, absl::Time created) {
  uint64_t hash = 0xcbf29ce484222325;  // FNV-1a
  for (const unsigned char c : absl::StrCat(name, "@", absl::ToUnixNanos(created))) {
    hash = (hash ^ c) * 0x100000001b3;
  }
  return hash == 0 ? 1 : hash;
}

absl::Status Deployment::NotFound() const { return DeploymentNotFound(name()); }

// ---- Reports ------------------------------------------------------------------------------------

absl::StatusOr<ReportOutcome> Deployment::Report(const v1::LoadReport& report, absl::Time now) {
  absl::StatusOr<ReportOutcome> outcome = CountReport(report, now);
  if (metrics_) {
    if (!outcome.ok()) {
      const auto detail = GetErrorDetail(outcome.status());
      metrics_->ReportRejected(detail.has_value()
                                   ? v1::ErrorReason_Name(detail->reason())
                                   : absl::StatusCodeToString(outcome.status().code()));
    } else if (outcome->duplicate) {
      metrics_->ReportDuplicate();
    } else {
      metrics_->ReportAccepted();
    }
  }
  return outcome;
}

absl::StatusOr<ReportOutcome> Deployment::CountReport(const v1::LoadReport& report,
                                                      absl::Time now) {
  const int32_t rank = report.rank();
  if (rank < 0 || rank >= shape_.num_ranks) {
    return ErrorWithDetail(
        absl::StatusCode::kInvalidArgument, v1::UNKNOWN_RANK, "rank",
        absl::StrCat("rank = ", rank, " is out of range [0, ", shape_.num_ranks - 1, "]"));
  }
  RETURN_IF_ERROR(CheckRange("sequence", report.sequence(), 1, api::kMaxSequence));
  RETURN_IF_ERROR(CheckRange("first_step", report.first_step(), 0, api::kMaxStep));
  RETURN_IF_ERROR(CheckRange("last_step", report.last_step(), report.first_step(),
                             report.first_step() + api::kMaxStepsPerReport - 1));
  if (report.plan_version() < 1) {
    return OutOfRange("plan_version", absl::StrCat("= ", report.plan_version(), " must be ≥ 1"));
  }
  const bool local_slots = report.counts_kind() == v1::LoadReport::LOCAL_SLOT;
  if (!local_slots && report.counts_kind() != v1::LoadReport::LOGICAL &&
      report.counts_kind() != v1::LoadReport::COUNTS_KIND_UNSPECIFIED) {
    return OutOfRange("counts_kind", absl::StrCat("= ", report.counts_kind(), " is unknown"));
  }
  RETURN_IF_ERROR(CheckRange("first_layer", report.first_layer(), 0, shape_.num_layers - 1));
  const int32_t first_layer = report.first_layer();
  const int32_t num_layers = report.layers_size();
  if (num_layers < 1) {
    return ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::MALFORMED_COUNTS, "layers",
                           "layers has no entries, expected at least 1");
  }
  if (num_layers > shape_.num_layers - first_layer) {
    return ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::MALFORMED_COUNTS, "layers",
                           absl::StrCat("layers has ", num_layers, " entries, more than the ",
                                        shape_.num_layers - first_layer, " from first_layer ",
                                        first_layer, " to num_layers ", shape_.num_layers));
  }
  const int32_t width = local_slots ? layout_.SlotsOnRank(rank) : shape_.num_logical_experts;
  for (int32_t l = 0; l < num_layers; ++l) {
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
      if (!(count >= 0.0 && count <= api::kMaxCount)) {  // also false for NaN
        const std::string field = absl::StrCat("layers[", l, "].counts[", i, "]");
        return ErrorWithDetail(
            absl::StatusCode::kInvalidArgument, v1::MALFORMED_COUNTS, field,
            absl::StrCat(field, " = ", count, " must be a finite count in [0, 2^53]"));
      }
    }
  }
  const uint64_t hash = ReportHash(report);

  absl::MutexLock lock(&mu_);
  if (deleted_) return NotFound();
  // Retries first: a report already counted is acknowledged even if its plan was pruned since.
  RankReportState& state = ranks_[rank];
  const bool same_session = state.last_sequence > 0 && state.session == report.session();
  if (same_session && report.sequence() <= state.last_sequence) {
    for (const auto& [sequence, seen_hash] : state.recent) {
      if (sequence != report.sequence()) continue;
      if (seen_hash == hash) {
        return ReportOutcome{.duplicate = true, .last_sequence = state.last_sequence};
      }
      return ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::SEQUENCE_REUSED, "sequence",
                             absl::StrCat("sequence ", report.sequence(), " of rank ", rank,
                                          " was already accepted with different counts"));
    }
    // Not among the remembered ones. A sequence above every one dropped from them was never
    // counted (checkpoints keep both), e.g. a report the planner lost when it was killed, sent
    // again: counted now. One at or below may have been counted and forgotten: refused.
    if (report.sequence() <= state.forgotten_through) {
      return ErrorWithDetail(
          absl::StatusCode::kFailedPrecondition, v1::SEQUENCE_OUT_OF_ORDER, "sequence",
          absl::StrCat("sequence ", report.sequence(), " of rank ", rank, " is not among the last ",
                       kRecentSequences, " accepted, and sequences up to ", state.forgotten_through,
                       " are forgotten"));
    }
  }

  const auto plan = plans_.find(report.plan_version());
  if (plan == plans_.end()) {
    if (report.plan_version() > last_version_) {
      return ErrorWithDetail(absl::StatusCode::kNotFound, v1::PLAN_NOT_FOUND, "plan_version",
                             absl::StrCat("plan_version ", report.plan_version(),
                                          " was never published (latest: ", last_version_, ")"));
    }
    return ErrorWithDetail(
        absl::StatusCode::kFailedPrecondition, v1::STALE_PLAN_VERSION, "plan_version",
        absl::StrCat("plan_version ", report.plan_version(),
                     " is no longer retained (oldest retained: ", plans_.begin()->first, ")"));
  }
  if (!load_.empty() && report.last_step() > load_.last_step()) {
    const double seconds = std::max(0.0, absl::ToDoubleSeconds(now - newest_step_time_));
    const int64_t allowed =
        api::kMaxStepJump + static_cast<int64_t>(std::min(seconds, 1e9) * api::kMaxStepsPerSecond);
    if (report.last_step() - load_.last_step() > allowed) {
      return OutOfRange(
          "last_step",
          absl::StrCat("= ", report.last_step(), " is ", report.last_step() - load_.last_step(),
                       " steps ahead of the deployment's newest step (", load_.last_step(),
                       "), more than the ", allowed, " allowed ", absl::StrFormat("%.0f", seconds),
                       " s after it; did the step counter jump?"));
    }
  }
  // Accepted: convert to per-expert counts and add, the report's rows only (layers outside its
  // range add nothing).
  const int32_t experts = shape_.num_logical_experts;
  double* const rows = scratch_.data() + static_cast<size_t>(first_layer) * experts;
  const size_t cells = static_cast<size_t>(num_layers) * experts;
  if (local_slots) {
    std::fill_n(rows, cells, 0.0);
    const ExpertMap& map = plan->second.map;
    const int32_t first_slot = layout_.FirstSlotOfRank(rank);
    for (int32_t i = 0; i < num_layers; ++i) {
      const auto phy2log = map.phy2log(first_layer + i);
      const auto& counts = report.layers(i).counts();
      double* row = rows + static_cast<size_t>(i) * experts;
      for (int32_t k = 0; k < width; ++k) row[phy2log[first_slot + k]] += counts[k];
    }
  } else {
    for (int32_t i = 0; i < num_layers; ++i) {
      const auto& counts = report.layers(i).counts();
      std::memcpy(rows + static_cast<size_t>(i) * experts, counts.data(), sizeof(double) * experts);
    }
  }
  if (load_.empty() || report.last_step() > load_.last_step()) newest_step_time_ = now;
  load_.AddRows(report.first_step(), report.last_step(), first_layer,
                std::span<const double>(rows, cells));
  if (!same_session) {
    state.session = report.session();
    state.recent.clear();
    state.forgotten_through = 0;
  }
  state.last_sequence = std::max(same_session ? state.last_sequence : 0, report.sequence());
  state.recent.emplace_back(report.sequence(), hash);
  if (state.recent.size() > kRecentSequences) {
    state.forgotten_through = std::max(state.forgotten_through, state.recent.front().first);
    state.recent.pop_front();
  }
  // A step range counts as reported by the rank once its report reaches the last layer: the
  // parts of a split report arrive in layer order, and a rebalance waits for the whole.
  if (first_layer + num_layers == shape_.num_layers) {
    if (report.last_step() > state.reported_through) {
      SetReportedThrough(report.rank(), report.last_step());
    }
  }
  load_dirty_ = true;
  return ReportOutcome{
      .duplicate = false, .last_sequence = state.last_sequence, .evaluate = TriggerDue()};
}

int64_t Deployment::Frontier() const { return reported_through_counts_.begin()->first; }

void Deployment::SetReportedThrough(int32_t rank, int64_t step) {
  RankReportState& state = ranks_[rank];
  const auto old = reported_through_counts_.find(state.reported_through);
  EPLB_CHECK(old != reported_through_counts_.end(), "rank ", rank, "'s reported_through ",
             state.reported_through, " is not counted");
  if (--old->second == 0) reported_through_counts_.erase(old);
  state.reported_through = step;
  reported_through_counts_[step]++;
}

int64_t Deployment::StepsSeen() const {
  return load_.empty() ? 0 : load_.last_step() - load_.first_step() + 1;
}

bool Deployment::TriggerDue() {
  const v1::Trigger& trigger = spec_.trigger();
  if (trigger.interval_steps() == 0 || evaluation_queued_ || pending_version_ != 0 || deleted_) {
    return false;
  }
  const int64_t frontier = Frontier();
  if (frontier < 0) return false;
  const int64_t base = last_evaluated_step_ >= 0 ? last_evaluated_step_ : load_.first_step() - 1;
  if (frontier - base < trigger.interval_steps() || StepsSeen() < trigger.min_steps()) {
    return false;
  }
  evaluation_queued_ = true;
  return true;
}

// ---- Plans --------------------------------------------------------------------------------------

absl::StatusOr<PlanInput> Deployment::BeginPlan(PlanReason reason, bool dry_run) {
  absl::MutexLock lock(&mu_);
  if (deleted_) return NotFound();
  if (reason == PlanReason::kTrigger) evaluation_queued_ = false;
  if (!dry_run && pending_version_ != 0) {
    return ErrorWithDetail(absl::StatusCode::kFailedPrecondition, v1::PLAN_IN_FLIGHT, "",
                           absl::StrCat("version ", pending_version_, " of deployment \"", name(),
                                        "\" is still being staged; retry when it commits or "
                                        "aborts"));
  }
  if (reason == PlanReason::kTrigger) last_evaluated_step_ = Frontier();
  PlanInput input{.current = plans_.at(committed_version_).map,
                  .parent_version = committed_version_};
  load_.CurrentInto(input.load);
  return input;
}

int64_t Deployment::NextVersion() const {
  absl::MutexLock lock(&mu_);
  return last_version_ + 1;
}

void Deployment::SpendVersion(int64_t version) {
  absl::MutexLock lock(&mu_);
  EPLB_CHECK(version > last_version_, "version ", version, " was spent already");
  last_version_ = version;
}

v1::Plan Deployment::Versioned(v1::Plan plan, int64_t version) const {
  plan.set_version(version);
  plan.set_state(spec_.commit_mode() == v1::COMMIT_MODE_IMMEDIATE ? v1::COMMITTED : v1::PENDING);
  plan.clear_ranks();
  for (int32_t r = 0; r < shape_.num_ranks; ++r) {
    v1::RankAck& ack = *plan.add_ranks();
    ack.set_rank(r);
    ack.set_version(version);
  }
  return plan;
}

absl::StatusOr<std::vector<int64_t>> Deployment::AddPlan(const v1::Plan& plan, ExpertMap map,
                                                         absl::Time now) {
  const int64_t version = plan.version();
  absl::MutexLock lock(&mu_);
  if (deleted_) return NotFound();
  EPLB_CHECK(version <= last_version_ && !plans_.contains(version) && version > committed_version_,
             "plan version ", version, " was not spent or was added already");
  const bool immediate = plan.state() == v1::COMMITTED;
  EPLB_CHECK(immediate || pending_version_ == 0, "version ", pending_version_, " is still pending");
  PlanEntry& entry = plans_.emplace(version, PlanEntry{plan, std::move(map), now}).first->second;
  entry.tally = TallyAcks(entry.plan);
  if (immediate) {
    committed_version_ = version;
    if (metrics_) {
      metrics_->PlanCommitted(entry.plan.metrics().bytes_to_move());
      metrics_->SetBalancedness(entry.plan.metrics().balancedness_after());
    }
  } else {
    pending_version_ = version;
  }
  RefreshUpdate(entry);
  Broadcast(entry);
  std::vector<int64_t> pruned;
  while (plans_.size() > static_cast<size_t>(spec_.plan_history())) {
    auto oldest = plans_.begin();
    while (oldest->first == committed_version_ || oldest->first == pending_version_) ++oldest;
    pruned.push_back(oldest->first);
    plans_.erase(oldest);
  }
  UpdateVersionMetrics();
  UpdateRankMetrics();
  return pruned;
}

// ---- Acknowledgements ---------------------------------------------------------------------------

absl::StatusOr<std::optional<PlanDecision>> Deployment::RecordAck(
    int32_t rank, const v1::WatchPlansRequest::Ack& ack, absl::Time now) {
  if (rank < 0) {
    return ErrorWithDetail(absl::StatusCode::kFailedPrecondition, v1::UNKNOWN_RANK, "ack",
                           "an observer stream (rank -1) cannot acknowledge plans");
  }
  EPLB_CHECK(rank < shape_.num_ranks, "rank ", rank, " was not checked at subscription");
  if (ack.state() != v1::STAGED && ack.state() != v1::ACTIVE && ack.state() != v1::FAILED) {
    return OutOfRange("ack.state",
                      absl::StrCat("= ", ack.state(), " must be STAGED, ACTIVE or FAILED"));
  }
  if (ack.error_detail().size() > api::kMaxErrorDetailBytes) {
    return OutOfRange("ack.error_detail",
                      absl::StrCat("has ", ack.error_detail().size(), " bytes, more than ",
                                   api::kMaxErrorDetailBytes));
  }
  if (!ack.nonce().empty()) {
    const std::optional<std::pair<uint64_t, int64_t>> nonce = ParsePlanNonce(ack.nonce());
    if (!nonce.has_value()) {
      return OutOfRange("ack.nonce",
                        absl::StrCat("= \"", absl::CHexEscape(ack.nonce().substr(0, 64)),
                                     "\" is not a nonce this planner sent"));
    }
    if (nonce->first != uid_) {
      // An ack meant for an earlier deployment of this name (deleted and created again since,
      // its versions counted anew): it says nothing about this one's plans.
      spdlog::info(
          "deployment {}: ignoring rank {}'s ack of version {} of an earlier deployment "
          "of the same name",
          name(), rank, ack.version());
      return std::nullopt;
    }
    if (nonce->second != ack.version()) {
      return OutOfRange("ack.nonce", absl::StrCat("names version ", nonce->second,
                                                  ", the ack version ", ack.version()));
    }
  }
  absl::MutexLock lock(&mu_);
  if (ack.version() < 1 || ack.version() > last_version_) {
    return OutOfRange(
        "ack.version",
        absl::StrCat("= ", ack.version(), " was never published (latest: ", last_version_, ")"));
  }
  const auto it = plans_.find(ack.version());
  if (deleted_ || it == plans_.end()) return std::nullopt;  // pruned: nothing to record
  PlanEntry& entry = it->second;
  v1::RankAck& state = *entry.plan.mutable_ranks(rank);
  const bool mismatch = ack.state() != v1::FAILED && ack.map_hash() != entry.plan.map_hash();
  CountAck(state, -1, entry.tally);
  state.set_state(ack.state());
  state.set_map_hash(ack.map_hash());
  state.set_hash_mismatch(mismatch);
  state.set_error_detail(ack.error_detail());
  TimeToProto(now, state.mutable_update_time());
  CountAck(state, +1, entry.tally);
  if (metrics_) metrics_->SetHashMismatch(rank, mismatch);
  if (mismatch) {
    spdlog::warn(
        "deployment {}: rank {} acknowledged version {} as {} with map hash {}, the "
        "plan's is {}",
        name(), rank, ack.version(), v1::AckState_Name(ack.state()), Hex(ack.map_hash()),
        Hex(entry.plan.map_hash()));
  }
  if (it == std::prev(plans_.end())) UpdateRankMetrics();

  if (ack.version() != pending_version_ || entry.finishing) return std::nullopt;
  // Nothing decided until a rank failed or every rank staged; then one scan names the rank, once
  // per plan (finishing is set).
  if (entry.tally.bad == 0 && entry.tally.good < shape_.num_ranks) return std::nullopt;
  std::optional<PlanDecision> decision = AckDecision(entry.plan);
  if (decision.has_value()) entry.finishing = true;
  return decision;
}

std::optional<PlanDecision> Deployment::CheckAckTimeout(absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (pending_version_ == 0) return std::nullopt;
  PlanEntry& entry = plans_.at(pending_version_);
  const absl::Time deadline = entry.publish_time + absl::Milliseconds(spec_.ack_timeout_ms());
  if (entry.finishing || now < deadline) return std::nullopt;
  entry.finishing = true;
  std::vector<int32_t> missing;
  for (const v1::RankAck& ack : entry.plan.ranks()) {
    if (ack.state() != v1::STAGED && ack.state() != v1::ACTIVE) missing.push_back(ack.rank());
  }
  return PlanDecision{
      pending_version_, v1::ABORTED,
      absl::StrCat("ack timeout after ", spec_.ack_timeout_ms(), " ms: ", missing.size(), " of ",
                   shape_.num_ranks, " ranks did not stage it (ranks ",
                   absl::StrJoin(missing.begin(),
                                 missing.begin() + std::min<size_t>(missing.size(), 16), ", "),
                   missing.size() > 16 ? ", …)" : ")")};
}

std::optional<v1::Plan> Deployment::PrepareFinish(PlanDecision& decision) const {
  absl::MutexLock lock(&mu_);
  const auto it = plans_.find(decision.version);
  if (deleted_ || it == plans_.end() || it->second.plan.state() != v1::PENDING) {
    return std::nullopt;
  }
  if (decision.state == v1::COMMITTED) {
    // An ack that arrived after the commit was decided may have failed the plan.
    std::optional<PlanDecision> now = AckDecision(it->second.plan);
    if (now.has_value() && now->state == v1::ABORTED) decision = *std::move(now);
  }
  v1::Plan record = it->second.plan;
  record.set_state(decision.state);
  if (decision.state == v1::ABORTED) record.set_abort_reason(decision.reason);
  return record;
}

bool Deployment::FinishPlan(const PlanDecision& decision) {
  absl::MutexLock lock(&mu_);
  const auto it = plans_.find(decision.version);
  if (deleted_ || it == plans_.end() || it->second.plan.state() != v1::PENDING) return false;
  EPLB_CHECK(decision.version == pending_version_, "version ", decision.version,
             " is PENDING but not the version in flight (", pending_version_, ")");
  PlanEntry& entry = it->second;
  entry.plan.set_state(decision.state);
  entry.finishing = false;
  if (decision.state == v1::ABORTED) entry.plan.set_abort_reason(decision.reason);
  pending_version_ = 0;
  if (decision.state == v1::COMMITTED) {
    committed_version_ = decision.version;
    if (metrics_) {
      metrics_->PlanCommitted(entry.plan.metrics().bytes_to_move());
      metrics_->SetBalancedness(entry.plan.metrics().balancedness_after());
    }
    spdlog::info("deployment {}: version {} committed", name(), decision.version);
  } else {
    if (metrics_) metrics_->PlanAborted();
    spdlog::warn("deployment {}: version {} aborted: {}", name(), decision.version,
                 decision.reason);
  }
  RefreshUpdate(entry);
  Broadcast(entry);
  UpdateVersionMetrics();
  return TriggerDue();
}

// ---- Watchers -----------------------------------------------------------------------------------

absl::Status Deployment::Subscribe(const v1::WatchPlansRequest::Subscribe& subscribe,
                                   WatchSink* sink) {
  if (subscribe.rank() < -1 || subscribe.rank() >= shape_.num_ranks) {
    return ErrorWithDetail(absl::StatusCode::kInvalidArgument, v1::UNKNOWN_RANK, "subscribe.rank",
                           absl::StrCat("subscribe.rank = ", subscribe.rank(),
                                        " is out of range [-1, ", shape_.num_ranks - 1, "]"));
  }
  if (subscribe.known_version() < 0) {
    return OutOfRange("subscribe.known_version",
                      absl::StrCat("= ", subscribe.known_version(), " is negative"));
  }
  absl::MutexLock lock(&mu_);
  if (closed_) return ShuttingDown();
  if (deleted_) return NotFound();
  if (static_cast<int64_t>(watchers_.size()) >= MaxWatchers()) {
    return ErrorWithDetail(absl::StatusCode::kResourceExhausted, v1::TOO_MANY_WATCHERS, "",
                           absl::StrCat("deployment \"", name(), "\" has ", watchers_.size(),
                                        " watches open, its limit (2 per rank and 1024)"));
  }
  if (subscribe.known_version() > last_version_) {
    return ErrorWithDetail(
        absl::StatusCode::kFailedPrecondition, v1::PLAN_NOT_FOUND, "subscribe.known_version",
        absl::StrCat("subscribe.known_version = ", subscribe.known_version(),
                     " is newer than the latest version of deployment \"", name(), "\" (",
                     last_version_, "); was it deleted and created again?"));
  }
  watchers_.insert(sink);
  if (metrics_) metrics_->AddWatchers(1);
  if (committed_version_ > subscribe.known_version()) {
    sink->Send(plans_.at(committed_version_).update);
  }
  if (pending_version_ != 0) sink->Send(plans_.at(pending_version_).update);
  return absl::OkStatus();
}

void Deployment::Unsubscribe(WatchSink* sink) {
  absl::MutexLock lock(&mu_);
  if (watchers_.erase(sink) == 0) return;  // already closed by a delete or shutdown
  if (metrics_) metrics_->AddWatchers(-1);
}

void Deployment::MarkDeleted() {
  absl::MutexLock lock(&mu_);
  deleted_ = true;
  CloseWatchers(NotFound());
}

void Deployment::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  CloseWatchers(ShuttingDown());
}

void Deployment::CloseWatchers(const absl::Status& status) {
  for (WatchSink* sink : watchers_) sink->Close(status);
  if (metrics_) metrics_->AddWatchers(-static_cast<int>(watchers_.size()));
  watchers_.clear();
}

void Deployment::Broadcast(const PlanEntry& entry) {
  for (WatchSink* sink : watchers_) sink->Send(entry.update);
}

void Deployment::RefreshUpdate(PlanEntry& entry) const {
  v1::WatchPlansResponse response;
  v1::Plan& plan = *response.mutable_plan();
  // Watchers get the plan without its R rank acks; move them aside instead of copying them.
  google::protobuf::RepeatedPtrField<v1::RankAck> acks;
  acks.Swap(entry.plan.mutable_ranks());
  plan = entry.plan;
  acks.Swap(entry.plan.mutable_ranks());
  response.set_nonce(PlanNonce(uid_, entry.plan.version()));
  auto update = std::make_shared<WatchUpdate>();
  update->version = entry.plan.version();
  update->state = entry.plan.state();
  const auto serialize = [&response](grpc::ByteBuffer* out) {
    bool own_buffer = false;
    const grpc::Status status =
        grpc::SerializationTraits<v1::WatchPlansResponse>::Serialize(response, out, &own_buffer);
    EPLB_CHECK(status.ok(), "cannot serialize a plan: ", status.error_message());
  };
  serialize(&update->bytes);

  // The delta forms carry the map's shape without its rows. Rows are only taken from maps that list
  // every slot's replica rank (maps from older state files may leave replica_rank out; they go
  // whole, in the first form, to every stream).
  const auto complete = [](const v1::ExpertMap& m) {
    const int64_t cells = int64_t{m.num_layers()} * m.num_physical_experts();
    return m.phy2log_size() == cells && m.replica_rank_size() == cells;
  };
  if (!complete(entry.plan.map())) {
    update->compact_bytes = update->bytes;
    update->state_bytes = update->bytes;
    entry.update = std::move(update);
    return;
  }
  v1::ExpertMap& map = *plan.mutable_map();
  map.clear_phy2log();
  map.clear_replica_rank();
  v1::MapDelta& delta = *response.mutable_map_delta();
  const v1::ExpertMap& next = entry.plan.map();
  std::vector<int32_t> layers(next.num_layers());
  std::iota(layers.begin(), layers.end(), 0);
  AppendMapRows(next, layers, &delta);
  serialize(&update->compact_bytes);

  delta.Clear();
  delta.set_base_version(entry.plan.version());
  delta.set_base_map_hash(MapContentHash(entry.plan.map()));
  serialize(&update->state_bytes);

  const auto parent = plans_.find(entry.plan.parent_version());
  if (parent != plans_.end() && parent->first != entry.plan.version() &&
      complete(parent->second.plan.map()) &&
      parent->second.plan.map().num_layers() == next.num_layers() &&
      parent->second.plan.map().num_physical_experts() == next.num_physical_experts()) {
    const v1::ExpertMap& base = parent->second.plan.map();
    const int32_t slots = next.num_physical_experts();
    layers.clear();
    for (int32_t layer = 0; layer < next.num_layers(); ++layer) {
      const int begin = layer * slots;
      const bool same =
          std::equal(next.phy2log().begin() + begin, next.phy2log().begin() + begin + slots,
                     base.phy2log().begin() + begin) &&
          std::equal(next.replica_rank().begin() + begin,
                     next.replica_rank().begin() + begin + slots,
                     base.replica_rank().begin() + begin);
      if (!same) layers.push_back(layer);
    }
    delta.set_base_version(parent->first);
    delta.set_base_map_hash(MapContentHash(parent->second.plan.map()));
    AppendMapRows(next, layers, &delta);
    update->delta_base = parent->first;
    serialize(&update->delta_bytes);
  }
  entry.update = std::move(update);
}

// ---- Metrics ------------------------------------------------------------------------------------

void Deployment::UpdateVersionMetrics() {
  if (metrics_) metrics_->SetVersions(committed_version_, last_version_);
}

void Deployment::UpdateRankMetrics() {
  if (!metrics_ || plans_.empty()) return;
  const int32_t* counts = plans_.rbegin()->second.tally.by_state;
  metrics_->SetRankStates(counts[0], counts[1], counts[2], counts[3]);
}

// ---- Load checkpoints ---------------------------------------------------------------------------

std::optional<state::v1::LoadCheckpoint> Deployment::TakeCheckpoint(absl::Time now,
                                                                    absl::Duration interval,
                                                                    bool force) {
  absl::MutexLock lock(&mu_);
  if (deleted_ || !load_dirty_) return std::nullopt;
  if (!force && now - last_checkpoint_ < interval) return std::nullopt;
  state::v1::LoadCheckpoint checkpoint;
  checkpoint.set_smoothed_load(load_.Serialize());
  for (const RankReportState& rank : ranks_) {
    state::v1::RankReports& out = *checkpoint.add_ranks();
    out.set_session(rank.session);
    out.set_last_sequence(rank.last_sequence);
    for (const auto& [sequence, hash] : rank.recent) {
      out.add_recent_sequences(sequence);
      out.add_recent_hashes(hash);
    }
    out.set_reported_through(rank.reported_through);
    out.set_forgotten_through(rank.forgotten_through);
  }
  checkpoint.set_last_evaluated_step(last_evaluated_step_);
  load_dirty_ = false;
  last_checkpoint_ = now;
  return checkpoint;
}

void Deployment::CheckpointFailed() {
  absl::MutexLock lock(&mu_);
  load_dirty_ = true;
}

// ---- Queries ------------------------------------------------------------------------------------

v1::Deployment Deployment::ToProto() const {
  absl::MutexLock lock(&mu_);
  v1::Deployment result;
  *result.mutable_spec() = spec_;
  // The initial map (up to 64 MiB) is plan version 1; it is not echoed back.
  result.mutable_spec()->clear_initial_map();
  TimeToProto(create_time_, result.mutable_create_time());
  result.set_committed_version(committed_version_);
  result.set_latest_version(last_version_);
  result.set_steps_seen(StepsSeen());
  return result;
}

int64_t Deployment::PendingVersion() const {
  absl::MutexLock lock(&mu_);
  return pending_version_;
}

int64_t Deployment::CommittedVersion() const {
  absl::MutexLock lock(&mu_);
  return committed_version_;
}

absl::StatusOr<v1::Plan> Deployment::GetPlan(int64_t version) const {
  if (version < 0) return OutOfRange("version", absl::StrCat("= ", version, " is negative"));
  absl::MutexLock lock(&mu_);
  if (version == 0) version = committed_version_;
  const auto it = plans_.find(version);
  if (it != plans_.end()) return it->second.plan;
  const std::string why =
      version > last_version_
          ? absl::StrCat("was never published (latest: ", last_version_, ")")
          : absl::StrCat("is no longer retained (oldest retained: ", plans_.begin()->first, ")");
  return ErrorWithDetail(
      absl::StatusCode::kNotFound, v1::PLAN_NOT_FOUND, "version",
      absl::StrCat("version ", version, " of deployment \"", name(), "\" ", why));
}

std::vector<v1::Plan> Deployment::ListPlans(bool include_maps) const {
  std::vector<v1::Plan> result;
  absl::MutexLock lock(&mu_);
  for (auto it = plans_.rbegin(); it != plans_.rend(); ++it) {
    result.push_back(it->second.plan);
    if (!include_maps) result.back().clear_map();
  }
  return result;
}

v1::GetLoadResponse Deployment::GetLoad() const {
  LoadMatrix load;
  std::optional<ExpertMap> map;
  v1::GetLoadResponse response;
  {
    absl::MutexLock lock(&mu_);
    load_.CurrentInto(load);
    map = plans_.at(committed_version_).map;
    response.set_steps_seen(StepsSeen());
    response.set_plan_version(committed_version_);
    response.set_first_step(load_.first_step());
    response.set_last_step(load_.last_step());
  }
  response.set_num_layers(load.num_layers);
  response.set_num_logical_experts(load.num_experts);
  response.mutable_smoothed_load()->Assign(load.values.begin(), load.values.end());
  const MapQuality quality = EvaluateMap(*map, load);
  for (const LayerQuality& layer : quality.layers) response.add_balancedness(layer.balancedness);
  return response;
}

// ---- Rendezvous ---------------------------------------------------------------------------------

absl::Status Deployment::PublishRendezvous(const std::string& key, const std::string& value) {
  RETURN_IF_ERROR(CheckRendezvousKey(key));
  if (value.size() > api::kMaxRendezvousValueBytes) {
    return OutOfRange("value", absl::StrCat("has ", value.size(), " bytes, more than ",
                                            api::kMaxRendezvousValueBytes));
  }
  absl::MutexLock lock(&mu_);
  if (deleted_) return NotFound();
  if (!rendezvous_.contains(key) && rendezvous_.size() >= api::kMaxRendezvousKeys) {
    return ErrorWithDetail(absl::StatusCode::kResourceExhausted, v1::RENDEZVOUS_FULL, "key",
                           absl::StrCat("deployment ", name(), " holds ", api::kMaxRendezvousKeys,
                                        " rendezvous keys already"));
  }
  rendezvous_[key] = value;
  return absl::OkStatus();
}

absl::StatusOr<std::string> Deployment::GetRendezvous(const std::string& key) const {
  RETURN_IF_ERROR(CheckRendezvousKey(key));
  absl::MutexLock lock(&mu_);
  const auto it = rendezvous_.find(key);
  if (deleted_ || it == rendezvous_.end()) {
    return ErrorWithDetail(
        absl::StatusCode::kNotFound, v1::RENDEZVOUS_NOT_FOUND, "key",
        absl::StrCat("rendezvous key \"", key, "\" was not published in deployment ", name()));
  }
  return it->second;
}

}  // namespace eplb::server
