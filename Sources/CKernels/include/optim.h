// Optimizer updates over flat Float32 buffers, called from Training on one chunk of a parallel loop.
#ifndef HISTODISTILL_OPTIM_H
#define HISTODISTILL_OPTIM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// One Adam / AdamW step over n elements, torch.optim.Adam(W)'s formulas in torch's order of operations:
///   decoupled: p *= 1 - lr * wd;   else: g += wd * p
///   m = m * b1 + (1 - b1) * g;   v = v * b2 + (1 - b2) * g * g
///   p -= stepSize * m / (sqrt(v) / bc2Root + eps)
/// with stepSize = lr / (1 - b1^t) and bc2Root = sqrt(1 - b2^t). No fused multiply-adds, so every CPU (and the
/// AVX-512, AVX2 and baseline builds of this function) produces the same bits.
void hd_adam_update(float *p, const float *g, float *m, float *v, ptrdiff_t n,
                    float b1, float b2, float eps, float lr, float wd, int decoupled,
                    float stepSize, float bc2Root);

#ifdef __cplusplus
}
#endif

#endif
