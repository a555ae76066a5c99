// PlannerClient: the client side of the eplb.v1 Planner service, for serving workers, eplbctl, the
// load generator and tests. One gRPC channel, synchronous calls.
//
// Every RPC error comes back as an absl::Status made by FromGrpcStatus (proto/convert.h): the gRPC
// code and message, and the ErrorDetail (reason and field) when the planner sent one, so callers
// can switch on GetErrorDetail(status)->reason() rather than parse text.
//
// Thread-safety: a PlannerClient is thread-safe; any number of threads may call it at once. A Watch
// is a single stream: see its comment.
#ifndef EPLB_CLIENT_PLANNER_CLIENT_H_
#define EPLB_CLIENT_PLANNER_CLIENT_H_

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/sync_stream.h>

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "eplb/v1/planner.grpc.pb.h"
#include "eplb/v1/planner.pb.h"

namespace eplb::client {

struct PlannerClientOptions {
  // HOST:PORT (any gRPC target name). Required.
  std::string server;
  // Sent as "authorization: Bearer <token>" metadata on every call when non-empty.
  std::string bearer_token;
  // PEM file of the certificate authorities the server's certificate is verified against.
  // Non-empty enables TLS; empty means a plaintext channel.
  std::string tls_ca_file;
  // PEM files of a client certificate and its private key, for mutual TLS: both or neither, and
  // only with tls_ca_file.
  std::string tls_cert_file;
  std::string tls_key_file;
  // The name checked in the server's certificate instead of the host of `server` (optional; TLS
  // only).
  std::string tls_server_name;
  // The deadline of unary calls and of a whole ReportLoad stream. Watch streams have none.
  // Must be positive.
  absl::Duration rpc_timeout = absl::Seconds(30);
  // The largest message sent or received, in bytes. Must be positive.
  int max_message_bytes = 64 << 20;
};

class PlannerClient {
 public:
  class Watch;

  // Checks the options and reads the PEM files; does not connect yet (the channel connects on the
  // first call, and calls fail fast with UNAVAILABLE while the server cannot be reached).
  // INVALID_ARGUMENT for inconsistent options; the error of ReadFileToString (naming the file) for
  // an unreadable PEM file, INVALID_ARGUMENT naming the file for one that holds no PEM block of
  // the expected kind.
  static absl::StatusOr<std::unique_ptr<PlannerClient>> Create(const PlannerClientOptions& options);

  PlannerClient(const PlannerClient&) = delete;
  PlannerClient& operator=(const PlannerClient&) = delete;

  // ---- Deployments ----
  // The deployment as created (or the existing one, for an identical spec).
  absl::StatusOr<v1::Deployment> CreateDeployment(const v1::DeploymentSpec& spec);
  absl::StatusOr<v1::Deployment> GetDeployment(absl::string_view name);
  // All deployments, by name.
  absl::StatusOr<std::vector<v1::Deployment>> ListDeployments();
  absl::Status DeleteDeployment(absl::string_view name);

  // ---- Plans ----
  // The newest committed plan (version 0) or the given version.
  absl::StatusOr<v1::Plan> GetPlan(absl::string_view deployment, int64_t version = 0);
  // The retained plans, newest first; their maps only with include_maps.
  absl::StatusOr<std::vector<v1::Plan>> ListPlans(absl::string_view deployment,
                                                  bool include_maps = false);
  // The published plan, or with dry_run the candidate (version 0); nothing changes then.
  absl::StatusOr<v1::Plan> Rebalance(absl::string_view deployment, bool dry_run = false);

  // ---- Load ----
  // Sends `reports` in order on one ReportLoad stream and returns the planner's summary, or the
  // stream's error (the planner keeps the reports before the first one it refused). A summary
  // that does not count every report once (accepted or duplicate) is DATA_LOSS: sending the
  // reports again is safe, the planner counts each sequence number once. Each report must fit the
  // planner's --max-request-bytes (2 MiB by default; RESOURCE_EXHAUSTED otherwise): SplitByLayers
  // (report_parts.h) cuts a larger one into reports over layer ranges.
  absl::StatusOr<v1::ReportSummary> ReportLoad(std::span<const v1::LoadReport> reports);
  absl::StatusOr<v1::GetLoadResponse> GetLoad(absl::string_view deployment);

  // ---- Rendezvous ----
  // Publishes `value` (≤ 4096 bytes) under `key` for the deployment's ranks.
  absl::Status PublishRendezvous(absl::string_view deployment, absl::string_view key,
                                 absl::string_view value);
  // The value published under `key`, polling (with backoff up to 200 ms) until it is there or
  // `timeout` passed (DEADLINE_EXCEEDED naming the key). Other errors (an unknown deployment, the
  // planner unreachable for longer than the timeout) are returned as they come.
  absl::StatusOr<std::string> AwaitRendezvous(absl::string_view deployment, absl::string_view key,
                                              absl::Duration timeout);

  // ---- Watch ----
  // Opens a WatchPlans stream and sends `subscribe` on it, with accept_map_delta set (Watch
  // rebuilds every map). `resume`, an earlier watch of the same deployment, lends the maps it
  // received, so that plans built on them arrive as deltas (a map that does not match its hash is
  // never used). The error of the stream (e.g. UNAVAILABLE) if it cannot be opened; errors about
  // the subscription itself (an unknown deployment, a rank out of range) come from the first
  // Watch::Next(). The client must outlive the watch.
  absl::StatusOr<std::unique_ptr<Watch>> StartWatch(
      const v1::WatchPlansRequest::Subscribe& subscribe, const Watch* resume = nullptr);

  // The channel, e.g. to wait for it to connect or to call the health service. Owned by the
  // client.
  grpc::Channel* channel() const { return channel_.get(); }

