// Scoped credentials: the credentials file, identification, and every scope held against a real
// planner on 127.0.0.1:0 (refusals change nothing, and are counted).
#include "server/access.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/client_interceptor.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "proto/convert.h"
#include "tests/server/test_env.h"
#include "tests/support/raw_calls.h"

namespace eplb {
namespace {

using server::AccessControl;
using server::Credential;
using server::ParseCredentials;
using server::Scope;
using testing::PlannerEnv;
using testing::Reason;

constexpr char kAdminToken[] = "admin-token-0123456789";
constexpr char kReaderToken[] = "reader-token-0123456789";
constexpr char kWorkerAToken[] = "worker-a-token-0123456789";
constexpr char kRank1Token[] = "rank-1-of-a-token-0123456789";
constexpr char kWorkerBToken[] = "worker-b-token-0123456789";

// printf %s reader-token-0123456789 | sha256sum
constexpr char kReaderSha256[] =
    "B3057E05D75E8CDCA4BD6DDD527AF736913E8464A7A3D47D7A09389EAA8E1EB4";

std::string CredentialsYaml() {
  return absl::StrCat(R"(# scoped credentials
credentials:
  - name: operator
    scope: admin
    token: )",
                      kAdminToken, R"(
  - name: dashboards
    scope: read
    token_sha256: )",
                      kReaderSha256, R"(
  - name: workers-a
    scope: deployment
    deployment: a
    token: )",
                      kWorkerAToken, R"(
  - name: rank-1-of-a
    scope: deployment
    deployment: a
    ranks: [1]
    token: )",
                      kRank1Token, R"(
  - name: workers-b
    scope: deployment
    deployment: b
    token: )",
                      kWorkerBToken, "\n");
}

absl::Status ParseError(const std::string& yaml) {
  return ParseCredentials(yaml, "creds.yaml").status();
}

TEST(CredentialsFileTest, ParsesEveryScope) {
  auto credentials = ParseCredentials(CredentialsYaml(), "creds.yaml");
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  ASSERT_EQ(credentials->size(), 5u);
  EXPECT_EQ((*credentials)[0].name, "operator");
  EXPECT_EQ((*credentials)[0].scope, Scope::kAdmin);
  EXPECT_EQ((*credentials)[1].scope, Scope::kRead);
  EXPECT_EQ((*credentials)[1].token_sha256, absl::AsciiStrToLower(kReaderSha256));
  EXPECT_EQ((*credentials)[3].scope, Scope::kDeployment);
  EXPECT_EQ((*credentials)[3].deployment, "a");
  EXPECT_THAT((*credentials)[3].ranks, ::testing::ElementsAre(1));
  EXPECT_EQ((*credentials)[3].token, kRank1Token);
  EXPECT_TRUE(AccessControl::Create("", *std::move(credentials), false).ok());
}

TEST(CredentialsFileTest, MalformedFilesAreRefusedNamingTheEntryAndField) {
  EXPECT_EQ(ParseError("credentials: ["),
            absl::InvalidArgumentError(
                "creds.yaml: line 1, column 1: end of sequence flow not found"));
  EXPECT_EQ(ParseError("tokens: []"),
            absl::InvalidArgumentError("creds.yaml: expected a mapping with one key, "
                                       "\"credentials\", holding a list of entries"));
  // A misspelt key must not widen a scope silently.
  EXPECT_EQ(ParseError("credentials:\n  - name: w\n    scope: deployment\n    deployment: a\n"
                       "    rank: [1]\n    token: 0123456789abcdef\n"),
            absl::InvalidArgumentError(
                "creds.yaml: line 5: credentials[0] (\"w\"): unknown key \"rank\" (expected "
                "name, scope, deployment, ranks, token, token_sha256 or identity)"));
  EXPECT_EQ(ParseError("credentials:\n  - name: w\n    scope: owner\n"),
            absl::InvalidArgumentError("creds.yaml: line 2: credentials[0] (\"w\"): scope "
                                       "\"owner\" is not admin, read or deployment"));
  EXPECT_EQ(ParseError("credentials:\n  - name: w\n    scope: deployment\n    ranks: [-1]\n"),
            absl::InvalidArgumentError("creds.yaml: line 4: credentials[0] (\"w\"): ranks[0] is "
                                       "not a rank in [0, 65536)"));
  // Which of two would count is not left to the YAML library.
  EXPECT_EQ(ParseError("credentials:\n  - name: w\n    deployment: a\n    deployment: b\n"),
            absl::InvalidArgumentError(
                "creds.yaml: line 4: credentials[0] (\"w\"): \"deployment\" is given twice"));
  EXPECT_EQ(ParseError("credentials:\n  - [1]\n"),
            absl::InvalidArgumentError("creds.yaml: line 2: credentials[0] is not a mapping"));
  EXPECT_EQ(ParseError(std::string(server::kMaxCredentialsFileBytes + 1, ' ')),
            absl::InvalidArgumentError("creds.yaml: holds 16777217 bytes, more than 16777216"));
}

