// Streaming moments: running (count, mean, co-moment) of (N, D) samples.
//
// moments_update(x (N, D), mean (D,), comoment (D, D), count) -> (mean', comoment')
//   batch mean m_b = (1/N) sum_i x_i, batch co-moment M_b = sum_i (x_i - m_b)(x_i - m_b)^T,
//   merged with the state by Chan, Golub, LeVeque's parallel formula:
// moments_merge(mean_a, M_a, n_a, mean_b, M_b, n_b) -> (mean, M)
//   n = n_a + n_b, delta = mean_b - mean_a,
//   mean = mean_a + delta n_b / n,  M = M_a + M_b + delta delta^T n_a n_b / n.
// The covariance is M / (n - 1).  Memory O(D^2) for any number of samples.
//
// Computed in the state's dtype (x is converted chunk by chunk, never as a
// whole).  The kernels fuse the column mean, the conversion and centring of
// row chunks (a small reusable buffer) and the rank-1 merge; the product
// X_c^T X_c of each chunk goes to the BLAS (CPU) or cuBLAS (CUDA) GEMM through
// at::addmm_, which no hand-written loop here would beat.
#include <torch/library.h>

#include "common/checks.h"
#include "common/op_args.h"

namespace pyvlmx {

void check_moments_state(const char* op, const at::Tensor& mean, const at::Tensor& comoment,
                         int64_t count, const char* suffix) {
  TORCH_CHECK_TYPE(mean.scalar_type() == at::kFloat || mean.scalar_type() == at::kDouble, op,
                   ": mean", suffix, " must be float32 or float64, got ", mean.scalar_type());
  TORCH_CHECK_VALUE(mean.dim() == 1, op, ": mean", suffix, " must have shape (D,), got ",
                    mean.sizes());
  const int64_t D = mean.size(0);
  TORCH_CHECK_VALUE(comoment.dim() == 2 && comoment.size(0) == D && comoment.size(1) == D, op,
                    ": comoment", suffix, " must have shape (", D, ", ", D, "), got ",
                    comoment.sizes());
  TORCH_CHECK_TYPE(comoment.scalar_type() == mean.scalar_type(), op, ": comoment", suffix,
                   " must have the dtype of mean", suffix, " (", mean.scalar_type(), "), got ",
                   comoment.scalar_type());
  TORCH_CHECK_VALUE(comoment.device() == mean.device(), op, ": comoment", suffix,
                    " must be on the device of mean", suffix, " (", mean.device(), "), got ",
                    comoment.device());
  TORCH_CHECK_VALUE(count >= 0, op, ": count", suffix, " must be >= 0, got ", count);
}

void check_moments_update(const at::Tensor& x, const at::Tensor& mean,
                          const at::Tensor& comoment, int64_t count) {
  check_moments_state("moments_update", mean, comoment, count, "");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()),
                   "moments_update: x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == mean.size(0), "moments_update: x must have shape (N, ",
                    mean.size(0), "), got ", x.sizes());
  TORCH_CHECK_VALUE(x.device() == mean.device(),
                    "moments_update: x and mean must be on the same device, got ", x.device(),
                    " and ", mean.device());
}

}  // namespace pyvlmx

TORCH_LIBRARY_FRAGMENT(pyvlmx, m) {
  m.def("moments_update(Tensor x, Tensor mean, Tensor comoment, int count) -> (Tensor, Tensor)");
  m.def(
      "moments_merge(Tensor mean_a, Tensor comoment_a, int count_a, Tensor mean_b, "
      "Tensor comoment_b, int count_b) -> (Tensor, Tensor)");
}
