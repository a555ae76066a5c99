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

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "core/check.h"
#include "core/clock.h"
#include "eplb/v1/planner.grpc.pb.h"
#include "server/planner_server.h"
#include "spdlog/spdlog.h"

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

grpc::Status Unary(Fixture& f, const std::string& method, const grpc::ByteBuffer& request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  grpc::ByteBuffer response;
  absl::Notification done;
  grpc::Status status;
  f.generic->UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                       [&](grpc::Status s) {
                         status = std::move(s);
                         done.Notify();
                       });
  done.WaitForNotification();
  return status;
}

// One message on a stream, then the end of writing; reads whatever comes back.
grpc::Status Stream(Fixture& f, const std::string& method, const grpc::ByteBuffer& request) {
  grpc::CompletionQueue queue;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  const auto step = [&queue] {
    void* tag = nullptr;
    bool ok = false;
    return queue.Next(&tag, &ok) && ok;
  };
  auto call = f.generic->PrepareCall(&context, method, &queue);
  call->StartCall(nullptr);
  grpc::Status status;
  if (step()) {
    call->Write(request, nullptr);
    if (step()) {
      call->WritesDone(nullptr);
      step();
    }
    grpc::ByteBuffer response;
    for (int i = 0; i < 8;
         ++i) {  // a watch sends the current plans, then ends after the half-close
      call->Read(&response, nullptr);
      if (!step()) break;
    }
  }
  call->Finish(&status, nullptr);
  step();
  queue.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (queue.Next(&tag, &ok)) {
  }
  return status;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Fixture& f = Get();
  const google::protobuf::MethodDescriptor* method =
      f.service->method(data[0] % f.service->method_count());
  const std::string path = absl::StrCat("/", f.service->full_name(), "/", method->name());
  grpc::Slice slice(data + 1, size - 1);
  const grpc::ByteBuffer request(&slice, 1);
  const std::string before = Snapshot(f);
  const grpc::Status status = method->client_streaming() || method->server_streaming()
                                  ? Stream(f, path, request)
                                  : Unary(f, path, request);
  EPLB_CHECK(status.error_code() != grpc::StatusCode::INTERNAL ||
                 status.error_message().find("cannot persist") != std::string::npos,
             path, ": ", status.error_message());
  if (!status.ok())
    EPLB_CHECK(Snapshot(f) == before, path,
               " changed state and was refused: ", status.error_message());
  return 0;
}