absl::Status CreateError(std::vector<Credential> credentials, bool mutual_tls = false) {
  return AccessControl::Create("", std::move(credentials), mutual_tls).status();
}

TEST(CredentialsFileTest, AmbiguousOrWeakCredentialsAreRefused) {
  const Credential admin{.name = "x", .token = "0123456789abcdef"};
  EXPECT_EQ(CreateError({admin, admin}),
            absl::InvalidArgumentError(
                "credentials[1] (\"x\"): name \"x\" is used by credentials[0] too"));
  Credential same_token = admin;
  same_token.name = "y";
  EXPECT_EQ(CreateError({admin, same_token}),
            absl::InvalidArgumentError(
                "credentials[1] (\"y\"): its token is the token of another credential"));
  EXPECT_EQ(CreateError({{.name = "w", .scope = Scope::kDeployment, .token = "0123456789abcdef"}}),
            absl::InvalidArgumentError(
                "credentials[0] (\"w\"): deployment is required with scope deployment"));
  EXPECT_EQ(CreateError({{.name = "r", .scope = Scope::kRead, .deployment = "a",
                          .token = "0123456789abcdef"}}),
            absl::InvalidArgumentError(
                "credentials[0] (\"r\"): deployment and ranks belong to scope deployment only"));
  EXPECT_EQ(CreateError({{.name = "w", .token = "short"}}),
            absl::InvalidArgumentError(
                "credentials[0] (\"w\"): the token has 5 bytes; a token is 16 … 4089 printable "
                "characters without spaces (e.g. openssl rand -hex 32)"));
  EXPECT_EQ(CreateError({{.name = "w", .token = "0123456789abcdef", .identity = "cn"}}, true),
            absl::InvalidArgumentError(
                "credentials[0] (\"w\"): give exactly one of token, token_sha256 and identity"));
  EXPECT_EQ(CreateError({{.name = "w", .identity = "cn"}}),
            absl::InvalidArgumentError(
                "credentials[0] (\"w\"): identity needs mutual TLS (a client CA, "
                "--tls-client-ca)"));
  EXPECT_EQ(CreateError({{.name = "w", .token_sha256 = "abc"}}),
            absl::InvalidArgumentError(
                "credentials[0] (\"w\"): token_sha256 is not 64 hexadecimal digits"));
  EXPECT_EQ(CreateError({{.name = "", .token = "0123456789abcdef"}}),
            absl::InvalidArgumentError("credentials[0]: name is required: 1 … 128 printable "
                                       "characters without spaces"));
}

