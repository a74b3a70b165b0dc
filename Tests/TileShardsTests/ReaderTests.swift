// Epoch order, rank partitions, cursors across world sizes, paired augmentation, colour jitter and area
// downsampling against torchvision, the background loader, statistics.
import Foundation
import SafeTensors
import Testing
import TensorCore
@testable import TileShards

enum AugmentFixtures {
    static let file: SafeTensorsFile = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/augment.safetensors")
        do { return try SafeTensorsFile(contentsOf: url) } catch { fatalError("cannot load augment fixtures: \(error)") }
    }()
    static func floats(_ name: String) -> [Float] { file[name]!.floats }
}

func maxAbs(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max() ?? 0 }

/// Packs `count` synthetic 32x32 tiles (two classes) and opens them as a dataset.
func smallDataset(_ dir: TemporaryDirectory, count: Int = 23, shardBytes: Int = 6000) throws -> ShardDataset {
    let input = dir.url.appendingPathComponent("in")
    for i in 0..<count {
        let cls = i % 3 == 0 ? "a" : "b"
        try FileManager.default.createDirectory(at: input.appendingPathComponent(cls), withIntermediateDirectories: true)
        try ImageCodec.writePNG(syntheticImage(width: 32, height: 32, seed: i), to: input.appendingPathComponent("\(cls)/\(String(format: "%03d", i)).png"))
    }
    var options = PackOptions(output: dir.url.appendingPathComponent("out"))
    options.targetShardBytes = shardBytes
    _ = try Packer.pack(try PackPlan.imageFolder(input), options: options)
    return try ShardDataset(directory: dir.url.appendingPathComponent("out"))
}

/// Flips a byte in the middle of each chosen tile's frame of `reader`'s shard (by entry index); returns the shard's URL.
func corruptFrames(of reader: ShardReader, where chosen: (Int) -> Bool) throws -> URL {
    var d = try Data(contentsOf: reader.url)
    for (i, e) in reader.entries.enumerated() where chosen(i) { d[Int(e.offset) + Int(e.compressedSize) / 2] ^= 0x5A }
    try d.write(to: reader.url)
    return reader.url
}

@Suite("Epoch order and cursors")
struct OrderTests {
    @Test("every sample exactly once per epoch, for world sizes 1 to 5", arguments: 1...5)
    func partition(_ world: Int) {
        let count = 103, batch = 4 * 5 * 3   // divisible by 1...5
        let plan = EpochPlan(count: count, seed: 42, epoch: 3, globalBatch: batch)
        var seen: [Int: Int] = [:]
        for step in 0..<plan.steps {
            var sizes = Set<Int>()
            for r in 0..<world {
                let s = plan.samples(step: step, rank: r, worldSize: world)
                sizes.insert(s.count)
                for x in s { seen[x, default: 0] += 1 }
            }
            #expect(sizes.count == 1, "every rank gets an equal share")
        }
        #expect(seen.values.allSatisfy { $0 == 1 })
        #expect(seen.count == plan.steps * batch, "all but the dropped partial batch")
        // The union over ranks is the same global batch whatever the world size.
        let one = EpochPlan(count: count, seed: 42, epoch: 3, globalBatch: batch)
        #expect(one.order == plan.order)
    }

    @Test("the order depends only on (seed, epoch)")
    func orderDeterminism() {
        let a = EpochPlan(count: 50, seed: 1, epoch: 0, globalBatch: 5).order
        #expect(a == EpochPlan(count: 50, seed: 1, epoch: 0, globalBatch: 5).order)
        #expect(a != EpochPlan(count: 50, seed: 1, epoch: 1, globalBatch: 5).order)
        #expect(a != EpochPlan(count: 50, seed: 2, epoch: 0, globalBatch: 5).order)
        #expect(a.sorted() == Array(0..<50))
    }

    @Test("resuming from a cursor under another world size neither skips nor repeats a sample", arguments: [(2, 3), (3, 1), (1, 4)])
    func elasticResume(_ before: Int, _ after: Int) {
        let count = 97, batch = 12
        let plan = EpochPlan(count: count, seed: 9, epoch: 0, globalBatch: batch)
        var cursor = DataCursor()
        var seen: [Int] = []
        for _ in 0..<3 {   // 3 steps on `before` ranks
            let step = cursor.nextStep(globalBatch: batch)
            for r in 0..<before { seen += plan.samples(step: step, rank: r, worldSize: before) }
            cursor = cursor.advanced(globalBatch: batch, steps: plan.steps)
        }
        // save, restore as JSON, continue on `after` ranks to the end of the epoch
        let restored = try! JSONDecoder().decode(DataCursor.self, from: JSONEncoder().encode(cursor))
        cursor = restored
        while cursor.epoch == 0 {
            let step = cursor.nextStep(globalBatch: batch)
            for r in 0..<after { seen += plan.samples(step: step, rank: r, worldSize: after) }
            cursor = cursor.advanced(globalBatch: batch, steps: plan.steps)
        }
        #expect(seen.count == plan.steps * batch)
        #expect(Set(seen).count == seen.count, "no sample repeated")
        #expect(cursor == DataCursor(epoch: 1, samplesConsumed: 0))
    }
}

