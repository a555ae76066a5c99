// The eplbctl verbs that talk to a planner: create-deployment, list, delete-deployment, report,
// rebalance, get-plan, list-plans, get-load, status and watch. Every verb takes the same connection
// flags (--server, --token, --tls-*, --timeout-ms); results go to standard output as
// human-readable lines, errors to standard error as one line:
//   usage errors   "eplbctl VERB: <message> (see eplbctl VERB --help)"       exit code 2
//   other errors   "eplbctl: <CODE>: <message> [<REASON> <field>]"            exit code 1
// (the second is StatusToDisplayString of the planner's error, or of a local one such as an
// unreadable file).
#ifndef EPLB_CLI_SERVER_COMMANDS_H_
#define EPLB_CLI_SERVER_COMMANDS_H_

#include <iosfwd>
#include <span>
#include <string>

#include "absl/strings/string_view.h"

namespace eplb::cli {

// Defaults of the connection flags; main() fills them from the environment.
struct ConnectionDefaults {
  std::string server = "127.0.0.1:50051";  // EPLB_SERVER
  std::string token;                       // EPLB_TOKEN
};

// Whether `verb` is one of the verbs above.
bool IsServerCommand(absl::string_view verb);

// Runs `verb` with `args` (the words after it). Returns the process exit code: 0 on success, 1
// when the planner (or a local file) refuses, 2 for a usage error. No output file is created or
// changed on failure.
// REQUIRES: IsServerCommand(verb).
int RunServerCommand(absl::string_view verb, std::span<const std::string> args,
                     const ConnectionDefaults& defaults, std::ostream& out, std::ostream& err);

// "  verb   what it does" lines for eplbctl's usage text.
std::string ServerCommandsHelp();

}  // namespace eplb::cli

#endif  // EPLB_CLI_SERVER_COMMANDS_H_
