// Top-k fine-tuning (HistoTransfer, Sharma et al. 2021): each epoch every training slide's patches are scored by
// the current attention-MIL head on the current backbone's features, the k highest kept; then the backbone's last
// stage(s) and the head are trained end to end on those patches' pixels, one bag per slide (bag + beta x patch
// cross-entropy). Same run directory, lock, checkpoints (head and backbone together), resume rules and
// data-parallel steps as the other trainers.
import Foundation
import Layers
import SafeTensors
import TensorCore
import TileShards

/// A slide of a tile shard set: its label and its tiles (dataset indices).
public struct TileSlide: Sendable {
    public var name: String
    public var label: Int32
    public var tiles: [Int]
}

public final class TopKFineTuner {
    public let config: RunConfig
    public let dataset: ShardDataset
    public let trainSlides: [TileSlide], valSlides: [TileSlide]
    public let backbone: Backbone
    public let head: AttentionMIL<Float>
    public let headOptimizer: Optimizer, backboneOptimizer: Optimizer
    /// The backbone's trained parameters are its flat buffer from here on (its last `train_stages` stages).
    public let trainOffset: Int
    public let runDirectory: RunDirectory
    public let store: CheckpointStore
    public let group: any ProcessGroup
    let headStep: DataParallelStep, backboneStep: DataParallelStep
    let writer: String
    let identity: ShardSetIdentity
    var lock: RunLock?
    public private(set) var history: [StepMetrics] = []
    public private(set) var bestAccuracy: Double?
    public var progress: ((String) -> Void)?

    public init(config: RunConfig, writer: String, group: any ProcessGroup = SingleProcessGroup()) throws {
        self.config = config; self.writer = writer; self.group = group
        try group.requireIdentical(config.yaml, what: "config")
        func slides(of dataset: ShardDataset, key: String) throws -> [TileSlide] {
            try dataset.slideTiles.map { name, tiles in
                let label = dataset.entry(tiles[0]).label
                guard tiles.allSatisfy({ dataset.entry($0).label == label }) else {
                    throw TrainingError("data.\(key): slide '\(name)' has tiles of two labels. Hint: pack each slide under one class folder.")
                }
                return TileSlide(name: name, label: label, tiles: tiles)
            }
        }
        do { dataset = try ShardDataset(directory: URL(fileURLWithPath: config.trainShards), minTissue: config.minTissue) } catch let e as ShardError {
            throw TrainingError("data.train (\(config.trainShards)): \(e.message)")
        }
        let all = try slides(of: dataset, key: "train")
        if config.milFolds > 1 {
            let split = try FeatureSet.foldIndices(labels: all.map(\.label), classes: dataset.classes.count, config: config)
            trainSlides = split.train.map { all[$0] }
            valSlides = split.val.map { all[$0] }
        } else if let val = config.valShards {
            let v: ShardDataset
            do { v = try ShardDataset(directory: URL(fileURLWithPath: val), minTissue: config.minTissue) } catch let e as ShardError { throw TrainingError("data.val (\(val)): \(e.message)") }
            guard v.identity == dataset.identity else {
                throw TrainingError("data.val must be the same tile shard set as data.train for fine-tuning (validation slides are chosen with mil.folds). Hint: use mil.folds and mil.fold.")
            }
            trainSlides = all; valSlides = []
        } else {
            trainSlides = all; valSlides = []
        }
        let k = config.finetuneTopK
        if let small = trainSlides.first(where: { $0.tiles.count < k }) {
            throw TrainingError("finetune.top_k \(k) is larger than slide '\(small.name)', which has \(small.tiles.count) tiles. Hint: lower finetune.top_k to at most the smallest slide's tile count (\(trainSlides.map(\.tiles.count).min()!)).")
        }
        guard config.finetuneBackboneRun != nil || config.finetuneBackboneWeights != nil else {
            throw TrainingError("finetune.backbone_run or finetune.backbone_weights is required: the network to fine-tune.")
        }
        backbone = try Backbone.load(run: config.finetuneBackboneRun.map { RunDirectory(path: $0) }, weights: config.finetuneBackboneWeights.map { URL(fileURLWithPath: $0) },
                                     architecture: nil, truncateAfter: config.finetuneTruncateAfter, inputFactor: nil, mean: nil, std: nil,
                                     batchSize: max(k, 16), truncateFlag: "finetune.truncate_after")
        let first = "layer\(config.finetuneTruncateAfter - config.finetuneTrainStages + 1)."
        guard let offset = backbone.model.parameters.layout.slices.first(where: { $0.name.hasPrefix(first) })?.offset else {
            throw TrainingError("the backbone has no parameters named \(first)*")
        }
        trainOffset = offset
        head = AttentionMIL<Float>(featureDimension: backbone.model.featureDimension, classes: dataset.classes.count, hidden1: config.milHidden[0],
                                   hidden2: config.milHidden[1], attentionWidth: config.milAttention, seed: config.seed)
        headOptimizer = Optimizer(config.optimizerKind, count: head.parameterCount)
        backboneOptimizer = Optimizer(config.optimizerKind, count: backbone.model.parameterCount - offset)
        headStep = DataParallelStep(model: head, group: group)
        backboneStep = DataParallelStep(model: backbone.model, group: group)
        runDirectory = RunDirectory(path: config.output)
        store = runDirectory.checkpointStore(keep: config.keep)
        var f = FNV1a64()
        f.add(dataset.identity.digest); f.add(backbone.digest)
        identity = ShardSetIdentity(digest: f.hex, tiles: dataset.count, shards: dataset.readers.count)
    }

