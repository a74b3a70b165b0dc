// Branch-free elementwise and pooling kernels (see include/elementwise.h).
#include "elementwise.h"

#include "bf16_bits.h"
#include "clones.h"
#include <stdint.h>
#include <string.h>
#include <math.h>

HD_CLONES
void hd_relu_forward(float *y, const float *x, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = v < 0.0f ? 0.0f : v;
    }
}

HD_CLONES
void hd_rgb_unit_planes(const uint8_t *restrict rgb, ptrdiff_t n, float *restrict r, float *restrict g, float *restrict b) {
    for (ptrdiff_t i = 0; i < n; i++) {
        r[i] = (float)rgb[3 * i] / 255.0f;
        g[i] = (float)rgb[3 * i + 1] / 255.0f;
        b[i] = (float)rgb[3 * i + 2] / 255.0f;
    }
}

// A row's three channels at a time: three running sums side by side, each pixel's bytes written together. Scalar on
// purpose (vectorised, the compiler gathers and scatters, slower than this).
HD_CLONES
void hd_planar_delta_decode(const uint8_t *restrict filtered, ptrdiff_t width, ptrdiff_t height, uint8_t *restrict rgb) {
    const ptrdiff_t plane = width * height;
    for (ptrdiff_t y = 0; y < height; y++) {
        const uint8_t *r = filtered + y * width, *g = r + plane, *b = g + plane;
        uint8_t *out = rgb + y * width * 3;
        uint8_t pr = 0, pg = 0, pb = 0;
#pragma clang loop vectorize(disable) interleave(disable)
        for (ptrdiff_t x = 0; x < width; x++) {
            pr = (uint8_t)(pr + r[x]);
            pg = (uint8_t)(pg + g[x]);
            pb = (uint8_t)(pb + b[x]);
            out[3 * x] = pr;
            out[3 * x + 1] = pg;
            out[3 * x + 2] = pb;
        }
    }
}

// 16 output pixels at a time, their sums side by side in one vector (a gather of stride f per block element), each
// pixel's block summed row by row, left to right, as a single float would.
HD_CLONES
void hd_area_downsample(const float *restrict x, int width, int height, int f, float *restrict out) {
    const int ow = width / f, oh = height / f;
    const float inv = 1.0f / (float)(f * f);
    for (int c = 0; c < 3; c++) {
        const float *src = x + (ptrdiff_t)c * width * height;
        float *dst = out + (ptrdiff_t)c * ow * oh;
        for (int oy = 0; oy < oh; oy++) {
            int ox0 = 0;
            for (; ox0 + 16 <= ow; ox0 += 16) {
                float s[16] = {0};
                for (int dy = 0; dy < f; dy++) {
                    const float *row = src + (ptrdiff_t)(oy * f + dy) * width + (ptrdiff_t)ox0 * f;
                    for (int dx = 0; dx < f; dx++)
                        for (int i = 0; i < 16; i++) s[i] += row[i * f + dx];
                }
                for (int i = 0; i < 16; i++) dst[oy * ow + ox0 + i] = s[i] * inv;
            }
            const int m = ow - ox0;
            if (m > 0) {
                float s[16] = {0};
                for (int dy = 0; dy < f; dy++) {
                    const float *row = src + (ptrdiff_t)(oy * f + dy) * width + (ptrdiff_t)ox0 * f;
                    for (int dx = 0; dx < f; dx++)
                        for (int i = 0; i < 16; i++)
                            if (i < m) s[i] += row[i * f + dx];
                }
                for (int i = 0; i < m; i++) dst[oy * ow + ox0 + i] = s[i] * inv;
            }
        }
    }
}

HD_CLONES
void hd_relu_backward_add(float *restrict dx, const float *restrict dy, const float *restrict y, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) dx[i] += y[i] > 0.0f ? dy[i] : 0.0f;
}

HD_CLONES
void hd_relu_mask(float *restrict g, const float *restrict y, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) g[i] = y[i] > 0.0f ? g[i] : 0.0f;
}