TEST(CredentialsFileTest, TokensAreFoundByTheirDigest) {
  auto access = AccessControl::Create(
      "", *ParseCredentials(CredentialsYaml(), "creds.yaml"), /*mutual_tls=*/false);
  ASSERT_TRUE(access.ok()) << access.status();
  EXPECT_TRUE(access->enforcing());
  auto reader = access->Identify(absl::StrCat("Bearer ", kReaderToken), {});
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->name, "dashboards");
  auto rank1 = access->Identify(absl::StrCat("Bearer ", kRank1Token), {});
  ASSERT_TRUE(rank1.ok()) << rank1.status();
  EXPECT_EQ((*rank1)->name, "rank-1-of-a");
  const auto refused = [&](std::optional<absl::string_view> authorization,
                           std::vector<std::string> identities = {}) {
    auto caller = access->Identify(authorization, identities);
    EXPECT_EQ(Reason(caller.status()), v1::UNAUTHENTICATED_TOKEN);
    return caller.status();
  };
  EXPECT_EQ(refused(std::nullopt).message(), "missing bearer token (authorization metadata)");
  EXPECT_EQ(refused("Basic abc").message(),
            "the authorization metadata is not \"Bearer <token>\"");
  EXPECT_EQ(refused(absl::StrCat("Bearer ", kReaderSha256)).message(), "wrong bearer token");
  EXPECT_EQ(refused(absl::StrCat("Bearer ", kReaderToken, "x")).message(), "wrong bearer token");
  // A client certificate that no credential names (no identities are configured here).
  EXPECT_EQ(refused(std::nullopt, {"worker"}).message(),
            "no credential names the client certificate (\"worker\") and no bearer token was "
            "sent");
  // Without credentials everyone is admin; with mutual TLS alone, every verified certificate.
  const AccessControl open;
  EXPECT_FALSE(open.enforcing());
  auto anyone = open.Identify(std::nullopt, {});
  ASSERT_TRUE(anyone.ok());
  EXPECT_EQ((*anyone)->scope, Scope::kAdmin);
  auto mtls = AccessControl::Create("", {}, /*mutual_tls=*/true);
  ASSERT_TRUE(mtls.ok());
  auto certified = mtls->Identify(std::nullopt, {"worker"});
  ASSERT_TRUE(certified.ok());
  EXPECT_EQ((*certified)->scope, Scope::kAdmin);
  EXPECT_FALSE(mtls->Identify(std::nullopt, {}).ok());
}

// ---- Against a real planner ---------------------------------------------------------------------

// Sends "authorization: Bearer <token>" on every call of a channel.
class BearerInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit BearerInterceptor(std::string value) : value_(std::move(value)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", value_});
    }
    methods->Proceed();
  }

 private:
  std::string value_;
};

class BearerFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerFactory(std::string token) : value_(absl::StrCat("Bearer ", token)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* /*info*/) override {
    return new BearerInterceptor(value_);
  }

 private:
  std::string value_;
};

std::shared_ptr<grpc::Channel> TokenChannel(int port, const std::string& token) {
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<BearerFactory>(token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials(),
      grpc::ChannelArguments(), std::move(factories));
}

struct Caller {
  const char* token;
  const char* described;  // how refusals name it
};
constexpr Caller kReader{kReaderToken, "credential \"dashboards\" (scope read)"};
constexpr Caller kWorkerA{kWorkerAToken, "credential \"workers-a\" (scope deployment \"a\")"};
constexpr Caller kRank1{kRank1Token,
                        "credential \"rank-1-of-a\" (scope deployment \"a\" ranks [1])"};
constexpr Caller kWorkerB{kWorkerBToken, "credential \"workers-b\" (scope deployment \"b\")"};

class ScopeTest : public ::testing::Test {
 protected:
  ScopeTest() : env_(Options()), admin_(Stub(kAdminToken)) {
    for (const char* name : {"a", "b"}) {
      EXPECT_TRUE(testing::Create(*admin_, testing::Spec(name, 1, 4, 4, 2)).ok());
    }
  }

