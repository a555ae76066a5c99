#include "client/planner_client.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/backoff.h"
#include "core/file_io.h"
#include "core/status_macros.h"
#include "proto/convert.h"
#include "spdlog/spdlog.h"

namespace eplb::client {
namespace {

// PEM files are small; anything near this is not one.
constexpr size_t kMaxPemBytes = size_t{1} << 20;

enum class PemKind { kCertificate, kPrivateKey };

// Reads a PEM file and checks that it holds a block of the expected kind, so that a wrong file is
// named here rather than failing the TLS handshake later with a message that names no file.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, PemKind kind) {
  ASSIGN_OR_RETURN(std::string pem, ReadFileToString(path, kMaxPemBytes));
  const bool found =
      kind == PemKind::kCertificate
          ? absl::StrContains(pem, "-----BEGIN CERTIFICATE-----")
          : absl::StrContains(pem, "-----BEGIN") && absl::StrContains(pem, "PRIVATE KEY-----");
  if (!found) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, " holds no PEM ", kind == PemKind::kCertificate ? "certificate" : "private key"));
  }
  return pem;
}

absl::Status CheckOptions(const PlannerClientOptions& options) {
  if (options.server.empty()) return absl::InvalidArgumentError("the server address is required");
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs both its certificate and its key file");
  }
  if (options.tls_ca_file.empty() &&
      (!options.tls_cert_file.empty() || !options.tls_server_name.empty())) {
    return absl::InvalidArgumentError(
        "a client certificate or a TLS server name needs TLS (a CA file)");
  }
  if (options.rpc_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the RPC timeout must be positive");
  }
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError("the maximum message size must be positive");
  }
  return absl::OkStatus();
}

// gRPC's retry policy for the calls that only read (the planner's answer does not depend on how
// often it was asked): an UNAVAILABLE attempt (planner restarting, connection reset) is tried
// again, up to 4 attempts in all, after jittered exponential backoff from 0.1 s to 1 s; every
// attempt shares the call's deadline. Calls that change state are not retried here: their callers
// know whether repeating them is safe (LoadReporter resends reports the planner counts once).
constexpr char kServiceConfig[] = R"json({
  "methodConfig": [{
    "name": [
      {"service": "eplb.v1.Planner", "method": "GetDeployment"},
      {"service": "eplb.v1.Planner", "method": "ListDeployments"},
      {"service": "eplb.v1.Planner", "method": "GetPlan"},
      {"service": "eplb.v1.Planner", "method": "ListPlans"},
      {"service": "eplb.v1.Planner", "method": "GetLoad"},
      {"service": "eplb.v1.Planner", "method": "GetRendezvous"}
    ],
    "retryPolicy": {
      "maxAttempts": 4,
      "initialBackoff": "0.1s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
})json";

}  // namespace

absl::StatusOr<std::unique_ptr<PlannerClient>> PlannerClient::Create(
    const PlannerClientOptions& options) {
  RETURN_IF_ERROR(CheckOptions(options));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetServiceConfigJSON(kServiceConfig);
  // Reconnect as promptly as the watcher and the reporter retry (gRPC's default starts at 1 s and
  // grows to 120 s): after a planner restart, plans and reports resume within a fraction of a
  // second of it serving again.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls_ca_file.empty()) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPemFile(options.tls_ca_file, PemKind::kCertificate));
    if (!options.tls_cert_file.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_cert_chain,
                       ReadPemFile(options.tls_cert_file, PemKind::kCertificate));
      ASSIGN_OR_RETURN(ssl.pem_private_key,
                       ReadPemFile(options.tls_key_file, PemKind::kPrivateKey));
    }
    if (!options.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(options.tls_server_name);
    }
    credentials = grpc::SslCredentials(ssl);
  }
  auto channel = grpc::CreateCustomChannel(options.server, credentials, args);
  return std::unique_ptr<PlannerClient>(new PlannerClient(options, std::move(channel)));
}

