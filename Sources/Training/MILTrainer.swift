// Attention-MIL slide classification over feature sets (HistoTransfer; Ilse et al. 2018): each step takes a
// global batch of slides, every rank its share; loss = bag cross-entropy + beta x patch cross-entropy (every patch
// labeled with its slide's label); Adam (or the configured optimizer) on the flat parameters; the same run
// directory, checkpoints, resume rules, metrics and data-parallel step as `train`.
import Foundation
import Layers
import TensorCore
import SafeTensors
import TileShards

/// One slide's outputs: bag probabilities and the attention of each of its patches.
public struct SlidePrediction: Sendable {
    public var slide: String
    public var label: Int32
    public var probabilities: [Double]
    public var attention: [Double]
    public var x: [Int32], y: [Int32]

    public init(slide: String, label: Int32, probabilities: [Double], attention: [Double], x: [Int32], y: [Int32]) {
        self.slide = slide; self.label = label; self.probabilities = probabilities; self.attention = attention; self.x = x; self.y = y
    }

    /// Per-slide CSV: slide, label (class name, empty when unlabeled), predicted class, p_CLASS for each class.
    /// `classes` name the probabilities (the head's classes), `labelClasses` the slides' labels (the feature set's
    /// classes; the same list unless predicting slides of other classes).
    public static func slidesCSV(_ predictions: [SlidePrediction], classes: [String], labelClasses: [String]? = nil) -> String {
        let labelClasses = labelClasses ?? classes
        let rows = predictions.map { r -> [String] in
            let predicted = r.probabilities.indices.max { r.probabilities[$0] < r.probabilities[$1] }.map { classes[$0] } ?? ""
            let label = r.label >= 0 && Int(r.label) < labelClasses.count ? labelClasses[Int(r.label)] : ""
            return [r.slide, label, predicted] + r.probabilities.map { String(format: "%.6f", $0) }
        }
        return CSVTable.text(header: ["slide", "label", "predicted"] + classes.map { "p_\($0)" }, rows: rows)
    }

    /// Per-patch attention CSV: slide, x, y, attention.
    public static func attentionCSV(_ predictions: [SlidePrediction]) -> String {
        let rows = predictions.flatMap { r in r.attention.indices.map { i in [r.slide, "\(r.x[i])", "\(r.y[i])", String(format: "%.6g", r.attention[i])] } }
        return CSVTable.text(header: ["slide", "x", "y", "attention"], rows: rows)
    }
}

/// The MIL head's forward (and backward) on one bag, returning the bag loss terms.
public enum MILBag {
    /// Forward of `bag`; with `train`, backward of (bag CE + beta x patch CE) / `slides` added into the head's
    /// gradients. Returns (bag CE, patch CE, probabilities, attention); the losses are 0 for an unlabeled slide.
    @discardableResult
    public static func run(_ head: AttentionMIL<Float>, _ bag: SlideBag, beta: Float, train: Bool, slides: Int = 1)
        -> (bag: Float, patch: Float, probabilities: [Float], attention: [Float]) {
        bag.features.withUnsafeBufferPointer {
            run(head, features: $0.baseAddress!, count: bag.count, label: bag.label, beta: beta, train: train, slides: slides, gradFeatures: nil)
        }
    }

    /// The same on `count` feature vectors at `features`; with `gradFeatures`, the gradient with respect to the
    /// features is added there (for fine-tuning the network that produced them).
    public static func run(_ head: AttentionMIL<Float>, features: UnsafePointer<Float>, count n: Int, label: Int32, beta: Float, train: Bool,
                           slides: Int = 1, gradFeatures: UnsafeMutablePointer<Float>?)
        -> (bag: Float, patch: Float, probabilities: [Float], attention: [Float]) {
        let c = head.classes
        let bag = (label: label, count: n)
        var logits = [Float](repeating: 0, count: c), attention = [Float](repeating: 0, count: n), patch = [Float](repeating: 0, count: n * c)
        head.forward(bag: features, count: n, bagLogits: &logits, attention: &attention, patchLogits: &patch)
        var probabilities = [Float](repeating: 0, count: c)
        Softmax.forward(output: &probabilities, input: logits, rows: 1, cols: c)
        guard bag.label >= 0 else { return (0, 0, probabilities, attention) }
        var gBag = [Float](repeating: 0, count: c), gPatch = [Float](repeating: 0, count: n * c)
        let scale = 1 / Float(slides)
        let bagLoss = [bag.label].withUnsafeBufferPointer {
            CrossEntropy.forwardBackward(logits: logits, labels: $0.baseAddress!, n: 1, classes: c, gradLogits: &gBag, scale: scale)
        }
        let patchLabels = [Int32](repeating: bag.label, count: n)
        let patchLoss = beta == 0 ? 0 : patchLabels.withUnsafeBufferPointer {
            CrossEntropy.forwardBackward(logits: patch, labels: $0.baseAddress!, n: n, classes: c, gradLogits: &gPatch, scale: beta * scale)
        }
        if train {
            gBag.withUnsafeBufferPointer { b in gPatch.withUnsafeBufferPointer { p in
                head.backward(gradBagLogits: b.baseAddress!, gradPatchLogits: beta == 0 ? nil : p.baseAddress!, gradBag: gradFeatures)
            } }
        }
        return (bagLoss, patchLoss, probabilities, attention)
    }
}

