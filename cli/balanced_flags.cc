#include "cli/balanced_flags.h"

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace eplb::cli {

absl::StatusOr<std::optional<BalancedFlags>> ParseBalancedFlags(const ParsedArgs& args,
                                                                absl::string_view policy) {
  const FlagSpec* given = nullptr;
  for (const FlagSpec& flag : kBalancedFlags) {
    if (args.Has(flag.name)) {
      given = &flag;
      break;
    }
  }
  if (given == nullptr) return std::nullopt;
  if (!policy.empty() && policy != BalancedPolicy::kName) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", given->name, " applies to --policy balanced, not ", policy));
  }
  constexpr int64_t kMaxBudget = BalancedOptions::kMaxBudget;
  BalancedFlags flags;
  BalancedOptions& o = flags.options;
  flags.tolerance_given = args.Has("tolerance");
  ASSIGN_OR_RETURN(o.tolerance, args.GetDouble("tolerance", o.tolerance, 0, 1));
  ASSIGN_OR_RETURN(const int64_t per_rank, args.GetInt("max-received-per-rank", 0, 0, kMaxBudget));
  ASSIGN_OR_RETURN(const int64_t per_layer,
                   args.GetInt("max-received-per-layer", 0, 0, kMaxBudget));
  o.max_received_per_rank = static_cast<int32_t>(per_rank);
  o.max_received_per_layer = static_cast<int32_t>(per_layer);
  ASSIGN_OR_RETURN(o.min_gain, args.GetDouble("layer-min-gain", 0, 0, 1));
  ASSIGN_OR_RETURN(o.gain_per_move, args.GetDouble("gain-per-move", 0, 0, 1));
  o.node_affinity = args.Has("node-affinity");
  return flags;
}

}  // namespace eplb::cli
