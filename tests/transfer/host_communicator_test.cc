#include "transfer/host_communicator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace eplb::transfer {
namespace {

using ::testing::AnyOf;
using ::testing::ElementsAre;
using ::testing::Eq;
using ::testing::Pair;

// Hang guard for the threaded tests: a call that should complete never waits this long, so a
// bug fails the test with DEADLINE_EXCEEDED instead of hanging it.
constexpr absl::Duration kHangGuard = absl::Seconds(60);

HostCommunicatorGroup MakeGroup(int32_t size, HostGroupOptions options = {.timeout = kHangGuard}) {
  auto group = HostCommunicatorGroup::Create(size, std::move(options));
  EXPECT_TRUE(group.ok()) << group.status();
  return *std::move(group);
}

// Runs body(rank) on one thread per rank and joins them.
void RunRanks(int32_t size, const std::function<void(int32_t rank)>& body) {
  std::vector<std::thread> threads;
  threads.reserve(size);
  for (int32_t rank = 0; rank < size; ++rank) threads.emplace_back(body, rank);
  for (std::thread& thread : threads) thread.join();
}

// The content of transfer `index` from `src` to `dst` in exchange `round`: distinct for every
// transfer and position, so a transfer delivered to the wrong buffer or out of order shows.
std::vector<uint8_t> Payload(int32_t src, int32_t dst, int round, int index, size_t bytes) {
  std::vector<uint8_t> payload(bytes);
  uint64_t x = (uint64_t{static_cast<uint32_t>(src)} << 48) ^
               (uint64_t{static_cast<uint32_t>(dst)} << 32) ^ (static_cast<uint64_t>(round) << 16) ^
               static_cast<uint64_t>(index);
  for (uint8_t& byte : payload) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    byte = static_cast<uint8_t>(x >> 56);
  }
  return payload;
}

PeerTransfer Transfer(int32_t peer, std::vector<uint8_t>& buffer) {
  return {.peer = peer, .data = buffer.data(), .bytes = buffer.size()};
}

TEST(HostCommunicatorGroupTest, CreateRefusesBadOptions) {
  EXPECT_EQ(HostCommunicatorGroup::Create(0).status(),
            absl::InvalidArgumentError("size = 0 is out of range [1, 4096]"));
  EXPECT_EQ(HostCommunicatorGroup::Create(4097).status(),
            absl::InvalidArgumentError("size = 4097 is out of range [1, 4096]"));
  EXPECT_EQ(HostCommunicatorGroup::Create(2, {.timeout = absl::ZeroDuration()}).status(),
            absl::InvalidArgumentError("timeout = 0 is not positive"));
  EXPECT_TRUE(HostCommunicatorGroup::Create(1, {.timeout = absl::InfiniteDuration()}).ok());
}

TEST(HostCommunicatorGroupTest, HandsOutOneCommunicatorPerRank) {
  HostCommunicatorGroup group = MakeGroup(3);
  EXPECT_EQ(group.size(), 3);
  std::vector<std::unique_ptr<Communicator>> communicators = group.ForAllRanks();
  ASSERT_EQ(communicators.size(), 3u);
  for (int32_t rank = 0; rank < 3; ++rank) {
    EXPECT_EQ(communicators[rank]->rank(), rank);
    EXPECT_EQ(communicators[rank]->size(), 3);
  }
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // sanitizers run threads of their own
  EXPECT_DEATH(group.ForRank(3), "rank 3 is outside \\[0, 3\\)");
}

// Every rank sends a random number of transfers of random sizes (0 included) to every rank, itself
// included, in several exchanges one after another; the peers' order is shuffled, the order per
// peer kept (that is what matches).
class AllToAllTest : public ::testing::TestWithParam<int32_t> {};

