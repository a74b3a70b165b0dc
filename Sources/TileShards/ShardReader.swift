// Opens a shard, validates header, footer, index and metadata without decompressing tiles, and reads any tile.
import CZstd
import Foundation

/// A validated, memory-mapped shard.
public final class ShardReader: @unchecked Sendable {
    /// Where it was read from.
    public let url: URL
    /// The parsed metadata.
    public let metadata: ShardMetadata
    /// One entry per tile, in file order.
    public let entries: [TileEntry]
    private let data: Data

    /// Opens and validates `url` (see docs/shard-format.md, Validation).
    public init(url: URL) throws {
        self.url = url
        InputFiles.note(url)
        let path = url.path
        do { data = try Data(contentsOf: url, options: .alwaysMapped) } catch {
            throw ShardError("\(path): cannot be read (\(fileErrorReason(error))). Hint: check the path and permissions.")
        }
        let size = data.count
        let hint = "Hint: the file is damaged or truncated; repack it with `histodistill pack` or restore it from a copy."
        guard size >= ShardFormat.headerSize + ShardFormat.footerSize else {
            throw ShardError("\(path): \(size) bytes is too short for a shard. \(hint)")
        }
        let parsed: (ShardMetadata, [TileEntry]) = try data.withUnsafeBytes { raw in
            let base = raw.baseAddress!
            guard Array(raw[0..<8]) == ShardFormat.headerMagic else {
                throw ShardError("\(path): not a histodistill shard (bad header magic). \(hint)")
            }
            let version: UInt32 = base.le(8)
            guard version == ShardFormat.version else {
                throw ShardError("\(path): shard format version \(version) is not supported (this histodistill reads version \(ShardFormat.version)). Hint: repack with this version.")
            }
            guard base.le(12) as UInt32 == 0 else {
                throw ShardError("\(path): header reserved field is not zero. \(hint)")
            }
            let f = size - ShardFormat.footerSize
            guard Array(raw[(f + 56)..<(f + 64)]) == ShardFormat.footerMagic else {
                throw ShardError("\(path): footer magic missing: the file was truncated, not finished, or has bytes appended after its footer. \(hint)")
            }
            guard CRC32.checksum(base + f, count: 40) == base.le(f + 40) as UInt32 else {
                throw ShardError("\(path): footer checksum mismatch. \(hint)")
            }
            guard base.le(f + 44) as UInt32 == ShardFormat.version, base.le(f + 48) as UInt64 == 0 else {
                throw ShardError("\(path): footer version or reserved field is wrong. \(hint)")
            }
            let indexOffset: UInt64 = base.le(f), count: UInt64 = base.le(f + 8)
            let metaOffset: UInt64 = base.le(f + 16), metaLength: UInt64 = base.le(f + 24)
            // Every sum is checked for overflow: a damaged footer must give an error, not a trap.
            let indexBytes = count.multipliedReportingOverflow(by: UInt64(ShardFormat.indexEntrySize))
            let indexEnd = indexOffset.addingReportingOverflow(indexBytes.partialValue)
            let metaEnd = metaOffset.addingReportingOverflow(metaLength)
            guard !indexBytes.overflow, !indexEnd.overflow, !metaEnd.overflow, indexOffset >= UInt64(ShardFormat.headerSize),
                  indexEnd.partialValue == metaOffset, metaEnd.partialValue == UInt64(f) else {
                throw ShardError("\(path): index (\(count) tiles at \(indexOffset)) and metadata (at \(metaOffset), \(metaLength) bytes) do not fit the file. \(hint)")
            }
            guard CRC32.checksum(base + Int(indexOffset), count: Int(indexBytes.partialValue)) == base.le(f + 32) as UInt32 else {
                throw ShardError("\(path): index checksum mismatch. \(hint)")
            }
            guard CRC32.checksum(base + Int(metaOffset), count: Int(metaLength)) == base.le(f + 36) as UInt32 else {
                throw ShardError("\(path): metadata checksum mismatch. \(hint)")
            }
            let meta: ShardMetadata
            let metaBytes = Data(bytes: base + Int(metaOffset), count: Int(metaLength))
            do { meta = try JSONDecoder().decode(ShardMetadata.self, from: metaBytes) } catch {
                throw ShardError("\(path): metadata is not valid shard JSON (\(decodingReason(error, data: metaBytes))). \(hint)")
            }
            guard meta.format == "histodistill-shard", meta.version == Int(ShardFormat.version) else {
                throw ShardError("\(path): metadata says format '\(meta.format)' version \(meta.version); this histodistill reads 'histodistill-shard' version \(ShardFormat.version). Hint: repack with this version of histodistill.")
            }
            guard meta.tileTissue.map({ $0.count == Int(count) }) ?? true else {
                throw ShardError("\(path): metadata lists tissue fractions for \(meta.tileTissue!.count) tiles, the index holds \(count). \(hint)")
            }
            var entries: [TileEntry] = []
            entries.reserveCapacity(Int(count))
            var expected = UInt64(ShardFormat.headerSize)
            for i in 0..<Int(count) {
                let e = TileEntry.read(base + Int(indexOffset) + i * ShardFormat.indexEntrySize)
                guard e.offset == expected, e.compressedSize > 0, e.width > 0, e.height > 0 else {
                    throw ShardError("\(path): index entry of tile \(i) is inconsistent (offset \(e.offset), expected \(expected)). \(hint)")
                }
                guard e.label >= -1 && Int(e.label) < meta.classes.count, Int(e.slide) < meta.slides.count, Int(e.source) < meta.sources.count else {
                    throw ShardError("\(path): tile \(i) refers to a class, slide or source missing from the metadata. \(hint)")
                }
                expected += UInt64(e.compressedSize)
                guard expected <= indexOffset else {
                    throw ShardError("\(path): tile \(i)'s frame (\(e.compressedSize) bytes at \(e.offset)) runs past the index at \(indexOffset). \(hint)")
                }
                entries.append(e)
            }
            guard expected == indexOffset else {
                throw ShardError("\(path): frames end at byte \(expected) but the index starts at \(indexOffset). \(hint)")
            }
            return (meta, entries)
        }
        metadata = parsed.0
        entries = parsed.1
    }

