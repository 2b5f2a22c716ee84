// CUDA kernels of psnr and _psnr_backward (math in csrc/ops/psnr.cpp).
// Grid (gx, B); per-block float64 sums of squares, combined per image in a
// fixed order; the backward is one elementwise pass with a per-image factor.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_helpers.cuh"
#include "common/op_args.h"

namespace pyvlmx {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void sq_diff_kernel(const T* __restrict__ a, const T* __restrict__ b, int64_t n,
                               double* __restrict__ partial) {
  __shared__ double scratch[32];
  const int64_t base = static_cast<int64_t>(blockIdx.y) * n;
  double s = 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double d = static_cast<double>(a[base + i]) - static_cast<double>(b[base + i]);
    s += d * d;
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) partial[blockIdx.y * gridDim.x + blockIdx.x] = s;
}

// mode 0: out[b] = psnr; mode 1: coef[b] = d psnr / d a factor times grad[b].
template <typename T>
__global__ void psnr_finish_kernel(const double* __restrict__ partial, int64_t B, int gx,
                                   int64_t n, double r2, const T* __restrict__ grad,
                                   T* __restrict__ out, double* __restrict__ coef) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  double s = 0;
  for (int k = 0; k < gx; ++k) s += partial[b * gx + k];
  const double mse = s / static_cast<double>(n);
  if (out != nullptr) out[b] = static_cast<T>(10.0 * log10(r2 / mse));
  if (coef != nullptr)
    coef[b] = mse > 0 ? -20.0 * static_cast<double>(grad[b]) / (log(10.0) * static_cast<double>(n) * mse)
                      : 0.0;
}

template <typename T>
__global__ void psnr_grad_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                 const double* __restrict__ coef, int64_t n, T* __restrict__ ga,
                                 T* __restrict__ gb) {
  using opmath_t = at::opmath_type<T>;
  const int64_t base = static_cast<int64_t>(blockIdx.y) * n;
  const opmath_t c = static_cast<opmath_t>(coef[blockIdx.y]);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const opmath_t v = c * (static_cast<opmath_t>(a[base + i]) - static_cast<opmath_t>(b[base + i]));
    ga[base + i] = static_cast<T>(v);
    gb[base + i] = static_cast<T>(-v);
  }
}

int blocks_per_image(int64_t n, int64_t B) {
  const int64_t want = std::max<int64_t>(1, (static_cast<int64_t>(sm_count()) * 8 + B - 1) / B);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div<int64_t>(n, kThreads), want)));
}

at::Tensor psnr_cuda(const at::Tensor& a_in, const at::Tensor& b_in, double data_range) {
  check_image_pair("psnr", a_in, b_in, data_range);
  PYVLMX_CHECK_CUDA("psnr", a_in);
  c10::cuda::OptionalCUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t B = a.size(0);
  const int64_t n = B > 0 ? a.numel() / B : 0;
  at::Tensor out = at::empty({B}, a.options());
  if (B == 0) return out;
  TORCH_CHECK_VALUE(B <= 65535, "psnr: at most 65535 images per call on CUDA, got B=", B);
  const int gx = blocks_per_image(n, B);
  cudaStream_t st = current_stream();
  at::Tensor partial = at::empty({B * gx}, a.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "psnr_cuda", [&] {
    sq_diff_kernel<scalar_t><<<dim3(gx, B), kThreads, 0, st>>>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), n,
                                                                 partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    psnr_finish_kernel<scalar_t><<<ceil_div<int64_t>(B, 128), 128, 0, st>>>(
        partial.data_ptr<double>(), B, gx, n, data_range * data_range, nullptr,
        out.data_ptr<scalar_t>(), nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> psnr_backward_cuda(const at::Tensor& grad_in,
                                                      const at::Tensor& a_in,
                                                      const at::Tensor& b_in, double data_range) {
  check_image_pair("_psnr_backward", a_in, b_in, data_range);
  PYVLMX_CHECK_CUDA("psnr", a_in);
  check_image_grad("_psnr_backward", grad_in, a_in);
  c10::cuda::OptionalCUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous(), grad = grad_in.contiguous();
  const int64_t B = a.size(0);
  const int64_t n = B > 0 ? a.numel() / B : 0;
  at::Tensor ga = at::empty_like(a, at::MemoryFormat::Contiguous);
  at::Tensor gb = at::empty_like(b, at::MemoryFormat::Contiguous);
  if (B == 0 || n == 0) return {ga, gb};
  TORCH_CHECK_VALUE(B <= 65535, "_psnr_backward: at most 65535 images per call on CUDA, got B=", B);
  const int gx = blocks_per_image(n, B);
  cudaStream_t st = current_stream();
  const auto dopt = a.options().dtype(at::kDouble);
  at::Tensor partial = at::empty({B * gx}, dopt);
  at::Tensor coef = at::empty({B}, dopt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "psnr_backward_cuda", [&] {
    sq_diff_kernel<scalar_t><<<dim3(gx, B), kThreads, 0, st>>>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), n,
                                                                 partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    psnr_finish_kernel<scalar_t><<<ceil_div<int64_t>(B, 128), 128, 0, st>>>(
        partial.data_ptr<double>(), B, gx, n, data_range * data_range, grad.data_ptr<scalar_t>(),
        nullptr, coef.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    psnr_grad_kernel<scalar_t><<<dim3(gx, B), kThreads, 0, st>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), coef.data_ptr<double>(), n,
        ga.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {ga, gb};
}

}  // namespace
}  // namespace pyvlmx

TORCH_LIBRARY_IMPL(pyvlmx, CUDA, m) {
  m.impl("psnr", &pyvlmx::psnr_cuda);
  m.impl("_psnr_backward", &pyvlmx::psnr_backward_cuda);
}
