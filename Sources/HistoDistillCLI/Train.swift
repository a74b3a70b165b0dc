// `histodistill train`: supervised training from a YAML config, resumable.
import ArgumentParser
import Foundation
import Distributed
import TensorCore
import TileShards
import Training

/// Refuses a `--threads` value outside 1...RunConfig.maximumThreads (the bound of `train.threads`), naming the flag
/// and the value.
func validateThreads(_ threads: Int?, flag: String = "--threads") throws {
    if let threads, !(1...RunConfig.maximumThreads).contains(threads) {
        throw ValidationError("\(flag) must be 1 to \(RunConfig.maximumThreads), got \(threads)")
    }
}

/// Flags shared by `train`, `distill`, `mil train` and `finetune`.
struct TrainingOptions: ParsableArguments {
    @Option(name: .customLong("set"), help: "Override a config key, e.g. --set train.epochs=3 (repeatable).")
    var overrides: [String] = []

    @Flag(help: "Continue from the newest complete checkpoint in the run directory (start over when there is none, moving an earlier attempt's best weights and metrics to RUN/previous-TIME).")
    var resume = false

    @Option(help: "Stop after this global step with a checkpoint (split a run into time-boxed jobs; --resume continues).")
    var stopAfter: Int?

    @Option(help: "What a corrupt tile does while training: stop (name it and exit) or skip (warn, count it in metrics); same as --set data.on_corrupt=...")
    var onCorrupt: CorruptTilePolicy?

    @Flag(help: "Every rank appends the dataset index of each tile it trains on to RUN/trace/rank-R-of-W.tsv (debugging).")
    var traceSamples = false

    /// `distill --runs-dir`: each run goes to DIR/<run.name>.
    var runsDir: String?

    enum CodingKeys: String, CodingKey { case overrides, resume, stopAfter, onCorrupt, traceSamples }

    func validate() throws {
        if let s = stopAfter, s < 1 { throw ValidationError("--stop-after must be at least 1, got \(s)") }
    }
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a classifier on shards (a teacher at full resolution, or a low-resolution baseline).",
        discussion: """
            Every option lives in the YAML config (see configs/); override any key with --set section.key=value. \
            The run directory gets config.yaml, metrics.jsonl, metrics.csv, best.safetensors and checkpoints/. \
            --resume continues from the newest complete checkpoint with the same losses as an uninterrupted run. \
            Runs unchanged as one process or under mpirun/srun (data parallel; see docs/cluster.md). SIGTERM or \
            SIGUSR1 writes a checkpoint at the next step and exits with status 75.
            """)

    @Option(help: "YAML experiment config.")
    var config: String

    @OptionGroup var options: TrainingOptions

    func run() throws {
        try runTraining(config: config, options: options, distillation: false)
    }
}

struct Distill: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Distill a low-resolution student from a frozen higher-resolution teacher (KD + pixel loss, labels optional).",
        discussion: """
            The config's distill section names the teacher's run directory; the student sees tiles downsampled by \
            data.input_factor, the teacher the same augmented tiles at full resolution (a teacher trained on \
            downsampled tiles, a "teacher assistant", sees them downsampled as in its own run; the student must be \
            coarser). Loss: kd_weight * KL(T) + \
            pixel_weight * L1/L2(student map, teacher map resized by maxpool, bicubic or both) + ce_weight * CE. \
            Several --config files distill several students (e.g. 56 and 28 px) from the same teacher in one pass: \
            the tiles are read and augmented once and the teacher runs once per batch; each student gets its own \
            run directory, identical to its own separate run. Their configs must share the data, seed, batch, \
            epochs, augmentation and teacher. \
            Runs unchanged as one process or under mpirun/srun; SIGTERM, SIGUSR1 or Ctrl-C checkpoints and exits with 75.
            """)

    @Option(parsing: .upToNextOption, help: "YAML experiment config with a distill section; several (--config A B, or --config repeated) distill several students in one pass.")
    var config: [String]

    @OptionGroup var options: TrainingOptions

    @Option(help: "Write each student's run to DIR/<run.name> instead of its run.output (one --set run.output cannot name several runs).")
    var runsDir: String?

    func validate() throws {
        guard !config.isEmpty else { throw ValidationError("give at least one --config") }
    }

    func run() throws {
        var options = options
        options.runsDir = runsDir
        if config.count == 1 {
            try runTraining(config: config[0], options: options, distillation: true)
        } else {
            StopSignals.install()
            try runOnRanks { group, launch in try distillSeveral(configs: config, options: options, group: group, launch: launch) }
        }
    }
}

