// Packs an ImageFolder (root/class/file) into shards: deterministic order, parallel decode and compression,
// bad images reported by path (stop, or skip and list them).
import Dispatch
import Foundation

/// One input image and its label.
public struct PackItem: Sendable, Equatable {
    /// Path relative to the root.
    public var relativePath: String
    public var label: Int32
    /// Slide id (an ImageFolder's tiles are their own slides: the file name without extension).
    public var slide: String
}

/// The inputs of a pack: class names and items in a deterministic order.
public struct PackPlan: Sendable {
    public var root: URL
    public var classes: [String]
    public var items: [PackItem]

    /// Scans `root/class/file` (classes are the sorted folder names; files sorted by name; hidden files and
    /// unknown extensions ignored). `unlabeled` packs every tile with label -1 (class names are kept).
    public static func imageFolder(_ root: URL, unlabeled: Bool = false) throws -> PackPlan {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: root.path, isDirectory: &isDir), isDir.boolValue else {
            throw ShardError("\(root.path): no such directory. Hint: give an ImageFolder root holding one sub-folder per class.")
        }
        let classes = try fm.contentsOfDirectory(atPath: root.path).filter { name in
            var d: ObjCBool = false
            return !name.hasPrefix(".") && fm.fileExists(atPath: root.appendingPathComponent(name).path, isDirectory: &d) && d.boolValue
        }.sorted()
        guard !classes.isEmpty else {
            throw ShardError("\(root.path): has no class sub-folders. Hint: the layout is ROOT/CLASS/IMAGE (JPEG, PNG or TIFF).")
        }
        var items: [PackItem] = []
        for (label, cls) in classes.enumerated() {
            let files = try fm.contentsOfDirectory(atPath: root.appendingPathComponent(cls).path)
                .filter { !$0.hasPrefix(".") && ImageCodec.extensions.contains(($0 as NSString).pathExtension.lowercased()) }
                .sorted()
            for f in files {
                items.append(PackItem(relativePath: "\(cls)/\(f)", label: unlabeled ? ShardFormat.unlabeled : Int32(label),
                                      slide: (f as NSString).deletingPathExtension))
            }
        }
        guard !items.isEmpty else {
            throw ShardError("\(root.path): the class folders hold no JPEG, PNG or TIFF files.")
        }
        return PackPlan(root: root, classes: classes, items: items)
    }
}

/// Options of a pack.
public struct PackOptions: Sendable {
    public var output: URL
    public var prefix = "shard"
    public var targetShardBytes = 256 << 20
    public var zstdLevel = 3
    public var filter = PixelFilter.planarDelta
    public var skipBad = false
    public var threads = ProcessInfo.processInfo.activeProcessorCount
    public var micronsPerPixel: Double?
    public var magnification: Double?
    public var createdBy = "histodistill"

    public init(output: URL) { self.output = output }
}

/// What a pack produced.
public struct PackReport: Sendable {
    public var shards: [URL]
    public var tiles: Int
    public var inputBytes: Int
    public var outputBytes: Int
    public var rawBytes: Int
    /// Paths and reasons of images skipped with `skipBad`.
    public var skipped: [String]
}

/// Packs a plan into shards.
public enum Packer {
    /// Decodes and compresses in parallel batches of items, writes frames in plan order, starts a new shard
    /// when the current one passes `targetShardBytes`. The same input gives byte-identical shards.
    public static func pack(_ plan: PackPlan, options: PackOptions, progress: ((Int, Int) -> Void)? = nil) throws -> PackReport {
        try FileManager.default.createDirectory(at: options.output, withIntermediateDirectories: true)
        let threads = max(1, options.threads)
        let batch = threads * 16
        var report = PackReport(shards: [], tiles: 0, inputBytes: 0, outputBytes: 0, rawBytes: 0, skipped: [])
        var writers: [ShardWriter] = []
        var current: ShardWriter?
        func newWriter() throws -> ShardWriter {
            let name = String(format: "%@-%05d.shard", options.prefix, writers.count)
            let w = try ShardWriter(url: options.output.appendingPathComponent(name))
            writers.append(w)
            return w
        }
        let compressors = (0..<threads).map { _ in TileCompressor(level: options.zstdLevel, filter: options.filter) }
        var start = 0
        var nextId: UInt64 = 0
        do {
            while start < plan.items.count {
                let end = min(start + batch, plan.items.count)
                let slice = Array(plan.items[start..<end])
                nonisolated(unsafe) var results = [Result<(TileRecord, [UInt8], Int), ShardError>?](repeating: nil, count: slice.count)
                results.withUnsafeMutableBufferPointer { out in
                    nonisolated(unsafe) let out = out
                    DispatchQueue.concurrentPerform(iterations: threads) { t in
                        for k in stride(from: t, to: slice.count, by: threads) {
                            let item = slice[k]
                            let url = plan.root.appendingPathComponent(item.relativePath)
                            do {
                                let size = (try? FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int) ?? 0
                                let image = try ImageCodec.decode(url)
                                guard image.width <= 65535 && image.height <= 65535 else {
                                    throw ShardError("\(url.path): \(image.width)x\(image.height) is too large for one tile; tile large images on a grid")
                                }
                                let tile = TileRecord(pixels: image.pixels, width: image.width, height: image.height, label: item.label,
                                                      slide: item.slide, source: item.relativePath, id: 0)
                                out[k] = .success((tile, try compressors[t].compress(tile), size))
                            } catch let e as ShardError {
                                out[k] = .failure(e)
                            } catch {
                                out[k] = .failure(ShardError("\(url.path): \(error)"))
                            }
                        }
                    }
                }
                for r in results {
                    switch r! {
                    case .failure(let e):
                        if options.skipBad { report.skipped.append(e.message); continue }
                        throw ShardError(e.message + " Hint: fix or remove the file, or pass --skip-bad to skip unreadable images.")
                    case .success(var (tile, frame, size)):
                        tile.id = nextId
                        nextId += 1
                        if current == nil || current!.bytesWritten >= UInt64(options.targetShardBytes) {
                            current = try newWriter()
                        }
                        try current!.append(frame: frame, tile: tile)
                        report.tiles += 1
                        report.inputBytes += size
                        report.rawBytes += tile.pixels.count
                    }
                }
                start = end
                progress?(start, plan.items.count)
            }
            guard !writers.isEmpty else {
                throw ShardError("\(plan.root.path): no image could be packed (\(report.skipped.count) skipped).")
            }
            for (i, w) in writers.enumerated() {
                try w.finish(classes: plan.classes, filter: options.filter, zstdLevel: options.zstdLevel,
                             micronsPerPixel: options.micronsPerPixel, magnification: options.magnification,
                             shardIndex: i, shardCount: writers.count, createdBy: options.createdBy)
                report.outputBytes += Int((try? FileManager.default.attributesOfItem(atPath: w.url.path)[.size] as? Int) ?? 0)
                report.shards.append(w.url)
            }
        } catch {
            for w in writers { w.abandon() }
            throw error
        }
        return report
    }
}
