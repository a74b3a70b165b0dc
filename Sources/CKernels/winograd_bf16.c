// Winograd F(2x2, 3x3) convolution, bfloat16 products with float32 sums (see include/winograd.h).
//
// Layout. A group of G images is read, channel by channel, as zero-padded rows where the images sit side by side:
// image j's pixel (y, x) at row y + 1, column j * S + x + 1, S = 2 * (tilesW + 1); each padded row is built just
// before its first use into a ring of 8 rows per channel (a block of tiles needs at most 8), so the copy stays in
// cache. The 2x2 output tiles are then "slots" on a grid: slot s of tile row ty reads the 4x4 patch at rows
// 2ty..2ty+3, columns 2s..2s+3, and belongs to image s / (tilesW + 1), tile column s % (tilesW + 1) (the last slot of
// each image is padding). Sixteen consecutive slots of one tile row are one vector: their 4x4 patches come from two
// pairs of loads per row and even/odd lane permutes, with no gather. Three vectors (48 tiles) are one block: their
// transformed values B^T d B for every input channel, as bfloat16 pairs of adjacent channels, are one 48-wide panel
// per transform position (16 panels), the bfloat16 GEMM's B panels; the packed weights are its A panels. Per 8 output
// channels the micro-kernel gives the 16 products of the block, and the output transform A^T m A writes each tile's
// 2x2 outputs straight into y with masked stores, image by image.
#include "winograd.h"
#include "gemm_bf16.h"
#include "gemm_bf16_kernel.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { VEC = 16, BLOCK_VECTORS = 3, BLOCK = VEC * BLOCK_VECTORS, MAX_GROUP = 16, RING = 8, CHUNK = 8 };

int hd_winograd_available(void) { return hd_bf16_gemm_available(); }

long hd_winograd_weight_words(long cout, long cin) {
    long blocks = (cout + HD_BF16_MR - 1) / HD_BF16_MR, pairs = (cin + 1) / 2;
    return 16 * blocks * pairs * HD_BF16_MR;
}

// The extents of one call: tiles, the group of images side by side, the padded rows.
typedef struct {
    long tilesH, tilesW, group, slots, rowLength, vectorsPerRow;
} Geometry;

static Geometry geometry(long n, long cin, long h, long w) {
    Geometry g;
    g.tilesH = (h + 1) / 2;
    g.tilesW = (w + 1) / 2;
    // The group that wastes the fewest slots (per tile row, G * (tilesW + 1) slots rounded up to a vector), among
    // those whose ring of padded rows stays within 2 MB; the smaller on ties.
    long best = 1;
    double bestUse = 0;
    long maxGroup = n < MAX_GROUP ? n : MAX_GROUP;
    for (long G = 1; G <= maxGroup; G++) {
        long slots = (G * (g.tilesW + 1) + VEC - 1) / VEC * VEC;
        long floats = cin * RING * (2 * slots + 2 * VEC);
        if (G > 1 && floats * 4 > (2L << 20)) break;
        double use = (double)(G * g.tilesW) / (double)slots;
        if (use > bestUse + 1e-9) { bestUse = use; best = G; }
    }
    g.group = best;
    g.slots = (best * (g.tilesW + 1) + VEC - 1) / VEC * VEC;
    g.rowLength = 2 * g.slots + 2 * VEC;
    g.vectorsPerRow = g.slots / VEC;
    return g;
}

long hd_winograd_scratch_floats(long n, long cin, long h, long w) {
    Geometry g = geometry(n, cin, h, w);
    long pairs = (cin + 1) / 2;
    long planes = cin * RING * g.rowLength;
    long panels = 16 * pairs * BLOCK;       // words, one float each
    long products = 16 * CHUNK * HD_BF16_MR * BLOCK;
    return planes + panels + products + 3 * 16;   // + alignment of each region to 64 bytes
}