    /// The current backbone's features and the current head's attention for every tile of `slide`.
    func score(_ slide: TileSlide) throws -> (features: [Float], attention: [Float], probabilities: [Float]) {
        let p = try Inference.features(model: backbone.model, dataset: dataset, settings: backbone.settings, indices: slide.tiles)
        let features = p.features.flatMap { $0 }
        let r = features.withUnsafeBufferPointer {
            MILBag.run(head, features: $0.baseAddress!, count: slide.tiles.count, label: slide.label, beta: 0, train: false, gradFeatures: nil)
        }
        return (features, r.attention, r.probabilities)
    }

    /// The k tiles of each training slide with the highest current attention (ties: the earlier tile).
    func selectTopK() throws -> [[Int]] {
        try trainSlides.map { slide in
            let a = try score(slide).attention
            return slide.tiles.indices.sorted { a[$0] != a[$1] ? a[$0] > a[$1] : $0 < $1 }.prefix(config.finetuneTopK).map { slide.tiles[$0] }
        }
    }

    public func run(resume: Bool, stopAfter: Int? = nil) throws -> RunOutcome {
        let parts = [CheckpointPart(name: "backbone", model: backbone.model, optimizer: backboneOptimizer)]
        let start = try group.onCoordinator { () throws -> CheckpointState? in
            let (lock, state) = try RunStart.beginSlideRun(runDirectory, store: store, resume: resume, model: head, optimizer: headOptimizer, parts: parts,
                                                           config: config, command: .finetune, identity: TrainingDataIdentity(value: identity, what: "the tiles and backbone"),
                                                           kind: "fine-tuning")
            self.lock = lock
            return state
        }
        try DataParallelStep.broadcastState(of: head, optimizer: headOptimizer, group: group)
        try DataParallelStep.broadcastState(of: backbone.model, optimizer: backboneOptimizer, group: group)
        var loop = try SlideRunLoop(start: start, slides: trainSlides.count, config: config, command: .finetune, group: group, store: store, run: runDirectory,
                                    stopAfter: stopAfter, writer: writer, identity: identity, progress: progress)
        bestAccuracy = loop.best
        let k = config.finetuneTopK, d = backbone.model.featureDimension
        let transform = PairedTransform(augment: .none, factor: backbone.settings.inputFactor, mean: backbone.settings.mean, std: backbone.settings.std)
        let maker = try BatchMaker(dataset: dataset, transform: transform, seed: 0, globalBatch: k, rank: 0, worldSize: 1,
                                   withLowResolution: backbone.settings.inputFactor > 1, shuffle: false)
        var selection: [[Int]] = [], selectedEpoch = -1
        while loop.running {
            if selectedEpoch != loop.cursor.epoch { selection = try selectTopK(); selectedEpoch = loop.cursor.epoch }
            let (slides, lr) = loop.next()
            let mine = slides.filter { trainSlides[$0].label >= 0 }
            head.parameters.zeroGradients(); backbone.model.parameters.zeroGradients()
            var bagLoss: Float = 0, patchLoss: Float = 0
            for s in mine {
                // The k patches' pixels through the backbone (norm statistics frozen), then the head, then back.
                let b = try maker.makeBatchAt(plan: EpochPlan(order: selection[s], globalBatch: k), range: 0..<k)
                let (tiles, edge) = b.modelView(inputFactor: backbone.settings.inputFactor)
                let out = tiles.withUnsafeBufferPointer { backbone.model.forward($0.baseAddress!, shape: NCHW(b.count, 3, edge, edge), training: false) }
                var gradFeatures = [Float](repeating: 0, count: b.count * d)
                let r = MILBag.run(head, features: out.pooled.data, count: b.count, label: trainSlides[s].label, beta: config.milBeta, train: true,
                                   slides: mine.count, gradFeatures: &gradFeatures)
                gradFeatures.withUnsafeBufferPointer { backbone.model.backward(gradLogits: nil, gradFeatureMap: nil, gradPooled: $0.baseAddress!) }
                bagLoss += r.bag; patchLoss += r.patch
            }
            let n = Float(max(mine.count, 1))
            let local = LossTerms(kd: 0, pixel: patchLoss / n, crossEntropy: bagLoss / n, total: (bagLoss + config.milBeta * patchLoss) / n)
            // The backbone's gradient is reduced like the head's; only its trained stages are updated.
            let reduced = try backboneStep.reduce(local, count: mine.count, skipped: 0)
            let global = try headStep.finish(local, count: mine.count, optimizer: headOptimizer, lr: Float(lr), clipGradNorm: config.clipGradNorm)
            let bp = backbone.model.parameters, trained = backbone.model.parameterCount - trainOffset
            var divergence = global.divergence
            if divergence == nil && reduced.count > 0 {
                if !GradientOps.allFinite(bp.gradients!.pointer + trainOffset, count: trained) {
                    divergence = "the backbone's gradient became non-finite"
                } else {
                    backboneOptimizer.update(values: bp.values.pointer + trainOffset, gradients: bp.gradients!.pointer + trainOffset, lr: Float(lr))
                    if !GradientOps.allFinite(bp.values.pointer + trainOffset, count: trained) { divergence = "the backbone's weights became non-finite" }
                }
            }
            if let divergence { throw loop.diverged(divergence) }
            let validate = valSlides.isEmpty ? nil : {
                try self.valSlides.map { SlideScore(probabilities: try self.score($0).probabilities.map(Double.init), label: Int($0.label)) }
            }
            let (m, outcome) = try loop.end(global, lr: lr, imagesPerSlide: k, classes: head.classes, validate: validate,
                                            saveBest: { step, accuracy in try saveBest(step: step, accuracy: accuracy) },
                                            checkpoint: { state in try store.save(model: head, optimizer: headOptimizer, state: state, parts: parts) })
            bestAccuracy = loop.best
            history.append(m)
            if let outcome { return outcome }
        }
        if loop.finished && valSlides.isEmpty && group.isCoordinator { try saveBest(step: loop.step, accuracy: nil) }
        if loop.finished && !valSlides.isEmpty && group.isCoordinator {
            // The validation slides under the final weights (for pooling out-of-fold predictions over folds).
            let predictions = try valSlides.map { slide in
                let s = try score(slide)
                return SlidePrediction(slide: slide.name, label: slide.label, probabilities: s.probabilities.map(Double.init),
                                       attention: s.attention.map(Double.init), x: slide.tiles.map { dataset.entry($0).x }, y: slide.tiles.map { dataset.entry($0).y })
            }
            try CheckpointStore.writeAtomically(Data(SlidePrediction.slidesCSV(predictions, classes: dataset.classes).utf8),
                                                to: runDirectory.url.appendingPathComponent("val-slides.csv"))
        }
        return loop.outcome
    }

