// HostCommunicatorGroup: the Communicator backend for R ranks that run as threads of one process,
// with buffers in host memory. For CPU tests of the transfer path and for the demo.
//
// The group holds what the ranks share: one FIFO channel per (source, destination) pair for
// SendRecvGroup and one collective round for AllReduceMin and AllGather. ForRank(r) hands out rank
// r's Communicator; each rank drives its own communicator from its own thread. The communicators
// share the state with the group, so either may be destroyed first.
//
// Semantics follow NCCL groups:
//   - SendRecvGroup is a rendezvous. The k-th send from rank a to rank b (counted over the group's
//     life) matches the k-th receive on b from a. A send completes when its matching receive took
//     it; the call returns once all its sends were taken and all its receives filled, so a send to
//     the own rank needs its receive in the same call (sends are posted before receives). Matched
//     sizes must be equal. A payload is copied into the group on the sender's thread and out into
//     the receive buffer on the receiver's, so no thread touches another rank's buffers.
//   - AllReduceMin and AllGather are barriers: every rank makes the same sequence of collective
//     calls, and the n-th call of each rank joins round n. A round completes when all ranks joined.
//
// Failures, for tests of the callers' error paths (all prompt, no call hangs):
//   - options.timeout: a call blocked that long returns DEADLINE_EXCEEDED.
//   - Abort(status): every pending and future call on every rank returns `status`.
//   - FailRank(r): rank r is dead; calls that need it return UNAVAILABLE.
//   - options.before_op: injects an error at a chosen call of a chosen rank.
// Once a call failed, the ranks' sequences of calls may no longer line up (the failed call's
// unmatched transfers and its collective contribution are withdrawn, matched ones are not); abort
// the group rather than reuse it.
//
// Thread-safety: HostCommunicatorGroup is thread-safe. Each Communicator is used from one thread
// at a time, and calls of one rank must not overlap (checked: overlapping calls crash).
#ifndef EPLB_TRANSFER_HOST_COMMUNICATOR_H_
#define EPLB_TRANSFER_HOST_COMMUNICATOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "transfer/communicator.h"

namespace eplb::transfer {

struct HostGroupOptions {
  // How long one call may wait for other ranks, in real time, before it returns
  // DEADLINE_EXCEEDED naming the ranks it waited for. Must be > 0; absl::InfiniteDuration() waits
  // forever.
  absl::Duration timeout = absl::Seconds(30);

  // Fault injection for tests (empty: none). Called on the calling rank's thread at the start of
  // every call, before anything else and without the group's lock held (so it may call Abort or
  // FailRank, or block). `op` is "SendRecvGroup", "AllReduceMin" or "AllGather"; `call_index`
  // counts the rank's calls of any op, from 0. A non-OK status is returned by the call as is, and
  // the call then does nothing else.
  std::function<absl::Status(int32_t rank, absl::string_view op, int64_t call_index)> before_op;
};

// The state the ranks share; defined in host_communicator.cc.
class HostGroupState;

class HostCommunicatorGroup {
 public:
  static constexpr int32_t kMaxSize = 4096;

  // INVALID_ARGUMENT if size is outside [1, 4096] ("size = 0 is out of range [1, 4096]") or
  // options.timeout is not positive.
  static absl::StatusOr<HostCommunicatorGroup> Create(int32_t size, HostGroupOptions options = {});

  HostCommunicatorGroup(HostCommunicatorGroup&&) = default;
  HostCommunicatorGroup& operator=(HostCommunicatorGroup&&) = default;
  ~HostCommunicatorGroup();

  int32_t size() const;

  // Rank `rank`'s communicator. REQUIRES: 0 <= rank < size(). Communicators handed out for the
  // same rank share its state: their calls must not overlap.
  std::unique_ptr<Communicator> ForRank(int32_t rank);
  // ForRank(r) for r = 0 .. size() − 1.
  std::vector<std::unique_ptr<Communicator>> ForAllRanks();

  // Makes every pending and future call on every rank return `status` (an OK status is replaced
  // by ABORTED "host communicator group aborted"). Only the first Abort counts.
  void Abort(absl::Status status);

  // Marks `rank` as dead, for good. Its own pending and future calls return UNAVAILABLE
  // "<op> on rank <rank>: rank <rank> has failed"; so do other ranks' calls that still need it
  // ("<op> on rank <caller>: rank <rank> has failed"): a SendRecvGroup with an unmatched send to or
  // receive from it, and every collective round it has not completed. Several failed ranks are
  // named together: "ranks 0, 2 have failed". REQUIRES: 0 <= rank < size().
  void FailRank(int32_t rank);

 private:
  explicit HostCommunicatorGroup(std::shared_ptr<HostGroupState> state);

  std::shared_ptr<HostGroupState> state_;
};

// The calls of a rank's communicator return, besides what Communicator states:
//   - the before_op hook's status, if it is not OK;
//   - the Abort status, once the group is aborted;
//   - UNAVAILABLE when the caller or a rank it needs has failed (see FailRank);
//   - INVALID_ARGUMENT, for SendRecvGroup, when a peer is outside [0, size) or `data` is null with
//     `bytes` > 0 ("SendRecvGroup on rank 0: send 2 has peer 7, outside [0, 4)"); nothing is
//     posted;
//   - INTERNAL, for SendRecvGroup, on both ranks of a matched pair whose sizes differ:
//     "SendRecvGroup size mismatch on transfer #k from rank a to rank b: rank a sends X bytes, rank
//     b receives Y bytes" (k counts the pairs matched between a and b, from 0);
//   - INTERNAL when the ranks of a collective round disagree: "round #n mismatch: rank a calls
//     AllGather, rank b calls AllReduceMin" or "AllGather round #n size mismatch: rank a
//     contributes X bytes, rank b contributes Y bytes" (b is the round's first rank, a the first to
//     disagree with it; n counts rounds from 0). The collective sequence is then broken for good:
//     the round's pending calls and every later collective call on any rank return it;
//   - DEADLINE_EXCEEDED after options.timeout: "<op> on rank r timed out after 50ms waiting for
//     ranks 1, 3" (or "waiting for rank 1").

}  // namespace eplb::transfer

#endif  // EPLB_TRANSFER_HOST_COMMUNICATOR_H_
