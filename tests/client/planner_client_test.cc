// Tests of PlannerClient against a real planner on 127.0.0.1:0 (in-process,
// tests/server/test_env.h): every RPC, errors with their details, bearer tokens, TLS and mutual
// TLS, and the Watch stream (Next, Ack, Cancel from another thread, the final status). Option
// errors need no server.
#include "client/planner_client.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/load_reporter.h"
#include "core/expert_map.h"
#include "core/file_io.h"
#include "grpcpp/server_builder.h"
#include "proto/convert.h"
#include "tests/client/connect.h"
#include "tests/server/test_env.h"
#include "tests/support/subprocess.h"

namespace eplb {
namespace {

namespace fs = std::filesystem;
using client::PlannerClient;
using client::PlannerClientOptions;
using ::testing::HasSubstr;
using testing::PlannerEnv;
using testing::Reason;

using testing::Connect;

// Dense counts for L layers of E experts, skewed towards high expert indices.
std::vector<std::vector<double>> SkewedCounts(int layers, int experts) {
  std::vector<std::vector<double>> counts(layers, std::vector<double>(experts));
  for (int l = 0; l < layers; ++l) {
    for (int e = 0; e < experts; ++e) counts[l][e] = (e + 1) * (e + 1) + l;
  }
  return counts;
}

// ---- Map deltas (proto/convert.h, what a watch rebuilds maps with)
// -------------------------------

// A map of `layers` layers, E experts, P slots on 2 ranks: slot p holds expert p % E, and
// replicas are ranked in slot order unless `reversed` (then the last slot's replica is 0).
v1::ExpertMap TestMap(int layers, int experts, int slots, bool reversed = false) {
  v1::ExpertMap map;
  map.set_num_layers(layers);
  map.set_num_logical_experts(experts);
  map.set_num_physical_experts(slots);
  map.set_num_ranks(2);
  for (int l = 0; l < layers; ++l) {
    std::vector<int> count(experts);
    for (int p = 0; p < slots; ++p) map.add_phy2log((p + l) % experts);
    for (int p = 0; p < slots; ++p) {
      const int e = (p + l) % experts;
      const int replicas =
          slots / experts + (((e - l) % experts + experts) % experts < slots % experts ? 1 : 0);
      const int k = count[e]++;
      map.add_replica_rank(reversed ? replicas - 1 - k : k);
    }
  }
  return map;
}

v1::ExpertMap ShapeOf(const v1::ExpertMap& map) {
  v1::ExpertMap shape = map;
  shape.clear_phy2log();
  shape.clear_replica_rank();
  return shape;
}

TEST(MapDeltaTest, RowsRoundTripInEveryWidthAndReplicaOrder) {
  for (const auto& [experts, slots, reversed] : std::vector<std::tuple<int, int, bool>>{
           {8, 12, false}, {8, 12, true}, {300, 320, false}, {300, 640, true}}) {
    const v1::ExpertMap base = TestMap(3, experts, slots);
    const v1::ExpertMap next = TestMap(3, experts, slots, reversed);
    ASSERT_TRUE(ExpertMapFromProto(next).ok()) << ExpertMapFromProto(next).status();
    v1::MapDelta all;
    const int32_t every[] = {0, 1, 2};
    AppendMapRows(next, every, &all);
    EXPECT_EQ(all.phy2log().size(), 3u * slots * (experts <= 256 ? 1 : 2));
    EXPECT_EQ(all.replica_rank_size(), reversed ? 3 * slots : 0);
    auto rebuilt = ApplyMapDelta(nullptr, ShapeOf(next), all);
    ASSERT_TRUE(rebuilt.ok()) << rebuilt.status();
    EXPECT_EQ(rebuilt->SerializeAsString(), next.SerializeAsString()) << experts << reversed;

    // One layer over a base whose other layers already match.
    v1::ExpertMap mixed = next;
    for (int p = slots; p < 2 * slots; ++p) {
      mixed.set_phy2log(p, base.phy2log(p));
      mixed.set_replica_rank(p, base.replica_rank(p));
    }
    v1::MapDelta one;
    one.set_base_version(4);
    const int32_t middle[] = {1};
    AppendMapRows(mixed, middle, &one);
    auto applied = ApplyMapDelta(&next, ShapeOf(next), one);
    ASSERT_TRUE(applied.ok()) << applied.status();
    EXPECT_EQ(applied->SerializeAsString(), mixed.SerializeAsString());
  }
}

TEST(MapDeltaTest, DeltasThatDoNotFitAreRefusedNamingWhy) {
  const v1::ExpertMap base = TestMap(3, 8, 12);
  const v1::ExpertMap shape = ShapeOf(base);
  v1::MapDelta good;
  good.set_base_version(2);
  const int32_t layers[] = {0, 2};
  AppendMapRows(base, layers, &good);
  ASSERT_TRUE(ApplyMapDelta(&base, shape, good).ok());
  const auto error = [&](const v1::ExpertMap* b, const v1::ExpertMap& s, const v1::MapDelta& d) {
    return ApplyMapDelta(b, s, d).status();
  };
  v1::MapDelta unordered = good;
  unordered.set_layers(1, 0);
  EXPECT_EQ(
      error(&base, shape, unordered),
      absl::InvalidArgumentError("map_delta.layers[1] = 0 is out of order or out of range [0, 3)"));
  v1::MapDelta beyond = good;
  beyond.set_layers(1, 3);
  EXPECT_EQ(
      error(&base, shape, beyond),
      absl::InvalidArgumentError("map_delta.layers[1] = 3 is out of order or out of range [0, 3)"));
  v1::MapDelta short_rows = good;
  short_rows.mutable_phy2log()->pop_back();
  EXPECT_EQ(error(&base, shape, short_rows),
            absl::InvalidArgumentError(
                "map_delta.phy2log has 23 bytes, expected 2 layers × 12 slots × 1"));
  v1::MapDelta ranks = good;
  ranks.add_replica_rank(0);
  EXPECT_EQ(error(&base, shape, ranks),
            absl::InvalidArgumentError("map_delta.replica_rank has 1 entries, expected 0 or 24"));
  EXPECT_EQ(
      error(nullptr, shape, good),
      absl::InvalidArgumentError("map_delta: without a base it must list all 3 layers, not 2"));
  v1::ExpertMap other = shape;
  other.set_num_ranks(4);
  EXPECT_EQ(error(&base, other, good),
            absl::InvalidArgumentError(
                "map_delta: the base map (version 2) does not have the plan's shape with every "
                "row"));
  // Shapes beyond the planner's limits are refused before anything is sized by them.
  v1::ExpertMap huge = shape;
  huge.set_num_logical_experts(std::numeric_limits<int32_t>::max());
  huge.set_num_physical_experts(std::numeric_limits<int32_t>::max());
  EXPECT_EQ(error(nullptr, huge, good),
            absl::InvalidArgumentError(
                "map_delta: the plan's map shape is not a map's: num_logical_experts = 2147483647 "
                "is out of range [1, 65536]"));
  v1::ExpertMap empty = shape;
  empty.set_num_ranks(0);
  EXPECT_EQ(error(&base, empty, good),
            absl::InvalidArgumentError(
                "map_delta: the plan's map shape is not a map's: num_ranks = 0 is out of range "
                "[1, 65536]"));
}

TEST(MapDeltaTest, TheContentHashCoversReplicaRanks) {
  const v1::ExpertMap slot_order = TestMap(3, 8, 12);
  const v1::ExpertMap reversed = TestMap(3, 8, 12, /*reversed=*/true);
  ASSERT_EQ(ExpertMapFromProto(slot_order)->Hash(), ExpertMapFromProto(reversed)->Hash());
  EXPECT_NE(MapContentHash(slot_order), MapContentHash(reversed));
  EXPECT_EQ(MapContentHash(slot_order), MapContentHash(TestMap(3, 8, 12)));
  v1::ExpertMap without_ranks = slot_order;
  without_ranks.clear_replica_rank();
  EXPECT_NE(MapContentHash(without_ranks), MapContentHash(slot_order));
}

// ---- Options ------------------------------------------------------------------------------------

class PlannerClientOptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir();
    ca_ = Write("ca.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& contents) {
    const std::string path = (fs::path(dir_) / name).string();
    std::ofstream(path) << contents;
    return path;
  }
  absl::Status CreateError(const PlannerClientOptions& options) {
    return PlannerClient::Create(options).status();
  }

