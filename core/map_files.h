// Load and expert-map files on disk: the one place eplbctl, the planner's tools and the Python
// package read and write them. Reads are bounded (kMaxMapFileBytes); writes are atomic
// (core/file_io.h), so a failed write leaves the previous file, or none, never a half-written one.
#ifndef EPLB_CORE_MAP_FILES_H_
#define EPLB_CORE_MAP_FILES_H_

#include <cstdint>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/expert_map.h"
#include "core/load.h"
#include "core/map_format.h"

namespace eplb {

// The largest load or map file read.
inline constexpr size_t kMaxMapFileBytes = size_t{1} << 30;

// Reads a load file ({"load": [[…E…] × L]}). Errors name the path: those of ReadFileToString
// (NOT_FOUND, FAILED_PRECONDITION, INVALID_ARGUMENT for a file over the limit), or
// INVALID_ARGUMENT "PATH: <what ParseLoadJson found>".
absl::StatusOr<LoadMatrix> ReadLoadFile(const std::string& path);

// Reads an expert map in any format (ParseExpertMap). Errors as ReadLoadFile's, the parser's
// prefixed with "PATH: ".
absl::StatusOr<ParsedExpertMap> ReadExpertMapFile(const std::string& path,
                                                  const MapShapeHints& hints = {});

// Writes `map` to `path` in `format` (`version` and `replica_share` go into the eplb format only;
// `layer_ids` numbers the sglang and trtllm formats' rows, as WriteExpertMapText), atomically.
// Refuses what CheckMapWritable refuses, writing nothing.
absl::Status WriteExpertMapFile(const std::string& path, const ExpertMap& map, MapFormat format,
                                int64_t version, const LayerIds* layer_ids = nullptr,
                                std::span<const double> replica_share = {});

}  // namespace eplb

#endif  // EPLB_CORE_MAP_FILES_H_
