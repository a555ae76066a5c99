// CHECK_CUDA for the GPU test and benchmark programs: on an error, prints the call, file, line and
// CUDA's description to standard error and returns 1 from the enclosing function.
#ifndef EPLB_TRANSFER_TESTING_CUDA_CHECK_H_
#define EPLB_TRANSFER_TESTING_CUDA_CHECK_H_

#include <cuda_runtime_api.h>

#include <cstdio>

#define CHECK_CUDA(expr)                                                                          \
  do {                                                                                            \
    if (cudaError_t e_ = (expr); e_ != cudaSuccess) {                                             \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      return 1;                                                                                   \
    }                                                                                             \
  } while (false)

#endif  // EPLB_TRANSFER_TESTING_CUDA_CHECK_H_
