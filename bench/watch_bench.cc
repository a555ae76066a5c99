// watch_bench: time from a new plan to its delivery on many watchers.
//
// Starts a planner in this process (real gRPC over 127.0.0.1, a temporary state directory), opens
// --watchers WatchPlans streams (callback API, spread over --channels connections), then publishes
// --plans plans with Rebalance (commit: immediate) and records, per watcher and plan, the time from
// the Rebalance call to the plan's arrival. Prints p50/p99/max over all deliveries, and the
// Rebalance round trip alone (planning + persistence) as the baseline measured in the same run.
// Watchers read raw bytes and decode only the version (--parse: the whole message, as a rank does
// in a process of its own), so that what is measured is mostly the planner's fan-out. Also prints
// the resident memory per watcher (both ends of the stream: an upper bound for the planner's).
//
// Before each plan every rank reports load in which --changed_layers layers (all by default) move
// and the others stay, so that each plan differs from the one before in those layers. Watchers
// subscribe with accept_map_delta (--delta=false: the whole map every time, as older clients) and
// the bytes per delivered message are printed.
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/clock.h"
#include "eplb/v1/planner.grpc.pb.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/generic/generic_stub.h"
#include "proto/convert.h"
#include "server/planner_server.h"

ABSL_FLAG(int, watchers, 1000, "WatchPlans streams");
ABSL_FLAG(int, channels, 8, "Client connections the streams are spread over");
ABSL_FLAG(int, plans, 20, "Plans published");
ABSL_FLAG(int, layers, 58, "Layers of the deployment");
ABSL_FLAG(int, experts, 256, "Logical experts");
ABSL_FLAG(int, slots, 288, "Physical experts");
ABSL_FLAG(int, ranks, 32, "Ranks");
ABSL_FLAG(int, deployments, 1,
          "Deployments of the same shape, the watchers spread over them; each round rebalances "
          "every one of them, one after the other, and each delivery counts from its own "
          "deployment's Rebalance call");
ABSL_FLAG(bool, parse, false,
          "Watchers parse every message whole (as a rank does in its own process); by default they "
          "read the raw bytes and decode only the plan's version, so that the clients sharing this "
          "process cost little next to the planner");
ABSL_FLAG(bool, delta, true,
          "Watchers accept map deltas (the layers that changed since a map they hold)");
ABSL_FLAG(int64_t, window_steps, 0,
          "Deployments smooth load over a window of this many steps (0: the default EMA)");
ABSL_FLAG(int, steps_per_report, 10, "Steps each round's reports cover");
ABSL_FLAG(int, changed_layers, -1,
          "Layers whose load moves before each plan (-1: every layer); the others report the same "
          "load every time");

namespace {

using eplb::v1::WatchPlansRequest;
using eplb::v1::WatchPlansResponse;

// The plan version of a serialized WatchPlansResponse, from its first bytes (plan = 1 holds
// version = 2 right after the deployment's name); -1 if it is not there.
int64_t VersionOf(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return -1;
  std::string head;
  for (const grpc::Slice& slice : slices) {
    head.append(reinterpret_cast<const char*>(slice.begin()),
                std::min<size_t>(slice.size(), 512 - head.size()));
    if (head.size() >= 512) break;
  }
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(head.data()),
                                            static_cast<int>(head.size()));
  for (uint32_t tag = in.ReadTag(); tag != 0; tag = in.ReadTag()) {
    if (tag == ((1 << 3) | 2)) {  // plan
      uint32_t length = 0;
      if (!in.ReadVarint32(&length)) return -1;
      for (uint32_t inner = in.ReadTag(); inner != 0; inner = in.ReadTag()) {
        if (inner == (2 << 3)) {  // version
          uint64_t version = 0;
          return in.ReadVarint64(&version) ? static_cast<int64_t>(version) : -1;
        }
        if (!google::protobuf::internal::WireFormatLite::SkipField(&in, inner)) return -1;
      }
      return -1;
    }
    if (!google::protobuf::internal::WireFormatLite::SkipField(&in, tag)) return -1;
  }
  return -1;
}

