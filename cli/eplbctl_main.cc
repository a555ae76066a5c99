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

// The directory of this executable, from /proc/self/exe (argv[0] may be a bare name on PATH).
std::string ExecutableDir() {
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n <= 0) return ".";
  const std::string self(path, static_cast<size_t>(n));
  const size_t slash = self.rfind('/');
  return slash == std::string::npos ? "." : self.substr(0, slash);
}

}  // namespace

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  if (argc >= 2 && std::strcmp(argv[1], "plan") == 0) {
    const std::vector<std::string> args(argv + 2, argv + argc);
    return eplb::cli::RunPlanCommand(args, std::cout, std::cerr);
  }
  const std::string rpc = ExecutableDir() + "/eplbctl-rpc";
  execv(rpc.c_str(), argv);
  const int error = errno;
  std::cerr << "eplbctl: " << (argc >= 2 ? argv[1] : "help") << " is run by " << rpc
            << ", which cannot be started: " << std::strerror(error)
            << " (install eplbctl-rpc beside eplbctl)\n";
  return 2;
}
