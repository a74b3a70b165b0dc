// `histodistill evaluate` and `predict`: a trained run's model over a shard set; metrics as JSON, per-tile
// probabilities as CSV.
import ArgumentParser
import Distributed
import Foundation
import Layers
import TensorCore
import TileShards
import Training

/// Where `evaluate` and `predict` take their model from: a run directory, a weights file, or both.
struct ModelSource: ParsableArguments {
    @Option(name: .customLong("run"), help: "Run directory written by `histodistill train` or `distill`.")
    var runDirectory: String?

    @Option(help: "Weights file (default: the run's best.safetensors, else its newest checkpoint). A file written by histodistill describes its model: no --run needed.")
    var weights: String?

    @Option(help: ArgumentHelp(precisionHelp.abstract + " Default: the precision the model was trained in (its run.json), else 32-true.",
                               valueName: precisionHelp.valueName))
    var precision: MatmulPrecision?

    @Option(help: "Compute threads per process (default: SLURM cpus-per-task, else the node's cores / the ranks on it).")
    var threads: Int?

    func validate() throws {
        if runDirectory == nil && weights == nil { throw ValidationError("give --run RUN_DIRECTORY or --weights FILE.safetensors (or both)") }
        try validateThreads(threads)
    }

    var run: RunDirectory? { runDirectory.map { RunDirectory(path: $0) } }

    /// Sets this process's compute: `--threads` (else the launch's default, set by `runOnRanks`) and the
    /// convolutions' precision, `--precision`, else the one the model was trained in (`trainedIn`, from its
    /// description), else 32-true. On the coordinator, says both on standard error in one line (as training does),
    /// with the warnings: bf16-mixed emulated, more threads than the node's cores. Returns the precision.
    @discardableResult
    func applyCompute(trainedIn: String?, coordinator: Bool) -> MatmulPrecision {
        if let threads { BLAS.setThreadCount(threads) }
        let chosen = precision ?? trainedIn.flatMap { MatmulPrecision(rawValue: $0) } ?? .float32
        BF16GEMM.precision = chosen
        if coordinator { announceCompute(precision: chosen, threadsChosen: threads != nil, setting: "--threads") }
        return chosen
    }

    /// Loads the model and sets this process's compute (`applyCompute`).
    func load(coordinator: Bool) throws -> TrainedModel {
        let trained: TrainedModel
        do { trained = try TrainedModel.load(run: run, weights: weights.map { URL(fileURLWithPath: $0) }) } catch let e as TrainingError {
            throw CLIError(e.message)
        }
        if trained.model.classes == 0 {
            throw CLIError("\(trained.weights.path) is a backbone without a classifier (finetune writes one as best-backbone.safetensors): it gives features, not class probabilities",
                           hint: "use `histodistill extract` for its features, or give the weights of a model with a classifier (RUN/best.safetensors)")
        }
        applyCompute(trainedIn: trained.metadata.precision, coordinator: coordinator)
        return trained
    }
}

extension TestTimeAugmentation: ExpressibleByArgument {}

/// Help for `--tta`, shared by evaluate and predict.
let testTimeAugmentationHelp = ArgumentHelp(
    "Test-time augmentation: average the class probabilities over the tile's flips (4 forward passes) or its eight flips and quarter turns (dihedral, 8 passes).",
    valueName: "none|flips|dihedral")

struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Accuracy, balanced accuracy, per-class precision/recall/F1, one-vs-rest AUC and the confusion matrix of a trained model.",
        discussion: """
            The shards' labels are matched to the model's classes by name; a class the model was not trained on \
            stops with both lists. Tiles are prepared as the model describes (input factor, normalisation).
            """)

    @OptionGroup var source: ModelSource

    @Option(help: "Shard directory to evaluate (default: the run's data.val).")
    var shards: String?

    @Option(help: "Metrics JSON file (default: RUN/eval.json, or eval.json beside --weights).")
    var output: String?

    @Option(help: "Predictions CSV file (default: beside --output as NAME.predictions.csv when --output is given, else RUN/predictions.csv, or predictions.csv beside --weights).")
    var predictions: String?

    @Option(help: "Tiles per forward pass.")
    var batchSize = 64

    @Option(help: "Class-balanced bootstrap resamples for the 95% intervals in the metrics JSON (0: none).")
    var bootstrap = 10_000

    @Option(help: testTimeAugmentationHelp)
    var tta = TestTimeAugmentation.none

    func validate() throws {
        if !(0...1_000_000).contains(bootstrap) { throw ValidationError("--bootstrap must be 0 to 1000000 resamples (10000 is usual), got \(bootstrap)") }
        if batchSize < 1 { throw ValidationError("--batch-size must be at least 1, got \(batchSize)") }
    }

    /// Where the metrics and the predictions go: --output and --predictions, else the run's eval.json and
    /// predictions.csv (or beside --weights). A --output elsewhere takes the predictions with it (NAME.predictions.csv),
    /// so evaluating on other shards never overwrites the run's own predictions.
    func outputFiles(_ trained: TrainedModel) -> (metrics: URL, predictions: URL) {
        let home = source.run ?? RunDirectory(trained.weights.deletingLastPathComponent())
        let metrics = output.map { URL(fileURLWithPath: $0) } ?? home.evaluation
        let besideMetrics = output.map { _ in metrics.deletingPathExtension().appendingPathExtension("predictions.csv") }
        return (metrics, predictions.map { URL(fileURLWithPath: $0) } ?? besideMetrics ?? home.predictions)
    }

    func run() throws {
        try runOnRanks { group, _ in
            let (trained, dataset, path, labelMap) = try group.collectively { () throws -> (TrainedModel, ShardDataset, String, [Int32]) in
                let trained = try source.load(coordinator: group.isCoordinator)
                var path = shards
                if path == nil, let run = source.run {
                    do { path = try run.loadConfig().valShards } catch let e as ConfigError {
                        throw CLIError(e.message, hint: "give --run the directory `histodistill train` wrote (it holds config.yaml), or pass --shards")
                    }
                }
                guard let path else {
                    throw CLIError("no shards to evaluate", hint: "pass --shards DIR (the run's config has no data.val)")
                }
                let dataset: ShardDataset
                do { dataset = try ShardDataset(directory: URL(fileURLWithPath: path)) } catch let e as ShardError { throw CLIError(e.message) }
                guard dataset.hasLabels else {
                    throw CLIError("\(path) holds no labeled tile: there is nothing to evaluate against", hint: "use `histodistill predict` for unlabeled tiles")
                }
                let map: [Int32]
                do { map = try trained.labelMap(for: dataset.classes, source: path) } catch let e as TrainingError { throw CLIError(e.message) }
                // Check where the results go before the whole inference runs.
                let files = outputFiles(trained)
                for file in [files.metrics, files.predictions] { try checkWritable(file) }
                if files.metrics.standardizedFileURL == files.predictions.standardizedFileURL {
                    throw CLIError("--output and --predictions both name \(files.metrics.path)", hint: "give the metrics JSON and the predictions CSV different files")
                }
                return (trained, dataset, path, map)
            }
            if group.isCoordinator, let w = tileSizeWarning(trained, dataset, shards: path) { FileHandle.standardError.write(Data((w + "\n").utf8)) }
            var settings = InferenceSettings(trained.metadata, batchSize: batchSize, labelMap: labelMap)
            settings.testTimeAugmentation = tta
            let progress = ProgressLine(label: "evaluate")
            if group.isCoordinator { settings.progress = { progress.update($0, $1, unit: "tiles") } }
            let p = try Inference.run(model: trained.model, dataset: dataset, settings: settings, group: group)
            guard group.isCoordinator else { return 0 }
            let classes = trained.classNames
            let report = ClassificationReport.compute(probabilities: p.probabilities, labels: p.labels.map(Int.init), classes: classes.count)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            var json = try JSONSerialization.jsonObject(with: encoder.encode(report)) as! [String: Any]
            json["classes"] = classes
            json["weights"] = trained.weights.path
            json["shards"] = path
            json["shard_set"] = dataset.identity.description
            json["test_time_augmentation"] = tta.rawValue
            json["compute_precision"] = BF16GEMM.precision.rawValue   // "precision" is the per-class metric
            if bootstrap > 0 {
                let labels = p.labels.map(Int.init)
                let intervals = Bootstrap.intervals(probabilities: p.probabilities, labels: labels, classes: classes.count, iterations: bootstrap)
                json["bootstrap"] = try JSONSerialization.jsonObject(with: encoder.encode(intervals))
                print(String(format: "95%% class-balanced bootstrap intervals (%d resamples): accuracy %.4f-%.4f, balanced accuracy %.4f-%.4f", bootstrap,
                             intervals.accuracy.lower, intervals.accuracy.upper, intervals.balancedAccuracy.lower, intervals.balancedAccuracy.upper))
            }
            let (jsonURL, csvURL) = outputFiles(trained)
            try writeOutput(JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys]), to: jsonURL)
            try writeOutput(Data(p.csv(classes: classes).utf8), to: csvURL)
            print(String(format: "%d tiles%@: accuracy %.4f, balanced accuracy %.4f, macro AUC %@", report.samples,
                         tta == .none ? "" : " (test-time augmentation: \(tta.rawValue), \(tta.views.count) views)", report.accuracy,
                         report.balancedAccuracy, report.macroAUC.map { String(format: "%.4f", $0) } ?? "n/a"))
            for (i, c) in classes.enumerated() {
                print(String(format: "  %@: precision %.4f recall %.4f F1 %.4f AUC %@ (n=%d)", c, report.precision[i], report.recall[i],
                             report.f1[i], report.auc[i].map { String(format: "%.4f", $0) } ?? "n/a", report.support[i]))
            }
            print("confusion (rows true, columns predicted): \(report.confusion)")
            print("wrote \(jsonURL.path) and \(csvURL.path)")
            return 0
        }
    }
}

