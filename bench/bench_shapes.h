// Deployment shapes the benchmarks share.
#ifndef EPLB_BENCH_BENCH_SHAPES_H_
#define EPLB_BENCH_BENCH_SHAPES_H_

#include "core/shape.h"

namespace eplb::bench {

// A shape with the name a benchmark prints for it.
struct NamedShape {
  const char* name;
  DeploymentShape shape;
};

// DeepSeek-V3 prefill: 58 layers × 256 experts, 8 groups, 4 nodes, 32 ranks, 288 slots (9/rank).
inline constexpr DeploymentShape kV3Prefill{.num_layers = 58,
                                            .num_logical_experts = 256,
                                            .num_groups = 8,
                                            .num_nodes = 4,
                                            .num_ranks = 32,
                                            .num_physical_experts = 288};
// DeepSeek-V3 decode: 144 ranks on 18 nodes, 288 slots (2/rank; G % N ≠ 0).
inline constexpr DeploymentShape kV3Decode{.num_layers = 58,
                                           .num_logical_experts = 256,
                                           .num_groups = 8,
                                           .num_nodes = 18,
                                           .num_ranks = 144,
                                           .num_physical_experts = 288};
// 64 ranks on 8 nodes, 320 slots (5/rank).
inline constexpr DeploymentShape kR64{.num_layers = 58,
                                      .num_logical_experts = 256,
                                      .num_groups = 8,
                                      .num_nodes = 8,
                                      .num_ranks = 64,
                                      .num_physical_experts = 320};
// Mixtral-like: 32 layers × 8 experts on 8 ranks, 16 slots (2/rank).
inline constexpr DeploymentShape kMixtral{
    .num_layers = 32, .num_logical_experts = 8, .num_ranks = 8, .num_physical_experts = 16};
// 48 layers × 12 experts on 6 ranks, 18 slots (3/rank).
inline constexpr DeploymentShape kE12ThreeSlots{
    .num_layers = 48, .num_logical_experts = 12, .num_ranks = 6, .num_physical_experts = 18};
// 58 layers × 512 experts, 32 groups, 32 nodes, 256 ranks, 768 slots.
inline constexpr DeploymentShape kLarge{.num_layers = 58,
                                        .num_logical_experts = 512,
                                        .num_groups = 32,
                                        .num_nodes = 32,
                                        .num_ranks = 256,
                                        .num_physical_experts = 768};

}  // namespace eplb::bench

#endif  // EPLB_BENCH_BENCH_SHAPES_H_
