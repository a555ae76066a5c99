// HierarchicalCommunicator over host communicators: 4 ranks as threads, 2 "nodes" of 2. Each node
// has its own HostCommunicatorGroup and all ranks share a global one; hooks on the groups count
// which one each call went to.
#include "transfer/hierarchical_communicator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "transfer/host_communicator.h"

namespace eplb::transfer {
namespace {

constexpr int32_t kRanks = 4, kPerNode = 2;

struct Fixture {
  std::atomic<int> node_calls{0}, global_calls{0};
  std::function<absl::Status(int32_t)> global_hook;  // on the global group's SendRecvGroup
  std::vector<HostCommunicatorGroup> nodes;
  std::unique_ptr<HostCommunicatorGroup> global;
  std::vector<std::unique_ptr<HierarchicalCommunicator>> comms;

  Fixture() {
    for (int n = 0; n < kRanks / kPerNode; ++n) {
      nodes.push_back(*HostCommunicatorGroup::Create(
          kPerNode, {.timeout = absl::Seconds(60),
                     .before_op = [this](int32_t, absl::string_view op, int64_t) {
                       if (op == "SendRecvGroup") node_calls++;
                       return absl::OkStatus();
                     }}));
    }
    global = std::make_unique<HostCommunicatorGroup>(*HostCommunicatorGroup::Create(
        kRanks, {.timeout = absl::Seconds(60),
                 .before_op = [this](int32_t rank, absl::string_view op, int64_t) {
                   if (op != "SendRecvGroup") return absl::OkStatus();
                   global_calls++;
                   return global_hook ? global_hook(rank) : absl::OkStatus();
                 }}));
    for (int32_t r = 0; r < kRanks; ++r) {
      auto comm = HierarchicalCommunicator::Create(nodes[r / kPerNode].ForRank(r % kPerNode),
                                                   global->ForRank(r), kPerNode);
      EXPECT_TRUE(comm.ok()) << comm.status();
      comms.push_back(*std::move(comm));
    }
  }

