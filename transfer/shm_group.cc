#include "transfer/shm_group.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace eplb::transfer {
namespace {

constexpr uint64_t kMagic = 0x314d48534250454cULL;  // "LEPBSHM1"
constexpr size_t kLine = 64;
constexpr size_t kHeaderBytes = 4096;
constexpr size_t kMessageBytes = 1024;
constexpr char kPrefix[] = "/eplb-";

// Failure word states.
constexpr int32_t kHealthy = 0, kRecording = 1, kFailed = 2;
// Rank states.
constexpr int32_t kEmpty = 0, kJoined = 1, kLeft = 2;

struct Header {
  uint64_t magic;
  ShmGroupLayout layout;
  uint64_t total_bytes;
  int32_t failed;  // atomic: kHealthy / kRecording / kFailed
  int32_t failed_code;
  char failed_message[kMessageBytes];
};
static_assert(sizeof(Header) <= kHeaderBytes);

struct RankHead {
  int64_t pid;           // atomic; 0 until joined
  int32_t state;         // atomic
  int32_t region_count;  // atomic
  uint32_t blob_bytes;
  uint32_t pad;
  int64_t gather_round;  // atomic
  uint32_t gather_size[2];
  uint8_t blob[ShmGroup::kBlobBytes];
};

struct RingHead {
  alignas(kLine) uint64_t posted;     // atomic, written by the source
  alignas(kLine) uint64_t consumed;   // atomic, written by the destination
  alignas(kLine) uint64_t completed;  // atomic, written by the destination
};

template <typename T>
std::atomic_ref<T> Atomic(T& value) {
  return std::atomic_ref<T>(value);
}

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

// Offsets of the parts of a segment; 0 total when the layout does not fit in 2^46 bytes.
struct Offsets {
  size_t rank_stride = 0, ranks = 0, ring_stride = 0, rings = 0, regions = 0, relay = 0,
         relay_pair = 0, total = 0;
};

Offsets ComputeOffsets(const ShmGroupLayout& l) {
  Offsets o;
  const size_t n = static_cast<size_t>(l.size);
  o.rank_stride = RoundUp(sizeof(RankHead) + 2 * static_cast<size_t>(l.gather_bytes), kLine);
  o.ranks = kHeaderBytes;
  o.ring_stride = RoundUp(
      sizeof(RingHead) + static_cast<size_t>(l.ring_entries) * sizeof(ShmDescriptor), kLine);
  o.rings = o.ranks + n * o.rank_stride;
  o.regions = RoundUp(o.rings + n * n * o.ring_stride, kLine);
  o.relay = RoundUp(o.regions + n * static_cast<size_t>(l.max_regions) * sizeof(ShmRegion), 4096);
  o.relay_pair = static_cast<size_t>(l.relay_pieces) * l.relay_piece_bytes;  // ≤ 2^34
  const size_t relay_bytes = n * n * o.relay_pair;                           // ≤ 2^46
  o.total = RoundUp(o.relay + relay_bytes, 4096);
  return o;
}

absl::Status CheckLayout(const ShmGroupLayout& l) {
  const auto range = [](const char* field, int64_t value, int64_t lo, int64_t hi) {
    return value < lo || value > hi
               ? absl::InvalidArgumentError(
                     absl::StrCat(field, " = ", value, " is out of range [", lo, ", ", hi, "]"))
               : absl::OkStatus();
  };
  for (absl::Status s : {range("size", l.size, 1, ShmGroupLayout::kMaxSize),
                         range("ring_entries", l.ring_entries, 1, 65536),
                         range("max_regions", l.max_regions, 1, 1 << 20),
                         range("gather_bytes", l.gather_bytes, 8, 65536),
                         range("relay_pieces", l.relay_pieces, 0, 64)}) {
    if (!s.ok()) return s;
  }
  if (l.relay_pieces > 0 && (l.relay_piece_bytes < 4096 || l.relay_piece_bytes > (256u << 20))) {
    return absl::InvalidArgumentError(absl::StrCat("relay_piece_bytes = ", l.relay_piece_bytes,
                                                   " is out of range [4096, ", 256u << 20, "]"));
  }
  if (l.relay_pieces == 0 && l.relay_piece_bytes != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("relay_piece_bytes = ", l.relay_piece_bytes, " needs relay_pieces > 0"));
  }
  return absl::OkStatus();
}

absl::Status Errno(absl::string_view what, int error) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(error)));
}

