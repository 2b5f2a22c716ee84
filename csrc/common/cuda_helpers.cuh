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

namespace pyvlmx {

// Number of multiprocessors of the current device (cached per device).
inline int sm_count() {
  static int cached[64] = {0};
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 64 && cached[dev] > 0) return cached[dev];
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  if (dev < 64) cached[dev] = n;
  return n;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    T o = __shfl_down_sync(0xffffffffu, v, off);
    v = o > v ? o : v;
  }
  return v;
}

// Sum over the block (any blockDim up to 1024, flattened); the result is
// valid in thread 0.  `scratch` needs 32 entries.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int nthreads = blockDim.x * blockDim.y * blockDim.z;
  const int lane = tid & 31, warp = tid >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int nwarps = (nthreads + 31) >> 5;
  v = (tid < nwarps) ? scratch[tid] : T(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

// Max over the block of non-negative values; valid in thread 0.
template <typename T>
__device__ __forceinline__ T block_max(T v, T* scratch) {
  const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int nthreads = blockDim.x * blockDim.y * blockDim.z;
  const int lane = tid & 31, warp = tid >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int nwarps = (nthreads + 31) >> 5;
  v = (tid < nwarps) ? scratch[tid] : T(0);
  if (warp == 0) v = warp_max(v);
  return v;
}

// N elements of T packed into one aligned load/store.
template <typename T, int N>
struct alignas(sizeof(T) * N) Packed {
  T v[N];
};

}  // namespace pyvlmx
