// A real planner on 127.0.0.1:0 with a FakeClock and a fresh state directory, plus small client
// helpers, for the server's integration tests.
#ifndef EPLB_TESTS_SERVER_TEST_ENV_H_
#define EPLB_TESTS_SERVER_TEST_ENV_H_

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <deque>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/clock.h"
#include "eplb/v1/planner.grpc.pb.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "proto/convert.h"
#include "server/planner_server.h"

namespace eplb::testing {

inline std::string MakeTempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "eplb-test-XXXXXX").string();
  EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
  return pattern;
}

// Owns a state directory and a planner serving it; Restart() stops it gracefully and starts a new
// one on the same directory.
class PlannerEnv {
 public:
  explicit PlannerEnv(server::PlannerServerOptions options = {}) : options_(std::move(options)) {
    state_dir_ = MakeTempDir();
    options_.listen = "127.0.0.1:0";
    options_.state_dir = state_dir_;
    Start();
  }
  ~PlannerEnv() {
    server_.reset();
    std::filesystem::remove_all(state_dir_);
  }

  void Start() {
    registry_ = std::make_shared<prometheus::Registry>();
    auto server = server::PlannerServer::Start(options_, &clock_, registry_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    options_.listen = absl::StrCat("127.0.0.1:", server_->port());  // restarts keep the port
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Planner::NewStub(channel_);
  }
  // Graceful stop; Start() brings it back on the same port and state directory.
  void Stop() {
    server_->Shutdown(absl::ZeroDuration());
    server_.reset();
  }
  void Restart() {
    Stop();
    Start();
  }

  v1::Planner::Stub& stub() { return *stub_; }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }
  FakeClock& clock() { return clock_; }
  server::PlannerServer& server() { return *server_; }
  const std::string& state_dir() const { return state_dir_; }
  int port() const { return server_->port(); }

  // The metrics in the Prometheus text format.
  std::string MetricsText() { return prometheus::TextSerializer().Serialize(registry_->Collect()); }

 private:
  server::PlannerServerOptions options_;
  std::string state_dir_;
  FakeClock clock_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<server::PlannerServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Planner::Stub> stub_;
};

// ---- Calls --------------------------------------------------------------------------------------

inline v1::DeploymentSpec Spec(const std::string& name, int layers, int experts, int slots,
                               int ranks) {
  v1::DeploymentSpec spec;
  spec.set_name(name);
  v1::Shape& shape = *spec.mutable_shape();
  shape.set_num_layers(layers);
  shape.set_num_logical_experts(experts);
  shape.set_num_physical_experts(slots);
  shape.set_num_ranks(ranks);
  return spec;
}

inline absl::Status Delete(v1::Planner::Stub& stub, const std::string& name) {
  grpc::ClientContext context;
  v1::DeleteDeploymentRequest request;
  request.set_name(name);
  v1::DeleteDeploymentResponse response;
  return FromGrpcStatus(stub.DeleteDeployment(&context, request, &response));
}