// Whether process `pid` has exited (gone, or a zombie not yet reaped).
bool ProcessExited(pid_t pid) {
  if (kill(pid, 0) != 0 && errno == ESRCH) return true;
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return errno == ENOENT;
  char buffer[512];
  const size_t n = std::fread(buffer, 1, sizeof(buffer) - 1, f);
  std::fclose(f);
  buffer[n] = '\0';
  // "pid (comm) S …": the state follows the last ')'.
  const char* close = std::strrchr(buffer, ')');
  if (close == nullptr || close[1] != ' ') return false;
  return close[2] == 'Z' || close[2] == 'X';
}

std::string RankList(const std::vector<int32_t>& ranks) {
  return absl::StrCat(ranks.size() == 1 ? "rank " : "ranks ", absl::StrJoin(ranks, ", "));
}

}  // namespace

namespace {
Header& HeaderOf(uint8_t* base) { return *reinterpret_cast<Header*>(base); }
RankHead& RankOf(uint8_t* base, const ShmGroupLayout& l, int32_t r) {
  return *reinterpret_cast<RankHead*>(base + ComputeOffsets(l).ranks +
                                      static_cast<size_t>(r) * ComputeOffsets(l).rank_stride);
}
}  // namespace

absl::StatusOr<std::string> ShmGroup::Create(const ShmGroupLayout& layout) {
  if (absl::Status s = CheckLayout(layout); !s.ok()) return s;
  const Offsets o = ComputeOffsets(layout);
  std::random_device device;
  const uint64_t nonce = (static_cast<uint64_t>(device()) << 32) ^ device();
  char name[64];
  std::snprintf(name, sizeof(name), "%s%d-%016llx", kPrefix, static_cast<int>(getpid()),
                static_cast<unsigned long long>(nonce));
  const int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return Errno(absl::StrCat("shm_open(", name, ")"), errno);
  absl::Status status;
  if (ftruncate(fd, static_cast<off_t>(o.total)) != 0) {
    status = Errno(absl::StrCat("ftruncate(", name, ", ", o.total, ")"), errno);
  }
  void* base = status.ok() ? mmap(nullptr, kHeaderBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                           : MAP_FAILED;
  if (status.ok() && base == MAP_FAILED) status = Errno(absl::StrCat("mmap(", name, ")"), errno);
  close(fd);
  if (!status.ok()) {
    shm_unlink(name);
    return status;
  }
  Header& h = HeaderOf(static_cast<uint8_t*>(base));
  h.layout = layout;
  h.total_bytes = o.total;
  Atomic(h.magic).store(kMagic, std::memory_order_release);  // last: the header is complete
  munmap(base, kHeaderBytes);
  return std::string(name);
}

absl::Status ShmGroup::Remove(const std::string& name) {
  if (name.rfind(kPrefix, 0) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("name must start with ", kPrefix));
  }
  if (shm_unlink(name.c_str()) != 0) {
    return errno == ENOENT ? absl::NotFoundError(absl::StrCat("segment ", name, " does not exist"))
                           : Errno(absl::StrCat("shm_unlink(", name, ")"), errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ShmGroup>> ShmGroup::Join(const std::string& name, int32_t rank,
                                                         int32_t size,
                                                         std::span<const uint8_t> blob,
                                                         absl::Duration timeout) {
  if (name.rfind(kPrefix, 0) != 0 || name.size() > 200 || name.find('/', 1) != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("name must start with ", kPrefix, " and hold no other '/'"));
  }
  if (size < 1 || size > ShmGroupLayout::kMaxSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("size = ", size, " is out of range [1, ", ShmGroupLayout::kMaxSize, "]"));
  }
  if (rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank = ", rank, " is out of range [0, ", size - 1, "]"));
  }
  if (blob.size() > kBlobBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("blob has ", blob.size(), " bytes, more than ", kBlobBytes));
  }
  if (timeout <= absl::ZeroDuration())
    return absl::InvalidArgumentError("timeout must be positive");
  const int fd = shm_open(name.c_str(), O_RDWR, 0);
  if (fd < 0) {
    return errno == ENOENT ? absl::NotFoundError(absl::StrCat("segment ", name, " does not exist"))
                           : Errno(absl::StrCat("shm_open(", name, ")"), errno);
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int error = errno;
    close(fd);
    return Errno("fstat", error);
  }
  const auto bad = [&](std::string message) {
    close(fd);
    return absl::FailedPreconditionError(absl::StrCat("segment ", name, " ", message));
  };
  if (static_cast<size_t>(st.st_size) < kHeaderBytes) {
    return bad(absl::StrCat("is ", st.st_size, " bytes, less than its header"));
  }
  void* mapped =
      mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (mapped == MAP_FAILED) {
    const int error = errno;
    close(fd);
    return Errno(absl::StrCat("mmap(", name, ")"), error);
  }
  auto* base = static_cast<uint8_t*>(mapped);
  const auto unmap_bad = [&](std::string message) {
    munmap(mapped, static_cast<size_t>(st.st_size));
    return bad(std::move(message));
  };
  Header& h = HeaderOf(base);
  if (Atomic(h.magic).load(std::memory_order_acquire) != kMagic) {
    return unmap_bad("is not an eplb group (bad magic)");
  }
  const ShmGroupLayout layout = h.layout;
  if (absl::Status s = CheckLayout(layout); !s.ok()) {
    return unmap_bad(absl::StrCat("has a bad layout: ", s.message()));
  }
  const Offsets o = ComputeOffsets(layout);
  if (o.total != static_cast<size_t>(st.st_size) || h.total_bytes != o.total) {
    return unmap_bad(absl::StrCat("is ", st.st_size, " bytes, its layout needs ", o.total));
  }
  if (layout.size != size) {
    return unmap_bad(absl::StrCat("is a group of ", layout.size, " ranks, not ", size));
  }
  close(fd);
  RankHead& mine = RankOf(base, layout, rank);
  int64_t expected = 0;
  if (!Atomic(mine.pid).compare_exchange_strong(expected, getpid())) {
    munmap(mapped, o.total);
    return absl::FailedPreconditionError(
        absl::StrCat("rank ", rank, " of segment ", name, " is already joined by pid ", expected));
  }
  mine.blob_bytes = static_cast<uint32_t>(blob.size());
  if (!blob.empty()) std::memcpy(mine.blob, blob.data(), blob.size());
  Atomic(mine.state).store(kJoined, std::memory_order_release);

  auto group = std::unique_ptr<ShmGroup>(new ShmGroup(name, rank, layout, timeout, base, o.total));
  std::vector<int32_t> all;
  for (int32_t r = 0; r < size; ++r) {
    if (r != rank) all.push_back(r);
  }
  const auto missing = [&] {
    std::vector<int32_t> out;
    for (int32_t r : all) {
      if (Atomic(RankOf(base, layout, r).state).load(std::memory_order_acquire) == kEmpty) {
        out.push_back(r);
      }
    }
    return out;
  };
  const std::string op = absl::StrCat("join of ", name);
  absl::Status status = group->WaitUntil(
      op.c_str(), [&] { return missing().empty(); }, missing);
  shm_unlink(name.c_str());  // every rank joined or the group failed: the name is not needed
  if (!status.ok()) return status;
  return group;
}

