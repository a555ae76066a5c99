// ShmGroup: the ranks of one node (processes of one host, one PID namespace) sharing a POSIX
// shared-memory segment. It is the control plane of the CUDA IPC communicator
// (cuda_ipc_communicator.h), kept free of CUDA so that it is tested on any machine:
//   - membership: each rank's pid and a small blob it publishes at join (e.g. its CUDA IPC event
//     handle); a rank whose process exited (also a zombie) or that left is noticed by every wait;
//   - collectives: AllGather of up to gather_bytes per rank, in rounds;
//   - one descriptor ring per ordered pair (source, destination) of ranks: the source posts fixed
//     size descriptors, the destination consumes them and later marks them completed;
//   - a table of memory regions per rank (opaque handle bytes, base, size), appended by the rank
//     and read by its peers;
//   - optional relay memory: `relay_pieces` pieces of `relay_piece_bytes` per pair, host memory
//     every rank maps (the CUDA communicator's stand-in for a network between "nodes").
//
// Lifetime: Create makes the segment (name "/eplb-<pid>-<random>") and returns its name, to be
// handed to every rank (through the planner's rendezvous, a pipe, …). Join maps it, registers the
// rank and waits until all ranks joined; every join that got that far unlinks the name as it ends
// (all joined, or the wait failed), so nothing stays behind in /dev/shm once every rank joined,
// whatever happens later. A segment no rank got to join stays until its creator calls Remove.
//
// Failure is group-wide: the first rank that fails (a timeout, a dead peer, a mismatch, its own
// error) records the status in the segment, and every later wait on every rank returns that status
// (with the rank that recorded it). The group is then broken for good.
//
// The segment is trusted only as far as its own ranks: Join checks the header (magic, layout, the
// sizes it implies against the segment's size, the rank range) and every index read from another
// rank is range-checked before use.
//
// Thread-compatible: one ShmGroup object belongs to one rank and is used from one thread at a time.
#ifndef EPLB_TRANSFER_SHM_GROUP_H_
#define EPLB_TRANSFER_SHM_GROUP_H_

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace eplb::transfer {

struct ShmGroupLayout {
  static constexpr int32_t kMaxSize = 64;
  int32_t size = 1;            // ranks, 1 … 64
  int32_t ring_entries = 512;  // descriptors in flight per pair, 1 … 65536
  int32_t max_regions = 4096;  // regions per rank, 1 … 1 << 20
  int32_t gather_bytes = 256;  // AllGather contribution per rank, 8 … 65536
  // Relay memory per pair: relay_pieces × relay_piece_bytes (0 pieces: none). Pieces 0 … 64,
  // piece bytes 4 KiB … 256 MiB when pieces > 0.
  int32_t relay_pieces = 0;
  uint64_t relay_piece_bytes = 0;
};

// A descriptor, as posted by a source rank for one destination.
struct ShmDescriptor {
  uint64_t transfer_bytes = 0;  // size of the whole transfer this piece belongs to
  uint64_t piece_offset = 0;    // where this piece starts within the transfer
  uint64_t piece_bytes = 0;
  uint64_t src_offset = 0;  // within the region (region transfers)
  uint32_t region = 0;      // region index of the source rank, or relay piece index
  uint32_t kind = 0;        // meaning chosen by the user of the ring
};

struct ShmRegion {
  static constexpr size_t kHandleBytes = 64;
  uint8_t handle[kHandleBytes] = {};
  uint64_t base = 0;
  uint64_t bytes = 0;
};

class ShmGroup {
 public:
  static constexpr size_t kBlobBytes = 128;

  // Creates the segment for `layout` and returns its name. INVALID_ARGUMENT naming the field out
  // of range ("ring_entries = 0 is out of range [1, 65536]"); INTERNAL naming the system call.
  static absl::StatusOr<std::string> Create(const ShmGroupLayout& layout);
  // Unlinks a segment by name (for a creator whose ranks never joined). NOT_FOUND if absent.
  static absl::Status Remove(const std::string& name);

  // Joins `name` as `rank` of `size`, publishes `blob` (≤ kBlobBytes) and waits until every rank
  // joined, at most `timeout`. Errors: INVALID_ARGUMENT for a name that is not one of ours
  // ("name must start with /eplb-"), a rank outside [0, size), a blob too large; NOT_FOUND when
  // the segment does not exist; FAILED_PRECONDITION when the segment is not a group of `size`
  // ranks ("segment /eplb-… is a group of 4 ranks, not 2"), is malformed ("segment … is 100 bytes,
  // its layout needs 6400") or the rank is taken ("rank 1 of segment … is already joined by pid
  // 4711"); DEADLINE_EXCEEDED "join of … timed out after 1s waiting for ranks 1, 3"; UNAVAILABLE
  // when a rank that joined exited.
  static absl::StatusOr<std::unique_ptr<ShmGroup>> Join(const std::string& name, int32_t rank,
                                                        int32_t size, std::span<const uint8_t> blob,
                                                        absl::Duration timeout);
  // Marks the rank as left (peers waiting on it fail with "rank r left the group") and unmaps.
  ~ShmGroup();
  ShmGroup(const ShmGroup&) = delete;
  ShmGroup& operator=(const ShmGroup&) = delete;

  int32_t rank() const { return rank_; }
  int32_t size() const { return layout_.size; }
  const ShmGroupLayout& layout() const { return layout_; }
  absl::Duration timeout() const { return timeout_; }
  // How long later waits may take (the join's timeout until set). Must be positive.
  void set_timeout(absl::Duration timeout) { timeout_ = timeout; }
  std::span<const uint8_t> blob(int32_t rank) const;
  pid_t pid(int32_t rank) const;

  // ---- Failure ----
  // The group's failure status (OK while healthy).
  absl::Status failure() const;
  // Records `status` as the group's failure unless one was recorded first; returns the recorded
  // one (as every rank will see it).
  absl::Status Fail(const absl::Status& status);

  // Waits until `done()` returns true. Returns the group's failure as soon as there is one, and
  // fails the group (UNAVAILABLE "<op> on rank 0: rank 2 (pid 4711) exited", or "… rank 2 left the
  // group") when a rank of `waiting_for()` is gone (a rank that already did its part may leave),
  // or (DEADLINE_EXCEEDED "<op> on rank 0 timed out after 60s waiting for ranks 1, 3") after the
  // timeout, naming `waiting_for()`'s ranks. `done` is polled without sleeping; the thread yields
  // between polls; the ranks are checked at most every millisecond.
  absl::Status WaitUntil(const char* op, const std::function<bool()>& done,
                         const std::function<std::vector<int32_t>()>& waiting_for);

  // ---- Collectives ----
  // Every rank contributes `bytes` (at most gather_bytes; the same size on every rank); returns
  // the contributions in rank order. INVALID_ARGUMENT for too many bytes; INTERNAL
  // "AllGather round #n size mismatch: rank a contributes X bytes, rank b contributes Y bytes".
  absl::StatusOr<std::vector<std::vector<uint8_t>>> AllGather(std::span<const uint8_t> bytes);

  // ---- Rings (this rank as source or destination) ----
  // Total descriptors ever posted to `dst` by this rank / completed by it.
  uint64_t posted_to(int32_t dst) const;
  uint64_t completed_by(int32_t dst) const;
  // Posts `d` to `dst` if the ring has room (fewer than ring_entries posted and not consumed).
  bool TryPost(int32_t dst, const ShmDescriptor& d);
  // Descriptors from `src`: posted so far, consumed so far (by this rank).
  uint64_t posted_from(int32_t src) const;
  uint64_t consumed_from(int32_t src) const;
  // The descriptor number `index` from `src` (consumed_from(src) ≤ index < posted_from(src)).
  ShmDescriptor Peek(int32_t src, uint64_t index) const;
  // Frees ring entries up to `count` (the destination copied what it needs out of them).
  void Consume(int32_t src, uint64_t count);
  // Tells `src` that its first `count` descriptors to this rank are done with.
  void Complete(int32_t src, uint64_t count);

  // ---- Regions ----
  // Appends a region of this rank; returns its index. RESOURCE_EXHAUSTED when max_regions are
  // taken.
  absl::StatusOr<uint32_t> AddRegion(const ShmRegion& region);
  // Region `index` of `rank`; OUT_OF_RANGE when the rank has published fewer.
  absl::StatusOr<ShmRegion> GetRegion(int32_t rank, uint32_t index) const;

  // ---- Relay ----
  // Piece `piece` (< relay_pieces) of the pair (src, dst); the whole relay memory for
  // registration with a device runtime.
  uint8_t* RelayPiece(int32_t src, int32_t dst, uint32_t piece) const;
  std::span<uint8_t> RelayMemory() const;

 private:
  ShmGroup(std::string name, int32_t rank, ShmGroupLayout layout, absl::Duration timeout,
           uint8_t* base, size_t bytes);
  absl::Status Gone(const char* op, int32_t peer) const;  // OK when `peer` lives

  std::string name_;
  int32_t rank_;
  ShmGroupLayout layout_;
  absl::Duration timeout_;
  uint8_t* base_;
  size_t bytes_;
  int64_t gather_round_ = 0;
  absl::Time last_peer_check_ = absl::InfinitePast();
};

}  // namespace eplb::transfer

#endif  // EPLB_TRANSFER_SHM_GROUP_H_
