// libFuzzer target: TensorRT-LLM's load balancer YAML (trtllm). Whatever the input, the reader
// returns a map or INVALID_ARGUMENT (no exception escapes yaml-cpp, no crash on deep nesting), and
// a map it returns writes back to YAML that reads as the same map (its layers numbered 0 … L−1).
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "core/check.h"
#include "core/map_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  if (!text.empty() && text.front() == '{') text.front() = ' ';  // the JSON formats have their own
  for (int32_t ranks : {1, 2, 3}) {
    auto parsed = eplb::ParseExpertMap(text, {.num_ranks = ranks});
    if (!parsed.ok()) {
      EPLB_CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument,
                 parsed.status().ToString());
      continue;
    }
    const std::string again = eplb::ExpertMapToText(parsed->map, eplb::MapFormat::kTrtllm);
    auto reread = eplb::ParseExpertMap(
        again, {.num_logical_experts = parsed->map.num_logical_experts(), .num_ranks = ranks});
    EPLB_CHECK(reread.ok() && reread->map == parsed->map,
               "round trip: ", reread.status().ToString());
  }
  return 0;
}
