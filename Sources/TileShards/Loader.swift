// The training data stream of one rank: decompression, augmentation and downsampling on background threads,
// a bounded queue of ready batches, corrupt tiles stopped or skipped and counted.
import Dispatch
import Foundation
import TensorCore

/// What to do with a corrupt tile met while training.
public enum CorruptTilePolicy: String, Codable, Sendable, CaseIterable {
    /// Stop with an error naming the file and the tile.
    case stop
    /// Leave the tile out of its batch and count it.
    case skip
}

/// One rank's share of one global batch, ready for the models.
public struct LoadedBatch: Sendable {
    public var epoch: Int
    public var step: Int
    /// Tiles in this batch (a skipped corrupt tile makes it smaller).
    public var count: Int
    /// (count, 3, size, size) normalised HR tiles.
    public var hr: [Float]
    /// (count, 3, size/factor, size/factor) normalised LR tiles, empty when not requested.
    public var lr: [Float]
    public var labels: [Int32]
    public var ids: [UInt64]
    /// Dataset index (position in `ShardDataset.addresses`) of each tile.
    public var samples: [Int]
    /// HR tile edge and LR tile edge.
    public var size: Int, lowSize: Int
    /// Corrupt tiles skipped while making this batch (file and tile of each).
    public var skipped: [String]
    /// Further views downsampled by other factors (factor -> (count, 3, size/factor, size/factor)), made like `lr`
    /// from the same augmented tiles: several students of one teacher in one pass.
    public var extraViews: [Int: [Float]] = [:]
    /// Mixup (`AugmentOptions.mixupAlpha` > 0): the label of the tile each tile was blended with (-1: unlabeled) and
    /// the weight λ of the tile's own pixels, one each per tile; empty without mixup.
    public var mixPartnerLabels: [Int32] = []
    public var mixWeights: [Float] = []

    /// The tiles a model that sees `inputFactor`-times downsampled tiles takes: the LR tiles and their edge when
    /// the factor is above 1, else the HR tiles. The one place that choice is made.
    public func modelView(inputFactor: Int) -> (tiles: [Float], edge: Int) {
        if let view = extraViews[inputFactor] { return (view, size / inputFactor) }
        return inputFactor > 1 ? (lr, lowSize) : (hr, size)
    }
}

/// Builds one rank's batches; a value shared by the loader and its background thread.
public struct BatchMaker: @unchecked Sendable {
    public let dataset: ShardDataset
    public let transform: PairedTransform
    public let seed: UInt64
    public let globalBatch: Int
    public let rank: Int, worldSize: Int
    public let withLowResolution: Bool
    public let policy: CorruptTilePolicy
    public let shuffle: Bool
    public let tileSize: Int
    public let workers: Int
    /// Factors of the further area-downsampled views (`LoadedBatch.extraViews`).
    public let extraFactors: [Int]
    /// False: batches carry no full-resolution tiles (`hr` empty) when the low-resolution view is made, as
    /// inference of a student needs only that view (the full-resolution tile is then a per-thread scratch).
    public var keepHighResolution = true
    /// Under mixup, the tiles a partner is drawn from: nil for all of them (distillation, where labels play no
    /// part), the labeled ones for supervised training (`labeledMixupPartners`), so every blend has two labels.
    public let mixupPartners: [Int]?

    /// Checks that the data fits: square tiles of one size, divisible by the LR factor, and a global batch of
    /// at least one tile per rank (an uneven split is fine: the trainer weights each rank by its tile count).
    public init(dataset: ShardDataset, transform: PairedTransform, seed: UInt64, globalBatch: Int, rank: Int, worldSize: Int,
                withLowResolution: Bool, policy: CorruptTilePolicy = .stop, shuffle: Bool = true, workers: Int = 1, extraFactors: [Int] = [],
                labeledMixupPartners: Bool = false) throws {
        guard globalBatch >= worldSize, worldSize > 0 else {
            throw ShardError("global batch \(globalBatch) gives no tile to some of the \(worldSize) ranks. Hint: raise train.batch_size to at least the number of ranks.")
        }
        guard dataset.count >= globalBatch else {
            throw ShardError("the dataset holds \(dataset.count) tiles, fewer than one global batch of \(globalBatch). Hint: lower batch_size.")
        }
        let e0 = dataset.entry(0)
        for t in 0..<dataset.count {
            let e = dataset.entry(t)
            guard e.width == e0.width && e.height == e0.height && e.width == e.height else {
                let r = dataset.readers[dataset.addresses[t].shard]
                throw ShardError("\(r.url.path): tile \(dataset.addresses[t].index) is \(e.width)x\(e.height) but training needs square tiles of one size (\(e0.width)x\(e0.height)). Hint: repack with one tile size.")
            }
        }
        let tileSize = Int(e0.width)
        guard transform.bicubicSize != nil || tileSize % transform.factor == 0 else {
            throw ShardError("tile size \(tileSize) is not divisible by the downsampling factor \(transform.factor).")
        }
        for f in extraFactors where ![2, 4, 8, 16].contains(f) || tileSize % f != 0 {
            throw ShardError("tile size \(tileSize) is not divisible by the downsampling factor \(f) (2, 4, 8 or 16).")
        }
        self.dataset = dataset; self.transform = transform; self.seed = seed; self.globalBatch = globalBatch
        self.rank = rank; self.worldSize = worldSize; self.withLowResolution = withLowResolution; self.policy = policy
        self.shuffle = shuffle; self.tileSize = tileSize; self.workers = max(1, workers)
        self.extraFactors = Array(Set(extraFactors.filter { $0 != (withLowResolution ? transform.factor : 1) })).sorted()
        if labeledMixupPartners && transform.augment.mixupAlpha > 0 {
            let labeled = (0..<dataset.count).filter { dataset.entry($0).label >= 0 }
            guard !labeled.isEmpty else { throw ShardError("mixup with labels needs labeled tiles, and the training data holds none.") }
            mixupPartners = labeled
        } else {
            mixupPartners = nil
        }
    }

