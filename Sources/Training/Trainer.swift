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
    /// The weighted total loss, averaged over the global batch; nil for a step that trained nothing (no rank had a
    /// tile, or cross-entropy alone met a global batch without a labeled tile: `GlobalStep.updated`).
    public var loss: Float?
    /// Distillation terms (unweighted, averaged over the global batch); nil for supervised runs.
    public var kdLoss: Float?
    public var pixelLoss: Float?
    public var ceLoss: Float?
    public var lr: Double
    /// Global batch over the step's wall-clock time (all ranks together); nil for a step that trained nothing (its
    /// time, without a forward pass, says nothing about speed).
    public var imagesPerSecond: Double?
    public var skippedTiles: Int
    /// Time the coordinator waited for its batch (the data pipeline's lag) and spent in the gradient all-reduce.
    public var waitMs: Double
    public var allreduceMs: Double
    public var ranks: Int
    public var valAccuracy: Double?
    public var valLoss: Double?
    /// Wall-clock time the line was written, seconds since 1970 (nil in lines of versions before it).
    public var time: Double?

    enum CodingKeys: String, CodingKey {
        case time, step, epoch, loss, kdLoss = "kd_loss", pixelLoss = "pixel_loss", ceLoss = "ce_loss", lr
        case imagesPerSecond = "images_per_second", skippedTiles = "skipped_tiles", waitMs = "wait_ms", allreduceMs = "allreduce_ms", ranks
        case valAccuracy = "val_accuracy", valLoss = "val_loss"
    }

    public init(step: Int, epoch: Int, loss: Float?, kdLoss: Float? = nil, pixelLoss: Float? = nil, ceLoss: Float? = nil, lr: Double,
                imagesPerSecond: Double?, skippedTiles: Int, waitMs: Double = 0, allreduceMs: Double = 0, ranks: Int = 1,
                valAccuracy: Double? = nil, valLoss: Double? = nil) {
        self.step = step; self.epoch = epoch; self.loss = loss; self.kdLoss = kdLoss; self.pixelLoss = pixelLoss; self.ceLoss = ceLoss
        self.lr = lr; self.imagesPerSecond = imagesPerSecond; self.skippedTiles = skippedTiles; self.waitMs = waitMs
        self.allreduceMs = allreduceMs; self.ranks = ranks; self.valAccuracy = valAccuracy; self.valLoss = valLoss
    }

    /// The loss for progress and summary lines: four decimals, or "n/a (nothing trained)" for a step without one.
    public var lossText: String { loss.map { String(format: "%.4f", $0) } ?? "n/a (nothing trained)" }

    /// The loss a run's summary line ends with, from the steps `history` ran: the last step's, else the last step
    /// that trained ("loss L at step S (steps S+1-N trained nothing)"), else "n/a (steps A-N trained nothing)".
    public static func finalLossText(_ history: [StepMetrics]) -> String {
        guard let last = history.last else { return "n/a" }
        if let loss = last.loss { return String(format: "%.4f", loss) }
        if let t = history.last(where: { $0.loss != nil }), let loss = t.loss {
            return String(format: "%.4f at step %d (steps %d-%d trained nothing)", loss, t.step, t.step + 1, last.step)
        }
        return "n/a (steps \(history[0].step)-\(last.step) trained nothing)"
    }

    /// A warning when none of `history`'s steps trained (every global batch without a labeled tile, or all its tiles
    /// skipped as corrupt), else nil.
    public static func untrainedWarning(_ history: [StepMetrics]) -> String? {
        guard let first = history.first, let last = history.last, !history.contains(where: { $0.loss != nil }) else { return nil }
        let weights = first.step == 1 ? "; the weights are the initial ones" : ""
        return "warning: steps \(first.step)-\(last.step) trained nothing: no global batch held a labeled tile (or every tile was skipped as corrupt)\(weights). Hint: pack more labeled tiles (the manifest's label column), spread them through the data, or raise train.batch_size."
    }

    /// Reads lines written by this version and by 0.1.0's first trainer (which lacked the loss terms, the
    /// timings and the rank count).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(step: try c.decode(Int.self, forKey: .step), epoch: try c.decode(Int.self, forKey: .epoch),
                  loss: try c.decodeIfPresent(Float.self, forKey: .loss), kdLoss: try c.decodeIfPresent(Float.self, forKey: .kdLoss),
                  pixelLoss: try c.decodeIfPresent(Float.self, forKey: .pixelLoss), ceLoss: try c.decodeIfPresent(Float.self, forKey: .ceLoss),
                  lr: try c.decode(Double.self, forKey: .lr), imagesPerSecond: try c.decodeIfPresent(Double.self, forKey: .imagesPerSecond),
                  skippedTiles: try c.decode(Int.self, forKey: .skippedTiles), waitMs: try c.decodeIfPresent(Double.self, forKey: .waitMs) ?? 0,
                  allreduceMs: try c.decodeIfPresent(Double.self, forKey: .allreduceMs) ?? 0,
                  ranks: try c.decodeIfPresent(Int.self, forKey: .ranks) ?? 1,
                  valAccuracy: try c.decodeIfPresent(Double.self, forKey: .valAccuracy), valLoss: try c.decodeIfPresent(Double.self, forKey: .valLoss))
        time = try c.decodeIfPresent(Double.self, forKey: .time)
    }

    /// The CSV header matching `csvRow`.
    public static let csvHeader = "step,epoch,loss,kd_loss,pixel_loss,ce_loss,lr,images_per_second,skipped_tiles,wait_ms,allreduce_ms,ranks,val_accuracy,val_loss"

    /// This line as CSV (empty cells for absent values).
    public var csvRow: String {
        func opt<T>(_ v: T?) -> String { v.map { "\($0)" } ?? "" }
        return ["\(step)", "\(epoch)", opt(loss), opt(kdLoss), opt(pixelLoss), opt(ceLoss), "\(lr)", imagesPerSecond.map { String(format: "%.1f", $0) } ?? "",
                "\(skippedTiles)", String(format: "%.2f", waitMs), String(format: "%.3f", allreduceMs), "\(ranks)",
                opt(valAccuracy), opt(valLoss)].joined(separator: ",")
    }
}

/// A training failure the user can act on (a NaN loss, data that does not fit), naming what and where.
public struct TrainingError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// How a call to `run` ended.
public enum RunOutcome: Equatable, Sendable {
    /// The schedule's last step is done.
    case finished
    /// `stopAfter` was reached; a checkpoint holds the step.
    case paused(step: Int)
    /// A stop signal (SIGTERM, SIGUSR1) arrived on some rank; a checkpoint holds the step.
    case interrupted(signal: Int32, step: Int)
}

