// Winograd F(2x2, 3x3) convolution, bfloat16 products with float32 sums (see include/winograd.h).
//
// Layout. A group of G images is copied, channel by channel, into zero-padded planes where the images sit side by
// side: image j's pixel (y, x) at row y + 1, column j * S + x + 1, S = 2 * (tilesW + 1). The 2x2 output tiles are then
// "slots" on a grid: slot s of tile row ty reads the 4x4 patch at rows 2ty..2ty+3, columns 2s..2s+3, and belongs to
// image s / (tilesW + 1), tile column s % (tilesW + 1) (the last slot of each image is padding). Sixteen consecutive
// slots of one tile row are one vector: their 4x4 patches come from two pairs of loads per row and even/odd lane
// permutes, with no gather. Three vectors (48 tiles) are one block: their transformed values B^T d B for every input
// channel, as bfloat16 pairs of adjacent channels, are one 48-wide panel per transform position (16 panels), the
// bfloat16 GEMM's B panels; the packed weights are its A panels. Per 8 output channels the micro-kernel gives the
// 16 products of the block, and the output transform A^T m A writes each tile's 2x2 outputs straight into y with
// masked stores, image by image.
#include "winograd.h"
#include "gemm_bf16.h"
#include "gemm_bf16_kernel.h"
#include "bf16_bits.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { VEC = 16, BLOCK_VECTORS = 3, BLOCK = VEC * BLOCK_VECTORS, MAX_GROUP = 16 };

int hd_winograd_available(void) { return hd_bf16_gemm_available(); }

long hd_winograd_weight_words(long cout, long cin) {
    long blocks = (cout + HD_BF16_MR - 1) / HD_BF16_MR, pairs = (cin + 1) / 2;
    return 16 * blocks * pairs * HD_BF16_MR;
}

// g (3x3, row-major, element (a, b) at g[a * sa + b * sb]) -> U = G g G^T (4x4), G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1].
static void weight_transform(float u[16], const float *g, long sa, long sb) {
    float t[4][3];
    for (int b = 0; b < 3; b++) {
        float g0 = g[0 * sa + b * sb], g1 = g[1 * sa + b * sb], g2 = g[2 * sa + b * sb];
        t[0][b] = g0;
        t[1][b] = 0.5f * (g0 + g1 + g2);
        t[2][b] = 0.5f * (g0 - g1 + g2);
        t[3][b] = g2;
    }
    for (int i = 0; i < 4; i++) {
        float r0 = t[i][0], r1 = t[i][1], r2 = t[i][2];
        u[4 * i + 0] = r0;
        u[4 * i + 1] = 0.5f * (r0 + r1 + r2);
        u[4 * i + 2] = 0.5f * (r0 - r1 + r2);
        u[4 * i + 3] = r2;
    }
}

void hd_winograd_pack_weights(uint32_t *u, const float *weight, long cout, long cin, int adjoint) {
    long blocks = (cout + HD_BF16_MR - 1) / HD_BF16_MR, pairs = (cin + 1) / 2;
    memset(u, 0, (size_t)hd_winograd_weight_words(cout, cin) * 4);
    for (long k = 0; k < cout; k++) {
        for (long c = 0; c < cin; c++) {
            float t[16];
            if (adjoint) {
                // g'(a, b) = W[c][k][2 - a][2 - b] of the forward weight (cin, cout, 3, 3).
                weight_transform(t, weight + (c * cout + k) * 9 + 8, -3, -1);
            } else {
                weight_transform(t, weight + (k * cin + c) * 9, 3, 1);
            }
            long kb = k / HD_BF16_MR, r = k % HD_BF16_MR, kp = c / 2, half = c % 2;
            for (int xi = 0; xi < 16; xi++) {
                u[((xi * blocks + kb) * pairs + kp) * HD_BF16_MR + r] |= bf16_bits(t[xi]) << (16 * half);
            }
        }
    }
}

// The extents of one call: tiles, the group of images side by side, the padded planes.
typedef struct {
    long tilesH, tilesW, group, slots, rowLength, rows, vectorsPerRow;
} Geometry;

