// JPEG, PNG and TIFF decoding and PNG encoding with error codes instead of exits (see imagecodecs.h).
#include "imagecodecs.h"
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <png.h>
#include <tiffio.h>

void hd_image_free(hd_image *img) {
    if (img && img->pixels) { free(img->pixels); img->pixels = NULL; }
}

static void hd_reset(hd_image *out) {
    out->pixels = NULL; out->width = 0; out->height = 0; out->had_alpha = 0; out->orientation = 1;
}

/// Straight (unassociated) alpha over white: C * A / 255 + (255 - A), rounded to nearest.
static inline unsigned char hd_over_white(unsigned c, unsigned a) {
    return (unsigned char)((c * a + 255u * (255u - a) + 127u) / 255u);
}

/// Pillow's MULDIV255: a * b / 255 rounded (ImagingConvert's cmyk2rgb).
static inline unsigned hd_muldiv255(unsigned a, unsigned b) {
    unsigned t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

// MARK: - EXIF orientation

static unsigned hd_get16(const unsigned char *p, int le) { return le ? (unsigned)(p[0] | p[1] << 8) : (unsigned)(p[0] << 8 | p[1]); }
static uint32_t hd_get32(const unsigned char *p, int le) {
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
              : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/// The Orientation (0x0112) of IFD0 in a TIFF-structured EXIF block, or 1. Every offset is checked against `size`.
static int hd_exif_orientation(const unsigned char *tiff, size_t size) {
    if (size < 8) return 1;
    int le;
    if (tiff[0] == 'I' && tiff[1] == 'I') le = 1; else if (tiff[0] == 'M' && tiff[1] == 'M') le = 0; else return 1;
    uint32_t ifd = hd_get32(tiff + 4, le);
    if (ifd > size || size - ifd < 2) return 1;
    unsigned n = hd_get16(tiff + ifd, le);
    for (unsigned i = 0; i < n; i++) {
        size_t e = (size_t)ifd + 2 + (size_t)i * 12;
        if (e + 12 > size) return 1;
        if (hd_get16(tiff + e, le) == 0x0112 && hd_get16(tiff + e + 2, le) == 3) {
            unsigned v = hd_get16(tiff + e + 8, le);
            return v >= 1 && v <= 8 ? (int)v : 1;
        }
    }
    return 1;
}

// MARK: - JPEG

struct hd_jpeg_error {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char *err;
    size_t errlen;
};

static void hd_jpeg_error_exit(j_common_ptr cinfo) {
    struct hd_jpeg_error *e = (struct hd_jpeg_error *)cinfo->err;
    char msg[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, msg);
    snprintf(e->err, e->errlen, "JPEG: %s", msg);
    longjmp(e->jump, 1);
}

/// Warnings (level -1: premature end of data, corrupt data, bad Huffman codes) stop the decode: libjpeg would
/// otherwise fill the missing rows with grey and report success. Trace messages (level >= 0) are ignored.
static void hd_jpeg_message(j_common_ptr cinfo, int level) {
    if (level < 0) {
        struct hd_jpeg_error *e = (struct hd_jpeg_error *)cinfo->err;
        char msg[JMSG_LENGTH_MAX];
        (*cinfo->err->format_message)(cinfo, msg);
        snprintf(e->err, e->errlen, "JPEG: %s (the file is truncated or damaged)", msg);
        longjmp(e->jump, 1);
    }
}

int hd_decode_jpeg(const unsigned char *data, size_t size, hd_image *out, char *err, size_t errlen) {
    struct jpeg_decompress_struct cinfo;
    struct hd_jpeg_error jerr;
    unsigned char *volatile pixels = NULL;
    unsigned char *volatile row = NULL;
    hd_reset(out);
    cinfo.err = jpeg_std_error(&jerr.pub);
    jerr.pub.error_exit = hd_jpeg_error_exit;
    jerr.pub.emit_message = hd_jpeg_message;
    jerr.err = err; jerr.errlen = errlen;
    if (setjmp(jerr.jump)) {
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        free(row);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&cinfo, TRUE);
    for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
        if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && memcmp(m->data, "Exif\0\0", 6) == 0) {
            out->orientation = hd_exif_orientation(m->data + 6, m->data_length - 6);
        }
    }
    int cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_components != (cmyk ? 4 : 3)) {
        snprintf(err, errlen, "JPEG: %d components after conversion, expected %d", cinfo.output_components, cmyk ? 4 : 3);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    size_t stride = (size_t)cinfo.output_width * 3;
    pixels = malloc(stride * cinfo.output_height);
    row = malloc((size_t)cinfo.output_width * 4);
    if (!pixels || !row) { snprintf(err, errlen, "JPEG: out of memory"); longjmp(jerr.jump, 1); }
    // Adobe CMYK JPEGs store inverted values (Pillow reads them as "CMYK;I").
    int inverted = cmyk && cinfo.saw_Adobe_marker;
    while (cinfo.output_scanline < cinfo.output_height) {
        unsigned char *dst = pixels + stride * cinfo.output_scanline;
        JSAMPROW r = cmyk ? row : dst;
        jpeg_read_scanlines(&cinfo, &r, 1);
        if (cmyk) {
            for (JDIMENSION x = 0; x < cinfo.output_width; x++) {
                unsigned c = row[4 * x], m = row[4 * x + 1], y = row[4 * x + 2], k = row[4 * x + 3];
                if (inverted) { c = 255 - c; m = 255 - m; y = 255 - y; k = 255 - k; }
                unsigned nk = 255 - k;   // Pillow's cmyk2rgb: R = (255 - K) - C * (255 - K) / 255
                dst[3 * x] = (unsigned char)(nk - hd_muldiv255(c, nk));
                dst[3 * x + 1] = (unsigned char)(nk - hd_muldiv255(m, nk));
                dst[3 * x + 2] = (unsigned char)(nk - hd_muldiv255(y, nk));
            }
        }
    }
    jpeg_finish_decompress(&cinfo);
    out->pixels = pixels; out->width = (int)cinfo.output_width; out->height = (int)cinfo.output_height;
    free(row);
    jpeg_destroy_decompress(&cinfo);
    return 0;
}

