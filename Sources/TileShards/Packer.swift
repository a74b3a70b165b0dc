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

/// Cutting large images into tiles on a grid, keeping tiles that hold enough tissue.
public struct GridSpec: Sendable, Equatable {
    /// Tile edge in pixels.
    public var tileSize: Int
    /// Step between tile origins (tileSize for no overlap).
    public var stride: Int
    /// A pixel counts as tissue when its HSV saturation (max - min) / max exceeds this (background glass is
    /// nearly grey).
    public var saturationThreshold: Float
    /// Keep a tile when at least this fraction of its pixels is tissue (0 keeps every tile).
    public var minTissueFraction: Float

    public init(tileSize: Int, stride: Int? = nil, saturationThreshold: Float = 0.07, minTissueFraction: Float = 0.25) {
        precondition(tileSize > 0 && (stride ?? tileSize) > 0, "GridSpec: tile size \(tileSize) and stride must be positive")
        self.tileSize = tileSize; self.stride = stride ?? tileSize
        self.saturationThreshold = saturationThreshold; self.minTissueFraction = minTissueFraction
    }

    /// The fraction of tissue pixels in the tile at (x, y) of `image`.
    public func tissueFraction(_ image: RGBImage, x: Int, y: Int) -> Float {
        var tissue = 0
        image.pixels.withUnsafeBufferPointer { p in
            for row in y..<(y + tileSize) {
                var i = (row * image.width + x) * 3
                for _ in 0..<tileSize {
                    let r = p[i], g = p[i + 1], b = p[i + 2]
                    let mx = max(r, max(g, b)), mn = min(r, min(g, b))
                    if mx > 0 && Float(mx - mn) > saturationThreshold * Float(mx) { tissue += 1 }
                    i += 3
                }
            }
        }
        return Float(tissue) / Float(tileSize * tileSize)
    }

    /// The grid tiles of `image` that pass the tissue filter: (x, y, RGB pixels).
    public func tiles(of image: RGBImage) -> [(Int, Int, [UInt8])] {
        guard image.width >= tileSize && image.height >= tileSize else { return [] }
        var out: [(Int, Int, [UInt8])] = []
        for y in Swift.stride(from: 0, through: image.height - tileSize, by: self.stride) {
            for x in Swift.stride(from: 0, through: image.width - tileSize, by: self.stride) {
                if minTissueFraction > 0 && tissueFraction(image, x: x, y: y) < minTissueFraction { continue }
                var px = [UInt8](repeating: 0, count: tileSize * tileSize * 3)
                for row in 0..<tileSize {
                    let src = ((y + row) * image.width + x) * 3
                    px.replaceSubrange((row * tileSize * 3)..<((row + 1) * tileSize * 3), with: image.pixels[src..<(src + tileSize * 3)])
                }
                out.append((x, y, px))
            }
        }
        return out
    }
}

/// The inputs of a pack: class names and items in a deterministic order.
public struct PackPlan: Sendable {
    public var root: URL
    public var classes: [String]
    public var items: [PackItem]

