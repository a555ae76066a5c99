#include "agent/placement_agent.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/status_macros.h"
#include "spdlog/spdlog.h"
#include "transfer/transfer_schedule.h"

namespace eplb::agent {
namespace {

using transfer::CopyOp;
using transfer::DeviceContext;
using transfer::LayerTransfer;
using transfer::MemoryKind;
using transfer::PeerTransfer;

// What every rank contributes to an idle sync, all-gathered.
struct IdleRecord {
  int64_t offer_version;  // the newest committed plan held and checked, newer than the group's; 0
  uint64_t offer_hash;
  int64_t group_version;  // the version the rank's map came from (last plan applied)
  uint64_t active_hash;   // hash of the map the rank serves after the decisions so far
};
static_assert(sizeof(IdleRecord) == 32);

// The map tables of one layer, as laid out in the pinned and device arrays.
struct TableLayout {
  int32_t L, E, P, W;
  size_t phy2log_offset(int32_t layer) const { return static_cast<size_t>(layer) * P; }
  size_t log2phy_offset(int32_t layer) const {
    return static_cast<size_t>(L) * P + static_cast<size_t>(layer) * E * W;
  }
  size_t logcnt_offset(int32_t layer) const {
    return static_cast<size_t>(L) * P + static_cast<size_t>(L) * E * W +
           static_cast<size_t>(layer) * E;
  }
  size_t total() const { return static_cast<size_t>(L) * (P + static_cast<size_t>(E) * W + E); }
};

void WriteTables(const ExpertMap& map, const TableLayout& layout, int32_t* out) {
  for (int32_t l = 0; l < layout.L; ++l) {
    std::copy(map.phy2log(l).begin(), map.phy2log(l).end(), out + layout.phy2log_offset(l));
    for (int32_t e = 0; e < layout.E; ++e) {
      map.PaddedLog2PhyRow(
          l, e,
          std::span<int32_t>(out + layout.log2phy_offset(l) + static_cast<size_t>(e) * layout.W,
                             static_cast<size_t>(layout.W)));
    }
    std::copy(map.logcnt(l).begin(), map.logcnt(l).end(), out + layout.logcnt_offset(l));
  }
}

bool LayerDiffers(const ExpertMap& a, const ExpertMap& b, int32_t layer) {
  if (!std::ranges::equal(a.phy2log(layer), b.phy2log(layer))) return true;
  for (int32_t e = 0; e < a.num_logical_experts(); ++e) {
    if (!std::ranges::equal(a.replicas(layer, e), b.replicas(layer, e))) return true;
  }
  return false;
}

// `old_map` with the layers in `switched` taken from `new_map`.
ExpertMap MixMaps(const ExpertMap& old_map, const ExpertMap& new_map,
                  const std::vector<bool>& switched) {
  const TableLayout layout{old_map.num_layers(), old_map.num_logical_experts(),
                           old_map.num_physical_experts(), old_map.log2phy_width()};
  std::vector<int32_t> old_tables(layout.total()), new_tables(layout.total());
  WriteTables(old_map, layout, old_tables.data());
  WriteTables(new_map, layout, new_tables.data());
  std::vector<int32_t> phy2log, log2phy, logcnt;
  for (int32_t l = 0; l < layout.L; ++l) {
    const std::vector<int32_t>& t = switched[l] ? new_tables : old_tables;
    phy2log.insert(phy2log.end(), t.begin() + layout.phy2log_offset(l),
                   t.begin() + layout.phy2log_offset(l) + layout.P);
    log2phy.insert(log2phy.end(), t.begin() + layout.log2phy_offset(l),
                   t.begin() + layout.log2phy_offset(l) + static_cast<size_t>(layout.E) * layout.W);
    logcnt.insert(logcnt.end(), t.begin() + layout.logcnt_offset(l),
                  t.begin() + layout.logcnt_offset(l) + layout.E);
  }
  absl::StatusOr<ExpertMap> mixed = ExpertMap::FromTables(layout.L, layout.E, old_map.layout(),
                                                          std::move(phy2log), log2phy, logcnt);
  // Each layer is a valid layer of a valid map, so the mix is valid.
  return *std::move(mixed);
}

}  // namespace

struct PlacementAgent::Impl {
  // A switch of one chunk, decided by a sync and applied by the serving thread.
  struct Switch {
    int64_t effective_step = 0;
    int64_t version = 0;
    int area = 0;
    std::vector<int32_t> layers;
    std::vector<CopyOp> copies;  // staging → slots, then pinned tables → device tables
    int64_t weight_bytes = 0;    // of the staging → slots copies
    bool last = false;  // the plan's last switch: layers it leaves unchanged take its version too
  };
  // The plan the group applies (agent thread only).
  struct Applying {
    int64_t version = 0;
    uint64_t hash = 0;
    std::shared_ptr<const ExpertMap> map;
    std::vector<LayerTransfer> schedule;
    std::vector<std::vector<int32_t>> chunks;        // layers, ascending
    int32_t chunks_staged = 0;                       // by this rank
    int32_t chunks_decided = 0;                      // switch decided on every rank
    absl::Status stage_status;                       // of the last staging on this rank
    std::vector<std::vector<CopyOp>> switch_copies;  // per staged chunk not yet decided
  };

