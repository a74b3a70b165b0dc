// Gather-map im2col / col2im for narrow maps (see include/im2col.h). AVX-512 masked gathers and scatters where
// the CPU has them and they are faster than the scalar loop (timed once), the scalar loop elsewhere.
#include "im2col.h"
#include "clones.h"
#include <pthread.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#include "loads.h"
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

// dx[m[j]] += s[j]; conflict-free because one tap's map is injective over its valid positions (across the images of a
// tile too: each image's offsets lie in its own inImage-long range).
HD_AVX512
static void scatter_add_avx512(float *dx, const float *s, const int32_t *m, ptrdiff_t len) {
    for (ptrdiff_t j = 0; j < len; j += 16) {
        __mmask16 lanes = len - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (len - j)) - 1);
        __m512i idx = hd_load_epi32(lanes, m + j);
        __mmask16 valid = _mm512_mask_cmpge_epi32_mask(lanes, idx, _mm512_setzero_si512());
        __m512 old = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, idx, dx, 4);
        __m512 sum = _mm512_add_ps(old, hd_load_ps(valid, s + j));
        _mm512_mask_i32scatter_ps(dx, valid, idx, sum, 4);
    }
}

// The shifted copies of a tap whose map is a constant shift (`linear_shifts`): x points at the channel plane plus
// the shift, so the lane for plane position q reads x[q] (masked where the map is -1, written as 0); no gather.
HD_AVX512
static void shift_copy_avx512(float *d, const float *x, const int32_t *m, ptrdiff_t len) {
    for (ptrdiff_t j = 0; j < len; j += 16) {
        __mmask16 lanes = len - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (len - j)) - 1);
        __mmask16 valid = _mm512_mask_cmpge_epi32_mask(lanes, hd_load_epi32(lanes, m + j), _mm512_setzero_si512());
        _mm512_mask_storeu_ps(d + j, lanes, hd_load_ps(valid, x + j));
    }
}

// The adjoint: dx[q] += s[q] where the map is >= 0 (dx points at the channel plane plus the shift).
HD_AVX512
static void shift_add_avx512(float *dx, const float *s, const int32_t *m, ptrdiff_t len) {
    for (ptrdiff_t j = 0; j < len; j += 16) {
        __mmask16 lanes = len - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (len - j)) - 1);
        __mmask16 valid = _mm512_mask_cmpge_epi32_mask(lanes, hd_load_epi32(lanes, m + j), _mm512_setzero_si512());
        __m512 sum = _mm512_add_ps(hd_load_ps(valid, dx + j), hd_load_ps(valid, s + j));
        _mm512_mask_storeu_ps(dx + j, valid, sum);
    }
}

#else
static void gather_avx512(float *d, const float *x, const int32_t *m, ptrdiff_t len) { (void)d; (void)x; (void)m; (void)len; }
static void scatter_add_avx512(float *dx, const float *s, const int32_t *m, ptrdiff_t len) { (void)dx; (void)s; (void)m; (void)len; }
static void shift_copy_avx512(float *d, const float *x, const int32_t *m, ptrdiff_t len) { (void)d; (void)x; (void)m; (void)len; }
static void shift_add_avx512(float *dx, const float *s, const int32_t *m, ptrdiff_t len) { (void)dx; (void)s; (void)m; (void)len; }
#endif

static void gather_scalar(float *d, const float *x, const int32_t *m, ptrdiff_t len) {
    for (ptrdiff_t j = 0; j < len; j++) d[j] = m[j] >= 0 ? x[m[j]] : 0.0f;
}

static void scatter_add_scalar(float *dx, const float *s, const int32_t *m, ptrdiff_t len) {
    for (ptrdiff_t j = 0; j < len; j++) if (m[j] >= 0) dx[m[j]] += s[j];
}

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

