// CudaDeviceContext: the DeviceContext of one GPU (see device.h).
//   - Staging copies run on the staging stream (the NcclCommunicator's, so that they are ordered
//     with its transfers).
//   - SwitchCopies records an event on the serving stream, makes a switch stream of its own wait
//     for it, copies there, records the staging area's "free" event, and makes the serving stream
//     wait for the copies: the step after the boundary sees the new weights and tables, the steps
//     before it ran on the old ones, and the serving thread does not block.
//   - WaitForArea makes the staging stream wait for the area's "free" event.
#ifndef EPLB_TRANSFER_CUDA_DEVICE_H_
#define EPLB_TRANSFER_CUDA_DEVICE_H_

#include <cuda_runtime_api.h>

#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "transfer/device.h"

namespace eplb::transfer {

class CudaDeviceContext final : public DeviceContext {
 public:
  // `serving_stream` is the stream the serving kernels run on (may be the legacy default stream
  // 0); `staging_stream` the communicator's. Both on `device`. INTERNAL naming the CUDA error.
  static absl::StatusOr<std::unique_ptr<CudaDeviceContext>> Create(int device,
                                                                   cudaStream_t serving_stream,
                                                                   cudaStream_t staging_stream);
  ~CudaDeviceContext() override;

  absl::StatusOr<void*> Allocate(size_t bytes, MemoryKind kind) override;
  void Free(void* ptr, MemoryKind kind) override;
  absl::Status WaitForArea(int area) override;
  absl::Status StageCopies(std::span<const CopyOp> ops) override;
  absl::Status WaitForSwitches() override;
  absl::Status SwitchCopies(std::span<const CopyOp> ops, int area) override;

 private:
  CudaDeviceContext(int device, cudaStream_t serving, cudaStream_t staging)
      : device_(device), serving_(serving), staging_(staging) {}

  const int device_;
  const cudaStream_t serving_;
  const cudaStream_t staging_;
  cudaStream_t switch_stream_ = nullptr;
  cudaEvent_t boundary_ = nullptr;  // serving thread only
  cudaEvent_t area_free_[kNumAreas] = {nullptr, nullptr};
  absl::Mutex mu_;  // orders the two threads' use of the events below
  cudaEvent_t switched_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool any_switch_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace eplb::transfer

#endif  // EPLB_TRANSFER_CUDA_DEVICE_H_
