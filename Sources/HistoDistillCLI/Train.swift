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
        let cfg: RunConfig
        do { cfg = try RunConfig.load(URL(fileURLWithPath: config), overrides: overrides) } catch let e as ConfigError {
            throw CLIError(e.message)
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
}
