// Supervised training from shards: a frozen-seed data stream, forward, cross-entropy, backward, optimizer step,
// metrics as JSONL and CSV, validation each epoch, atomic checkpoints, and bit-exact resume.
import Foundation
import Layers
import SafeTensors
import TensorCore
import TileShards

/// One line of metrics.
public struct StepMetrics: Codable, Equatable, Sendable {
    public var step: Int
    public var epoch: Int
    public var loss: Float
    public var lr: Double
    public var imagesPerSecond: Double
    public var skippedTiles: Int
    public var valAccuracy: Double?
    public var valLoss: Double?

    enum CodingKeys: String, CodingKey {
        case step, epoch, loss, lr, imagesPerSecond = "images_per_second", skippedTiles = "skipped_tiles"
        case valAccuracy = "val_accuracy", valLoss = "val_loss"
    }
}

/// A training failure the user can act on (a NaN loss, data that does not fit), naming what and where.
public struct TrainingError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Runs a supervised training job described by a `RunConfig`.
public final class SupervisedTrainer {
    public let config: RunConfig
    public let model: ResNet
    public let optimizer: Optimizer
    public let train: ShardDataset
    public let val: ShardDataset?
    public let store: CheckpointStore
    public let runDirectory: URL
    /// The frozen teacher of a distillation run (sees the full-resolution tiles), or nil.
    public let teacher: ResNet?
    let writer: String
    /// Losses of every step run by this process (for tests and reports).
    public private(set) var history: [StepMetrics] = []
    /// Progress lines (rate and ETA) go here; nil for silence.
    public var progress: ((String) -> Void)?

    /// Opens the data, builds the model and optimizer; with `resume`, loads the newest complete checkpoint.
    public init(config: RunConfig, writer: String) throws {
        self.config = config
        self.writer = writer
        func open(_ path: String, _ key: String) throws -> ShardDataset {
            do { return try ShardDataset(directory: URL(fileURLWithPath: path)) } catch let e as ShardError {
                throw TrainingError("data.\(key) (\(path)): \(e.message)")
            }
        }
        train = try open(config.trainShards, "train")
        val = try config.valShards.map { try open($0, "val") }
        if let val, val.classes != train.classes {
            throw TrainingError("data.val classes \(val.classes) differ from data.train classes \(train.classes). Hint: pack both splits from folders with the same class names.")
        }
        let classes = config.classes > 0 ? config.classes : train.classes.count
        guard classes >= train.classes.count else {
            throw TrainingError("model.classes \(classes) is fewer than the \(train.classes.count) classes in the shards")
        }
        let mc = config.modelConfig(classes: classes)
        let problems = mc.problems
        guard problems.isEmpty else { throw TrainingError("model: " + problems.joined(separator: "; ")) }
        model = ResNet(mc, seed: config.seed)
        optimizer = Optimizer(config.optimizerKind, count: model.parameterCount)
        if let teacherRun = config.teacherRun {
            let dir = URL(fileURLWithPath: teacherRun)
            let tc: RunConfig
            do { tc = try RunConfig.load(dir.appendingPathComponent("config.yaml")) } catch let e as ConfigError {
                throw TrainingError("distill.teacher_run: \(e.message)")
            }
            guard tc.inputFactor == 1 else {
                throw TrainingError("distill.teacher_run \(teacherRun) trained on tiles downsampled \(tc.inputFactor)x; the teacher must see full-resolution tiles (input_factor 1)")
            }
            let weights = config.teacherWeights.map { URL(fileURLWithPath: $0) } ?? dir.appendingPathComponent("best.safetensors")
            // The teacher's class count is what its classifier was trained for.
            let teacherClasses: Int
            do {
                let file = try SafeTensorsFile(contentsOf: weights)
                guard let fc = file["fc.weight"] ?? file["module.fc.weight"], fc.shape.count == 2 else {
                    throw TrainingError("teacher weights \(weights.path) have no classifier (fc.weight). Hint: give the teacher run's best.safetensors.")
                }
                teacherClasses = fc.shape[0]
            } catch let e as SafeTensorsError {
                throw TrainingError("teacher weights: \(e.message). Hint: train the teacher first, or set distill.teacher_weights.")
            }
            guard teacherClasses == classes else {
                throw TrainingError("the teacher in \(teacherRun) has \(teacherClasses) classes, the student \(classes). Hint: distill on shards with the teacher's classes.")
            }
            let teacherModel = ResNet(tc.modelConfig(classes: teacherClasses), initialize: false)
            do { try teacherModel.loadWeights(from: weights) } catch let e as WeightsError {
                throw TrainingError("teacher weights: \(e.message)")
            }
            teacher = teacherModel
        } else {
            teacher = nil
        }
        runDirectory = URL(fileURLWithPath: config.output)
        store = CheckpointStore(directory: runDirectory.appendingPathComponent("checkpoints"), keep: config.keep)
    }

