// CRC-32 of shard frames, index and metadata: zlib's (IEEE 802.3 polynomial, reflected).
#pragma once
#include <stddef.h>
#include <stdint.h>

/// The CRC-32 of `count` bytes at `p`, continuing from `crc` (0 to start): zlib's `crc32_z`.
uint32_t hd_crc32(uint32_t crc, const void *p, size_t count);
