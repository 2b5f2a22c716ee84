// Argument validation and mode parsing shared by the CPU and CUDA kernels.
// Each function is defined in csrc/ops/<op>.cpp next to the op's schema, so
// the two backends reject the same inputs with the same messages.
#pragma once

#include <torch/types.h>

#include <string>

namespace pyvlmx {

// ---- projected_step --------------------------------------------------------
enum class StepMode : int { Raw = 0, Sign = 1, L2 = 2 };
enum class NormMode : int { Linf = 0, L2 = 1, None = 2 };

StepMode parse_step_mode(const std::string& step);
NormMode parse_norm_mode(const std::string& norm);
// Checks shapes, dtypes, devices and that step_size, eps >= 0 (one host read
// of their minimum); returns the per-sample scalars as contiguous float64.
void check_projected_step(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad,
                          const at::Tensor& step_size, const at::Tensor& eps);

// ---- psnr / ssim -----------------------------------------------------------
void check_image_pair(const char* op, const at::Tensor& a, const at::Tensor& b,
                      double data_range);
void check_image_grad(const char* op, const at::Tensor& grad, const at::Tensor& a);
constexpr int kSsimRadius = 5;
constexpr int kSsimTaps = 2 * kSsimRadius + 1;
constexpr double kSsimSigma = 1.5;
constexpr double kSsimK1 = 0.01;
constexpr double kSsimK2 = 0.03;
// The normalised 11-tap Gaussian (scipy.ndimage, sigma 1.5, truncate 3.5).
void ssim_window(double w[kSsimTaps]);
void check_ssim_size(const at::Tensor& a);

// ---- streaming moments -----------------------------------------------------
void check_moments_state(const char* op, const at::Tensor& mean, const at::Tensor& comoment,
                         int64_t count, const char* suffix);
void check_moments_update(const at::Tensor& x, const at::Tensor& mean,
                          const at::Tensor& comoment, int64_t count);

// ---- sketch ----------------------------------------------------------------
enum class SketchKind : int { Gaussian = 0, Rademacher = 1 };
SketchKind parse_sketch_kind(const char* op, const std::string& kind);
void check_sketch(const char* op, const at::Tensor& A, int64_t r, int64_t row_offset);
// Rows of Omega generated per tile: about 2^18 entries on the CPU (L2-sized),
// 2^20 on CUDA (fewer, larger GEMMs).
int64_t sketch_tile_rows(int64_t r, bool cuda = false);

// ---- attention_jvp ---------------------------------------------------------
// Shapes, dtypes, devices and the mask's broadcast; the mask as an additive
// float tensor broadcastable to (B, H, N, M) (-inf where a boolean mask is False).
void check_attention_jvp(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& tq, const at::Tensor& tk, const at::Tensor& tv,
                         const c10::optional<at::Tensor>& attn_mask, double scale);
at::Tensor attention_jvp_additive_mask(const c10::optional<at::Tensor>& attn_mask,
                                       const at::Tensor& q, int64_t M, at::ScalarType dtype);

}  // namespace pyvlmx
