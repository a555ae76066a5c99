// planner_loadgen: simulated ranks streaming skewed, drifting expert load to a planner.
//
// Each rank keeps one ReportLoad stream open and sends a report every --steps_per_report steps
// (at --rate reports per second per rank, or as fast as the planner takes them with --rate=0).
// Expert popularity is log-normal per layer (--skew) and drifts (--drift, per second). With
// --ack each rank also watches plans and acknowledges them the way an agent does (STAGED with the
// plan's hash as soon as it arrives), so deployments with acked commits make progress.
//
// It prints one line per second (reports accepted, newest plan, its predicted balancedness) and a
// summary: reports accepted per second and, with --planner_pid, the planner's CPU time.
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "eplb/v1/planner.grpc.pb.h"
#include "proto/convert.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "Planner address HOST:PORT");
ABSL_FLAG(std::string, deployment, "loadgen", "Deployment to report to");
ABSL_FLAG(bool, create, true,
          "Create the deployment if it does not exist (DeepSeek-V3-like shape from the flags)");
ABSL_FLAG(int, layers, 58, "Layers (when creating)");
ABSL_FLAG(int, experts, 256, "Logical experts per layer (when creating)");
ABSL_FLAG(int, groups, 8, "Expert groups (when creating)");
ABSL_FLAG(int, nodes, 4, "Nodes (when creating)");
ABSL_FLAG(int, ranks, 32, "Ranks, one simulated worker each");
ABSL_FLAG(int, slots, 288, "Physical experts, all ranks together (when creating)");
ABSL_FLAG(std::string, policy, "", "Policy (when creating; empty: the planner's default)");
ABSL_FLAG(std::string, commit, "immediate", "Commit mode when creating: immediate or acked");
ABSL_FLAG(int64_t, interval_steps, 2000, "Trigger interval in steps (when creating)");
ABSL_FLAG(double, min_gain, 0.01, "Trigger min_gain (when creating)");
ABSL_FLAG(int64_t, bytes_per_expert, 44040192,
          "Bytes of one expert's weights (when creating; default: DeepSeek-V3, 3 FP8 matrices of "
          "7168 x 2048)");
ABSL_FLAG(int64_t, half_life_steps, 2000, "EMA half-life in steps (when creating)");
ABSL_FLAG(double, rate, 10, "Reports per second per rank; 0: as fast as possible");
ABSL_FLAG(int, steps_per_report, 100, "Steps one report covers");
ABSL_FLAG(double, tokens_per_step, 4096, "Tokens routed per step and rank (top-k included)");
ABSL_FLAG(double, skew, 1.0, "Sigma of the log-normal expert popularity");
ABSL_FLAG(double, drift, 0.1, "Sigma of the log-normal popularity change per second");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(10), "How long to report");
ABSL_FLAG(bool, ack, true, "Watch plans as each rank and acknowledge them");
ABSL_FLAG(int, planner_pid, 0, "PID of the planner process, to report its CPU time");
ABSL_FLAG(std::string, token, "", "Bearer token (default: $EPLB_TOKEN)");

