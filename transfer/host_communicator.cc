#include "transfer/host_communicator.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/check.h"
#include "core/status_macros.h"

namespace eplb::transfer {
namespace {

constexpr absl::string_view kSendRecvGroup = "SendRecvGroup";
constexpr absl::string_view kAllReduceMin = "AllReduceMin";
constexpr absl::string_view kAllGather = "AllGather";

// "rank 3" or "ranks 1, 3".
std::string RankList(const std::vector<int32_t>& ranks) {
  return absl::StrCat(ranks.size() == 1 ? "rank " : "ranks ", absl::StrJoin(ranks, ", "));
}

// A send posted by one SendRecvGroup call. It lives in the call's frame; the channel points at it
// until it is matched or withdrawn.
struct PendingSend {
  int32_t peer = 0;
  std::vector<uint8_t> payload;  // moved to the matching receive
  bool done = false;
  absl::Status status;  // set when done: OK, or INTERNAL on a size mismatch
};

struct PendingReceive {
  int32_t peer = 0;
  size_t bytes = 0;
  std::vector<uint8_t> payload;  // the matched send's bytes, copied out after the call's wait
  bool done = false;
  absl::Status status;
};

// Transfers from one rank to another. At most one of the queues is non-empty: a new send is
// matched with the oldest waiting receive and vice versa.
struct Channel {
  std::deque<PendingSend*> sends;
  std::deque<PendingReceive*> receives;
  int64_t matched = 0;  // pairs matched so far
};

enum class CollectiveKind { kAllReduceMin, kAllGather };

absl::string_view OpName(CollectiveKind kind) {
  return kind == CollectiveKind::kAllReduceMin ? kAllReduceMin : kAllGather;
}

// What a completed round returns.
struct CollectiveResult {
  int64_t min = 0;
  std::vector<std::vector<uint8_t>> gathered;  // AllGather only
};

}  // namespace

class HostGroupState {
 public:
  HostGroupState(int32_t size, HostGroupOptions options)
      : size_(size),
        options_(std::move(options)),
        wakeups_(new absl::CondVar[size]),
        failed_(size, false),
        in_call_(size, false),
        call_counts_(size, 0),
        channels_(static_cast<size_t>(size) * size) {
    for (int32_t r = 0; r < size; ++r) all_ranks_.push_back(r);
    round_.present.assign(size, false);
    round_.values.assign(size, 0);
    round_.contributions.resize(size);
  }

  int32_t size() const { return size_; }

  absl::Status SendRecvGroup(int32_t rank, std::span<const PeerTransfer> sends,
                             std::span<const PeerTransfer> receives) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<CollectiveResult> Collective(int32_t rank, CollectiveKind kind, int64_t value,
                                              std::span<const uint8_t> bytes)
      ABSL_LOCKS_EXCLUDED(mu_);

  void Abort(absl::Status status) ABSL_LOCKS_EXCLUDED(mu_);
  void FailRank(int32_t rank) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // The round of collective calls being gathered.
  struct Round {
    int64_t number = 0;
    int32_t arrived = 0;
    std::vector<bool> present;  // by rank
    int32_t first_rank = -1;    // the others must agree with its kind and size
    CollectiveKind kind = CollectiveKind::kAllReduceMin;
    size_t bytes = 0;
    std::vector<int64_t> values;                      // AllReduceMin, by rank
    std::vector<std::vector<uint8_t>> contributions;  // AllGather, by rank
  };

  // Runs the before_op hook and marks the rank as in a call. Pair with EndCall.
  absl::Status BeginCall(int32_t rank, absl::string_view op) ABSL_LOCKS_EXCLUDED(mu_);
  void EndCall(int32_t rank) ABSL_LOCKS_EXCLUDED(mu_);

  absl::Status RunSendRecvGroup(int32_t rank, std::span<const PeerTransfer> sends,
                                std::span<const PeerTransfer> receives) ABSL_LOCKS_EXCLUDED(mu_);
  // Posts the transfers and waits until all are matched or the call fails. On failure the
  // unmatched ones are withdrawn from the channels.
  absl::Status Exchange(int32_t rank, std::vector<PendingSend>& sends,
                        std::vector<PendingReceive>& receives) ABSL_LOCKS_EXCLUDED(mu_);
  void Match(int32_t src, int32_t dst, Channel& channel, PendingSend& send, PendingReceive& receive)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Channel& ChannelOf(int32_t src, int32_t dst) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return channels_[static_cast<size_t>(src) * size_ + dst];
  }

