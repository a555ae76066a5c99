// Running the real binaries from tests: a command run to completion with its output captured, and
// a long-running child (the planner) that tests stop, kill and restart.
#ifndef EPLB_TESTS_SUPPORT_SUBPROCESS_H_
#define EPLB_TESTS_SUPPORT_SUBPROCESS_H_

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace eplb::testing {

inline std::string Slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Forks and execs argv[0] with stdout and stderr sent to the given files, after setting each
// "NAME=VALUE" of `env` in the child's environment. Returns the child's pid.
inline pid_t Spawn(std::vector<std::string> argv, const std::filesystem::path& out,
                   const std::filesystem::path& err, const std::vector<std::string>& env = {}) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (!freopen(out.c_str(), "w", stdout) || !freopen(err.c_str(), "w", stderr)) _exit(127);
    for (const std::string& entry : env) {
      const size_t eq = entry.find('=');
      setenv(entry.substr(0, eq).c_str(), entry.substr(eq + 1).c_str(), 1);
    }
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

// The exit code of a process that ended, or 128 + the signal that killed it.
inline int ExitCode(int wait_status) {
  return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 128 + WTERMSIG(wait_status);
}

struct ProcessResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs argv to completion; its output goes through files named `scratch`.stdout/.stderr.
inline ProcessResult RunProcess(std::vector<std::string> argv, const std::filesystem::path& scratch,
                                const std::vector<std::string>& env = {}) {
  const std::filesystem::path out = scratch.string() + ".stdout";
  const std::filesystem::path err = scratch.string() + ".stderr";
  const pid_t pid = Spawn(std::move(argv), out, err, env);
  int status = 0;
  waitpid(pid, &status, 0);
  ProcessResult result;
  result.exit_code = ExitCode(status);
  result.out = Slurp(out);
  result.err = Slurp(err);
  std::filesystem::remove(out);
  std::filesystem::remove(err);
  return result;
}

// A child process that lives until Kill() or the destructor (SIGKILL).
class ChildProcess {
 public:
  ChildProcess(std::vector<std::string> argv, const std::filesystem::path& out,
               const std::filesystem::path& err, const std::vector<std::string>& env = {})
      : pid_(Spawn(std::move(argv), out, err, env)) {}
  ~ChildProcess() { Kill(SIGKILL); }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Whether it still runs (reaps it if not).
  bool Running() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exit_code_ = ExitCode(status);
      pid_ = -1;
      return false;
    }
    return true;
  }

  // Sends `signal` and waits for the process to end; returns its exit code.
  int Kill(int signal) {
    if (pid_ > 0) {
      ::kill(pid_, signal);
      int status = 0;
      waitpid(pid_, &status, 0);
      exit_code_ = ExitCode(status);
      pid_ = -1;
    }
    return exit_code_;
  }

  pid_t pid() const { return pid_; }

 private:
  pid_t pid_;
  int exit_code_ = -1;
};

// A fixture with a fresh scratch directory per test, named after `prefix`, the process and the
// test, removed afterwards.
class ScratchDirTest : public ::testing::Test {
 protected:
  explicit ScratchDirTest(std::string prefix) : prefix_(std::move(prefix)) {}

  void SetUp() override {
    // A parameterized test's name is "Name/Case": one directory level, removed whole.
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::replace(name.begin(), name.end(), '/', '.');
    dir_ = std::filesystem::temp_directory_path() /
           (prefix_ + "_" + std::to_string(getpid()) + "_" + name);
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  // Writes `contents` to `name` in the scratch directory; returns its path.
  std::string Write(const std::string& name, const std::string& contents) const {
    std::ofstream(dir_ / name, std::ios::binary) << contents;
    return Path(name);
  }

  std::filesystem::path dir_;

 private:
  std::string prefix_;
};

}  // namespace eplb::testing

#endif  // EPLB_TESTS_SUPPORT_SUBPROCESS_H_
