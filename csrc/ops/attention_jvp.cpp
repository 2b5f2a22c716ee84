// attention_jvp: scaled dot-product attention and its forward-mode derivative
// along T tangents that share one primal.
//
// One head (b, h), q (N, E), k (M, E), v (M, Ev), tangent t = 0 .. T-1:
//   S   = scale q k^T + mask                        (N, M)
//   P   = softmax(S) over keys                      (rows with every key masked: P = 0)
//   O   = P v                                       (N, Ev)
//   S'  = scale (q'_t k^T + q k'_t^T)               (0 where masked: P = 0 there)
//   mu  = rowsum(P * S')                            (N, 1)
//   O'  = (P * S') v - mu O + P v'_t                (N, Ev)
// which is d/de softmax(scale (q + e q')(k + e k')^T + mask)(v + e v') at e = 0.
//
// Args (positional, as in the schema):
//   q (B, H, N, E), k (B, H, M, E), v (B, H, M, Ev): primals, one floating dtype
//     and device (CPU: float32/float64; CUDA: float32/float16/bfloat16).
//   tq (T, B, H, N, E), tk (T, B, H, M, E), tv (T, B, H, M, Ev): tangents, T >= 0.
//   attn_mask: None, or bool (True = keep) or additive float of q's dtype,
//     broadcastable to (B, H, N, M), as torch's scaled_dot_product_attention.
//   scale: the factor of q k^T (the Python wrapper defaults it to 1/sqrt(E)).
//   is_causal: key j is masked for query i when j > i (top-left aligned, as SDPA).
// Returns (out (B, H, N, Ev), tout (T, B, H, N, Ev)), contiguous, of q's dtype.
// Needs M >= 1 and E >= 1; B, H, N, Ev may be 0.
//
// Kernels never form the (T, B, H, N, M) tensor of S' the way torch.func.jvp
// over SDPA does: S, P, the row maxima and denominators are computed once per
// query block and shared by all T tangents, which costs 2 + 4T block matmuls.
// CPU (csrc/ops/cpu/attention_jvp_kernel.cpp): exact softmax of a query block
// over all keys, the matmuls by the BLAS. CUDA (csrc/ops/cuda/...): one pass
// over key tiles with online softmax; the tangent accumulators rescale with the
// primal's.
//
// No autograd: the op is forward-mode derivative code; pyvlmx/ops.py registers
// a backward that raises.
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/checks.h"
#include "common/op_args.h"

