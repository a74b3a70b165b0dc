// The tile shard format (docs/shard-format.md): constants, index entries, metadata, errors.
import CKernels
import Foundation

/// A shard that cannot be read or written, naming the file and, where it applies, the tile, with a hint.
public struct ShardError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Fixed values of format version 1.
public enum ShardFormat {
    public static let headerMagic = Array("HDSHARD1".utf8)
    public static let footerMagic = Array("HDSHEND1".utf8)
    public static let version: UInt32 = 1
    public static let headerSize = 16
    public static let indexEntrySize = 48
    public static let footerSize = 64
    /// Unlabeled tiles carry this label.
    public static let unlabeled: Int32 = -1
}

/// One tile's index entry.
public struct TileEntry: Hashable, Sendable {
    public var offset: UInt64
    public var compressedSize: UInt32
    public var crc: UInt32
    public var width: UInt16
    public var height: UInt16
    /// Class index, or -1 when unlabeled.
    public var label: Int32
    public var slide: UInt32
    public var x: Int32
    public var y: Int32
    public var source: UInt32
    public var id: UInt64

    /// Bytes of the decompressed RGB payload.
    public var pixelBytes: Int { Int(width) * Int(height) * 3 }

    func write(to out: inout [UInt8]) {
        out.appendLE(offset); out.appendLE(compressedSize); out.appendLE(crc)
        out.appendLE(width); out.appendLE(height); out.appendLE(UInt32(bitPattern: label))
        out.appendLE(slide); out.appendLE(UInt32(bitPattern: x)); out.appendLE(UInt32(bitPattern: y))
        out.appendLE(source); out.appendLE(id)
    }

    static func read(_ p: UnsafeRawPointer) -> TileEntry {
        TileEntry(offset: p.le(0), compressedSize: p.le(8), crc: p.le(12), width: p.le(16), height: p.le(18),
                  label: Int32(bitPattern: p.le(20)), slide: p.le(24), x: Int32(bitPattern: p.le(28)),
                  y: Int32(bitPattern: p.le(32)), source: p.le(36), id: p.le(40))
    }
}

/// The reversible filter applied before compression.
public enum PixelFilter: String, Codable, Sendable, CaseIterable {
    /// Interleaved RGB as is.
    case none
    /// Colour planes, each row delta-coded from its left neighbour.
    case planarDelta = "planar-delta"
}

/// The JSON metadata block.
public struct ShardMetadata: Codable, Equatable, Sendable {
    public var format = "histodistill-shard"
    public var version = 1
    public var classes: [String]
    public var slides: [String]
    public var sources: [String]
    public var tileSize: Int?
    public var filter: PixelFilter
    public var zstdLevel: Int
    public var micronsPerPixel: Double?
    public var magnification: Double?
    public var shardIndex: Int
    public var shardCount: Int
    public var createdBy: String
    /// Whole-slide images: each slide's OpenSlide properties and how it was tiled, by slide id (nil for images).
    public var slideProperties: [String: SlideTilingRecord]?
    /// The tissue fraction of every tile in index order (nil entries: not measured, e.g. whole images), nil when no
    /// tile has one.
    public var tileTissue: [Float?]?
    /// One id shared by the shards of one `pack` (a digest of all their indexes), so that shards of two packings are
    /// never taken for one set; nil in shards written before it existed.
    public var packingID: String?

    enum CodingKeys: String, CodingKey {
        case format, version, classes, slides, sources, filter, packingID = "packing_id"
        case slideProperties = "slide_properties", tileTissue = "tile_tissue"
        case tileSize = "tile_size", zstdLevel = "zstd_level", micronsPerPixel = "microns_per_pixel"
        case magnification, shardIndex = "shard_index", shardCount = "shard_count", createdBy = "created_by"
    }

    public init(classes: [String], slides: [String], sources: [String], tileSize: Int?, filter: PixelFilter, zstdLevel: Int,
                micronsPerPixel: Double?, magnification: Double?, shardIndex: Int, shardCount: Int, createdBy: String) {
        self.classes = classes; self.slides = slides; self.sources = sources; self.tileSize = tileSize
        self.filter = filter; self.zstdLevel = zstdLevel; self.micronsPerPixel = micronsPerPixel
        self.magnification = magnification; self.shardIndex = shardIndex; self.shardCount = shardCount
        self.createdBy = createdBy
    }
}

extension Array where Element == UInt8 {
    mutating func appendLE<T: FixedWidthInteger>(_ v: T) {
        Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) }
    }
}

extension UnsafeRawPointer {
    func le<T: FixedWidthInteger>(_ offset: Int) -> T { T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self)) }
}

/// The reversible pixel filters.
enum Filters {
    /// Interleaved RGB (w*h*3) -> planes with row deltas.
    static func encode(_ rgb: UnsafePointer<UInt8>, width: Int, height: Int, into out: UnsafeMutablePointer<UInt8>) {
        let plane = width * height
        for c in 0..<3 {
            let dst = out + c * plane
            for y in 0..<height {
                var prev: UInt8 = 0
                for x in 0..<width {
                    let v = rgb[(y * width + x) * 3 + c]
                    dst[y * width + x] = x == 0 ? v : v &- prev
                    prev = v
                }
            }
        }
    }

    /// The inverse of `encode` (`hd_planar_delta_decode`: a row's three channels at a time).
    static func decode(_ filtered: UnsafePointer<UInt8>, width: Int, height: Int, into rgb: UnsafeMutablePointer<UInt8>) {
        hd_planar_delta_decode(filtered, width, height, rgb)
    }
}
