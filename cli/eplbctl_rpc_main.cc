// eplbctl-rpc: every eplbctl command, the planner service's verbs included. `eplbctl` (see
// eplbctl_main.cc) runs `plan` itself and hands every other command to this binary, so that
// planning offline never loads gRPC.
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "cli/plan_command.h"
#include "cli/server_commands.h"

namespace {

std::string Usage() {
  return "usage: eplbctl <command> [flags]\n\n"
         "offline:\n"
         "  plan               plan an expert map offline from a load file (no server needed)\n\n"
         "planner service (--server HOST:PORT, default $EPLB_SERVER, else 127.0.0.1:50051):\n" +
         eplb::cli::ServerCommandsHelp() +
         "\n  help               print this help; 'eplbctl <command> --help' describes a "
         "command\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  if (argc < 2) {
    std::cerr << Usage();
    return 2;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "plan") return eplb::cli::RunPlanCommand(args, std::cout, std::cerr);
  if (eplb::cli::IsServerCommand(command)) {
    eplb::cli::ConnectionDefaults defaults;
    if (const char* server = std::getenv("EPLB_SERVER"); server != nullptr && *server != '\0') {
      defaults.server = server;
    }
    if (const char* token = std::getenv("EPLB_TOKEN"); token != nullptr) defaults.token = token;
    return eplb::cli::RunServerCommand(command, args, defaults, std::cout, std::cerr);
  }
  if (command == "help" || command == "--help" || command == "-h") {
    std::cout << Usage();
    return 0;
  }
  std::cerr << "eplbctl: unknown command \"" << command << "\"\n" << Usage();
  return 2;
}
