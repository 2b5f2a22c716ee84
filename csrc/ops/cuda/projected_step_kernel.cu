// CUDA kernel of projected_step (math and traffic in csrc/ops/projected_step.cpp).
//
// Grid (gx, B): blockIdx.y is the sample, so per-sample scalars are uniform
// in a block; blocks stride over the sample's elements with 16-byte vector
// loads/stores when the sizes and pointers allow.  Per-block partial sums
// (float64) and maxima go to a small buffer that one tiny kernel combines in
// a fixed order (deterministic).  Arithmetic in at::opmath_type (float for
// half/bfloat16), reductions in double.  Everything runs on the current
// stream under the device guard of x.
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
__device__ __forceinline__ T sign_of(T v) {
  return static_cast<T>(v > T(0)) - static_cast<T>(v < T(0));
}

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* p, T (&out)[VEC]) {
  if constexpr (VEC == 1) {
    out[0] = p[0];
  } else {
    const Packed<T, VEC> v = *reinterpret_cast<const Packed<T, VEC>*>(p);
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = v.v[k];
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const T (&in)[VEC]) {
  if constexpr (VEC == 1) {
    p[0] = in[0];
  } else {
    Packed<T, VEC> v;
#pragma unroll
    for (int k = 0; k < VEC; ++k) v.v[k] = in[k];
    *reinterpret_cast<Packed<T, VEC>*>(p) = v;
  }
}

// Reduction pass of the L2 modes: partial[(b * gx + blk) * 3 + k].
template <typename T, int VEC>
__global__ void reduce_kernel(const T* __restrict__ x, const T* __restrict__ x0,
                              const T* __restrict__ g, const double* __restrict__ a, int64_t n,
                              int step, int norm, double* __restrict__ partial) {
  using opmath_t = at::opmath_type<T>;
  __shared__ double scratch[32];
  const int64_t b = blockIdx.y;
  const int64_t base = b * n;
  const opmath_t ab = static_cast<opmath_t>(a[b]);
  double s0 = 0, s1 = 0, s2 = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * VEC;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; i < n;
       i += stride) {
    T xv[VEC], x0v[VEC], gv[VEC];
    load_vec<T, VEC>(x + base + i, xv);
    load_vec<T, VEC>(x0 + base + i, x0v);
    load_vec<T, VEC>(g + base + i, gv);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const opmath_t gi = static_cast<opmath_t>(gv[k]);
      if (step == static_cast<int>(StepMode::L2)) {
        const double gd = static_cast<double>(gi);
        s0 += gd * gd;
        if (norm == static_cast<int>(NormMode::L2)) {
          const double u = static_cast<double>(static_cast<opmath_t>(xv[k])) -
                           static_cast<double>(static_cast<opmath_t>(x0v[k]));
          s1 += u * gd;
          s2 += u * u;
        }
      } else {
        const opmath_t d = step == static_cast<int>(StepMode::Sign) ? sign_of(gi) : gi;
        const double z = static_cast<double>(static_cast<opmath_t>(xv[k]) + ab * d -
                                             static_cast<opmath_t>(x0v[k]));
        s2 += z * z;
      }
    }
  }
  s0 = block_sum(s0, scratch);
  s1 = block_sum(s1, scratch);
  s2 = block_sum(s2, scratch);
  if (threadIdx.x == 0) {
    double* p = partial + (b * gridDim.x + blockIdx.x) * 3;
    p[0] = s0;
    p[1] = s1;
    p[2] = s2;
  }
}

// coef[2b] = effective step, coef[2b + 1] = eps (linf) or L2 scale factor.
__global__ void coef_kernel(const double* __restrict__ a, const double* __restrict__ e,
                            const double* __restrict__ partial, int64_t B, int gx, int step,
                            int norm, double* __restrict__ coef) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  double a_eff = a[b], p = norm == static_cast<int>(NormMode::Linf) ? e[b] : 1.0;
  if (partial != nullptr) {
    double gg = 0, ug = 0, zz = 0;
    for (int k = 0; k < gx; ++k) {
      const double* q = partial + (b * gx + k) * 3;
      gg += q[0];
      ug += q[1];
      zz += q[2];
    }
    if (step == static_cast<int>(StepMode::L2)) {
      const double gn = sqrt(gg);
      a_eff = gn > 0 ? a[b] / gn : 0.0;
      zz = fmax(0.0, zz + 2.0 * a_eff * ug + a_eff * a_eff * gg);
    }
    if (norm == static_cast<int>(NormMode::L2)) {
      const double zn = sqrt(zz);
      p = zn > e[b] ? e[b] / zn : 1.0;
    }
  }
  coef[2 * b] = a_eff;
  coef[2 * b + 1] = p;
}

