#include "core/policy.h"

#include <array>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/balanced_policy.h"
#include "core/check.h"
#include "core/contiguous_policy.h"
#include "core/deepseek_policy.h"
#include "core/status_macros.h"

namespace eplb {

absl::StatusOr<ExpertMap> PlacementPolicy::Plan(const PlanInput& input) const {
  RETURN_IF_ERROR(ValidateShape(input.shape));
  if (uses_load()) {
    if (input.load == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("policy ", name(), " plans from load, but no load was given"));
    }
    RETURN_IF_ERROR(
        ValidateLoad(*input.load, input.shape.num_layers, input.shape.num_logical_experts));
  }
  if (input.previous != nullptr) {
    if (absl::Status st = input.previous->CheckFits(input.shape); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("previous ", st.message()));
    }
  }
  ASSIGN_OR_RETURN(ExpertMap map, PlanValidated(input));
  const absl::Status fits = map.CheckFits(input.shape);
  EPLB_CHECK(fits.ok(), "policy ", name(), " returned a map that does not fit ",
             input.shape.DebugString(), ": ", fits.message());
  return map;
}

std::span<const absl::string_view> PolicyNames() {
  static constexpr std::array<absl::string_view, 3> kNames = {
      ContiguousPolicy::kName, DeepSeekPolicy::kName, BalancedPolicy::kName};
  return kNames;
}

absl::StatusOr<std::unique_ptr<PlacementPolicy>> CreatePolicy(absl::string_view name,
                                                              const BalancedOptions* balanced) {
  if (name == BalancedPolicy::kName) {
    if (balanced == nullptr) return std::make_unique<BalancedPolicy>();
    RETURN_IF_ERROR(ValidateBalancedOptions(*balanced));
    return std::make_unique<BalancedPolicy>(*balanced);
  }
  if (balanced != nullptr && (name == ContiguousPolicy::kName || name == DeepSeekPolicy::kName)) {
    return absl::InvalidArgumentError(
        absl::StrCat("options of policy balanced were given for policy ", name));
  }
  if (name == ContiguousPolicy::kName) return std::make_unique<ContiguousPolicy>();
  if (name == DeepSeekPolicy::kName) return std::make_unique<DeepSeekPolicy>();
  return absl::InvalidArgumentError(
      absl::StrCat("policy = \"", name, "\" is not one of: ", absl::StrJoin(PolicyNames(), ", ")));
}

}  // namespace eplb
