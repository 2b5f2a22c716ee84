// projected_step: one fused step of a projected-gradient attack.
//
// Math, per sample b (sums run over the sample's n = numel / B elements):
//
//   d     = sign(g)            step = "sign"  (PGD)
//         = g                  step = "raw"
//         = g / ||g||_2        step = "l2"    (d = 0 when g = 0)
//   z     = x + a_b d - x0
//   z     = clamp(z, -e_b, e_b)                norm = "linf"
//   z     = z * min(1, e_b / ||z||_2)          norm = "l2"
//   x_new = clamp(x0 + z, 0, 1)
//   linf_b = max |x_new - x0|, l2_b = ||x_new - x0||_2   (return_dist)
//
// Args: x, x0, grad (B, ...) of one floating dtype and device; step_size and
// eps (B,) floating, >= 0, on the CPU or on x's device (a device tensor costs
// one host sync for the >= 0 check; CPU ones are copied asynchronously); step in {raw, sign, l2}; norm in
// {linf, l2, none}.  Returns (x_new (B, ...) contiguous, linf (B,), l2 (B,));
// linf and l2 are empty (shape (0,)) unless return_dist.
//
// Memory traffic.  step = sign/raw with norm = linf/none: one pass, reading
// x, x0, g once and writing x_new once (the distances are reduced in the same
// pass).  The L2 modes need per-sample norms before any element can be
// written, so a reduction pass runs first and reads what it needs once:
//   * step = l2, norm != l2: reads g  (||g||^2).
//   * step != l2, norm = l2: reads x, x0, g  (||x + a d - x0||^2 directly).
//   * step = l2, norm = l2: reads x, x0, g and forms ||g||^2, <x - x0, g>,
//     ||x - x0||^2, from which ||z||^2 = ||x-x0||^2 + 2 a <x-x0, g>/||g|| + a^2
//     (accumulated in float64; clamped at 0).
// The main pass then reads x, x0, g and writes x_new.  Total: 3 reads + 1
// write (fused modes), at most 6 reads + 1 write (L2 modes), against 8-13
// full-tensor passes for the eager torch composition.
//
// Not differentiable (no autograd is registered; it is an update rule).
#include <torch/library.h>

#include "common/checks.h"
#include "common/op_args.h"

namespace pyvlmx {

StepMode parse_step_mode(const std::string& step) {
  if (step == "sign") return StepMode::Sign;
  if (step == "raw") return StepMode::Raw;
  if (step == "l2") return StepMode::L2;
  TORCH_CHECK_VALUE(false, "projected_step: step must be one of 'raw', 'sign', 'l2', got '",
                    step, "'");
}

NormMode parse_norm_mode(const std::string& norm) {
  if (norm == "linf") return NormMode::Linf;
  if (norm == "l2") return NormMode::L2;
  if (norm == "none") return NormMode::None;
  TORCH_CHECK_VALUE(false, "projected_step: norm must be one of 'linf', 'l2', 'none', got '",
                    norm, "'");
}

static void check_per_sample(const at::Tensor& v, const char* name, const at::Tensor& x) {
  const int64_t B = x.size(0);
  TORCH_CHECK_TYPE(at::isFloatingType(v.scalar_type()), "projected_step: ", name,
                   " must be a floating-point tensor, got ", v.scalar_type());
  TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == B, "projected_step: ", name,
                    " must have shape (", B, ",) (one value per sample), got ", v.sizes());
  TORCH_CHECK_VALUE(v.device() == x.device() || v.device().is_cpu(), "projected_step: ", name,
                    " must be on the CPU or on the device of x (", x.device(), "), got ",
                    v.device());
  if (B > 0) {
    // Free for CPU tensors; a device tensor costs one host synchronisation,
    // which is why the Python wrapper passes floats as CPU tensors.
    const double mn = v.min().item<double>();
    TORCH_CHECK_VALUE(mn >= 0, "projected_step: ", name, " must be >= 0, got min ", mn);
  }
}

void check_projected_step(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad,
                          const at::Tensor& step_size, const at::Tensor& eps) {
  PYVLMX_CHECK_FLOATING("projected_step", x);
  PYVLMX_CHECK_SAME_SHAPE("projected_step", x, x0);
  PYVLMX_CHECK_SAME_SHAPE("projected_step", x, grad);
  PYVLMX_CHECK_SAME_DTYPE("projected_step", x, x0);
  PYVLMX_CHECK_SAME_DTYPE("projected_step", x, grad);
  PYVLMX_CHECK_SAME_DEVICE("projected_step", x, x0);
  PYVLMX_CHECK_SAME_DEVICE("projected_step", x, grad);
  TORCH_CHECK_VALUE(x.dim() >= 1, "projected_step: x must have a batch dimension, got shape ",
                    x.sizes());
  check_per_sample(step_size, "step_size", x);
  check_per_sample(eps, "eps", x);
}

}  // namespace pyvlmx

TORCH_LIBRARY_FRAGMENT(pyvlmx, m) {
  m.def(
      "projected_step(Tensor x, Tensor x0, Tensor grad, Tensor step_size, Tensor eps, "
      "str step, str norm, bool return_dist) -> (Tensor, Tensor, Tensor)");
}
