// libFuzzer target: the load inputs that are text (eplb's load file, SGLang's logical_count).
// Whatever the input, the readers return a load of finite, non-negative values or
// INVALID_ARGUMENT.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "core/check.h"
#include "core/layer_ids.h"
#include "core/load_formats.h"
#include "core/map_format.h"

namespace {

void CheckLoad(const absl::StatusOr<eplb::LoadMatrix>& load) {
  if (!load.ok()) {
    EPLB_CHECK(load.status().code() == absl::StatusCode::kInvalidArgument,
               load.status().ToString());
    return;
  }
  EPLB_CHECK(load->values.size() == static_cast<size_t>(load->num_layers) * load->num_experts);
  for (double v : load->values) EPLB_CHECK(std::isfinite(v) && v >= 0, v);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  CheckLoad(eplb::ParseLoadJson(text));
  for (const auto& ids : {std::optional<eplb::LayerIds>(),
                          std::optional<eplb::LayerIds>(*eplb::LayerIds::FromRange(1, 4))}) {
    auto sglang = eplb::ParseSglangLoad(text, ids);
    CheckLoad(sglang.ok() ? absl::StatusOr<eplb::LoadMatrix>(sglang->load)
                          : absl::StatusOr<eplb::LoadMatrix>(sglang.status()));
  }
  return 0;
}
