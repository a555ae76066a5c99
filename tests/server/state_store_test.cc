// The state directory as untrusted input: every file checksummed, the committed version recorded,
// maps checked against their hash, counters range-checked, and the file system's surprises
// (symbolic link loops, stray files) reported instead of crashing. A refused state is left as it
// was.
#include "server/state_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include "absl/strings/str_format.h"
#include "core/file_io.h"
#include "tests/server/test_env.h"

namespace eplb {
namespace {

namespace fs = std::filesystem;
using ::eplb::testing::Create;
using ::eplb::testing::GetPlan;
using ::eplb::testing::PlannerEnv;
using ::eplb::testing::Rebalance;
using ::eplb::testing::Report;
using ::eplb::testing::SendReports;
using ::eplb::testing::Spec;
using ::testing::HasSubstr;

// Every file under `dir` with its contents.
std::map<std::string, std::string> Snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!fs::is_regular_file(entry.symlink_status())) continue;
    auto contents = ReadFileToString(entry.path().string());
    files[entry.path().string()] = contents.ok() ? *contents : "<unreadable>";
  }
  return files;
}

// A planner serving `dir` as it is, and a stub to it.
struct Serving {
  FakeClock clock;
  std::unique_ptr<server::PlannerServer> server;
  std::unique_ptr<v1::Planner::Stub> stub;
};

absl::StatusOr<std::unique_ptr<Serving>> ServeOn(const std::string& dir) {
  auto serving = std::make_unique<Serving>();
  server::PlannerServerOptions options;
  options.listen = "127.0.0.1:0";
  options.state_dir = dir;
  auto server = server::PlannerServer::Start(options, &serving->clock, nullptr);
  if (!server.ok()) return server.status();
  serving->server = *std::move(server);
  serving->stub = v1::Planner::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", serving->server->port()), grpc::InsecureChannelCredentials()));
  return serving;
}

absl::Status StartOn(const std::string& dir) { return ServeOn(dir).status(); }

// A state directory holding deployment "d" with versions 1 and 2 (committed) and a load
// checkpoint, copied into a fresh directory for each case.
class StateIntegrityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    PlannerEnv env;
    v1::DeploymentSpec spec = Spec("d", 1, 4, 4, 2);
    spec.set_policy("deepseek");
    spec.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
    spec.mutable_trigger()->set_interval_steps(0);
    ASSERT_TRUE(Create(env.stub(), spec).ok());
    ASSERT_TRUE(SendReports(env.stub(), {Report("d", 0, 1, 0, 9, {{9, 9, 1, 1}})}).ok());
    ASSERT_TRUE(Rebalance(env.stub(), "d").ok());
    env.Stop();  // writes the load checkpoint
    golden_ = new std::string(eplb::testing::MakeTempDir());
    fs::copy(env.state_dir(), *golden_, fs::copy_options::recursive);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*golden_);
    delete golden_;
  }
  void SetUp() override {
    dir_ = eplb::testing::MakeTempDir();
    fs::remove_all(dir_);
    fs::copy(*golden_, dir_, fs::copy_options::recursive);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& relative) const {
    return dir_ + "/deployments/d/" + relative;
  }
  static std::string PlanFile(int version) { return absl::StrFormat("plans/%020d.pb", version); }
  // Starts a planner on the directory, expecting DATA_LOSS, and checks nothing changed.
  absl::Status Refused() {
    const auto before = Snapshot(dir_);
    absl::Status status = StartOn(dir_);
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    EXPECT_EQ(Snapshot(dir_), before) << "a refused state was changed";
    return status;
  }

  static std::string* golden_;
  std::string dir_;
};
std::string* StateIntegrityTest::golden_ = nullptr;

TEST_F(StateIntegrityTest, TheCopyStartsAndServesWhatWasStored) { EXPECT_TRUE(StartOn(dir_).ok()); }

