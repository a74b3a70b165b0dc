// Winograd F(2x2, 3x3) convolution with bfloat16 products and float32 sums (AVX512-BF16): 3x3 kernels, stride 1,
// padding 1, NCHW. Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016): each 2x2 block of
// outputs is A^T [ (G g G^T) .* (B^T d B) ] A over the 4x4 input patch d around it, so the 16 elementwise products of
// every (output, input) channel pair become 16 matrix products with 2.25x fewer multiply-adds than the direct
// convolution. The transformed operands are rounded to bfloat16 (round to nearest even), the products summed in
// float32, as the bfloat16 GEMM does (gemm_bf16.h).
#ifndef HISTODISTILL_WINOGRAD_H
#define HISTODISTILL_WINOGRAD_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// 1 when this CPU runs the kernels below (the bfloat16 GEMM's instructions: AVX512-BF16 with AVX512-BW), else 0.
int hd_winograd_available(void);

/// 32-bit words `hd_winograd_pack_weights` writes for `cout` output and `cin` input channels.
long hd_winograd_weight_words(long cout, long cin);

/// Transforms the weights (U = G g G^T for every output/input channel pair, 16 values each), rounds them to bfloat16
/// and packs them as the products read them (`hd_winograd_weight_words(cout, cin)` words into `u`). `weight` is
/// (cout, cin, 3, 3); with `adjoint` it is instead the weight of a forward convolution from `cout` to `cin` channels,
/// (cin, cout, 3, 3), read flipped and transposed: this convolution of that forward's output gradient is then its
/// input gradient (torch.nn.grad.conv2d_input with stride 1, padding 1). Only call when `hd_winograd_available()`.
void hd_winograd_pack_weights(uint32_t *u, const float *weight, long cout, long cin, int adjoint);

/// Scratch floats `hd_winograd_conv_bf16` needs for these extents (a ring of its images' padded rows, the transformed tiles
/// and the products of one block of tiles).
long hd_winograd_scratch_floats(long n, long cin, long h, long w);

/// y (n, cout, h, w) = conv(x (n, cin, h, w), 3x3, stride 1, padding 1) + bias (cout, or NULL), overwriting y, or
/// with `accumulate` added to it. `u` from `hd_winograd_pack_weights`; `scratch` holds
/// `hd_winograd_scratch_floats(n, cin, h, w)` floats. Single-threaded; only call when `hd_winograd_available()`.
void hd_winograd_conv_bf16(float *y, const float *x, const uint32_t *u, const float *bias, long n, long cin, long cout,
                           long h, long w, int accumulate, float *scratch);

#ifdef __cplusplus
}
#endif
#endif
