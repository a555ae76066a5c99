#include "cli/cli_args.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace eplb::cli {

std::string ParsedArgs::Get(absl::string_view name, absl::string_view fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::string(fallback) : it->second;
}

absl::StatusOr<int64_t> ParsedArgs::GetInt(absl::string_view name, int64_t fallback, int64_t lo,
                                           int64_t hi) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  int64_t value = 0;
  if (!absl::SimpleAtoi(it->second, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " = \"", it->second, "\" is not an integer"));
  }
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " = ", value, " is out of range [", lo, ", ", hi, "]"));
  }
  return value;
}

absl::StatusOr<double> ParsedArgs::GetDouble(absl::string_view name, double fallback, double lo,
                                             double hi) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  double value = 0;
  if (!absl::SimpleAtod(it->second, &value) || !std::isfinite(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " = \"", it->second, "\" is not a number"));
  }
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " = ", value, " is out of range [", lo, ", ", hi, "]"));
  }
  return value;
}

absl::StatusOr<std::string> ParsedArgs::Require(absl::string_view name) const {
  auto it = values_.find(name);
  if (it == values_.end())
    return absl::InvalidArgumentError(absl::StrCat("--", name, " is required"));
  return it->second;
}

absl::StatusOr<ParsedArgs> ParseArgs(std::span<const std::string> args,
                                     std::span<const FlagSpec> specs) {
  ParsedArgs parsed;
  for (size_t i = 0; i < args.size(); ++i) {
    absl::string_view word = args[i];
    if (word.size() < 3 || word.substr(0, 2) != "--") {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", word, "\""));
    }
    absl::string_view name = word.substr(2);
    std::optional<std::string> inline_value;
    if (const size_t eq = name.find('='); eq != absl::string_view::npos) {
      inline_value = std::string(name.substr(eq + 1));
      name = name.substr(0, eq);
    }
    const auto spec =
        std::find_if(specs.begin(), specs.end(), [&](const FlagSpec& s) { return s.name == name; });
    if (spec == specs.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (parsed.values_.contains(name)) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " is given twice"));
    }
    std::string value;
    if (spec->value.empty()) {
      if (inline_value) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      }
    } else if (inline_value) {
      value = *inline_value;
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " needs a value (", spec->value, ")"));
    }
    parsed.values_.emplace(std::string(name), std::move(value));
  }
  return parsed;
}

std::string FlagHelp(std::span<const FlagSpec> specs) {
  std::string out;
  for (const FlagSpec& spec : specs) {
    const std::string left = spec.value.empty() ? absl::StrCat("--", spec.name)
                                                : absl::StrCat("--", spec.name, " ", spec.value);
    absl::StrAppendFormat(&out, "  %-32s %s\n", left, spec.help);
  }
  return out;
}

}  // namespace eplb::cli
