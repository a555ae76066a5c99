#include "transfer/cuda_device.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "transfer/cuda_status.h"

namespace eplb::transfer {

#define EPLB_CUDA_RETURN(what, expr)                           \
  do {                                                         \
    if (const cudaError_t e_ = (expr); e_ != cudaSuccess) {    \
      return CudaError(what, e_);                              \
    }                                                          \
  } while (false)

absl::StatusOr<std::unique_ptr<CudaDeviceContext>> CudaDeviceContext::Create(
    int device, cudaStream_t serving_stream, cudaStream_t staging_stream) {
  EPLB_CUDA_RETURN(absl::StrCat("cudaSetDevice(", device, ")"), cudaSetDevice(device));
  auto context = std::unique_ptr<CudaDeviceContext>(
      new CudaDeviceContext(device, serving_stream, staging_stream));
  EPLB_CUDA_RETURN("cudaStreamCreate",
                   cudaStreamCreateWithFlags(&context->switch_stream_, cudaStreamNonBlocking));
  EPLB_CUDA_RETURN("cudaEventCreate",
                   cudaEventCreateWithFlags(&context->boundary_, cudaEventDisableTiming));
  for (cudaEvent_t& event : context->area_free_) {
    EPLB_CUDA_RETURN("cudaEventCreate", cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  }
  absl::MutexLock lock(&context->mu_);
  EPLB_CUDA_RETURN("cudaEventCreate",
                   cudaEventCreateWithFlags(&context->switched_, cudaEventDisableTiming));
  return context;
}

CudaDeviceContext::~CudaDeviceContext() {
  cudaSetDevice(device_);
  if (switch_stream_ != nullptr) {
    cudaStreamSynchronize(switch_stream_);
    cudaStreamDestroy(switch_stream_);
  }
  if (boundary_ != nullptr) cudaEventDestroy(boundary_);
  for (cudaEvent_t event : area_free_) {
    if (event != nullptr) cudaEventDestroy(event);
  }
  absl::MutexLock lock(&mu_);
  if (switched_ != nullptr) cudaEventDestroy(switched_);
}

absl::StatusOr<void*> CudaDeviceContext::Allocate(size_t bytes, MemoryKind kind) {
  cudaSetDevice(device_);
  void* ptr = nullptr;
  const size_t n = bytes == 0 ? 1 : bytes;
  const cudaError_t e = kind == MemoryKind::kDevice ? cudaMalloc(&ptr, n) : cudaMallocHost(&ptr, n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free allocation error
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", bytes, " bytes of ",
                     kind == MemoryKind::kDevice ? "device" : "pinned host", " memory on GPU ",
                     device_, ": ", cudaGetErrorString(e)));
  }
  if (kind == MemoryKind::kDevice) {
    // On the staging stream, waited for: a memset on the legacy stream would not be ordered
    // with the non-blocking streams that use the memory next.
    EPLB_CUDA_RETURN("cudaMemsetAsync", cudaMemsetAsync(ptr, 0, n, staging_));
    EPLB_CUDA_RETURN("cudaStreamSynchronize", cudaStreamSynchronize(staging_));
  } else {
    std::memset(ptr, 0, n);
  }
  return ptr;
}

void CudaDeviceContext::Free(void* ptr, MemoryKind kind) {
  cudaSetDevice(device_);
  if (kind == MemoryKind::kDevice) {
    cudaFree(ptr);
  } else {
    cudaFreeHost(ptr);
  }
}

absl::Status CudaDeviceContext::WaitForArea(int area) {
  if (area < 0 || area >= kNumAreas) {
    return absl::InvalidArgumentError(absl::StrCat("staging area = ", area, " is out of range"));
  }
  cudaSetDevice(device_);
  absl::MutexLock lock(&mu_);
  EPLB_CUDA_RETURN("cudaStreamWaitEvent", cudaStreamWaitEvent(staging_, area_free_[area], 0));
  return absl::OkStatus();
}

absl::Status CudaDeviceContext::StageCopies(std::span<const CopyOp> ops) {
  cudaSetDevice(device_);
  for (const CopyOp& op : ops) {
    EPLB_CUDA_RETURN("cudaMemcpyAsync (staging)",
                     cudaMemcpyAsync(op.dst, op.src, op.bytes, cudaMemcpyDefault, staging_));
  }
  EPLB_CUDA_RETURN("cudaStreamSynchronize (staging)", cudaStreamSynchronize(staging_));
  return absl::OkStatus();
}

absl::Status CudaDeviceContext::WaitForSwitches() {
  cudaSetDevice(device_);
  absl::MutexLock lock(&mu_);
  if (!any_switch_) return absl::OkStatus();
  EPLB_CUDA_RETURN("cudaEventSynchronize (switch)", cudaEventSynchronize(switched_));
  return absl::OkStatus();
}

absl::Status CudaDeviceContext::SwitchCopies(std::span<const CopyOp> ops, int area) {
  if (area < 0 || area >= kNumAreas) {
    return absl::InvalidArgumentError(absl::StrCat("staging area = ", area, " is out of range"));
  }
  cudaSetDevice(device_);
  EPLB_CUDA_RETURN("cudaEventRecord (boundary)", cudaEventRecord(boundary_, serving_));
  EPLB_CUDA_RETURN("cudaStreamWaitEvent (boundary)",
                   cudaStreamWaitEvent(switch_stream_, boundary_, 0));
  for (const CopyOp& op : ops) {
    EPLB_CUDA_RETURN("cudaMemcpyAsync (switch)",
                     cudaMemcpyAsync(op.dst, op.src, op.bytes, cudaMemcpyDefault, switch_stream_));
  }
  absl::MutexLock lock(&mu_);
  EPLB_CUDA_RETURN("cudaEventRecord (area)", cudaEventRecord(area_free_[area], switch_stream_));
  EPLB_CUDA_RETURN("cudaEventRecord (switch)", cudaEventRecord(switched_, switch_stream_));
  any_switch_ = true;
  EPLB_CUDA_RETURN("cudaStreamWaitEvent (serving)", cudaStreamWaitEvent(serving_, switched_, 0));
  return absl::OkStatus();
}

}  // namespace eplb::transfer