    /// A batch of the samples at `range` of `plan.order` (all of them, whatever the rank): for evaluation.
    public func makeBatchAt(plan: EpochPlan, range: Range<Int>) throws -> LoadedBatch {
        try makeBatch(plan: plan, positions: Array(range), step: 0)
    }

    /// Builds this rank's share of `step`: each sample's augmentation stream depends only on (seed, epoch,
    /// position in the epoch), so any rank and any thread makes the same tile the same way.
    public func makeBatch(plan: EpochPlan, step: Int) throws -> LoadedBatch {
        try makeBatch(plan: plan, positions: Array(plan.positions(step: step, rank: rank, worldSize: worldSize)), step: step)
    }

    func makeBatch(plan: EpochPlan, positions: [Int], step: Int) throws -> LoadedBatch {
        let n = positions.count, s = tileSize, ls = transform.lowSize(for: tileSize)
        let scratchHR = withLowResolution && !keepHighResolution
        var hr = [Float](repeating: 0, count: scratchHR ? 0 : n * 3 * s * s)
        var lr = [Float](repeating: 0, count: withLowResolution ? n * 3 * ls * ls : 0)
        var errors = [String?](repeating: nil, count: n)
        let mixing = transform.augment.mixupAlpha > 0
        var partnerLabels = [Int32](repeating: -1, count: mixing ? n : 0)
        var mixWeights = [Float](repeating: 1, count: mixing ? n : 0)
        let hrSize = 3 * s * s, lrSize = 3 * ls * ls
        // Extra views: one buffer per factor, filled by the same workers with the main views.
        let extraSizes = extraFactors.map { 3 * (s / $0) * (s / $0) }
        let extra = extraSizes.map { UnsafeMutableBufferPointer<Float>.allocate(capacity: n * $0) }
        defer { for b in extra { b.deallocate() } }
        hr.withUnsafeMutableBufferPointer { hrb in
            lr.withUnsafeMutableBufferPointer { lrb in
                errors.withUnsafeMutableBufferPointer { eb in
                  partnerLabels.withUnsafeMutableBufferPointer { plb in
                   mixWeights.withUnsafeMutableBufferPointer { mwb in
                    // An empty array may still have a base address: only hand out an LR pointer when LR is wanted.
                    nonisolated(unsafe) let hrp = hrb.baseAddress, lrp = withLowResolution ? lrb.baseAddress : nil, ep = eb.baseAddress!
                    nonisolated(unsafe) let plp = plb.baseAddress, mwp = mwb.baseAddress
                    nonisolated(unsafe) let extraBase = extra.map { $0.baseAddress! }
                    let w = min(workers, n)
                    DispatchQueue.concurrentPerform(iterations: w) { k in
                        let ctx = TileDecompressor()
                        var rgb = [UInt8](repeating: 0, count: s * s * 3)
                        var partner = [UInt8](repeating: 0, count: transform.augment.mixupAlpha > 0 ? s * s * 3 : 0)
                        var scratch = [Float](repeating: 0, count: scratchHR ? hrSize : 0)
                        for j in stride(from: k, to: n, by: w) {
                            let sample = plan.order[positions[j]]
                            let address = dataset.addresses[sample]
                            do {
                                try rgb.withUnsafeMutableBufferPointer {
                                    try dataset.readers[address.shard].readTile(address.index, into: $0.baseAddress!, capacity: $0.count, context: ctx)
                                }
                                if let mix = MixupDraw(alpha: transform.augment.mixupAlpha, seed: seed, epoch: plan.epoch,
                                                       position: positions[j], tiles: mixupPartners?.count ?? dataset.count) {
                                    let partnerSample = mixupPartners?[mix.partner] ?? mix.partner
                                    let other = dataset.addresses[partnerSample]
                                    do {
                                        try partner.withUnsafeMutableBufferPointer {
                                            try dataset.readers[other.shard].readTile(other.index, into: $0.baseAddress!, capacity: $0.count, context: ctx)
                                        }
                                        plp![j] = dataset.entry(partnerSample).label
                                        mwp![j] = mix.lambda
                                        rgb.withUnsafeMutableBufferPointer { a in
                                            partner.withUnsafeBufferPointer { mix.blend(a.baseAddress!, with: $0.baseAddress!, count: a.count) }
                                        }
                                    } catch where policy == .skip {
                                        // A damaged partner does not cost the healthy tile its place: it stays unblended
                                        // (λ = 1, its own label). The damaged tile is warned about where it is read as
                                        // a sample of its own.
                                        plp![j] = dataset.entry(sample).label
                                        mwp![j] = 1
                                    }
                                }
                            } catch {
                                ep[j] = "\(error)"
                                continue
                            }
                            var g = SplitMix64.stream(seed, 0xA06, UInt64(plan.epoch), UInt64(positions[j]))
                            let draw = AugmentDraw(transform.augment, square: true, width: s, height: s, using: &g)
                            rgb.withUnsafeBufferPointer { px in
                                scratch.withUnsafeMutableBufferPointer { sb in
                                    transform.apply(rgb: px.baseAddress!, width: s, height: s, draw: draw,
                                                    hr: scratchHR ? sb.baseAddress! : hrp! + j * hrSize,
                                                    lr: lrp.map { $0 + j * lrSize },
                                                    extra: extraFactors.indices.map { (extraFactors[$0], extraBase[$0] + j * extraSizes[$0]) },
                                                    normalizeHighResolution: !scratchHR)
                                }
                            }
                        }
                    }
                   }
                  }
                }
            }
        }
        var keep: [Int] = []
        var skipped: [String] = []
        for j in 0..<n {
            if let e = errors[j] {
                if policy == .stop { throw ShardError(e) }
                skipped.append(e)
            } else {
                keep.append(j)
            }
        }
        var batch = LoadedBatch(epoch: plan.epoch, step: step, count: keep.count, hr: [], lr: [], labels: [], ids: [],
                                samples: [], size: s, lowSize: ls, skipped: skipped)
        if keep.count == n {
            batch.hr = hr; batch.lr = lr
        } else {
            for j in keep {
                if !scratchHR { batch.hr += hr[(j * hrSize)..<((j + 1) * hrSize)] }
                if withLowResolution { batch.lr += lr[(j * lrSize)..<((j + 1) * lrSize)] }
            }
        }
        for (i, f) in extraFactors.enumerated() {
            batch.extraViews[f] = keep.flatMap { j in UnsafeBufferPointer(rebasing: extra[i][(j * extraSizes[i])..<((j + 1) * extraSizes[i])]) }
        }
        if mixing {
            batch.mixPartnerLabels = keep.map { partnerLabels[$0] }
            batch.mixWeights = keep.map { mixWeights[$0] }
        }
        for j in keep {
            let e = dataset.entry(plan.order[positions[j]])
            batch.labels.append(e.label)
            batch.ids.append(e.id)
            batch.samples.append(plan.order[positions[j]])
        }
        return batch
    }
}

