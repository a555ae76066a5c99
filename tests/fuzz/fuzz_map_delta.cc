// A WatchPlans response as a planner (or anything in between) might send it: parsed, its map delta
// applied to a held map (or to none), and the result validated as a watch does. Nothing may crash,
// allocate beyond what the message's own rows back, or hand out a map of another shape.
#include <cstddef>
#include <cstdint>

#include "core/check.h"
#include "eplb/v1/planner.pb.h"
#include "proto/convert.h"

namespace {

// The map a watch holds: 2 layers, 4 experts, 6 slots, 2 ranks.
eplb::v1::ExpertMap HeldMap() {
  eplb::v1::ExpertMap map;
  map.set_num_layers(2);
  map.set_num_logical_experts(4);
  map.set_num_physical_experts(6);
  map.set_num_ranks(2);
  for (int layer = 0; layer < 2; ++layer) {
    for (const int expert : {0, 1, 2, 3, 0, 1}) map.add_phy2log(expert);
    for (const int rank : {0, 0, 0, 0, 1, 1}) map.add_replica_rank(rank);
  }
  return map;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const eplb::v1::ExpertMap held = HeldMap();
  eplb::v1::WatchPlansResponse response;
  if (!response.ParseFromArray(data, static_cast<int>(size))) return 0;
  const eplb::v1::MapDelta& delta = response.map_delta();
  const eplb::v1::ExpertMap* base = delta.base_version() == 0 ? nullptr : &held;
  const eplb::v1::ExpertMap& shape = response.plan().map();
  absl::StatusOr<eplb::v1::ExpertMap> map = eplb::ApplyMapDelta(base, shape, delta);
  if (!map.ok()) return 0;
  const int64_t cells = int64_t{shape.num_layers()} * shape.num_physical_experts();
  EPLB_CHECK(map->num_layers() == shape.num_layers() &&
                 map->num_physical_experts() == shape.num_physical_experts() &&
                 map->phy2log_size() == cells && map->replica_rank_size() == cells,
             "a rebuilt map does not have the plan's shape");
  absl::StatusOr<eplb::ExpertMap> parsed = eplb::ExpertMapFromProto(*map, "plan.map");
  if (parsed.ok()) (void)parsed->Hash();
  return 0;
}