    /// Number of tiles.
    public var count: Int { entries.count }

    /// Checks tile `i`'s frame before anything is allocated for it: its CRC-32, and that the zstd frame header
    /// declares the payload the index says (width x height x 3 bytes). Throws naming the tile.
    public func checkFrame(_ i: Int) throws {
        let e = entries[i]
        try data.withUnsafeBytes { raw in
            let frame = raw.baseAddress! + Int(e.offset)
            guard CRC32.checksum(frame, count: Int(e.compressedSize)) == e.crc else {
                throw ShardError("\(url.path): tile \(i) (id \(e.id), from \(metadata.sources[Int(e.source)])) is corrupt: frame checksum mismatch. Hint: repack this shard (`histodistill verify` lists every damaged tile); train and distill can skip such tiles with --on-corrupt skip.")
            }
            let content = ZSTD_getFrameContentSize(frame, Int(e.compressedSize))
            guard content == UInt64(e.pixelBytes) else {
                throw ShardError("\(url.path): tile \(i) (id \(e.id)) is corrupt: frame says \(Int64(bitPattern: content)) bytes, index says \(e.width)x\(e.height) RGB. Hint: repack this shard.")
            }
        }
    }

    /// Decompresses tile `i` into `rgb`, which holds `capacity` bytes, checking its CRC-32, the zstd content
    /// checksum and the size; a tile larger than `capacity` is an error naming it (never a write past the buffer).
    /// `context` (zstd state and filter scratch) is reused across calls by one thread.
    public func readTile(_ i: Int, into rgb: UnsafeMutablePointer<UInt8>, capacity: Int, context: TileDecompressor) throws {
        precondition(i >= 0 && i < entries.count, "ShardReader.readTile: tile \(i) out of 0..<\(entries.count) in \(url.path)")
        let e = entries[i]
        guard e.pixelBytes <= capacity else {
            throw ShardError("\(url.path): tile \(i) (id \(e.id), from \(metadata.sources[Int(e.source)])) is \(e.width)x\(e.height), larger than the \(capacity / 3) pixels expected. Hint: pack images of different sizes with --tile-size so that every tile has one size.")
        }
        try checkFrame(i)
        try data.withUnsafeBytes { raw in
            try context.decompress(frame: raw.baseAddress! + Int(e.offset), size: Int(e.compressedSize), width: Int(e.width), height: Int(e.height),
                                   filter: metadata.filter, into: rgb, what: "\(url.path): tile \(i) (id \(e.id))")
        }
    }

