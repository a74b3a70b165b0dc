// Branch-free elementwise and pooling kernels (see include/elementwise.h).
#include "elementwise.h"

#include "clones.h"
#include <stdint.h>
#include <string.h>

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

HD_CLONES
void hd_add_relu(float *y, const float *a, const float *b, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float v = a[i] + b[i];
        y[i] = v < 0.0f ? 0.0f : v;
    }
}

// The three GroupNorm + ReLU kernels keep Swift's rounding: no contraction of a * b + c into an FMA.
#pragma clang fp contract(off)

HD_CLONES
void hd_affine_relu(float *y, const float *x, ptrdiff_t n, float scale, float shift) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float v = x[i] * scale + shift;
        y[i] = v < 0.0f ? 0.0f : v;
    }
}

// The reductions keep HD_LANES interleaved partial sums (lane l takes the elements i with i % HD_LANES == l) and add
// them pairwise at the end. Each lane is a plain running sum, so the compiler keeps the lanes in vector registers
// without reassociating anything, and every build of a clone (AVX-512, AVX2, baseline) computes the same bits: the
// order of the additions is fixed by the lanes, not by the vector width. 64 lanes are four AVX-512 registers per sum,
// enough independent chains to hide the addition's latency (8 lanes in scalar Swift ran at about 1 float per cycle).
#define HD_LANES 64

// The lanes added pairwise; levels whose upper half holds only lanes no element reached (n values fill lanes 0..n-1
// when n < lanes) are skipped, so short rows (GroupNorm's 2x2 and 4x4 planes) cost a few additions.
static inline float lanes_total(float *a, int lanes, ptrdiff_t n) {
    for (int width = lanes / 2; width >= 1; width /= 2) {
        if (n <= width) continue;
        for (int l = 0; l < width; l++) a[l] += a[l + width];
    }
    return a[0];
}

HD_CLONES
float hd_sum(const float *x, ptrdiff_t n) {
    float a[HD_LANES] = {0};
    ptrdiff_t i = 0;
    for (; i + HD_LANES <= n; i += HD_LANES)
        for (int l = 0; l < HD_LANES; l++) a[l] += x[i + l];
    for (int l = 0; i + l < n; l++) a[l] += x[i + l];
    return lanes_total(a, HD_LANES, n);
}

HD_CLONES
float hd_squared_deviation(const float *x, ptrdiff_t n, float mean) {
    float a[HD_LANES] = {0};
    ptrdiff_t i = 0;
    for (; i + HD_LANES <= n; i += HD_LANES)
        for (int l = 0; l < HD_LANES; l++) { float d = x[i + l] - mean; a[l] += d * d; }
    for (int l = 0; i + l < n; l++) { float d = x[i + l] - mean; a[l] += d * d; }
    return lanes_total(a, HD_LANES, n);
}

// Half the lanes: two sums at once (HD_LANES / 2 each keeps the register count of one HD_LANES sum).
#define HD_PAIR_LANES (HD_LANES / 2)

// The moments of one channel (y NULL: no mask). Inlined into each clone below, so the group kernel calls no other
// clone per channel.
static inline __attribute__((always_inline))
void moments_core(const float *dy, const float *y, const float *x, ptrdiff_t n, float mean, float *sum, float *sumx) {
    float s[HD_PAIR_LANES] = {0}, p[HD_PAIR_LANES] = {0};
    ptrdiff_t i = 0;
    if (y) {
        // Loads first, then selects: a load under the condition would be compiled as a branch.
        for (; i + HD_PAIR_LANES <= n; i += HD_PAIR_LANES)
            for (int l = 0; l < HD_PAIR_LANES; l++) {
                float d = dy[i + l], g = y[i + l] > 0.0f ? d : 0.0f;
                s[l] += g; p[l] += g * (x[i + l] - mean);
            }
        for (int l = 0; i + l < n; l++) {
            float d = dy[i + l], g = y[i + l] > 0.0f ? d : 0.0f;
            s[l] += g; p[l] += g * (x[i + l] - mean);
        }
    } else {
        for (; i + HD_PAIR_LANES <= n; i += HD_PAIR_LANES)
            for (int l = 0; l < HD_PAIR_LANES; l++) { float g = dy[i + l]; s[l] += g; p[l] += g * (x[i + l] - mean); }
        for (int l = 0; i + l < n; l++) { float g = dy[i + l]; s[l] += g; p[l] += g * (x[i + l] - mean); }
    }
    *sum = lanes_total(s, HD_PAIR_LANES, n);
    *sumx = lanes_total(p, HD_PAIR_LANES, n);
}

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

HD_CLONES
void hd_masked_groupnorm_input_gradient(float *dx, const float *dy, const float *y, const float *x, ptrdiff_t n,
                                        float rs, float w, float msum, float mu, float msumx, int accumulate) {
    input_gradient_core(dx, dy, y, x, n, rs, w, msum, mu, msumx, accumulate);
}

// One (image, group) of GroupNorm's backward (see include/elementwise.h): the moments of every channel, the group's
// weighted sums in channel order, then the input gradient, with the operations and order of TensorCore's Swift loops.
HD_CLONES
void hd_groupnorm_backward_group(float *dx, const float *dy, const float *y, const float *x, ptrdiff_t plane, int channels,
                                 const float *weight, float mu, float rs, int accumulate, float *sums, float *sumsx) {
    float gSum = 0, gSumX = 0;
    for (int ci = 0; ci < channels; ci++) {
        const ptrdiff_t o = (ptrdiff_t)ci * plane;
        float s, sx;
        moments_core(dy + o, y ? y + o : NULL, x + o, plane, mu, &s, &sx);
        sx *= rs;
        sums[ci] = s;
        sumsx[ci] = sx;
        gSum += s * weight[ci];
        gSumX += sx * weight[ci];
    }
    const float size = (float)((ptrdiff_t)channels * plane);
    const float mSum = gSum / size, mSumX = gSumX / size;
    for (int ci = 0; ci < channels; ci++) {
        const ptrdiff_t o = (ptrdiff_t)ci * plane;
        input_gradient_core(dx + o, dy + o, y ? y + o : NULL, x + o, plane, rs, weight[ci], mSum, mu, mSumX, accumulate);
    }
}
