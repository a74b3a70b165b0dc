// Running a model over a whole shard set in order (no augmentation): probabilities, labels, ids and slides,
// for validation, `evaluate` and `predict`.
import Dispatch
import Foundation
import Layers
import TensorCore
import TileShards

/// Per-tile outputs of a model over a dataset, in dataset order.
public struct Predictions: Sendable {
    public var ids: [UInt64] = []
    public var slides: [String] = []
    public var labels: [Int32] = []
    /// Softmax probabilities, one row per tile.
    public var probabilities: [[Double]] = []
    /// Mean cross-entropy over labeled tiles (0 if none).
    public var meanLoss: Double = 0
    /// Tiles with a label (the count `meanLoss` averages over).
    public var labeledCount = 0
    /// Dataset index of each row.
    public var samples: [Int] = []
    /// Pooled feature vectors, one row per tile (`Inference.features` only).
    public var features: [[Float]] = []
    /// Corrupt tiles left out under `CorruptTilePolicy.skip` (file and tile of each).
    public var skipped: [String] = []

    mutating func append(_ b: LoadedBatch, labels: [Int32], dataset: ShardDataset) {
        self.labels += labels
        ids += b.ids
        samples += b.samples
        slides += b.samples.map(dataset.slide)
    }

    /// The predictions as CSV: tile id, slide, label (the name `labelNames` gives the label, empty when
    /// unlabeled), predicted class, and one probability column `p_NAME` per class of the model (`classes`).
    public func csv(classes: [String], labelNames: [String]? = nil) -> String {
        let names = labelNames ?? classes
        let rows = ids.indices.map { i -> [String] in
            let label = labels[i] >= 0 && Int(labels[i]) < names.count ? names[Int(labels[i])] : ""
            let p = probabilities[i]
            let predicted = p.indices.max { p[$0] < p[$1] }.map { classes[$0] } ?? ""
            return ["\(ids[i])", slides[i], label, predicted] + p.map { String(format: "%.6f", $0) }
        }
        return CSVTable.text(header: ["tile_id", "slide", "label", "predicted"] + classes.map { "p_\($0)" }, rows: rows)
    }
}

/// Test-time augmentation: each tile's class probabilities are the mean of the softmax over fixed symmetric views
/// of it, one forward pass per view, so inference costs 4 or 8 times as much. The views are the training
/// augmentation's flips and quarter turns (`SquareSymmetry`), applied to the model's own (possibly downsampled)
/// view of the tile.
public enum TestTimeAugmentation: String, CaseIterable, Sendable {
    /// The tile as it is (one forward pass).
    case none
    /// The identity and the horizontal, vertical and both flips (4 passes).
    case flips
    /// The eight symmetries of the square: four quarter turns, each also mirrored (8 passes).
    case dihedral

    public var views: [SquareSymmetry] {
        switch self {
        case .none: [.identity]
        case .flips: SquareSymmetry.flips
        case .dihedral: SquareSymmetry.dihedral
        }
    }
}

/// How tiles are prepared for a model and batched: the model's input factor and normalisation (from its
/// `RunMetadata`, or a run's config), and the batch size, decoding threads and corrupt-tile policy.
public struct InferenceSettings: Sendable {
    public var inputFactor: Int
    public var mean: [Float], std: [Float]
    public var batchSize: Int
    public var workers: Int
    public var onCorrupt: CorruptTilePolicy
    /// Dataset class index -> model class index (-1: a class the model does not know); nil: the identity.
    public var labelMap: [Int32]?
    /// Called after each batch with (tiles done, tiles in the range) of this process.
    public var progress: (@Sendable (Int, Int) -> Void)?
    /// Views averaged by `Inference.run` (class probabilities); features and training validation use the tile as it is.
    public var testTimeAugmentation = TestTimeAugmentation.none

    public init(inputFactor: Int, mean: [Float], std: [Float], batchSize: Int = 64, workers: Int = 1, onCorrupt: CorruptTilePolicy = .stop,
                labelMap: [Int32]? = nil) {
        self.inputFactor = inputFactor; self.mean = mean; self.std = std; self.batchSize = batchSize; self.workers = workers
        self.onCorrupt = onCorrupt; self.labelMap = labelMap
    }

    /// The settings of a training run's own validation.
    public init(_ config: RunConfig) {
        self.init(inputFactor: config.inputFactor, mean: config.mean, std: config.std, batchSize: config.batchSize, workers: config.workers,
                  onCorrupt: config.onCorrupt)
    }

