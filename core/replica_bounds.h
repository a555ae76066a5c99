// Lower bounds on the busiest rank for given replica counts: what the balanced policy's count
// search and core/metrics' CountLowerBound share. Each holds for every placement of the replicas,
// a rank holding two replicas of one expert included.
#ifndef EPLB_CORE_REPLICA_BOUNDS_H_
#define EPLB_CORE_REPLICA_BOUNDS_H_

#include <cstdint>
#include <span>
#include <vector>

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

}  // namespace eplb

#endif  // EPLB_CORE_REPLICA_BOUNDS_H_