@Suite("Augmentation")
struct AugmentTests {
    @Test("the branch-free floor equals floorf over the ranges the hue adjustment uses, at and around integers")
    func floorSmall() {
        var xs: [Float] = []
        for k in -2...8 {
            let v = Float(k)
            xs += [v, v.nextUp, v.nextDown, v + 0.5, v - 0.5, (v + 0.5).nextDown, (v + 0.5).nextUp]
        }
        var g = SplitMix64(seed: 5)
        for _ in 0..<10_000 { xs.append(g.uniform(-0.6, 6.6)) }
        for x in xs { #expect(ColorOps.floorSmall(x) == x.rounded(.down), "floor(\(x))") }
    }

    func apply(_ name: String, _ op: (UnsafeMutablePointer<Float>) -> Void) {
        var x = AugmentFixtures.floats("x")
        x.withUnsafeMutableBufferPointer { op($0.baseAddress!) }
        let e = maxAbs(x, AugmentFixtures.floats(name))
        #expect(e < 1e-5, "\(name): max difference \(e) from torchvision")
    }

    @Test("brightness, contrast, saturation and hue match torchvision")
    func colorOps() {
        apply("brightness_1.3") { ColorOps.brightness($0, plane: 256, factor: 1.3) }
        apply("contrast_0.6") { ColorOps.contrast($0, plane: 256, factor: 0.6) }
        apply("saturation_1.4") { ColorOps.saturation($0, plane: 256, factor: 1.4) }
        apply("saturation_0.3") { ColorOps.saturation($0, plane: 256, factor: 0.3) }
        apply("hue_0.2") { ColorOps.hue($0, plane: 256, shift: 0.2) }
        apply("hue_-0.35") { ColorOps.hue($0, plane: 256, shift: -0.35) }
    }

    @Test("ColorJitter's composition in a drawn order matches torchvision")
    func jitter() {
        var draw = AugmentDraw()
        draw.order = [2, 0, 3, 1]
        draw.saturation = 0.8; draw.brightness = 1.1; draw.hue = 0.05; draw.contrast = 1.2
        apply("jitter_s0.8_b1.1_h0.05_c1.2") { draw.applyColor($0, plane: 256) }
    }

    @Test("area downsampling matches interpolate(mode=area)", arguments: [2, 4, 8, 16])
    func area(_ f: Int) {
        let big = AugmentFixtures.floats("big")
        var out = [Float](repeating: 0, count: 3 * (32 / f) * (32 / f))
        big.withUnsafeBufferPointer { b in out.withUnsafeMutableBufferPointer { AreaDownsample.apply(b.baseAddress!, width: 32, height: 32, factor: f, into: $0.baseAddress!) } }
        #expect(maxAbs(out, AugmentFixtures.floats("area_\(f)")) < 1e-6)
    }

    @Test("area downsampling sums each block row by row, left to right, then scales: bit for bit, every factor, non-square images")
    func areaOrder() {
        var g = SplitMix64(seed: 9)
        for f in [1, 2, 4, 8, 16] {
            let width = 48, height = 32
            let x = (0..<(3 * width * height)).map { _ in Float(g.next() % 1_000_003) / 997 }
            let ow = width / f, oh = height / f
            var out = [Float](repeating: .nan, count: 3 * ow * oh), expected = out
            for c in 0..<3 {
                for oy in 0..<oh {
                    for ox in 0..<ow {
                        var s: Float = 0
                        for dy in 0..<f { for dx in 0..<f { s += x[c * width * height + (oy * f + dy) * width + ox * f + dx] } }
                        expected[c * ow * oh + oy * ow + ox] = s * (1 / Float(f * f))
                    }
                }
            }
            x.withUnsafeBufferPointer { AreaDownsample.apply($0.baseAddress!, width: width, height: height, factor: f, into: &out) }
            #expect(out.map(\.bitPattern) == expected.map(\.bitPattern), "factor \(f)")
        }
    }

    @Test("bytes to floats: every flip and rotation puts Float(v) / 255 of the right pixel and channel in each plane, bit for bit (the contiguous rows through the C kernel, the others in Swift)")
    func unitPlanes() {
        var g = SplitMix64(seed: 4)
        let edge = 37   // odd: vector tails
        let rgb = (0..<(edge * edge * 3)).map { _ in UInt8(truncatingIfNeeded: g.next()) }
        let t = PairedTransform(augment: AugmentOptions(), factor: 1)
        for symmetry in SquareSymmetry.dihedral {
            var draw = AugmentDraw()
            draw.hflip = symmetry.hflip; draw.vflip = symmetry.vflip; draw.rotations = symmetry.rotations
            var hr = [Float](repeating: .nan, count: 3 * edge * edge)
            rgb.withUnsafeBufferPointer { t.apply(rgb: $0.baseAddress!, width: edge, height: edge, draw: draw, hr: &hr, lr: nil) }
            var expected = hr
            for y in 0..<edge {
                for x in 0..<edge {
                    let src = symmetry.source(y: y, x: x, width: edge, height: edge)
                    for c in 0..<3 { expected[c * edge * edge + y * edge + x] = Float(rgb[src * 3 + c]) / 255 }
                }
            }
            #expect(hr.map(\.bitPattern) == expected.map(\.bitPattern), "\(symmetry)")
        }
    }

    @Test("the LR tile is the area-downsampled augmented HR tile; flips and rotations keep every pixel")
    func pairing() {
        var g = SplitMix64(seed: 3)
        let rgb = (0..<(16 * 16 * 3)).map { _ in UInt8(truncatingIfNeeded: g.next()) }
        let t = PairedTransform(augment: AugmentOptions(brightness: 0.2, contrast: 0.2, saturation: 0.2, hue: 0.05), factor: 4,
                                mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3])
        for seed in 0..<20 {
            var rg = SplitMix64(seed: UInt64(seed))
            let draw = AugmentDraw(t.augment, square: true, using: &rg)
            var hr = [Float](repeating: 0, count: 3 * 256), lr = [Float](repeating: 0, count: 3 * 16)
            rgb.withUnsafeBufferPointer { t.apply(rgb: $0.baseAddress!, width: 16, height: 16, draw: draw, hr: &hr, lr: &lr) }
            // Undo the normalisation of HR, downsample, normalise: must equal LR.
            var raw = hr
            for c in 0..<3 { for i in 0..<256 { raw[c * 256 + i] = hr[c * 256 + i] * t.std[c] + t.mean[c] } }
            var expected = [Float](repeating: 0, count: 3 * 16)
            raw.withUnsafeBufferPointer { r in expected.withUnsafeMutableBufferPointer { AreaDownsample.apply(r.baseAddress!, width: 16, height: 16, factor: 4, into: $0.baseAddress!) } }
            for c in 0..<3 { for i in 0..<16 { expected[c * 16 + i] = (expected[c * 16 + i] - t.mean[c]) / t.std[c] } }
            #expect(maxAbs(lr, expected) < 1e-4, "seed \(seed)")
        }
        // Geometry only: the multiset of pixels is unchanged.
        let geo = PairedTransform(augment: AugmentOptions(), factor: 1)
        var rg = SplitMix64(seed: 11)
        var draw = AugmentDraw(geo.augment, square: true, using: &rg)
        draw.rotations = 1; draw.hflip = true
        var hr = [Float](repeating: 0, count: 3 * 256)
        rgb.withUnsafeBufferPointer { geo.apply(rgb: $0.baseAddress!, width: 16, height: 16, draw: draw, hr: &hr, lr: nil) }
        let original = (0..<256).map { Float(rgb[$0 * 3]) / 255 }.sorted()
        #expect(Array(hr[0..<256]).sorted() == original)
        #expect(Array(hr[0..<256]) != (0..<256).map { Float(rgb[$0 * 3]) / 255 }, "the draw moved pixels")
    }
}