/// The bounded queue between the background thread and the consumer (a condition variable: dispatch
/// semaphores must not be released while a waiter owes them a signal).
final class BatchChannel: @unchecked Sendable {
    private let condition = NSCondition()
    private var buffer: [Result<LoadedBatch, Error>] = []
    private var stopped = false
    private let depth: Int

    init(depth: Int) { self.depth = max(1, depth) }

    /// Waits for room and appends; false when the loader was stopped.
    func put(_ r: Result<LoadedBatch, Error>) -> Bool {
        condition.lock(); defer { condition.unlock() }
        while buffer.count >= depth && !stopped { condition.wait() }
        if stopped { return false }
        buffer.append(r)
        condition.broadcast()
        return true
    }

    /// Removes the next batch when one is there, else nil at once.
    func takeIfReady() -> Result<LoadedBatch, Error>? {
        condition.lock(); defer { condition.unlock() }
        guard !buffer.isEmpty else { return nil }
        let r = buffer.removeFirst()
        condition.broadcast()
        return r
    }

    /// Waits for a batch and removes it.
    func take() -> Result<LoadedBatch, Error> {
        condition.lock(); defer { condition.unlock() }
        while buffer.isEmpty { condition.wait() }
        let r = buffer.removeFirst()
        condition.broadcast()
        return r
    }

