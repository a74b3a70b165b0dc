// `histodistill stats`, `export` and `bench-pipeline`: normalisation statistics, tiles back to PNG (HR and LR
// side by side), and the data pipeline's speed.
import ArgumentParser
import Foundation
import TensorCore
import TileShards
import Training

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Per-channel mean and standard deviation of a shard set, for normalisation.")

    @Argument(help: "Shard files or directories.")
    var paths: [String]

    @Option(help: "Use a seeded random sample of this many tiles instead of all.")
    var maxTiles: Int?

    @Flag(help: "Print JSON.")
    var json = false

    func validate() throws {
        if let maxTiles, maxTiles < 1 { throw ValidationError("--max-tiles must be at least 1 (leave it out to use every tile), got \(maxTiles)") }
    }

    func run() throws {
        let dataset = try ShardDataset(urls: try shardFiles(paths))
        let s = try ChannelStatistics.compute(dataset, maxTiles: maxTiles)
        if json {
            let object: [String: Any] = ["mean": s.mean, "std": s.std, "tiles": s.tiles]
            print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print("tiles: \(s.tiles)")
            print("mean: " + s.mean.map { String(format: "%.4f", $0) }.joined(separator: ", "))
            print("std:  " + s.std.map { String(format: "%.4f", $0) }.joined(separator: ", "))
        }
    }
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write chosen tiles as PNG: the augmented HR tile and its LR tile (scaled back up) side by side.")

    @Argument(help: "Shard files or directories.")
    var paths: [String]

    @Option(name: .shortAndLong, help: "Output directory.")
    var output: String

    @Option(help: "Tile ids to export (comma-separated).")
    var ids: String?

    @Option(help: "Export tiles of this class.")
    var className: String?

    @Option(help: "Export tiles of this slide.")
    var slide: String?

    @Option(help: "Export a seeded random sample of this many tiles.")
    var sample: Int?

    @Option(help: "Downsampling factor of the LR tile (1, 2, 4, 8, 16).")
    var factor: Int = 4

    @Flag(help: "Apply training augmentation (flips, rotation, colour jitter 0.2/0.2/0.2/0.05).")
    var augment = false

    @Option(help: "Apply this training config's augmentation (crop, blur, stain jitter... as a run draws them) and its input factor instead.")
    var config: String?

    @Option(help: "Seed for sampling and augmentation.")
    var seed: UInt64 = 0

    @Option(help: "At most this many tiles.")
    var limit: Int = 100

    func validate() throws {
        if ![1, 2, 4, 8, 16].contains(factor) { throw ValidationError("--factor must be 1, 2, 4, 8 or 16, got \(factor)") }
        if ids == nil && className == nil && slide == nil && sample == nil {
            throw ValidationError("choose tiles with --ids, --class-name, --slide or --sample")
        }
        if let sample, sample < 1 { throw ValidationError("--sample must be at least 1, got \(sample)") }
        if limit < 1 { throw ValidationError("--limit must be at least 1, got \(limit)") }
        if let ids {
            let bad = ids.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { UInt64($0) == nil }
            if !bad.isEmpty || ids.split(separator: ",").isEmpty {
                throw ValidationError("--ids takes comma-separated tile ids (numbers, as `histodistill inspect` lists them), got '\(ids)'")
            }
        }
    }

    func run() throws {
        let dataset = try ShardDataset(urls: try shardFiles(paths))
        var chosen: [Int] = []
        if let ids {
            let wanted = Set(ids.split(separator: ",").compactMap { UInt64($0.trimmingCharacters(in: .whitespaces)) })
            chosen = (0..<dataset.count).filter { wanted.contains(dataset.entry($0).id) }
            if chosen.count < wanted.count { throw CLIError("some of the ids \(ids) are not in the shard set", hint: "`histodistill inspect` shows the tiles") }
        } else if let className {
            guard let label = dataset.classes.firstIndex(of: className) else {
                throw CLIError("class '\(className)' is not one of \(dataset.classes)")
            }
            chosen = (0..<dataset.count).filter { dataset.entry($0).label == Int32(label) }
        } else if let slide {
            chosen = (0..<dataset.count).filter { dataset.slide($0) == slide }
            if chosen.isEmpty { throw CLIError("no tile belongs to slide '\(slide)'") }
        } else if let sample {
            chosen = Array(EpochPlan(count: dataset.count, seed: seed, epoch: 0, globalBatch: 1).order.prefix(sample))
        }
        chosen = Array(chosen.prefix(limit))
        let out = URL(fileURLWithPath: output)
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        var options = augment ? AugmentOptions(brightness: 0.2, contrast: 0.2, saturation: 0.2, hue: 0.05) : .none
        var factor = factor
        if let config {
            let c: RunConfig
            do { c = try RunConfig.load(URL(fileURLWithPath: config)) } catch let e as ConfigError { throw CLIError(e.message) }
            options = c.augment
            if c.inputFactor > 1 { factor = c.inputFactor }
        }
        let transform = PairedTransform(augment: options, factor: factor)
        for t in chosen {
            let a = dataset.addresses[t], e = dataset.entry(t)
            let w = Int(e.width), h = Int(e.height)
            guard w % factor == 0 && h % factor == 0 else {
                throw CLIError("tile \(e.id) is \(w)x\(h), not divisible by --factor \(factor)")
            }
            let rgb = try dataset.readers[a.shard].tile(a.index)
            var g = SplitMix64.stream(seed, UInt64(t))
            let draw = AugmentDraw(options, square: w == h, width: w, height: h, using: &g)
            var hr = [Float](repeating: 0, count: 3 * w * h), lr = [Float](repeating: 0, count: 3 * (w / factor) * (h / factor))
            rgb.withUnsafeBufferPointer { transform.apply(rgb: $0.baseAddress!, width: w, height: h, draw: draw, hr: &hr, lr: &lr) }
            // HR on the left, LR repeated factor x factor on the right.
            var canvas = [UInt8](repeating: 0, count: 2 * w * h * 3)
            let lw = w / factor, plane = w * h, lplane = lw * (h / factor)
            for y in 0..<h {
                for x in 0..<w {
                    for c in 0..<3 {
                        canvas[(y * 2 * w + x) * 3 + c] = UInt8(max(0, min(255, (hr[c * plane + y * w + x] * 255).rounded())))
                        let lv = lr[c * lplane + (y / factor) * lw + x / factor]
                        canvas[(y * 2 * w + w + x) * 3 + c] = UInt8(max(0, min(255, (lv * 255).rounded())))
                    }
                }
            }
            let cls = e.label >= 0 ? dataset.classes[Int(e.label)] : "unlabeled"
            let name = String(format: "tile-%06llu-%@-x%d.png", e.id, cls, factor)
            try ImageCodec.writePNG(RGBImage(width: 2 * w, height: h, pixels: canvas), to: out.appendingPathComponent(name))
        }
        print("wrote \(chosen.count) PNG file(s) to \(output) (HR left, LR x\(factor) right)")
    }
}