@Suite("Symmetries of the square")
struct SquareSymmetryTests {
    /// One 3 x 3 single-channel image through `s`, as rows.
    func applied(_ s: SquareSymmetry, _ image: [Float] = (0..<9).map(Float.init)) -> [[Float]] {
        var out = [Float](repeating: -1, count: 9)
        image.withUnsafeBufferPointer { x in out.withUnsafeMutableBufferPointer { s.apply(x.baseAddress!, into: $0.baseAddress!, images: 1, channels: 1, edge: 3) } }
        return [Array(out[0..<3]), Array(out[3..<6]), Array(out[6..<9])]
    }

    @Test("flips and quarter turns match torch.flip and torch.rot90 by hand; the 8 dihedral views are distinct and closed under composition")
    func handValues() {
        // [[0, 1, 2], [3, 4, 5], [6, 7, 8]]: torch.flip(x, [1]), torch.flip(x, [0]) and torch.rot90(x, k) for k = 1, 2, 3.
        #expect(applied(SquareSymmetry(hflip: true)) == [[2, 1, 0], [5, 4, 3], [8, 7, 6]])
        #expect(applied(SquareSymmetry(vflip: true)) == [[6, 7, 8], [3, 4, 5], [0, 1, 2]])
        #expect(applied(SquareSymmetry(rotations: 1)) == [[2, 5, 8], [1, 4, 7], [0, 3, 6]])
        #expect(applied(SquareSymmetry(rotations: 2)) == [[8, 7, 6], [5, 4, 3], [2, 1, 0]])
        #expect(applied(SquareSymmetry(rotations: 3)) == [[6, 3, 0], [7, 4, 1], [8, 5, 2]])
        #expect(applied(.identity) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
        // The group: 8 different images, the flips among them, and any two applied in turn give one of the 8.
        let images = SquareSymmetry.dihedral.map { applied($0) }
        #expect(Set(images.map { $0.flatMap { $0 } }).count == 8)
        #expect(SquareSymmetry.flips.allSatisfy { f in images.contains(applied(f)) })
        for a in SquareSymmetry.dihedral {
            for b in SquareSymmetry.dihedral { #expect(images.contains(applied(b, applied(a).flatMap { $0 }))) }
        }
        #expect(SquareSymmetry(hflip: true, rotations: 1).description == "hflip+rot90" && SquareSymmetry.identity.description == "identity")
    }

    @Test("apply moves every channel of every image of a batch the same way, as the augmentation moves a tile's pixels")
    func batchMatchesAugmentation() {
        var g = SplitMix64(seed: 5)
        let rgb = (0..<(8 * 8 * 3)).map { _ in UInt8(truncatingIfNeeded: g.next()) }
        let geo = PairedTransform(augment: .none, factor: 1)
        var plain = [Float](repeating: 0, count: 3 * 64)
        rgb.withUnsafeBufferPointer { geo.apply(rgb: $0.baseAddress!, width: 8, height: 8, draw: AugmentDraw(), hr: &plain, lr: nil) }
        let batch = plain + plain.map { 1 - $0 }   // two images
        for s in SquareSymmetry.dihedral {
            var draw = AugmentDraw()
            draw.hflip = s.hflip; draw.vflip = s.vflip; draw.rotations = s.rotations
            var augmented = [Float](repeating: 0, count: 3 * 64)
            rgb.withUnsafeBufferPointer { geo.apply(rgb: $0.baseAddress!, width: 8, height: 8, draw: draw, hr: &augmented, lr: nil) }
            var out = [Float](repeating: 0, count: batch.count)
            batch.withUnsafeBufferPointer { x in out.withUnsafeMutableBufferPointer { s.apply(x.baseAddress!, into: $0.baseAddress!, images: 2, channels: 3, edge: 8) } }
            #expect(Array(out[0..<192]) == augmented && Array(out[192...]) == augmented.map { 1 - $0 }, "\(s)")
        }
    }
}

@Suite("Loader")
struct LoaderTests {
    @Test("ranks' batches together equal the single-rank batch, in order, tile for tile")
    func ranksEqualSingle() throws {
        let dir = try TemporaryDirectory()
        let ds = try smallDataset(dir)
        #expect(ds.readers.count > 1, "several shards")
        let t = PairedTransform(augment: AugmentOptions(brightness: 0.3, hue: 0.1), factor: 4)
        let single = try BatchLoader(dataset: ds, transform: t, seed: 5, globalBatch: 6, rank: 0, worldSize: 1, cursor: DataCursor(),
                                     withLowResolution: true, workers: 2)
        let parts = try (0..<3).map { r in try BatchLoader(dataset: ds, transform: t, seed: 5, globalBatch: 6, rank: r, worldSize: 3,
                                                           cursor: DataCursor(), withLowResolution: true, workers: 1) }
        for _ in 0..<5 {   // crosses the epoch boundary (23 tiles, 3 steps per epoch)
            let whole = try single.next()
            let pieces = try parts.map { try $0.next() }
            #expect(pieces.flatMap(\.hr) == whole.hr)
            #expect(pieces.flatMap(\.lr) == whole.lr)
            #expect(pieces.flatMap(\.ids) == whole.ids)
            #expect(whole.count == 6 && whole.lowSize == 8 && whole.size == 32)
        }
        #expect(single.stepsPerEpoch == 3)
    }

