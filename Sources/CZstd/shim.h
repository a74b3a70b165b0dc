// Imports libzstd (the frame API used by the tile shard format).
#ifndef HISTODISTILL_CZSTD_SHIM_H
#define HISTODISTILL_CZSTD_SHIM_H
#include <zstd.h>
#include <zstd_errors.h>
#endif
