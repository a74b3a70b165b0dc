// A set of shards as one dataset; the epoch order as a function of (seed, epoch); each rank's slice of each
// global batch; a cursor that resumes under any world size.
import Foundation
import TensorCore

/// Where a tile lives.
public struct TileAddress: Hashable, Sendable {
    public var shard: Int
    public var index: Int
}

/// Several shards read as one dataset, in the order of their file names.
public final class ShardDataset: @unchecked Sendable {
    public let readers: [ShardReader]
    /// Every tile, shard by shard.
    public let addresses: [TileAddress]
    /// Class names shared by every shard.
    public let classes: [String]

    /// Shards (indices into `readers`) whose labels are ignored: every tile of them reads as unlabeled.
    public let unlabeledShards: Set<Int>

    /// Opens and validates every shard; the labeled ones must share one class list. Tiles of `unlabeled`
    /// shards read as unlabeled whatever they were packed with (for distillation on extra unlabeled tiles).
    /// `minTissue` keeps only tiles whose recorded tissue fraction (`tile_tissue`, written by `pack` for grid and
    /// slide tiles) is at least this; tiles without one are kept.
    public init(urls: [URL], unlabeled: [URL] = [], minTissue: Float = 0) throws {
        guard !urls.isEmpty || !unlabeled.isEmpty else { throw ShardError("no shard files given. Hint: pack a dataset with `histodistill pack`.") }
        let labeledURLs = urls.sorted { $0.path < $1.path }, unlabeledURLs = unlabeled.sorted { $0.path < $1.path }
        readers = try (labeledURLs + unlabeledURLs).map { try ShardReader(url: $0) }
        unlabeledShards = Set(labeledURLs.count..<readers.count)
        let reference = readers[0]
        classes = reference.metadata.classes
        for (s, r) in readers.enumerated() where !unlabeledShards.contains(s) && r.metadata.classes != classes {
            throw ShardError("\(r.url.path): classes \(r.metadata.classes) differ from \(reference.url.path)'s \(classes). Hint: combine shard sets packed with the same classes.")
        }
        var a: [TileAddress] = []
        for (s, r) in readers.enumerated() {
            let tissue = r.metadata.tileTissue
            for i in 0..<r.count where minTissue <= 0 || (tissue?[i] ?? 1) >= minTissue { a.append(TileAddress(shard: s, index: i)) }
        }
        guard !a.isEmpty else {
            throw ShardError("\(readers[0].url.deletingLastPathComponent().path): the shards hold no tiles\(minTissue > 0 ? " with at least \(minTissue) tissue (lower data.min_tissue)" : "").")
        }
        // Models see square tiles of one size: a set of mixed sizes is refused here, naming a tile that differs.
        let first = readers[a[0].shard].entries[a[0].index]
        for r in readers {
            if let i = r.entries.firstIndex(where: { $0.width != first.width || $0.height != first.height || $0.width != $0.height }) {
                let e = r.entries[i]
                throw ShardError("\(r.url.path): tile \(i) (from \(r.metadata.sources[Int(e.source)])) is \(e.width)x\(e.height), but training and inference need square tiles of one size (the first is \(first.width)x\(first.height)). Hint: pack with --tile-size N to cut every image into NxN tiles.")
            }
        }
        addresses = a
    }

    /// Refuses a directory whose shards are not one complete packing: every shard of a directory must say the same
    /// shard count, equal to the files there, with each index once (two packings mixed, or a shard missing).
    public static func checkCompleteSets(_ readers: [ShardReader]) throws {
        let byFolder = Dictionary(grouping: readers) { $0.url.deletingLastPathComponent().path }
        for (folder, group) in byFolder {
            let counts = Set(group.map(\.metadata.shardCount)), indices = group.map(\.metadata.shardIndex).sorted()
            let packings = Set(group.map(\.metadata.packingID))
            guard counts.count == 1, counts.first == group.count, indices == Array(0..<group.count), packings.count == 1 else {
                let described = group.map {
                    "\($0.url.lastPathComponent) (\($0.metadata.shardIndex + 1) of \($0.metadata.shardCount)\(packings.count > 1 ? ", packing \($0.metadata.packingID.map { String($0.prefix(8)) } ?? "unrecorded")" : ""))"
                }.joined(separator: ", ")
                throw ShardError("\(folder): its shards are not one complete packing: \(described). Hint: repack into an empty directory (pack --overwrite replaces a set), or remove the shards of the other packing.")
            }
        }
    }

