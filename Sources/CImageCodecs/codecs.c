// JPEG, PNG and TIFF decoding and PNG encoding with error codes instead of exits (see imagecodecs.h).
#include "imagecodecs.h"
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <png.h>
#include <tiffio.h>

void hd_image_free(hd_image *img) {
    if (img && img->pixels) { free(img->pixels); img->pixels = NULL; }
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

static void hd_jpeg_silent(j_common_ptr cinfo, int level) { (void)cinfo; (void)level; }

int hd_decode_jpeg(const unsigned char *data, size_t size, hd_image *out, char *err, size_t errlen) {
    struct jpeg_decompress_struct cinfo;
    struct hd_jpeg_error jerr;
    unsigned char *volatile pixels = NULL;
    out->pixels = NULL; out->width = 0; out->height = 0;
    cinfo.err = jpeg_std_error(&jerr.pub);
    jerr.pub.error_exit = hd_jpeg_error_exit;
    jerr.pub.emit_message = hd_jpeg_silent;
    jerr.err = err; jerr.errlen = errlen;
    if (setjmp(jerr.jump)) {
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_components != 3) {
        snprintf(err, errlen, "JPEG: %d components after conversion, expected 3", cinfo.output_components);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    size_t stride = (size_t)cinfo.output_width * 3;
    pixels = malloc(stride * cinfo.output_height);
    if (!pixels) { snprintf(err, errlen, "JPEG: out of memory"); jpeg_destroy_decompress(&cinfo); return -1; }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = pixels + stride * cinfo.output_scanline;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    out->pixels = pixels; out->width = (int)cinfo.output_width; out->height = (int)cinfo.output_height;
    jpeg_destroy_decompress(&cinfo);
    return 0;
}

// MARK: - PNG

int hd_decode_png(const unsigned char *data, size_t size, hd_image *out, char *err, size_t errlen) {
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    out->pixels = NULL; out->width = 0; out->height = 0;
    if (!png_image_begin_read_from_memory(&image, data, size)) {
        snprintf(err, errlen, "PNG: %s", image.message);
        return -1;
    }
    image.format = PNG_FORMAT_RGB;
    unsigned char *pixels = malloc(PNG_IMAGE_SIZE(image));
    if (!pixels) { png_image_free(&image); snprintf(err, errlen, "PNG: out of memory"); return -1; }
    if (!png_image_finish_read(&image, NULL, pixels, 0, NULL)) {
        snprintf(err, errlen, "PNG: %s", image.message);
        free(pixels);
        png_image_free(&image);
        return -1;
    }
    out->pixels = pixels; out->width = (int)image.width; out->height = (int)image.height;
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

static char hd_tiff_message[512];
static void hd_tiff_handler(const char *module, const char *fmt, va_list ap) {
    (void)module;
    vsnprintf(hd_tiff_message, sizeof hd_tiff_message, fmt, ap);
}

int hd_decode_tiff_file(const char *path, hd_image *out, char *err, size_t errlen) {
    out->pixels = NULL; out->width = 0; out->height = 0;
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
    uint32_t *rgba = _TIFFmalloc((tmsize_t)w * h * sizeof(uint32_t));
    unsigned char *pixels = malloc((size_t)w * h * 3);
    if (!rgba || !pixels || !TIFFReadRGBAImageOriented(tif, w, h, rgba, ORIENTATION_TOPLEFT, 0)) {
        snprintf(err, errlen, "TIFF: %s", hd_tiff_message[0] ? hd_tiff_message : "cannot decode");
        if (rgba) _TIFFfree(rgba);
        free(pixels);
        TIFFClose(tif);
        return -1;
    }
    for (size_t i = 0; i < (size_t)w * h; i++) {
        pixels[3 * i] = (unsigned char)TIFFGetR(rgba[i]);
        pixels[3 * i + 1] = (unsigned char)TIFFGetG(rgba[i]);
        pixels[3 * i + 2] = (unsigned char)TIFFGetB(rgba[i]);
    }
    _TIFFfree(rgba);
    TIFFClose(tif);
    out->pixels = pixels; out->width = (int)w; out->height = (int)h;
    return 0;
}