    @Test("a loader restored from a cursor continues with the same batches")
    func resume() throws {
        let dir = try TemporaryDirectory()
        let ds = try smallDataset(dir)
        let t = PairedTransform(augment: AugmentOptions(), factor: 2)
        let a = try BatchLoader(dataset: ds, transform: t, seed: 1, globalBatch: 4, rank: 0, worldSize: 1, cursor: DataCursor(), withLowResolution: false)
        var batches = try (0..<7).map { _ in try a.next() }
        let b = try BatchLoader(dataset: ds, transform: t, seed: 1, globalBatch: 4, rank: 0, worldSize: 1,
                                cursor: DataCursor(epoch: 1, samplesConsumed: 4), withLowResolution: false)
        batches.removeFirst(6)   // epoch 0 has 5 steps; cursor (1, 4) is the 7th batch
        let resumed = try b.next()
        #expect(resumed.ids == batches[0].ids && resumed.hr == batches[0].hr && resumed.epoch == 1 && resumed.step == 1)
    }

    @Test("a corrupt tile stops the loader naming the file and tile, or is skipped and reported")
    func corruptTiles() throws {
        let dir = try TemporaryDirectory()
        let ds0 = try smallDataset(dir, shardBytes: 1 << 30)
        let url = try corruptFrames(of: ds0.readers[0]) { _ in true }   // every tile
        let ds = try ShardDataset(urls: [url])
        let t = PairedTransform(augment: .none, factor: 1)
        let stop = try BatchLoader(dataset: ds, transform: t, seed: 0, globalBatch: 4, rank: 0, worldSize: 1, cursor: DataCursor(), withLowResolution: false)
        let e = #expect(throws: ShardError.self) { _ = try stop.next() }
        #expect(e?.message.contains(url.path) == true && e?.message.contains("tile") == true)
        let skip = try BatchLoader(dataset: ds, transform: t, seed: 0, globalBatch: 4, rank: 0, worldSize: 1, cursor: DataCursor(),
                                   withLowResolution: false, policy: .skip)
        let b = try skip.next()
        #expect(b.count == 0 && b.skipped.count == 4)
    }

    @Test("under mixup with on_corrupt skip, a damaged partner leaves the healthy tile in its batch unblended (λ 1, its own label); only damaged tiles are skipped")
    func corruptMixupPartner() throws {
        let dir = try TemporaryDirectory()
        let ds0 = try smallDataset(dir, shardBytes: 1 << 30)
        let damaged = Set(ds0.readers[0].entries.indices.filter { $0 % 3 == 0 })
        let url = try corruptFrames(of: ds0.readers[0], where: damaged.contains)
        let ds = try ShardDataset(urls: [url])
        let plain = AugmentOptions(horizontalFlip: false, verticalFlip: false, rotate90: false)
        var mixing = plain
        mixing.mixupAlpha = 1
        func epoch(_ options: AugmentOptions) throws -> LoadedBatch {
            try BatchLoader(dataset: ds, transform: PairedTransform(augment: options, factor: 1), seed: 5, globalBatch: ds.count, rank: 0,
                            worldSize: 1, cursor: DataCursor(), withLowResolution: false, policy: .skip).next()
        }
        let mixed = try epoch(mixing), reference = try epoch(plain)
        #expect(mixed.count == ds.count - damaged.count && mixed.skipped.count == damaged.count)
        #expect(mixed.samples == reference.samples)
        let order = EpochPlan(count: ds.count, seed: 5, epoch: 0, globalBatch: ds.count).order
        let size = 3 * 32 * 32
        var unblended = 0
        for (j, sample) in mixed.samples.enumerated() {
            let position = try #require(order.firstIndex(of: sample))
            let draw = try #require(MixupDraw(alpha: 1, seed: 5, epoch: 0, position: position, tiles: ds.count))
            let view = Array(mixed.hr[(j * size)..<((j + 1) * size)]), own = Array(reference.hr[(j * size)..<((j + 1) * size)])
            if damaged.contains(ds.addresses[draw.partner].index) {
                unblended += 1
                #expect(mixed.mixWeights[j] == 1 && mixed.mixPartnerLabels[j] == ds.entry(sample).label && view == own)
            } else {
                #expect(mixed.mixWeights[j] == draw.lambda && mixed.mixPartnerLabels[j] == ds.entry(draw.partner).label)
            }
        }
        #expect(unblended > 0, "some healthy tile drew a damaged partner")
    }

