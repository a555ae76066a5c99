// watch_bench: time from a new plan to its delivery on many watchers.
//
// Starts a planner in this process (real gRPC over 127.0.0.1, a temporary state directory), opens
// --watchers WatchPlans streams (callback API, spread over --channels connections), then publishes
// --plans plans with Rebalance (commit: immediate) and records, per watcher and plan, the time from
// the Rebalance call to the plan's arrival. Prints p50/p99/max over all deliveries, and the
// Rebalance round trip alone (planning + persistence) as the baseline measured in the same run.
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
#include "server/planner_server.h"

ABSL_FLAG(int, watchers, 1000, "WatchPlans streams");
ABSL_FLAG(int, channels, 8, "Client connections the streams are spread over");
ABSL_FLAG(int, plans, 20, "Plans published");
ABSL_FLAG(int, layers, 58, "Layers of the deployment");
ABSL_FLAG(int, experts, 256, "Logical experts");
ABSL_FLAG(int, slots, 288, "Physical experts");
ABSL_FLAG(int, ranks, 32, "Ranks");

namespace {

using eplb::v1::WatchPlansRequest;
using eplb::v1::WatchPlansResponse;

class Watcher final : public grpc::ClientBidiReactor<WatchPlansRequest, WatchPlansResponse> {
 public:
  Watcher(eplb::v1::Planner::Stub* stub, const std::string& deployment) {
    request_.mutable_subscribe()->set_deployment(deployment);
    request_.mutable_subscribe()->set_rank(-1);
    stub->async()->WatchPlans(&context_, this);
    StartWrite(&request_);
    StartRead(&response_);
    StartCall();
  }
  void OnWriteDone(bool) override {}
  void OnReadDone(bool ok) override {
    if (!ok) return;
    {
      absl::MutexLock lock(&mu_);
      arrivals_.emplace_back(response_.plan().version(), absl::Now());
    }
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
  void Cancel() { context_.TryCancel(); }
  void WaitDone() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
  }

 private:
  grpc::ClientContext context_;
  WatchPlansRequest request_;
  WatchPlansResponse response_;
  absl::Mutex mu_;
  std::vector<std::pair<int64_t, absl::Time>> arrivals_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

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
  for (int i = 0; i < absl::GetFlag(FLAGS_channels); ++i) {
    grpc::ChannelArguments args;
    args.SetInt("eplb.bench.channel", i);
    args.SetMaxReceiveMessageSize(256 << 20);
    stubs.push_back(eplb::v1::Planner::NewStub(
        grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
  }
  eplb::v1::Planner::Stub& stub = *stubs[0];
  {
    grpc::ClientContext context;
    eplb::v1::CreateDeploymentRequest request;
    eplb::v1::DeploymentSpec& spec = *request.mutable_spec();
    spec.set_name("bench");
    spec.mutable_shape()->set_num_layers(absl::GetFlag(FLAGS_layers));
    spec.mutable_shape()->set_num_logical_experts(absl::GetFlag(FLAGS_experts));
    spec.mutable_shape()->set_num_physical_experts(absl::GetFlag(FLAGS_slots));
    spec.mutable_shape()->set_num_ranks(absl::GetFlag(FLAGS_ranks));
    spec.set_commit_mode(eplb::v1::COMMIT_MODE_IMMEDIATE);
    spec.set_plan_history(1000);
    spec.mutable_trigger()->set_interval_steps(0);
    eplb::v1::Deployment deployment;
    const grpc::Status status = stub.CreateDeployment(&context, request, &deployment);
    if (!status.ok()) {
      std::fprintf(stderr, "watch_bench: %s\n", status.error_message().c_str());
      return 1;
    }
  }
  // One Rebalance (plan, persist with fsync, publish); returns the plan and the call's start.
  const auto rebalance = [&stub](eplb::v1::Plan* plan) -> absl::Time {
    grpc::ClientContext context;
    eplb::v1::RebalanceRequest request;
    request.set_deployment("bench");
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

  // Baseline, same run: the Rebalance round trip with nobody watching.
  std::vector<double> rebalance_ms;
  eplb::v1::Plan plan;
  for (int p = 0; p < absl::GetFlag(FLAGS_plans); ++p) {
    const absl::Time start = rebalance(&plan);
    rebalance_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
  }

  const int watcher_count = absl::GetFlag(FLAGS_watchers);
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (int i = 0; i < watcher_count; ++i) {
    watchers.push_back(std::make_unique<Watcher>(stubs[i % stubs.size()].get(), "bench"));
  }
  // All subscribed and holding the current version.
  for (auto& watcher : watchers) watcher->WaitFor(plan.version());

  std::vector<double> delivery_ms;
  for (int p = 0; p < absl::GetFlag(FLAGS_plans); ++p) {
    const absl::Time start = rebalance(&plan);
    for (auto& watcher : watchers) {
      delivery_ms.push_back(absl::ToDoubleMilliseconds(watcher->WaitFor(plan.version()) - start));
    }
  }
  const size_t map_bytes = plan.ByteSizeLong();
  std::printf(
      "watch_bench: %d watchers over %d connections, %d plans of %zu bytes "
      "(L=%d E=%d P=%d R=%d)\n",
      watcher_count, absl::GetFlag(FLAGS_channels), absl::GetFlag(FLAGS_plans), map_bytes,
      absl::GetFlag(FLAGS_layers), absl::GetFlag(FLAGS_experts), absl::GetFlag(FLAGS_slots),
      absl::GetFlag(FLAGS_ranks));
  std::printf(
      "  baseline, Rebalance round trip without watchers (plan, fsync, publish): p50 %.2f ms  p99 "
      "%.2f ms\n",
      Percentile(rebalance_ms, 0.5), Percentile(rebalance_ms, 0.99));
  std::printf(
      "  delivery, Rebalance call to arrival on every watcher: p50 %.2f ms  p99 %.2f ms  max %.2f "
      "ms\n",
      Percentile(delivery_ms, 0.5), Percentile(delivery_ms, 0.99), Percentile(delivery_ms, 1.0));
  for (auto& watcher : watchers) watcher->Cancel();
  for (auto& watcher : watchers) watcher->WaitDone();
  watchers.clear();
  (*server)->Shutdown(absl::ZeroDuration());
  std::filesystem::remove_all(state_dir);
  return 0;
}
