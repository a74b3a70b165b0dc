// The direct convolution's sum with bfloat16 operands and float32 accumulation (see include/directconv.h):
// `hd_direct_sum`'s 8 rows x 48 positions tile, where each step is a pair of input channels at one tap instead of
// one channel, fed to VDPBF16PS (two products per float32 lane). The input grids hold the two channels of a pair
// interleaved, one 32-bit word per position, so every tap is still one constant offset.
#include "directconv.h"
#include "bf16_bits.h"
#include "cpu.h"

#include <stdint.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HD_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define HD_INLINE static inline __attribute__((always_inline))

HD_INLINE HD_BF16 void sum_tile_bf16(const int V, float *restrict out, ptrdiff_t ldo, const uint32_t *restrict src,
                                     const ptrdiff_t *restrict offs, int pairs, const uint32_t *restrict w) {
    __m512 acc[8][3];
#pragma clang loop unroll(full)
    for (int r = 0; r < 8; r++) {
#pragma clang loop unroll(full)
        for (int v = 0; v < 3; v++) acc[r][v] = _mm512_setzero_ps();
    }
    for (int j = 0; j < pairs; j++) {
        const uint32_t *s = src + offs[j];
        const uint32_t *wj = w + 8 * (ptrdiff_t)j;
        __m512bh x[3];
#pragma clang loop unroll(full)
        for (int v = 0; v < 3; v++) {
            if (v < V) x[v] = (__m512bh)_mm512_loadu_si512((const void *)(s + 16 * v));
        }
#pragma clang loop unroll(full)
        for (int r = 0; r < 8; r++) {
            __m512bh b = (__m512bh)_mm512_set1_epi32((int)wj[r]);
#pragma clang loop unroll(full)
            for (int v = 0; v < 3; v++) {
                if (v < V) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], b, x[v]);
            }
        }
    }
#pragma clang loop unroll(full)
    for (int r = 0; r < 8; r++) {
#pragma clang loop unroll(full)
        for (int v = 0; v < 3; v++) {
            if (v < V) _mm512_storeu_ps(out + r * ldo + 16 * v, acc[r][v]);
        }
    }
}

HD_BF16 void hd_direct_sum_bf16(float *out, ptrdiff_t ldo, int rowBlocks,
                                const void *src_words, const ptrdiff_t *offs, int pairs,
                                const void *wpack_words, int count) {
    const uint32_t *src = (const uint32_t *)src_words, *wpack = (const uint32_t *)wpack_words;
    const int vectors = (count + 15) / 16;
    const int full = vectors / 3, rest = vectors % 3;
    const ptrdiff_t block = (ptrdiff_t)pairs * 8;
    for (int t = 0; t < full; t++) {
        const ptrdiff_t p = (ptrdiff_t)t * 48;
        for (int b = 0; b < rowBlocks; b++)
            sum_tile_bf16(3, out + (ptrdiff_t)b * 8 * ldo + p, ldo, src + p, offs, pairs, wpack + b * block);
    }
    const ptrdiff_t p = (ptrdiff_t)full * 48;
    if (rest == 2) {
        for (int b = 0; b < rowBlocks; b++)
            sum_tile_bf16(2, out + (ptrdiff_t)b * 8 * ldo + p, ldo, src + p, offs, pairs, wpack + b * block);
    } else if (rest == 1) {
        for (int b = 0; b < rowBlocks; b++)
            sum_tile_bf16(1, out + (ptrdiff_t)b * 8 * ldo + p, ldo, src + p, offs, pairs, wpack + b * block);
    }
}

HD_BF16 static void pair_words_avx512(uint32_t *dst, const float *lo, const float *hi, ptrdiff_t count) {
    ptrdiff_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m512i l = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(lo + i)));
        __m512i h = hi ? _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(hi + i))), 16)
                       : _mm512_setzero_si512();
        _mm512_storeu_si512((void *)(dst + i), _mm512_or_si512(l, h));
    }
    for (; i < count; i++) dst[i] = bf16_bits(lo[i]) | (hi ? bf16_bits(hi[i]) << 16 : 0);
}
#else
// Elsewhere (never called: hd_bf16_gemm_available() is 0), the same sums in scalar code.
void hd_direct_sum_bf16(float *out, ptrdiff_t ldo, int rowBlocks, const void *src_words, const ptrdiff_t *offs, int pairs,
                        const void *wpack_words, int count) {
    const uint32_t *src = (const uint32_t *)src_words, *wpack = (const uint32_t *)wpack_words;
    const int padded = (count + 15) / 16 * 16;
    for (int r = 0; r < 8 * rowBlocks; r++) {
        for (int p = 0; p < padded; p++) {
            float acc = 0;
            for (int j = 0; j < pairs; j++) {
                uint32_t w = wpack[(ptrdiff_t)(r / 8) * pairs * 8 + j * 8 + r % 8], x = src[offs[j] + p];
                float w0, w1, x0, x1;
                uint32_t b;
                b = w << 16; memcpy(&w0, &b, 4); b = w & 0xFFFF0000u; memcpy(&w1, &b, 4);
                b = x << 16; memcpy(&x0, &b, 4); b = x & 0xFFFF0000u; memcpy(&x1, &b, 4);
                acc += w0 * x0 + w1 * x1;
            }
            out[r * ldo + p] = acc;
        }
    }
}
#endif

void hd_bf16_pair_words(void *dst_words, const float *lo, const float *hi, ptrdiff_t count) {
    uint32_t *dst = (uint32_t *)dst_words;
#if defined(__x86_64__)
    int f = hd_cpu_features();
    if ((f & HD_CPU_AVX512BF16) && (f & HD_CPU_AVX512BW) && (f & HD_CPU_AVX512F) && (f & HD_CPU_AVX512VL)) {
        pair_words_avx512(dst, lo, hi, count);
        return;
    }
#endif
    for (ptrdiff_t i = 0; i < count; i++) dst[i] = bf16_bits(lo[i]) | (hi ? bf16_bits(hi[i]) << 16 : 0);
}
