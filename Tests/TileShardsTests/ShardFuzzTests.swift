// The shard reader against damaged files: random byte flips, truncations, and structured mutations of footer,
// index and metadata with their checksums recomputed (so the damage reaches the arithmetic behind them). No input
// may trap, and none may make the reader allocate more than the data needs.
import Foundation
import Testing
import TensorCore
@testable import TileShards

/// Peak resident memory of this process in bytes (getrusage: kilobytes on Linux).
func peakResidentBytes() -> Int {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return Int(usage.ru_maxrss) * 1024
}

@Suite("Shard reader fuzzing")
struct ShardFuzzTests {
    /// A real shard of 12 mixed-size-free 32x32 tiles, as bytes.
    func shardBytes(_ dir: TemporaryDirectory) throws -> [UInt8] {
        _ = try smallDataset(dir, count: 12, shardBytes: 1 << 20)
        let out = dir.url.appendingPathComponent("out")
        let name = try #require(try FileManager.default.contentsOfDirectory(atPath: out.path).first { $0.hasSuffix(".shard") })
        return Array(try Data(contentsOf: out.appendingPathComponent(name)))
    }

    /// Opens `bytes` as a shard and reads every tile and the whole verify path: only ShardErrors may come out.
    /// Returns how far it got ("open", "tiles", "ok").
    @discardableResult
    func exercise(_ bytes: [UInt8], _ dir: TemporaryDirectory, _ name: String = "m.shard") throws -> String {
        let url = dir.url.appendingPathComponent(name)
        try Data(bytes).write(to: url)
        let reader: ShardReader
        do { reader = try ShardReader(url: url) } catch is ShardError { return "open" }
        for i in 0..<reader.count {
            do { _ = try reader.tile(i) } catch is ShardError { return "tiles" }
        }
        do { try reader.verify() } catch is ShardError { return "tiles" }
        return "ok"
    }

    func put<T: FixedWidthInteger>(_ v: T, _ bytes: inout [UInt8], at offset: Int) {
        withUnsafeBytes(of: v.littleEndian) { for (k, b) in $0.enumerated() { bytes[offset + k] = b } }
    }
    func get<T: FixedWidthInteger>(_ bytes: [UInt8], at offset: Int) -> T {
        bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }

    /// Recomputes the index, metadata and footer checksums of `bytes` (as a writer would have).
    func reseal(_ bytes: inout [UInt8]) {
        let f = bytes.count - ShardFormat.footerSize
        let indexOffset = Int(clamping: get(bytes, at: f) as UInt64), count = Int(clamping: get(bytes, at: f + 8) as UInt64)
        let metaOffset = Int(clamping: get(bytes, at: f + 16) as UInt64), metaLength = Int(clamping: get(bytes, at: f + 24) as UInt64)
        if indexOffset >= 0, indexOffset <= f, count < 1 << 20, count * 48 <= f - indexOffset {
            put(bytes[indexOffset..<(indexOffset + count * 48)].withUnsafeBytes { CRC32.checksum($0.baseAddress!, count: $0.count) }, &bytes, at: f + 32)
        }
        if metaOffset >= 0, metaLength >= 0, metaOffset <= f, metaLength <= f - metaOffset {
            put(bytes[metaOffset..<(metaOffset + metaLength)].withUnsafeBytes { CRC32.checksum($0.baseAddress!, count: $0.count) }, &bytes, at: f + 36)
        }
        put(bytes[f..<(f + 40)].withUnsafeBytes { CRC32.checksum($0.baseAddress!, count: 40) }, &bytes, at: f + 40)
    }

