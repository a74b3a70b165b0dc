// The step loop the slide-level trainers (`mil train`, `finetune`) share around their own forward and backward:
// the schedule over slides, the learning rate, the divergence message, validation with the best kept, metrics,
// checkpoints when due, the progress line and the stop signal.
import Foundation
import Layers
import TileShards

/// A labelled validation slide's class probabilities under the current weights.
struct SlideScore {
    let probabilities: [Double]
    let label: Int
}

/// The bookkeeping of a slide-level training run, one value per `run(resume:stopAfter:)` call: a step is
/// `next()` (this rank's slides and the learning rate), the trainer's own work, then `end(...)`.
struct SlideRunLoop {
    let config: RunConfig
    let group: any ProcessGroup
    let store: CheckpointStore
    private(set) var step: Int
    private(set) var cursor: DataCursor
    /// The best validation accuracy so far (from the checkpoint on resume).
    private(set) var best: Double?
    let slides: Int, batch: Int, stepsPerEpoch: Int, totalSteps: Int, stopAt: Int
    private let schedule: LRSchedule
    private let metricsLog: MetricsLog?
    private let began = Date(), startStep: Int
    private var stepStarted = Date()
    private let progress: ((String) -> Void)?
    private let writer: String, identity: ShardSetIdentity

    /// Continues from `start` (the resumed checkpoint's state, printing the resume and any changed-settings note)
    /// or from step 0, over `slides` training slides in global batches of `config.batchSize` (at most `slides`).
    /// `writer` and `identity` (the training data's) go into every checkpoint's state; `command` says which keys count.
    init(start: CheckpointState?, slides: Int, config: RunConfig, command: TrainingCommand, group: any ProcessGroup, store: CheckpointStore, run: RunDirectory,
         stopAfter: Int?, writer: String, identity: ShardSetIdentity, progress: ((String) -> Void)?) throws {
        self.config = config; self.group = group; self.store = store; self.progress = progress; self.slides = slides
        self.writer = writer; self.identity = identity
        if let start {
            progress?("resuming from step \(start.step) (epoch \(start.cursor.epoch))")
            if group.isCoordinator, let note = RunStart.changedSettingsNote(start, config: config, command: command) { progress?(note) }
        }
        step = start?.step ?? 0
        cursor = start?.cursor ?? DataCursor()
        best = start?.bestMetric
        StopSignals.arm()
        startStep = step
        batch = min(config.batchSize, slides)
        stepsPerEpoch = slides / batch
        totalSteps = min(config.maxSteps ?? Int.max, config.epochs * stepsPerEpoch)
        stopAt = min(totalSteps, stopAfter ?? totalSteps)
        schedule = config.lrSchedule(stepsPerEpoch: stepsPerEpoch)
        metricsLog = group.isCoordinator ? try MetricsLog(run: run) : nil
    }

    /// Whether another step runs in this call.
    var running: Bool { step < stopAt }
    /// Whether the schedule's last step is done.
    var finished: Bool { step >= totalSteps }
    /// How the call ends when the loop runs out: finished, or paused by `--stop-after`.
    var outcome: RunOutcome { finished ? .finished : .paused(step: step) }

    /// Starts a step: this rank's share of the step's global batch (training slide indices, in the epoch's
    /// seeded order) and the learning rate.
    mutating func next() -> (slides: [Int], lr: Double) {
        stepStarted = Date()
        let plan = EpochPlan(count: slides, seed: config.seed, epoch: cursor.epoch, globalBatch: batch)
        return (plan.samples(step: cursor.nextStep(globalBatch: batch), rank: group.rank, worldSize: group.size),
                schedule.rate(base: config.lr, step: step, epoch: cursor.epoch))
    }

    /// The error for a step that was not applied (`why`: a non-finite loss, gradient or weight), naming the step
    /// and what is intact; every rank throws it together under mpirun.
    func diverged(_ why: String) -> Error {
        let message = "\(why) at step \(step + 1) (epoch \(cursor.epoch)); \(store.intactText()). Hint: lower optimizer.lr."
        return group.size > 1 ? CollectiveError(message, report: group.isCoordinator) : TrainingError(message)
    }

    /// Ends the step `global` reduced: advances the cursor; at epoch ends, at the schedule's end and every
    /// `val_every` steps scores the validation slides (`validate`, nil: no validation set) and, on a new best
    /// accuracy, calls `saveBest(step, accuracy)` on the coordinator; logs the metrics (`imagesPerSlide` tiles per
    /// trained slide for images/s); writes a checkpoint when due (`checkpoint`, on the coordinator, then a barrier
    /// before a stop); prints the progress line. Returns the step's metrics, and the outcome when a stop signal
    /// ends the run here.
    mutating func end(_ global: GlobalStep, lr: Double, imagesPerSlide: Int, classes: Int, validate: (() throws -> [SlideScore])?,
                      saveBest: (Int, Double) throws -> Void, checkpoint: (CheckpointState) throws -> Void) throws -> (StepMetrics, RunOutcome?) {
        step += 1
        let epoch = cursor.epoch
        cursor = cursor.advanced(globalBatch: batch, steps: stepsPerEpoch)
        let trained = global.updated
        var m = StepMetrics(step: step, epoch: epoch, loss: trained ? global.terms.total : nil, pixelLoss: trained ? global.terms.pixel : nil,
                            ceLoss: trained ? global.terms.crossEntropy : nil,
                            lr: lr, imagesPerSecond: trained ? Double(global.count * imagesPerSlide) / max(Date().timeIntervalSince(stepStarted), 1e-9) : nil,
                            skippedTiles: 0, allreduceMs: global.reduceSeconds * 1000, ranks: group.size)
        let epochEnded = cursor.epoch != epoch
        if epochEnded || step == totalSteps || config.valEvery.map({ step % $0 == 0 }) == true, let validate {
            let scores = try validate()
            if !scores.isEmpty {
                let report = ClassificationReport.compute(probabilities: scores.map(\.probabilities), labels: scores.map(\.label), classes: classes)
                m.valAccuracy = report.accuracy
                m.valLoss = scores.map { -Foundation.log(max($0.probabilities[$0.label], 1e-30)) }.reduce(0, +) / Double(scores.count)
                if best == nil || report.accuracy > best! {
                    best = report.accuracy
                    if group.isCoordinator { try saveBest(step, report.accuracy) }
                }
            }
        }
        try metricsLog?.append(m)
        let stopping = global.stopSignal != nil
        if RunStart.checkpointDue(step: step, config: config, totalSteps: totalSteps, stopAt: stopAt, epochEnded: epochEnded, stopping: stopping) {
            if group.isCoordinator {
                try checkpoint(CheckpointState(step: step, cursor: cursor, seed: config.seed, worldSize: group.size, config: config.yaml,
                                               writer: writer, bestMetric: best, trainShards: identity))
            }
            if stopping || step == stopAt { try group.barrier() }
        }
        let rate = Double(step - startStep) / max(Date().timeIntervalSince(began), 1e-9)
        progress?(String(format: "step %d/%d epoch %d loss %@ lr %.2e ETA %.0fs%@", step, totalSteps, epoch, m.lossText, lr,
                         Double(totalSteps - step) / max(rate, 1e-9), m.valAccuracy.map { String(format: " val_acc %.4f", $0) } ?? ""))
        if let signal = global.stopSignal, step < totalSteps { return (m, .interrupted(signal: signal, step: step)) }
        return (m, nil)
    }
}
