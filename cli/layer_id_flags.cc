#include "cli/layer_id_flags.h"

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace eplb::cli {

absl::StatusOr<std::optional<LayerIds>> ParseLayerIdFlags(const ParsedArgs& args) {
  constexpr int64_t kMax = LayerIds::kMaxHiddenLayers;
  const bool list = args.Has("layer-ids"), first = args.Has("first-moe-layer"),
             hidden = args.Has("num-hidden-layers");
  if (!list && !first && !hidden) return std::nullopt;
  if (list && first) {
    return absl::InvalidArgumentError("--layer-ids and --first-moe-layer exclude each other");
  }
  if (first && !hidden) {
    return absl::InvalidArgumentError("--first-moe-layer needs --num-hidden-layers");
  }
  ASSIGN_OR_RETURN(const int64_t num_hidden, args.GetInt("num-hidden-layers", 0, 1, kMax));
  ASSIGN_OR_RETURN(const int64_t first_moe_layer, args.GetInt("first-moe-layer", 0, 0, kMax - 1));
  absl::StatusOr<LayerIds> ids = list ? LayerIds::Parse(args.Get("layer-ids"), num_hidden)
                                      : LayerIds::FromRange(first_moe_layer, num_hidden);
  if (!ids.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(list ? "--layer-ids: " : "--first-moe-layer, --num-hidden-layers: ",
                     ids.status().message()));
  }
  return *std::move(ids);
}

absl::Status RequireLayerIdsFor(MapFormat format, const std::optional<LayerIds>& layer_ids) {
  if (layer_ids || (format != MapFormat::kSglang && format != MapFormat::kTrtllm)) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      format == MapFormat::kSglang
          ? "--format sglang writes a row per hidden layer"
          : "--format trtllm keys the MoE layers by their hidden-layer index",
      ": give --first-moe-layer K --num-hidden-layers H (DeepSeek-V3: 3 and 61) or --layer-ids (a "
      "model whose layers are all MoE layers: --first-moe-layer 0 --num-hidden-layers L)"));
}

}  // namespace eplb::cli
