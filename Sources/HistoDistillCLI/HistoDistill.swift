// The `histodistill` command line: the root command and its subcommands.
import ArgumentParser

/// The program's version, reported by `--version` and written into run directories.
let histodistillVersion = "0.1.0"

@main
struct HistoDistill: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "histodistill",
        abstract: "Resolution-based self-supervised knowledge distillation for histology tiles on CPU clusters.",
        version: histodistillVersion,
        subcommands: [Doctor.self, Synth.self, Pack.self, Train.self, Distill.self, Evaluate.self, Predict.self, Report.self, Inspect.self, Verify.self, Stats.self, Export.self, Cost.self, ConfigKeys.self, Extract.self, MIL.self, FineTune.self, CKACommand.self, BenchStep.self, BenchPipeline.self, CheckpointWriter.self])
}
