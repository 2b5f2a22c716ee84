// CPU kernel of projected_step (see csrc/ops/projected_step.cpp for the math).
//
// Work is split into tasks of (sample, chunk of kChunk elements) spread over
// the OpenMP pool by at::parallel_for; inner loops are `omp simd` so that the
// compiler emits packed min/max/compare code.  Per-sample reductions are
// written per task and combined in a fixed order: results do not depend on
// the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/checks.h"
#include "common/op_args.h"

namespace pyvlmx {
namespace {

constexpr int64_t kChunk = 16384;

struct Tasks {
  int64_t B, n, chunks;
  int64_t count() const { return B * chunks; }
  int64_t begin(int64_t t) const { return (t / chunks) * n + (t % chunks) * kChunk; }
  int64_t len(int64_t t) const { return std::min(kChunk, n - (t % chunks) * kChunk); }
  int64_t sample(int64_t t) const { return t / chunks; }
};

template <typename T>
inline T sign_of(T v) {
  return static_cast<T>(v > T(0)) - static_cast<T>(v < T(0));
}

// ---- reduction pass (L2 modes) ---------------------------------------------
// partial[t] = (sum g^2, sum (x-x0) g, sum (x-x0)^2)       step = l2
//            = (0, 0, sum (x + a d - x0)^2)                step != l2, norm = l2
template <typename T>
void reduce_pass(const T* x, const T* x0, const T* g, const double* a, const Tasks& tk,
                 StepMode sm, NormMode nm, std::vector<double>& partial) {
  at::parallel_for(0, tk.count(), 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t off = tk.begin(t), len = tk.len(t);
      const T* xp = x + off;
      const T* x0p = x0 + off;
      const T* gp = g + off;
      double s0 = 0, s1 = 0, s2 = 0;
      if (sm == StepMode::L2) {
        if (nm == NormMode::L2) {
#pragma omp simd reduction(+ : s0, s1, s2)
          for (int64_t i = 0; i < len; ++i) {
            const double gi = gp[i], ui = static_cast<double>(xp[i]) - x0p[i];
            s0 += gi * gi;
            s1 += ui * gi;
            s2 += ui * ui;
          }
        } else {
#pragma omp simd reduction(+ : s0)
          for (int64_t i = 0; i < len; ++i) {
            const double gi = gp[i];
            s0 += gi * gi;
          }
        }
      } else {
        const T ab = static_cast<T>(a[tk.sample(t)]);
        if (sm == StepMode::Sign) {
#pragma omp simd reduction(+ : s2)
          for (int64_t i = 0; i < len; ++i) {
            const double z = xp[i] + ab * sign_of(gp[i]) - x0p[i];
            s2 += z * z;
          }
        } else {
#pragma omp simd reduction(+ : s2)
          for (int64_t i = 0; i < len; ++i) {
            const double z = xp[i] + ab * gp[i] - x0p[i];
            s2 += z * z;
          }
        }
      }
      partial[3 * t] = s0;
      partial[3 * t + 1] = s1;
      partial[3 * t + 2] = s2;
    }
  });
}

// ---- main pass ---------------------------------------------------------------
// a: effective step (includes 1 / ||g|| for step = l2); p: eps (linf) or the
// L2 scale factor (l2).
template <typename T, int S, int N, bool DIST>
void main_chunk(const T* __restrict__ x, const T* __restrict__ x0, const T* __restrict__ g,
                T* __restrict__ out, int64_t len, T a, T p, double& mx_out, double& ss_out) {
  double mx = 0, ss = 0;
#pragma omp simd reduction(max : mx) reduction(+ : ss)
  for (int64_t i = 0; i < len; ++i) {
    const T gi = g[i];
    const T d = (S == static_cast<int>(StepMode::Sign)) ? sign_of(gi) : gi;
    T z = x[i] + a * d - x0[i];
    if (N == static_cast<int>(NormMode::Linf)) z = std::min(std::max(z, -p), p);
    if (N == static_cast<int>(NormMode::L2)) z = z * p;
    T o = x0[i] + z;
    o = std::min(std::max(o, T(0)), T(1));
    out[i] = o;
    if (DIST) {
      const T df = o - x0[i];
      const double ad = std::abs(static_cast<double>(df));
      mx = std::max(mx, ad);
      ss += ad * ad;
    }
  }
  mx_out = mx;
  ss_out = ss;
}

template <typename T, int S, int N, bool DIST>
void main_pass_t(const T* x, const T* x0, const T* g, T* out, const std::vector<double>& a_eff,
                 const std::vector<double>& p, const Tasks& tk, std::vector<double>& dist) {
  at::parallel_for(0, tk.count(), 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t off = tk.begin(t), b = tk.sample(t);
      double mx = 0, ss = 0;
      main_chunk<T, S, N, DIST>(x + off, x0 + off, g + off, out + off, tk.len(t),
                                static_cast<T>(a_eff[b]), static_cast<T>(p[b]), mx, ss);
      if (DIST) {
        dist[2 * t] = mx;
        dist[2 * t + 1] = ss;
      }
    }
  });
}

