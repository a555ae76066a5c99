// eplb-planner: the planner service. Flags below, spelled with dashes or underscores;
// `--flagfile=FILE` reads them from a file (one per line) and `--helpfull` lists them all. Exit
// status: 0 after a graceful stop (SIGTERM, SIGINT), 1 when it cannot start (bad flags, unreadable
// state, port in use).
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "core/balanced_policy.h"
#include "core/clock.h"
#include "core/file_io.h"
#include "core/policy.h"
#include "core/status_macros.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "server/footprint.h"
#include "server/planner_server.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051",
          "gRPC address HOST:PORT; port 0 picks a free port (logged, and written to --port-file)");
ABSL_FLAG(int, metrics_port, 9464,
          "Port of the Prometheus /metrics endpoint, on the host --listen names; 0 picks a free "
          "one, -1 disables it");
ABSL_FLAG(std::string, state_dir, "./eplb-state",
          "Directory of deployments, plan history and load checkpoints (created if missing)");
ABSL_FLAG(std::string, port_file, "",
          "If set, the bound gRPC port is written here (atomically) once the planner serves");
ABSL_FLAG(std::string, default_policy, "balanced",
          "Placement policy of deployments created without one: balanced, deepseek or contiguous");
ABSL_FLAG(int, plan_threads, 4,
          "Threads the balanced policy plans layers on; 0: one per hardware thread (0 to 1024)");
ABSL_FLAG(absl::Duration, checkpoint_interval, absl::Seconds(10),
          "How often a deployment's smoothed load is written to the state directory (1s to 1h)");
ABSL_FLAG(int, max_message_bytes, 64 << 20,
          "Largest gRPC message sent (plans, GetLoad responses), in bytes (1 MiB to 1 GiB)");
ABSL_FLAG(int, max_request_bytes, 2 << 20,
          "Largest gRPC message received, in bytes (1 MiB to --max-message-bytes); larger load "
          "reports are sent in parts over layer ranges");
ABSL_FLAG(absl::Duration, report_read_timeout, absl::Seconds(30),
          "How long a ReportLoad stream may hold part of the read budget waiting for its next "
          "message before it is cancelled (1s to 1h)");
ABSL_FLAG(absl::Duration, keepalive_time, absl::Seconds(30),
          "Interval of HTTP/2 keepalive pings on idle connections (1s to 1h)");
ABSL_FLAG(absl::Duration, keepalive_timeout, absl::Seconds(10),
          "How long a keepalive ping may stay unanswered before the connection is closed");
ABSL_FLAG(std::string, max_memory, "auto",
          "Memory budget: what deployments may hold plus gRPC's buffers; bytes with an optional "
          "suffix (K M G T: powers of 1000; Ki Mi Gi Ti: powers of 1024), 'auto' (3/4 of the "
          "container's memory limit, or of physical memory without one) or 'none'");
ABSL_FLAG(int, worker_threads, 4,
          "Threads that plan, validate and persist; each deployment's work runs in order on one "
          "at a time, different deployments' in parallel (1 to 1024)");