// The gather map widened to a run of images: ext[tap * count + j] is the offset, from channel c of the run's first
// image, of the input element column j reads for kernel tap `tap` (-1 in the padding). With it one row of columns
// is one gather over all the run's images, so 2x2 and 4x4 planes fill whole 16-lane vectors (one call and one
// masked, latency-bound gather per image and row before: 1.43 -> 1.25 ms for the 56 px model's layer4.conv2
// forward). Runs hold at most `chunk_images` images, so every offset fits in 32 bits. Per-thread buffer.
static __thread int32_t *ext_buffer;
static __thread size_t ext_capacity;
static ptrdiff_t chunk_limit = 0;   // tests: images per run (0: as many as 32-bit offsets allow)

void hd_im2col_set_chunk_images(ptrdiff_t images) { chunk_limit = images > 0 ? images : 0; }

static ptrdiff_t chunk_images(ptrdiff_t inImage) {
    ptrdiff_t most = INT32_MAX / (inImage > 0 ? inImage : 1);
    if (most < 1) most = 1;   // one image: offsets below inImage, which hd_im2col_gather's caller keeps in range
    return chunk_limit > 0 && chunk_limit < most ? chunk_limit : most;
}

static const int32_t *extended_map(const int32_t *map, int taps, int plane, ptrdiff_t inImage, ptrdiff_t start,
                                   ptrdiff_t count) {
    size_t need = (size_t)taps * (size_t)count;
    if (ext_capacity < need) {
        free(ext_buffer);
        ext_buffer = malloc(need * sizeof(int32_t));
        ext_capacity = ext_buffer ? need : 0;
        if (!ext_buffer) abort();
    }
    for (int t = 0; t < taps; t++) {
        const int32_t *m = map + (ptrdiff_t)t * plane;
        int32_t *e = ext_buffer + (ptrdiff_t)t * count;
        ptrdiff_t q = start % plane;
        int32_t base = 0;
        for (ptrdiff_t j = 0; j < count; j++) {
            e[j] = m[q] < 0 ? -1 : base + m[q];
            if (++q == plane) { q = 0; base += (int32_t)inImage; }
        }
    }
    return ext_buffer;
}

// Splits positions start..<start+count into runs of whole-or-partial images (at most chunk_images each) and calls
// body for every row r = c * taps + t of each run: `j0` is the run's first column, `len` its length, `chan` the
// offset of channel c of the run's first image, `mp` the run's extended map for tap t.
#define FOR_EACH_RUN_ROW(BODY)                                                                   \
    do {                                                                                         \
        ptrdiff_t per_ = chunk_images(inImage), end_ = start + count;                            \
        for (ptrdiff_t p_ = start; p_ < end_;) {                                                 \
            ptrdiff_t img_ = p_ / plane, stop_ = (img_ + per_) * plane;                          \
            ptrdiff_t len = (stop_ < end_ ? stop_ : end_) - p_, j0 = p_ - start;                 \
            const int32_t *ext_ = extended_map(map, taps, plane, inImage, p_, len);              \
            for (int c = 0, r = 0; c < channels; c++)                                            \
                for (int t = 0; t < taps; t++, r++) {                                            \
                    ptrdiff_t chan = img_ * inImage + c * chPlane;                               \
                    const int32_t *mp = ext_ + (ptrdiff_t)t * len;                               \
                    BODY;                                                                        \
                }                                                                                \
            p_ += len;                                                                           \
        }                                                                                        \
    } while (0)

// Shifted copies (tests can turn them off): on by default where the CPU has AVX-512.
static int shift_enabled = 1;

void hd_im2col_set_shift(int enabled) { shift_enabled = enabled != 0; }


// Whether every tap's map is a constant shift of the plane position, map[t][q] = q + shift[t] wherever it is >= 0
// (a stride-1 convolution whose output is as wide as its input: 3x3 with padding 1); fills `shift` (at most 64 taps).
static int linear_shifts(const int32_t *map, int taps, int plane, ptrdiff_t shift[64]) {
    if (taps > 64) return 0;
    for (int t = 0; t < taps; t++) {
        int have = 0;
        shift[t] = 0;
        for (int q = 0; q < plane; q++) {
            int32_t v = map[(ptrdiff_t)t * plane + q];
            if (v < 0) continue;
            if (!have) { shift[t] = (ptrdiff_t)v - q; have = 1; }
            else if ((ptrdiff_t)v - q != shift[t]) return 0;
        }
    }
    return 1;
}