template <typename T, int S, int N>
void main_pass_n(bool dist_on, const T* x, const T* x0, const T* g, T* out,
                 const std::vector<double>& a_eff, const std::vector<double>& p, const Tasks& tk,
                 std::vector<double>& dist) {
  if (dist_on)
    main_pass_t<T, S, N, true>(x, x0, g, out, a_eff, p, tk, dist);
  else
    main_pass_t<T, S, N, false>(x, x0, g, out, a_eff, p, tk, dist);
}

template <typename T, int S>
void main_pass_s(NormMode nm, bool dist_on, const T* x, const T* x0, const T* g, T* out,
                 const std::vector<double>& a_eff, const std::vector<double>& p, const Tasks& tk,
                 std::vector<double>& dist) {
  switch (nm) {
    case NormMode::Linf:
      main_pass_n<T, S, 0>(dist_on, x, x0, g, out, a_eff, p, tk, dist);
      break;
    case NormMode::L2:
      main_pass_n<T, S, 1>(dist_on, x, x0, g, out, a_eff, p, tk, dist);
      break;
    case NormMode::None:
      main_pass_n<T, S, 2>(dist_on, x, x0, g, out, a_eff, p, tk, dist);
      break;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> projected_step_cpu(
    const at::Tensor& x_in, const at::Tensor& x0_in, const at::Tensor& g_in,
    const at::Tensor& step_size, const at::Tensor& eps, c10::string_view step,
    c10::string_view norm, bool return_dist) {
  const StepMode sm = parse_step_mode(std::string(step));
  const NormMode nm = parse_norm_mode(std::string(norm));
  check_projected_step(x_in, x0_in, g_in, step_size, eps);
  PYVLMX_CHECK_CPU("projected_step", x_in);
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
                   "projected_step: x must be float32 or float64 on CPU, got ",
                   x_in.scalar_type());
  const at::Tensor x = x_in.contiguous(), x0 = x0_in.contiguous(), g = g_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t B = x.size(0);
  const int64_t n = B > 0 ? x.numel() / B : 0;
  at::Tensor linf = at::empty({return_dist ? B : 0}, x.options());
  at::Tensor l2 = at::empty({return_dist ? B : 0}, x.options());
  if (B == 0) return {out, linf, l2};

  const at::Tensor a_t = step_size.to(at::kDouble).contiguous();
  const at::Tensor e_t = eps.to(at::kDouble).contiguous();
  const double* a = a_t.data_ptr<double>();
  const double* e = e_t.data_ptr<double>();
  const Tasks tk{B, n, (n + kChunk - 1) / kChunk};

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "projected_step_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* x0p = x0.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();

    std::vector<double> a_eff(a, a + B), p(B, 1.0);
    if (nm == NormMode::Linf) p.assign(e, e + B);
    if (sm == StepMode::L2 || nm == NormMode::L2) {
      std::vector<double> partial(3 * tk.count(), 0.0);
      reduce_pass<scalar_t>(xp, x0p, gp, a, tk, sm, nm, partial);
      for (int64_t b = 0; b < B; ++b) {
        double gg = 0, ug = 0, zz = 0;
        for (int64_t c = 0; c < tk.chunks; ++c) {
          const int64_t t = b * tk.chunks + c;
          gg += partial[3 * t];
          ug += partial[3 * t + 1];
          zz += partial[3 * t + 2];
        }
        if (sm == StepMode::L2) {
          const double gn = std::sqrt(gg);
          a_eff[b] = gn > 0 ? a[b] / gn : 0.0;
          // zz holds ||x - x0||^2 here; expand ||x - x0 + a_eff g||^2.
          zz = std::max(0.0, zz + 2.0 * a_eff[b] * ug + a_eff[b] * a_eff[b] * gg);
        }
        if (nm == NormMode::L2) {
          const double zn = std::sqrt(zz);
          p[b] = zn > e[b] ? e[b] / zn : 1.0;
        }
      }
    }
    std::vector<double> dist(return_dist ? 2 * tk.count() : 0, 0.0);
    // The raw kernel serves step = l2 with a_eff = a / ||g||.
    if (sm == StepMode::Sign)
      main_pass_s<scalar_t, 1>(nm, return_dist, xp, x0p, gp, op, a_eff, p, tk, dist);
    else
      main_pass_s<scalar_t, 0>(nm, return_dist, xp, x0p, gp, op, a_eff, p, tk, dist);
    if (return_dist) {
      scalar_t* lp = linf.data_ptr<scalar_t>();
      scalar_t* l2p = l2.data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) {
        double mx = 0, ss = 0;
        for (int64_t c = 0; c < tk.chunks; ++c) {
          const int64_t t = b * tk.chunks + c;
          mx = std::max(mx, dist[2 * t]);
          ss += dist[2 * t + 1];
        }
        lp[b] = static_cast<scalar_t>(mx);
        l2p[b] = static_cast<scalar_t>(std::sqrt(ss));
      }
    }
  });
  return {out, linf, l2};
}

}  // namespace
}  // namespace pyvlmx

TORCH_LIBRARY_IMPL(pyvlmx, CPU, m) {
  m.impl("projected_step", &pyvlmx::projected_step_cpu);
}