TEST_F(StateIntegrityTest, AnyFlippedBitIsRefusedNamingTheFile) {
  for (const std::string& file : {std::string("deployment.pb"), std::string("version.pb"),
                                  PlanFile(1), PlanFile(2), std::string("load.pb")}) {
    SCOPED_TRACE(file);
    const std::string path = Path(file);
    auto original = ReadFileToString(path);
    ASSERT_TRUE(original.ok()) << original.status();
    std::string flipped = *original;
    flipped[flipped.size() - 1] ^= 0x10;  // in the content, past the header
    ASSERT_TRUE(WriteFileAtomically(path, flipped).ok());
    const absl::Status status = Refused();
    EXPECT_THAT(std::string(status.message()), HasSubstr(path + " fails its checksum"));
    // Cut short: the length in the header no longer matches.
    ASSERT_TRUE(WriteFileAtomically(path, original->substr(0, original->size() - 1)).ok());
    EXPECT_THAT(
        std::string(Refused().message()),
        HasSubstr(absl::StrCat(path, " holds ", original->size() - 21,
                               " bytes of content, its header says ", original->size() - 20)));
    ASSERT_TRUE(WriteFileAtomically(path, *original).ok());
  }
  EXPECT_TRUE(StartOn(dir_).ok());
}

TEST_F(StateIntegrityTest, AMissingCommittedPlanIsRefusedNotRolledBack) {
  fs::remove(Path(PlanFile(2)));
  EXPECT_THAT(std::string(Refused().message()),
              HasSubstr(Path(PlanFile(2)) + " is missing: " + Path("version.pb") +
                        " records version 2 as committed"));
}

TEST_F(StateIntegrityTest, AMapThatDoesNotMatchItsHashIsRefused) {
  auto store = server::StateStore::Open(dir_);
  ASSERT_TRUE(store.ok());
  auto loaded = store->LoadAll();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  v1::Plan plan = loaded->front().plans.back();
  ASSERT_EQ(plan.version(), 2);
  // Another valid map: two slots of different experts swapped.
  v1::ExpertMap& map = *plan.mutable_map();
  int other = 1;
  while (map.phy2log(other) == map.phy2log(0)) ++other;
  const int32_t expert = map.phy2log(0), replica = map.replica_rank(0);
  map.set_phy2log(0, map.phy2log(other));
  map.set_replica_rank(0, map.replica_rank(other));
  map.set_phy2log(other, expert);
  map.set_replica_rank(other, replica);
  ASSERT_TRUE(store->WritePlan(plan).ok());  // a valid file: the checksum is of the new content
  EXPECT_THAT(std::string(Refused().message()), HasSubstr("plan 2's map hashes to "));
}

TEST_F(StateIntegrityTest, AVersionCounterOutOfRangeIsRefused) {
  auto store = server::StateStore::Open(dir_);
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE(store->WriteVersionCounter("d", INT64_MAX, 2).ok());
  EXPECT_THAT(std::string(Refused().message()),
              HasSubstr(Path("version.pb") +
                        " holds last_version 9223372036854775807 and committed_version 2: "
                        "expected 1 ≤ last_version ≤ 4611686018427387904"));
  ASSERT_TRUE(store->WriteVersionCounter("d", 2, 3).ok());
  EXPECT_THAT(std::string(Refused().message()), HasSubstr("0 ≤ committed_version ≤ last_version"));
  // A plan file beyond the counter.
  ASSERT_TRUE(store->WriteVersionCounter("d", 1, 1).ok());
  EXPECT_THAT(std::string(Refused().message()),
              HasSubstr(Path(PlanFile(2)) + " holds version 2, beyond the last one counted"));
}