    @Test("a global batch smaller than the number of ranks is refused with a hint; an uneven split covers the batch")
    func badBatch() throws {
        let dir = try TemporaryDirectory()
        let ds = try smallDataset(dir)
        let e = #expect(throws: ShardError.self) {
            _ = try BatchLoader(dataset: ds, transform: PairedTransform(augment: .none, factor: 1), seed: 0, globalBatch: 2, rank: 0,
                                worldSize: 3, cursor: DataCursor(), withLowResolution: false)
        }
        #expect(e?.message.contains("at least the number of ranks") == true, "\(String(describing: e))")
        // A batch of 5 on 2 ranks: 2 + 3 tiles, together the single-process batch.
        let parts = try (0..<2).map { r in
            try BatchLoader(dataset: ds, transform: PairedTransform(augment: .none, factor: 1), seed: 0, globalBatch: 5, rank: r,
                            worldSize: 2, cursor: DataCursor(), withLowResolution: false).next()
        }
        let whole = try BatchLoader(dataset: ds, transform: PairedTransform(augment: .none, factor: 1), seed: 0, globalBatch: 5, rank: 0,
                                    worldSize: 1, cursor: DataCursor(), withLowResolution: false).next()
        #expect(parts.map(\.count) == [2, 3])
        #expect(parts[0].samples + parts[1].samples == whole.samples && parts[0].hr + parts[1].hr == whole.hr)
    }

    @Test("channel statistics equal a direct computation")
    func statistics() throws {
        let dir = try TemporaryDirectory()
        let ds = try smallDataset(dir, count: 5)
        let stats = try ChannelStatistics.compute(ds)
        var values: [[Double]] = [[], [], []]
        for a in ds.addresses {
            let px = try ds.readers[a.shard].tile(a.index)
            for i in 0..<px.count { values[i % 3].append(Double(px[i]) / 255) }
        }
        for c in 0..<3 {
            let mean = values[c].reduce(0, +) / Double(values[c].count)
            let std = (values[c].map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values[c].count)).squareRoot()
            #expect(abs(stats.mean[c] - mean) < 1e-9 && abs(stats.std[c] - std) < 1e-6, "channel \(c)")
        }
        #expect(stats.tiles == 5)
    }
}

@Suite("Bicubic LR")
struct BicubicLRTests {
    @Test("LR by bicubic resize to any size; the loader delivers tiles of that edge")
    func bicubicLR() throws {
        let dir = try TemporaryDirectory()
        let ds = try smallDataset(dir, count: 6)
        var t = PairedTransform(augment: .none, factor: 1)
        t.bicubicSize = 11
        let loader = try BatchLoader(dataset: ds, transform: t, seed: 0, globalBatch: 2, rank: 0, worldSize: 1, cursor: DataCursor(),
                                     withLowResolution: true, shuffle: false)
        let b = try loader.next()
        #expect(b.lowSize == 11 && b.lr.count == 2 * 3 * 11 * 11)
        // A constant image stays constant under bicubic resizing (the weights sum to 1).
        let flat = [UInt8](repeating: 128, count: 16 * 16 * 3)
        var hr = [Float](repeating: 0, count: 3 * 256), lr = [Float](repeating: 0, count: 3 * 121)
        flat.withUnsafeBufferPointer { t.apply(rgb: $0.baseAddress!, width: 16, height: 16, draw: AugmentDraw(), hr: &hr, lr: &lr) }
        #expect(lr.allSatisfy { abs($0 - 128.0 / 255) < 1e-5 })
    }
}

@Suite("HED stain jitter")
struct HEDTests {
    nonisolated(unsafe) static let fixture: [String: Any] = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/hed.json")
        return (try? JSONSerialization.jsonObject(with: Data(contentsOf: url))) as? [String: Any] ?? [:]
    }()
    static func rows(_ key: String) -> [[Float]] { (fixture[key] as! [[Any]]).map { $0.map { ($0 as! NSNumber).floatValue } } }

    @Test("rgb2hed and hed2rgb equal scikit-image's; RGB -> HED -> RGB round-trips H&E colours; the jitter equals skimage's hed2rgb(alpha * hed + beta)")
    func againstScikitImage() {
        let rgb = Self.rows("rgb"), hed = Self.rows("hed"), back = Self.rows("back"), jittered = Self.rows("jittered")
        let alpha = (Self.fixture["alpha"] as! [Any]).map { ($0 as! NSNumber).floatValue }, beta = (Self.fixture["beta"] as! [Any]).map { ($0 as! NSNumber).floatValue }
        for (i, c) in rgb.enumerated() {
            let h = HEDOps.toHED((c[0], c[1], c[2]))
            #expect(abs(h.0 - hed[i][0]) < 1e-5 && abs(h.1 - hed[i][1]) < 1e-5 && abs(h.2 - hed[i][2]) < 1e-5, "\(c): \(h) vs \(hed[i])")
            let r = HEDOps.toRGB(h)
            #expect(abs(r.0 - back[i][0]) < 1e-5 && abs(r.1 - back[i][1]) < 1e-5 && abs(r.2 - back[i][2]) < 1e-5, "\(c) back: \(r) vs \(back[i])")
        }
        // H&E colours (every stain positive) come back as they were.
        for c in rgb.prefix(4) + [rgb[7]] {
            let r = HEDOps.toRGB(HEDOps.toHED((c[0], c[1], c[2])))
            #expect(abs(r.0 - c[0]) < 1e-5 && abs(r.1 - c[1]) < 1e-5 && abs(r.2 - c[2]) < 1e-5)
        }
        // The jitter over a CHW image of the fixture's colours.
        let n = rgb.count
        var chw = [Float](repeating: 0, count: 3 * n)
        for (i, c) in rgb.enumerated() { chw[i] = c[0]; chw[n + i] = c[1]; chw[2 * n + i] = c[2] }
        chw.withUnsafeMutableBufferPointer { HEDOps.jitter($0.baseAddress!, plane: n, alpha: alpha, beta: beta) }
        for i in 0..<n {
            #expect(abs(chw[i] - jittered[i][0]) < 1e-5 && abs(chw[n + i] - jittered[i][1]) < 1e-5 && abs(chw[2 * n + i] - jittered[i][2]) < 1e-5,
                    "pixel \(i): \([chw[i], chw[n + i], chw[2 * n + i]]) vs \(jittered[i])")
        }
    }

    @Test("the jitter is drawn after the colour jitter: draws without it are unchanged; with it, factors within 1 ± θ and offsets within ± θ")
    func draws() {
        var a = SplitMix64(seed: 5), b = SplitMix64(seed: 5)
        let plain = AugmentDraw(AugmentOptions(brightness: 0.2, hue: 0.05), square: true, using: &a)
        let stained = AugmentDraw(AugmentOptions(brightness: 0.2, hue: 0.05, hedJitter: 0.05), square: true, using: &b)
        #expect(plain.brightness == stained.brightness && plain.hue == stained.hue && plain.order == stained.order && plain.hedAlpha == nil)
        #expect(stained.hedAlpha!.allSatisfy { abs($0 - 1) <= 0.05 } && stained.hedBeta!.allSatisfy { abs($0) <= 0.05 })
    }
}

