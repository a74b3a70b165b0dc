// The bfloat16 GEMM's micro-kernel, shared with the Winograd convolution (winograd_bf16.c); not part of the public
// headers. Panels as gemm_bf16.c packs them: A kps x 8 words, B kps x 48 words, each word a (k, k+1) pair of bfloat16.
#ifndef HISTODISTILL_GEMM_BF16_KERNEL_H
#define HISTODISTILL_GEMM_BF16_KERNEL_H
#include <stdint.h>

enum { HD_BF16_MR = 8, HD_BF16_NR = 48 };

#if defined(__x86_64__)
/// c (mr x nr corner of 8 x 48, row stride ldc) = alpha * A.B + (first ? beta * c : c); beta 0 never reads c. Only
/// on CPUs where `hd_bf16_gemm_available()`.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
void hd_bf16_micro_8x48(long kps, const uint32_t *a, const uint32_t *b, float *c, long ldc, int mr, int nr,
                        float alpha, float beta, int first);
#endif
#endif
