#include "server/spec.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/balanced_policy.h"
#include "core/metrics.h"
#include "core/status_macros.h"
#include "google/protobuf/util/message_differencer.h"
#include "proto/api_limits.h"
#include "proto/convert.h"
#include "server/api_errors.h"

namespace eplb::server {
namespace {

using api::kDefaultAckTimeoutMs;
using api::kDefaultHalfLifeSteps;
using api::kDefaultIntervalSteps;
using api::kDefaultPlanHistory;
using api::kMaxAckTimeoutMs;
using api::kMaxHalfLifeSteps;
using api::kMaxIntervalSteps;
using api::kMaxMinSteps;
using api::kMaxPlanHistory;
using api::kMaxSmoothingBytes;
using api::kMaxWindowSteps;
using api::kMinAckTimeoutMs;
using api::kMinPlanHistory;

bool ValidName(absl::string_view name) {
  if (name.empty() || name.size() > 63 || !(name[0] >= 'a' && name[0] <= 'z')) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
  });
}

}  // namespace

absl::StatusOr<ValidatedSpec> ValidateSpec(const v1::DeploymentSpec& input,
                                           const std::string& default_policy, int32_t plan_threads,
                                           SpecSource source) {
  ValidatedSpec result;
  v1::DeploymentSpec& spec = result.spec;
  spec = input;
  if (spec.name().empty()) return Required("spec.name");
  if (!ValidName(spec.name())) {
    return OutOfRange("spec.name", absl::StrCat("\"", spec.name(),
                                                "\" must be 1 to 63 characters of [a-z0-9-] "
                                                "starting with a letter"));
  }
  if (!spec.has_shape()) return Required("spec.shape");
  result.shape = ShapeFromProto(spec.shape());
  if (absl::Status status = ValidateShape(result.shape); !status.ok()) {
    return Tagged(status, v1::FIELD_OUT_OF_RANGE, "spec.shape");
  }
  ShapeToProto(result.shape, spec.mutable_shape());

  if (spec.policy().empty()) spec.set_policy(default_policy);
  std::optional<BalancedOptions> balanced;
  if (spec.policy() == BalancedPolicy::kName) {
    v1::BalancedOptions& b = *spec.mutable_balanced();
    if (!b.has_tolerance()) b.set_tolerance(BalancedOptions().tolerance);
    const int32_t slots = result.shape.num_physical_experts;
    if (!(b.tolerance() >= 0 && b.tolerance() <= 1)) {
      return OutOfRange("spec.balanced.tolerance",
                        absl::StrCat("= ", b.tolerance(), " is out of range [0, 1]"));
    }
    if (!(b.min_gain() >= 0 && b.min_gain() <= 1)) {
      return OutOfRange("spec.balanced.min_gain",
                        absl::StrCat("= ", b.min_gain(), " is out of range [0, 1]"));
    }
    if (!(b.gain_per_move() >= 0 && b.gain_per_move() <= 1)) {
      return OutOfRange("spec.balanced.gain_per_move",
                        absl::StrCat("= ", b.gain_per_move(), " is out of range [0, 1]"));
    }
    RETURN_IF_ERROR(
        CheckRange("spec.balanced.max_received_per_rank", b.max_received_per_rank(), 0, slots));
    RETURN_IF_ERROR(
        CheckRange("spec.balanced.max_received_per_layer", b.max_received_per_layer(), 0, slots));
    if (b.node_affinity() && result.shape.num_nodes > 1 &&
        result.shape.num_groups % result.shape.num_nodes != 0) {
      return OutOfRange(
          "spec.balanced.node_affinity",
          absl::StrCat("needs num_groups (", result.shape.num_groups,
                       ") to be a multiple of num_nodes (", result.shape.num_nodes, ")"));
    }
    balanced = BalancedOptions{.tolerance = b.tolerance(),
                               .max_received_per_rank = b.max_received_per_rank(),
                               .max_received_per_layer = b.max_received_per_layer(),
                               .min_gain = b.min_gain(),
                               .gain_per_move = b.gain_per_move(),
                               .node_affinity = b.node_affinity(),
                               .threads = plan_threads};
  } else if (spec.has_balanced()) {
    return OutOfRange("spec.balanced",
                      absl::StrCat("applies to policy balanced, not ", spec.policy()));
  }
  auto policy = CreatePolicy(spec.policy(), balanced ? &*balanced : nullptr);
  if (!policy.ok()) return Tagged(policy.status(), v1::FIELD_OUT_OF_RANGE, "spec.policy");
  result.policy = *std::move(policy);

  RETURN_IF_ERROR(
      CheckRange("spec.bytes_per_expert", spec.bytes_per_expert(), 0, kMaxBytesPerExpert));

  v1::Smoothing& smoothing = *spec.mutable_smoothing();
  switch (smoothing.kind_case()) {
    case v1::Smoothing::KIND_NOT_SET:
      smoothing.set_ema_half_life_steps(kDefaultHalfLifeSteps);
      [[fallthrough]];
    case v1::Smoothing::kEmaHalfLifeSteps:
      RETURN_IF_ERROR(CheckRange("spec.smoothing.ema_half_life_steps",
                                 smoothing.ema_half_life_steps(), 1, kMaxHalfLifeSteps));
      result.smoothing.kind = SmoothingOptions::Kind::kEma;
      result.smoothing.ema_half_life_steps = smoothing.ema_half_life_steps();
      break;
    case v1::Smoothing::kWindowSteps:
      RETURN_IF_ERROR(
          CheckRange("spec.smoothing.window_steps", smoothing.window_steps(), 1, kMaxWindowSteps));
      result.smoothing.kind = SmoothingOptions::Kind::kWindow;
      result.smoothing.window_steps = smoothing.window_steps();
      break;
  }
  // Window smoothing keeps up to 65 buckets of L × E numbers: bound what one deployment may take.
  if (result.smoothing.kind == SmoothingOptions::Kind::kWindow) {
    const int64_t buckets = std::min<int64_t>(result.smoothing.window_steps, 64) + 1;
    const int64_t bytes = buckets * result.shape.num_layers * result.shape.num_logical_experts *
                          static_cast<int64_t>(sizeof(double));
    if (bytes > kMaxSmoothingBytes) {
      return OutOfRange(
          "spec.smoothing.window_steps",
          absl::StrCat("= ", result.smoothing.window_steps, " needs ", bytes,
                       " bytes of window buckets for ", result.shape.num_layers, " × ",
                       result.shape.num_logical_experts, " experts, more than the limit of ",
                       kMaxSmoothingBytes, "; use a shorter window or ema_half_life_steps"));
    }
  }

  if (!spec.has_trigger()) spec.mutable_trigger()->set_interval_steps(kDefaultIntervalSteps);
  const v1::Trigger& trigger = spec.trigger();
  if (trigger.interval_steps() != 0) {
    RETURN_IF_ERROR(
        CheckRange("spec.trigger.interval_steps", trigger.interval_steps(), 1, kMaxIntervalSteps));
  }
  RETURN_IF_ERROR(CheckRange("spec.trigger.min_steps", trigger.min_steps(), 0, kMaxMinSteps));
  if (!(trigger.min_gain() >= 0.0 && trigger.min_gain() <= 1.0)) {
    return OutOfRange("spec.trigger.min_gain",
                      absl::StrCat("= ", trigger.min_gain(), " is out of range [0, 1]"));
  }

  if (spec.commit_mode() == v1::COMMIT_MODE_UNSPECIFIED)
    spec.set_commit_mode(v1::COMMIT_MODE_ACKED);
  if (!v1::CommitMode_IsValid(spec.commit_mode())) {
    return OutOfRange("spec.commit_mode", absl::StrCat("= ", spec.commit_mode(), " is unknown"));
  }
  if (spec.ack_timeout_ms() == 0) spec.set_ack_timeout_ms(kDefaultAckTimeoutMs);
  RETURN_IF_ERROR(
      CheckRange("spec.ack_timeout_ms", spec.ack_timeout_ms(), kMinAckTimeoutMs, kMaxAckTimeoutMs));
  if (spec.plan_history() == 0) spec.set_plan_history(kDefaultPlanHistory);
  RETURN_IF_ERROR(
      CheckRange("spec.plan_history", spec.plan_history(), kMinPlanHistory, kMaxPlanHistory));

  if (source == SpecSource::kStored) return result;
  if (spec.has_initial_map()) {
    absl::StatusOr<ExpertMap> map = ExpertMapFromProto(spec.initial_map(), "spec.initial_map");
    if (!map.ok()) return Tagged(map.status(), v1::FIELD_OUT_OF_RANGE, "spec.initial_map");
    if (absl::Status fits = map->CheckFits(result.shape); !fits.ok()) {
      return Tagged(fits, v1::FIELD_OUT_OF_RANGE, "spec.initial_map");
    }
    result.initial_map = *std::move(map);
  }
  return result;
}