  absl::StatusOr<CollectiveResult> RunCollective(int32_t rank, CollectiveKind kind, int64_t value,
                                                 std::span<const uint8_t> bytes)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Adds `rank`'s contribution to round_ and completes the round when it is the last, or sets
  // collective_failure_ when the contribution disagrees with the round's first.
  void Join(int32_t rank, CollectiveKind kind, int64_t value, std::vector<uint8_t> contribution)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CompleteRound() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Withdraw(int32_t rank) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The abort status, or UNAVAILABLE if `rank` (the caller) has failed; else OK.
  absl::Status CallerStatus(int32_t rank, absl::string_view op) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // UNAVAILABLE naming the failed ones among `needed`, or OK.
  absl::Status FailedPeersStatus(int32_t rank, absl::string_view op,
                                 const std::vector<int32_t>& needed) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status TimeoutStatus(int32_t rank, absl::string_view op,
                             std::vector<int32_t> waited_for) const;
  void WakeAll() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int32_t size_;
  const HostGroupOptions options_;
  std::vector<int32_t> all_ranks_;  // 0 .. size_ − 1: a collective needs them all

  mutable absl::Mutex mu_;
  // One per rank: a rank waits on its own, peers signal it. CondVar is thread-safe.
  const std::unique_ptr<absl::CondVar[]> wakeups_;
  absl::Status abort_status_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> failed_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> in_call_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> call_counts_ ABSL_GUARDED_BY(mu_);
  std::vector<Channel> channels_ ABSL_GUARDED_BY(mu_);  // [src * size + dst]

  Round round_ ABSL_GUARDED_BY(mu_);
  // Set when the ranks of a round disagree. The ranks' sequences of collective calls no longer
  // line up, so every collective call from then on returns it.
  absl::Status collective_failure_ ABSL_GUARDED_BY(mu_);
  // The result of the last completed round. Every rank of it has returned, or reads it before it
  // can join the next round, so the next round cannot complete (and overwrite it) before that.
  int64_t completed_number_ ABSL_GUARDED_BY(mu_) = -1;
  CollectiveResult completed_ ABSL_GUARDED_BY(mu_);
};

absl::Status HostGroupState::BeginCall(int32_t rank, absl::string_view op) {
  int64_t call_index = 0;
  {
    absl::MutexLock lock(&mu_);
    EPLB_CHECK(!in_call_[rank], "overlapping calls on rank ", rank, " (", op, ")");
    in_call_[rank] = true;
    call_index = call_counts_[rank]++;
  }
  if (options_.before_op) {
    absl::Status status = options_.before_op(rank, op, call_index);
    if (!status.ok()) {
      EndCall(rank);
      return status;
    }
  }
  return absl::OkStatus();
}

void HostGroupState::EndCall(int32_t rank) {
  absl::MutexLock lock(&mu_);
  in_call_[rank] = false;
}

absl::Status HostGroupState::CallerStatus(int32_t rank, absl::string_view op) const {
  if (!abort_status_.ok()) return abort_status_;
  if (failed_[rank]) {
    return absl::UnavailableError(
        absl::StrCat(op, " on rank ", rank, ": rank ", rank, " has failed"));
  }
  return absl::OkStatus();
}

absl::Status HostGroupState::FailedPeersStatus(int32_t rank, absl::string_view op,
                                               const std::vector<int32_t>& needed) const {
  std::vector<int32_t> failed;
  for (const int32_t peer : needed) {
    if (failed_[peer]) failed.push_back(peer);
  }
  if (failed.empty()) return absl::OkStatus();
  std::sort(failed.begin(), failed.end());
  failed.erase(std::unique(failed.begin(), failed.end()), failed.end());
  return absl::UnavailableError(absl::StrCat(op, " on rank ", rank, ": ", RankList(failed),
                                             failed.size() == 1 ? " has" : " have", " failed"));
}

absl::Status HostGroupState::TimeoutStatus(int32_t rank, absl::string_view op,
                                           std::vector<int32_t> waited_for) const {
  std::sort(waited_for.begin(), waited_for.end());
  waited_for.erase(std::unique(waited_for.begin(), waited_for.end()), waited_for.end());
  return absl::DeadlineExceededError(absl::StrCat(op, " on rank ", rank, " timed out after ",
                                                  absl::FormatDuration(options_.timeout),
                                                  " waiting for ", RankList(waited_for)));
}

