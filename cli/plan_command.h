// `eplbctl plan`: offline planning, no server needed. Reads a load file (and optionally the map in
// use), runs a placement policy, writes the new map in the requested format and prints a summary.
#ifndef EPLB_CLI_PLAN_COMMAND_H_
#define EPLB_CLI_PLAN_COMMAND_H_

#include <iosfwd>
#include <span>
#include <string>

namespace eplb::cli {

// Runs the verb with `args` (the words after "plan"). The map goes to --output or `out`; the
// summary and errors go to `err`. Returns the process exit code: 0 on success, 1 when the input
// cannot be planned (unreadable or invalid files, a shape the policy cannot serve), 2 for a usage
// error. On failure no output file is created or changed.
int RunPlanCommand(std::span<const std::string> args, std::ostream& out, std::ostream& err);

// The verb's usage text.
std::string PlanUsage();

}  // namespace eplb::cli

#endif  // EPLB_CLI_PLAN_COMMAND_H_