    @Test("structured mutations with checksums recomputed: overflowing footer fields, huge tile sizes, frames past the index, unknown format: errors, no trap, no huge allocation")
    func structured() throws {
        let dir = try TemporaryDirectory()
        let original = try shardBytes(dir)
        #expect(try exercise(original, dir) == "ok")
        let f = original.count - ShardFormat.footerSize
        let indexOffset = Int(get(original, at: f) as UInt64)
        let before = peakResidentBytes()
        var mutations: [(String, [UInt8])] = []
        func mutate(_ name: String, _ change: (inout [UInt8]) -> Void) {
            var b = original
            change(&b)
            reseal(&b)
            mutations.append((name, b))
        }
        for (field, value) in [(0, UInt64.max), (0, UInt64.max - 7), (8, UInt64.max / 48 + 1), (8, UInt64(1) << 40), (16, UInt64.max), (24, UInt64.max),
                               (24, UInt64.max - UInt64(f) + 1), (8, 0), (0, 0)] {
            mutate("footer +\(field) = \(value)") { put(value, &$0, at: f + field) }
        }
        for t in [0, 5, 11] {
            let e = indexOffset + t * ShardFormat.indexEntrySize
            mutate("tile \(t) 65535x65535") { put(UInt16(65535), &$0, at: e + 16); put(UInt16(65535), &$0, at: e + 18) }
            mutate("tile \(t) compressed size max") { put(UInt32.max, &$0, at: e + 8) }
            mutate("tile \(t) offset max") { put(UInt64.max, &$0, at: e) }
            mutate("tile \(t) label, slide, source out of range") { put(UInt32(1 << 30), &$0, at: e + 20); put(UInt32.max, &$0, at: e + 24) }
            mutate("tile \(t) zero size") { put(UInt16(0), &$0, at: e + 16) }
        }
        // The frame header of tile 0 claims a huge content size (its CRC in the index recomputed to match).
        let frame0 = Int(get(original, at: indexOffset) as UInt64), size0 = Int(get(original, at: indexOffset + 8) as UInt32)
        mutate("frame 0 damaged with a matching CRC") { b in
            for k in 4..<min(16, size0) { b[frame0 + k] = 0xFF }
            put(b[frame0..<(frame0 + size0)].withUnsafeBytes { CRC32.checksum($0.baseAddress!, count: $0.count) }, &b, at: indexOffset + 12)
        }
        // Metadata of another format, another version, and tissue fractions that do not match the index.
        let metaOffset = Int(get(original, at: f + 16) as UInt64), metaLength = Int(get(original, at: f + 24) as UInt64)
        let json = String(decoding: original[metaOffset..<(metaOffset + metaLength)], as: UTF8.self)
        for (name, replacement) in [("format", json.replacingOccurrences(of: "histodistill-shard", with: "histodistill-shardX")),
                                    ("version", json.replacingOccurrences(of: "\"version\":1", with: "\"version\":9")),
                                    ("tissue", json.replacingOccurrences(of: "\"classes\"", with: "\"tile_tissue\":[0.5],\"classes\""))] {
            let m = Array(replacement.utf8)
            var b = Array(original[..<metaOffset]) + m + Array(original[(metaOffset + metaLength)...])
            let nf = b.count - ShardFormat.footerSize
            put(UInt64(m.count), &b, at: nf + 24)
            reseal(&b)
            mutations.append(("metadata \(name)", b))
        }
        for (name, bytes) in mutations {
            let reached = try exercise(bytes, dir)
            #expect(reached != "ok", "\(name): a damaged shard read as valid")
        }
        let grown = peakResidentBytes() - before
        #expect(grown < 256 << 20, "peak memory grew by \(grown >> 20) MB reading \(mutations.count) damaged copies of a \(original.count)-byte shard")
    }

    @Test("random byte flips and truncations of a real shard: every one an error or intact tiles, never a trap")
    func random() throws {
        let dir = try TemporaryDirectory()
        let original = try shardBytes(dir)
        var g = SplitMix64(seed: 2026)
        var outcomes: [String: Int] = [:]
        for round in 0..<400 {
            var b = original
            switch round % 4 {
            case 0: b = Array(b[..<Int(g.next() % UInt64(b.count))])
            case 1:
                for _ in 0..<(1 + Int(g.next() % 8)) {
                    let k = Int(g.next() % UInt64(b.count))
                    b[k] ^= UInt8(1 + g.next() % 255)
                }
            case 2:   // flips in the index and footer, resealed so they pass the checksums
                let start = Int(get(original, at: original.count - 64) as UInt64)
                let span = UInt64(b.count - start - 8)
                for _ in 0..<(1 + Int(g.next() % 4)) {
                    let k = start + Int(g.next() % span)
                    b[k] ^= UInt8(1 + g.next() % 255)
                }
                reseal(&b)
            default:
                let k = Int(g.next() % UInt64(b.count - 8))
                for j in 0..<8 { b[k + j] = 0xFF }
            }
            outcomes[try exercise(b, dir), default: 0] += 1
        }
        #expect(outcomes.values.reduce(0, +) == 400)
        #expect((outcomes["open"] ?? 0) > 100, "\(outcomes)")
    }

    @Test("a dataset of mixed tile sizes is refused naming a tile, instead of reading past a buffer")
    func mixedSizes() throws {
        let dir = try TemporaryDirectory()
        let input = dir.url.appendingPathComponent("in/a")
        try FileManager.default.createDirectory(at: input, withIntermediateDirectories: true)
        try ImageCodec.writePNG(syntheticImage(width: 32, height: 32, seed: 1), to: input.appendingPathComponent("small.png"))
        try ImageCodec.writePNG(syntheticImage(width: 64, height: 48, seed: 2), to: input.appendingPathComponent("wide.png"))
        _ = try Packer.pack(try PackPlan.imageFolder(input.deletingLastPathComponent()), options: PackOptions(output: dir.url.appendingPathComponent("out")))
        let e = #expect(throws: ShardError.self) { try ShardDataset(directory: dir.url.appendingPathComponent("out")) }
        #expect(e?.message.contains("wide.png") == true && e?.message.contains("--tile-size") == true, "\(e?.message ?? "")")
    }
}
