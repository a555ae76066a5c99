// The files eplbctl reads and writes, shared by its verbs: load files in, expert maps and load
// files out. Output files are written atomically (core/file_io.h), so a failed command leaves the
// previous file, or none, never a half-written one.
#ifndef EPLB_CLIENT_CLI_FILES_H_
#define EPLB_CLIENT_CLI_FILES_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/expert_map.h"
#include "core/load.h"
#include "core/map_format.h"

namespace eplb::cli {

// The largest input file eplbctl reads.
inline constexpr size_t kMaxInputBytes = size_t{1} << 30;

// Reads a load file ({"load": [[…E…] × L]}). Errors name the path: those of ReadFileToString, or
// INVALID_ARGUMENT "PATH: <what ParseLoadJson found>".
absl::StatusOr<LoadMatrix> ReadLoadFile(const std::string& path);

// Writes `map` to `path` in `format` (`version` goes into the eplb format only), atomically.
absl::Status WriteMapFile(const std::string& path, const ExpertMap& map, MapFormat format,
                          int64_t version);

}  // namespace eplb::cli

#endif  // EPLB_CLIENT_CLI_FILES_H_
