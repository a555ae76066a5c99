// Kernels of the GPU test and the transfer benchmark, behind plain launch functions (the kernels
// are compiled by nvcc alone; callers are C++20 translation units).
#ifndef EPLB_TESTS_GPU_PATTERN_KERNELS_H_
#define EPLB_TESTS_GPU_PATTERN_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace eplb::gpu_test {

// The 32-bit word `word` of buffer `buffer` of expert `expert` in layer `layer`.
uint32_t HostPattern(int layer, int expert, int buffer, uint64_t word);

// Fills `words` words at `data` with the pattern of (layer, expert, buffer).
cudaError_t LaunchFill(uint32_t* data, uint64_t words, int layer, int expert, int buffer,
                       cudaStream_t stream);

struct SlotPtrs {
  uint32_t* buffers[2];
};

// Adds to *errors the number of words of the rank's slots (layers × S slots × 2 buffers, slot
// pointers in `slots`, words per buffer in `words`) that differ from the pattern of the expert that
// `phy2log` (L × P, device memory) names for the slot.
cudaError_t LaunchCheck(const SlotPtrs* slots, const int32_t* phy2log, int layers, int P,
                        int first_slot, int S, const uint64_t* words, unsigned long long* errors,
                        cudaStream_t stream);

// Keeps the GPU busy for about `nanoseconds` on `stream` with `blocks` blocks (a stand-in for a
// decode step's kernels).
cudaError_t LaunchSpin(uint64_t nanoseconds, int blocks, cudaStream_t stream);

// A stand-in for a cooperative kernel (DeepEP-style low-latency dispatch): `blocks` blocks (one per
// SM), each taking `shared_bytes` of shared memory so that no other kernel's block fits beside it,
// and each waiting until every block of the launch is resident. Launch g (g = 1, 2, …) waits until
// *arrived (zero before launch 1) reaches g × blocks. A block that waited `timeout_ns` gives up
// and adds 1 to *timeouts, so a launch that could not get every SM ends instead of hanging.
cudaError_t LaunchAllResident(unsigned int* arrived, unsigned int generation, int blocks,
                              int shared_bytes, uint64_t timeout_ns, unsigned int* timeouts,
                              cudaStream_t stream);

}  // namespace eplb::gpu_test

#endif  // EPLB_TESTS_GPU_PATTERN_KERNELS_H_