// Smallest o >= 0 with o * s >= a (a may be negative).
static inline int ceil_div_nonneg(int a, int s) { return a <= 0 ? 0 : (a + s - 1) / s; }

// One output row: every window row iy in [ys, ye), every tap kx, over the outputs whose column is inside the input.
// `S` is a compile-time stride in the specialised callers (the strided loads then vectorise as shuffles).
static inline __attribute__((always_inline))
void maxpool_row(float *restrict best, int32_t *restrict bi, const float *restrict x,
                 int w, int ow, int k, int S, int p, int ys, int ye) {
    for (int ox = 0; ox < ow; ox++) {
        int x0 = ox * S - p;
        best[ox] = -__builtin_inff();
        bi[ox] = ys * w + (x0 < 0 ? 0 : x0);
    }
    for (int iy = ys; iy < ye; iy++) {
        const float *row = x + (ptrdiff_t)iy * w;
        for (int kx = 0; kx < k; kx++) {
            // Columns ox * S - p + kx must lie in [0, w).
            int lo = ceil_div_nonneg(p - kx, S);
            int last = w - 1 + p - kx;
            int hi = last < 0 ? 0 : last / S + 1;
            if (hi > ow) hi = ow;
            int base = iy * w - p + kx;
            for (int ox = lo; ox < hi; ox++) {
                float v = row[ox * S - p + kx];
                int take = (v > best[ox]) | (v != v);
                best[ox] = take ? v : best[ox];
                bi[ox] = take ? base + ox * S : bi[ox];
            }
        }
    }
}

// Writes one output row (`best`, `bi`) from window rows [ys, ye) of plane `x`.
typedef void (*maxpool_row_fn)(float *best, int32_t *bi, const float *x,
                               int w, int ow, int k, int S, int p, int ys, int ye);

// Every plane and output row, each row by `row` (inlined: callers pass a known function).
static inline __attribute__((always_inline))
void maxpool_planes(float *out, int32_t *idx, const float *in, ptrdiff_t planes,
                    int h, int w, int oh, int ow, int k, int S, int p, maxpool_row_fn row) {
    for (ptrdiff_t pl = 0; pl < planes; pl++) {
        const float *x = in + pl * (ptrdiff_t)h * w;
        for (int oy = 0; oy < oh; oy++) {
            int y0 = oy * S - p;
            int ys = y0 < 0 ? 0 : y0;
            int ye = y0 + k > h ? h : y0 + k;
            ptrdiff_t o = (pl * oh + oy) * (ptrdiff_t)ow;
            row(out + o, idx + o, x, w, ow, k, S, p, ys, ye);
        }
    }
}

HD_CLONES
static void maxpool_generic(float *out, int32_t *idx, const float *in, ptrdiff_t planes,
                            int h, int w, int oh, int ow, int k, int s, int p) {
    if (s == 2) maxpool_planes(out, idx, in, planes, h, w, oh, ow, k, 2, p, maxpool_row);
    else if (s == 1) maxpool_planes(out, idx, in, planes, h, w, oh, ow, k, 1, p, maxpool_row);
    else maxpool_planes(out, idx, in, planes, h, w, oh, ow, k, s, p, maxpool_row);
}

#if defined(__x86_64__)
#include <immintrin.h>
#include "loads.h"

