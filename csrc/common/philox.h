// Counter-based random numbers shared bit-for-bit by the CPU and CUDA kernels.
//
// Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as
// easy as 1, 2, 3", SC'11): a bijection of a 128-bit counter under a 64-bit
// key.  The random matrix Omega of the sketch ops has entry (row, col) equal
// to a function of (seed, row, col) only:
//
//   gaussian:   counter = (col / 4 [lo, hi], row [lo, hi]), key = seed [lo, hi]
//               -> words w0..w3; entry col uses the pair (w_{2p}, w_{2p+1}),
//               p = (col % 4) / 2, with Box-Muller:
//                 u1 = (w_{2p} + 0.5) 2^-32 in (0, 1),  u2 = w_{2p+1} 2^-32 in [0, 1)
//                 z  = sqrt(-2 ln u1) * (col even ? cos 2 pi u2 : sin 2 pi u2)
//   rademacher: counter = (col / 128 [lo, hi], row [lo, hi]); entry col is
//               +1 if bit (col % 128) of w0..w3 (w0 bit 0 first) is set, else -1.
//
// Bit-identical on CPU and CUDA: ln, sin and cos are NOT taken from libm or
// CUDA's math library (their last bits differ); they are evaluated below with
// a fixed sequence of IEEE-754 double +, -, *, / and sqrt, which are
// correctly rounded on both.  On the device every operation is written with
// the __d*_rn intrinsics so that nvcc cannot contract a*b+c into an FMA; on
// the host the default x86-64 target has no FMA and GCC does not contract
// across these separate statements (pyvlmx._reference.omega repeats the same
// sequence with torch ops, and the tests compare the bits).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define PYVLMX_HD __host__ __device__ __forceinline__
#else
#define PYVLMX_HD inline
#endif

