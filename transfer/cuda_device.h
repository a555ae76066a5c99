// CudaDeviceContext: the DeviceContext of one GPU (see device.h).
//   - Copies prefer the GPU's copy engines (cudaMemcpyBatchAsync with
//     cudaMemcpyFlagPreferOverlapWithCompute from CUDA 13; cudaMemcpyAsync before), so that they
//     take no SM from the serving kernels where the driver can avoid it.
//   - StageCopies runs on a local stream of its own, beside the communicator's transfers on the
//     staging stream (the communicator's), so that local copies and transfers overlap;
//     FinishStaging waits for the local stream (the transfers are complete when SendRecvGroup
//     returns).
//   - SwitchCopies records an event on the serving stream, makes a switch stream of its own wait
//     for it, copies there, records the staging area's "free" event, and makes the serving stream
//     wait for the copies: the step after the boundary sees the new weights and tables, the steps
//     before it ran on the old ones, and the serving thread does not block.
//   - WaitForArea blocks (sleeping, not spinning) on the area's "free" event, which orders every
//     later staging stream.
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
  absl::Status FinishStaging() override;
  absl::Status WaitForSwitches() override;
  absl::Status SwitchCopies(std::span<const CopyOp> ops, int area) override;

 private:
  CudaDeviceContext(int device, cudaStream_t serving, cudaStream_t staging)
      : device_(device), serving_(serving), staging_(staging) {}

  const int device_;
  const cudaStream_t serving_;
  const cudaStream_t staging_;
  cudaStream_t local_stream_ = nullptr;  // StageCopies
  cudaStream_t switch_stream_ = nullptr;
  cudaEvent_t boundary_ = nullptr;  // serving thread only
  cudaEvent_t area_free_[kNumAreas] = {nullptr, nullptr};
  absl::Mutex mu_;  // orders the two threads' use of the events below
  cudaEvent_t switched_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool any_switch_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace eplb::transfer

#endif  // EPLB_TRANSFER_CUDA_DEVICE_H_