  PlacementAgentOptions options;
  transfer::Communicator* comm = nullptr;
  DeviceContext* device = nullptr;
  int32_t L = 0, E = 0, P = 0, R = 0, W = 0, S = 0, first_slot = 0;
  TableLayout layout{};
  std::vector<size_t> slot_bytes;  // per layer
  size_t area_stride = 0;          // bytes per layer in a staging area
  void* areas[DeviceContext::kNumAreas] = {nullptr, nullptr};
  int32_t* pinned_tables = nullptr;  // the tables of the plan being applied (or the initial map)
  int32_t* device_tables = nullptr;

  // ---- Serving thread ----
  std::vector<int32_t> host_tables;  // layout
  std::vector<int64_t> layer_versions;
  int64_t last_step = -1;
  int64_t last_sync_posted = -1;

  // ---- Shared ----
  mutable absl::Mutex mu;
  // The newest committed plan received and checked that is newer than `floor_version`, and a
  // newer pending one.
  std::optional<AgentPlan> committed ABSL_GUARDED_BY(mu);
  std::optional<AgentPlan> pending ABSL_GUARDED_BY(mu);
  int64_t floor_version ABSL_GUARDED_BY(mu) = 0;  // applied or being applied: older plans ignored
  std::set<int64_t> aborted_versions ABSL_GUARDED_BY(mu);
  std::deque<int64_t> sync_requests ABSL_GUARDED_BY(mu);
  int64_t last_sync_done ABSL_GUARDED_BY(mu) = -1;
  std::deque<Switch> switches ABSL_GUARDED_BY(mu);
  bool stopping ABSL_GUARDED_BY(mu) = false;
  PlacementAgent::Status stats ABSL_GUARDED_BY(mu);

  // ---- Agent thread ----
  std::shared_ptr<const ExpertMap> group_map;  // after every decision taken so far
  uint64_t group_hash = 0;
  int64_t group_version = 0;
  std::optional<Applying> applying;
  int64_t pending_active_ack = 0;  // a plan fully switched, to verify and acknowledge as ACTIVE
  bool broken = false;
  std::vector<int32_t> logged_mismatch;
  std::thread thread;

  ~Impl() {
    for (void*& area : areas) {
      if (area != nullptr) device->Free(area, MemoryKind::kDevice);
    }
    if (pinned_tables != nullptr) device->Free(pinned_tables, MemoryKind::kPinnedHost);
    if (device_tables != nullptr) device->Free(device_tables, MemoryKind::kDevice);
  }

  void Emit(const AgentAck& ack) {
    if (options.on_ack) options.on_ack(ack);
  }

  absl::Status CheckPlan(const AgentPlan& plan) const {
    if (plan.map == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("plan version ", plan.version, " has no map"));
    }
    const ExpertMap& m = *plan.map;
    const ExpertMap& init = *options.initial_map;
    if (m.num_layers() != L || m.num_logical_experts() != E || m.num_physical_experts() != P ||
        m.num_ranks() != R) {
      return absl::InvalidArgumentError(absl::StrCat(
          "plan version ", plan.version, " has shape (layers ", m.num_layers(), ", experts ",
          m.num_logical_experts(), ", slots ", m.num_physical_experts(), ", ranks ", m.num_ranks(),
          "), the agent serves (", init.num_layers(), ", ", init.num_logical_experts(), ", ",
          init.num_physical_experts(), ", ", init.num_ranks(), ")"));
    }
    if (const uint64_t hash = m.Hash(); hash != plan.map_hash) {
      return absl::DataLossError(absl::StrCat("plan version ", plan.version, " has map_hash ",
                                              absl::Hex(plan.map_hash, absl::kZeroPad16),
                                              ", its map hashes to ",
                                              absl::Hex(hash, absl::kZeroPad16)));
    }
    return absl::OkStatus();
  }

