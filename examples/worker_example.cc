// eplb-worker-example: one rank of a serving worker integrated with eplb the way an inference
// engine would do it, with the model replaced by simulated steps. The worker image's program, and
// a template for engines.
//
// It reads its configuration from the environment (client/worker_env.h), fetches the deployment's
// committed plan, joins the agents' NCCL communicator (rank 0 publishes the unique id through the
// planner's rendezvous), allocates every local slot's weights on its GPU (each filled with its
// expert's id), and serves: every step it calls the agent's step boundary, routes simulated tokens
// with a fixed skew, and reports the load. After every plan switch it checks that each slot holds
// the weights of the expert the active map names, and exits 1 if one does not.
//
//   EPLB_PLANNER=planner:50051 EPLB_DEPLOYMENT=ds-v3 EPLB_RANK=0 eplb-worker-example
//       [--steps=N (0: until SIGTERM)] [--step-ms=20] [--slot-bytes=1048576]
#include <cuda_runtime.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/placement_agent.h"
#include "client/load_reporter.h"
#include "client/plan_watcher.h"
#include "client/planner_client.h"
#include "client/worker_env.h"
#include "core/status_macros.h"
#include "proto/convert.h"
#include "transfer/cuda_device.h"
#include "transfer/cuda_status.h"
#include "transfer/nccl_communicator.h"

namespace eplb {
namespace {

std::atomic<bool> stop_requested{false};

struct Args {
  int64_t steps = 0;
  int64_t step_ms = 20;
  int64_t slot_bytes = 1 << 20;
};

absl::StatusOr<Args> ParseArgs(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(0, eq);
    int64_t value = 0;
    if (eq == std::string::npos || !absl::SimpleAtoi(arg.substr(eq + 1), &value) || value < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", arg, "\": expected --steps=N, --step-ms=N or --slot-bytes=N, N ≥ 0"));
    }
    if (name == "--steps") {
      args.steps = value;
    } else if (name == "--step-ms") {
      args.step_ms = value;
    } else if (name == "--slot-bytes" && value >= 1) {
      args.slot_bytes = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown argument \"", arg, "\""));
    }
  }
  return args;
}