TEST_P(AllToAllTest, DeliversEveryTransferIntact) {
  const int32_t size = GetParam();
  constexpr int kRounds = 6;
  // sizes[round][src][dst]: the sizes of the transfers from src to dst, in order.
  std::vector<std::vector<std::vector<std::vector<size_t>>>> sizes(kRounds);
  std::mt19937 rng(size);
  std::uniform_int_distribution<int> count(0, 3);
  std::uniform_int_distribution<size_t> bytes(0, 3000);
  for (auto& round : sizes) {
    round.assign(size, std::vector<std::vector<size_t>>(size));
    for (auto& from_src : round) {
      for (auto& to_dst : from_src) {
        to_dst.resize(count(rng));
        for (size_t& b : to_dst) b = bytes(rng);
      }
    }
  }
  HostCommunicatorGroup group = MakeGroup(size);
  std::vector<std::unique_ptr<Communicator>> communicators = group.ForAllRanks();

  RunRanks(size, [&](int32_t rank) {
    Communicator& communicator = *communicators[rank];
    std::mt19937 order_rng(1000 + rank);
    for (int round = 0; round < kRounds; ++round) {
      // (peer, index) in a random order of peers, each peer's transfers in order.
      auto interleave = [&](const std::function<size_t(int32_t peer)>& count_of) {
        std::vector<int32_t> peers;
        for (int32_t peer = 0; peer < size; ++peer) {
          peers.insert(peers.end(), count_of(peer), peer);
        }
        std::shuffle(peers.begin(), peers.end(), order_rng);
        std::vector<std::pair<int32_t, int>> order;
        std::vector<int> next(size, 0);
        for (int32_t peer : peers) order.emplace_back(peer, next[peer]++);
        return order;
      };
      const auto send_order =
          interleave([&](int32_t peer) { return sizes[round][rank][peer].size(); });
      const auto receive_order =
          interleave([&](int32_t peer) { return sizes[round][peer][rank].size(); });

      std::vector<std::vector<uint8_t>> send_buffers;
      std::vector<PeerTransfer> sends;
      send_buffers.reserve(send_order.size());
      for (const auto& [peer, index] : send_order) {
        send_buffers.push_back(Payload(rank, peer, round, index, sizes[round][rank][peer][index]));
        sends.push_back(Transfer(peer, send_buffers.back()));
      }
      std::vector<std::vector<uint8_t>> receive_buffers;
      std::vector<PeerTransfer> receives;
      receive_buffers.reserve(receive_order.size());
      for (const auto& [peer, index] : receive_order) {
        receive_buffers.emplace_back(sizes[round][peer][rank][index], uint8_t{0xEE});
        receives.push_back(Transfer(peer, receive_buffers.back()));
      }

      ASSERT_TRUE(communicator.SendRecvGroup(sends, receives).ok()) << "rank " << rank;
      for (size_t i = 0; i < receive_order.size(); ++i) {
        const auto& [peer, index] = receive_order[i];
        EXPECT_EQ(receive_buffers[i], Payload(peer, rank, round, index, receive_buffers[i].size()))
            << "round " << round << ": transfer " << index << " from rank " << peer << " to rank "
            << rank;
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, AllToAllTest, ::testing::Values(2, 3, 4, 7, 8, 16));

TEST(HostCommunicatorTest, SendsToOwnRank) {
  HostCommunicatorGroup group = MakeGroup(1);
  std::unique_ptr<Communicator> communicator = group.ForRank(0);
  for (int round = 0; round < 3; ++round) {
    std::vector<uint8_t> first = Payload(0, 0, round, 0, 100);
    std::vector<uint8_t> second = Payload(0, 0, round, 1, 7);
    std::vector<uint8_t> empty;
    std::vector<uint8_t> first_in(100), second_in(7), empty_in;
    const PeerTransfer sends[] = {Transfer(0, first), Transfer(0, second), Transfer(0, empty)};
    const PeerTransfer receives[] = {Transfer(0, first_in), Transfer(0, second_in),
                                     Transfer(0, empty_in)};
    ASSERT_TRUE(communicator->SendRecvGroup(sends, receives).ok());
    EXPECT_EQ(first_in, first);
    EXPECT_EQ(second_in, second);
  }
  // Nothing to do is done at once.
  EXPECT_TRUE(communicator->SendRecvGroup({}, {}).ok());
}

TEST(HostCommunicatorTest, SelfSendsMixWithPeerTransfers) {
  constexpr int32_t kSize = 3;
  HostCommunicatorGroup group = MakeGroup(kSize);
  std::vector<std::unique_ptr<Communicator>> communicators = group.ForAllRanks();
  RunRanks(kSize, [&](int32_t rank) {
    std::vector<std::vector<uint8_t>> out, in;
    for (int32_t peer = 0; peer < kSize; ++peer) {
      out.push_back(Payload(rank, peer, 0, 0, 64 + peer));
      in.emplace_back(64 + rank);
    }
    std::vector<PeerTransfer> sends, receives;
    for (int32_t peer = 0; peer < kSize; ++peer) {
      sends.push_back(Transfer(peer, out[peer]));
      receives.push_back(Transfer(peer, in[peer]));
    }
    ASSERT_TRUE(communicators[rank]->SendRecvGroup(sends, receives).ok());
    for (int32_t peer = 0; peer < kSize; ++peer) {
      EXPECT_EQ(in[peer], Payload(peer, rank, 0, 0, 64 + rank)) << rank << " from " << peer;
    }
  });
}

TEST(HostCommunicatorTest, CommunicatorsOutliveTheGroup) {
  std::unique_ptr<Communicator> communicator;
  {
    HostCommunicatorGroup group = MakeGroup(1);
    communicator = group.ForRank(0);
  }
  EXPECT_EQ(communicator->AllReduceMin(5).value(), 5);
}

class CollectivesTest : public ::testing::TestWithParam<int32_t> {};

TEST_P(CollectivesTest, ManyRoundsInSequence) {
  const int32_t size = GetParam();
  constexpr int kRounds = 300;
  HostCommunicatorGroup group = MakeGroup(size);
  std::vector<std::unique_ptr<Communicator>> communicators = group.ForAllRanks();
  // The value of `rank` in `round`; the minimum moves between ranks from round to round.
  auto value = [&](int32_t rank, int round) -> int64_t {
    return int64_t{(rank * 7 + round * 3) % size} * 1'000'000'000'000 - round;
  };
  RunRanks(size, [&](int32_t rank) {
    Communicator& communicator = *communicators[rank];
    for (int round = 0; round < kRounds; ++round) {
      if (round % 2 == 0) {
        int64_t expected = value(0, round);
        for (int32_t r = 1; r < size; ++r) expected = std::min(expected, value(r, round));
        absl::StatusOr<int64_t> min = communicator.AllReduceMin(value(rank, round));
        ASSERT_TRUE(min.ok()) << min.status();
        EXPECT_EQ(*min, expected) << "round " << round << " rank " << rank;
      } else {
        const size_t bytes = round % 5;  // empty contributions too
        const std::vector<uint8_t> mine = Payload(rank, -1, round, 0, bytes);
        absl::StatusOr<std::vector<std::vector<uint8_t>>> all = communicator.AllGather(mine);
        ASSERT_TRUE(all.ok()) << all.status();
        ASSERT_EQ(all->size(), static_cast<size_t>(size));
        for (int32_t r = 0; r < size; ++r) {
          EXPECT_EQ((*all)[r], Payload(r, -1, round, 0, bytes)) << "round " << round;
        }
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, CollectivesTest, ::testing::Values(1, 2, 5, 16));

TEST(HostCommunicatorTest, CollectivesInterleaveWithTransfers) {
  constexpr int32_t kSize = 4;
  HostCommunicatorGroup group = MakeGroup(kSize);
  std::vector<std::unique_ptr<Communicator>> communicators = group.ForAllRanks();
  RunRanks(kSize, [&](int32_t rank) {
    Communicator& communicator = *communicators[rank];
    for (int round = 0; round < 50; ++round) {
      const int32_t next = (rank + 1) % kSize;
      const int32_t previous = (rank + kSize - 1) % kSize;
      std::vector<uint8_t> out = Payload(rank, next, round, 0, 33);
      std::vector<uint8_t> in(33);
      const PeerTransfer sends[] = {Transfer(next, out)};
      const PeerTransfer receives[] = {Transfer(previous, in)};
      ASSERT_TRUE(communicator.SendRecvGroup(sends, receives).ok());
      EXPECT_EQ(in, Payload(previous, rank, round, 0, 33));
      absl::StatusOr<int64_t> min = communicator.AllReduceMin(rank + round);
      ASSERT_TRUE(min.ok()) << min.status();
      EXPECT_EQ(*min, round);
    }
  });
}

TEST(HostCommunicatorTest, RefusesBadTransfers) {
  HostCommunicatorGroup group = MakeGroup(4);
  std::unique_ptr<Communicator> communicator = group.ForRank(1);
  std::vector<uint8_t> buffer(8);
  const PeerTransfer bad_peer[] = {Transfer(0, buffer), Transfer(0, buffer), Transfer(7, buffer)};
  EXPECT_EQ(
      communicator->SendRecvGroup(bad_peer, {}),
      absl::InvalidArgumentError("SendRecvGroup on rank 1: send 2 has peer 7, outside [0, 4)"));
  const PeerTransfer negative_peer[] = {Transfer(-1, buffer)};
  EXPECT_EQ(
      communicator->SendRecvGroup({}, negative_peer),
      absl::InvalidArgumentError("SendRecvGroup on rank 1: receive 0 has peer -1, outside [0, 4)"));
  const PeerTransfer null_data[] = {{.peer = 2, .data = nullptr, .bytes = 8}};
  EXPECT_EQ(
      communicator->SendRecvGroup({}, null_data),
      absl::InvalidArgumentError("SendRecvGroup on rank 1: receive 0 has null data for 8 bytes"));
  // Nothing was posted: the group still works.
  const PeerTransfer self[] = {Transfer(1, buffer)};
  EXPECT_TRUE(communicator->SendRecvGroup(self, self).ok());
}

TEST(HostCommunicatorTest, SizeMismatchFailsBothSides) {
  HostCommunicatorGroup group = MakeGroup(2);
  std::vector<std::unique_ptr<Communicator>> communicators = group.ForAllRanks();
  std::vector<absl::Status> statuses(2);
  RunRanks(2, [&](int32_t rank) {
    // Transfer #0 from 0 to 1 matches (8 bytes); #1 does not (16 sent, 12 expected).
    std::vector<uint8_t> first(8), second(16), first_in(8), second_in(12);
    if (rank == 0) {
      const PeerTransfer sends[] = {Transfer(1, first), Transfer(1, second)};
      statuses[0] = communicators[0]->SendRecvGroup(sends, {});
    } else {
      const PeerTransfer receives[] = {Transfer(0, first_in), Transfer(0, second_in)};
      statuses[1] = communicators[1]->SendRecvGroup({}, receives);
    }
  });
  const absl::Status expected = absl::InternalError(
      "SendRecvGroup size mismatch on transfer #1 from rank 0 to rank 1: rank 0 sends 16 bytes, "
      "rank 1 receives 12 bytes");
  EXPECT_EQ(statuses[0], expected);
  EXPECT_EQ(statuses[1], expected);
}

TEST(HostCommunicatorTest, AllGatherSizeMismatchFailsEveryRank) {
  constexpr int32_t kSize = 2;
  HostCommunicatorGroup group = MakeGroup(kSize);
  std::vector<std::unique_ptr<Communicator>> communicators = group.ForAllRanks();
  std::vector<absl::Status> statuses(kSize), later(kSize);
  RunRanks(kSize, [&](int32_t rank) {
    ASSERT_TRUE(communicators[rank]->AllReduceMin(rank).ok());  // round #0
    const std::vector<uint8_t> mine(rank == 0 ? 4 : 8);
    statuses[rank] = communicators[rank]->AllGather(mine).status();  // round #1
    later[rank] = communicators[rank]->AllReduceMin(rank).status();
  });
  // Which rank joined first decides the wording; both ranks get the same status.
  EXPECT_THAT(statuses[0],
              AnyOf(Eq(absl::InternalError("AllGather round #1 size mismatch: rank 1 contributes "
                                           "8 bytes, rank 0 contributes 4 bytes")),
                    Eq(absl::InternalError("AllGather round #1 size mismatch: rank 0 contributes "
                                           "4 bytes, rank 1 contributes 8 bytes"))));
  EXPECT_EQ(statuses[1], statuses[0]);
  // The collective sequence is broken for good.
  EXPECT_EQ(later[0], statuses[0]);
  EXPECT_EQ(later[1], statuses[0]);
}

TEST(HostCommunicatorTest, CollectiveKindMismatchFailsEveryRank) {
  constexpr int32_t kSize = 2;
  HostCommunicatorGroup group = MakeGroup(kSize);
  std::vector<std::unique_ptr<Communicator>> communicators = group.ForAllRanks();
  std::vector<absl::Status> statuses(kSize);
  RunRanks(kSize, [&](int32_t rank) {
    statuses[rank] = rank == 0 ? communicators[0]->AllReduceMin(1).status()
                               : communicators[1]->AllGather({}).status();
  });
  EXPECT_THAT(
      statuses[0],
      AnyOf(Eq(absl::InternalError("round #0 mismatch: rank 1 calls AllGather, rank 0 calls "
                                   "AllReduceMin")),
            Eq(absl::InternalError("round #0 mismatch: rank 0 calls AllReduceMin, rank 1 calls "
                                   "AllGather"))));
  EXPECT_EQ(statuses[1], statuses[0]);
}

// Rank 0 posts a send to rank 1 and a receive from rank 2, which never sends. Rank 1 takes the
// send, so once rank 1 returned, rank 0 is inside its call waiting for rank 2.
TEST(HostCommunicatorTest, AbortUnblocksWaitingRanks) {
  constexpr int32_t kSize = 4;
  HostCommunicatorGroup group = MakeGroup(kSize);
  std::vector<std::unique_ptr<Communicator>> communicators = group.ForAllRanks();
  absl::Notification rank1_received;
  std::vector<absl::Status> statuses(kSize);
  const absl::Status aborted = absl::AbortedError("placement agent stopped");
  std::thread rank0([&] {
    std::vector<uint8_t> out(16), in(16);
    const PeerTransfer sends[] = {Transfer(1, out)};
    const PeerTransfer receives[] = {Transfer(2, in)};
    statuses[0] = communicators[0]->SendRecvGroup(sends, receives);
  });
  std::thread rank1([&] {
    std::vector<uint8_t> in(16);
    const PeerTransfer receives[] = {Transfer(0, in)};
    EXPECT_TRUE(communicators[1]->SendRecvGroup({}, receives).ok());
    rank1_received.Notify();
    // Waits in a collective that ranks 0 and 2 never join.
    statuses[1] = communicators[1]->AllReduceMin(1).status();
  });
  std::thread rank3([&] { statuses[3] = communicators[3]->AllReduceMin(3).status(); });
  rank1_received.WaitForNotification();
  const absl::Time start = absl::Now();
  group.Abort(aborted);
  rank0.join();
  rank1.join();
  rank3.join();
  EXPECT_LT(absl::Now() - start, kHangGuard / 2);
  EXPECT_EQ(statuses[0], aborted);
  EXPECT_EQ(statuses[1], aborted);
  EXPECT_EQ(statuses[3], aborted);
  // Later calls on every rank, even ones that need nobody, return it too; a second Abort changes
  // nothing.
  group.Abort(absl::AbortedError("again"));
  EXPECT_EQ(communicators[2]->AllReduceMin(0).status(), aborted);
  EXPECT_EQ(communicators[2]->SendRecvGroup({}, {}), aborted);
  EXPECT_EQ(communicators[0]->AllGather({}).status(), aborted);
}

TEST(HostCommunicatorTest, AbortWithOkStatusStillAborts) {
  HostCommunicatorGroup group = MakeGroup(2);
  group.Abort(absl::OkStatus());
  EXPECT_EQ(group.ForRank(0)->AllReduceMin(0).status(),
            absl::AbortedError("host communicator group aborted"));
}

TEST(HostCommunicatorTest, FailedRankMakesCallsThatNeedItUnavailable) {
  constexpr int32_t kSize = 3;
  HostCommunicatorGroup group = MakeGroup(kSize);
  std::vector<std::unique_ptr<Communicator>> communicators = group.ForAllRanks();
  absl::Status rank0_status;
  std::thread rank0([&] {
    std::vector<uint8_t> out(4), in(4);
    const PeerTransfer sends[] = {Transfer(1, out)};
    const PeerTransfer receives[] = {Transfer(2, in)};
    rank0_status = communicators[0]->SendRecvGroup(sends, receives);
  });
  {
    std::vector<uint8_t> in(4);
    const PeerTransfer receives[] = {Transfer(0, in)};
    ASSERT_TRUE(communicators[1]->SendRecvGroup({}, receives).ok());
  }
  group.FailRank(2);
  rank0.join();
  EXPECT_EQ(rank0_status, absl::UnavailableError("SendRecvGroup on rank 0: rank 2 has failed"));

  // Collectives need every rank.
  EXPECT_EQ(communicators[1]->AllReduceMin(0).status(),
            absl::UnavailableError("AllReduceMin on rank 1: rank 2 has failed"));
  // The failed rank's own calls fail.
  EXPECT_EQ(communicators[2]->AllGather({}).status(),
            absl::UnavailableError("AllGather on rank 2: rank 2 has failed"));
  // Transfers between live ranks still work.
  RunRanks(2, [&](int32_t rank) {
    std::vector<uint8_t> out = Payload(rank, 1 - rank, 0, 0, 10), in(10);
    const PeerTransfer sends[] = {Transfer(1 - rank, out)};
    const PeerTransfer receives[] = {Transfer(1 - rank, in)};
    ASSERT_TRUE(communicators[rank]->SendRecvGroup(sends, receives).ok());
    EXPECT_EQ(in, Payload(1 - rank, rank, 0, 0, 10));
  });
  group.FailRank(0);
  EXPECT_EQ(communicators[1]->AllReduceMin(0).status(),
            absl::UnavailableError("AllReduceMin on rank 1: ranks 0, 2 have failed"));
}

TEST(HostCommunicatorTest, FailRankWakesRanksWaitingInACollective) {
  constexpr int32_t kSize = 3;
  HostCommunicatorGroup group = MakeGroup(kSize);
  std::vector<std::unique_ptr<Communicator>> communicators = group.ForAllRanks();
  absl::Status status;
  std::thread rank0([&] { status = communicators[0]->AllReduceMin(0).status(); });
  group.FailRank(1);
  rank0.join();
  EXPECT_EQ(status, absl::UnavailableError("AllReduceMin on rank 0: rank 1 has failed"));
}

TEST(HostCommunicatorTest, TimesOutWaitingForAPeer) {
  HostCommunicatorGroup group = MakeGroup(3, {.timeout = absl::Milliseconds(50)});
  std::vector<std::unique_ptr<Communicator>> communicators = group.ForAllRanks();
  std::vector<uint8_t> out(4), in(4);
  const PeerTransfer sends[] = {Transfer(2, out)};
  const PeerTransfer receives[] = {Transfer(1, in)};
  EXPECT_EQ(communicators[0]->SendRecvGroup(sends, receives),
            absl::DeadlineExceededError(
                "SendRecvGroup on rank 0 timed out after 50ms waiting for ranks 1, 2"));
  EXPECT_EQ(communicators[0]->AllReduceMin(3).status(),
            absl::DeadlineExceededError(
                "AllReduceMin on rank 0 timed out after 50ms waiting for ranks 1, 2"));
  // The timed-out calls were withdrawn: the group still works as long as calls line up again.
  RunRanks(3, [&](int32_t rank) {
    absl::StatusOr<int64_t> min = communicators[rank]->AllReduceMin(10 + rank);
    ASSERT_TRUE(min.ok()) << min.status();
    EXPECT_EQ(*min, 10);
  });
  // Rank 0's send to rank 2 was withdrawn, so rank 2 waits for rank 0 in vain.
  const PeerTransfer from_rank0[] = {Transfer(0, in)};
  EXPECT_EQ(communicators[2]->SendRecvGroup({}, from_rank0),
            absl::DeadlineExceededError(
                "SendRecvGroup on rank 2 timed out after 50ms waiting for rank 0"));
}

TEST(HostCommunicatorTest, BeforeOpHookInjectsFaults) {
  constexpr int32_t kSize = 2;
  absl::Mutex mu;
  std::vector<std::vector<std::pair<std::string, int64_t>>> seen(kSize);
  HostCommunicatorGroup* group_for_hook = nullptr;
  const absl::Status injected = absl::InternalError("injected: rank 1 lost its device");
  HostCommunicatorGroup group =
      MakeGroup(kSize, {.timeout = kHangGuard,
                        .before_op = [&](int32_t rank, absl::string_view op, int64_t call_index) {
                          {
                            absl::MutexLock lock(&mu);
                            seen[rank].emplace_back(std::string(op), call_index);
                          }
                          if (rank == 1 && call_index == 2) {
                            // As the agent would: fail the whole group so that rank 0 does not
                            // wait.
                            group_for_hook->Abort(injected);
                            return injected;
                          }
                          return absl::OkStatus();
                        }});
  group_for_hook = &group;
  std::vector<std::unique_ptr<Communicator>> communicators = group.ForAllRanks();
  std::vector<absl::Status> statuses(kSize);
  RunRanks(kSize, [&](int32_t rank) {
    Communicator& communicator = *communicators[rank];
    ASSERT_TRUE(communicator.AllReduceMin(rank).ok());
    std::vector<uint8_t> out(8), in(8);
    const PeerTransfer sends[] = {Transfer(1 - rank, out)};
    const PeerTransfer receives[] = {Transfer(1 - rank, in)};
    ASSERT_TRUE(communicator.SendRecvGroup(sends, receives).ok());
    statuses[rank] = communicator.AllGather(out).status();
  });
  EXPECT_EQ(statuses[0], injected);
  EXPECT_EQ(statuses[1], injected);
  absl::MutexLock lock(&mu);
  for (int32_t rank = 0; rank < kSize; ++rank) {
    EXPECT_THAT(seen[rank], ElementsAre(Pair("AllReduceMin", 0), Pair("SendRecvGroup", 1),
                                        Pair("AllGather", 2)))
        << "rank " << rank;
  }
}

}  // namespace
}  // namespace eplb::transfer
