#include "tests/gpu/pattern_kernels.h"

namespace eplb::gpu_test {
namespace {

__device__ __host__ inline uint32_t Pattern(int layer, int expert, int buffer, uint64_t word) {
  uint64_t x = (static_cast<uint64_t>(layer) << 48) ^ (static_cast<uint64_t>(expert) << 32) ^
               (static_cast<uint64_t>(buffer) << 28) ^ word;
  x *= 0x9E3779B97F4A7C15ULL;
  return static_cast<uint32_t>(x >> 32);
}

__global__ void Fill(uint32_t* data, uint64_t words, int layer, int expert, int buffer) {
  for (uint64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < words;
       i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    data[i] = Pattern(layer, expert, buffer, i);
  }
}

// One block per (layer, local slot, buffer).
__global__ void Check(const SlotPtrs* slots, const int32_t* phy2log, int P, int first_slot, int S,
                      const uint64_t* words, unsigned long long* errors) {
  const int index = blockIdx.x;  // (layer * S + s) * 2 + buffer
  const int buffer = index % 2;
  const int s = (index / 2) % S;
  const int layer = index / 2 / S;
  const int expert = phy2log[layer * P + first_slot + s];
  const uint32_t* data = slots[layer * S + s].buffers[buffer];
  unsigned long long bad = 0;
  for (uint64_t i = threadIdx.x; i < words[buffer]; i += blockDim.x) {
    if (data[i] != Pattern(layer, expert, buffer, i)) ++bad;
  }
  if (bad > 0) atomicAdd(errors, bad);
}

__global__ void Spin(uint64_t nanoseconds) {
  const uint64_t start = clock64();
  // clock64 counts SM cycles; ~1.7 GHz on Hopper. A rough stand-in is all that is needed.
  const uint64_t cycles = nanoseconds * 17 / 10;
  while (clock64() - start < cycles) {
  }
}

__device__ inline uint64_t GlobalTimer() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void AllResident(unsigned int* arrived, unsigned int target, uint64_t timeout_ns,
                            unsigned int* timeouts) {
  extern __shared__ unsigned char shared[];
  if (threadIdx.x == 0) {
    shared[0] = 1;
    atomicAdd(arrived, 1u);
    const uint64_t start = GlobalTimer();
    while (*reinterpret_cast<volatile unsigned int*>(arrived) < target) {
      if (GlobalTimer() - start > timeout_ns) {
        atomicAdd(timeouts, 1u);
        break;
      }
    }
  }
}

}  // namespace

uint32_t HostPattern(int layer, int expert, int buffer, uint64_t word) {
  return Pattern(layer, expert, buffer, word);
}

cudaError_t LaunchFill(uint32_t* data, uint64_t words, int layer, int expert, int buffer,
                       cudaStream_t stream) {
  Fill<<<128, 256, 0, stream>>>(data, words, layer, expert, buffer);
  return cudaGetLastError();
}

cudaError_t LaunchCheck(const SlotPtrs* slots, const int32_t* phy2log, int layers, int P,
                        int first_slot, int S, const uint64_t* words, unsigned long long* errors,
                        cudaStream_t stream) {
  Check<<<layers * S * 2, 256, 0, stream>>>(slots, phy2log, P, first_slot, S, words, errors);
  return cudaGetLastError();
}

cudaError_t LaunchSpin(uint64_t nanoseconds, int blocks, cudaStream_t stream) {
  Spin<<<blocks, 32, 0, stream>>>(nanoseconds);
  return cudaGetLastError();
}

cudaError_t LaunchAllResident(unsigned int* arrived, unsigned int generation, int blocks,
                              int shared_bytes, uint64_t timeout_ns, unsigned int* timeouts,
                              cudaStream_t stream) {
  if (cudaError_t e = cudaFuncSetAttribute(AllResident, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           shared_bytes);
      e != cudaSuccess) {
    return e;
  }
  AllResident<<<blocks, 32, shared_bytes, stream>>>(
      arrived, generation * static_cast<unsigned int>(blocks), timeout_ns, timeouts);
  return cudaGetLastError();
}

}  // namespace eplb::gpu_test