// Whether a call with this map takes the shifted copies (filling `shift`): enabled, an AVX-512 CPU, a plane of at
// least HD_SHIFT_MIN_PLANE positions, and every tap a constant shift.
static int takes_shift(const int32_t *map, int taps, int plane, ptrdiff_t shift[64]) {
    return shift_enabled && plane >= HD_SHIFT_MIN_PLANE && hd_has_avx512() && linear_shifts(map, taps, plane, shift);
}

int hd_im2col_takes_shift(const int32_t *map, int taps, int plane) {
    ptrdiff_t shift[64];
    return takes_shift(map, taps, plane, shift);
}

// Splits positions start..<start+count into stretches inside one image and calls body for every row r = c * taps + t:
// `j0` is the stretch's first column, `len` its length, `q0` its first plane position, `chan` the offset of channel c of
// its image, `mp` the map of tap t from q0.
#define FOR_EACH_IMAGE_ROW(BODY)                                                                 \
    do {                                                                                         \
        ptrdiff_t end_ = start + count;                                                          \
        for (ptrdiff_t p_ = start; p_ < end_;) {                                                 \
            ptrdiff_t img_ = p_ / plane, q0 = p_ - img_ * plane;                                 \
            ptrdiff_t len = (plane - q0 < end_ - p_ ? plane - q0 : end_ - p_), j0 = p_ - start;  \
            for (int c = 0, r = 0; c < channels; c++)                                            \
                for (int t = 0; t < taps; t++, r++) {                                            \
                    ptrdiff_t chan = img_ * inImage + c * chPlane;                               \
                    const int32_t *mp = map + (ptrdiff_t)t * plane + q0;                         \
                    BODY;                                                                        \
                }                                                                                \
            p_ += len;                                                                           \
        }                                                                                        \
    } while (0)

void hd_im2col_gather(float *col, ptrdiff_t ld, const float *input, ptrdiff_t inImage, ptrdiff_t chPlane,
                      int channels, int taps, int plane, const int32_t *map, ptrdiff_t start, ptrdiff_t count) {
    ensure_chosen();
    ptrdiff_t shift[64];
    if (takes_shift(map, taps, plane, shift)) {
        // The lane of position q reads input[chan + q + shift]: masked where the map is -1, so no lane reads outside.
        FOR_EACH_IMAGE_ROW(shift_copy_avx512(col + r * ld + j0, input + (chan + q0 + shift[t]), mp, len));
        return;
    }
    if (gather_kernel == HD_GATHER_AVX512)
        FOR_EACH_RUN_ROW(gather_avx512(col + r * ld + j0, input + chan, mp, len));
    else
        FOR_EACH_RUN_ROW(gather_scalar(col + r * ld + j0, input + chan, mp, len));
}

void hd_col2im_gather(float *gradInput, const float *col, ptrdiff_t ld, ptrdiff_t inImage, ptrdiff_t chPlane,
                      int channels, int taps, int plane, const int32_t *map, ptrdiff_t start, ptrdiff_t count) {
    ensure_chosen();
    ptrdiff_t shift[64];
    if (takes_shift(map, taps, plane, shift)) {
        FOR_EACH_IMAGE_ROW(shift_add_avx512(gradInput + (chan + q0 + shift[t]), col + r * ld + j0, mp, len));
        return;
    }
    if (scatter_kernel == HD_GATHER_AVX512)
        FOR_EACH_RUN_ROW(scatter_add_avx512(gradInput + chan, col + r * ld + j0, mp, len));
    else
        FOR_EACH_RUN_ROW(scatter_add_scalar(gradInput + chan, col + r * ld + j0, mp, len));
}
