// CudaIpcCommunicator: the Communicator backend for the ranks of one node (processes of one host
// and one PID namespace, one GPU each or several sharing a GPU). It moves bytes with the GPU's copy
// engines and launches no kernel, so a transfer never holds an SM that the serving kernels need
// (cooperative dispatch kernels wait for every SM).
//
// Bootstrap: one process calls NewGroupId (it creates the node's shared-memory segment, see
// shm_group.h) and hands the id to every rank (the planner's rendezvous, a pipe, the launcher);
// each rank calls Create. Create exports the rank's "ready" CUDA event (cudaIpcGetEventHandle) and
// waits until every rank joined.
//
// Transports (options.transport):
//   - kIpc: RegisterSendBuffers exports each distinct allocation under the ranges once
//     (cudaIpcGetMemHandle). A send posts a descriptor (region, offset, bytes) to its receiver;
//     the receiver opens the sender's allocation once (cudaIpcOpenMemHandle, cached until
//     shutdown), waits until the sender's ready event, recorded on the sender's stream at the start
//     of its call, has completed (so the bytes are those in the sender's stream order, e.g. after
//     its switch copies), and pulls the bytes with cudaMemcpyBatchAsync (cudaMemcpyAsync before
//     CUDA 13) on the communicator's stream.
//   - kHostRelay: a stand-in for a network between nodes, for tests: the sender copies each piece
//     into shared pinned host memory, the receiver copies it out. Both copies on the stream.
// Either way a send completes once its receiver's copies completed: the sender's call returns only
// then, so a sender may overwrite its buffers as soon as SendRecvGroup returned, as with NCCL.
//
// AllGather and AllReduceMin run on the host through the segment.
//
// Failure (a dead or departed peer, the timeout, a size mismatch, a CUDA error, a send outside the
// registered ranges): the call fails, the group is failed for every rank (their calls return the
// same status promptly, naming the rank), this communicator waits for its own stream, closes the
// peers' memory and event handles it opened, and stays failed; rebuild the group.
// Errors: INVALID_ARGUMENT for bad arguments (nothing posted); UNAVAILABLE "SendRecvGroup on rank
// 0: rank 2 (pid 4711) exited"; DEADLINE_EXCEEDED "… timed out after 60s waiting for rank 1";
// INTERNAL for CUDA errors and mismatches ("SendRecvGroup size mismatch on transfer #3 from rank 1
// to rank 0: rank 1 sends X bytes, rank 0 receives Y bytes").
//
// Thread-compatible: one thread at a time (the agent's). Every call makes the communicator's
// device current on the calling thread.
#ifndef EPLB_TRANSFER_CUDA_IPC_COMMUNICATOR_H_
#define EPLB_TRANSFER_CUDA_IPC_COMMUNICATOR_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transfer/communicator.h"
#include "transfer/shm_group.h"

namespace eplb::transfer {

struct CudaIpcOptions {
  enum class Transport { kIpc, kHostRelay };
  Transport transport = Transport::kIpc;
  // How long one call may wait for other ranks. Must be positive.
  absl::Duration timeout = absl::Seconds(60);
  // The stream to copy on, of the communicator's device; null: a stream of its own. Give two
  // communicators that feed one staging area (a HierarchicalCommunicator's) the same stream, and
  // the device context that stream as its staging stream, so that their copies are ordered after
  // its waits.
  cudaStream_t stream = nullptr;
  // Segment layout (NewGroupId only; see ShmGroupLayout for the ranges). Transfers in flight per
  // pair; exported allocations per rank; for kHostRelay, the relay pieces per pair.
  int32_t ring_entries = 1024;
  int32_t max_regions = 4096;
  int32_t relay_pieces = 4;
  uint64_t relay_piece_bytes = 4 << 20;
};

class CudaIpcCommunicator final : public Communicator {
 public:
  // Creates the segment of a group of `size` ranks (1 … 64) and returns its id (a string of at
  // most 64 bytes). INVALID_ARGUMENT naming the option out of range; INTERNAL naming the system
  // call that failed.
  static absl::StatusOr<std::string> NewGroupId(int32_t size, const CudaIpcOptions& options = {});

  // Joins group `id` as `rank` of `size` on CUDA device `device`; blocks until every rank joined
  // (or options.timeout). options.transport must be the same on every rank. Errors of
  // ShmGroup::Join, INVALID_ARGUMENT for options out of range, INTERNAL naming the CUDA call.
  static absl::StatusOr<std::unique_ptr<CudaIpcCommunicator>> Create(
      const std::string& id, int32_t rank, int32_t size, int device,
      const CudaIpcOptions& options = {});
  // Waits for the stream, closes every handle it opened, unregisters the relay memory and leaves
  // the group.
  ~CudaIpcCommunicator() override;

  int32_t rank() const override { return group_->rank(); }
  int32_t size() const override { return group_->size(); }
  int device() const { return device_; }
  // The stream all of this communicator's copies run on (options.stream, or its own).
  cudaStream_t stream() const { return stream_; }

  // kIpc: each range must lie in one allocation of this rank's device made by cudaMalloc (not
  // cudaMallocAsync pools or cuMemCreate, which CUDA IPC cannot export): INVALID_ARGUMENT naming
  // the range otherwise. RESOURCE_EXHAUSTED past max_regions allocations.
  absl::Status RegisterSendBuffers(std::span<const MemoryRange> ranges) override;
  absl::Status SendRecvGroup(std::span<const PeerTransfer> sends,
                             std::span<const PeerTransfer> receives) override;
  absl::StatusOr<int64_t> AllReduceMin(int64_t value) override;
  absl::StatusOr<std::vector<std::vector<uint8_t>>> AllGather(
      std::span<const uint8_t> bytes) override;

 private:
  struct Region {  // one exported allocation of this rank
    uintptr_t base = 0;
    size_t bytes = 0;
    uint32_t index = 0;
  };
  struct OpenedRegion {
    void* base = nullptr;
    uint64_t bytes = 0;
  };
  struct PeerState {
    cudaEvent_t ready = nullptr;                         // the peer's ready event, opened on use
    absl::flat_hash_map<uint32_t, OpenedRegion> opened;  // region index -> mapping
  };
  CudaIpcCommunicator(std::unique_ptr<ShmGroup> group, int device, CudaIpcOptions options);
  // The exported allocation holding [begin, begin + bytes), or null.
  const Region* FindRegion(uintptr_t begin, size_t bytes) const;
  absl::Status Setup();
  absl::Status Fail(absl::Status status);
  // The mapped address of `peer`'s region `index` (opened on first use), checked to hold
  // [offset, offset + bytes).
  absl::StatusOr<const uint8_t*> PeerAddress(int32_t peer, uint32_t index, uint64_t offset,
                                             uint64_t bytes);
  absl::StatusOr<bool> PeerReady(int32_t peer);
  void CloseHandles();

  std::unique_ptr<ShmGroup> group_;
  int device_ = 0;
  CudaIpcOptions options_;
  cudaStream_t stream_ = nullptr;
  bool own_stream_ = false;
  cudaEvent_t ready_ = nullptr;
  std::vector<cudaEvent_t> event_pool_;
  std::vector<Region> regions_;  // sorted by base
  std::vector<PeerState> peers_;
  std::vector<uint64_t> consumed_;            // descriptors taken from each peer, ever
  std::vector<uint64_t> received_transfers_;  // transfers received from each peer, ever
  bool relay_registered_ = false;
  absl::Status failed_;
};

}  // namespace eplb::transfer

#endif  // EPLB_TRANSFER_CUDA_IPC_COMMUNICATOR_H_