/// Exit status of a run stopped by SIGTERM, SIGUSR1 or SIGINT after writing its checkpoint (EX_TEMPFAIL: try again
/// with --resume). cluster/slurm-train.sbatch requeues the job on it.
let interruptedExitStatus: Int32 = 75

/// Shared by `train` and `distill`: join the process group, load and check the config, run, report. Under
/// several ranks, a failure all ranks share ends every rank with one message; a failure of one rank aborts
/// the job (MPI_Abort) with a message naming the rank, so no rank is left waiting.
func runTraining(config: String, options: TrainingOptions, distillation: Bool) throws {
    StopSignals.install()
    try runOnRanks { group, launch in
        try train(config: config, options: options, distillation: distillation, group: group, launch: launch)
    }
}

/// Loads `config` with the command line's overrides.
private func loadRunConfig(_ config: String, options: TrainingOptions, command: TrainingCommand) throws -> RunConfig {
    let overrides = options.overrides + (options.onCorrupt.map { ["data.on_corrupt=\($0.rawValue)"] } ?? [])
    do {
        var c = try RunConfig.load(URL(fileURLWithPath: config), overrides: overrides, command: command)
        if let dir = options.runsDir { c.output = URL(fileURLWithPath: dir).appendingPathComponent(c.name).path }
        return c
    } catch let e as ConfigError {
        throw CLIError(e.message)
    }
}

/// Warns (on standard error) about keys of `file` that `command` does not read, so a setting meant for another
/// command is not silently without effect.
func warnIgnoredKeys(_ cfg: RunConfig, file: String, overrides: [String], command: TrainingCommand) {
    let given = Set(overrides.compactMap { $0.split(separator: "=", maxSplits: 1).first.map(String.init) })
    let ignored = cfg.ignoredKeys(by: command)
    for (origin, keys) in [("\(file) sets", ignored.filter { !given.contains($0) }), ("--set gives", ignored.filter(given.contains))] where !keys.isEmpty {
        let them = keys.count == 1 ? "it" : "them"
        FileHandle.standardError.write(Data("warning: \(origin) \(keys.joined(separator: ", ")), which `histodistill \(command.rawValue)` does not read: \(keys.count == 1 ? "it has" : "they have") no effect here. Hint: remove \(them), or give \(them) to the command that reads \(them).\n".utf8))
    }
}

/// A training run's failures the user can act on (training, checkpoint and shard errors) as one clear line each.
private func asUserErrors<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let e as TrainingError {
        throw CLIError(e.message)
    } catch let e as CheckpointError {
        throw CLIError(e.message)
    } catch let e as ShardError {
        throw CLIError(e.message)
    }
}

/// Sets the compute threads per rank (`train.threads`, else the launch's share of the cores) and the convolutions'
/// precision (`train.precision`). Returns what says them (the compute line and its warnings, on the coordinator): the caller calls it once the
/// command has passed its start-up checks, so that a start-up error is not preceded by a compute line.
func setUpCompute(threads: Int?, precision: MatmulPrecision, group: any ProcessGroup, launch: LaunchEnvironment) -> () -> Void {
    BLAS.setThreadCount(threads ?? launch.defaultThreadsPerRank(cores: ProcessInfo.processInfo.activeProcessorCount))
    BF16GEMM.precision = precision
    return {
        guard group.isCoordinator else { return }
        for w in KernelAdvice.current() { FileHandle.standardError.write(Data("warning: \(w)\n".utf8)) }
        announceCompute(precision: precision, threadsChosen: threads != nil, setting: "train.threads")
    }
}

/// The compute line a command prints on standard error before its work ("compute: 2 threads per process,
/// 32-true"), with the kernels when bf16-mixed runs natively, then its warnings: bf16-mixed emulated, or threads
/// per process (`setting`, when the user chose them) times the processes on this node above the node's cores.
func announceCompute(precision: MatmulPrecision, threadsChosen: Bool, setting: String) {
    let threads = BLAS.threadCount, launch = LaunchEnvironment.current()
    var line = "compute: \(threads) thread\(threads == 1 ? "" : "s") per process, \(precision.rawValue)"
    var warnings: [String] = []
    if precision == .bf16Mixed {
        if let w = BF16GEMM.emulationWarning { warnings.append(w) } else { line += " (\(BF16GEMM.kernelDescription))" }
    }
    if threadsChosen, let w = oversubscriptionWarning(threads: threads, processesOnNode: launch.localSize ?? 1,
                                                      cores: ProcessInfo.processInfo.activeProcessorCount, setting: setting) {
        warnings.append(w)
    }
    FileHandle.standardError.write(Data((line + "\n").utf8))
    for w in warnings { FileHandle.standardError.write(Data("warning: \(w)\n".utf8)) }
}

