#include "server/state_store.h"

#include <fcntl.h>
#include <unistd.h>

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

absl::Status WriteMessage(const std::string& path, const google::protobuf::Message& message) {
  std::string bytes;
  if (!message.SerializeToString(&bytes)) {
    return absl::InternalError(absl::StrCat("cannot serialize ", message.GetTypeName()));
  }
  return WriteFileAtomically(path, bytes);
}

template <typename Message>
absl::StatusOr<Message> ReadMessage(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  Message message;
  if (!message.ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat(path, " is not a valid ", message.GetTypeName()));
  }
  return message;
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
  for (const auto& entry : fs::directory_iterator(deployments, error)) {
    const std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, kCreatingPrefix) || absl::StartsWith(name, kDeletedPrefix)) {
      RETURN_IF_ERROR(RemoveTree(entry.path().string()));
    }
  }
  if (error) return IoError(absl::StrCat("cannot list ", deployments), error);
  // Temp files of writes a crash interrupted (their rename never happened).
  std::vector<fs::path> leftovers;
  for (const auto& entry : fs::recursive_directory_iterator(deployments, error)) {
    if (entry.is_regular_file() &&
        absl::StrContains(entry.path().filename().string(), ".pb.tmp.")) {
      leftovers.push_back(entry.path());
    }
  }
  if (error) return IoError(absl::StrCat("cannot list ", deployments), error);
  for (const fs::path& path : leftovers) {
    fs::remove(path, error);
    if (error) return IoError(absl::StrCat("cannot remove ", path.string()), error);
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
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(deployments, error)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && !absl::StartsWith(name, ".")) names.push_back(name);
  }
  if (error) return IoError(absl::StrCat("cannot list ", deployments), error);
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
    if (fs::exists(counter_path, error)) {
      ASSIGN_OR_RETURN(const auto counter, ReadMessage<state::v1::VersionCounter>(counter_path));
      loaded.last_version = counter.last_version();
    }
    const std::string plans_dir = absl::StrCat(dir, "/", kPlansDir);
    for (const auto& entry : fs::directory_iterator(plans_dir, error)) {
      const std::string file = entry.path().filename().string();
      if (!absl::EndsWith(file, ".pb")) continue;
      ASSIGN_OR_RETURN(v1::Plan plan, ReadMessage<v1::Plan>(entry.path().string()));
      int64_t version = 0;
      if (!absl::SimpleAtoi(file.substr(0, file.size() - 3), &version) ||
          plan.version() != version || plan.deployment() != name) {
        return absl::DataLossError(absl::StrCat(entry.path().string(), " holds plan ",
                                                plan.deployment(), " version ", plan.version()));
      }
      loaded.plans.push_back(std::move(plan));
    }
    if (error) return IoError(absl::StrCat("cannot list ", plans_dir), error);
    std::sort(loaded.plans.begin(), loaded.plans.end(),
              [](const v1::Plan& a, const v1::Plan& b) { return a.version() < b.version(); });
    const std::string load_path = absl::StrCat(dir, "/", kLoadFile);
    if (fs::exists(load_path, error)) {
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
  std::error_code error;
  if (fs::exists(final_dir, error)) {
    return absl::AlreadyExistsError(absl::StrCat(final_dir, " already exists"));
  }
  const std::string temp_dir = absl::StrCat(dir_, "/", kDeploymentsDir, "/", kCreatingPrefix, name,
                                            "-", absl::ToUnixNanos(absl::Now()));
  fs::create_directories(absl::StrCat(temp_dir, "/", kPlansDir), error);
  if (error) return IoError(absl::StrCat("cannot create ", temp_dir), error);
  absl::Status status = WriteMessage(absl::StrCat(temp_dir, "/", kRecordFile), record);
  if (status.ok()) {
    state::v1::VersionCounter counter;
    counter.set_last_version(first_plan.version());
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

absl::Status StateStore::WriteVersionCounter(const std::string& deployment, int64_t last_version) {
  state::v1::VersionCounter counter;
  counter.set_last_version(last_version);
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
