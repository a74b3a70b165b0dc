// Branch-free elementwise and pooling kernels for Float32, called from TensorCore on one chunk of a parallel loop.
//
// Each is compiled for AVX-512, AVX2 and baseline x86-64 (or the target's default) and picks the best at load
// time; max pooling with stride 1 or 2 runs a hand-written AVX-512 kernel where the CPU has it. The data-dependent
// selects (ReLU masks, max-pool comparisons) are written as selects, not branches:
// with about half the activations negative a branch mispredicts every other element.
#ifndef HISTODISTILL_ELEMENTWISE_H
#define HISTODISTILL_ELEMENTWISE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// y[i] = x[i] < 0 ? 0 : x[i] (NaN stays NaN, as torch.relu). `y` may be `x`.
void hd_relu_forward(float *y, const float *x, ptrdiff_t n);

/// n interleaved RGB bytes to three float planes in [0, 1]: r[i] = rgb[3i] / 255 (an IEEE division, the bits of
/// Swift's Float(v) / 255), g from rgb[3i + 1], b from rgb[3i + 2]. A tile row as the data pipeline converts it.
void hd_rgb_unit_planes(const uint8_t *rgb, ptrdiff_t n, float *r, float *g, float *b);

/// Area downsampling of a float CHW image (3, height, width) by f (width and height divisible by f): out (3, height/f,
/// width/f) = each f x f block summed row by row, left to right, times 1 / f^2 (as one float accumulator would).
void hd_area_downsample(const float *x, int width, int height, int f, float *out);

/// The shards' planar-delta filter undone: filtered holds three planes (width x height) of row deltas (each row's
/// first byte as is, then v[x] - v[x - 1] mod 256); rgb gets the interleaved pixels (v of plane c at 3 * pixel + c).
void hd_planar_delta_decode(const uint8_t *filtered, ptrdiff_t width, ptrdiff_t height, uint8_t *rgb);

/// dx[i] += y[i] > 0 ? dy[i] : 0, where y is the ReLU's output. `dx` must not overlap `dy` or `y`.
void hd_relu_backward_add(float *dx, const float *dy, const float *y, ptrdiff_t n);

/// y[i] = a * y[i] + b * x[i] for i < n (y and x must not overlap).
void hd_scale_add(float *y, float a, const float *x, float b, ptrdiff_t n);

/// dst[i] = the float32 value of the bfloat16 src[i] (exact) for i < n.
void hd_bf16_decompress(float *dst, const uint16_t *src, ptrdiff_t n);

/// inout[i] = bf16(float(in[i]) + float(inout[i])) for i < n, rounded as hd_bf16_halves (directconv.h): the sum a user-defined
/// MPI_Op applies to compressed gradients at each step of the all-reduce.
void hd_bf16_add(const uint16_t *in, uint16_t *inout, ptrdiff_t n);

/// 1 when every x[i] (i < n) is finite, 0 when one is an infinity or a NaN (the exponent bits all set).
int hd_all_finite(const float *x, ptrdiff_t n);

/// g[i] = y[i] > 0 ? g[i] : 0 in place: turns the gradient of a ReLU's output into that of its input.
void hd_relu_mask(float *g, const float *y, ptrdiff_t n);

/// y[i] = max(a[i] + b[i], 0) (NaN stays NaN, as hd_relu_forward): a residual block's sum and ReLU in one pass. `y`
/// may be `a` or `b`.
void hd_add_relu(float *y, const float *a, const float *b, ptrdiff_t n);

/// Sum of x[i] for i < n, as 64 interleaved partial sums (lane l: the i with i % 64 == l) added pairwise at the end:
/// the same bits on every CPU path. TensorCore's reduceSum for Float.
float hd_sum(const float *x, ptrdiff_t n);

/// Sum of (x[i] - mean)^2 for i < n, summed as hd_sum does. TensorCore's reduceSquaredDeviation for Float.
float hd_squared_deviation(const float *x, ptrdiff_t n, float mean);

/// *sum = sum of dy[i], *sumx = sum of dy[i] * (x[i] - mean) for i < n, each as 32 interleaved partial sums added
/// pairwise (the same bits on every CPU path). TensorCore's reduceGradientMoments for Float.
void hd_gradient_moments(const float *dy, const float *x, ptrdiff_t n, float mean, float *sum, float *sumx);

/// As hd_gradient_moments with g[i] = y[i] > 0 ? dy[i] : 0 in place of dy[i] (the ReLU's mask applied on the fly; 0 and
/// NaN outputs mask). TensorCore's reduceMaskedGradientMoments for Float.
void hd_masked_gradient_moments(const float *dy, const float *y, const float *x, ptrdiff_t n, float mean,
                                 float *sum, float *sumx);

/// Max pool over `planes` planes of h x w (square kernel k, stride s, padding p; output oh x ow per plane).
/// out = the window's maximum, idx = its offset in the input plane; the first maximum in row-major window order
/// wins, and NaN wins over everything (the last NaN, as PyTorch). Padding never wins. Every window must hold at
/// least one input element (PyTorch's output-size rule guarantees it).
void hd_maxpool2d_forward(float *out, int32_t *idx, const float *in, ptrdiff_t planes,
                          int h, int w, int oh, int ow, int k, int s, int p);

/// GroupNorm's forward (TensorCore's GroupNorm.forward for Float: its generic loops' per-element operations, the sums of
/// hd_sum and hd_squared_deviation) over the
/// (image, group) pairs ng = first ..< first + count of a (n, groups * channels, h, w) tensor: group ng is the
/// `channels` * `plane` contiguous values from x + ng * channels * plane, its channels' weight and bias from index
/// (ng % groups) * channels. Writes mean[ng] = mu (hd_sum over the group / its size), rstd[ng] = rs = 1 / sqrt(
/// hd_squared_deviation / size + eps), and y = x * scale + shift with scale = rs * weight[c], shift = bias[c] - mu *
/// scale, clamped at 0 with `relu` (NaN stays NaN). y may be x.
void hd_groupnorm_forward_groups(float *y, const float *x, ptrdiff_t first, ptrdiff_t count, int groups, int channels,
                                 ptrdiff_t plane, const float *weight, const float *bias, float eps, int relu,
                                 float *mean, float *rstd);

/// GroupNorm's backward (TensorCore's GroupNorm.backward for Float: its generic loops' per-element operations, the
/// sums of hd_gradient_moments and hd_masked_gradient_moments) over the
/// (image, group) pairs ng = first ..< first + count, laid out as in hd_groupnorm_forward_groups, with mean[ng] and
/// rstd[ng] from the forward; y the ReLU's output (NULL without a fused ReLU). For channel ci of group ng (index
/// k = ng * channels + ci) writes sums[k] = sum of g and sumsx[k] = rs * sum of g * (x - mu), g = dy masked by y > 0 as
/// hd_masked_gradient_moments (or dy); then dx = rs * (g * w - mSum - (x - mu) * rs * mSumX) with mSum, mSumX the
/// group's sums weighted by its channels' weights, in channel order, divided by its size; added to dx with
/// `accumulate`, written otherwise.
void hd_groupnorm_backward_groups(float *dx, const float *dy, const float *y, const float *x, ptrdiff_t first, ptrdiff_t count,
                                  int groups, int channels, ptrdiff_t plane, const float *weight, const float *mean,
                                  const float *rstd, int accumulate, float *sums, float *sumsx);

#ifdef __cplusplus
}
#endif

#endif