// Every slot's first byte against the expert the agent's map puts there.
absl::Status CheckSlots(const agent::PlacementAgent& agent, int32_t first_slot,
                        const std::vector<std::vector<void*>>& slots) {
  for (int32_t l = 0; l < static_cast<int32_t>(slots.size()); ++l) {
    const std::span<const int32_t> phy2log = agent.phy2log(l);
    for (size_t s = 0; s < slots[l].size(); ++s) {
      uint8_t first = 0;
      if (cudaError_t e = cudaMemcpy(&first, slots[l][s], 1, cudaMemcpyDeviceToHost);
          e != cudaSuccess) {
        return transfer::CudaError("cudaMemcpy", e);
      }
      const int32_t expert = phy2log[first_slot + s];
      if (first != static_cast<uint8_t>(expert)) {
        return absl::DataLossError(absl::StrCat("layer ", l, " local slot ", s, " holds expert ",
                                                first, " (mod 256), the map says ", expert));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Run(const Args& args) {
  ASSIGN_OR_RETURN(const client::WorkerEnv env, client::WorkerEnvFromEnvironment());
  ASSIGN_OR_RETURN(auto planner, client::PlannerClient::Create({.server = env.planner,
                                                                .bearer_token = env.token,
                                                                .tls_ca_file = env.tls_ca_file}));
  ASSIGN_OR_RETURN(const v1::Deployment deployment, planner->GetDeployment(env.deployment));
  const v1::Shape& shape = deployment.spec().shape();
  const int32_t L = shape.num_layers(), E = shape.num_logical_experts(), R = shape.num_ranks();
  if (env.rank >= R) {
    return absl::InvalidArgumentError(absl::StrCat("EPLB_RANK = ", env.rank,
                                                   " is out of range [0, ", R - 1,
                                                   "] of deployment ", env.deployment));
  }
  ASSIGN_OR_RETURN(const v1::Plan plan, planner->GetPlan(env.deployment));
  ASSIGN_OR_RETURN(ExpertMap initial, ExpertMapFromProto(plan.map()));
  auto map = std::make_shared<const ExpertMap>(std::move(initial));

  int devices = 0;
  if (cudaError_t e = cudaGetDeviceCount(&devices); e != cudaSuccess || devices == 0) {
    return absl::FailedPreconditionError("no CUDA device");
  }
  const int device = env.local_device >= 0 ? env.local_device : env.rank % devices;
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
    return transfer::CudaError("cudaSetDevice", e);
  }

  // The agents' communicator, bootstrapped through the planner under a key naming the plan the
  // group starts from. The ranks must start together: a rank that restarts alone, or a group that
  // restarts before any new plan, may read the previous id, and then Create fails after its
  // timeout (60 s) and the worker exits 1 (restart the whole group). Engines that already have a
  // communicator split theirs instead (NcclCommunicator::Split).
  const std::string key = absl::StrCat("agent-nccl-", plan.version());
  transfer::NcclUniqueIdBytes id{};
  if (env.rank == 0) {
    ASSIGN_OR_RETURN(id, transfer::NcclCommunicator::NewUniqueId());
    RETURN_IF_ERROR(planner->PublishRendezvous(
        env.deployment, key, std::string(reinterpret_cast<const char*>(id.data()), id.size())));
  } else {
    ASSIGN_OR_RETURN(const std::string value,
                     planner->AwaitRendezvous(env.deployment, key, absl::Minutes(5)));
    if (value.size() != id.size()) {
      return absl::DataLossError(absl::StrCat("rendezvous ", key, " holds ", value.size(),
                                              " bytes, not an NCCL unique id"));
    }
    std::copy(value.begin(), value.end(), id.begin());
  }
  ASSIGN_OR_RETURN(auto comm, transfer::NcclCommunicator::Create(id, env.rank, R, device));
  cudaStream_t serving = nullptr;
  if (cudaError_t e = cudaStreamCreateWithFlags(&serving, cudaStreamNonBlocking);
      e != cudaSuccess) {
    return transfer::CudaError("cudaStreamCreateWithFlags", e);
  }
  ASSIGN_OR_RETURN(auto device_context,
                   transfer::CudaDeviceContext::Create(device, serving, comm->stream()));

  // Every local slot's weights: one buffer per slot and layer, filled with its expert's id.
  const int32_t S = map->layout().SlotsOnRank(env.rank);
  const int32_t first_slot = map->layout().FirstSlotOfRank(env.rank);
  std::vector<std::vector<void*>> slots(L, std::vector<void*>(S, nullptr));
  agent::PlacementAgentOptions options;
  options.rank = env.rank;
  options.initial_map = map;
  options.initial_version = plan.version();
  options.sync_every_steps = env.sync_every_steps;
  options.ranks_per_node = R / std::max(1, shape.num_nodes());
  for (int32_t l = 0; l < L; ++l) {
    options.weights.emplace_back();
    for (int32_t s = 0; s < S; ++s) {
      if (cudaError_t e = cudaMalloc(&slots[l][s], args.slot_bytes); e != cudaSuccess) {
        return transfer::CudaError("cudaMalloc", e);
      }
      const int32_t expert = map->phy2log(l)[first_slot + s];
      if (cudaError_t e = cudaMemset(slots[l][s], expert & 0xff, args.slot_bytes);
          e != cudaSuccess) {
        return transfer::CudaError("cudaMemset", e);
      }
      options.weights.back().push_back({{slots[l][s], static_cast<size_t>(args.slot_bytes)}});
    }
  }
  if (cudaError_t e = cudaDeviceSynchronize(); e != cudaSuccess) {
    return transfer::CudaError("cudaDeviceSynchronize", e);
  }

  ASSIGN_OR_RETURN(
      auto watcher,
      client::PlanWatcher::Create(planner.get(), {.deployment = env.deployment, .rank = env.rank}));
  options.on_ack = [w = watcher.get()](const AgentAck& ack) { w->Ack(ack); };
  ASSIGN_OR_RETURN(auto agent, agent::PlacementAgent::Create(std::move(options), comm.get(),
                                                             device_context.get()));
  watcher->Start([a = agent.get()](const AgentPlan& p) { a->OfferPlan(p); });
  ASSIGN_OR_RETURN(
      auto reporter,
      client::LoadReporter::Create(planner.get(), {.deployment = env.deployment,
                                                   .rank = env.rank,
                                                   .num_layers = L,
                                                   .num_experts = E,
                                                   .flush_every_steps = env.report_every_steps}));
  std::printf("rank %d: device %d, %d slots, serving plan version %ld\n", env.rank, device, S,
              static_cast<long>(plan.version()));
  std::fflush(stdout);

  // Simulated routing: a fixed log-normal popularity per expert (the same on every rank), 64
  // tokens per rank and step spread in proportion.
  std::vector<double> popularity(static_cast<size_t>(L) * E);
  std::mt19937_64 rng(2024);
  std::lognormal_distribution<double> skew(0.0, 1.0);
  for (double& p : popularity) p = skew(rng);
  std::vector<double> counts(popularity.size());
  for (int32_t l = 0; l < L; ++l) {
    double sum = 0;
    for (int32_t e = 0; e < E; ++e) sum += popularity[static_cast<size_t>(l) * E + e];
    for (int32_t e = 0; e < E; ++e) {
      counts[static_cast<size_t>(l) * E + e] =
          std::round(64.0 * 8 * popularity[static_cast<size_t>(l) * E + e] / sum);
    }
  }

  int64_t active = plan.version();
  absl::Status result = absl::OkStatus();
  for (int64_t step = 0; (args.steps == 0 || step < args.steps) && !stop_requested; ++step) {
    if (absl::Status st = agent->OnStepBoundary(step); !st.ok()) {
      result = st;
      break;
    }
    if (agent->active_version() > 0 && agent->active_version() != active) {
      active = agent->active_version();
      if (cudaError_t e = cudaStreamSynchronize(serving); e != cudaSuccess) {
        result = transfer::CudaError("cudaStreamSynchronize", e);
        break;
      }
      if (absl::Status st = CheckSlots(*agent, first_slot, slots); !st.ok()) {
        result = st;
        break;
      }
      const auto status = agent->status();
      std::printf(
          "rank %d: step %ld serving plan version %ld, every slot checked (%ld bytes "
          "received so far)\n",
          env.rank, static_cast<long>(step), static_cast<long>(active),
          static_cast<long>(status.bytes_received));
      std::fflush(stdout);
    }
    if (absl::Status st = reporter->AddStep(step, agent->layer_version(0), counts); !st.ok()) {
      result = st;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(args.step_ms));
  }
  reporter->Flush(absl::Seconds(5)).IgnoreError();
  watcher->Stop();
  const auto status = agent->status();
  if (result.ok() && status.broken) result = absl::InternalError(status.last_error);
  agent.reset();
  for (auto& layer : slots) {
    for (void* p : layer) cudaFree(p);
  }
  return result;
}

}  // namespace
}  // namespace eplb

int main(int argc, char** argv) {
  signal(SIGTERM, [](int) { eplb::stop_requested = true; });
  signal(SIGINT, [](int) { eplb::stop_requested = true; });
  auto args = eplb::ParseArgs(argc, argv);
  if (!args.ok()) {
    std::fprintf(stderr, "eplb-worker-example: %s\n", std::string(args.status().message()).c_str());
    return 2;
  }
  const absl::Status status = eplb::Run(*args);
  if (!status.ok()) {
    std::fprintf(stderr, "eplb-worker-example: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