  void RunRanks(const std::function<void(int32_t)>& body) {
    std::vector<std::thread> threads;
    for (int32_t r = 0; r < kRanks; ++r) threads.emplace_back(body, r);
    for (auto& t : threads) t.join();
  }
};

uint8_t Byte(int32_t src, int32_t dst, size_t i) {
  return static_cast<uint8_t>(src * 37 + dst * 11 + i);
}

TEST(HierarchicalCommunicatorTest, SameNodeTransfersUseTheNodeAndTheRestTheGlobalOne) {
  Fixture f;
  const size_t bytes = 1000;
  f.RunRanks([&](int32_t rank) {
    std::vector<std::vector<uint8_t>> out(kRanks), in(kRanks, std::vector<uint8_t>(bytes));
    std::vector<PeerTransfer> sends, receives;
    for (int32_t peer = 0; peer < kRanks; ++peer) {
      out[peer].resize(bytes);
      for (size_t i = 0; i < bytes; ++i) out[peer][i] = Byte(rank, peer, i);
      sends.push_back({peer, out[peer].data(), bytes});
      receives.push_back({peer, in[peer].data(), bytes});
    }
    ASSERT_TRUE(f.comms[rank]->SendRecvGroup(sends, receives).ok());
    for (int32_t peer = 0; peer < kRanks; ++peer) {
      for (size_t i = 0; i < bytes; ++i) ASSERT_EQ(in[peer][i], Byte(peer, rank, i));
    }
    // Self and node-mate: one send and one receive each; the other node: two of each.
    EXPECT_EQ(f.comms[rank]->node_transfers(), 4);
    EXPECT_EQ(f.comms[rank]->global_transfers(), 4);
  });
  EXPECT_EQ(f.node_calls.load(), kRanks);
  EXPECT_EQ(f.global_calls.load(), kRanks);

  // Only node-mates: the global communicator is not called at all.
  f.RunRanks([&](int32_t rank) {
    const int32_t mate = rank ^ 1;
    std::vector<uint8_t> out(bytes, static_cast<uint8_t>(rank)), in(bytes);
    const PeerTransfer send{mate, out.data(), bytes}, receive{mate, in.data(), bytes};
    ASSERT_TRUE(f.comms[rank]->SendRecvGroup({&send, 1}, {&receive, 1}).ok());
    EXPECT_EQ(in, std::vector<uint8_t>(bytes, static_cast<uint8_t>(mate)));
  });
  EXPECT_EQ(f.node_calls.load(), 2 * kRanks);
  EXPECT_EQ(f.global_calls.load(), kRanks);
}

TEST(HierarchicalCommunicatorTest, CollectivesSpanEveryRank) {
  Fixture f;
  f.RunRanks([&](int32_t rank) {
    absl::StatusOr<int64_t> min = f.comms[rank]->AllReduceMin(10 - rank);
    ASSERT_TRUE(min.ok()) << min.status();
    EXPECT_EQ(*min, 10 - (kRanks - 1));
    const uint8_t mine[1] = {static_cast<uint8_t>(rank)};
    auto all = f.comms[rank]->AllGather(mine);
    ASSERT_TRUE(all.ok()) << all.status();
    EXPECT_EQ(all->size(), static_cast<size_t>(kRanks));
  });
}

TEST(HierarchicalCommunicatorTest, AFailingGlobalPartFailsTheCallAfterTheNodePartFinished) {
  Fixture f;
  f.global_hook = [&](int32_t) {
    const absl::Status down = absl::UnavailableError("link to node 1 is down");
    f.global->Abort(down);
    return down;
  };
  f.RunRanks([&](int32_t rank) {
    std::vector<uint8_t> out(64, static_cast<uint8_t>(rank)), in_mate(64), in_far(64);
    const int32_t mate = rank ^ 1, far = (rank + 2) % kRanks;
    const PeerTransfer sends[2] = {{mate, out.data(), 64}, {far, out.data(), 64}};
    const PeerTransfer receives[2] = {{mate, in_mate.data(), 64}, {far, in_far.data(), 64}};
    EXPECT_EQ(f.comms[rank]->SendRecvGroup(sends, receives),
              absl::UnavailableError("link to node 1 is down"));
    EXPECT_EQ(in_mate, std::vector<uint8_t>(64, static_cast<uint8_t>(mate)));  // node part done
  });
}

TEST(HierarchicalCommunicatorTest, CreateRefusesCommunicatorsThatDoNotFit) {
  auto node = *HostCommunicatorGroup::Create(2);
  auto three = *HostCommunicatorGroup::Create(3);
  auto global = *HostCommunicatorGroup::Create(4);
  EXPECT_EQ(HierarchicalCommunicator::Create(nullptr, global.ForRank(0), 2).status(),
            absl::InvalidArgumentError("node communicator is null"));
  EXPECT_EQ(HierarchicalCommunicator::Create(node.ForRank(0), global.ForRank(0), 3).status(),
            absl::InvalidArgumentError("ranks_per_node = 3 does not divide the global size 4"));
  EXPECT_EQ(HierarchicalCommunicator::Create(three.ForRank(0), global.ForRank(0), 2).status(),
            absl::InvalidArgumentError("the node communicator has 3 ranks, ranks_per_node = 2"));
  EXPECT_EQ(HierarchicalCommunicator::Create(node.ForRank(1), global.ForRank(2), 2).status(),
            absl::InvalidArgumentError(
                "the node communicator's rank 1 is not global rank 2 % ranks_per_node = 0"));
}

TEST(HierarchicalCommunicatorTest, BadTransfersAreRefusedBeforeEitherPartRuns) {
  Fixture f;
  const PeerTransfer send{7, nullptr, 0};
  EXPECT_EQ(
      f.comms[0]->SendRecvGroup({&send, 1}, {}),
      absl::InvalidArgumentError("SendRecvGroup on rank 0: send 0 has peer 7, outside [0, 4)"));
  const MemoryRange null_range{nullptr, 16};
  EXPECT_EQ(f.comms[0]->RegisterSendBuffers({&null_range, 1}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.node_calls.load() + f.global_calls.load(), 0);
}

}  // namespace
}  // namespace eplb::transfer
