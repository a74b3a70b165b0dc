// Running a model over a whole shard set in order (no augmentation): probabilities, labels, ids and slides,
// for validation, `evaluate` and `predict`.
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

    /// The predictions as CSV: tile id, slide, label (the name `labelNames` gives the label, empty when
    /// unlabeled), predicted class, and one probability column `p_NAME` per class of the model (`classes`).
    public func csv(classes: [String], labelNames: [String]? = nil) -> String {
        let names = labelNames ?? classes
        var s = "tile_id,slide,label,predicted," + classes.map { "p_\($0)" }.joined(separator: ",") + "\n"
        for i in ids.indices {
            let label = labels[i] >= 0 && Int(labels[i]) < names.count ? names[Int(labels[i])] : ""
            let p = probabilities[i]
            let predicted = p.indices.max { p[$0] < p[$1] }.map { classes[$0] } ?? ""
            s += "\(ids[i]),\(slides[i]),\(label),\(predicted)," + p.map { String(format: "%.6f", $0) }.joined(separator: ",") + "\n"
        }
        return s
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

/// Runs `model` in eval mode over the tiles of `dataset` (all of them, or the dataset indices in `range`).
public enum Inference {
    public static func run(model: any ImageModel, dataset: ShardDataset, settings: InferenceSettings, range: Range<Int>? = nil) throws -> Predictions {
        let range = range ?? 0..<dataset.count
        let config = settings
        let transform = PairedTransform(augment: .none, factor: config.inputFactor, mean: config.mean, std: config.std)
        let batch = max(1, min(config.batchSize, dataset.count))
        let maker = try BatchMaker(dataset: dataset, transform: transform, seed: 0, globalBatch: batch, rank: 0, worldSize: 1,
                                   withLowResolution: config.inputFactor > 1, policy: config.onCorrupt, shuffle: false,
                                   workers: config.workers)
        let classes = model.classes
        guard classes > 0 else { throw TrainingError("the model has no classifier (a truncated feature extractor cannot classify)") }
        func mapped(_ label: Int32) -> Int32 {
            guard label >= 0, let map = settings.labelMap else { return label }
            return Int(label) < map.count ? map[Int(label)] : -1
        }
        var out = Predictions()
        var lossSum = 0.0, labeled = 0
        // Dataset order, built once (the batch size only matters for EpochPlan's step view, unused here).
        let plan = EpochPlan(count: dataset.count, seed: 0, epoch: 0, globalBatch: batch, shuffle: false)
        var start = range.lowerBound
        while start < range.upperBound {
            let n = min(batch, range.upperBound - start)
            let b = try maker.makeBatchAt(plan: plan, range: start..<(start + n))
            start += n
            guard b.count > 0 else { continue }   // every tile of this batch was corrupt and skipped
            let (input, edge) = b.modelView(inputFactor: config.inputFactor)
            let result = input.withUnsafeBufferPointer { model.forward($0.baseAddress!, shape: NCHW(b.count, 3, edge, edge), training: false) }
            let logits = result.logits!
            let labels = b.labels.map(mapped)
            var probs = [Float](repeating: 0, count: b.count * classes)
            Softmax.forward(output: &probs, input: logits.data, rows: b.count, cols: classes)
            for i in 0..<b.count {
                out.probabilities.append((0..<classes).map { Double(probs[i * classes + $0]) })
                if labels[i] >= 0 {
                    lossSum -= Double(Float.log(max(probs[i * classes + Int(labels[i])], 1e-30)))
                    labeled += 1
                }
            }
            out.labels += labels
            out.ids += b.ids
            out.samples += b.samples
            out.slides += b.samples.map(dataset.slide)
        }
        out.meanLoss = labeled > 0 ? lossSum / Double(labeled) : 0
        out.labeledCount = labeled
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
            out.labels.append(e.label < 0 ? e.label : settings.labelMap.map { Int(e.label) < $0.count ? $0[Int(e.label)] : -1 } ?? e.label)
            out.ids.append(e.id)
            out.samples.append(t)
            out.slides.append(dataset.slide(t))
        }
        out.labeledCount = Int(rows[n * width + 1])
        out.meanLoss = out.labeledCount > 0 ? rows[n * width] / rows[n * width + 1] : 0
        return out
    }
}
