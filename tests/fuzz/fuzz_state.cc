// libFuzzer target: the planner's state directory as found at start-up. A seeded directory (a
// deployment with a load checkpoint and three committed plans, written by a real planner) is
// copied for each input, and one of its files is changed: the input's first byte picks the file,
// the second how (0: replaced by the rest of the input; 1: the rest XORed in at an offset named
// by the third byte; 2: cut to the length the rest's size gives). Then a planner loads it: it
// starts and serves what it loaded, or refuses with an error. It never crashes, and a refusal
// leaves the directory as it was.
#include <stdlib.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "core/check.h"
#include "core/clock.h"
#include "core/file_io.h"
#include "server/planner.h"
#include "spdlog/spdlog.h"

namespace {

namespace fs = std::filesystem;

struct Seed {
  std::string golden;              // the seeded directory
  std::vector<std::string> files;  // its files, relative, sorted
  std::string scratch;
};

std::string MakeDir() {
  std::string dir = (fs::temp_directory_path() / "eplb-fuzz-state-XXXXXX").string();
  EPLB_CHECK(::mkdtemp(dir.data()) != nullptr, "mkdtemp");
  return dir;
}

std::map<std::string, std::string> Snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!fs::is_regular_file(entry.symlink_status())) continue;
    auto contents = eplb::ReadFileToString(entry.path().string());
    files[entry.path().string()] = contents.ok() ? *contents : "<unreadable>";
  }
  return files;
}

const Seed& GetSeed() {
  static const Seed* seed = [] {
    spdlog::set_level(spdlog::level::off);
    auto* s = new Seed;
    s->golden = MakeDir();
    s->scratch = MakeDir();
    eplb::FakeClock clock;
    auto store = eplb::server::StateStore::Open(s->golden);
    EPLB_CHECK(store.ok(), store.status().ToString());
    auto planner =
        eplb::server::Planner::Create({.plan_threads = 1}, *std::move(store), &clock, nullptr);
    EPLB_CHECK(planner.ok(), planner.status().ToString());
    eplb::v1::DeploymentSpec spec;
    spec.set_name("s");
    spec.mutable_shape()->set_num_layers(2);
    spec.mutable_shape()->set_num_logical_experts(8);
    spec.mutable_shape()->set_num_physical_experts(10);
    spec.mutable_shape()->set_num_ranks(2);
    spec.set_policy("deepseek");
    spec.set_commit_mode(eplb::v1::COMMIT_MODE_IMMEDIATE);
    spec.mutable_trigger()->set_interval_steps(0);
    absl::Notification created;
    (*planner)->CreateDeployment(spec, [&](absl::StatusOr<eplb::v1::Deployment> d) {
      EPLB_CHECK(d.ok(), d.status().ToString());
      created.Notify();
    });
    created.WaitForNotification();
    eplb::v1::LoadReport report;
    report.set_deployment("s");
    report.set_sequence(1);
    report.set_first_step(0);
    report.set_last_step(9);
    report.set_plan_version(1);
    for (int l = 0; l < 2; ++l) {
      auto* counts = report.add_layers()->mutable_counts();
      for (int e = 0; e < 8; ++e) counts->Add(e == l ? 50 : 1);
    }
    EPLB_CHECK((*planner)->Report(report).ok());
    for (int i = 0; i < 2; ++i) {
      absl::Notification planned;
      (*planner)->Rebalance("s", false, [&](absl::StatusOr<eplb::v1::Plan> plan) {
        EPLB_CHECK(plan.ok(), plan.status().ToString());
        planned.Notify();
      });
      planned.WaitForNotification();
    }
    (*planner)->Shutdown();  // writes the load checkpoint
    for (const auto& [path, contents] : Snapshot(s->golden)) {
      s->files.push_back(fs::relative(path, s->golden).string());
    }
    std::sort(s->files.begin(), s->files.end());
    EPLB_CHECK(s->files.size() >= 5, "the seeded directory has ", s->files.size(), " files");
    return s;
  }();
  return *seed;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const Seed& seed = GetSeed();
  fs::remove_all(seed.scratch);
  fs::copy(seed.golden, seed.scratch, fs::copy_options::recursive);
  const std::string path = seed.scratch + "/" + seed.files[data[0] % seed.files.size()];
  auto original = eplb::ReadFileToString(path);
  EPLB_CHECK(original.ok(), original.status().ToString());
  std::string contents = *original;
  const std::string rest(reinterpret_cast<const char*>(data + 2), size - 2);
  switch (data[1] % 3) {
    case 0:
      contents = rest;
      break;
    case 1:
      for (size_t i = 0; i < rest.size() && !contents.empty(); ++i) {
        contents[(data[2] + i) % contents.size()] ^= rest[i];
      }
      break;
    default:
      contents.resize(std::min(contents.size(), rest.size()));
      break;
  }
  EPLB_CHECK(eplb::WriteFileAtomically(path, contents).ok());
  const auto before = Snapshot(seed.scratch);

  eplb::FakeClock clock;
  auto store = eplb::server::StateStore::Open(seed.scratch);
  EPLB_CHECK(store.ok(), store.status().ToString());
  auto planner =
      eplb::server::Planner::Create({.plan_threads = 1}, *std::move(store), &clock, nullptr);
  if (!planner.ok()) {
    EPLB_CHECK(Snapshot(seed.scratch) == before,
               "a refused state was changed: ", planner.status().ToString());
    return 0;
  }
  // What it loaded it serves.
  for (const eplb::v1::Deployment& d : (*planner)->ListDeployments()) {
    auto committed = (*planner)->GetPlan(d.spec().name(), 0);
    EPLB_CHECK(committed.ok(), committed.status().ToString());
    EPLB_CHECK(committed->state() == eplb::v1::COMMITTED);
    EPLB_CHECK((*planner)->GetLoad(d.spec().name()).ok());
  }
  (*planner)->Shutdown();
  return 0;
}
