// Random sketch products with an implicit Omega (never stored).
//
// Omega is the infinite matrix with entry (i, j) = f(seed, i, j) described in
// csrc/common/philox.h (Philox4x32-10 counters; Gaussian by Box-Muller with a
// libm-free log/sin/cos, or Rademacher +-1), so the same seed gives the same
// bits on CPU and CUDA and any block of rows can be regenerated alone.
//
// sketch(A, r, seed, kind, row_offset, transpose) -> Tensor
//   transpose = false: A (m, n) @ Omega[row_offset : row_offset + n, :r]  -> (m, r)
//   transpose = true:  Omega[row_offset : row_offset + m, :r]^T @ A (m, n) -> (r, n)
// _sketch_backward(grad, size, seed, kind, row_offset, transpose) -> dA
//   transpose = false: grad (m, r) @ Omega[ro : ro + size]^T  -> (m, size)
//   transpose = true:  Omega[ro : ro + size] @ grad (r, n)     -> (size, n)
// _omega_out(Tensor(a!) out (n, r), seed, kind, row_offset): writes
//   Omega[row_offset : row_offset + n, :r] into out (tests, checks).
//
// Kernels generate Omega one tile of sketch_tile_rows(r) rows at a time
// (about 2^18 entries on the CPU, 2^20 on CUDA, in A's dtype, float64 math rounded once) and multiply
// it with the matching slice of A by the (cu)BLAS GEMM (at::addmm_), so
// memory is O(tile), not O(n r).  Generation costs O(n r) per call against
// the GEMM's O(m n r): the sketch is close to a stored-Omega matmul when
// m is large and dominated by generation when m is small.
//
// seed is an int64; its 64 bits (two's complement) key Philox.
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "common/op_args.h"

namespace pyvlmx {

SketchKind parse_sketch_kind(const char* op, const std::string& kind) {
  if (kind == "gaussian") return SketchKind::Gaussian;
  if (kind == "rademacher") return SketchKind::Rademacher;
  TORCH_CHECK_VALUE(false, op, ": kind must be one of 'gaussian', 'rademacher', got '", kind,
                    "'");
}

void check_sketch(const char* op, const at::Tensor& A, int64_t r, int64_t row_offset) {
  TORCH_CHECK_TYPE(at::isFloatingType(A.scalar_type()), op,
                   ": A must be a floating-point tensor, got ", A.scalar_type());
  TORCH_CHECK_VALUE(A.dim() == 2, op, ": A must be a matrix (2-D), got shape ", A.sizes());
  TORCH_CHECK_VALUE(r >= 0, op, ": r must be >= 0, got ", r);
  TORCH_CHECK_VALUE(row_offset >= 0, op, ": row_offset must be >= 0, got ", row_offset);
}

int64_t sketch_tile_rows(int64_t r, bool cuda) {
  const int64_t entries = int64_t{1} << (cuda ? 20 : 18);
  return std::max<int64_t>(64, entries / std::max<int64_t>(r, 1));
}

}  // namespace pyvlmx

TORCH_LIBRARY_FRAGMENT(pyvlmx, m) {
  m.def(
      "sketch(Tensor A, int r, int seed, str kind, int row_offset, bool transpose) -> Tensor");
  m.def(
      "_sketch_backward(Tensor grad, int size, int seed, str kind, int row_offset, "
      "bool transpose) -> Tensor");
  m.def("_omega_out(Tensor(a!) out, int seed, str kind, int row_offset) -> ()");
}
