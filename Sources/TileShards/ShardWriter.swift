// Writes one shard: tiles as independent zstd frames with checksums, then index, metadata and footer;
// the file appears under its final name only when complete (temporary file, fsync, rename).
import CZstd
import Foundation

/// A tile to write: RGB pixels and where it came from.
public struct TileRecord: Sendable {
    public var pixels: [UInt8]
    public var width: Int, height: Int
    public var label: Int32
    public var slide: String
    public var x: Int32, y: Int32
    public var source: String
    public var id: UInt64
    /// Fraction of the tile that is tissue, where measured (grid tiles of images, slide tiles).
    public var tissue: Float?

    public init(pixels: [UInt8], width: Int, height: Int, label: Int32, slide: String, x: Int32 = 0, y: Int32 = 0,
                source: String, id: UInt64, tissue: Float? = nil) {
        self.pixels = pixels; self.width = width; self.height = height; self.label = label; self.slide = slide
        self.x = x; self.y = y; self.source = source; self.id = id; self.tissue = tissue
    }
}

/// Compresses a tile into a zstd frame (content checksum and size in the frame header).
public final class TileCompressor: @unchecked Sendable {
    private let cctx: OpaquePointer
    private var scratch: [UInt8] = []
    public let level: Int
    public let filter: PixelFilter

    public init(level: Int, filter: PixelFilter) {
        cctx = ZSTD_createCCtx()
        self.level = level
        self.filter = filter
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, Int32(level))
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1)
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1)
    }

    deinit { ZSTD_freeCCtx(cctx) }

    /// The frame for `tile`'s pixels.
    public func compress(_ tile: TileRecord) throws -> [UInt8] {
        precondition(tile.pixels.count == tile.width * tile.height * 3,
                     "TileCompressor: \(tile.source) has \(tile.pixels.count) bytes for \(tile.width)x\(tile.height) RGB")
        var input = tile.pixels
        if filter == .planarDelta {
            scratch = [UInt8](repeating: 0, count: input.count)
            input.withUnsafeBufferPointer { src in
                scratch.withUnsafeMutableBufferPointer { Filters.encode(src.baseAddress!, width: tile.width, height: tile.height, into: $0.baseAddress!) }
            }
            input = scratch
        }
        var out = [UInt8](repeating: 0, count: ZSTD_compressBound(input.count))
        let n = input.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                ZSTD_compress2(cctx, dst.baseAddress, dst.count, src.baseAddress, src.count)
            }
        }
        if ZSTD_isError(n) != 0 {
            throw ShardError("zstd could not compress tile from \(tile.source): \(String(cString: ZSTD_getErrorName(n)))")
        }
        out.removeSubrange(n...)
        return out
    }
}

/// Writes one shard file. Add frames in order with `append`, then `finish`.
public final class ShardWriter {
    public let url: URL
    private let temporary: URL
    private let handle: FileHandle
    private var offset: UInt64
    private var entries: [TileEntry] = []
    private var slides: [String] = [], slideIndex: [String: UInt32] = [:]
    private var sources: [String] = [], sourceIndex: [String: UInt32] = [:]
    private var sizes = Set<[Int]>()
    private var tissue: [Float?] = []

    /// Starts `url` (written as `url.tmp` until `finish`).
    public init(url: URL) throws {
        self.url = url
        temporary = url.appendingPathExtension("tmp")
        guard FileManager.default.createFile(atPath: temporary.path, contents: nil) else {
            throw ShardError("\(temporary.path): cannot be created. Hint: check that the output directory exists and is writable.")
        }
        handle = try FileHandle(forWritingTo: temporary)
        var header = ShardFormat.headerMagic
        header.appendLE(ShardFormat.version)
        header.appendLE(UInt32(0))
        offset = UInt64(header.count)
        try write(header)
    }

    /// Number of tiles appended.
    public var count: Int { entries.count }
    /// Bytes written so far.
    public var bytesWritten: UInt64 { offset }