    /// Trains until `train.epochs` or `train.max_steps`; resumes from the newest checkpoint when `resume`.
    /// `stopAfter` ends this process's work after that many global steps (checkpointing there), as an
    /// interruption would, without changing the schedule.
    public func run(resume: Bool, stopAfter: Int? = nil) throws {
        let fm = FileManager.default
        try fm.createDirectory(at: runDirectory, withIntermediateDirectories: true)
        try config.yaml.write(to: runDirectory.appendingPathComponent("config.yaml"), atomically: true, encoding: .utf8)
        var step = 0
        var cursor = DataCursor()
        var best: Double?
        if resume, let latest = store.newest() {
            let state = try store.load(latest, model: model, optimizer: optimizer)
            guard state.seed == config.seed else {
                throw TrainingError("\(latest.path): written by a run with seed \(state.seed), this config has \(config.seed). Hint: resume with the run's own config.yaml.")
            }
            step = state.step; cursor = state.cursor; best = state.bestMetric
            progress?("resuming from \(latest.lastPathComponent) (epoch \(cursor.epoch), step \(step))")
        } else if !resume && !store.completeCheckpoints().isEmpty {
            throw TrainingError("\(store.directory.path) already holds checkpoints. Hint: pass --resume to continue that run, or choose another run.output.")
        }
        let transform = PairedTransform(augment: config.augment, factor: config.inputFactor, mean: config.mean, std: config.std)
        let loader = try BatchLoader(dataset: train, transform: transform, seed: config.seed, globalBatch: config.batchSize, rank: 0,
                                     worldSize: 1, cursor: cursor, withLowResolution: config.inputFactor > 1, policy: config.onCorrupt,
                                     workers: config.workers)
        if teacher != nil && config.inputFactor == 1 {
            throw TrainingError("data.input_factor is 1: a distilled student must see tiles downsampled 2, 4, 8 or 16x")
        }
        let stepsPerEpoch = loader.stepsPerEpoch
        let totalSteps = min(config.maxSteps ?? Int.max, config.epochs * stepsPerEpoch)
        let schedule = config.lrSchedule(stepsPerEpoch: stepsPerEpoch)
        let jsonl = try appendHandle(runDirectory.appendingPathComponent("metrics.jsonl"))
        let csvURL = runDirectory.appendingPathComponent("metrics.csv")
        if !fm.fileExists(atPath: csvURL.path) {
            try "step,epoch,loss,lr,images_per_second,skipped_tiles,val_accuracy,val_loss\n".write(to: csvURL, atomically: true, encoding: .utf8)
        }
        let csv = try appendHandle(csvURL)
        defer { try? jsonl.close(); try? csv.close() }
        let classes = model.config.classes
        let start = Date()
        let startStep = step
        let stopAt = min(totalSteps, stopAfter ?? totalSteps)
        while step < stopAt {
            let t0 = Date()
            let batch = try loader.next()
            let lr = schedule.rate(base: config.lr, step: step, epoch: batch.epoch)
            var loss: Float = 0
            if batch.count > 0 {
                let edge = config.inputFactor > 1 ? batch.lowSize : batch.size
                let input = config.inputFactor > 1 ? batch.lr : batch.hr
                let out = input.withUnsafeBufferPointer { model.forward($0.baseAddress!, shape: NCHW(batch.count, 3, edge, edge), training: true) }
                var grad = [Float](repeating: 0, count: batch.count * classes)
                var mapGrad: [Float] = []
                if let teacher {
                    // The frozen teacher sees the full-resolution tiles, in eval mode.
                    let t = batch.hr.withUnsafeBufferPointer {
                        teacher.forward($0.baseAddress!, shape: NCHW(batch.count, 3, batch.size, batch.size), training: false)
                    }
                    mapGrad = [Float](repeating: 0, count: out.featureMap.count)
                    let terms = batch.labels.withUnsafeBufferPointer { labels in
                        config.objective.evaluate(studentLogits: out.logits!.data, teacherLogits: t.logits!.data, n: batch.count, classes: classes,
                                                  studentMap: out.featureMap.data, studentMapShape: out.featureMap.nchw,
                                                  teacherMap: t.featureMap.data, teacherMapShape: t.featureMap.nchw,
                                                  labels: labels.baseAddress!, gradLogits: &grad, gradMap: &mapGrad)
                    }
                    loss = terms.total
                } else {
                    loss = batch.labels.withUnsafeBufferPointer {
                        CrossEntropy.forwardBackward(logits: out.logits!.data, labels: $0.baseAddress!, n: batch.count, classes: classes, gradLogits: &grad)
                    }
                }
                guard loss.isFinite else {
                    throw TrainingError("the loss became \(loss) at step \(step + 1) (epoch \(batch.epoch)). The last good checkpoint is kept in \(store.directory.path). Hint: lower optimizer.lr or set train.clip_grad_norm.")
                }
                model.parameters.zeroGradients()
                grad.withUnsafeBufferPointer { g in
                    if mapGrad.isEmpty {
                        model.backward(gradLogits: g.baseAddress!)
                    } else {
                        mapGrad.withUnsafeBufferPointer { model.backward(gradLogits: g.baseAddress!, gradFeatureMap: $0.baseAddress!) }
                    }
                }
                let g = model.parameters.gradients!.pointer
                if let clip = config.clipGradNorm { GradientOps.clipNorm(g, count: model.parameterCount, maxNorm: clip) }
                optimizer.update(values: model.parameters.values.pointer, gradients: g, lr: Float(lr))
            }
            step += 1
            cursor = cursor.advanced(globalBatch: config.batchSize, steps: stepsPerEpoch)
            var m = StepMetrics(step: step, epoch: batch.epoch, loss: loss, lr: lr,
                                imagesPerSecond: Double(batch.count) / max(Date().timeIntervalSince(t0), 1e-9),
                                skippedTiles: batch.skipped.count, valAccuracy: nil, valLoss: nil)
            let epochEnded = cursor.epoch != batch.epoch
            if (epochEnded || step == totalSteps), let val {
                let (acc, vloss) = try validate(val)
                m.valAccuracy = acc; m.valLoss = vloss
                if best == nil || acc > best! {
                    best = acc
                    try model.saveWeights(to: runDirectory.appendingPathComponent("best.safetensors"), metadata: ["step": "\(step)", "val_accuracy": "\(acc)"])
                }
            }
            history.append(m)
            try jsonl.write(contentsOf: JSONEncoder().encode(m) + Data("\n".utf8))
            let cells: [String] = ["\(m.step)", "\(m.epoch)", "\(m.loss)", "\(m.lr)", String(format: "%.1f", m.imagesPerSecond), "\(m.skippedTiles)",
                                   m.valAccuracy.map { "\($0)" } ?? "", m.valLoss.map { "\($0)" } ?? ""]
            try csv.write(contentsOf: Data((cells.joined(separator: ",") + "\n").utf8))
            if step % config.checkpointEvery == 0 || step == totalSteps || step == stopAt || epochEnded {
                try store.save(model: model, optimizer: optimizer,
                               state: CheckpointState(step: step, cursor: cursor, seed: config.seed, worldSize: 1, config: config.yaml,
                                                      writer: writer, bestMetric: best))
            }
            let elapsed = Date().timeIntervalSince(start)
            let rate = Double(step - startStep) / max(elapsed, 1e-9)
            progress?(String(format: "step %d/%d epoch %d loss %.4f lr %.2e %.1f img/s ETA %.0fs%@", step, totalSteps, batch.epoch, loss, lr,
                             rate * Double(config.batchSize), Double(totalSteps - step) / max(rate, 1e-9),
                             m.valAccuracy.map { String(format: " val_acc %.4f", $0) } ?? ""))
        }
    }

    /// Accuracy and mean cross-entropy on `dataset` (eval mode, no augmentation).
    public func validate(_ dataset: ShardDataset) throws -> (Double, Double) {
        let p = try Inference.run(model: model, dataset: dataset, config: config)
        let report = ClassificationReport.compute(probabilities: p.probabilities, labels: p.labels.map(Int.init), classes: model.config.classes)
        return (report.accuracy, p.meanLoss)
    }

    private func appendHandle(_ url: URL) throws -> FileHandle {
        if !FileManager.default.fileExists(atPath: url.path) { FileManager.default.createFile(atPath: url.path, contents: nil) }
        let h = try FileHandle(forWritingTo: url)
        try h.seekToEnd()
        return h
    }
}
