// Whole-file reads and atomic writes.
#ifndef EPLB_CORE_FILE_IO_H_
#define EPLB_CORE_FILE_IO_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace eplb {

// The file's contents. NOT_FOUND if it does not exist; FAILED_PRECONDITION if it cannot be read or
// is not a regular file; INVALID_ARGUMENT if it is larger than max_bytes. Messages name the path.
absl::StatusOr<std::string> ReadFileToString(const std::string& path,
                                             size_t max_bytes = size_t{1} << 30);

// Writes `contents` to `path` so that readers see either the old file or the whole new one, also
// across a crash: writes a temporary file in the same directory, fsyncs it, renames it over `path`
// and fsyncs the directory. On failure `path` is unchanged and the temporary file is removed. The
// new file gets mode 0644 (less the umask).
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

// WriteFileAtomically in pieces, for output too large to hold whole: Create(), Append() any number
// of times, Commit(). Until Commit() succeeds `path` is untouched; a writer destroyed before (or
// after a failed Append) removes its temporary file. Not thread-safe. Move-only.
class AtomicFileWriter {
 public:
  // Creates the temporary file beside `path`.
  static absl::StatusOr<AtomicFileWriter> Create(const std::string& path);
  AtomicFileWriter(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter& operator=(AtomicFileWriter&&) = delete;
  ~AtomicFileWriter();

  // After a failure every later call returns the same error.
  absl::Status Append(absl::string_view data);
  // fsync, rename over `path`, fsync the directory.
  absl::Status Commit();

 private:
  AtomicFileWriter() = default;
  void Abandon();
  absl::Status Failure(const std::string& what, int error) const;

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  absl::Status status_;
};

}  // namespace eplb

#endif  // EPLB_CORE_FILE_IO_H_
