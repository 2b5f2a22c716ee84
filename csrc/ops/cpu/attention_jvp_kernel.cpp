// CPU kernel of attention_jvp (math in csrc/ops/attention_jvp.cpp).
//
// Tasks of (batch, head, query block) run under at::parallel_for (OpenMP).
// A task takes its query block over all M keys at once: S = scale q k^T, the
// exact row softmax P (so no online rescaling is needed on the CPU), O = P v;
// then, for each tangent, S' = scale (q' k^T + q k'^T), W = P * S',
// mu = rowsum(W) and O' = W v + P v' - mu O.  P, S' and W live in per-thread
// block buffers (query block x M), never as (T, B, H, N, M) tensors.  The block
// matmuls go to the BLAS (MKL/OpenBLAS through at::mm_out on views of the
// inputs; single-threaded inside the parallel region), the elementwise passes
// are plain loops that vectorise; each thread has its own block buffers.
// The matmuls accumulate in the input dtype (float32 or float64), as the BLAS
// does; the softmax, its sums and rowsum(W) are float64 for either.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/checks.h"
#include "common/op_args.h"

namespace pyvlmx {


namespace {

// Query rows per task: about 2^16 entries of S per block (L2-sized), 8..64 rows,
// spread evenly over the blocks of N.
int64_t query_block(int64_t N, int64_t M) {
  const int64_t target = std::clamp<int64_t>((int64_t{1} << 16) / std::max<int64_t>(M, 1), 8, 64);
  const int64_t nblk = (N + target - 1) / target;
  return nblk > 0 ? (N + nblk - 1) / nblk : 1;
}

template <typename T>
struct Problem {
  const T *q, *k, *v, *tq, *tk, *tv;
  T *out, *tout;
  const T* mask;  // additive, (B, H, N, M) strided view, or nullptr
  int64_t ms[4];  // mask strides
  int64_t B, H, N, M, E, Ev, Tn;
  T scale;
  bool causal;
};

// Rows [0, len) of the block S (ld M, raw q k^T) become P = softmax(scale S + mask)
// for the global query rows i0 + r; fully masked rows become 0.  The scores,
// exponentials and sums are float64 (`acc`, M entries), P is rounded once.
template <typename T>
void softmax_rows(const Problem<T>& p, int64_t b, int64_t h, int64_t i0, int64_t len, T* S,
                  double* acc) {
  const int64_t M = p.M;
  const double ninf = -std::numeric_limits<double>::infinity();
  const double sc = static_cast<double>(p.scale);
  for (int64_t r = 0; r < len; ++r) {
    T* row = S + r * M;
    const int64_t gi = i0 + r;
    const int64_t jend = p.causal ? std::min<int64_t>(M, gi + 1) : M;
    if (p.mask != nullptr) {
      const T* mrow = p.mask + b * p.ms[0] + h * p.ms[1] + gi * p.ms[2];
      const int64_t sj = p.ms[3];
      for (int64_t j = 0; j < jend; ++j)
        acc[j] = sc * static_cast<double>(row[j]) + static_cast<double>(mrow[j * sj]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < jend; ++j) acc[j] = sc * static_cast<double>(row[j]);
    }
    double mx = ninf;
    for (int64_t j = 0; j < jend; ++j) mx = std::max(mx, acc[j]);
    if (mx == ninf) {  // every key masked: P = 0 (torch's safe softmax)
      std::fill(row, row + M, T(0));
      continue;
    }
    double sum = 0;
    for (int64_t j = 0; j < jend; ++j) {
      const double e = std::exp(acc[j] - mx);
      acc[j] = e;
      sum += e;
    }
    const double inv = 1.0 / sum;
#pragma omp simd
    for (int64_t j = 0; j < jend; ++j) row[j] = static_cast<T>(acc[j] * inv);
    std::fill(row + jend, row + M, T(0));
  }
}

// W = scale * P * S' in place of S' (ld M); mu[r] = rowsum(W) (float64 sums).
template <typename T>
void tangent_weights(const T* P, T* W, double* mu, int64_t len, int64_t M, T scale) {
  const double sc = static_cast<double>(scale);
  for (int64_t r = 0; r < len; ++r) {
    const T* pr = P + r * M;
    T* wr = W + r * M;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < M; ++j) {
      const double w = sc * static_cast<double>(pr[j]) * static_cast<double>(wr[j]);
      wr[j] = static_cast<T>(w);
      s += w;
    }
    mu[r] = s;
  }
}

// Y -= mu[r] O[r] for rows of (len, Ev), both ld Ev.
template <typename T>
void subtract_mu_o(T* Y, const T* O, const double* mu, int64_t len, int64_t Ev) {
  for (int64_t r = 0; r < len; ++r) {
    T* yr = Y + r * Ev;
    const T* orow = O + r * Ev;
    const double m = mu[r];
#pragma omp simd
    for (int64_t c = 0; c < Ev; ++c)
      yr[c] = static_cast<T>(static_cast<double>(yr[c]) - m * static_cast<double>(orow[c]));
  }
}

template <typename T>
void run_cpu(const Problem<T>& p, const at::TensorOptions& opts) {
  const int64_t N = p.N, M = p.M, E = p.E, Ev = p.Ev, BH = p.B * p.H;
  const int64_t qb = query_block(N, M);
  const int64_t nblk = (N + qb - 1) / qb;
  // Per-thread block buffers (S then P; S' then W; float64 scores and mu),
  // allocated here, on the calling thread, so that the allocator sees them.
  const int64_t nthreads = at::get_num_threads();
  const int64_t per_thread = 2 * qb * M;
  at::Tensor buffers = at::empty({nthreads, per_thread}, opts);
  at::Tensor scratch = at::empty({nthreads, M + qb}, opts.dtype(at::kDouble));
  at::parallel_for(0, BH * nblk, 1, [&](int64_t t0, int64_t t1) {
    const int64_t tid = std::min<int64_t>(at::get_thread_num(), nthreads - 1);
    T* S = buffers.data_ptr<T>() + tid * per_thread;
    T* W = S + qb * M;
    double* acc = scratch.data_ptr<double>() + tid * (M + qb);
    double* mu = acc + M;
    auto mat = [&](const T* ptr, int64_t rows, int64_t cols) {
      return at::from_blob(const_cast<T*>(ptr), {rows, cols}, {cols, 1}, opts);
    };
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t bh = task / nblk, blk = task % nblk;
      const int64_t b = bh / p.H, h = bh % p.H;
      const int64_t i0 = blk * qb, len = std::min(qb, N - i0);
      const at::Tensor Q = mat(p.q + (bh * N + i0) * E, len, E);
      const at::Tensor K = mat(p.k + bh * M * E, M, E);
      const at::Tensor V = mat(p.v + bh * M * Ev, M, Ev);
      at::Tensor Pm = mat(S, len, M);
      at::Tensor Wm = mat(W, len, M);
      at::mm_out(Pm, Q, K.t());
      softmax_rows(p, b, h, i0, len, S, acc);
      T* o = p.out + (bh * N + i0) * Ev;
      at::Tensor O = mat(o, len, Ev);
      at::mm_out(O, Pm, V);
      for (int64_t t = 0; t < p.Tn; ++t) {
        const int64_t tbh = t * BH + bh;
        const at::Tensor Qt = mat(p.tq + (tbh * N + i0) * E, len, E);
        const at::Tensor Kt = mat(p.tk + tbh * M * E, M, E);
        const at::Tensor Vt = mat(p.tv + tbh * M * Ev, M, Ev);
        at::mm_out(Wm, Qt, K.t());
        Wm.addmm_(Q, Kt.t());
        tangent_weights(S, W, mu, len, M, p.scale);
        T* y = p.tout + (tbh * N + i0) * Ev;
        at::Tensor Y = mat(y, len, Ev);
        at::mm_out(Y, Wm, V);
        Y.addmm_(Pm, Vt);
        subtract_mu_o(y, o, mu, len, Ev);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> attention_jvp_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& tq_in, const at::Tensor& tk_in, const at::Tensor& tv_in,
    const c10::optional<at::Tensor>& attn_mask, double scale, bool is_causal) {
  check_attention_jvp(q_in, k_in, v_in, tq_in, tk_in, tv_in, attn_mask, scale);
  PYVLMX_CHECK_CPU("attention_jvp", q_in);
  TORCH_CHECK_TYPE(q_in.scalar_type() == at::kFloat || q_in.scalar_type() == at::kDouble,
                   "attention_jvp: q must be float32 or float64 on CPU, got ",
                   q_in.scalar_type());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor tq = tq_in.contiguous(), tk = tk_in.contiguous(), tv = tv_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), E = q.size(3);
  const int64_t M = k.size(2), Ev = v.size(3), Tn = tq.size(0);
  at::Tensor out = at::empty({B, H, N, Ev}, q.options());
  at::Tensor tout = at::empty({Tn, B, H, N, Ev}, q.options());
  if (B * H * N == 0 || Ev == 0) return {out, tout};
  const at::Tensor mask = attention_jvp_additive_mask(attn_mask, q, M, q.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attention_jvp_cpu", [&] {
    Problem<scalar_t> p{};
    p.q = q.data_ptr<scalar_t>();
    p.k = k.data_ptr<scalar_t>();
    p.v = v.data_ptr<scalar_t>();
    p.tq = tq.data_ptr<scalar_t>();
    p.tk = tk.data_ptr<scalar_t>();
    p.tv = tv.data_ptr<scalar_t>();
    p.out = out.data_ptr<scalar_t>();
    p.tout = tout.data_ptr<scalar_t>();
    p.mask = mask.defined() ? mask.data_ptr<scalar_t>() : nullptr;
    for (int d = 0; d < 4; ++d) p.ms[d] = mask.defined() ? mask.stride(d) : 0;
    p.B = B, p.H = H, p.N = N, p.M = M, p.E = E, p.Ev = Ev, p.Tn = Tn;
    p.scale = static_cast<scalar_t>(scale);
    p.causal = is_causal;
    run_cpu(p, q.options());
  });
  return {out, tout};
}

}  // namespace
}  // namespace pyvlmx

TORCH_LIBRARY_IMPL(pyvlmx, CPU, m) {
  m.impl("attention_jvp", &pyvlmx::attention_jvp_cpu);
}
