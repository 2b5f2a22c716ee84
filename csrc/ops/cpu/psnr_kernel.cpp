// CPU kernels of psnr and _psnr_backward (math in csrc/ops/psnr.cpp).
// Tasks of (image, chunk) run under at::parallel_for; per-task sums of
// squares (float64) are combined in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "common/op_args.h"

namespace pyvlmx {
namespace {

constexpr int64_t kChunk = 16384;

template <typename T>
std::vector<double> mse_per_image(const T* a, const T* b, int64_t B, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(B * chunks, 0.0);
  at::parallel_for(0, B * chunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t off = (t / chunks) * n + (t % chunks) * kChunk;
      const int64_t len = std::min(kChunk, n - (t % chunks) * kChunk);
      const T* ap = a + off;
      const T* bp = b + off;
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < len; ++i) {
        const double d = static_cast<double>(ap[i]) - static_cast<double>(bp[i]);
        s += d * d;
      }
      partial[t] = s;
    }
  });
  std::vector<double> mse(B, 0.0);
  for (int64_t i = 0; i < B; ++i) {
    double s = 0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[i * chunks + c];
    mse[i] = n > 0 ? s / static_cast<double>(n) : std::numeric_limits<double>::quiet_NaN();
  }
  return mse;
}

template <typename T>
void scaled_diff(const T* a, const T* b, T* ga, T* gb, int64_t len, T c) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const T v = c * (a[i] - b[i]);
    ga[i] = v;
    gb[i] = -v;
  }
}

void check_cpu(const char* op, const at::Tensor& a) {
  PYVLMX_CHECK_CPU("psnr", a);
  TORCH_CHECK_TYPE(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble, op,
                   ": a must be float32 or float64 on CPU, got ", a.scalar_type());
}

at::Tensor psnr_cpu(const at::Tensor& a_in, const at::Tensor& b_in, double data_range) {
  check_image_pair("psnr", a_in, b_in, data_range);
  check_cpu("psnr", a_in);
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t B = a.size(0);
  const int64_t n = B > 0 ? a.numel() / B : 0;
  at::Tensor out = at::empty({B}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "psnr_cpu", [&] {
    const std::vector<double> mse = mse_per_image(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), B, n);
    scalar_t* o = out.data_ptr<scalar_t>();
    const double r2 = data_range * data_range;
    for (int64_t i = 0; i < B; ++i) o[i] = static_cast<scalar_t>(10.0 * std::log10(r2 / mse[i]));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> psnr_backward_cpu(const at::Tensor& grad_in,
                                                     const at::Tensor& a_in,
                                                     const at::Tensor& b_in, double data_range) {
  check_image_pair("_psnr_backward", a_in, b_in, data_range);
  check_cpu("_psnr_backward", a_in);
  check_image_grad("_psnr_backward", grad_in, a_in);
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous(), grad = grad_in.contiguous();
  const int64_t B = a.size(0);
  const int64_t n = B > 0 ? a.numel() / B : 0;
  at::Tensor ga = at::empty_like(a, at::MemoryFormat::Contiguous);
  at::Tensor gb = at::empty_like(b, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "psnr_backward_cpu", [&] {
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* gap = ga.data_ptr<scalar_t>();
    scalar_t* gbp = gb.data_ptr<scalar_t>();
    const std::vector<double> mse = mse_per_image(ap, bp, B, n);
    std::vector<double> coef(B, 0.0);
    for (int64_t i = 0; i < B; ++i)
      coef[i] = mse[i] > 0 ? -20.0 * static_cast<double>(gp[i]) /
                                 (std::log(10.0) * static_cast<double>(n) * mse[i])
                           : 0.0;
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    at::parallel_for(0, B * chunks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t off = (t / chunks) * n + (t % chunks) * kChunk;
        const int64_t len = std::min(kChunk, n - (t % chunks) * kChunk);
        scaled_diff(ap + off, bp + off, gap + off, gbp + off, len,
                    static_cast<scalar_t>(coef[t / chunks]));
      }
    });
  });
  return {ga, gb};
}

}  // namespace
}  // namespace pyvlmx

TORCH_LIBRARY_IMPL(pyvlmx, CPU, m) {
  m.impl("psnr", &pyvlmx::psnr_cpu);
  m.impl("_psnr_backward", &pyvlmx::psnr_backward_cpu);
}
