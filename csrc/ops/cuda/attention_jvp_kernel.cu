// CUDA kernel of attention_jvp (math in csrc/ops/attention_jvp.cpp).
//
// One CTA of 256 threads (8 warps) per (query tile of BM = 32 rows, batch *
// head, chunk of TC tangents).  Key tiles of BN = 32 keys pass through shared
// memory once; each tile does:
//   S  = scale q k^T + mask            warp w owns rows 4w .. 4w+3, lane = key
//   online softmax: m_new = max(m, rowmax S), alpha = exp(m - m_new),
//                   P~ = exp(S - m_new), l = alpha l + rowsum P~
//   O  = alpha O + P~ v                lane owns columns lane + 32 c
//   for each tangent t of the chunk (K'_t, V'_t tiles through shared memory):
//     S'  = scale (q'_t k^T + q k'_t^T)
//     nu  = alpha nu + P~ * S'          (per lane; reduced over the row at the end)
//     A_t = alpha A_t + (P~ * S') v + P~ v'_t
// and at the end O = O / l, mu = rowsum(nu) / l, O' = A_t / l - mu O.  The
// tangents share S, P~, the running maximum and the denominator, so a tile
// costs 2 + 4 TC small matmuls.  Every chunk recomputes the primal (one
// matmul pair per tile); chunk 0 writes out.
//
// Inputs are float32, float16 or bfloat16 (staged in shared memory as
// float32); all arithmetic is float32 (expf, no fast math).  Head dims E and
// Ev up to 128 (the kernel is instantiated for D = 64 and 128 and loops over
// the true E and Ev); any N, M >= 1.  Rows whose keys are all masked give 0.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/checks.h"
#include "common/op_args.h"
#include "common/cuda_helpers.cuh"

