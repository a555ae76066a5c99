// Quality and cost of a placement: rank loads, balancedness, lower bounds on the busiest rank,
// optimal replica routing shares, and the migration between two placements. Pure functions of their
// arguments.
#ifndef EPLB_CORE_METRICS_H_
#define EPLB_CORE_METRICS_H_

#include <cstdint>
#include <span>
#include <vector>

#include "core/expert_map.h"
#include "core/load.h"

namespace eplb {

// Load on each rank of one layer: an expert's load splits evenly over its replicas.
// REQUIRES: load.size() == map.num_logical_experts().
std::vector<double> RankLoads(const ExpertMap& map, int32_t layer, std::span<const double> load);

// mean / max of rank loads, in (0, 1]; 1.0 when every rank is idle.
double Balancedness(std::span<const double> rank_loads);

// A lower bound on the busiest rank's load over all placements with `num_slots` slots on
// `num_ranks` ranks: max(total / R, the min over replica counts of the max per-replica load).
double MaxRankLoadLowerBound(std::span<const double> load, int32_t num_slots, int32_t num_ranks);

// A tighter lower bound where replica counts matter most: with S ≤ 4 slots on every rank
// (num_slots = S × num_ranks, S ≥ 2) and at most 12 experts, the least over every replica count
// vector of a bound for placements with those counts: with two slots, the best pairing of the
// replicas (heaviest with lightest); with more, the heaviest replica, the mean, and for each k the
// k + 1 lightest of the kR + 1 heaviest replicas (core/replica_bounds.h). It holds for every
// placement, two replicas of an expert on one rank included. Enumerated depth first within
// `max_steps` steps (kCountBoundSteps: about 4 ms on a 2-core test machine); when the enumeration
// does not finish, PairingLowerBound with two slots per rank, MaxRankLoadLowerBound with more.
// With two slots on every rank and more experts, PairingLowerBound; for other shapes,
// MaxRankLoadLowerBound.
inline constexpr int64_t kCountBoundSteps = 20000;
double CountLowerBound(std::span<const double> load, int32_t num_slots, int32_t num_ranks,
                       int64_t max_steps = kCountBoundSteps);
// Whether CountLowerBound is tighter than MaxRankLoadLowerBound can be for this shape: 2–4 slots
// on every rank and at most 12 experts, or two slots on every rank.
bool CountLowerBoundApplies(int32_t num_experts, int32_t num_slots, int32_t num_ranks);

// With two slots on every rank (2 × num_ranks slots; any number of experts up to that), a lower
// bound on the busiest rank of every placement, whatever its replica counts, two replicas of an
// expert on one rank included: the largest load T (found by bisection to a relative 1e-5, at least
// MaxRankLoadLowerBound) that these necessary conditions rule out. Each replica weighs at most T;
// and for each y ≤ T/2 a replica heavier than T − y shares its rank with one of at most y, so the
// first are no more than the second. Mixed over the replica counts by Lagrangian weights (0.25 and
// 0.5), each expert's least term is cheap, and the sum is swept over y: O(P log P) once, then
// O(P) for each of about 13 tested T. On the V3 decode shape (E 256, R 144) it closes most of the
// basic bound's gap to `balanced`'s busiest rank (tests/core/metrics_test.cc, policy_quality).
double PairingLowerBound(std::span<const double> load, int32_t num_ranks);

// How many nodes a layer spreads each expert group over, weighted by the group's load: the mean,
// over groups, of the number of nodes holding a replica of any of its experts (1.0 when every
// group lives on one node, as the hierarchical algorithm and node affinity keep it). With routing
// limited to k groups per token, a token's traffic reaches at most k × this many nodes on average.
// Ranks are grouped into `num_nodes` nodes of consecutive ranks; experts into `num_groups` groups
// of consecutive experts. REQUIRES: load.size() == map.num_logical_experts(), num_nodes divides
// map.num_ranks(), num_groups divides the number of experts.
double NodesPerGroup(const ExpertMap& map, int32_t layer, std::span<const double> load,
                     int32_t num_groups, int32_t num_nodes);

// A model of how tokens reach experts, for CrossNodeTrafficShare. Each token starts on a node
// picked uniformly; it picks `groups_per_token` expert groups (without replacement, in proportion
// to their load), then `experts_per_token` experts of those groups (without replacement, in
// proportion to their load), each served by one of its replicas picked uniformly. The token is
// sent once to every node holding a chosen replica (dispatch deduplicated per node, as the
// expert-parallel all-to-all kernels do). This is DeepSeek-V3's group-limited routing when
// groups_per_token < num_groups, and plain top-k routing when it equals num_groups.
struct RoutingModel {
  int32_t experts_per_token = 8;  // clamped to the experts of the chosen groups
  int32_t groups_per_token = 4;   // clamped to num_groups
  int32_t tokens = 32;            // sampled per layer (a fixed pseudo-random sequence)
  uint64_t seed = 1;
};

// An estimate of the model's cross-node share and how far it may be from the exact value:
// |share − exact| ≤ error_bound with probability at least 95% over the sampled tokens. The
// per-token scores are independent and identically distributed within a known range; the bound
// is the smaller of Hoeffding's and the empirical Bernstein bound (Maurer and Pontil), each at
// 97.5%, so that scores varying far less than their range are bounded far more tightly.
struct TrafficShareEstimate {
  double share = 0;
  double error_bound = 0;
};

// The cross-node share of one layer's token traffic under `model`: copies of tokens sent to a node
// other than their own, over experts_per_token copies per token (what a dispatch without node
// deduplication would send). 0 with one node; lower when a token's experts share nodes. The same
// inputs give the same value on every machine.
//
// Estimated from model.tokens tokens: each samples its groups and experts as the model does, and
// is scored with the expected number of nodes its dispatch reaches given those experts (the origin
// node and the replicas, both picked uniformly, are averaged exactly rather than sampled), so the
// score varies only with the experts drawn. Cost: O(E + P) per layer (cumulative loads and their
// guide tables, each expert's share of replicas per node) plus about groups_per_token +
// experts_per_token draws per token, each an inversion of cumulative loads started from a guide
// table.
// A negative load counts as 0 (loads are checked non-negative where they enter eplb).
// REQUIRES: as NodesPerGroup; model.tokens ≥ 1, experts_per_token ≥ 1, groups_per_token ≥ 1.
TrafficShareEstimate EstimateCrossNodeTrafficShare(const ExpertMap& map, int32_t layer,
                                                   std::span<const double> load, int32_t num_groups,
                                                   int32_t num_nodes,
                                                   const RoutingModel& model = {});

// The mean over the map's layers (`load` has one row per layer), from L × model.tokens tokens,
// each of a layer drawn uniformly (so that the tokens are identically distributed and the bound
// covers the differences between layers too): on the DeepSeek-V3 example (58 layers, 4 nodes)
// with the default 32 tokens per layer, ±0.006.
TrafficShareEstimate EstimateMeanCrossNodeTrafficShare(const ExpertMap& map, const LoadMatrix& load,
                                                       int32_t num_groups, int32_t num_nodes,
                                                       const RoutingModel& model = {});
// The same for several maps of one shape (REQUIRES: of the load's shape), sampling once: tokens
// depend on the load alone, so every map is scored on the same tokens. Each estimate equals the
// one-map call's; two maps' estimates err alike, so their difference is steadier than either.
std::vector<TrafficShareEstimate> EstimateMeanCrossNodeTrafficShares(
    std::span<const ExpertMap* const> maps, const LoadMatrix& load, int32_t num_groups,
    int32_t num_nodes, const RoutingModel& model = {});

// The estimates' `share` alone.
double CrossNodeTrafficShare(const ExpertMap& map, int32_t layer, std::span<const double> load,
                             int32_t num_groups, int32_t num_nodes, const RoutingModel& model = {});
double MeanCrossNodeTrafficShare(const ExpertMap& map, const LoadMatrix& load, int32_t num_groups,
                                 int32_t num_nodes, const RoutingModel& model = {});

struct LayerQuality {
  double balancedness = 1.0;    // mean / max rank load
  double max_over_bound = 1.0;  // max rank load / MaxRankLoadLowerBound (1.0 when both are 0)
  double max_over_count_bound = 1.0;  // max rank load / CountLowerBound (1.0 when both are 0)
};

struct MapQuality {
  std::vector<LayerQuality> layers;
  double min_balancedness = 1.0;
  double mean_balancedness = 1.0;
  double mean_max_over_bound = 1.0;
  double mean_max_over_count_bound = 1.0;
};

// REQUIRES: load has map.num_layers() rows of map.num_logical_experts() values.
MapQuality EvaluateMap(const ExpertMap& map, const LoadMatrix& load);
// EvaluateMap of several maps of one shape, each layer's lower bound computed once for all.
std::vector<MapQuality> EvaluateMaps(std::span<const ExpertMap* const> maps,
                                     const LoadMatrix& load);

// Replica routing shares of one layer: for each slot, the share of its expert's tokens that
// replica should receive so that the busiest rank is as low as the placement allows (an expert's
// shares sum to 1; uniform routing gives each replica 1 / its replicas). max_rank_load is the
// busiest rank these shares give: the least, over every split of each expert's load among the
// ranks holding it, of the highest rank load (to rounding; never above uniform routing's). Found by
// Dinkelbach's iteration on Hall's condition (the largest load held only by a set of ranks over
// its size), each step a maximum flow (experts → the ranks holding them → sink) whose minimum cut
// names the next set; replicas of an expert on one rank share its part evenly. Experts whose load
// is below 1e-12 of the layer's keep uniform shares.
// REQUIRES: load.size() == map.num_logical_experts(), loads finite and ≥ 0.
struct ReplicaShares {
  std::vector<double> share;  // per slot
  double max_rank_load = 0;
};
ReplicaShares OptimalReplicaShares(const ExpertMap& map, int32_t layer,
                                   std::span<const double> load);

// OptimalReplicaShares' shares of every layer, as one table of L × P entries, row-major (the
// eplb map format's replica_share, core/map_format.h). REQUIRES: load has map.num_layers() rows of
// map.num_logical_experts() values.
std::vector<double> OptimalReplicaShareTable(const ExpertMap& map, const LoadMatrix& load);

// Load on each rank of one layer when slot p receives share[p] of its expert's load (`share`: the
// layer's P entries). With 1 / replicas for every slot, RankLoads.
// REQUIRES: load.size() == map.num_logical_experts(), share.size() == map.num_physical_experts().
std::vector<double> RoutedRankLoads(const ExpertMap& map, int32_t layer,
                                    std::span<const double> load, std::span<const double> share);

// Balancedness (mean / max rank load) of every layer with tokens routed by `share_table` (L × P,
// as OptimalReplicaShareTable), and its min and mean over layers: the "weighted" balance beside
// EvaluateMap's uniform one. REQUIRES: as OptimalReplicaShareTable; share_table.size() == L × P.
struct RoutedBalance {
  std::vector<double> balancedness;
  double min_balancedness = 1.0;
  double mean_balancedness = 1.0;
};
RoutedBalance EvaluateRouting(const ExpertMap& map, const LoadMatrix& load,
                              std::span<const double> share_table);

// What moving from `before` to `after` costs.
struct Migration {
  int64_t slots_changed = 0;  // slots whose logical expert changes, summed over layers
  // Experts each rank must receive from another rank, summed over layers: an expert newly placed on
  // a rank that held no replica of it before. (An expert the rank already held is copied locally.)
  std::vector<int64_t> experts_received_per_rank;
  int64_t experts_received = 0;  // sum over ranks
  int64_t max_experts_received_by_a_rank = 0;
  int64_t bytes_moved = 0;  // experts_received × bytes_per_expert
};

// The largest bytes_per_expert accepted anywhere (1 TiB): bytes_moved cannot overflow with it, as
// at most 2^24 experts move.
inline constexpr int64_t kMaxBytesPerExpert = int64_t{1} << 40;

// REQUIRES: before and after have the same layers, experts, slots and ranks;
// 0 ≤ bytes_per_expert ≤ kMaxBytesPerExpert.
Migration ComputeMigration(const ExpertMap& before, const ExpertMap& after,
                           int64_t bytes_per_expert);

}  // namespace eplb

#endif  // EPLB_CORE_METRICS_H_
