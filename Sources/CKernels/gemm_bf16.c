// bfloat16 GEMM with float32 accumulation (see include/gemm_bf16.h): Goto/BLIS blocking (Goto & van de Geijn,
// "Anatomy of High-Performance Matrix Multiplication", 2008) around an 8 x 48 micro-kernel of VDPBF16PS, which adds
// the products of two adjacent bfloat16 pairs into each float32 lane. Operands are rounded to bfloat16 as they are
// packed, in pairs along k: each 32-bit word of a packed panel holds (x[k], x[k+1]) of one row or column.
#include "gemm_bf16.h"
#include "cpu.h"
#include "bf16_bits.h"
#include "gemm_bf16_kernel.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { MR = 8, NR = 48, KC = 256, MC = 128, NC = 3072 };

void hd_round_bf16(float *dst, long ld_dst, const float *src, long ld_src, long rows, long cols) {
    for (long i = 0; i < rows; i++) {
        const float *s = src + i * ld_src;
        float *d = dst + i * ld_dst;
        for (long j = 0; j < cols; j++) {
            uint32_t u = bf16_bits(s[j]) << 16;
            memcpy(d + j, &u, 4);
        }
    }
}

#if defined(__x86_64__)
#include <immintrin.h>
#include "loads.h"
#define HD_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

int hd_bf16_gemm_available(void) {
    // Asked per row by the grid builders: the answer is kept (every thread computes the same value).
    static int known = -1;
    int k = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (k >= 0) return k;
    int f = hd_cpu_features();
    k = (f & HD_CPU_AVX512BF16) && (f & HD_CPU_AVX512BW) && (f & HD_CPU_AVX512F) && (f & HD_CPU_AVX512VL);
    __atomic_store_n(&known, k, __ATOMIC_RELAXED);
    return k;
}

// Per-thread packing buffers, grown on demand and kept for the thread's life (the engine's workers live long).
static __thread uint32_t *pack_a, *pack_b;
static __thread size_t pack_a_words, pack_b_words;

static uint32_t *buffer(uint32_t **p, size_t *have, size_t words) {
    if (*have < words) {
        free(*p);
        *p = aligned_alloc(64, ((words * 4 + 63) / 64) * 64);
        *have = *p ? words : 0;
    }
    return *p;
}

// 16 floats to 16 bfloat16 in the low halves of 16 words.
HD_BF16 static inline __m512i bf16_words(__m512 v) {
    return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v));
}

// Packs rows (pairs across two source rows, each contiguous along the panel): panel word [kp][w] of width `width`
// = (x(2kp, w), x(2kp+1, w)) with x(k, w) = src[k * ld + w], for kp < kps, w < valid (zero past `valid` and past
// k >= kmax).
HD_BF16 static void pack_interleave(uint32_t *panel, int width, int valid, const float *src, long ld, long kps, long kmax) {
    __mmask16 masks[4];
    for (int v = 0; v < width / 16; v++) {
        int left = valid - 16 * v;
        masks[v] = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
    }
    for (long kp = 0; kp < kps; kp++) {
        long k0 = 2 * kp, k1 = k0 + 1;
        for (int v = 0; v < width / 16; v++) {
            __m512 lo = k0 < kmax ? hd_load_ps(masks[v], src + k0 * ld + 16 * v) : _mm512_setzero_ps();
            __m512 hi = k1 < kmax ? hd_load_ps(masks[v], src + k1 * ld + 16 * v) : _mm512_setzero_ps();
            __m512i w = _mm512_or_si512(bf16_words(lo), _mm512_slli_epi32(bf16_words(hi), 16));
            _mm512_store_si512((void *)(panel + kp * width + 16 * v), w);
        }
    }
}

// Transposes 16 rows of 16 words in place (r[i] word c -> r[c] word i): unpacks within 128-bit lanes, then lane
// shuffles.
HD_BF16 static inline void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        u[i + 0] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    // u[4g + j], 128-bit lane L: word 4L + j of rows 4g..4g+3.
    for (int j = 0; j < 4; j++) {
        __m512i x = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88), y = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xDD);
        __m512i x2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88), y2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xDD);
        r[j] = _mm512_shuffle_i32x4(x, x2, 0x88);
        r[8 + j] = _mm512_shuffle_i32x4(x, x2, 0xDD);
        r[4 + j] = _mm512_shuffle_i32x4(y, y2, 0x88);
        r[12 + j] = _mm512_shuffle_i32x4(y, y2, 0xDD);
    }
}