namespace pyvlmx {


namespace {

constexpr int kBM = 32;                    // query rows per CTA
constexpr int kBN = 32;                    // keys per tile (= warp size: lane = key)
constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kRows = kBM / kWarps;        // rows per warp

template <typename T>
struct Params {
  const T *q, *k, *v, *tq, *tk, *tv;
  T *out, *tout;
  const float* mask;  // additive float32, (B, H, N, M) strided view, or nullptr
  int64_t ms0, ms1, ms2, ms3;
  int64_t B, H, N, M, E, Ev, Tn;  // Tn: tangents
  int64_t n_qtiles, n_chunks;
  float scale;
  bool causal;
};

__device__ __forceinline__ float warp_allmax(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

__device__ __forceinline__ float warp_allsum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// rows x cols of src (row stride ld_src, first row row0 of n_rows valid) into
// dst (row stride ld_dst) as float32; rows >= n_rows and columns >= cols are 0
// up to (R, C).
template <typename T, int R, int C>
__device__ __forceinline__ void load_tile(float* __restrict__ dst, int ld_dst,
                                          const T* __restrict__ src, int64_t ld_src,
                                          int64_t row0, int64_t n_rows, int64_t cols) {
  for (int idx = threadIdx.x; idx < R * C; idx += kThreads) {
    const int r = idx / C, c = idx - r * C;
    const int64_t gr = row0 + r;
    float val = 0.f;
    if (gr < n_rows && c < cols) val = static_cast<float>(src[gr * ld_src + c]);
    dst[r * ld_dst + c] = val;
  }
}

template <int D, int TC>
constexpr int smem_floats() {
  // sQ, sQt[TC]: BM x D; sK, sKt: BN x (D + 1); sV, sVt: BN x D; sP, sW: BM x BN
  return kBM * D * (1 + TC) + 2 * kBN * (D + 1) + 2 * kBN * D + 2 * kBM * kBN;
}

template <typename T, int D, int TC>
__global__ void __launch_bounds__(kThreads)
    attention_jvp_kernel(const Params<T> p) {
  constexpr int CW = D / 32;  // output columns per lane
  constexpr int LDK = D + 1;  // padded rows of K tiles: lane j reads row j
  extern __shared__ float smem[];
  float* sQ = smem;
  float* sQt = sQ + kBM * D;
  float* sK = sQt + TC * kBM * D;
  float* sKt = sK + kBN * LDK;
  float* sV = sKt + kBN * LDK;
  float* sVt = sV + kBN * D;
  float* sP = sVt + kBN * D;
  float* sW = sP + kBM * kBN;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t BH = p.B * p.H;
  int64_t bid = blockIdx.x;
  const int64_t qt = bid % p.n_qtiles;
  bid /= p.n_qtiles;
  const int64_t bh = bid % BH;
  const int64_t chunk = bid / BH;
  const int64_t b = bh / p.H, h = bh - b * p.H;
  const int64_t t0 = chunk * TC;
  const int tcount = static_cast<int>(p.Tn - t0 < TC ? p.Tn - t0 : TC);  // may be 0 (T = 0)
  const int64_t N = p.N, M = p.M, E = p.E, Ev = p.Ev;
  const int64_t q0 = qt * kBM;

  load_tile<T, kBM, D>(sQ, D, p.q + bh * N * E, E, q0, N, E);
#pragma unroll
  for (int tt = 0; tt < TC; ++tt) {
    if (tt < tcount)
      load_tile<T, kBM, D>(sQt + tt * kBM * D, D, p.tq + ((t0 + tt) * BH + bh) * N * E, E, q0,
                           N, E);
  }

  float m_run[kRows], l_run[kRows], o_acc[kRows][CW];
  float nu[TC][kRows], a_acc[TC][kRows][CW];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    m_run[i] = -INFINITY;
    l_run[i] = 0.f;
#pragma unroll
    for (int c = 0; c < CW; ++c) o_acc[i][c] = 0.f;
#pragma unroll
    for (int tt = 0; tt < TC; ++tt) {
      nu[tt][i] = 0.f;
#pragma unroll
      for (int c = 0; c < CW; ++c) a_acc[tt][i][c] = 0.f;
    }
  }

  // Keys that any valid row of this tile may see.
  int64_t key_end = M;
  if (p.causal) {
    const int64_t last_row = (q0 + kBM < N ? q0 + kBM : N) - 1;
    key_end = last_row + 1 < M ? last_row + 1 : M;
  }
  const int64_t n_ktiles = (key_end + kBN - 1) / kBN;
  const T* kbase = p.k + bh * M * E;
  const T* vbase = p.v + bh * M * Ev;

  for (int64_t kt = 0; kt < n_ktiles; ++kt) {
    const int64_t j0 = kt * kBN;
    __syncthreads();  // the previous tile's sK, sV, sP are no longer read
    load_tile<T, kBN, D>(sK, LDK, kbase, E, j0, M, E);
    load_tile<T, kBN, D>(sV, D, vbase, Ev, j0, M, Ev);
    __syncthreads();

    const int64_t gj = j0 + lane;
    const float* qw = sQ + warp * kRows * D;  // this warp's rows of q
    const float* kr = sK + lane * LDK;        // this lane's key
    float qk[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) qk[i] = 0.f;
    for (int e = 0; e < E; ++e) {
      const float ke = kr[e];
#pragma unroll
      for (int i = 0; i < kRows; ++i) qk[i] = fmaf(qw[i * D + e], ke, qk[i]);
    }
    float pt[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int r = warp * kRows + i;
      const int64_t gi = q0 + r;
      float s = qk[i];
      const bool valid = gi < N && gj < M && !(p.causal && gj > gi);
      s *= p.scale;
      if (valid && p.mask != nullptr)
        s += p.mask[b * p.ms0 + h * p.ms1 + gi * p.ms2 + gj * p.ms3];
      if (!valid) s = -INFINITY;
      const float m_new = fmaxf(m_run[i], warp_allmax(s));
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // all masked so far: P~ = 0
      const float alpha = expf(m_run[i] - m_use);
      const float pe = expf(s - m_use);
      l_run[i] = alpha * l_run[i] + warp_allsum(pe);
      m_run[i] = m_new;
      pt[i] = pe;
      sP[r * kBN + lane] = pe;
#pragma unroll
      for (int c = 0; c < CW; ++c) o_acc[i][c] *= alpha;
#pragma unroll
      for (int tt = 0; tt < TC; ++tt) {
        nu[tt][i] *= alpha;
#pragma unroll
        for (int c = 0; c < CW; ++c) a_acc[tt][i][c] *= alpha;
      }
    }
    __syncwarp();  // sP rows of this warp are complete

    // O += P~ V over the tile's keys (zero rows of V beyond M have P~ = 0).
    for (int j = 0; j < kBN; ++j) {
      float vj[CW];
#pragma unroll
      for (int c = 0; c < CW; ++c) vj[c] = sV[j * D + lane + 32 * c];
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const float pij = sP[(warp * kRows + i) * kBN + j];
#pragma unroll
        for (int c = 0; c < CW; ++c) o_acc[i][c] = fmaf(pij, vj[c], o_acc[i][c]);
      }
    }

#pragma unroll
    for (int tt = 0; tt < TC; ++tt) {
      if (tt < tcount) {
        const int64_t tbh = (t0 + tt) * BH + bh;
        __syncthreads();  // the previous tangent's sKt, sVt, sW are no longer read
        load_tile<T, kBN, D>(sKt, LDK, p.tk + tbh * M * E, E, j0, M, E);
        load_tile<T, kBN, D>(sVt, D, p.tv + tbh * M * Ev, Ev, j0, M, Ev);
        __syncthreads();
        const float* qtw = sQt + (tt * kBM + warp * kRows) * D;  // this warp's rows of q'
        const float* ktr = sKt + lane * LDK;                     // this lane's key tangent
        float sp[kRows];
#pragma unroll
        for (int i = 0; i < kRows; ++i) sp[i] = 0.f;
        for (int e = 0; e < E; ++e) {
          const float ke = kr[e], kte = ktr[e];
#pragma unroll
          for (int i = 0; i < kRows; ++i)
            sp[i] = fmaf(qtw[i * D + e], ke, fmaf(qw[i * D + e], kte, sp[i]));
        }
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
          const float w = pt[i] * (p.scale * sp[i]);  // 0 where masked (P~ = 0)
          nu[tt][i] += w;
          sW[(warp * kRows + i) * kBN + lane] = w;
        }
        __syncwarp();
        for (int j = 0; j < kBN; ++j) {
          float vj[CW], vtj[CW];
#pragma unroll
          for (int c = 0; c < CW; ++c) {
            vj[c] = sV[j * D + lane + 32 * c];
            vtj[c] = sVt[j * D + lane + 32 * c];
          }
#pragma unroll
          for (int i = 0; i < kRows; ++i) {
            const int r = warp * kRows + i;
            const float wij = sW[r * kBN + j];
            const float pij = sP[r * kBN + j];
#pragma unroll
            for (int c = 0; c < CW; ++c)
              a_acc[tt][i][c] = fmaf(wij, vj[c], fmaf(pij, vtj[c], a_acc[tt][i][c]));
          }
        }
      }
    }
  }

