#include "core/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace eplb {
namespace {

std::string ErrnoText(int error) { return std::generic_category().message(error); }

// Closes a file descriptor on scope exit unless released.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  // Closes now; returns close()'s errno, or 0.
  int Close() {
    const int fd = fd_;
    fd_ = -1;
    return ::close(fd) == 0 ? 0 : errno;
  }

 private:
  int fd_;
};

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Writes all of `data`, retrying short writes and interruptions. Returns errno, or 0.
int WriteAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return 0;
}

}  // namespace

absl::StatusOr<std::string> ReadFileToString(const std::string& path, size_t max_bytes) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below as not regular.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int error = errno;
    const std::string message = absl::StrCat("cannot open ", path, ": ", ErrnoText(error));
    if (error == ENOENT) return absl::NotFoundError(message);
    return absl::FailedPreconditionError(message);
  }
  FdCloser closer(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot stat ", path, ": ", ErrnoText(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is not a regular file", S_ISDIR(st.st_mode) ? " (a directory)" : ""));
  }
  const auto too_large = [&](uint64_t size) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is ", size, " bytes, more than the limit of ", max_bytes));
  };
  if (static_cast<uint64_t>(st.st_size) > max_bytes) return too_large(st.st_size);

  // The size is a hint: the file may change while it is read. Read until end of file, never more
  // than max_bytes + 1 bytes.
  std::string contents;
  contents.resize(static_cast<size_t>(st.st_size) + 1);
  size_t used = 0;
  for (;;) {
    if (used == contents.size()) {
      if (used > max_bytes) return too_large(used);
      const size_t limit = max_bytes == SIZE_MAX ? max_bytes : max_bytes + 1;
      contents.resize(std::min(limit, std::max(contents.size() * 2, size_t{4096})));
    }
    const ssize_t n = ::read(fd, contents.data() + used, contents.size() - used);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::FailedPreconditionError(
          absl::StrCat("cannot read ", path, ": ", ErrnoText(errno)));
    }
    if (n == 0) break;
    used += static_cast<size_t>(n);
  }
  if (used > max_bytes) return too_large(used);
  contents.resize(used);
  return contents;
}

absl::StatusOr<AtomicFileWriter> AtomicFileWriter::Create(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("cannot write a file with an empty path");
  static std::atomic<uint64_t> counter{0};
  AtomicFileWriter writer;
  writer.path_ = path;
  writer.temp_path_ =
      absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1, std::memory_order_relaxed));
  writer.fd_ = ::open(writer.temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (writer.fd_ < 0) {
    const int error = errno;
    return writer.Failure(absl::StrCat("cannot create ", writer.temp_path_), error);
  }
  return writer;
}

AtomicFileWriter::AtomicFileWriter(AtomicFileWriter&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      fd_(std::exchange(other.fd_, -1)),
      status_(std::move(other.status_)) {}

AtomicFileWriter::~AtomicFileWriter() { Abandon(); }

void AtomicFileWriter::Abandon() {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  ::unlink(temp_path_.c_str());
}

// Callers read errno into a local first: building the message allocates, which may change errno.
absl::Status AtomicFileWriter::Failure(const std::string& what, int error) const {
  return absl::ErrnoToStatus(error, absl::StrCat("cannot write ", path_, ": ", what));
}

absl::Status AtomicFileWriter::Append(absl::string_view data) {
  if (!status_.ok()) return status_;
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, " is already committed"));
  if (int error = WriteAll(fd_, data); error != 0) {
    status_ = Failure(absl::StrCat("write to ", temp_path_, " failed"), error);
    Abandon();
  }
  return status_;
}

absl::Status AtomicFileWriter::Commit() {
  if (!status_.ok()) return status_;
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, " is already committed"));
  if (::fsync(fd_) != 0) {
    const int error = errno;
    status_ = Failure(absl::StrCat("fsync of ", temp_path_), error);
    Abandon();
    return status_;
  }
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) {
    const int error = errno;
    status_ = Failure(absl::StrCat("close of ", temp_path_), error);
    ::unlink(temp_path_.c_str());
    return status_;
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int error = errno;
    status_ = Failure(absl::StrCat("rename of ", temp_path_), error);
    ::unlink(temp_path_.c_str());
    return status_;
  }

  // Make the rename itself durable.
  const std::string dir = DirectoryOf(path_);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) {
    const int error = errno;
    return Failure(absl::StrCat("renamed into place, but cannot open directory ", dir), error);
  }
  FdCloser dir_closer(dir_fd);
  // Some file systems cannot fsync a directory (EINVAL): nothing more can be done there.
  if (::fsync(dir_fd) != 0 && errno != EINVAL) {
    const int error = errno;
    return Failure(absl::StrCat("renamed into place, but fsync of directory ", dir, " failed"),
                   error);
  }
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents) {
  ASSIGN_OR_RETURN(AtomicFileWriter writer, AtomicFileWriter::Create(path));
  RETURN_IF_ERROR(writer.Append(contents));
  return writer.Commit();
}

}  // namespace eplb