namespace pyvlmx {

namespace {

void check_tangent(const char* name, const at::Tensor& t, const at::Tensor& primal,
                   const char* primal_name, int64_t T) {
  TORCH_CHECK_VALUE(t.dim() == 5, "attention_jvp: ", name, " must have shape (T, ",
                    primal_name, ".shape), got ", t.sizes());
  TORCH_CHECK_VALUE(t.size(0) == T && t.sizes().slice(1) == primal.sizes(), "attention_jvp: ",
                    name, " must have shape (", T, ", ", primal.sizes(), ") (T = tq.shape[0], ",
                    primal_name, ".shape), got ", t.sizes());
}

}  // namespace

void check_attention_jvp(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& tq, const at::Tensor& tk, const at::Tensor& tv,
                         const c10::optional<at::Tensor>& attn_mask, double scale) {
  PYVLMX_CHECK_FLOATING("attention_jvp", q);
  PYVLMX_CHECK_DIM("attention_jvp", q, 4);
  PYVLMX_CHECK_DIM("attention_jvp", k, 4);
  PYVLMX_CHECK_DIM("attention_jvp", v, 4);
  const int64_t B = q.size(0), H = q.size(1), E = q.size(3), M = k.size(2);
  TORCH_CHECK_VALUE(k.size(0) == B && k.size(1) == H && k.size(3) == E,
                    "attention_jvp: k must have shape (B, H, M, E) = (", B, ", ", H, ", M, ", E,
                    ") to match q ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK_VALUE(v.size(0) == B && v.size(1) == H && v.size(2) == M,
                    "attention_jvp: v must have shape (B, H, M, Ev) = (", B, ", ", H, ", ", M,
                    ", Ev) to match q and k, got ", v.sizes());
  TORCH_CHECK_VALUE(M >= 1, "attention_jvp: k must have at least one key (M >= 1), got shape ",
                    k.sizes());
  TORCH_CHECK_VALUE(E >= 1, "attention_jvp: q must have head dim E >= 1, got shape ", q.sizes());
  PYVLMX_CHECK_DIM("attention_jvp", tq, 5);
  const int64_t T = tq.size(0);
  check_tangent("tq", tq, q, "q", T);
  check_tangent("tk", tk, k, "k", T);
  check_tangent("tv", tv, v, "v", T);
  PYVLMX_CHECK_SAME_DTYPE("attention_jvp", q, k);
  PYVLMX_CHECK_SAME_DTYPE("attention_jvp", q, v);
  PYVLMX_CHECK_SAME_DTYPE("attention_jvp", q, tq);
  PYVLMX_CHECK_SAME_DTYPE("attention_jvp", q, tk);
  PYVLMX_CHECK_SAME_DTYPE("attention_jvp", q, tv);
  PYVLMX_CHECK_SAME_DEVICE("attention_jvp", q, k);
  PYVLMX_CHECK_SAME_DEVICE("attention_jvp", q, v);
  PYVLMX_CHECK_SAME_DEVICE("attention_jvp", q, tq);
  PYVLMX_CHECK_SAME_DEVICE("attention_jvp", q, tk);
  PYVLMX_CHECK_SAME_DEVICE("attention_jvp", q, tv);
  TORCH_CHECK_VALUE(std::isfinite(scale), "attention_jvp: scale must be finite, got ", scale);
  if (attn_mask.has_value() && attn_mask->defined()) {
    const at::Tensor& m = *attn_mask;
    TORCH_CHECK_TYPE(m.scalar_type() == at::kBool || m.scalar_type() == q.scalar_type(),
                     "attention_jvp: attn_mask must be bool or have q's dtype ", q.scalar_type(),
                     ", got ", m.scalar_type());
    TORCH_CHECK_VALUE(m.device() == q.device(), "attention_jvp: attn_mask must be on ",
                      q.device(), ", got ", m.device());
    const int64_t target[4] = {B, H, q.size(2), M};
    bool ok = m.dim() <= 4;
    for (int64_t d = 0; ok && d < m.dim(); ++d) {
      const int64_t s = m.size(m.dim() - 1 - d), want = target[3 - d];
      ok = s == want || s == 1;
    }
    TORCH_CHECK_VALUE(ok, "attention_jvp: attn_mask must be broadcastable to (B, H, N, M) = (",
                      B, ", ", H, ", ", q.size(2), ", ", M, "), got shape ", m.sizes());
  }
}

at::Tensor attention_jvp_additive_mask(const c10::optional<at::Tensor>& attn_mask,
                                       const at::Tensor& q, int64_t M, at::ScalarType dtype) {
  if (!attn_mask.has_value() || !attn_mask->defined()) return at::Tensor();
  const at::Tensor& m = *attn_mask;
  at::Tensor add;
  if (m.scalar_type() == at::kBool) {
    add = at::zeros(m.sizes(), m.options().dtype(dtype))
              .masked_fill_(m.logical_not(), -std::numeric_limits<double>::infinity());
  } else {
    add = m.to(dtype);
  }
  return add.expand({q.size(0), q.size(1), q.size(2), M});
}

}  // namespace pyvlmx

TORCH_LIBRARY_FRAGMENT(pyvlmx, m) {
  m.def(
      "attention_jvp(Tensor q, Tensor k, Tensor v, Tensor tq, Tensor tk, Tensor tv, "
      "Tensor? attn_mask, float scale, bool is_causal) -> (Tensor, Tensor)");
}