  static server::PlannerServerOptions Options() {
    server::PlannerServerOptions options;
    options.service.credentials = *ParseCredentials(CredentialsYaml(), "creds.yaml");
    return options;
  }
  std::unique_ptr<v1::Planner::Stub> Stub(const std::string& token) {
    return v1::Planner::NewStub(TokenChannel(env_.port(), token));
  }
  std::unique_ptr<v1::Planner::Stub> Stub(const Caller& caller) { return Stub(caller.token); }
  // The refusal every out-of-scope call gets: PERMISSION_DENIED, OUT_OF_SCOPE, the field.
  static void ExpectDenied(const absl::Status& status, const std::string& message,
                           const std::string& field) {
    EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
    EXPECT_EQ(status.message(), message);
    EXPECT_EQ(Reason(status), v1::OUT_OF_SCOPE);
    const auto detail = GetErrorDetail(status);
    EXPECT_EQ(detail.has_value() ? detail->field() : "?", field);
  }
  int64_t StepsSeen(const std::string& deployment) {
    auto load = testing::GetLoad(*admin_, deployment);
    EXPECT_TRUE(load.ok()) << load.status();
    return load.ok() ? load->steps_seen() : -1;
  }
  std::vector<std::string> Listed(v1::Planner::Stub& stub) {
    grpc::ClientContext context;
    v1::ListDeploymentsResponse response;
    EXPECT_TRUE(stub.ListDeployments(&context, {}, &response).ok());
    std::vector<std::string> names;
    for (const v1::Deployment& d : response.deployments()) names.push_back(d.spec().name());
    return names;
  }
  absl::Status Publish(v1::Planner::Stub& stub, const std::string& deployment,
                       const std::string& value) {
    grpc::ClientContext context;
    v1::PublishRendezvousRequest request;
    request.set_deployment(deployment);
    request.set_key("agent-nccl-1");
    request.set_value(value);
    v1::PublishRendezvousResponse response;
    return FromGrpcStatus(stub.PublishRendezvous(&context, request, &response));
  }
  absl::StatusOr<std::string> Read(v1::Planner::Stub& stub, const std::string& deployment) {
    grpc::ClientContext context;
    v1::GetRendezvousRequest request;
    request.set_deployment(deployment);
    request.set_key("agent-nccl-1");
    v1::GetRendezvousResponse response;
    const grpc::Status status = stub.GetRendezvous(&context, request, &response);
    if (!status.ok()) return FromGrpcStatus(status);
    return response.value();
  }

  PlannerEnv env_;
  std::unique_ptr<v1::Planner::Stub> admin_;
};

TEST_F(ScopeTest, OnlyAdminCreatesDeletesAndRebalances) {
  for (const Caller& caller : {kReader, kWorkerA, kRank1}) {
    auto stub = Stub(caller);
    ExpectDenied(testing::Create(*stub, testing::Spec("c", 1, 4, 4, 2)).status(),
                 absl::StrCat(caller.described,
                              " may not create deployments: that needs scope admin"),
                 "");
    ExpectDenied(testing::Delete(*stub, "a"),
                 absl::StrCat(caller.described,
                              " may not delete deployments: that needs scope admin"),
                 "");
    ExpectDenied(testing::Rebalance(*stub, "a", /*dry_run=*/true).status(),
                 absl::StrCat(caller.described, " may not rebalance: that needs scope admin"), "");
  }
  // Nothing changed: no "c", "a" still there with its first plan only.
  EXPECT_THAT(Listed(*admin_), ::testing::UnorderedElementsAre("a", "b"));
  auto plans = testing::ListPlans(*admin_, "a");
  ASSERT_TRUE(plans.ok());
  EXPECT_EQ(plans->size(), 1u);
  EXPECT_TRUE(testing::Rebalance(*admin_, "a", /*dry_run=*/true).ok());
}

TEST_F(ScopeTest, ReportsAreCheckedPerReportAgainstDeploymentAndRank) {
  auto worker_a = Stub(kWorkerA);
  auto rank1 = Stub(kRank1);
  auto reader = Stub(kReader);
  const auto report = [](const std::string& d, int rank, int64_t seq) {
    return testing::Report(d, rank, seq, 1, seq, {{1, 2, 3, 4}});
  };
  // Another deployment's load cannot be poisoned.
  ExpectDenied(testing::SendReports(*worker_a, {report("b", 0, 1)}).status(),
               absl::StrCat(kWorkerA.described,
                            " may not report load: deployment \"b\" is outside its scope"),
               "deployment");
  EXPECT_EQ(StepsSeen("b"), 0);
  // Nor another rank's; the reports before the refused one count.
  ExpectDenied(testing::SendReports(*rank1, {report("a", 1, 1), report("a", 0, 1)}).status(),
               absl::StrCat(kRank1.described, " may not report load: rank 0 is outside its scope"),
               "rank");
  EXPECT_EQ(StepsSeen("a"), 1);
  ExpectDenied(testing::SendReports(*reader, {report("a", 0, 1)}).status(),
               absl::StrCat(kReader.described,
                            " may not report load: scope read does not report or acknowledge"),
               "");
  EXPECT_EQ(StepsSeen("a"), 1);
  auto accepted = testing::SendReports(*worker_a, {report("a", 0, 2), report("a", 1, 2)});
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_EQ(accepted->accepted(), 2);
}

