// libFuzzer target: expert maps in the JSON formats (eplb, vllm-ascend, sglang). Whatever the
// input, the reader returns a map or INVALID_ARGUMENT, and a map it returns writes back to text
// that reads as the same map.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "core/check.h"
#include "core/layer_ids.h"
#include "core/map_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  for (const eplb::MapShapeHints& hints :
       {eplb::MapShapeHints{}, eplb::MapShapeHints{.num_ranks = 2},
        eplb::MapShapeHints{.num_ranks = 2, .layer_ids = *eplb::LayerIds::FromRange(1, 4)}}) {
    auto parsed = eplb::ParseExpertMapJson(text, hints);
    if (!parsed.ok()) {
      EPLB_CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument,
                 parsed.status().ToString());
      continue;
    }
    const eplb::LayerIds* ids = hints.layer_ids ? &*hints.layer_ids : nullptr;
    const std::string again = eplb::ExpertMapToText(parsed->map, parsed->format, 0, ids);
    auto reread =
        eplb::ParseExpertMapJson(again, {.num_logical_experts = parsed->map.num_logical_experts(),
                                         .num_ranks = parsed->map.num_ranks(),
                                         .layer_ids = hints.layer_ids});
    EPLB_CHECK(reread.ok() && reread->map == parsed->map,
               "round trip: ", reread.status().ToString());
  }
  return 0;
}
