// What a rank's side of expert placement exchanges with the planner, free of any transport: a plan
// as it reaches the rank (AgentPlan) and what the rank reports back (AgentAck). The planner's
// client (client/plan_watcher.h) turns the wire messages into these and back; the placement agent
// (agent/placement_agent.h) consumes and produces them. Neither side needs the other to use them.
#ifndef EPLB_CORE_PLAN_DELIVERY_H_
#define EPLB_CORE_PLAN_DELIVERY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "core/expert_map.h"

namespace eplb {

enum class PlanStatus { kPending, kCommitted, kAborted };

// A plan as a rank receives it.
struct AgentPlan {
  int64_t version = 0;  // ≥ 1
  PlanStatus status = PlanStatus::kPending;
  std::shared_ptr<const ExpertMap> map;  // required unless kAborted
  uint64_t map_hash = 0;                 // must equal map->Hash()
};

enum class AckKind { kStaged, kActive, kFailed };

// What a rank reports to the planner about a plan.
struct AgentAck {
  int64_t version = 0;
  AckKind kind = AckKind::kStaged;
  uint64_t map_hash = 0;  // the plan's (STAGED) or the rank's active map (ACTIVE)
  std::string error;      // for kFailed
};

}  // namespace eplb

#endif  // EPLB_CORE_PLAN_DELIVERY_H_