struct Predict: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Per-tile class probabilities of a trained model over any shard set (labeled, unlabeled or of other classes), as CSV.",
        discussion: """
            Columns: tile_id, slide, label (the shards' own label, empty when unlabeled), predicted, and p_CLASS for \
            each of the model's classes. Tiles are prepared as the model describes (input factor, normalisation).
            """)

    @OptionGroup var source: ModelSource

    @Option(help: "Shard directory.")
    var shards: String

    @Option(name: .shortAndLong, help: "CSV file to write.")
    var output: String

    @Option(help: "Tiles per forward pass.")
    var batchSize = 64

    @Option(help: "Tile decoding threads beside the forward pass (a background loader).")
    var workers = 1

    @Option(help: testTimeAugmentationHelp)
    var tta = TestTimeAugmentation.none

    func validate() throws {
        if batchSize < 1 { throw ValidationError("--batch-size must be at least 1, got \(batchSize)") }
        if workers < 1 { throw ValidationError("--workers must be at least 1, got \(workers)") }
    }

    func run() throws {
        try runOnRanks { group, _ in
            let (trained, dataset) = try group.collectively { () throws -> (TrainedModel, ShardDataset) in
                let dataset: ShardDataset
                do { dataset = try ShardDataset(directory: URL(fileURLWithPath: shards)) } catch let e as ShardError { throw CLIError(e.message) }
                let trained = try source.load(coordinator: group.isCoordinator)
                try checkWritable(URL(fileURLWithPath: output))   // after the inputs are read, so none of them is the output
                return (trained, dataset)
            }
            if group.isCoordinator, let w = tileSizeWarning(trained, dataset, shards: shards) { FileHandle.standardError.write(Data((w + "\n").utf8)) }
            var settings = InferenceSettings(trained.metadata, batchSize: batchSize, workers: workers)
            settings.testTimeAugmentation = tta
            let progress = ProgressLine(label: "predict")
            if group.isCoordinator { settings.progress = { progress.update($0, $1, unit: "tiles") } }
            let started = Date()
            let p = try Inference.run(model: trained.model, dataset: dataset, settings: settings, group: group)
            let seconds = Date().timeIntervalSince(started)
            guard group.isCoordinator else { return 0 }
            try writeOutput(Data(p.csv(classes: trained.classNames, labelNames: dataset.classes).utf8), to: URL(fileURLWithPath: output))
            print("wrote probabilities of \(p.ids.count) tiles over \(trained.classNames.joined(separator: ", ")) to \(output)"
                  + String(format: " (%.1f s, %.1f tiles/s: read, decoded, prepared and classified)", seconds, Double(p.ids.count) / max(seconds, 1e-9)))
            return 0
        }
    }
}