static Geometry geometry(long n, long cin, long h, long w) {
    Geometry g;
    g.tilesH = (h + 1) / 2;
    g.tilesW = (w + 1) / 2;
    // The group that wastes the fewest slots (per tile row, G * (tilesW + 1) slots rounded up to a vector), among
    // those whose padded planes stay within 8 MB; the smaller on ties.
    long best = 1;
    double bestUse = 0;
    long maxGroup = n < MAX_GROUP ? n : MAX_GROUP;
    for (long G = 1; G <= maxGroup; G++) {
        long slots = (G * (g.tilesW + 1) + VEC - 1) / VEC * VEC;
        long floats = cin * (2 * g.tilesH + 2) * (2 * slots + 2 * VEC);
        if (G > 1 && floats * 4 > (8L << 20)) break;
        double use = (double)(G * g.tilesW) / (double)slots;
        if (use > bestUse + 1e-9) { bestUse = use; best = G; }
    }
    g.group = best;
    g.slots = (best * (g.tilesW + 1) + VEC - 1) / VEC * VEC;
    g.rowLength = 2 * g.slots + 2 * VEC;
    g.rows = 2 * g.tilesH + 2;
    g.vectorsPerRow = g.slots / VEC;
    return g;
}

long hd_winograd_scratch_floats(long n, long cin, long cout, long h, long w) {
    (void)cout;
    Geometry g = geometry(n, cin, h, w);
    long pairs = (cin + 1) / 2;
    long planes = cin * g.rows * g.rowLength;
    long panels = 16 * pairs * BLOCK;       // words, one float each
    long products = 16 * HD_BF16_MR * BLOCK;
    return planes + panels + products + 3 * 16;   // + alignment of each region to 64 bytes
}

static float *align64(float *p) { return (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

#if defined(__x86_64__)
#include <immintrin.h>
#define HD_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// A run of a vector's lanes that belong to one image: lanes [l0, l1), tile columns from tx.
typedef struct { int l0, l1; long image, tx; } Segment;

// The segments of the vector whose first slot is s0 (at most 16; slots of padding belong to none).
static int segments(Segment *out, long s0, long tilesW, long images) {
    int count = 0;
    for (int l = 0; l < VEC;) {
        long s = s0 + l, image = s / (tilesW + 1), tx = s % (tilesW + 1);
        if (image >= images) break;
        if (tx == tilesW) { l++; continue; }
        int run = (int)(tilesW - tx);
        if (run > VEC - l) run = VEC - l;
        out[count++] = (Segment){ l, l + run, image, tx };
        l += run;
    }
    return count;
}

// Lane indices of permutex2var over (a, b): the even and the odd elements of a:b.
HD_BF16 static inline __m512i even_index(void) {
    return _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
}

// v[4i + j] = (B^T d B)(i, j) for the 16 patches starting at p (row stride ld), each 2 columns right of the previous.
HD_BF16 static inline void input_transform(__m512 v[16], const float *p, long ld) {
    const __m512i even = even_index(), odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    __m512 t[4][4];
    for (int i = 0; i < 4; i++) {
        const float *r = p + i * ld;
        __m512 a = _mm512_loadu_ps(r), b = _mm512_loadu_ps(r + 16);
        __m512 a2 = _mm512_loadu_ps(r + 2), b2 = _mm512_loadu_ps(r + 18);
        __m512 d0 = _mm512_permutex2var_ps(a, even, b), d1 = _mm512_permutex2var_ps(a, odd, b);
        __m512 d2 = _mm512_permutex2var_ps(a2, even, b2), d3 = _mm512_permutex2var_ps(a2, odd, b2);
        t[i][0] = _mm512_sub_ps(d0, d2);
        t[i][1] = _mm512_add_ps(d1, d2);
        t[i][2] = _mm512_sub_ps(d2, d1);
        t[i][3] = _mm512_sub_ps(d1, d3);
    }
    for (int j = 0; j < 4; j++) {
        v[0 + j] = _mm512_sub_ps(t[0][j], t[2][j]);
        v[4 + j] = _mm512_add_ps(t[1][j], t[2][j]);
        v[8 + j] = _mm512_sub_ps(t[2][j], t[1][j]);
        v[12 + j] = _mm512_sub_ps(t[1][j], t[3][j]);
    }
}

HD_BF16 static inline __m512i bf16_low_words(__m512 v) {
    return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v));
}

