// CUDA runtime errors as absl::Status, for the CUDA parts of transfer/.
#ifndef EPLB_TRANSFER_CUDA_STATUS_H_
#define EPLB_TRANSFER_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace eplb::transfer {

// INTERNAL "<what>: CUDA error <n> (<description>)".
inline absl::Status CudaError(absl::string_view what, cudaError_t error) {
  return absl::InternalError(absl::StrCat(what, ": CUDA error ", static_cast<int>(error), " (",
                                          cudaGetErrorString(error), ")"));
}

}  // namespace eplb::transfer

#endif  // EPLB_TRANSFER_CUDA_STATUS_H_
