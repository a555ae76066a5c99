#include "core/map_files.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/file_io.h"
#include "core/status_macros.h"

namespace eplb {
namespace {

// The parser's error with the path in front; the code is kept.
absl::Status WithPath(const std::string& path, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(path, ": ", status.message()));
}

}  // namespace

absl::StatusOr<LoadMatrix> ReadLoadFile(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path, kMaxMapFileBytes));
  absl::StatusOr<LoadMatrix> load = ParseLoadJson(text);
  if (!load.ok()) return WithPath(path, load.status());
  return load;
}

absl::StatusOr<ParsedExpertMap> ReadExpertMapFile(const std::string& path,
                                                  const MapShapeHints& hints) {
  ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path, kMaxMapFileBytes));
  absl::StatusOr<ParsedExpertMap> map = ParseExpertMap(text, hints);
  if (!map.ok()) return WithPath(path, map.status());
  return map;
}

absl::Status WriteExpertMapFile(const std::string& path, const ExpertMap& map, MapFormat format,
                                int64_t version, const LayerIds* layer_ids,
                                std::span<const double> replica_share) {
  RETURN_IF_ERROR(CheckMapWritable(map, format, layer_ids, replica_share));
  ASSIGN_OR_RETURN(AtomicFileWriter writer, AtomicFileWriter::Create(path));
  absl::Status written;
  WriteExpertMapText(
      map, format, version,
      [&](absl::string_view piece) {
        if (written.ok()) written = writer.Append(piece);
      },
      layer_ids, replica_share);
  RETURN_IF_ERROR(written);
  return writer.Commit();
}

}  // namespace eplb
