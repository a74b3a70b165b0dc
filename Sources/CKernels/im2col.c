// Gather-map im2col / col2im for narrow maps (see include/im2col.h). AVX-512 masked gathers and scatters where
// the CPU has them and they are faster than the scalar loop (timed once), the scalar loop elsewhere.
#include "im2col.h"
#include "clones.h"
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HD_AVX512 __attribute__((target("avx512f")))

// 16 positions at a time: the padding lanes (map -1) are masked out of the load and written as 0.
HD_AVX512
static void gather_avx512(float *d, const float *x, const int32_t *m, ptrdiff_t len) {
    ptrdiff_t j = 0;
    for (; j + 16 <= len; j += 16) {
        __m512i idx = _mm512_loadu_si512((const void *)(m + j));
        __mmask16 valid = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512());
        __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, idx, x, 4);
        _mm512_storeu_ps(d + j, v);
    }
    if (j < len) {
        __mmask16 tail = (__mmask16)((1u << (len - j)) - 1);
        __m512i idx = _mm512_maskz_loadu_epi32(tail, m + j);
        __mmask16 valid = _mm512_mask_cmpge_epi32_mask(tail, idx, _mm512_setzero_si512());
        __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, idx, x, 4);
        _mm512_mask_storeu_ps(d + j, tail, v);
    }
}

// dx[m[j]] += s[j]; conflict-free because one tap's map is injective over its valid positions.
HD_AVX512
static void scatter_add_avx512(float *dx, const float *s, const int32_t *m, ptrdiff_t len) {
    for (ptrdiff_t j = 0; j < len; j += 16) {
        __mmask16 lanes = len - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (len - j)) - 1);
        __m512i idx = _mm512_maskz_loadu_epi32(lanes, m + j);
        __mmask16 valid = _mm512_mask_cmpge_epi32_mask(lanes, idx, _mm512_setzero_si512());
        __m512 old = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, idx, dx, 4);
        __m512 sum = _mm512_add_ps(old, _mm512_maskz_loadu_ps(valid, s + j));
        _mm512_mask_i32scatter_ps(dx, valid, idx, sum, 4);
    }
}

#else
static void gather_avx512(float *d, const float *x, const int32_t *m, ptrdiff_t len) { (void)d; (void)x; (void)m; (void)len; }
static void scatter_add_avx512(float *dx, const float *s, const int32_t *m, ptrdiff_t len) { (void)dx; (void)s; (void)m; (void)len; }
#endif

static void gather_scalar(float *d, const float *x, const int32_t *m, ptrdiff_t len) {
    for (ptrdiff_t j = 0; j < len; j++) d[j] = m[j] >= 0 ? x[m[j]] : 0.0f;
}

static void scatter_add_scalar(float *dx, const float *s, const int32_t *m, ptrdiff_t len) {
    for (ptrdiff_t j = 0; j < len; j++) if (m[j] >= 0) dx[m[j]] += s[j];
}

// Calls body(row r, column j0, length, channel offset of image/channel, map entries) for every row and every
// stretch of positions that lies inside one image.
#define FOR_EACH_STRETCH(BODY)                                                                   \
    do {                                                                                         \
        ptrdiff_t end_ = start + count;                                                          \
        for (int r = 0; r < channels * taps; r++) {                                              \
            int c = r / taps, tap = r % taps;                                                    \
            ptrdiff_t p = start;                                                                 \
            while (p < end_) {                                                                   \
                ptrdiff_t img = p / plane, q = p - img * plane;                                  \
                ptrdiff_t len = plane - q < end_ - p ? plane - q : end_ - p;                     \
                ptrdiff_t j0 = p - start;                                                        \
                ptrdiff_t chan = img * inImage + c * chPlane;                                    \
                const int32_t *mp = map + (ptrdiff_t)tap * plane + q;                            \
                BODY;                                                                            \
                p += len;                                                                        \
            }                                                                                    \
        }                                                                                        \
    } while (0)

