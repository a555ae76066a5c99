// GPU test of the worker side: N processes, each a PlacementAgent with a real communicator and
// the CUDA device context, expert weights in device memory filled with a pattern unique to (layer,
// expert, buffer). Every step, a check kernel on the serving stream reads the device map tables and
// verifies that every slot holds its expert's bytes: a switch copied out of stream order, a
// half-staged expert or a stale table shows up as an error. Three plans are applied; at the end
// every rank must serve the last plan's map with zero errors.
//
// Backends (--backend):
//   nccl   one process per GPU (NCCL refuses two ranks on one GPU), NcclCommunicator;
//   ipc    CudaIpcCommunicator; processes share the GPUs round-robin (all of them on one GPU works:
//          every copy then crosses a process, not a link);
//   mixed  --ranks-per-node ranks form a "node": a HierarchicalCommunicator with CUDA IPC inside
//          the node and the host-relay transport (a network stand-in) across nodes.
// It also checks the communicator on its own first: a grouped send/receive ring (each rank to the
// next, itself when alone), AllReduceMin and AllGather; with ipc, the errors of a send outside the
// registered memory and of mismatched sizes (on a group of their own).
//
// --sm-test: every step, the serving stream also runs a kernel of one block per SM that needs every
// block resident at once (what a cooperative dispatch kernel needs); a launch that could not get
// every SM within 2 s gives up and is counted. The test fails on any with --backend ipc/mixed.
// --kill-rank R: rank R kills itself (SIGKILL) while the second plan stages; the others must fail
// that plan naming rank R, keep serving with zero content errors to the last step, and exit 0.
//
//   gpu_agent_test [--backend nccl|ipc|mixed] [--ranks N] [--ranks-per-node K] [--layers L]
//                  [--steps S] [--expert-mib M] [--sm-test 1] [--kill-rank R]
// Exit status 0 when every rank passed. Run it under compute-sanitizer to check memory accesses.
#include <cuda_runtime_api.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/placement_agent.h"
#include "core/expert_map.h"
#include "core/testing/random_inputs.h"
#include "tests/gpu/pattern_kernels.h"
#include "transfer/cuda_device.h"
#include "transfer/cuda_ipc_communicator.h"
#include "transfer/hierarchical_communicator.h"
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

using eplb::transfer::Communicator;
using eplb::transfer::CudaIpcCommunicator;
using eplb::transfer::CudaIpcOptions;

struct Args {
  std::string backend = "nccl";
  int ranks = 2;
  int ranks_per_node = 0;
  int layers = 6;
  int steps = 200;
  int expert_mib = 4;
  int sm_test = 0;
  int kill_rank = -1;
};

// Group ids made by the parent (CUDA IPC needs no CUDA call to make one).
struct Ids {
  eplb::transfer::NcclUniqueIdBytes nccl{};
  std::string ipc, errors, relay;
  std::vector<std::string> nodes;
};