  void Offer(const AgentPlan& plan) {
    std::optional<AgentAck> ack;
    {
      absl::MutexLock lock(&mu);
      if (plan.version <= floor_version) return;  // applied, being applied, or superseded
      if (committed.has_value() && plan.version <= committed->version) return;
      const bool is_pending = pending.has_value() && pending->version == plan.version;
      switch (plan.status) {
        case PlanStatus::kAborted:
          if (is_pending) pending.reset();
          aborted_versions.insert(plan.version);
          while (aborted_versions.size() > 16) aborted_versions.erase(aborted_versions.begin());
          return;
        case PlanStatus::kPending:
          if (aborted_versions.contains(plan.version)) return;
          if (pending.has_value() && plan.version < pending->version) return;
          if (is_pending) {
            // A repeated delivery (a reconnect, a planner restart): acknowledged again.
            ack = AgentAck{plan.version, AckKind::kStaged, pending->map_hash, ""};
            break;
          }
          if (absl::Status status = CheckPlan(plan); !status.ok()) {
            ack = Refuse(plan, status);
            break;
          }
          pending = plan;
          ack = AgentAck{plan.version, AckKind::kStaged, plan.map_hash, ""};
          break;
        case PlanStatus::kCommitted:
          if (aborted_versions.contains(plan.version)) return;
          if (is_pending) {
            committed = *std::move(pending);
            committed->status = PlanStatus::kCommitted;
            pending.reset();
            break;
          }
          if (absl::Status status = CheckPlan(plan); !status.ok()) {
            ack = Refuse(plan, status);
            break;
          }
          committed = plan;
          if (pending.has_value() && pending->version <= plan.version) pending.reset();
          break;
      }
    }
    if (ack.has_value()) Emit(*ack);
  }

  AgentAck Refuse(const AgentPlan& plan, const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    spdlog::error("rank {}: refusing plan version {}: {}", options.rank, plan.version,
                  status.ToString());
    stats.plans_failed++;
    stats.last_error = std::string(status.message());
    return AgentAck{plan.version, AckKind::kFailed, plan.map_hash, std::string(status.message())};
  }

  // ---- Serving thread ----

  absl::Status ApplySwitch(const Switch& sw) {
    if (absl::Status status = device->SwitchCopies(sw.copies, sw.area); !status.ok()) return status;
    for (const int32_t l : sw.layers) {
      const auto copy_range = [&](size_t offset, size_t count) {
        std::memcpy(host_tables.data() + offset, pinned_tables + offset, count * sizeof(int32_t));
      };
      copy_range(layout.phy2log_offset(l), static_cast<size_t>(P));
      copy_range(layout.log2phy_offset(l), static_cast<size_t>(E) * W);
      copy_range(layout.logcnt_offset(l), static_cast<size_t>(E));
      layer_versions[l] = sw.version;
    }
    if (sw.last) std::fill(layer_versions.begin(), layer_versions.end(), sw.version);
    return absl::OkStatus();
  }

  absl::Status OnStepBoundary(int64_t step) {
    if (last_step >= 0 && step != last_step + 1) {
      return absl::FailedPreconditionError(
          absl::StrCat("step = ", step, " does not follow the previous step boundary ", last_step));
    }
    if (step < 0) {
      return absl::InvalidArgumentError(absl::StrCat("step = ", step, " is negative"));
    }
    last_step = step;
    if (step % options.sync_every_steps != 0) return absl::OkStatus();

    std::deque<Switch> due;
    {
      absl::MutexLock lock(&mu);
      if (last_sync_posted >= 0) {
        const int64_t awaited = last_sync_posted;
        const auto done = [this, awaited]()
                              ABSL_SHARED_LOCKS_REQUIRED(mu) { return last_sync_done >= awaited; };
        if (!done()) {
          const absl::Time start = absl::Now();
          mu.Await(absl::Condition(&done));
          stats.stall_seconds += absl::ToDoubleSeconds(absl::Now() - start);
        }
      }
      due.swap(switches);
    }
    // The switches are queued before the next sync is posted: staging after that sync may reuse
    // their staging areas, and must find the switches' reads already ordered before its writes.
    absl::Status result = absl::OkStatus();
    for (const Switch& sw : due) {
      if (absl::Status status = ApplySwitch(sw); !status.ok() && result.ok()) result = status;
    }
    absl::MutexLock lock(&mu);
    if (!due.empty()) {
      stats.chunks_switched += static_cast<int64_t>(due.size());
      for (const Switch& sw : due) stats.bytes_switched += sw.weight_bytes;
      stats.active_version = ActiveVersion();
    }
    sync_requests.push_back(step);
    last_sync_posted = step;
    return result;
  }

