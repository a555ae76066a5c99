// eplbctl: the command-line tool of eplb.
#include <iostream>
#include <string>
#include <vector>

#include "client/plan_command.h"

namespace {

constexpr char kUsage[] =
    "usage: eplbctl <command> [flags]\n\n"
    "commands:\n"
    "  plan    plan an expert map offline from a load file (no server needed)\n"
    "  help    print this help; 'eplbctl <command> --help' describes a command\n";

}  // namespace

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "plan") return eplb::cli::RunPlanCommand(args, std::cout, std::cerr);
  if (command == "help" || command == "--help" || command == "-h") {
    std::cout << kUsage;
    return 0;
  }
  std::cerr << "eplbctl: unknown command \"" << command << "\"\n" << kUsage;
  return 2;
}