    /// Opens every *.shard file in `directory`, and those of `unlabeled` directories as unlabeled tiles.
    public convenience init(directory: URL, unlabeled: [URL] = [], minTissue: Float = 0) throws {
        func shards(_ directory: URL) throws -> [URL] {
            var isDirectory: ObjCBool = false
            let exists = FileManager.default.fileExists(atPath: directory.path, isDirectory: &isDirectory)
            guard exists, isDirectory.boolValue else {
                throw ShardError("\(directory.path): \(exists ? "is a file, not a shard directory" : "no such directory"). Hint: \(exists && directory.pathExtension == "shard" ? "give the directory holding it (\(directory.deletingLastPathComponent().path))" : "check the path; make shards with `histodistill pack`").")
            }
            let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
            let found = names.filter { $0.hasSuffix(".shard") }.sorted().map { directory.appendingPathComponent($0) }
            guard !found.isEmpty else {
                throw ShardError("\(directory.path): holds no .shard files. Hint: pack a dataset with `histodistill pack`.")
            }
            return found
        }
        try self.init(urls: try shards(directory), unlabeled: try unlabeled.flatMap(shards), minTissue: minTissue)
        try Self.checkCompleteSets(readers)
    }

    /// Identifies the tiles of this dataset, whatever directory it is read from: a 64-bit FNV-1a digest over every
    /// shard's file name, classes and index entries (offsets, sizes, content checksums, labels, ids), so a
    /// repacked, added, removed or edited shard gives another digest and a copied or moved one the same.
    public var identity: ShardSetIdentity {
        var f = FNV1a64()
        func mix(_ v: UInt64) { f.add(v) }
        func mix(_ s: String) { f.add(s) }
        for (i, r) in readers.enumerated() {
            mix(r.url.lastPathComponent)
            mix(unlabeledShards.contains(i) ? 1 : 0)
            for c in r.metadata.classes { mix(c) }
            for e in r.entries {
                mix(e.offset); mix(UInt64(e.compressedSize) << 32 | UInt64(e.crc)); mix(UInt64(UInt32(bitPattern: e.label))); mix(e.id)
            }
        }
        return ShardSetIdentity(digest: f.hex, tiles: count, shards: readers.count)
    }

    /// Every slide's tiles (dataset indices, in dataset order), slides in order of first appearance.
    /// How the whole-slide images among the shards were tiled, by slide id (empty for image shards).
    public var slideRecords: [String: SlideTilingRecord] {
        readers.reduce(into: [:]) { all, r in all.merge(r.metadata.slideProperties ?? [:]) { a, _ in a } }
    }

    public var slideTiles: [(name: String, tiles: [Int])] {
        var order: [String] = [], tiles: [String: [Int]] = [:]
        for t in 0..<count {
            let name = slide(t)
            if tiles[name] == nil { order.append(name) }
            tiles[name, default: []].append(t)
        }
        return order.map { ($0, tiles[$0]!) }
    }

    /// True when at least one tile carries a label.
    public var hasLabels: Bool { addresses.indices.contains { entry($0).label >= 0 } }
    /// How many tiles carry a label.
    public var labeledCount: Int { addresses.indices.reduce(0) { $0 + (entry($1).label >= 0 ? 1 : 0) } }

    /// Edge of the first tile in pixels (tiles of a training set share one size).
    public var tileSize: Int { Int(readers[0].entries.first?.width ?? 0) }

    /// Microns per pixel of the tiles when the shards record it (and agree), else nil.
    public var micronsPerPixel: Double? {
        let values = Set(readers.map(\.metadata.micronsPerPixel))
        return values.count == 1 ? values.first! : nil
    }

    /// The slide name of tile `t`.
    public func slide(_ t: Int) -> String {
        readers[addresses[t].shard].metadata.slides[Int(readers[addresses[t].shard].entries[addresses[t].index].slide)]
    }

    /// Number of tiles.
    public var count: Int { addresses.count }

    /// The index entry of tile `t` (position in `addresses`).
    public func entry(_ t: Int) -> TileEntry {
        let a = addresses[t]
        var e = readers[a.shard].entries[a.index]
        if unlabeledShards.contains(a.shard) { e.label = ShardFormat.unlabeled }
        return e
    }
}

/// The sample order of an epoch and how a global batch is split among ranks.
///
/// The order is a permutation of all tiles that depends only on (seed, epoch). Step s of the epoch covers
/// positions s*B ..< (s+1)*B of it (B = global batch); rank r of W takes positions s*B + r*B/W ..< s*B + (r+1)*B/W.
/// A last partial global batch is dropped on every rank, so every rank runs the same number of steps.
public struct EpochPlan: Sendable {
    public let seed: UInt64
    public let epoch: Int
    public let globalBatch: Int
    public let order: [Int]