PlannerClient::PlannerClient(const PlannerClientOptions& options,
                             std::shared_ptr<grpc::Channel> channel)
    : bearer_token_(options.bearer_token),
      rpc_timeout_(options.rpc_timeout),
      channel_(std::move(channel)),
      stub_(v1::Planner::NewStub(channel_)) {}

void PlannerClient::PrepareContext(grpc::ClientContext* context, bool with_deadline) const {
  if (!bearer_token_.empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", bearer_token_));
  }
  if (with_deadline) {
    context->set_deadline(std::chrono::system_clock::now() +
                          absl::ToChronoNanoseconds(rpc_timeout_));
  }
}

absl::StatusOr<v1::Deployment> PlannerClient::CreateDeployment(const v1::DeploymentSpec& spec) {
  grpc::ClientContext context;
  PrepareContext(&context, /*with_deadline=*/true);
  v1::CreateDeploymentRequest request;
  *request.mutable_spec() = spec;
  v1::Deployment response;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->CreateDeployment(&context, request, &response)));
  return response;
}

absl::StatusOr<v1::Deployment> PlannerClient::GetDeployment(absl::string_view name) {
  grpc::ClientContext context;
  PrepareContext(&context, /*with_deadline=*/true);
  v1::GetDeploymentRequest request;
  request.set_name(std::string(name));
  v1::Deployment response;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->GetDeployment(&context, request, &response)));
  return response;
}

absl::StatusOr<std::vector<v1::Deployment>> PlannerClient::ListDeployments() {
  grpc::ClientContext context;
  PrepareContext(&context, /*with_deadline=*/true);
  v1::ListDeploymentsResponse response;
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->ListDeployments(&context, v1::ListDeploymentsRequest(), &response)));
  return std::vector<v1::Deployment>(
      std::make_move_iterator(response.mutable_deployments()->begin()),
      std::make_move_iterator(response.mutable_deployments()->end()));
}

absl::Status PlannerClient::DeleteDeployment(absl::string_view name) {
  grpc::ClientContext context;
  PrepareContext(&context, /*with_deadline=*/true);
  v1::DeleteDeploymentRequest request;
  request.set_name(std::string(name));
  v1::DeleteDeploymentResponse response;
  return FromGrpcStatus(stub_->DeleteDeployment(&context, request, &response));
}

absl::StatusOr<v1::Plan> PlannerClient::GetPlan(absl::string_view deployment, int64_t version) {
  grpc::ClientContext context;
  PrepareContext(&context, /*with_deadline=*/true);
  v1::GetPlanRequest request;
  request.set_deployment(std::string(deployment));
  request.set_version(version);
  v1::Plan response;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->GetPlan(&context, request, &response)));
  return response;
}

absl::StatusOr<std::vector<v1::Plan>> PlannerClient::ListPlans(absl::string_view deployment,
                                                               bool include_maps) {
  grpc::ClientContext context;
  PrepareContext(&context, /*with_deadline=*/true);
  v1::ListPlansRequest request;
  request.set_deployment(std::string(deployment));
  request.set_include_maps(include_maps);
  v1::ListPlansResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->ListPlans(&context, request, &response)));
  return std::vector<v1::Plan>(std::make_move_iterator(response.mutable_plans()->begin()),
                               std::make_move_iterator(response.mutable_plans()->end()));
}

absl::StatusOr<v1::Plan> PlannerClient::Rebalance(absl::string_view deployment, bool dry_run) {
  grpc::ClientContext context;
  PrepareContext(&context, /*with_deadline=*/true);
  v1::RebalanceRequest request;
  request.set_deployment(std::string(deployment));
  request.set_dry_run(dry_run);
  v1::RebalanceResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->Rebalance(&context, request, &response)));
  return std::move(*response.mutable_plan());
}

