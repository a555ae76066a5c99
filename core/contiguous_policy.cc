#include "core/contiguous_policy.h"

#include <vector>

namespace eplb {

absl::StatusOr<ExpertMap> ContiguousPolicy::PlanValidated(const PlanInput& input) const {
  const DeploymentShape& shape = input.shape;
  const int32_t E = shape.num_logical_experts, R = shape.num_ranks, P = shape.num_physical_experts;
  const SlotLayout layout = shape.slot_layout();

  std::vector<int32_t> row(P);
  std::vector<int32_t> held_by(E, -1);  // the last rank found holding the expert
  int32_t redundant = 0;                // redundant slots filled so far
  for (int32_t r = 0, expert = 0; r < R; ++r) {
    const int32_t own = E / R + (r < E % R ? 1 : 0);
    const int32_t first = layout.FirstSlotOfRank(r), end = layout.FirstSlotOfRank(r + 1);
    for (int32_t i = 0; i < own; ++i, ++expert) {
      row[first + i] = expert;
      held_by[expert] = r;
    }
    for (int32_t p = first + own; p < end; ++p, ++redundant) {
      int32_t e = redundant % E;
      // Skip experts this rank already holds, unless it holds them all (S > E).
      for (int32_t tries = 0; held_by[e] == r && tries < E; ++tries) e = (e + 1) % E;
      row[p] = e;
      held_by[e] = r;
    }
  }

  std::vector<int32_t> phy2log;
  phy2log.reserve(static_cast<size_t>(shape.num_layers) * P);
  for (int32_t l = 0; l < shape.num_layers; ++l)
    phy2log.insert(phy2log.end(), row.begin(), row.end());
  return ExpertMap::FromPhy2Log(shape.num_layers, E, layout, std::move(phy2log));
}

}  // namespace eplb