    /// Scans `root/class/file` (classes are the sorted folder names; files sorted by name; hidden files and
    /// unknown extensions ignored). `unlabeled` packs every tile with label -1 (class names are kept). A class
    /// folder without images is an error naming it (it would become a class no tile has) unless `allowEmptyClasses`.
    public static func imageFolder(_ root: URL, unlabeled: Bool = false, allowEmptyClasses: Bool = false) throws -> PackPlan {
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
            if files.isEmpty && !allowEmptyClasses && !unlabeled {
                throw ShardError("\(root.appendingPathComponent(cls).path): the class folder holds no JPEG, PNG or TIFF image, so class '\(cls)' would have no tile. Hint: remove the folder, or pass --allow-empty-classes to keep the class in the list.")
            }
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

    /// Reads a CSV manifest `path,label,slide` (a header line is optional; paths relative to the manifest's
    /// folder or absolute; an empty label means unlabeled; an empty slide means the file name). Classes are the
    /// sorted distinct labels.
    public static func manifest(_ url: URL) throws -> PackPlan {
        let text: String
        do { text = try String(contentsOf: url, encoding: .utf8) } catch {
            throw ShardError("\(url.path): cannot be read (\(error.localizedDescription)). Hint: give a CSV file with lines path,label,slide.")
        }
        var rows: [(String, String, String, Int)] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            if n == 0 && fields.first?.lowercased() == "path" { continue }
            guard fields.count >= 1 && fields.count <= 3 && !fields[0].isEmpty else {
                throw ShardError("\(url.path): line \(n + 1) is not path,label,slide: '\(line)'. Hint: one image per line, commas between fields, no commas in paths.")
            }
            rows.append((fields[0], fields.count > 1 ? fields[1] : "", fields.count > 2 ? fields[2] : "", n + 1))
        }
        guard !rows.isEmpty else { throw ShardError("\(url.path): the manifest lists no images.") }
        let classes = Array(Set(rows.map(\.1).filter { !$0.isEmpty })).sorted()
        let root = url.deletingLastPathComponent()
        let items = rows.map { path, label, slide, _ -> PackItem in
            let stem = ((path as NSString).lastPathComponent as NSString).deletingPathExtension
            return PackItem(relativePath: path, label: label.isEmpty ? ShardFormat.unlabeled : Int32(classes.firstIndex(of: label)!),
                            slide: slide.isEmpty ? stem : slide)
        }
        return PackPlan(root: root, classes: classes, items: items)
    }

    /// The URL of `item` (absolute paths are kept).
    public func url(of item: PackItem) -> URL {
        item.relativePath.hasPrefix("/") ? URL(fileURLWithPath: item.relativePath) : root.appendingPathComponent(item.relativePath)
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
    /// Cut every image into grid tiles (nil: each image is one tile).
    public var grid: GridSpec?

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
                nonisolated(unsafe) var results = [Result<([(TileRecord, [UInt8])], Int), ShardError>?](repeating: nil, count: slice.count)
                results.withUnsafeMutableBufferPointer { out in
                    nonisolated(unsafe) let out = out
                    DispatchQueue.concurrentPerform(iterations: threads) { t in
                        for k in stride(from: t, to: slice.count, by: threads) {
                            let item = slice[k]
                            let url = plan.url(of: item)
                            do {
                                let size = (try? FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int) ?? 0
                                let image = try ImageCodec.decode(url)
                                var tiles: [(TileRecord, [UInt8])] = []
                                if let grid = options.grid {
                                    for (x, y, px) in grid.tiles(of: image) {
                                        let tile = TileRecord(pixels: px, width: grid.tileSize, height: grid.tileSize, label: item.label,
                                                              slide: item.slide, x: Int32(x), y: Int32(y), source: item.relativePath, id: 0)
                                        tiles.append((tile, try compressors[t].compress(tile)))
                                    }
                                } else {
                                    guard image.width <= 65535 && image.height <= 65535 else {
                                        throw ShardError("\(url.path): \(image.width)x\(image.height) is too large for one tile; cut it on a grid with --tile-size")
                                    }
                                    let tile = TileRecord(pixels: image.pixels, width: image.width, height: image.height, label: item.label,
                                                          slide: item.slide, source: item.relativePath, id: 0)
                                    tiles.append((tile, try compressors[t].compress(tile)))
                                }
                                out[k] = .success((tiles, size))
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
                    case .success(let (tiles, size)):
                        report.inputBytes += size
                        for (t, frame) in tiles {
                            var tile = t
                            tile.id = nextId
                            nextId += 1
                            if current == nil || current!.bytesWritten >= UInt64(options.targetShardBytes) {
                                current = try newWriter()
                            }
                            try current!.append(frame: frame, tile: tile)
                            report.tiles += 1
                            report.rawBytes += tile.pixels.count
                        }
                    }
                }
                start = end
                progress?(start, plan.items.count)
            }
            guard !writers.isEmpty else {
                throw ShardError("\(plan.root.path): no tile could be packed (\(report.skipped.count) image(s) skipped\(options.grid != nil ? "; with --tile-size, lower --min-tissue or check the images are larger than a tile" : "")).")
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
