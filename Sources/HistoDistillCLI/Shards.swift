// `histodistill pack`, `inspect` and `verify`: build shard sets from image folders, describe them, check them.
import ArgumentParser
import Distributed
import Foundation
import TileShards
import Training

/// Shard files named by the arguments: files as given, directories expanded to their *.shard files, sorted.
func shardFiles(_ paths: [String]) throws -> [URL] {
    var urls: [URL] = []
    let fm = FileManager.default
    for p in paths {
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: p, isDirectory: &isDir) else {
            throw CLIError("\(p): no such file or directory", hint: "give shard files or directories holding *.shard files")
        }
        if isDir.boolValue {
            let found = try fm.contentsOfDirectory(atPath: p).filter { $0.hasSuffix(".shard") }.sorted()
            if found.isEmpty { throw CLIError("\(p): holds no .shard files", hint: "pack a dataset first with `histodistill pack`") }
            urls += found.map { URL(fileURLWithPath: p).appendingPathComponent($0) }
        } else {
            urls.append(URL(fileURLWithPath: p))
        }
    }
    return urls
}

/// Seconds between progress lines in a log file (not a terminal): HISTODISTILL_PROGRESS_SECONDS, default 10.
let progressInterval: TimeInterval = {
    guard let text = ProcessInfo.processInfo.environment["HISTODISTILL_PROGRESS_SECONDS"] else { return 10 }
    guard let v = TimeInterval(text), v >= 0, v.isFinite else {
        FileHandle.standardError.write(Data("warning: HISTODISTILL_PROGRESS_SECONDS='\(text)' is not a number of seconds >= 0; using 10\n".utf8))
        return 10
    }
    return v
}()

/// Progress of a long loop on standard error: a live line on a terminal; elsewhere (a SLURM log, a pipe) a
/// timestamped line every `every` seconds and at the end, never one line per item.
final class ProgressLine: @unchecked Sendable {
    let label: String, every: TimeInterval
    private let start = Date()
    private var last = Date.distantPast
    private let terminal = isatty(2) != 0

    init(label: String, every: TimeInterval = progressInterval) { self.label = label; self.every = every }

    func update(_ done: Int, _ total: Int, unit: String = "", extra: String = "") {
        guard total > 0 else { return }
        let now = Date()
        guard terminal || now.timeIntervalSince(last) >= every || done == total else { return }
        last = now
        let elapsed = now.timeIntervalSince(start), rate = Double(done) / max(elapsed, 1e-9)
        let eta = rate > 0 ? Double(total - done) / rate : 0
        let units = unit.isEmpty ? "" : " \(unit)"
        let line = String(format: "%@ %d/%d%@ (%.0f%%)%@, %.1f/s, ETA %.0fs", label, done, total, units, 100 * Double(done) / Double(total),
                          extra.isEmpty ? "" : ", " + extra, rate, eta)
        if terminal {
            FileHandle.standardError.write(Data("\r\(line)   \(done == total ? "\n" : "")".utf8))
        } else {
            FileHandle.standardError.write(Data("\(ISO8601DateFormatter().string(from: now)) \(line)\n".utf8))
        }
    }
}