  std::string dir_;
  std::string ca_;
};

TEST_F(PlannerClientOptionsTest, InconsistentOptionsAreRefused) {
  EXPECT_EQ(CreateError({}), absl::InvalidArgumentError("the server address is required"));
  EXPECT_EQ(CreateError({.server = "h:1", .tls_ca_file = ca_, .tls_cert_file = ca_}),
            absl::InvalidArgumentError(
                "a client certificate needs both its certificate and its key file"));
  EXPECT_EQ(CreateError({.server = "h:1", .tls_cert_file = ca_, .tls_key_file = ca_}),
            absl::InvalidArgumentError(
                "a client certificate or a TLS server name needs TLS (a CA file)"));
  EXPECT_EQ(CreateError({.server = "h:1", .tls_server_name = "x"}),
            absl::InvalidArgumentError(
                "a client certificate or a TLS server name needs TLS (a CA file)"));
  EXPECT_EQ(CreateError({.server = "h:1", .rpc_timeout = absl::ZeroDuration()}),
            absl::InvalidArgumentError("the RPC timeout must be positive"));
  EXPECT_EQ(CreateError({.server = "h:1", .max_message_bytes = 0}),
            absl::InvalidArgumentError("the maximum message size must be positive"));
  EXPECT_TRUE(PlannerClient::Create({.server = "h:1"}).ok());
  EXPECT_TRUE(PlannerClient::Create({.server = "h:1", .tls_ca_file = ca_}).ok());
}

TEST_F(PlannerClientOptionsTest, PemFilesAreNamed) {
  const std::string missing = (fs::path(dir_) / "missing.pem").string();
  EXPECT_EQ(
      CreateError({.server = "h:1", .tls_ca_file = missing}),
      absl::NotFoundError(absl::StrCat("cannot open ", missing, ": No such file or directory")));
  const std::string text = Write("text.pem", "hello\n");
  EXPECT_EQ(CreateError({.server = "h:1", .tls_ca_file = text}),
            absl::InvalidArgumentError(absl::StrCat(text, " holds no PEM certificate")));
  EXPECT_EQ(
      CreateError({.server = "h:1", .tls_ca_file = ca_, .tls_cert_file = ca_, .tls_key_file = ca_}),
      absl::InvalidArgumentError(absl::StrCat(ca_, " holds no PEM private key")));
}

TEST(PlannerClientTest, UnreachableServerIsUnavailable) {
  auto client = PlannerClient::Create({.server = "127.0.0.1:1"});
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->ListDeployments().status().code(), absl::StatusCode::kUnavailable);
  const v1::LoadReport report;
  EXPECT_EQ((*client)->ReportLoad({&report, 1}).status().code(), absl::StatusCode::kUnavailable);
  v1::WatchPlansRequest::Subscribe subscribe;
  subscribe.set_deployment("d");
  auto watch = (*client)->StartWatch(subscribe);
  const absl::Status status = watch.ok() ? (*watch)->Next().status() : watch.status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
}

// A server that answers UNAVAILABLE to the first `failures` calls of each method, as a planner
// does while it restarts (a stand-in at the network boundary: the retries under test are the
// client channel's).
class FlakyPlanner final : public v1::Planner::Service {
 public:
  explicit FlakyPlanner(int failures) : failures_(failures) {}
  grpc::Status GetPlan(grpc::ServerContext*, const v1::GetPlanRequest* request,
                       v1::Plan* plan) override {
    if (++get_plan_calls <= failures_) return {grpc::StatusCode::UNAVAILABLE, "restarting"};
    plan->set_version(request->version());
    return grpc::Status::OK;
  }
  grpc::Status DeleteDeployment(grpc::ServerContext*, const v1::DeleteDeploymentRequest*,
                                v1::DeleteDeploymentResponse*) override {
    if (++delete_calls <= failures_) return {grpc::StatusCode::UNAVAILABLE, "restarting"};
    return grpc::Status::OK;
  }
  std::atomic<int> get_plan_calls = 0;
  std::atomic<int> delete_calls = 0;

 private:
  const int failures_;
};

std::unique_ptr<grpc::Server> Serve(grpc::Service* service, int* port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), port);
  builder.RegisterService(service);
  return builder.BuildAndStart();
}