namespace {

using eplb::v1::Planner;

double CpuSeconds(int pid) {
  if (pid <= 0) return 0;
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(in)), {});
  const size_t close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  double utime = 0, stime = 0;
  for (int i = 3; fields >> field; ++i) {
    if (i == 14) utime = std::stod(field);
    if (i == 15) {
      stime = std::stod(field);
      break;
    }
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Expert popularity per layer; drifts over time. Reports are built from a snapshot.
class Popularity {
 public:
  Popularity(int layers, int experts, double skew, uint64_t seed)
      : layers_(layers), experts_(experts), rng_(seed), weights_(size_t(layers) * experts) {
    std::lognormal_distribution<double> popularity(0.0, skew);
    for (double& w : weights_) w = popularity(rng_);
    Normalize();
  }
  void Drift(double sigma) {
    absl::MutexLock lock(&mu_);
    std::normal_distribution<double> step(0.0, sigma);
    for (double& w : weights_) w *= std::exp(step(rng_));
    Normalize();
  }
  std::vector<double> Snapshot() {
    absl::MutexLock lock(&mu_);
    return shares_;
  }

 private:
  void Normalize() {
    shares_.resize(weights_.size());
    for (int l = 0; l < layers_; ++l) {
      double total = 0;
      for (int e = 0; e < experts_; ++e) total += weights_[size_t(l) * experts_ + e];
      for (int e = 0; e < experts_; ++e) {
        shares_[size_t(l) * experts_ + e] = weights_[size_t(l) * experts_ + e] / total;
      }
    }
  }
  const int layers_, experts_;
  absl::Mutex mu_;
  std::mt19937_64 rng_;
  std::vector<double> weights_;
  std::vector<double> shares_;
};

void AddToken(grpc::ClientContext& context) {
  std::string token = absl::GetFlag(FLAGS_token);
  if (token.empty()) {
    if (const char* env = std::getenv("EPLB_TOKEN")) token = env;
  }
  if (!token.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", token));
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("planner_loadgen: simulated ranks reporting expert load");
  absl::ParseCommandLine(argc, argv);
  const std::string name = absl::GetFlag(FLAGS_deployment);
  const int ranks = absl::GetFlag(FLAGS_ranks);
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(256 << 20);
  args.SetMaxReceiveMessageSize(256 << 20);
  // A few channels (distinct connections) so that one TCP connection does not serialise all ranks.
  constexpr int kChannels = 4;
  std::vector<std::unique_ptr<Planner::Stub>> stubs;
  for (int i = 0; i < kChannels; ++i) {
    grpc::ChannelArguments channel_args = args;
    channel_args.SetInt("eplb.loadgen.channel", i);
    stubs.push_back(Planner::NewStub(grpc::CreateCustomChannel(
        absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials(), channel_args)));
  }
  Planner::Stub& stub = *stubs[0];

  // The deployment: existing, or created from the flags.
  eplb::v1::Deployment deployment;
  {
    grpc::ClientContext context;
    AddToken(context);
    eplb::v1::GetDeploymentRequest request;
    request.set_name(name);
    grpc::Status status = stub.GetDeployment(&context, request, &deployment);
    if (status.error_code() == grpc::StatusCode::NOT_FOUND && absl::GetFlag(FLAGS_create)) {
      grpc::ClientContext create_context;
      AddToken(create_context);
      eplb::v1::CreateDeploymentRequest create;
      eplb::v1::DeploymentSpec& spec = *create.mutable_spec();
      spec.set_name(name);
      eplb::v1::Shape& shape = *spec.mutable_shape();
      shape.set_num_layers(absl::GetFlag(FLAGS_layers));
      shape.set_num_logical_experts(absl::GetFlag(FLAGS_experts));
      shape.set_num_groups(absl::GetFlag(FLAGS_groups));
      shape.set_num_nodes(absl::GetFlag(FLAGS_nodes));
      shape.set_num_ranks(ranks);
      shape.set_num_physical_experts(absl::GetFlag(FLAGS_slots));
      spec.set_policy(absl::GetFlag(FLAGS_policy));
      spec.set_bytes_per_expert(absl::GetFlag(FLAGS_bytes_per_expert));
      spec.set_commit_mode(absl::GetFlag(FLAGS_commit) == "acked"
                               ? eplb::v1::COMMIT_MODE_ACKED
                               : eplb::v1::COMMIT_MODE_IMMEDIATE);
      spec.mutable_smoothing()->set_ema_half_life_steps(absl::GetFlag(FLAGS_half_life_steps));
      spec.mutable_trigger()->set_interval_steps(absl::GetFlag(FLAGS_interval_steps));
      spec.mutable_trigger()->set_min_gain(absl::GetFlag(FLAGS_min_gain));
      status = stub.CreateDeployment(&create_context, create, &deployment);
    }
    if (!status.ok()) {
      std::cerr << "planner_loadgen: " << eplb::StatusToDisplayString(eplb::FromGrpcStatus(status))
                << "\n";
      return 1;
    }
  }
  const eplb::v1::Shape shape = deployment.spec().shape();
  if (shape.num_ranks() != ranks) {
    std::cerr << "planner_loadgen: deployment " << name << " has " << shape.num_ranks()
              << " ranks, --ranks is " << ranks << "\n";
    return 1;
  }
  const int layers = shape.num_layers();
  const int experts = shape.num_logical_experts();
  std::cout << "deployment " << name << ": L=" << layers << " E=" << experts
            << " P=" << shape.num_physical_experts() << " R=" << ranks << ", policy "
            << deployment.spec().policy() << ", committed version "
            << deployment.committed_version() << "\n";

  Popularity popularity(layers, experts, absl::GetFlag(FLAGS_skew), 42);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> accepted{0};
  std::atomic<int64_t> sent{0};
  std::atomic<int64_t> plan_version{deployment.committed_version()};
  // The reporters report under the newest committed plan seen (by a watcher, or by the progress
  // loop's GetPlan), before it is pruned from the plan history.
  const auto follow = [&plan_version](int64_t version) {
    int64_t seen = plan_version.load();
    while (version > seen && !plan_version.compare_exchange_weak(seen, version)) {
    }
  };
  const double rate = absl::GetFlag(FLAGS_rate);
  const int steps_per_report = absl::GetFlag(FLAGS_steps_per_report);
  const double tokens = absl::GetFlag(FLAGS_tokens_per_step);
  const uint64_t session = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);

  // Watchers: acknowledge plans as the ranks' agents would.
  std::vector<std::unique_ptr<grpc::ClientContext>> watch_contexts;
  std::vector<std::thread> watchers;
  if (absl::GetFlag(FLAGS_ack)) {
    for (int r = 0; r < ranks; ++r) {
      watch_contexts.push_back(std::make_unique<grpc::ClientContext>());
      AddToken(*watch_contexts.back());
      watchers.emplace_back([&, r, context = watch_contexts.back().get()] {
        auto stream = stubs[r % kChannels]->WatchPlans(context);
        eplb::v1::WatchPlansRequest request;
        request.mutable_subscribe()->set_deployment(name);
        request.mutable_subscribe()->set_rank(r);
        if (!stream->Write(request)) return;
        eplb::v1::WatchPlansResponse response;
        while (stream->Read(&response)) {
          const eplb::v1::Plan& plan = response.plan();
          if (plan.state() == eplb::v1::COMMITTED) follow(plan.version());
          if (plan.state() != eplb::v1::PENDING && plan.state() != eplb::v1::COMMITTED) continue;
          eplb::v1::WatchPlansRequest ack;
          ack.mutable_ack()->set_version(plan.version());
          ack.mutable_ack()->set_nonce(response.nonce());
          ack.mutable_ack()->set_state(plan.state() == eplb::v1::PENDING ? eplb::v1::STAGED
                                                                         : eplb::v1::ACTIVE);
          ack.mutable_ack()->set_map_hash(plan.map_hash());
          if (!stream->Write(ack)) break;
        }
        stream->Finish().IgnoreError();
      });
    }
  }

  // Reporters.
  std::vector<std::thread> reporters;
  const absl::Time start = absl::Now();
  const double cpu_start = CpuSeconds(absl::GetFlag(FLAGS_planner_pid));
  for (int r = 0; r < ranks; ++r) {
    reporters.emplace_back([&, r] {
      grpc::ClientContext context;
      AddToken(context);
      eplb::v1::ReportSummary summary;
      auto writer = stubs[r % kChannels]->ReportLoad(&context, &summary);
      eplb::v1::LoadReport report;
      report.set_deployment(name);
      report.set_rank(r);
      report.set_session(session);
      for (int l = 0; l < layers; ++l) report.add_layers()->mutable_counts()->Resize(experts, 0);
      const double per_report = tokens * steps_per_report;
      for (int64_t n = 0; !stop.load(std::memory_order_relaxed); ++n) {
        if (n % 16 == 0) {  // refresh from the drifting popularity now and then
          const std::vector<double> shares = popularity.Snapshot();
          for (int l = 0; l < layers; ++l) {
            auto* counts = report.mutable_layers(l)->mutable_counts();
            for (int e = 0; e < experts; ++e) {
              counts->Set(e, std::round(per_report * shares[size_t(l) * experts + e]));
            }
          }
        }
        report.set_sequence(n + 1);
        report.set_first_step(n * steps_per_report);
        report.set_last_step((n + 1) * steps_per_report - 1);
        report.set_plan_version(plan_version.load(std::memory_order_relaxed));
        if (!writer->Write(report)) break;
        sent.fetch_add(1, std::memory_order_relaxed);
        if (rate > 0) {
          const absl::Time due = start + absl::Seconds((n + 1) / rate);
          const absl::Duration wait = due - absl::Now();
          if (wait > absl::ZeroDuration()) absl::SleepFor(wait);
        }
      }
      writer->WritesDone();
      const grpc::Status status = writer->Finish();
      if (!status.ok()) {
        std::cerr << "rank " << r << ": "
                  << eplb::StatusToDisplayString(eplb::FromGrpcStatus(status)) << "\n";
      }
      accepted.fetch_add(summary.accepted(), std::memory_order_relaxed);
    });
  }

  // Progress, drift and the stop.
  const absl::Duration duration = absl::GetFlag(FLAGS_duration);
  for (int second = 1; absl::Now() - start < duration; ++second) {
    absl::SleepFor(std::min(absl::Seconds(1), duration - (absl::Now() - start)));
    popularity.Drift(absl::GetFlag(FLAGS_drift));
    grpc::ClientContext context;
    AddToken(context);
    eplb::v1::GetPlanRequest request;
    request.set_deployment(name);
    eplb::v1::Plan plan;
    const grpc::Status status = stub.GetPlan(&context, request, &plan);
    if (status.ok() && plan.state() == eplb::v1::COMMITTED) follow(plan.version());
    const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
    std::printf("t=%5.1fs  reports sent %8lld (%7.0f/s)  committed plan v%lld", elapsed,
                static_cast<long long>(sent.load()), sent.load() / elapsed,
                static_cast<long long>(plan.version()));
    if (status.ok() && plan.version() > 1) {
      std::printf("  balancedness %.3f -> %.3f (%lld experts moved)",
                  plan.metrics().balancedness_before(), plan.metrics().balancedness_after(),
                  static_cast<long long>(plan.metrics().experts_moved()));
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  stop = true;
  for (std::thread& t : reporters) t.join();
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
  const double cpu = CpuSeconds(absl::GetFlag(FLAGS_planner_pid)) - cpu_start;
  for (auto& context : watch_contexts) context->TryCancel();
  for (std::thread& t : watchers) t.join();

  std::printf(
      "\nsummary: %lld reports accepted in %.1f s = %.0f reports/s (%d ranks x %d layers x "
      "%d experts, %.1f MB/s of counts)\n",
      static_cast<long long>(accepted.load()), elapsed, accepted.load() / elapsed, ranks, layers,
      experts, accepted.load() / elapsed * layers * experts * 8 / 1e6);
  if (absl::GetFlag(FLAGS_planner_pid) > 0) {
    std::printf("planner CPU: %.2f s (%.0f%% of one core), %.1f us per report\n", cpu,
                100 * cpu / elapsed, accepted.load() > 0 ? 1e6 * cpu / accepted.load() : 0.0);
  }
  return 0;
}
