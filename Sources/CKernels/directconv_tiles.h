// The loop both direct-convolution sums share (directconv.c, directconv_bf16.c): 48-position tiles outside, 8-row
// blocks inside, so a tile's input stays in L1 while every row block reads it; the last tile is 32 or 16 wide.
// TILE(V, out, src, wpack) computes one tile of V vectors of 16 positions.
#ifndef HISTODISTILL_DIRECTCONV_TILES_H
#define HISTODISTILL_DIRECTCONV_TILES_H
#define HD_DIRECT_TILES(TILE, out, ldo, rowBlocks, src, pairs, wpack, count)                               \
    do {                                                                                                   \
        const int vectors_ = ((count) + 15) / 16;                                                          \
        const int full_ = vectors_ / 3, rest_ = vectors_ % 3;                                              \
        const ptrdiff_t block_ = (ptrdiff_t)(pairs) * 8;                                                   \
        for (int t_ = 0; t_ <= full_; t_++) {                                                              \
            const ptrdiff_t p_ = (ptrdiff_t)t_ * 48;                                                       \
            const int v_ = t_ < full_ ? 3 : rest_;                                                         \
            for (int b_ = 0; b_ < (rowBlocks) && v_ > 0; b_++) {                                           \
                float *o_ = (out) + (ptrdiff_t)b_ * 8 * (ldo) + p_;                                        \
                if (v_ == 3) TILE(3, o_, (src) + p_, (wpack) + b_ * block_);                               \
                else if (v_ == 2) TILE(2, o_, (src) + p_, (wpack) + b_ * block_);                          \
                else TILE(1, o_, (src) + p_, (wpack) + b_ * block_);                                       \
            }                                                                                              \
        }                                                                                                  \
    } while (0)
#endif
