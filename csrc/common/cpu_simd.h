// Runtime-dispatched vector code without changing the build flags.
//
// The extension is compiled for baseline x86-64 (SSE2).  A hot CPU loop that
// is wrapped in a non-template function marked PYVLMX_CLONES_AVX2 (or
// PYVLMX_CLONES_FMA) is compiled twice by GCC/Clang, and the loader picks the
// AVX2 (+FMA) copy on CPUs that have it.  Inline templates called from the
// wrapper are compiled into each copy.  FMA contraction changes rounding (by
// at most an ulp per operation), so it is used only where the tests compare
// with a tolerance (SSIM), never in the random-number code.
#pragma once

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__CUDACC__) && \
    !defined(__APPLE__)
#define PYVLMX_CLONES_AVX2 __attribute__((target_clones("avx2", "default")))
#define PYVLMX_CLONES_FMA __attribute__((target_clones("arch=haswell", "default")))
#define PYVLMX_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define PYVLMX_CLONES_AVX2
#define PYVLMX_CLONES_FMA
#define PYVLMX_ALWAYS_INLINE inline
#endif