ShmGroup::ShmGroup(std::string name, int32_t rank, ShmGroupLayout layout, absl::Duration timeout,
                   uint8_t* base, size_t bytes)
    : name_(std::move(name)),
      rank_(rank),
      layout_(layout),
      timeout_(timeout),
      base_(base),
      bytes_(bytes) {}

ShmGroup::~ShmGroup() {
  Atomic(RankOf(base_, layout_, rank_).state).store(kLeft, std::memory_order_release);
  munmap(base_, bytes_);
}

std::span<const uint8_t> ShmGroup::blob(int32_t rank) const {
  const RankHead& r = RankOf(base_, layout_, rank);
  return {r.blob, std::min<size_t>(r.blob_bytes, kBlobBytes)};
}

pid_t ShmGroup::pid(int32_t rank) const {
  return static_cast<pid_t>(Atomic(RankOf(base_, layout_, rank).pid).load());
}

absl::Status ShmGroup::failure() const {
  Header& h = HeaderOf(base_);
  if (Atomic(h.failed).load(std::memory_order_acquire) != kFailed) return absl::OkStatus();
  const size_t n = strnlen(h.failed_message, kMessageBytes);
  const int code = h.failed_code;
  return absl::Status(
      code > 0 && code <= 16 ? static_cast<absl::StatusCode>(code) : absl::StatusCode::kInternal,
      std::string(h.failed_message, n));
}

absl::Status ShmGroup::Fail(const absl::Status& status) {
  Header& h = HeaderOf(base_);
  int32_t expected = kHealthy;
  if (Atomic(h.failed).compare_exchange_strong(expected, kRecording)) {
    const std::string message(status.message().substr(0, kMessageBytes - 1));
    std::memset(h.failed_message, 0, kMessageBytes);
    std::memcpy(h.failed_message, message.data(), message.size());
    h.failed_code = static_cast<int32_t>(
        status.code() == absl::StatusCode::kOk ? absl::StatusCode::kInternal : status.code());
    Atomic(h.failed).store(kFailed, std::memory_order_release);
    return failure();
  }
  // Another rank is recording (a few stores): wait for it.
  while (Atomic(h.failed).load(std::memory_order_acquire) != kFailed) std::this_thread::yield();
  return failure();
}

