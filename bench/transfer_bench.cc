// transfer_bench: the worker side's weight shuffle on real GPUs.
//
// --backend nccl (one process per GPU) or ipc (CUDA IPC copy engines; processes share the GPUs
// round-robin, so all ranks may sit on one GPU). In one run, on every rank:
//   1. raw: nccl: one exchange of --raw-mib MiB with the next rank (ncclSend + ncclRecv in a group)
//      on a default-configured NCCL communicator; the best of --repeats, as GB/s per direction.
//      ipc: rank 0 alone, a --raw-mib MiB cudaMemcpyAsync device to device, and the same bytes as
//      one cudaMemcpyBatchAsync on the copy engines; the best of --repeats. Then the communicator
//      alone: every rank sends --raw-mib MiB to the next in one SendRecvGroup; and at a staging
//      chunk's grain (--slots / 2 pieces of --expert-mib MiB per rank) pieces received, the same
//      copied locally with no communicator (the control), and both at once.
//   2. shuffle: a PlacementAgent (its communicator: NCCL with --max-ctas, or CUDA IPC) applies a
//      plan from a random old placement to a random new one (or to the map in --plan-file),
//      --layers layers of --experts experts, --slots slots per rank, --expert-mib MiB per expert,
//      no serving work: bytes staged (received from other ranks, copied locally) per second of
//      staging, next to the raw figure. The agent syncs every --sync-every steps and switches one
//      chunk of --layers-per-chunk layers per sync.
//   3. decode: a decode-like loop (each step a --step-mib MiB device copy on the serving stream,
//      then a host sync, as a sampler does) first alone, then while a plan stages; the mean step
//      time of both and the slowdown.
//
//   Rank 0 also prints the whole group's shuffle: bytes staged by all ranks over the longest
//   staging time, and staged plus switched bytes over the longest time from the offer to the plan
//   active.
//
//   transfer_bench [--backend nccl|ipc] [--ranks 2] [--layers 8] [--experts 64] [--slots 36]
//                  [--expert-mib 16] [--raw-mib 1024] [--repeats 5] [--max-ctas 8]
//                  [--step-mib 4096] [--sync-every 16] [--layers-per-chunk 1]
//                  [--plan-file map.json]
//   SPDLOG_LEVEL=debug prints each chunk's staging (area wait, local copies, transfers) per rank.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "agent/placement_agent.h"
#include "core/file_io.h"
#include "core/map_format.h"
#include "core/testing/random_inputs.h"
#include "spdlog/cfg/env.h"
#include "transfer/cuda_device.h"
#include "transfer/cuda_ipc_communicator.h"
#include "transfer/local_ranks.h"
#include "transfer/nccl_communicator.h"
#include "transfer/testing/cuda_check.h"

namespace {

using eplb::AgentPlan;
using eplb::ExpertMap;
using eplb::PlanStatus;
using eplb::SlotLayout;
using eplb::agent::PlacementAgent;
using eplb::agent::PlacementAgentOptions;
using eplb::testing::RandomExpertMap;
using Clock = std::chrono::steady_clock;

#define CHECK_NCCL(expr)                                                                          \
  do {                                                                                            \
    if (ncclResult_t r_ = (expr); r_ != ncclSuccess) {                                            \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, ncclGetErrorString(r_)); \
      return 1;                                                                                   \
    }                                                                                             \
  } while (false)
#define CHECK_OK(expr)                                                                \
  do {                                                                                \
    if (auto s_ = (expr); !s_.ok()) {                                                 \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, s_.ToString().c_str()); \
      return 1;                                                                       \
    }                                                                                 \
  } while (false)

