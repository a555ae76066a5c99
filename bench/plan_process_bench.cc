// plan_process_bench: what `eplbctl plan` costs as a whole process, against the plan's own time.
//
// Spawns eplbctl (posix_spawn, as a shell or a script would; nothing else runs in between) --runs
// times per case on the DeepSeek-V3 example (58 layers × 256 experts, 288 slots on 32 ranks, 4
// nodes): the map to standard output, and to a file (--output: written atomically with fsync).
// Per case: the median wall time from spawn to exit, the median plan time eplbctl reports, and the
// target 3 × plan + 10 ms. The baselines in the same run: spawning /bin/true, `eplbctl plan
// --help` (start-up alone), and for the file cases the atomic write of a file of the map's size
// alone (temporary file, fsync, rename, directory fsync: what the disk costs).
//
//   plan_process_bench [--eplbctl PATH] [--load PATH] [--runs 30]
// PATH defaults: eplbctl beside this program; the repository's
// deploy/examples/load-deepseek-v3.json.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace {

struct Run {
  double wall_ms = 0;
  double plan_ms = -1;  // from the summary line; −1 when absent
};

// Spawns argv with stdout to /dev/null and stderr to `err_path`; exits on failure.
Run Spawn(const std::vector<std::string>& argv, const std::string& err_path) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  const auto start = std::chrono::steady_clock::now();
  pid_t pid = 0;
  if (posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ) != 0) {
    std::fprintf(stderr, "plan_process_bench: cannot spawn %s\n", args[0]);
    std::exit(1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  Run run;
  run.wall_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  posix_spawn_file_actions_destroy(&actions);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::ifstream err(err_path);
    std::stringstream text;
    text << err.rdbuf();
    std::fprintf(stderr, "plan_process_bench: %s failed:\n%s", args[0], text.str().c_str());
    std::exit(1);
  }
  // "policy deepseek: 58 layers, …, 1.17 ms"
  std::ifstream err(err_path);
  std::string line;
  if (std::getline(err, line) && line.rfind("policy ", 0) == 0) {
    const size_t comma = line.rfind(", ");
    if (comma != std::string::npos) run.plan_ms = std::atof(line.c_str() + comma + 2);
  }
  return run;
}

// What eplbctl's atomic write of `bytes` bytes to `path` costs the disk alone: a temporary file
// beside it written and fsynced, renamed over it, the directory fsynced (as core/file_io.h does).
double DurableWriteMs(const std::filesystem::path& path, size_t bytes) {
  const std::string content(bytes, 'x');
  const std::string temp = path.string() + ".bench-tmp";
  const auto start = std::chrono::steady_clock::now();
  const int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  bool ok =
      fd >= 0 && write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  ok = ok && fsync(fd) == 0;
  if (fd >= 0) close(fd);
  ok = ok && rename(temp.c_str(), path.c_str()) == 0;
  const int dir = open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ok = ok && dir >= 0 && fsync(dir) == 0;
  if (dir >= 0) close(dir);
  if (!ok) {
    std::fprintf(stderr, "plan_process_bench: cannot write %s\n", path.c_str());
    std::exit(1);
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  char self[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  const std::filesystem::path dir =
      n > 0 ? std::filesystem::path(std::string(self, n)).parent_path() : ".";
  std::string eplbctl = (dir / "eplbctl").string();
  std::string load = (dir / "../../deploy/examples/load-deepseek-v3.json").lexically_normal();
  int runs = 30;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--eplbctl") {
      eplbctl = argv[i + 1];
    } else if (flag == "--load") {
      load = argv[i + 1];
    } else if (flag == "--runs") {
      runs = std::atoi(argv[i + 1]);
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (runs < 1) {
    std::fprintf(stderr, "--runs must be ≥ 1\n");
    return 2;
  }
  const std::filesystem::path scratch =
      std::filesystem::temp_directory_path() / ("plan-process-bench-" + std::to_string(getpid()));
  std::filesystem::create_directories(scratch);
  const std::string err_path = (scratch / "stderr").string();
  const std::string out_path = (scratch / "map.json").string();

  const auto measure = [&](const std::vector<std::string>& argv) {
    std::vector<double> wall, plan;
    Spawn(argv, err_path);  // warm the page cache
    for (int i = 0; i < runs; ++i) {
      const Run r = Spawn(argv, err_path);
      wall.push_back(r.wall_ms);
      if (r.plan_ms >= 0) plan.push_back(r.plan_ms);
    }
    return std::make_pair(Median(wall), Median(plan));
  };
  std::printf("plan_process_bench: %s, %d runs per case, medians\n", eplbctl.c_str(), runs);
  std::printf("  spawn /bin/true: %.2f ms; eplbctl plan --help: %.2f ms\n",
              measure({"/bin/true"}).first, measure({eplbctl, "plan", "--help"}).first);
  const std::vector<std::string> shape = {"--load",      load, "--num-physical-experts", "288",
                                          "--num-ranks", "32", "--num-groups",           "8",
                                          "--num-nodes", "4"};
  for (const char* policy : {"deepseek", "balanced"}) {
    for (const bool to_file : {false, true}) {
      std::vector<std::string> argv = {eplbctl, "plan", "--policy", policy};
      argv.insert(argv.end(), shape.begin(), shape.end());
      if (to_file) argv.insert(argv.end(), {"--output", out_path});
      const auto [wall, plan] = measure(argv);
      if (plan <= 0) {
        std::fprintf(stderr, "plan_process_bench: eplbctl printed no plan time\n");
        return 1;
      }
      std::printf(
          "  %-8s map to %-6s: whole process %6.2f ms, plan %5.2f ms -> %.2f × plan; target 3 × "
          "plan + 10 ms = %.2f ms: %s\n",
          policy, to_file ? "a file" : "stdout", wall, plan, wall / plan, 3 * plan + 10,
          wall <= 3 * plan + 10 ? "met" : "missed");
      if (to_file) {
        // The disk's part, measured alone in the same run: the same write of a file this size.
        std::vector<double> write_ms;
        const size_t bytes = std::filesystem::file_size(out_path);
        for (int i = 0; i < runs; ++i) write_ms.push_back(DurableWriteMs(out_path, bytes));
        const double disk = Median(write_ms);
        std::printf(
            "  %-8s %-16s  the durable write of its %zu bytes alone: %.2f ms; the process less "
            "that write: %.2f ms: %s\n",
            policy, "", bytes, disk, wall - disk, wall - disk <= 3 * plan + 10 ? "met" : "missed");
      }
    }
  }
  std::filesystem::remove_all(scratch);
  return 0;
}
