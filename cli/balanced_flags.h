// The balanced policy's options as eplbctl flags, shared by `plan` and `create-deployment`.
#ifndef EPLB_CLI_BALANCED_FLAGS_H_
#define EPLB_CLI_BALANCED_FLAGS_H_

#include <array>
#include <optional>

#include "absl/status/statusor.h"
#include "cli/cli_args.h"
#include "core/balanced_policy.h"

namespace eplb::cli {

inline constexpr std::array<FlagSpec, 6> kBalancedFlags = {{
    {"tolerance", "X",
     "balanced: slack on a layer's busiest rank within which moving fewer experts wins "
     "(default 0.01)"},
    {"max-received-per-rank", "M",
     "balanced, from a previous map: at most M experts received per rank and layer (0: any)"},
    {"max-received-per-layer", "M",
     "balanced, from a previous map: at most M experts received per layer (0: any)"},
    {"layer-min-gain", "X",
     "balanced, from a previous map: a layer moves only if its busiest rank drops by this "
     "fraction (default 0)"},
    {"gain-per-move", "X",
     "balanced, from a previous map: within the tolerance, move an expert only for this gain on "
     "the busiest rank, as a fraction of the mean rank load (default 0: move none)"},
    {"node-affinity", "", "balanced: keep each expert group's replicas on one node"},
}};

struct BalancedFlags {
  BalancedOptions options;
  bool tolerance_given = false;
};

// The options given as flags, or nullopt when none is. INVALID_ARGUMENT naming the flag for a
// value out of range, or when one is given with a policy other than balanced (`policy`: the
// policy asked for; empty means the planner's default, which decides).
absl::StatusOr<std::optional<BalancedFlags>> ParseBalancedFlags(const ParsedArgs& args,
                                                                absl::string_view policy);

}  // namespace eplb::cli

#endif  // EPLB_CLI_BALANCED_FLAGS_H_