absl::StatusOr<v1::ReportSummary> PlannerClient::ReportLoad(
    std::span<const v1::LoadReport> reports) {
  grpc::ClientContext context;
  PrepareContext(&context, /*with_deadline=*/true);
  v1::ReportSummary summary;
  std::unique_ptr<grpc::ClientWriter<v1::LoadReport>> writer =
      stub_->ReportLoad(&context, &summary);
  for (const v1::LoadReport& report : reports) {
    // A failed write means the stream is over; Finish() says why.
    if (!writer->Write(report)) break;
  }
  writer->WritesDone();
  RETURN_IF_ERROR(FromGrpcStatus(writer->Finish()));
  // Every report is counted once, as accepted or as a duplicate; a stream that ended early
  // without an error (a proxy, a planner that dropped input) is not a success.
  const int64_t counted = summary.accepted() + summary.duplicates();
  if (counted != static_cast<int64_t>(reports.size())) {
    return absl::DataLossError(absl::StrCat("the planner counted ", counted, " of ", reports.size(),
                                            " load reports (", summary.accepted(), " accepted, ",
                                            summary.duplicates(), " duplicates)"));
  }
  return summary;
}

absl::Status PlannerClient::PublishRendezvous(absl::string_view deployment, absl::string_view key,
                                              absl::string_view value) {
  grpc::ClientContext context;
  PrepareContext(&context, /*with_deadline=*/true);
  v1::PublishRendezvousRequest request;
  request.set_deployment(std::string(deployment));
  request.set_key(std::string(key));
  request.set_value(std::string(value));
  v1::PublishRendezvousResponse response;
  return FromGrpcStatus(stub_->PublishRendezvous(&context, request, &response));
}

absl::StatusOr<std::string> PlannerClient::AwaitRendezvous(absl::string_view deployment,
                                                           absl::string_view key,
                                                           absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  Backoff backoff({.initial = absl::Milliseconds(5), .max = absl::Milliseconds(200)});
  for (;;) {
    grpc::ClientContext context;
    PrepareContext(&context, /*with_deadline=*/true);
    v1::GetRendezvousRequest request;
    request.set_deployment(std::string(deployment));
    request.set_key(std::string(key));
    v1::GetRendezvousResponse response;
    const absl::Status status = FromGrpcStatus(stub_->GetRendezvous(&context, request, &response));
    if (status.ok()) return std::move(*response.mutable_value());
    const auto detail = GetErrorDetail(status);
    const bool not_yet = detail.has_value() && detail->reason() == v1::RENDEZVOUS_NOT_FOUND;
    if (!not_yet && !absl::IsUnavailable(status)) return status;
    const absl::Duration wait = backoff.Next();
    if (absl::Now() + wait > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "rendezvous key \"", key, "\" of deployment ", deployment, " not published within ",
          absl::FormatDuration(timeout), " (last: ", status.message(), ")"));
    }
    absl::SleepFor(wait);
  }
}

absl::StatusOr<v1::GetLoadResponse> PlannerClient::GetLoad(absl::string_view deployment) {
  grpc::ClientContext context;
  PrepareContext(&context, /*with_deadline=*/true);
  v1::GetLoadRequest request;
  request.set_deployment(std::string(deployment));
  v1::GetLoadResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->GetLoad(&context, request, &response)));
  return response;
}

absl::StatusOr<std::unique_ptr<PlannerClient::Watch>> PlannerClient::StartWatch(
    const v1::WatchPlansRequest::Subscribe& subscribe, const Watch* resume) {
  auto watch = std::unique_ptr<Watch>(new Watch(this, subscribe.deployment()));
  if (resume != nullptr && resume->deployment_ == subscribe.deployment()) {
    absl::MutexLock from(&resume->maps_mu_);
    absl::MutexLock to(&watch->maps_mu_);
    watch->held_ = resume->held_;
    watch->uses_ = resume->uses_;
  }
  PrepareContext(&watch->context_, /*with_deadline=*/false);
  watch->stream_ = stub_->WatchPlans(&watch->context_);
  v1::WatchPlansRequest request;
  *request.mutable_subscribe() = subscribe;
  request.mutable_subscribe()->set_accept_map_delta(true);
  if (!watch->stream_->Write(request)) {
    absl::MutexLock lock(&watch->read_mu_);
    watch->FinishLocked();
    return watch->final_status_;
  }
  return watch;
}

