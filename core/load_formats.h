// Load input as engines record it, read into a LoadMatrix of MoE layers (core/load.h):
//
//   eplb          the load file {"load": [[…E…] × L]} (ParseLoadJson)
//   sglang        SGLang's expert distribution, {"logical_count": …} as --init-expert-location
//                 reads it: [H][E] or [steps][H][E] tokens per logical expert, a row per hidden
//                 layer (dense layers' rows count nothing); other keys are ignored, as SGLang
//                 ignores them. Steps are summed; the MoE layers' rows kept (LayerIds).
//   trtllm-stats  TensorRT-LLM's expert statistics: a directory holding meta_info.json
//                 ({"num_experts": E, …}) and rank{r}.safetensors per rank, with a tensor
//                 "{iteration}_{layer}" of [E] integer counts per recorded iteration and MoE layer
//                 (its hidden-layer index). Counts are summed over ranks and over the iterations
//                 asked for; rank{r}_raw.safetensors files are not statistics and are skipped.
//
// Files are untrusted: everything is checked and refused with INVALID_ARGUMENT naming the file and
// the field (NOT_FOUND for a missing file). Statistics recorded with TensorRT-LLM's load balancer
// on count slots, not experts: they cannot be told apart from expert counts, so record without it.
#ifndef EPLB_CORE_LOAD_FORMATS_H_
#define EPLB_CORE_LOAD_FORMATS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/layer_ids.h"
#include "core/load.h"

namespace eplb {

enum class LoadFormat { kEplb, kSglang, kTrtllmStats };

// "eplb", "sglang", "trtllm-stats". INVALID_ARGUMENT listing these for any other name.
absl::StatusOr<LoadFormat> ParseLoadFormat(absl::string_view name);
absl::string_view LoadFormatName(LoadFormat format);

struct LoadReadOptions {
  // How the engine numbers layers. sglang: its rows are hidden layers, the MoE layers' are kept
  // (unset: every row is a MoE layer). trtllm-stats: the layers to read, in this order (unset:
  // every layer recorded, in index order). eplb: its rows are MoE layers (passed through).
  std::optional<LayerIds> layer_ids;
  // trtllm-stats: the iterations first ≤ i < last to sum, as TensorRT-LLM's
  // EXPERT_STATISTIC_ITER_RANGE "first-last" records them (unset: every one recorded).
  std::optional<std::pair<int64_t, int64_t>> iterations;
};

struct EngineLoad {
  LoadMatrix load;                    // MoE layers, in order
  std::optional<LayerIds> layer_ids;  // the numbering the input carried or was read with
  int64_t steps = 0;                  // sglang: steps summed; trtllm-stats: iterations summed
  int32_t files = 1;                  // trtllm-stats: rank files read
};

// Reads `path` (a file; for trtllm-stats a directory) in `format`.
absl::StatusOr<EngineLoad> ReadEngineLoad(const std::string& path, LoadFormat format,
                                          const LoadReadOptions& options = {});

// The sglang format from text (what ReadEngineLoad reads from the file).
absl::StatusOr<EngineLoad> ParseSglangLoad(absl::string_view json,
                                           const std::optional<LayerIds>& layer_ids);

// The MoE layers' rows of a load with a row per hidden layer (`layer_ids` unset: every row is a
// MoE layer, at most ShapeLimits::kMaxLayers of them). INVALID_ARGUMENT naming `what` and both
// counts when the rows are not the hidden layers the ids name; the values are then validated
// (ValidateLoad).
absl::StatusOr<LoadMatrix> SelectMoeLayers(LoadMatrix hidden_rows,
                                           const std::optional<LayerIds>& layer_ids,
                                           absl::string_view what);

}  // namespace eplb

#endif  // EPLB_CORE_LOAD_FORMATS_H_
