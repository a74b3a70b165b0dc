// Packs an ImageFolder (root/class/file) into shards: deterministic order, parallel decode and compression,
// bad images reported by path (stop, or skip and list them).
import Dispatch
import Foundation

/// One input file (an image, or a whole-slide image) and its label.
public struct PackItem: Sendable, Equatable {
    /// Path relative to the root.
    public var relativePath: String
    public var label: Int32
    /// Slide id: a whole-slide image's file name without extension, a slide folder's name, or for a flat
    /// ImageFolder's images `CLASS/NAME` (each image its own slide, unique per class).
    public var slide: String
    /// A whole-slide image read through OpenSlide and cut on a grid at a physical scale.
    public var isSlide: Bool = false
    /// Level-0 µm/px from a manifest's mpp column, for a slide whose file records none.
    public var micronsPerPixel: Double?
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

    /// The grid tiles of `image` that pass the tissue filter: (x, y, RGB pixels, tissue fraction).
    public func tiles(of image: RGBImage) -> [(Int, Int, [UInt8], Float)] {
        guard image.width >= tileSize && image.height >= tileSize else { return [] }
        var out: [(Int, Int, [UInt8], Float)] = []
        for y in Swift.stride(from: 0, through: image.height - tileSize, by: self.stride) {
            for x in Swift.stride(from: 0, through: image.width - tileSize, by: self.stride) {
                let tissue = tissueFraction(image, x: x, y: y)
                if minTissueFraction > 0 && tissue < minTissueFraction { continue }
                var px = [UInt8](repeating: 0, count: tileSize * tileSize * 3)
                for row in 0..<tileSize {
                    let src = ((y + row) * image.width + x) * 3
                    px.replaceSubrange((row * tileSize * 3)..<((row + 1) * tileSize * 3), with: image.pixels[src..<(src + tileSize * 3)])
                }
                out.append((x, y, px, tissue))
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

    /// Files under the root that are not packed, with the reason (shown by `pack`).
    public var notPacked: [(path: String, reason: String)] = []

    public init(root: URL, classes: [String], items: [PackItem], notPacked: [(path: String, reason: String)] = []) {
        self.root = root; self.classes = classes; self.items = items; self.notPacked = notPacked
    }

    /// Scans an ImageFolder. Classes are the sorted folder names below `root`. In each class folder: an image
    /// (JPEG, PNG, TIFF) is one tile and its own slide (`CLASS/NAME`); a whole-slide image (SVS, NDPI, MRXS, SCN,
    /// BIF, pyramidal TIFF, ...) is a slide named by its file; a sub-folder is a slide named by the folder, holding
    /// images at any depth (`ROOT/CLASS/SLIDE/.../tile.png`). Everything sorted by name; hidden files skipped;
    /// other files listed in `notPacked`. `unlabeled` packs every tile with label -1 (class names are kept). A
    /// class folder without images is an error naming it unless `allowEmptyClasses`; one slide id under two classes
    /// is an error naming both.
    public static func imageFolder(_ root: URL, unlabeled: Bool = false, allowEmptyClasses: Bool = false) throws -> PackPlan {
        let fm = FileManager.default
        func isDirectory(_ url: URL) -> Bool {
            var d: ObjCBool = false
            return fm.fileExists(atPath: url.path, isDirectory: &d) && d.boolValue
        }
        guard isDirectory(root) else {
            throw ShardError("\(root.path): \(fm.fileExists(atPath: root.path) ? "is a file, not a directory" : "no such directory"). Hint: give an ImageFolder root holding one sub-folder per class, or a CSV manifest (.csv).")
        }
        let classes = try fm.contentsOfDirectory(atPath: root.path)
            .filter { !$0.hasPrefix(".") && isDirectory(root.appendingPathComponent($0)) }.sorted()
        guard !classes.isEmpty else {
            throw ShardError("\(root.path): has no class sub-folders. Hint: the layout is ROOT/CLASS/IMAGE, ROOT/CLASS/SLIDE/IMAGE or ROOT/CLASS/SLIDE.svs.")
        }
        var items: [PackItem] = []
        var notPacked: [(path: String, reason: String)] = []
        var slideClass: [String: String] = [:]
        let known = "JPEG, PNG, TIFF or whole-slide image"
        for (label, cls) in classes.enumerated() {
            let l = unlabeled ? ShardFormat.unlabeled : Int32(label)
            let classURL = root.appendingPathComponent(cls)
            var count = 0
            func claim(_ slide: String, _ path: String) throws {
                if let other = slideClass[slide], other != cls {
                    throw ShardError("\(root.path): slide '\(slide)' is in class '\(other)' and in class '\(cls)' (\(path)). Hint: a slide has one label; rename or move one of them.")
                }
                slideClass[slide] = cls
            }
            for name in try fm.contentsOfDirectory(atPath: classURL.path).sorted() where !name.hasPrefix(".") {
                let url = classURL.appendingPathComponent(name), rel = "\(cls)/\(name)"
                let stem = (name as NSString).deletingPathExtension
                if isDirectory(url) {
                    // A slide folder: its images at any depth are tiles of slide `name`.
                    guard let walker = fm.enumerator(atPath: url.path) else { continue }
                    var inside: [String] = []
                    while let sub = walker.nextObject() as? String {
                        let last = (sub as NSString).lastPathComponent
                        if last.hasPrefix(".") { if isDirectory(url.appendingPathComponent(sub)) { walker.skipDescendants() }; continue }
                        if isDirectory(url.appendingPathComponent(sub)) { continue }
                        inside.append(sub)
                    }
                    for sub in inside.sorted() {
                        let path = "\(rel)/\(sub)"
                        if ImageCodec.extensions.contains((sub as NSString).pathExtension.lowercased()) {
                            try claim(name, path)
                            items.append(PackItem(relativePath: path, label: l, slide: name,
                                                  isSlide: WholeSlide.isWholeSlide(url.appendingPathComponent(sub))))
                            count += 1
                        } else if WholeSlide.extensions.contains((sub as NSString).pathExtension.lowercased()) {
                            notPacked.append((path, "a whole-slide image inside slide folder '\(name)': put slides directly in the class folder"))
                        } else {
                            notPacked.append((path, "not a \(known)"))
                        }
                    }
                } else if WholeSlide.isWholeSlide(url) {
                    try claim(stem, rel)
                    items.append(PackItem(relativePath: rel, label: l, slide: stem, isSlide: true))
                    count += 1
                } else if ImageCodec.extensions.contains((name as NSString).pathExtension.lowercased()) {
                    items.append(PackItem(relativePath: rel, label: l, slide: "\(cls)/\(stem)"))
                    count += 1
                } else {
                    notPacked.append((rel, "not a \(known)"))
                }
            }
            if count == 0 && !allowEmptyClasses && !unlabeled {
                throw ShardError("\(classURL.path): the class folder holds no \(known), so class '\(cls)' would have no tile. Hint: remove the folder, or pass --allow-empty-classes to keep the class in the list.")
            }
        }
        guard !items.isEmpty else {
            throw ShardError("\(root.path): the class folders hold no \(known) (\(notPacked.count) other file(s)).")
        }
        return PackPlan(root: root, classes: classes, items: items, notPacked: notPacked)
    }

    /// Column names a manifest header may use (case-insensitive), by the field they fill.
    public static let manifestColumns: [(field: String, names: [String])] = [
        ("path", ["path", "file", "filename", "file_name", "image", "image_path", "filepath", "slide_path"]),
        ("label", ["label", "class", "target", "category", "diagnosis"]),
        ("slide", ["slide", "slide_id", "case_id", "patient", "patient_id"]),
        ("mpp", ["mpp", "microns_per_pixel"]),
    ]

    /// Reads a CSV manifest (RFC 4180 through CSVTable: quoted fields, CRLF, BOM, `#` comment lines). With a
    /// header (a first record naming columns: path, label, slide, mpp or their usual aliases, in any order; other
    /// columns ignored) fields are taken by name; without one, records are path,label,slide. Paths are relative to
    /// the manifest's folder or absolute; an empty label means unlabeled; an empty slide means the file name without
    /// extension; mpp (µm/px) applies to whole-slide images whose file records none. Classes are the sorted distinct
    /// labels. Throws naming the file and record.
    public static func manifest(_ url: URL) throws -> PackPlan {
        let records = try CSVTable.read(url)
        guard let first = records.first else { throw ShardError("\(url.path): the manifest lists no images. Hint: one record per image or slide: path,label,slide.") }
        let names = first.fields.map { $0.lowercased() }
        var column: [String: Int] = [:]
        for (field, aliases) in manifestColumns { if let i = names.firstIndex(where: aliases.contains) { column[field] = i } }
        let root = url.deletingLastPathComponent()
        var body = records
        if column.isEmpty {
            // No header: path,label,slide by position. A first record whose path does not exist but whose next one
            // does is a header with names this reader does not know.
            column = ["path": 0, "label": 1, "slide": 2]
            func exists(_ p: String) -> Bool { FileManager.default.fileExists(atPath: p.hasPrefix("/") ? p : root.appendingPathComponent(p).path) }
            if records.count > 1, !exists(first.fields[0]), exists(records[1].fields[0]) {
                throw ShardError("\(url.path): record 1 (\(first.fields.joined(separator: ","))) looks like a header with column names this reader does not know. Hint: name the columns path,label,slide (also accepted: \(manifestColumns.map { "\($0.field): \($0.names.dropFirst().joined(separator: "/"))" }.joined(separator: "; "))).")
            }
        } else {
            guard column["path"] != nil else {
                throw ShardError("\(url.path): the header (\(first.fields.joined(separator: ","))) has no path column. Hint: name the image column path (or file, filename, image).")
            }
            body.removeFirst()
        }
        var rows: [(path: String, label: String, slide: String, mpp: Double?, number: Int)] = []
        for (n, fields) in body {
            func field(_ name: String) -> String { column[name].flatMap { $0 < fields.count ? fields[$0] : nil } ?? "" }
            let path = field("path")
            guard !path.isEmpty else {
                throw ShardError("\(url.path): record \(n) has no path: '\(fields.joined(separator: ","))'. Hint: one image per record, path first (or in the path column).")
            }
            var mpp: Double?
            if !field("mpp").isEmpty {
                guard let m = Double(field("mpp")), m.isFinite, m > 0, m <= 100 else {
                    throw ShardError("\(url.path): record \(n) has mpp '\(field("mpp"))'; it must be microns per pixel in (0, 100] (0.25 at 40x, 0.5 at 20x).")
                }
                mpp = m
            }
            rows.append((path, field("label"), field("slide"), mpp, n))
        }
        guard !rows.isEmpty else { throw ShardError("\(url.path): the manifest lists no images.") }
        let classes = Array(Set(rows.map(\.label).filter { !$0.isEmpty })).sorted()
        var slideLabel: [String: (String, Int)] = [:]
        var items: [PackItem] = []
        for r in rows {
            let stem = ((r.path as NSString).lastPathComponent as NSString).deletingPathExtension
            let slide = r.slide.isEmpty ? stem : r.slide
            if let (other, line) = slideLabel[slide], other != r.label, !other.isEmpty, !r.label.isEmpty {
                throw ShardError("\(url.path): slide '\(slide)' has label '\(other)' in record \(line) and '\(r.label)' in record \(r.number). Hint: a slide has one label.")
            }
            if !r.label.isEmpty { slideLabel[slide] = (r.label, r.number) }
            let file = r.path.hasPrefix("/") ? URL(fileURLWithPath: r.path) : root.appendingPathComponent(r.path)
            items.append(PackItem(relativePath: r.path, label: r.label.isEmpty ? ShardFormat.unlabeled : Int32(classes.firstIndex(of: r.label)!),
                                  slide: slide, isSlide: WholeSlide.isWholeSlide(file), micronsPerPixel: r.mpp))
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
    /// Images: their resolution, recorded in the metadata. Whole-slide images: the level-0 resolution of slides
    /// whose file does not record one (a slide's own value wins).
    public var micronsPerPixel: Double?
    public var magnification: Double?
    public var createdBy = "histodistill"
    /// Cut every image into grid tiles (nil: each image is one tile). Required for whole-slide images, whose grid
    /// is in pixels at `slideScale`; its saturation threshold is then the floor under Otsu's.
    public var grid: GridSpec?
    /// The scale whole-slide images are tiled at.
    public var slideScale = SlideScale.native
    /// Turn images as their EXIF/TIFF orientation tag says (off: stored order, as PyTorch's and Pillow's loaders).
    public var applyOrientation = false

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
    /// How each whole-slide image was tiled, by slide id.
    public var slides: [String: SlideTilingRecord] = [:]
    /// µm/px recorded in the metadata (the option for images; the tiles' scale for slides, when they agree).
    public var micronsPerPixel: Double?
    /// Notes for the user (e.g. slides packed at different scales).
    public var notes: [String] = []
    /// Images that had an alpha channel (composited over white).
    public var alphaImages = 0
    /// Images whose orientation tag is not 1 (turned when `applyOrientation`, else read as stored).
    public var orientedImages = 0
    /// Images and slides cut on a grid that kept no tile (none reached the tissue threshold, or the image is smaller
    /// than a tile), by path relative to the input: their slides have no tiles, hence no bag, in this shard set.
    public var emptySlides: [String] = []
}

/// Bytes of the file at `url`, following symbolic links (0 when unknown).
func fileSize(_ url: URL) -> Int {
    (try? FileManager.default.attributesOfItem(atPath: url.resolvingSymlinksInPath().path)[.size] as? Int) ?? 0
}

/// Packs a plan into shards.
public enum Packer {
    /// Decodes and compresses in parallel (images in batches, a slide's tiles in chunks), writes frames in plan
    /// order, starts a new shard when the current one passes `targetShardBytes`. The same input gives
    /// byte-identical shards. `progress` gets (files done, files, tiles written).
    public static func pack(_ plan: PackPlan, options: PackOptions, progress: ((Int, Int, Int) -> Void)? = nil) throws -> PackReport {
        if options.grid == nil, let slide = plan.items.first(where: \.isSlide) {
            throw ShardError("\(plan.url(of: slide).path): a whole-slide image is cut into tiles on a grid. Hint: pass --tile-size (e.g. 256) and a scale (--tile-mpp 0.5 or --tile-magnification 20).")
        }
        // Every slide's scale is checked before any tile is read (no µm/px, or a finer scale than scanned, stops the
        // pack naming the file); slides OpenSlide cannot open are reported when their turn comes.
        for item in plan.items where item.isSlide {
            guard let slide = try? WholeSlide(url: plan.url(of: item)) else { continue }
            _ = try slide.scale(options.slideScale, fallbackMicronsPerPixel: item.micronsPerPixel ?? options.micronsPerPixel)
        }
        try FileManager.default.createDirectory(at: options.output, withIntermediateDirectories: true)
        let threads = max(1, options.threads)
        var out = Output(options: options)
        let compressors = (0..<threads).map { _ in TileCompressor(level: options.zstdLevel, filter: options.filter) }
        var start = 0
        do {
            while start < plan.items.count {
                if plan.items[start].isSlide {
                    try packSlide(plan.items[start], plan: plan, options: options, compressors: compressors, into: &out) { tiles in
                        progress?(start, plan.items.count, tiles)
                    }
                    start += 1
                } else {
                    var end = start
                    while end < plan.items.count && end < start + threads * 16 && !plan.items[end].isSlide { end += 1 }
                    try packImages(Array(plan.items[start..<end]), plan: plan, options: options, compressors: compressors, into: &out)
                    start = end
                }
                progress?(start, plan.items.count, out.report.tiles)
            }
            try out.finish(plan: plan)
        } catch {
            for w in out.writers { w.abandon() }
            throw error
        }
        return out.report
    }

    /// The writers and report of a pack in progress: frames go in order, new shards as they fill.
    struct Output {
        let options: PackOptions
        var writers: [ShardWriter] = []
        var report = PackReport(shards: [], tiles: 0, inputBytes: 0, outputBytes: 0, rawBytes: 0, skipped: [])
        var nextId: UInt64 = 0
        var tileScales: [Double] = []

        init(options: PackOptions) { self.options = options }

        mutating func write(_ tile: TileRecord, frame: [UInt8]) throws {
            var tile = tile
            tile.id = nextId
            nextId += 1
            if writers.isEmpty || writers.last!.bytesWritten >= UInt64(options.targetShardBytes) {
                let name = String(format: "%@-%05d.shard", options.prefix, writers.count)
                writers.append(try ShardWriter(url: options.output.appendingPathComponent(name)))
            }
            try writers.last!.append(frame: frame, tile: tile)
            report.tiles += 1
            report.rawBytes += tile.pixels.count
        }

        mutating func skip(_ message: String) throws {
            if options.skipBad { report.skipped.append(message); return }
            throw ShardError(message + " Hint: fix or remove the file, or pass --skip-bad to skip unreadable files.")
        }

        mutating func finish(plan: PackPlan) throws {
            guard !writers.isEmpty else {
                throw ShardError("\(plan.root.path): no tile could be packed (\(report.skipped.count) file(s) skipped\(options.grid != nil ? "; with --tile-size, lower --min-tissue or check the images are larger than a tile" : "")).")
            }
            if let grid = options.grid, !report.emptySlides.isEmpty {
                let shown = report.emptySlides.prefix(10).joined(separator: ", ") + (report.emptySlides.count > 10 ? ", ..." : "")
                report.notes.append(String(format: "%d image(s) or slide(s) kept no tile (no %d px tile had at least %g%% tissue, counted as pixels above HSV saturation %g, or the image is smaller than a tile): %@. These slides have no tiles in this set, so extract, mil and finetune will not see them. Hint: lower --min-tissue (0 keeps every tile) or --tissue-saturation, or check these images.",
                                           report.emptySlides.count, grid.tileSize, Double(grid.minTissueFraction) * 100, Double(grid.saturationThreshold), shown))
            }
            // The metadata's µm/px: the option for images; for slides the tiles' scale when every slide agrees (2%).
            var mpp = options.micronsPerPixel
            if let first = report.slides.values.map(\.tileMicronsPerPixel).min(), let last = report.slides.values.map(\.tileMicronsPerPixel).max() {
                if last <= first * 1.02 && (report.slides.count == plan.items.count || mpp.map { abs($0 - first) <= 0.02 * first } ?? true) {
                    mpp = first
                } else {
                    mpp = nil
                    report.notes.append(String(format: "the slides' tiles are at %.4g to %.4g µm/px, so no single µm/px is recorded; pass --tile-mpp or --tile-magnification to tile every slide at one scale", first, last))
                }
            }
            report.micronsPerPixel = mpp
            let magnification: Double? = { if case .magnification(let m) = options.slideScale, !report.slides.isEmpty { return m }; return options.magnification }()
            // The packing's id: a digest of every shard's index, so one input packs to byte-identical shards and two
            // different packings never share an id.
            var digest = FNV1a64()
            for w in writers { w.addIndex(to: &digest) }
            let packingID = digest.hex
            for (i, w) in writers.enumerated() {
                try w.finish(classes: plan.classes, filter: options.filter, zstdLevel: options.zstdLevel,
                             micronsPerPixel: mpp, magnification: magnification,
                             shardIndex: i, shardCount: writers.count, createdBy: options.createdBy, slideRecords: report.slides,
                             packingID: packingID)
                report.outputBytes += fileSize(w.url)
                report.shards.append(w.url)
            }
        }
    }

    /// `body(k, worker)` for k in 0..<count on `threads` workers (worker w takes k = w, w + threads, ...), each result
    /// or its error (any other error becomes a ShardError naming `what(k)`) kept at k, for writing in order.
    static func inParallel<T>(_ count: Int, threads: Int, what: (Int) -> String,
                              _ body: (Int, Int) throws -> T) -> [Result<T, ShardError>] {
        nonisolated(unsafe) var results = [Result<T, ShardError>?](repeating: nil, count: count)
        results.withUnsafeMutableBufferPointer { res in
            nonisolated(unsafe) let res = res
            withoutActuallyEscaping(body) { body in
                withoutActuallyEscaping(what) { what in
                    nonisolated(unsafe) let body = body, what = what
                    DispatchQueue.concurrentPerform(iterations: threads) { t in
                        for k in stride(from: t, to: count, by: threads) {
                            do { res[k] = .success(try body(k, t)) } catch let e as ShardError { res[k] = .failure(e) } catch {
                                res[k] = .failure(ShardError("\(what(k)): \(error)"))
                            }
                        }
                    }
                }
            }
        }
        return results.map { $0! }
    }

    /// Decodes and compresses `items` (images) in parallel, then writes them in order.
    static func packImages(_ items: [PackItem], plan: PackPlan, options: PackOptions, compressors: [TileCompressor], into out: inout Output) throws {
        let results = inParallel(items.count, threads: compressors.count, what: { plan.url(of: items[$0]).path }) { k, t in
            let item = items[k]
            let url = plan.url(of: item)
            let size = fileSize(url)
            let decoded = try ImageCodec.decodeFile(url)
            let image = options.applyOrientation ? ImageCodec.oriented(decoded.image, decoded.orientation) : decoded.image
            var tiles: [(TileRecord, [UInt8])] = []
            if let grid = options.grid {
                for (x, y, px, tissue) in grid.tiles(of: image) {
                    let tile = TileRecord(pixels: px, width: grid.tileSize, height: grid.tileSize, label: item.label,
                                          slide: item.slide, x: Int32(x), y: Int32(y), source: item.relativePath, id: 0, tissue: tissue)
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
            return (tiles: tiles, size: size, hadAlpha: decoded.hadAlpha, orientation: decoded.orientation)
        }
        for (k, r) in results.enumerated() {
            switch r {
            case .failure(let e): try out.skip(e.message)
            case .success(let done):
                if options.grid != nil && done.tiles.isEmpty { out.report.emptySlides.append(items[k].relativePath) }
                out.report.inputBytes += done.size
                if done.hadAlpha { out.report.alphaImages += 1 }
                if done.orientation != 1 { out.report.orientedImages += 1 }
                for (tile, frame) in done.tiles { try out.write(tile, frame: frame) }
            }
        }
    }

    /// Tiles one whole-slide image: plans its grid and tissue mask, then reads, resamples and compresses the kept
    /// tiles in parallel chunks and writes them in grid order (row by row). A slide that fails to open or plan is
    /// skipped whole under `skipBad`; one that fails part-way keeps the tiles already written and says how many.
    static func packSlide(_ item: PackItem, plan: PackPlan, options: PackOptions, compressors: [TileCompressor],
                          into out: inout Output, chunkDone: (Int) -> Void) throws {
        let url = plan.url(of: item)
        let grid = options.grid!
        let slideGrid: SlideGrid
        do {
            let slide = try WholeSlide(url: url)
            slideGrid = try slide.grid(tileSize: grid.tileSize, stride: grid.stride, scale: options.slideScale,
                                       fallbackMicronsPerPixel: item.micronsPerPixel ?? options.micronsPerPixel, saturationFloor: grid.saturationThreshold)
        } catch let e as ShardError {
            return try out.skip(e.message)
        }
        out.report.inputBytes += fileSize(url)
        let kept = slideGrid.tiles.filter { $0.tissue >= grid.minTissueFraction }
        var record = slideGrid.record
        let threads = compressors.count, chunk = threads * 8
        var written = 0
        for start in stride(from: 0, to: kept.count, by: chunk) {
            let part = Array(kept[start..<min(start + chunk, kept.count)])
            let results = inParallel(part.count, threads: threads, what: { _ in url.path }) { k, t in
                let p = part[k]
                let image = try slideGrid.slide.readScaled(x: p.x, y: p.y, extent: slideGrid.record.level0TileExtent, size: grid.tileSize)
                let tile = TileRecord(pixels: image.pixels, width: grid.tileSize, height: grid.tileSize, label: item.label,
                                      slide: item.slide, x: Int32(clamping: p.x), y: Int32(clamping: p.y), source: item.relativePath,
                                      id: 0, tissue: p.tissue)
                return (tile, try compressors[t].compress(tile))
            }
            for r in results {
                switch r {
                case .failure(let e):
                    record.keptTiles = written
                    if written > 0 { out.report.slides[item.slide] = record }
                    return try out.skip(e.message + " (\(written) of \(kept.count) tiles of this slide were packed before the error)")
                case .success(let (tile, frame)):
                    try out.write(tile, frame: frame)
                    written += 1
                }
            }
            chunkDone(out.report.tiles)
        }
        record.keptTiles = written
        out.report.slides[item.slide] = record
        if written == 0 { out.report.emptySlides.append(item.relativePath) }
    }
}
