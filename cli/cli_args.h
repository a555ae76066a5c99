// Command-line parsing for eplbctl: each verb declares its own flags, so a flag that belongs to
// another verb is an error rather than silently ignored. Accepts `--name value` and `--name=value`;
// switches take no value.
#ifndef EPLB_CLI_CLI_ARGS_H_
#define EPLB_CLI_CLI_ARGS_H_

#include <array>
#include <cstdint>
#include <map>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace eplb::cli {

struct FlagSpec {
  absl::string_view name;   // without the leading "--"
  absl::string_view value;  // placeholder shown in help, e.g. "FILE"; empty for a switch
  absl::string_view help;
};

class ParsedArgs {
 public:
  bool Has(absl::string_view name) const { return values_.contains(std::string(name)); }
  // The flag's value, or `fallback` if it was not given.
  std::string Get(absl::string_view name, absl::string_view fallback = "") const;
  // The flag's value as an integer in [lo, hi]; `fallback` if not given. INVALID_ARGUMENT naming
  // the flag for a value that is not an integer or out of range.
  absl::StatusOr<int64_t> GetInt(absl::string_view name, int64_t fallback, int64_t lo,
                                 int64_t hi) const;
  // The flag's value as a finite number in [lo, hi]; `fallback` if not given. INVALID_ARGUMENT
  // naming the flag otherwise.
  absl::StatusOr<double> GetDouble(absl::string_view name, double fallback, double lo,
                                   double hi) const;
  // INVALID_ARGUMENT "--name is required" if the flag is missing.
  absl::StatusOr<std::string> Require(absl::string_view name) const;

 private:
  friend absl::StatusOr<ParsedArgs> ParseArgs(std::span<const std::string>,
                                              std::span<const FlagSpec>);
  std::map<std::string, std::string, std::less<>> values_;
};

// Parses `args` (the words after the verb) against `specs`. INVALID_ARGUMENT for an unknown flag, a
// flag given twice, a missing value, a value given to a switch, or a positional argument.
absl::StatusOr<ParsedArgs> ParseArgs(std::span<const std::string> args,
                                     std::span<const FlagSpec> specs);

// The flags of `a` followed by those of `b` (a verb's own flags and a shared set).
template <size_t A, size_t B>
constexpr std::array<FlagSpec, A + B> Concat(const std::array<FlagSpec, A>& a,
                                             const std::array<FlagSpec, B>& b) {
  std::array<FlagSpec, A + B> out{};
  for (size_t i = 0; i < A; ++i) out[i] = a[i];
  for (size_t i = 0; i < B; ++i) out[A + i] = b[i];
  return out;
}

// "  --name VALUE   help" lines for a verb's usage text.
std::string FlagHelp(std::span<const FlagSpec> specs);

}  // namespace eplb::cli

#endif  // EPLB_CLI_CLI_ARGS_H_