absl::Status ProbePolicy(const ValidatedSpec& validated) {
  const DeploymentShape& shape = validated.shape;
  LoadMatrix zeros{shape.num_layers, shape.num_logical_experts,
                   std::vector<double>(static_cast<size_t>(shape.num_layers) *
                                       shape.num_logical_experts)};
  if (auto probe = validated.policy->Plan({shape, &zeros, nullptr}); !probe.ok()) {
    return ErrorWithDetail(probe.status().code(), v1::POLICY_CANNOT_SERVE, "spec.policy",
                           probe.status().message());
  }
  return absl::OkStatus();
}

std::string FirstDifference(const v1::DeploymentSpec& a, const v1::DeploymentSpec& b) {
  using google::protobuf::util::MessageDifferencer;
  if (!MessageDifferencer::Equals(a.shape(), b.shape())) return "shape";
  if (a.policy() != b.policy()) return "policy";
  if (!MessageDifferencer::Equals(a.balanced(), b.balanced())) return "balanced";
  if (a.bytes_per_expert() != b.bytes_per_expert()) return "bytes_per_expert";
  if (!MessageDifferencer::Equals(a.smoothing(), b.smoothing())) return "smoothing";
  if (!MessageDifferencer::Equals(a.trigger(), b.trigger())) return "trigger";
  if (a.commit_mode() != b.commit_mode()) return "commit_mode";
  if (a.ack_timeout_ms() != b.ack_timeout_ms()) return "ack_timeout_ms";
  if (a.plan_history() != b.plan_history()) return "plan_history";
  if (!MessageDifferencer::Equals(a.initial_map(), b.initial_map())) return "initial_map";
  return "";
}

}  // namespace eplb::server