int CommunicatorChecks(int rank, int size, Communicator& comm) {
  const size_t bytes = 64 << 20;
  void *send = nullptr, *recv = nullptr;
  CHECK_CUDA(cudaMalloc(&send, bytes));
  CHECK_CUDA(cudaMalloc(&recv, bytes));
  CHECK_CUDA(LaunchFill(static_cast<uint32_t*>(send), bytes / 4, 99, rank, 0, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  const eplb::transfer::MemoryRange range{send, bytes};
  CHECK_OK(comm.RegisterSendBuffers({&range, 1}));
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
  // The buffers stay allocated: registered send memory must outlive the communicator.
  std::printf("rank %d: communicator checks passed (ring of %zu MiB, all-reduce, all-gather)\n",
              rank, bytes >> 20);
  return 0;
}

// CUDA IPC errors, on a group of their own (a failure breaks the group for good): a send from
// memory never registered is refused before anything moves; mismatched sizes fail both ranks with
// the same message.
int IpcErrorChecks(int rank, int size, int device, const std::string& id) {
  auto comm = CudaIpcCommunicator::Create(id, rank, size, device);
  CHECK_OK(comm.status());
  void* buffer = nullptr;
  CHECK_CUDA(cudaMalloc(&buffer, 1 << 20));
  const eplb::transfer::PeerTransfer stray{0, buffer, 4096};
  const absl::Status refused = (*comm)->SendRecvGroup({&stray, 1}, {});
  if (refused.code() != absl::StatusCode::kInvalidArgument ||
      !absl::StrContains(refused.message(), "outside every range given to RegisterSendBuffers")) {
    std::fprintf(stderr, "rank %d: unregistered send gave %s\n", rank, refused.ToString().c_str());
    return 1;
  }
  const eplb::transfer::MemoryRange range{buffer, 1 << 20};
  CHECK_OK((*comm)->RegisterSendBuffers({&range, 1}));
  if (size >= 2 && rank < 2) {
    const int peer = 1 - rank;
    const eplb::transfer::PeerTransfer send{peer, buffer, rank == 0 ? 8192u : 4096u};
    const eplb::transfer::PeerTransfer receive{peer, static_cast<char*>(buffer) + 65536,
                                               rank == 0 ? 8192u : 4096u};
    const absl::Status mismatch = (*comm)->SendRecvGroup({&send, 1}, {&receive, 1});
    if (mismatch.code() != absl::StatusCode::kInternal ||
        !absl::StrContains(mismatch.message(), "SendRecvGroup size mismatch on transfer #0")) {
      std::fprintf(stderr, "rank %d: mismatched sizes gave %s\n", rank,
                   mismatch.ToString().c_str());
      return 1;
    }
    std::printf("rank %d: IPC error checks passed (%s)\n", rank,
                std::string(mismatch.message()).c_str());
  }
  comm->reset();
  cudaFree(buffer);
  return 0;
}

struct Backend {
  std::unique_ptr<Communicator> comm;
  cudaStream_t staging = nullptr;
};

int MakeBackend(const Args& args, int rank, int size, int device, const Ids& ids, Backend* out) {
  if (args.backend == "nccl") {
    auto comm =
        eplb::transfer::NcclCommunicator::Create(ids.nccl, rank, size, device, {.max_ctas = 8});
    CHECK_OK(comm.status());
    out->staging = (*comm)->stream();
    out->comm = *std::move(comm);
  } else if (args.backend == "ipc") {
    if (IpcErrorChecks(rank, size, device, ids.errors) != 0) return 1;
    auto comm = CudaIpcCommunicator::Create(ids.ipc, rank, size, device);
    CHECK_OK(comm.status());
    out->staging = (*comm)->stream();
    out->comm = *std::move(comm);
  } else {
    const int k = args.ranks_per_node;
    CudaIpcOptions relay_options;
    relay_options.transport = CudaIpcOptions::Transport::kHostRelay;
    auto global = CudaIpcCommunicator::Create(ids.relay, rank, size, device, relay_options);
    CHECK_OK(global.status());
    out->staging = (*global)->stream();
    auto node = CudaIpcCommunicator::Create(ids.nodes[rank / k], rank % k, k, device,
                                            {.stream = out->staging});
    CHECK_OK(node.status());
    auto comm =
        eplb::transfer::HierarchicalCommunicator::Create(*std::move(node), *std::move(global), k);
    CHECK_OK(comm.status());
    out->comm = *std::move(comm);
  }
  return 0;
}

int RunRank(const Args& args, int rank, int size, const Ids& ids) {
  int devices = 0;
  CHECK_CUDA(cudaGetDeviceCount(&devices));
  const int device = rank % devices;
  CHECK_CUDA(cudaSetDevice(device));
  Backend backend;
  if (MakeBackend(args, rank, size, device, ids, &backend) != 0) return 1;
  Communicator* comm = backend.comm.get();
  if (CommunicatorChecks(rank, size, *comm) != 0) return 1;

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
  options.ranks_per_node = args.ranks_per_node;
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
  auto device_context = eplb::transfer::CudaDeviceContext::Create(device, serving, backend.staging);
  CHECK_OK(device_context.status());
  auto agent = PlacementAgent::Create(options, comm, device_context->get());
  CHECK_OK(agent.status());

  // --sm-test: the all-resident kernel's state.
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, device));
  unsigned int* resident = nullptr;  // [0] arrivals, [1] launches that timed out
  CHECK_CUDA(cudaMalloc(&resident, 2 * sizeof(unsigned int)));
  CHECK_CUDA(cudaMemset(resident, 0, 2 * sizeof(unsigned int)));
  unsigned int generation = 0;
  const int shared_bytes = static_cast<int>(prop.sharedMemPerBlockOptin);

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
    if (rank == args.kill_rank && (*agent)->status().applying_version == 3) {
      std::printf("rank %d: killing itself at step %d while plan 3 stages\n", rank, step);
      std::fflush(stdout);
      raise(SIGKILL);
    }
    CHECK_CUDA(LaunchCheck(device_slots, (*agent)->device_tables().phy2log, L, P, first, S,
                           device_words, errors, serving));
    if (args.sm_test) {
      CHECK_CUDA(eplb::gpu_test::LaunchAllResident(resident, ++generation, prop.multiProcessorCount,
                                                   shared_bytes, 2'000'000'000ull, resident + 1,
                                                   serving));
    }
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
  unsigned int resident_host[2] = {0, 0};
  CHECK_CUDA(cudaMemcpy(resident_host, resident, sizeof(resident_host), cudaMemcpyDeviceToHost));
  std::printf(
      "rank %d (GPU %d, %s): %d steps, plans applied %ld, failed %ld, chunks switched %ld, "
      "received %.1f MiB, copied locally %.1f MiB, stall %.3f s, active version %ld, final map %s, "
      "content errors %llu%s\n",
      rank, device, args.backend.c_str(), args.steps, static_cast<long>(status.plans_applied),
      static_cast<long>(status.plans_failed), static_cast<long>(status.chunks_switched),
      status.bytes_received / 1048576.0, status.bytes_copied_locally / 1048576.0,
      status.stall_seconds, static_cast<long>(status.active_version),
      map_ok ? "matches plan 4" : "differs from plan 4", host_errors,
      args.sm_test ? absl::StrCat(", all-resident kernel: ", generation, " launches, ",
                                  resident_host[1], " blocks gave up waiting")
                         .c_str()
                   : "");
  if (!status.last_error.empty())
    std::printf("rank %d: last error: %s\n", rank, status.last_error.c_str());
  std::fflush(stdout);  // a crash in the teardown below must not swallow the result
  agent->reset();
  bool ok = host_errors == 0 && (args.backend == "nccl" || resident_host[1] == 0);
  if (args.kill_rank >= 0) {
    // The killed rank's plan fails on every other rank, naming it; they keep serving.
    ok = ok && status.plans_failed >= 1 && status.broken &&
         absl::StrContains(status.last_error, absl::StrCat("rank ", args.kill_rank));
  } else {
    ok = ok && map_ok && status.plans_applied == 3 && status.active_version == 4 &&
         status.plans_failed == 0;
  }
  cudaFree(resident);
  // Registered send memory outlives the communicator.
  device_context->reset();
  backend.comm.reset();
  for (auto& slot : options.weights) {
    for (auto& buffers : slot) {
      for (auto& b : buffers) cudaFree(b.data);
    }
  }
  cudaFree(device_slots);
  cudaFree(device_words);
  cudaFree(errors);
  cudaStreamDestroy(serving);
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const int value = std::atoi(argv[i + 1]);
    if (flag == "--backend") {
      args.backend = argv[i + 1];
    } else if (flag == "--ranks") {
      args.ranks = value;
    } else if (flag == "--ranks-per-node") {
      args.ranks_per_node = value;
    } else if (flag == "--layers") {
      args.layers = value;
    } else if (flag == "--steps") {
      args.steps = value;
    } else if (flag == "--expert-mib") {
      args.expert_mib = value;
    } else if (flag == "--sm-test") {
      args.sm_test = value;
    } else if (flag == "--kill-rank") {
      args.kill_rank = value;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  const bool mixed = args.backend == "mixed";
  if (args.ranks < 1 || args.layers < 1 || args.steps < 40 || args.expert_mib < 1 ||
      (args.backend != "nccl" && args.backend != "ipc" && !mixed) ||
      (mixed && (args.ranks_per_node < 1 || args.ranks % args.ranks_per_node != 0)) ||
      args.kill_rank >= args.ranks) {
    std::fprintf(stderr,
                 "need --backend nccl|ipc|mixed, --ranks ≥ 1, --layers ≥ 1, --steps ≥ 40, "
                 "--expert-mib ≥ 1, with mixed --ranks-per-node dividing --ranks, --kill-rank < "
                 "--ranks\n");
    return 2;
  }
  std::vector<int> codes;
  if (args.backend == "nccl") {
    const int status = eplb::transfer::RunLocalRanks(
        args.ranks, [&](int rank, int size, const eplb::transfer::NcclUniqueIdBytes& id) {
          Ids ids;
          ids.nccl = id;
          return RunRank(args, rank, size, ids);
        });
    std::printf("%s\n", status == 0 ? "PASS" : "FAIL");
    return status;
  }
  Ids ids;
  const auto make = [](int size, const CudaIpcOptions& options) {
    auto id = CudaIpcCommunicator::NewGroupId(size, options);
    if (!id.ok()) {
      std::fprintf(stderr, "%s\n", id.status().ToString().c_str());
      std::exit(1);
    }
    return *id;
  };
  if (mixed) {
    CudaIpcOptions relay;
    relay.transport = CudaIpcOptions::Transport::kHostRelay;
    ids.relay = make(args.ranks, relay);
    for (int n = 0; n < args.ranks / args.ranks_per_node; ++n) {
      ids.nodes.push_back(make(args.ranks_per_node, {}));
    }
  } else {
    ids.ipc = make(args.ranks, {});
    ids.errors = make(args.ranks, {});
  }
  codes = eplb::transfer::RunLocalProcesses(
      args.ranks, [&](int rank) { return RunRank(args, rank, args.ranks, ids); });
  bool pass = true;
  for (int r = 0; r < args.ranks; ++r) {
    const int expected = r == args.kill_rank ? 128 + SIGKILL : 0;
    if (codes[r] != expected) {
      std::printf("rank %d exited with %d, expected %d\n", r, codes[r], expected);
      pass = false;
    }
  }
  std::printf("%s\n", pass ? "PASS" : "FAIL");
  return pass ? 0 : 1;
}
