// EPLB_CHECK: crash on a broken internal invariant (never on bad input, which is a Status).
// Abseil 20220623 has no absl/log, so this small macro stands in for CHECK.
#ifndef EPLB_CORE_CHECK_H_
#define EPLB_CORE_CHECK_H_

#include <string>

#include "absl/strings/str_cat.h"

namespace eplb::internal {
[[noreturn]] void CheckFailed(const char* file, int line, const char* condition,
                              const std::string& message);
}  // namespace eplb::internal

// EPLB_CHECK(cond, details...): details are absl::StrCat arguments, evaluated only on failure.
#define EPLB_CHECK(cond, ...)                                                                \
  do {                                                                                       \
    if (!(cond)) [[unlikely]] {                                                              \
      ::eplb::internal::CheckFailed(__FILE__, __LINE__, #cond, ::absl::StrCat(__VA_ARGS__)); \
    }                                                                                        \
  } while (false)

#endif  // EPLB_CORE_CHECK_H_
