// `histodistill evaluate` and `predict`: a trained run's model over a shard set; metrics as JSON, per-tile
// probabilities as CSV.
import ArgumentParser
import Distributed
import Foundation
import Layers
import TensorCore
import TileShards
import Training

/// A run directory's config and model, loaded for inference.
struct TrainedRun {
    let config: RunConfig
    let model: ResNet
    let weights: URL

    /// Loads `run`'s config.yaml and its weights: `weights` if given, else best.safetensors, else the newest checkpoint.
    init(run: String, weights: String?, classes: Int) throws {
        let dir = URL(fileURLWithPath: run)
        do { config = try RunConfig.load(dir.appendingPathComponent("config.yaml")) } catch let e as ConfigError {
            throw CLIError(e.message, hint: "give --run the directory `histodistill train` wrote (it holds config.yaml)")
        }
        let chosen: URL
        if let weights {
            chosen = URL(fileURLWithPath: weights)
        } else if FileManager.default.fileExists(atPath: dir.appendingPathComponent("best.safetensors").path) {
            chosen = dir.appendingPathComponent("best.safetensors")
        } else if let newest = CheckpointStore(directory: dir.appendingPathComponent("checkpoints")).newest() {
            chosen = newest.appendingPathComponent("model.safetensors")
        } else {
            throw CLIError("\(run): holds no best.safetensors and no checkpoint", hint: "train first, or pass --weights FILE")
        }
        let n = config.classes > 0 ? config.classes : classes
        model = ResNet(config.modelConfig(classes: n), initialize: false)
        do { try model.loadWeights(from: chosen) } catch let e as WeightsError {
            throw CLIError(e.message)
        }
        self.weights = chosen
    }
}

struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Accuracy, balanced accuracy, per-class precision/recall/F1, one-vs-rest AUC and the confusion matrix of a trained run.")

    @Option(name: .customLong("run"), help: "Run directory written by `histodistill train`.")
    var runDirectory: String

    @Option(help: "Shard directory to evaluate (default: the run's data.val).")
    var shards: String?

    @Option(help: "Weights file (default: the run's best.safetensors, else its newest checkpoint).")
    var weights: String?

    @Option(help: "Metrics JSON file (default: RUN/eval.json).")
    var output: String?

    @Option(help: "Predictions CSV file (default: RUN/predictions.csv).")
    var predictions: String?

    func run() throws {
        try runOnRanks { group, _ in
            let (trained, dataset, path) = try group.collectively { () throws -> (TrainedRun, ShardDataset, String) in
                let preliminary: RunConfig
                do { preliminary = try RunConfig.load(URL(fileURLWithPath: runDirectory).appendingPathComponent("config.yaml")) } catch let e as ConfigError {
                    throw CLIError(e.message, hint: "give --run the directory `histodistill train` wrote (it holds config.yaml)")
                }
                guard let path = shards ?? preliminary.valShards else {
                    throw CLIError("no shards to evaluate", hint: "pass --shards DIR (the run's config has no data.val)")
                }
                let dataset: ShardDataset
                do { dataset = try ShardDataset(directory: URL(fileURLWithPath: path)) } catch let e as ShardError { throw CLIError(e.message) }
                let trained = try TrainedRun(run: runDirectory, weights: weights, classes: dataset.classes.count)
                guard trained.model.config.classes == dataset.classes.count else {
                    throw CLIError("the model has \(trained.model.config.classes) classes but \(path) has \(dataset.classes.count) (\(dataset.classes))",
                                   hint: "evaluate on shards packed with the training classes")
                }
                return (trained, dataset, path)
            }
            let p = try Inference.run(model: trained.model, dataset: dataset, config: trained.config, group: group)
            guard group.isCoordinator else { return 0 }
            let report = ClassificationReport.compute(probabilities: p.probabilities, labels: p.labels.map(Int.init), classes: dataset.classes.count)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            var json = try JSONSerialization.jsonObject(with: encoder.encode(report)) as! [String: Any]
            json["classes"] = dataset.classes
            json["weights"] = trained.weights.path
            json["shards"] = path
            let jsonURL = URL(fileURLWithPath: output ?? URL(fileURLWithPath: runDirectory).appendingPathComponent("eval.json").path)
            try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys]).write(to: jsonURL)
            let csvURL = URL(fileURLWithPath: predictions ?? URL(fileURLWithPath: runDirectory).appendingPathComponent("predictions.csv").path)
            try p.csv(classes: dataset.classes).write(to: csvURL, atomically: true, encoding: .utf8)
            print(String(format: "%d tiles: accuracy %.4f, balanced accuracy %.4f, macro AUC %@", report.samples, report.accuracy,
                         report.balancedAccuracy, report.macroAUC.map { String(format: "%.4f", $0) } ?? "n/a"))
            for (i, c) in dataset.classes.enumerated() {
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
    static let configuration = CommandConfiguration(abstract: "Per-tile class probabilities of a trained run over a shard set, as CSV.")

    @Option(name: .customLong("run"), help: "Run directory written by `histodistill train`.")
    var runDirectory: String

    @Option(help: "Shard directory.")
    var shards: String

    @Option(help: "Weights file (default: the run's best.safetensors, else its newest checkpoint).")
    var weights: String?

    @Option(name: .shortAndLong, help: "CSV file to write.")
    var output: String

    func run() throws {
        try runOnRanks { group, _ in
            let (trained, dataset) = try group.collectively { () throws -> (TrainedRun, ShardDataset) in
                let dataset: ShardDataset
                do { dataset = try ShardDataset(directory: URL(fileURLWithPath: shards)) } catch let e as ShardError { throw CLIError(e.message) }
                return (try TrainedRun(run: runDirectory, weights: weights, classes: dataset.classes.count), dataset)
            }
            let p = try Inference.run(model: trained.model, dataset: dataset, config: trained.config, group: group)
            guard group.isCoordinator else { return 0 }
            let names = dataset.classes.count == trained.model.config.classes ? dataset.classes : (0..<trained.model.config.classes).map { "class\($0)" }
            try p.csv(classes: names).write(to: URL(fileURLWithPath: output), atomically: true, encoding: .utf8)
            print("wrote probabilities of \(p.ids.count) tiles to \(output)")
            return 0
        }
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
