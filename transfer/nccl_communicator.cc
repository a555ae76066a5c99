#include "transfer/nccl_communicator.h"

#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "transfer/cuda_status.h"

namespace eplb::transfer {
namespace {

absl::Status NcclError(const char* what, ncclResult_t result, ncclComm_t comm = nullptr) {
  const char* last = comm != nullptr ? ncclGetLastError(comm) : ncclGetLastError(nullptr);
  const std::string message =
      absl::StrCat(what, ": NCCL error ", static_cast<int>(result), " (",
                   ncclGetErrorString(result), ")", last != nullptr && *last ? ": " : "",
                   last != nullptr ? last : "");
  return result == ncclRemoteError || result == ncclSystemError
             ? absl::UnavailableError(message)
             : absl::InternalError(message);
}

absl::Status CheckOptions(const NcclCommunicatorOptions& options) {
  if (options.min_ctas < 1 || options.min_ctas > options.max_ctas || options.max_ctas > 64) {
    return absl::InvalidArgumentError(absl::StrCat("CTA budget min_ctas = ", options.min_ctas,
                                                   ", max_ctas = ", options.max_ctas,
                                                   " must satisfy 1 ≤ min ≤ max ≤ 64"));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeout must be positive");
  }
  return absl::OkStatus();
}

ncclConfig_t Config(const NcclCommunicatorOptions& options) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  config.minCTAs = options.min_ctas;
  config.maxCTAs = options.max_ctas;
  return config;
}

// Polls a non-blocking communicator until its pending operation finished.
absl::Status AwaitComm(ncclComm_t comm, const char* what, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    ncclResult_t state = ncclSuccess;
    if (const ncclResult_t r = ncclCommGetAsyncError(comm, &state); r != ncclSuccess) {
      return NcclError(what, r, comm);
    }
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) return NcclError(what, state, comm);
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, ": timed out after ", absl::FormatDuration(timeout)));
    }
    std::this_thread::yield();
  }
}

}  // namespace

