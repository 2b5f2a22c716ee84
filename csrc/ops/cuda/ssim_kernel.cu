// CUDA kernels of ssim and _ssim_backward (math in csrc/ops/ssim.cpp).
//
// Forward: one 16x16 block per 16x16 tile of the valid SSIM map of one
// plane (grid x, y = tiles, z = plane).  The block stages the 26x26 input
// patch of a and b in shared memory, runs the horizontal 11-tap pass of the
// five quantities into shared memory, then the vertical pass per output
// pixel, forms S and reduces it; per-tile sums (opmath, float64 for double)
// are added per image in a fixed order by a second kernel.
// Backward: kernel 1 (same tiling) writes the four gradient maps Gx, Gy,
// Gsq, Gxy of the valid region (scaled by grad_b / (C Hv Wv)); kernel 2 tiles
// the full image and applies the adjoint filter (a correlation with the
// symmetric window over the zero-extended maps) and the product rule.
// Accumulation in at::opmath_type (float for half/bfloat16/float, double for
// double).  Current stream, device guard of a.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_helpers.cuh"
#include "common/op_args.h"

namespace pyvlmx {
namespace {

constexpr int K = kSsimTaps;
constexpr int TS = 16;           // tile side (outputs)
constexpr int PS = TS + K - 1;   // patch side (inputs)

template <typename A>
struct Window {
  A w[K];
  A c1, c2;
};

template <typename A>
Window<A> make_window(double data_range) {
  double wd[K];
  ssim_window(wd);
  Window<A> win;
  for (int k = 0; k < K; ++k) win.w[k] = static_cast<A>(wd[k]);
  win.c1 = static_cast<A>((kSsimK1 * data_range) * (kSsimK1 * data_range));
  win.c2 = static_cast<A>((kSsimK2 * data_range) * (kSsimK2 * data_range));
  return win;
}

// Filtered moments at valid output (oi + ty, oj + tx) of plane p.
template <typename T, typename A>
__device__ __forceinline__ void tile_moments(const T* __restrict__ a, const T* __restrict__ b,
                                             int H, int W, int oi, int oj, const Window<A>& win,
                                             A (&sx)[PS][PS], A (&sy)[PS][PS], A (&h)[5][PS][TS],
                                             A& ux, A& uy, A& uxx, A& uyy, A& uxy) {
  const int tid = threadIdx.y * TS + threadIdx.x;
  for (int idx = tid; idx < PS * PS; idx += TS * TS) {
    const int r = idx / PS, c = idx % PS;
    const int gi = oi + r, gj = oj + c;
    const bool in = gi < H && gj < W;
    sx[r][c] = in ? static_cast<A>(a[static_cast<int64_t>(gi) * W + gj]) : A(0);
    sy[r][c] = in ? static_cast<A>(b[static_cast<int64_t>(gi) * W + gj]) : A(0);
  }
  __syncthreads();
  for (int idx = tid; idx < PS * TS; idx += TS * TS) {
    const int r = idx / TS, c = idx % TS;
    A h0 = 0, h1 = 0, h2 = 0, h3 = 0, h4 = 0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const A xv = sx[r][c + k], yv = sy[r][c + k], wk = win.w[k];
      h0 += wk * xv;
      h1 += wk * yv;
      h2 += wk * (xv * xv);
      h3 += wk * (yv * yv);
      h4 += wk * (xv * yv);
    }
    h[0][r][c] = h0;
    h[1][r][c] = h1;
    h[2][r][c] = h2;
    h[3][r][c] = h3;
    h[4][r][c] = h4;
  }
  __syncthreads();
  ux = uy = uxx = uyy = uxy = A(0);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const A wk = win.w[k];
    const int r = threadIdx.y + k, c = threadIdx.x;
    ux += wk * h[0][r][c];
    uy += wk * h[1][r][c];
    uxx += wk * h[2][r][c];
    uyy += wk * h[3][r][c];
    uxy += wk * h[4][r][c];
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(TS * TS)
    ssim_tile_kernel(const T* __restrict__ a, const T* __restrict__ b, int H, int W,
                     Window<A> win, A* __restrict__ partial) {
  __shared__ A sx[PS][PS], sy[PS][PS], h[5][PS][TS];
  __shared__ A scratch[32];
  const int Hv = H - K + 1, Wv = W - K + 1;
  const int64_t p = blockIdx.z;
  const int oi = blockIdx.y * TS, oj = blockIdx.x * TS;
  const int64_t off = p * static_cast<int64_t>(H) * W;
  A ux, uy, uxx, uyy, uxy;
  tile_moments<T, A>(a + off, b + off, H, W, oi, oj, win, sx, sy, h, ux, uy, uxx, uyy, uxy);
  A s = 0;
  if (oi + threadIdx.y < Hv && oj + threadIdx.x < Wv) {
    const A a1 = A(2) * ux * uy + win.c1;
    const A a2 = A(2) * (uxy - ux * uy) + win.c2;
    const A b1 = ux * ux + uy * uy + win.c1;
    const A b2 = (uxx - ux * ux) + (uyy - uy * uy) + win.c2;
    s = (a1 * a2) / (b1 * b2);
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0 && threadIdx.y == 0)
    partial[p * gridDim.x * gridDim.y + blockIdx.y * gridDim.x + blockIdx.x] = s;
}

// out[b] = sum of partial[b * per_image .. ] / denom, fixed order per thread.
template <typename T, typename A>
__global__ void image_sum_kernel(const A* __restrict__ partial, int64_t per_image, double denom,
                                 T* __restrict__ out) {
  __shared__ A scratch[32];
  const int64_t b = blockIdx.x;
  A s = 0;
  for (int64_t i = threadIdx.x; i < per_image; i += blockDim.x) s += partial[b * per_image + i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) out[b] = static_cast<T>(static_cast<double>(s) / denom);
}

// Gradient maps at the valid positions: G[m][p][i][j], m = x, y, sq, xy.
template <typename T, typename A>
__global__ void __launch_bounds__(TS * TS)
    ssim_gradmap_kernel(const T* __restrict__ a, const T* __restrict__ b,
                        const T* __restrict__ grad, int C, int H, int W, Window<A> win,
                        double denom, A* __restrict__ G) {
  __shared__ A sx[PS][PS], sy[PS][PS], h[5][PS][TS];
  const int Hv = H - K + 1, Wv = W - K + 1;
  const int64_t p = blockIdx.z;
  const int oi = blockIdx.y * TS, oj = blockIdx.x * TS;
  const int64_t off = p * static_cast<int64_t>(H) * W;
  A ux, uy, uxx, uyy, uxy;
  tile_moments<T, A>(a + off, b + off, H, W, oi, oj, win, sx, sy, h, ux, uy, uxx, uyy, uxy);
  const int i = oi + threadIdx.y, j = oj + threadIdx.x;
  if (i >= Hv || j >= Wv) return;
  const A coef = static_cast<A>(static_cast<double>(static_cast<A>(grad[p / C])) / denom);
  const A a1 = A(2) * ux * uy + win.c1;
  const A a2 = A(2) * (uxy - ux * uy) + win.c2;
  const A b1 = ux * ux + uy * uy + win.c1;
  const A b2 = (uxx - ux * ux) + (uyy - uy * uy) + win.c2;
  const A d = b1 * b2;
  const A sv = (a1 * a2) / d;
  const A inv_b1 = A(1) / b1, inv_b2 = A(1) / b2;
  const int64_t plane = static_cast<int64_t>(Hv) * Wv;
  const int64_t P = gridDim.z;
  const int64_t q = p * plane + static_cast<int64_t>(i) * Wv + j;
  G[q] = coef * (A(2) * uy * (a2 - a1) / d - A(2) * ux * sv * (inv_b1 - inv_b2));
  G[P * plane + q] = coef * (A(2) * ux * (a2 - a1) / d - A(2) * uy * sv * (inv_b1 - inv_b2));
  G[2 * P * plane + q] = coef * (-sv * inv_b2);
  G[3 * P * plane + q] = coef * (A(2) * a1 / d);
}

// Adjoint filter and product rule over the full image.
template <typename T, typename A>
__global__ void __launch_bounds__(TS * TS)
    ssim_adjoint_kernel(const T* __restrict__ a, const T* __restrict__ b,
                        const A* __restrict__ G, int H, int W, Window<A> win,
                        T* __restrict__ ga, T* __restrict__ gb) {
  __shared__ A sg[4][PS][PS];
  __shared__ A h[4][PS][TS];
  const int Hv = H - K + 1, Wv = W - K + 1;
  const int64_t p = blockIdx.z;
  const int64_t P = gridDim.z;
  const int64_t plane = static_cast<int64_t>(Hv) * Wv;
  const int qi0 = blockIdx.y * TS, qj0 = blockIdx.x * TS;
  const int tid = threadIdx.y * TS + threadIdx.x;
  // sg[m][r][c] = G_m(qi0 - (K-1) + r, qj0 - (K-1) + c), zero outside the valid region.
  for (int idx = tid; idx < PS * PS; idx += TS * TS) {
    const int r = idx / PS, c = idx % PS;
    const int gi = qi0 - (K - 1) + r, gj = qj0 - (K - 1) + c;
    const bool in = gi >= 0 && gj >= 0 && gi < Hv && gj < Wv;
    const int64_t q = p * plane + static_cast<int64_t>(in ? gi : 0) * Wv + (in ? gj : 0);
#pragma unroll
    for (int m = 0; m < 4; ++m) sg[m][r][c] = in ? G[m * P * plane + q] : A(0);
  }
  __syncthreads();
  // F(q) = sum_k w[k] G(q - k); with w symmetric, = sum_k w[k] G(q - (K-1) + k).
  for (int idx = tid; idx < PS * TS; idx += TS * TS) {
    const int r = idx / TS, c = idx % TS;
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      A acc = 0;
#pragma unroll
      for (int k = 0; k < K; ++k) acc += win.w[k] * sg[m][r][c + k];
      h[m][r][c] = acc;
    }
  }
  __syncthreads();
  const int i = qi0 + threadIdx.y, j = qj0 + threadIdx.x;
  if (i >= H || j >= W) return;
  A f[4];
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    A acc = 0;
#pragma unroll
    for (int k = 0; k < K; ++k) acc += win.w[k] * h[m][threadIdx.y + k][threadIdx.x];
    f[m] = acc;
  }
  const int64_t o = p * static_cast<int64_t>(H) * W + static_cast<int64_t>(i) * W + j;
  const A xv = static_cast<A>(a[o]), yv = static_cast<A>(b[o]);
  ga[o] = static_cast<T>(f[0] + A(2) * xv * f[2] + yv * f[3]);
  gb[o] = static_cast<T>(f[1] + A(2) * yv * f[2] + xv * f[3]);
}

