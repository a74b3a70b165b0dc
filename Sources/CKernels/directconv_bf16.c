// The direct convolution's sum with bfloat16 operands and float32 accumulation (see include/directconv.h):
// `hd_direct_sum`'s 8 rows x 48 positions tile, where each step is a pair of input channels at one tap instead of
// one channel, fed to VDPBF16PS (two products per float32 lane). The input grids hold the two channels of a pair
// interleaved, one 32-bit word per position, so every tap is still one constant offset.
#include "directconv.h"
#include "bf16_bits.h"
#include "directconv_tiles.h"
#include "gemm_bf16.h"

#include <stdint.h>

#if defined(__x86_64__)
#include <immintrin.h>
#include "loads.h"
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
#define SUM_TILE(V, o, s, w) sum_tile_bf16(V, o, ldo, s, offs, pairs, w)
    HD_DIRECT_TILES(SUM_TILE, out, ldo, rowBlocks, src, pairs, wpack, count);
#undef SUM_TILE
}

// hd_direct_wgrad with bfloat16 operands: 4 gradient rows x 6 pairs of dot products over 32 positions a step, each
// float32 lane summing two adjacent positions (VDPBF16PS); the lanes are summed once at the end.
HD_BF16 void hd_direct_wgrad_bf16(float *dw, ptrdiff_t ldw, int rows, int pairs,
                                  const void *g_halves, ptrdiff_t ldg, ptrdiff_t gImage,
                                  const void *src_halves, const ptrdiff_t *offs, ptrdiff_t sImage,
                                  int images, int count) {
    const uint16_t *g = (const uint16_t *)g_halves, *src = (const uint16_t *)src_halves;
    const int vectors = count / 32, rem = count % 32;
    const __mmask32 tail = (__mmask32)((1ull << rem) - 1ull);
    for (int r0 = 0; r0 < rows; r0 += 4) {
        ptrdiff_t gr[4];
        for (int i = 0; i < 4; i++) gr[i] = (ptrdiff_t)(r0 + i < rows ? r0 + i : rows - 1) * ldg;
        for (int j0 = 0; j0 < pairs; j0 += 6) {
            ptrdiff_t so[6];
            for (int k = 0; k < 6; k++) so[k] = offs[j0 + k < pairs ? j0 + k : pairs - 1];
            __m512 acc[4][6];
#pragma clang loop unroll(full)
            for (int i = 0; i < 4; i++) {
#pragma clang loop unroll(full)
                for (int k = 0; k < 6; k++) acc[i][k] = _mm512_setzero_ps();
            }
            for (int img = 0; img < images; img++) {
                const uint16_t *gi = g + (ptrdiff_t)img * gImage, *si = src + (ptrdiff_t)img * sImage;
                const uint16_t *gp[4] = {gi + gr[0], gi + gr[1], gi + gr[2], gi + gr[3]};
                const uint16_t *sp[6] = {si + so[0], si + so[1], si + so[2], si + so[3], si + so[4], si + so[5]};
                ptrdiff_t p = 0;
                for (int v = 0; v < vectors; v++, p += 32) {
                    __m512bh x[6];
#pragma clang loop unroll(full)
                    for (int k = 0; k < 6; k++) x[k] = (__m512bh)_mm512_loadu_si512((const void *)(sp[k] + p));
#pragma clang loop unroll(full)
                    for (int i = 0; i < 4; i++) {
                        __m512bh y = (__m512bh)_mm512_loadu_si512((const void *)(gp[i] + p));
#pragma clang loop unroll(full)
                        for (int k = 0; k < 6; k++) acc[i][k] = _mm512_dpbf16_ps(acc[i][k], y, x[k]);
                    }
                }
                if (rem) {
                    __m512bh x[6];
#pragma clang loop unroll(full)
                    for (int k = 0; k < 6; k++) x[k] = (__m512bh)_mm512_maskz_loadu_epi16(tail, sp[k] + p);
#pragma clang loop unroll(full)
                    for (int i = 0; i < 4; i++) {
                        __m512bh y = (__m512bh)_mm512_maskz_loadu_epi16(tail, gp[i] + p);
#pragma clang loop unroll(full)
                        for (int k = 0; k < 6; k++) acc[i][k] = _mm512_dpbf16_ps(acc[i][k], y, x[k]);
                    }
                }
            }
            for (int i = 0; i < 4 && r0 + i < rows; i++) {
                float *d = dw + (ptrdiff_t)(r0 + i) * ldw + j0;
                for (int k = 0; k < 6 && j0 + k < pairs; k++) d[k] += _mm512_reduce_add_ps(acc[i][k]);
            }
        }
    }
}