ABSL_FLAG(int, max_deployments, 1000, "Deployments the planner holds at most (1 to 100000)");
ABSL_FLAG(int, max_watch_queue, 64,
          "Plan updates a watch stream may fall behind by before it is ended (2 to 10000)");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(5),
          "On SIGTERM, how long calls in flight get to finish");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (with --tls-key enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: clients must present a certificate it signed (mutual TLS)");
ABSL_FLAG(std::string, bearer_token_file, "",
          "File holding a bearer token every call must carry (authorization: Bearer <token>); "
          "the environment variable EPLB_TOKEN is used when this is empty");
ABSL_FLAG(std::string, credentials, "",
          "YAML file of scoped credentials (tokens or client-certificate identities, each with "
          "scope admin, read or deployment; see the README's Security and limits)");
ABSL_FLAG(bool, insecure, false,
          "Serve a --listen address beyond loopback without credentials (a bearer token or "
          "client certificates); without this flag the planner refuses to");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error");
ABSL_FLAG(bool, check_flags, false,
          "Check the flags (and the files they name) and exit: 0 when the planner would start "
          "with them, 1 naming the first problem; nothing is served or written");

namespace {

using eplb::server::PlannerServer;
using eplb::server::PlannerServerOptions;

// Flags are spelled with dashes or underscores (--state-dir or --state_dir). Abseil knows only
// the underscore form, so names are normalised here, flag files included: --flagfile=F is
// expanded in place (one flag per line; blank lines and lines starting with # are skipped).
absl::Status NormalizeArgs(const std::vector<std::string>& in, int depth,
                           std::vector<std::string>& out) {
  for (const std::string& arg : in) {
    if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) {
      out.push_back(arg);
      continue;
    }
    const size_t eq = arg.find('=');
    std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    for (char& c : name) {
      if (c == '-') c = '_';
    }
    const std::string value = eq == std::string::npos ? "" : arg.substr(eq);
    if (name != "flagfile") {
      out.push_back(absl::StrCat("--", name, value));
      continue;
    }
    if (value.size() < 2) return absl::InvalidArgumentError("--flagfile needs =FILE");
    if (depth >= 8) return absl::InvalidArgumentError("flag files nest more than 8 deep");
    const std::string path = value.substr(1);
    auto contents = eplb::ReadFileToString(path, size_t{1} << 20);
    if (!contents.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--flagfile: ", contents.status().message()));
    }
    std::vector<std::string> lines;
    for (absl::string_view line : absl::StrSplit(*contents, '\n')) {
      line = absl::StripAsciiWhitespace(line);
      if (line.empty() || line[0] == '#') continue;
      lines.emplace_back(line);
    }
    if (absl::Status status = NormalizeArgs(lines, depth + 1, out); !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", status.message()));
    }
  }
  return absl::OkStatus();
}

// "4Gi", "512Mi", "1.5G", "1073741824": bytes.
absl::StatusOr<int64_t> ParseBytes(absl::string_view text) {
  static constexpr std::pair<absl::string_view, double> kSuffixes[] = {
      {"Ki", 1024.0}, {"Mi", 1048576.0}, {"Gi", 1073741824.0}, {"Ti", 1099511627776.0},
      {"K", 1e3},     {"M", 1e6},        {"G", 1e9},           {"T", 1e12},
      {"", 1.0}};
  for (const auto& [suffix, scale] : kSuffixes) {
    if (!absl::EndsWith(text, suffix)) continue;
    double number = 0;
    if (!absl::SimpleAtod(text.substr(0, text.size() - suffix.size()), &number)) continue;
    const double bytes = number * scale;
    if (!(bytes >= 0) || bytes > 9e18) break;
    return static_cast<int64_t>(bytes);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--max-memory=", text,
                   " is not a size (bytes, with an optional K, M, G, T, Ki, Mi, Gi or Ti), "
                   "'auto' or 'none'"));
}

// The container's memory limit (cgroup v2, then v1), or 0 when there is none.
int64_t ContainerMemoryLimit() {
  for (const char* path :
       {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    auto contents = eplb::ReadFileToString(path, 4096);
    if (!contents.ok()) continue;
    int64_t limit = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(*contents), &limit) && limit > 0 &&
        limit < (int64_t{1} << 60)) {
      return limit;
    }
  }
  return 0;
}

absl::StatusOr<int64_t> MemoryBudget(const std::string& flag) {
  if (flag == "none") return 0;
  if (flag != "auto") {
    ASSIGN_OR_RETURN(const int64_t bytes, ParseBytes(flag));
    if (bytes < (int64_t{256} << 20)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--max-memory=", flag, " is less than the smallest budget, 256Mi"));
    }
    return bytes;
  }
  const int64_t physical = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  const int64_t container = ContainerMemoryLimit();
  const int64_t limit = container > 0 ? std::min(container, physical) : physical;
  return std::max<int64_t>(limit / 4 * 3, int64_t{256} << 20);
}

