// CUDA kernels of moments_update and moments_merge (math in csrc/ops/moments.cpp).
// Column means by a (32 x 8)-thread tiled reduction in float64 (partials per
// row stripe, combined in a fixed order), centring of row chunks into a
// reusable buffer, X_c^T X_c by cuBLAS (at::addmm_ on the current stream),
// and the Chan merge as one elementwise pass over D x D.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_helpers.cuh"
#include "common/op_args.h"

namespace pyvlmx {
namespace {

template <typename X>
__global__ void colsum_kernel(const X* __restrict__ x, int64_t N, int64_t D,
                              double* __restrict__ partial) {
  __shared__ double red[8][33];
  const int64_t col = blockIdx.x * 32 + threadIdx.x;
  double s = 0;
  if (col < D) {
    for (int64_t r = blockIdx.y * 8 + threadIdx.y; r < N; r += static_cast<int64_t>(gridDim.y) * 8)
      s += static_cast<double>(x[r * D + col]);
  }
  red[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < D) {
    double t = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) t += red[k][threadIdx.x];
    partial[blockIdx.y * D + col] = t;
  }
}

template <typename T>
__global__ void colmean_kernel(const double* __restrict__ partial, int stripes, int64_t N,
                               int64_t D, T* __restrict__ mean) {
  const int64_t d = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (d >= D) return;
  double s = 0;
  for (int k = 0; k < stripes; ++k) s += partial[k * D + d];
  mean[d] = static_cast<T>(s / static_cast<double>(N));
}

template <typename X, typename T>
__global__ void centre_kernel(const X* __restrict__ x, const T* __restrict__ mean, int64_t len,
                              int64_t D, T* __restrict__ buf) {
  PYVLMX_GRID_STRIDE_LOOP(q, len * D) { buf[q] = static_cast<T>(x[q]) - mean[q % D]; }
}

// mean_out = mean_a + delta fb; M_out = M_a + M_b + delta delta^T w (M_out may alias M_a).
template <typename T>
__global__ void merge_kernel(const T* __restrict__ mean_a, const T* __restrict__ mean_b,
                             const T* M_a, const T* __restrict__ M_b, int64_t D, T fb, T w,
                             T* __restrict__ mean_out, T* M_out) {
  PYVLMX_GRID_STRIDE_LOOP(q, D * D) {
    const int64_t i = q / D, j = q - i * D;
    const T di = mean_b[i] - mean_a[i], dj = mean_b[j] - mean_a[j];
    M_out[q] = M_a[q] + M_b[q] + (di * w) * dj;
    if (j == 0) mean_out[i] = mean_a[i] + di * fb;
  }
}

template <typename T>
void launch_merge(const at::Tensor& mean_a, const at::Tensor& mean_b, const at::Tensor& M_a,
                  const at::Tensor& M_b, double fb, double w, at::Tensor& mean_out,
                  at::Tensor& M_out, cudaStream_t st) {
  const int64_t D = mean_a.size(0);
  merge_kernel<T><<<grid_for(D * D, 256), 256, 0, st>>>(
      mean_a.data_ptr<T>(), mean_b.data_ptr<T>(), M_a.data_ptr<T>(), M_b.data_ptr<T>(), D,
      static_cast<T>(fb), static_cast<T>(w), mean_out.data_ptr<T>(), M_out.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> moments_merge_cuda(const at::Tensor& mean_a_in,
                                                      const at::Tensor& com_a_in, int64_t count_a,
                                                      const at::Tensor& mean_b_in,
                                                      const at::Tensor& com_b_in, int64_t count_b) {
  check_moments_state("moments_merge", mean_a_in, com_a_in, count_a, "_a");
  check_moments_state("moments_merge", mean_b_in, com_b_in, count_b, "_b");
  TORCH_CHECK_VALUE(mean_a_in.sizes() == mean_b_in.sizes() &&
                        mean_a_in.scalar_type() == mean_b_in.scalar_type() &&
                        mean_a_in.device() == mean_b_in.device(),
                    "moments_merge: states must have the same D, dtype and device, got ",
                    mean_a_in.sizes(), "/", mean_a_in.scalar_type(), "/", mean_a_in.device(),
                    " and ", mean_b_in.sizes(), "/", mean_b_in.scalar_type(), "/",
                    mean_b_in.device());
  PYVLMX_CHECK_CUDA("moments_merge", mean_a_in);
  if (count_b == 0) return {mean_a_in.clone(), com_a_in.clone()};
  if (count_a == 0) return {mean_b_in.clone(), com_b_in.clone()};
  c10::cuda::OptionalCUDAGuard guard(mean_a_in.device());
  const at::Tensor ma = mean_a_in.contiguous(), mb = mean_b_in.contiguous();
  const at::Tensor ca = com_a_in.contiguous(), cb = com_b_in.contiguous();
  at::Tensor mean = at::empty_like(ma);
  at::Tensor com = at::empty_like(ca);
  const double n = static_cast<double>(count_a) + static_cast<double>(count_b);
  AT_DISPATCH_FLOATING_TYPES(ma.scalar_type(), "moments_merge_cuda", [&] {
    launch_merge<scalar_t>(ma, mb, ca, cb, static_cast<double>(count_b) / n,
                           static_cast<double>(count_a) * static_cast<double>(count_b) / n, mean,
                           com, current_stream());
  });
  return {mean, com};
}

std::tuple<at::Tensor, at::Tensor> moments_update_cuda(const at::Tensor& x_in,
                                                       const at::Tensor& mean_in,
                                                       const at::Tensor& com_in, int64_t count) {
  check_moments_update(x_in, mean_in, com_in, count);
  PYVLMX_CHECK_CUDA("moments_update", x_in);
  const int64_t N = x_in.size(0), D = x_in.size(1);
  if (N == 0) return {mean_in.clone(), com_in.clone()};
  c10::cuda::OptionalCUDAGuard guard(x_in.device());
  cudaStream_t st = current_stream();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor mean_a = mean_in.contiguous(), com_a = com_in.contiguous();
  const int stripes = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(1, ceil_div<int64_t>(N, 64))));
  at::Tensor partial = at::empty({stripes, D}, x.options().dtype(at::kDouble));
  at::Tensor mb = at::empty_like(mean_a);
  const int64_t Rows = std::min<int64_t>(N, std::max<int64_t>(256, (int64_t{1} << 22) / std::max<int64_t>(D, 1)));
  at::Tensor buf = at::empty({Rows, D}, mean_a.options());
  at::Tensor com_b = at::zeros_like(com_a);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "moments_update_cuda_x", [&] {
    using X = scalar_t;
    colsum_kernel<X><<<dim3(ceil_div<int64_t>(D, 32), stripes), dim3(32, 8), 0, st>>>(
        x.data_ptr<X>(), N, D, partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    AT_DISPATCH_FLOATING_TYPES(mean_a.scalar_type(), "moments_update_cuda_state", [&] {
      using T = scalar_t;
      colmean_kernel<T><<<ceil_div<int64_t>(D, 256), 256, 0, st>>>(partial.data_ptr<double>(), stripes, N, D,
                                                                 mb.data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      for (int64_t r0 = 0; r0 < N; r0 += Rows) {
        const int64_t len = std::min(Rows, N - r0);
        centre_kernel<X, T><<<grid_for(len * D, 256), 256, 0, st>>>(
            x.data_ptr<X>() + r0 * D, mb.data_ptr<T>(), len, D, buf.data_ptr<T>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const at::Tensor chunk = buf.narrow(0, 0, len);
        com_b.addmm_(chunk.t(), chunk);
      }
    });
  });
  if (count == 0) return {mb, com_b};
  at::Tensor mean = at::empty_like(mean_a);
  at::Tensor com = at::empty_like(com_a);
  const double n = static_cast<double>(count) + static_cast<double>(N);
  AT_DISPATCH_FLOATING_TYPES(mean_a.scalar_type(), "moments_update_cuda_merge", [&] {
    launch_merge<scalar_t>(mean_a, mb, com_a, com_b, static_cast<double>(N) / n,
                           static_cast<double>(count) * static_cast<double>(N) / n, mean, com, st);
  });
  return {mean, com};
}

}  // namespace
}  // namespace pyvlmx

TORCH_LIBRARY_IMPL(pyvlmx, CUDA, m) {
  m.impl("moments_update", &pyvlmx::moments_update_cuda);
  m.impl("moments_merge", &pyvlmx::moments_merge_cuda);
}