/// Runs a supervised or distillation training job described by a `RunConfig`, alone or as one rank of a
/// data-parallel job: every rank streams its share of each global batch, gradients are averaged over the
/// global batch by an all-reduce, and the coordinator (rank 0) logs, validates its share and writes checkpoints.
public final class SupervisedTrainer {
    public let config: RunConfig
    public let model: any ImageModel
    public let optimizer: Optimizer
    public let train: ShardDataset
    public let val: ShardDataset?
    public let store: CheckpointStore
    /// The run directory (every path of the run).
    public let runDirectory: RunDirectory
    /// What the run says about itself (run.json and the weights files' metadata).
    public let metadata: RunMetadata
    /// The frozen teacher of a distillation run, or nil.
    public let teacher: (any ImageModel)?
    /// How many times the teacher's view is downsampled from the augmented tile: 1 (full resolution) for a teacher
    /// trained on full-resolution tiles, else the teacher run's own `data.input_factor` (a teacher assistant).
    public let teacherFactor: Int
    /// One line saying which weights teach at which resolution, and the student's (nil without a teacher).
    public let teacherSummary: String?
    /// The ranks of this job (a single process by default).
    public let group: any ProcessGroup
    let writer: String
    /// Losses of every step run by this process (for tests and reports); identical on every rank.
    public private(set) var history: [StepMetrics] = []
    /// The best validation accuracy so far (the weights in best.safetensors), and the step it was reached at in
    /// this process (nil when it came from before a resume).
    public private(set) var bestAccuracy: Double?
    public private(set) var bestStep: Int?
    /// Progress lines (rate and ETA) go here; nil for silence. Only the coordinator calls it.
    public var progress: ((String) -> Void)?
    /// When true, every rank appends the dataset index of each tile it trains on to
    /// `RUN/trace/rank-R-of-W.tsv` (epoch, step, sample): a debugging aid that proves the sample order.
    public var traceSamples = false
    /// The step: this objective's forward/backward, the all-reduce, the update, the state broadcast.
    public let stepper: DataParallelStep
    /// Steps of this process whose teacher forward ran ahead, during the previous step's all-reduce
    /// (`train.overlap_teacher`; not the first step, nor one whose batch the loader did not have ready in time).
    public var teacherForwardsAhead: Int { (stepper.objective as? DistillationStep)?.preparedUsed ?? 0 }
    /// Seconds the last step spent on the next batch's teacher forward (counted in the next step's images_per_second).
    var lookaheadCarry: Double = 0
    /// The teacher weights' digest (distillation), recorded in checkpoints.
    let teacherDigest: String?
    /// The coordinator's lock on the run directory, held while it trains.
    var lock: RunLock?
    /// Warnings found while opening the data (shard sets at different µm/px), shown when the run starts.
    public let notes: [String]
    /// The moving average of the weights (`train.ema_decay`), or nil.
    public let ema: WeightEMA?
    /// The model validated and kept as best.safetensors: the moving average when there is one, else the model.
    public var evaluatedModel: any ImageModel { ema?.model ?? model }
    /// The moving average as a further part of every checkpoint.
    var checkpointParts: [CheckpointPart] { ema.map { [CheckpointPart(name: "ema", model: $0.model, optimizer: nil)] } ?? [] }

    /// The command this run is: `distill` with a teacher, else `train`.
    public var command: TrainingCommand { config.isDistillation ? .distill : .train }

    /// The µm/px each part of `d` records: "data.train" for labeled shards, "data.unlabeled" for unlabeled ones.
    static func scales(_ d: ShardDataset, name: String = "data.train") -> [(String, Double)] {
        var out: [(String, Double)] = []
        for (i, r) in d.readers.enumerated() {
            guard let m = r.metadata.micronsPerPixel else { continue }
            let what = d.unlabeledShards.contains(i) ? "data.unlabeled" : name
            if !out.contains(where: { $0.0 == what && abs($0.1 - m) <= 0.02 * m }) { out.append((what, m)) }
        }
        return out
    }

    /// A warning for every two parts of the data (training, unlabeled, validation shards) recorded at µm/px more
    /// than 2% apart: a model trained at one scale and validated or distilled at another.
    static func scaleWarnings(train: ShardDataset, val: ShardDataset?) -> [String] {
        let all = scales(train) + (val.map { scales($0, name: "data.val") } ?? [])
        var notes: [String] = []
        for i in all.indices {
            for j in all.indices where j > i && abs(all[i].1 - all[j].1) > 0.02 * all[i].1 {
                notes.append(String(format: "%@ tiles are at %.4g µm/px, %@ tiles at %.4g µm/px: the model sees them at different scales. Hint: pack every set at one scale (--magnification, or --tile-mpp for slides).",
                                    all[i].0, all[i].1, all[j].0, all[j].1))
            }
        }
        return notes
    }

    /// The gradient all-reduce settings that do nothing in this launch (said once at the start).
    static func allReduceNotes(_ c: RunConfig, ranks: Int) -> [String] {
        if ranks == 1 {
            let set = [("train.gradient_compression", c.gradientCompression != .none), ("train.allreduce_progress_us", c.allreduceProgressMicroseconds > 0)]
                .filter(\.1).map(\.0)
            return set.isEmpty ? [] : ["\(set.joined(separator: " and ")) \(set.count == 1 ? "has" : "have") no effect in a single process (there is no all-reduce); they apply under mpirun or srun."]
        }
        if !c.overlapAllreduce && c.allreduceProgressMicroseconds > 0 {
            return ["train.allreduce_progress_us has no effect with train.overlap_allreduce: false (the progress thread serves the overlapped all-reduce)."]
        }
        return []
    }

    /// Whether every term of `config`'s objective needs a label (`StepObjective.labelsOnly`).
    static func labelsOnly(_ config: RunConfig) -> Bool {
        !config.isDistillation || config.objective.labelsOnly
    }

    /// The optimizer updates a run makes: every step, or under a labels-only objective on partly labeled tiles the
    /// expected number of global batches holding a labeled tile (1 - (1 - labeled/tiles)^batch of the steps).
    static func expectedUpdates(_ config: RunConfig, tiles: Int, labeled: Int) -> Int {
        let steps = totalSteps(config, tiles: tiles)
        guard labelsOnly(config), labeled < tiles, tiles > 0 else { return steps }
        let none = pow(1 - Double(labeled) / Double(tiles), Double(config.batchSize))
        return Int((Double(steps) * (1 - none)).rounded())
    }

