// PlannerServer: a running planner: the state directory loaded, the gRPC server listening with the
// Planner service, grpc.health.v1 and server reflection. main() runs one; tests run one on
// 127.0.0.1:0 with a FakeClock.
#ifndef EPLB_SERVER_PLANNER_SERVER_H_
#define EPLB_SERVER_PLANNER_SERVER_H_

#include <grpcpp/server.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "prometheus/registry.h"
#include "server/metrics.h"
#include "server/planner.h"
#include "server/planner_service.h"

namespace eplb::server {

struct PlannerServerOptions {
  // HOST:PORT; port 0 picks a free port (see PlannerServer::port()).
  std::string listen = "0.0.0.0:50051";
  std::string state_dir = "./eplb-state";
  PlannerOptions planner;
  PlannerServiceOptions service;
  // Largest message sent (plans, GetLoad responses): shapes whose messages would be bigger are
  // refused at create. 1 MiB … 1 GiB.
  int max_message_bytes = 64 << 20;
  // Largest message received; a bigger one fails with RESOURCE_EXHAUSTED. Load reports larger
  // than this are sent as several over layer ranges. 1 MiB … max_message_bytes.
  int max_request_bytes = 2 << 20;
  // A ReportLoad stream that holds part of the read budget this long without its next message
  // arriving is cancelled, so that streams opened and left idle cannot starve the others.
  absl::Duration report_read_timeout = absl::Seconds(30);
  // The planner's memory budget in bytes (0: none). A quarter of it (at least 64 MiB, at most
  // 1 GiB) is for messages in flight: gRPC's buffer quota, and the read budget of ReportLoad
  // messages (each reserves 3 × max_request_bytes of it while it is received and parsed). The
  // rest is what deployments may hold (PlannerOptions::deployment_memory_bytes, which this
  // overrides).
  int64_t max_memory_bytes = 0;
  // Concurrent streams per client connection.
  int max_concurrent_streams = 256;
  // HTTP/2 pings on idle connections, so that a dead peer of a long watch or report stream is
  // noticed; clients may ping as often as every keepalive_min_client_interval.
  absl::Duration keepalive_time = absl::Seconds(30);
  absl::Duration keepalive_timeout = absl::Seconds(10);
  absl::Duration keepalive_min_client_interval = absl::Seconds(10);
  // TLS: PEM contents (not paths). Certificate and key together enable TLS; a client CA in
  // addition requires and verifies client certificates (mutual TLS).
  std::string tls_cert_pem;
  std::string tls_key_pem;
  std::string tls_client_ca_pem;
};

class PlannerServer {
 public:
  // How the memory budget divides: messages in flight (gRPC's buffer quota and the read budget)
  // and deployments; 0 without a budget.
  struct MemoryShares {
    int64_t in_flight_bytes = 0;
    int64_t deployments_bytes = 0;
  };
  // The checks of `options` that Start makes before it touches anything (INVALID_ARGUMENT naming
  // the problem), for --check-flags.
  static absl::StatusOr<MemoryShares> CheckOptions(const PlannerServerOptions& options);

  // Loads the state, then listens; health is SERVING once this returns. `clock` must outlive the
  // server. `registry` (may be null) receives the planner's metrics.
  static absl::StatusOr<std::unique_ptr<PlannerServer>> Start(
      const PlannerServerOptions& options, Clock* clock,
      std::shared_ptr<prometheus::Registry> registry);
  // Shutdown(absl::ZeroDuration()) unless done.
  ~PlannerServer();

  // The port the gRPC server listens on.
  int port() const { return port_; }
  Planner& planner() { return *planner_; }

  // Graceful stop: health turns NOT_SERVING, watches end with UNAVAILABLE, other calls in flight
  // get `grace` to finish, then the planner's queued work completes and the load is
  // checkpointed. Idempotent.
  void Shutdown(absl::Duration grace);

 private:
  PlannerServer() = default;

  std::unique_ptr<PlannerMetrics> metrics_;
  std::unique_ptr<Planner> planner_;
  std::unique_ptr<PlannerService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace eplb::server

#endif  // EPLB_SERVER_PLANNER_SERVER_H_
