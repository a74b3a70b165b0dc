// bfloat16 rounding shared by the bfloat16 kernels (gemm_bf16.c, directconv_bf16.c).
#ifndef HISTODISTILL_BF16_BITS_H
#define HISTODISTILL_BF16_BITS_H
#include <stdint.h>
#include <string.h>

// Round to nearest even, float32 subnormals to signed zero, NaN to quiet NaN: VCVTNEPS2BF16's rule.
static inline uint32_t bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7F800000u) == 0) return (u >> 16) & 0x8000u;
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return ((u >> 16) | 0x0040u) & 0xFFFFu;
    u += 0x7FFFu + ((u >> 16) & 1u);
    return u >> 16;
}
#endif
