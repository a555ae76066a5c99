#include "transfer/cuda_device.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "transfer/cuda_status.h"

namespace eplb::transfer {

#define EPLB_CUDA_RETURN(what, expr)                           \
  do {                                                         \
    if (const cudaError_t e_ = (expr); e_ != cudaSuccess) {    \
      return CudaError(what, e_);                              \
    }                                                          \
  } while (false)

namespace {

// Queues `ops` on `stream` as one batch, on the copy engines where the runtime has the call.
cudaError_t QueueCopies(std::span<const CopyOp> ops, cudaStream_t stream) {
#if CUDART_VERSION >= 13000
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes;
  dsts.reserve(ops.size());
  srcs.reserve(ops.size());
  sizes.reserve(ops.size());
  for (const CopyOp& op : ops) {
    if (op.bytes == 0) continue;
    dsts.push_back(op.dst);
    srcs.push_back(op.src);
    sizes.push_back(op.bytes);
  }
  if (sizes.empty()) return cudaSuccess;
  cudaMemcpyAttributes attributes{};
  attributes.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
  attributes.flags = cudaMemcpyFlagPreferOverlapWithCompute;
  size_t attribute_index = 0;
  return cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), sizes.size(), &attributes,
                              &attribute_index, 1, stream);
#else
  for (const CopyOp& op : ops) {
    if (op.bytes == 0) continue;
    if (const cudaError_t e = cudaMemcpyAsync(op.dst, op.src, op.bytes, cudaMemcpyDefault, stream);
        e != cudaSuccess) {
      return e;
    }
  }
  return cudaSuccess;
#endif
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaDeviceContext>> CudaDeviceContext::Create(
    int device, cudaStream_t serving_stream, cudaStream_t staging_stream) {
  EPLB_CUDA_RETURN(absl::StrCat("cudaSetDevice(", device, ")"), cudaSetDevice(device));
  auto context = std::unique_ptr<CudaDeviceContext>(
      new CudaDeviceContext(device, serving_stream, staging_stream));
  EPLB_CUDA_RETURN("cudaStreamCreate",
                   cudaStreamCreateWithFlags(&context->switch_stream_, cudaStreamNonBlocking));
  EPLB_CUDA_RETURN("cudaStreamCreate",
                   cudaStreamCreateWithFlags(&context->local_stream_, cudaStreamNonBlocking));
  EPLB_CUDA_RETURN("cudaEventCreate",
                   cudaEventCreateWithFlags(&context->boundary_, cudaEventDisableTiming));
  // WaitForArea blocks on these: the thread sleeps until the GPU signals rather than spinning.
  for (cudaEvent_t& event : context->area_free_) {
    EPLB_CUDA_RETURN(
        "cudaEventCreate",
        cudaEventCreateWithFlags(&event, cudaEventDisableTiming | cudaEventBlockingSync));
  }
  absl::MutexLock lock(&context->mu_);
  EPLB_CUDA_RETURN("cudaEventCreate",
                   cudaEventCreateWithFlags(&context->switched_, cudaEventDisableTiming));
  return context;
}

CudaDeviceContext::~CudaDeviceContext() {
  cudaSetDevice(device_);
  for (cudaStream_t stream : {switch_stream_, local_stream_}) {
    if (stream != nullptr) {
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
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
  // Not under mu_: the serving thread records area events while this thread blocks. The area's
  // own event is not re-recorded before the chunk staged now is switched.
  EPLB_CUDA_RETURN("cudaEventSynchronize (area)", cudaEventSynchronize(area_free_[area]));
  return absl::OkStatus();
}

absl::Status CudaDeviceContext::StageCopies(std::span<const CopyOp> ops) {
  cudaSetDevice(device_);
  EPLB_CUDA_RETURN("cudaMemcpyBatchAsync (staging)", QueueCopies(ops, local_stream_));
  return absl::OkStatus();
}

absl::Status CudaDeviceContext::FinishStaging() {
  cudaSetDevice(device_);
  // The communicator's transfers are complete when SendRecvGroup returns; after a failed one its
  // stream is the communicator's to abort, not to wait for here.
  EPLB_CUDA_RETURN("cudaStreamSynchronize (staging)", cudaStreamSynchronize(local_stream_));
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
  EPLB_CUDA_RETURN("cudaMemcpyBatchAsync (switch)", QueueCopies(ops, switch_stream_));
  absl::MutexLock lock(&mu_);
  EPLB_CUDA_RETURN("cudaEventRecord (area)", cudaEventRecord(area_free_[area], switch_stream_));
  EPLB_CUDA_RETURN("cudaEventRecord (switch)", cudaEventRecord(switched_, switch_stream_));
  any_switch_ = true;
  EPLB_CUDA_RETURN("cudaStreamWaitEvent (serving)", cudaStreamWaitEvent(serving_, switched_, 0));
  return absl::OkStatus();
}

}  // namespace eplb::transfer