    func stop() {
        condition.lock(); stopped = true; condition.broadcast(); condition.unlock()
    }
}

/// Streams batches for one rank from a cursor on, one epoch after another, prefetching `depth` batches on a
/// background thread that spreads each batch's tiles over `workers` threads.
public final class BatchLoader: @unchecked Sendable {
    public let maker: BatchMaker
    private let channel: BatchChannel

    /// Steps in each epoch (the same on every rank).
    public var stepsPerEpoch: Int { maker.dataset.count / maker.globalBatch }

    /// A loader starting at `cursor`. Tiles must be square and of one size, divisible by the LR factor, and
    /// the global batch at least the world size.
    public init(dataset: ShardDataset, transform: PairedTransform, seed: UInt64, globalBatch: Int, rank: Int, worldSize: Int,
                cursor: DataCursor, withLowResolution: Bool, policy: CorruptTilePolicy = .stop, shuffle: Bool = true,
                workers: Int = 1, depth: Int = 2, extraFactors: [Int] = [], labeledMixupPartners: Bool = false) throws {
        let maker = try BatchMaker(dataset: dataset, transform: transform, seed: seed, globalBatch: globalBatch, rank: rank,
                                   worldSize: worldSize, withLowResolution: withLowResolution, policy: policy, shuffle: shuffle,
                                   workers: workers, extraFactors: extraFactors, labeledMixupPartners: labeledMixupPartners)
        let channel = BatchChannel(depth: depth)
        self.maker = maker
        self.channel = channel
        let thread = Thread { BatchLoader.produce(maker: maker, channel: channel, from: cursor) }
        thread.name = "histodistill-loader"
        thread.start()
    }

    deinit { channel.stop() }

    /// The next batch, waiting for it if needed; rethrows a loading error (naming file and tile).
    public func next() throws -> LoadedBatch {
        try channel.take().get()
    }

    /// The next batch (or its loading error) when it is already loaded, else nil without waiting; a batch returned here
    /// is not returned by `next()` again.
    public func nextIfReady() -> Result<LoadedBatch, Error>? {
        channel.takeIfReady()
    }

    private static func produce(maker: BatchMaker, channel: BatchChannel, from start: DataCursor) {
        var cursor = start
        var plan = EpochPlan(count: maker.dataset.count, seed: maker.seed, epoch: cursor.epoch, globalBatch: maker.globalBatch, shuffle: maker.shuffle)
        while true {
            if plan.epoch != cursor.epoch {
                plan = EpochPlan(count: maker.dataset.count, seed: maker.seed, epoch: cursor.epoch, globalBatch: maker.globalBatch, shuffle: maker.shuffle)
            }
            let step = cursor.nextStep(globalBatch: maker.globalBatch)
            let result = Result { try maker.makeBatch(plan: plan, step: step) }
            guard channel.put(result) else { return }
            if case .failure = result { return }
            cursor = cursor.advanced(globalBatch: maker.globalBatch, steps: plan.steps)
        }
    }
}

/// Per-channel mean and standard deviation of tiles in [0, 1] (for normalisation).
public enum ChannelStatistics {
    /// Over every tile (or the first `maxTiles` of a seeded shuffle), accumulated in Double.
    public static func compute(_ dataset: ShardDataset, maxTiles: Int? = nil, seed: UInt64 = 0) throws -> (mean: [Double], std: [Double], tiles: Int) {
        var order = EpochPlan(count: dataset.count, seed: seed, epoch: 0, globalBatch: 1, shuffle: maxTiles != nil).order
        if let maxTiles { order = Array(order.prefix(maxTiles)) }
        var sum = [Double](repeating: 0, count: 3), sq = [Double](repeating: 0, count: 3)
        var pixels = 0
        let ctx = TileDecompressor()
        for t in order {
            let a = dataset.addresses[t]
            let rgb = try dataset.readers[a.shard].tile(a.index, context: ctx)
            for i in stride(from: 0, to: rgb.count, by: 3) {
                for c in 0..<3 {
                    let v = Double(rgb[i + c]) / 255
                    sum[c] += v; sq[c] += v * v
                }
            }
            pixels += rgb.count / 3
        }
        let mean = sum.map { $0 / Double(pixels) }
        let std = (0..<3).map { ((sq[$0] / Double(pixels)) - mean[$0] * mean[$0]).squareRoot() }
        return (mean, std, order.count)
    }
}
