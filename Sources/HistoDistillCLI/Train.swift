// `histodistill train`: supervised training from a YAML config, resumable.
import ArgumentParser
import Foundation
import Distributed
import TensorCore
import TileShards
import Training

/// Flags shared by `train` and `distill`.
struct TrainingOptions: ParsableArguments {
    @Option(name: .customLong("set"), help: "Override a config key, e.g. --set train.epochs=3 (repeatable).")
    var overrides: [String] = []

    @Flag(help: "Continue from the newest complete checkpoint in the run directory (start fresh when there is none).")
    var resume = false

    @Option(help: "Stop after this global step with a checkpoint (split a run into time-boxed jobs; --resume continues).")
    var stopAfter: Int?

    @Option(help: "What a corrupt tile does while training: stop (name it and exit) or skip (warn, count it in metrics); same as --set data.on_corrupt=...")
    var onCorrupt: CorruptTilePolicy?

    @Flag(help: "Every rank appends the dataset index of each tile it trains on to RUN/trace/rank-R-of-W.tsv (debugging).")
    var traceSamples = false
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
        abstract: "Distill a low-resolution student from a frozen full-resolution teacher (KD + pixel loss, labels optional).",
        discussion: """
            The config's distill section names the teacher's run directory; the student sees tiles downsampled by \
            data.input_factor, the teacher the same augmented tiles at full resolution. Loss: kd_weight * KL(T) + \
            pixel_weight * L1/L2(student map, teacher map resized by maxpool, bicubic or both) + ce_weight * CE. \
            Runs unchanged as one process or under mpirun/srun; SIGTERM or SIGUSR1 checkpoints and exits with 75.
            """)

    @Option(help: "YAML experiment config with a distill section.")
    var config: String

    @OptionGroup var options: TrainingOptions

    func run() throws {
        try runTraining(config: config, options: options, distillation: true)
    }
}

/// Exit status of a run stopped by SIGTERM or SIGUSR1 after writing its checkpoint (EX_TEMPFAIL: try again
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

private func train(config: String, options: TrainingOptions, distillation: Bool, group: any ProcessGroup, launch: LaunchEnvironment) throws -> Int32 {
    let cfg = try group.collectively { () throws -> RunConfig in
        let cfg: RunConfig
        let overrides = options.overrides + (options.onCorrupt.map { ["data.on_corrupt=\($0.rawValue)"] } ?? [])
        do { cfg = try RunConfig.load(URL(fileURLWithPath: config), overrides: overrides) } catch let e as ConfigError {
            throw CLIError(e.message)
        }
        if cfg.isDistillation != distillation {
            throw CLIError(distillation ? "\(config) has no distill section" : "\(config) has a distill section",
                           hint: distillation ? "add distill.teacher_run, or use `histodistill train`" : "use `histodistill distill` for it")
        }
        if let s = options.stopAfter, s < 1 { throw CLIError("--stop-after must be at least 1, got \(s)") }
        return cfg
    }
    let cores = ProcessInfo.processInfo.activeProcessorCount
    BLAS.setThreadCount(cfg.threads ?? launch.defaultThreadsPerRank(cores: cores))
    if group.isCoordinator {
        for w in KernelAdvice.current() { FileHandle.standardError.write(Data("warning: \(w)\n".utf8)) }
    }
    let trainer = try group.collectively { () throws -> SupervisedTrainer in
        do { return try SupervisedTrainer(config: cfg, writer: "histodistill \(histodistillVersion)", group: group) } catch let e as TrainingError {
            throw CLIError(e.message)
        }
    }
    trainer.traceSamples = options.traceSamples
    let terminal = isatty(2) != 0
    if group.isCoordinator {
        if group.size > 1 {
            FileHandle.standardError.write(Data("\(group.size) ranks (\(group.transportName)), \(BLAS.threadCount) compute thread(s) each, global batch \(cfg.batchSize)\n".utf8))
        }
        trainer.progress = progressSink()
    }
    let outcome: RunOutcome
    do { outcome = try trainer.run(resume: options.resume, stopAfter: options.stopAfter) } catch let e as TrainingError {
        throw CLIError(e.message)
    } catch let e as CheckpointError {
        throw CLIError(e.message)
    } catch let e as ShardError {
        throw CLIError(e.message)
    }
    guard group.isCoordinator else { return outcome.exitStatus }
    if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
    switch outcome {
    case .interrupted(let signal, let step):
        print("stopped by \(StopSignals.name(signal)) after step \(step): checkpoint written in \(trainer.store.directory.path); continue with --resume")
    case .paused(let step):
        print("paused after step \(step) (--stop-after): checkpoint written in \(trainer.store.directory.path); continue with --resume")
    case .finished:
        if let last = trainer.history.last {
            var line = String(format: "done: step %d, loss %.4f", last.step, last.loss)
            if trainer.val != nil {
                line += ", last val accuracy " + (last.valAccuracy.map { String(format: "%.4f", $0) } ?? "n/a (no labeled validation tile)")
                if let best = trainer.bestAccuracy {
                    line += String(format: "; best val accuracy %.4f", best) + (trainer.bestStep.map { " (step \($0))" } ?? "")
                        + " kept in \(trainer.runDirectory.bestWeights.path)"
                }
            }
            print(line + "; run directory \(trainer.runDirectory.url.path)")
        } else {
            print("nothing to do: the run in \(cfg.output) already reached its last step")
        }
    }
    return outcome.exitStatus
}

extension RunOutcome {
    /// The process exit status for this outcome.
    var exitStatus: Int32 {
        if case .interrupted = self { return interruptedExitStatus }
        return 0
    }
}

extension CorruptTilePolicy: ExpressibleByArgument {}