TEST(PlannerClientTest, ReadsAreRetriedWhileThePlannerIsUnavailableAndChangesAreNot) {
  FlakyPlanner flaky(/*failures=*/2);
  int port = 0;
  auto server = Serve(&flaky, &port);
  ASSERT_NE(server, nullptr);
  auto client = PlannerClient::Create({.server = absl::StrCat("127.0.0.1:", port)});
  ASSERT_TRUE(client.ok());
  auto plan = (*client)->GetPlan("d", 3);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->version(), 3);
  EXPECT_EQ(flaky.get_plan_calls, 3);
  // A delete that may have happened is not repeated behind the caller's back.
  EXPECT_EQ((*client)->DeleteDeployment("d").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(flaky.delete_calls, 1);
  server->Shutdown();
}

// A planner (or a proxy) that ends a ReportLoad stream early without an error: it counts every
// report but the last.
class ForgetfulPlanner final : public v1::Planner::Service {
 public:
  grpc::Status ReportLoad(grpc::ServerContext*, grpc::ServerReader<v1::LoadReport>* reader,
                          v1::ReportSummary* summary) override {
    v1::LoadReport report;
    int64_t read = 0;
    while (reader->Read(&report)) ++read;
    summary->set_accepted(read - 1);
    return grpc::Status::OK;
  }
};

TEST(PlannerClientTest, ASummaryThatDoesNotCountEveryReportIsDataLoss) {
  ForgetfulPlanner forgetful;
  int port = 0;
  auto server = Serve(&forgetful, &port);
  ASSERT_NE(server, nullptr);
  auto connected = PlannerClient::Create({.server = absl::StrCat("127.0.0.1:", port)});
  ASSERT_TRUE(connected.ok());
  std::vector<v1::LoadReport> reports(2);
  const absl::Status status = (*connected)->ReportLoad(reports).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(status.message(), "the planner counted 1 of 2 load reports (1 accepted, 0 duplicates)");

  // The load reporter keeps such reports and tries again; they are not counted as accepted.
  auto reporter =
      client::LoadReporter::Create(connected->get(), {.deployment = "d",
                                                      .num_layers = 1,
                                                      .num_experts = 2,
                                                      .flush_every_steps = 1,
                                                      .initial_backoff = absl::Milliseconds(1),
                                                      .max_backoff = absl::Milliseconds(5)});
  ASSERT_TRUE(reporter.ok()) << reporter.status();
  ASSERT_TRUE((*reporter)->AddStep(0, 1, std::vector<double>{1, 2}).ok());
  EXPECT_EQ((*reporter)->Flush(absl::Milliseconds(200)).code(),
            absl::StatusCode::kDeadlineExceeded);
  const client::LoadReporter::Stats stats = (*reporter)->stats();
  EXPECT_EQ(stats.reports_accepted, 0);
  EXPECT_EQ(stats.reports_pending, 1);
  EXPECT_GE(stats.failed_attempts, 1);
  EXPECT_THAT(stats.last_error, HasSubstr("the planner counted 0 of 1 load reports"));
  reporter->reset();
  server->Shutdown();
}

TEST(PlannerClientTest, ReadRetriesStopAfterFourAttempts) {
  FlakyPlanner flaky(/*failures=*/100);
  int port = 0;
  auto server = Serve(&flaky, &port);
  ASSERT_NE(server, nullptr);
  auto client = PlannerClient::Create({.server = absl::StrCat("127.0.0.1:", port)});
  ASSERT_TRUE(client.ok());
  const auto plan = (*client)->GetPlan("d", 3);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(plan.status().message(), "restarting");
  EXPECT_EQ(flaky.get_plan_calls, 4);
  server->Shutdown();
}

// ---- RPCs against a planner ---------------------------------------------------------------------

TEST(PlannerClientTest, EveryCallRoundTrips) {
  PlannerEnv env;
  auto client = Connect(env);
  ASSERT_NE(client, nullptr);

  v1::DeploymentSpec spec = testing::Spec("d1", 2, 8, 8, 2);
  spec.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
  auto created = client->CreateDeployment(spec);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->spec().name(), "d1");
  EXPECT_EQ(created->committed_version(), 1);
  auto again = client->CreateDeployment(spec);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->committed_version(), 1);

  auto got = client->GetDeployment("d1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->spec().shape().num_ranks(), 2);
  auto listed = client->ListDeployments();
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].spec().name(), "d1");

  std::vector<v1::LoadReport> reports;
  for (int rank = 0; rank < 2; ++rank) {
    reports.push_back(testing::Report("d1", rank, 1, 0, 9, SkewedCounts(2, 8)));
  }
  reports.push_back(reports[0]);  // a retry: not counted again
  auto summary = client->ReportLoad(reports);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->accepted(), 2);
  EXPECT_EQ(summary->duplicates(), 1);

  auto load = client->GetLoad("d1");
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->num_layers(), 2);
  EXPECT_EQ(load->smoothed_load_size(), 16);

  auto dry = client->Rebalance("d1", /*dry_run=*/true);
  ASSERT_TRUE(dry.ok()) << dry.status();
  EXPECT_EQ(dry->version(), 0);
  auto plan = client->Rebalance("d1");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->version(), 2);

  auto committed = client->GetPlan("d1");
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_EQ(committed->version(), 2);
  auto map = ExpertMapFromProto(committed->map());
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->Hash(), committed->map_hash());
  auto first = client->GetPlan("d1", 1);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->reason(), v1::INITIAL);

  auto plans = client->ListPlans("d1");
  ASSERT_TRUE(plans.ok()) << plans.status();
  ASSERT_EQ(plans->size(), 2u);
  EXPECT_EQ((*plans)[0].version(), 2);
  EXPECT_FALSE((*plans)[0].has_map());
  auto with_maps = client->ListPlans("d1", /*include_maps=*/true);
  ASSERT_TRUE(with_maps.ok()) << with_maps.status();
  EXPECT_TRUE((*with_maps)[1].has_map());

  ASSERT_TRUE(client->DeleteDeployment("d1").ok());
  EXPECT_TRUE(client->ListDeployments()->empty());
}

TEST(PlannerClientTest, ErrorsKeepTheirDetail) {
  PlannerEnv env;
  auto client = Connect(env);
  ASSERT_NE(client, nullptr);
  const absl::Status missing = client->GetDeployment("nope").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Reason(missing), v1::DEPLOYMENT_NOT_FOUND);

  v1::DeploymentSpec spec = testing::Spec("d1", 2, 8, 8, 2);
  spec.mutable_shape()->set_num_ranks(0);
  const absl::Status invalid = client->CreateDeployment(spec).status();
  EXPECT_EQ(invalid.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Reason(invalid), v1::FIELD_OUT_OF_RANGE) << invalid;
  EXPECT_THAT(StatusToDisplayString(invalid), HasSubstr("num_ranks"));

  // A report stream ends at the first bad report, with its error.
  ASSERT_TRUE(client->CreateDeployment(testing::Spec("d2", 2, 8, 8, 2)).ok());
  std::vector<v1::LoadReport> reports = {testing::Report("d2", 0, 1, 0, 0, SkewedCounts(2, 8)),
                                         testing::Report("d2", 5, 1, 0, 0, SkewedCounts(2, 8))};
  const absl::Status bad_rank = client->ReportLoad(reports).status();
  EXPECT_EQ(bad_rank.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Reason(bad_rank), v1::UNKNOWN_RANK) << bad_rank;
}

