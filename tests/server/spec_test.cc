// The spec's validation and conversion on its own (server/spec.h): no planner, no gRPC, no disk.
#include "server/spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "proto/convert.h"

namespace eplb::server {
namespace {

v1::DeploymentSpec Minimal() {
  v1::DeploymentSpec spec;
  spec.set_name("d");
  v1::Shape& shape = *spec.mutable_shape();
  shape.set_num_layers(2);
  shape.set_num_logical_experts(8);
  shape.set_num_physical_experts(12);
  shape.set_num_ranks(4);
  return spec;
}

v1::ErrorReason Reason(const absl::Status& status) {
  const auto detail = GetErrorDetail(status);
  return detail.has_value() ? detail->reason() : v1::ERROR_REASON_UNSPECIFIED;
}

TEST(SpecTest, DefaultsAreFilledInAndCoreGetsItsOptions) {
  auto validated = ValidateSpec(Minimal(), "deepseek", 3);
  ASSERT_TRUE(validated.ok()) << validated.status();
  const v1::DeploymentSpec& spec = validated->spec;
  EXPECT_EQ(spec.policy(), "deepseek");
  EXPECT_EQ(spec.smoothing().ema_half_life_steps(), 1000);
  EXPECT_EQ(spec.trigger().interval_steps(), 1000);
  EXPECT_EQ(spec.commit_mode(), v1::COMMIT_MODE_ACKED);
  EXPECT_EQ(spec.ack_timeout_ms(), 60'000);
  EXPECT_EQ(spec.plan_history(), 16);
  EXPECT_EQ(spec.shape().num_groups(), 1);  // normalized: 0 means 1
  EXPECT_EQ(validated->shape.num_physical_experts, 12);
  EXPECT_EQ(validated->smoothing.kind, SmoothingOptions::Kind::kEma);
  EXPECT_EQ(validated->smoothing.ema_half_life_steps, 1000);
  EXPECT_FALSE(validated->initial_map.has_value());
  ASSERT_NE(validated->policy, nullptr);
  // Validating the normalized spec again changes nothing.
  auto again = ValidateSpec(spec, "contiguous", 3);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(FirstDifference(again->spec, spec), "");
}

TEST(SpecTest, ErrorsNameTheFieldPathAndReason) {
  v1::DeploymentSpec spec = Minimal();
  spec.mutable_smoothing()->set_window_steps(100'000);
  spec.mutable_shape()->set_num_layers(4096);
  spec.mutable_shape()->set_num_logical_experts(4096);
  spec.mutable_shape()->set_num_physical_experts(4096);
  const absl::Status big = ValidateSpec(spec, "contiguous", 1).status();
  EXPECT_EQ(big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(big.message()),
              ::testing::StartsWith("spec.smoothing.window_steps = 100000 needs "));
  EXPECT_EQ(Reason(big), v1::FIELD_OUT_OF_RANGE);
  EXPECT_EQ(GetErrorDetail(big)->field(), "spec.smoothing.window_steps");

  v1::DeploymentSpec balanced = Minimal();
  balanced.mutable_balanced()->set_tolerance(0.1);
  const absl::Status wrong_policy = ValidateSpec(balanced, "deepseek", 1).status();
  EXPECT_EQ(wrong_policy.message(), "spec.balanced applies to policy balanced, not deepseek");

  v1::DeploymentSpec unnamed = Minimal();
  unnamed.clear_name();
  EXPECT_EQ(Reason(ValidateSpec(unnamed, "deepseek", 1).status()), v1::FIELD_REQUIRED);
}

// The probe refuses a policy that cannot serve the shape; validation alone (a stored spec at
// start-up, or a request before admission) does not run it.
TEST(SpecTest, ThePolicyIsProbedOnlyWhenAsked) {
  v1::DeploymentSpec spec = Minimal();
  spec.mutable_shape()->set_num_physical_experts(10);  // deepseek needs P % R == 0
  for (const SpecSource source : {SpecSource::kRequest, SpecSource::kStored}) {
    const auto validated = ValidateSpec(spec, "deepseek", 1, source);
    ASSERT_TRUE(validated.ok()) << validated.status();
    const absl::Status refused = ProbePolicy(*validated);
    EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(Reason(refused), v1::POLICY_CANNOT_SERVE);
  }
  EXPECT_TRUE(ProbePolicy(*ValidateSpec(Minimal(), "deepseek", 1)).ok());
}

TEST(SpecTest, FirstDifferenceNamesTheFirstFieldThatDiffers) {
  auto a = ValidateSpec(Minimal(), "deepseek", 1);
  ASSERT_TRUE(a.ok());
  v1::DeploymentSpec b = a->spec;
  EXPECT_EQ(FirstDifference(a->spec, b), "");
  b.mutable_trigger()->set_min_steps(5);
  EXPECT_EQ(FirstDifference(a->spec, b), "trigger");
  b.set_plan_history(3);
  EXPECT_EQ(FirstDifference(a->spec, b), "trigger");
  b.set_policy("balanced");
  EXPECT_EQ(FirstDifference(a->spec, b), "policy");
}

}  // namespace
}  // namespace eplb::server