// Strides 1 and 2 with AVX-512: 16 outputs of a row per vector. For each window row and tap, the inputs the 16
// outputs read are loaded with a mask that keeps only columns inside [0, w) (the rest read as -inf, so padding
// never wins) and, for stride 2, the even elements of 32 loaded floats are picked with one permute.
__attribute__((target("avx512f")))
static void maxpool_row_avx512(float *out, int32_t *idx, const float *x,
                               int w, int ow, int k, int s, int p, int ys, int ye) {
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i lanes = _mm512_mullo_epi32(iota, _mm512_set1_epi32(s));   // s * lane
    for (int ox0 = 0; ox0 < ow; ox0 += 16) {
        int n = ow - ox0 < 16 ? ow - ox0 : 16;
        __mmask16 live = (__mmask16)((1u << n) - 1);
        // Initial index: the window's first real element (row ys, first column inside the input).
        __m512i col0 = _mm512_sub_epi32(_mm512_add_epi32(_mm512_set1_epi32(ox0 * s), lanes), _mm512_set1_epi32(p));
        __m512i bi = _mm512_add_epi32(_mm512_set1_epi32(ys * w), _mm512_max_epi32(col0, _mm512_setzero_si512()));
        __m512 best = ninf;
        for (int iy = ys; iy < ye; iy++) {
            const float *row = x + (ptrdiff_t)iy * w;
            for (int kx = 0; kx < k; kx++) {
                // The outputs read columns start + s * j (lane j < n): load s * n columns from `start`,
                // keeping those in [0, w).
                int start = ox0 * s - p + kx;
                int lo = start < 0 ? -start : 0;
                int hi = w - start < s * n ? w - start : s * n;
                if (hi <= lo) continue;
                uint32_t m = (hi >= 32 ? 0xFFFFFFFFu : ((1u << hi) - 1)) & ~((1u << lo) - 1);
                __m512 v = hd_load_or_ps(ninf, (__mmask16)m, row + start);
                if (s == 2) v = _mm512_permutex2var_ps(v, even, hd_load_or_ps(ninf, (__mmask16)(m >> 16), row + start + 16));
                __mmask16 take = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
                best = _mm512_mask_mov_ps(best, take, v);
                bi = _mm512_mask_mov_epi32(bi, take, _mm512_add_epi32(_mm512_set1_epi32(iy * w + start), lanes));
            }
        }
        _mm512_mask_storeu_ps(out + ox0, live, best);
        _mm512_mask_storeu_epi32(idx + ox0, live, bi);
    }
}

__attribute__((target("avx512f")))
static void maxpool_avx512(float *out, int32_t *idx, const float *in, ptrdiff_t planes,
                           int h, int w, int oh, int ow, int k, int s, int p) {
    maxpool_planes(out, idx, in, planes, h, w, oh, ow, k, s, p, maxpool_row_avx512);
}

#endif

void hd_maxpool2d_forward(float *out, int32_t *idx, const float *in, ptrdiff_t planes,
                          int h, int w, int oh, int ow, int k, int s, int p) {
#if defined(__x86_64__)
    if ((s == 1 || s == 2) && hd_has_avx512()) {
        maxpool_avx512(out, idx, in, planes, h, w, oh, ow, k, s, p);
        return;
    }
#endif
    maxpool_generic(out, idx, in, planes, h, w, oh, ow, k, s, p);
}

// Integer test of the exponent bits: vectorises (a float reduction would not, its order being fixed), and is
// exact whatever the values.
HD_CLONES
int hd_all_finite(const float *x, ptrdiff_t n) {
    uint32_t bad = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, 4);
        bad |= (uint32_t)((u & 0x7F800000u) == 0x7F800000u);
    }
    return bad == 0;
}

HD_CLONES
void hd_scale_add(float *restrict y, float a, const float *restrict x, float b, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) y[i] = a * y[i] + b * x[i];
}

static inline float hd_bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

HD_CLONES
void hd_bf16_decompress(float *restrict dst, const uint16_t *restrict src, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) dst[i] = hd_bf16_value(src[i]);
}

HD_CLONES
void hd_bf16_add(const uint16_t *restrict in, uint16_t *restrict inout, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) inout[i] = (uint16_t)bf16_bits(hd_bf16_value(in[i]) + hd_bf16_value(inout[i]));
}

HD_CLONES
void hd_add_relu(float *y, const float *a, const float *b, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float v = a[i] + b[i];
        y[i] = v < 0.0f ? 0.0f : v;
    }
}

// The GroupNorm kernels keep Swift's rounding: no contraction of a * b + c into an FMA.
#pragma clang fp contract(off)