// MARK: - PNG

struct hd_png_source { const unsigned char *data; size_t size, offset; };
struct hd_png_error { char *err; size_t errlen; };

static void hd_png_read(png_structp png, png_bytep out, png_size_t n) {
    struct hd_png_source *s = png_get_io_ptr(png);
    if (n > s->size - s->offset) png_error(png, "unexpected end of data (the file is truncated)");
    memcpy(out, s->data + s->offset, n);
    s->offset += n;
}

static void hd_png_fail(png_structp png, png_const_charp msg) {
    struct hd_png_error *e = png_get_error_ptr(png);
    snprintf(e->err, e->errlen, "PNG: %s", msg);
    png_longjmp(png, 1);
}

static void hd_png_warn(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

int hd_decode_png(const unsigned char *data, size_t size, hd_image *out, char *err, size_t errlen) {
    hd_reset(out);
    struct hd_png_error perr = { err, errlen };
    struct hd_png_source src = { data, size, 0 };
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &perr, hd_png_fail, hd_png_warn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) { snprintf(err, errlen, "PNG: out of memory"); png_destroy_read_struct(&png, NULL, NULL); return -1; }
    unsigned char *volatile pixels = NULL;
    unsigned char *volatile rgba = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(pixels); free(rgba); free(rows);
        return -1;
    }
    png_set_read_fn(png, &src, hd_png_read);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if ((uint64_t)w * h > (1ull << 31)) png_error(png, "image too large");
    int type = png_get_color_type(png, info);
    // The file's values: no gamma handling (gAMA, cHRM, sRGB and iCCP are ignored, as Pillow and torchvision do),
    // 16-bit samples keep their high byte, palettes and low bit depths expand, transparency becomes alpha.
    png_set_strip_16(png);
    if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (type == PNG_COLOR_TYPE_GRAY && png_get_bit_depth(png, info) < 8) png_set_expand_gray_1_2_4_to_8(png);
    int alpha = (type & PNG_COLOR_MASK_ALPHA) != 0;
    if (png_get_valid(png, info, PNG_INFO_tRNS)) { png_set_tRNS_to_alpha(png); alpha = 1; }
    if (type == PNG_COLOR_TYPE_GRAY || type == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int channels = png_get_channels(png, info);
    if (channels != (alpha ? 4 : 3) || png_get_bit_depth(png, info) != 8) png_error(png, "unsupported pixel layout after expansion");
    size_t stride = png_get_rowbytes(png, info);
    rgba = malloc(stride * h);
    rows = malloc(sizeof(png_bytep) * h);
    pixels = malloc((size_t)w * h * 3);
    if (!rgba || !rows || !pixels) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) rows[y] = rgba + stride * y;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    for (size_t i = 0; i < (size_t)w * h; i++) {
        if (alpha) {
            const unsigned char *p = rgba + 4 * i;
            pixels[3 * i] = hd_over_white(p[0], p[3]);
            pixels[3 * i + 1] = hd_over_white(p[1], p[3]);
            pixels[3 * i + 2] = hd_over_white(p[2], p[3]);
        } else {
            memcpy(pixels + 3 * i, rgba + 3 * i, 3);
        }
    }
    png_destroy_read_struct(&png, &info, NULL);
    free(rgba); free(rows);
    out->pixels = pixels; out->width = (int)w; out->height = (int)h; out->had_alpha = alpha;
    return 0;
}