    /// The settings a trained model describes.
    public init(_ metadata: RunMetadata, batchSize: Int = 64, workers: Int = 1, onCorrupt: CorruptTilePolicy = .stop, labelMap: [Int32]? = nil) {
        self.init(inputFactor: metadata.inputFactor, mean: metadata.mean, std: metadata.std, batchSize: batchSize, workers: workers,
                  onCorrupt: onCorrupt, labelMap: labelMap)
    }
}

extension InferenceSettings {
    /// The model's class index for dataset label `label` (-1 stays -1; a class the model does not know is -1).
    func mapped(_ label: Int32) -> Int32 {
        guard label >= 0, let map = labelMap else { return label }
        return Int(label) < map.count ? map[Int(label)] : -1
    }
}

/// A batch made on the prefetch thread: `result` is set before `ready` is signalled.
final class PrefetchedBatch: @unchecked Sendable {
    var result: Result<LoadedBatch, Error>?
    let ready = DispatchSemaphore(value: 0)
}

/// Runs a model in eval mode over the tiles of a dataset (all of them, or the dataset indices in `range`):
/// class probabilities (`run`) or pooled feature vectors (`features`, for any model, truncated ones included).
public enum Inference {
    /// Calls `body` with each batch (in dataset order, without augmentation) and the model's outputs for it.
    /// With several `views`, the model runs once per view of the batch and `body` is called for each, with the
    /// view's index (the output is only valid inside `body`).
    static func forEachBatch(model: any ImageModel, dataset: ShardDataset, settings: InferenceSettings, range: Range<Int>?,
                             indices: [Int]? = nil, views: [SquareSymmetry] = [.identity],
                             _ body: (LoadedBatch, _ view: Int, ImageModelOutput) throws -> Void) throws -> [String] {
        let range = indices.map { 0..<$0.count } ?? range ?? 0..<dataset.count
        let transform = PairedTransform(augment: .none, factor: settings.inputFactor, mean: settings.mean, std: settings.std)
        let batch = max(1, min(settings.batchSize, dataset.count))
        var maker = try BatchMaker(dataset: dataset, transform: transform, seed: 0, globalBatch: batch, rank: 0, worldSize: 1,
                                   withLowResolution: settings.inputFactor > 1, policy: settings.onCorrupt, shuffle: false,
                                   workers: settings.workers)
        maker.keepHighResolution = false   // the model sees one view only
        // Dataset order, built once (the batch size only matters for EpochPlan's step view, unused here).
        let plan = indices.map { EpochPlan(order: $0, globalBatch: batch) } ?? EpochPlan(count: dataset.count, seed: 0, epoch: 0, globalBatch: batch, shuffle: false)
        let ranges = stride(from: range.lowerBound, to: range.upperBound, by: batch).map { $0..<min($0 + batch, range.upperBound) }
        // The next batch is read and prepared on another thread while the model runs on this one.
        let queue = DispatchQueue(label: "histodistill-inference-prefetch")
        func prefetch(_ r: Range<Int>) -> PrefetchedBatch {
            let p = PrefetchedBatch()
            queue.async { [maker] in
                p.result = Result { try maker.makeBatchAt(plan: plan, range: r) }
                p.ready.signal()
            }
            return p
        }
        var next = ranges.first.map(prefetch)
        var turned: [Float] = [], skipped: [String] = []
        let replicas = EvalReplicas(model)   // each engine thread runs its share of a batch on its own copy
        for (k, r) in ranges.enumerated() {
            guard let current = next else { break }
            current.ready.wait()
            next = k + 1 < ranges.count ? prefetch(ranges[k + 1]) : nil
            let b = try current.result!.get()
            skipped += b.skipped
            if b.count > 0 {   // else every tile of this batch was corrupt and skipped
                let (input, edge) = b.modelView(inputFactor: settings.inputFactor)
                let shape = NCHW(b.count, 3, edge, edge)
                for (v, view) in views.enumerated() {
                    if !view.isIdentity {
                        if turned.count < input.count { turned = [Float](repeating: 0, count: input.count) }
                        input.withUnsafeBufferPointer { x in
                            turned.withUnsafeMutableBufferPointer { view.apply(x.baseAddress!, into: $0.baseAddress!, images: b.count, channels: 3, edge: edge) }
                        }
                    }
                    let result = (view.isIdentity ? input : turned).withUnsafeBufferPointer { replicas.forward($0.baseAddress!, shape: shape) }
                    try body(b, v, result)
                }
            }
            settings.progress?(r.upperBound - range.lowerBound, range.count)
        }
        // A batch still being made when `body` threw finishes on its own; nothing waits for it.
        return skipped
    }