// The reductions keep 64 (or 2 x 32) interleaved partial sums in vectors of 16 floats (GCC/Clang vector extensions:
// each clone maps them onto its own registers, 1 AVX-512, 2 AVX2 or 4 SSE registers per vector) and add them
// pairwise at the end in a fixed order. Each lane is a plain running sum, so nothing is reassociated, and every build
// of a clone (AVX-512, AVX2, baseline) computes the same bits. The last partial run of lanes reads the elements past
// n as the sum's neutral value. (Plain arrays of partial sums stayed in memory, too large for the compiler to keep in
// registers: 30 ns per call on 32 values against 6 ns now, 60 against 31 on 784; GroupNorm(32) makes about 12,000
// groups per 56 px forward pass, of 4-784 values, two reductions each.) The vectors only live inside always-inline
// functions, so the ABI note clang gives for 64-byte vectors in clones without AVX-512 does not apply.
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wpsabi"
typedef float hd_v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t hd_i16 __attribute__((vector_size(64), aligned(4)));

static inline __attribute__((always_inline)) hd_v16 v16_load(const float *p) {
    hd_v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

// p[0..r-1] in lanes 0..r-1 (r >= 16: all 16 read), `fill` in the others; nothing past p[r - 1] is read.
static inline __attribute__((always_inline)) hd_v16 v16_load_part(const float *p, ptrdiff_t r, float fill) {
    if (r >= 16) return v16_load(p);
    hd_v16 v = {fill, fill, fill, fill, fill, fill, fill, fill, fill, fill, fill, fill, fill, fill, fill, fill};
    for (ptrdiff_t l = 0; l < r; l++) v[l] = p[l];
    return v;
}

// Lane l + 8 into lane l, then l + 4, l + 2, l + 1: lane 0.
static inline __attribute__((always_inline)) float v16_total(hd_v16 v) {
    v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7);
    v += __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    v += __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1);
    return v[0];
}

// Sum of x[0..n-1]: element i in lane i % 64; lanes 32..63 into 0..31, 16..31 into 0..15, then v16_total.
static inline __attribute__((always_inline)) float sum_core(const float *x, ptrdiff_t n) {
    hd_v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    ptrdiff_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 += v16_load(x + i); a1 += v16_load(x + i + 16); a2 += v16_load(x + i + 32); a3 += v16_load(x + i + 48);
    }
    if (i < n) {
        a0 += v16_load_part(x + i, n - i, 0.0f);
        if (i + 16 < n) a1 += v16_load_part(x + i + 16, n - i - 16, 0.0f);
        if (i + 32 < n) a2 += v16_load_part(x + i + 32, n - i - 32, 0.0f);
        if (i + 48 < n) a3 += v16_load_part(x + i + 48, n - i - 48, 0.0f);
    }
    return v16_total((a0 + a2) + (a1 + a3));
}

// Sum of (x[i] - mean)^2, in the lanes and order of sum_core (elements past n read as `mean`: 0 added).
static inline __attribute__((always_inline)) float squared_deviation_core(const float *x, ptrdiff_t n, float mean) {
    hd_v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, d;
    ptrdiff_t i = 0;
    for (; i + 64 <= n; i += 64) {
        d = v16_load(x + i) - mean; a0 += d * d;
        d = v16_load(x + i + 16) - mean; a1 += d * d;
        d = v16_load(x + i + 32) - mean; a2 += d * d;
        d = v16_load(x + i + 48) - mean; a3 += d * d;
    }
    if (i < n) {
        d = v16_load_part(x + i, n - i, mean) - mean; a0 += d * d;
        if (i + 16 < n) { d = v16_load_part(x + i + 16, n - i - 16, mean) - mean; a1 += d * d; }
        if (i + 32 < n) { d = v16_load_part(x + i + 32, n - i - 32, mean) - mean; a2 += d * d; }
        if (i + 48 < n) { d = v16_load_part(x + i + 48, n - i - 48, mean) - mean; a3 += d * d; }
    }
    return v16_total((a0 + a2) + (a1 + a3));
}

HD_CLONES
float hd_sum(const float *x, ptrdiff_t n) { return sum_core(x, n); }

HD_CLONES
float hd_squared_deviation(const float *x, ptrdiff_t n, float mean) { return squared_deviation_core(x, n, mean); }

