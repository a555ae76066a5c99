// NcclCommunicator: the Communicator backend for GPUs. A dedicated NCCL communicator, created
// non-blocking with a small CTA budget so that its kernels cannot starve the serving kernels, and a
// CUDA stream of its own. Buffers are device memory of the communicator's GPU.
//
// Bootstrap, either:
//   - Create(unique id, rank, size, device): a new communicator. Rank 0 makes the id with
//     NewUniqueId() and hands it to the others (e.g. through the planner's rendezvous, see
//     PlannerClient::PublishRendezvous / AwaitRendezvous, or any channel the job already has);
//   - Split(parent): a communicator split off an existing one (e.g. the serving engine's EP
//     communicator), same ranks, own configuration. Collective over the parent's ranks.
//
// Every call enqueues its NCCL work on stream() and waits for it by polling, at most
// options.timeout: then the communicator is aborted (ncclCommAbort) and the call, like every later
// one, returns DEADLINE_EXCEEDED. NCCL errors (including a peer's failure reported asynchronously)
// come back as INTERNAL / UNAVAILABLE naming the NCCL result and its message; the communicator is
// then aborted as well. A communicator that failed stays failed: rebuild it.
//
// Thread-compatible: one thread at a time (the agent's).
#ifndef EPLB_TRANSFER_NCCL_COMMUNICATOR_H_
#define EPLB_TRANSFER_NCCL_COMMUNICATOR_H_

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <array>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transfer/communicator.h"

namespace eplb::transfer {

struct NcclCommunicatorOptions {
  // CTA budget of the communicator's kernels (ncclConfig_t.minCTAs / maxCTAs), 1 ≤ min ≤ max ≤ 64.
  int min_ctas = 1;
  int max_ctas = 8;
  // How long one call may take before the communicator is aborted. Must be positive.
  absl::Duration timeout = absl::Seconds(60);
};

using NcclUniqueIdBytes = std::array<uint8_t, NCCL_UNIQUE_ID_BYTES>;

class NcclCommunicator final : public Communicator {
 public:
  // A fresh unique id (rank 0's job). INTERNAL naming the NCCL error.
  static absl::StatusOr<NcclUniqueIdBytes> NewUniqueId();

  // Joins the communicator `id` as `rank` of `size` on CUDA device `device`; blocks until every
  // rank joined (or options.timeout). INVALID_ARGUMENT for a rank outside [0, size), a size < 1,
  // options out of range; INTERNAL / DEADLINE_EXCEEDED from NCCL.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(const NcclUniqueIdBytes& id,
                                                                   int32_t rank, int32_t size,
                                                                   int device,
                                                                   const NcclCommunicatorOptions&
                                                                       options = {});
  // Splits a dedicated communicator off `parent` (all of its ranks, same order) on the parent's
  // device. Every rank of the parent must call it.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Split(
      ncclComm_t parent, const NcclCommunicatorOptions& options = {});

  ~NcclCommunicator() override;

  int32_t rank() const override { return rank_; }
  int32_t size() const override { return size_; }
  int device() const { return device_; }
  // The stream all of this communicator's work runs on.
  cudaStream_t stream() const { return stream_; }
  ncclComm_t comm() const { return comm_; }

  absl::Status SendRecvGroup(std::span<const PeerTransfer> sends,
                             std::span<const PeerTransfer> receives) override;
  absl::StatusOr<int64_t> AllReduceMin(int64_t value) override;
  absl::StatusOr<std::vector<std::vector<uint8_t>>> AllGather(
      std::span<const uint8_t> bytes) override;

 private:
  NcclCommunicator(ncclComm_t comm, int32_t rank, int32_t size, int device,
                   NcclCommunicatorOptions options);
  // Waits for a communicator being created (`what`: the NCCL call) and takes it over; aborts it
  // on failure.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Adopt(
      ncclComm_t comm, const char* what, int32_t rank, int32_t size, int device,
      const NcclCommunicatorOptions& options);
  absl::Status Setup();
  // Waits for the communicator to leave ncclInProgress, then for the stream to drain.
  absl::Status Wait(const char* op);
  absl::Status Failed(absl::Status status);
  absl::Status EnsureScratch(size_t bytes);

  ncclComm_t comm_ = nullptr;
  int32_t rank_ = 0;
  int32_t size_ = 0;
  int device_ = 0;
  NcclCommunicatorOptions options_;
  cudaStream_t stream_ = nullptr;
  void* scratch_ = nullptr;  // device memory for the collectives
  size_t scratch_bytes_ = 0;
  void* host_scratch_ = nullptr;  // pinned
  absl::Status failed_;
};

}  // namespace eplb::transfer

#endif  // EPLB_TRANSFER_NCCL_COMMUNICATOR_H_