// A WatchPlans stream whose responses arrive as raw bytes: parsed whole (--parse) or only for
// the version.
class Watcher final : public grpc::ClientBidiReactor<WatchPlansRequest, grpc::ByteBuffer> {
 public:
  Watcher(grpc::TemplatedGenericStub<WatchPlansRequest, grpc::ByteBuffer>* stub,
          const std::string& deployment, bool parse)
      : parse_(parse) {
    request_.mutable_subscribe()->set_deployment(deployment);
    request_.mutable_subscribe()->set_rank(-1);
    request_.mutable_subscribe()->set_accept_map_delta(absl::GetFlag(FLAGS_delta));
    stub->PrepareBidiStreamingCall(&context_, "/eplb.v1.Planner/WatchPlans", grpc::StubOptions(),
                                   this);
    StartWrite(&request_);
    StartRead(&response_);
    StartCall();
  }
  void OnWriteDone(bool) override {}
  void OnReadDone(bool ok) override {
    if (!ok) return;
    int64_t version = -1;
    if (parse_) {
      WatchPlansResponse parsed;
      if (grpc::SerializationTraits<WatchPlansResponse>::Deserialize(&response_, &parsed).ok()) {
        version = parsed.plan().version();
      }
    } else {
      version = VersionOf(response_);
    }
    {
      absl::MutexLock lock(&mu_);
      arrivals_.emplace_back(version, absl::Now());
      bytes_.push_back(response_.Length());
    }
    response_.Clear();
    StartRead(&response_);
  }
  void OnDone(const grpc::Status&) override {
    absl::MutexLock lock(&mu_);
    done_ = true;
  }
  // Waits until `version` arrived; returns its arrival time.
  absl::Time WaitFor(int64_t version) {
    absl::MutexLock lock(&mu_);
    absl::Time when = absl::InfinitePast();
    const auto arrived = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (const auto& [v, t] : arrivals_) {
        if (v == version) {
          when = t;
          return true;
        }
      }
      return done_;
    };
    mu_.Await(absl::Condition(&arrived));
    return when;
  }
  // The size of the message that brought `version`; 0 if it did not arrive.
  size_t BytesOf(int64_t version) {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < arrivals_.size(); ++i) {
      if (arrivals_[i].first == version) return bytes_[i];
    }
    return 0;
  }
  void Cancel() { context_.TryCancel(); }
  void WaitDone() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
  }

 private:
  const bool parse_;
  grpc::ClientContext context_;
  WatchPlansRequest request_;
  grpc::ByteBuffer response_;
  absl::Mutex mu_;
  std::vector<std::pair<int64_t, absl::Time>> arrivals_ ABSL_GUARDED_BY(mu_);
  std::vector<size_t> bytes_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

// This process's resident memory, in bytes (0 if /proc is not there).
int64_t ResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  char line[256];
  int64_t kb = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
  }
  std::fclose(f);
  return kb * 1024;
}

