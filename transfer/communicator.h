// Communicator: the collective operations the placement agent needs between the ranks of one EP
// group, behind one interface with two backends:
//   - HostCommunicator (host_communicator.h): R ranks as threads of one process, buffers in host
//     memory; for CPU tests and the demo.
//   - NcclCommunicator (nccl_communicator.h, built with CUDA): a dedicated NCCL communicator on its
//     own stream; buffers in device memory.
//   - CudaIpcCommunicator (cuda_ipc_communicator.h, built with CUDA): the ranks of one node; the
//     receiver of each transfer pulls the bytes out of the sender's memory with the GPU's copy
//     engines (CUDA IPC), no kernel.
//   - HierarchicalCommunicator (hierarchical_communicator.h): one communicator for the ranks of a
//     node and one for all ranks; each transfer goes through the node's when both ends share it.
//
// Calls are collective: every rank of the group makes the same sequence of calls (sends and
// receives matched pairwise inside one SendRecvGroup). A Communicator object belongs to one rank
// and is used from one thread at a time.
#ifndef EPLB_TRANSFER_COMMUNICATOR_H_
#define EPLB_TRANSFER_COMMUNICATOR_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace eplb::transfer {

// A point-to-point transfer of `bytes` bytes at `data` (device memory for NCCL, host memory for
// the host backend).
struct PeerTransfer {
  int32_t peer = 0;
  void* data = nullptr;
  size_t bytes = 0;
};

// Memory a rank's sends read from.
struct MemoryRange {
  const void* data = nullptr;
  size_t bytes = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int32_t rank() const = 0;
  virtual int32_t size() const = 0;

  // Posts all sends and receives as one group and waits until they completed (for NCCL: until the
  // communicator's stream finished them). Sends to and receives from one peer are matched in
  // order. Errors (a peer gone, a timeout, a backend error) are UNAVAILABLE / INTERNAL / ABORTED
  // and leave the receive buffers' contents unspecified.
  virtual absl::Status SendRecvGroup(std::span<const PeerTransfer> sends,
                                     std::span<const PeerTransfer> receives) = 0;

  // Declares memory that this rank's later sends read from. Backends whose receivers read the
  // sender's memory directly (CUDA IPC) refuse a send outside every declared range and export the
  // ranges to their peers here; the others accept any send and ignore this. Not collective; call
  // it before the first SendRecvGroup that sends from the ranges, which must stay allocated while
  // the communicator lives. INVALID_ARGUMENT naming the range for a null or empty one.
  virtual absl::Status RegisterSendBuffers(std::span<const MemoryRange> ranges);

  // Every rank contributes `value`; returns the minimum over the ranks.
  virtual absl::StatusOr<int64_t> AllReduceMin(int64_t value) = 0;

  // Every rank contributes `bytes` (the same size on every rank); returns all contributions in
  // rank order.
  virtual absl::StatusOr<std::vector<std::vector<uint8_t>>> AllGather(
      std::span<const uint8_t> bytes) = 0;
};

// The argument check every backend's SendRecvGroup makes before posting anything: every peer in
// [0, size) and no null `data` with `bytes` > 0. INVALID_ARGUMENT naming the first bad entry:
// "SendRecvGroup on rank 0: send 2 has peer 7, outside [0, 4)" or "SendRecvGroup on rank 0:
// receive 1 has null data for 16 bytes".
absl::Status CheckPeerTransfers(int32_t rank, int32_t size, std::span<const PeerTransfer> sends,
                                std::span<const PeerTransfer> receives);

// The check every RegisterSendBuffers makes first: INVALID_ARGUMENT "RegisterSendBuffers: range 2
// (0 bytes at 7f00…) is null or empty".
absl::Status CheckMemoryRanges(std::span<const MemoryRange> ranges);

}  // namespace eplb::transfer

#endif  // EPLB_TRANSFER_COMMUNICATOR_H_
