#include "transfer/device.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace eplb::transfer {
namespace {

absl::Status CheckArea(int area) {
  if (area < 0 || area >= DeviceContext::kNumAreas) {
    return absl::InvalidArgumentError(absl::StrCat("staging area = ", area,
                                                   " is out of range [0, ",
                                                   DeviceContext::kNumAreas - 1, "]"));
  }
  return absl::OkStatus();
}

void RunCopies(std::span<const CopyOp> ops) {
  for (const CopyOp& op : ops) {
    if (op.bytes > 0) std::memcpy(op.dst, op.src, op.bytes);
  }
}

}  // namespace

absl::StatusOr<void*> HostDeviceContext::Allocate(size_t bytes, MemoryKind /*kind*/) {
  void* ptr = std::calloc(bytes == 0 ? 1 : bytes, 1);
  if (ptr == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes"));
  }
  return ptr;
}

void HostDeviceContext::Free(void* ptr, MemoryKind /*kind*/) { std::free(ptr); }

absl::Status HostDeviceContext::WaitForArea(int area) { return CheckArea(area); }

absl::Status HostDeviceContext::StageCopies(std::span<const CopyOp> ops) {
  RunCopies(ops);
  return absl::OkStatus();
}

absl::Status HostDeviceContext::SwitchCopies(std::span<const CopyOp> ops, int area) {
  if (absl::Status status = CheckArea(area); !status.ok()) return status;
  RunCopies(ops);
  return absl::OkStatus();
}

}  // namespace eplb::transfer
