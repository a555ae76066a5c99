#include "server/state_store.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "core/file_io.h"
#include "core/status_macros.h"
#include "proto/api_limits.h"
#include "spdlog/spdlog.h"

namespace eplb::server {
namespace {

namespace fs = std::filesystem;

constexpr char kDeploymentsDir[] = "deployments";
constexpr char kRecordFile[] = "deployment.pb";
constexpr char kCounterFile[] = "version.pb";
constexpr char kLoadFile[] = "load.pb";
constexpr char kPlansDir[] = "plans";
constexpr char kCreatingPrefix[] = ".creating-";
constexpr char kDeletedPrefix[] = ".deleted-";

absl::Status IoError(const std::string& what, const std::error_code& error) {
  return absl::InternalError(absl::StrCat(what, ": ", error.message()));
}

absl::Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    return absl::InternalError(
        absl::StrCat("cannot open directory ", dir, ": ", std::strerror(error)));
  }
  const int result = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (result != 0) {
    return absl::InternalError(
        absl::StrCat("fsync of directory ", dir, ": ", std::strerror(error)));
  }
  return absl::OkStatus();
}

// Every file is a header and the serialized message: the magic "EPLBST01", the payload's length
// (8 bytes, little-endian) and its CRC-32 (4 bytes, little-endian, zlib's polynomial). Files
// without the magic were written before checksums existed and are read as bare messages.
constexpr char kMagic[] = "EPLBST01";
constexpr size_t kMagicBytes = 8;
constexpr size_t kHeaderBytes = kMagicBytes + 8 + 4;

uint32_t Crc32(absl::string_view bytes) {
  return static_cast<uint32_t>(
      crc32_z(0, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()));
}

void PutLittleEndian(uint64_t value, int bytes, std::string& out) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

uint64_t GetLittleEndian(absl::string_view in, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= uint64_t{static_cast<unsigned char>(in[i])} << (8 * i);
  return value;
}

absl::Status WriteMessage(const std::string& path, const google::protobuf::Message& message) {
  std::string payload;
  if (!message.SerializeToString(&payload)) {
    return absl::InternalError(absl::StrCat("cannot serialize ", message.GetTypeName()));
  }
  std::string file(kMagic, kMagicBytes);
  file.reserve(kHeaderBytes + payload.size());
  PutLittleEndian(payload.size(), 8, file);
  PutLittleEndian(Crc32(payload), 4, file);
  file += payload;
  return WriteFileAtomically(path, file);
}

template <typename Message>
absl::StatusOr<Message> ReadMessage(const std::string& path) {
  const absl::StatusOr<std::string> read = ReadFileToString(path);
  if (!read.ok()) return read.status();
  const std::string& bytes = *read;
  absl::string_view payload = bytes;
  if (bytes.size() >= kMagicBytes && bytes.compare(0, kMagicBytes, kMagic) == 0) {
    if (bytes.size() < kHeaderBytes) {
      return absl::DataLossError(
          absl::StrCat(path, " is truncated: ", bytes.size(), " bytes, less than its header"));
    }
    const uint64_t length = GetLittleEndian(absl::string_view(bytes).substr(kMagicBytes), 8);
    const uint32_t stored =
        static_cast<uint32_t>(GetLittleEndian(absl::string_view(bytes).substr(16), 4));
    payload.remove_prefix(kHeaderBytes);
    if (length != payload.size()) {
      return absl::DataLossError(absl::StrCat(path, " holds ", payload.size(),
                                              " bytes of content, its header says ", length));
    }
    if (const uint32_t computed = Crc32(payload); computed != stored) {
      return absl::DataLossError(absl::StrFormat(
          "%s fails its checksum (CRC-32 %08x, the header says %08x)", path, computed, stored));
    }
  }
  Message message;
  if (!message.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    return absl::DataLossError(absl::StrCat(path, " is not a valid ", message.GetTypeName()));
  }
  return message;
}

// The entries of `dir`, without following symbolic links and without throwing.
absl::StatusOr<std::vector<fs::directory_entry>> ListDirectory(const std::string& dir) {
  std::error_code error;
  std::vector<fs::directory_entry> entries;
  fs::directory_iterator it(dir, error);
  for (; !error && it != fs::directory_iterator(); it.increment(error)) entries.push_back(*it);
  if (error) return IoError(absl::StrCat("cannot list ", dir), error);
  return entries;
}

// Whether `entry` is a directory (not a link to one), failing on what cannot be examined.
absl::StatusOr<bool> IsDirectory(const fs::directory_entry& entry) {
  std::error_code error;
  const fs::file_status status = entry.symlink_status(error);
  if (error) return IoError(absl::StrCat("cannot examine ", entry.path().string()), error);
  return fs::is_directory(status);
}

absl::StatusOr<bool> Exists(const std::string& path) {
  std::error_code error;
  const fs::file_status status = fs::symlink_status(path, error);
  if (error && error != std::errc::no_such_file_or_directory) {
    return IoError(absl::StrCat("cannot examine ", path), error);
  }
  return fs::exists(status);
}