// ---- Watch --------------------------------------------------------------------------------------

PlannerClient::Watch::~Watch() {
  Cancel();
  absl::MutexLock lock(&read_mu_);
  if (finished_) return;
  // gRPC requires the messages still queued to be read before Finish().
  v1::WatchPlansResponse discarded;
  while (stream_->Read(&discarded)) {
  }
  FinishLocked();
}

void PlannerClient::Watch::FinishLocked() {
  absl::MutexLock lock(&write_mu_);
  writes_closed_ = true;
  const grpc::Status status = stream_->Finish();
  final_status_ = status.ok() ? absl::OutOfRangeError("the planner ended the watch stream")
                              : FromGrpcStatus(status);
  finished_ = true;
}

absl::StatusOr<v1::WatchPlansResponse> PlannerClient::Watch::Next() {
  absl::MutexLock lock(&read_mu_);
  if (finished_) return final_status_;
  v1::WatchPlansResponse response;
  if (stream_->Read(&response)) {
    if (absl::Status rebuilt = RebuildMap(response); !rebuilt.ok()) {
      // The stream goes on without this plan's map: end it, so that the caller resubscribes.
      context_.TryCancel();
      while (stream_->Read(&response)) {
      }
      FinishLocked();
      final_status_ = rebuilt;
      return final_status_;
    }
    return response;
  }
  FinishLocked();
  return final_status_;
}