struct Args {
  int ranks = 2, layers = 8, experts = 64, slots = 36, expert_mib = 16, raw_mib = 1024;
  int repeats = 5, max_ctas = 8, step_mib = 4096, sync_every = 16, layers_per_chunk = 1;
  std::string plan_file;
  std::string backend = "nccl";
};

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// `comm` is a default-configured communicator (the raw baseline's, and the agent's parent).
int RawExchange(const Args& args, int rank, int size, ncclComm_t comm, double* gbps) {
  const size_t bytes = static_cast<size_t>(args.raw_mib) << 20;
  void *send = nullptr, *recv = nullptr;
  CHECK_CUDA(cudaMalloc(&send, bytes));
  CHECK_CUDA(cudaMalloc(&recv, bytes));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  const int next = (rank + 1) % size, prev = (rank + size - 1) % size;
  double best = 1e30;
  for (int i = 0; i < args.repeats + 1; ++i) {  // the first is a warm-up
    const auto start = Clock::now();
    CHECK_NCCL(ncclGroupStart());
    CHECK_NCCL(ncclSend(send, bytes, ncclUint8, next, comm, stream));
    CHECK_NCCL(ncclRecv(recv, bytes, ncclUint8, prev, comm, stream));
    CHECK_NCCL(ncclGroupEnd());
    CHECK_CUDA(cudaStreamSynchronize(stream));
    if (i > 0) best = std::min(best, Seconds(start, Clock::now()));
  }
  *gbps = bytes / best / 1e9;
  cudaFree(send);
  cudaFree(recv);
  cudaStreamDestroy(stream);
  return 0;
}

// Device-to-device copies of --raw-mib MiB on one GPU, best of --repeats, in GB/s: one
// cudaMemcpyAsync (the runtime may copy with SMs), and the same bytes as one batch of 16 copies
// with cudaMemcpyBatchAsync preferring the copy engines, as the IPC communicator copies.
int RawCopy(const Args& args, double* gbps, double* engine_gbps) {
  const size_t bytes = static_cast<size_t>(args.raw_mib) << 20;
  void *a = nullptr, *b = nullptr;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  constexpr int kPieces = 16;
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes(kPieces, bytes / kPieces);
  for (int i = 0; i < kPieces; ++i) {
    dsts.push_back(static_cast<char*>(b) + i * (bytes / kPieces));
    srcs.push_back(static_cast<const char*>(a) + i * (bytes / kPieces));
  }
  for (const bool engines : {false, true}) {
    double best = 1e30;
    for (int i = 0; i < args.repeats + 1; ++i) {
      const auto start = Clock::now();
      if (!engines) {
        CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream));
      } else {
        cudaMemcpyAttributes attributes{};
        attributes.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
        attributes.flags = cudaMemcpyFlagPreferOverlapWithCompute;
        size_t index = 0;
        CHECK_CUDA(cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), kPieces,
                                        &attributes, &index, 1, stream));
      }
      CHECK_CUDA(cudaStreamSynchronize(stream));
      if (i > 0) best = std::min(best, Seconds(start, Clock::now()));
    }
    (engines ? *engine_gbps : *gbps) = bytes / best / 1e9;
  }
  cudaFree(a);
  cudaFree(b);
  cudaStreamDestroy(stream);
  return 0;
}

std::vector<double> GatherDoubles(eplb::transfer::Communicator& comm, std::vector<double> mine,
                                  int* status) {
  std::vector<uint8_t> bytes(mine.size() * sizeof(double));
  std::memcpy(bytes.data(), mine.data(), bytes.size());
  auto all = comm.AllGather(bytes);
  std::vector<double> out;
  if (!all.ok()) {
    std::fprintf(stderr, "AllGather: %s\n", all.status().ToString().c_str());
    *status = 1;
    return out;
  }
  for (const auto& contribution : *all) {
    const size_t at = out.size();
    out.resize(at + mine.size());
    std::memcpy(out.data() + at, contribution.data(), contribution.size());
  }
  return out;
}