struct BenchPipeline: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-pipeline",
        abstract: "Measure the data pipeline: read + decompress + augment + downsample + normalise, tiles per second.")

    @Argument(help: "Shard files or directories.")
    var paths: [String]

    @Option(help: "LR downsampling factor.")
    var factor: Int = 4

    @Option(help: "Worker threads.")
    var workers: Int = 1

    @Option(help: "Global batch size.")
    var batch: Int = 32

    @Option(help: "Batches to time.")
    var steps: Int = 20

    @Option(help: "Take the augmentation, normalisation and factor from this run config (default: flips, rotations and colour jitter 0.2/0.2/0.2/0.05).")
    var config: String?

    func validate() throws {
        if ![1, 2, 4, 8, 16].contains(factor) { throw ValidationError("--factor must be 1, 2, 4, 8 or 16, got \(factor)") }
        for (flag, value, most) in [("--workers", workers, 4096), ("--batch", batch, 65_536), ("--steps", steps, 1_000_000)]
        where !(1...most).contains(value) {
            throw ValidationError("\(flag) must be 1 to \(most), got \(value)")
        }
    }

    func run() throws {
        let dataset = try ShardDataset(urls: try shardFiles(paths))
        var transform = PairedTransform(augment: AugmentOptions(brightness: 0.2, contrast: 0.2, saturation: 0.2, hue: 0.05), factor: factor,
                                        mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25])
        if let config {
            let c: RunConfig
            do { c = try RunConfig.load(URL(fileURLWithPath: config)) } catch let e as ConfigError { throw CLIError(e.message) }
            transform = PairedTransform(augment: c.augment, factor: max(c.inputFactor, 1), mean: c.mean, std: c.std)
        }
        let loader = try BatchLoader(dataset: dataset, transform: transform, seed: 1, globalBatch: batch, rank: 0, worldSize: 1,
                                     cursor: DataCursor(), withLowResolution: true, workers: workers, depth: 2)
        _ = try loader.next()
        let t0 = Date()
        var tiles = 0
        for _ in 0..<steps { tiles += try loader.next().count }
        let dt = Date().timeIntervalSince(t0)
        print(String(format: "%d tiles in %.2f s: %.0f tiles/s with %d worker(s) (%.0f tiles/s per worker); factor %d, batch %d",
                     tiles, dt, Double(tiles) / dt, workers, Double(tiles) / dt / Double(workers), transform.factor, batch))
    }
}
