// Lower bounds on the busiest rank for given replica counts, and the walk over count vectors that
// the balanced policy's count search and core/metrics' CountLowerBound share. Each holds for every
// placement of the replicas, a rank holding two replicas of one expert included.
#ifndef EPLB_CORE_REPLICA_BOUNDS_H_
#define EPLB_CORE_REPLICA_BOUNDS_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/functional/function_ref.h"

namespace eplb {

// The replicas of `count` (load[e] / count[e] each), as runs of equal weight (one expert's),
// heaviest first.
struct ReplicaRun {
  double weight;
  int32_t n;
};
void RunsOf(std::span<const double> load, std::span<const int32_t> count,
            std::vector<ReplicaRun>& runs);

// With two slots on every rank: the busiest rank of the pairing of the heaviest replica with the
// lightest, the second heaviest with the second lightest, and so on, which is the best pairing of
// these replicas (a pairing with every pair at most T exists exactly when, for every replica of
// weight x above T/2, the replicas at least as heavy are no more than those at most T − x).
double PairedMax(std::span<const ReplicaRun> runs);

// A lower bound on the busiest rank of any packing of these replicas on R ranks of `slots` slots:
// the heaviest replica, the mean rank load (`total` / R), and for k = 1 … slots − 1 the k + 1
// lightest of the kR + 1 heaviest replicas (some rank holds k + 1 of them).
double CountBound(std::span<const ReplicaRun> runs, int32_t R, int32_t slots, double total);

// Replica count vectors with at most `cap` replicas per expert and P in all, as a depth-first walk
// over the experts, heaviest first (ties by index), visits them: each expert from its fewest
// replicas whose weight lies below limit() (floor(load / limit) + 1; 1 for an idle expert) up to
// what the experts after it leave. limit() may fall from one leaf to the next (fewer vectors
// qualify as it does). Calls leaf(count) for each vector; stops after max_steps steps (one per
// expert's choice and per leaf). Returns whether the walk finished.
// REQUIRES: limit() > 0 while any expert has load.
bool EnumerateReplicaCounts(std::span<const double> load, int32_t P, int32_t cap,
                            absl::FunctionRef<double()> limit,
                            absl::FunctionRef<void(std::span<const int32_t>)> leaf,
                            int64_t max_steps);

}  // namespace eplb

#endif  // EPLB_CORE_REPLICA_BOUNDS_H_
