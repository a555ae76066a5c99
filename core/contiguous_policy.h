// The `contiguous` policy: the map used before any load is known.
//
// Rank r holds a contiguous run of ⌊E/R⌋ experts, one more for the first E mod R ranks (30 experts
// on 8 ranks: 4,4,4,4,4,4,3,3), in its first slots, so with P == E expert e sits in slot e. The
// slots left over (P > E) hold redundant replicas round-robin: the j-th such slot, in slot order,
// holds expert j mod E, or if the rank already holds that expert, the next expert (cyclically) it
// does not hold. Every layer gets the same placement; load is ignored.
#ifndef EPLB_CORE_CONTIGUOUS_POLICY_H_
#define EPLB_CORE_CONTIGUOUS_POLICY_H_

#include "core/policy.h"

namespace eplb {

class ContiguousPolicy final : public PlacementPolicy {
 public:
  static constexpr absl::string_view kName = "contiguous";
  absl::string_view name() const override { return kName; }
  bool uses_load() const override { return false; }

 protected:
  absl::StatusOr<ExpertMap> PlanValidated(const PlanInput& input) const override;
};

}  // namespace eplb

#endif  // EPLB_CORE_CONTIGUOUS_POLICY_H_
