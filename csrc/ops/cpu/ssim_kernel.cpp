// CPU kernels of ssim and _ssim_backward (math in csrc/ops/ssim.cpp).
//
// One task per channel plane (at::parallel_for over B*C planes).  A plane is
// filtered separably over its valid region only: a row pass (H x Wv) of the
// five quantities x, y, xx, yy, xy, then a column pass row by row (Hv x Wv)
// that forms the SSIM map and its sum (float64) on the fly.  Inner loops run
// along contiguous rows and vectorise (AVX2 + FMA copies chosen at run time,
// see common/cpu_simd.h).  Filters accumulate in the input dtype, like
// torch's conv2d; map sums in float64.
//
// The backward recomputes the forward maps, forms the four gradient maps
// row by row, and applies the adjoint filter (scatter along columns, then
// along rows) into full-size planes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "common/cpu_simd.h"
#include "common/op_args.h"

namespace pyvlmx {
namespace {

constexpr int K = kSsimTaps;

template <typename T>
struct Consts {
  T w[K];
  T c1, c2;
};

template <typename T>
Consts<T> make_consts(double data_range) {
  double wd[K];
  ssim_window(wd);
  Consts<T> c;
  for (int k = 0; k < K; ++k) c.w[k] = static_cast<T>(wd[k]);
  c.c1 = static_cast<T>((kSsimK1 * data_range) * (kSsimK1 * data_range));
  c.c2 = static_cast<T>((kSsimK2 * data_range) * (kSsimK2 * data_range));
  return c;
}

// Row pass: t[q] (H x Wv) = sum_k w[k] src_q[i, j + k] for the five sources.
template <typename T>
PYVLMX_ALWAYS_INLINE void row_pass(const T* x, const T* y, int64_t H, int64_t W, const T* w,
                                   T* tx, T* ty, T* txx, T* tyy, T* txy, T* prod) {
  const int64_t Wv = W - K + 1;
  T* pxx = prod;
  T* pyy = prod + W;
  T* pxy = prod + 2 * W;
  for (int64_t i = 0; i < H; ++i) {
    const T* xr = x + i * W;
    const T* yr = y + i * W;
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) {
      pxx[j] = xr[j] * xr[j];
      pyy[j] = yr[j] * yr[j];
      pxy[j] = xr[j] * yr[j];
    }
    T* ox = tx + i * Wv;
    T* oy = ty + i * Wv;
    T* oxx = txx + i * Wv;
    T* oyy = tyy + i * Wv;
    T* oxy = txy + i * Wv;
#pragma omp simd
    for (int64_t j = 0; j < Wv; ++j) {
      T a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0;
      for (int k = 0; k < K; ++k) {
        const T wk = w[k];
        a0 += wk * xr[j + k];
        a1 += wk * yr[j + k];
        a2 += wk * pxx[j + k];
        a3 += wk * pyy[j + k];
        a4 += wk * pxy[j + k];
      }
      ox[j] = a0;
      oy[j] = a1;
      oxx[j] = a2;
      oyy[j] = a3;
      oxy[j] = a4;
    }
  }
}

// Column pass of output row i into u (5 x Wv).
template <typename T>
PYVLMX_ALWAYS_INLINE void col_pass_row(int64_t i, int64_t Wv, const T* w, const T* tx,
                                       const T* ty, const T* txx, const T* tyy, const T* txy,
                                       T* u) {
  T* ux = u;
  T* uy = u + Wv;
  T* uxx = u + 2 * Wv;
  T* uyy = u + 3 * Wv;
  T* uxy = u + 4 * Wv;
#pragma omp simd
  for (int64_t j = 0; j < Wv; ++j) {
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0;
    for (int k = 0; k < K; ++k) {
      const T wk = w[k];
      const int64_t o = (i + k) * Wv + j;
      a0 += wk * tx[o];
      a1 += wk * ty[o];
      a2 += wk * txx[o];
      a3 += wk * tyy[o];
      a4 += wk * txy[o];
    }
    ux[j] = a0;
    uy[j] = a1;
    uxx[j] = a2;
    uyy[j] = a3;
    uxy[j] = a4;
  }
}

template <typename T>
struct Scratch {
  std::vector<T> t, prod, u;
  Scratch(int64_t H, int64_t W) : t(5 * H * (W - K + 1)), prod(3 * W), u(5 * (W - K + 1)) {}
};

// Sum of the SSIM map of one plane.
template <typename T>
PYVLMX_ALWAYS_INLINE double plane_forward(const T* x, const T* y, int64_t H, int64_t W,
                                          const Consts<T>& c, Scratch<T>& s) {
  const int64_t Wv = W - K + 1, Hv = H - K + 1, HW = H * Wv;
  T* tx = s.t.data();
  row_pass(x, y, H, W, c.w, tx, tx + HW, tx + 2 * HW, tx + 3 * HW, tx + 4 * HW, s.prod.data());
  double total = 0;
  const T c1 = c.c1, c2 = c.c2;
  for (int64_t i = 0; i < Hv; ++i) {
    col_pass_row(i, Wv, c.w, tx, tx + HW, tx + 2 * HW, tx + 3 * HW, tx + 4 * HW, s.u.data());
    const T* ux = s.u.data();
    const T* uy = ux + Wv;
    const T* uxx = ux + 2 * Wv;
    const T* uyy = ux + 3 * Wv;
    const T* uxy = ux + 4 * Wv;
    double row = 0;
#pragma omp simd reduction(+ : row)
    for (int64_t j = 0; j < Wv; ++j) {
      const T mx = ux[j], my = uy[j];
      const T a1 = T(2) * mx * my + c1;
      const T a2 = T(2) * (uxy[j] - mx * my) + c2;
      const T b1 = mx * mx + my * my + c1;
      const T b2 = (uxx[j] - mx * mx) + (uyy[j] - my * my) + c2;
      row += static_cast<double>((a1 * a2) / (b1 * b2));
    }
    total += row;
  }
  return total;
}

PYVLMX_CLONES_FMA double plane_forward_f(const float* x, const float* y, int64_t H, int64_t W,
                                         const Consts<float>& c, Scratch<float>& s) {
  return plane_forward(x, y, H, W, c, s);
}
PYVLMX_CLONES_FMA double plane_forward_d(const double* x, const double* y, int64_t H, int64_t W,
                                         const Consts<double>& c, Scratch<double>& s) {
  return plane_forward(x, y, H, W, c, s);
}
inline double plane_fw(const float* x, const float* y, int64_t H, int64_t W,
                       const Consts<float>& c, Scratch<float>& s) {
  return plane_forward_f(x, y, H, W, c, s);
}
inline double plane_fw(const double* x, const double* y, int64_t H, int64_t W,
                       const Consts<double>& c, Scratch<double>& s) {
  return plane_forward_d(x, y, H, W, c, s);
}

template <typename T>
struct BackScratch {
  std::vector<T> tbar, full;
  BackScratch(int64_t H, int64_t W) : tbar(4 * H * (W - K + 1)), full(4 * H * W) {}
};

// Gradients of coef * sum(S) for one plane into ga, gb.
template <typename T>
PYVLMX_ALWAYS_INLINE void plane_backward(const T* x, const T* y, int64_t H, int64_t W,
                                         const Consts<T>& c, T coef, Scratch<T>& s,
                                         BackScratch<T>& bs, T* ga, T* gb) {
  const int64_t Wv = W - K + 1, Hv = H - K + 1, HW = H * Wv;
  T* tx = s.t.data();
  row_pass(x, y, H, W, c.w, tx, tx + HW, tx + 2 * HW, tx + 3 * HW, tx + 4 * HW, s.prod.data());
  std::fill(bs.tbar.begin(), bs.tbar.end(), T(0));
  T* bx = bs.tbar.data();
  T* by = bx + HW;
  T* bsq = bx + 2 * HW;
  T* bxy = bx + 3 * HW;
  const T c1 = c.c1, c2 = c.c2;
  for (int64_t i = 0; i < Hv; ++i) {
    col_pass_row(i, Wv, c.w, tx, tx + HW, tx + 2 * HW, tx + 3 * HW, tx + 4 * HW, s.u.data());
    T* ux = s.u.data();
    T* uy = ux + Wv;
    T* uxx = ux + 2 * Wv;
    T* uyy = ux + 3 * Wv;
    T* uxy = ux + 4 * Wv;
    // Overwrite u with the gradient maps (Gx, Gy, Gsq, Gxy) of this row.
#pragma omp simd
    for (int64_t j = 0; j < Wv; ++j) {
      const T mx = ux[j], my = uy[j];
      const T a1 = T(2) * mx * my + c1;
      const T a2 = T(2) * (uxy[j] - mx * my) + c2;
      const T b1 = mx * mx + my * my + c1;
      const T b2 = (uxx[j] - mx * mx) + (uyy[j] - my * my) + c2;
      const T d = b1 * b2;
      const T sv = (a1 * a2) / d;
      const T inv_b1 = T(1) / b1, inv_b2 = T(1) / b2;
      const T gx = T(2) * my * (a2 - a1) / d - T(2) * mx * sv * (inv_b1 - inv_b2);
      const T gy = T(2) * mx * (a2 - a1) / d - T(2) * my * sv * (inv_b1 - inv_b2);
      ux[j] = coef * gx;
      uy[j] = coef * gy;
      uxx[j] = coef * (-sv * inv_b2);
      uyy[j] = coef * (T(2) * a1 / d);
    }
    // Adjoint of the column pass: scatter row i to rows i .. i + K - 1.
    for (int k = 0; k < K; ++k) {
      const T wk = c.w[k];
      const int64_t o = (i + k) * Wv;
#pragma omp simd
      for (int64_t j = 0; j < Wv; ++j) {
        bx[o + j] += wk * ux[j];
        by[o + j] += wk * uy[j];
        bsq[o + j] += wk * uxx[j];
        bxy[o + j] += wk * uyy[j];
      }
    }
  }
  // Adjoint of the row pass: full[i, j + k] += w[k] tbar[i, j].
  const int64_t F = H * W;
  std::fill(bs.full.begin(), bs.full.end(), T(0));
  T* fx = bs.full.data();
  T* fy = fx + F;
  T* fsq = fx + 2 * F;
  T* fxy = fx + 3 * F;
  for (int64_t i = 0; i < H; ++i) {
    for (int k = 0; k < K; ++k) {
      const T wk = c.w[k];
#pragma omp simd
      for (int64_t j = 0; j < Wv; ++j) {
        fx[i * W + j + k] += wk * bx[i * Wv + j];
        fy[i * W + j + k] += wk * by[i * Wv + j];
        fsq[i * W + j + k] += wk * bsq[i * Wv + j];
        fxy[i * W + j + k] += wk * bxy[i * Wv + j];
      }
    }
  }
#pragma omp simd
  for (int64_t q = 0; q < F; ++q) {
    ga[q] = fx[q] + T(2) * x[q] * fsq[q] + y[q] * fxy[q];
    gb[q] = fy[q] + T(2) * y[q] * fsq[q] + x[q] * fxy[q];
  }
}

PYVLMX_CLONES_FMA void plane_backward_f(const float* x, const float* y, int64_t H, int64_t W,
                                        const Consts<float>& c, float coef, Scratch<float>& s,
                                        BackScratch<float>& bs, float* ga, float* gb) {
  plane_backward(x, y, H, W, c, coef, s, bs, ga, gb);
}
PYVLMX_CLONES_FMA void plane_backward_d(const double* x, const double* y, int64_t H, int64_t W,
                                        const Consts<double>& c, double coef,
                                        Scratch<double>& s, BackScratch<double>& bs, double* ga,
                                        double* gb) {
  plane_backward(x, y, H, W, c, coef, s, bs, ga, gb);
}
inline void plane_bw(const float* x, const float* y, int64_t H, int64_t W,
                     const Consts<float>& c, float coef, Scratch<float>& s,
                     BackScratch<float>& bs, float* ga, float* gb) {
  plane_backward_f(x, y, H, W, c, coef, s, bs, ga, gb);
}
inline void plane_bw(const double* x, const double* y, int64_t H, int64_t W,
                     const Consts<double>& c, double coef, Scratch<double>& s,
                     BackScratch<double>& bs, double* ga, double* gb) {
  plane_backward_d(x, y, H, W, c, coef, s, bs, ga, gb);
}

void check_cpu(const char* op, const at::Tensor& a) {
  PYVLMX_CHECK_CPU("ssim", a);
  TORCH_CHECK_TYPE(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble, op,
                   ": a must be float32 or float64 on CPU, got ", a.scalar_type());
}

at::Tensor ssim_cpu(const at::Tensor& a_in, const at::Tensor& b_in, double data_range) {
  check_image_pair("ssim", a_in, b_in, data_range);
  check_ssim_size(a_in);
  check_cpu("ssim", a_in);
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t B = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
  const int64_t P = B * C;
  at::Tensor out = at::zeros({B}, a.options());
  if (P == 0) return out;
  const int64_t Hv = H - K + 1, Wv = W - K + 1;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "ssim_cpu", [&] {
    const Consts<scalar_t> c = make_consts<scalar_t>(data_range);
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    std::vector<double> plane_sum(P, 0.0);
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
      Scratch<scalar_t> s(H, W);
      for (int64_t p = p0; p < p1; ++p)
        plane_sum[p] = plane_fw(ap + p * H * W, bp + p * H * W, H, W, c, s);
    });
    scalar_t* o = out.data_ptr<scalar_t>();
    const double denom = static_cast<double>(C) * static_cast<double>(Hv * Wv);
    for (int64_t i = 0; i < B; ++i) {
      double s = 0;
      for (int64_t ch = 0; ch < C; ++ch) s += plane_sum[i * C + ch];
      o[i] = static_cast<scalar_t>(s / denom);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> ssim_backward_cpu(const at::Tensor& grad_in,
                                                     const at::Tensor& a_in,
                                                     const at::Tensor& b_in, double data_range) {
  check_image_pair("_ssim_backward", a_in, b_in, data_range);
  check_ssim_size(a_in);
  check_cpu("_ssim_backward", a_in);
  check_image_grad("_ssim_backward", grad_in, a_in);
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous(), grad = grad_in.contiguous();
  const int64_t B = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
  const int64_t P = B * C;
  at::Tensor ga = at::empty_like(a, at::MemoryFormat::Contiguous);
  at::Tensor gb = at::empty_like(b, at::MemoryFormat::Contiguous);
  if (P == 0) return {ga, gb};
  const int64_t Hv = H - K + 1, Wv = W - K + 1;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "ssim_backward_cpu", [&] {
    const Consts<scalar_t> c = make_consts<scalar_t>(data_range);
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* gap = ga.data_ptr<scalar_t>();
    scalar_t* gbp = gb.data_ptr<scalar_t>();
    const double denom = static_cast<double>(C) * static_cast<double>(Hv * Wv);
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
      Scratch<scalar_t> s(H, W);
      BackScratch<scalar_t> bs(H, W);
      for (int64_t p = p0; p < p1; ++p) {
        const scalar_t coef = static_cast<scalar_t>(static_cast<double>(gp[p / C]) / denom);
        const int64_t off = p * H * W;
        plane_bw(ap + off, bp + off, H, W, c, coef, s, bs, gap + off, gbp + off);
      }
    });
  });
  return {ga, gb};
}

}  // namespace
}  // namespace pyvlmx

TORCH_LIBRARY_IMPL(pyvlmx, CPU, m) {
  m.impl("ssim", &pyvlmx::ssim_cpu);
  m.impl("_ssim_backward", &pyvlmx::ssim_backward_cpu);
}
