// DeviceContext: the memory operations the placement agent performs on one rank, behind one
// interface with two implementations:
//   - HostDeviceContext (below): host memory, every operation synchronous; for CPU tests and the
//     demo, together with the host communicator.
//   - CudaDeviceContext (cuda_device.h, built with CUDA): one GPU. Local staging copies run on a
//     stream of their own beside the communicator's transfers; switch copies run on a stream of
//     their own, ordered after the serving stream with CUDA events, and the serving stream waits
//     for them.
//
// Two sides use a context, each from one thread:
//   - the staging side (the agent's thread): Allocate, WaitForArea, StageCopies, FinishStaging;
//   - the switch side (the serving thread, at a step boundary): SwitchCopies.
// A staging *area* is one of the agent's staging buffers; the context tracks, per area, the switch
// that last read it, so staging into an area never overwrites bytes a switch still has to copy.
#ifndef EPLB_TRANSFER_DEVICE_H_
#define EPLB_TRANSFER_DEVICE_H_

#include <cstddef>
#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace eplb::transfer {

// One contiguous copy. Source and destination may be device memory or memory from
// Allocate(kPinnedHost); ranges must not overlap.
struct CopyOp {
  void* dst = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;
};

enum class MemoryKind {
  kDevice,      // where expert weights live (device memory; host memory for the host context)
  kPinnedHost,  // host memory the device can copy from asynchronously
};

class DeviceContext {
 public:
  static constexpr int kNumAreas = 2;

  virtual ~DeviceContext() = default;

  // Zero-filled memory, freed with Free. RESOURCE_EXHAUSTED naming the size when it cannot be had.
  virtual absl::StatusOr<void*> Allocate(size_t bytes, MemoryKind kind) = 0;
  virtual void Free(void* ptr, MemoryKind kind) = 0;

  // ---- Staging side ----
  // Blocks the calling thread until the last SwitchCopies on `area` (0 ≤ area < kNumAreas) has
  // finished reading it, so that any staging work queued afterwards may write it.
  virtual absl::Status WaitForArea(int area) = 0;
  // Starts `ops`; they may run concurrently with the communicator's transfers queued after them
  // (the two must write disjoint bytes) and are done once FinishStaging returned OK.
  virtual absl::Status StageCopies(std::span<const CopyOp> ops) = 0;
  // Returns once every StageCopies so far has completed (the communicator's transfers are complete
  // when SendRecvGroup returns). Call it also when the transfers between failed, so that no local
  // copy is still writing the area.
  virtual absl::Status FinishStaging() = 0;
  // Blocks the calling thread until every SwitchCopies so far has completed (e.g. before reusing
  // the pinned memory they read).
  virtual absl::Status WaitForSwitches() = 0;

  // ---- Switch side ----
  // Runs `ops` after all work queued on the serving stream so far; work queued on the serving
  // stream afterwards runs after them. `area` is the staging area they read. May return before
  // the copies ran (CUDA); errors of the copies show up in later calls.
  virtual absl::Status SwitchCopies(std::span<const CopyOp> ops, int area) = 0;
};

// Host memory, synchronous copies: the serving "stream" is the serving thread itself.
class HostDeviceContext final : public DeviceContext {
 public:
  absl::StatusOr<void*> Allocate(size_t bytes, MemoryKind kind) override;
  void Free(void* ptr, MemoryKind kind) override;
  absl::Status WaitForArea(int area) override;
  absl::Status StageCopies(std::span<const CopyOp> ops) override;
  absl::Status FinishStaging() override { return absl::OkStatus(); }
  absl::Status WaitForSwitches() override { return absl::OkStatus(); }
  absl::Status SwitchCopies(std::span<const CopyOp> ops, int area) override;
};

}  // namespace eplb::transfer

#endif  // EPLB_TRANSFER_DEVICE_H_
