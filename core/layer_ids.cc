#include "core/layer_ids.h"

#include <algorithm>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/check.h"
#include "core/shape.h"

namespace eplb {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

// "3-60", "1, 3, 5-9": runs of consecutive indices.
std::string Runs(std::span<const int32_t> ids) {
  std::string text;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!text.empty()) text.append(",");
    absl::StrAppend(&text, ids[i]);
    if (j > i) absl::StrAppend(&text, "-", ids[j]);
    i = j + 1;
  }
  return text;
}

}  // namespace

LayerIds LayerIds::AllMoe(int32_t num_layers) {
  EPLB_CHECK(num_layers >= 1 && num_layers <= ShapeLimits::kMaxLayers, "num_layers ", num_layers);
  std::vector<int32_t> ids(num_layers);
  for (int32_t l = 0; l < num_layers; ++l) ids[l] = l;
  return LayerIds(std::move(ids), num_layers);
}

absl::StatusOr<LayerIds> LayerIds::FromRange(int64_t first_moe_layer, int64_t num_hidden_layers) {
  if (num_hidden_layers < 1 || num_hidden_layers > kMaxHiddenLayers) {
    return Invalid(absl::StrCat("num_hidden_layers = ", num_hidden_layers, " is out of range [1, ",
                                kMaxHiddenLayers, "]"));
  }
  if (first_moe_layer < 0 || first_moe_layer >= num_hidden_layers) {
    return Invalid(absl::StrCat("first_moe_layer = ", first_moe_layer, " is out of range [0, ",
                                num_hidden_layers - 1,
                                "] (below num_hidden_layers = ", num_hidden_layers, ")"));
  }
  std::vector<int64_t> ids;
  for (int64_t h = first_moe_layer; h < num_hidden_layers; ++h) ids.push_back(h);
  return FromIds(std::move(ids), num_hidden_layers);
}

absl::StatusOr<LayerIds> LayerIds::Parse(absl::string_view list, int64_t num_hidden_layers) {
  std::vector<int64_t> ids;
  for (absl::string_view item : absl::StrSplit(list, ',')) {
    item = absl::StripAsciiWhitespace(item);
    const auto bad = [&](absl::string_view why) {
      return Invalid(absl::StrCat("layer ids: \"", item, "\" ", why));
    };
    const std::vector<absl::string_view> ends = absl::StrSplit(item, '-');
    int64_t first = 0, last = 0;
    if (ends.size() > 2 || !absl::SimpleAtoi(ends.front(), &first) ||
        !absl::SimpleAtoi(ends.back(), &last) || first < 0) {
      return bad("is not a layer index or a range A-B of them");
    }
    if (last < first) return bad("is not an increasing range");
    if (last >= kMaxHiddenLayers) {
      return bad(absl::StrCat("names a layer beyond the largest index, ", kMaxHiddenLayers - 1));
    }
    for (int64_t h = first; h <= last; ++h) ids.push_back(h);
    if (ids.size() > static_cast<size_t>(ShapeLimits::kMaxLayers)) {
      return Invalid(
          absl::StrCat("layer ids name more than ", ShapeLimits::kMaxLayers, " MoE layers"));
    }
  }
  return FromIds(std::move(ids), num_hidden_layers);
}

absl::StatusOr<LayerIds> LayerIds::FromIds(std::vector<int64_t> ids, int64_t num_hidden_layers) {
  if (ids.empty()) return Invalid("layer ids name no layer");
  if (ids.size() > static_cast<size_t>(ShapeLimits::kMaxLayers)) {
    return Invalid(absl::StrCat("layer ids name ", ids.size(), " MoE layers, more than ",
                                ShapeLimits::kMaxLayers));
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= kMaxHiddenLayers) {
      return Invalid(
          absl::StrCat("layer id ", ids[i], " is out of range [0, ", kMaxHiddenLayers - 1, "]"));
    }
    if (i > 0 && ids[i] <= ids[i - 1]) {
      return Invalid(absl::StrCat("layer ids must increase: ", ids[i], " follows ", ids[i - 1]));
    }
  }
  if (num_hidden_layers == 0) num_hidden_layers = ids.back() + 1;
  if (num_hidden_layers <= ids.back() || num_hidden_layers > kMaxHiddenLayers) {
    return Invalid(absl::StrCat("num_hidden_layers = ", num_hidden_layers, " is out of range [",
                                ids.back() + 1, ", ", kMaxHiddenLayers,
                                "] (above the largest layer id, ", ids.back(), ")"));
  }
  std::vector<int32_t> narrow(ids.begin(), ids.end());
  return LayerIds(std::move(narrow), static_cast<int32_t>(num_hidden_layers));
}

int32_t LayerIds::MoeLayerOf(int32_t hidden) const {
  const auto it = std::lower_bound(moe_layers_.begin(), moe_layers_.end(), hidden);
  if (it == moe_layers_.end() || *it != hidden) return -1;
  return static_cast<int32_t>(it - moe_layers_.begin());
}

std::string LayerIds::DebugString() const {
  return absl::StrCat("MoE layers ", Runs(moe_layers_), " of ", num_hidden_layers_,
                      " hidden layers");
}

absl::Status LayerIds::CheckFits(int32_t num_layers, absl::string_view what) const {
  if (num_layers == num_moe_layers()) return absl::OkStatus();
  return Invalid(absl::StrCat(what, " has ", num_layers, " MoE layers, but the layer ids name ",
                              num_moe_layers(), " (", DebugString(), ")"));
}

}  // namespace eplb
