// HierarchicalCommunicator: a Communicator over the ranks of several nodes made of two: one for
// the ranks of this rank's node (e.g. CudaIpcCommunicator: copy engines over NVLink, no SM) and one
// for all ranks (e.g. NcclCommunicator). Each transfer goes through the node's communicator when
// both ends are on one node and through the global one otherwise, so a plan whose sources are on
// the receiver's node (the transfer schedule prefers them) never touches the global one. The two
// parts of a SendRecvGroup run at the same time, the global one on a thread of its own; a part
// with no transfers is not called. AllReduceMin and AllGather go to the global communicator.
//
// Ranks per node are consecutive: rank r is on node r / ranks_per_node with node rank
// r % ranks_per_node (the numbering of ScheduleOptions::ranks_per_node).
//
// Errors: those of the two communicators (the first failing part's, the global part's if both
// fail), and INVALID_ARGUMENT from CheckPeerTransfers. After an error, rebuild both.
//
// Thread-compatible: one thread at a time, as the communicators it owns.
#ifndef EPLB_TRANSFER_HIERARCHICAL_COMMUNICATOR_H_
#define EPLB_TRANSFER_HIERARCHICAL_COMMUNICATOR_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "transfer/communicator.h"

namespace eplb::transfer {

class HierarchicalCommunicator final : public Communicator {
 public:
  // INVALID_ARGUMENT, in this order: a null communicator ("node communicator is null"),
  // "ranks_per_node = 3 does not divide the global size 4", "the node communicator has 3 ranks,
  // ranks_per_node = 2", "the node communicator's rank 1 is not global rank 2 % ranks_per_node
  // = 0".
  static absl::StatusOr<std::unique_ptr<HierarchicalCommunicator>> Create(
      std::unique_ptr<Communicator> node, std::unique_ptr<Communicator> global,
      int32_t ranks_per_node);

  // Destroys the node communicator first: it may copy on the global one's stream.
  ~HierarchicalCommunicator() override;

  int32_t rank() const override { return global_->rank(); }
  int32_t size() const override { return global_->size(); }

  // Registers with both communicators.
  absl::Status RegisterSendBuffers(std::span<const MemoryRange> ranges) override;
  absl::Status SendRecvGroup(std::span<const PeerTransfer> sends,
                             std::span<const PeerTransfer> receives) override;
  absl::StatusOr<int64_t> AllReduceMin(int64_t value) override;
  absl::StatusOr<std::vector<std::vector<uint8_t>>> AllGather(
      std::span<const uint8_t> bytes) override;

  // Transfers (sends and receives) handed to each communicator so far.
  int64_t node_transfers() const { return node_transfers_; }
  int64_t global_transfers() const { return global_transfers_; }

 private:
  HierarchicalCommunicator(std::unique_ptr<Communicator> node, std::unique_ptr<Communicator> global,
                           int32_t ranks_per_node)
      : node_(std::move(node)), global_(std::move(global)), ranks_per_node_(ranks_per_node) {}

  std::unique_ptr<Communicator> node_;
  std::unique_ptr<Communicator> global_;
  int32_t ranks_per_node_;
  int64_t node_transfers_ = 0;
  int64_t global_transfers_ = 0;
};

}  // namespace eplb::transfer

#endif  // EPLB_TRANSFER_HIERARCHICAL_COMMUNICATOR_H_