absl::Status PlannerClient::Watch::RebuildMap(v1::WatchPlansResponse& response) {
  v1::Plan& plan = *response.mutable_plan();
  const int64_t version = plan.version();
  // Whether `map` is the plan's: it parses and hashes to map_hash (phy2log; the replica ranks of
  // the layers a delta leaves alone come from a base checked by its content hash).
  const auto matches = [&plan](const v1::ExpertMap& map) -> absl::Status {
    const absl::StatusOr<ExpertMap> parsed = ExpertMapFromProto(map, "plan.map");
    if (!parsed.ok()) return parsed.status();
    if (parsed->Hash() != plan.map_hash()) {
      return absl::DataLossError("the map does not match the plan's map_hash");
    }
    return absl::OkStatus();
  };
  if (!response.has_map_delta()) {
    // Kept as a base only when it is what the plan says it is.
    if (absl::Status whole = matches(plan.map()); !whole.ok()) {
      spdlog::warn("watch of {}: plan version {}: {}; not kept as a base for deltas", deployment_,
                   version, whole.ToString());
      return absl::OkStatus();
    }
    auto map = std::make_shared<const v1::ExpertMap>(plan.map());
    absl::MutexLock lock(&maps_mu_);
    arrivals_.whole++;
    Hold(version, std::move(map));
    return absl::OkStatus();
  }
  const v1::MapDelta& delta = response.map_delta();
  const bool whole = delta.base_version() == 0;
  std::shared_ptr<const v1::ExpertMap> base;
  if (!whole) {
    absl::MutexLock lock(&maps_mu_);
    const auto held = held_.find(delta.base_version());
    if (held != held_.end() && held->second.hash == delta.base_map_hash()) {
      base = held->second.map;
      held->second.used = ++uses_;
    }
  }
  std::shared_ptr<const v1::ExpertMap> map;
  if (whole || base != nullptr) {
    absl::StatusOr<v1::ExpertMap> applied = ApplyMapDelta(base.get(), plan.map(), delta);
    absl::Status usable = applied.status();
    if (applied.ok()) usable = matches(*applied);
    if (usable.ok()) {
      map = std::make_shared<const v1::ExpertMap>(*std::move(applied));
    } else {
      spdlog::warn("watch of {}: plan version {}: cannot use its map delta ({}); fetching the map",
                   deployment_, version, usable.ToString());
    }
  }
  bool fetched = false;
  if (map == nullptr) {
    absl::StatusOr<std::shared_ptr<const v1::ExpertMap>> got = FetchMap(plan);
    if (!got.ok()) {
      if (plan.state() == v1::ABORTED) {
        // Nobody stages an aborted plan: it goes on without its map rather than ending the watch.
        plan.mutable_map()->clear_phy2log();
        plan.mutable_map()->clear_replica_rank();
        response.clear_map_delta();
        return absl::OkStatus();
      }
      // The stream is fine; a new one (which the caller opens) gets the map whole.
      return absl::UnavailableError(
          absl::StrCat("cannot rebuild the map of plan version ", version,
                       " (no usable base for its delta): ", got.status().ToString()));
    }
    map = *std::move(got);
    fetched = true;
  }
  {
    absl::MutexLock lock(&maps_mu_);
    if (fetched) {
      arrivals_.fetched++;
    } else if (whole) {
      arrivals_.whole++;
    } else if (delta.base_version() == version) {
      arrivals_.held++;
    } else {
      arrivals_.delta++;
    }
    Hold(version, map);
  }
  *plan.mutable_map() = *map;
  response.clear_map_delta();
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const v1::ExpertMap>> PlannerClient::Watch::FetchMap(
    const v1::Plan& plan) {
  grpc::ClientContext context;
  client_->PrepareContext(&context, /*with_deadline=*/true);
  {
    // Cancel() reaches this call too.
    absl::MutexLock lock(&fetch_mu_);
    if (cancelled_) return absl::CancelledError("watch cancelled");
    fetch_context_ = &context;
  }
  v1::GetPlanRequest request;
  request.set_deployment(deployment_);
  request.set_version(plan.version());
  v1::Plan whole;
  const grpc::Status status = client_->stub_->GetPlan(&context, request, &whole);
  {
    absl::MutexLock lock(&fetch_mu_);
    fetch_context_ = nullptr;
  }
  RETURN_IF_ERROR(FromGrpcStatus(status));
  const absl::StatusOr<ExpertMap> parsed = ExpertMapFromProto(whole.map(), "plan.map");
  if (!parsed.ok() || whole.map_hash() != plan.map_hash() || parsed->Hash() != plan.map_hash()) {
    return absl::DataLossError(absl::StrCat("the map GetPlan returned for version ", plan.version(),
                                            " does not match the watched plan's map_hash"));
  }
  return std::make_shared<const v1::ExpertMap>(std::move(*whole.mutable_map()));
}

void PlannerClient::Watch::Hold(int64_t version, std::shared_ptr<const v1::ExpertMap> map) {
  const uint64_t hash = MapContentHash(*map);
  held_[version] = HeldMap{hash, std::move(map), ++uses_};
  while (held_.size() > kHeldMaps) {
    held_.erase(std::min_element(held_.begin(), held_.end(), [](const auto& a, const auto& b) {
      return a.second.used < b.second.used;
    }));
  }
}

PlannerClient::Watch::MapArrivals PlannerClient::Watch::map_arrivals() const {
  absl::MutexLock lock(&maps_mu_);
  return arrivals_;
}

absl::Status PlannerClient::Watch::Ack(const v1::WatchPlansRequest::Ack& ack) {
  absl::MutexLock lock(&write_mu_);
  if (writes_closed_) return absl::FailedPreconditionError("the watch stream has ended");
  v1::WatchPlansRequest request;
  *request.mutable_ack() = ack;
  if (!stream_->Write(request)) {
    return absl::FailedPreconditionError("the watch stream has ended (Next() returns why)");
  }
  return absl::OkStatus();
}

void PlannerClient::Watch::Cancel() {
  // Not under write_mu_: a Write blocked on flow control holds it, and cancelling is what unblocks
  // it. ClientContext::TryCancel is thread-safe.
  context_.TryCancel();
  absl::MutexLock lock(&fetch_mu_);
  cancelled_ = true;
  if (fetch_context_ != nullptr) fetch_context_->TryCancel();
}

}  // namespace eplb::client