    /// The plan of `epoch` for `count` samples (shuffled unless `shuffle` is false).
    public init(count: Int, seed: UInt64, epoch: Int, globalBatch: Int, shuffle: Bool = true) {
        precondition(globalBatch > 0, "EpochPlan: global batch must be positive, got \(globalBatch)")
        self.seed = seed; self.epoch = epoch; self.globalBatch = globalBatch
        var order = Array(0..<count)
        if shuffle {
            var g = SplitMix64.stream(seed, 0x5EED, UInt64(epoch))
            for i in stride(from: count - 1, to: 0, by: -1) {
                let j = Int(g.next() % UInt64(i + 1))
                order.swapAt(i, j)
            }
        }
        self.order = order
    }

    /// A plan over a given order of sample indices (e.g. a subset, unshuffled), for inference over chosen tiles.
    public init(order: [Int], globalBatch: Int) {
        precondition(globalBatch > 0, "EpochPlan: global batch must be positive, got \(globalBatch)")
        seed = 0; epoch = 0; self.globalBatch = globalBatch; self.order = order
    }

    /// Global batches in the epoch (a last partial one is dropped).
    public var steps: Int { order.count / globalBatch }

    /// The positions (in `order`) that rank `rank` of `worldSize` processes at `step`.
    public func positions(step: Int, rank: Int, worldSize: Int) -> Range<Int> {
        precondition(worldSize > 0 && rank >= 0 && rank < worldSize, "EpochPlan: rank \(rank) of \(worldSize)")
        precondition(step >= 0 && step < steps, "EpochPlan: step \(step) outside 0..<\(steps)")
        let base = step * globalBatch
        return (base + globalBatch * rank / worldSize)..<(base + globalBatch * (rank + 1) / worldSize)
    }

    /// The sample indices rank `rank` processes at `step`.
    public func samples(step: Int, rank: Int, worldSize: Int) -> [Int] {
        positions(step: step, rank: rank, worldSize: worldSize).map { order[$0] }
    }
}

/// Position in the data stream: epoch and global samples consumed in it (a multiple of the global batch).
/// It does not depend on the world size, so a run resumed on another number of ranks continues exactly.
public struct DataCursor: Codable, Hashable, Sendable {
    public var epoch: Int
    public var samplesConsumed: Int

    public init(epoch: Int = 0, samplesConsumed: Int = 0) {
        self.epoch = epoch; self.samplesConsumed = samplesConsumed
    }

    /// The next step of the epoch for global batch `globalBatch`.
    public func nextStep(globalBatch: Int) -> Int { samplesConsumed / globalBatch }

    /// The cursor after one more global batch; rolls over to the next epoch after `steps` steps.
    public func advanced(globalBatch: Int, steps: Int) -> DataCursor {
        let next = samplesConsumed + globalBatch
        return next / globalBatch >= steps ? DataCursor(epoch: epoch + 1, samplesConsumed: 0) : DataCursor(epoch: epoch, samplesConsumed: next)
    }
}

/// The identity of a shard set: a digest of its contents' index and its size (see `ShardDataset.identity`).
public struct ShardSetIdentity: Codable, Hashable, Sendable, CustomStringConvertible {
    /// 16 hex digits.
    public var digest: String
    public var tiles: Int
    public var shards: Int
    public init(digest: String, tiles: Int, shards: Int) { self.digest = digest; self.tiles = tiles; self.shards = shards }
    public var description: String { "\(digest) (\(tiles) tiles in \(shards) shards)" }
}

/// The 64-bit FNV-1a hash, for identities of data and weights files (not a cryptographic digest).
public struct FNV1a64: Sendable {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    public init() {}
    /// Adds the 8 little-endian bytes of `v`.
    public mutating func add(_ v: UInt64) {
        var x = v
        for _ in 0..<8 { value = (value ^ (x & 0xff)) &* 0x100_0000_01b3; x >>= 8 }
    }
    /// Adds the UTF-8 bytes of `s` and a terminator.
    public mutating func add(_ s: String) { add(bytes: Array(s.utf8)); add(bytes: [0xff]) }
    /// Adds raw bytes.
    public mutating func add<C: Collection>(bytes: C) where C.Element == UInt8 {
        for b in bytes { value = (value ^ UInt64(b)) &* 0x100_0000_01b3 }
    }
    /// 16 hex digits.
    public var hex: String { String(format: "%016llx", value) }
    /// The digest of a file's bytes.
    public static func file(_ url: URL) throws -> String { digest(try Data(contentsOf: url, options: .alwaysMapped)) }

    /// The digest of `data`.
    public static func digest(_ data: Data) -> String {
        var f = FNV1a64()
        data.withUnsafeBytes { f.add(bytes: $0) }
        return f.hex
    }
}