/// Trains an attention-MIL head on a feature set, alone or as one rank of a data-parallel job.
public final class MILTrainer {
    public let config: RunConfig
    public let head: AttentionMIL<Float>
    public let optimizer: Optimizer
    public let train: FeatureSet
    public let val: FeatureSet?
    public let runDirectory: RunDirectory
    public let store: CheckpointStore
    public let group: any ProcessGroup
    public let stepper: DataParallelStep
    let writer: String
    let identity: ShardSetIdentity
    var lock: RunLock?
    public private(set) var history: [StepMetrics] = []
    public private(set) var bestAccuracy: Double?
    public var progress: ((String) -> Void)?

    public init(config: RunConfig, writer: String, group: any ProcessGroup = SingleProcessGroup()) throws {
        self.config = config; self.writer = writer; self.group = group
        try group.requireIdentical(config.yaml, what: "config")
        func open(_ path: String, _ key: String) throws -> FeatureSet {
            do { return try FeatureSet(directory: URL(fileURLWithPath: path)) } catch let e as TrainingError {
                throw TrainingError("data.\(key): \(e.message)")
            }
        }
        let all = try open(config.trainShards, "train")
        if config.milFolds > 1 {
            let split = try FeatureSet.foldIndices(labels: all.slides.map(\.label), classes: all.metadata.classes.count, config: config)
            train = FeatureSet(metadata: all.metadata, slides: split.train.map { all.slides[$0] })
            val = FeatureSet(metadata: all.metadata, slides: split.val.map { all.slides[$0] })
        } else {
            train = all
            val = try config.valShards.map { try open($0, "val") }
        }
        if let val, !val.metadata.sameExtraction(as: train.metadata) {
            throw TrainingError("data.val holds features from \(val.metadata.summary), data.train from \(train.metadata.summary). Hint: extract both splits with the same backbone and options from shards with the same classes.")
        }
        guard train.slides.contains(where: { $0.label >= 0 }) else {
            throw TrainingError("data.train (\(config.trainShards)): no slide has a label. Hint: pack the tiles under class folders named after the slide labels.")
        }
        let classes = train.metadata.classes.count
        head = AttentionMIL<Float>(featureDimension: train.metadata.featureDimension, classes: classes, hidden1: config.milHidden[0],
                                   hidden2: config.milHidden[1], attentionWidth: config.milAttention, seed: config.seed)
        optimizer = Optimizer(config.optimizerKind, count: head.parameterCount)
        stepper = DataParallelStep(model: head, group: group)
        runDirectory = RunDirectory(path: config.output)
        store = runDirectory.checkpointStore(keep: config.keep)
        // The identity of the training bags: the digest of the source shards and of the backbone weights.
        var f = FNV1a64()
        f.add(train.metadata.sourceShards.digest); f.add(train.metadata.weightsDigest); f.add(train.metadata.backbone)
        identity = ShardSetIdentity(digest: f.hex, tiles: train.slides.reduce(0) { $0 + $1.count }, shards: train.slides.count)
    }

