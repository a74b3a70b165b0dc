// Image decoding and encoding for tile packing and export: JPEG (libjpeg-turbo), PNG (libpng), TIFF (libtiff).
// C because libjpeg reports errors by longjmp, which Swift cannot catch; every function here returns an error
// code with a message instead of exiting or printing.
#ifndef HISTODISTILL_IMAGECODECS_H
#define HISTODISTILL_IMAGECODECS_H
#include <stddef.h>

/// An 8-bit RGB image, rows top to bottom as stored in the file, pixels interleaved; `pixels` is malloc'd (free
/// with hd_image_free). Every decoder gives the file's values: 16-bit samples keep their high byte (as Pillow does
/// for 16-bit RGB), gamma chunks are ignored, CMYK is converted as Pillow converts it, and alpha is composited over
/// white (out = C * A / 255 + 255 - A, rounded).
typedef struct {
    unsigned char *pixels;
    int width;
    int height;
    /// 1 when the file has an alpha channel (or a transparent palette entry / colour), else 0.
    int had_alpha;
    /// EXIF/TIFF orientation tag (1..8; 1 when absent). Not applied by the decoders.
    int orientation;
} hd_image;

/// Decodes a JPEG held in memory to RGB (grey, YCbCr, CMYK and YCCK). Any libjpeg warning (a premature end of
/// data, corrupt data) is an error. Returns 0 on success, else -1 with a message in `err`.
int hd_decode_jpeg(const unsigned char *data, size_t size, hd_image *out, char *err, size_t errlen);

/// Decodes a PNG held in memory to RGB (any bit depth and colour type). Returns 0 or -1 with a message.
int hd_decode_png(const unsigned char *data, size_t size, hd_image *out, char *err, size_t errlen);

/// Decodes the first page of a TIFF file to RGB (rows in stored order). Returns 0 or -1 with a message.
int hd_decode_tiff_file(const char *path, hd_image *out, char *err, size_t errlen);

/// Writes an RGB image as PNG. Returns 0 or -1 with a message.
int hd_encode_png_file(const char *path, const unsigned char *rgb, int width, int height, char *err, size_t errlen);

/// Frees an image's pixels.
void hd_image_free(hd_image *img);

#endif
