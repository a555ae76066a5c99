// libFuzzer target: wire messages through the planner's real service handlers, every RPC. One
// planner serves on 127.0.0.1 for the whole run (a small memory budget and deployment cap, a 1 MiB
// message limit), holding deployment "f". An input is one call: its first byte picks the method
// (in the order of the service's descriptor), the rest is the request's bytes as sent on the wire
// (streams: the one message of a ReportLoad stream, or a WatchPlans stream's first message).
// Whatever the bytes, the planner answers (no crash, no sanitizer report), and a refused call
// leaves every deployment, plan and load as it was.
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <stdlib.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/clock.h"
#include "eplb/v1/planner.grpc.pb.h"
#include "server/planner_server.h"
#include "spdlog/spdlog.h"
#include "tests/support/raw_calls.h"

namespace {

using eplb::v1::Planner;

struct Fixture {
  eplb::FakeClock clock;
  std::unique_ptr<eplb::server::PlannerServer> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<grpc::GenericStub> generic;
  std::unique_ptr<Planner::Stub> stub;
  const google::protobuf::ServiceDescriptor* service = nullptr;
};

Fixture& Get() {
  static Fixture* fixture = [] {
    spdlog::set_level(spdlog::level::off);
    auto* f = new Fixture;
    std::string dir = (std::filesystem::temp_directory_path() / "eplb-fuzz-XXXXXX").string();
    EPLB_CHECK(::mkdtemp(dir.data()) != nullptr, "mkdtemp");
    eplb::server::PlannerServerOptions options;
    options.listen = "127.0.0.1:0";
    options.state_dir = dir;
    options.max_message_bytes = 1 << 20;
    options.max_request_bytes = 1 << 20;
    options.max_memory_bytes = int64_t{320} << 20;
    options.planner.max_deployments = 16;
    options.planner.plan_threads = 1;
    auto server = eplb::server::PlannerServer::Start(options, &f->clock, nullptr);
    EPLB_CHECK(server.ok(), server.status().ToString());
    f->server = *std::move(server);
    f->channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", f->server->port()),
                                     grpc::InsecureChannelCredentials());
    f->generic = std::make_unique<grpc::GenericStub>(f->channel);
    f->stub = Planner::NewStub(f->channel);
    f->service =
        eplb::v1::CreateDeploymentRequest::descriptor()->file()->FindServiceByName("Planner");
    // A deployment for the calls to find.
    eplb::v1::CreateDeploymentRequest create;
    eplb::v1::DeploymentSpec& spec = *create.mutable_spec();
    spec.set_name("f");
    spec.mutable_shape()->set_num_layers(2);
    spec.mutable_shape()->set_num_logical_experts(8);
    spec.mutable_shape()->set_num_physical_experts(10);
    spec.mutable_shape()->set_num_ranks(2);
    spec.set_policy("deepseek");
    grpc::ClientContext context;
    eplb::v1::Deployment created;
    const grpc::Status status = f->stub->CreateDeployment(&context, create, &created);
    EPLB_CHECK(status.ok(), status.error_message());
    return f;
  }();
  return *fixture;
}

// Everything a call could change, serialized (read in process: no RPC).
std::string Snapshot(Fixture& f) {
  eplb::server::Planner& planner = f.server->planner();
  std::string out;
  for (const eplb::v1::Deployment& d : planner.ListDeployments()) {
    out += d.SerializeAsString();
    auto plans = planner.ListPlans(d.spec().name(), /*include_maps=*/true);
    EPLB_CHECK(plans.ok(), plans.status().ToString());
    for (const eplb::v1::Plan& plan : *plans) out += plan.SerializeAsString();
    auto load = planner.GetLoad(d.spec().name());
    EPLB_CHECK(load.ok(), load.status().ToString());
    out += load->SerializeAsString();
  }
  return out;
}

// One message on a stream, then the end of writing; reads what comes back (a watch sends the
// current plans, then ends after the half-close).
grpc::Status Stream(Fixture& f, const std::string& method, absl::string_view request) {
  eplb::testing::RawStream call(*f.generic, method, absl::Seconds(20));
  if (call.started() && call.Write(request)) call.WritesDone();
  for (int i = 0; i < 8 && call.started() && call.Read().has_value(); ++i) {
  }
  return call.Finish();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Fixture& f = Get();
  const google::protobuf::MethodDescriptor* method =
      f.service->method(data[0] % f.service->method_count());
  const std::string path = absl::StrCat("/", f.service->full_name(), "/", method->name());
  const absl::string_view request(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::string before = Snapshot(f);
  const grpc::Status status =
      method->client_streaming() || method->server_streaming()
          ? Stream(f, path, request)
          : eplb::testing::RawUnaryCall(*f.generic, path, request, absl::Seconds(20));
  EPLB_CHECK(status.error_code() != grpc::StatusCode::INTERNAL ||
                 status.error_message().find("cannot persist") != std::string::npos,
             path, ": ", status.error_message());
  if (!status.ok())
    EPLB_CHECK(Snapshot(f) == before, path,
               " changed state and was refused: ", status.error_message());
  return 0;
}
