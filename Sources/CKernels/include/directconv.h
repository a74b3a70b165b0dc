// Direct-convolution micro-kernels (AVX-512), called from TensorCore's DirectConv planner.
//
// Both kernels work on "grids": a feature map stored row-major with a row length (the grid width) that may be
// wider than the map, so that every kernel tap is one constant offset from the output position. A convolution
// is then a sum over "pairs" (input channel, tap) of a weight times the input grid shifted by the pair's offset.
#ifndef HISTODISTILL_DIRECTCONV_H
#define HISTODISTILL_DIRECTCONV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Rows handled together by `hd_direct_sum` (packed weight blocks hold this many rows).
#define HD_DIRECT_ROWS 8

/// out[r * ldo + p] = sum_j wpack[(r / 8) * pairs * 8 + j * 8 + r % 8] * src[offs[j] + p]
/// for r < 8 * rowBlocks and p < count rounded up to a multiple of 16 (every row of `out` must have room for
/// that, and `src` must be readable up to the largest offs[j] + that).
void hd_direct_sum(float *out, ptrdiff_t ldo, int rowBlocks,
                   const float *src, const ptrdiff_t *offs, int pairs,
                   const float *wpack, int count);

/// dw[r * ldw + j] += sum over i < images, p < count of
///   g[i * gImage + r * ldg + p] * src[i * sImage + offs[j] + p]
/// for r < rows and j < pairs (reads nothing at p >= count).
void hd_direct_wgrad(float *dw, ptrdiff_t ldw, int rows, int pairs,
                     const float *g, ptrdiff_t ldg, ptrdiff_t gImage,
                     const float *src, const ptrdiff_t *offs, ptrdiff_t sImage,
                     int images, int count);

/// hd_direct_sum with bfloat16 operands and float32 accumulation (AVX512-BF16 only: hd_bf16_gemm_available()):
/// out[r * ldo + p] = sum_j sum_{h=0,1} bf16 half h of wpack[(r / 8) * pairs * 8 + j * 8 + r % 8]
///                                      * bf16 half h of src[offs[j] + p],
/// each 32-bit word holding two bfloat16 values (low half first), as `hd_bf16_pair_words` writes them.
void hd_direct_sum_bf16(float *out, ptrdiff_t ldo, int rowBlocks,
                        const void *src, const ptrdiff_t *offs, int pairs,
                        const void *wpack, int count);
/// dst[i] = bf16(lo[i]) | bf16(hi[i]) << 16 for i < count, rounded as VCVTNEPS2BF16 does (nearest even,
/// subnormals to signed zero); hi may be NULL (upper halves 0). Any CPU (AVX512-BF16 when present).
void hd_bf16_pair_words(void *dst, const float *lo, const float *hi, ptrdiff_t count);
/// hd_direct_wgrad with bfloat16 operands (AVX512-BF16 only): g and src hold bfloat16 values (16 bits each; every
/// stride and offset counts them), products summed in float32, two adjacent positions per lane.
void hd_direct_wgrad_bf16(float *dw, ptrdiff_t ldw, int rows, int pairs,
                          const void *g, ptrdiff_t ldg, ptrdiff_t gImage,
                          const void *src, const ptrdiff_t *offs, ptrdiff_t sImage,
                          int images, int count);
/// dst[i] = bf16(src[i]) (16 bits each) for i < count, rounded as VCVTNEPS2BF16 does. Any CPU.
void hd_bf16_halves(void *dst, const float *src, ptrdiff_t count);
/// dst[k] = bf16(src[k * step]) (16 bits each) for k < n, rounded as hd_bf16_halves: a row of a feature map converted
/// where it lands in a bfloat16 grid (step 2: the even elements, one stride-2 phase). Reads src[0 .. (n - 1) * step]
/// only. Any CPU, any step >= 1 (AVX512-BF16 for steps 1 and 2).
void hd_bf16_halves_strided(void *dst, const float *src, ptrdiff_t n, ptrdiff_t step);
/// dst[k] = bf16(lo[k * step]) | bf16(hi[k * step]) << 16 for k < n (hi may be NULL: upper halves 0), as
/// hd_bf16_pair_words; reads lo and hi up to index (n - 1) * step only. Any CPU, any step >= 1.
void hd_bf16_pair_words_strided(void *dst, const float *lo, const float *hi, ptrdiff_t n, ptrdiff_t step);
/// even[k] = src[2k] for 2k < n and odd[k] = src[2k + 1] for 2k + 1 < n (either may be NULL: not written).
void hd_deinterleave(const float *src, ptrdiff_t n, float *even, float *odd);

/// dst[2k] += even[k] for 2k < n and dst[2k + 1] += odd[k] for 2k + 1 < n (either may be NULL: nothing added).
void hd_interleave_add(float *dst, ptrdiff_t n, const float *even, const float *odd);

#ifdef __cplusplus
}
#endif

#endif