/// A warning when `dataset`'s tiles differ in size from those the model was trained on: the network runs on any
/// size (global pooling), but sees the tissue at another scale or extent than it learned.
func tileSizeWarning(_ trained: TrainedModel, _ dataset: ShardDataset, shards: String) -> String? {
    tileSizeWarning(trainedSize: trained.metadata.tileSize, inputFactor: trained.metadata.inputFactor, dataset, shards: shards)
}

/// The same for a model described only by the tile size it was trained on and the factor it downsamples by now.
func tileSizeWarning(trainedSize: Int?, inputFactor: Int, _ dataset: ShardDataset, shards: String) -> String? {
    guard let trainedSize, dataset.tileSize > 0, dataset.tileSize != trainedSize else { return nil }
    let factor = max(inputFactor, 1)
    return "warning: the model was trained on \(trainedSize) px tiles, \(shards) holds \(dataset.tileSize) px tiles (the model sees \(dataset.tileSize / factor) px inputs instead of \(trainedSize / factor)): its outputs are not comparable to its validation. Hint: pack at the model's tile size and magnification."
}

/// Refuses an output path that is one of this command's inputs (`InputFiles`): writing it would destroy what was read.
func refuseInput(_ file: URL) throws {
    if InputFiles.contains(file) {
        throw CLIError("\(file.path) is one of this command's inputs; writing the output there would destroy it", hint: "choose another output path")
    }
}

/// Writes an output file atomically; a failure is one line naming the file and the reason.
func writeOutput(_ data: Data, to url: URL) throws {
    try refuseInput(url)
    do { try CheckpointStore.writeAtomically(data, to: url) } catch let e as CheckpointError { throw CLIError(e.message) }
}

/// Creates `file`'s folder if needed and checks that the file can be written there, before any long work.
func checkWritable(_ file: URL) throws {
    try refuseInput(file)
    var isDirectory: ObjCBool = false
    if FileManager.default.fileExists(atPath: file.path, isDirectory: &isDirectory), isDirectory.boolValue {
        throw CLIError("\(file.path) is a directory", hint: "give a file name for the output, e.g. \(file.appendingPathComponent("out.csv").path)")
    }
    let folder = file.deletingLastPathComponent()
    do { try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true) } catch {
        throw CLIError("\(folder.path): cannot be created for \(file.lastPathComponent)", hint: "choose an output path in a writable directory")
    }
    guard access(folder.path, W_OK) == 0 else {
        throw CLIError("\(folder.path) is not writable: \(file.lastPathComponent) cannot be written there", hint: "choose an output path in a writable directory")
    }
}

/// Runs a command alone or as one rank of an MPI job, with the launch's default threads per rank. Failures
/// every rank shares (a `CollectiveError`) end all ranks with one message; any other failure of one rank aborts
/// the job (MPI_Abort) naming the rank, so no rank is left waiting. `body` returns the exit status.
func runOnRanks(_ body: (any ProcessGroup, LaunchEnvironment) throws -> Int32) throws {
    let launch = LaunchEnvironment.current()
    let group: any ProcessGroup
    do { group = try makeProcessGroup(launch) } catch let e as ProcessGroupError {
        throw CLIError(e.message, hint: "run `histodistill doctor` under the same launcher to check the MPI installation")
    }
    BLAS.setThreadCount(launch.defaultThreadsPerRank(cores: ProcessInfo.processInfo.activeProcessorCount))
    let code: Int32
    do {
        code = try body(group, launch)
    } catch let e as CollectiveError {
        if e.report { FileHandle.standardError.write(Data("Error: \(e.message)\n".utf8)) }
        group.finalize()
        throw ExitCode.failure
    } catch {
        let message = (error as? CLIError)?.description ?? "\(error)"
        if group.size > 1 { group.abort(code: 1, message: "error: \(message)") }
        throw error
    }
    group.finalize()
    if code != 0 { throw ExitCode(code) }
}
