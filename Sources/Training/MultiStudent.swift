// Several students distilled from one teacher in one pass over the data: one data stream, one teacher forward per
// batch, each student its own run directory, checkpoints and metrics, each identical to its own separate run.
import Foundation
import Layers
import TensorCore
import TileShards

/// The teachers loaded for the students of one pass, by teacher run and weights file.
public final class TeacherRegistry {
    var loaded: [String: (model: TrainedModel, source: SharedTeacher)] = [:]
    public init() {}
}

/// A teacher whose outputs for a batch are computed once and given to every student of the batch.
/// `nextBatch()` starts a batch; the first `outputs` call of a batch runs the teacher, later ones (same tiles)
/// return its outputs again.
public final class SharedTeacher: TeacherSource {
    public let base: any TeacherSource
    private var generation = 0, servedGeneration = -1
    private var servedImages: UnsafePointer<Float>?
    private var servedShape: NCHW?
    private var cached: ImageModelOutput?
    /// Teacher forwards run so far.
    public private(set) var forwards = 0
    /// Outputs computed ahead for the next batch by one student's step, for every student of the pass
    /// (`DistillationStep.prepare`).
    public let lookahead = TeacherLookahead()

    public init(_ base: any TeacherSource) { self.base = base }
    public var classes: Int { base.classes }

    /// The next `outputs` call runs the teacher on new tiles.
    public func nextBatch() { generation += 1 }

    public func outputs(_ images: UnsafePointer<Float>, shape: NCHW) -> ImageModelOutput {
        outputs(images, shape: shape, progress: nil)
    }

    public func outputs(_ images: UnsafePointer<Float>, shape: NCHW, progress: (() -> Void)?) -> ImageModelOutput {
        if let cached, servedGeneration == generation, servedImages == images, servedShape == shape { return cached }
        let out = base.outputs(images, shape: shape, progress: progress)
        cached = out; servedGeneration = generation; servedImages = images; servedShape = shape
        forwards += 1
        return out
    }
}

/// Distills several students (one config each) from one teacher in one pass: the tiles are read and augmented
/// once, every student's view is made from the same augmented tile, the teacher runs once per batch, and each
/// student trains, validates and checkpoints in its own run directory exactly as its own `distill` run would
/// (same losses, bit for bit). The configs must agree on everything that shapes the data stream and the teacher.
public final class MultiStudentDistiller {
    public let students: [SupervisedTrainer]
    public let teacher: SharedTeacher
    public let group: any ProcessGroup

    /// Keys every student's config must share: the data stream (shards, order, augmentation, normalisation), the
    /// schedule's length, the teacher and the precision (one setting for the process's convolutions).
    public static let sharedKeys: [String] = ["run.seed", "data.train", "data.unlabeled", "data.mean", "data.std", "data.min_tissue",
                                              "data.on_corrupt", "train.batch_size", "train.epochs", "train.max_steps", "train.threads", "train.precision",
                                              "distill.teacher_run", "distill.teacher_weights"]
        + ConfigKey.table.filter { $0.section == "augment" }.map(\.path)

    /// `configs` with their sources (file names) for messages.
    public init(configs: [(config: RunConfig, source: String)], writer: String, group: any ProcessGroup = SingleProcessGroup()) throws {
        guard configs.count >= 2 else { throw TrainingError("distilling several students in one pass needs at least two configs, got \(configs.count)") }
        for (c, source) in configs where !c.isDistillation {
            throw TrainingError("\(source) has no distill section: every config of a multi-student pass distills from the teacher. Hint: add distill.teacher_run.")
        }
        let first = configs[0]
        for (c, source) in configs.dropFirst() {
            for path in Self.sharedKeys {
                let key = ConfigKey.table.first { $0.path == path }!
                let a = key.write(first.config) ?? "unset", b = key.write(c) ?? "unset"
                if a != b {
                    throw TrainingError("\(path) is \(a) in \(first.source) but \(b) in \(source): students distilled in one pass share the data stream and the teacher. Hint: set \(path) alike in both, or distill them separately.")
                }
            }
        }
        var outputs: [String: String] = [:]
        for (c, source) in configs {
            let path = URL(fileURLWithPath: c.output).standardizedFileURL.path
            if let other = outputs[path] {
                throw TrainingError("\(other) and \(source) both write to \(c.output). Hint: give each student its own run.output (with --runs-dir, its own run.name; a --set run.output applies to every config, so use --runs-dir DIR instead).")
            }
            outputs[path] = source
        }
        let registry = TeacherRegistry()
        // A student's own refusal names its config (the others may be fine).
        students = try configs.map { c in
            do { return try SupervisedTrainer(config: c.config, writer: writer, group: group, teachers: registry) } catch let e as TrainingError {
                throw TrainingError("\(c.source): \(e.message)")
            }
        }
        guard registry.loaded.count == 1, let shared = registry.loaded.values.first?.source else {
            preconditionFailure("MultiStudentDistiller: the students share one teacher (checked above)")
        }
        teacher = shared
        self.group = group
    }

    /// Trains every student to its schedule's end (or `stopAfter` global steps); resumes each from its newest
    /// checkpoint when `resume`, which must put them all at the same step. A stop signal checkpoints every student
    /// at the same step. Returns each student's outcome, in config order.
    @discardableResult
    public func run(resume: Bool, stopAfter: Int? = nil) throws -> [RunOutcome] {
        var loops = try students.map { try $0.begin(resume: resume, stopAfter: stopAfter) }
        let positions = loops.map(\.step)
        guard Set(positions).count == 1, Set(loops.map(\.totalSteps)).count == 1 else {
            let standing = zip(students, positions).map { "\($0.runDirectory.url.path) at step \($1)" }.joined(separator: ", ")
            throw TrainingError("the students' checkpoints are at different steps (\(standing)), so they cannot continue in one pass. Hint: resume each with its own `histodistill distill --config`, or start the pass afresh in new run directories.")
        }
        let loader = try students[0].makeLoader(loops[0], extraFactors: students.dropFirst().map(\.config.inputFactor))
        // As `SupervisedTrainer.run`: the last student's step runs the next batch's teacher forward while its gradient is
        // summed (every student has used this batch's teacher outputs by then); the others find them by the batch's key.
        var batches = SupervisedTrainer.LookaheadBatches(loader: loader, enabled: students[students.count - 1].looksAhead)
        while loops[0].step < loops[0].stopAt {
            let t0 = Date()
            let (batch, next) = try batches.take(peek: loops[0].step + 1 < loops[0].stopAt)
            let waited = Date().timeIntervalSince(t0)
            teacher.nextBatch()
            var outcomes: [RunOutcome?] = []
            for i in students.indices {
                outcomes.append(try students[i].trainStep(batch, loop: &loops[i], started: i == 0 ? t0 : Date(), waited: i == 0 ? waited : 0,
                                                          lookahead: i == students.count - 1 ? next : nil))
            }
            if let stopped = outcomes.compactMap({ $0 }).first {
                // A signal seen by a later student of the step: the earlier ones checkpoint this step too.
                for i in students.indices where outcomes[i] == nil { try students[i].checkpoint(loops[i]) }
                try group.barrier()
                return students.indices.map { outcomes[$0] ?? stopped }
            }
        }
        return loops.map(\.outcome)
    }
}