// Packs columns (pairs along each source row, contiguous in k): panel word [kp][w] = (x(w, 2kp), x(w, 2kp+1)) with
// x(w, k) = src[w * ld + k], for w < valid (zero past it) and k < kmax (zero past it). Width 8 or a multiple of 16;
// 16 rows x 16 pairs at a time through a register transpose.
HD_BF16 static void pack_transpose(uint32_t *panel, int width, int valid, const float *src, long ld, long kps, long kmax) {
    long kpVector = 0;
    if (kps >= 16 && kmax >= 32) {
        kpVector = kmax / 32 * 16;
        if (kpVector > kps / 16 * 16) kpVector = kps / 16 * 16;
    }
    for (int w0 = 0; w0 < width; w0 += 16) {
        for (long kp = 0; kp < kpVector; kp += 16) {
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                int w = w0 + i;
                if (w < valid && w < width) {
                    const float *s = src + w * ld + 2 * kp;
                    r[i] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + 16), _mm512_loadu_ps(s));
                } else {
                    r[i] = _mm512_setzero_si512();
                }
            }
            transpose16(r);
            if (width == 8) {
                for (int c = 0; c < 16; c++) _mm256_store_si256((__m256i *)(panel + (kp + c) * width), _mm512_castsi512_si256(r[c]));
            } else {
                for (int c = 0; c < 16; c++) _mm512_store_si512((void *)(panel + (kp + c) * width + w0), r[c]);
            }
        }
    }
    for (int w = 0; w < width; w++) {
        const float *s = src + w * ld;
        for (long kp = kpVector; kp < kps; kp++) {
            long k0 = 2 * kp;
            uint32_t lo = w < valid && k0 < kmax ? bf16_bits(s[k0]) : 0, hi = w < valid && k0 + 1 < kmax ? bf16_bits(s[k0 + 1]) : 0;
            panel[kp * width + w] = lo | (hi << 16);
        }
    }
}

// acc (8 x 48) = A panel (kps x 8 words) . B panel (kps x 48 words); then C = alpha * acc + (first ? beta * C : C)
// for the valid mr x nr corner (beta 0 never reads C).
HD_BF16 static void micro_kernel(long kps, const uint32_t *a, const uint32_t *b, float *c, long ldc, int mr, int nr,
                                 float alpha, float beta, int first) {
    __m512 acc[MR][3];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = acc[r][2] = _mm512_setzero_ps();
    for (long kp = 0; kp < kps; kp++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512((const void *)(b + 0));
        __m512bh b1 = (__m512bh)_mm512_load_si512((const void *)(b + 16));
        __m512bh b2 = (__m512bh)_mm512_load_si512((const void *)(b + 32));
        for (int r = 0; r < MR; r++) {
            __m512bh ar = (__m512bh)_mm512_set1_epi32((int)a[r]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], ar, b2);
        }
        a += MR;
        b += NR;
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < mr; r++) {
        float *row = c + r * ldc;
        for (int v = 0; v < 3; v++) {
            int left = nr - 16 * v;
            if (left <= 0) break;
            __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
            __m512 out = _mm512_mul_ps(va, acc[r][v]);
            if (!first) {
                out = _mm512_add_ps(out, hd_load_ps(m, row + 16 * v));
            } else if (beta != 0.0f) {
                out = _mm512_fmadd_ps(vb, hd_load_ps(m, row + 16 * v), out);
            }
            _mm512_mask_storeu_ps(row + 16 * v, m, out);
        }
    }
}

// The micro-kernel for the Winograd convolution (gemm_bf16_kernel.h).
HD_BF16 void hd_bf16_micro_8x48(long kps, const uint32_t *a, const uint32_t *b, float *c, long ldc, int mr, int nr,
                                float alpha, float beta, int first) {
    micro_kernel(kps, a, b, c, ldc, mr, nr, alpha, beta, first);
}