    /// A warning when `train.ema_decay` averages over more steps than the run has: after `steps` updates the first
    /// step's weights still hold `decay^(steps-1)` of the average (AveragedModel's first update copies; with
    /// `train.ema_warmup`, the product of the ramped decays), so an average kept from a short run mostly remembers
    /// the untrained network. Warns above 10%, suggesting the decay that leaves 1% and the warm-up. `estimated`: `steps`
    /// is the expected number of updates on partly labeled tiles (`expectedUpdates`), and the warning says so.
    static func emaHorizonWarning(decay: Double, warmup: Bool = false, steps: Int, estimated: Bool = false) -> String? {
        guard decay > 0, steps > 1 else { return nil }
        let share = WeightEMA.firstWeightsShare(updates: steps, decay: Float(decay), warmup: warmup)
        guard share > 0.1 else { return nil }
        let suggested = (pow(0.01, 1 / Double(steps - 1)) * 1000).rounded(.down) / 1000
        let run = estimated ? "the run makes about \(steps) optimizer updates (a global batch without a labeled tile makes none)"
            : "the run has \(steps) optimizer steps"
        return String(format: "train.ema_decay %g averages over about %.0f steps (1 / (1 - decay)), but %@: at its end the first step's weights still make up %.0f%% of the kept average. Hint: set train.ema_decay to %g or lower for a run this long, or train.ema_warmup: true (the decay ramps up with the steps), or 0 to keep the weights themselves.",
                      decay, 1 / (1 - decay), run, 100 * share, suggested)
    }