TEST(PlannerClientTest, BearerToken) {
  server::PlannerServerOptions options;
  options.service.bearer_token = "s3cret-0123456789abcdef";
  PlannerEnv env(options);
  auto anonymous = Connect(env);
  const absl::Status refused = anonymous->ListDeployments().status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Reason(refused), v1::UNAUTHENTICATED_TOKEN);
  auto wrong = Connect(env, {.bearer_token = "guess"});
  EXPECT_EQ(wrong->ListDeployments().status().code(), absl::StatusCode::kUnauthenticated);
  auto client = Connect(env, {.bearer_token = "s3cret-0123456789abcdef"});
  EXPECT_TRUE(client->ListDeployments().ok());
  // Streams carry it too.
  ASSERT_TRUE(client->CreateDeployment(testing::Spec("d1", 1, 4, 4, 2)).ok());
  v1::WatchPlansRequest::Subscribe subscribe;
  subscribe.set_deployment("d1");
  subscribe.set_rank(-1);
  auto watch = client->StartWatch(subscribe);
  ASSERT_TRUE(watch.ok()) << watch.status();
  auto first = (*watch)->Next();
  ASSERT_TRUE(first.ok()) << first.status();
  const v1::LoadReport report = testing::Report("d1", 0, 1, 0, 0, SkewedCounts(1, 4));
  EXPECT_TRUE(client->ReportLoad({&report, 1}).ok());
  EXPECT_EQ(anonymous->ReportLoad({&report, 1}).status().code(),
            absl::StatusCode::kUnauthenticated);
}

// ---- TLS ----------------------------------------------------------------------------------------

// A CA, a server certificate for "planner.test" and a client certificate, made with openssl.
class PlannerClientTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists("/usr/bin/openssl")) GTEST_SKIP() << "no /usr/bin/openssl";
    dir_ = testing::MakeTempDir();
    const std::string script = absl::StrCat(
        "set -e; cd ", dir_,
        "; K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'"
        "; openssl req -x509 $K -keyout ca.key -out ca.pem -days 3650 -subj /CN=eplb-test-ca"
        "; printf 'subjectAltName=DNS:planner.test\\n' > server.ext"
        "; openssl req $K -keyout server.key -out server.csr -subj /CN=planner.test"
        "; openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
        "-out server.pem -days 3650 -extfile server.ext"
        "; openssl req $K -keyout client.key -out client.csr -subj /CN=rank-0"
        "; openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
        "-out client.pem -days 3650");
    const testing::ProcessResult r =
        testing::RunProcess({"/bin/sh", "-c", script}, fs::path(dir_) / "openssl");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }
  std::string Read(const std::string& name) const { return *ReadFileToString(Path(name)); }

  server::PlannerServerOptions ServerOptions(bool mutual) const {
    server::PlannerServerOptions options;
    options.tls_cert_pem = Read("server.pem");
    options.tls_key_pem = Read("server.key");
    if (mutual) options.tls_client_ca_pem = Read("ca.pem");
    return options;
  }

  std::string dir_;
};

TEST_F(PlannerClientTlsTest, ServerVerifiedUnderItsName) {
  PlannerEnv env(ServerOptions(/*mutual=*/false));
  auto client = Connect(env, {.tls_ca_file = Path("ca.pem"), .tls_server_name = "planner.test"});
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(client->ListDeployments().ok()) << client->ListDeployments().status();
  // The certificate is for planner.test, not for the address connected to.
  auto wrong_name = Connect(env, {.tls_ca_file = Path("ca.pem")});
  EXPECT_EQ(wrong_name->ListDeployments().status().code(), absl::StatusCode::kUnavailable);
  auto plaintext = Connect(env);
  EXPECT_EQ(plaintext->ListDeployments().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(PlannerClientTlsTest, MutualTls) {
  PlannerEnv env(ServerOptions(/*mutual=*/true));
  auto client = Connect(env, {.tls_ca_file = Path("ca.pem"),
                              .tls_cert_file = Path("client.pem"),
                              .tls_key_file = Path("client.key"),
                              .tls_server_name = "planner.test"});
  EXPECT_TRUE(client->ListDeployments().ok()) << client->ListDeployments().status();
  auto no_cert = Connect(env, {.tls_ca_file = Path("ca.pem"), .tls_server_name = "planner.test"});
  EXPECT_EQ(no_cert->ListDeployments().status().code(), absl::StatusCode::kUnavailable);
}

// ---- Watch --------------------------------------------------------------------------------------

v1::WatchPlansRequest::Subscribe Subscription(const std::string& deployment, int rank) {
  v1::WatchPlansRequest::Subscribe subscribe;
  subscribe.set_deployment(deployment);
  subscribe.set_rank(rank);
  return subscribe;
}

TEST(PlannerClientWatchTest, CurrentPlanThenUpdatesThenCancel) {
  PlannerEnv env;
  auto client = Connect(env);
  v1::DeploymentSpec spec = testing::Spec("d1", 2, 8, 8, 2);
  spec.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
  ASSERT_TRUE(client->CreateDeployment(spec).ok());
  auto watch = client->StartWatch(Subscription("d1", -1));
  ASSERT_TRUE(watch.ok()) << watch.status();
  auto first = (*watch)->Next();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->plan().version(), 1);
  EXPECT_EQ(first->plan().state(), v1::COMMITTED);

  const v1::LoadReport report = testing::Report("d1", 0, 1, 0, 0, SkewedCounts(2, 8));
  ASSERT_TRUE(client->ReportLoad({&report, 1}).ok());
  ASSERT_TRUE(client->Rebalance("d1").ok());
  auto second = (*watch)->Next();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->plan().version(), 2);
  EXPECT_NE(second->nonce(), first->nonce());

  // Cancel wakes a reader blocked in Next().
  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(200));
    (*watch)->Cancel();
  });
  const absl::Status ended = (*watch)->Next().status();
  canceller.join();
  EXPECT_EQ(ended.code(), absl::StatusCode::kCancelled) << ended;
  EXPECT_EQ((*watch)->Next().status(), ended);
  EXPECT_EQ((*watch)->Ack({}).code(), absl::StatusCode::kFailedPrecondition);
  (*watch)->Cancel();  // idempotent
}