@Suite("Random resized crop and Gaussian blur")
struct CropBlurTests {
    nonisolated(unsafe) static let fixture: [String: Any] = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/crop_blur.json")
        return (try? JSONSerialization.jsonObject(with: Data(contentsOf: url))) as? [String: Any] ?? [:]
    }()
    static func floats(_ v: Any?) -> [Float] { (v as! [Any]).map { ($0 as! NSNumber).floatValue } }
    static func cases(_ key: String) -> [[String: Any]] { fixture[key] as! [[String: Any]] }

    @Test("the crop resized back equals torchvision's resized_crop (bilinear, antialias) for every box, on a 16 x 12 image")
    func cropAgainstTorchvision() {
        let image = Self.floats(Self.fixture["image"]), w = 16, h = 12
        #expect(Self.cases("crops").count == 5)
        for c in Self.cases("crops") {
            let b = (c["box"] as! [Any]).map { ($0 as! NSNumber).intValue }, want = Self.floats(c["out"])
            var x = image
            x.withUnsafeMutableBufferPointer { CropBox(top: b[0], left: b[1], height: b[2], width: b[3]).resize($0.baseAddress!, width: w, height: h) }
            let worst = zip(x, want).map { abs($0 - $1) }.max()!
            #expect(worst < 1e-5, "box \(b): largest difference \(worst)")
        }
    }

    @Test("the blur equals torchvision's gaussian_blur (reflect padding) for kernels 3 to 13 and sigmas 0.5 to 2")
    func blurAgainstTorchvision() {
        let image = Self.floats(Self.fixture["image"])
        #expect(Self.cases("blurs").count == 4)
        for c in Self.cases("blurs") {
            let k = (c["kernel"] as! NSNumber).intValue, sigma = (c["sigma"] as! NSNumber).floatValue, want = Self.floats(c["out"])
            var x = image
            x.withUnsafeMutableBufferPointer { GaussianBlur.apply($0.baseAddress!, width: 16, height: 12, kernelSize: k, sigma: sigma) }
            let worst = zip(x, want).map { abs($0 - $1) }.max()!
            #expect(worst < 1e-5, "kernel \(k), sigma \(sigma): largest difference \(worst)")
        }
    }

    @Test("crop boxes follow RandomResizedCrop.get_params: area share in scale, ratio in (3/4, 4/3), inside the tile; the central fallback")
    func cropBoxes() {
        var g = SplitMix64(seed: 11)
        var smallest: Float = 1
        for _ in 0..<2000 {
            let b = CropBox.random(width: 224, height: 224, scale: (0.3, 1), ratio: (3.0 / 4, 4.0 / 3), using: &g)
            let share = Float(b.width * b.height) / Float(224 * 224), ratio = Float(b.width) / Float(b.height)
            smallest = min(smallest, share)
            #expect(b.top >= 0 && b.left >= 0 && b.top + b.height <= 224 && b.left + b.width <= 224)
            #expect(share >= 0.3 - 0.01 && share <= 1, "share \(share)")
            #expect(ratio >= 0.75 * 0.98 && ratio <= 4.0 / 3 * 1.02, "ratio \(ratio)")
        }
        #expect(smallest < 0.35, "small crops are drawn too")
        // A 100 x 10 strip cannot hold a crop of ratio at most 4/3 with 99.9% of its area: the central fallback,
        // clamped to the largest ratio (torchvision: h = 10, w = round(10 * 4/3)).
        let fallback = CropBox.random(width: 100, height: 10, scale: (0.999, 1), ratio: (3.0 / 4, 4.0 / 3), using: &g)
        #expect(fallback == CropBox(top: 0, left: 43, height: 10, width: 13))
    }

    @Test("crop and blur are drawn after every other choice (runs without them draw as before) and the student's view is made from the cropped, blurred tile")
    func pairedViews() {
        let plainOptions = AugmentOptions(brightness: 0.2, hue: 0.05, hedJitter: 0.02)
        var withBoth = plainOptions
        withBoth.cropScale = 0.4; withBoth.blurProbability = 1; withBoth.blurSigma = 1.5
        var a = SplitMix64(seed: 9), b = SplitMix64(seed: 9)
        let plain = AugmentDraw(plainOptions, square: true, width: 32, height: 32, using: &a)
        let both = AugmentDraw(withBoth, square: true, width: 32, height: 32, using: &b)
        #expect(plain.crop == nil && plain.blurSigma == nil)
        #expect(plain.hflip == both.hflip && plain.rotations == both.rotations && plain.brightness == both.brightness && plain.hedAlpha == both.hedAlpha)
        #expect(both.crop != nil && both.blurSigma.map { $0 >= 0.1 && $0 <= 1.5 } == true && both.blurKernel == 11)
        // The views: LR is the area average of the final HR (mean 0, std 1 keeps values comparable).
        var g = SplitMix64(seed: 4)
        let rgb = (0..<(32 * 32 * 3)).map { _ in UInt8(truncatingIfNeeded: g.next()) }
        let t = PairedTransform(augment: withBoth, factor: 4)
        var hr = [Float](repeating: 0, count: 3 * 32 * 32), lr = [Float](repeating: 0, count: 3 * 8 * 8)
        rgb.withUnsafeBufferPointer { t.apply(rgb: $0.baseAddress!, width: 32, height: 32, draw: both, hr: &hr, lr: &lr) }
        var expected = [Float](repeating: 0, count: 3 * 8 * 8)
        hr.withUnsafeBufferPointer { AreaDownsample.apply($0.baseAddress!, width: 32, height: 32, factor: 4, into: &expected) }
        #expect(zip(lr, expected).map { abs($0 - $1) }.max()! < 1e-6)
        // ...and the crop and the blur changed the tile: without them the same draw gives another HR.
        var bare = both
        bare.crop = nil; bare.blurSigma = nil
        var hr2 = hr
        rgb.withUnsafeBufferPointer { t.apply(rgb: $0.baseAddress!, width: 32, height: 32, draw: bare, hr: &hr2, lr: nil) }
        #expect(zip(hr, hr2).map { abs($0 - $1) }.max()! > 0.05)
        // A blur smooths: neighbouring pixels differ less than in the unblurred tile.
        func roughness(_ x: [Float]) -> Float { (1..<(32 * 32)).map { abs(x[$0] - x[$0 - 1]) }.reduce(0, +) }
        var blurOnly = bare
        blurOnly.blurSigma = 1.5; blurOnly.blurKernel = 11
        var hr3 = hr
        rgb.withUnsafeBufferPointer { t.apply(rgb: $0.baseAddress!, width: 32, height: 32, draw: blurOnly, hr: &hr3, lr: nil) }
        #expect(roughness(hr3) < 0.5 * roughness(hr2))
    }
}

