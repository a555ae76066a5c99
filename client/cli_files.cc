#include "client/cli_files.h"

#include "absl/strings/str_cat.h"
#include "core/file_io.h"
#include "core/status_macros.h"

namespace eplb::cli {

absl::StatusOr<LoadMatrix> ReadLoadFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, kMaxInputBytes));
  auto load = ParseLoadJson(text);
  if (!load.ok()) {
    return absl::Status(load.status().code(), absl::StrCat(path, ": ", load.status().message()));
  }
  return load;
}

absl::Status WriteMapFile(const std::string& path, const ExpertMap& map, MapFormat format,
                          int64_t version) {
  ASSIGN_OR_RETURN(AtomicFileWriter writer, AtomicFileWriter::Create(path));
  absl::Status written;
  WriteExpertMapJson(map, format, version, [&](absl::string_view piece) {
    if (written.ok()) written = writer.Append(piece);
  });
  RETURN_IF_ERROR(written);
  return writer.Commit();
}

}  // namespace eplb::cli
