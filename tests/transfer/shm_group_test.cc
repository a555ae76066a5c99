// ShmGroup with real processes: each rank is a child of the test process (fork), the segment is a
// real POSIX shared-memory object. Children report through their exit status.
#include "transfer/shm_group.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace eplb::transfer {
namespace {

using ::testing::HasSubstr;

// A wait that should end never takes this long: a bug fails the test instead of hanging it.
constexpr absl::Duration kHangGuard = absl::Seconds(60);

std::string MakeSegment(ShmGroupLayout layout) {
  absl::StatusOr<std::string> name = ShmGroup::Create(layout);
  EXPECT_TRUE(name.ok()) << name.status();
  return name.ok() ? *name : "";
}

// Child-side check: prints and exits 1 when `ok` is false.
#define CHILD_EXPECT(cond, ...)          \
  do {                                   \
    if (!(cond)) {                       \
      std::fprintf(stderr, __VA_ARGS__); \
      std::fprintf(stderr, "\n");        \
      std::fflush(stderr);               \
      _exit(1);                          \
    }                                    \
  } while (false)

// Forks one child per entry of `ranks`, runs body(rank) in it and returns the children's exit
// codes (128 + signal for a killed child), after reaping all of them. `before_reap` runs in the
// parent after forking and before waiting.
std::vector<int> RunChildren(
    const std::vector<int32_t>& ranks, const std::function<int(int32_t)>& body,
    const std::function<void(const std::vector<pid_t>&)>& before_reap = nullptr) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::vector<pid_t> pids;
  for (int32_t rank : ranks) {
    const pid_t pid = fork();
    if (pid == 0) _exit(body(rank));
    pids.push_back(pid);
  }
  if (before_reap) before_reap(pids);
  std::vector<int> codes;
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }
  return codes;
}

std::vector<uint8_t> Contribution(int32_t rank, int64_t round, size_t bytes) {
  std::vector<uint8_t> out(bytes);
  for (size_t i = 0; i < bytes; ++i) out[i] = static_cast<uint8_t>(rank * 31 + round * 7 + i);
  return out;
}

TEST(ShmGroupTest, AllGatherAcrossProcessesOverManyRounds) {
  const std::string name = MakeSegment({.size = 4});
  const std::vector<int> codes = RunChildren({0, 1, 2, 3}, [&](int32_t rank) {
    const uint8_t blob[3] = {static_cast<uint8_t>(rank), 9, 9};
    auto group = ShmGroup::Join(name, rank, 4, blob, kHangGuard);
    CHILD_EXPECT(group.ok(), "join: %s", group.status().ToString().c_str());
    for (int32_t r = 0; r < 4; ++r) {
      CHILD_EXPECT((*group)->blob(r).size() == 3 && (*group)->blob(r)[0] == r, "blob of %d", r);
      CHILD_EXPECT((*group)->pid(r) > 0, "pid of %d", r);
    }
    for (int64_t round = 0; round < 200; ++round) {
      const size_t bytes = 8 + round % 17;
      auto all = (*group)->AllGather(Contribution(rank, round, bytes));
      CHILD_EXPECT(all.ok(), "round %ld: %s", static_cast<long>(round),
                   all.status().ToString().c_str());
      for (int32_t r = 0; r < 4; ++r) {
        CHILD_EXPECT((*all)[r] == Contribution(r, round, bytes), "round %ld rank %d differs",
                     static_cast<long>(round), r);
      }
    }
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0, 0, 0}));
  // Every rank joined: the name is gone from /dev/shm.
  EXPECT_EQ(ShmGroup::Remove(name).code(), absl::StatusCode::kNotFound);
}

