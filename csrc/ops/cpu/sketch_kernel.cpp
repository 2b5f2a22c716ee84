// CPU kernels of sketch, _sketch_backward and _omega_out (math in
// csrc/ops/sketch.cpp, generator in csrc/common/philox.h).  Omega tiles are
// generated row-parallel with at::parallel_for; products use the BLAS.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/op_args.h"
#include "common/philox.h"
#include "common/sketch_driver.h"

namespace pyvlmx {
namespace {

template <typename T>
inline T from_double(double v) {
  if constexpr (std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>) {
    return T(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

// Rows [row0, row0 + len) of Omega into the contiguous (len, r) tensor t.
void fill_omega_cpu(at::Tensor& t, int64_t row0, uint64_t seed, SketchKind kind) {
  const int64_t len = t.size(0), r = t.size(1);
  if (len == 0 || r == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "omega_cpu", [&] {
    scalar_t* p = t.data_ptr<scalar_t>();
    at::parallel_for(0, len, 4, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const uint64_t row = static_cast<uint64_t>(row0 + i);
        scalar_t* dst = p + i * r;
        if (kind == SketchKind::Gaussian) {
          const int64_t groups = (r + 3) / 4;
          for (int64_t g = 0; g < groups; ++g) {
            double v[4];
            rng::gaussian_group(seed, row, static_cast<uint64_t>(g), v);
            const int64_t c1 = std::min<int64_t>(4, r - 4 * g);
            for (int64_t c = 0; c < c1; ++c) dst[4 * g + c] = from_double<scalar_t>(v[c]);
          }
        } else {
          const int64_t groups = (r + 127) / 128;
          for (int64_t g = 0; g < groups; ++g) {
            const rng::Words w = rng::omega_words(seed, row, static_cast<uint64_t>(g));
            const int64_t c1 = std::min<int64_t>(128, r - 128 * g);
            for (int64_t c = 0; c < c1; ++c)
              dst[128 * g + c] = from_double<scalar_t>(rng::rademacher_entry(w, c));
          }
        }
      }
    });
  });
}

at::Tensor sketch_cpu(const at::Tensor& A, int64_t r, int64_t seed, c10::string_view kind_s,
                      int64_t row_offset, bool transpose) {
  const char* op = transpose ? "sketch_t" : "sketch";
  const SketchKind kind = parse_sketch_kind(op, std::string(kind_s));
  check_sketch(op, A, r, row_offset);
  PYVLMX_CHECK_CPU("sketch", A);
  const uint64_t s = static_cast<uint64_t>(seed);
  return sketch_forward_tiled(A, r, row_offset, transpose, [&](at::Tensor& t, int64_t row0) {
    fill_omega_cpu(t, row0, s, kind);
  });
}

at::Tensor sketch_backward_cpu(const at::Tensor& grad, int64_t size, int64_t seed,
                               c10::string_view kind_s, int64_t row_offset, bool transpose) {
  const SketchKind kind = parse_sketch_kind("_sketch_backward", std::string(kind_s));
  check_sketch_grad(grad, size, row_offset);
  PYVLMX_CHECK_CPU("_sketch_backward", grad);
  const uint64_t s = static_cast<uint64_t>(seed);
  return sketch_backward_tiled(grad, size, row_offset, transpose,
                               [&](at::Tensor& t, int64_t row0) { fill_omega_cpu(t, row0, s, kind); });
}

void omega_out_cpu(at::Tensor& out, int64_t seed, c10::string_view kind_s, int64_t row_offset) {
  const SketchKind kind = parse_sketch_kind("omega", std::string(kind_s));
  check_omega_out(out, row_offset);
  PYVLMX_CHECK_CPU("omega", out);
  if (out.is_contiguous()) {
    fill_omega_cpu(out, row_offset, static_cast<uint64_t>(seed), kind);
  } else {
    at::Tensor tmp = at::empty(out.sizes(), out.options());
    fill_omega_cpu(tmp, row_offset, static_cast<uint64_t>(seed), kind);
    out.copy_(tmp);
  }
}

}  // namespace
}  // namespace pyvlmx

TORCH_LIBRARY_IMPL(pyvlmx, CPU, m) {
  m.impl("sketch", &pyvlmx::sketch_cpu);
  m.impl("_sketch_backward", &pyvlmx::sketch_backward_cpu);
  m.impl("_omega_out", &pyvlmx::omega_out_cpu);
}