 private:
  PlannerClient(const PlannerClientOptions& options, std::shared_ptr<grpc::Channel> channel);
  // Adds the bearer token and, for unary calls and report streams, the deadline.
  void PrepareContext(grpc::ClientContext* context, bool with_deadline) const;

  const std::string bearer_token_;
  const absl::Duration rpc_timeout_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Planner::Stub> stub_;
};

// One WatchPlans stream, subscribed. The planner sends the current plan at once, then every plan
// published and every change of a plan's state; the rank acknowledges with Ack().
//
// Maps travel as deltas where they can: a plan as the layers that differ from a map this watch
// already holds, a change of state without the map. Next() returns every plan with its whole map:
// the delta applied to the held map whose content hash the planner named, checked against the
// plan's map_hash; when the base is not held or anything does not match, the map is fetched whole
// with GetPlan (and checked the same way). If that fails too, an ABORTED plan comes without its
// map's rows (nobody stages it); for any other, Next() returns UNAVAILABLE and the stream ends (a
// new one gets the map whole). Only maps that match their plan's hash are kept as bases.
//
// Thread-safety: Next() and Ack() may run at the same time on different threads (one reader, one
// writer); calls of one of them are serialized. Cancel() may be called from any thread at any
// time, e.g. to wake a thread blocked in Next(). Destroying the Watch cancels the stream; no call
// may be in progress then.
class PlannerClient::Watch {
 public:
  ~Watch();
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;

  // Blocks for the next response. Once the stream has ended, returns its final status, now and on
  // every later call: the planner's error (e.g. NOT_FOUND when the deployment is deleted),
  // CANCELLED after Cancel(), or OUT_OF_RANGE when the planner closed the stream without an error.
  absl::StatusOr<v1::WatchPlansResponse> Next();

  // Sends an acknowledgement (set its nonce to that of the response it answers).
  // FAILED_PRECONDITION once the stream has ended (Next() returns why) or after Cancel().
  absl::Status Ack(const v1::WatchPlansRequest::Ack& ack);

  // Ends the stream: a blocked Next() returns CANCELLED, later Acks fail. Idempotent.
  void Cancel();

  // How the maps of the responses returned so far arrived.
  struct MapArrivals {
    int64_t whole = 0;    // in the response
    int64_t delta = 0;    // as changed layers, applied to a held map
    int64_t held = 0;     // a change of state only: the map was already held
    int64_t fetched = 0;  // with GetPlan (no usable base, or a mismatch)
    MapArrivals& operator+=(const MapArrivals& other) {
      whole += other.whole;
      delta += other.delta;
      held += other.held;
      fetched += other.fetched;
      return *this;
    }
  };
  MapArrivals map_arrivals() const;

  // Maps kept by version to apply deltas to (the planner assumes at most 4).
  static constexpr size_t kHeldMaps = 5;

 private:
  friend class PlannerClient;
  struct HeldMap {
    uint64_t hash = 0;  // MapContentHash
    std::shared_ptr<const v1::ExpertMap> map;
    uint64_t used = 0;  // when it last arrived or served as a base (a tick of `uses_`)
  };
  Watch(PlannerClient* client, std::string deployment)
      : client_(client), deployment_(std::move(deployment)) {}
  // Reads the final status once Read() returned false. REQUIRES: read_mu_ held.
  void FinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(read_mu_);
  // Gives `response` its whole map (see the class comment) and holds it.
  absl::Status RebuildMap(v1::WatchPlansResponse& response) ABSL_EXCLUSIVE_LOCKS_REQUIRED(read_mu_);
  // The map of the response's version fetched with GetPlan, checked against its hash.
  absl::StatusOr<std::shared_ptr<const v1::ExpertMap>> FetchMap(const v1::Plan& plan);
  // Keeps `map` (its content hash computed here) as a base for deltas; beyond kHeldMaps the one
  // least recently used goes, in the order the planner keeps (a base is used when a delta names
  // it), so that the planner's bases are always among the maps held.
  void Hold(int64_t version, std::shared_ptr<const v1::ExpertMap> map)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(maps_mu_);

  PlannerClient* const client_;
  const std::string deployment_;

  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::WatchPlansRequest, v1::WatchPlansResponse>> stream_;

  absl::Mutex read_mu_;
  // Set when the stream ended and Finish() was called; then `final_status_` holds why.
  bool finished_ ABSL_GUARDED_BY(read_mu_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(read_mu_);

  // Taken briefly (never across a read), so that another watch may resume from this one and
  // map_arrivals() never waits for a message.
  mutable absl::Mutex maps_mu_ ABSL_ACQUIRED_AFTER(read_mu_);
  std::map<int64_t, HeldMap> held_ ABSL_GUARDED_BY(maps_mu_);
  uint64_t uses_ ABSL_GUARDED_BY(maps_mu_) = 0;
  MapArrivals arrivals_ ABSL_GUARDED_BY(maps_mu_);

  // The GetPlan call of FetchMap in progress, for Cancel() to end it too.
  absl::Mutex fetch_mu_;
  grpc::ClientContext* fetch_context_ ABSL_GUARDED_BY(fetch_mu_) = nullptr;
  bool cancelled_ ABSL_GUARDED_BY(fetch_mu_) = false;

  // Serializes writes, and writes with Finish() (gRPC allows neither to overlap).
  absl::Mutex write_mu_ ABSL_ACQUIRED_AFTER(read_mu_);
  bool writes_closed_ ABSL_GUARDED_BY(write_mu_) = false;
};

}  // namespace eplb::client

#endif  // EPLB_CLIENT_PLANNER_CLIENT_H_
