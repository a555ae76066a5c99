#include "client/report_parts.h"

#include <algorithm>

namespace eplb::client {
namespace {

// Everything but the layers: deployment name (≤ 63 bytes), the scalar fields, their tags.
constexpr int64_t kHeaderBytes = 256;
// A layer: the LayerCounts field (tag, length ≤ 4 bytes) holding the packed doubles (tag, length).
constexpr int64_t kLayerOverheadBytes = 12;

}  // namespace

int32_t LayersPerReport(int64_t counts_per_layer, int64_t max_bytes) {
  const int64_t layer_bytes = 8 * std::max<int64_t>(counts_per_layer, 0) + kLayerOverheadBytes;
  const int64_t fit = (max_bytes - kHeaderBytes) / layer_bytes;
  return static_cast<int32_t>(std::clamp<int64_t>(fit, 1, INT32_MAX));
}

std::vector<v1::LoadReport> SplitByLayers(const v1::LoadReport& whole, int64_t max_bytes) {
  if (static_cast<int64_t>(whole.ByteSizeLong()) <= max_bytes || whole.layers_size() <= 1) {
    return {whole};
  }
  int64_t widest = 0;
  for (const v1::LayerCounts& layer : whole.layers()) {
    widest = std::max<int64_t>(widest, layer.counts_size());
  }
  const int32_t per_report = LayersPerReport(widest, max_bytes);
  v1::LoadReport header = whole;
  header.clear_layers();
  std::vector<v1::LoadReport> parts;
  for (int32_t first = 0; first < whole.layers_size(); first += per_report) {
    v1::LoadReport& part = parts.emplace_back(header);
    part.set_sequence(whole.sequence() + static_cast<int64_t>(parts.size()) - 1);
    part.set_first_layer(whole.first_layer() + first);
    const int32_t end = std::min(whole.layers_size(), first + per_report);
    for (int32_t l = first; l < end; ++l) *part.add_layers() = whole.layers(l);
  }
  return parts;
}

}  // namespace eplb::client