    /// Softmax probabilities over the model's classes for every tile, with labels mapped by `settings.labelMap`.
    /// Throws `TrainingError` for a model without a classifier.
    public static func run(model: any ImageModel, dataset: ShardDataset, settings: InferenceSettings, range: Range<Int>? = nil) throws -> Predictions {
        let classes = model.classes
        guard classes > 0 else { throw TrainingError("the model has no classifier (a truncated feature extractor cannot classify)") }
        var out = Predictions()
        var lossSum = 0.0, labeled = 0
        let views = settings.testTimeAugmentation.views
        var mean: [Double] = []   // the batch's probabilities summed over the views so far
        out.skipped = try forEachBatch(model: model, dataset: dataset, settings: settings, range: range, views: views) { b, view, result in
            if view == 0 { mean = [Double](repeating: 0, count: b.count * classes) }
            var probs = [Float](repeating: 0, count: b.count * classes)
            Softmax.forward(output: &probs, input: result.logits!.data, rows: b.count, cols: classes)
            for j in probs.indices { mean[j] += Double(probs[j]) }
            guard view == views.count - 1 else { return }
            let labels = b.labels.map(settings.mapped)
            for i in 0..<b.count {
                let p = (0..<classes).map { mean[i * classes + $0] / Double(views.count) }
                out.probabilities.append(p)
                // A label outside the model's classes (predict on shards of another class list, no label map)
                // has no probability to score: it counts in no loss.
                if labels[i] >= 0 && Int(labels[i]) < classes {
                    lossSum -= Foundation.log(max(p[Int(labels[i])], 1e-30))
                    labeled += 1
                }
            }
            out.append(b, labels: labels, dataset: dataset)
        }
        out.meanLoss = labeled > 0 ? lossSum / Double(labeled) : 0
        out.labeledCount = labeled
        return out
    }

    /// The globally average-pooled last feature map of every tile, (tiles, featureDimension) row by row in
    /// `Predictions.features` (probabilities stay empty): the patch features of HistoTransfer, for any model.
    /// Over `range` of the dataset, or the tiles at `indices` in that order, or all tiles.
    public static func features(model: any ImageModel, dataset: ShardDataset, settings: InferenceSettings, range: Range<Int>? = nil,
                                indices: [Int]? = nil) throws -> Predictions {
        var out = Predictions()
        let d = model.featureDimension
        out.skipped = try forEachBatch(model: model, dataset: dataset, settings: settings, range: range, indices: indices) { b, _, result in
            for i in 0..<b.count { out.features.append(Array(UnsafeBufferPointer(start: result.pooled.data + i * d, count: d))) }
            out.append(b, labels: b.labels.map(settings.mapped), dataset: dataset)
        }
        return out
    }
}

extension Inference {
    /// `run` split over the ranks of `group`: each rank predicts a contiguous share of the tiles and every rank
    /// receives all predictions, in dataset order (a skipped corrupt tile is absent, as in `run`).
    public static func run(model: any ImageModel, dataset: ShardDataset, settings: InferenceSettings, group: any ProcessGroup) throws -> Predictions {
        guard group.size > 1 else { return try run(model: model, dataset: dataset, settings: settings) }
        let n = dataset.count, classes = model.classes
        let share = (n * group.rank / group.size)..<(n * (group.rank + 1) / group.size)
        let local = share.isEmpty ? Predictions() : try run(model: model, dataset: dataset, settings: settings, range: share)
        // Row t: the probabilities of tile t and a presence flag; each rank fills its rows, the sum assembles them.
        let width = classes + 1
        var rows = [Double](repeating: 0, count: n * width + 2)
        for (k, t) in local.samples.enumerated() {
            for c in 0..<classes { rows[t * width + c] = local.probabilities[k][c] }
            rows[t * width + classes] = 1
        }
        rows[n * width] = local.meanLoss * Double(local.labeledCount)
        rows[n * width + 1] = Double(local.labeledCount)
        try rows.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
        var out = Predictions()
        for t in 0..<n where rows[t * width + classes] > 0 {
            let e = dataset.entry(t)
            out.probabilities.append(Array(rows[(t * width)..<(t * width + classes)]))
            out.labels.append(settings.mapped(e.label))
            out.ids.append(e.id)
            out.samples.append(t)
            out.slides.append(dataset.slide(t))
        }
        out.labeledCount = Int(rows[n * width + 1])
        out.meanLoss = out.labeledCount > 0 ? rows[n * width] / rows[n * width + 1] : 0
        return out
    }
}