    /// The tile's pixels as a new array (allocated only after the frame is checked).
    public func tile(_ i: Int, context: TileDecompressor = TileDecompressor()) throws -> [UInt8] {
        try checkFrame(i)
        var out = [UInt8](repeating: 0, count: entries[i].pixelBytes)
        try out.withUnsafeMutableBufferPointer { try readTile(i, into: $0.baseAddress!, capacity: $0.count, context: context) }
        return out
    }

    /// The damaged tiles, one message each (file, tile, id, source and what is wrong), checking every frame's
    /// checksum and header and decompressing every tile; at most `limit` of them (the scan stops there); empty when
    /// all are intact. Memory grows only as far as checked frames need.
    public func damagedTiles(limit: Int = .max) -> [String] {
        let ctx = TileDecompressor()
        var buffer = [UInt8](), damaged: [String] = []
        for i in 0..<entries.count where damaged.count < limit {
            do {
                try checkFrame(i)
                if buffer.count < entries[i].pixelBytes { buffer = [UInt8](repeating: 0, count: entries[i].pixelBytes) }
                try buffer.withUnsafeMutableBufferPointer { try readTile(i, into: $0.baseAddress!, capacity: $0.count, context: ctx) }
            } catch let e as ShardError {
                damaged.append(e.message)
            } catch {
                damaged.append("\(url.path): tile \(i): \(error)")
            }
        }
        return damaged
    }

    /// Reads every tile; throws on the first problem, naming the tile.
    public func verify() throws {
        if let first = damagedTiles(limit: 1).first { throw ShardError(first) }
    }

    /// Bytes of the file.
    public var fileSize: Int { data.count }
}

/// A zstd decompression context plus filter scratch; one per reading thread.
public final class TileDecompressor: @unchecked Sendable {
    private let dctx: OpaquePointer
    private var scratch: [UInt8] = []

    public init() { dctx = ZSTD_createDCtx() }
    deinit { ZSTD_freeDCtx(dctx) }

    func decompress(frame: UnsafeRawPointer, size: Int, width: Int, height: Int, filter: PixelFilter,
                    into rgb: UnsafeMutablePointer<UInt8>, what: String) throws {
        let expected = width * height * 3
        let content = ZSTD_getFrameContentSize(frame, size)
        guard content == UInt64(expected) else {
            throw ShardError("\(what) is corrupt: frame says \(content) bytes, index says \(width)x\(height) RGB. Hint: repack this shard.")
        }
        let target: UnsafeMutableRawPointer
        if filter == .none {
            target = UnsafeMutableRawPointer(rgb)
        } else {
            if scratch.count < expected { scratch = [UInt8](repeating: 0, count: expected) }
            target = scratch.withUnsafeMutableBytes { $0.baseAddress! }
        }
        let n = ZSTD_decompressDCtx(dctx, target, expected, frame, size)
        if ZSTD_isError(n) != 0 || n != expected {
            let reason = ZSTD_isError(n) != 0 ? String(cString: ZSTD_getErrorName(n)) : "\(n) bytes instead of \(expected)"
            throw ShardError("\(what) is corrupt: \(reason). Hint: repack this shard.")
        }
        if filter == .planarDelta {
            scratch.withUnsafeBufferPointer { Filters.decode($0.baseAddress!, width: width, height: height, into: rgb) }
        }
    }
}