static float *align64(float *p) { return (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

#if defined(__x86_64__)
#include <immintrin.h>
#include "loads.h"
#define HD_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// Where one run of a vector's lanes that belong to one image lands: output value i of the run's interleaved row
// (lanes' dx = 0, 1 pairs, lo:hi) goes to column first + i of the image's row, for the values in masks (lo, hi).
typedef struct { long image, first; __mmask16 lo, hi; } Segment;

// The segments of the vector whose first slot is s0 (slots of padding belong to none), for outputs w wide.
static int segments(Segment *out, long s0, long tilesW, long images, long w) {
    int count = 0;
    for (int l = 0; l < VEC;) {
        long s = s0 + l, image = s / (tilesW + 1), tx = s % (tilesW + 1);
        if (image >= images) break;
        if (tx == tilesW) { l++; continue; }
        int run = (int)(tilesW - tx);
        if (run > VEC - l) run = VEC - l;
        long first = 2 * tx - 2 * l;                   // column of value 0
        long begin = 2 * l, end = 2 * (l + run);       // its values
        if (end > w - first) end = w - first;          // an odd width's last column
        uint32_t bits = end > begin ? (uint32_t)((((uint64_t)1 << end) - 1) & ~(((uint64_t)1 << begin) - 1)) : 0;
        out[count++] = (Segment){ image, first, (__mmask16)(bits & 0xFFFF), (__mmask16)(bits >> 16) };
        l += run;
    }
    return count;
}

// Lane indices of permutex2var over (a, b): the even elements of a:b.
HD_BF16 static inline __m512i even_index(void) {
    return _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
}

// v[4i + j] = (B^T d B)(i, j) for the 16 patches whose rows start at r[0..3] + 2 * lane.
HD_BF16 static inline void input_transform(__m512 v[16], const float *const r[4]) {
    const __m512i even = even_index(), odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    __m512 t[4][4];
    for (int i = 0; i < 4; i++) {
        __m512 a = _mm512_loadu_ps(r[i]), b = _mm512_loadu_ps(r[i] + 16);
        __m512 a2 = _mm512_loadu_ps(r[i] + 2), b2 = _mm512_loadu_ps(r[i] + 18);
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

// Writes (or adds) the interleaved values lo:hi of one segment at row + first.
HD_BF16 static inline void store_segment(float *row, const Segment *s, __m512 lo, __m512 hi, int accumulate) {
    float *dst = (float *)((uintptr_t)row + (intptr_t)s->first * 4);
    if (s->lo) {
        if (accumulate) lo = _mm512_add_ps(lo, hd_load_ps(s->lo, dst));
        _mm512_mask_storeu_ps(dst, s->lo, lo);
    }
    if (s->hi) {
        float *d = (float *)((uintptr_t)dst + 64);
        if (accumulate) hi = _mm512_add_ps(hi, hd_load_ps(s->hi, d));
        _mm512_mask_storeu_ps(d, s->hi, hi);
    }
}

// Padded row r of every channel (the group's images side by side, see the top of this file) into its ring slot:
// zeros, then each image's row r - 1 (rows 1..h), with AVX-512 stores (rows are short: no library calls per image).
HD_BF16 static void build_rows(float *ring, const Geometry *g, const float *x, long g0, long images, long cin, long h,
                               long w, long r) {
    long S = 2 * (g->tilesW + 1), L = g->rowLength;
    const __m512 zero = _mm512_setzero_ps();
    __mmask16 tail = (__mmask16)((1u << (w % 16)) - 1);
    for (long c = 0; c < cin; c++) {
        float *dst = ring + (c * RING + r % RING) * L;
        for (long i = 0; i < L; i += 16) _mm512_storeu_ps(dst + i, zero);    // L is a multiple of 16
        if (r < 1 || r > h) continue;
        for (long j = 0; j < images; j++) {
            const float *src = x + (((g0 + j) * cin + c) * h + r - 1) * w;
            float *d = dst + j * S + 1;
            long i = 0;
            for (; i + 16 <= w; i += 16) _mm512_storeu_ps(d + i, _mm512_loadu_ps(src + i));
            if (tail) _mm512_mask_storeu_ps(d + i, tail, _mm512_maskz_loadu_ps(tail, src + i));
        }
    }
}

HD_BF16 void hd_winograd_conv_bf16(float *y, const float *x, const uint32_t *u, const float *bias, long n, long cin, long cout,
                                   long h, long w, int accumulate, float *scratch) {
    if (n <= 0) return;
    Geometry g = geometry(n, cin, h, w);
    long pairs = (cin + 1) / 2, blocksOut = (cout + HD_BF16_MR - 1) / HD_BF16_MR, plane = h * w;
    float *ring = align64(scratch);
    uint32_t *panels = (uint32_t *)align64(ring + cin * RING * g.rowLength);
    float *products = align64((float *)(panels + 16 * pairs * BLOCK));
    const long totalVectors = g.tilesH * g.vectorsPerRow;
    const __m512i lowIndex = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i highIndex = _mm512_add_epi32(lowIndex, _mm512_set1_epi32(8));
    // A short last block leaves the panels' last columns unwritten: zeroed, the products read defined values there.
    memset(panels, 0, (size_t)16 * pairs * BLOCK * 4);
    for (long g0 = 0; g0 < n; g0 += g.group) {
        long images = n - g0 < g.group ? n - g0 : g.group;
        long built = 0;   // padded rows [0, built) have been built (the last RING of them are in the ring)
        for (long v0 = 0; v0 < totalVectors; v0 += BLOCK_VECTORS) {
            int vectors = (int)(totalVectors - v0 < BLOCK_VECTORS ? totalVectors - v0 : BLOCK_VECTORS);
            Segment segs[BLOCK_VECTORS][VEC];
            int segCount[BLOCK_VECTORS];
            long tileRow[BLOCK_VECTORS];
            // The block's tile rows span at most 3 (one vector per row), so its 4x4 patches at most 8 padded rows.
            long needed = 2 * ((v0 + vectors - 1) / g.vectorsPerRow) + 4;
            for (; built < needed; built++) build_rows(ring, &g, x, g0, images, cin, h, w, built);
            // Transformed input tiles of the block, channel pair by channel pair.
            for (int vi = 0; vi < vectors; vi++) {
                long v = v0 + vi, ty = v / g.vectorsPerRow, s0 = (v % g.vectorsPerRow) * VEC;
                tileRow[vi] = ty;
                segCount[vi] = segments(segs[vi], s0, g.tilesW, images, w);
                for (long kp = 0; kp < pairs; kp++) {
                    __m512 lo[16], hi[16];
                    for (int half = 0; half < 2; half++) {
                        long c = 2 * kp + half;
                        if (c >= cin) {
                            for (int xi = 0; xi < 16; xi++) hi[xi] = _mm512_setzero_ps();
                            continue;
                        }
                        const float *rows[4];
                        for (int i = 0; i < 4; i++) rows[i] = ring + (c * RING + (2 * ty + i) % RING) * g.rowLength + 2 * s0;
                        input_transform(half ? hi : lo, rows);
                    }
                    for (int xi = 0; xi < 16; xi++) {
                        __m512i word = _mm512_or_si512(bf16_low_words(lo[xi]), _mm512_slli_epi32(bf16_low_words(hi[xi]), 16));
                        _mm512_store_si512((void *)(panels + (xi * pairs + kp) * BLOCK + VEC * vi), word);
                    }
                }
            }
            // Output channels CHUNK blocks of 8 at a time: each transform position's input panel is then read from
            // L1 by CHUNK products in turn, and the products of the chunk (16 x 8 CHUNK x 48) stay in L2.
            for (long kc = 0; kc < blocksOut; kc += CHUNK) {
              long chunk = blocksOut - kc < CHUNK ? blocksOut - kc : CHUNK;
              for (int xi = 0; xi < 16; xi++) {
                  for (long kb = kc; kb < kc + chunk; kb++) {
                      hd_bf16_micro_8x48(pairs, u + ((xi * blocksOut + kb) * pairs) * HD_BF16_MR, panels + xi * pairs * BLOCK,
                                         products + (xi * CHUNK + kb - kc) * HD_BF16_MR * BLOCK, BLOCK, HD_BF16_MR,
                                         VEC * vectors, 1.0f, 0.0f, 1);
                  }
              }
              for (long kb = kc; kb < kc + chunk; kb++) {
                int rowsOut = (int)(cout - kb * HD_BF16_MR < HD_BF16_MR ? cout - kb * HD_BF16_MR : HD_BF16_MR);
                for (int r = 0; r < rowsOut; r++) {
                    long k = kb * HD_BF16_MR + r;
                    __m512 b = _mm512_set1_ps(bias ? bias[k] : 0.0f);
                    for (int vi = 0; vi < vectors; vi++) {
                        const float *m = products + ((kb - kc) * HD_BF16_MR + r) * BLOCK + VEC * vi;
                        __m512 mm[16];
                        for (int xi = 0; xi < 16; xi++) mm[xi] = _mm512_load_ps(m + xi * CHUNK * HD_BF16_MR * BLOCK);
                        __m512 s0[4], s1[4];
                        for (int i = 0; i < 4; i++) {
                            s0[i] = _mm512_add_ps(_mm512_add_ps(mm[4 * i], mm[4 * i + 1]), mm[4 * i + 2]);
                            s1[i] = _mm512_sub_ps(_mm512_sub_ps(mm[4 * i + 1], mm[4 * i + 2]), mm[4 * i + 3]);
                        }
                        __m512 y00 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s0[0], s0[1]), s0[2]), b);
                        __m512 y01 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s1[0], s1[1]), s1[2]), b);
                        __m512 y10 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s0[1], s0[2]), s0[3]), b);
                        __m512 y11 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s1[1], s1[2]), s1[3]), b);
                        __m512 t0 = _mm512_permutex2var_ps(y00, lowIndex, y01), t1 = _mm512_permutex2var_ps(y00, highIndex, y01);
                        __m512 b0 = _mm512_permutex2var_ps(y10, lowIndex, y11), b1 = _mm512_permutex2var_ps(y10, highIndex, y11);
                        long oy = 2 * tileRow[vi];
                        int bottom = oy + 1 < h;
                        for (int q = 0; q < segCount[vi]; q++) {
                            const Segment *sg = &segs[vi][q];
                            float *row = y + ((g0 + sg->image) * cout + k) * plane + oy * w;
                            store_segment(row, sg, t0, t1, accumulate);
                            if (bottom) store_segment(row + w, sg, b0, b1, accumulate);
                        }
                    }
                }
              }
            }
        }
    }
}

