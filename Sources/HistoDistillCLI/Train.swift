// `histodistill train`: supervised training from a YAML config, resumable.
import ArgumentParser
import Foundation
import TensorCore
import Training

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a classifier on shards (a teacher at full resolution, or a low-resolution baseline).",
        discussion: """
            Every option lives in the YAML config (see configs/); override any key with --set section.key=value. \
            The run directory gets config.yaml, metrics.jsonl, metrics.csv, best.safetensors and checkpoints/. \
            --resume continues from the newest complete checkpoint with the same losses as an uninterrupted run.
            """)

    @Option(help: "YAML experiment config.")
    var config: String

    @Option(name: .customLong("set"), help: "Override a config key, e.g. --set train.epochs=3 (repeatable).")
    var overrides: [String] = []

    @Flag(help: "Continue from the newest complete checkpoint in the run directory.")
    var resume = false

    func run() throws {
        try runTraining(config: config, overrides: overrides, resume: resume, distillation: false)
    }
}

struct Distill: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Distill a low-resolution student from a frozen full-resolution teacher (KD + pixel loss, labels optional).",
        discussion: """
            The config's distill section names the teacher's run directory; the student sees tiles downsampled by \
            data.input_factor, the teacher the same augmented tiles at full resolution. Loss: kd_weight * KL(T) + \
            pixel_weight * L1/L2(student map, teacher map resized by maxpool, bicubic or both) + ce_weight * CE.
            """)

    @Option(help: "YAML experiment config with a distill section.")
    var config: String

    @Option(name: .customLong("set"), help: "Override a config key, e.g. --set distill.temperature=2 (repeatable).")
    var overrides: [String] = []

    @Flag(help: "Continue from the newest complete checkpoint in the run directory.")
    var resume = false

    func run() throws {
        try runTraining(config: config, overrides: overrides, resume: resume, distillation: true)
    }
}

/// Shared by `train` and `distill`: load the config, check its kind, run, report.
func runTraining(config: String, overrides: [String], resume: Bool, distillation: Bool) throws {
        let cfg: RunConfig
        do { cfg = try RunConfig.load(URL(fileURLWithPath: config), overrides: overrides) } catch let e as ConfigError {
            throw CLIError(e.message)
        }
        if cfg.isDistillation != distillation {
            throw CLIError(distillation ? "\(config) has no distill section" : "\(config) has a distill section",
                           hint: distillation ? "add distill.teacher_run, or use `histodistill train`" : "use `histodistill distill` for it")
        }
        BLAS.setThreadCount(cfg.threads ?? ProcessInfo.processInfo.activeProcessorCount)
        for w in KernelAdvice.current() { FileHandle.standardError.write(Data("warning: \(w)\n".utf8)) }
        do {
            let trainer = try SupervisedTrainer(config: cfg, writer: "histodistill \(histodistillVersion)")
            let terminal = isatty(2) != 0
            trainer.progress = { line in
                FileHandle.standardError.write(Data((terminal ? "\r\(line)   " : "\(line)\n").utf8))
            }
            try trainer.run(resume: resume)
            if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
            if let last = trainer.history.last {
                print("done: step \(last.step), loss \(last.loss)" + (last.valAccuracy.map { ", val accuracy \($0)" } ?? "") + "; run directory \(cfg.output)")
            } else {
                print("nothing to do: the run in \(cfg.output) already reached its last step")
            }
        } catch let e as TrainingError {
            throw CLIError(e.message)
        } catch let e as CheckpointError {
            throw CLIError(e.message)
        }
    }