// The host of HOST:PORT ("0.0.0.0", "[::1]", "localhost").
std::string ListenHost(const std::string& listen) { return listen.substr(0, listen.rfind(':')); }

bool IsLoopback(absl::string_view host) {
  return host == "localhost" || host == "[::1]" || host == "::1" || absl::StartsWith(host, "127.");
}

int Fail(const std::string& message) {
  spdlog::error("{}", message);
  return 1;
}

// Reads a PEM or token file; an empty path gives an empty string.
absl::StatusOr<std::string> ReadOptional(const std::string& path, const std::string& flag) {
  if (path.empty()) return std::string();
  auto contents = eplb::ReadFileToString(path, size_t{1} << 20);
  if (!contents.ok()) {
    return absl::Status(contents.status().code(),
                        absl::StrCat("--", flag, ": ", contents.status().message()));
  }
  return contents;
}

absl::StatusOr<PlannerServerOptions> OptionsFromFlags() {
  PlannerServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  options.planner.default_policy = absl::GetFlag(FLAGS_default_policy);
  options.planner.plan_threads = absl::GetFlag(FLAGS_plan_threads);
  if (options.planner.plan_threads < 0 ||
      options.planner.plan_threads > eplb::BalancedOptions::kMaxThreads) {
    return absl::InvalidArgumentError(absl::StrCat("--plan-threads=", options.planner.plan_threads,
                                                   " is out of range [0, ",
                                                   eplb::BalancedOptions::kMaxThreads, "]"));
  }
  options.planner.checkpoint_interval = absl::GetFlag(FLAGS_checkpoint_interval);
  if (options.planner.checkpoint_interval < absl::Seconds(1) ||
      options.planner.checkpoint_interval > absl::Hours(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--checkpoint-interval=", absl::FormatDuration(options.planner.checkpoint_interval),
        " is out of range [1s, 1h]"));
  }
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  if (options.max_message_bytes < (1 << 20) || options.max_message_bytes > (1 << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-message-bytes=", options.max_message_bytes,
                     " is out of range [1048576, 1073741824]"));
  }
  options.max_request_bytes = absl::GetFlag(FLAGS_max_request_bytes);
  if (options.max_request_bytes < (1 << 20) ||
      options.max_request_bytes > options.max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-request-bytes=", options.max_request_bytes, " is out of range [1048576, ",
        options.max_message_bytes, "] (at most --max-message-bytes)"));
  }
  options.keepalive_time = absl::GetFlag(FLAGS_keepalive_time);
  options.keepalive_timeout = absl::GetFlag(FLAGS_keepalive_timeout);
  if (options.keepalive_time < absl::Seconds(1) || options.keepalive_time > absl::Hours(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--keepalive-time=", absl::FormatDuration(options.keepalive_time),
                     " is out of range [1s, 1h]"));
  }
  if (options.keepalive_timeout < absl::Seconds(1) || options.keepalive_timeout > absl::Hours(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--keepalive-timeout=", absl::FormatDuration(options.keepalive_timeout),
                     " is out of range [1s, 1h]"));
  }
  options.report_read_timeout = absl::GetFlag(FLAGS_report_read_timeout);
  if (options.report_read_timeout < absl::Seconds(1) ||
      options.report_read_timeout > absl::Hours(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--report-read-timeout=", absl::FormatDuration(options.report_read_timeout),
                     " is out of range [1s, 1h]"));
  }
  ASSIGN_OR_RETURN(options.max_memory_bytes, MemoryBudget(absl::GetFlag(FLAGS_max_memory)));
  options.planner.max_deployments = absl::GetFlag(FLAGS_max_deployments);
  if (options.planner.max_deployments < 1 || options.planner.max_deployments > 100000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-deployments=", options.planner.max_deployments, " is out of range [1, 100000]"));
  }
  options.planner.worker_threads = absl::GetFlag(FLAGS_worker_threads);
  if (options.planner.worker_threads < 1 || options.planner.worker_threads > 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--worker-threads=", options.planner.worker_threads, " is out of range [1, 1024]"));
  }
  options.service.max_watch_queue = absl::GetFlag(FLAGS_max_watch_queue);
  if (options.service.max_watch_queue < 2 || options.service.max_watch_queue > 10000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-watch-queue=", options.service.max_watch_queue, " is out of range [2, 10000]"));
  }
  auto cert = ReadOptional(absl::GetFlag(FLAGS_tls_cert), "tls-cert");
  if (!cert.ok()) return cert.status();
  auto key = ReadOptional(absl::GetFlag(FLAGS_tls_key), "tls-key");
  if (!key.ok()) return key.status();
  auto client_ca = ReadOptional(absl::GetFlag(FLAGS_tls_client_ca), "tls-client-ca");
  if (!client_ca.ok()) return client_ca.status();
  options.tls_cert_pem = *std::move(cert);
  options.tls_key_pem = *std::move(key);
  options.tls_client_ca_pem = *std::move(client_ca);
  auto token = ReadOptional(absl::GetFlag(FLAGS_bearer_token_file), "bearer-token-file");
  if (!token.ok()) return token.status();
  std::string token_text(absl::StripAsciiWhitespace(*token));
  if (token_text.empty() && absl::GetFlag(FLAGS_bearer_token_file).empty()) {
    if (const char* env = std::getenv("EPLB_TOKEN"); env != nullptr) {
      token_text = std::string(absl::StripAsciiWhitespace(env));
    }
  } else if (token_text.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--bearer-token-file: ", absl::GetFlag(FLAGS_bearer_token_file), " is empty"));
  }
  options.service.bearer_token = token_text;
  if (const std::string path = absl::GetFlag(FLAGS_credentials); !path.empty()) {
    auto text = eplb::ReadFileToString(path, eplb::server::kMaxCredentialsFileBytes);
    if (!text.ok()) {
      return absl::Status(text.status().code(),
                          absl::StrCat("--credentials: ", text.status().message()));
    }
    ASSIGN_OR_RETURN(options.service.credentials, eplb::server::ParseCredentials(*text, path));
    if (options.service.credentials.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--credentials: ", path, " lists none"));
    }
  }
  // Checked here too, so that --check-flags names a bad credential.
  if (auto access = eplb::server::AccessControl::Create(
          options.service.bearer_token, options.service.credentials,
          /*mutual_tls=*/!options.tls_client_ca_pem.empty());
      !access.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.service.credentials.empty() ? "--bearer-token-file/EPLB_TOKEN: "
                                                         : "--credentials: ",
                     access.status().message()));
  }
  if (!IsLoopback(ListenHost(options.listen)) && options.service.bearer_token.empty() &&
      options.service.credentials.empty() && options.tls_client_ca_pem.empty() &&
      !absl::GetFlag(FLAGS_insecure)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--listen=", options.listen,
        " accepts calls from the network and no credentials are set: give a bearer token "
        "(--bearer-token-file or EPLB_TOKEN), scoped credentials (--credentials) or client "
        "certificates (--tls-client-ca), listen on 127.0.0.1, or pass --insecure to serve "
        "without"));
  }
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "eplb-planner: the expert-placement planner service.\n"
      "  eplb-planner [--listen=HOST:PORT] [--state_dir=DIR] [--metrics_port=PORT] "
      "[--flagfile=FILE] ...");
  std::vector<std::string> args;
  if (absl::Status status = NormalizeArgs(std::vector<std::string>(argv + 1, argv + argc), 0, args);
      !status.ok()) {
    std::cerr << "eplb-planner: " << status.message() << "\n";
    return 1;
  }
  args.insert(args.begin(), argv[0]);
  std::vector<char*> normalized;
  for (std::string& arg : args) normalized.push_back(arg.data());
  absl::ParseCommandLine(static_cast<int>(normalized.size()), normalized.data());
  // A long-lived server: keep freed heap memory rather than returning it to the kernel after every
  // large message and faulting it back in for the next.
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  // The Abseil build may track the order of every Mutex acquisition to detect deadlocks (a global
  // graph behind a spin lock, on every Lock); the tests keep it, the server does not pay for it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const auto level = spdlog::level::from_str(absl::GetFlag(FLAGS_log_level));
  if (level == spdlog::level::off && absl::GetFlag(FLAGS_log_level) != "off") {
    return Fail(absl::StrCat("--log-level=", absl::GetFlag(FLAGS_log_level),
                             " is not one of trace, debug, info, warn, error"));
  }
  spdlog::set_default_logger(spdlog::stderr_color_mt("eplb-planner"));  // logs to stderr
  spdlog::set_level(level);

  // Signals are taken by sigwait below; every thread started from here on inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto options = OptionsFromFlags();
  if (!options.ok()) return Fail(std::string(options.status().message()));

  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<prometheus::Exposer> exposer;
  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  if (metrics_port > 65535 || metrics_port < -1) {
    return Fail(absl::StrCat("--metrics-port=", metrics_port, " is out of range [-1, 65535]"));
  }
  if (absl::GetFlag(FLAGS_check_flags)) {
    if (auto checked = PlannerServer::CheckOptions(*options); !checked.ok()) {
      return Fail(std::string(checked.status().message()));
    }
    if (auto policy = eplb::CreatePolicy(options->planner.default_policy); !policy.ok()) {
      return Fail(absl::StrCat("--default-policy: ", policy.status().message()));
    }
    std::cout << "eplb-planner: the flags are valid\n";
    return 0;
  }
  auto server = PlannerServer::Start(*options, eplb::RealClock::Get(), registry);
  if (!server.ok()) return Fail(absl::StrCat("cannot start: ", server.status().ToString()));

  int bound_metrics_port = -1;
  if (metrics_port >= 0) {
    try {
      exposer = std::make_unique<prometheus::Exposer>(
          absl::StrCat(ListenHost(options->listen), ":", metrics_port));
    } catch (const std::exception& error) {
      (*server)->Shutdown(absl::ZeroDuration());
      return Fail(absl::StrCat("cannot serve metrics on port ", metrics_port, ": ", error.what()));
    }
    exposer->RegisterCollectable(registry);
    const std::vector<int> ports = exposer->GetListeningPorts();
    bound_metrics_port = ports.empty() ? metrics_port : ports.front();
  }
  const std::string host = ListenHost(options->listen);
  spdlog::info("eplb-planner serving on {}:{} ({}), metrics on {}, state in {}, memory budget {}",
               host, (*server)->port(), options->tls_cert_pem.empty() ? "plaintext" : "TLS",
               bound_metrics_port >= 0 ? absl::StrCat(":", bound_metrics_port, "/metrics")
                                       : std::string("(disabled)"),
               options->state_dir,
               options->max_memory_bytes > 0 ? eplb::server::FormatBytes(options->max_memory_bytes)
                                             : std::string("none"));
  if (const std::string port_file = absl::GetFlag(FLAGS_port_file); !port_file.empty()) {
    if (absl::Status status =
            eplb::WriteFileAtomically(port_file, absl::StrCat((*server)->port(), "\n"));
        !status.ok()) {
      (*server)->Shutdown(absl::ZeroDuration());
      return Fail(absl::StrCat("--port-file: ", status.message()));
    }
  }

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("received {}, shutting down", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  (*server)->Shutdown(absl::GetFlag(FLAGS_shutdown_grace));
  spdlog::info("stopped");
  return 0;
}