/// A warning when `threads` per process times `processesOnNode` exceeds the node's `cores`: the threads then take
/// turns on the cores, and every step waits for the slowest (the engine's threads meet at every kernel).
func oversubscriptionWarning(threads: Int, processesOnNode: Int, cores: Int, setting: String) -> String? {
    let (wanted, overflow) = threads.multipliedReportingOverflow(by: max(1, processesOnNode))
    guard overflow || wanted > cores else { return nil }
    let fit = max(1, cores / max(1, processesOnNode))
    let who = processesOnNode > 1 ? "\(threads) threads x \(processesOnNode) processes" : "\(threads) threads"
    return "\(who) exceed this node's \(cores) cores: threads sharing a core run slower, not faster. Hint: set \(setting) to \(fit)\(fit > 1 ? " or fewer" : "") (or leave it unset: the default is the node's cores / the processes on it)"
}

/// `distill` with several configs: the students of one teacher in one pass (`MultiStudentDistiller`).
private func distillSeveral(configs: [String], options: TrainingOptions, group: any ProcessGroup, launch: LaunchEnvironment) throws -> Int32 {
    let cfgs = try group.collectively { () throws -> [RunConfig] in
        return try configs.map { path in
            let c: RunConfig
            // An error of one config names it, whether or not it came from the file (a --set applies to every config).
            do { c = try loadRunConfig(path, options: options, command: .distill) } catch let e as CLIError where !e.message.contains(path) {
                throw CLIError("\(path): \(e.message)", hint: e.hint)
            }
            if !c.isDistillation { throw CLIError("\(path) has no distill section", hint: "every config of a multi-student pass distills: add distill.teacher_run") }
            return c
        }
    }
    if group.isCoordinator { for (c, path) in zip(cfgs, configs) { warnIgnoredKeys(c, file: path, overrides: options.overrides, command: .distill) } }
    let announce = setUpCompute(threads: cfgs[0].threads, precision: cfgs[0].precision, group: group, launch: launch)
    let pass = try group.collectively { () throws -> MultiStudentDistiller in
        do {
            return try MultiStudentDistiller(configs: Array(zip(cfgs, configs)).map { ($0, $1) }, writer: "histodistill \(histodistillVersion)", group: group)
        } catch let e as TrainingError {
            throw CLIError(e.message)
        }
    }
    announce()
    for s in pass.students {
        s.traceSamples = options.traceSamples
        if group.isCoordinator { s.progress = progressSink(label: s.config.name) }
    }
    if group.isCoordinator {
        let views = pass.students.map { "\($0.config.name) (\($0.config.inputFactor)x)" }.joined(separator: ", ")
        FileHandle.standardError.write(Data("distilling \(pass.students.count) students in one pass: \(views); \(group.size) rank(s), global batch \(cfgs[0].batchSize)\n".utf8))
        if let line = pass.students[0].teacherSummary?.components(separatedBy: "; student").first { FileHandle.standardError.write(Data((line + "\n").utf8)) }
    }
    let outcomes = try asUserErrors { try pass.run(resume: options.resume, stopAfter: options.stopAfter) }
    guard group.isCoordinator else { return outcomes.first?.exitStatus ?? 0 }
    if isatty(2) != 0 { FileHandle.standardError.write(Data("\n".utf8)) }
    for (trainer, outcome) in zip(pass.students, outcomes) { report(trainer, outcome, config: trainer.config, stopAfter: options.stopAfter) }
    print("teacher forwards: \(pass.teacher.forwards) for \(pass.students.count) students")
    return outcomes.first?.exitStatus ?? 0
}