inline absl::StatusOr<v1::Deployment> Create(v1::Planner::Stub& stub,
                                             const v1::DeploymentSpec& spec) {
  grpc::ClientContext context;
  v1::CreateDeploymentRequest request;
  *request.mutable_spec() = spec;
  v1::Deployment response;
  const grpc::Status status = stub.CreateDeployment(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

inline absl::StatusOr<v1::Plan> GetPlan(v1::Planner::Stub& stub, const std::string& deployment,
                                        int64_t version = 0) {
  grpc::ClientContext context;
  v1::GetPlanRequest request;
  request.set_deployment(deployment);
  request.set_version(version);
  v1::Plan response;
  const grpc::Status status = stub.GetPlan(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

inline absl::StatusOr<std::vector<v1::Plan>> ListPlans(v1::Planner::Stub& stub,
                                                       const std::string& deployment) {
  grpc::ClientContext context;
  v1::ListPlansRequest request;
  request.set_deployment(deployment);
  v1::ListPlansResponse response;
  const grpc::Status status = stub.ListPlans(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return std::vector<v1::Plan>(response.plans().begin(), response.plans().end());
}

inline absl::StatusOr<v1::Plan> Rebalance(v1::Planner::Stub& stub, const std::string& deployment,
                                          bool dry_run = false) {
  grpc::ClientContext context;
  v1::RebalanceRequest request;
  request.set_deployment(deployment);
  request.set_dry_run(dry_run);
  v1::RebalanceResponse response;
  const grpc::Status status = stub.Rebalance(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response.plan();
}

inline absl::StatusOr<v1::GetLoadResponse> GetLoad(v1::Planner::Stub& stub,
                                                   const std::string& deployment) {
  grpc::ClientContext context;
  v1::GetLoadRequest request;
  request.set_deployment(deployment);
  v1::GetLoadResponse response;
  const grpc::Status status = stub.GetLoad(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

// A report of dense per-expert counts: counts[l][e].
inline v1::LoadReport Report(const std::string& deployment, int rank, int64_t sequence,
                             int64_t first_step, int64_t last_step,
                             const std::vector<std::vector<double>>& counts,
                             int64_t plan_version = 1) {
  v1::LoadReport report;
  report.set_deployment(deployment);
  report.set_rank(rank);
  report.set_sequence(sequence);
  report.set_first_step(first_step);
  report.set_last_step(last_step);
  report.set_plan_version(plan_version);
  report.set_session(7);
  for (const auto& layer : counts) {
    report.add_layers()->mutable_counts()->Assign(layer.begin(), layer.end());
  }
  return report;
}

// `report` over layers first_layer … first_layer + its layers − 1.
inline v1::LoadReport WithFirstLayer(v1::LoadReport report, int32_t first_layer) {
  report.set_first_layer(first_layer);
  return report;
}

// Sends `reports` on one ReportLoad stream.
inline absl::StatusOr<v1::ReportSummary> SendReports(v1::Planner::Stub& stub,
                                                     const std::vector<v1::LoadReport>& reports) {
  grpc::ClientContext context;
  v1::ReportSummary summary;
  auto writer = stub.ReportLoad(&context, &summary);
  for (const v1::LoadReport& report : reports) {
    if (!writer->Write(report)) break;  // the server ended the stream: Finish has the status
  }
  writer->WritesDone();
  const grpc::Status status = writer->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  return summary;
}

// Acks travel on watch streams, unordered with other calls: waits (bounded) until the planner
// recorded `state` for `rank` on `version`.
inline bool WaitForRankState(v1::Planner::Stub& stub, const std::string& deployment,
                             int64_t version, int rank, v1::AckState state) {
  for (int i = 0; i < 100'000; ++i) {
    auto plan = GetPlan(stub, deployment, version);
    if (plan.ok() && plan->ranks(rank).state() == state) return true;
    std::this_thread::yield();
  }
  return false;
}

// The methods of eplb.v1.Planner, from its descriptor (so that tests over every method also cover
// methods added later): unary ones, and the names of streaming ones.
struct PlannerMethods {
  std::vector<const google::protobuf::MethodDescriptor*> unary;
  std::vector<std::string> streaming;
};
inline PlannerMethods ListPlannerMethods() {
  const google::protobuf::ServiceDescriptor* service =
      v1::CreateDeploymentRequest::descriptor()->file()->FindServiceByName("Planner");
  PlannerMethods methods;
  for (int i = 0; service != nullptr && i < service->method_count(); ++i) {
    const google::protobuf::MethodDescriptor* method = service->method(i);
    if (method->client_streaming() || method->server_streaming()) {
      methods.streaming.push_back(method->name());
    } else {
      methods.unary.push_back(method);
    }
  }
  return methods;
}
// "/eplb.v1.Planner/<Method>".
inline std::string MethodPath(const google::protobuf::MethodDescriptor* method) {
  return absl::StrCat("/", method->service()->full_name(), "/", method->name());
}

// The reason of an error made by the planner (ERROR_REASON_UNSPECIFIED if it has none).
inline v1::ErrorReason Reason(const absl::Status& status) {
  const auto detail = GetErrorDetail(status);
  return detail.has_value() ? detail->reason() : v1::ERROR_REASON_UNSPECIFIED;
}

// A WatchPlans stream read by a background thread into a queue.
class WatchClient {
 public:
  WatchClient(v1::Planner::Stub& stub, const std::string& deployment, int rank,
              int64_t known_version = 0, bool accept_map_delta = false)
      : stream_(stub.WatchPlans(&context_)) {
    v1::WatchPlansRequest request;
    request.mutable_subscribe()->set_deployment(deployment);
    request.mutable_subscribe()->set_rank(rank);
    request.mutable_subscribe()->set_known_version(known_version);
    request.mutable_subscribe()->set_accept_map_delta(accept_map_delta);
    stream_->Write(request);
    reader_ = std::thread([this] {
      v1::WatchPlansResponse response;
      while (stream_->Read(&response)) {
        absl::MutexLock lock(&mu_);
        received_.push_back(response);
      }
      absl::MutexLock lock(&mu_);
      done_ = true;
    });
  }
  ~WatchClient() {
    context_.TryCancel();
    reader_.join();
    stream_->Finish().IgnoreError();
  }

  // Blocks until the n-th response (0-based) arrived or the stream ended; the deadline only
  // guards against a hang.
  std::optional<v1::WatchPlansResponse> Get(size_t n) {
    absl::MutexLock lock(&mu_);
    const auto ready = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return received_.size() > n || done_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(30));
    if (received_.size() <= n) return std::nullopt;
    return received_[n];
  }
  // Blocks until a response with (version, state) arrived.
  std::optional<v1::WatchPlansResponse> WaitFor(int64_t version, v1::PlanState state) {
    for (size_t n = 0;; ++n) {
      auto response = Get(n);
      if (!response.has_value()) return std::nullopt;
      if (response->plan().version() == version && response->plan().state() == state) {
        return response;
      }
    }
  }
  size_t size() {
    absl::MutexLock lock(&mu_);
    return received_.size();
  }
  bool Ack(int64_t version, v1::AckState state, uint64_t hash, const std::string& detail = "") {
    v1::WatchPlansRequest request;
    v1::WatchPlansRequest::Ack& ack = *request.mutable_ack();
    ack.set_version(version);
    ack.set_state(state);
    ack.set_map_hash(hash);
    ack.set_error_detail(detail);
    absl::MutexLock lock(&write_mu_);
    return stream_->Write(request);
  }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::WatchPlansRequest, v1::WatchPlansResponse>> stream_;
  std::thread reader_;
  absl::Mutex write_mu_;
  absl::Mutex mu_;
  std::vector<v1::WatchPlansResponse> received_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace eplb::testing

#endif  // EPLB_TESTS_SERVER_TEST_ENV_H_
