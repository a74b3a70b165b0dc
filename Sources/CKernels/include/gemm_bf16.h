// GEMM with bfloat16 operands and float32 accumulation (AVX512-BF16's VDPBF16PS), and the rounding to bfloat16 that
// the same product on other CPUs uses. Row-major, like cblas_sgemm(CblasRowMajor, ...).
#ifndef HISTODISTILL_GEMM_BF16_H
#define HISTODISTILL_GEMM_BF16_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// 1 when this CPU runs `hd_sgemm_bf16` (AVX512-BF16 with AVX512-BW), else 0.
int hd_bf16_gemm_available(void);

/// C (m, n) = alpha * op(A) (m, k) * op(B) (k, n) + beta * C, row-major, with every element of A and B rounded to
/// bfloat16 (round to nearest even; float32 subnormals become zero, NaN stays NaN, as VCVTNEPS2BF16 does) and the
/// products summed in float32 (VDPBF16PS). op(A) = A (m rows of lda) or, with trans_a, A^T (A stored k rows of lda);
/// likewise B. beta 0 never reads C. Only call when `hd_bf16_gemm_available()`; thread-safe (per-thread packing
/// buffers). Follows PyTorch's bf16 autocast matmul: bf16 operands, fp32 accumulation and output.
void hd_sgemm_bf16(int trans_a, int trans_b, long m, long n, long k, float alpha, const float *a, long lda,
                   const float *b, long ldb, float beta, float *c, long ldc);

/// dst[i * ld_dst + j] = round_bf16(src[i * ld_src + j]) as a float, for rows x cols: the operand rounding of
/// `hd_sgemm_bf16` on any CPU (the products of two bfloat16 values are exact in float32, so an sgemm over rounded
/// operands computes the same sums in another order).
void hd_round_bf16(float *dst, long ld_dst, const float *src, long ld_src, long rows, long cols);

/// The multiply-add roof of one core: `iters` rounds of 12 independent register accumulations (no memory
/// traffic), VDPBF16PS on 512-bit registers with `bf16` (32 multiply-adds per instruction; only when
/// `hd_bf16_gemm_available()`), else float32 VFMADD on 512-bit registers (16 per instruction; AVX-512F CPUs). Every
/// product is 1 x 2^-14, so each 32-bit lane gains 2^-13 per round with bf16 (two products) and 2^-14 with float32;
/// returns the sum of all lanes, which tells the caller the loop ran (-1 on a CPU without the instructions).
/// Multiply-adds done: iters * 12 * 32 (bf16) or iters * 12 * 16. For `histodistill-bench --peak` (the kernels'
/// efficiency against the core's own roof).
double hd_peak_loop(int bf16, long iters);

#ifdef __cplusplus
}
#endif
#endif
