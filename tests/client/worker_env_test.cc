#include "client/worker_env.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

namespace eplb::client {
namespace {

// A fake environment: the variables in `vars`, nothing else.
std::function<const char*(const char*)> Env(const std::map<std::string, std::string>& vars) {
  return [vars](const char* name) -> const char* {
    const auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
}

const std::map<std::string, std::string> kMinimal = {
    {"EPLB_PLANNER", "eplb-planner:50051"}, {"EPLB_DEPLOYMENT", "ds-v3"}, {"EPLB_RANK", "7"}};

TEST(WorkerEnvTest, ReadsTheRequiredVariablesWithDefaultsForTheRest) {
  auto env = WorkerEnvFromEnvironment(Env(kMinimal));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->planner, "eplb-planner:50051");
  EXPECT_EQ(env->deployment, "ds-v3");
  EXPECT_EQ(env->rank, 7);
  EXPECT_EQ(env->local_device, -1);
  EXPECT_EQ(env->token, "");
  EXPECT_EQ(env->tls_ca_file, "");
  EXPECT_EQ(env->sync_every_steps, 16);
  EXPECT_EQ(env->report_every_steps, 100);

  auto full = kMinimal;
  full.insert({{"EPLB_LOCAL_DEVICE", "3"},
               {"EPLB_TOKEN", "s3cret"},
               {"EPLB_TLS_CA", "/etc/eplb/ca.pem"},
               {"EPLB_SYNC_EVERY_STEPS", "32"},
               {"EPLB_REPORT_EVERY_STEPS", "500"}});
  env = WorkerEnvFromEnvironment(Env(full));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->local_device, 3);
  EXPECT_EQ(env->token, "s3cret");
  EXPECT_EQ(env->tls_ca_file, "/etc/eplb/ca.pem");
  EXPECT_EQ(env->sync_every_steps, 32);
  EXPECT_EQ(env->report_every_steps, 500);
}

struct BadCase {
  const char* name;
  const char* variable;
  const char* value;  // nullptr: unset
  const char* message;
};

class WorkerEnvBadTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(WorkerEnvBadTest, NamesTheVariable) {
  auto vars = kMinimal;
  vars.erase(GetParam().variable);
  if (GetParam().value != nullptr) vars[GetParam().variable] = GetParam().value;
  EXPECT_EQ(WorkerEnvFromEnvironment(Env(vars)).status(),
            absl::InvalidArgumentError(GetParam().message));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, WorkerEnvBadTest,
    ::testing::Values(
        BadCase{"no_planner", "EPLB_PLANNER", nullptr, "EPLB_PLANNER is required"},
        BadCase{"empty_deployment", "EPLB_DEPLOYMENT", "", "EPLB_DEPLOYMENT is required"},
        BadCase{"no_rank", "EPLB_RANK", nullptr, "EPLB_RANK is required"},
        BadCase{"rank_not_integer", "EPLB_RANK", "seven",
                "EPLB_RANK = \"seven\" is not an integer"},
        BadCase{"negative_rank", "EPLB_RANK", "-1", "EPLB_RANK = -1 is out of range [0, 65535]"},
        BadCase{"device_too_big", "EPLB_LOCAL_DEVICE", "4096",
                "EPLB_LOCAL_DEVICE = 4096 is out of range [0, 1023]"},
        BadCase{"sync_zero", "EPLB_SYNC_EVERY_STEPS", "0",
                "EPLB_SYNC_EVERY_STEPS = 0 is out of range [1, 1000000]"},
        BadCase{"report_not_integer", "EPLB_REPORT_EVERY_STEPS", "1e3",
                "EPLB_REPORT_EVERY_STEPS = \"1e3\" is not an integer"}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace eplb::client