TEST(PlannerClientWatchTest, SubscriptionErrorsComeFromNext) {
  PlannerEnv env;
  auto client = Connect(env);
  auto watch = client->StartWatch(Subscription("nope", -1));
  ASSERT_TRUE(watch.ok()) << watch.status();
  const absl::Status status = (*watch)->Next().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Reason(status), v1::DEPLOYMENT_NOT_FOUND);
}

TEST(PlannerClientWatchTest, DeletingTheDeploymentEndsTheWatch) {
  PlannerEnv env;
  auto client = Connect(env);
  ASSERT_TRUE(client->CreateDeployment(testing::Spec("d1", 1, 4, 4, 2)).ok());
  auto watch = client->StartWatch(Subscription("d1", -1));
  ASSERT_TRUE(watch.ok());
  ASSERT_TRUE((*watch)->Next().ok());
  ASSERT_TRUE(client->DeleteDeployment("d1").ok());
  EXPECT_EQ((*watch)->Next().status().code(), absl::StatusCode::kNotFound);
}

// A STAGED ack of the plan `response` carried, with its nonce and map hash.
v1::WatchPlansRequest::Ack StagedAck(const v1::WatchPlansResponse& response) {
  v1::WatchPlansRequest::Ack ack;
  ack.set_version(response.plan().version());
  ack.set_nonce(response.nonce());
  ack.set_state(v1::STAGED);
  ack.set_map_hash(response.plan().map_hash());
  return ack;
}

TEST(PlannerClientWatchTest, RanksAcknowledgeAndThePlanCommits) {
  PlannerEnv env;
  auto client = Connect(env);
  ASSERT_TRUE(client->CreateDeployment(testing::Spec("d1", 2, 8, 8, 2)).ok());  // acked
  std::vector<std::unique_ptr<PlannerClient::Watch>> ranks;
  for (int rank = 0; rank < 2; ++rank) {
    auto watch = client->StartWatch(Subscription("d1", rank));
    ASSERT_TRUE(watch.ok()) << watch.status();
    auto current = (*watch)->Next();
    ASSERT_TRUE(current.ok()) << current.status();
    EXPECT_EQ(current->plan().version(), 1);
    ranks.push_back(*std::move(watch));
  }
  const v1::LoadReport report = testing::Report("d1", 0, 1, 0, 0, SkewedCounts(2, 8));
  ASSERT_TRUE(client->ReportLoad({&report, 1}).ok());
  auto published = client->Rebalance("d1");
  ASSERT_TRUE(published.ok()) << published.status();
  EXPECT_EQ(published->state(), v1::PENDING);

  for (auto& watch : ranks) {
    auto pending = watch->Next();
    ASSERT_TRUE(pending.ok()) << pending.status();
    ASSERT_EQ(pending->plan().version(), 2);
    ASSERT_EQ(pending->plan().state(), v1::PENDING);
    ASSERT_TRUE(watch->Ack(StagedAck(*pending)).ok());
  }
  for (auto& watch : ranks) {
    auto committed = watch->Next();
    ASSERT_TRUE(committed.ok()) << committed.status();
    EXPECT_EQ(committed->plan().version(), 2);
    EXPECT_EQ(committed->plan().state(), v1::COMMITTED);
  }
  EXPECT_EQ(client->GetDeployment("d1")->committed_version(), 2);
}

// Publishes a plan of deployment `d` (4 layers, 8 experts, `ranks` ranks) from load that every
// rank reports, skewed by `seed`; returns it.
v1::Plan PublishSkewed(PlannerClient& client, const std::string& d, int seed, int ranks = 2) {
  std::vector<std::vector<double>> counts = SkewedCounts(4, 8);
  for (auto& layer : counts) std::rotate(layer.begin(), layer.begin() + seed % 8, layer.end());
  std::vector<v1::LoadReport> reports;
  for (int rank = 0; rank < ranks; ++rank) {
    reports.push_back(testing::Report(d, rank, seed + 1, seed * 10, seed * 10 + 9, counts));
  }
  EXPECT_TRUE(client.ReportLoad(reports).ok());
  auto plan = client.Rebalance(d);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? *plan : v1::Plan();
}

// The response's map is the planner's map of that version, whole, and hashes to map_hash.
void ExpectWholeMap(PlannerClient& client, const v1::WatchPlansResponse& response) {
  EXPECT_FALSE(response.has_map_delta());
  auto stored = client.GetPlan("d1", response.plan().version());
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(response.plan().map().SerializeAsString(), stored->map().SerializeAsString());
  auto map = ExpertMapFromProto(response.plan().map(), "map");
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->Hash(), response.plan().map_hash());
}

// The watch's next response is plan `version` with its whole, exact map, and so far `delta` maps
// arrived as deltas and `fetched` were fetched.
void ExpectNext(PlannerClient& client, PlannerClient::Watch& watch, int64_t version, int64_t delta,
                int64_t fetched) {
  auto next = watch.Next();
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->plan().version(), version);
  ExpectWholeMap(client, *next);
  EXPECT_EQ(watch.map_arrivals().delta, delta);
  EXPECT_EQ(watch.map_arrivals().fetched, fetched);
}

v1::DeploymentSpec ImmediateSpec() {
  v1::DeploymentSpec spec = testing::Spec("d1", 4, 8, 12, 2);
  spec.set_commit_mode(v1::COMMIT_MODE_IMMEDIATE);
  return spec;
}

TEST(PlannerClientWatchTest, PlansArriveAsDeltasAndAreRebuiltWhole) {
  PlannerEnv env;
  auto client = Connect(env);
  ASSERT_TRUE(client->CreateDeployment(ImmediateSpec()).ok());
  auto watch = client->StartWatch(Subscription("d1", -1));
  ASSERT_TRUE(watch.ok()) << watch.status();
  auto first = (*watch)->Next();
  ASSERT_TRUE(first.ok()) << first.status();
  ExpectWholeMap(*client, *first);
  for (int seed = 1; seed <= 3; ++seed) {
    const v1::Plan published = PublishSkewed(*client, "d1", seed);
    auto next = (*watch)->Next();
    ASSERT_TRUE(next.ok()) << next.status();
    EXPECT_EQ(next->plan().version(), published.version());
    ExpectWholeMap(*client, *next);
  }
  const PlannerClient::Watch::MapArrivals arrivals = (*watch)->map_arrivals();
  EXPECT_EQ(arrivals.whole, 1);
  EXPECT_EQ(arrivals.delta, 3);
  EXPECT_EQ(arrivals.fetched, 0);
}

