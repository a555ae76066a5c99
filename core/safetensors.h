// A reader of the safetensors container (huggingface/safetensors), the files TensorRT-LLM writes
// its expert statistics to:
//
//   8 bytes    N, the header's length, an unsigned little-endian 64-bit integer (N ≤ 10^8)
//   N bytes    a JSON object: per tensor {"dtype": "I64", "shape": [4], "data_offsets": [B, E]},
//              and optionally "__metadata__": {string: string}; may end in spaces
//   the rest   the tensors' bytes, little-endian, row-major; tensor t occupies [B, E) of it
//
// Files are untrusted: every length, offset and size is checked as the reference reader checks it
// (offsets contiguous from 0 with no gap or overlap, the last one at the end of the file, E − B
// equal to the shape's size times the dtype's, no arithmetic overflow), and anything else is
// INVALID_ARGUMENT naming the tensor and the field. Pure, thread-compatible.
#ifndef EPLB_CORE_SAFETENSORS_H_
#define EPLB_CORE_SAFETENSORS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace eplb {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;           // "I64", "F32", …
  std::vector<int64_t> shape;  // row-major
  absl::string_view data;      // a view into the file's bytes
};

// The tensors of a safetensors file, in file order. The views point into `bytes`, which must
// outlive them.
absl::StatusOr<std::vector<SafetensorsTensor>> ParseSafetensors(absl::string_view bytes);

// The elements of an integer tensor (I8 … I64, U8 … U64, BOOL) as int64. INVALID_ARGUMENT naming
// the tensor for another dtype, or for a U64 value beyond int64.
absl::StatusOr<std::vector<int64_t>> SafetensorsIntegers(const SafetensorsTensor& tensor);

}  // namespace eplb

#endif  // EPLB_CORE_SAFETENSORS_H_
