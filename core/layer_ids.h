// LayerIds: how an engine numbers the layers of its files.
//
// An eplb map or load holds MoE layers only, in model order: row l is MoE layer l. Engines number
// rows differently: SGLang's maps hold every hidden layer (DeepSeek-V3: 61 rows, of which 0-2 are
// dense layers), TensorRT-LLM keys MoE layers by their hidden-layer index (3 … 60). A LayerIds
// says which hidden layer each MoE layer is: MoE layer l is hidden layer moe_layers()[l], of
// num_hidden_layers() hidden layers. Immutable, cheap to copy (one small vector).
#ifndef EPLB_CORE_LAYER_IDS_H_
#define EPLB_CORE_LAYER_IDS_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace eplb {

class LayerIds {
 public:
  // A model whose num_layers layers are all MoE layers: hidden layer l is MoE layer l.
  // REQUIRES: 1 ≤ num_layers ≤ ShapeLimits::kMaxLayers.
  static LayerIds AllMoe(int32_t num_layers);

  // MoE layers first_moe_layer … num_hidden_layers − 1 (DeepSeek-V3: 3 and 61). INVALID_ARGUMENT
  // naming the value and its range unless 0 ≤ first_moe_layer < num_hidden_layers ≤
  // kMaxHiddenLayers and the MoE layers number at most ShapeLimits::kMaxLayers.
  static absl::StatusOr<LayerIds> FromRange(int64_t first_moe_layer, int64_t num_hidden_layers);

  // A list of hidden-layer indices and ranges, strictly increasing: "3-60", "1,3,5-9".
  // num_hidden_layers 0 means the largest index + 1. INVALID_ARGUMENT naming the offending item
  // ("layer ids: "7-5" is not an increasing range"), a repeated or decreasing index, or an index
  // ≥ num_hidden_layers.
  static absl::StatusOr<LayerIds> Parse(absl::string_view list, int64_t num_hidden_layers = 0);

  // From the hidden-layer indices themselves (checked as Parse checks them).
  static absl::StatusOr<LayerIds> FromIds(std::vector<int64_t> ids, int64_t num_hidden_layers = 0);

  // The most hidden layers a model may have.
  static constexpr int32_t kMaxHiddenLayers = 65536;

  int32_t num_moe_layers() const { return static_cast<int32_t>(moe_layers_.size()); }
  int32_t num_hidden_layers() const { return num_hidden_layers_; }
  // Strictly increasing hidden-layer indices, one per MoE layer.
  std::span<const int32_t> moe_layers() const { return moe_layers_; }
  // The MoE layer that hidden layer `hidden` is, or -1 for a dense layer.
  // REQUIRES: 0 ≤ hidden < num_hidden_layers().
  int32_t MoeLayerOf(int32_t hidden) const;

  // "MoE layers 3-60 of 61 hidden layers".
  std::string DebugString() const;

  // OK when a map or load of `num_layers` MoE layers fits: INVALID_ARGUMENT naming both counts
  // otherwise ("the map has 58 MoE layers, but the layer ids name 61 (MoE layers 0-60 of 61 hidden
  // layers)"). `what` names the map or load.
  absl::Status CheckFits(int32_t num_layers, absl::string_view what) const;

  friend bool operator==(const LayerIds&, const LayerIds&) = default;

 private:
  LayerIds(std::vector<int32_t> moe_layers, int32_t num_hidden_layers)
      : moe_layers_(std::move(moe_layers)), num_hidden_layers_(num_hidden_layers) {}

  std::vector<int32_t> moe_layers_;
  int32_t num_hidden_layers_ = 0;
};

}  // namespace eplb

#endif  // EPLB_CORE_LAYER_IDS_H_
