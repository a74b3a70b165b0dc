// Loads of 16 floats (or 16 32-bit words) under a lane mask that take the plain load when every lane is wanted.
//
// Why: on the AMD EPYC Zen 4 these kernels were tuned on, streaming through memory with masked loads ran at about a
// fifth of the rate of plain loads (6.9 against 31-35 GB/s converting rows of float32 to bfloat16; within 25% of
// each other when the data sat in L1), as if masked loads did not train the hardware prefetchers. Kernels that mask
// every load because the last vector of a row may be partial lose that rate on every full vector. A plain load
// reads the same bytes as a masked load with all lanes set, so the results are the same bit for bit.
#ifndef HISTODISTILL_LOADS_H
#define HISTODISTILL_LOADS_H
#if defined(__x86_64__)
#include <immintrin.h>

/// Lanes of `m` from p[0..15], the others zero.
__attribute__((target("avx512f"), always_inline))
static inline __m512 hd_load_ps(__mmask16 m, const float *p) {
    return m == (__mmask16)0xFFFF ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
}

/// Lanes of `m` from p[0..15], the others from `fill`.
__attribute__((target("avx512f"), always_inline))
static inline __m512 hd_load_or_ps(__m512 fill, __mmask16 m, const float *p) {
    return m == (__mmask16)0xFFFF ? _mm512_loadu_ps(p) : _mm512_mask_loadu_ps(fill, m, p);
}

/// Lanes of `m` from the 32-bit words p[0..15], the others zero.
__attribute__((target("avx512f"), always_inline))
static inline __m512i hd_load_epi32(__mmask16 m, const void *p) {
    return m == (__mmask16)0xFFFF ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32(m, p);
}
#endif
#endif