double Percentile(std::vector<double> values, double p) {
  std::sort(values.begin(), values.end());
  const size_t index = std::min(values.size() - 1, static_cast<size_t>(p * values.size()));
  return values[index];
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  // As in eplb-planner's main(): keep freed heap memory instead of returning it to the kernel
  // after every message (page faults are the dominant cost otherwise).
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  // The Abseil build may track the order of every Mutex acquisition to detect deadlocks (a global
  // graph behind a spin lock, on every Lock); the tests keep it, the server does not pay for it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const std::string state_dir =
      (std::filesystem::temp_directory_path() / absl::StrCat("eplb-watch-bench-", getpid()))
          .string();
  eplb::server::PlannerServerOptions options;
  options.listen = "127.0.0.1:0";
  options.state_dir = state_dir;
  options.service.max_watch_queue = 1000;
  auto server = eplb::server::PlannerServer::Start(options, eplb::RealClock::Get(), nullptr);
  if (!server.ok()) {
    std::fprintf(stderr, "watch_bench: %s\n", server.status().ToString().c_str());
    return 1;
  }
  const std::string target = absl::StrCat("127.0.0.1:", (*server)->port());
  std::vector<std::unique_ptr<eplb::v1::Planner::Stub>> stubs;
  std::vector<std::unique_ptr<grpc::TemplatedGenericStub<WatchPlansRequest, grpc::ByteBuffer>>>
      raw_stubs;
  for (int i = 0; i < absl::GetFlag(FLAGS_channels); ++i) {
    grpc::ChannelArguments args;
    args.SetInt("eplb.bench.channel", i);
    args.SetMaxReceiveMessageSize(256 << 20);
    auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    stubs.push_back(eplb::v1::Planner::NewStub(channel));
    raw_stubs.push_back(
        std::make_unique<grpc::TemplatedGenericStub<WatchPlansRequest, grpc::ByteBuffer>>(channel));
  }
  eplb::v1::Planner::Stub& stub = *stubs[0];
  const int deployment_count = std::max(1, absl::GetFlag(FLAGS_deployments));
  const auto name_of = [](int d) { return absl::StrCat("bench-", d); };
  const int64_t rss_empty = ResidentBytes();
  for (int d = 0; d < deployment_count; ++d) {
    grpc::ClientContext context;
    eplb::v1::CreateDeploymentRequest request;
    eplb::v1::DeploymentSpec& spec = *request.mutable_spec();
    spec.set_name(name_of(d));
    spec.mutable_shape()->set_num_layers(absl::GetFlag(FLAGS_layers));
    spec.mutable_shape()->set_num_logical_experts(absl::GetFlag(FLAGS_experts));
    spec.mutable_shape()->set_num_physical_experts(absl::GetFlag(FLAGS_slots));
    spec.mutable_shape()->set_num_ranks(absl::GetFlag(FLAGS_ranks));
    spec.set_commit_mode(eplb::v1::COMMIT_MODE_IMMEDIATE);
    if (absl::GetFlag(FLAGS_window_steps) > 0) {
      spec.mutable_smoothing()->set_window_steps(absl::GetFlag(FLAGS_window_steps));
    }
    spec.mutable_trigger()->set_interval_steps(0);
    eplb::v1::Deployment deployment;
    const grpc::Status status = stub.CreateDeployment(&context, request, &deployment);
    if (!status.ok()) {
      std::fprintf(stderr, "watch_bench: %s\n", status.error_message().c_str());
      return 1;
    }
  }
  const int64_t rss_deployments = ResidentBytes();
  // Every rank reports one interval of load for deployment d before plan `round`: the first
  // --changed_layers layers get a skew that turns with the round, the others a fixed one.
  const int layers = absl::GetFlag(FLAGS_layers);
  const int experts = absl::GetFlag(FLAGS_experts);
  const int changed = absl::GetFlag(FLAGS_changed_layers) < 0
                          ? layers
                          : std::min(layers, absl::GetFlag(FLAGS_changed_layers));
  std::vector<int64_t> running(deployment_count, 1);  // the version ranks report against
  const auto report = [&](int d, int round) {
    grpc::ClientContext context;
    eplb::v1::ReportSummary summary;
    auto writer = stub.ReportLoad(&context, &summary);
    eplb::v1::LoadReport load;
    load.set_deployment(name_of(d));
    load.set_session(1);
    load.set_sequence(round + 1);
    const int64_t steps = absl::GetFlag(FLAGS_steps_per_report);
    load.set_first_step(round * steps);
    load.set_last_step(round * steps + steps - 1);
    load.set_plan_version(running[d]);
    for (int l = 0; l < layers; ++l) {
      auto* counts = load.add_layers()->mutable_counts();
      const int turn = l < changed ? round * 37 + l : l;
      for (int e = 0; e < experts; ++e) {
        const int k = (e + turn) % experts;
        counts->Add(1000.0 / (1 + k % 61) + k % 7);
      }
    }
    for (int r = 0; r < absl::GetFlag(FLAGS_ranks); ++r) {
      load.set_rank(r);
      writer->Write(load);
    }
    writer->WritesDone();
    const grpc::Status status = writer->Finish();
    if (!status.ok()) {
      std::fprintf(stderr, "watch_bench: report: %s\n", status.error_message().c_str());
      std::exit(1);
    }
  };
  // One Rebalance (plan, persist with fsync, publish); returns the plan and the call's start.
  const auto rebalance = [&stub, &name_of](int d, eplb::v1::Plan* plan) -> absl::Time {
    grpc::ClientContext context;
    eplb::v1::RebalanceRequest request;
    request.set_deployment(name_of(d));
    eplb::v1::RebalanceResponse response;
    const absl::Time start = absl::Now();
    const grpc::Status status = stub.Rebalance(&context, request, &response);
    if (!status.ok()) {
      std::fprintf(stderr, "watch_bench: rebalance: %s\n", status.error_message().c_str());
      std::exit(1);
    }
    *plan = response.plan();
    return start;
  };
  int round = 0;

  // Baseline, same run: the Rebalance round trip with nobody watching.
  std::vector<double> rebalance_ms;
  std::vector<eplb::v1::Plan> plans(deployment_count);
  for (int p = 0; p < absl::GetFlag(FLAGS_plans); ++p, ++round) {
    report(0, round);
    const absl::Time start = rebalance(0, &plans[0]);
    rebalance_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
    running[0] = plans[0].version();
  }
  for (int d = 1; d < deployment_count; ++d) {
    report(d, round);
    rebalance(d, &plans[d]);
    running[d] = plans[d].version();
  }
  ++round;

  const int64_t rss_before = ResidentBytes();
  const int watcher_count = absl::GetFlag(FLAGS_watchers);
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (int i = 0; i < watcher_count; ++i) {
    watchers.push_back(std::make_unique<Watcher>(raw_stubs[i % raw_stubs.size()].get(),
                                                 name_of(i % deployment_count),
                                                 absl::GetFlag(FLAGS_parse)));
  }
  // All subscribed and holding the current version.
  for (int i = 0; i < watcher_count; ++i) {
    if (watchers[i]->WaitFor(plans[i % deployment_count].version()) == absl::InfinitePast()) {
      std::fprintf(stderr, "watch_bench: watcher %d ended before its first plan\n", i);
      return 1;
    }
  }
  const int64_t rss_watching = ResidentBytes();

  std::vector<double> delivery_ms;
  std::vector<absl::Time> starts(deployment_count);
  std::vector<double> message_bytes;
  std::vector<double> from_publish_ms;
  for (int p = 0; p < absl::GetFlag(FLAGS_plans); ++p, ++round) {
    for (int d = 0; d < deployment_count; ++d) report(d, round);
    for (int d = 0; d < deployment_count; ++d) {
      starts[d] = rebalance(d, &plans[d]);
      running[d] = plans[d].version();
    }
    for (int i = 0; i < watcher_count; ++i) {
      const int d = i % deployment_count;
      const absl::Time arrival = watchers[i]->WaitFor(plans[d].version());
      if (arrival == absl::InfinitePast()) {
        std::fprintf(stderr, "watch_bench: watcher %d ended\n", i);
        return 1;
      }
      delivery_ms.push_back(absl::ToDoubleMilliseconds(arrival - starts[d]));
      from_publish_ms.push_back(
          absl::ToDoubleMilliseconds(arrival - eplb::TimeFromProto(plans[d].publish_time())));
      message_bytes.push_back(static_cast<double>(watchers[i]->BytesOf(plans[d].version())));
    }
  }
  const int64_t rss_after = ResidentBytes();
  const eplb::v1::Plan& plan = plans[0];
  const size_t map_bytes = plan.ByteSizeLong();
  std::printf(
      "watch_bench: %d watchers of %d deployments over %d connections, %d rounds of plans of %zu "
      "bytes (L=%d E=%d P=%d R=%d)\n",
      watcher_count, deployment_count, absl::GetFlag(FLAGS_channels), absl::GetFlag(FLAGS_plans),
      map_bytes, absl::GetFlag(FLAGS_layers), absl::GetFlag(FLAGS_experts),
      absl::GetFlag(FLAGS_slots), absl::GetFlag(FLAGS_ranks));
  std::printf(
      "  baseline, Rebalance round trip without watchers (plan, fsync, publish): p50 %.2f ms  p99 "
      "%.2f ms\n",
      Percentile(rebalance_ms, 0.5), Percentile(rebalance_ms, 0.99));
  if (watcher_count == 0) delivery_ms = from_publish_ms = message_bytes = {0};
  std::printf(
      "  delivery, Rebalance call to arrival on every watcher: p50 %.2f ms  p99 %.2f ms  max %.2f "
      "ms\n",
      Percentile(delivery_ms, 0.5), Percentile(delivery_ms, 0.99), Percentile(delivery_ms, 1.0));
  std::printf(
      "  delivery, publish (plan persisted, sent to the watchers) to arrival on every watcher: "
      "p50 %.2f ms  p99 %.2f ms  max %.2f ms\n",
      Percentile(from_publish_ms, 0.5), Percentile(from_publish_ms, 0.99),
      Percentile(from_publish_ms, 1.0));
  double bytes_sum = 0;
  for (const double b : message_bytes) bytes_sum += b;
  std::printf(
      "  messages: %.0f bytes per delivery on average (%s; %d of %d layers move before each "
      "plan)\n",
      bytes_sum / std::max<size_t>(1, message_bytes.size()),
      absl::GetFlag(FLAGS_delta) ? "map deltas accepted" : "whole maps", changed, layers);
  std::printf(
      "  memory: %.1f KiB resident per watcher (this process's RSS with every stream open and "
      "holding the current plan, less before; both ends of each stream)\n",
      static_cast<double>(rss_watching - rss_before) / std::max(1, watcher_count) / 1024);
  const std::string smoothing =
      absl::GetFlag(FLAGS_window_steps) > 0
          ? absl::StrCat("window of ", absl::GetFlag(FLAGS_window_steps), " steps")
          : "EMA";
  std::printf(
      "  memory: %.1f KiB resident per deployment (created, holding its initial plan; %s, 16 "
      "plans of history)\n",
      static_cast<double>(rss_deployments - rss_empty) / deployment_count / 1024,
      smoothing.c_str());
  std::printf(
      "  memory: %.1f KiB resident per deployment after %d rounds of reports (%d steps each) and "
      "plans (the process's growth since before the deployments, less the watchers'; freed heap "
      "the allocator keeps included)\n",
      static_cast<double>(rss_after - rss_empty - (rss_watching - rss_before)) /
          deployment_count / 1024,
      round, absl::GetFlag(FLAGS_steps_per_report));
  for (auto& watcher : watchers) watcher->Cancel();
  for (auto& watcher : watchers) watcher->WaitDone();
  watchers.clear();
  (*server)->Shutdown(absl::ZeroDuration());
  std::filesystem::remove_all(state_dir);
  return 0;
}
