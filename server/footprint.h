// What one deployment holds in the planner's memory at most, computed from its spec before it is
// created: the planner admits a deployment only when the footprints of all deployments fit its
// memory budget (PlannerOptions::max_memory_bytes), and refuses to start on a state directory
// whose deployments do not. Also the largest messages the deployment's shape makes, which must fit
// the server's message limit. Pure.
#ifndef EPLB_SERVER_FOOTPRINT_H_
#define EPLB_SERVER_FOOTPRINT_H_

#include <cstdint>
#include <string>

#include "server/spec.h"

namespace eplb::server {

struct Footprint {
  int64_t smoothing_bytes = 0;  // the moving average (EMA or window buckets) and a report's scratch
  int64_t reports_bytes = 0;    // per rank: the last 1024 accepted sequence numbers and hashes
  int64_t plan_bytes = 0;       // one retained plan: its map, its message with R acks, its update
  int64_t retained_plans = 0;   // plan_history, plus the committed and the pending plan
  int64_t total_bytes() const {
    return smoothing_bytes + reports_bytes + plan_bytes * retained_plans;
  }
  // "1.2 GiB (smoothing 0.5 GiB, reports 0.1 GiB, 18 plans of 33.5 MiB)"
  std::string DebugString() const;
};

// Upper bounds, not averages: a deployment never holds more (transient copies made while one plan
// is computed are covered by the budget's reserve for work in flight).
Footprint DeploymentFootprint(const DeploymentShape& shape, const SmoothingOptions& smoothing,
                              int32_t plan_history);

// The largest messages the planner sends for the shape, in bytes: a GetLoad response and a plan
// with its map and rank acknowledgements. (What it receives is bounded by shape limits: one layer
// of a dense load report, the unit reports are split into, is at most 8 × 65,536 + 140 bytes,
// within the smallest request limit of 1 MiB.)
struct MessageSizes {
  int64_t get_load_bytes = 0;
  int64_t plan_bytes = 0;
};
MessageSizes ShapeMessageSizes(const DeploymentShape& shape);

// "512 MiB", "1.5 GiB", "800 KiB".
std::string FormatBytes(int64_t bytes);

}  // namespace eplb::server

#endif  // EPLB_SERVER_FOOTPRINT_H_
