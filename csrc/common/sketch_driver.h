// Device-independent tiling of the sketch ops (math in csrc/ops/sketch.cpp).
// `fill(tile, first_row)` writes rows [first_row, first_row + len) of Omega
// into the contiguous (len, r) tile on the tensor's device; the products go
// through at::addmm_ (BLAS / cuBLAS on the current stream).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>

#include "common/op_args.h"

namespace pyvlmx {

template <typename Fill>
at::Tensor sketch_forward_tiled(const at::Tensor& A, int64_t r, int64_t row_offset,
                                bool transpose, Fill fill) {
  const int64_t m = A.size(0), n = A.size(1);
  const int64_t rows = transpose ? m : n;
  at::Tensor out = transpose ? at::zeros({r, n}, A.options()) : at::zeros({m, r}, A.options());
  if (rows == 0 || out.numel() == 0) return out;
  const int64_t kb = std::min(rows, sketch_tile_rows(r, A.is_cuda()));
  at::Tensor tile = at::empty({kb, r}, A.options());
  for (int64_t k0 = 0; k0 < rows; k0 += kb) {
    const int64_t len = std::min(kb, rows - k0);
    at::Tensor t = tile.narrow(0, 0, len);
    fill(t, row_offset + k0);
    if (transpose)
      out.addmm_(t.t(), A.narrow(0, k0, len));
    else
      out.addmm_(A.narrow(1, k0, len), t);
  }
  return out;
}

template <typename Fill>
at::Tensor sketch_backward_tiled(const at::Tensor& grad, int64_t size, int64_t row_offset,
                                 bool transpose, Fill fill) {
  const int64_t r = transpose ? grad.size(0) : grad.size(1);
  at::Tensor dA = transpose ? at::zeros({size, grad.size(1)}, grad.options())
                            : at::zeros({grad.size(0), size}, grad.options());
  if (size == 0 || r == 0 || dA.numel() == 0) return dA;
  const int64_t kb = std::min(size, sketch_tile_rows(r, grad.is_cuda()));
  at::Tensor tile = at::empty({kb, r}, grad.options());
  for (int64_t k0 = 0; k0 < size; k0 += kb) {
    const int64_t len = std::min(kb, size - k0);
    at::Tensor t = tile.narrow(0, 0, len);
    fill(t, row_offset + k0);
    if (transpose)
      dA.narrow(0, k0, len).addmm_(t, grad);
    else
      dA.narrow(1, k0, len).addmm_(grad, t.t());
  }
  return dA;
}

inline void check_sketch_grad(const at::Tensor& grad, int64_t size, int64_t row_offset) {
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()),
                   "_sketch_backward: grad must be a floating-point tensor, got ",
                   grad.scalar_type());
  TORCH_CHECK_VALUE(grad.dim() == 2, "_sketch_backward: grad must be 2-D, got shape ",
                    grad.sizes());
  TORCH_CHECK_VALUE(size >= 0, "_sketch_backward: size must be >= 0, got ", size);
  TORCH_CHECK_VALUE(row_offset >= 0, "_sketch_backward: row_offset must be >= 0, got ",
                    row_offset);
}

inline void check_omega_out(const at::Tensor& out, int64_t row_offset) {
  TORCH_CHECK_TYPE(at::isFloatingType(out.scalar_type()),
                   "_omega_out: out must be a floating-point tensor, got ", out.scalar_type());
  TORCH_CHECK_VALUE(out.dim() == 2, "_omega_out: out must be 2-D (n, r), got shape ",
                    out.sizes());
  TORCH_CHECK_VALUE(row_offset >= 0, "_omega_out: row_offset must be >= 0, got ", row_offset);
}

}  // namespace pyvlmx