TEST(ShmGroupTest, AKilledRankFailsTheOthersNamingIt) {
  const std::string name = MakeSegment({.size = 3});
  const std::vector<int> codes = RunChildren({0, 1, 2}, [&](int32_t rank) {
    auto group = ShmGroup::Join(name, rank, 3, {}, kHangGuard);
    CHILD_EXPECT(group.ok(), "join: %s", group.status().ToString().c_str());
    const uint8_t mine[8] = {};
    CHILD_EXPECT((*group)->AllGather(mine).ok(), "first round");
    if (rank == 2) raise(SIGKILL);  // stays a zombie: the test process reaps it last
    auto all = (*group)->AllGather(mine);
    CHILD_EXPECT(all.status().code() == absl::StatusCode::kUnavailable, "rank %d: %s", rank,
                 all.status().ToString().c_str());
    CHILD_EXPECT(absl::StrContains(all.status().message(), "rank 2 (pid ") &&
                     absl::StrContains(all.status().message(), ") exited"),
                 "rank %d: %s", rank, all.status().ToString().c_str());
    // The group stays failed.
    CHILD_EXPECT((*group)->AllGather(mine).status() == all.status(), "not failed for good");
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0, 128 + SIGKILL}));
}

TEST(ShmGroupTest, ATimeoutNamesTheRanksWaitedForAndFailsTheGroup) {
  const std::string name = MakeSegment({.size = 2});
  int to_rank1[2], to_rank0[2];
  ASSERT_EQ(pipe(to_rank1), 0);
  ASSERT_EQ(pipe(to_rank0), 0);
  const std::vector<int> codes = RunChildren({0, 1}, [&](int32_t rank) {
    auto group = ShmGroup::Join(name, rank, 2, {}, kHangGuard);
    CHILD_EXPECT(group.ok(), "join: %s", group.status().ToString().c_str());
    if (rank == 0) (*group)->set_timeout(absl::Milliseconds(200));
    const uint8_t mine[8] = {};
    char c;
    // Rank 1 joins the round only after rank 0 timed out.
    if (rank == 1) CHILD_EXPECT(read(to_rank1[0], &c, 1) == 1, "release");
    auto all = (*group)->AllGather(mine);
    CHILD_EXPECT(
        all.status() == absl::DeadlineExceededError(
                            "AllGather on rank 0 timed out after 200ms waiting for rank 1"),
        "rank %d: %s", rank, all.status().ToString().c_str());
    if (rank == 0) {
      CHILD_EXPECT(write(to_rank1[1], "x", 1) == 1, "release");
      // Stay in the group until rank 1 saw the failure (it would see a departure otherwise).
      CHILD_EXPECT(read(to_rank0[0], &c, 1) == 1, "done");
    } else {
      CHILD_EXPECT(write(to_rank0[1], "y", 1) == 1, "done");
    }
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
  for (int fd : {to_rank1[0], to_rank1[1], to_rank0[0], to_rank0[1]}) close(fd);
}

TEST(ShmGroupTest, ARankThatLeavesIsNamed) {
  const std::string name = MakeSegment({.size = 2});
  const std::vector<int> codes = RunChildren({0, 1}, [&](int32_t rank) {
    auto group = ShmGroup::Join(name, rank, 2, {}, kHangGuard);
    CHILD_EXPECT(group.ok(), "join: %s", group.status().ToString().c_str());
    if (rank == 1) return 0;  // leaves: the group object is destroyed
    const uint8_t mine[8] = {};
    auto all = (*group)->AllGather(mine);
    CHILD_EXPECT(
        all.status() == absl::UnavailableError("AllGather on rank 0: rank 1 left the group"), "%s",
        all.status().ToString().c_str());
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
}

TEST(ShmGroupTest, MismatchedAllGatherSizesFailEveryRank) {
  const std::string name = MakeSegment({.size = 2});
  const std::vector<int> codes = RunChildren({0, 1}, [&](int32_t rank) {
    auto group = ShmGroup::Join(name, rank, 2, {}, kHangGuard);
    CHILD_EXPECT(group.ok(), "join: %s", group.status().ToString().c_str());
    const std::vector<uint8_t> mine(rank == 0 ? 8 : 4);
    auto all = (*group)->AllGather(mine);
    CHILD_EXPECT(all.status() == absl::InternalError("AllGather round #0 size mismatch: rank 1 "
                                                     "contributes 4 bytes, rank 0 contributes 8 "
                                                     "bytes"),
                 "rank %d: %s", rank, all.status().ToString().c_str());
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
}

TEST(ShmGroupTest, JoinRefusesWhatIsNotItsGroup) {
  EXPECT_EQ(ShmGroup::Join("/other", 0, 1, {}, kHangGuard).status(),
            absl::InvalidArgumentError("name must start with /eplb- and hold no other '/'"));
  EXPECT_EQ(ShmGroup::Join("/eplb-none-0", 0, 1, {}, kHangGuard).status(),
            absl::NotFoundError("segment /eplb-none-0 does not exist"));
  const std::string name = MakeSegment({.size = 2});
  EXPECT_EQ(ShmGroup::Join(name, 2, 2, {}, kHangGuard).status(),
            absl::InvalidArgumentError("rank = 2 is out of range [0, 1]"));
  EXPECT_EQ(ShmGroup::Join(name, 0, 3, {}, kHangGuard).status(),
            absl::FailedPreconditionError("segment " + name + " is a group of 2 ranks, not 3"));
  const std::vector<uint8_t> big(ShmGroup::kBlobBytes + 1);
  EXPECT_EQ(ShmGroup::Join(name, 0, 2, big, kHangGuard).status(),
            absl::InvalidArgumentError("blob has 129 bytes, more than 128"));

  // A rank held by a live process is refused, naming it, and the join changes nothing. (Rank 0's
  // pid is the first field after the 4 KiB header; this process's own pid stands in for a rank
  // that joined.)
  const int fd = shm_open(name.c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  const int64_t holder = getpid();
  ASSERT_EQ(pwrite(fd, &holder, sizeof(holder), 4096), 8);
  EXPECT_EQ(ShmGroup::Join(name, 0, 2, {}, kHangGuard).status(),
            absl::FailedPreconditionError(
                absl::StrCat("rank 0 of segment ", name, " is already joined by pid ", holder)));
  int64_t after = 0;
  ASSERT_EQ(pread(fd, &after, sizeof(after), 4096), 8);
  EXPECT_EQ(after, holder);
  close(fd);
  EXPECT_TRUE(ShmGroup::Remove(name).ok());  // still there: no join completed
}

TEST(ShmGroupTest, AMalformedSegmentIsRefusedAndLeftAlone) {
  const std::string name = MakeSegment({.size = 1});
  const int fd = shm_open(name.c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  struct stat st {};
  ASSERT_EQ(fstat(fd, &st), 0);
  // Bad magic.
  uint64_t magic = 0;
  ASSERT_EQ(pread(fd, &magic, sizeof(magic), 0), 8);
  const uint64_t bad = magic ^ 1;
  ASSERT_EQ(pwrite(fd, &bad, sizeof(bad), 0), 8);
  EXPECT_EQ(ShmGroup::Join(name, 0, 1, {}, kHangGuard).status(),
            absl::FailedPreconditionError("segment " + name + " is not an eplb group (bad magic)"));
  ASSERT_EQ(pwrite(fd, &magic, sizeof(magic), 0), 8);
  // Shorter than its layout.
  ASSERT_EQ(ftruncate(fd, st.st_size - 4096), 0);
  EXPECT_EQ(ShmGroup::Join(name, 0, 1, {}, kHangGuard).status(),
            absl::FailedPreconditionError(absl::StrCat("segment ", name, " is ", st.st_size - 4096,
                                                       " bytes, its layout needs ", st.st_size)));
  // A layout field out of range.
  ASSERT_EQ(ftruncate(fd, st.st_size), 0);
  ShmGroupLayout layout;
  ASSERT_EQ(pread(fd, &layout, sizeof(layout), 8), static_cast<ssize_t>(sizeof(layout)));
  layout.ring_entries = 0;
  ASSERT_EQ(pwrite(fd, &layout, sizeof(layout), 8), static_cast<ssize_t>(sizeof(layout)));
  EXPECT_EQ(
      ShmGroup::Join(name, 0, 1, {}, kHangGuard).status(),
      absl::FailedPreconditionError(
          "segment " + name + " has a bad layout: ring_entries = 0 is out of range [1, 65536]"));
  close(fd);
  // None of the refused joins took the segment: it is still there to remove.
  EXPECT_TRUE(ShmGroup::Remove(name).ok());
}

TEST(ShmGroupTest, CreateRefusesLayoutsOutOfRange) {
  EXPECT_EQ(ShmGroup::Create({.size = 65}).status(),
            absl::InvalidArgumentError("size = 65 is out of range [1, 64]"));
  EXPECT_EQ(ShmGroup::Create({.size = 2, .ring_entries = 0}).status(),
            absl::InvalidArgumentError("ring_entries = 0 is out of range [1, 65536]"));
  EXPECT_EQ(ShmGroup::Create({.size = 2, .gather_bytes = 4}).status(),
            absl::InvalidArgumentError("gather_bytes = 4 is out of range [8, 65536]"));
  EXPECT_EQ(
      ShmGroup::Create({.size = 2, .relay_pieces = 2, .relay_piece_bytes = 100}).status(),
      absl::InvalidArgumentError("relay_piece_bytes = 100 is out of range [4096, 268435456]"));
}

TEST(ShmGroupTest, RingsHoldAtMostTheirEntriesInOrder) {
  const std::string name = MakeSegment({.size = 1, .ring_entries = 8});
  auto group = ShmGroup::Join(name, 0, 1, {}, kHangGuard);
  ASSERT_TRUE(group.ok()) << group.status();
  ShmGroup& g = **group;
  uint64_t next_post = 0, next_take = 0;
  for (int round = 0; round < 10; ++round) {
    while (g.TryPost(0, {.transfer_bytes = next_post, .piece_bytes = next_post * 2})) ++next_post;
    EXPECT_EQ(g.posted_to(0) - next_take, 8u);  // full
    EXPECT_EQ(g.posted_from(0), next_post);
    for (int i = 0; i < 3; ++i, ++next_take) {
      const ShmDescriptor d = g.Peek(0, next_take);
      EXPECT_EQ(d.transfer_bytes, next_take);
      EXPECT_EQ(d.piece_bytes, next_take * 2);
    }
    g.Consume(0, next_take);
    g.Complete(0, next_take);
    EXPECT_EQ(g.completed_by(0), next_take);
  }
  EXPECT_EQ(next_post, 8u + 9 * 3);
}

TEST(ShmGroupTest, RegionsAreBoundedAndRangeChecked) {
  const std::string name = MakeSegment({.size = 1, .max_regions = 2});
  auto group = ShmGroup::Join(name, 0, 1, {}, kHangGuard);
  ASSERT_TRUE(group.ok()) << group.status();
  ShmRegion region;
  region.base = 4096;
  region.bytes = 100;
  EXPECT_EQ(*(*group)->AddRegion(region), 0u);
  region.base = 8192;
  EXPECT_EQ(*(*group)->AddRegion(region), 1u);
  EXPECT_EQ((*group)->AddRegion(region).status(),
            absl::ResourceExhaustedError("rank 0 has registered max_regions = 2 regions"));
  EXPECT_EQ((*group)->GetRegion(0, 1)->base, 8192u);
  EXPECT_EQ((*group)->GetRegion(0, 2).status(),
            absl::OutOfRangeError("region 2 of rank 0 does not exist (it has 2)"));
}

}  // namespace
}  // namespace eplb::transfer