  int64_t ActiveVersion() const {
    for (const int64_t v : layer_versions) {
      if (v != layer_versions.front()) return -1;
    }
    return layer_versions.front();
  }

  // ---- Agent thread ----

  void Run() {
    for (;;) {
      int64_t step;
      {
        absl::MutexLock lock(&mu);
        mu.Await(absl::Condition(
            +[](Impl* impl) ABSL_SHARED_LOCKS_REQUIRED(impl->mu) {
              return impl->stopping || !impl->sync_requests.empty();
            },
            this));
        // Posted syncs are run even when stopping: every rank posted the same ones.
        if (sync_requests.empty()) return;
        step = sync_requests.front();
        sync_requests.pop_front();
      }
      RunSync(step);
    }
  }

  void SetGroupMap(std::shared_ptr<const ExpertMap> map, int64_t version) {
    group_map = std::move(map);
    group_hash = group_map->Hash();
    group_version = version;
  }

  // Marks the sync of `step` done, handing its switches to the serving thread.
  void FinishSync(int64_t step, std::optional<Switch> sw) {
    absl::MutexLock lock(&mu);
    if (sw.has_value()) switches.push_back(*std::move(sw));
    last_sync_done = step;
    stats.syncs++;
    stats.broken = broken;
    stats.applying_version = applying.has_value() ? applying->version : 0;
  }

  void Fail(const std::string& error, bool communicator_failed) {
    const int64_t version = applying.has_value() ? applying->version : 0;
    if (communicator_failed) broken = true;
    spdlog::error("rank {}: plan version {} failed: {}", options.rank, version, error);
    {
      absl::MutexLock lock(&mu);
      stats.plans_failed++;
      stats.last_error = error;
      stats.broken = broken;
    }
    if (version > 0) Emit(AgentAck{version, AckKind::kFailed, group_hash, error});
  }

  void RunSync(int64_t step) {
    if (broken) {
      FinishSync(step, std::nullopt);
      return;
    }
    if (applying.has_value()) {
      RunApplyingSync(step);
    } else {
      RunIdleSync(step);
    }
  }

  void RunIdleSync(int64_t step) {
    IdleRecord mine{};
    std::shared_ptr<const ExpertMap> offer_map;
    {
      absl::MutexLock lock(&mu);
      if (committed.has_value()) {
        mine.offer_version = committed->version;
        mine.offer_hash = committed->map_hash;
        offer_map = committed->map;
      }
    }
    mine.group_version = group_version;
    mine.active_hash = group_hash;
    std::vector<uint8_t> bytes(sizeof(IdleRecord));
    std::memcpy(bytes.data(), &mine, sizeof(mine));
    absl::StatusOr<std::vector<std::vector<uint8_t>>> gathered = comm->AllGather(bytes);
    if (!gathered.ok()) {
      Fail(absl::StrCat("idle sync at step ", step, ": ", gathered.status().ToString()), true);
      FinishSync(step, std::nullopt);
      return;
    }
    std::vector<IdleRecord> records(gathered->size());
    for (size_t r = 0; r < records.size(); ++r) {
      std::memcpy(&records[r], (*gathered)[r].data(), sizeof(IdleRecord));
    }

    // Maps: every rank must serve the same one. Name the ranks that differ from rank 0.
    std::vector<int32_t> mismatched;
    for (size_t r = 0; r < records.size(); ++r) {
      if (records[r].active_hash != records[0].active_hash) {
        mismatched.push_back(static_cast<int32_t>(r));
      }
    }
    if (mismatched != logged_mismatch && !mismatched.empty()) {
      spdlog::error("rank {}: ranks {} serve a map different from rank 0's (hash {})", options.rank,
                    absl::StrJoin(mismatched, ", "),
                    absl::StrCat(absl::Hex(records[0].active_hash, absl::kZeroPad16)));
    }
    logged_mismatch = mismatched;
    {
      absl::MutexLock lock(&mu);
      stats.mismatched_ranks = mismatched;
      if (!mismatched.empty()) {
        stats.last_error = absl::StrCat("map hash differs from rank 0's on ranks ",
                                        absl::StrJoin(mismatched, ", "));
      }
    }
    if (pending_active_ack > 0) {
      Emit(AgentAck{pending_active_ack, AckKind::kActive, group_hash,
                    mismatched.empty() ? ""
                                       : absl::StrCat("map hash differs on ranks ",
                                                      absl::StrJoin(mismatched, ", "))});
      pending_active_ack = 0;
    }

    // Start a plan when every rank holds the same committed plan and serves the same map.
    const IdleRecord& first = records[0];
    const bool agree =
        mismatched.empty() && first.offer_version > group_version &&
        std::all_of(records.begin(), records.end(), [&](const IdleRecord& r) {
          return r.offer_version == first.offer_version && r.offer_hash == first.offer_hash;
        });
    if (!agree) {
      FinishSync(step, std::nullopt);
      return;
    }
    Begin(first.offer_version, first.offer_hash, std::move(offer_map));
    std::optional<Switch> sw;
    if (applying.has_value() && applying->chunks.empty()) {
      // Nothing moves (the same placement again): only the version changes, at the next sync.
      sw.emplace();
      sw->effective_step = step + options.sync_every_steps;
      sw->version = applying->version;
      sw->last = true;
      CompleteApplying();
    }
    FinishSync(step, std::move(sw));
    if (applying.has_value()) StageNextChunk();
  }

