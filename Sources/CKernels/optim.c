// Optimizer updates (see include/optim.h).
#include "optim.h"
#include <math.h>

#include "clones.h"

#pragma clang fp contract(off)

HD_CLONES
void hd_adam_update(float *restrict p, const float *restrict g, float *restrict m, float *restrict v, ptrdiff_t n,
                    float b1, float b2, float eps, float lr, float wd, int decoupled,
                    float stepSize, float bc2Root) {
    const float a1 = 1.0f - b1, a2 = 1.0f - b2;
    if (decoupled) {
        const float shrink = 1.0f - lr * wd;
        for (ptrdiff_t i = 0; i < n; i++) {
            float gi = g[i];
            float pi = p[i] * shrink;
            float mi = m[i] * b1 + a1 * gi;
            float vi = v[i] * b2 + a2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] = pi - stepSize * mi / (sqrtf(vi) / bc2Root + eps);
        }
    } else {
        for (ptrdiff_t i = 0; i < n; i++) {
            float pi = p[i];
            float gi = wd != 0.0f ? g[i] + wd * pi : g[i];
            float mi = m[i] * b1 + a1 * gi;
            float vi = v[i] * b2 + a2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] = pi - stepSize * mi / (sqrtf(vi) / bc2Root + eps);
        }
    }
}
