#include "transfer/communicator.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace eplb::transfer {

absl::Status Communicator::RegisterSendBuffers(std::span<const MemoryRange> ranges) {
  return CheckMemoryRanges(ranges);
}

absl::Status CheckMemoryRanges(std::span<const MemoryRange> ranges) {
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (ranges[i].data == nullptr || ranges[i].bytes == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "RegisterSendBuffers: range ", i, " (", ranges[i].bytes, " bytes at ",
          absl::Hex(reinterpret_cast<uintptr_t>(ranges[i].data)), ") is null or empty"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckPeerTransfers(int32_t rank, int32_t size, std::span<const PeerTransfer> sends,
                                std::span<const PeerTransfer> receives) {
  for (const auto& [list, name] : {std::pair{sends, "send"}, std::pair{receives, "receive"}}) {
    for (size_t i = 0; i < list.size(); ++i) {
      if (list[i].peer < 0 || list[i].peer >= size) {
        return absl::InvalidArgumentError(absl::StrCat("SendRecvGroup on rank ", rank, ": ", name,
                                                       " ", i, " has peer ", list[i].peer,
                                                       ", outside [0, ", size, ")"));
      }
      if (list[i].data == nullptr && list[i].bytes > 0) {
        return absl::InvalidArgumentError(absl::StrCat("SendRecvGroup on rank ", rank, ": ", name,
                                                       " ", i, " has null data for ", list[i].bytes,
                                                       " bytes"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace eplb::transfer