  void Begin(int64_t version, uint64_t hash, std::shared_ptr<const ExpertMap> map) {
    {
      absl::MutexLock lock(&mu);
      floor_version = version;
      if (committed.has_value() && committed->version <= version) committed.reset();
      if (pending.has_value() && pending->version <= version) pending.reset();
    }
    Applying a;
    a.version = version;
    a.hash = hash;
    a.map = std::move(map);
    absl::StatusOr<std::vector<LayerTransfer>> schedule = transfer::BuildTransferSchedule(
        *group_map, *a.map, options.rank, {.ranks_per_node = options.ranks_per_node});
    if (!schedule.ok()) {
      // Every rank computes the same schedule from the same maps, so every rank fails alike.
      applying = std::move(a);
      Fail(absl::StrCat("transfer schedule: ", schedule.status().ToString()), false);
      applying.reset();
      return;
    }
    a.schedule = *std::move(schedule);
    std::vector<int32_t> chunk;
    for (int32_t l = 0; l < L; ++l) {
      if (!LayerDiffers(*group_map, *a.map, l)) continue;
      chunk.push_back(l);
      if (static_cast<int32_t>(chunk.size()) == options.layers_per_chunk) {
        a.chunks.push_back(std::move(chunk));
        chunk.clear();
      }
    }
    if (!chunk.empty()) a.chunks.push_back(std::move(chunk));
    size_t changed = 0;
    for (const auto& c : a.chunks) changed += c.size();
    spdlog::info("rank {}: applying plan version {}: {} changed layers in {} chunks", options.rank,
                 version, changed, a.chunks.size());
    // The previous plan's switches read the pinned tables: let them finish before rewriting.
    if (absl::Status status = device->WaitForSwitches(); !status.ok()) {
      applying = std::move(a);
      Fail(absl::StrCat("waiting for earlier switches: ", status.ToString()), true);
      applying.reset();
      return;
    }
    WriteTables(*a.map, layout, pinned_tables);
    applying = std::move(a);
  }

  void CompleteApplying() {
    SetGroupMap(applying->map, applying->version);
    pending_active_ack = applying->version;
    {
      absl::MutexLock lock(&mu);
      stats.plans_applied++;
    }
    applying.reset();
  }

