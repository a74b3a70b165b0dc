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

    /// The predictions as CSV: tile id, slide, label (class name, empty when unlabeled), one probability per class.
    public func csv(classes: [String]) -> String {
        var s = "tile_id,slide,label," + classes.map { "p_\($0)" }.joined(separator: ",") + "\n"
        for i in ids.indices {
            let label = labels[i] >= 0 && Int(labels[i]) < classes.count ? classes[Int(labels[i])] : ""
            s += "\(ids[i]),\(slides[i]),\(label)," + probabilities[i].map { String(format: "%.6f", $0) }.joined(separator: ",") + "\n"
        }
        return s
    }
}

/// Runs `model` in eval mode over the tiles of `dataset` (all of them, or the dataset indices in `range`).
public enum Inference {
    public static func run(model: ResNet, dataset: ShardDataset, config: RunConfig, range: Range<Int>? = nil) throws -> Predictions {
        let range = range ?? 0..<dataset.count
        let transform = PairedTransform(augment: .none, factor: config.inputFactor, mean: config.mean, std: config.std)
        let batch = max(1, min(config.batchSize, dataset.count))
        let maker = try BatchMaker(dataset: dataset, transform: transform, seed: 0, globalBatch: batch, rank: 0, worldSize: 1,
                                   withLowResolution: config.inputFactor > 1, policy: config.onCorrupt, shuffle: false,
                                   workers: config.workers)
        let classes = model.config.classes
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
            let edge = config.inputFactor > 1 ? b.lowSize : b.size
            let input = config.inputFactor > 1 ? b.lr : b.hr
            let result = input.withUnsafeBufferPointer { model.forward($0.baseAddress!, shape: NCHW(b.count, 3, edge, edge), training: false) }
            guard let logits = result.logits else { throw TrainingError("the model has no classifier (a truncated feature extractor cannot classify)") }
            var probs = [Float](repeating: 0, count: b.count * classes)
            Softmax.forward(output: &probs, input: logits.data, rows: b.count, cols: classes)
            for i in 0..<b.count {
                out.probabilities.append((0..<classes).map { Double(probs[i * classes + $0]) })
                if b.labels[i] >= 0 {
                    lossSum -= Double(Float.log(max(probs[i * classes + Int(b.labels[i])], 1e-30)))
                    labeled += 1
                }
            }
            out.labels += b.labels
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
    public static func run(model: ResNet, dataset: ShardDataset, config: RunConfig, group: any ProcessGroup) throws -> Predictions {
        guard group.size > 1 else { return try run(model: model, dataset: dataset, config: config) }
        let n = dataset.count, classes = model.config.classes
        let share = (n * group.rank / group.size)..<(n * (group.rank + 1) / group.size)
        let local = share.isEmpty ? Predictions() : try run(model: model, dataset: dataset, config: config, range: share)
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
            out.labels.append(e.label)
            out.ids.append(e.id)
            out.samples.append(t)
            out.slides.append(dataset.slide(t))
        }
        out.labeledCount = Int(rows[n * width + 1])
        out.meanLoss = out.labeledCount > 0 ? rows[n * width] / rows[n * width + 1] : 0
        return out
    }
}