void HostGroupState::WakeAll() {
  for (int32_t r = 0; r < size_; ++r) wakeups_[r].SignalAll();
}

void HostGroupState::Match(int32_t src, int32_t dst, Channel& channel, PendingSend& send,
                           PendingReceive& receive) {
  const int64_t index = channel.matched++;
  if (send.payload.size() != receive.bytes) {
    const absl::Status mismatch = absl::InternalError(
        absl::StrCat("SendRecvGroup size mismatch on transfer #", index, " from rank ", src,
                     " to rank ", dst, ": rank ", src, " sends ", send.payload.size(),
                     " bytes, rank ", dst, " receives ", receive.bytes, " bytes"));
    send.status = mismatch;
    receive.status = mismatch;
  } else {
    receive.payload = std::move(send.payload);
  }
  send.done = true;
  receive.done = true;
  wakeups_[src].SignalAll();
  wakeups_[dst].SignalAll();
}

absl::Status HostGroupState::SendRecvGroup(int32_t rank, std::span<const PeerTransfer> sends,
                                           std::span<const PeerTransfer> receives) {
  RETURN_IF_ERROR(BeginCall(rank, kSendRecvGroup));
  absl::Status status = RunSendRecvGroup(rank, sends, receives);
  EndCall(rank);
  return status;
}

absl::Status HostGroupState::RunSendRecvGroup(int32_t rank, std::span<const PeerTransfer> sends,
                                              std::span<const PeerTransfer> receives) {
  RETURN_IF_ERROR(CheckPeerTransfers(rank, size_, sends, receives));
  // Payloads are copied in and out on the owning rank's thread, outside the lock; under the lock
  // a match only moves the vector. So no rank ever touches another rank's buffers.
  std::vector<PendingSend> pending_sends(sends.size());
  for (size_t i = 0; i < sends.size(); ++i) {
    pending_sends[i].peer = sends[i].peer;
    const auto* data = static_cast<const uint8_t*>(sends[i].data);
    pending_sends[i].payload.assign(data, data + sends[i].bytes);
  }
  std::vector<PendingReceive> pending_receives(receives.size());
  for (size_t i = 0; i < receives.size(); ++i) {
    pending_receives[i].peer = receives[i].peer;
    pending_receives[i].bytes = receives[i].bytes;
  }
  RETURN_IF_ERROR(Exchange(rank, pending_sends, pending_receives));
  for (size_t i = 0; i < receives.size(); ++i) {
    if (receives[i].bytes > 0) {
      std::memcpy(receives[i].data, pending_receives[i].payload.data(), receives[i].bytes);
    }
  }
  return absl::OkStatus();
}

absl::Status HostGroupState::Exchange(int32_t rank, std::vector<PendingSend>& sends,
                                      std::vector<PendingReceive>& receives) {
  const absl::Time deadline = absl::Now() + options_.timeout;
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(CallerStatus(rank, kSendRecvGroup));
  {
    std::vector<int32_t> peers;
    for (const PendingSend& send : sends) peers.push_back(send.peer);
    for (const PendingReceive& receive : receives) peers.push_back(receive.peer);
    RETURN_IF_ERROR(FailedPeersStatus(rank, kSendRecvGroup, peers));
  }
  // Sends first, so that sends to the own rank meet this call's receives from it.
  for (PendingSend& send : sends) {
    Channel& channel = ChannelOf(rank, send.peer);
    if (channel.receives.empty()) {
      channel.sends.push_back(&send);
    } else {
      PendingReceive* receive = channel.receives.front();
      channel.receives.pop_front();
      Match(rank, send.peer, channel, send, *receive);
    }
  }
  for (PendingReceive& receive : receives) {
    Channel& channel = ChannelOf(receive.peer, rank);
    if (channel.sends.empty()) {
      channel.receives.push_back(&receive);
    } else {
      PendingSend* send = channel.sends.front();
      channel.sends.pop_front();
      Match(receive.peer, rank, channel, *send, receive);
    }
  }

  absl::Status failure;
  bool timed_out = false;
  while (true) {
    std::vector<int32_t> outstanding;  // peers of the transfers not matched yet
    absl::Status mismatch;
    for (const PendingSend& send : sends) {
      if (!send.done) outstanding.push_back(send.peer);
      if (mismatch.ok()) mismatch = send.status;
    }
    for (const PendingReceive& receive : receives) {
      if (!receive.done) outstanding.push_back(receive.peer);
      if (mismatch.ok()) mismatch = receive.status;
    }
    if (outstanding.empty() && mismatch.ok()) return absl::OkStatus();
    failure = CallerStatus(rank, kSendRecvGroup);
    if (failure.ok()) failure = mismatch;
    if (failure.ok()) failure = FailedPeersStatus(rank, kSendRecvGroup, outstanding);
    if (failure.ok() && timed_out) failure = TimeoutStatus(rank, kSendRecvGroup, outstanding);
    if (!failure.ok()) break;
    timed_out = wakeups_[rank].WaitWithDeadline(&mu_, deadline);
  }
  // Withdraw what is still queued: the channels must not point into the caller's frame.
  for (PendingSend& send : sends) {
    if (send.done) continue;
    auto& queue = ChannelOf(rank, send.peer).sends;
    const auto it = std::find(queue.begin(), queue.end(), &send);
    EPLB_CHECK(it != queue.end(), "unmatched send of rank ", rank, " is not queued");
    queue.erase(it);
  }
  for (PendingReceive& receive : receives) {
    if (receive.done) continue;
    auto& queue = ChannelOf(receive.peer, rank).receives;
    const auto it = std::find(queue.begin(), queue.end(), &receive);
    EPLB_CHECK(it != queue.end(), "unmatched receive of rank ", rank, " is not queued");
    queue.erase(it);
  }
  return failure;
}