HD_BF16 void hd_sgemm_bf16(int trans_a, int trans_b, long m, long n, long k, float alpha, const float *a, long lda,
                           const float *b, long ldb, float beta, float *c, long ldc) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0 || alpha == 0.0f) {
        for (long i = 0; i < m; i++)
            for (long j = 0; j < n; j++) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
        return;
    }
    long ncMax = n < NC ? n : NC, ncPanels = (ncMax + NR - 1) / NR;
    long mcMax = m < MC ? m : MC, mcPanels = (mcMax + MR - 1) / MR;
    uint32_t *pb = buffer(&pack_b, &pack_b_words, (size_t)ncPanels * NR * (KC / 2));
    uint32_t *pa = buffer(&pack_a, &pack_a_words, (size_t)mcPanels * MR * (KC / 2));
    if (!pb || !pa) abort();
    for (long jc = 0; jc < n; jc += NC) {
        long nc = n - jc < NC ? n - jc : NC;
        for (long pc = 0; pc < k; pc += KC) {
            long kc = k - pc < KC ? k - pc : KC, kps = (kc + 1) / 2;
            int first = pc == 0;
            // B block: op(B)(pc.., jc..), panels of NR columns.
            for (long jp = 0; jp < nc; jp += NR) {
                int valid = (int)(nc - jp < NR ? nc - jp : NR);
                uint32_t *panel = pb + (jp / NR) * NR * kps;
                if (trans_b) pack_transpose(panel, NR, valid, b + (jc + jp) * ldb + pc, ldb, kps, kc);
                else pack_interleave(panel, NR, valid, b + pc * ldb + jc + jp, ldb, kps, kc);
            }
            for (long ic = 0; ic < m; ic += MC) {
                long mc = m - ic < MC ? m - ic : MC;
                for (long ip = 0; ip < mc; ip += MR) {
                    int valid = (int)(mc - ip < MR ? mc - ip : MR);
                    uint32_t *panel = pa + (ip / MR) * MR * kps;
                    if (trans_a) {
                        // op(A)(i, kk) = a[kk * lda + i]: pairs across rows of A, MR wide (one 16-lane pass, masked).
                        uint32_t tmp[16 * KC / 2] __attribute__((aligned(64)));
                        pack_interleave(tmp, 16, valid, a + pc * lda + ic + ip, lda, kps, kc);
                        for (long kp = 0; kp < kps; kp++) memcpy(panel + kp * MR, tmp + kp * 16, MR * 4);
                    } else {
                        pack_transpose(panel, MR, valid, a + (ic + ip) * lda + pc, lda, kps, kc);
                    }
                }
                for (long jp = 0; jp < nc; jp += NR) {
                    int nr = (int)(nc - jp < NR ? nc - jp : NR);
                    const uint32_t *bp = pb + (jp / NR) * NR * kps;
                    for (long ip = 0; ip < mc; ip += MR) {
                        int mr = (int)(mc - ip < MR ? mc - ip : MR);
                        micro_kernel(kps, pa + (ip / MR) * MR * kps, bp, c + (ic + ip) * ldc + jc + jp, ldc, mr, nr,
                                     alpha, beta, first);
                    }
                }
            }
        }
    }
}

// 12 accumulators: more than the instructions' latency (4-6 cycles) times their issue rate on the CPUs seen.
HD_BF16 static double peak_bf16(long iters) {
    __m512 acc[12];
    for (int i = 0; i < 12; i++) acc[i] = _mm512_setzero_ps();
    // bfloat16 1.0 (0x3F80) and 2^-14 (0x3880), paired in each 32-bit word.
    __m512bh a = (__m512bh)_mm512_set1_epi32(0x3F803F80), b = (__m512bh)_mm512_set1_epi32(0x38803880);
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < 12; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
        __asm__ volatile("" : "+v"(a));   // keeps the rounds from being folded
    }
    double sum = 0;
    for (int i = 0; i < 12; i++) sum += _mm512_reduce_add_ps(acc[i]);
    return sum;
}

__attribute__((target("avx512f"))) static double peak_fp32(long iters) {
    __m512 acc[12];
    for (int i = 0; i < 12; i++) acc[i] = _mm512_setzero_ps();
    __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(0x1p-14f);
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < 12; i++) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
        __asm__ volatile("" : "+v"(a));
    }
    double sum = 0;
    for (int i = 0; i < 12; i++) sum += _mm512_reduce_add_ps(acc[i]);
    return sum;
}

double hd_peak_loop(int bf16, long iters) {
    if (bf16 ? !hd_bf16_gemm_available() : !(hd_cpu_features() & HD_CPU_AVX512F)) return -1;
    return bf16 ? peak_bf16(iters) : peak_fp32(iters);
}

#else
double hd_peak_loop(int bf16, long iters) { (void)bf16; (void)iters; return -1; }
int hd_bf16_gemm_available(void) { return 0; }
void hd_sgemm_bf16(int trans_a, int trans_b, long m, long n, long k, float alpha, const float *a, long lda,
                   const float *b, long ldb, float beta, float *c, long ldc) {
    (void)trans_a; (void)trans_b; (void)m; (void)n; (void)k; (void)alpha; (void)a; (void)lda; (void)b; (void)ldb;
    (void)beta; (void)c; (void)ldc;
    abort();
}
#endif
