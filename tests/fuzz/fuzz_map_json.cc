// libFuzzer target: JSON and the expert maps in the JSON formats (eplb, vllm-ascend, sglang).
// Whatever the input, the JSON parser returns a document that writes back to text that parses as
// the same document, or INVALID_ARGUMENT naming a line and column; the map reader returns a map or
// INVALID_ARGUMENT, and a map it returns (with its replica shares) writes back to text that reads
// as the same map and shares.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/strings/match.h"
#include "core/check.h"
#include "core/json.h"
#include "core/layer_ids.h"
#include "core/map_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto doc = eplb::ParseJson(text); doc.ok()) {
    const std::string written = eplb::WriteJson(*doc);
    auto again = eplb::ParseJson(written);
    EPLB_CHECK(again.ok() && *again == *doc, "JSON round trip: ", again.status().ToString());
    EPLB_CHECK(eplb::WriteJson(*again) == written, "JSON written twice differs");
  } else {
    EPLB_CHECK(doc.status().code() == absl::StatusCode::kInvalidArgument &&
                   absl::StartsWith(doc.status().message(), "line "),
               doc.status().ToString());
  }
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
    // Replica shares come only with the eplb format, and were checked by the reader.
    EPLB_CHECK(parsed->replica_share.empty() || parsed->format == eplb::MapFormat::kEplb,
               "replica shares read from ", eplb::MapFormatName(parsed->format));
    const std::string again =
        eplb::ExpertMapToText(parsed->map, parsed->format, 0, ids, parsed->replica_share);
    auto reread =
        eplb::ParseExpertMapJson(again, {.num_logical_experts = parsed->map.num_logical_experts(),
                                         .num_ranks = parsed->map.num_ranks(),
                                         .layer_ids = hints.layer_ids});
    EPLB_CHECK(
        reread.ok() && reread->map == parsed->map && reread->replica_share == parsed->replica_share,
        "round trip: ", reread.status().ToString());
  }
  return 0;
}
