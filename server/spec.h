// A deployment spec as the API receives it, checked and converted: the spec with its defaults
// filled in, and what core needs from it (shape, smoothing options, the policy, the initial map).
// Pure: no planner state, no I/O. Errors carry the API's field path ("spec.trigger.min_gain") and
// reason, with core's messages re-tagged where core validates.
#ifndef EPLB_SERVER_SPEC_H_
#define EPLB_SERVER_SPEC_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "core/expert_map.h"
#include "core/policy.h"
#include "core/shape.h"
#include "core/smoothed_load.h"
#include "eplb/v1/planner.pb.h"

namespace eplb::server {

// Everything a deployment needs from its spec, validated, with defaults filled in.
struct ValidatedSpec {
  v1::DeploymentSpec spec;
  DeploymentShape shape;
  SmoothingOptions smoothing;
  std::unique_ptr<PlacementPolicy> policy;
  std::optional<ExpertMap> initial_map;
};

// Where a spec comes from: a request is checked in full; a spec loaded from the state directory
// passed that check when it was created, so its initial map (already plan version 1) is not parsed
// again.
enum class SpecSource { kRequest, kStored };

// INVALID_ARGUMENT naming the first bad field. `default_policy` replaces an empty policy;
// `plan_threads` goes into BalancedOptions.threads. Allocates nothing in proportion to the shape
// but a request's initial map: the policy is probed separately (ProbePolicy).
absl::StatusOr<ValidatedSpec> ValidateSpec(const v1::DeploymentSpec& input,
                                           const std::string& default_policy, int32_t plan_threads,
                                           SpecSource source = SpecSource::kRequest);

// Plans once on zero load, so that a policy that cannot serve the shape (deepseek with
// P % R ≠ 0) is refused at create (the policy's code, POLICY_CANNOT_SERVE), not at the first
// rebalance. It takes memory of the order of the deployment's own (L × E load, L × P map): run it
// after the deployment's footprint is admitted. Specs loaded at start-up are not probed again (a
// planner whose policies changed still starts).
absl::Status ProbePolicy(const ValidatedSpec& validated);

// The first field of two normalized specs that differs ("" when none), for ALREADY_EXISTS.
std::string FirstDifference(const v1::DeploymentSpec& a, const v1::DeploymentSpec& b);

}  // namespace eplb::server

#endif  // EPLB_SERVER_SPEC_H_
