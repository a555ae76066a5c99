// libFuzzer target: a node's shared-memory segment as another process may have left it. A valid
// segment (one rank, small rings and tables, a relay) is created for each input and the input is
// XORed over its first bytes (header, the rank's area, the ring). Then a rank joins it: the join
// succeeds or refuses with an error, and a joined rank's collective, ring and region reads stay
// inside the segment. It never crashes or hangs.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "core/check.h"
#include "transfer/shm_group.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using eplb::transfer::ShmGroup;
  const auto name = ShmGroup::Create({.size = 1,
                                      .ring_entries = 4,
                                      .max_regions = 4,
                                      .gather_bytes = 16,
                                      .relay_pieces = 1,
                                      .relay_piece_bytes = 4096});
  EPLB_CHECK(name.ok(), name.status().ToString());
  const int fd = shm_open(name->c_str(), O_RDWR, 0);
  EPLB_CHECK(fd >= 0, "shm_open");
  const off_t total = lseek(fd, 0, SEEK_END);
  std::vector<uint8_t> bytes(static_cast<size_t>(std::min<off_t>(total, 16384)));
  EPLB_CHECK(pread(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()),
             "pread");
  for (size_t i = 0; i < std::min(size, bytes.size()); ++i) bytes[i] ^= data[i];
  EPLB_CHECK(pwrite(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()),
             "pwrite");
  close(fd);
  auto group = ShmGroup::Join(*name, 0, 1, {}, absl::Milliseconds(1));
  if (group.ok()) {
    const uint8_t mine[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    (void)(*group)->AllGather(mine);
    for (uint32_t i = 0; i < 8; ++i) (void)(*group)->GetRegion(0, i);
    const uint64_t posted = (*group)->posted_from(0);
    for (uint64_t i = (*group)->consumed_from(0); i < posted && i < 16; ++i) {
      (void)(*group)->Peek(0, i);
    }
    (void)(*group)->TryPost(0, {});
  } else {
    (void)ShmGroup::Remove(*name);
  }
  return 0;
}