// Every rank at once, best of --repeats: `pieces` pieces of `piece_bytes` sent to the next rank
// and received from the previous one in one SendRecvGroup (`exchange`), and/or copied locally
// on a stream of its own (`local`); the group's bytes (received + copied) over the longest rank's
// time, in GB/s.
int GroupCopyRate(const Args& args, eplb::transfer::Communicator& comm, size_t piece_bytes,
                  int pieces, bool exchange, bool local, double* gbps) {
  const int rank = comm.rank(), size = comm.size();
  const size_t bytes = piece_bytes * pieces;
  void *send = nullptr, *recv = nullptr, *copy = nullptr;
  CHECK_CUDA(cudaMalloc(&send, bytes));
  CHECK_CUDA(cudaMalloc(&recv, bytes));
  CHECK_CUDA(cudaMalloc(&copy, bytes));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const eplb::transfer::MemoryRange range{send, bytes};
  CHECK_OK(comm.RegisterSendBuffers({&range, 1}));
  std::vector<eplb::transfer::PeerTransfer> sends, receives;
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes(pieces, piece_bytes);
  for (int i = 0; i < pieces; ++i) {
    sends.push_back({(rank + 1) % size, static_cast<char*>(send) + i * piece_bytes, piece_bytes});
    receives.push_back(
        {(rank + size - 1) % size, static_cast<char*>(recv) + i * piece_bytes, piece_bytes});
    dsts.push_back(static_cast<char*>(copy) + i * piece_bytes);
    srcs.push_back(static_cast<const char*>(send) + i * piece_bytes);
  }
  double best = 1e30;
  int status = 0;
  for (int i = 0; i < args.repeats + 1; ++i) {
    GatherDoubles(comm, {0.0}, &status);  // start together
    const auto start = Clock::now();
    if (local) {
      cudaMemcpyAttributes attributes{};
      attributes.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
      attributes.flags = cudaMemcpyFlagPreferOverlapWithCompute;
      size_t index = 0;
      CHECK_CUDA(cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), pieces, &attributes,
                                      &index, 1, stream));
    }
    if (exchange) CHECK_OK(comm.SendRecvGroup(sends, receives));
    CHECK_CUDA(cudaStreamSynchronize(stream));
    const std::vector<double> times = GatherDoubles(comm, {Seconds(start, Clock::now())}, &status);
    if (status != 0) return 1;
    if (i > 0) best = std::min(best, *std::max_element(times.begin(), times.end()));
  }
  *gbps = size * static_cast<double>(bytes) * ((exchange ? 1 : 0) + (local ? 1 : 0)) / best / 1e9;
  // `send` stays allocated: registered memory must outlive the communicator.
  cudaFree(recv);
  cudaFree(copy);
  cudaStreamDestroy(stream);
  return 0;
}