HD_BF16 static void halves_avx512(uint16_t *dst, const float *src, ptrdiff_t count) {
    ptrdiff_t i = 0;
    for (; i + 16 <= count; i += 16) _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
    for (; i < count; i++) dst[i] = (uint16_t)bf16_bits(src[i]);
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
// 16 floats from src[k * step] (step 1 or 2) for k < n <= 16; lanes past n are zero. No load reads past the last
// element used, so a row at the end of a buffer is safe; full vectors take plain loads (loads.h): for step 2, src[0..15]
// and src[15..30].
HD_INLINE HD_BF16 __m512 strided16(const float *src, int n, ptrdiff_t step) {
    if (step == 1) return hd_load_ps((__mmask16)((1u << n) - 1u), src);
    if (n == 16) {
        const __m512i pick = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 14, 12, 10, 8, 6, 4, 2, 0);
        return _mm512_permutex2var_ps(_mm512_loadu_ps(src), pick, _mm512_loadu_ps(src + 15));
    }
    const __m512i evenIdx = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const int used = 2 * n - 1;   // src[0 .. 2n - 2]
    const __mmask16 m0 = (__mmask16)(used >= 16 ? 0xFFFFu : (1u << used) - 1u);
    const __mmask16 m1 = (__mmask16)(used <= 16 ? 0u : (1u << (used - 16)) - 1u);
    return _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(m0, src), evenIdx, _mm512_maskz_loadu_ps(m1, src + 16));
}

HD_BF16 static void halves_strided_avx512(uint16_t *dst, const float *src, ptrdiff_t n, ptrdiff_t step) {
    for (ptrdiff_t k = 0; k < n; k += 16) {
        const int m = n - k < 16 ? (int)(n - k) : 16;
        __m256i h = (__m256i)_mm512_cvtneps_pbh(strided16(src + k * step, m, step));
        _mm256_mask_storeu_epi16(dst + k, (__mmask16)((1u << m) - 1u), h);
    }
}

HD_BF16 static void pair_words_strided_avx512(uint32_t *dst, const float *lo, const float *hi, ptrdiff_t n, ptrdiff_t step) {
    for (ptrdiff_t k = 0; k < n; k += 16) {
        const int m = n - k < 16 ? (int)(n - k) : 16;
        __m512i l = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(strided16(lo + k * step, m, step)));
        __m512i h = hi ? _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(strided16(hi + k * step, m, step))), 16)
                       : _mm512_setzero_si512();
        _mm512_mask_storeu_epi32(dst + k, (__mmask16)((1u << m) - 1u), _mm512_or_si512(l, h));
    }
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
void hd_direct_wgrad_bf16(float *dw, ptrdiff_t ldw, int rows, int pairs, const void *g_halves, ptrdiff_t ldg, ptrdiff_t gImage,
                          const void *src_halves, const ptrdiff_t *offs, ptrdiff_t sImage, int images, int count) {
    const uint16_t *g = (const uint16_t *)g_halves, *src = (const uint16_t *)src_halves;
    for (int r = 0; r < rows; r++) {
        for (int j = 0; j < pairs; j++) {
            float acc = 0;
            for (int img = 0; img < images; img++) {
                for (int p = 0; p < count; p++) {
                    uint32_t a = (uint32_t)g[img * gImage + r * ldg + p] << 16, b = (uint32_t)src[img * sImage + offs[j] + p] << 16;
                    float x, y;
                    memcpy(&x, &a, 4); memcpy(&y, &b, 4);
                    acc += x * y;
                }
            }
            dw[r * ldw + j] += acc;
        }
    }
}
#endif

void hd_bf16_halves(void *dst_halves, const float *src, ptrdiff_t count) {
    uint16_t *dst = (uint16_t *)dst_halves;
#if defined(__x86_64__)
    if (hd_bf16_gemm_available()) {
        halves_avx512(dst, src, count);
        return;
    }
#endif
    for (ptrdiff_t i = 0; i < count; i++) dst[i] = (uint16_t)bf16_bits(src[i]);
}

void hd_bf16_pair_words(void *dst_words, const float *lo, const float *hi, ptrdiff_t count) {
    uint32_t *dst = (uint32_t *)dst_words;
#if defined(__x86_64__)
    if (hd_bf16_gemm_available()) {
        pair_words_avx512(dst, lo, hi, count);
        return;
    }
#endif
    for (ptrdiff_t i = 0; i < count; i++) dst[i] = bf16_bits(lo[i]) | (hi ? bf16_bits(hi[i]) << 16 : 0);
}

void hd_bf16_halves_strided(void *dst_halves, const float *src, ptrdiff_t n, ptrdiff_t step) {
    uint16_t *dst = (uint16_t *)dst_halves;
#if defined(__x86_64__)
    if (hd_bf16_gemm_available() && (step == 1 || step == 2)) {
        halves_strided_avx512(dst, src, n, step);
        return;
    }
#endif
    for (ptrdiff_t k = 0; k < n; k++) dst[k] = (uint16_t)bf16_bits(src[k * step]);
}

void hd_bf16_pair_words_strided(void *dst_words, const float *lo, const float *hi, ptrdiff_t n, ptrdiff_t step) {
    uint32_t *dst = (uint32_t *)dst_words;
#if defined(__x86_64__)
    if (hd_bf16_gemm_available() && (step == 1 || step == 2)) {
        pair_words_strided_avx512(dst, lo, hi, n, step);
        return;
    }
#endif
    for (ptrdiff_t k = 0; k < n; k++) dst[k] = bf16_bits(lo[k * step]) | (hi ? bf16_bits(hi[k * step]) << 16 : 0);
}