  // Normalise and write.
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int r = warp * kRows + i;
    const int64_t gi = q0 + r;
    const float inv = l_run[i] > 0.f ? 1.f / l_run[i] : 0.f;
    float o[CW];
#pragma unroll
    for (int c = 0; c < CW; ++c) o[c] = o_acc[i][c] * inv;
    if (chunk == 0 && gi < N) {
      T* orow = p.out + (bh * N + gi) * Ev;
#pragma unroll
      for (int c = 0; c < CW; ++c) {
        const int64_t col = lane + 32 * c;
        if (col < Ev) orow[col] = static_cast<T>(o[c]);
      }
    }
#pragma unroll
    for (int tt = 0; tt < TC; ++tt) {
      const float mu = warp_allsum(nu[tt][i]) * inv;  // every lane joins the shuffle
      if (tt < tcount && gi < N) {
        T* yrow = p.tout + (((t0 + tt) * BH + bh) * N + gi) * Ev;
#pragma unroll
        for (int c = 0; c < CW; ++c) {
          const int64_t col = lane + 32 * c;
          if (col < Ev) yrow[col] = static_cast<T>(a_acc[tt][i][c] * inv - mu * o[c]);
        }
      }
    }
  }
}

template <typename T, int D, int TC>
bool launch(const Params<T>& base, size_t smem_limit, cudaStream_t stream) {
  constexpr size_t bytes = sizeof(float) * smem_floats<D, TC>();
  if (bytes > smem_limit) return false;
  Params<T> p = base;
  p.n_chunks = p.Tn > 0 ? (p.Tn + TC - 1) / TC : 1;
  const int64_t blocks = p.n_qtiles * p.B * p.H * p.n_chunks;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
              "attention_jvp: too many CUDA blocks (", blocks, "); split the batch");
  auto kernel = attention_jvp_kernel<T, D, TC>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  kernel<<<static_cast<unsigned>(blocks), kThreads, bytes, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