    /// Appends a compressed frame for `tile`.
    public func append(frame: [UInt8], tile: TileRecord) throws {
        precondition(tile.width > 0 && tile.width <= 65535 && tile.height > 0 && tile.height <= 65535,
                     "ShardWriter: tile \(tile.width)x\(tile.height) from \(tile.source) does not fit 16-bit sizes")
        try write(frame)
        let slide = intern(tile.slide, &slides, &slideIndex)
        let source = intern(tile.source, &sources, &sourceIndex)
        entries.append(TileEntry(offset: offset, compressedSize: UInt32(frame.count), crc: CRC32.checksum(frame),
                                 width: UInt16(tile.width), height: UInt16(tile.height), label: tile.label, slide: slide,
                                 x: tile.x, y: tile.y, source: source, id: tile.id))
        sizes.insert([tile.width, tile.height])
        tissue.append(tile.tissue.map { ($0 * 10000).rounded() / 10000 })
        offset += UInt64(frame.count)
    }

    private func intern(_ s: String, _ list: inout [String], _ index: inout [String: UInt32]) -> UInt32 {
        if let i = index[s] { return i }
        let i = UInt32(list.count)
        list.append(s)
        index[s] = i
        return i
    }

    /// Adds this shard's index (every tile's id, size, label, offset and checksum) and sources to `digest`.
    public func addIndex(to digest: inout FNV1a64) {
        var index: [UInt8] = []
        for e in entries { e.write(to: &index) }
        digest.add(bytes: index)
        for s in sources { digest.add(s) }
    }

    /// Writes index, metadata and footer, fsyncs, and renames the file into place.
    /// `slideRecords` are kept for the slides this shard holds.
    public func finish(classes: [String], filter: PixelFilter, zstdLevel: Int, micronsPerPixel: Double?, magnification: Double?,
                       shardIndex: Int, shardCount: Int, createdBy: String, slideRecords: [String: SlideTilingRecord] = [:],
                       packingID: String? = nil) throws {
        var index: [UInt8] = []
        index.reserveCapacity(entries.count * ShardFormat.indexEntrySize)
        for e in entries { e.write(to: &index) }
        var tileSize: Int?
        if sizes.count == 1, let s = sizes.first, s[0] == s[1] { tileSize = s[0] }
        var meta = ShardMetadata(classes: classes, slides: slides, sources: sources, tileSize: tileSize, filter: filter,
                                 zstdLevel: zstdLevel, micronsPerPixel: micronsPerPixel, magnification: magnification,
                                 shardIndex: shardIndex, shardCount: shardCount, createdBy: createdBy)
        let records = slideRecords.filter { slideIndex[$0.key] != nil }
        meta.slideProperties = records.isEmpty ? nil : records
        meta.tileTissue = tissue.contains { $0 != nil } ? tissue : nil
        meta.packingID = packingID
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let metaBytes = Array(try encoder.encode(meta))
        let indexOffset = offset, metaOffset = offset + UInt64(index.count)
        var footer: [UInt8] = []
        footer.appendLE(indexOffset); footer.appendLE(UInt64(entries.count))
        footer.appendLE(metaOffset); footer.appendLE(UInt64(metaBytes.count))
        footer.appendLE(CRC32.checksum(index)); footer.appendLE(CRC32.checksum(metaBytes))
        footer.appendLE(CRC32.checksum(footer))
        footer.appendLE(ShardFormat.version); footer.appendLE(UInt64(0))
        footer.append(contentsOf: ShardFormat.footerMagic)
        try write(index)
        try write(metaBytes)
        try write(footer)
        try handle.synchronize()
        try handle.close()
        if FileManager.default.fileExists(atPath: url.path) { try FileManager.default.removeItem(at: url) }
        try FileManager.default.moveItem(at: temporary, to: url)
    }

    /// Writes `bytes` at the end of the temporary file; a failure (disk full, file-size limit) names the file.
    private func write<D: DataProtocol>(_ bytes: D) throws {
        do { try handle.write(contentsOf: bytes) } catch {
            throw ShardError("\(temporary.path): cannot be written (\(fileErrorReason(error))). Hint: free disk space or raise the file-size limit (ulimit -f), then pack again.")
        }
    }

    /// Removes the unfinished temporary file.
    public func abandon() {
        try? handle.close()
        try? FileManager.default.removeItem(at: temporary)
    }
}
