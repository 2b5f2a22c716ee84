// CUDA kernels of sketch, _sketch_backward and _omega_out (math in
// csrc/ops/sketch.cpp, generator in csrc/common/philox.h, shared with the
// CPU so that Omega is bit-identical).  One thread per Philox call: four
// Gaussian entries, or one 32-bit word (32 Rademacher entries).  Tiles are
// multiplied by cuBLAS through at::addmm_ on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_helpers.cuh"
#include "common/op_args.h"
#include "common/philox.h"
#include "common/sketch_driver.h"

namespace pyvlmx {
namespace {

template <typename T>
__device__ __forceinline__ T from_double(double v) {
  if constexpr (std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>) {
    return T(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

template <typename T>
__global__ void gaussian_fill_kernel(T* __restrict__ out, int64_t len, int64_t r,
                                     uint64_t row0, uint64_t seed) {
  const int64_t groups = (r + 3) / 4;
  PYVLMX_GRID_STRIDE_LOOP(q, len * groups) {
    const int64_t i = q / groups, g = q - i * groups;
    double v[4];
    rng::gaussian_group(seed, row0 + static_cast<uint64_t>(i), static_cast<uint64_t>(g), v);
    T* dst = out + i * r + 4 * g;
    const int64_t c1 = r - 4 * g < 4 ? r - 4 * g : 4;
    for (int64_t c = 0; c < c1; ++c) dst[c] = from_double<T>(v[c]);
  }
}

template <typename T>
__global__ void rademacher_fill_kernel(T* __restrict__ out, int64_t len, int64_t r,
                                       uint64_t row0, uint64_t seed) {
  const int64_t words = (r + 31) / 32;
  PYVLMX_GRID_STRIDE_LOOP(q, len * words) {
    const int64_t i = q / words, wi = q - i * words;
    const rng::Words w =
        rng::omega_words(seed, row0 + static_cast<uint64_t>(i), static_cast<uint64_t>(wi / 4));
    T* dst = out + i * r + 32 * wi;
    const int64_t c1 = r - 32 * wi < 32 ? r - 32 * wi : 32;
    for (int64_t c = 0; c < c1; ++c)
      dst[c] = from_double<T>(rng::rademacher_entry(w, static_cast<uint64_t>(32 * wi + c)));
  }
}

void fill_omega_cuda(at::Tensor& t, int64_t row0, uint64_t seed, SketchKind kind) {
  const int64_t len = t.size(0), r = t.size(1);
  if (len == 0 || r == 0) return;
  cudaStream_t st = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "omega_cuda", [&] {
    if (kind == SketchKind::Gaussian) {
      const int64_t work = len * ((r + 3) / 4);
      gaussian_fill_kernel<scalar_t><<<grid_for(work, 256), 256, 0, st>>>(
          t.data_ptr<scalar_t>(), len, r, static_cast<uint64_t>(row0), seed);
    } else {
      const int64_t work = len * ((r + 31) / 32);
      rademacher_fill_kernel<scalar_t><<<grid_for(work, 256), 256, 0, st>>>(
          t.data_ptr<scalar_t>(), len, r, static_cast<uint64_t>(row0), seed);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor sketch_cuda(const at::Tensor& A, int64_t r, int64_t seed, c10::string_view kind_s,
                       int64_t row_offset, bool transpose) {
  const char* op = transpose ? "sketch_t" : "sketch";
  const SketchKind kind = parse_sketch_kind(op, std::string(kind_s));
  check_sketch(op, A, r, row_offset);
  PYVLMX_CHECK_CUDA("sketch", A);
  c10::cuda::OptionalCUDAGuard guard(A.device());
  const uint64_t s = static_cast<uint64_t>(seed);
  return sketch_forward_tiled(A, r, row_offset, transpose, [&](at::Tensor& t, int64_t row0) {
    fill_omega_cuda(t, row0, s, kind);
  });
}

at::Tensor sketch_backward_cuda(const at::Tensor& grad, int64_t size, int64_t seed,
                                c10::string_view kind_s, int64_t row_offset, bool transpose) {
  const SketchKind kind = parse_sketch_kind("_sketch_backward", std::string(kind_s));
  check_sketch_grad(grad, size, row_offset);
  PYVLMX_CHECK_CUDA("_sketch_backward", grad);
  c10::cuda::OptionalCUDAGuard guard(grad.device());
  const uint64_t s = static_cast<uint64_t>(seed);
  return sketch_backward_tiled(grad, size, row_offset, transpose, [&](at::Tensor& t, int64_t row0) {
    fill_omega_cuda(t, row0, s, kind);
  });
}

void omega_out_cuda(at::Tensor& out, int64_t seed, c10::string_view kind_s, int64_t row_offset) {
  const SketchKind kind = parse_sketch_kind("omega", std::string(kind_s));
  check_omega_out(out, row_offset);
  PYVLMX_CHECK_CUDA("omega", out);
  c10::cuda::OptionalCUDAGuard guard(out.device());
  if (out.is_contiguous()) {
    fill_omega_cuda(out, row_offset, static_cast<uint64_t>(seed), kind);
  } else {
    at::Tensor tmp = at::empty(out.sizes(), out.options());
    fill_omega_cuda(tmp, row_offset, static_cast<uint64_t>(seed), kind);
    out.copy_(tmp);
  }
}

}  // namespace
}  // namespace pyvlmx

TORCH_LIBRARY_IMPL(pyvlmx, CUDA, m) {
  m.impl("sketch", &pyvlmx::sketch_cuda);
  m.impl("_sketch_backward", &pyvlmx::sketch_backward_cuda);
  m.impl("_omega_out", &pyvlmx::omega_out_cuda);
}