TEST(PlannerClientWatchTest, AResumedWatchGetsDeltasAgainstTheMapsOfTheOneBefore) {
  PlannerEnv env;
  auto client = Connect(env);
  ASSERT_TRUE(client->CreateDeployment(ImmediateSpec()).ok());
  PublishSkewed(*client, "d1", 1);  // version 2
  auto before = client->StartWatch(Subscription("d1", -1));
  ASSERT_TRUE(before.ok());
  ASSERT_EQ((*before)->Next()->plan().version(), 2);
  (*before)->Cancel();
  EXPECT_EQ((*before)->Next().status().code(), absl::StatusCode::kCancelled);

  PublishSkewed(*client, "d1", 2);  // version 3, missed while away
  v1::WatchPlansRequest::Subscribe subscribe = Subscription("d1", -1);
  subscribe.set_known_version(2);
  auto resumed = client->StartWatch(subscribe, before->get());
  ASSERT_TRUE(resumed.ok());
  ExpectNext(*client, **resumed, 3, /*delta=*/1, /*fetched=*/0);

  // Without the earlier watch's maps, the same subscription fetches the map whole.
  auto bare = client->StartWatch(subscribe);
  ASSERT_TRUE(bare.ok());
  ExpectNext(*client, **bare, 3, /*delta=*/0, /*fetched=*/1);
}

TEST(PlannerClientWatchTest, AHeldMapOfAnEarlierDeploymentOfTheSameNameIsNeverUsed) {
  PlannerEnv env;
  auto client = Connect(env);
  ASSERT_TRUE(client->CreateDeployment(ImmediateSpec()).ok());
  PublishSkewed(*client, "d1", 1);  // version 2
  auto old = client->StartWatch(Subscription("d1", -1));
  ASSERT_TRUE(old.ok());
  auto held = (*old)->Next();
  ASSERT_TRUE(held.ok());
  ASSERT_EQ(held->plan().version(), 2);
  ASSERT_TRUE(client->DeleteDeployment("d1").ok());
  EXPECT_EQ((*old)->Next().status().code(), absl::StatusCode::kNotFound);

  // Created again: its version 2 has another map, and version 3 is built on that one.
  ASSERT_TRUE(client->CreateDeployment(ImmediateSpec()).ok());
  const v1::Plan v2 = PublishSkewed(*client, "d1", 5);
  ASSERT_EQ(v2.version(), 2);
  ASSERT_NE(v2.map_hash(), held->plan().map_hash());
  PublishSkewed(*client, "d1", 6);  // version 3
  v1::WatchPlansRequest::Subscribe subscribe = Subscription("d1", -1);
  subscribe.set_known_version(2);
  auto watch = client->StartWatch(subscribe, old->get());
  ASSERT_TRUE(watch.ok());
  ExpectNext(*client, **watch, 3, /*delta=*/0, /*fetched=*/1);
}

// A watch of deployment d1 for each of its `num_ranks` ranks, each past its current plan.
void WatchEveryRank(PlannerClient& client, int num_ranks,
                    std::vector<std::unique_ptr<PlannerClient::Watch>>& ranks) {
  for (int rank = 0; rank < num_ranks; ++rank) {
    auto watch = client.StartWatch(Subscription("d1", rank));
    ASSERT_TRUE(watch.ok()) << watch.status();
    ASSERT_TRUE((*watch)->Next().ok());
    ranks.push_back(*std::move(watch));
  }
}

TEST(PlannerClientWatchTest, ACommitArrivesWithoutTheMapAndComesBackWhole) {
  PlannerEnv env;
  auto client = Connect(env);
  ASSERT_TRUE(client->CreateDeployment(testing::Spec("d1", 4, 8, 12, 2)).ok());  // acked
  std::vector<std::unique_ptr<PlannerClient::Watch>> ranks;
  ASSERT_NO_FATAL_FAILURE(WatchEveryRank(*client, 2, ranks));
  PublishSkewed(*client, "d1", 1);
  for (auto& watch : ranks) {
    auto pending = watch->Next();
    ASSERT_TRUE(pending.ok()) << pending.status();
    ASSERT_EQ(pending->plan().state(), v1::PENDING);
    ExpectWholeMap(*client, *pending);
    ASSERT_TRUE(watch->Ack(StagedAck(*pending)).ok());
  }
  for (auto& watch : ranks) {
    auto committed = watch->Next();
    ASSERT_TRUE(committed.ok()) << committed.status();
    ASSERT_EQ(committed->plan().state(), v1::COMMITTED);
    ExpectWholeMap(*client, *committed);
    const PlannerClient::Watch::MapArrivals arrivals = watch->map_arrivals();
    EXPECT_EQ(arrivals.whole, 1);
    EXPECT_EQ(arrivals.delta, 1);
    EXPECT_EQ(arrivals.held, 1);
    EXPECT_EQ(arrivals.fetched, 0);
  }
}

