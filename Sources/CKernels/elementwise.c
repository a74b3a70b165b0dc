// Branch-free elementwise and pooling kernels (see include/elementwise.h).
#include "elementwise.h"

#include "clones.h"

HD_CLONES
void hd_relu_forward(float *y, const float *x, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = v < 0.0f ? 0.0f : v;
    }
}

HD_CLONES
void hd_relu_backward_add(float *restrict dx, const float *restrict dy, const float *restrict y, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) dx[i] += y[i] > 0.0f ? dy[i] : 0.0f;
}

HD_CLONES
void hd_relu_mask(float *restrict g, const float *restrict y, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) g[i] = y[i] > 0.0f ? g[i] : 0.0f;
}

// Smallest o >= 0 with o * s >= a (a may be negative).
static inline int ceil_div_nonneg(int a, int s) { return a <= 0 ? 0 : (a + s - 1) / s; }

// One output row: every window row iy in [ys, ye), every tap kx, over the outputs whose column is inside the input.
// `S` is a compile-time stride in the specialised callers (the strided loads then vectorise as shuffles).
static inline __attribute__((always_inline))
void maxpool_row(float *restrict best, int32_t *restrict bi, const float *restrict x,
                 int w, int ow, int k, int S, int p, int ys, int ye) {
    for (int ox = 0; ox < ow; ox++) {
        int x0 = ox * S - p;
        best[ox] = -__builtin_inff();
        bi[ox] = ys * w + (x0 < 0 ? 0 : x0);
    }
    for (int iy = ys; iy < ye; iy++) {
        const float *row = x + (ptrdiff_t)iy * w;
        for (int kx = 0; kx < k; kx++) {
            // Columns ox * S - p + kx must lie in [0, w).
            int lo = ceil_div_nonneg(p - kx, S);
            int last = w - 1 + p - kx;
            int hi = last < 0 ? 0 : last / S + 1;
            if (hi > ow) hi = ow;
            int base = iy * w - p + kx;
            for (int ox = lo; ox < hi; ox++) {
                float v = row[ox * S - p + kx];
                int take = (v > best[ox]) | (v != v);
                best[ox] = take ? v : best[ox];
                bi[ox] = take ? base + ox * S : bi[ox];
            }
        }
    }
}

static inline __attribute__((always_inline))
void maxpool_planes(float *out, int32_t *idx, const float *in, ptrdiff_t planes,
                    int h, int w, int oh, int ow, int k, int S, int p) {
    for (ptrdiff_t pl = 0; pl < planes; pl++) {
        const float *x = in + pl * (ptrdiff_t)h * w;
        for (int oy = 0; oy < oh; oy++) {
            int y0 = oy * S - p;
            int ys = y0 < 0 ? 0 : y0;
            int ye = y0 + k > h ? h : y0 + k;
            ptrdiff_t o = (pl * oh + oy) * (ptrdiff_t)ow;
            maxpool_row(out + o, idx + o, x, w, ow, k, S, p, ys, ye);
        }
    }
}

HD_CLONES
void hd_maxpool2d_forward(float *out, int32_t *idx, const float *in, ptrdiff_t planes,
                          int h, int w, int oh, int ow, int k, int s, int p) {
    if (s == 2) maxpool_planes(out, idx, in, planes, h, w, oh, ow, k, 2, p);
    else if (s == 1) maxpool_planes(out, idx, in, planes, h, w, oh, ow, k, 1, p);
    else maxpool_planes(out, idx, in, planes, h, w, oh, ow, k, s, p);
}