  // Stages applying->chunks[chunks_staged] into area chunks_staged % 2; records the switch copies.
  void StageNextChunk() {
    Applying& a = *applying;
    const int32_t c = a.chunks_staged;
    const int area = c % DeviceContext::kNumAreas;
    auto* base = static_cast<uint8_t*>(areas[area]);
    std::vector<CopyOp> local;
    std::vector<PeerTransfer> sends, receives;
    std::vector<CopyOp> switch_copies;
    int64_t received = 0, copied = 0;
    for (size_t i = 0; i < a.chunks[c].size(); ++i) {
      const int32_t l = a.chunks[c][i];
      const LayerTransfer& t = a.schedule[l];
      uint8_t* layer_base = base + i * area_stride;
      for (const transfer::StagedExpert& staged : t.staged) {
        uint8_t* dst = layer_base + static_cast<size_t>(staged.staging_index) * slot_bytes[l];
        const bool is_local = staged.src_rank == options.rank;
        const SlotWeights* src =
            is_local ? &options.weights[l][staged.src_slot - first_slot] : nullptr;
        size_t offset = 0;
        for (size_t b = 0; b < options.weights[l][0].size(); ++b) {
          const size_t n = options.weights[l][0][b].bytes;
          if (is_local) {
            local.push_back({dst + offset, (*src)[b].data, n});
            copied += static_cast<int64_t>(n);
          } else {
            receives.push_back({staged.src_rank, dst + offset, n});
            received += static_cast<int64_t>(n);
          }
          for (const int32_t slot : staged.dst_slots) {
            switch_copies.push_back(
                {options.weights[l][slot - first_slot][b].data, dst + offset, n});
          }
          offset += n;
        }
      }
      for (const transfer::SendTask& send : t.sends) {
        for (const WeightBuffer& buffer : options.weights[l][send.src_slot - first_slot]) {
          sends.push_back({send.dst_rank, buffer.data, buffer.bytes});
        }
      }
    }
    // Waiting for the switch that still reads the area is the switch's cost, not staging's.
    const absl::Time wait_start = absl::Now();
    absl::Status status = device->WaitForArea(area);
    const absl::Time start = absl::Now();
    if (status.ok()) {
      status = device->StageCopies(local);
      // Local copies and transfers run together; the copies are waited for even when the
      // transfers failed, so that nothing writes the area afterwards.
      if (status.ok()) status = comm->SendRecvGroup(sends, receives);
      if (absl::Status finished = device->FinishStaging(); status.ok()) status = finished;
    }
    const absl::Time end = absl::Now();
    const double seconds = absl::ToDoubleSeconds(end - start);
    spdlog::debug(
        "rank {}: chunk {} of plan {}: waited {:.3f} ms for the area, staged {} local copies "
        "({} bytes) and {} sends + {} receives ({} bytes) in {:.3f} ms",
        options.rank, c, a.version, absl::ToDoubleMilliseconds(start - wait_start), local.size(),
        copied, sends.size(), receives.size(), received, seconds * 1e3);
    a.stage_status = status;
    absl::MutexLock lock(&mu);
    stats.staging_seconds += seconds;
    stats.area_wait_seconds += absl::ToDoubleSeconds(start - wait_start);
    if (!status.ok()) return;
    a.chunks_staged++;
    a.switch_copies.push_back(std::move(switch_copies));
    stats.bytes_received += received;
    stats.bytes_copied_locally += copied;
  }

  void RunApplyingSync(int64_t step) {
    Applying& a = *applying;
    const int64_t mine = a.stage_status.ok() ? a.chunks_staged : -1;
    absl::StatusOr<int64_t> agreed = comm->AllReduceMin(mine);
    if (!agreed.ok() || *agreed < 0) {
      // Nothing staged after the last decided chunk is switched, on any rank.
      std::vector<bool> switched(L, false);
      for (int32_t c = 0; c < a.chunks_decided; ++c) {
        for (const int32_t l : a.chunks[c]) switched[l] = true;
      }
      const std::string error =
          !agreed.ok() ? absl::StrCat("sync at step ", step, ": ", agreed.status().ToString())
          : !a.stage_status.ok()
              ? absl::StrCat("staging chunk ", a.chunks_staged, ": ", a.stage_status.ToString())
              : absl::StrCat("another rank failed to stage chunk ", a.chunks_staged);
      const int32_t decided = a.chunks_decided;
      // A failed transfer leaves the communicators out of step: the group has to be rebuilt.
      Fail(absl::StrCat(error, " (", decided, " of ", a.chunks.size(), " chunks switched before)"),
           true);
      if (decided > 0) {
        SetGroupMap(std::make_shared<const ExpertMap>(MixMaps(*group_map, *a.map, switched)),
                    group_version);
      }
      applying.reset();
      FinishSync(step, std::nullopt);
      return;
    }
    std::optional<Switch> sw;
    if (*agreed > a.chunks_decided) {
      // The oldest undecided chunk is staged everywhere: switch it at the next sync step.
      const int32_t c = a.chunks_decided;
      sw.emplace();
      sw->effective_step = step + options.sync_every_steps;
      sw->version = a.version;
      sw->area = c % DeviceContext::kNumAreas;
      sw->layers = a.chunks[c];
      sw->copies = std::move(a.switch_copies.front());
      a.switch_copies.erase(a.switch_copies.begin());
      for (const CopyOp& copy : sw->copies) sw->weight_bytes += static_cast<int64_t>(copy.bytes);
      for (const int32_t l : a.chunks[c]) {
        const auto upload = [&](size_t offset, size_t count) {
          sw->copies.push_back(
              {device_tables + offset, pinned_tables + offset, count * sizeof(int32_t)});
        };
        upload(layout.phy2log_offset(l), static_cast<size_t>(P));
        upload(layout.log2phy_offset(l), static_cast<size_t>(E) * W);
        upload(layout.logcnt_offset(l), static_cast<size_t>(E));
      }
      a.chunks_decided++;
    }
    const bool all_decided = a.chunks_decided == static_cast<int32_t>(a.chunks.size());
    if (all_decided) {
      if (sw.has_value()) sw->last = true;
      CompleteApplying();
    }
    FinishSync(step, std::move(sw));
    if (!all_decided && applying->chunks_staged < static_cast<int32_t>(applying->chunks.size()) &&
        applying->chunks_staged - applying->chunks_decided < DeviceContext::kNumAreas) {
      StageNextChunk();
    }
  }
};

