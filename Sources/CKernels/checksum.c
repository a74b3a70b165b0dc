// CRC-32 through zlib (a well-kept library; faster than the slicing-by-8 table this project had).
#include "checksum.h"
#include <zlib.h>

uint32_t hd_crc32(uint32_t crc, const void *p, size_t count) {
    return (uint32_t)crc32_z((uLong)crc, (const Bytef *)p, (z_size_t)count);
}