private func train(config: String, options: TrainingOptions, distillation: Bool, group: any ProcessGroup, launch: LaunchEnvironment) throws -> Int32 {
    let cfg = try group.collectively { () throws -> RunConfig in
        let cfg = try loadRunConfig(config, options: options, command: distillation ? .distill : .train)
        if cfg.isDistillation != distillation {
            throw CLIError(distillation ? "\(config) has no distill section" : "\(config) has a distill section",
                           hint: distillation ? "add distill.teacher_run, or use `histodistill train`" : "use `histodistill distill` for it")
        }
        return cfg
    }
    if group.isCoordinator { warnIgnoredKeys(cfg, file: config, overrides: options.overrides, command: distillation ? .distill : .train) }
    let announce = setUpCompute(threads: cfg.threads, precision: cfg.precision, group: group, launch: launch)
    let trainer = try group.collectively { () throws -> SupervisedTrainer in
        do { return try SupervisedTrainer(config: cfg, writer: "histodistill \(histodistillVersion)", group: group) } catch let e as TrainingError {
            throw CLIError(e.message)
        }
    }
    announce()
    trainer.traceSamples = options.traceSamples
    let terminal = isatty(2) != 0
    if group.isCoordinator {
        if group.size > 1 {
            FileHandle.standardError.write(Data("\(group.size) ranks (\(group.transportName)), \(BLAS.threadCount) compute thread(s) each, global batch \(cfg.batchSize)\n".utf8))
        }
        if let line = trainer.teacherSummary { FileHandle.standardError.write(Data((line + "\n").utf8)) }
        trainer.progress = progressSink()
    }
    let outcome = try asUserErrors { try trainer.run(resume: options.resume, stopAfter: options.stopAfter) }
    guard group.isCoordinator else { return outcome.exitStatus }
    if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
    report(trainer, outcome, config: cfg, stopAfter: options.stopAfter)
    return outcome.exitStatus
}

/// The line a run stopped by a signal or paused by --stop-after ends with (nil for a finished run), for every
/// training command; `stopAfter` is the command's --stop-after (a run resumed past it took no step).
func unfinishedLine(_ outcome: RunOutcome, store: CheckpointStore, stopAfter: Int?) -> String? {
    switch outcome {
    case .interrupted(let signal, let step):
        return "stopped by \(StopSignals.name(signal)) after step \(step): checkpoint written in \(store.directory.path); continue with --resume"
    case .paused(let step) where stopAfter.map({ step > $0 }) == true:
        return "nothing to do: the run is already at step \(step), past --stop-after \(stopAfter!); its checkpoints are as they were"
    case .paused(let step):
        return "paused after step \(step) (--stop-after): checkpoint written in \(store.directory.path); continue with --resume"
    case .finished: return nil
    }
}

/// The line a finished, paused or stopped run ends with.
private func report(_ trainer: SupervisedTrainer, _ outcome: RunOutcome, config cfg: RunConfig, stopAfter: Int?) {
    if let line = unfinishedLine(outcome, store: trainer.store, stopAfter: stopAfter) { print(line); return }
    switch outcome {
    case .interrupted, .paused: break
    case .finished:
        if let last = trainer.history.last {
            if let warning = StepMetrics.untrainedWarning(trainer.history) { FileHandle.standardError.write(Data((warning + "\n").utf8)) }
            var line = "done: step \(last.step), loss \(StepMetrics.finalLossText(trainer.history))"
            if trainer.val != nil {
                line += ", last val accuracy " + (last.valAccuracy.map { String(format: "%.4f", $0) } ?? "n/a (no labeled validation tile)")
                if let best = trainer.bestAccuracy {
                    line += String(format: "; best val accuracy %.4f", best) + (trainer.bestStep.map { " (step \($0))" } ?? "")
                        + " kept in \(trainer.runDirectory.bestWeights.path)"
                }
            }
            if trainer.group.size > 1, trainer.teacher != nil, cfg.overlapAllreduce, cfg.overlapTeacher {
                line += "; \(trainer.teacherForwardsAhead) of the \(trainer.history.count) steps run here took their teacher forward from the previous step's all-reduce (train.overlap_teacher; not the first, nor one whose batch was not loaded in time)"
            }
            print(line + "; run directory \(trainer.runDirectory.url.path)")
        } else {
            print("nothing to do: the run in \(cfg.output) already reached its last step")
        }
    }
}

extension RunOutcome {
    /// The process exit status for this outcome.
    var exitStatus: Int32 {
        if case .interrupted = self { return interruptedExitStatus }
        return 0
    }
}

extension CorruptTilePolicy: ExpressibleByArgument {}