absl::StatusOr<CollectiveResult> HostGroupState::Collective(int32_t rank, CollectiveKind kind,
                                                            int64_t value,
                                                            std::span<const uint8_t> bytes) {
  RETURN_IF_ERROR(BeginCall(rank, OpName(kind)));
  absl::StatusOr<CollectiveResult> result = RunCollective(rank, kind, value, bytes);
  EndCall(rank);
  return result;
}

absl::StatusOr<CollectiveResult> HostGroupState::RunCollective(int32_t rank, CollectiveKind kind,
                                                               int64_t value,
                                                               std::span<const uint8_t> bytes) {
  const absl::string_view op = OpName(kind);
  std::vector<uint8_t> contribution(bytes.begin(), bytes.end());
  const absl::Time deadline = absl::Now() + options_.timeout;
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(CallerStatus(rank, op));
  RETURN_IF_ERROR(FailedPeersStatus(rank, op, all_ranks_));
  RETURN_IF_ERROR(collective_failure_);
  const int64_t number = round_.number;
  Join(rank, kind, value, std::move(contribution));
  bool timed_out = false;
  while (true) {
    // Checked first: a round that completed is not undone by a later failure.
    if (completed_number_ >= number) return completed_;
    absl::Status failure = CallerStatus(rank, op);
    if (failure.ok()) failure = collective_failure_;
    if (failure.ok()) failure = FailedPeersStatus(rank, op, all_ranks_);
    if (failure.ok() && timed_out) {
      std::vector<int32_t> absent;
      for (int32_t r = 0; r < size_; ++r) {
        if (!round_.present[r]) absent.push_back(r);
      }
      failure = TimeoutStatus(rank, op, absent);
    }
    if (!failure.ok()) {
      Withdraw(rank);
      return failure;
    }
    timed_out = wakeups_[rank].WaitWithDeadline(&mu_, deadline);
  }
}

void HostGroupState::Join(int32_t rank, CollectiveKind kind, int64_t value,
                          std::vector<uint8_t> contribution) {
  if (round_.arrived == 0) {
    round_.first_rank = rank;
    round_.kind = kind;
    round_.bytes = contribution.size();
  } else if (kind != round_.kind) {
    collective_failure_ = absl::InternalError(
        absl::StrCat("round #", round_.number, " mismatch: rank ", rank, " calls ", OpName(kind),
                     ", rank ", round_.first_rank, " calls ", OpName(round_.kind)));
  } else if (kind == CollectiveKind::kAllGather && contribution.size() != round_.bytes) {
    collective_failure_ = absl::InternalError(
        absl::StrCat("AllGather round #", round_.number, " size mismatch: rank ", rank,
                     " contributes ", contribution.size(), " bytes, rank ", round_.first_rank,
                     " contributes ", round_.bytes, " bytes"));
  }
  if (!collective_failure_.ok()) {
    WakeAll();
    return;
  }
  EPLB_CHECK(!round_.present[rank], "rank ", rank, " joined round #", round_.number, " twice");
  round_.present[rank] = true;
  ++round_.arrived;
  round_.values[rank] = value;
  round_.contributions[rank] = std::move(contribution);
  if (round_.arrived == size_) CompleteRound();
}