@Suite("Mixup")
struct MixupTests {
    @Test("Gamma and Beta samples have the distributions' mean and variance (numpy.random.beta's definition), and Beta lies in [0, 1]",
          arguments: [0.2, 1.0, 4.0])
    func betaMoments(_ alpha: Double) {
        var g = SplitMix64(seed: 11)
        let n = 40_000
        let b = (0..<n).map { _ in g.beta(alpha, alpha) }
        let mean = b.reduce(0, +) / Double(n), variance = b.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(n)
        #expect(b.allSatisfy { (0...1).contains($0) })
        #expect(abs(mean - 0.5) < 0.01, "mean \(mean)")
        let expected = 1 / (4 * (2 * alpha + 1))   // Var Beta(a, a) = 1 / (4 (2a + 1))
        #expect(abs(variance - expected) < 0.04 * expected, "variance \(variance) vs \(expected)")
        let gammas = (0..<n).map { _ in g.gamma(shape: alpha) }
        let gm = gammas.reduce(0, +) / Double(n), gv = gammas.map { ($0 - gm) * ($0 - gm) }.reduce(0, +) / Double(n)
        #expect(abs(gm - alpha) < 0.03 * alpha && abs(gv - alpha) < 0.06 * alpha, "Gamma(\(alpha)): mean \(gm), variance \(gv)")
    }

    @Test("Beta(α, α) for tiny α (both Gamma draws underflow) is still symmetric: λ near 0 or near 1 with equal odds, mean 1/2, variance 1/(4(2α+1))",
          arguments: [0.001, 0.00001])
    func betaTinyShapes(_ alpha: Double) {
        var g = SplitMix64(seed: 12)
        let n = 40_000
        let b = (0..<n).map { _ in g.beta(alpha, alpha) }
        let mean = b.reduce(0, +) / Double(n), variance = b.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(n)
        let above = Double(b.filter { $0 > 0.5 }.count) / Double(n)
        #expect(b.allSatisfy { (0...1).contains($0) })
        #expect(abs(above - 0.5) < 0.015, "P(λ > 1/2) = \(above)")
        #expect(abs(mean - 0.5) < 0.015, "mean \(mean)")
        let expected = 1 / (4 * (2 * alpha + 1))
        #expect(abs(variance - expected) < 0.02 * expected, "variance \(variance) vs \(expected)")
    }