    /// Opens the data, builds the model and optimizer (and the teacher). Under several ranks, first checks that
    /// every rank runs the same program version and config.
    /// `teachers`: shared by the students of one pass (`MultiStudentDistiller`): the teacher is loaded once and
    /// its forward runs once per batch.
    public init(config: RunConfig, writer: String, group: any ProcessGroup = SingleProcessGroup(), teachers: TeacherRegistry? = nil) throws {
        self.config = config
        self.writer = writer
        self.group = group
        try group.requireIdentical(writer, what: "program version")
        try group.requireIdentical(config.yaml, what: "config")
        func open(_ path: String, _ key: String, unlabeled: [String] = []) throws -> ShardDataset {
            do {
                return try ShardDataset(directory: URL(fileURLWithPath: path), unlabeled: unlabeled.map { URL(fileURLWithPath: $0) }, minTissue: config.minTissue)
            } catch let e as ShardError {
                throw TrainingError("data.\(key) (\(([path] + unlabeled).joined(separator: ", "))): \(e.message)")
            }
        }
        train = try open(config.trainShards, config.unlabeledShards.isEmpty ? "train" : "train/unlabeled", unlabeled: config.unlabeledShards)
        val = try config.valShards.map { try open($0, "val") }
        if let val, val.classes != train.classes, val.hasLabels {
            throw TrainingError("data.val classes \(val.classes) differ from data.train classes \(train.classes). Hint: pack both splits from folders with the same class names.")
        }
        let o = config.objective
        if config.isDistillation && !train.hasLabels && o.kdWeight == 0 && o.pixelWeight == 0 {
            throw TrainingError("distill.kd_weight and pixel_weight are 0 and data.train (\(config.trainShards)) holds no labeled tile for distill.ce_weight: the student would learn nothing. Hint: the paper's setting is kd_weight 1 and pixel_weight 1.")
        }
        let labeled = train.labeledCount   // one pass over the index
        notes = Self.scaleWarnings(train: train, val: val) + Self.allReduceNotes(config, ranks: group.size)
            + [Self.emaHorizonWarning(decay: Double(config.emaDecay), warmup: config.emaWarmup,
                                      steps: Self.expectedUpdates(config, tiles: train.count, labeled: labeled),
                                      estimated: labeled < train.count && Self.labelsOnly(config)),
               config.isDistillation && config.objective.crossEntropyWeight > 0 && !train.hasLabels
                ? "distill.ce_weight is \(config.objective.crossEntropyWeight), but data.train (\(config.trainShards)) holds no labeled tile: the cross-entropy term is always 0. Hint: set distill.ce_weight: 0, or pack labeled tiles under class folders." : nil].compactMap { $0 }
        if !config.isDistillation && !train.hasLabels {
            throw TrainingError("data.train (\(config.trainShards)) holds no labeled tile: supervised training learns from labels. Hint: pack the training tiles under class folders (or with labels in the manifest), or distill a student from a teacher, which needs no labels.")
        }
        let classes = config.classes > 0 ? config.classes : train.classes.count
        guard classes >= train.classes.count else {
            throw TrainingError("model.classes \(classes) is fewer than the \(train.classes.count) classes in the shards")
        }
        // Softmax over one class is always 1: its cross-entropy is 0 and nothing would be learned.
        if !config.isDistillation && classes < 2 {
            throw TrainingError("data.train (\(config.trainShards)) holds labels of one class only (\(train.classes.joined(separator: ", "))): a classifier needs at least two. Hint: pack tiles of every class (a manifest's classes are the labels it uses), or set model.classes to the number of classes.")
        }
        let mc = config.modelConfig(classes: classes)
        let problems = mc.problems
        guard problems.isEmpty else { throw TrainingError("model: " + problems.joined(separator: "; ")) }
        let network = ResNet(mc, seed: config.seed)
        // Every rank needs a tile per step, and BatchNorm in training mode more than one value per channel: refuse a
        // batch that cannot give them here, before the first step would.
        let resolution = train.tileSize / max(config.inputFactor, 1), perRank = config.batchSize / max(group.size, 1)
        if perRank < 1 {
            throw TrainingError("train.batch_size \(config.batchSize) over \(group.size) ranks leaves a rank without a tile in every step. Hint: set train.batch_size to at least \(group.size) (a multiple of the rank count splits it evenly), or launch fewer ranks.")
        }
        let minimum = mc.minimumTrainingBatch(resolution: resolution)
        if perRank < minimum {
            throw TrainingError("model.architecture \(mc.name) normalises with BatchNorm, which needs more than one value per channel in training; at \(resolution) px (data.input_factor \(config.inputFactor) of \(train.tileSize) px tiles) its last feature map is 1x1, so each rank needs at least \(minimum) tiles per step, but train.batch_size \(config.batchSize) over \(group.size) rank(s) gives \(perRank). Hint: raise train.batch_size to at least \(minimum * group.size), lower data.input_factor, or use model.architecture resnet-gn (GroupNorm).")
        }
        model = network
        ema = config.emaDecay > 0 ? WeightEMA(decay: config.emaDecay, warmup: config.emaWarmup, shadow: ResNet(mc, seed: config.seed), source: network) : nil
        optimizer = Optimizer(config.optimizerKind, count: model.parameterCount)
        runDirectory = RunDirectory(path: config.output)
        var teacherWeightsFile: String?
        if let teacherRun = config.teacherRun {
            // Messages name the key the teacher's weights came from: distill.teacher_weights when given.
            let teacherKey = config.teacherWeights.map { "distill.teacher_weights \($0)" } ?? "distill.teacher_run \(teacherRun)"
            let trained: TrainedModel
            let registryKey = "\(teacherRun)\n\(config.teacherWeights ?? "")"
            if let shared = teachers?.loaded[registryKey] {
                trained = shared.model
            } else {
                do {
                    trained = try TrainedModel.load(run: RunDirectory(path: teacherRun), weights: config.teacherWeights.map { URL(fileURLWithPath: $0) },
                                                    weightsHint: "train the teacher first, or set distill.teacher_weights")
                } catch let e as TrainingError {
                    // The key's name alone when the message already names its path.
                    let named = config.teacherWeights.map { e.message.contains($0) } ?? e.message.contains(teacherRun)
                    let key = named ? (config.teacherWeights != nil ? "distill.teacher_weights" : "distill.teacher_run") : teacherKey
                    throw TrainingError("\(key): \(e.message)")
                }
            }
            guard trained.model.classes > 0 else {
                throw TrainingError("teacher weights \(trained.weights.path) have no classifier (fc.weight). Hint: give the teacher run's best.safetensors.")
            }
            guard trained.model.classes == classes else {
                throw TrainingError("the teacher (\(teacherKey)) has \(trained.model.classes) classes, the student \(classes). Hint: distill on shards with the teacher's classes.")
            }
            if trained.metadata.classes.count == train.classes.count && trained.metadata.classes != train.classes {
                throw TrainingError("the teacher (\(teacherKey)) was trained on classes \(trained.metadata.classes), data.train has \(train.classes). Hint: distill on shards packed with the teacher's class folders.")
            }
            guard config.inputFactor > 1 else {
                let coarser = [2, 4, 8, 16].filter { $0 > trained.metadata.inputFactor }.map(String.init).joined(separator: ", ")
                throw TrainingError("data.input_factor is 1: a distilled student must see tiles downsampled \(trained.metadata.inputFactor > 1 ? "more than its teacher's \(trained.metadata.inputFactor)x (\(coarser.isEmpty ? "none is left" : coarser + "x"))" : "2, 4, 8 or 16x")")
            }
            // A teacher trained on downsampled tiles (a teacher assistant, Mirzadeh et al. 2020) sees the tiles
            // downsampled as in its own run; the student must see them coarser still.
            guard trained.metadata.inputFactor < config.inputFactor else {
                throw TrainingError("the teacher (\(teacherKey)) was trained on tiles downsampled \(trained.metadata.inputFactor)x and sees them so here, but data.input_factor \(config.inputFactor) would give the student as many pixels or more: resolution-based distillation teaches a coarser student. Hint: \(trained.metadata.inputFactor >= 16 ? "no coarser factor is supported (16 is the largest), so" : "set data.input_factor above \(trained.metadata.inputFactor), or") distill from a teacher trained at a higher resolution.")
            }
            if let teacherScale = trained.metadata.tileMicronsPerPixel {
                for (what, scale) in Self.scales(train) where abs(scale - teacherScale) > 0.02 * teacherScale {
                    throw TrainingError(String(format: "the teacher (%@) was trained on tiles at %.4g µm/px, %@ holds tiles at %.4g µm/px: the teacher would see the tissue at another scale than it learned. Hint: distill on shards packed at %.4g µm/px (pack --magnification, or --tile-mpp for slides).", teacherKey, teacherScale, what, scale, teacherScale))
                }
            }
            if config.objective.pixelWeight != 0 && network.featureDimension != trained.model.featureDimension {
                throw TrainingError("distill.pixel_weight \(config.objective.pixelWeight) compares the last feature maps, but the student's has \(network.featureDimension) channels and the teacher's (\(teacherKey)) \(trained.model.featureDimension). Hint: make model.planes end with \(trained.model.featureDimension), or set distill.pixel_weight to 0.")
            }
            if let size = trained.metadata.tileSize, size != train.tileSize {
                throw TrainingError("the teacher (\(teacherKey)) was trained on \(size) px tiles, data.train holds \(train.tileSize) px tiles. Hint: distill on shards packed at the teacher's tile size (and magnification).")
            }
            guard train.tileSize % trained.metadata.inputFactor == 0 else {
                throw TrainingError("the teacher (\(teacherKey)) sees tiles downsampled \(trained.metadata.inputFactor)x, which does not divide data.train's \(train.tileSize) px tiles. Hint: distill on shards packed at a tile size divisible by \(trained.metadata.inputFactor).")
            }
            teacher = trained.model
            teacherWeightsFile = trained.weights.path
            teacherFactor = trained.metadata.inputFactor
            teacherSummary = "teacher: \(trained.weights.path), \(train.tileSize / trained.metadata.inputFactor) px views (input factor \(trained.metadata.inputFactor)); student: \(train.tileSize / config.inputFactor) px (input factor \(config.inputFactor))"
            teacherDigest = trained.digest
            // The teacher sees the tiles as its own run prepared them (its mean and std), whatever the student's are.
            var source: any TeacherSource = FrozenTeacher(trained.model)
            if trained.metadata.mean != config.mean || trained.metadata.std != config.std {
                source = RenormalizingTeacher(source, from: (config.mean, config.std), to: (trained.metadata.mean, trained.metadata.std))
            }
            if let teachers {
                // Students of one pass share data.mean/std (checked), so they share the prepared teacher too.
                let shared = teachers.loaded[registryKey] ?? (trained, SharedTeacher(source))
                teachers.loaded[registryKey] = shared
                source = shared.source
            }
            var objective = config.objective
            objective.labelSmoothing = config.labelSmoothing
            stepper = DataParallelStep(objective: DistillationStep(student: network, teacher: source, objective: objective), group: group)
        } else {
            teacher = nil
            teacherFactor = 1
            teacherSummary = nil
            teacherDigest = nil
            stepper = DataParallelStep(objective: SupervisedStep(model: network, labelSmoothing: config.labelSmoothing), group: group)
        }
        stepper.overlapReduction = group.size > 1 && config.overlapAllreduce
        stepper.prepareAhead = config.overlapTeacher
        stepper.bucketElements = max(1, Int(Double(config.bucketMB) * 1e6 / 4))
        stepper.progressInterval = UInt32(config.allreduceProgressMicroseconds)
        stepper.gradientCompression = config.gradientCompression
        store = runDirectory.checkpointStore(keep: config.keep)
        let classNames = train.classes.count == classes ? train.classes : train.classes + (train.classes.count..<classes).map { "class\($0)" }
        var described = RunMetadata(model: mc, classes: classNames, mean: config.mean, std: config.std, inputFactor: config.inputFactor,
                                    tileSize: train.tileSize, tileMicronsPerPixel: train.micronsPerPixel, trainShards: train.identity,
                                    trainShardsPath: runDirectory.relativePath(config.trainShards), objective: config.isDistillation ? "distillation" : "supervised",
                                    teacherRun: config.teacherRun.map(runDirectory.relativePath), program: writer)
        described.precision = config.precision.rawValue
        if let teacherWeightsFile {
            described.teacherWeights = runDirectory.relativePath(teacherWeightsFile)
            described.teacherInputFactor = teacherFactor
        }
        metadata = described
    }

    /// Refuses a resume that would silently turn into another run: changed keys that shape the model, the data,
    /// the sample order or the objective; another training shard set; another teacher.
    func checkResume(_ state: CheckpointState, checkpoint: URL) throws {
        try RunStart.checkConfig(state, checkpoint: checkpoint, config: config, command: command,
                                 identity: metadata.trainShards.map { TrainingDataIdentity(value: $0, what: "the shard set") }, run: runDirectory)
        if let before = state.teacherWeights, before != teacherDigest {
            throw TrainingError("cannot resume: the checkpoint was distilled from teacher weights \(before), \(config.teacherWeights.map { "distill.teacher_weights (\($0))" } ?? "distill.teacher_run (\(config.teacherRun ?? "-"))") now gives \(teacherDigest ?? "none"). Hint: resume with the teacher the run was distilled from, or start a new run with another run.output.")
        }
    }

    /// Where the coordinator starts: the checkpoint it loaded, if any.
    struct StartPoint: Codable {
        var state: CheckpointState?
        var checkpoint: String?
    }

    /// Trains until `train.epochs` or `train.max_steps`; resumes from the newest checkpoint when `resume` (and
    /// starts fresh when there is none). `stopAfter` ends this call after that many global steps with a
    /// checkpoint, as an interruption would, without changing the schedule. A SIGTERM or SIGUSR1 (see
    /// `StopSignals.install`) on any rank ends it at the next step boundary, with a checkpoint.
    @discardableResult
    public func run(resume: Bool, stopAfter: Int? = nil) throws -> RunOutcome {
        var loop = try begin(resume: resume, stopAfter: stopAfter)
        var batches = LookaheadBatches(loader: try makeLoader(loop), enabled: looksAhead)
        while loop.step < loop.stopAt {
            let t0 = Date()
            let (batch, next) = try batches.take(peek: loop.step + 1 < loop.stopAt)
            if let outcome = try trainStep(batch, loop: &loop, started: t0, waited: Date().timeIntervalSince(t0), lookahead: next) { return outcome }
        }
        return loop.outcome
    }

    /// Whether this run's steps take the next batch to run its teacher forward during their all-reduce
    /// (`train.overlap_teacher`: distillation, several ranks, the overlapped all-reduce).
    var looksAhead: Bool { teacher != nil && stepper.overlapReduction && stepper.prepareAhead }

    /// A loader's batches, each with the next one when the loader already has it (never waiting for it), for a step that
    /// runs the next batch's teacher forward during its all-reduce (`looksAhead`). A loading error of the batch taken
    /// early is thrown at its own turn.
    struct LookaheadBatches {
        let loader: BatchLoader
        let enabled: Bool
        private var upcoming: Result<LoadedBatch, Error>?

        init(loader: BatchLoader, enabled: Bool) { self.loader = loader; self.enabled = enabled }

        /// The next batch (waiting for it), and the one after it when `peek` (a step follows), the lookahead is enabled
        /// and the loader has it ready.
        mutating func take(peek: Bool) throws -> (batch: LoadedBatch, next: LoadedBatch?) {
            let batch = try (upcoming ?? Result { try loader.next() }).get()
            upcoming = enabled && peek ? loader.nextIfReady() : nil
            return (batch, try? upcoming?.get())
        }
    }

    /// Where a run stands between steps: its position, schedule, best metric, divergence guard and logs.
    public struct Loop {
        public internal(set) var step: Int
        public internal(set) var cursor: DataCursor
        var best: Double?
        public let stepsPerEpoch: Int
        public let totalSteps: Int
        public let stopAt: Int
        let startStep: Int
        let begin = Date()
        let schedule: LRSchedule
        let log: MetricsLog?
        let trace: FileHandle?
        var recentLosses: [Float] = [], lowestMedian: Float?

        /// How the run ended when it left the loop at `stopAt`.
        public var outcome: RunOutcome { step >= totalSteps ? .finished : .paused(step: step) }
    }

    /// The steps of one epoch of `train` at the configured global batch.
    public var stepsPerEpoch: Int { train.count / config.batchSize }

    /// The optimizer steps of a whole run over `tiles` training tiles: `train.epochs` epochs of the global batch,
    /// cut at `train.max_steps`.
    static func totalSteps(_ config: RunConfig, tiles: Int) -> Int {
        min(config.maxSteps ?? Int.max, config.epochs * (tiles / config.batchSize))
    }

    /// Takes the run directory (coordinator), resumes or starts, and gives every rank the same state: the start
    /// of `run`, and of a run driven step by step (`trainStep`, several students in one pass).
    public func begin(resume: Bool, stopAfter: Int? = nil) throws -> Loop {
        for note in notes { progress?("warning: " + note) }
        // The coordinator owns the run directory and decides the starting point; every rank then takes its
        // weights, optimizer state and running statistics, so all ranks start identical.
        let start = try group.onCoordinator { () throws -> StartPoint in
            let (lock, state, checkpoint) = try RunStart.begin(runDirectory, store: store, resume: resume, model: model, optimizer: optimizer,
                                                               parts: checkpointParts, check: checkResume, describe: { try runDirectory.write(config: config, metadata: metadata) })
            self.lock = lock
            return StartPoint(state: state, checkpoint: checkpoint?.lastPathComponent)
        }
        try stepper.broadcastState(optimizer: optimizer)
        if let ema {
            try DataParallelStep.broadcastState(of: ema.model, optimizer: nil, group: group)
            // A checkpoint written before the average was kept: it starts again from the weights (first update copies).
            ema.updates = start.state.map { $0.emaUpdates ?? 0 } ?? 0
        }
        let step = start.state?.step ?? 0
        let cursor = start.state?.cursor ?? DataCursor()
        bestAccuracy = start.state?.bestMetric
        // The kept weights name their step (a resumed run's summary line says it, as an uninterrupted run's does).
        if bestAccuracy != nil, group.isCoordinator, let kept = try? SafeTensorsFile(contentsOf: runDirectory.bestWeights) {
            bestStep = kept.metadata["step"].flatMap { Int($0) }
        }
        if let name = start.checkpoint, let state = start.state {
            let ranks = state.worldSize == group.size ? "" : " (written by \(state.worldSize) rank\(state.worldSize == 1 ? "" : "s"), continuing on \(group.size))"
            progress?("resuming from \(name) (epoch \(cursor.epoch), step \(step))\(ranks)")
            if group.isCoordinator, let note = RunStart.changedSettingsNote(state, config: config, command: command) { progress?(note) }
        }
        // Every rank meets the same data problems: one message from the coordinator, no abort.
        try group.collectively { () throws -> Void in
            let steps = stepsPerEpoch
            guard cursor.samplesConsumed == 0 || cursor.nextStep(globalBatch: config.batchSize) < steps else {
                throw TrainingError("data.train (\(config.trainShards)) holds \(train.count) tiles (\(steps) steps of \(config.batchSize)), but the checkpoint is at step \(cursor.nextStep(globalBatch: config.batchSize)) of epoch \(cursor.epoch). Hint: resume with the shards the run was trained on.")
            }
        }
        let totalSteps = Self.totalSteps(config, tiles: train.count)
        StopSignals.arm()
        var loop = Loop(step: step, cursor: cursor, best: bestAccuracy, stepsPerEpoch: stepsPerEpoch, totalSteps: totalSteps,
                        stopAt: min(totalSteps, stopAfter ?? totalSteps), startStep: step, schedule: config.lrSchedule(stepsPerEpoch: stepsPerEpoch),
                        log: group.isCoordinator ? try MetricsLog(run: runDirectory) : nil, trace: traceSamples ? try traceHandle() : nil)
        // The validation a failed data.val left undone at the checkpoint's step (`pendingValidation`) runs first.
        // (`resume` and data.val are the same on every rank, so every rank takes part in the read or none does.)
        let pending = try resume && val != nil && group.collectively { () throws -> Bool in
            (try? String(contentsOf: pendingValidation, encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } == step
        }
        if pending, let val {
            if let (acc, _) = try validateAndKeep(val, loop: &loop, step: step) {
                progress?(String(format: "validation of step %d, left undone when data.val failed: val_acc %.4f", step, acc))
            }
            if group.isCoordinator { try? FileManager.default.removeItem(at: pendingValidation) }
        }
        return loop
    }

    /// Holds the step whose validation failed after its checkpoint was written (a corrupt validation tile), so that
    /// `--resume` validates it before going on.
    var pendingValidation: URL { runDirectory.url.appendingPathComponent("validation-pending") }

    /// Validates the evaluated model on `val` and keeps it as best.safetensors when it beats the loop's best
    /// (step `step`); returns accuracy and loss, nil when `val` has no labeled tile.
    func validateAndKeep(_ val: ShardDataset, loop: inout Loop, step: Int) throws -> (Double, Double)? {
        guard let result = try validate(val) else { return nil }
        let acc = result.0
        if loop.best == nil || acc > loop.best! {
            loop.best = acc
            bestStep = step
            if group.isCoordinator {
                var extra = ["step": "\(step)", "val_accuracy": "\(acc)"]
                if let ema { extra["ema_decay"] = "\(ema.decay)"; extra["ema_updates"] = "\(ema.updates)"; if ema.warmup { extra["ema_warmup"] = "true" } }
                try evaluatedModel.saveWeights(to: runDirectory.bestWeights, metadata: metadata.safetensorsMetadata.merging(extra) { $1 })
            }
        }
        bestAccuracy = loop.best
        return result
    }

    /// This rank's data stream from `loop`'s cursor on; `extraFactors` adds views downsampled by other factors
    /// (several students in one pass).
    public func makeLoader(_ loop: Loop, extraFactors: [Int] = []) throws -> BatchLoader {
        let transform = PairedTransform(augment: config.augment, factor: config.inputFactor, mean: config.mean, std: config.std)
        return try group.collectively { () throws -> BatchLoader in
            do {
                return try BatchLoader(dataset: train, transform: transform, seed: config.seed, globalBatch: config.batchSize, rank: group.rank,
                                       worldSize: group.size, cursor: loop.cursor, withLowResolution: config.inputFactor > 1, policy: config.onCorrupt,
                                       workers: config.workers, extraFactors: extraFactors + (teacherFactor > 1 ? [teacherFactor] : []),
                                       labeledMixupPartners: !config.isDistillation)
            } catch let e as ShardError {
                throw TrainingError("data.train (\(config.trainShards)): \(e.message)")
            }
        }
    }

    /// Warns of a tile skipped under `on_corrupt: skip`: the reader's error without its hint (which suggests the
    /// skipping already chosen), and the way to repair the shard.
    func warnSkipped(_ error: String, _ what: String) {
        let who = group.size > 1 ? "rank \(group.rank) of \(group.size): " : ""
        let cause = error.components(separatedBy: " Hint: ").first ?? error
        FileHandle.standardError.write(Data("warning: \(who)\(what): \(cause) Hint: `histodistill verify` lists every damaged tile; repack the shard to train on them again.\n".utf8))
    }

    /// One global step on `batch` (this rank's share): forward, backward, reduction, update, average, metrics,
    /// validation and checkpoint when due. Returns the outcome when a stop signal ends the run here, else nil.
    /// `started`: when the step began waiting for its batch; `waited`: seconds it waited.
    /// `lookahead`: the next step's batch, whose teacher forward a distillation step may run while its own gradient is
    /// summed (`DataParallelStep.step`); the same weights with or without it.
    public func trainStep(_ batch: LoadedBatch, loop: inout Loop, started t0: Date, waited: TimeInterval,
                          lookahead: LoadedBatch? = nil) throws -> RunOutcome? {
        for skipped in batch.skipped { warnSkipped(skipped, "skipped a corrupt tile (data.on_corrupt: skip)") }
        if let trace = loop.trace {
            try trace.write(contentsOf: Data(batch.samples.map { "\(batch.epoch)\t\(batch.step)\t\($0)\n" }.joined().utf8))
        }
        let lr = loop.schedule.rate(base: config.lr, step: loop.step, epoch: batch.epoch)
        let key = loop.step
        let usedBefore = teacherForwardsAhead
        func run(_ next: StepInput?) throws -> GlobalStep {
            try batch.withStepInput(inputFactor: config.inputFactor, teacherFactor: teacherFactor) { input in
                var input = input
                input.key = key
                return try stepper.step(input, optimizer: optimizer, lr: Float(lr), clipGradNorm: config.clipGradNorm,
                                        skipped: batch.skipped.count, lookahead: next)
            }
        }
        let global = try lookahead.map { next in
            try next.withStepInput(inputFactor: config.inputFactor, teacherFactor: teacherFactor) { la in
                var la = la
                la.key = key + 1
                return try run(la)
            }
        } ?? run(nil)
        // The step's time as if it had run its own teacher forward: without the next batch's, run ahead here, and with
        // its own, run ahead by the previous step (so images_per_second stays comparable step to step).
        let ranAhead = stepper.lastLookaheadSeconds ?? 0
        let seconds = Date().timeIntervalSince(t0) - ranAhead + (teacherForwardsAhead > usedBefore ? lookaheadCarry : 0)
        lookaheadCarry = ranAhead
        var divergence = global.divergence
        // The divergence guard: the loss against the lowest running median (last 100 steps, from the first step on) seen so far, floored
        // at 0.1 so that a well-fitted run's small losses do not make ordinary noise look like an explosion.
        if divergence == nil, config.divergenceFactor > 0, let baseline = loop.lowestMedian,
           global.terms.total > config.divergenceFactor * max(baseline, 0.1) {
            divergence = "the loss exploded to \(global.terms.total), over \(config.divergenceFactor) times the lowest running median \(baseline) (train.divergence_factor)"
        }
        // A step that trained nothing has no loss: it neither enters the guard's median nor moves the average.
        if global.updated { loop.recentLosses.append(global.terms.total) }
        if loop.recentLosses.count > 100 { loop.recentLosses.removeFirst() }
        if !loop.recentLosses.isEmpty {
            let median = loop.recentLosses.sorted()[loop.recentLosses.count / 2]
            loop.lowestMedian = min(loop.lowestMedian ?? median, median)
        }
        if let divergence {
            let message = "\(divergence) at step \(loop.step + 1) (epoch \(batch.epoch)); \(store.intactText()). Hint: lower optimizer.lr, set train.clip_grad_norm, or check the teacher's weights."
            if group.size > 1 { throw CollectiveError(message, report: group.isCoordinator) }
            throw TrainingError(message)
        }
        if global.updated { ema?.update(from: model) }
        loop.step += 1
        loop.cursor = loop.cursor.advanced(globalBatch: config.batchSize, steps: loop.stepsPerEpoch)
        let step = loop.step, totalSteps = loop.totalSteps
        let distilling = teacher != nil
        let trained = global.updated
        var m = StepMetrics(step: step, epoch: batch.epoch, loss: trained ? global.terms.total : nil,
                            kdLoss: distilling && trained ? global.terms.kd : nil, pixelLoss: distilling && trained ? global.terms.pixel : nil,
                            ceLoss: distilling && trained && config.objective.crossEntropyWeight != 0 ? global.terms.crossEntropy : nil, lr: lr,
                            imagesPerSecond: trained ? Double(global.count) / max(seconds, 1e-9) : nil, skippedTiles: global.skipped,
                            waitMs: waited * 1000, allreduceMs: global.reduceSeconds * 1000, ranks: group.size, valAccuracy: nil, valLoss: nil)
        let epochEnded = loop.cursor.epoch != batch.epoch
        let validateNow = epochEnded || step == totalSteps || config.valEvery.map { step % $0 == 0 } == true
        var validation: (Double, Double)?
        if validateNow, let val {
            do { validation = try validateAndKeep(val, loop: &loop, step: step) } catch {
                // The step is trained: keep it before a validation error (a corrupt validation tile) ends the run.
                // A failure to keep it is said, but the validation error stays the one reported.
                history.append(m)
                do {
                    try loop.log?.append(m)
                    try checkpoint(loop)
                    if group.isCoordinator {
                        try Data("\(step)\n".utf8).write(to: pendingValidation, options: .atomic)
                        FileHandle.standardError.write(Data("note: step \(step) was checkpointed before validation failed; once data.val is fixed, --resume continues from it\n".utf8))
                    }
                } catch let kept {
                    FileHandle.standardError.write(Data("warning: step \(step) could not be checkpointed before validation failed (\(kept)); \(store.intactText())\n".utf8))
                }
                throw error
            }
        }
        if let result = validation {
            m.valAccuracy = result.0; m.valLoss = result.1
        }
        bestAccuracy = loop.best
        history.append(m)
        try loop.log?.append(m)
        let stopping = global.stopSignal != nil
        if RunStart.checkpointDue(step: step, config: config, totalSteps: totalSteps, stopAt: loop.stopAt, epochEnded: epochEnded, stopping: stopping) {
            try checkpoint(loop)
            // Nobody leaves before the checkpoint exists (a preempted job must find it on restart).
            if stopping || step == loop.stopAt { try group.barrier() }
        }
        let elapsed = Date().timeIntervalSince(loop.begin)
        let rate = Double(step - loop.startStep) / max(elapsed, 1e-9)
        progress?(String(format: "step %d/%d epoch %d loss %@ lr %.2e %.1f img/s ETA %.0fs%@", step, totalSteps, batch.epoch, m.lossText, lr,
                         rate * Double(config.batchSize), Double(totalSteps - step) / max(rate, 1e-9),
                         m.valAccuracy.map { String(format: " val_acc %.4f", $0) } ?? ""))
        if let signal = global.stopSignal, step < totalSteps { return .interrupted(signal: signal, step: step) }
        return nil
    }

    /// Writes a checkpoint of `loop`'s step (the coordinator writes; the other ranks return).
    public func checkpoint(_ loop: Loop) throws {
        guard group.isCoordinator else { return }
        try store.save(model: model, optimizer: optimizer,
                       state: CheckpointState(step: loop.step, cursor: loop.cursor, seed: config.seed, worldSize: group.size, config: config.yaml,
                                              writer: writer, bestMetric: loop.best, trainShards: metadata.trainShards,
                                              teacherWeights: teacherDigest, emaUpdates: ema?.updates), metadata: metadata.safetensorsMetadata,
                       parts: checkpointParts)
    }

    /// Accuracy and mean cross-entropy on `dataset` (eval mode, no augmentation), each rank evaluating a
    /// contiguous share of the tiles and the counts summed over ranks; nil when no tile has a label.
    public func validate(_ dataset: ShardDataset) throws -> (Double, Double)? {
        let share = (dataset.count * group.rank / group.size)..<(dataset.count * (group.rank + 1) / group.size)
        let p = try Inference.run(model: evaluatedModel, dataset: dataset, settings: InferenceSettings(config), range: share)
        for skipped in p.skipped { warnSkipped(skipped, "validation skipped a corrupt tile (data.on_corrupt: skip); the accuracy leaves it out") }
        var correct = 0
        for (probs, label) in zip(p.probabilities, p.labels) where label >= 0 {
            if probs.indices.max(by: { probs[$0] < probs[$1] }) == Int(label) { correct += 1 }
        }
        var sums: [Double] = [Double(correct), p.meanLoss * Double(p.labeledCount), Double(p.labeledCount)]
        try sums.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
        return sums[2] > 0 ? (sums[0] / sums[2], sums[1] / sums[2]) : nil
    }

    private func traceHandle() throws -> FileHandle {
        let dir = runDirectory.trace
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return try MetricsLog.appendHandle(dir.appendingPathComponent("rank-\(group.rank)-of-\(group.size).tsv"))
    }
}

/// metrics.jsonl and metrics.csv of a run, appended line by line (a resumed run continues them).
final class MetricsLog {
    let jsonl: FileHandle
    let csv: FileHandle
    /// The same scalars for TensorBoard (`tensorboard --logdir runs/`).
    let tensorboard: TensorBoardWriter

    init(run: RunDirectory) throws {
        let directory = run.url
        tensorboard = try TensorBoardWriter(directory: directory)
        jsonl = try Self.appendHandle(run.metricsJSONL)
        let csvURL = run.metricsCSV
        // A run resumed by a version with other columns: keep the old file under another name, start a new one.
        let header = Data((StepMetrics.csvHeader + "\n").utf8)
        let head = (try? FileHandle(forReadingFrom: csvURL)).flatMap { h -> Data? in
            defer { try? h.close() }
            return try? h.read(upToCount: header.count)
        }
        if let head, !head.isEmpty, head != header {
            var n = 1
            while FileManager.default.fileExists(atPath: directory.appendingPathComponent("metrics.\(n).csv").path) { n += 1 }
            try FileManager.default.moveItem(at: csvURL, to: directory.appendingPathComponent("metrics.\(n).csv"))
        }
        if !FileManager.default.fileExists(atPath: csvURL.path) {
            try header.write(to: csvURL, options: .atomic)
        }
        csv = try Self.appendHandle(csvURL)
    }

    deinit { try? jsonl.close(); try? csv.close() }

    /// The TensorBoard tags of a metrics line: train/... for every step, val/... at validations.
    static func scalars(_ m: StepMetrics) -> [(String, Float)] {
        var out: [(String, Float)] = m.loss.map { [("train/loss", $0)] } ?? []
        if let v = m.kdLoss { out.append(("train/kd_loss", v)) }
        if let v = m.pixelLoss { out.append(("train/pixel_loss", v)) }
        if let v = m.ceLoss { out.append(("train/ce_loss", v)) }
        out.append(("train/lr", Float(m.lr)))
        if let v = m.imagesPerSecond { out.append(("train/images_per_second", Float(v))) }
        out += [("train/wait_ms", Float(m.waitMs)),
                ("train/allreduce_ms", Float(m.allreduceMs))]
        if m.skippedTiles > 0 { out.append(("train/skipped_tiles", Float(m.skippedTiles))) }
        if let v = m.valAccuracy { out.append(("val/accuracy", Float(v))) }
        if let v = m.valLoss { out.append(("val/loss", Float(v))) }
        return out
    }

    /// Drops the lines of steps after `step` from metrics.jsonl and metrics.csv (a resumed run logs them again).
    static func truncate(run: RunDirectory, after step: Int) throws {
        func keep(_ url: URL, header: Bool, stepOf: (Substring) -> Int?) throws {
            guard let text = try? String(contentsOf: url, encoding: .utf8) else { return }
            let lines = text.split(separator: "\n", omittingEmptySubsequences: true)
            let kept = lines.enumerated().filter { i, line in (header && i == 0) || (stepOf(line).map { $0 <= step } ?? false) }.map(\.element)
            guard kept.count != lines.count else { return }
            try CheckpointStore.writeAtomically(Data((kept.joined(separator: "\n") + (kept.isEmpty ? "" : "\n")).utf8), to: url)
        }
        try keep(run.metricsJSONL, header: false) { line in
            (try? JSONDecoder().decode(StepMetrics.self, from: Data(line.utf8)))?.step
        }
        try keep(run.metricsCSV, header: true) { line in line.split(separator: ",").first.flatMap { Int($0) } }
    }

    /// Appends `m` with the wall-clock time, keys in one (sorted) order on every line.
    func append(_ m: StepMetrics) throws {
        var m = m
        if m.time == nil { m.time = (Date().timeIntervalSince1970 * 1000).rounded() / 1000 }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try jsonl.write(contentsOf: encoder.encode(m) + Data("\n".utf8))
        try tensorboard.add(step: m.step, scalars: Self.scalars(m), wallTime: m.time ?? Date().timeIntervalSince1970)
        try csv.write(contentsOf: Data((m.csvRow + "\n").utf8))
    }

    static func appendHandle(_ url: URL) throws -> FileHandle {
        if !FileManager.default.fileExists(atPath: url.path) { _ = FileManager.default.createFile(atPath: url.path, contents: nil) }
        let h = try FileHandle(forWritingTo: url)
        try h.seekToEnd()
        return h
    }
}