template <typename T, int VEC, int S, int N, bool DIST>
__global__ void main_kernel(const T* __restrict__ x, const T* __restrict__ x0,
                            const T* __restrict__ g, T* __restrict__ out,
                            const double* __restrict__ coef, double a_u, double p_u, int64_t n,
                            double* __restrict__ dpart) {
  using opmath_t = at::opmath_type<T>;
  __shared__ double scratch[32];
  const int64_t b = blockIdx.y;
  const int64_t base = b * n;
  // Per-sample coefficients, or one uniform pair passed by value (no device array).
  const opmath_t a = static_cast<opmath_t>(coef != nullptr ? coef[2 * b] : a_u);
  const opmath_t p = static_cast<opmath_t>(coef != nullptr ? coef[2 * b + 1] : p_u);
  double mx = 0, ss = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * VEC;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; i < n;
       i += stride) {
    T xv[VEC], x0v[VEC], gv[VEC], ov[VEC];
    load_vec<T, VEC>(x + base + i, xv);
    load_vec<T, VEC>(x0 + base + i, x0v);
    load_vec<T, VEC>(g + base + i, gv);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const opmath_t gi = static_cast<opmath_t>(gv[k]);
      const opmath_t d = (S == static_cast<int>(StepMode::Sign)) ? sign_of(gi) : gi;
      const opmath_t xo = static_cast<opmath_t>(x0v[k]);
      opmath_t z = static_cast<opmath_t>(xv[k]) + a * d - xo;
      if (N == static_cast<int>(NormMode::Linf)) z = fmin(fmax(z, -p), p);
      if (N == static_cast<int>(NormMode::L2)) z = z * p;
      opmath_t o = fmin(fmax(xo + z, opmath_t(0)), opmath_t(1));
      ov[k] = static_cast<T>(o);
      if (DIST) {
        const double df = fabs(static_cast<double>(static_cast<opmath_t>(ov[k]) - xo));
        mx = fmax(mx, df);
        ss += df * df;
      }
    }
    store_vec<T, VEC>(out + base + i, ov);
  }
  if (DIST) {
    mx = block_max(mx, scratch);
    ss = block_sum(ss, scratch);
    if (threadIdx.x == 0) {
      dpart[(b * gridDim.x + blockIdx.x) * 2] = mx;
      dpart[(b * gridDim.x + blockIdx.x) * 2 + 1] = ss;
    }
  }
}

template <typename T>
__global__ void dist_kernel(const double* __restrict__ dpart, int64_t B, int gx,
                            T* __restrict__ linf, T* __restrict__ l2) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  double mx = 0, ss = 0;
  for (int k = 0; k < gx; ++k) {
    mx = fmax(mx, dpart[(b * gx + k) * 2]);
    ss += dpart[(b * gx + k) * 2 + 1];
  }
  linf[b] = static_cast<T>(mx);
  l2[b] = static_cast<T>(sqrt(ss));
}

template <typename T, int VEC, int S, int N>
void launch_main_n(bool dist, dim3 grid, cudaStream_t st, const T* x, const T* x0, const T* g,
                   T* out, const double* coef, double a_u, double p_u, int64_t n, double* dpart) {
  if (dist)
    main_kernel<T, VEC, S, N, true><<<grid, kThreads, 0, st>>>(x, x0, g, out, coef, a_u, p_u, n, dpart);
  else
    main_kernel<T, VEC, S, N, false><<<grid, kThreads, 0, st>>>(x, x0, g, out, coef, a_u, p_u, n, dpart);
}

