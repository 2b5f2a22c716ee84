// psnr: peak signal-to-noise ratio per image.
//
//   mse_b  = mean over (C, H, W) of (a - b)^2            (accumulated in float64)
//   psnr_b = 10 log10(R^2 / mse_b)                        (+inf when a_b == b_b)
//
// Args: a, b (B, C, H, W) of one floating dtype and device, data_range R > 0.
// Returns (B,) of a's dtype.  Matches skimage.metrics.peak_signal_noise_ratio.
//
// _psnr_backward(grad (B,), a, b, R) -> (grad_a, grad_b):
//   d psnr_b / d a = -20 / (ln 10 * n * mse_b) (a - b),  n = C H W;  grad_b = -grad_a.
// At mse_b = 0 the derivative is undefined (0/0); the op returns 0 there.
#include <torch/library.h>

#include "common/checks.h"
#include "common/op_args.h"

namespace pyvlmx {

void check_image_pair(const char* op, const at::Tensor& a, const at::Tensor& b,
                      double data_range) {
  TORCH_CHECK_TYPE(at::isFloatingType(a.scalar_type()), op,
                   ": a must be a floating-point tensor, got ", a.scalar_type());
  TORCH_CHECK_VALUE(a.dim() == 4, op, ": a must have shape (B, C, H, W), got ", a.sizes());
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), op, ": a and b must have the same shape, got ",
                    a.sizes(), " and ", b.sizes());
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), op,
                   ": a and b must have the same dtype, got ", a.scalar_type(), " and ",
                   b.scalar_type());
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": a and b must be on the same device, got ",
                    a.device(), " and ", b.device());
  TORCH_CHECK_VALUE(data_range > 0, op, ": data_range must be > 0, got ", data_range);
}

void check_image_grad(const char* op, const at::Tensor& grad, const at::Tensor& a) {
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == a.size(0), op,
                    ": grad must have shape (", a.size(0), ",), got ", grad.sizes());
  TORCH_CHECK_VALUE(grad.device() == a.device(), op, ": grad must be on ", a.device(),
                    ", got ", grad.device());
  TORCH_CHECK_TYPE(grad.scalar_type() == a.scalar_type(), op, ": grad must have dtype ",
                   a.scalar_type(), ", got ", grad.scalar_type());
}

}  // namespace pyvlmx

TORCH_LIBRARY_FRAGMENT(pyvlmx, m) {
  m.def("psnr(Tensor a, Tensor b, float data_range) -> Tensor");
  m.def("_psnr_backward(Tensor grad, Tensor a, Tensor b, float data_range) -> (Tensor, Tensor)");
}