// One 16-lane step of the moments: g = dy (where y > 0 when y is given, else +0: NaN outputs mask too), s += g,
// p += g * (x - mean).
static inline __attribute__((always_inline))
void moments_step(hd_v16 *s, hd_v16 *p, hd_v16 dy, int masked, hd_v16 yv, hd_v16 xv, float mean) {
    hd_v16 zero = {0};
    hd_v16 g = masked ? (hd_v16)((hd_i16)dy & (hd_i16)(yv > zero)) : dy;
    *s += g;
    *p += g * (xv - mean);
}

// The moments of one channel (y NULL: no mask), each sum in 32 lanes (element i in lane i % 32), then lanes 16..31
// into 0..15 and v16_total. Inlined into each clone below, so the group kernel calls no other clone per channel.
static inline __attribute__((always_inline))
void moments_core(const float *dy, const float *y, const float *x, ptrdiff_t n, float mean, float *sum, float *sumx) {
    hd_v16 s0 = {0}, s1 = {0}, p0 = {0}, p1 = {0}, none = {0};
    const int masked = y != NULL;
    ptrdiff_t i = 0;
    for (; i + 32 <= n; i += 32) {
        moments_step(&s0, &p0, v16_load(dy + i), masked, masked ? v16_load(y + i) : none, v16_load(x + i), mean);
        moments_step(&s1, &p1, v16_load(dy + i + 16), masked, masked ? v16_load(y + i + 16) : none, v16_load(x + i + 16), mean);
    }
    if (i < n) {
        moments_step(&s0, &p0, v16_load_part(dy + i, n - i, 0.0f), masked, masked ? v16_load_part(y + i, n - i, 0.0f) : none,
                     v16_load_part(x + i, n - i, mean), mean);
        if (i + 16 < n)
            moments_step(&s1, &p1, v16_load_part(dy + i + 16, n - i - 16, 0.0f), masked,
                         masked ? v16_load_part(y + i + 16, n - i - 16, 0.0f) : none, v16_load_part(x + i + 16, n - i - 16, mean),
                         mean);
    }
    *sum = v16_total(s0 + s1);
    *sumx = v16_total(p0 + p1);
}
#pragma clang diagnostic pop

HD_CLONES
void hd_gradient_moments(const float *dy, const float *x, ptrdiff_t n, float mean, float *sum, float *sumx) {
    moments_core(dy, NULL, x, n, mean, sum, sumx);
}

HD_CLONES
void hd_masked_gradient_moments(const float *dy, const float *y, const float *x, ptrdiff_t n, float mean,
                                float *sum, float *sumx) {
    moments_core(dy, y, x, n, mean, sum, sumx);
}

// GroupNorm's input gradient over one channel (y NULL: no mask).
static inline __attribute__((always_inline))
void input_gradient_core(float *dx, const float *dy, const float *y, const float *x, ptrdiff_t n,
                         float rs, float w, float msum, float mu, float msumx, int accumulate) {
    if (y && accumulate) {
        for (ptrdiff_t i = 0; i < n; i++) {
            float d = dy[i], g = y[i] > 0.0f ? d : 0.0f;
            dx[i] += rs * (g * w - msum - (x[i] - mu) * rs * msumx);
        }
    } else if (y) {
        for (ptrdiff_t i = 0; i < n; i++) {
            float d = dy[i], g = y[i] > 0.0f ? d : 0.0f;
            dx[i] = rs * (g * w - msum - (x[i] - mu) * rs * msumx);
        }
    } else if (accumulate) {
        for (ptrdiff_t i = 0; i < n; i++) dx[i] += rs * (dy[i] * w - msum - (x[i] - mu) * rs * msumx);
    } else {
        for (ptrdiff_t i = 0; i < n; i++) dx[i] = rs * (dy[i] * w - msum - (x[i] - mu) * rs * msumx);
    }
}