// The version counter is the commit record: a plan file that says COMMITTED without it was never
// committed (a crash between the two writes), and a recorded commit stands whatever its file says.
TEST_F(StateIntegrityTest, TheRecordedCommittedVersionDecides) {
  auto store = server::StateStore::Open(dir_);
  ASSERT_TRUE(store.ok());
  auto loaded = store->LoadAll();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  v1::Plan third = loaded->front().plans.back();
  third.set_version(3);
  third.set_state(v1::COMMITTED);
  ASSERT_TRUE(store->WriteVersionCounter("d", 3, 2).ok());
  ASSERT_TRUE(store->WritePlan(third).ok());
  {
    auto serving = ServeOn(dir_);
    ASSERT_TRUE(serving.ok()) << serving.status();
    v1::Planner::Stub& stub = *(*serving)->stub;
    EXPECT_EQ(GetPlan(stub, "d", 0)->version(), 2);
    auto unrecorded = GetPlan(stub, "d", 3);
    ASSERT_TRUE(unrecorded.ok()) << unrecorded.status();
    EXPECT_EQ(unrecorded->state(), v1::ABORTED);
    EXPECT_EQ(unrecorded->abort_reason(), "its commit was not recorded before the planner stopped");
  }
  third.set_state(v1::PENDING);
  ASSERT_TRUE(store->WritePlan(third).ok());
  ASSERT_TRUE(store->WriteVersionCounter("d", 3, 3).ok());
  auto serving = ServeOn(dir_);
  ASSERT_TRUE(serving.ok()) << serving.status();
  auto committed = GetPlan(*(*serving)->stub, "d", 0);
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_EQ(committed->version(), 3);
  EXPECT_EQ(committed->state(), v1::COMMITTED);
}

TEST_F(StateIntegrityTest, LinkLoopsAndStrayFilesAreErrorsNotCrashes) {
  fs::create_symlink(dir_ + "/deployments/loop", dir_ + "/deployments/loop");
  EXPECT_THAT(std::string(Refused().message()),
              HasSubstr(dir_ + "/deployments/loop is not a deployment directory"));
  fs::remove(dir_ + "/deployments/loop");
  fs::create_symlink(Path("plans/nowhere"), Path("plans/00000000000000000009.pb"));
  const absl::Status dangling = StartOn(dir_);
  EXPECT_FALSE(dangling.ok());
  EXPECT_THAT(std::string(dangling.message()), HasSubstr("00000000000000000009.pb"));
}

// A crash image (the state directory as kill -9 leaves it, copied while the planner runs) holds
// the load as of the last checkpoint; a graceful stop loses nothing.
TEST(CrashImageTest, TheLoadIsKeptAsOfTheLastCheckpointAndAGracefulStopKeepsAll) {
  PlannerEnv env;
  v1::DeploymentSpec spec = Spec("d", 1, 4, 4, 2);
  spec.mutable_trigger()->set_interval_steps(0);
  ASSERT_TRUE(Create(env.stub(), spec).ok());
  ASSERT_TRUE(SendReports(env.stub(), {Report("d", 0, 1, 0, 9, {{1, 2, 3, 4}})}).ok());
  const std::string checkpoint = env.state_dir() + "/deployments/d/load.pb";
  env.clock().Advance(absl::Seconds(10));  // the checkpoint interval: the worker writes load.pb
  for (int i = 0; i < 20'000 && !fs::exists(checkpoint); ++i) std::this_thread::yield();
  ASSERT_TRUE(fs::exists(checkpoint));
  ASSERT_TRUE(SendReports(env.stub(), {Report("d", 0, 2, 10, 19, {{1, 2, 3, 4}})}).ok());
  ASSERT_EQ(eplb::testing::GetLoad(env.stub(), "d")->steps_seen(), 20);

  const std::string image = eplb::testing::MakeTempDir();
  fs::remove_all(image);
  fs::copy(env.state_dir(), image, fs::copy_options::recursive);
  {
    auto serving = ServeOn(image);
    ASSERT_TRUE(serving.ok()) << serving.status();
    auto load = eplb::testing::GetLoad(*(*serving)->stub, "d");
    ASSERT_TRUE(load.ok()) << load.status();
    EXPECT_EQ(load->steps_seen(), 10);  // the report after the checkpoint is gone
  }
  fs::remove_all(image);
  env.Restart();
  EXPECT_EQ(eplb::testing::GetLoad(env.stub(), "d")->steps_seen(), 20);
}

}  // namespace
}  // namespace eplb
