// Load reports over layer ranges. The planner receives messages up to its request limit
// (--max-request-bytes, at least 1 MiB); a report of a large deployment is sent as several, each
// over a contiguous range of layers with its own sequence number, and counts as the whole.
#ifndef EPLB_CLIENT_REPORT_PARTS_H_
#define EPLB_CLIENT_REPORT_PARTS_H_

#include <cstdint>
#include <vector>

#include "eplb/v1/planner.pb.h"

namespace eplb::client {

// The default size of one report message: within every planner's request limit.
inline constexpr int64_t kDefaultMaxReportBytes = int64_t{1} << 20;

// How many layers of `counts_per_layer` counts one report of at most `max_bytes` holds (at least
// one: a layer is never split).
int32_t LayersPerReport(int64_t counts_per_layer, int64_t max_bytes);

// `whole` (its layers from first_layer on) as reports of at most `max_bytes` each, over
// consecutive layer ranges, numbered whole.sequence(), whole.sequence() + 1, …; just `whole` when
// it fits.
std::vector<v1::LoadReport> SplitByLayers(const v1::LoadReport& whole, int64_t max_bytes);

}  // namespace eplb::client

#endif  // EPLB_CLIENT_REPORT_PARTS_H_
