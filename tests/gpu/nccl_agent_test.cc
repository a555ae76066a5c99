// GPU test of the worker side: N processes, one per GPU, each a PlacementAgent with the NCCL
// communicator and the CUDA device context, expert weights in device memory filled with a pattern
// unique to (layer, expert, buffer). Every step, a check kernel on the serving stream reads the
// device map tables and verifies that every slot holds its expert's bytes: a switch copied out of
// stream order, a half-staged expert or a stale table shows up as an error. Three plans are
// applied; at the end every rank must serve the last plan's map with zero errors.
//
// It also checks the communicator on its own: a grouped send/receive ring (each rank to the next,
// itself when alone), AllReduceMin and AllGather.
//
//   nccl_agent_test [--ranks N] [--layers L] [--steps S] [--expert-mib M]
// Exit status 0 when every rank passed. Run it under compute-sanitizer to check memory accesses.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "agent/placement_agent.h"
#include "core/expert_map.h"
#include "core/testing/random_inputs.h"
#include "tests/gpu/pattern_kernels.h"
#include "transfer/cuda_device.h"
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
using eplb::gpu_test::HostPattern;
using eplb::gpu_test::LaunchCheck;
using eplb::gpu_test::LaunchFill;
using eplb::gpu_test::SlotPtrs;
using eplb::testing::RandomExpertMap;

#define CHECK_OK(expr)                                                       \
  do {                                                                       \
    if (auto s_ = (expr); !s_.ok()) {                                        \
      std::fprintf(stderr, "rank %d: %s:%d: %s\n", rank, __FILE__, __LINE__, \
                   s_.ToString().c_str());                                   \
      return 1;                                                              \
    }                                                                        \
  } while (false)

struct Args {
  int ranks = 2;
  int layers = 6;
  int steps = 200;
  int expert_mib = 4;
};

