// im2col / col2im for narrow feature maps (7x7 and smaller outputs) through a gather map, for Float32.
//
// map[tap * plane + q] is the offset inside an input channel plane that kernel tap `tap` reads for output
// position q, or -1 where the tap falls in the padding; it is the same for every channel and image. Column row
// r = c * taps + tap; column j holds output position start + j of the images concatenated (plane positions
// each), so one GEMM can cover several small images.
#ifndef HISTODISTILL_IM2COL_H
#define HISTODISTILL_IM2COL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// col[r * ld + j] = input[image * inImage + c * chPlane + map[tap * plane + q]], or 0 where the map is -1.
void hd_im2col_gather(float *col, ptrdiff_t ld, const float *input, ptrdiff_t inImage, ptrdiff_t chPlane,
                      int channels, int taps, int plane, const int32_t *map, ptrdiff_t start, ptrdiff_t count);

/// The adjoint: gradInput[image * inImage + c * chPlane + map[...]] += col[r * ld + j] where the map is >= 0.
/// For one tap the map never names an input element twice (each output position reads its own element).
void hd_col2im_gather(float *gradInput, const float *col, ptrdiff_t ld, ptrdiff_t inImage, ptrdiff_t chPlane,
                      int channels, int taps, int plane, const int32_t *map, ptrdiff_t start, ptrdiff_t count);

/// Tests: the most images one gather runs over (0: as many as 32-bit offsets allow, the default), so the split of a
/// tile into runs of images is exercised on small inputs.
void hd_im2col_set_chunk_images(ptrdiff_t images);

/// The variants of the gather and of the scatter-add.
enum { HD_GATHER_SCALAR = 0, HD_GATHER_AVX512 = 1 };

/// The variants in use (HD_GATHER_*), chosen on first use by timing the AVX-512 one against the scalar loop (both give
/// the same bits); the scalar loop where the CPU has no AVX-512.
void hd_im2col_kernels(int *gather, int *scatter);

/// Forces the variants (tests); -1 keeps one as it is. AVX-512 is ignored on a CPU without it.
void hd_im2col_set_kernels(int gather, int scatter);

/// Smallest plane (output positions per image) on which a stride-1 "same" convolution's taps are copied as shifted
/// runs instead of gathered: 7x7 planes gained 15-17% per convolution (docs/benchmarks.md); on 4x4 planes a
/// call per image costs what the gather saves, and on 2x2 planes a gather across images fills whole vectors.
enum { HD_SHIFT_MIN_PLANE = 32 };

/// Turns the shifted copies off (0) or on (1, the default); for tests. Both give the same bits.
void hd_im2col_set_shift(int enabled);

/// Whether hd_im2col_gather and hd_col2im_gather with this map copy every tap as a shifted run (masked AVX-512 loads
/// and stores, no gather): when each tap's map is a constant shift of the plane position (a stride-1 convolution as
/// large as its input, 3x3 with padding 1), on AVX-512 CPUs, for planes of at least HD_SHIFT_MIN_PLANE positions.
int hd_im2col_takes_shift(const int32_t *map, int taps, int plane);

#ifdef __cplusplus
}
#endif

#endif
