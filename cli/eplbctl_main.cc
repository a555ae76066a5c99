// eplbctl: the command-line tool of eplb. `plan` runs in this process, which links no gRPC (so a
// plan costs little more than its own time); every other command, the planner service's verbs and
// the help among them, is run by `eplbctl-rpc` from the same directory, with the same arguments.
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "cli/plan_command.h"

namespace {

// Where eplbctl-rpc should be: beside this executable (from /proc/self/exe; argv[0] may be a bare
// name found on PATH), else beside argv[0] when it names a path; empty when neither is known (then
// eplbctl-rpc is looked up on PATH, never in the current directory).
std::string RpcPath(const char* argv0) {
  char path[PATH_MAX];
  std::string self;
  if (const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1); n > 0) {
    self.assign(path, static_cast<size_t>(n));
  } else if (argv0 != nullptr && std::strchr(argv0, '/') != nullptr) {
    self = argv0;
  }
  const size_t slash = self.rfind('/');
  return slash == std::string::npos ? "" : self.substr(0, slash) + "/eplbctl-rpc";
}

}  // namespace

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  if (argc >= 2 && std::strcmp(argv[1], "plan") == 0) {
    const std::vector<std::string> args(argv + 2, argv + argc);
    return eplb::cli::RunPlanCommand(args, std::cout, std::cerr);
  }
  const std::string rpc = RpcPath(argv[0]);
  if (rpc.empty()) {
    execvp("eplbctl-rpc", argv);
  } else {
    execv(rpc.c_str(), argv);
  }
  const int error = errno;
  std::cerr << "eplbctl: " << (argc >= 2 ? argv[1] : "help") << " is run by "
            << (rpc.empty() ? "eplbctl-rpc (on PATH)" : rpc)
            << ", which cannot be started: " << std::strerror(error)
            << " (install eplbctl-rpc beside eplbctl)\n";
  return 2;
}