int CommunicatorChecks(int rank, int size, eplb::transfer::NcclCommunicator& comm) {
  const size_t bytes = 64 << 20;
  void *send = nullptr, *recv = nullptr;
  CHECK_CUDA(cudaMalloc(&send, bytes));
  CHECK_CUDA(cudaMalloc(&recv, bytes));
  CHECK_CUDA(LaunchFill(static_cast<uint32_t*>(send), bytes / 4, 99, rank, 0, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  const int next = (rank + 1) % size, prev = (rank + size - 1) % size;
  const eplb::transfer::PeerTransfer s{next, send, bytes}, r{prev, recv, bytes};
  CHECK_OK(comm.SendRecvGroup({&s, 1}, {&r, 1}));
  std::vector<uint32_t> host(bytes / 4);
  CHECK_CUDA(cudaMemcpy(host.data(), recv, bytes, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < host.size(); ++i) {
    if (host[i] != HostPattern(99, prev, 0, i)) {
      std::fprintf(stderr, "rank %d: ring word %zu differs\n", rank, i);
      return 1;
    }
  }
  auto min = comm.AllReduceMin(100 - rank);
  CHECK_OK(min.status());
  if (*min != 100 - (size - 1)) {
    std::fprintf(stderr, "rank %d: AllReduceMin gave %ld\n", rank, static_cast<long>(*min));
    return 1;
  }
  const uint8_t mine[3] = {static_cast<uint8_t>(rank), 7, static_cast<uint8_t>(rank * 2)};
  auto all = comm.AllGather(mine);
  CHECK_OK(all.status());
  for (int q = 0; q < size; ++q) {
    if ((*all)[q] !=
        std::vector<uint8_t>{static_cast<uint8_t>(q), 7, static_cast<uint8_t>(q * 2)}) {
      std::fprintf(stderr, "rank %d: AllGather entry %d differs\n", rank, q);
      return 1;
    }
  }
  cudaFree(send);
  cudaFree(recv);
  std::printf("rank %d: communicator checks passed (ring of %zu MiB, all-reduce, all-gather)\n",
              rank, bytes >> 20);
  return 0;
}

int RunRank(const Args& args, int rank, int size, const eplb::transfer::NcclUniqueIdBytes& id) {
  int devices = 0;
  CHECK_CUDA(cudaGetDeviceCount(&devices));
  const int device = rank % devices;
  CHECK_CUDA(cudaSetDevice(device));
  auto comm = eplb::transfer::NcclCommunicator::Create(id, rank, size, device, {.max_ctas = 8});
  CHECK_OK(comm.status());
  if (CommunicatorChecks(rank, size, **comm) != 0) return 1;

  const int L = args.layers, E = 16, P = 24 * size / 2 + (size == 1 ? 12 : 0);
  std::mt19937 rng(2026);  // the same maps on every rank
  auto initial = RandomExpertMap(L, E, P, size, rng);
  std::vector<std::shared_ptr<const ExpertMap>> plans;
  for (int i = 0; i < 3; ++i) plans.push_back(RandomExpertMap(L, E, P, size, rng));
  const SlotLayout layout = initial->layout();
  const int S = layout.SlotsOnRank(rank), first = layout.FirstSlotOfRank(rank);
  const uint64_t words[2] = {static_cast<uint64_t>(args.expert_mib) << 18,
                             static_cast<uint64_t>(args.expert_mib) << 16};  // 1 : 1/4

  PlacementAgentOptions options;
  options.rank = rank;
  options.initial_map = initial;
  options.initial_version = 1;
  options.sync_every_steps = 4;
  options.weights.resize(L);
  std::vector<SlotPtrs> slot_ptrs(L * S);
  for (int l = 0; l < L; ++l) {
    for (int s = 0; s < S; ++s) {
      eplb::agent::SlotWeights slot;
      for (int b = 0; b < 2; ++b) {
        void* ptr = nullptr;
        CHECK_CUDA(cudaMalloc(&ptr, words[b] * 4));
        CHECK_CUDA(LaunchFill(static_cast<uint32_t*>(ptr), words[b], l,
                              initial->phy2log(l)[first + s], b, nullptr));
        slot.push_back({ptr, words[b] * 4});
        slot_ptrs[l * S + s].buffers[b] = static_cast<uint32_t*>(ptr);
      }
      options.weights[l].push_back(std::move(slot));
    }
  }
  CHECK_CUDA(cudaDeviceSynchronize());
  SlotPtrs* device_slots = nullptr;
  uint64_t* device_words = nullptr;
  unsigned long long* errors = nullptr;
  CHECK_CUDA(cudaMalloc(&device_slots, slot_ptrs.size() * sizeof(SlotPtrs)));
  CHECK_CUDA(cudaMemcpy(device_slots, slot_ptrs.data(), slot_ptrs.size() * sizeof(SlotPtrs),
                        cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMalloc(&device_words, sizeof(words)));
  CHECK_CUDA(cudaMemcpy(device_words, words, sizeof(words), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMalloc(&errors, sizeof(unsigned long long)));
  CHECK_CUDA(cudaMemset(errors, 0, sizeof(unsigned long long)));

  cudaStream_t serving = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&serving, cudaStreamNonBlocking));
  auto device_context =
      eplb::transfer::CudaDeviceContext::Create(device, serving, (*comm)->stream());
  CHECK_OK(device_context.status());
  auto agent = PlacementAgent::Create(options, comm->get(), device_context->get());
  CHECK_OK(agent.status());

  const int plan_every = args.steps / 4;
  bool reported = false;
  {
    // The check itself, before any plan: zero errors expected.
    CHECK_CUDA(LaunchCheck(device_slots, (*agent)->device_tables().phy2log, L, P, first, S,
                           device_words, errors, serving));
    CHECK_CUDA(cudaStreamSynchronize(serving));
    unsigned long long initial_errors = 0;
    CHECK_CUDA(cudaMemcpy(&initial_errors, errors, sizeof(initial_errors), cudaMemcpyDeviceToHost));
    if (initial_errors != 0) {
      std::fprintf(stderr, "rank %d: %llu errors before any plan\n", rank, initial_errors);
      return 1;
    }
  }
  for (int step = 0; step < args.steps; ++step) {
    if (step % plan_every == 0 && step / plan_every >= 1 && step / plan_every <= 3) {
      const int i = step / plan_every - 1;
      const auto& map = plans[i];
      (*agent)->OfferPlan(AgentPlan{i + 2, PlanStatus::kCommitted, map, map->Hash()});
    }
    CHECK_OK((*agent)->OnStepBoundary(step));
    CHECK_CUDA(LaunchCheck(device_slots, (*agent)->device_tables().phy2log, L, P, first, S,
                           device_words, errors, serving));
    if (step % 8 == 0) CHECK_CUDA(cudaStreamSynchronize(serving));  // keep the host close
    if (getenv("EPLB_TRACE") != nullptr) {
      CHECK_CUDA(cudaStreamSynchronize(serving));
      unsigned long long now = 0;
      CHECK_CUDA(cudaMemcpy(&now, errors, sizeof(now), cudaMemcpyDeviceToHost));
      std::fprintf(stderr, "step %d: errors %llu, layer versions %ld %ld\n", step, now,
                   static_cast<long>((*agent)->layer_version(0)),
                   static_cast<long>((*agent)->layer_version(L - 1)));
    }
    if (step % 8 == 0 && !reported) {
      unsigned long long so_far = 0;
      CHECK_CUDA(cudaMemcpy(&so_far, errors, sizeof(so_far), cudaMemcpyDeviceToHost));
      if (so_far > 0) {
        reported = true;
        std::vector<int32_t> table(static_cast<size_t>(L) * P);
        CHECK_CUDA(cudaMemcpy(table.data(), (*agent)->device_tables().phy2log,
                              table.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
        for (int l = 0; l < L && so_far > 0; ++l) {
          for (int q = 0; q < S; ++q) {
            const int expert = (*agent)->phy2log(l)[first + q];
            if (table[l * P + first + q] != expert) {
              std::fprintf(stderr,
                           "rank %d step %d: device table layer %d slot %d holds %d, host %d\n",
                           rank, step, l, first + q, table[l * P + first + q], expert);
              so_far = 0;
              break;
            }
            for (int b = 0; b < 2 && so_far > 0; ++b) {
              std::vector<uint32_t> data(words[b]);
              CHECK_CUDA(cudaMemcpy(data.data(), slot_ptrs[l * S + q].buffers[b], words[b] * 4,
                                    cudaMemcpyDeviceToHost));
              for (uint64_t w = 0; w < words[b]; ++w) {
                if (data[w] != HostPattern(l, expert, b, w)) {
                  int holder = -1;
                  for (int e = 0; e < E; ++e) {
                    if (data[w] == HostPattern(l, e, b, w)) holder = e;
                  }
                  std::fprintf(stderr,
                               "rank %d step %d: layer %d slot %d buffer %d word %lu: expert %d "
                               "expected, the word is expert %d's\n",
                               rank, step, l, first + q, b, static_cast<unsigned long>(w), expert,
                               holder);
                  so_far = 0;
                  break;
                }
              }
            }
          }
        }
      }
    }
  }
  CHECK_CUDA(cudaStreamSynchronize(serving));
  unsigned long long host_errors = 0;
  CHECK_CUDA(cudaMemcpy(&host_errors, errors, sizeof(host_errors), cudaMemcpyDeviceToHost));
  const PlacementAgent::Status status = (*agent)->status();
  bool map_ok = true;
  for (int l = 0; l < L; ++l) {
    const auto row = (*agent)->phy2log(l);
    map_ok = map_ok && std::equal(row.begin(), row.end(), plans.back()->phy2log(l).begin());
  }
  std::printf(
      "rank %d (GPU %d): %d steps, plans applied %ld, failed %ld, chunks switched %ld, "
      "received %.1f MiB, copied locally %.1f MiB, stall %.3f s, active version %ld, final map %s, "
      "content errors %llu\n",
      rank, device, args.steps, static_cast<long>(status.plans_applied),
      static_cast<long>(status.plans_failed), static_cast<long>(status.chunks_switched),
      status.bytes_received / 1048576.0, status.bytes_copied_locally / 1048576.0,
      status.stall_seconds, static_cast<long>(status.active_version),
      map_ok ? "matches plan 4" : "DIFFERS", host_errors);
  agent->reset();
  const bool ok = host_errors == 0 && map_ok && status.plans_applied == 3 &&
                  status.active_version == 4 && status.plans_failed == 0;
  for (auto& slot : options.weights) {
    for (auto& buffers : slot) {
      for (auto& b : buffers) cudaFree(b.data);
    }
  }
  cudaFree(device_slots);
  cudaFree(device_words);
  cudaFree(errors);
  device_context->reset();
  comm->reset();
  cudaStreamDestroy(serving);
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const int value = std::atoi(argv[i + 1]);
    if (flag == "--ranks") {
      args.ranks = value;
    } else if (flag == "--layers") {
      args.layers = value;
    } else if (flag == "--steps") {
      args.steps = value;
    } else if (flag == "--expert-mib") {
      args.expert_mib = value;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (args.ranks < 1 || args.layers < 1 || args.steps < 40 || args.expert_mib < 1) {
    std::fprintf(stderr, "need --ranks ≥ 1, --layers ≥ 1, --steps ≥ 40, --expert-mib ≥ 1\n");
    return 2;
  }
  const int status = eplb::transfer::RunLocalRanks(
      args.ranks, [&](int rank, int size, const eplb::transfer::NcclUniqueIdBytes& id) {
        return RunRank(args, rank, size, id);
      });
  std::printf("%s\n", status == 0 ? "PASS" : "FAIL");
  return status;
}
