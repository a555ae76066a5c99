// Layer numbering as eplbctl flags (core/layer_ids.h), shared by the verbs that read or write
// engine files: `plan`, `get-plan` and `create-deployment --initial-map`.
#ifndef EPLB_CLI_LAYER_ID_FLAGS_H_
#define EPLB_CLI_LAYER_ID_FLAGS_H_

#include <array>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cli/cli_args.h"
#include "core/layer_ids.h"
#include "core/map_format.h"

namespace eplb::cli {

inline constexpr std::array<FlagSpec, 3> kLayerIdFlags = {{
    {"layer-ids", "LIST",
     "hidden-layer indices of the MoE layers, e.g. 3-60 or 1,3,5-9 (how engine files number "
     "their rows)"},
    {"first-moe-layer", "K", "with --num-hidden-layers: the MoE layers are K … H-1"},
    {"num-hidden-layers", "H",
     "the model's hidden layers (default with --layer-ids: the largest + 1)"},
}};

// The numbering the flags give, or nullopt when none is given. INVALID_ARGUMENT naming the flag:
// --layer-ids with --first-moe-layer, --first-moe-layer without --num-hidden-layers, a malformed
// list or a value out of range. --num-hidden-layers H alone numbers every hidden layer a MoE
// layer.
absl::StatusOr<std::optional<LayerIds>> ParseLayerIdFlags(const ParsedArgs& args);

// OK unless `format` numbers rows by hidden layer (sglang, trtllm) and no numbering is given: a
// model's dense layers cannot be guessed, so writing such a file needs the flags.
absl::Status RequireLayerIdsFor(MapFormat format, const std::optional<LayerIds>& layer_ids);

}  // namespace eplb::cli

#endif  // EPLB_CLI_LAYER_ID_FLAGS_H_
