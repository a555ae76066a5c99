#include "transfer/hierarchical_communicator.h"

#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"

namespace eplb::transfer {

absl::StatusOr<std::unique_ptr<HierarchicalCommunicator>> HierarchicalCommunicator::Create(
    std::unique_ptr<Communicator> node, std::unique_ptr<Communicator> global,
    int32_t ranks_per_node) {
  if (node == nullptr) return absl::InvalidArgumentError("node communicator is null");
  if (global == nullptr) return absl::InvalidArgumentError("global communicator is null");
  if (ranks_per_node < 1 || global->size() % ranks_per_node != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ranks_per_node = ", ranks_per_node, " does not divide the global size ", global->size()));
  }
  if (node->size() != ranks_per_node) {
    return absl::InvalidArgumentError(absl::StrCat("the node communicator has ", node->size(),
                                                   " ranks, ranks_per_node = ", ranks_per_node));
  }
  if (node->rank() != global->rank() % ranks_per_node) {
    return absl::InvalidArgumentError(
        absl::StrCat("the node communicator's rank ", node->rank(), " is not global rank ",
                     global->rank(), " % ranks_per_node = ", global->rank() % ranks_per_node));
  }
  return std::unique_ptr<HierarchicalCommunicator>(
      new HierarchicalCommunicator(std::move(node), std::move(global), ranks_per_node));
}

HierarchicalCommunicator::~HierarchicalCommunicator() {
  node_.reset();
  global_.reset();
}

absl::Status HierarchicalCommunicator::RegisterSendBuffers(std::span<const MemoryRange> ranges) {
  if (absl::Status s = node_->RegisterSendBuffers(ranges); !s.ok()) return s;
  return global_->RegisterSendBuffers(ranges);
}

absl::Status HierarchicalCommunicator::SendRecvGroup(std::span<const PeerTransfer> sends,
                                                     std::span<const PeerTransfer> receives) {
  if (absl::Status s = CheckPeerTransfers(rank(), size(), sends, receives); !s.ok()) return s;
  const int32_t my_node = rank() / ranks_per_node_;
  std::vector<PeerTransfer> node_sends, node_receives, global_sends, global_receives;
  const auto split = [&](std::span<const PeerTransfer> list, std::vector<PeerTransfer>& local,
                         std::vector<PeerTransfer>& remote) {
    for (PeerTransfer t : list) {
      if (t.peer / ranks_per_node_ == my_node) {
        t.peer %= ranks_per_node_;
        local.push_back(t);
      } else {
        remote.push_back(t);
      }
    }
  };
  split(sends, node_sends, global_sends);
  split(receives, node_receives, global_receives);
  node_transfers_ += static_cast<int64_t>(node_sends.size() + node_receives.size());
  global_transfers_ += static_cast<int64_t>(global_sends.size() + global_receives.size());
  const bool node_part = !node_sends.empty() || !node_receives.empty();
  const bool global_part = !global_sends.empty() || !global_receives.empty();
  if (!global_part) {
    return node_part ? node_->SendRecvGroup(node_sends, node_receives) : absl::OkStatus();
  }
  if (!node_part) return global_->SendRecvGroup(global_sends, global_receives);
  absl::Status global_status;
  std::thread global_thread(
      [&] { global_status = global_->SendRecvGroup(global_sends, global_receives); });
  absl::Status node_status = node_->SendRecvGroup(node_sends, node_receives);
  global_thread.join();
  return !global_status.ok() ? global_status : node_status;
}

absl::StatusOr<int64_t> HierarchicalCommunicator::AllReduceMin(int64_t value) {
  return global_->AllReduceMin(value);
}

absl::StatusOr<std::vector<std::vector<uint8_t>>> HierarchicalCommunicator::AllGather(
    std::span<const uint8_t> bytes) {
  return global_->AllGather(bytes);
}

}  // namespace eplb::transfer