struct Pack: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Pack images and whole-slide images into zstd tile shards: an image folder (ROOT/CLASS/IMAGE, ROOT/CLASS/SLIDE/IMAGE, ROOT/CLASS/SLIDE.svs) or a CSV manifest (path,label,slide).",
        discussion: """
        Images (JPEG, PNG, TIFF) are whole tiles, or with --tile-size grid tiles that pass a tissue filter (slide id \
        and coordinates kept). Whole-slide images (any format OpenSlide reads: SVS, NDPI, MRXS, SCN, BIF, pyramidal \
        TIFF) are cut on a grid of --tile-size pixels at --tile-mpp or --tile-magnification (default: level 0), read \
        from the pyramid level closest above that scale and area-averaged to it; tissue is found on a thumbnail \
        (Otsu on HSV saturation, not below --tissue-saturation) so background is never read; tile x/y are level-0 \
        pixels. See docs/data.md.
        """)

    @Argument(help: "ImageFolder root (one sub-folder per class) or a .csv manifest with columns path,label,slide.")
    var input: String

    @Option(help: "Cut each image, and every whole-slide image, into square tiles of this many pixels on a grid.")
    var tileSize: Int?

    @Option(help: "Whole-slide images: tile at this many microns per pixel (e.g. 0.5, about 20x).")
    var tileMpp: Double?

    @Option(help: "Whole-slide images: tile at this objective magnification (e.g. 20): downsample = the slide's objective power / this, or 10/this µm/px when the slide gives no power.")
    var tileMagnification: Double?

    @Option(help: "Grid step in pixels (default: the tile size).")
    var stride: Int?

    @Option(help: "HSV saturation above which a pixel counts as tissue (for slides: the floor under Otsu's threshold).")
    var tissueSaturation: Float = 0.07

    @Option(help: "Keep grid tiles with at least this fraction of tissue pixels (0 keeps all).")
    var minTissue: Float = 0.25

    @Option(name: .shortAndLong, help: "Output directory for the shards.")
    var output: String

    @Option(help: "Target shard size in MB.")
    var shardMB: Int = 256

    @Option(help: "zstd level (1-19).")
    var level: Int = 3

    @Option(help: "Reversible filter before zstd: planar-delta (22% smaller on LC25000) or none.")
    var filter: String = "planar-delta"

    @Flag(help: "Pack every tile as unlabeled (label -1), keeping the class names.")
    var unlabeled = false

    @Flag(help: "Skip unreadable images, listing them at the end, instead of stopping at the first.")
    var skipBad = false

    @Option(help: "Images: their resolution in microns per pixel, recorded in the metadata. Slides: the level-0 resolution of slides whose file records none.")
    var micronsPerPixel: Double?

    @Option(help: "Source objective magnification (e.g. 10), recorded in the metadata.")
    var magnification: Double?

    @Option(help: "Worker threads (default: all cores).")
    var threads: Int?

    @Flag(help: "Replace the shards already in the output directory (the new set replaces the old one as a whole).")
    var overwrite = false

    @Flag(help: "Keep class folders without images as classes (no tile has them).")
    var allowEmptyClasses = false

    @Flag(help: "Turn images as their EXIF/TIFF orientation tag says. Default: pixels in stored order, as PyTorch's and Pillow's loaders read them.")
    var applyOrientation = false

    func validate() throws {
        if let m = micronsPerPixel, !(m.isFinite && m > 0 && m <= 100) {
            throw ValidationError("--microns-per-pixel must be a positive number of microns per pixel up to 100 (0.25 at 40x, 0.5 at 20x), got \(m)")
        }
        if let m = magnification, !(m.isFinite && m > 0 && m <= 200) {
            throw ValidationError("--magnification must be a positive objective power up to 200 (e.g. 10, 20, 40), got \(m)")
        }
        if !(1...65_536).contains(shardMB) { throw ValidationError("--shard-mb must be 1 to 65536 (64 GB), got \(shardMB)") }
        if !(1...19).contains(level) { throw ValidationError("--level must be in 1...19, got \(level)") }
        if PixelFilter(rawValue: filter) == nil { throw ValidationError("--filter must be none or planar-delta, got '\(filter)'") }
        try validateThreads(threads)
        if let tileSize, tileSize < 8 || tileSize > 65535 { throw ValidationError("--tile-size must be in 8...65535, got \(tileSize)") }
        if let stride, stride < 1 { throw ValidationError("--stride must be at least 1, got \(stride)") }
        if stride != nil && tileSize == nil { throw ValidationError("--stride needs --tile-size") }
        if !(0...1).contains(minTissue) { throw ValidationError("--min-tissue must be in 0...1, got \(minTissue)") }
        if !(0...1).contains(tissueSaturation) { throw ValidationError("--tissue-saturation must be in 0...1 (HSV saturation; 0.07 is the default), got \(tissueSaturation)") }
        if let m = tileMpp, !(m.isFinite && m > 0 && m <= 100) {
            throw ValidationError("--tile-mpp must be a positive number of microns per pixel up to 100 (0.5 is about 20x), got \(m)")
        }
        if let m = tileMagnification, !(m.isFinite && m > 0 && m <= 200) {
            throw ValidationError("--tile-magnification must be a positive objective power up to 200 (e.g. 5, 10, 20), got \(m)")
        }
        if tileMpp != nil && tileMagnification != nil { throw ValidationError("give --tile-mpp or --tile-magnification, not both") }
        if (tileMpp != nil || tileMagnification != nil) && tileSize == nil { throw ValidationError("--tile-mpp and --tile-magnification need --tile-size") }
    }

    func run() throws {
        // pack is one process (its --threads use the cores); under mpirun every rank would write the same set.
        let launch = LaunchEnvironment.current()
        if let size = launch.size, size > 1 {
            throw CLIError("pack runs as one process, but this is one of \(size) ranks started by \(launch.launcher ?? "an MPI launcher"): every rank would write the same shard set into \(output)",
                           hint: "run pack without mpirun/srun (--threads N uses N cores); train and distill are the commands that run on many ranks")
        }
        var plan: PackPlan
        if input.lowercased().hasSuffix(".csv") {
            plan = try PackPlan.manifest(URL(fileURLWithPath: input))
            if unlabeled { plan.items = plan.items.map { var i = $0; i.label = -1; return i } }
        } else {
            plan = try PackPlan.imageFolder(URL(fileURLWithPath: input), unlabeled: unlabeled, allowEmptyClasses: allowEmptyClasses)
        }
        // Never mix two shard sets in one directory: a non-empty output is refused, or replaced as a whole.
        let final = URL(fileURLWithPath: output)
        let fm = FileManager.default
        // Directories this pack makes hold only what it writes: a failed pack removes them whole (the outermost one).
        var created: URL?
        var missing = final.standardizedFileURL
        while !fm.fileExists(atPath: missing.path) && missing.path != "/" { created = missing; missing = missing.deletingLastPathComponent() }
        // One packer per output directory (two at once would interleave their shard files); held until the end.
        let lock: RunLock
        do { lock = try RunLock(directory: final, hint: "wait for that pack to end, or pack into another directory") } catch let e as TrainingError { throw CLIError(e.message) }
        defer { withExtendedLifetime(lock) {} }
        // With the lock held no other packer writes here: shard files still being written (*.shard.tmp) are what
        // an interrupted pack left, and so is a staging directory beside a complete set.
        let present = (try? fm.contentsOfDirectory(atPath: final.path)) ?? []
        for name in present where name.hasSuffix(".shard.tmp") { try? fm.removeItem(at: final.appendingPathComponent(name)) }
        if present.contains(where: { $0.hasSuffix(".shard") }) {
            let parent = final.deletingLastPathComponent()
            for name in (try? fm.contentsOfDirectory(atPath: parent.path)) ?? [] where name.hasPrefix(".\(final.lastPathComponent).tmp-") {
                try? fm.removeItem(at: parent.appendingPathComponent(name))
            }
        }
        let existing = ((try? fm.contentsOfDirectory(atPath: final.path)) ?? []).filter { $0.hasSuffix(".shard") }
        if !existing.isEmpty && !overwrite {
            throw CLIError("\(output) already holds \(existing.count) shard file(s) of another packing", hint: "choose an empty output directory, or pass --overwrite to replace that shard set")
        }
        // Replacing a set: the new one is packed beside it and swapped in whole at the end (see StagedOutput).
        let staged = existing.isEmpty ? nil : StagedOutput(final: final, tag: "tmp-\(getpid())") { $0.hasSuffix(".shard") }
        var options = PackOptions(output: staged?.staging ?? final)
        options.targetShardBytes = shardMB << 20
        options.zstdLevel = level
        options.filter = PixelFilter(rawValue: filter)!
        options.skipBad = skipBad
        options.threads = threads ?? ProcessInfo.processInfo.activeProcessorCount
        options.micronsPerPixel = micronsPerPixel
        options.magnification = magnification
        options.createdBy = "histodistill \(histodistillVersion)"
        if let tileSize {
            options.grid = GridSpec(tileSize: tileSize, stride: stride, saturationThreshold: tissueSaturation, minTissueFraction: minTissue)
        }
        options.applyOrientation = applyOrientation
        if let tileMpp { options.slideScale = .micronsPerPixel(tileMpp) }
        if let tileMagnification { options.slideScale = .magnification(tileMagnification) }
        let progress = ProgressLine(label: "packing")
        let t0 = Date()
        let report: PackReport
        let unit = plan.items.contains(where: \.isSlide) ? "files" : "images"
        do { report = try Packer.pack(plan, options: options) { progress.update($0, $1, unit: unit, extra: "\($2) tiles") } } catch {
            staged?.discard()
            if let created { try? fm.removeItem(at: created) }
            throw error
        }
        try staged?.commit()
        let seconds = Date().timeIntervalSince(t0)
        let slides = plan.items.filter(\.isSlide).count
        let files = slides > 0 ? "\(plan.items.count - slides) image(s) and \(report.slides.count) whole-slide image(s)" : "\(plan.items.count - report.skipped.count) images"
        print("packed \(report.tiles) tiles from \(files) of \(plan.classes.count) classes (\(plan.classes.joined(separator: ", "))) into \(report.shards.count) shard(s) in \(output)")
        print(String(format: "input %.1f MB, raw RGB %.1f MB, shards %.1f MB (%.2fx smaller than raw, %.2fx the input), %.1f s, %.0f tiles/s",
                     Double(report.inputBytes) / 1e6, Double(report.rawBytes) / 1e6, Double(report.outputBytes) / 1e6,
                     Double(report.rawBytes) / Double(max(report.outputBytes, 1)), Double(report.outputBytes) / Double(max(report.inputBytes, 1)),
                     seconds, Double(report.tiles) / max(seconds, 1e-9)))
        if let mpp = report.micronsPerPixel { print(String(format: "tiles at %.4g µm/px", mpp)) }
        for id in report.slides.keys.sorted() {
            let r = report.slides[id]!
            print(String(format: "  slide %@: %@, level 0 %dx%d at %.4g µm/px, read from level %d, %d of %d grid tiles kept (tissue threshold %.3f)",
                         id, r.properties.vendor, r.properties.levels[0].width, r.properties.levels[0].height, r.micronsPerPixel,
                         r.readLevel, r.keptTiles, r.gridTiles, r.tissueThreshold))
        }
        for note in report.notes { print("note: " + note) }
        if report.alphaImages > 0 { print("\(report.alphaImages) image(s) had an alpha channel: transparent pixels were composited over white") }
        if report.orientedImages > 0 {
            print(applyOrientation ? "\(report.orientedImages) image(s) were turned as their orientation tag says"
                  : "\(report.orientedImages) image(s) have an orientation tag; read in stored order, as PyTorch's loaders do (--apply-orientation turns them)")
        }
        if !report.skipped.isEmpty {
            print("skipped \(report.skipped.count) unreadable file(s):")
            for s in report.skipped { print("  " + s) }
        }
        if !plan.notPacked.isEmpty {
            print("not packed: \(plan.notPacked.count) file(s) under \(input):")
            for (path, reason) in plan.notPacked.prefix(20) { print("  \(path): \(reason)") }
            if plan.notPacked.count > 20 { print("  ... and \(plan.notPacked.count - 20) more") }
        }
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Describe shards: tiles per class and slide, tile sizes, compression.")

    @Argument(help: "Shard files or directories.")
    var paths: [String]

    @Option(help: "Slides to list (most tiles first; 0: only their count).")
    var slides: Int = 10

    func validate() throws {
        if slides < 0 { throw ValidationError("--slides must be 0 or more, got \(slides)") }
    }

    func run() throws {
        let urls = try shardFiles(paths)
        var perClass: [String: Int] = [:], perSlide: [String: Int] = [:], sizes: [String: Int] = [:]
        var tiles = 0, compressed = 0, raw = 0, fileBytes = 0
        var classes: [String]?
        var slideRecords: [String: SlideTilingRecord] = [:]
        var tissue: [Float] = []
        var readers: [ShardReader] = []
        for url in urls {
            let r = try ShardReader(url: url)
            readers.append(r)
            if let classes, classes != r.metadata.classes {
                throw CLIError("\(url.path): classes \(r.metadata.classes) differ from the other shards' \(classes)",
                               hint: "inspect shard sets packed from the same class list together")
            }
            classes = r.metadata.classes
            fileBytes += r.fileSize
            slideRecords.merge(r.metadata.slideProperties ?? [:]) { a, _ in a }
            tissue += (r.metadata.tileTissue ?? []).compactMap { $0 }
            for e in r.entries {
                tiles += 1
                compressed += Int(e.compressedSize)
                raw += e.pixelBytes
                perClass[e.label < 0 ? "(unlabeled)" : r.metadata.classes[Int(e.label)], default: 0] += 1
                perSlide[r.metadata.slides[Int(e.slide)], default: 0] += 1
                sizes["\(e.width)x\(e.height)", default: 0] += 1
            }
        }
        print("\(urls.count) shard(s), \(tiles) tiles, \(String(format: "%.1f", Double(fileBytes) / 1e6)) MB")
        print(String(format: "compression: %.1f MB raw RGB -> %.1f MB frames (%.2fx)", Double(raw) / 1e6, Double(compressed) / 1e6,
                     Double(raw) / Double(max(compressed, 1))))
        print("classes:")
        for c in (classes ?? []) + (perClass["(unlabeled)"] != nil ? ["(unlabeled)"] : []) { print("  \(c): \(perClass[c] ?? 0)") }
        print("tile sizes: " + sizes.sorted { $0.value > $1.value }.map { "\($0.key) x\($0.value)" }.joined(separator: ", "))
        print("slides: \(perSlide.count)" + (perSlide.count > 0 && slides > 0 ? "; most tiles: " + perSlide.sorted { ($0.value, $1.key) > ($1.value, $0.key) }
            .prefix(slides).map { "\($0.key) (\($0.value))" }.joined(separator: ", ") : ""))
        if !tissue.isEmpty {
            let sorted = tissue.sorted()
            print(String(format: "tissue per tile: %d measured, min %.2f, median %.2f, mean %.2f", sorted.count, sorted[0], sorted[sorted.count / 2],
                         sorted.reduce(0, +) / Float(sorted.count)))
        }
        if !slideRecords.isEmpty {
            print("whole-slide images: \(slideRecords.count)")
            for (id, r) in slideRecords.sorted(by: { $0.key < $1.key }).prefix(slides) {
                let p = r.properties
                let levels = p.levels.map { "\($0.width)x\($0.height)" + ($0.downsample == 1 ? "" : String(format: " (/%.4g)", $0.downsample)) }.joined(separator: ", ")
                let mpp = p.micronsPerPixelX.map { String(format: "%.4g µm/px", $0) } ?? String(format: "no µm/px in the file (%.4g given)", r.micronsPerPixel)
                let power = p.objectivePower.map { String(format: ", %gx objective", $0) } ?? ""
                print("  \(id): \(p.vendor), \(mpp)\(power); levels \(levels)")
                print(String(format: "    tiled at %.4g µm/px from level %d (%.1f level-0 px per tile), %d of %d grid tiles kept, tissue threshold %.3f",
                             r.tileMicronsPerPixel, r.readLevel, r.level0TileExtent, r.keptTiles, r.gridTiles, r.tissueThreshold))
            }
            if slideRecords.count > slides { print("  ... and \(slideRecords.count - slides) more (--slides N lists more)") }
        }
        // Described all the same, but a directory that is not one complete packing cannot be trained on: say so.
        do { try checkCompleteDirectories(paths, readers) } catch let e as CLIError {
            FileHandle.standardError.write(Data("warning: \(e.description)\n".utf8))
        }
    }
}