namespace pyvlmx {
namespace rng {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Words {
  uint32_t w[4];
};

PYVLMX_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Philox4x32 with 10 rounds on counter c under key (k0, k1).
PYVLMX_HD Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                              uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kPhiloxM0, c0, hi0, lo0);
    mulhilo(kPhiloxM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  Words out;
  out.w[0] = c0;
  out.w[1] = c1;
  out.w[2] = c2;
  out.w[3] = c3;
  return out;
}

// The words of Omega's group `group` in row `row` (group = col / 4 for
// Gaussian, col / 128 for Rademacher).
PYVLMX_HD Words omega_words(uint64_t seed, uint64_t row, uint64_t group) {
  return philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32),
                       static_cast<uint32_t>(row), static_cast<uint32_t>(row >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// ---- correctly rounded primitives that nvcc may not fuse -------------------
PYVLMX_HD double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
PYVLMX_HD double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
PYVLMX_HD double dsub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
PYVLMX_HD double ddiv(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
PYVLMX_HD double dsqrt(double a) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// Exact split u = m 2^e with m in [0.5, 1) for a positive normal double u
// (all inputs here are >= 2^-33): the same result as frexp, by bit surgery.
PYVLMX_HD double frexp_exact(double u, int& e) {
#if defined(__CUDA_ARCH__)
  const unsigned long long bits = static_cast<unsigned long long>(__double_as_longlong(u));
#else
  unsigned long long bits;
  std::memcpy(&bits, &u, sizeof(bits));
#endif
  e = static_cast<int>((bits >> 52) & 0x7ffULL) - 1022;
  const unsigned long long mbits = (bits & 0x800fffffffffffffULL) | (0x3feULL << 52);
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(mbits));
#else
  double m;
  std::memcpy(&m, &mbits, sizeof(m));
  return m;
#endif
}

constexpr double kSqrtHalf = 0.7071067811865476;
constexpr double kLn2Hi = 0.6931471803691238;
constexpr double kLn2Lo = 1.9082149292705877e-10;
constexpr double kHalfPi = 1.5707963267948966;
constexpr double kTwoM32 = 2.3283064365386963e-10;  // 2^-32, exact

// ln(u) for u in (0, 1]: u = m 2^e, m in [sqrt(1/2), sqrt(2)),
// ln m = 2 atanh(s) with s = (m - 1) / (m + 1), series to s^23.
PYVLMX_HD double log_unit(double u) {
  constexpr double c[11] = {0.3333333333333333,   0.2,
                            0.14285714285714285,  0.1111111111111111,
                            0.09090909090909091,  0.07692307692307693,
                            0.06666666666666667,  0.058823529411764705,
                            0.05263157894736842,  0.047619047619047616,
                            0.043478260869565216};
  int e = 0;
  double m = frexp_exact(u, e);
  if (m < kSqrtHalf) {
    m = dmul(m, 2.0);
    e -= 1;
  }
  const double ed = static_cast<double>(e);
  const double f = dsub(m, 1.0);
  const double s = ddiv(f, dadd(f, 2.0));
  const double s2 = dmul(s, s);
  double p = c[10];
  for (int k = 9; k >= 0; --k) p = dadd(dmul(p, s2), c[k]);
  const double two_s = dadd(s, s);
  const double logm = dadd(two_s, dmul(two_s, dmul(s2, p)));
  return dadd(dmul(ed, kLn2Hi), dadd(dmul(ed, kLn2Lo), logm));
}

// cos(2 pi t) and sin(2 pi t) for t in [0, 1): quadrant from 4t (exact),
// remainder |r| <= pi/4, Taylor series to r^19 / r^18.
PYVLMX_HD void sincos_turns(double t, double& cos_out, double& sin_out) {
  constexpr double cs[9] = {-0.16666666666666666,   0.008333333333333333,
                            -0.0001984126984126984, 2.7557319223985893e-06,
                            -2.505210838544172e-08, 1.6059043836821613e-10,
                            -7.647163731819816e-13, 2.8114572543455206e-15,
                            -8.22063524662433e-18};
  constexpr double cc[9] = {-0.5,                   0.041666666666666664,
                            -0.001388888888888889,  2.48015873015873e-05,
                            -2.755731922398589e-07, 2.08767569878681e-09,
                            -1.1470745597729725e-11, 4.779477332387385e-14,
                            -1.5619206968586225e-16};
  const double q4 = dmul(t, 4.0);   // exact, in [0, 4)
  int q = static_cast<int>(q4);      // floor for q4 >= 0
  double f = dsub(q4, static_cast<double>(q));
  if (f > 0.5) {
    f = dsub(f, 1.0);
    q += 1;
  }
  const double r = dmul(f, kHalfPi);
  const double r2 = dmul(r, r);
  double ps = cs[8];
  for (int k = 7; k >= 0; --k) ps = dadd(dmul(ps, r2), cs[k]);
  const double s = dadd(r, dmul(r, dmul(r2, ps)));
  double pc = cc[8];
  for (int k = 7; k >= 0; --k) pc = dadd(dmul(pc, r2), cc[k]);
  const double c = dadd(1.0, dmul(r2, pc));
  switch (q & 3) {
    case 0: cos_out = c; sin_out = s; break;
    case 1: cos_out = -s; sin_out = c; break;
    case 2: cos_out = -c; sin_out = -s; break;
    default: cos_out = s; sin_out = -c; break;
  }
}

// Box-Muller on two 32-bit words: (z_cos, z_sin), both N(0, 1).
PYVLMX_HD void box_muller(uint32_t wa, uint32_t wb, double& z_cos, double& z_sin) {
  const double u1 = dmul(dadd(static_cast<double>(wa), 0.5), kTwoM32);
  const double u2 = dmul(static_cast<double>(wb), kTwoM32);
  const double rad = dsqrt(dmul(log_unit(u1), -2.0));
  double c, s;
  sincos_turns(u2, c, s);
  z_cos = dmul(rad, c);
  z_sin = dmul(rad, s);
}

// The four Gaussian entries (row, 4 g .. 4 g + 3).
PYVLMX_HD void gaussian_group(uint64_t seed, uint64_t row, uint64_t g, double out[4]) {
  const Words w = omega_words(seed, row, g);
  box_muller(w.w[0], w.w[1], out[0], out[1]);
  box_muller(w.w[2], w.w[3], out[2], out[3]);
}

// Rademacher entry (row, col) as +-1.
PYVLMX_HD double rademacher_entry(const Words& w, uint64_t col) {
  const int bit = static_cast<int>(col & 127);
  return ((w.w[bit >> 5] >> (bit & 31)) & 1u) ? 1.0 : -1.0;
}

}  // namespace rng
}  // namespace pyvlmx
