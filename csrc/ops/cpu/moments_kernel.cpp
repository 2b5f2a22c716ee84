// CPU kernels of moments_update and moments_merge (math in csrc/ops/moments.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "common/op_args.h"

namespace pyvlmx {
namespace {

constexpr int64_t kMeanRows = 1024;

// Column means of x (N, D), accumulated in float64 over row blocks (fixed order).
template <typename X>
std::vector<double> column_mean(const X* x, int64_t N, int64_t D) {
  const int64_t blocks = (N + kMeanRows - 1) / kMeanRows;
  std::vector<double> partial(blocks * D, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      double* acc = partial.data() + blk * D;
      const int64_t r1 = std::min(N, (blk + 1) * kMeanRows);
      for (int64_t r = blk * kMeanRows; r < r1; ++r) {
        const X* row = x + r * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<double>(row[d]);
      }
    }
  });
  std::vector<double> mean(D, 0.0);
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int64_t d = 0; d < D; ++d) mean[d] += partial[blk * D + d];
  for (int64_t d = 0; d < D; ++d) mean[d] /= static_cast<double>(N);
  return mean;
}

// M += delta delta^T * w (in place, parallel over rows).
template <typename T>
void rank1_update(T* M, const T* delta, int64_t D, T w) {
  at::parallel_for(0, D, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T di = delta[i] * w;
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) M[i * D + j] += di * delta[j];
    }
  });
}

template <typename T>
void add_inplace(T* M, const T* Mb, int64_t count) {
  at::parallel_for(0, count, 4096, [&](int64_t q0, int64_t q1) {
#pragma omp simd
    for (int64_t q = q0; q < q1; ++q) M[q] += Mb[q];
  });
}

// buf[i, :] = T(x[r0 + i, :]) - mean for i < len.
template <typename X, typename T>
void centre_rows(const X* x, T* buf, const T* mean, int64_t r0, int64_t len, int64_t D) {
  at::parallel_for(0, len, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const X* row = x + (r0 + i) * D;
      T* dst = buf + i * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(row[d]) - mean[d];
    }
  });
}

std::tuple<at::Tensor, at::Tensor> moments_merge_cpu(const at::Tensor& mean_a,
                                                     const at::Tensor& com_a, int64_t count_a,
                                                     const at::Tensor& mean_b,
                                                     const at::Tensor& com_b, int64_t count_b) {
  check_moments_state("moments_merge", mean_a, com_a, count_a, "_a");
  check_moments_state("moments_merge", mean_b, com_b, count_b, "_b");
  TORCH_CHECK_VALUE(mean_a.sizes() == mean_b.sizes() && mean_a.scalar_type() == mean_b.scalar_type(),
                    "moments_merge: states must have the same D and dtype, got ", mean_a.sizes(),
                    "/", mean_a.scalar_type(), " and ", mean_b.sizes(), "/", mean_b.scalar_type());
  PYVLMX_CHECK_CPU("moments_merge", mean_a);
  PYVLMX_CHECK_CPU("moments_merge", mean_b);
  if (count_b == 0) return {mean_a.clone(), com_a.clone()};
  if (count_a == 0) return {mean_b.clone(), com_b.clone()};
  const int64_t D = mean_a.size(0);
  at::Tensor mean = mean_a.contiguous().clone();
  at::Tensor com = com_a.contiguous().clone();
  const at::Tensor mb = mean_b.contiguous(), cb = com_b.contiguous();
  const double n = static_cast<double>(count_a) + static_cast<double>(count_b);
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "moments_merge_cpu", [&] {
    scalar_t* m = mean.data_ptr<scalar_t>();
    scalar_t* M = com.data_ptr<scalar_t>();
    const scalar_t* mbp = mb.data_ptr<scalar_t>();
    const scalar_t* cbp = cb.data_ptr<scalar_t>();
    std::vector<scalar_t> delta(D);
    for (int64_t d = 0; d < D; ++d) delta[d] = mbp[d] - m[d];
    const scalar_t fb = static_cast<scalar_t>(static_cast<double>(count_b) / n);
    const scalar_t w = static_cast<scalar_t>(static_cast<double>(count_a) *
                                             static_cast<double>(count_b) / n);
    for (int64_t d = 0; d < D; ++d) m[d] += delta[d] * fb;
    add_inplace(M, cbp, D * D);
    rank1_update(M, delta.data(), D, w);
  });
  return {mean, com};
}

std::tuple<at::Tensor, at::Tensor> moments_update_cpu(const at::Tensor& x_in,
                                                      const at::Tensor& mean_in,
                                                      const at::Tensor& com_in, int64_t count) {
  check_moments_update(x_in, mean_in, com_in, count);
  PYVLMX_CHECK_CPU("moments_update", x_in);
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
                   "moments_update: x must be float32 or float64 on CPU, got ", x_in.scalar_type());
  const int64_t N = x_in.size(0), D = x_in.size(1);
  if (N == 0) return {mean_in.clone(), com_in.clone()};
  const at::Tensor x = x_in.contiguous();
  at::Tensor mean = mean_in.contiguous().clone();
  at::Tensor com = com_in.contiguous().clone();
  // Rows per chunk: a buffer of about 2^20 entries, at least 64 rows.
  const int64_t R = std::min<int64_t>(N, std::max<int64_t>(64, (int64_t{1} << 20) / std::max<int64_t>(D, 1)));
  at::Tensor buf = at::empty({R, D}, mean.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "moments_update_cpu_x", [&] {
    using X = scalar_t;
    const X* xp = x.data_ptr<X>();
    const std::vector<double> mb = column_mean(xp, N, D);
    AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "moments_update_cpu_state", [&] {
      using T = scalar_t;
      std::vector<T> mbt(D);
      for (int64_t d = 0; d < D; ++d) mbt[d] = static_cast<T>(mb[d]);
      T* bp = buf.data_ptr<T>();
      // com += sum over chunks of Xc^T Xc  (the batch co-moment M_b).
      at::Tensor com_b = at::zeros_like(com);
      for (int64_t r0 = 0; r0 < N; r0 += R) {
        const int64_t len = std::min(R, N - r0);
        centre_rows<X, T>(xp, bp, mbt.data(), r0, len, D);
        const at::Tensor chunk = buf.narrow(0, 0, len);
        com_b.addmm_(chunk.t(), chunk);
      }
      T* m = mean.data_ptr<T>();
      if (count == 0) {  // merging into an empty state: the batch's own moments
        for (int64_t d = 0; d < D; ++d) m[d] = mbt[d];
        com = com_b;
        return;
      }
      // Chan merge of (count, mean, com) with (N, mb, com_b).
      const double n = static_cast<double>(count) + static_cast<double>(N);
      std::vector<T> delta(D);
      for (int64_t d = 0; d < D; ++d) delta[d] = mbt[d] - m[d];
      const T fb = static_cast<T>(static_cast<double>(N) / n);
      for (int64_t d = 0; d < D; ++d) m[d] += delta[d] * fb;
      T* M = com.data_ptr<T>();
      const T* Mb = com_b.data_ptr<T>();
      add_inplace(M, Mb, D * D);
      rank1_update(M, delta.data(), D,
                   static_cast<T>(static_cast<double>(count) * static_cast<double>(N) / n));
    });
  });
  return {mean, com};
}

}  // namespace
}  // namespace pyvlmx

TORCH_LIBRARY_IMPL(pyvlmx, CPU, m) {
  m.impl("moments_update", &pyvlmx::moments_update_cpu);
  m.impl("moments_merge", &pyvlmx::moments_merge_cpu);
}