// U = G g G^T for 16 input channels at once (g's taps as 9 vectors); t[4i + j] = U(i, j).
HD_BF16 static inline void weight_transform16(__m512 t[16], const __m512 g[9]) {
    const __m512 half = _mm512_set1_ps(0.5f);
    __m512 r[4][3];
    for (int b = 0; b < 3; b++) {
        __m512 g0 = g[b], g1 = g[3 + b], g2 = g[6 + b];
        r[0][b] = g0;
        r[1][b] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(g0, g1), g2));
        r[2][b] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(g0, g1), g2));
        r[3][b] = g2;
    }
    for (int i = 0; i < 4; i++) {
        __m512 r0 = r[i][0], r1 = r[i][1], r2 = r[i][2];
        t[4 * i + 0] = r0;
        t[4 * i + 1] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(r0, r1), r2));
        t[4 * i + 2] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(r0, r1), r2));
        t[4 * i + 3] = r2;
    }
}

// The packed weights (every word written once, so no clearing): 16 input channels at a time, their taps gathered,
// transformed in registers (U = G g G^T, G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]) and rounded to 8 bfloat16 pairs per
// transform position; word (kp, r) of position xi's panel kb holds input channels (2kp, 2kp+1) of output channel 8kb + r.
HD_BF16 static void pack_weights_avx512(uint32_t *u, const float *weight, long cout, long cin, int adjoint) {
    long blocks = (cout + HD_BF16_MR - 1) / HD_BF16_MR, pairs = (cin + 1) / 2;
    // Element (k, c, a, b) of g: weight[k * sk + c * sc + tap(a, b)], tap = 3a + b, or 8 - 3a - b flipped.
    long sk = adjoint ? 9 : cin * 9, sc = adjoint ? cout * 9 : 9;
    const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (long k = 0; k < blocks * HD_BF16_MR; k++) {
        long kb = k / HD_BF16_MR, r = k % HD_BF16_MR;
        for (long c0 = 0; c0 < cin; c0 += 16) {
            long valid = cin - c0 < 16 ? cin - c0 : 16;
            __mmask16 m = k < cout ? (__mmask16)((1u << valid) - 1) : 0;
            __m512i index = _mm512_mullo_epi32(lanes, _mm512_set1_epi32((int)sc));
            __m512 g[9];
            for (int tap = 0; tap < 9; tap++) {
                long offset = (k < cout ? k * sk : 0) + c0 * sc + (adjoint ? 8 - tap : tap);
                g[tap] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, index, weight + offset, 4);
            }
            __m512 t[16];
            weight_transform16(t, g);
            long kp0 = c0 / 2, count = (valid + 1) / 2;
            for (int xi = 0; xi < 16; xi++) {
                uint32_t words[8];
                _mm256_storeu_si256((__m256i *)words, (__m256i)_mm512_cvtneps_pbh(t[xi]));
                uint32_t *dst = u + ((xi * blocks + kb) * pairs + kp0) * HD_BF16_MR + r;
                for (long q = 0; q < count; q++) dst[q * HD_BF16_MR] = words[q];
            }
        }
    }
}

void hd_winograd_pack_weights(uint32_t *u, const float *weight, long cout, long cin, int adjoint) {
    pack_weights_avx512(u, weight, cout, cin, adjoint);
}

#else
void hd_winograd_pack_weights(uint32_t *u, const float *weight, long cout, long cin, int adjoint) {
    (void)u; (void)weight; (void)cout; (void)cin; (void)adjoint;
    abort();
}

void hd_winograd_conv_bf16(float *y, const float *x, const uint32_t *u, const float *bias, long n, long cin, long cout,
                           long h, long w, int accumulate, float *scratch) {
    (void)y; (void)x; (void)u; (void)bias; (void)n; (void)cin; (void)cout; (void)h; (void)w; (void)accumulate; (void)scratch;
    abort();
}
#endif
