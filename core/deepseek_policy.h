// The `deepseek` policy: DeepSeek's hierarchical EPLB algorithm, reproduced bit for bit on
// integer-valued loads, tie rules and float32/double arithmetic included.
//
// Loads are cast to float32. With G % N == 0 it runs the hierarchical algorithm below, otherwise
// the same with G = N = 1 (the global policy). Per layer:
//   1. Groups to nodes: group loads (float32 sums) are packed onto N nodes, G/N groups each;
//   experts
//      are renumbered node-major, m(e) = (node(g)·G/N + pos(g))·E/G + e mod (E/G).
//   2. Replicas inside each node: starting from one replica per expert, each further replica (until
//      the node's P/N slots are used) goes to the expert with the largest load / count (a float32
//      quotient; ties: lowest index).
//   3. Replicas onto the node's R/N ranks: replica loads (load / final count, float32) are packed,
//      P/R per rank; replica i lands in node-local slot rank·(P/R) + pos.
// pack(x, m) visits items by decreasing x (ties: lower index first) and puts each in the lightest
// pack that still has room (ties: lower pack index), summing pack loads in double; with one item
// per pack, item i goes to pack i unsorted. A replica's rank (its position in log2phy) is the order
// in which step 2 created it. Two replicas of one expert can land on one rank, as in the original.
//
// Requires P % R == 0 (FAILED_PRECONDITION otherwise); E % G == 0, R % N == 0 and P ≥ E hold for
// every valid shape.
#ifndef EPLB_CORE_DEEPSEEK_POLICY_H_
#define EPLB_CORE_DEEPSEEK_POLICY_H_

#include "core/policy.h"

namespace eplb {

class DeepSeekPolicy final : public PlacementPolicy {
 public:
  static constexpr absl::string_view kName = "deepseek";
  absl::string_view name() const override { return kName; }
  bool uses_load() const override { return true; }

 protected:
  absl::StatusOr<ExpertMap> PlanValidated(const PlanInput& input) const override;
};

}  // namespace eplb

#endif  // EPLB_CORE_DEEPSEEK_POLICY_H_
