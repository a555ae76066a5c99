// The limits and defaults of the planner's API (eplb/v1/planner.proto documents them), in one place
// for the planner, which enforces them, and for eplbctl, which checks its flags against the same
// bounds before anything is sent.
#ifndef EPLB_PROTO_API_LIMITS_H_
#define EPLB_PROTO_API_LIMITS_H_

#include <cstddef>
#include <cstdint>

#include "core/smoothed_load.h"

namespace eplb::api {

// ---- DeploymentSpec ----
inline constexpr int64_t kDefaultHalfLifeSteps = 1000;  // smoothing.ema_half_life_steps
inline constexpr int64_t kMaxHalfLifeSteps = SmoothingOptions::kMaxHalfLifeSteps;
inline constexpr int64_t kMaxWindowSteps = SmoothingOptions::kMaxWindowSteps;
// smoothing state (L × E × window or a few doubles per expert) per deployment
inline constexpr int64_t kMaxSmoothingBytes = int64_t{1} << 30;
inline constexpr int64_t kDefaultIntervalSteps = 1000;  // trigger.interval_steps
inline constexpr int64_t kMaxIntervalSteps = 10'000'000;
inline constexpr int64_t kMaxMinSteps = 1'000'000'000;  // trigger.min_steps
inline constexpr int64_t kDefaultAckTimeoutMs = 60'000;
inline constexpr int64_t kMinAckTimeoutMs = 100;
inline constexpr int64_t kMaxAckTimeoutMs = 3'600'000;
inline constexpr int32_t kDefaultPlanHistory = 16;
inline constexpr int32_t kMinPlanHistory = 2;
inline constexpr int32_t kMaxPlanHistory = 1000;

// ---- Plans ----
inline constexpr int64_t kMaxVersion = int64_t{1} << 62;  // plan versions: 1 ≤ version ≤ 2^62

// ---- LoadReport ----
inline constexpr int64_t kMaxSequence = int64_t{1} << 62;    // 1 ≤ sequence ≤ 2^62
inline constexpr int64_t kMaxStep = (int64_t{1} << 62) - 1;  // 0 ≤ first_step ≤ last_step
inline constexpr int64_t kMaxStepsPerReport = 1'000'000;     // last − first < this
inline constexpr double kMaxCount = 9007199254740992.0;      // counts ≤ 2^53
// How far a report may move a deployment's newest step ahead: a burst, plus a rate far above any
// engine's for the time since the newest step last moved. A step counter that jumps (a bug, a
// hostile client) would otherwise make every later report older than the smoothing horizon.
inline constexpr int64_t kMaxStepJump = 1'000'000;
inline constexpr int64_t kMaxStepsPerSecond = 100'000;

// ---- WatchPlans ----
inline constexpr size_t kMaxErrorDetailBytes = 4096;  // Ack.error_detail

// ---- Rendezvous ----
inline constexpr size_t kMaxRendezvousKeyBytes = 128;
inline constexpr size_t kMaxRendezvousValueBytes = 4096;
inline constexpr size_t kMaxRendezvousKeys = 64;  // per deployment

}  // namespace eplb::api

#endif  // EPLB_PROTO_API_LIMITS_H_
