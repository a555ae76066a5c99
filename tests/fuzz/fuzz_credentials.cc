// libFuzzer target: the planner's credentials file (--credentials). Whatever the input, the parser
// returns credentials or INVALID_ARGUMENT (no exception escapes yaml-cpp, no crash on deep nesting
// or aliases), and what it returns is accepted by AccessControl or refused with INVALID_ARGUMENT;
// an accepted set identifies each of its tokens as the credential that holds it.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "server/access.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto parsed = eplb::server::ParseCredentials(text, "fuzz.yaml");
  if (!parsed.ok()) {
    EPLB_CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument,
               parsed.status().ToString());
    return 0;
  }
  const std::vector<eplb::server::Credential> credentials = *parsed;
  for (const bool mutual_tls : {false, true}) {
    auto access = eplb::server::AccessControl::Create("", credentials, mutual_tls);
    if (!access.ok()) {
      EPLB_CHECK(access.status().code() == absl::StatusCode::kInvalidArgument,
                 access.status().ToString());
      continue;
    }
    for (const eplb::server::Credential& c : credentials) {
      if (c.token.empty()) continue;
      auto caller = access->Identify(absl::StrCat("Bearer ", c.token), {});
      EPLB_CHECK(caller.ok() && (*caller)->name == c.name, "token of ", c.name, " not found");
    }
  }
  return 0;
}