TEST_F(ScopeTest, AcksOfAnotherDeploymentOrRankAreRefused) {
  auto worker_b = Stub(kWorkerB);
  auto rank1 = Stub(kRank1);
  auto reader = Stub(kReader);
  auto plan = testing::Rebalance(*admin_, "a", /*dry_run=*/false);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const int64_t version = plan->version();
  const uint64_t hash = plan->map_hash();
  // A watch that could ack FAILED for a's rank 0 is refused at subscribe, before any ack.
  for (auto* stub : {worker_b.get(), rank1.get()}) {
    grpc::ClientContext context;
    auto stream = stub->WatchPlans(&context);
    v1::WatchPlansRequest subscribe;
    subscribe.mutable_subscribe()->set_deployment("a");
    subscribe.mutable_subscribe()->set_rank(0);
    stream->Write(subscribe);
    v1::WatchPlansRequest ack;
    ack.mutable_ack()->set_version(version);
    ack.mutable_ack()->set_state(v1::FAILED);
    stream->Write(ack);
    v1::WatchPlansResponse response;
    EXPECT_FALSE(stream->Read(&response));
    ExpectDenied(FromGrpcStatus(stream->Finish()),
                 stub == worker_b.get()
                     ? absl::StrCat(kWorkerB.described,
                                    " may not acknowledge plans: deployment \"a\" is outside its "
                                    "scope")
                     : absl::StrCat(kRank1.described,
                                    " may not acknowledge plans: rank 0 is outside its scope"),
                 stub == worker_b.get() ? "deployment" : "rank");
  }
  auto pending = testing::GetPlan(*admin_, "a", version);
  ASSERT_TRUE(pending.ok());
  EXPECT_EQ(pending->state(), v1::PENDING);
  EXPECT_EQ(pending->ranks(0).state(), v1::ACK_STATE_UNSPECIFIED);
  // A reader may observe (rank −1) but not speak for a rank.
  testing::WatchClient observer(*reader, "a", -1);
  ASSERT_TRUE(observer.Get(0).has_value());
  testing::WatchClient as_rank(*reader, "a", 1);
  EXPECT_FALSE(as_rank.Get(0).has_value());
  // The rank's own credential acks it.
  testing::WatchClient own(*rank1, "a", 1);
  ASSERT_TRUE(own.WaitFor(version, v1::PENDING).has_value());
  ASSERT_TRUE(own.Ack(version, v1::STAGED, hash));
  EXPECT_TRUE(testing::WaitForRankState(*admin_, "a", version, 1, v1::STAGED));
}

TEST_F(ScopeTest, RendezvousWritesNeedTheDeploymentOrItsRankZero) {
  auto worker_a = Stub(kWorkerA);
  auto worker_b = Stub(kWorkerB);
  auto rank1 = Stub(kRank1);
  ASSERT_TRUE(Publish(*worker_a, "a", "id-of-a").ok());
  ExpectDenied(Publish(*worker_b, "a", "forged"),
               absl::StrCat(kWorkerB.described,
                            " may not publish rendezvous values: deployment \"a\" is outside its "
                            "scope"),
               "deployment");
  ExpectDenied(Publish(*rank1, "a", "forged"),
               absl::StrCat(kRank1.described,
                            " may not publish rendezvous values: rendezvous values are written by "
                            "rank 0 (the rank that bootstraps the agents' communicator) or a "
                            "credential of every rank"),
               "");
  ExpectDenied(Read(*worker_b, "a").status(),
               absl::StrCat(kWorkerB.described,
                            " may not read rendezvous values: deployment \"a\" is outside its "
                            "scope"),
               "deployment");
  auto value = Read(*rank1, "a");
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, "id-of-a");
}