template <typename T, int D>
void launch_dim(const Params<T>& p, size_t smem_limit, cudaStream_t stream) {
  // Largest tangent chunk whose tiles fit in this device's shared memory.
  if (launch<T, D, 4>(p, smem_limit, stream)) return;
  if (launch<T, D, 1>(p, smem_limit, stream)) return;
  TORCH_CHECK(false, "attention_jvp: head dim ", D, " needs ",
              sizeof(float) * smem_floats<D, 1>(), " bytes of shared memory per block, this ",
              "device allows ", smem_limit);
}

std::tuple<at::Tensor, at::Tensor> attention_jvp_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& tq_in, const at::Tensor& tk_in, const at::Tensor& tv_in,
    const c10::optional<at::Tensor>& attn_mask, double scale, bool is_causal) {
  check_attention_jvp(q_in, k_in, v_in, tq_in, tk_in, tv_in, attn_mask, scale);
  PYVLMX_CHECK_CUDA("attention_jvp", q_in);
  const at::ScalarType dt = q_in.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
                   "attention_jvp: q must be float32, float16 or bfloat16 on CUDA, got ", dt);
  const int64_t E = q_in.size(3), Ev = v_in.size(3);
  TORCH_CHECK_VALUE(E <= 128 && Ev <= 128, "attention_jvp: head dims up to 128 on CUDA, got E=",
                    E, " and Ev=", Ev);
  c10::cuda::OptionalCUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor tq = tq_in.contiguous(), tk = tk_in.contiguous(), tv = tv_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), M = k.size(2), T = tq.size(0);
  at::Tensor out = at::empty({B, H, N, Ev}, q.options());
  at::Tensor tout = at::empty({T, B, H, N, Ev}, q.options());
  if (B * H * N == 0 || Ev == 0) return {out, tout};
  const at::Tensor mask = attention_jvp_additive_mask(attn_mask, q, M, at::kFloat);
  const size_t smem_limit = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto run = [&](auto tag) {
    using scalar_t = decltype(tag);
    Params<scalar_t> p{};
    p.q = q.data_ptr<scalar_t>();
    p.k = k.data_ptr<scalar_t>();
    p.v = v.data_ptr<scalar_t>();
    p.tq = tq.data_ptr<scalar_t>();
    p.tk = tk.data_ptr<scalar_t>();
    p.tv = tv.data_ptr<scalar_t>();
    p.out = out.data_ptr<scalar_t>();
    p.tout = tout.data_ptr<scalar_t>();
    p.mask = mask.defined() ? mask.data_ptr<float>() : nullptr;
    p.ms0 = mask.defined() ? mask.stride(0) : 0;
    p.ms1 = mask.defined() ? mask.stride(1) : 0;
    p.ms2 = mask.defined() ? mask.stride(2) : 0;
    p.ms3 = mask.defined() ? mask.stride(3) : 0;
    p.B = B, p.H = H, p.N = N, p.M = M, p.E = E, p.Ev = Ev, p.Tn = T;
    p.n_qtiles = (N + kBM - 1) / kBM;
    p.scale = static_cast<float>(scale);
    p.causal = is_causal;
    if (E <= 64 && Ev <= 64)
      launch_dim<scalar_t, 64>(p, smem_limit, stream);
    else
      launch_dim<scalar_t, 128>(p, smem_limit, stream);
  };
  if (dt == at::kFloat)
    run(float{});
  else if (dt == at::kHalf)
    run(at::Half{});
  else
    run(at::BFloat16{});
  return {out, tout};
}

}  // namespace
}  // namespace pyvlmx

TORCH_LIBRARY_IMPL(pyvlmx, CUDA, m) {
  m.impl("attention_jvp", &pyvlmx::attention_jvp_cuda);
}
