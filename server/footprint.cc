#include "server/footprint.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace eplb::server {
namespace {

constexpr int64_t kRecentSequences = 1024;  // remembered per rank (Deployment)

// Bytes of a non-negative value as a protobuf varint.
int64_t VarintBytes(uint64_t value) {
  int64_t bytes = 1;
  while (value >= 0x80) {
    value >>= 7;
    ++bytes;
  }
  return bytes;
}

}  // namespace

std::string FormatBytes(int64_t bytes) {
  const double value = static_cast<double>(bytes);
  if (bytes >= (int64_t{1} << 30)) return absl::StrFormat("%.1f GiB", value / (1 << 30));
  if (bytes >= (int64_t{1} << 20)) return absl::StrFormat("%.1f MiB", value / (1 << 20));
  if (bytes >= (int64_t{1} << 10)) return absl::StrFormat("%.1f KiB", value / (1 << 10));
  return absl::StrCat(bytes, " bytes");
}

std::string Footprint::DebugString() const {
  return absl::StrCat(FormatBytes(total_bytes()), " (smoothing ", FormatBytes(smoothing_bytes),
                      ", reports ", FormatBytes(reports_bytes), ", ", retained_plans, " plans of ",
                      FormatBytes(plan_bytes), ")");
}

MessageSizes ShapeMessageSizes(const DeploymentShape& shape) {
  const int64_t l = shape.num_layers, e = shape.num_logical_experts;
  const int64_t p = shape.num_physical_experts, r = shape.num_ranks;
  MessageSizes sizes;
  sizes.get_load_bytes = l * e * 8 + l * 9 + 256;
  // phy2log (values < E) and replica_rank (values ≤ P − E), packed; per rank ack ≤ 64 bytes.
  const int64_t per_slot =
      VarintBytes(static_cast<uint64_t>(e - 1)) + VarintBytes(static_cast<uint64_t>(p - e));
  sizes.plan_bytes = l * p * per_slot + r * 64 + 1024;
  return sizes;
}

Footprint DeploymentFootprint(const DeploymentShape& shape, const SmoothingOptions& smoothing,
                              int32_t plan_history) {
  const int64_t l = shape.num_layers, e = shape.num_logical_experts;
  const int64_t p = shape.num_physical_experts, r = shape.num_ranks;
  Footprint footprint;
  // The moving average (EMA: one number per expert; window: up to 65 buckets and their ids) and
  // the scratch a report is converted into.
  const int64_t buckets = smoothing.kind == SmoothingOptions::Kind::kWindow
                              ? std::min<int64_t>(smoothing.window_steps, 64) + 1
                              : 1;
  footprint.smoothing_bytes = (buckets + 1) * l * e * 8 + buckets * 8;
  // A rank's state and its remembered (sequence, hash) pairs in a deque (16 bytes each).
  footprint.reports_bytes = r * (128 + kRecentSequences * 16);
  // A retained plan: the ExpertMap (phy2log and replica slots, L × P; counts and offsets, L × E),
  // the v1::Plan message (map tables in memory, 8 bytes a slot; R RankAcks of about 96 bytes) and
  // the serialized updates watchers are sent: whole, compact (a byte or two a slot, and replica
  // ranks when not in slot order), as a delta against the parent (at most every layer: as big as
  // compact) and a state change (no rows).
  const MessageSizes sizes = ShapeMessageSizes(shape);
  const int64_t compact =
      l * p * (e <= 256 ? 1 : 2) + l * p * VarintBytes(static_cast<uint64_t>(p - e)) + l * 5 + 1024;
  footprint.plan_bytes = 4 * (2 * l * p + 2 * l * e + l) + 8 * l * p + r * 96 + sizes.plan_bytes +
                         2 * compact + 1024;
  footprint.retained_plans = int64_t{plan_history} + 2;
  return footprint;
}

}  // namespace eplb::server
