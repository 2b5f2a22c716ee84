// Small helpers shared by the CUDA kernels.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace pyvlmx {

template <typename T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// for (i in [0, n)) spread over the whole grid.
#define PYVLMX_GRID_STRIDE_LOOP(i, n)                                     \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; \
       i < (n); i += static_cast<int64_t>(blockDim.x) * gridDim.x)

inline int64_t grid_for(int64_t n, int threads, int64_t max_blocks = 65535 * 8) {
  int64_t blocks = ceil_div<int64_t>(n, threads);
  if (blocks < 1) blocks = 1;
  return blocks < max_blocks ? blocks : max_blocks;
}

// The stream that torch is using now: launching anywhere else breaks CUDA
// graphs and torch.compile.
inline cudaStream_t current_stream() {
  return c10::cuda::getCurrentCUDAStream().stream();
}

}  // namespace pyvlmx
