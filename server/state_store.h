// StateStore: the planner's state directory (format in proto/eplb/state/v1/state.proto).
//
// Every write replaces one file atomically (temp file + fsync + rename + directory fsync), so a
// crash at any point leaves either the old or the new content, and every file carries its length
// and a CRC-32 of its content, so that a file altered since is refused rather than believed. A
// deployment directory appears atomically (built under a temporary name, then renamed) and
// disappears atomically (renamed away, then removed). Leftovers of interrupted operations are
// cleaned up by Open().
//
// Calls for different deployments may run concurrently (each touches its own directory; temporary
// names are unique per process); calls for one deployment must not overlap, and the planner runs
// them on that deployment's lane. Open and LoadAll run alone, at startup.
#ifndef EPLB_SERVER_STATE_STORE_H_
#define EPLB_SERVER_STATE_STORE_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "eplb/state/v1/state.pb.h"
#include "eplb/v1/planner.pb.h"

namespace eplb::server {

// One deployment as found on disk.
struct LoadedDeployment {
  state::v1::StoredDeployment record;
  int64_t last_version = 0;       // from the version counter
  int64_t committed_version = 0;  // from the version counter; 0: not recorded (older files)
  std::vector<v1::Plan> plans;    // by version, ascending
  std::optional<state::v1::LoadCheckpoint> load;
};

class StateStore {
 public:
  // Creates `dir` (and parents) if needed and removes leftovers of interrupted operations.
  static absl::StatusOr<StateStore> Open(const std::string& dir);

  // Every deployment, by name. A file that cannot be read, fails its checksum or does not parse,
  // a version counter out of range, a plan file beyond it and a missing plan file of the recorded
  // committed version are DATA_LOSS naming the file: the planner refuses to start rather than run
  // on a partial or altered state. Never throws: file system errors (a symbolic link loop, for
  // one) are returned naming the path.
  absl::StatusOr<std::vector<LoadedDeployment>> LoadAll() const;

  // Creates the deployment's directory with its record, version counter (the first plan's
  // version) and first plan, atomically. ALREADY_EXISTS if the directory exists.
  absl::Status CreateDeployment(const state::v1::StoredDeployment& record,
                                const v1::Plan& first_plan);
  // The version counter is also the commit record: a version is committed once it is recorded
  // here (its plan file is rewritten COMMITTED after).
  absl::Status WriteVersionCounter(const std::string& deployment, int64_t last_version,
                                   int64_t committed_version);
  absl::Status WritePlan(const v1::Plan& plan);
  absl::Status RemovePlan(const std::string& deployment, int64_t version);
  absl::Status WriteLoad(const std::string& deployment, const state::v1::LoadCheckpoint& load);
  absl::Status DeleteDeployment(const std::string& deployment);

  const std::string& dir() const { return dir_; }

 private:
  explicit StateStore(std::string dir) : dir_(std::move(dir)) {}
  std::string DeploymentDir(const std::string& deployment) const;
  std::string PlanPath(const std::string& deployment, int64_t version) const;

  std::string dir_;
};

}  // namespace eplb::server

#endif  // EPLB_SERVER_STATE_STORE_H_