    /// Trains to the end of the schedule (or `stopAfter` steps), resuming from the newest checkpoint when asked.
    @discardableResult
    public func run(resume: Bool, stopAfter: Int? = nil) throws -> RunOutcome {
        let start = try group.onCoordinator { () throws -> CheckpointState? in
            let (lock, state) = try RunStart.beginSlideRun(runDirectory, store: store, resume: resume, model: head, optimizer: optimizer, config: config, command: .milTrain,
                                                           identity: TrainingDataIdentity(value: identity, what: "the feature set"), kind: "MIL") {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                try CheckpointStore.writeAtomically(try encoder.encode(train.metadata), to: runDirectory.url.appendingPathComponent("features.json"))
            }
            self.lock = lock
            return state
        }
        try DataParallelStep.broadcastState(of: head, optimizer: optimizer, group: group)
        var loop = try SlideRunLoop(start: start, slides: train.slides.count, config: config, command: .milTrain, group: group, store: store, run: runDirectory,
                                    stopAfter: stopAfter, writer: writer, identity: identity, progress: progress)
        bestAccuracy = loop.best
        while loop.running {
            let (mine, lr) = loop.next()
            head.parameters.zeroGradients()
            var bagLoss: Float = 0, patchLoss: Float = 0
            var labeled = 0
            let labeledMine = mine.filter { train.slides[$0].label >= 0 }.count
            for s in mine where train.slides[s].label >= 0 {
                let r = MILBag.run(head, train.slides[s], beta: config.milBeta, train: true, slides: labeledMine)
                bagLoss += r.bag; patchLoss += r.patch; labeled += 1
            }
            let n = Float(max(labeled, 1))
            let local = LossTerms(kd: 0, pixel: patchLoss / n, crossEntropy: bagLoss / n, total: (bagLoss + config.milBeta * patchLoss) / n)
            let global = try stepper.finish(local, count: labeled, optimizer: optimizer, lr: Float(lr), clipGradNorm: config.clipGradNorm)
            if let divergence = global.divergence { throw loop.diverged(divergence) }
            let validate = val.map { val in {
                self.predict(val).filter { $0.label >= 0 }.map { SlideScore(probabilities: $0.probabilities, label: Int($0.label)) }
            } }
            let (m, outcome) = try loop.end(global, lr: lr, imagesPerSlide: 1, classes: head.classes, validate: validate, saveBest: { step, accuracy in
                try head.saveWeights(to: runDirectory.bestWeights, metadata: ["step": "\(step)", "val_accuracy": "\(accuracy)",
                                                                              "histodistill.mil": featuresMetadataText])
            }, checkpoint: { state in
                try store.save(model: head, optimizer: optimizer, state: state, metadata: ["histodistill.mil": featuresMetadataText])
            })
            bestAccuracy = loop.best
            history.append(m)
            if let outcome { return outcome }
        }
        if loop.finished, let val, group.isCoordinator {
            // The validation slides under the final head (not the best-on-validation one, which would be biased for
            // cross-validation), for pooling out-of-fold predictions over folds.
            let csv = SlidePrediction.slidesCSV(predict(val), classes: train.metadata.classes)
            try CheckpointStore.writeAtomically(Data(csv.utf8), to: runDirectory.url.appendingPathComponent("val-slides.csv"))
        }
        return loop.outcome
    }

    /// The feature set's description and the head's widths, stored in the MIL weights files.
    var featuresMetadataText: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let d = MILDescription(features: train.metadata, hidden: [head.hidden1, head.hidden2], attention: head.attentionWidth)
        return String(decoding: (try? encoder.encode(d)) ?? Data(), as: UTF8.self)
    }

    /// Every slide's probabilities and attention under the current head (eval mode: the head has no dropout).
    public func predict(_ set: FeatureSet) -> [SlidePrediction] { MILTrainer.predict(head, set) }

    public static func predict(_ head: AttentionMIL<Float>, _ set: FeatureSet) -> [SlidePrediction] {
        set.slides.map { bag in
            let r = MILBag.run(head, bag, beta: 0, train: false)
            return SlidePrediction(slide: bag.name, label: bag.label, probabilities: r.probabilities.map(Double.init),
                                   attention: r.attention.map(Double.init), x: bag.x, y: bag.y)
        }
    }
}

/// What a MIL weights file needs to be applied: the feature set it was trained on (its backbone, classes and
/// feature length) and the head's widths (safetensors metadata key `histodistill.mil`).
public struct MILDescription: Codable, Sendable {
    public var features: FeatureSetMetadata
    public var hidden: [Int]
    public var attention: Int

    /// Loads a MIL head from a weights file written by `histodistill mil train`.
    public static func load(_ url: URL) throws -> (AttentionMIL<Float>, MILDescription) {
        let file: SafeTensorsFile
        InputFiles.note(url)
        do { file = try SafeTensorsFile(contentsOf: url) } catch let e as SafeTensorsError { throw TrainingError(e.message) }
        guard let text = file.metadata["histodistill.mil"], let d = try? JSONDecoder().decode(MILDescription.self, from: Data(text.utf8)) else {
            throw TrainingError("\(url.path) is not an attention-MIL weights file written by `histodistill mil train` (no 'histodistill.mil' metadata).")
        }
        let head = AttentionMIL<Float>(featureDimension: d.features.featureDimension, classes: d.features.classes.count, hidden1: d.hidden[0],
                                       hidden2: d.hidden[1], attentionWidth: d.attention)
        do { try head.load(file, source: url.path) } catch let e as WeightsError { throw TrainingError(e.message) }
        return (head, d)
    }
}