void HostGroupState::CompleteRound() {
  completed_number_ = round_.number;
  completed_.min = *std::min_element(round_.values.begin(), round_.values.end());
  completed_.gathered.clear();
  if (round_.kind == CollectiveKind::kAllGather) {
    completed_.gathered = std::move(round_.contributions);
  }
  ++round_.number;
  round_.arrived = 0;
  round_.present.assign(size_, false);
  round_.first_rank = -1;
  round_.contributions.assign(size_, {});
  WakeAll();
}

void HostGroupState::Withdraw(int32_t rank) {
  if (!round_.present[rank]) return;
  round_.present[rank] = false;
  round_.contributions[rank].clear();
  --round_.arrived;
}

void HostGroupState::Abort(absl::Status status) {
  if (status.ok()) status = absl::AbortedError("host communicator group aborted");
  absl::MutexLock lock(&mu_);
  if (abort_status_.ok()) abort_status_ = std::move(status);
  WakeAll();
}

void HostGroupState::FailRank(int32_t rank) {
  EPLB_CHECK(rank >= 0 && rank < size_, "rank ", rank, " is outside [0, ", size_, ")");
  absl::MutexLock lock(&mu_);
  failed_[rank] = true;
  WakeAll();
}

namespace {

// Rank `rank`'s view of the group.
class HostCommunicator final : public Communicator {
 public:
  HostCommunicator(std::shared_ptr<HostGroupState> state, int32_t rank)
      : state_(std::move(state)), rank_(rank) {}

  int32_t rank() const override { return rank_; }
  int32_t size() const override { return state_->size(); }

  absl::Status SendRecvGroup(std::span<const PeerTransfer> sends,
                             std::span<const PeerTransfer> receives) override {
    return state_->SendRecvGroup(rank_, sends, receives);
  }

  absl::StatusOr<int64_t> AllReduceMin(int64_t value) override {
    ASSIGN_OR_RETURN(CollectiveResult result,
                     state_->Collective(rank_, CollectiveKind::kAllReduceMin, value, {}));
    return result.min;
  }

  absl::StatusOr<std::vector<std::vector<uint8_t>>> AllGather(
      std::span<const uint8_t> bytes) override {
    ASSIGN_OR_RETURN(CollectiveResult result,
                     state_->Collective(rank_, CollectiveKind::kAllGather, 0, bytes));
    return std::move(result.gathered);
  }

 private:
  const std::shared_ptr<HostGroupState> state_;
  const int32_t rank_;
};

}  // namespace

absl::StatusOr<HostCommunicatorGroup> HostCommunicatorGroup::Create(int32_t size,
                                                                    HostGroupOptions options) {
  if (size < 1 || size > kMaxSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("size = ", size, " is out of range [1, ", kMaxSize, "]"));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("timeout = ", absl::FormatDuration(options.timeout), " is not positive"));
  }
  return HostCommunicatorGroup(std::make_shared<HostGroupState>(size, std::move(options)));
}

HostCommunicatorGroup::HostCommunicatorGroup(std::shared_ptr<HostGroupState> state)
    : state_(std::move(state)) {}

HostCommunicatorGroup::~HostCommunicatorGroup() = default;

int32_t HostCommunicatorGroup::size() const { return state_->size(); }

std::unique_ptr<Communicator> HostCommunicatorGroup::ForRank(int32_t rank) {
  EPLB_CHECK(rank >= 0 && rank < state_->size(), "rank ", rank, " is outside [0, ", state_->size(),
             ")");
  return std::make_unique<HostCommunicator>(state_, rank);
}

std::vector<std::unique_ptr<Communicator>> HostCommunicatorGroup::ForAllRanks() {
  std::vector<std::unique_ptr<Communicator>> communicators;
  communicators.reserve(state_->size());
  for (int32_t rank = 0; rank < state_->size(); ++rank) communicators.push_back(ForRank(rank));
  return communicators;
}

void HostCommunicatorGroup::Abort(absl::Status status) { state_->Abort(std::move(status)); }

void HostCommunicatorGroup::FailRank(int32_t rank) { state_->FailRank(rank); }

}  // namespace eplb::transfer