template <typename T, int VEC>
void launch_main(StepMode sm, NormMode nm, bool dist, dim3 grid, cudaStream_t st, const T* x,
                 const T* x0, const T* g, T* out, const double* coef, double a_u, double p_u,
                 int64_t n, double* dpart) {
  // step = l2 runs the raw kernel with the effective step a / ||g||.
  const bool sign = sm == StepMode::Sign;
#define PYVLMX_LAUNCH_N(S)                                                              \
  switch (nm) {                                                                         \
    case NormMode::Linf: launch_main_n<T, VEC, S, 0>(dist, grid, st, x, x0, g, out, coef, a_u, p_u, n, dpart); break; \
    case NormMode::L2: launch_main_n<T, VEC, S, 1>(dist, grid, st, x, x0, g, out, coef, a_u, p_u, n, dpart); break;   \
    case NormMode::None: launch_main_n<T, VEC, S, 2>(dist, grid, st, x, x0, g, out, coef, a_u, p_u, n, dpart); break; \
  }
  if (sign) {
    PYVLMX_LAUNCH_N(1)
  } else {
    PYVLMX_LAUNCH_N(0)
  }
#undef PYVLMX_LAUNCH_N
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> projected_step_cuda(
    const at::Tensor& x_in, const at::Tensor& x0_in, const at::Tensor& g_in,
    const at::Tensor& step_size, const at::Tensor& eps, c10::string_view step,
    c10::string_view norm, bool return_dist) {
  const StepMode sm = parse_step_mode(std::string(step));
  const NormMode nm = parse_norm_mode(std::string(norm));
  check_projected_step(x_in, x0_in, g_in, step_size, eps);
  PYVLMX_CHECK_CUDA("projected_step", x_in);
  c10::cuda::OptionalCUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), x0 = x0_in.contiguous(), g = g_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t B = x.size(0);
  const int64_t n = B > 0 ? x.numel() / B : 0;
  at::Tensor linf = at::empty({return_dist ? B : 0}, x.options());
  at::Tensor l2 = at::empty({return_dist ? B : 0}, x.options());
  if (B == 0) return {out, linf, l2};
  TORCH_CHECK_VALUE(B <= 65535, "projected_step: at most 65535 samples per call on CUDA, got B=",
                    B);
  if (n == 0) {
    if (return_dist) {
      linf.zero_();
      l2.zero_();
    }
    return {out, linf, l2};
  }
  const auto dopt = x.options().dtype(at::kDouble);
  // Per-sample scalars that live on the CPU and are all equal (floats from the
  // Python wrapper) go to the kernel by value: no host-to-device copy and, for
  // the fused modes, a single kernel launch.
  bool uniform = false;
  double a_u = 0, e_u = 0;
  if (step_size.device().is_cpu() && eps.device().is_cpu()) {
    const at::Tensor ac = step_size.to(at::kDouble).contiguous();
    const at::Tensor ec = eps.to(at::kDouble).contiguous();
    const double* ap = ac.data_ptr<double>();
    const double* ep = ec.data_ptr<double>();
    a_u = ap[0];
    e_u = ep[0];
    uniform = true;
    for (int64_t b = 1; b < B && uniform; ++b) uniform = ap[b] == a_u && ep[b] == e_u;
  }
  const bool need_reduce = sm == StepMode::L2 || nm == NormMode::L2;
  at::Tensor a_t, e_t;
  if (!uniform || need_reduce) {
    a_t = step_size.to(dopt, /*non_blocking=*/true).contiguous();
    e_t = eps.to(dopt, /*non_blocking=*/true).contiguous();
  }
  cudaStream_t st = current_stream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "projected_step_cuda", [&] {
    using T = scalar_t;
    constexpr int kVec = 16 / sizeof(T);
    const T* xp = x.data_ptr<T>();
    const T* x0p = x0.data_ptr<T>();
    const T* gp = g.data_ptr<T>();
    T* op = out.data_ptr<T>();
    const bool aligned = n % kVec == 0 && reinterpret_cast<uintptr_t>(xp) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(x0p) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(gp) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(op) % 16 == 0;
    const int vec = aligned ? kVec : 1;
    const int64_t per_block = static_cast<int64_t>(kThreads) * vec;
    const int64_t want = std::max<int64_t>(1, (static_cast<int64_t>(sm_count()) * 8 + B - 1) / B);
    const int gx = static_cast<int>(std::min<int64_t>(ceil_div<int64_t>(n, per_block), want));
    const dim3 grid(gx, static_cast<unsigned>(B));

    at::Tensor partial;
    const double* partial_p = nullptr;
    if (sm == StepMode::L2 || nm == NormMode::L2) {
      partial = at::empty({B * gx * 3}, dopt);
      if (aligned)
        reduce_kernel<T, kVec><<<grid, kThreads, 0, st>>>(xp, x0p, gp, a_t.data_ptr<double>(), n,
                                                          static_cast<int>(sm), static_cast<int>(nm),
                                                          partial.data_ptr<double>());
      else
        reduce_kernel<T, 1><<<grid, kThreads, 0, st>>>(xp, x0p, gp, a_t.data_ptr<double>(), n,
                                                       static_cast<int>(sm), static_cast<int>(nm),
                                                       partial.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      partial_p = partial.data_ptr<double>();
    }
    at::Tensor coef;
    const double* coef_p = nullptr;
    if (!(uniform && !need_reduce)) {
      coef = at::empty({2 * B}, dopt);
      coef_kernel<<<static_cast<unsigned>(ceil_div<int64_t>(B, 128)), 128, 0, st>>>(
          a_t.data_ptr<double>(), e_t.data_ptr<double>(), partial_p, B, gx, static_cast<int>(sm),
          static_cast<int>(nm), coef.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      coef_p = coef.data_ptr<double>();
    }
    const double p_u = nm == NormMode::Linf ? e_u : 1.0;
    at::Tensor dpart = at::empty({return_dist ? B * gx * 2 : 0}, dopt);
    double* dp = return_dist ? dpart.data_ptr<double>() : nullptr;
    if (aligned)
      launch_main<T, kVec>(sm, nm, return_dist, grid, st, xp, x0p, gp, op, coef_p, a_u, p_u, n, dp);
    else
      launch_main<T, 1>(sm, nm, return_dist, grid, st, xp, x0p, gp, op, coef_p, a_u, p_u, n, dp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (return_dist) {
      dist_kernel<T><<<static_cast<unsigned>(ceil_div<int64_t>(B, 128)), 128, 0, st>>>(
          dp, B, gx, linf.data_ptr<T>(), l2.data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {out, linf, l2};
}

}  // namespace
}  // namespace pyvlmx

TORCH_LIBRARY_IMPL(pyvlmx, CUDA, m) {
  m.impl("projected_step", &pyvlmx::projected_step_cuda);
}