// GroupNorm's forward over consecutive (image, group) pairs (see include/elementwise.h), with the per-element
// operations of TensorCore's generic Swift loops. In blocks of 8 groups: every mean of the block, then every variance,
// then the outputs, so the reductions of different groups overlap (group by group each waited for the one before: sum,
// mean, squared deviations, output).
HD_CLONES
void hd_groupnorm_forward_groups(float *y, const float *x, ptrdiff_t first, ptrdiff_t count, int groups, int channels,
                                 ptrdiff_t plane, const float *weight, const float *bias, float eps, int relu,
                                 float *mean, float *rstd) {
    const ptrdiff_t size = (ptrdiff_t)channels * plane;
    for (ptrdiff_t b0 = first; b0 < first + count; b0 += 8) {
        const ptrdiff_t b1 = b0 + 8 < first + count ? b0 + 8 : first + count;
        for (ptrdiff_t ng = b0; ng < b1; ng++) mean[ng] = sum_core(x + ng * size, size) / (float)size;
        for (ptrdiff_t ng = b0; ng < b1; ng++)
            rstd[ng] = 1.0f / sqrtf(squared_deviation_core(x + ng * size, size, mean[ng]) / (float)size + eps);
        for (ptrdiff_t ng = b0; ng < b1; ng++) {
            const float mu = mean[ng], rs = rstd[ng];
            const int g = (int)(ng % groups);
            for (int ci = 0; ci < channels; ci++) {
                const int c = g * channels + ci;
                const float scale = rs * weight[c], shift = bias[c] - mu * scale;
                const float *xp = x + ng * size + (ptrdiff_t)ci * plane;
                float *yp = y + ng * size + (ptrdiff_t)ci * plane;
                if (relu) {
                    for (ptrdiff_t k = 0; k < plane; k++) { float v = xp[k] * scale + shift; yp[k] = v < 0.0f ? 0.0f : v; }
                } else {
                    for (ptrdiff_t k = 0; k < plane; k++) yp[k] = xp[k] * scale + shift;
                }
            }
        }
    }
}

// GroupNorm's backward over consecutive (image, group) pairs (see include/elementwise.h), with the per-element
// operations of TensorCore's generic Swift loops. In blocks of 8 groups: every channel's moments and every group's
// weighted sums of the block, then the input gradients, so the reductions of different groups overlap.
HD_CLONES
void hd_groupnorm_backward_groups(float *dx, const float *dy, const float *y, const float *x, ptrdiff_t first, ptrdiff_t count,
                                  int groups, int channels, ptrdiff_t plane, const float *weight, const float *mean,
                                  const float *rstd, int accumulate, float *sums, float *sumsx) {
    const ptrdiff_t size = (ptrdiff_t)channels * plane;
    const float fsize = (float)size;
    float mSum[8], mSumX[8];
    for (ptrdiff_t b0 = first; b0 < first + count; b0 += 8) {
        const ptrdiff_t b1 = b0 + 8 < first + count ? b0 + 8 : first + count;
        for (ptrdiff_t ng = b0; ng < b1; ng++) {
            const float mu = mean[ng], rs = rstd[ng];
            const float *w = weight + (ng % groups) * channels;
            float gSum = 0, gSumX = 0;
            for (int ci = 0; ci < channels; ci++) {
                const ptrdiff_t o = ng * size + (ptrdiff_t)ci * plane;
                float s, sx;
                moments_core(dy + o, y ? y + o : NULL, x + o, plane, mu, &s, &sx);
                sx *= rs;
                sums[ng * channels + ci] = s;
                sumsx[ng * channels + ci] = sx;
                gSum += s * w[ci];
                gSumX += sx * w[ci];
            }
            mSum[ng - b0] = gSum / fsize;
            mSumX[ng - b0] = gSumX / fsize;
        }
        for (ptrdiff_t ng = b0; ng < b1; ng++) {
            const float *w = weight + (ng % groups) * channels;
            for (int ci = 0; ci < channels; ci++) {
                const ptrdiff_t o = ng * size + (ptrdiff_t)ci * plane;
                input_gradient_core(dx + o, dy + o, y ? y + o : NULL, x + o, plane, rstd[ng], w[ci], mSum[ng - b0], mean[ng],
                                    mSumX[ng - b0], accumulate);
            }
        }
    }
}