absl::Status RemoveTree(const std::string& path) {
  std::error_code error;
  fs::remove_all(path, error);
  if (error) return IoError(absl::StrCat("cannot remove ", path), error);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<StateStore> StateStore::Open(const std::string& dir) {
  const std::string deployments = absl::StrCat(dir, "/", kDeploymentsDir);
  std::error_code error;
  fs::create_directories(deployments, error);
  if (error) return IoError(absl::StrCat("cannot create state directory ", deployments), error);
  ASSIGN_OR_RETURN(std::vector<fs::directory_entry> entries, ListDirectory(deployments));
  for (const fs::directory_entry& entry : entries) {
    const std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, kCreatingPrefix) || absl::StartsWith(name, kDeletedPrefix)) {
      RETURN_IF_ERROR(RemoveTree(entry.path().string()));
      continue;
    }
    // Temp files of writes a crash interrupted (their rename never happened), in a deployment's
    // directory and its plans.
    ASSIGN_OR_RETURN(const bool is_dir, IsDirectory(entry));
    if (!is_dir) continue;
    for (const std::string& sub :
         {entry.path().string(), entry.path().string() + "/" + kPlansDir}) {
      ASSIGN_OR_RETURN(const bool exists, Exists(sub));
      if (!exists) continue;
      ASSIGN_OR_RETURN(std::vector<fs::directory_entry> files, ListDirectory(sub));
      for (const fs::directory_entry& file : files) {
        if (!absl::StrContains(file.path().filename().string(), ".pb.tmp.")) continue;
        fs::remove(file.path(), error);
        if (error) return IoError(absl::StrCat("cannot remove ", file.path().string()), error);
      }
    }
  }
  return StateStore(dir);
}

std::string StateStore::DeploymentDir(const std::string& deployment) const {
  return absl::StrCat(dir_, "/", kDeploymentsDir, "/", deployment);
}

std::string StateStore::PlanPath(const std::string& deployment, int64_t version) const {
  return absl::StrFormat("%s/%s/%020d.pb", DeploymentDir(deployment), kPlansDir, version);
}

absl::StatusOr<std::vector<LoadedDeployment>> StateStore::LoadAll() const {
  const std::string deployments = absl::StrCat(dir_, "/", kDeploymentsDir);
  std::vector<std::string> names;
  ASSIGN_OR_RETURN(std::vector<fs::directory_entry> entries, ListDirectory(deployments));
  for (const fs::directory_entry& entry : entries) {
    const std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, ".")) continue;
    ASSIGN_OR_RETURN(const bool is_dir, IsDirectory(entry));
    if (!is_dir) {
      return absl::DataLossError(
          absl::StrCat(entry.path().string(), " is not a deployment directory"));
    }
    names.push_back(name);
  }
  std::sort(names.begin(), names.end());

  std::vector<LoadedDeployment> result;
  for (const std::string& name : names) {
    LoadedDeployment loaded;
    const std::string dir = DeploymentDir(name);
    ASSIGN_OR_RETURN(loaded.record,
                     ReadMessage<state::v1::StoredDeployment>(absl::StrCat(dir, "/", kRecordFile)));
    if (loaded.record.spec().name() != name) {
      return absl::DataLossError(absl::StrCat(dir, "/", kRecordFile, " names deployment \"",
                                              loaded.record.spec().name(), "\", expected \"", name,
                                              "\""));
    }
    const std::string counter_path = absl::StrCat(dir, "/", kCounterFile);
    ASSIGN_OR_RETURN(const auto counter, ReadMessage<state::v1::VersionCounter>(counter_path));
    if (counter.last_version() < 1 || counter.last_version() > api::kMaxVersion ||
        counter.committed_version() < 0 || counter.committed_version() > counter.last_version()) {
      return absl::DataLossError(absl::StrCat(
          counter_path, " holds last_version ", counter.last_version(), " and committed_version ",
          counter.committed_version(), ": expected 1 ≤ last_version ≤ ", api::kMaxVersion,
          " and 0 ≤ committed_version ≤ last_version"));
    }
    loaded.last_version = counter.last_version();
    loaded.committed_version = counter.committed_version();
    const std::string plans_dir = absl::StrCat(dir, "/", kPlansDir);
    ASSIGN_OR_RETURN(std::vector<fs::directory_entry> plan_files, ListDirectory(plans_dir));
    for (const fs::directory_entry& entry : plan_files) {
      const std::string file = entry.path().filename().string();
      if (!absl::EndsWith(file, ".pb")) continue;
      ASSIGN_OR_RETURN(v1::Plan plan, ReadMessage<v1::Plan>(entry.path().string()));
      int64_t version = 0;
      if (!absl::SimpleAtoi(file.substr(0, file.size() - 3), &version) ||
          plan.version() != version || plan.deployment() != name) {
        return absl::DataLossError(absl::StrCat(entry.path().string(), " holds plan ",
                                                plan.deployment(), " version ", plan.version()));
      }
      if (version < 1 || version > loaded.last_version) {
        return absl::DataLossError(absl::StrCat(entry.path().string(), " holds version ", version,
                                                ", beyond the last one counted in ", counter_path,
                                                " (", loaded.last_version, ")"));
      }
      loaded.plans.push_back(std::move(plan));
    }
    std::sort(loaded.plans.begin(), loaded.plans.end(),
              [](const v1::Plan& a, const v1::Plan& b) { return a.version() < b.version(); });
    if (loaded.committed_version != 0 &&
        !std::any_of(loaded.plans.begin(), loaded.plans.end(), [&](const v1::Plan& plan) {
          return plan.version() == loaded.committed_version;
        })) {
      return absl::DataLossError(absl::StrCat(PlanPath(name, loaded.committed_version),
                                              " is missing: ", counter_path, " records version ",
                                              loaded.committed_version, " as committed"));
    }
    const std::string load_path = absl::StrCat(dir, "/", kLoadFile);
    ASSIGN_OR_RETURN(const bool has_load, Exists(load_path));
    if (has_load) {
      ASSIGN_OR_RETURN(loaded.load, ReadMessage<state::v1::LoadCheckpoint>(load_path));
    }
    result.push_back(std::move(loaded));
  }
  return result;
}

