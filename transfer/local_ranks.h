// RunLocalProcesses / RunLocalRanks: run `size` ranks as child processes of this process, for GPU
// tests, benchmarks and demos. The parent must not have initialized CUDA (fork before any CUDA
// call).
//   - RunLocalProcesses(size, body): body(rank) in each child; returns every child's exit status
//     (128 + signal for a killed one), in rank order, once all ended.
//   - RunLocalRanks(size, body): one NCCL group. Rank 0 makes the NCCL unique id and hands it to
//     the others through pipes. Returns 0 when every rank returned 0, else the first failing
//     rank's status.
#ifndef EPLB_TRANSFER_LOCAL_RANKS_H_
#define EPLB_TRANSFER_LOCAL_RANKS_H_

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <vector>

#include "transfer/nccl_communicator.h"

namespace eplb::transfer {

inline std::vector<int> RunLocalProcesses(int size, const std::function<int(int rank)>& body) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::vector<pid_t> children;
  for (int rank = 0; rank < size; ++rank) {
    const pid_t pid = fork();
    if (pid < 0) {
      std::perror("fork");
      break;
    }
    if (pid == 0) {
      const int status = body(rank);
      std::fflush(stdout);
      std::fflush(stderr);
      _exit(status);
    }
    children.push_back(pid);
  }
  std::vector<int> codes;
  for (pid_t pid : children) {
    int status = 0;
    waitpid(pid, &status, 0);
    codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }
  codes.resize(size, 1);  // ranks that could not be started
  return codes;
}

// `body(rank, size, id)` runs in the child of each rank and returns its exit status.
inline int RunLocalRanks(
    int size, const std::function<int(int rank, int size, const NcclUniqueIdBytes& id)>& body) {
  std::vector<int> write_ends, read_ends;
  for (int r = 1; r < size; ++r) {
    int fds[2];
    if (pipe(fds) != 0) {
      std::perror("pipe");
      return 1;
    }
    read_ends.push_back(fds[0]);
    write_ends.push_back(fds[1]);
  }
  std::vector<pid_t> children;
  for (int rank = 0; rank < size; ++rank) {
    const pid_t pid = fork();
    if (pid < 0) {
      std::perror("fork");
      return 1;
    }
    if (pid > 0) {
      children.push_back(pid);
      continue;
    }
    NcclUniqueIdBytes id{};
    if (rank == 0) {
      auto made = NcclCommunicator::NewUniqueId();
      if (!made.ok()) {
        std::fprintf(stderr, "rank 0: %s\n", made.status().ToString().c_str());
        _exit(1);
      }
      id = *made;
      for (int fd : write_ends) {
        if (write(fd, id.data(), id.size()) != static_cast<ssize_t>(id.size())) _exit(1);
      }
    } else {
      size_t got = 0;
      while (got < id.size()) {
        const ssize_t n = read(read_ends[rank - 1], id.data() + got, id.size() - got);
        if (n <= 0) _exit(1);
        got += static_cast<size_t>(n);
      }
    }
    std::fflush(stdout);
    const int status = body(rank, size, id);
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(status);
  }
  int result = 0;
  for (pid_t pid : children) {
    int status = 0;
    waitpid(pid, &status, 0);
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (result == 0) result = code;
  }
  return result;
}

}  // namespace eplb::transfer

#endif  // EPLB_TRANSFER_LOCAL_RANKS_H_
