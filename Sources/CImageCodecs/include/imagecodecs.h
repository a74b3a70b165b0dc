// Image decoding and encoding for tile packing and export: JPEG (libjpeg-turbo), PNG (libpng), TIFF (libtiff).
// C because libjpeg reports errors by longjmp, which Swift cannot catch; every function here returns an error
// code with a message instead of exiting or printing.
#ifndef HISTODISTILL_IMAGECODECS_H
#define HISTODISTILL_IMAGECODECS_H
#include <stddef.h>

/// An 8-bit RGB image, rows top to bottom, pixels interleaved; `pixels` is malloc'd (free with hd_image_free).
typedef struct {
    unsigned char *pixels;
    int width;
    int height;
} hd_image;

/// Decodes a JPEG held in memory to RGB. Returns 0 on success, else -1 with a message in `err`.
int hd_decode_jpeg(const unsigned char *data, size_t size, hd_image *out, char *err, size_t errlen);

/// Decodes a PNG held in memory to RGB (alpha dropped, 16-bit reduced). Returns 0 or -1 with a message.
int hd_decode_png(const unsigned char *data, size_t size, hd_image *out, char *err, size_t errlen);

/// Decodes the first page of a TIFF file to RGB. Returns 0 or -1 with a message.
int hd_decode_tiff_file(const char *path, hd_image *out, char *err, size_t errlen);

/// Writes an RGB image as PNG. Returns 0 or -1 with a message.
int hd_encode_png_file(const char *path, const unsigned char *rgb, int width, int height, char *err, size_t errlen);

/// Frees an image's pixels.
void hd_image_free(hd_image *img);

#endif