absl::Status StateStore::CreateDeployment(const state::v1::StoredDeployment& record,
                                          const v1::Plan& first_plan) {
  const std::string& name = record.spec().name();
  const std::string final_dir = DeploymentDir(name);
  ASSIGN_OR_RETURN(const bool exists, Exists(final_dir));
  if (exists) return absl::AlreadyExistsError(absl::StrCat(final_dir, " already exists"));
  std::error_code error;
  const std::string temp_dir = absl::StrCat(dir_, "/", kDeploymentsDir, "/", kCreatingPrefix, name,
                                            "-", absl::ToUnixNanos(absl::Now()));
  fs::create_directories(absl::StrCat(temp_dir, "/", kPlansDir), error);
  if (error) return IoError(absl::StrCat("cannot create ", temp_dir), error);
  absl::Status status = WriteMessage(absl::StrCat(temp_dir, "/", kRecordFile), record);
  if (status.ok()) {
    state::v1::VersionCounter counter;
    counter.set_last_version(first_plan.version());
    counter.set_committed_version(first_plan.version());
    status = WriteMessage(absl::StrCat(temp_dir, "/", kCounterFile), counter);
  }
  if (status.ok()) {
    status = WriteMessage(
        absl::StrFormat("%s/%s/%020d.pb", temp_dir, kPlansDir, first_plan.version()), first_plan);
  }
  if (status.ok()) status = SyncDirectory(absl::StrCat(temp_dir, "/", kPlansDir));
  if (status.ok()) {
    fs::rename(temp_dir, final_dir, error);
    if (error) status = IoError(absl::StrCat("cannot rename ", temp_dir, " to ", final_dir), error);
  }
  if (!status.ok()) {
    fs::remove_all(temp_dir, error);
    return status;
  }
  return SyncDirectory(absl::StrCat(dir_, "/", kDeploymentsDir));
}

absl::Status StateStore::WriteVersionCounter(const std::string& deployment, int64_t last_version,
                                             int64_t committed_version) {
  state::v1::VersionCounter counter;
  counter.set_last_version(last_version);
  counter.set_committed_version(committed_version);
  return WriteMessage(absl::StrCat(DeploymentDir(deployment), "/", kCounterFile), counter);
}

absl::Status StateStore::WritePlan(const v1::Plan& plan) {
  return WriteMessage(PlanPath(plan.deployment(), plan.version()), plan);
}

absl::Status StateStore::RemovePlan(const std::string& deployment, int64_t version) {
  const std::string path = PlanPath(deployment, version);
  std::error_code error;
  fs::remove(path, error);
  if (error) return IoError(absl::StrCat("cannot remove ", path), error);
  return SyncDirectory(absl::StrCat(DeploymentDir(deployment), "/", kPlansDir));
}

absl::Status StateStore::WriteLoad(const std::string& deployment,
                                   const state::v1::LoadCheckpoint& load) {
  return WriteMessage(absl::StrCat(DeploymentDir(deployment), "/", kLoadFile), load);
}

absl::Status StateStore::DeleteDeployment(const std::string& deployment) {
  const std::string dir = DeploymentDir(deployment);
  const std::string doomed = absl::StrCat(dir_, "/", kDeploymentsDir, "/", kDeletedPrefix,
                                          deployment, "-", absl::ToUnixNanos(absl::Now()));
  std::error_code error;
  fs::rename(dir, doomed, error);
  if (error) return IoError(absl::StrCat("cannot rename ", dir), error);
  RETURN_IF_ERROR(SyncDirectory(absl::StrCat(dir_, "/", kDeploymentsDir)));
  // Gone for good once renamed; a leftover is removed by the next Open().
  if (absl::Status status = RemoveTree(doomed); !status.ok()) {
    spdlog::warn("{} (removed at the next start)", status.ToString());
  }
  return absl::OkStatus();
}

}  // namespace eplb::server