TEST_F(ScopeTest, ReadsStayInsideTheScopeAndListingsShowOnlyIt) {
  auto worker_a = Stub(kWorkerA);
  auto reader = Stub(kReader);
  EXPECT_THAT(Listed(*worker_a), ::testing::ElementsAre("a"));
  EXPECT_THAT(Listed(*reader), ::testing::UnorderedElementsAre("a", "b"));
  EXPECT_TRUE(testing::GetPlan(*worker_a, "a").ok());
  EXPECT_TRUE(testing::GetPlan(*reader, "b").ok());
  ExpectDenied(testing::GetPlan(*worker_a, "b").status(),
               absl::StrCat(kWorkerA.described,
                            " may not read plans: deployment \"b\" is outside its scope"),
               "deployment");
  ExpectDenied(testing::GetLoad(*worker_a, "b").status(),
               absl::StrCat(kWorkerA.described,
                            " may not read load: deployment \"b\" is outside its scope"),
               "deployment");
}

TEST_F(ScopeTest, RefusalsAreCountedByKind) {
  auto worker_a = Stub(kWorkerA);
  auto stranger = Stub("not-a-token-of-anyone-0123");
  EXPECT_FALSE(testing::GetPlan(*worker_a, "b").ok());
  EXPECT_FALSE(testing::GetPlan(*worker_a, "b").ok());
  EXPECT_EQ(testing::GetPlan(*stranger, "a").status().code(), absl::StatusCode::kUnauthenticated);
  const std::string metrics = env_.MetricsText();
  EXPECT_THAT(metrics,
              ::testing::HasSubstr("eplb_auth_refusals_total{reason=\"permission_denied\"} 2"));
  EXPECT_THAT(metrics,
              ::testing::HasSubstr("eplb_auth_refusals_total{reason=\"unauthenticated\"} 1"));
}

// Every method of the service, including any added later, checks the caller's scope: a
// credential of deployment "a" calling with an empty request (about deployment "") is refused by
// every method but ListDeployments, which lists only "a".
TEST_F(ScopeTest, EveryMethodChecksTheScope) {
  grpc::GenericStub stub(TokenChannel(env_.port(), kWorkerAToken));
  const testing::PlannerMethods methods = testing::ListPlannerMethods();
  ASSERT_FALSE(methods.unary.empty());
  EXPECT_THAT(methods.streaming, ::testing::UnorderedElementsAre("ReportLoad", "WatchPlans"))
      << "tested above, through their own clients";
  for (const google::protobuf::MethodDescriptor* method : methods.unary) {
    const absl::Status status =
        FromGrpcStatus(eplb::testing::RawUnaryCall(stub, testing::MethodPath(method), ""));
    if (method->name() == "ListDeployments") {
      EXPECT_TRUE(status.ok()) << status;
      continue;
    }
    EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << method->name();
    EXPECT_EQ(Reason(status), v1::OUT_OF_SCOPE) << method->name();
  }
}

// A request that does not parse is refused like any other bad request: INVALID_ARGUMENT with its
// ErrorDetail, by every unary method, and changes nothing.
TEST_F(ScopeTest, EveryMethodRefusesARequestThatDoesNotParse) {
  grpc::GenericStub stub(TokenChannel(env_.port(), kAdminToken));
  for (const google::protobuf::MethodDescriptor* method : testing::ListPlannerMethods().unary) {
    // Field 1, length-delimited, length 127, and then nothing.
    const absl::Status status =
        FromGrpcStatus(eplb::testing::RawUnaryCall(stub, testing::MethodPath(method), "\x0a\x7f"));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << method->name();
    EXPECT_EQ(status.message(), absl::StrCat("the request does not parse as ",
                                             method->input_type()->full_name()));
    EXPECT_EQ(Reason(status), v1::MALFORMED_MESSAGE) << method->name();
  }
  EXPECT_THAT(Listed(*admin_), ::testing::UnorderedElementsAre("a", "b"));
  auto plans = testing::ListPlans(*admin_, "a");
  ASSERT_TRUE(plans.ok());
  EXPECT_EQ(plans->size(), 1u);
}

}  // namespace
}  // namespace eplb