int hd_encode_png_file(const char *path, const unsigned char *rgb, int width, int height, char *err, size_t errlen) {
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    image.width = (png_uint_32)width; image.height = (png_uint_32)height;
    image.format = PNG_FORMAT_RGB;
    if (!png_image_write_to_file(&image, path, 0, rgb, 0, NULL)) {
        snprintf(err, errlen, "PNG: %s", image.message);
        return -1;
    }
    return 0;
}

// MARK: - TIFF

static _Thread_local char hd_tiff_message[512];
static void hd_tiff_handler(const char *module, const char *fmt, va_list ap) {
    (void)module;
    vsnprintf(hd_tiff_message, sizeof hd_tiff_message, fmt, ap);
}

int hd_decode_tiff_file(const char *path, hd_image *out, char *err, size_t errlen) {
    hd_reset(out);
    TIFFSetErrorHandler(hd_tiff_handler);
    TIFFSetWarningHandler(NULL);
    hd_tiff_message[0] = 0;
    TIFF *tif = TIFFOpen(path, "r");
    if (!tif) { snprintf(err, errlen, "TIFF: %s", hd_tiff_message[0] ? hd_tiff_message : "cannot open"); return -1; }
    uint32_t w = 0, h = 0;
    TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &w);
    TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &h);
    if (w == 0 || h == 0 || (uint64_t)w * h > (1ull << 31)) {
        snprintf(err, errlen, "TIFF: unsupported size %ux%u", w, h);
        TIFFClose(tif);
        return -1;
    }
    uint16_t orientation = ORIENTATION_TOPLEFT, extra = 0, *types = NULL;
    TIFFGetFieldDefaulted(tif, TIFFTAG_ORIENTATION, &orientation);
    TIFFGetFieldDefaulted(tif, TIFFTAG_EXTRASAMPLES, &extra, &types);
    out->orientation = orientation >= 1 && orientation <= 8 ? orientation : 1;
    out->had_alpha = extra > 0 && types && (types[0] == EXTRASAMPLE_ASSOCALPHA || types[0] == EXTRASAMPLE_UNASSALPHA);
    uint32_t *rgba = _TIFFmalloc((tmsize_t)w * h * sizeof(uint32_t));
    unsigned char *pixels = malloc((size_t)w * h * 3);
    // Requesting the file's own orientation reads rows in stored order (the tag is reported, not applied).
    if (!rgba || !pixels || !TIFFReadRGBAImageOriented(tif, w, h, rgba, out->orientation, 0)) {
        snprintf(err, errlen, "TIFF: %s", hd_tiff_message[0] ? hd_tiff_message : "cannot decode");
        if (rgba) _TIFFfree(rgba);
        free(pixels);
        TIFFClose(tif);
        return -1;
    }
    // libtiff's RGBA interface gives associated (premultiplied) alpha for both alpha kinds: over white is C + 255 - A.
    for (size_t i = 0; i < (size_t)w * h; i++) {
        unsigned a = TIFFGetA(rgba[i]), white = 255 - a;
        unsigned r = TIFFGetR(rgba[i]) + white, g = TIFFGetG(rgba[i]) + white, b = TIFFGetB(rgba[i]) + white;
        pixels[3 * i] = (unsigned char)(r > 255 ? 255 : r);
        pixels[3 * i + 1] = (unsigned char)(g > 255 ? 255 : g);
        pixels[3 * i + 2] = (unsigned char)(b > 255 ? 255 : b);
    }
    _TIFFfree(rgba);
    TIFFClose(tif);
    out->pixels = pixels; out->width = (int)w; out->height = (int)h;
    return 0;
}
