#include "server/planner_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "server/footprint.h"
#include "spdlog/spdlog.h"

namespace eplb::server {
namespace {

constexpr char kServiceName[] = "eplb.v1.Planner";

std::shared_ptr<grpc::ServerCredentials> Credentials(const PlannerServerOptions& options) {
  if (options.tls_cert_pem.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl(
      options.tls_client_ca_pem.empty()
          ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
          : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  ssl.pem_root_certs = options.tls_client_ca_pem;
  ssl.pem_key_cert_pairs.push_back({options.tls_key_pem, options.tls_cert_pem});
  return grpc::SslServerCredentials(ssl);
}

// What a request message being received and parsed may cost: its wire bytes, and the parsed
// message, at most twice those plus the objects of the entries report_wire.h bounds (4096 layers,
// 64 unknown fields; fuzz_report_wire checks the bound).
constexpr int64_t kReadCostFactor = 3;
constexpr int64_t kReadCostSlackBytes = 512 << 10;

}  // namespace

absl::StatusOr<PlannerServer::MemoryShares> PlannerServer::CheckOptions(
    const PlannerServerOptions& options) {
  if (options.tls_cert_pem.empty() != options.tls_key_pem.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate and its key");
  }
  if (!options.tls_client_ca_pem.empty() && options.tls_cert_pem.empty()) {
    return absl::InvalidArgumentError(
        "a client CA (mutual TLS) needs a server certificate and key as well");
  }
  if (options.max_request_bytes < (1 << 20) ||
      options.max_request_bytes > options.max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_request_bytes = ", options.max_request_bytes, " is out of range [1048576, ",
        options.max_message_bytes, "] (at most max_message_bytes)"));
  }
  MemoryShares shares;
  if (options.max_memory_bytes <= 0) return shares;
  shares.in_flight_bytes =
      std::clamp<int64_t>(options.max_memory_bytes / 4, int64_t{64} << 20, int64_t{1} << 30);
  if (options.max_memory_bytes <= shares.in_flight_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a memory budget of ", options.max_memory_bytes, " bytes leaves nothing for deployments ",
        "after gRPC's ", shares.in_flight_bytes, " bytes"));
  }
  shares.deployments_bytes = options.max_memory_bytes - shares.in_flight_bytes;
  if (kReadCostFactor * options.max_request_bytes + kReadCostSlackBytes >
      shares.in_flight_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a request limit of ", FormatBytes(options.max_request_bytes),
        " (--max-request-bytes) needs ", kReadCostFactor,
        " times that and 512 KiB for a message being received and parsed, more than the ",
        FormatBytes(shares.in_flight_bytes),
        " the memory budget keeps for messages in flight (a quarter of --max-memory)"));
  }
  return shares;
}

absl::StatusOr<std::unique_ptr<PlannerServer>> PlannerServer::Start(
    const PlannerServerOptions& options, Clock* clock,
    std::shared_ptr<prometheus::Registry> registry) {
  ASSIGN_OR_RETURN(const MemoryShares shares, CheckOptions(options));
  ASSIGN_OR_RETURN(AccessControl access,
                   AccessControl::Create(options.service.bearer_token, options.service.credentials,
                                         /*mutual_tls=*/!options.tls_client_ca_pem.empty()));
  PlannerOptions planner_options = options.planner;
  planner_options.max_message_bytes = options.max_message_bytes;
  if (shares.deployments_bytes > 0) {
    planner_options.deployment_memory_bytes = shares.deployments_bytes;
  }
  std::unique_ptr<PlannerServer> server(new PlannerServer);
  if (registry != nullptr) server->metrics_ = std::make_unique<PlannerMetrics>(registry);
  ASSIGN_OR_RETURN(StateStore store, StateStore::Open(options.state_dir));
  ASSIGN_OR_RETURN(server->planner_, Planner::Create(planner_options, std::move(store), clock,
                                                     server->metrics_.get()));
  server->service_ = std::make_unique<PlannerService>(
      server->planner_.get(),
      ServiceLimits{.max_watch_queue = options.service.max_watch_queue,
                    .read_budget_bytes = shares.in_flight_bytes,
                    .read_cost_bytes =
                        kReadCostFactor * options.max_request_bytes + kReadCostSlackBytes,
                    .report_read_timeout = options.report_read_timeout},
      std::move(access), server->metrics_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, Credentials(options), &server->port_);
  builder.RegisterService(server->service_.get());
  builder.SetMaxReceiveMessageSize(options.max_request_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(options.keepalive_time)));
  builder.AddChannelArgument(
      GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
      static_cast<int>(absl::ToInt64Milliseconds(options.keepalive_timeout)));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
      static_cast<int>(absl::ToInt64Milliseconds(options.keepalive_min_client_interval)));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams);
  // A stream's HTTP/2 window stays at the lookahead until it has a read pending (a read opens it
  // to the whole message), so streams waiting for the read budget hold at most that. BDP probing
  // would grow windows to megabytes and let waiting streams fill the buffer quota. 256 KiB lets
  // the next report of a stream arrive while the current one is counted.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 256 << 10);
  if (shares.in_flight_bytes > 0) {
    grpc::ResourceQuota quota("eplb-planner");
    quota.Resize(static_cast<size_t>(shares.in_flight_bytes));
    builder.SetResourceQuota(quota);
  }
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    server->planner_->Shutdown();
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  health->SetServingStatus(kServiceName, true);
  health->SetServingStatus(true);
  return server;
}

PlannerServer::~PlannerServer() { Shutdown(absl::ZeroDuration()); }

void PlannerServer::Shutdown(absl::Duration grace) {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  server_->GetHealthCheckService()->Shutdown();  // every service NOT_SERVING from now on
  planner_->BeginShutdown();
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::microseconds(absl::ToInt64Microseconds(grace)));
  planner_->Shutdown();
  server_->Wait();
}

}  // namespace eplb::server