/// Refuses the shard directories among `paths` (given whole, not file by file) whose shards are not one complete
/// packing (`ShardDataset.checkCompleteSets`): what training would refuse.
func checkCompleteDirectories(_ paths: [String], _ readers: [ShardReader]) throws {
    let folders = Set(paths.filter { var d: ObjCBool = false; return FileManager.default.fileExists(atPath: $0, isDirectory: &d) && d.boolValue }
        .map { URL(fileURLWithPath: $0).standardizedFileURL.path })
    do {
        try ShardDataset.checkCompleteSets(readers.filter { folders.contains($0.url.deletingLastPathComponent().standardizedFileURL.path) })
    } catch let e as ShardError { throw CLIError(e.message) }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check every checksum and index entry and decompress every tile; list every damaged tile and exit non-zero if there is one.")

    @Argument(help: "Shard files or directories.")
    var paths: [String]

    func run() throws {
        let urls = try shardFiles(paths)
        var tiles = 0
        let progress = ProgressLine(label: "verifying")
        var readers: [ShardReader] = []
        var damaged: [String] = [], unreadable: [String] = [], shardsHit = 0
        for (i, url) in urls.enumerated() {
            // A shard whose header, index or footer is damaged cannot be read at all; its tiles are not checked.
            let r: ShardReader
            do { r = try ShardReader(url: url) } catch let e as ShardError { unreadable.append(e.message); shardsHit += 1; continue }
            let hit = r.damagedTiles()
            if !hit.isEmpty { damaged += hit; shardsHit += 1 }
            tiles += r.count
            readers.append(r)
            progress.update(i + 1, urls.count)
        }
        let problems = unreadable + damaged
        if !problems.isEmpty {
            for p in problems { FileHandle.standardError.write(Data("error: \(p)\n".utf8)) }
            throw CLIError("\(damaged.count) damaged tile(s)\(unreadable.isEmpty ? "" : " and \(unreadable.count) unreadable shard(s)") in \(shardsHit) of \(urls.count) shard(s), listed above",
                           hint: "repack the damaged shards from their sources (histodistill pack), or train and distill with --on-corrupt skip")
        }
        // A directory given whole must hold one complete packing.
        try checkCompleteDirectories(paths, readers)
        print("ok: \(urls.count) shard(s), \(tiles) tiles, every checksum and index entry valid")
    }
}