// In acked mode every plan's delta is against the committed map: plans aborted one after another
// (more of them than the maps a watch holds) never push that base out.
TEST(PlannerClientWatchTest, TheCommittedBaseOutlivesAbortedPlans) {
  PlannerEnv env;
  auto client = Connect(env);
  ASSERT_TRUE(client->CreateDeployment(testing::Spec("d1", 4, 8, 12, 2)).ok());  // acked
  std::vector<std::unique_ptr<PlannerClient::Watch>> ranks;
  ASSERT_NO_FATAL_FAILURE(WatchEveryRank(*client, 2, ranks));
  // Publishes plan `seed` + 1 and acks it: STAGED by every rank, or FAILED by rank 0; returns
  // its outcome.
  const auto round = [&](int seed, v1::AckState state) {
    PublishSkewed(*client, "d1", seed);
    std::vector<v1::WatchPlansRequest::Ack> acks;
    for (auto& watch : ranks) {
      auto pending = watch->Next();
      EXPECT_TRUE(pending.ok()) << pending.status();
      if (!pending.ok()) return v1::PLAN_STATE_UNSPECIFIED;
      EXPECT_EQ(pending->plan().version(), seed + 1);
      ExpectWholeMap(*client, *pending);
      acks.push_back(StagedAck(*pending));
    }
    if (state == v1::FAILED) {
      acks[0].set_state(v1::FAILED);
      acks[0].set_error_detail("out of memory");
      EXPECT_TRUE(ranks[0]->Ack(acks[0]).ok());
    } else {
      for (int rank = 0; rank < 2; ++rank) EXPECT_TRUE(ranks[rank]->Ack(acks[rank]).ok());
    }
    v1::PlanState outcome = v1::PLAN_STATE_UNSPECIFIED;
    for (auto& watch : ranks) {
      auto decided = watch->Next();
      EXPECT_TRUE(decided.ok()) << decided.status();
      if (!decided.ok()) return v1::PLAN_STATE_UNSPECIFIED;
      EXPECT_EQ(decided->plan().version(), seed + 1);
      outcome = decided->plan().state();
    }
    return outcome;
  };
  ASSERT_EQ(round(1, v1::STAGED), v1::COMMITTED);  // version 2
  for (int seed = 2; seed <= 7; ++seed) ASSERT_EQ(round(seed, v1::FAILED), v1::ABORTED);
  ASSERT_EQ(round(8, v1::STAGED), v1::COMMITTED);  // version 9, against version 2
  for (const auto& watch : ranks) {
    const PlannerClient::Watch::MapArrivals arrivals = watch->map_arrivals();
    EXPECT_EQ(arrivals.whole, 1);
    EXPECT_EQ(arrivals.delta, 8);  // version 2, the 6 aborted plans against it, version 9
    EXPECT_EQ(arrivals.held, 8);   // the commits and aborts
    EXPECT_EQ(arrivals.fetched, 0);
  }
}

// A planner (or anything in between) whose watch sends what the test scripted, and whose
// GetPlan answers with `stored` (NOT_FOUND when it has no map).
class ScriptedWatchPlanner final : public v1::Planner::Service {
 public:
  std::vector<v1::WatchPlansResponse> script;
  v1::Plan stored;
  grpc::Status WatchPlans(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::WatchPlansResponse, v1::WatchPlansRequest>* stream) override {
    v1::WatchPlansRequest subscribe;
    if (!stream->Read(&subscribe)) return grpc::Status::OK;
    for (const v1::WatchPlansResponse& response : script) stream->Write(response);
    while (!context->IsCancelled()) absl::SleepFor(absl::Milliseconds(5));
    return grpc::Status::CANCELLED;
  }
  grpc::Status GetPlan(grpc::ServerContext*, const v1::GetPlanRequest* request,
                       v1::Plan* plan) override {
    if (!stored.has_map() || request->version() != stored.version()) {
      return {grpc::StatusCode::NOT_FOUND, "no such plan"};
    }
    *plan = stored;
    return grpc::Status::OK;
  }
};

// A watch response for plan `version` of TestMap(3, 8, 12, reversed) (its hash as map_hash), with
// the map whole.
v1::WatchPlansResponse Whole(int64_t version, bool reversed = false) {
  v1::WatchPlansResponse response;
  v1::Plan& plan = *response.mutable_plan();
  plan.set_deployment("d1");
  plan.set_version(version);
  plan.set_state(v1::PENDING);
  *plan.mutable_map() = TestMap(3, 8, 12, reversed);
  plan.set_map_hash(ExpertMapFromProto(plan.map())->Hash());
  return response;
}

// The same plan as a delta of every layer against `base` (whose map the delta names).
v1::WatchPlansResponse AsDelta(v1::WatchPlansResponse whole, int64_t base,
                               const v1::ExpertMap& base_map) {
  v1::MapDelta& delta = *whole.mutable_map_delta();
  delta.set_base_version(base);
  delta.set_base_map_hash(MapContentHash(base_map));
  const int32_t every[] = {0, 1, 2};
  AppendMapRows(whole.plan().map(), every, &delta);
  whole.mutable_plan()->mutable_map()->clear_phy2log();
  whole.mutable_plan()->mutable_map()->clear_replica_rank();
  return whole;
}

TEST(PlannerClientWatchTest, MapsThatDoNotMatchTheirHashAreNeverBasesAndBadDeltasAreFetched) {
  ScriptedWatchPlanner planner;
  // Version 1 arrives whole but with another map's hash: it must not become a base.
  v1::WatchPlansResponse lying = Whole(1);
  lying.mutable_plan()->set_map_hash(lying.plan().map_hash() + 1);
  // Version 2 claims version 1's map as its base: rebuilt only by fetching.
  v1::WatchPlansResponse second = AsDelta(Whole(2, /*reversed=*/true), 1, lying.plan().map());
  // Version 3 arrives whole (a good base), version 4 as a delta on it whose layers are out of
  // order: fetched.
  v1::WatchPlansResponse third = Whole(3);
  v1::WatchPlansResponse fourth = AsDelta(Whole(4, /*reversed=*/true), 3, third.plan().map());
  fourth.mutable_map_delta()->set_layers(0, 2);
  planner.script = {lying, second, third, fourth};
  planner.stored = Whole(2, /*reversed=*/true).plan();
  int port = 0;
  auto server = Serve(&planner, &port);
  ASSERT_NE(server, nullptr);
  auto client = PlannerClient::Create({.server = absl::StrCat("127.0.0.1:", port)});
  ASSERT_TRUE(client.ok());
  auto watch = (*client)->StartWatch(Subscription("d1", 0));
  ASSERT_TRUE(watch.ok());
  auto first = (*watch)->Next();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ((*watch)->map_arrivals().whole, 0);  // not kept
  auto rebuilt = (*watch)->Next();
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status();
  EXPECT_FALSE(rebuilt->has_map_delta());
  EXPECT_EQ(rebuilt->plan().map().SerializeAsString(), planner.stored.map().SerializeAsString());
  EXPECT_EQ((*watch)->map_arrivals().fetched, 1);
  ASSERT_TRUE((*watch)->Next().ok());  // version 3, whole and kept
  EXPECT_EQ((*watch)->map_arrivals().whole, 1);
  // Version 4 cannot be fetched (the planner no longer has it): the watch ends, to be opened again.
  const absl::Status ended = (*watch)->Next().status();
  EXPECT_EQ(ended.code(), absl::StatusCode::kUnavailable) << ended;
  EXPECT_THAT(ended.message(),
              HasSubstr("cannot rebuild the map of plan version 4 (no usable base for its delta)"));
  EXPECT_EQ((*watch)->Next().status(), ended);
  server->Shutdown();
}

