// ssim: mean structural similarity per image (Wang, Bovik, Sheikh, Simoncelli 2004).
//
// Window: the normalised 11-tap Gaussian w of scipy.ndimage.gaussian_filter
// with sigma 1.5 and truncate 3.5, applied separably.  Per channel plane:
//
//   ux = w*x, uy = w*y, uxx = w*(x x), uyy = w*(y y), uxy = w*(x y)
//   A1 = 2 ux uy + C1,  A2 = 2 (uxy - ux uy) + C2
//   B1 = ux^2 + uy^2 + C1,  B2 = (uxx - ux^2) + (uyy - uy^2) + C2
//   S  = A1 A2 / (B1 B2),   C1 = (0.01 R)^2, C2 = (0.03 R)^2
//   ssim_b = mean of S over channels and the valid region
//            [5, H - 5) x [5, W - 5)
//
// This is skimage.metrics.structural_similarity(gaussian_weights=True,
// sigma=1.5, use_sample_covariance=False, data_range=R, channel_axis=0):
// scikit-image filters with mode='reflect' and then crops (win_size - 1) / 2
// = 5 pixels before averaging; an output pixel 5 or more pixels inside never
// reads the padding, so computing only valid correlations is exact (and
// cheaper).  H, W >= 11.  Identical images give S = 1 everywhere, ssim = 1.
//
// _ssim_backward(grad (B,), a, b, R) -> (grad_a, grad_b): with per-pixel
//   Gxy = 2 A1 / (B1 B2),  Gsq = -S / B2 (for uxx and uyy),
//   Gx  = 2 uy (A2 - A1) / (B1 B2) - 2 ux S (1/B1 - 1/B2),  Gy symmetric,
// scaled by grad_b / (C Hv Wv) and spread back by the adjoint filter F^T:
//   grad_a = F^T Gx + 2 a F^T Gsq + b F^T Gxy,  grad_b = F^T Gy + 2 b F^T Gsq + a F^T Gxy.
// (scikit-image's `gradient=True` is the same formula, Avanaki 2009.)
#include <torch/library.h>

#include <cmath>

#include "common/checks.h"
#include "common/op_args.h"

namespace pyvlmx {

void ssim_window(double w[kSsimTaps]) {
  double sum = 0;
  for (int i = 0; i < kSsimTaps; ++i) {
    const double x = i - kSsimRadius;
    w[i] = std::exp(-0.5 * x * x / (kSsimSigma * kSsimSigma));
    sum += w[i];
  }
  for (int i = 0; i < kSsimTaps; ++i) w[i] /= sum;
}

void check_ssim_size(const at::Tensor& a) {
  TORCH_CHECK_VALUE(a.size(2) >= kSsimTaps && a.size(3) >= kSsimTaps,
                    "ssim: images must be at least ", kSsimTaps, "x", kSsimTaps, ", got ",
                    a.size(2), "x", a.size(3));
}

}  // namespace pyvlmx

TORCH_LIBRARY_FRAGMENT(pyvlmx, m) {
  m.def("ssim(Tensor a, Tensor b, float data_range) -> Tensor");
  m.def("_ssim_backward(Tensor grad, Tensor a, Tensor b, float data_range) -> (Tensor, Tensor)");
}
