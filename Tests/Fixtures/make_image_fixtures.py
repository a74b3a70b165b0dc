#!/usr/bin/env python3
"""Makes the small images of tricky decoding cases in images/ and the pixels Pillow gives for them in
images.json (run from this folder, Tests/Fixtures: python3 make_image_fixtures.py; needs Pillow and NumPy; Pillow 13.0.0 made the
committed files). The Swift tests decode the same files and compare.

Reference rule per case (what `histodistill pack` promises, docs/data.md):
- opaque images: Pillow's Image.open(f).convert("RGB");
- 16-bit grey: Pillow's raw 16-bit values >> 8 (Pillow's own convert("RGB") clips I;16 above 255 to white; its rule
  for 16-bit RGB, the high byte, is applied to grey too);
- images with alpha: composited over white with Pillow (Image.alpha_composite over an opaque white image);
- EXIF orientation: stored order (Pillow's loader ignores it), and ImageOps.exif_transpose for the applied case.
"""
import io, json, struct, zlib
import numpy as np
from PIL import Image, ImageOps

out = {}
rng = np.random.default_rng(7)
W, H = 12, 8


def chunk(t, d):
    return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xffffffff)


def raw_png(path, w, h, depth, ctype, rows, extra=b''):
    ihdr = struct.pack('>IIBBBBB', w, h, depth, ctype, 0, 0, 0)
    data = b''.join(b'\x00' + r for r in rows)
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + extra + chunk(b'IDAT', zlib.compress(data)) + chunk(b'IEND', b''))


def record(name, rgb, tolerance=0, **extra):
    rgb = np.asarray(rgb, dtype=np.uint8)
    out[name] = dict(width=int(rgb.shape[1]), height=int(rgb.shape[0]), pixels=rgb.reshape(-1).tolist(), tolerance=tolerance, **extra)


def opaque(name, tolerance=0, **extra):
    record(name, np.array(Image.open('images/' + name).convert('RGB')), tolerance, **extra)


def over_white(name, tolerance=1):
    im = Image.open('images/' + name).convert('RGBA')
    record(name, np.array(Image.alpha_composite(Image.new('RGBA', im.size, (255, 255, 255, 255)), im).convert('RGB')), tolerance, alpha=True)


# 16-bit PNGs, RGB and grey: the stored values, not a linear-light conversion.
v16 = rng.integers(0, 65536, size=(H, W, 3), dtype=np.uint16)
raw_png('images/rgb16.png', W, H, 16, 2, [v16[y].astype('>u2').tobytes() for y in range(H)])
opaque('rgb16.png')
raw_png('images/grey16.png', W, H, 16, 0, [v16[y, :, 0].astype('>u2').tobytes() for y in range(H)])
g = (np.array(Image.open('images/grey16.png')).astype(np.uint32) >> 8).astype(np.uint8)
record('grey16.png', np.stack([g, g, g], axis=-1))
# An 8-bit PNG with a gAMA chunk (gamma 1/2.2) and one with an sRGB chunk: values as stored.
v8 = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
raw_png('images/gamma.png', W, H, 8, 2, [v8[y].tobytes() for y in range(H)], chunk(b'gAMA', struct.pack('>I', 45455)))
opaque('gamma.png')
raw_png('images/gamma-linear.png', W, H, 8, 2, [v8[y].tobytes() for y in range(H)], chunk(b'gAMA', struct.pack('>I', 100000)))
opaque('gamma-linear.png')

# Alpha: RGBA PNG, grey + alpha PNG, palette PNG with a transparent entry, RGBA TIFF; transparent, half and opaque.
alpha = np.tile(np.array([0, 64, 128, 255], dtype=np.uint8), (H, W // 4))
rgba = np.dstack([v8, alpha])
Image.fromarray(rgba, 'RGBA').save('images/rgba.png')
over_white('rgba.png')
Image.fromarray(np.dstack([v8[:, :, 0], alpha]), 'LA').save('images/grey-alpha.png')
over_white('grey-alpha.png')
pal = Image.fromarray((np.arange(W * H) % 4).reshape(H, W).astype(np.uint8), 'P')
pal.putpalette([200, 30, 60, 10, 120, 240, 0, 0, 0, 250, 250, 10] + [0] * (256 * 3 - 12))
pal.save('images/palette-transparent.png', transparency=2)   # entry 2 is black and fully transparent
over_white('palette-transparent.png', tolerance=0)
Image.fromarray(rgba, 'RGBA').save('images/rgba.tif')
over_white('rgba.tif')

# JPEG: an ordinary one, one cut to 60% of its bytes (an error), a CMYK (Adobe) one, and EXIF orientation 6.
smooth = np.clip(np.add.outer(np.arange(48) * 4, np.arange(64) * 3)[:, :, None] + rng.integers(0, 40, size=(48, 64, 3)), 0, 255).astype(np.uint8)
Image.fromarray(smooth, 'RGB').save('images/plain.jpg', quality=90)
opaque('plain.jpg', tolerance=2)
data = open('images/plain.jpg', 'rb').read()
open('images/truncated.jpg', 'wb').write(data[:int(len(data) * 0.6)])
out['truncated.jpg'] = dict(error='truncated or damaged')
Image.fromarray(smooth, 'RGB').convert('CMYK').save('images/cmyk.jpg', quality=90)
opaque('cmyk.jpg', tolerance=2)
exif = Image.Exif()
exif[0x0112] = 6
Image.fromarray(smooth[:, :40], 'RGB').save('images/orientation6.jpg', quality=90, exif=exif.tobytes())
opaque('orientation6.jpg', tolerance=2, orientation=6)
record('orientation6.jpg:applied', np.array(ImageOps.exif_transpose(Image.open('images/orientation6.jpg')).convert('RGB')), 2)
for o in (2, 3, 4, 5, 7, 8):
    t = Image.Exif()
    t[0x0112] = o
    b = io.BytesIO()
    Image.fromarray(v8, 'RGB').save(b, 'TIFF', exif=t.tobytes())
    applied = np.array(ImageOps.exif_transpose(Image.open(b)).convert('RGB'))
    record(f'orientation{o}:applied-to-v8', applied)
record('v8', v8)

with open('images.json', 'w') as f:
    json.dump(out, f, separators=(',', ':'), sort_keys=True)
print('wrote', len(out), 'cases')