    @Test("each tile is round(λ a + (1 - λ) b) with its drawn partner, blended before the colour jitter; the LR view is made from the blend; ranks together equal one rank; α = 0 leaves the batch unchanged")
    func blendInLoader() throws {
        let dir = try TemporaryDirectory()
        let ds = try smallDataset(dir)
        var options = AugmentOptions(horizontalFlip: false, verticalFlip: false, rotate90: false, brightness: 0.3, mixupAlpha: 1)
        let t = PairedTransform(augment: options, factor: 4)
        let single = try BatchLoader(dataset: ds, transform: t, seed: 5, globalBatch: 6, rank: 0, worldSize: 1, cursor: DataCursor(),
                                     withLowResolution: true, workers: 2)
        let parts = try (0..<2).map { r in try BatchLoader(dataset: ds, transform: t, seed: 5, globalBatch: 6, rank: r, worldSize: 2,
                                                           cursor: DataCursor(), withLowResolution: true, workers: 1) }
        func tile(_ sample: Int) throws -> [UInt8] {
            var rgb = [UInt8](repeating: 0, count: 32 * 32 * 3)
            let a = ds.addresses[sample]
            try rgb.withUnsafeMutableBufferPointer { try ds.readers[a.shard].readTile(a.index, into: $0.baseAddress!, capacity: $0.count, context: TileDecompressor()) }
            return rgb
        }
        var lambdas: [Float] = []
        for step in 0..<4 {   // crosses the epoch boundary (23 tiles, 3 steps per epoch)
            let batch = try single.next()
            let pieces = try parts.map { try $0.next() }
            #expect(pieces.flatMap(\.hr) == batch.hr && pieces.flatMap(\.lr) == batch.lr)
            for j in 0..<batch.count {
                let position = (step % 3) * 6 + j
                let mix = try #require(MixupDraw(alpha: 1, seed: 5, epoch: batch.epoch, position: position, tiles: ds.count))
                lambdas.append(mix.lambda)
                #expect(batch.mixWeights[j] == mix.lambda && batch.mixPartnerLabels[j] == ds.entry(mix.partner).label)
                let a = try tile(batch.samples[j]), b = try tile(mix.partner)
                let blended = (0..<a.count).map { UInt8((Double(mix.lambda) * Double(a[$0]) + Double(1 - mix.lambda) * Double(b[$0])).rounded()) }
                var g = SplitMix64.stream(5, 0xA06, UInt64(batch.epoch), UInt64(position))
                let draw = AugmentDraw(options, square: true, width: 32, height: 32, using: &g)
                var hr = [Float](repeating: 0, count: 3 * 32 * 32), lr = [Float](repeating: 0, count: 3 * 8 * 8)
                blended.withUnsafeBufferPointer { t.apply(rgb: $0.baseAddress!, width: 32, height: 32, draw: draw, hr: &hr, lr: &lr) }
                #expect(maxAbs(hr, Array(batch.hr[(j * hr.count)..<((j + 1) * hr.count)])) < 1e-6, "step \(step) tile \(j)")
                #expect(maxAbs(lr, Array(batch.lr[(j * lr.count)..<((j + 1) * lr.count)])) < 1e-6, "step \(step) tile \(j)")
            }
        }
        #expect(lambdas.contains { $0 < 0.3 } && lambdas.contains { $0 > 0.7 }, "λ ~ U(0, 1) for α = 1: \(lambdas)")
        options.mixupAlpha = 0
        let plain = try BatchLoader(dataset: ds, transform: PairedTransform(augment: options, factor: 4), seed: 5, globalBatch: 6, rank: 0, worldSize: 1,
                                    cursor: DataCursor(), withLowResolution: true)
        let reference = try BatchLoader(dataset: ds, transform: PairedTransform(augment: AugmentOptions(horizontalFlip: false, verticalFlip: false, rotate90: false, brightness: 0.3), factor: 4),
                                        seed: 5, globalBatch: 6, rank: 0, worldSize: 1, cursor: DataCursor(), withLowResolution: true)
        let plainBatch = try plain.next()
        #expect(plainBatch.hr == (try reference.next().hr))
        #expect(plainBatch.mixWeights.isEmpty && plainBatch.mixPartnerLabels.isEmpty)
        #expect(MixupDraw(alpha: 0, seed: 5, epoch: 0, position: 0, tiles: 23) == nil)
    }

    @Test("supervised mixup draws partners among the labeled tiles only (the k-th drawn index maps to the k-th labeled tile), distillation's among all; a dataset with no labeled tile is refused")
    func labeledPartners() throws {
        let dir = try TemporaryDirectory()
        let input = dir.url.appendingPathComponent("in")
        var files: [(URL, Int32)] = []
        for i in 0..<20 {
            let url = input.appendingPathComponent(String(format: "%03d.png", i))
            try FileManager.default.createDirectory(at: input, withIntermediateDirectories: true)
            try ImageCodec.writePNG(syntheticImage(width: 32, height: 32, seed: i), to: url)
            files.append((url, i % 4 == 0 ? Int32(i % 3) : -1))   // 5 labeled tiles, 15 unlabeled
        }
        let manifest = dir.url.appendingPathComponent("m.csv")
        try ("path,label\n" + files.map { "\($0.0.path),\($0.1 >= 0 ? "c\($0.1)" : "")" }.joined(separator: "\n") + "\n")
            .write(to: manifest, atomically: true, encoding: .utf8)
        _ = try Packer.pack(try PackPlan.manifest(manifest), options: PackOptions(output: dir.url.appendingPathComponent("out")))
        let ds = try ShardDataset(directory: dir.url.appendingPathComponent("out"))
        let labeled = (0..<ds.count).filter { ds.entry($0).label >= 0 }
        #expect(labeled.count == 5)
        let t = PairedTransform(augment: AugmentOptions(horizontalFlip: false, verticalFlip: false, rotate90: false, mixupAlpha: 1), factor: 1)
        let supervised = try BatchLoader(dataset: ds, transform: t, seed: 3, globalBatch: 10, rank: 0, worldSize: 1, cursor: DataCursor(),
                                         withLowResolution: false, labeledMixupPartners: true)
        let distill = try BatchLoader(dataset: ds, transform: t, seed: 3, globalBatch: 10, rank: 0, worldSize: 1, cursor: DataCursor(),
                                      withLowResolution: false)
        var distillPartnerLabels: [Int32] = []
        for step in 0..<4 {   // two epochs of two steps
            let a = try supervised.next(), b = try distill.next()
            for j in 0..<a.count {
                let position = (step % 2) * 10 + j
                let drawn = try #require(MixupDraw(alpha: 1, seed: 3, epoch: a.epoch, position: position, tiles: labeled.count))
                #expect(a.mixPartnerLabels[j] == ds.entry(labeled[drawn.partner]).label && a.mixPartnerLabels[j] >= 0)
                #expect(a.mixWeights[j] == drawn.lambda)
            }
            distillPartnerLabels += b.mixPartnerLabels
        }
        #expect(distillPartnerLabels.contains(-1), "distillation blends with unlabeled tiles too")
        let none = dir.url.appendingPathComponent("none.csv")
        try ("path,label\n" + files.map { "\($0.0.path)," }.joined(separator: "\n") + "\n").write(to: none, atomically: true, encoding: .utf8)
        _ = try Packer.pack(try PackPlan.manifest(none), options: PackOptions(output: dir.url.appendingPathComponent("none")))
        let unlabeled = try ShardDataset(directory: dir.url.appendingPathComponent("none"))
        #expect(throws: ShardError.self) {
            _ = try BatchLoader(dataset: unlabeled, transform: t, seed: 3, globalBatch: 10, rank: 0, worldSize: 1, cursor: DataCursor(),
                                withLowResolution: false, labeledMixupPartners: true)
        }
    }
}
