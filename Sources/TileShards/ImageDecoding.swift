// Decodes JPEG, PNG and TIFF files to RGB and writes PNG, with errors that name the file.
import CImageCodecs
import Foundation

/// An 8-bit RGB image.
public struct RGBImage: Sendable, Equatable {
    public var width: Int, height: Int
    /// width * height * 3 bytes, rows top to bottom.
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(pixels.count == width * height * 3, "RGBImage: \(pixels.count) bytes for \(width)x\(height)")
        self.width = width; self.height = height; self.pixels = pixels
    }
}

/// Reading and writing image files.
public enum ImageCodec {
    /// File extensions `decode` understands.
    public static let extensions: Set<String> = ["jpg", "jpeg", "png", "tif", "tiff"]

    /// Decodes the image at `url` to the pixels the file holds (see `decodeFile`), orientation not applied.
    public static func decode(_ url: URL) throws -> RGBImage { try decodeFile(url).image }

    /// A decoded file: its pixels in stored order, whether it had an alpha channel (composited over white), and
    /// its EXIF/TIFF orientation tag (1 to 8; 1 when absent).
    public struct Decoded: Sendable {
        public var image: RGBImage
        public var hadAlpha: Bool
        public var orientation: Int
    }

    /// Decodes the image at `url` by its content (JPEG and PNG magic) or extension (TIFF), as Pillow's
    /// `Image.open(path).convert("RGB")` gives it, with one rule for alpha: every format's transparent and
    /// half-transparent pixels are composited over white (out = C * A / 255 + 255 - A, as for slides). 16-bit
    /// samples keep their high byte (Pillow's rule for 16-bit RGB, used for 16-bit grey too, which Pillow clips);
    /// PNG gamma chunks are ignored (as Pillow and torchvision do); CMYK/YCCK JPEGs convert as Pillow converts;
    /// a truncated or damaged JPEG (any libjpeg warning) is an error. EXIF orientation is reported, not applied
    /// (Pillow's and torchvision's loaders ignore it too); `oriented(_:_:)` applies it.
    public static func decodeFile(_ url: URL) throws -> Decoded {
        let ext = url.pathExtension.lowercased()
        var image = hd_image()
        var err = [CChar](repeating: 0, count: 512)
        let rc: Int32
        if ext == "tif" || ext == "tiff" {
            rc = hd_decode_tiff_file(url.path, &image, &err, err.count)
        } else {
            let data: Data
            do { data = try Data(contentsOf: url) } catch {
                throw ShardError("\(url.path): cannot be read (\(fileErrorReason(error)))")
            }
            rc = data.withUnsafeBytes { raw -> Int32 in
                let p = raw.bindMemory(to: UInt8.self)
                if raw.count >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF {
                    return hd_decode_jpeg(p.baseAddress!, raw.count, &image, &err, err.count)
                }
                if raw.count >= 8 && p[0] == 0x89 && p[1] == 0x50 && p[2] == 0x4E && p[3] == 0x47 {
                    return hd_decode_png(p.baseAddress!, raw.count, &image, &err, err.count)
                }
                let msg = "not a JPEG or PNG file (unknown signature)"
                msg.utf8CString.withUnsafeBufferPointer { m in
                    for i in 0..<min(m.count, err.count) { err[i] = m[i] }
                }
                return -1
            }
        }
        guard rc == 0 else {
            let message = String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw ShardError("\(url.path): cannot be decoded: \(message)")
        }
        defer { hd_image_free(&image) }
        let count = Int(image.width) * Int(image.height) * 3
        return Decoded(image: RGBImage(width: Int(image.width), height: Int(image.height),
                                       pixels: Array(UnsafeBufferPointer(start: image.pixels, count: count))),
                       hadAlpha: image.had_alpha != 0, orientation: Int(image.orientation))
    }

    /// `image` displayed as its EXIF orientation says (Pillow's `ImageOps.exif_transpose`): 2 mirror, 3 rotate
    /// 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
    public static func oriented(_ image: RGBImage, _ orientation: Int) -> RGBImage {
        guard (2...8).contains(orientation) else { return image }
        let w = image.width, h = image.height
        let swap = orientation >= 5
        let ow = swap ? h : w, oh = swap ? w : h
        var out = [UInt8](repeating: 0, count: w * h * 3)
        for y in 0..<oh {
            for x in 0..<ow {
                // The source pixel (sx, sy) shown at (x, y).
                let (sx, sy): (Int, Int)
                switch orientation {
                case 2: (sx, sy) = (w - 1 - x, y)
                case 3: (sx, sy) = (w - 1 - x, h - 1 - y)
                case 4: (sx, sy) = (x, h - 1 - y)
                case 5: (sx, sy) = (y, x)
                case 6: (sx, sy) = (y, h - 1 - x)
                case 7: (sx, sy) = (w - 1 - y, h - 1 - x)
                default: (sx, sy) = (w - 1 - y, x)
                }
                let d = (y * ow + x) * 3, s = (sy * w + sx) * 3
                out[d] = image.pixels[s]; out[d + 1] = image.pixels[s + 1]; out[d + 2] = image.pixels[s + 2]
            }
        }
        return RGBImage(width: ow, height: oh, pixels: out)
    }

    /// Writes `image` as a PNG file.
    public static func writePNG(_ image: RGBImage, to url: URL) throws {
        var err = [CChar](repeating: 0, count: 512)
        let rc = image.pixels.withUnsafeBufferPointer {
            hd_encode_png_file(url.path, $0.baseAddress!, Int32(image.width), Int32(image.height), &err, err.count)
        }
        guard rc == 0 else {
            let message = String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw ShardError("\(url.path): cannot be written: \(message)")
        }
    }
}
