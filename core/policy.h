// Placement policies: (shape, load, previous map) → new ExpertMap, behind one interface, chosen by
// name.
//
//   contiguous  the map before any load is known: experts in order, spread evenly over the ranks
//   deepseek    DeepSeek's hierarchical EPLB algorithm, reproduced bit for bit
//   balanced    near-optimal balance, and few moved experts given the previous placement
//               (balanced_policy.h)
//
// Policies are stateless and thread-compatible: one instance may plan from several threads.
#ifndef EPLB_CORE_POLICY_H_
#define EPLB_CORE_POLICY_H_

#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/expert_map.h"
#include "core/load.h"
#include "core/shape.h"

namespace eplb {

struct PlanInput {
  DeploymentShape shape;
  // Load per layer and logical expert. Required unless the policy ignores load (contiguous).
  const LoadMatrix* load = nullptr;
  // The placement now in use, if any. Policies that minimise movement start from it.
  const ExpertMap* previous = nullptr;
};

class PlacementPolicy {
 public:
  virtual ~PlacementPolicy() = default;

  virtual absl::string_view name() const = 0;
  // Whether Plan() reads PlanInput::load.
  virtual bool uses_load() const = 0;

  // Validates the input (shape, load, previous map) and plans. Errors:
  //   INVALID_ARGUMENT  a shape field out of range; a load of the wrong dimensions or with a
  //                     negative, NaN or infinite entry; a previous map of another shape; no load
  //                     given to a policy that uses it
  //   FAILED_PRECONDITION  a valid shape this policy cannot serve (e.g. deepseek with P % R ≠ 0)
  // The result always fits input.shape.
  absl::StatusOr<ExpertMap> Plan(const PlanInput& input) const;

 protected:
  // Called with validated input only.
  virtual absl::StatusOr<ExpertMap> PlanValidated(const PlanInput& input) const = 0;
};

// The policies, in the order they are documented.
std::span<const absl::string_view> PolicyNames();

struct BalancedOptions;

// INVALID_ARGUMENT naming the known policies if `name` is not one of them. `balanced`: options of
// the balanced policy (nullptr: its defaults); INVALID_ARGUMENT if given for another policy or if
// one is out of range (ValidateBalancedOptions).
absl::StatusOr<std::unique_ptr<PlacementPolicy>> CreatePolicy(
    absl::string_view name, const BalancedOptions* balanced = nullptr);

}  // namespace eplb

#endif  // EPLB_CORE_POLICY_H_