// Writes (or adds) 16 values of one output row: value i of (lo:hi) is column 2 * tx + i - 2 * l0 of the segment's
// row, for i in [2 * l0, 2 * l1) and columns below w.
HD_BF16 static inline void store_row(float *row, const Segment *s, long w, __m512 lo, __m512 hi, int accumulate) {
    long first = 2 * s->tx - 2 * s->l0;            // column of value 0
    long end = 2 * (long)s->l1;                    // values [2 l0, end)
    long limit = w - first;                        // values below `limit` land in the row
    if (limit < end) end = limit;
    long begin = 2 * (long)s->l0;
    for (int half = 0; half < 2; half++) {
        long b = begin - 16 * half, e = end - 16 * half;
        if (b < 0) b = 0;
        if (e > 16) e = 16;
        if (e <= b) continue;
        __mmask16 m = (__mmask16)(((1u << e) - 1) & ~((1u << b) - 1));
        float *dst = (float *)((uintptr_t)row + (intptr_t)(first + 16 * half) * 4);
        __m512 v = half ? hi : lo;
        if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, dst));
        _mm512_mask_storeu_ps(dst, m, v);
    }
}

HD_BF16 void hd_winograd_conv_bf16(float *y, const float *x, const uint32_t *u, const float *bias, long n, long cin, long cout,
                                   long h, long w, int accumulate, float *scratch) {
    if (n <= 0) return;
    Geometry g = geometry(n, cin, h, w);
    long pairs = (cin + 1) / 2, blocksOut = (cout + HD_BF16_MR - 1) / HD_BF16_MR;
    long planeFloats = g.rows * g.rowLength, S = 2 * (g.tilesW + 1);
    float *planes = align64(scratch);
    uint32_t *panels = (uint32_t *)align64(planes + cin * planeFloats);
    float *products = align64((float *)(panels + 16 * pairs * BLOCK));
    const long totalVectors = g.tilesH * g.vectorsPerRow;
    const __m512i lowIndex = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i highIndex = _mm512_add_epi32(lowIndex, _mm512_set1_epi32(8));
    // An odd last input channel pairs with zeros: its panel rows' high halves stay zero.
    memset(panels, 0, (size_t)16 * pairs * BLOCK * 4);
    for (long g0 = 0; g0 < n; g0 += g.group) {
        long images = n - g0 < g.group ? n - g0 : g.group;
        memset(planes, 0, (size_t)cin * planeFloats * 4);
        for (long c = 0; c < cin; c++) {
            for (long j = 0; j < images; j++) {
                const float *src = x + ((g0 + j) * cin + c) * h * w;
                float *dst = planes + c * planeFloats + g.rowLength + j * S + 1;
                for (long r = 0; r < h; r++) memcpy(dst + r * g.rowLength, src + r * w, (size_t)w * 4);
            }
        }
        for (long v0 = 0; v0 < totalVectors; v0 += BLOCK_VECTORS) {
            int vectors = (int)(totalVectors - v0 < BLOCK_VECTORS ? totalVectors - v0 : BLOCK_VECTORS);
            Segment segs[BLOCK_VECTORS][VEC];
            int segCount[BLOCK_VECTORS];
            long tileRow[BLOCK_VECTORS];
            // Transformed input tiles of the block, channel pair by channel pair.
            for (int vi = 0; vi < vectors; vi++) {
                long v = v0 + vi, ty = v / g.vectorsPerRow, s0 = (v % g.vectorsPerRow) * VEC;
                tileRow[vi] = ty;
                segCount[vi] = segments(segs[vi], s0, g.tilesW, images);
                const float *patch = planes + 2 * ty * g.rowLength + 2 * s0;
                for (long kp = 0; kp < pairs; kp++) {
                    __m512 lo[16], hi[16];
                    input_transform(lo, patch + 2 * kp * planeFloats, g.rowLength);
                    if (2 * kp + 1 < cin) input_transform(hi, patch + (2 * kp + 1) * planeFloats, g.rowLength);
                    else for (int xi = 0; xi < 16; xi++) hi[xi] = _mm512_setzero_ps();
                    for (int xi = 0; xi < 16; xi++) {
                        __m512i word = _mm512_or_si512(bf16_low_words(lo[xi]), _mm512_slli_epi32(bf16_low_words(hi[xi]), 16));
                        _mm512_store_si512((void *)(panels + (xi * pairs + kp) * BLOCK + VEC * vi), word);
                    }
                }
            }
            for (long kb = 0; kb < blocksOut; kb++) {
                for (int xi = 0; xi < 16; xi++) {
                    hd_bf16_micro_8x48(pairs, u + ((xi * blocksOut + kb) * pairs) * HD_BF16_MR, panels + xi * pairs * BLOCK,
                                       products + xi * HD_BF16_MR * BLOCK, BLOCK, HD_BF16_MR, VEC * vectors, 1.0f, 0.0f, 1);
                }
                int rowsOut = (int)(cout - kb * HD_BF16_MR < HD_BF16_MR ? cout - kb * HD_BF16_MR : HD_BF16_MR);
                for (int r = 0; r < rowsOut; r++) {
                    long k = kb * HD_BF16_MR + r;
                    __m512 b = _mm512_set1_ps(bias ? bias[k] : 0.0f);
                    for (int vi = 0; vi < vectors; vi++) {
                        const float *m = products + r * BLOCK + VEC * vi;
                        __m512 mm[16];
                        for (int xi = 0; xi < 16; xi++) mm[xi] = _mm512_load_ps(m + xi * HD_BF16_MR * BLOCK);
                        __m512 s0[4], s1[4];
                        for (int i = 0; i < 4; i++) {
                            s0[i] = _mm512_add_ps(_mm512_add_ps(mm[4 * i], mm[4 * i + 1]), mm[4 * i + 2]);
                            s1[i] = _mm512_sub_ps(_mm512_sub_ps(mm[4 * i + 1], mm[4 * i + 2]), mm[4 * i + 3]);
                        }
                        __m512 y00 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s0[0], s0[1]), s0[2]), b);
                        __m512 y01 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s1[0], s1[1]), s1[2]), b);
                        __m512 y10 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s0[1], s0[2]), s0[3]), b);
                        __m512 y11 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s1[1], s1[2]), s1[3]), b);
                        __m512 top[2] = { _mm512_permutex2var_ps(y00, lowIndex, y01), _mm512_permutex2var_ps(y00, highIndex, y01) };
                        __m512 bottom[2] = { _mm512_permutex2var_ps(y10, lowIndex, y11), _mm512_permutex2var_ps(y10, highIndex, y11) };
                        long oy = 2 * tileRow[vi];
                        for (int q = 0; q < segCount[vi]; q++) {
                            const Segment *s = &segs[vi][q];
                            float *plane = y + ((g0 + s->image) * cout + k) * h * w;
                            store_row(plane + oy * w, s, w, top[0], top[1], accumulate);
                            if (oy + 1 < h) store_row(plane + (oy + 1) * w, s, w, bottom[0], bottom[1], accumulate);
                        }
                    }
                }
            }
        }
    }
}

#else
void hd_winograd_conv_bf16(float *y, const float *x, const uint32_t *u, const float *bias, long n, long cin, long cout,
                           long h, long w, int accumulate, float *scratch) {
    (void)y; (void)x; (void)u; (void)bias; (void)n; (void)cin; (void)cout; (void)h; (void)w; (void)accumulate; (void)scratch;
    abort();
}
#endif