    /// best-backbone.safetensors (self-described: `extract --weights` reads it) and best.safetensors (the head,
    /// describing features extracted with that backbone file).
    func saveBest(step: Int, accuracy: Double?) throws {
        let backboneURL = runDirectory.bestBackbone
        var meta = RunMetadata(model: backbone.model.config, classes: [], mean: backbone.settings.mean, std: backbone.settings.std,
                               inputFactor: backbone.settings.inputFactor, tileSize: dataset.tileSize, tileMicronsPerPixel: dataset.micronsPerPixel,
                               trainShards: dataset.identity, trainShardsPath: runDirectory.relativePath(config.trainShards),
                               objective: "top-k fine-tuning", teacherRun: nil, program: writer)
        meta.precision = config.precision.rawValue
        try backbone.model.saveWeights(to: backboneURL, metadata: meta.safetensorsMetadata)
        let features = FeatureSetMetadata(classes: dataset.classes, featureDimension: backbone.model.featureDimension,
                                          backbone: backbone.model.architectureDescription, truncateAfter: backbone.truncateAfter,
                                          inputFactor: backbone.settings.inputFactor, mean: backbone.settings.mean, std: backbone.settings.std,
                                          sourceShards: dataset.identity, weights: backboneURL.path, weightsDigest: try FNV1a64.file(backboneURL), program: writer)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let description = String(decoding: try encoder.encode(MILDescription(features: features, hidden: [head.hidden1, head.hidden2], attention: head.attentionWidth)), as: UTF8.self)
        try head.saveWeights(to: runDirectory.bestWeights, metadata: ["step": "\(step)", "val_accuracy": accuracy.map { "\($0)" } ?? "", "histodistill.mil": description])
    }
}