absl::Status ShmGroup::Gone(const char* op, int32_t peer) const {
  const RankHead& r = RankOf(base_, layout_, peer);
  const auto state = [&] {
    return Atomic(const_cast<int32_t&>(r.state)).load(std::memory_order_acquire);
  };
  const auto left = [&] {
    return absl::UnavailableError(
        absl::StrCat(op, " on rank ", rank_, ": rank ", peer, " left the group"));
  };
  const int32_t seen = state();
  if (seen == kLeft) return left();
  const pid_t p = static_cast<pid_t>(Atomic(const_cast<int64_t&>(r.pid)).load());
  if (seen == kJoined && p > 0 && ProcessExited(p)) {
    // A rank that leaves marks itself before it exits: it may have done both since `seen`.
    if (state() == kLeft) return left();
    return absl::UnavailableError(
        absl::StrCat(op, " on rank ", rank_, ": rank ", peer, " (pid ", p, ") exited"));
  }
  return absl::OkStatus();
}

absl::Status ShmGroup::WaitUntil(const char* op, const std::function<bool()>& done,
                                 const std::function<std::vector<int32_t>()>& waiting_for) {
  const absl::Time deadline = absl::Now() + timeout_;
  for (uint64_t spin = 0;; ++spin) {
    if (done()) return absl::OkStatus();
    if (absl::Status f = failure(); !f.ok()) return f;
    if (const absl::Time now = absl::Now(); now - last_peer_check_ >= absl::Milliseconds(1)) {
      last_peer_check_ = now;
      // Only the ranks still waited for: one that did its part and then left is no failure. It
      // may do both between reading who is waited for and looking at it: done() tells.
      for (const int32_t peer : waiting_for()) {
        if (absl::Status gone = Gone(op, peer); !gone.ok()) {
          if (done()) return absl::OkStatus();
          return Fail(gone);
        }
      }
    }
    if (absl::Now() > deadline) {
      if (done()) return absl::OkStatus();
      return Fail(absl::DeadlineExceededError(
          absl::StrCat(op, " on rank ", rank_, " timed out after ", absl::FormatDuration(timeout_),
                       " waiting for ", RankList(waiting_for()))));
    }
    if (spin > 64) std::this_thread::yield();
  }
}

absl::StatusOr<std::vector<std::vector<uint8_t>>> ShmGroup::AllGather(
    std::span<const uint8_t> bytes) {
  if (bytes.size() > static_cast<size_t>(layout_.gather_bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AllGather on rank ", rank_, ": ", bytes.size(),
                     " bytes, more than gather_bytes = ", layout_.gather_bytes));
  }
  if (absl::Status f = failure(); !f.ok()) return f;
  const int64_t round = ++gather_round_;
  const int b = static_cast<int>(round % 2);
  const Offsets o = ComputeOffsets(layout_);
  const auto data = [&](int32_t r) {
    return base_ + o.ranks + static_cast<size_t>(r) * o.rank_stride + sizeof(RankHead) +
           static_cast<size_t>(b) * layout_.gather_bytes;
  };
  RankHead& mine = RankOf(base_, layout_, rank_);
  mine.gather_size[b] = static_cast<uint32_t>(bytes.size());
  if (!bytes.empty()) std::memcpy(data(rank_), bytes.data(), bytes.size());
  Atomic(mine.gather_round).store(round, std::memory_order_release);
  std::vector<int32_t> others;
  for (int32_t r = 0; r < size(); ++r) {
    if (r != rank_) others.push_back(r);
  }
  const auto behind = [&] {
    std::vector<int32_t> out;
    for (int32_t r : others) {
      if (Atomic(RankOf(base_, layout_, r).gather_round).load(std::memory_order_acquire) < round) {
        out.push_back(r);
      }
    }
    return out;
  };
  if (absl::Status s = WaitUntil(
          "AllGather", [&] { return behind().empty(); }, behind);
      !s.ok()) {
    return s;
  }
  std::vector<std::vector<uint8_t>> out(size());
  const uint32_t first = RankOf(base_, layout_, 0).gather_size[b];
  for (int32_t r = 0; r < size(); ++r) {
    const uint32_t n = RankOf(base_, layout_, r).gather_size[b];
    if (n != first || n > static_cast<uint32_t>(layout_.gather_bytes)) {
      return Fail(absl::InternalError(
          absl::StrCat("AllGather round #", round - 1, " size mismatch: rank ", r, " contributes ",
                       n, " bytes, rank 0 contributes ", first, " bytes")));
    }
    out[r].assign(data(r), data(r) + n);
  }
  return out;
}

