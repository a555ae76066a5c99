// TensorRT-LLM's MoE load-balancer configuration (the YAML file its `moe_config.load_balancer`
// names), as an expert map format. Internal to core/: map_format.h is the interface.
//
//   initial_global_assignments:
//     3: [138, 81, …]          # a MoE layer's hidden-layer index: its P slots' experts, rank-major
//     …
//   layer_updates_per_iter: 0  # 0: a static placement
//   num_slots: 288
//
// TensorRT-LLM refuses any other key, needs every MoE layer listed, P a multiple of its EP size
// and every expert in every layer; the reader refuses the same, and the writer writes only such
// files.
#ifndef EPLB_CORE_TRTLLM_MAP_H_
#define EPLB_CORE_TRTLLM_MAP_H_

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/expert_map.h"
#include "core/layer_ids.h"
#include "core/map_format.h"

namespace eplb::internal {

// Reads the YAML. The file carries no rank count: hints.num_ranks is required. Its layer keys are
// the MoE layers' hidden-layer indices: with hints.layer_ids they must be those it names.
absl::StatusOr<ParsedExpertMap> ParseTrtllmMap(absl::string_view yaml, const MapShapeHints& hints);

// REQUIRES: layer_ids fits the map; P is a multiple of R.
void WriteTrtllmMap(const ExpertMap& map, const LayerIds& layer_ids,
                    absl::FunctionRef<void(absl::string_view)> sink);

}  // namespace eplb::internal

#endif  // EPLB_CORE_TRTLLM_MAP_H_
