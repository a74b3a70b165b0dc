// AVX-512 micro-kernels of the direct convolution. See include/directconv.h for the contracts and
// Sources/TensorCore/DirectConv.swift for how convolutions are laid out on grids.
//
// The functions carry a `target` attribute instead of the whole file being compiled with -mavx512f, so the
// library still loads on CPUs without AVX-512; callers ask CPUCapabilities (hd_cpu_features) first.
#include "directconv.h"
#include "clones.h"
#include "directconv_tiles.h"

#include <immintrin.h>
#include <stdint.h>


#if defined(__x86_64__)

#define HD_TARGET __attribute__((target("avx512f,fma")))
#define HD_INLINE static inline __attribute__((always_inline))

// One tile: 8 output rows x V vectors of 16 positions, summed over all pairs. Each pair loads V input vectors
// and broadcasts 8 weights (contiguous in the packed block): 8 * V FMAs for V + 8 loads.
HD_INLINE HD_TARGET void sum_tile(const int V, float *restrict out, ptrdiff_t ldo, const float *restrict src,
                                  const ptrdiff_t *restrict offs, int pairs, const float *restrict w) {
    __m512 acc[8][3];
#pragma clang loop unroll(full)
    for (int r = 0; r < 8; r++) {
#pragma clang loop unroll(full)
        for (int v = 0; v < 3; v++) acc[r][v] = _mm512_setzero_ps();
    }
    for (int j = 0; j < pairs; j++) {
        const float *s = src + offs[j];
        const float *wj = w + 8 * (ptrdiff_t)j;
        __m512 x[3];
#pragma clang loop unroll(full)
        for (int v = 0; v < 3; v++) {
            if (v < V) x[v] = _mm512_loadu_ps(s + 16 * v);
        }
#pragma clang loop unroll(full)
        for (int r = 0; r < 8; r++) {
            __m512 b = _mm512_set1_ps(wj[r]);
#pragma clang loop unroll(full)
            for (int v = 0; v < 3; v++) {
                if (v < V) acc[r][v] = _mm512_fmadd_ps(b, x[v], acc[r][v]);
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

HD_TARGET void hd_direct_sum(float *out, ptrdiff_t ldo, int rowBlocks,
                             const float *src, const ptrdiff_t *offs, int pairs,
                             const float *wpack, int count) {
#define SUM_TILE(V, o, s, w) sum_tile(V, o, ldo, s, offs, pairs, w)
    HD_DIRECT_TILES(SUM_TILE, out, ldo, rowBlocks, src, pairs, wpack, count);
#undef SUM_TILE
}

// Weight gradient: a 4 x 6 block of dot products (4 gradient rows x 6 pairs) over the positions of `images`
// images, 16 lanes at a time; the lanes are summed once at the end.
HD_TARGET void hd_direct_wgrad(float *dw, ptrdiff_t ldw, int rows, int pairs,
                               const float *g, ptrdiff_t ldg, ptrdiff_t gImage,
                               const float *src, const ptrdiff_t *offs, ptrdiff_t sImage,
                               int images, int count) {
    const int vectors = count / 16, rem = count % 16;
    const __mmask16 tail = (__mmask16)((1u << rem) - 1u);
    for (int r0 = 0; r0 < rows; r0 += 4) {
        // Rows and pairs past the end repeat the last one; their sums are not stored.
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
                const float *gi = g + (ptrdiff_t)img * gImage;
                const float *si = src + (ptrdiff_t)img * sImage;
                const float *g0 = gi + gr[0], *g1 = gi + gr[1], *g2 = gi + gr[2], *g3 = gi + gr[3];
                const float *s0 = si + so[0], *s1 = si + so[1], *s2 = si + so[2];
                const float *s3 = si + so[3], *s4 = si + so[4], *s5 = si + so[5];
                ptrdiff_t p = 0;
                for (int v = 0; v < vectors; v++, p += 16) {
                    __m512 x[6] = {_mm512_loadu_ps(s0 + p), _mm512_loadu_ps(s1 + p), _mm512_loadu_ps(s2 + p),
                                   _mm512_loadu_ps(s3 + p), _mm512_loadu_ps(s4 + p), _mm512_loadu_ps(s5 + p)};
                    const float *gp[4] = {g0 + p, g1 + p, g2 + p, g3 + p};
#pragma clang loop unroll(full)
                    for (int i = 0; i < 4; i++) {
                        __m512 y = _mm512_loadu_ps(gp[i]);
#pragma clang loop unroll(full)
                        for (int k = 0; k < 6; k++) acc[i][k] = _mm512_fmadd_ps(y, x[k], acc[i][k]);
                    }
                }
                if (rem) {
                    __m512 x[6] = {_mm512_maskz_loadu_ps(tail, s0 + p), _mm512_maskz_loadu_ps(tail, s1 + p),
                                   _mm512_maskz_loadu_ps(tail, s2 + p), _mm512_maskz_loadu_ps(tail, s3 + p),
                                   _mm512_maskz_loadu_ps(tail, s4 + p), _mm512_maskz_loadu_ps(tail, s5 + p)};
                    const float *gp[4] = {g0 + p, g1 + p, g2 + p, g3 + p};
#pragma clang loop unroll(full)
                    for (int i = 0; i < 4; i++) {
                        __m512 y = _mm512_maskz_loadu_ps(tail, gp[i]);
#pragma clang loop unroll(full)
                        for (int k = 0; k < 6; k++) acc[i][k] = _mm512_fmadd_ps(y, x[k], acc[i][k]);
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

// Stride-2 phase planes: split a row into its even and odd elements (and back), 16 outputs per permute.
HD_TARGET void hd_deinterleave(const float *src, ptrdiff_t n, float *even, float *odd) {
    const __m512i evenIdx = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i oddIdx = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    ptrdiff_t k = 0;
    for (; 2 * k + 32 <= n; k += 16) {
        __m512 a = _mm512_loadu_ps(src + 2 * k), b = _mm512_loadu_ps(src + 2 * k + 16);
        if (even) _mm512_storeu_ps(even + k, _mm512_permutex2var_ps(a, evenIdx, b));
        if (odd) _mm512_storeu_ps(odd + k, _mm512_permutex2var_ps(a, oddIdx, b));
    }
    for (; 2 * k < n; k++) {
        if (even) even[k] = src[2 * k];
        if (odd && 2 * k + 1 < n) odd[k] = src[2 * k + 1];
    }
}

HD_TARGET void hd_interleave_add(float *dst, ptrdiff_t n, const float *even, const float *odd) {
    const __m512i lowIdx = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i highIdx = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    ptrdiff_t k = 0;
    if (even && odd) {
        for (; 2 * k + 32 <= n; k += 16) {
            __m512 e = _mm512_loadu_ps(even + k), o = _mm512_loadu_ps(odd + k);
            float *d = dst + 2 * k;
            _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), _mm512_permutex2var_ps(e, lowIdx, o)));
            _mm512_storeu_ps(d + 16, _mm512_add_ps(_mm512_loadu_ps(d + 16), _mm512_permutex2var_ps(e, highIdx, o)));
        }
    }
    for (; 2 * k < n; k++) {
        if (even) dst[2 * k] += even[k];
        if (odd && 2 * k + 1 < n) dst[2 * k + 1] += odd[k];
    }
}

#else

void hd_deinterleave(const float *src, ptrdiff_t n, float *even, float *odd) {
    for (ptrdiff_t k = 0; 2 * k < n; k++) {
        if (even) even[k] = src[2 * k];
        if (odd && 2 * k + 1 < n) odd[k] = src[2 * k + 1];
    }
}

void hd_interleave_add(float *dst, ptrdiff_t n, const float *even, const float *odd) {
    for (ptrdiff_t k = 0; 2 * k < n; k++) {
        if (even) dst[2 * k] += even[k];
        if (odd && 2 * k + 1 < n) dst[2 * k + 1] += odd[k];
    }
}

void hd_direct_sum(float *out, ptrdiff_t ldo, int rowBlocks, const float *src, const ptrdiff_t *offs, int pairs,
                   const float *wpack, int count) {
    (void)out; (void)ldo; (void)rowBlocks; (void)src; (void)offs; (void)pairs; (void)wpack; (void)count;
}

void hd_direct_wgrad(float *dw, ptrdiff_t ldw, int rows, int pairs, const float *g, ptrdiff_t ldg, ptrdiff_t gImage,
                     const float *src, const ptrdiff_t *offs, ptrdiff_t sImage, int images, int count) {
    (void)dw; (void)ldw; (void)rows; (void)pairs; (void)g; (void)ldg; (void)gImage; (void)src; (void)offs;
    (void)sImage; (void)images; (void)count;
}

#endif