absl::StatusOr<std::unique_ptr<PlacementAgent>> PlacementAgent::Create(
    PlacementAgentOptions options, transfer::Communicator* communicator,
    transfer::DeviceContext* device) {
  if (options.initial_map == nullptr) {
    return absl::InvalidArgumentError("initial_map is required");
  }
  const ExpertMap& map = *options.initial_map;
  if (communicator == nullptr || device == nullptr) {
    return absl::InvalidArgumentError("communicator and device are required");
  }
  if (options.rank != communicator->rank()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank = ", options.rank, " differs from the communicator's rank ", communicator->rank()));
  }
  if (communicator->size() != map.num_ranks()) {
    return absl::InvalidArgumentError(absl::StrCat("the communicator has ", communicator->size(),
                                                   " ranks, the initial map has ",
                                                   map.num_ranks()));
  }
  if (options.initial_version < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("initial_version = ", options.initial_version, " is negative"));
  }
  if (options.sync_every_steps < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("sync_every_steps = ", options.sync_every_steps, " must be ≥ 1"));
  }
  if (options.layers_per_chunk < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("layers_per_chunk = ", options.layers_per_chunk, " must be ≥ 1"));
  }
  const int32_t L = map.num_layers();
  const int32_t S = map.layout().SlotsOnRank(options.rank);
  if (static_cast<int32_t>(options.weights.size()) != L) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights has ", options.weights.size(), " layers, the map has ", L));
  }
  std::vector<size_t> slot_bytes(L, 0);
  for (int32_t l = 0; l < L; ++l) {
    const auto& layer = options.weights[l];
    if (static_cast<int32_t>(layer.size()) != S) {
      return absl::InvalidArgumentError(absl::StrCat("weights[", l, "] has ", layer.size(),
                                                     " slots, rank ", options.rank, " has ", S));
    }
    for (int32_t s = 0; s < S; ++s) {
      if (layer[s].size() != layer[0].size()) {
        return absl::InvalidArgumentError(absl::StrCat("weights[", l, "][", s, "] has ",
                                                       layer[s].size(), " buffers, weights[", l,
                                                       "][0] has ", layer[0].size()));
      }
      for (size_t b = 0; b < layer[s].size(); ++b) {
        if (layer[s][b].data == nullptr && layer[s][b].bytes > 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("weights[", l, "][", s, "][", b, "].data is null"));
        }
        if (layer[s][b].bytes != layer[0][b].bytes) {
          return absl::InvalidArgumentError(absl::StrCat("weights[", l, "][", s, "][", b, "] has ",
                                                         layer[s][b].bytes, " bytes, weights[", l,
                                                         "][0][", b, "] has ", layer[0][b].bytes));
        }
        if (s == 0) slot_bytes[l] += layer[0][b].bytes;
      }
    }
  }

  // Sends read the slots: backends whose receivers read the sender's memory (CUDA IPC) export
  // them here, once.
  std::vector<transfer::MemoryRange> send_ranges;
  for (const auto& layer : options.weights) {
    for (const SlotWeights& slot : layer) {
      for (const WeightBuffer& buffer : slot) {
        if (buffer.bytes > 0) send_ranges.push_back({buffer.data, buffer.bytes});
      }
    }
  }
  RETURN_IF_ERROR(communicator->RegisterSendBuffers(send_ranges));

  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->comm = communicator;
  impl->device = device;
  impl->L = L;
  impl->E = map.num_logical_experts();
  impl->P = map.num_physical_experts();
  impl->R = map.num_ranks();
  impl->W = map.log2phy_width();
  impl->S = S;
  impl->first_slot = map.layout().FirstSlotOfRank(impl->options.rank);
  impl->layout = TableLayout{impl->L, impl->E, impl->P, impl->W};
  impl->slot_bytes = slot_bytes;
  impl->area_stride = *std::max_element(slot_bytes.begin(), slot_bytes.end()) * S;
  const size_t area_bytes = impl->area_stride * impl->options.layers_per_chunk;
  for (void*& area : impl->areas) {
    ASSIGN_OR_RETURN(area, device->Allocate(area_bytes, MemoryKind::kDevice));
  }
  const size_t table_bytes = impl->layout.total() * sizeof(int32_t);
  ASSIGN_OR_RETURN(void* pinned, device->Allocate(table_bytes, MemoryKind::kPinnedHost));
  impl->pinned_tables = static_cast<int32_t*>(pinned);
  ASSIGN_OR_RETURN(void* tables, device->Allocate(table_bytes, MemoryKind::kDevice));
  impl->device_tables = static_cast<int32_t*>(tables);
  WriteTables(map, impl->layout, impl->pinned_tables);
  impl->host_tables.assign(impl->pinned_tables, impl->pinned_tables + impl->layout.total());
  const CopyOp upload{impl->device_tables, impl->pinned_tables, table_bytes};
  if (absl::Status status = device->StageCopies({&upload, 1}); !status.ok()) return status;
  if (absl::Status status = device->FinishStaging(); !status.ok()) return status;
  impl->layer_versions.assign(L, impl->options.initial_version);
  impl->SetGroupMap(impl->options.initial_map, impl->options.initial_version);
  {
    absl::MutexLock lock(&impl->mu);
    impl->floor_version = impl->options.initial_version;
    impl->stats.active_version = impl->options.initial_version;
  }
  Impl* raw = impl.get();
  raw->thread = std::thread([raw] { raw->Run(); });
  return std::unique_ptr<PlacementAgent>(new PlacementAgent(std::move(impl)));
}