// The kernels in use: HD_GATHER_SCALAR or HD_GATHER_AVX512 for each of the gather (im2col) and the scatter-add
// (col2im); -1 until chosen. Both variants compute the same bits (a gather copies; for one tap every input element
// gets one addition), so the choice is by speed only: AVX-512 gathers and scatters are microcoded on some CPUs
// (AMD Zen 4's scatter ran about 2x slower than the scalar loop), so each is timed once against the scalar loop.
static int gather_kernel = -1, scatter_kernel = -1;
static pthread_once_t chosen = PTHREAD_ONCE_INIT;

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// Times both variants of each kernel on a 3x3 map over 14x14 planes (64 channels), alternating, best of 5 each.
static void choose_kernels(void) {
    if (!hd_has_avx512()) { gather_kernel = scatter_kernel = HD_GATHER_SCALAR; return; }
    enum { W = 14, PLANE = W * W, TAPS = 9, CH = 64 };
    int32_t *map = malloc(sizeof(int32_t) * TAPS * PLANE);
    float *x = calloc((size_t)CH * PLANE, sizeof(float)), *col = calloc((size_t)CH * TAPS * PLANE, sizeof(float));
    if (!map || !x || !col) { free(map); free(x); free(col); gather_kernel = scatter_kernel = HD_GATHER_AVX512; return; }
    for (int t = 0; t < TAPS; t++)
        for (int q = 0; q < PLANE; q++) {
            int y = q / W + t / 3 - 1, xx = q % W + t % 3 - 1;
            map[t * PLANE + q] = (y < 0 || y >= W || xx < 0 || xx >= W) ? -1 : y * W + xx;
        }
    double best[4] = {1e30, 1e30, 1e30, 1e30};
    for (int round = 0; round < 5; round++)
        for (int v = 0; v < 4; v++) {
            double t0 = seconds_now();
            for (int c = 0; c < CH; c++)
                for (int t = 0; t < TAPS; t++) {
                    float *row = col + ((size_t)c * TAPS + t) * PLANE, *plane = x + (size_t)c * PLANE;
                    const int32_t *m = map + t * PLANE;
                    switch (v) {
                    case 0: gather_scalar(row, plane, m, PLANE); break;
                    case 1: gather_avx512(row, plane, m, PLANE); break;
                    case 2: scatter_add_scalar(plane, row, m, PLANE); break;
                    default: scatter_add_avx512(plane, row, m, PLANE); break;
                    }
                }
            double e = seconds_now() - t0;
            if (e < best[v]) best[v] = e;
        }
    gather_kernel = best[1] < best[0] ? HD_GATHER_AVX512 : HD_GATHER_SCALAR;
    scatter_kernel = best[3] < best[2] ? HD_GATHER_AVX512 : HD_GATHER_SCALAR;
    free(map); free(x); free(col);
}

static void ensure_chosen(void) { pthread_once(&chosen, choose_kernels); }

void hd_im2col_kernels(int *gather, int *scatter) {
    ensure_chosen();
    *gather = gather_kernel;
    *scatter = scatter_kernel;
}

void hd_im2col_set_kernels(int gather, int scatter) {
    ensure_chosen();
    if (gather >= 0) gather_kernel = gather == HD_GATHER_AVX512 && hd_has_avx512() ? HD_GATHER_AVX512 : HD_GATHER_SCALAR;
    if (scatter >= 0) scatter_kernel = scatter == HD_GATHER_AVX512 && hd_has_avx512() ? HD_GATHER_AVX512 : HD_GATHER_SCALAR;
}

void hd_im2col_gather(float *col, ptrdiff_t ld, const float *input, ptrdiff_t inImage, ptrdiff_t chPlane,
                      int channels, int taps, int plane, const int32_t *map, ptrdiff_t start, ptrdiff_t count) {
    ensure_chosen();
    if (gather_kernel == HD_GATHER_AVX512)
        FOR_EACH_STRETCH(gather_avx512(col + r * ld + j0, input + chan, mp, len));
    else
        FOR_EACH_STRETCH(gather_scalar(col + r * ld + j0, input + chan, mp, len));
}

void hd_col2im_gather(float *gradInput, const float *col, ptrdiff_t ld, ptrdiff_t inImage, ptrdiff_t chPlane,
                      int channels, int taps, int plane, const int32_t *map, ptrdiff_t start, ptrdiff_t count) {
    ensure_chosen();
    if (scatter_kernel == HD_GATHER_AVX512)
        FOR_EACH_STRETCH(scatter_add_avx512(gradInput + chan, col + r * ld + j0, mp, len));
    else
        FOR_EACH_STRETCH(scatter_add_scalar(gradInput + chan, col + r * ld + j0, mp, len));
}
