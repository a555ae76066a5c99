// A PlannerClient of the in-process planner of a test (tests/server/test_env.h).
#ifndef EPLB_TESTS_CLIENT_CONNECT_H_
#define EPLB_TESTS_CLIENT_CONNECT_H_

#include <gtest/gtest.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "client/planner_client.h"
#include "tests/server/test_env.h"

namespace eplb::testing {

// `options` with the server set to `env`'s planner; null (and a test failure) if refused.
inline std::unique_ptr<client::PlannerClient> Connect(const PlannerEnv& env,
                                                      client::PlannerClientOptions options = {}) {
  options.server = absl::StrCat("127.0.0.1:", env.port());
  auto client = client::PlannerClient::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

}  // namespace eplb::testing

#endif  // EPLB_TESTS_CLIENT_CONNECT_H_