TEST(PlannerClientWatchTest, AnAbortedPlanWhoseMapCannotBeHadComesWithoutIt) {
  ScriptedWatchPlanner planner;
  v1::WatchPlansResponse aborted = AsDelta(Whole(5), 4, TestMap(3, 8, 12));
  aborted.mutable_plan()->set_state(v1::ABORTED);
  v1::WatchPlansResponse next = Whole(6);
  planner.script = {aborted, next};
  int port = 0;
  auto server = Serve(&planner, &port);
  ASSERT_NE(server, nullptr);
  auto client = PlannerClient::Create({.server = absl::StrCat("127.0.0.1:", port)});
  ASSERT_TRUE(client.ok());
  auto watch = (*client)->StartWatch(Subscription("d1", 0));
  ASSERT_TRUE(watch.ok());
  auto got = (*watch)->Next();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->plan().state(), v1::ABORTED);
  EXPECT_FALSE(got->has_map_delta());
  EXPECT_EQ(got->plan().map().phy2log_size(), 0);
  auto after = (*watch)->Next();  // the watch goes on
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->plan().version(), 6);
  watch->reset();  // ends the stream, which the scripted planner holds open until cancelled
  server->Shutdown();
}

TEST(PlannerClientWatchTest, CancelEndsAFetchInProgress) {
  // A planner whose GetPlan never answers: Cancel() must still end the Next() waiting on it.
  class StuckPlanner final : public v1::Planner::Service {
   public:
    v1::WatchPlansResponse response;
    grpc::Status WatchPlans(
        grpc::ServerContext* context,
        grpc::ServerReaderWriter<v1::WatchPlansResponse, v1::WatchPlansRequest>* stream) override {
      v1::WatchPlansRequest subscribe;
      stream->Read(&subscribe);
      stream->Write(response);
      while (!context->IsCancelled()) absl::SleepFor(absl::Milliseconds(5));
      return grpc::Status::CANCELLED;
    }
    absl::Notification fetching;
    grpc::Status GetPlan(grpc::ServerContext* context, const v1::GetPlanRequest*,
                         v1::Plan*) override {
      fetching.Notify();
      while (!context->IsCancelled()) absl::SleepFor(absl::Milliseconds(5));
      return grpc::Status::CANCELLED;
    }
  } planner;
  planner.response = AsDelta(Whole(2), 1, TestMap(3, 8, 12));
  int port = 0;
  auto server = Serve(&planner, &port);
  ASSERT_NE(server, nullptr);
  auto client = PlannerClient::Create(
      {.server = absl::StrCat("127.0.0.1:", port), .rpc_timeout = absl::Seconds(600)});
  ASSERT_TRUE(client.ok());
  auto watch = (*client)->StartWatch(Subscription("d1", 0));
  ASSERT_TRUE(watch.ok());
  std::thread canceller([&] {
    planner.fetching.WaitForNotification();
    (*watch)->Cancel();
  });
  // Returns once cancelled (without the fix it waits out the 600 s deadline).
  const absl::Status status = (*watch)->Next().status();
  canceller.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr("CANCELLED"));
  server->Shutdown();
}

TEST(PlannerClientTest, SharedByThreads) {
  PlannerEnv env;
  auto client = Connect(env);
  ASSERT_TRUE(client->CreateDeployment(testing::Spec("d1", 1, 4, 4, 2)).ok());
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20; ++i) {
        if (client->GetPlan("d1").ok()) ++ok;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(ok.load(), 160);
}

}  // namespace
}  // namespace eplb

namespace eplb {
namespace {

// The planner as rendezvous for the NCCL unique id: rank 0 publishes, the others wait for it.
TEST(RendezvousTest, RanksReceiveWhatRankZeroPublished) {
  testing::PlannerEnv env;
  auto client = client::PlannerClient::Create(
      {.server = absl::StrCat("127.0.0.1:", env.port()), .rpc_timeout = absl::Seconds(5)});
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->CreateDeployment(testing::Spec("r", 1, 4, 4, 2)).ok());
  const std::string id(128, '\x07');
  std::string got;
  std::thread waiter([&] {
    auto value = (*client)->AwaitRendezvous("r", "nccl/1", absl::Seconds(30));
    ASSERT_TRUE(value.ok()) << value.status();
    got = *value;
  });
  ASSERT_TRUE((*client)->PublishRendezvous("r", "nccl/1", id).ok());
  waiter.join();
  EXPECT_EQ(got, id);
  // Publishing again replaces the value.
  ASSERT_TRUE((*client)->PublishRendezvous("r", "nccl/1", "second").ok());
  EXPECT_EQ(*(*client)->AwaitRendezvous("r", "nccl/1", absl::Seconds(5)), "second");
}

TEST(RendezvousTest, BadRequestsAreRefusedAndNothingIsStored) {
  testing::PlannerEnv env;
  auto client = client::PlannerClient::Create(
      {.server = absl::StrCat("127.0.0.1:", env.port()), .rpc_timeout = absl::Seconds(5)});
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->CreateDeployment(testing::Spec("r", 1, 4, 4, 2)).ok());
  auto& c = **client;
  absl::Status status = c.PublishRendezvous("r", "", "x");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "key is required");
  status = c.PublishRendezvous("r", std::string(129, 'k'), "x");
  EXPECT_EQ(status.message(), "key has 129 bytes, more than 128");
  status = c.PublishRendezvous("r", "k", std::string(4097, 'v'));
  EXPECT_EQ(status.message(), "value has 4097 bytes, more than 4096");
  EXPECT_EQ(testing::Reason(status), v1::FIELD_OUT_OF_RANGE);
  EXPECT_EQ(c.PublishRendezvous("nope", "k", "v").code(), absl::StatusCode::kNotFound);
  // Nothing was stored: the key is still unknown.
  auto missing = c.AwaitRendezvous("r", "k", absl::Milliseconds(30));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(missing.status().message()),
              ::testing::HasSubstr("rendezvous key \"k\" of deployment r not published within"));
  EXPECT_EQ(c.AwaitRendezvous("nope", "k", absl::Seconds(1)).status().code(),
            absl::StatusCode::kNotFound);
  for (int i = 0; i < 64; ++i)
    ASSERT_TRUE(c.PublishRendezvous("r", absl::StrCat("k", i), "v").ok());
  status = c.PublishRendezvous("r", "one-more", "v");
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(), "deployment r holds 64 rendezvous keys already");
  EXPECT_TRUE(c.PublishRendezvous("r", "k3", "replaced").ok());  // an existing key still works
}

}  // namespace
}  // namespace eplb