void check_cuda_images(const char* op, const at::Tensor& a) {
  PYVLMX_CHECK_CUDA("ssim", a);
  TORCH_CHECK_VALUE(a.size(0) * a.size(1) <= 65535, op,
                    ": at most 65535 planes (B*C) per call on CUDA, got ", a.size(0) * a.size(1));
}

at::Tensor ssim_cuda(const at::Tensor& a_in, const at::Tensor& b_in, double data_range) {
  check_image_pair("ssim", a_in, b_in, data_range);
  check_ssim_size(a_in);
  check_cuda_images("ssim", a_in);
  c10::cuda::OptionalCUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t B = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
  at::Tensor out = at::zeros({B}, a.options());
  if (B * C == 0) return out;
  const int Hv = static_cast<int>(H - K + 1), Wv = static_cast<int>(W - K + 1);
  const dim3 grid(ceil_div(Wv, TS), ceil_div(Hv, TS), static_cast<unsigned>(B * C));
  const dim3 block(TS, TS);
  cudaStream_t st = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "ssim_cuda", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const auto aopt = a.options().dtype(c10::CppTypeToScalarType<A>::value);
    at::Tensor partial = at::empty({static_cast<int64_t>(grid.x) * grid.y * B * C}, aopt);
    ssim_tile_kernel<T, A><<<grid, block, 0, st>>>(a.data_ptr<T>(), b.data_ptr<T>(),
                                                    static_cast<int>(H), static_cast<int>(W),
                                                    make_window<A>(data_range),
                                                    partial.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const double denom = static_cast<double>(C) * Hv * Wv;
    image_sum_kernel<T, A><<<static_cast<unsigned>(B), 256, 0, st>>>(
        partial.data_ptr<A>(), static_cast<int64_t>(grid.x) * grid.y * C, denom, out.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> ssim_backward_cuda(const at::Tensor& grad_in,
                                                      const at::Tensor& a_in,
                                                      const at::Tensor& b_in, double data_range) {
  check_image_pair("_ssim_backward", a_in, b_in, data_range);
  check_ssim_size(a_in);
  check_cuda_images("_ssim_backward", a_in);
  check_image_grad("_ssim_backward", grad_in, a_in);
  c10::cuda::OptionalCUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous(), grad = grad_in.contiguous();
  const int64_t B = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
  at::Tensor ga = at::empty_like(a, at::MemoryFormat::Contiguous);
  at::Tensor gb = at::empty_like(b, at::MemoryFormat::Contiguous);
  if (B * C == 0) return {ga, gb};
  const int Hv = static_cast<int>(H - K + 1), Wv = static_cast<int>(W - K + 1);
  const dim3 block(TS, TS);
  const dim3 grid_v(ceil_div(Wv, TS), ceil_div(Hv, TS), static_cast<unsigned>(B * C));
  const dim3 grid_f(ceil_div(static_cast<int>(W), TS), ceil_div(static_cast<int>(H), TS),
                    static_cast<unsigned>(B * C));
  cudaStream_t st = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "ssim_backward_cuda", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const auto aopt = a.options().dtype(c10::CppTypeToScalarType<A>::value);
    const Window<A> win = make_window<A>(data_range);
    at::Tensor G = at::empty({4, B * C, Hv, Wv}, aopt);
    const double denom = static_cast<double>(C) * Hv * Wv;
    ssim_gradmap_kernel<T, A><<<grid_v, block, 0, st>>>(
        a.data_ptr<T>(), b.data_ptr<T>(), grad.data_ptr<T>(), static_cast<int>(C),
        static_cast<int>(H), static_cast<int>(W), win, denom, G.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ssim_adjoint_kernel<T, A><<<grid_f, block, 0, st>>>(
        a.data_ptr<T>(), b.data_ptr<T>(), G.data_ptr<A>(), static_cast<int>(H),
        static_cast<int>(W), win, ga.data_ptr<T>(), gb.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {ga, gb};
}

}  // namespace
}  // namespace pyvlmx

TORCH_LIBRARY_IMPL(pyvlmx, CUDA, m) {
  m.impl("ssim", &pyvlmx::ssim_cuda);
  m.impl("_ssim_backward", &pyvlmx::ssim_backward_cuda);
}
