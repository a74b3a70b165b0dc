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

    /// Decodes the image at `url` by its content (JPEG and PNG magic) or extension (TIFF).
    public static func decode(_ url: URL) throws -> RGBImage {
        let ext = url.pathExtension.lowercased()
        var image = hd_image()
        var err = [CChar](repeating: 0, count: 512)
        let rc: Int32
        if ext == "tif" || ext == "tiff" {
            rc = hd_decode_tiff_file(url.path, &image, &err, err.count)
        } else {
            let data: Data
            do { data = try Data(contentsOf: url) } catch {
                throw ShardError("\(url.path): cannot be read (\(error.localizedDescription))")
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
        return RGBImage(width: Int(image.width), height: Int(image.height),
                        pixels: Array(UnsafeBufferPointer(start: image.pixels, count: count)))
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