int RunRank(const Args& args, int rank, int size, const eplb::transfer::NcclUniqueIdBytes& id,
            const std::string& ipc_id) {
  int devices = 0;
  CHECK_CUDA(cudaGetDeviceCount(&devices));
  const int device = rank % devices;
  CHECK_CUDA(cudaSetDevice(device));

  double raw_gbps = 0;
  ncclComm_t parent = nullptr;
  std::unique_ptr<eplb::transfer::Communicator> comm;
  cudaStream_t staging_stream = nullptr;
  if (args.backend == "nccl") {
    ncclUniqueId nid;
    std::memcpy(nid.internal, id.data(), id.size());
    CHECK_NCCL(ncclCommInitRank(&parent, size, nid, rank));
    if (RawExchange(args, rank, size, parent, &raw_gbps) != 0) return 1;
    // The agent's communicator: split off the default one (as a serving engine would split its
    // EP communicator), with the CTA budget.
    auto nccl = eplb::transfer::NcclCommunicator::Split(parent, {.max_ctas = args.max_ctas});
    CHECK_OK(nccl.status());
    staging_stream = (*nccl)->stream();
    comm = *std::move(nccl);
  } else {
    auto ipc = eplb::transfer::CudaIpcCommunicator::Create(ipc_id, rank, size, device);
    CHECK_OK(ipc.status());
    staging_stream = (*ipc)->stream();
    comm = *std::move(ipc);
    double engine_gbps = 0;
    if (rank == 0 && RawCopy(args, &raw_gbps, &engine_gbps) != 0) return 1;
    int status = 0;
    const std::vector<double> raw = GatherDoubles(*comm, {raw_gbps, engine_gbps}, &status);
    if (status != 0) return 1;
    raw_gbps = raw[0];
    // The communicator alone: every rank sends --raw-mib MiB to the next rank as 16 transfers in
    // one SendRecvGroup (all ranks at once), best of --repeats; the group's bytes over the
    // longest rank's time. Then at a chunk's grain: --slots / 2 pieces of --expert-mib MiB
    // received, copied locally on a stream of its own, and both at once.
    const size_t raw_bytes = static_cast<size_t>(args.raw_mib) << 20;
    const size_t expert_bytes = static_cast<size_t>(args.expert_mib) << 20;
    const int chunk_pieces = std::max(1, args.slots / 2);
    double exchange = 0, chunk_exchange = 0, chunk_local = 0, chunk_both = 0;
    if (GroupCopyRate(args, *comm, raw_bytes / 16, 16, true, false, &exchange) != 0 ||
        GroupCopyRate(args, *comm, expert_bytes, chunk_pieces, true, false, &chunk_exchange) != 0 ||
        GroupCopyRate(args, *comm, expert_bytes, chunk_pieces, false, true, &chunk_local) != 0 ||
        GroupCopyRate(args, *comm, expert_bytes, chunk_pieces, true, true, &chunk_both) != 0) {
      return 1;
    }
    if (rank == 0) {
      std::printf(
          "raw (rank 0 alone): cudaMemcpyAsync %.1f GB/s, cudaMemcpyBatchAsync on the copy engines "
          "%.1f GB/s | IPC exchange, every rank %d MiB to the next: %.1f GB/s for the group = "
          "%.0f%% of the copy engines' raw, %.0f%% of cudaMemcpyAsync's\n"
          "chunk grain (%d × %d MiB per rank), group GB/s (%% of cudaMemcpyAsync): received %.1f "
          "(%.0f%%), copied locally %.1f (%.0f%%), both at once %.1f (%.0f%%)\n",
          raw[0], raw[1], args.raw_mib, exchange, 100 * exchange / raw[1], 100 * exchange / raw[0],
          chunk_pieces, args.expert_mib, chunk_exchange, 100 * chunk_exchange / raw[0], chunk_local,
          100 * chunk_local / raw[0], chunk_both, 100 * chunk_both / raw[0]);
      std::fflush(stdout);
    }
  }

  const int L = args.layers, E = args.experts, P = args.slots * size;
  std::mt19937 rng(7);  // the same maps on every rank
  std::vector<std::shared_ptr<const ExpertMap>> maps;
  for (int i = 0; i < 4; ++i) maps.push_back(RandomExpertMap(L, E, P, size, rng));
  if (!args.plan_file.empty()) {
    auto json = eplb::ReadFileToString(args.plan_file);
    CHECK_OK(json.status());
    auto parsed = eplb::ParseExpertMapJson(*json, {.num_ranks = size});
    CHECK_OK(parsed.status());
    if (parsed->map.num_layers() != L || parsed->map.num_logical_experts() != E ||
        parsed->map.num_physical_experts() != P) {
      std::fprintf(stderr, "the plan file's shape differs from --layers/--experts/--slots\n");
      return 1;
    }
    maps[1] = std::make_shared<const ExpertMap>(parsed->map);
  }
  const SlotLayout layout = maps[0]->layout();
  const int S = layout.SlotsOnRank(rank);
  const size_t expert_bytes = static_cast<size_t>(args.expert_mib) << 20;

  PlacementAgentOptions options;
  options.rank = rank;
  options.initial_map = maps[0];
  options.initial_version = 1;
  options.sync_every_steps = args.sync_every;
  options.layers_per_chunk = args.layers_per_chunk;
  options.weights.resize(L);
  for (int l = 0; l < L; ++l) {
    for (int s = 0; s < S; ++s) {
      void* ptr = nullptr;
      CHECK_CUDA(cudaMalloc(&ptr, expert_bytes));
      options.weights[l].push_back({{ptr, expert_bytes}});
    }
  }
  cudaStream_t serving;
  CHECK_CUDA(cudaStreamCreateWithFlags(&serving, cudaStreamNonBlocking));
  auto device_context = eplb::transfer::CudaDeviceContext::Create(device, serving, staging_stream);
  CHECK_OK(device_context.status());
  auto agent = PlacementAgent::Create(options, comm.get(), device_context->get());
  CHECK_OK(agent.status());

  // 2. The shuffle alone: steps with no serving work until the plan is active.
  int64_t step = 0;
  const auto apply = [&](int64_t version, const std::shared_ptr<const ExpertMap>& map,
                         const std::function<int()>& serve, int* steps) -> int {
    (*agent)->OfferPlan(AgentPlan{version, PlanStatus::kCommitted, map, map->Hash()});
    *steps = 0;
    while ((*agent)->active_version() != version) {
      CHECK_OK((*agent)->OnStepBoundary(step++));
      if (serve() != 0) return 1;
      ++*steps;
      if (*steps > 100000) {
        std::fprintf(stderr, "rank %d: plan %ld not active after 100000 steps\n", rank,
                     static_cast<long>(version));
        return 1;
      }
    }
    return 0;
  };
  int steps = 0;
  const PlacementAgent::Status before = (*agent)->status();
  const auto shuffle_start = Clock::now();
  if (apply(
          2, maps[1], [] { return 0; }, &steps) != 0)
    return 1;
  const double shuffle_wall = Seconds(shuffle_start, Clock::now());
  const PlacementAgent::Status after = (*agent)->status();
  const double received = static_cast<double>(after.bytes_received - before.bytes_received);
  const double copied =
      static_cast<double>(after.bytes_copied_locally - before.bytes_copied_locally);
  const double staging = after.staging_seconds - before.staging_seconds;
  const double area_wait = after.area_wait_seconds - before.area_wait_seconds;
  const double switched = static_cast<double>(after.bytes_switched - before.bytes_switched);

  // 3. Decode-like loop, alone and while plans stage.
  const size_t step_bytes = static_cast<size_t>(args.step_mib) << 20;
  void *a = nullptr, *b = nullptr;
  CHECK_CUDA(cudaMalloc(&a, step_bytes / 2));
  CHECK_CUDA(cudaMalloc(&b, step_bytes / 2));
  const auto serve = [&]() -> int {
    CHECK_CUDA(cudaMemcpyAsync(b, a, step_bytes / 2, cudaMemcpyDeviceToDevice, serving));
    CHECK_CUDA(cudaStreamSynchronize(serving));
    return 0;
  };
  const int kAloneSteps = 60;
  for (int i = 0; i < 5; ++i) {
    CHECK_OK((*agent)->OnStepBoundary(step++));
    if (serve() != 0) return 1;
  }
  const auto alone_start = Clock::now();
  for (int i = 0; i < kAloneSteps; ++i) {
    CHECK_OK((*agent)->OnStepBoundary(step++));
    if (serve() != 0) return 1;
  }
  const double alone_step = Seconds(alone_start, Clock::now()) / kAloneSteps;
  int staged_steps = 0;
  const auto staged_start = Clock::now();
  if (apply(3, maps[2], serve, &staged_steps) != 0) return 1;
  const double staged_step = Seconds(staged_start, Clock::now()) / staged_steps;

  int gather_status = 0;
  const std::vector<double> all =
      GatherDoubles(*comm, {received + copied, staging, switched, shuffle_wall}, &gather_status);
  if (gather_status != 0) return 1;
  std::printf(
      "rank %d (GPU %d, %s): raw %s %.1f GB/s (%d MiB, best of %d) | shuffle: "
      "%.2f GiB received + %.2f GiB copied locally, staging %.1f ms (and %.1f ms waiting for "
      "switches to free an area) -> %.1f GB/s received = %.0f%% of raw; "
      "plan active after %d steps, %.1f ms | decode step %.3f ms alone, %.3f ms while staging "
      "(%+.1f%%, %d steps)\n",
      rank, device, args.backend.c_str(),
      args.backend == "nccl" ? "send/recv per direction" : "device-to-device copy", raw_gbps,
      args.raw_mib, args.repeats, received / (1 << 30), copied / (1 << 30), staging * 1e3,
      area_wait * 1e3, received / staging / 1e9, 100.0 * received / staging / 1e9 / raw_gbps, steps,
      shuffle_wall * 1e3, alone_step * 1e3, staged_step * 1e3,
      100.0 * (staged_step - alone_step) / alone_step, staged_steps);
  if (rank == 0) {
    double bytes = 0, longest = 0, switched_all = 0, wall = 0;
    for (int r = 0; r < size; ++r) {
      bytes += all[4 * r];
      longest = std::max(longest, all[4 * r + 1]);
      switched_all += all[4 * r + 2];
      wall = std::max(wall, all[4 * r + 3]);
    }
    std::printf(
        "group: %.2f GiB moved by %d ranks (received + local) in %.1f ms of staging (longest "
        "rank) -> %.1f GB/s = %.0f%% of raw | whole shuffle on the GPU: %.2f GiB staged + %.2f "
        "GiB switched in %.1f ms from the offer to the plan active (longest rank) -> %.1f GB/s = "
        "%.0f%% of raw\n",
        bytes / (1 << 30), size, longest * 1e3, bytes / longest / 1e9,
        100.0 * bytes / longest / 1e9 / raw_gbps, bytes / (1 << 30), switched_all / (1 << 30),
        wall * 1e3, (bytes + switched_all) / wall / 1e9,
        100.0 * (bytes + switched_all) / wall / 1e9 / raw_gbps);
  }
  agent->reset();
  device_context->reset();
  comm.reset();
  if (parent != nullptr) ncclCommDestroy(parent);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::cfg::load_env_levels();  // SPDLOG_LEVEL=debug: the agent's per-chunk staging times
  Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const std::string value = argv[i + 1];
    int* target = flag == "--ranks"              ? &args.ranks
                  : flag == "--layers"           ? &args.layers
                  : flag == "--experts"          ? &args.experts
                  : flag == "--slots"            ? &args.slots
                  : flag == "--expert-mib"       ? &args.expert_mib
                  : flag == "--raw-mib"          ? &args.raw_mib
                  : flag == "--repeats"          ? &args.repeats
                  : flag == "--max-ctas"         ? &args.max_ctas
                  : flag == "--step-mib"         ? &args.step_mib
                  : flag == "--sync-every"       ? &args.sync_every
                  : flag == "--layers-per-chunk" ? &args.layers_per_chunk
                                                 : nullptr;
    if (flag == "--plan-file") {
      args.plan_file = value;
    } else if (flag == "--backend") {
      args.backend = value;
    } else if (target != nullptr) {
      *target = std::atoi(value.c_str());
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (args.ranks < 1 || args.layers < 1 || args.experts < 1 ||
      args.slots * args.ranks < args.experts || args.expert_mib < 1 || args.sync_every < 1 ||
      args.layers_per_chunk < 1 || args.raw_mib < 1 || args.repeats < 1 || args.step_mib < 2 ||
      (args.backend != "nccl" && args.backend != "ipc")) {
    std::fprintf(
        stderr, "flags out of range (need slots × ranks ≥ experts, all ≥ 1, --backend nccl|ipc)\n");
    return 2;
  }
  std::printf(
      "transfer_bench: %s, %d ranks, %d layers, %d experts, %d slots/rank, %d MiB/expert, "
      "max_ctas %d, sync every %d steps, %d layers per chunk, decode step = %d MiB device copy\n",
      args.backend.c_str(), args.ranks, args.layers, args.experts, args.slots, args.expert_mib,
      args.max_ctas, args.sync_every, args.layers_per_chunk, args.step_mib);
  std::fflush(stdout);
  if (args.backend == "nccl") {
    return eplb::transfer::RunLocalRanks(
        args.ranks, [&](int rank, int size, const eplb::transfer::NcclUniqueIdBytes& id) {
          return RunRank(args, rank, size, id, "");
        });
  }
  auto id = eplb::transfer::CudaIpcCommunicator::NewGroupId(args.ranks);
  if (!id.ok()) {
    std::fprintf(stderr, "%s\n", id.status().ToString().c_str());
    return 1;
  }
  const std::vector<int> codes = eplb::transfer::RunLocalProcesses(
      args.ranks, [&](int rank) { return RunRank(args, rank, args.ranks, {}, *id); });
  for (int code : codes) {
    if (code != 0) return code;
  }
  return 0;
}
