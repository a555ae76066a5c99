#include "core/policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>
#include <random>
#include <set>

namespace eplb {
namespace {

using ::testing::ElementsAre;

DeploymentShape SmallShape() {
  return {.num_layers = 2,
          .num_logical_experts = 8,
          .num_groups = 2,
          .num_nodes = 2,
          .num_ranks = 4,
          .num_physical_experts = 12};
}

LoadMatrix UniformLoad(const DeploymentShape& s, double v = 1.0) {
  return {.num_layers = s.num_layers,
          .num_experts = s.num_logical_experts,
          .values = std::vector<double>(s.num_layers * s.num_logical_experts, v)};
}

TEST(PolicyRegistryTest, NamesAndCreation) {
  EXPECT_THAT(PolicyNames(), ElementsAre("contiguous", "deepseek", "balanced"));
  for (absl::string_view name : PolicyNames()) {
    auto policy = CreatePolicy(name);
    ASSERT_TRUE(policy.ok()) << name;
    EXPECT_EQ((*policy)->name(), name);
  }
  auto unknown = CreatePolicy("greedy");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(unknown.status().message(),
            "policy = \"greedy\" is not one of: contiguous, deepseek, balanced");
}

TEST(PolicyValidationTest, BadInputIsRefusedWithTheField) {
  auto policy = *CreatePolicy("deepseek");
  const DeploymentShape shape = SmallShape();

  DeploymentShape bad_shape = shape;
  bad_shape.num_ranks = 0;
  LoadMatrix load = UniformLoad(shape);
  EXPECT_EQ(policy->Plan({.shape = bad_shape, .load = &load}).status().message(),
            "num_ranks = 0 is out of range [1, 65536]");

  EXPECT_EQ(policy->Plan({.shape = shape}).status().message(),
            "policy deepseek plans from load, but no load was given");

  LoadMatrix wrong_layers = UniformLoad({.num_layers = 3, .num_logical_experts = 8});
  EXPECT_EQ(policy->Plan({.shape = shape, .load = &wrong_layers}).status().message(),
            "load has 3 layers, expected num_layers = 2");

  LoadMatrix wrong_experts = UniformLoad({.num_layers = 2, .num_logical_experts = 9});
  EXPECT_EQ(policy->Plan({.shape = shape, .load = &wrong_experts}).status().message(),
            "load has 9 experts per layer, expected num_logical_experts = 8");

  LoadMatrix negative = UniformLoad(shape);
  negative.values[11] = -2;
  EXPECT_EQ(policy->Plan({.shape = shape, .load = &negative}).status().message(),
            "load[1][3] = -2 is negative");

  LoadMatrix nan = UniformLoad(shape);
  nan.values[4] = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(policy->Plan({.shape = shape, .load = &nan}).status().message(),
            "load[0][4] = nan is not a finite number");

  LoadMatrix inf = UniformLoad(shape);
  inf.values[0] = std::numeric_limits<double>::infinity();
  EXPECT_EQ(policy->Plan({.shape = shape, .load = &inf}).status().message(),
            "load[0][0] = inf is not a finite number");

  DeploymentShape other = shape;
  other.num_physical_experts = 16;
  auto previous = (*CreatePolicy("contiguous"))->Plan({.shape = other});
  ASSERT_TRUE(previous.ok());
  EXPECT_EQ(
      policy->Plan({.shape = shape, .load = &load, .previous = &*previous}).status().message(),
      "previous map has num_physical_experts = 16, but the deployment has 12");
}

// Properties every policy keeps on random inputs: every expert placed, slot counts as the layout
// says, log2phy and logcnt consistent with phy2log.
TEST(PolicyPropertyTest, RandomInputsGiveConsistentMaps) {
  std::mt19937_64 rng(42);
  for (int trial = 0; trial < 200; ++trial) {
    const int N = 1 + rng() % 3;
    const int R = N * (1 + rng() % 4);
    const int G = N * (1 + rng() % 3);
    const int E = G * (1 + rng() % 4);
    const int S = (std::max(E, R) + R - 1) / R + rng() % 3;
    const DeploymentShape shape{.num_layers = 1 + static_cast<int>(rng() % 3),
                                .num_logical_experts = E,
                                .num_groups = G,
                                .num_nodes = N,
                                .num_ranks = R,
                                .num_physical_experts = S * R};
    ASSERT_TRUE(ValidateShape(shape).ok()) << shape.DebugString();
    LoadMatrix load = UniformLoad(shape);
    for (double& v : load.values) v = static_cast<double>(rng() % 1000);
    for (absl::string_view name : PolicyNames()) {
      auto map = (*CreatePolicy(name))->Plan({.shape = shape, .load = &load});
      if (name == "balanced" && shape.num_physical_experts > E * R) {
        // One replica per rank at most: documented refusal.
        ASSERT_EQ(map.status().code(), absl::StatusCode::kFailedPrecondition);
        continue;
      }
      ASSERT_TRUE(map.ok()) << name << " " << shape.DebugString() << ": " << map.status();
      ASSERT_TRUE(map->CheckFits(shape).ok());
      for (int l = 0; l < shape.num_layers; ++l) {
        std::vector<int> count(E, 0);
        for (int p = 0; p < shape.num_physical_experts; ++p) ++count[map->phy2log(l)[p]];
        int total = 0;
        for (int e = 0; e < E; ++e) {
          ASSERT_GE(count[e], 1);
          ASSERT_EQ(map->logcnt(l)[e], count[e]);
          const auto slots = map->replicas(l, e);
          ASSERT_EQ(static_cast<int>(slots.size()), count[e]);
          std::set<int> distinct(slots.begin(), slots.end());
          ASSERT_EQ(static_cast<int>(distinct.size()), count[e]);
          for (int p : slots) ASSERT_EQ(map->phy2log(l)[p], e);
          total += count[e];
        }
        ASSERT_EQ(total, shape.num_physical_experts);
      }
    }
  }
}

}  // namespace
}  // namespace eplb
