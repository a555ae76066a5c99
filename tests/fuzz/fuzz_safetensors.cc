// libFuzzer target: safetensors files (TensorRT-LLM's expert statistics). Whatever the input, the
// reader returns tensors whose data lie inside the input and fill it exactly, or INVALID_ARGUMENT.
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "core/check.h"
#include "core/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto tensors = eplb::ParseSafetensors(bytes);
  if (!tensors.ok()) {
    EPLB_CHECK(tensors.status().code() == absl::StatusCode::kInvalidArgument,
               tensors.status().ToString());
    return 0;
  }
  size_t total = 0;
  for (const eplb::SafetensorsTensor& t : *tensors) {
    EPLB_CHECK(t.data.data() >= bytes.data() &&
               t.data.data() + t.data.size() <= bytes.data() + size);
    total += t.data.size();
    auto values = eplb::SafetensorsIntegers(t);
    if (!values.ok()) {
      EPLB_CHECK(values.status().code() == absl::StatusCode::kInvalidArgument);
    }
  }
  EPLB_CHECK(total <= size);
  return 0;
}
