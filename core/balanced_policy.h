// The `balanced` policy: near-optimal balance per layer, and as little weight movement as that
// allows when a previous placement is given.
//
// Per layer:
//   1. Replica counts: every expert gets one slot, and each further slot goes to the expert with
//      the highest load per replica (a priority queue; never more replicas than ranks). This
//      minimises the highest per-replica load, one of the two terms of the lower bound. With two
//      slots on every rank, replicas then move between experts while that lowers the heaviest
//      pair (the best packing pairs the heaviest replica with the lightest, and a light expert's
//      extra replica can be the partner a heavy one lacks).
//   2. Packing: replicas, heaviest first, go to the least loaded rank that has a free slot and no
//      replica of the expert yet (slots per rank may differ: P need not be a multiple of R). Then
//      the busiest rank swaps replicas with other ranks while that lowers it (best swap first).
//      With at most 4 slots on every rank and at most 64 experts (per node with affinity), the
//      counts are searched with the packing within a fixed budget: count vectors whose heaviest
//      replica beats the packing so far are bounded (two slots: their best pairing; more: the
//      heaviest replica, the mean, and the k + 1 lightest of the kR + 1 heaviest replicas), and
//      the most promising are packed; the best packing wins.
//   3. When the `deepseek` policy can serve the shape and its layer has a less loaded busiest
//      rank, that layer is taken instead (repaired first if it puts an expert twice on a rank).
//   4. With a previous placement: the layer stays as it is when its busiest rank is within
//      `tolerance` of the packing above (nothing moves). Otherwise the previous placement is
//      repaired: while its busiest rank is above that target, the step that brings it (and every
//      rank the step touches) to the target with the fewest experts received wins, then the one
//      leaving it lowest (under drift, a rank just under the target is the likeliest to pass it
//      at the next rebalance); a step swaps two replicas between ranks, or turns one replica of
//      an expert with several into one more replica of an expert on the busiest rank. When no
//      step reaches the target, the one lowering the busiest rank most. At the target the repair
//      goes on, not stopping at the edge of the band: while a step lowers the busiest rank without
//      placing a replica away from home (it returns replicas to ranks that held them), and, with
//      `gain_per_move`, while one lowers the busiest rank's load by more than that price per
//      replica it places away (the most gain less price first; a layer within the tolerance is then
//      improved the same way instead of kept). This runs with the previous
//      replica counts, then with the new ones; if neither reaches the target, the fresh packing is
//      used with its ranks matched to the previous ones. An expert that stays on its rank keeps its
//      slot. Move budgets (max_received_per_rank, max_received_per_layer) bound the repair, even
//      short of the target; `min_gain` keeps a layer whose busiest rank would drop by less.
//   5. Node affinity: groups are assigned to nodes first (the previous assignment kept or repaired
//      the same way), then each node's experts are planned on its ranks as above. Planned afresh
//      with at most 4 slots on every rank, up to 4 other assignments (when there are at most 1024,
//      lowest bound first, while the bound beats the best) are planned too; the best is kept.
// Layers are planned in parallel (BalancedOptions::threads).
// Never two replicas of one expert on one rank (FAILED_PRECONDITION when P > E · R makes that
// impossible). Deterministic: ties go to the lower expert, replica and rank index.
#ifndef EPLB_CORE_BALANCED_POLICY_H_
#define EPLB_CORE_BALANCED_POLICY_H_

#include "core/policy.h"

namespace eplb {

struct BalancedOptions {
  // The largest move budget accepted: the most slots a layer can have. A budget above a layer's
  // slots is no limit, but is refused as a likely mistake.
  static constexpr int64_t kMaxBudget =
      static_cast<int64_t>(ShapeLimits::kMaxLogicalExperts) * ShapeLimits::kMaxRedundancyFactor;
  // The most threads accepted.
  static constexpr int32_t kMaxThreads = 1024;

  // Relative slack on the busiest rank's load within which fewer moved experts win (0.01: a plan
  // whose busiest rank is at most 1% above the best packing found is preferred when it moves
  // less). Without move budgets, min_gain and node affinity, no layer's busiest rank ends more
  // than this above the plan made without a previous placement. In [0, 1].
  double tolerance = 0.01;
  // Move budget: with a previous placement, at most this many experts received by one rank per
  // layer (an expert placed on a rank that did not hold it); 0: no limit. Under a budget only the
  // previous placement is repaired, and the repair stops at the budget, even above `tolerance`.
  int32_t max_received_per_rank = 0;
  // Move budget per layer: with a previous placement, at most this many experts received in all
  // ranks together per layer; 0: no limit. Combines with max_received_per_rank.
  int32_t max_received_per_layer = 0;
  // With a previous placement, a layer keeps it unless the new layer lowers its busiest rank by at
  // least this fraction of that rank's load (0: any gain beyond `tolerance` moves). In [0, 1].
  double min_gain = 0;
  // With a previous placement, once a layer's busiest rank is within `tolerance`, the repair goes
  // on with steps that lower the busiest rank's load by more than this fraction of the layer's
  // mean rank load per expert they make a rank receive (net of replicas returned to ranks that
  // held them): the tolerance is a limit, and this the price of balance in moves. Each step is
  // judged on the rank it lowers: where several ranks are as busy, the layer's busiest load drops
  // once each of them is lowered. With node affinity, per node (its mean, its busiest rank). 0:
  // only steps that make no rank receive an expert. In [0, 1].
  double gain_per_move = 0;
  // Node affinity: every expert group's replicas stay on the ranks of one node (groups are packed
  // onto nodes, G / N each, then each node is planned on its own), bounding cross-node traffic as
  // the hierarchical algorithm does. Needs G to be a multiple of N; no effect with one node. With
  // a previous placement that keeps groups on nodes, the group-to-node assignment and then each
  // node's ranks are kept or repaired as in step 4 above.
  bool node_affinity = false;
  // Threads planning layers in parallel (at most one per layer): 1 plans on the calling thread
  // alone, 0 uses one per hardware thread. The result does not depend on it. In [0, kMaxThreads].
  int32_t threads = 1;
};

// OK, or INVALID_ARGUMENT naming the first option out of range and the range.
absl::Status ValidateBalancedOptions(const BalancedOptions& options);

class BalancedPolicy final : public PlacementPolicy {
 public:
  static constexpr absl::string_view kName = "balanced";
  explicit BalancedPolicy(BalancedOptions options = {}) : options_(options) {}
  absl::string_view name() const override { return kName; }
  bool uses_load() const override { return true; }

 protected:
  absl::StatusOr<ExpertMap> PlanValidated(const PlanInput& input) const override;

 private:
  BalancedOptions options_;
};

}  // namespace eplb

#endif  // EPLB_CORE_BALANCED_POLICY_H_