absl::StatusOr<NcclUniqueIdBytes> NcclCommunicator::NewUniqueId() {
  ncclUniqueId id;
  if (const ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
    return NcclError("ncclGetUniqueId", r);
  }
  NcclUniqueIdBytes bytes;
  std::memcpy(bytes.data(), id.internal, bytes.size());
  return bytes;
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(
    const NcclUniqueIdBytes& id_bytes, int32_t rank, int32_t size, int device,
    const NcclCommunicatorOptions& options) {
  if (size < 1) return absl::InvalidArgumentError(absl::StrCat("size = ", size, " must be ≥ 1"));
  if (rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank = ", rank, " is out of range [0, ", size - 1, "]"));
  }
  if (absl::Status status = CheckOptions(options); !status.ok()) return status;
  if (const cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
    return CudaError(absl::StrCat("cudaSetDevice(", device, ")"), e);
  }
  ncclUniqueId id;
  std::memcpy(id.internal, id_bytes.data(), id_bytes.size());
  ncclConfig_t config = Config(options);
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, size, id, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) return NcclError("ncclCommInitRankConfig", r);
  return Adopt(comm, "ncclCommInitRankConfig", rank, size, device, options);
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Split(
    ncclComm_t parent, const NcclCommunicatorOptions& options) {
  if (absl::Status status = CheckOptions(options); !status.ok()) return status;
  int rank = 0, size = 0, device = 0;
  if (ncclResult_t r = ncclCommUserRank(parent, &rank); r != ncclSuccess) {
    return NcclError("ncclCommUserRank", r, parent);
  }
  if (ncclResult_t r = ncclCommCount(parent, &size); r != ncclSuccess) {
    return NcclError("ncclCommCount", r, parent);
  }
  if (ncclResult_t r = ncclCommCuDevice(parent, &device); r != ncclSuccess) {
    return NcclError("ncclCommCuDevice", r, parent);
  }
  if (const cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
    return CudaError("cudaSetDevice", e);
  }
  ncclConfig_t config = Config(options);
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommSplit(parent, /*color=*/0, /*key=*/rank, &comm, &config);
  if (r != ncclSuccess && r != ncclInProgress) return NcclError("ncclCommSplit", r, parent);
  // The parent may be blocking; the new communicator is not.
  if (comm == nullptr) return absl::InternalError("ncclCommSplit returned no communicator");
  return Adopt(comm, "ncclCommSplit", rank, size, device, options);
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Adopt(
    ncclComm_t comm, const char* what, int32_t rank, int32_t size, int device,
    const NcclCommunicatorOptions& options) {
  if (absl::Status status = AwaitComm(comm, what, options.timeout); !status.ok()) {
    ncclCommAbort(comm);
    return status;
  }
  auto communicator =
      std::unique_ptr<NcclCommunicator>(new NcclCommunicator(comm, rank, size, device, options));
  if (absl::Status status = communicator->Setup(); !status.ok()) return status;
  return communicator;
}

NcclCommunicator::NcclCommunicator(ncclComm_t comm, int32_t rank, int32_t size, int device,
                                   NcclCommunicatorOptions options)
    : comm_(comm), rank_(rank), size_(size), device_(device), options_(options) {}

absl::Status NcclCommunicator::Setup() {
  cudaSetDevice(device_);
  if (const cudaError_t e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
      e != cudaSuccess) {
    return CudaError("cudaStreamCreate", e);
  }
  return EnsureScratch(64);
}

NcclCommunicator::~NcclCommunicator() {
  cudaSetDevice(device_);
  if (comm_ != nullptr) {
    if (failed_.ok()) {
      ncclCommFinalize(comm_);
      (void)AwaitComm(comm_, "ncclCommFinalize", options_.timeout);
      ncclCommDestroy(comm_);
    } else {
      ncclCommAbort(comm_);
    }
  }
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  if (scratch_ != nullptr) cudaFree(scratch_);
  if (host_scratch_ != nullptr) cudaFreeHost(host_scratch_);
}

absl::Status NcclCommunicator::Failed(absl::Status status) {
  if (failed_.ok()) {
    failed_ = status;
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }
  return status;
}

absl::Status NcclCommunicator::EnsureScratch(size_t bytes) {
  if (bytes <= scratch_bytes_) return absl::OkStatus();
  if (scratch_ != nullptr) cudaFree(scratch_);
  if (host_scratch_ != nullptr) cudaFreeHost(host_scratch_);
  scratch_ = host_scratch_ = nullptr;
  scratch_bytes_ = 0;
  if (const cudaError_t e = cudaMalloc(&scratch_, bytes); e != cudaSuccess) {
    return CudaError("cudaMalloc", e);
  }
  if (const cudaError_t e = cudaMallocHost(&host_scratch_, bytes); e != cudaSuccess) {
    return CudaError("cudaMallocHost", e);
  }
  scratch_bytes_ = bytes;
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Wait(const char* op) {
  const absl::Time deadline = absl::Now() + options_.timeout;
  if (absl::Status status = AwaitComm(comm_, op, options_.timeout); !status.ok()) {
    return Failed(status);
  }
  for (;;) {
    const cudaError_t e = cudaStreamQuery(stream_);
    if (e == cudaSuccess) return absl::OkStatus();
    if (e != cudaErrorNotReady) return Failed(CudaError(op, e));
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async != ncclSuccess && async != ncclInProgress) {
      return Failed(NcclError(op, async, comm_));
    }
    if (absl::Now() > deadline) {
      return Failed(absl::DeadlineExceededError(absl::StrCat(
          op, " on rank ", rank_, ": timed out after ", absl::FormatDuration(options_.timeout))));
    }
    std::this_thread::yield();
  }
}

absl::Status NcclCommunicator::SendRecvGroup(std::span<const PeerTransfer> sends,
                                             std::span<const PeerTransfer> receives) {
  if (!failed_.ok()) return failed_;
  if (absl::Status status = CheckPeerTransfers(rank_, size_, sends, receives); !status.ok()) {
    return status;
  }
  if (sends.empty() && receives.empty()) return absl::OkStatus();
  cudaSetDevice(device_);
  ncclResult_t r = ncclGroupStart();
  for (const PeerTransfer& t : sends) {
    if (r == ncclSuccess) r = ncclSend(t.data, t.bytes, ncclUint8, t.peer, comm_, stream_);
  }
  for (const PeerTransfer& t : receives) {
    if (r == ncclSuccess) r = ncclRecv(t.data, t.bytes, ncclUint8, t.peer, comm_, stream_);
  }
  const ncclResult_t end = ncclGroupEnd();
  if (r == ncclSuccess || r == ncclInProgress) r = end;
  if (r != ncclSuccess && r != ncclInProgress) {
    return Failed(NcclError("SendRecvGroup", r, comm_));
  }
  return Wait("SendRecvGroup");
}

absl::StatusOr<int64_t> NcclCommunicator::AllReduceMin(int64_t value) {
  if (!failed_.ok()) return failed_;
  cudaSetDevice(device_);
  std::memcpy(host_scratch_, &value, sizeof(value));
  cudaMemcpyAsync(scratch_, host_scratch_, sizeof(value), cudaMemcpyHostToDevice, stream_);
  ncclResult_t r = ncclAllReduce(scratch_, scratch_, 1, ncclInt64, ncclMin, comm_, stream_);
  if (r != ncclSuccess && r != ncclInProgress) return Failed(NcclError("AllReduceMin", r, comm_));
  if (absl::Status status = AwaitComm(comm_, "AllReduceMin", options_.timeout); !status.ok()) {
    return Failed(status);
  }
  cudaMemcpyAsync(host_scratch_, scratch_, sizeof(value), cudaMemcpyDeviceToHost, stream_);
  if (absl::Status status = Wait("AllReduceMin"); !status.ok()) return status;
  int64_t result = 0;
  std::memcpy(&result, host_scratch_, sizeof(result));
  return result;
}

absl::StatusOr<std::vector<std::vector<uint8_t>>> NcclCommunicator::AllGather(
    std::span<const uint8_t> bytes) {
  if (!failed_.ok()) return failed_;
  cudaSetDevice(device_);
  const size_t n = bytes.size();
  if (absl::Status status = EnsureScratch(n * (size_ + 1)); !status.ok()) return status;
  auto* device = static_cast<uint8_t*>(scratch_);
  auto* host = static_cast<uint8_t*>(host_scratch_);
  std::memcpy(host + n * size_, bytes.data(), n);
  cudaMemcpyAsync(device + n * size_, host + n * size_, n, cudaMemcpyHostToDevice, stream_);
  ncclResult_t r = ncclAllGather(device + n * size_, device, n, ncclUint8, comm_, stream_);
  if (r != ncclSuccess && r != ncclInProgress) return Failed(NcclError("AllGather", r, comm_));
  if (absl::Status status = AwaitComm(comm_, "AllGather", options_.timeout); !status.ok()) {
    return Failed(status);
  }
  cudaMemcpyAsync(host, device, n * size_, cudaMemcpyDeviceToHost, stream_);
  if (absl::Status status = Wait("AllGather"); !status.ok()) return status;
  std::vector<std::vector<uint8_t>> out(size_);
  for (int32_t r2 = 0; r2 < size_; ++r2) out[r2].assign(host + r2 * n, host + (r2 + 1) * n);
  return out;
}

}  // namespace eplb::transfer