PlacementAgent::PlacementAgent(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

PlacementAgent::~PlacementAgent() {
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->stopping = true;
  }
  impl_->thread.join();
  // Switch copies may still be queued on the device: let them finish before freeing the areas.
  (void)impl_->device->WaitForSwitches();
}

void PlacementAgent::OfferPlan(const AgentPlan& plan) { impl_->Offer(plan); }

absl::Status PlacementAgent::OnStepBoundary(int64_t step) { return impl_->OnStepBoundary(step); }

std::span<const int32_t> PlacementAgent::phy2log(int32_t layer) const {
  return {impl_->host_tables.data() + impl_->layout.phy2log_offset(layer),
          static_cast<size_t>(impl_->P)};
}
std::span<const int32_t> PlacementAgent::log2phy(int32_t layer) const {
  return {impl_->host_tables.data() + impl_->layout.log2phy_offset(layer),
          static_cast<size_t>(impl_->E) * impl_->W};
}
std::span<const int32_t> PlacementAgent::logcnt(int32_t layer) const {
  return {impl_->host_tables.data() + impl_->layout.logcnt_offset(layer),
          static_cast<size_t>(impl_->E)};
}

PlacementAgent::DeviceTables PlacementAgent::device_tables() const {
  return {impl_->device_tables + impl_->layout.phy2log_offset(0),
          impl_->device_tables + impl_->layout.log2phy_offset(0),
          impl_->device_tables + impl_->layout.logcnt_offset(0), impl_->W};
}

int64_t PlacementAgent::layer_version(int32_t layer) const { return impl_->layer_versions[layer]; }

int64_t PlacementAgent::active_version() const { return impl_->ActiveVersion(); }

PlacementAgent::Status PlacementAgent::status() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->stats;
}

}  // namespace eplb::agent