namespace {
RingHead& RingOf(uint8_t* base, const ShmGroupLayout& l, int32_t src, int32_t dst) {
  const Offsets o = ComputeOffsets(l);
  return *reinterpret_cast<RingHead*>(base + o.rings +
                                      (static_cast<size_t>(src) * l.size + dst) * o.ring_stride);
}
ShmDescriptor* EntriesOf(RingHead& ring) {
  return reinterpret_cast<ShmDescriptor*>(reinterpret_cast<uint8_t*>(&ring) + sizeof(RingHead));
}
}  // namespace

uint64_t ShmGroup::posted_to(int32_t dst) const {
  return Atomic(RingOf(base_, layout_, rank_, dst).posted).load(std::memory_order_relaxed);
}
uint64_t ShmGroup::completed_by(int32_t dst) const {
  return Atomic(RingOf(base_, layout_, rank_, dst).completed).load(std::memory_order_acquire);
}
bool ShmGroup::TryPost(int32_t dst, const ShmDescriptor& d) {
  RingHead& ring = RingOf(base_, layout_, rank_, dst);
  const uint64_t posted = Atomic(ring.posted).load(std::memory_order_relaxed);
  const uint64_t consumed = Atomic(ring.consumed).load(std::memory_order_acquire);
  if (posted - consumed >= static_cast<uint64_t>(layout_.ring_entries)) return false;
  EntriesOf(ring)[posted % layout_.ring_entries] = d;
  Atomic(ring.posted).store(posted + 1, std::memory_order_release);
  return true;
}
uint64_t ShmGroup::posted_from(int32_t src) const {
  return Atomic(RingOf(base_, layout_, src, rank_).posted).load(std::memory_order_acquire);
}
uint64_t ShmGroup::consumed_from(int32_t src) const {
  return Atomic(RingOf(base_, layout_, src, rank_).consumed).load(std::memory_order_relaxed);
}
ShmDescriptor ShmGroup::Peek(int32_t src, uint64_t index) const {
  RingHead& ring = RingOf(base_, layout_, src, rank_);
  return EntriesOf(ring)[index % layout_.ring_entries];
}
void ShmGroup::Consume(int32_t src, uint64_t count) {
  Atomic(RingOf(base_, layout_, src, rank_).consumed).store(count, std::memory_order_release);
}
void ShmGroup::Complete(int32_t src, uint64_t count) {
  Atomic(RingOf(base_, layout_, src, rank_).completed).store(count, std::memory_order_release);
}

namespace {
ShmRegion* RegionsOf(uint8_t* base, const ShmGroupLayout& l, int32_t rank) {
  return reinterpret_cast<ShmRegion*>(base + ComputeOffsets(l).regions) +
         static_cast<size_t>(rank) * l.max_regions;
}
}  // namespace

absl::StatusOr<uint32_t> ShmGroup::AddRegion(const ShmRegion& region) {
  RankHead& mine = RankOf(base_, layout_, rank_);
  const int32_t count = Atomic(mine.region_count).load(std::memory_order_relaxed);
  if (count >= layout_.max_regions) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "rank ", rank_, " has registered max_regions = ", layout_.max_regions, " regions"));
  }
  RegionsOf(base_, layout_, rank_)[count] = region;
  Atomic(mine.region_count).store(count + 1, std::memory_order_release);
  return static_cast<uint32_t>(count);
}

absl::StatusOr<ShmRegion> ShmGroup::GetRegion(int32_t rank, uint32_t index) const {
  const int32_t count =
      Atomic(RankOf(base_, layout_, rank).region_count).load(std::memory_order_acquire);
  if (count < 0 || count > layout_.max_regions || index >= static_cast<uint32_t>(count)) {
    return absl::OutOfRangeError(
        absl::StrCat("region ", index, " of rank ", rank, " does not exist (it has ", count, ")"));
  }
  return RegionsOf(base_, layout_, rank)[index];
}

uint8_t* ShmGroup::RelayPiece(int32_t src, int32_t dst, uint32_t piece) const {
  const Offsets o = ComputeOffsets(layout_);
  return base_ + o.relay + (static_cast<size_t>(src) * layout_.size + dst) * o.relay_pair +
         static_cast<size_t>(piece) * layout_.relay_piece_bytes;
}

std::span<uint8_t> ShmGroup::RelayMemory() const {
  if (layout_.relay_pieces == 0) return {};
  const Offsets o = ComputeOffsets(layout_);
  return {base_ + o.relay, o.total - o.relay};
}

}  // namespace eplb::transfer