/// The sink of a trainer's progress lines on standard error: on a terminal one live line; elsewhere (a SLURM log,
/// a pipe) step lines timestamped and at most one every `every` seconds (the last step's always), other lines
/// (notes, resume) as they come.
/// `label` (a student's name when several train in one pass) starts every line.
func progressSink(every: TimeInterval = progressInterval, label: String? = nil) -> (String) -> Void {
    let terminal = isatty(2) != 0
    nonisolated(unsafe) var last = Date.distantPast
    let prefix = label.map { "\($0): " } ?? ""
    return { line in
        if terminal {
            FileHandle.standardError.write(Data("\r\(prefix)\(line)   ".utf8))
            return
        }
        let now = Date()
        let isStep = line.hasPrefix("step ")
        // "step N/N ..." is the last step: always shown.
        let parts = line.split(separator: " ", maxSplits: 2)
        let final = parts.count > 1 && parts[1].split(separator: "/").count == 2 && parts[1].split(separator: "/")[0] == parts[1].split(separator: "/")[1]
        guard !isStep || final || now.timeIntervalSince(last) >= every else { return }
        if isStep { last = now }
        FileHandle.standardError.write(Data("\(ISO8601DateFormatter().string(from: now)) \(prefix)\(line)\n".utf8))
    }
}
