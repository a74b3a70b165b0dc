// `histodistill mil train|evaluate|predict`: attention-MIL slide classification over feature sets (HistoTransfer).
import ArgumentParser
import Distributed
import Foundation
import Layers
import TensorCore
import TileShards
import Training

struct MIL: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mil",
        abstract: "Attention-MIL slide classification over patch features (`histodistill extract`): train, evaluate, predict.",
        subcommands: [MILTrain.self, MILEvaluate.self, MILPredict.self])
}

struct MILTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train an attention-MIL head on a feature set (data.train, data.val: directories written by `histodistill extract`).",
        discussion: """
            Same config language, run directory, checkpoints, --resume and mpirun data parallelism (over slides) as \\
            `train`; the mil section sets beta (patch-loss weight), hidden and attention widths; train.batch_size is \\
            slides per step (HistoTransfer: 1). See configs/mil-glas.yaml.
            """)

    @Option(help: "YAML config (run, data, optimizer, schedule, train and mil sections).")
    var config: String

    @OptionGroup var options: TrainingOptions

    func run() throws {
        try runTrainerCommand(.milTrain, config: config, options: options, make: { try MILTrainer(config: $0, writer: $1, group: $2) }) { trainer in
            guard let last = trainer.history.last else { return nil }
            return "done: step \(last.step), loss \(StepMetrics.finalLossText(trainer.history))"
                + (trainer.bestAccuracy.map { String(format: ", best val slide accuracy %.4f kept in %@", $0, trainer.runDirectory.bestWeights.path) } ?? "")
                + "; run directory \(trainer.runDirectory.url.path)"
        }
    }
}

/// What the trainer commands (`mil train`, `finetune`) run.
protocol CommandTrainer: AnyObject {
    var progress: ((String) -> Void)? { get set }
    var store: CheckpointStore { get }
    func run(resume: Bool, stopAfter: Int?) throws -> RunOutcome
}

extension MILTrainer: CommandTrainer {}
extension TopKFineTuner: CommandTrainer {}

/// A trainer command alone or under mpirun: load the config on every rank together, set the threads, build the
/// trainer (`make(config, writer, group)`) together, progress on the coordinator, errors as one line, then the
/// coordinator prints `done(trainer)` (a paused or stopped run: the line `train` ends such a run with).
func runTrainerCommand<T: CommandTrainer>(_ command: TrainingCommand, config: String, options: TrainingOptions, make: (RunConfig, String, any ProcessGroup) throws -> T,
                                          done: (T) -> String?) throws {
    StopSignals.install()
    try runOnRanks { group, launch in
        let cfg = try group.collectively { () throws -> RunConfig in
            do { return try RunConfig.load(URL(fileURLWithPath: config), overrides: options.overrides, command: command) } catch let e as ConfigError {
                throw CLIError(e.message)
            }
        }
        if group.isCoordinator { warnIgnoredKeys(cfg, file: config, overrides: options.overrides, command: command) }
        // mil train has no convolutions: train.precision does nothing there (warned above as an ignored key).
        let announce = setUpCompute(threads: cfg.threads, precision: command == .milTrain ? .float32 : cfg.precision, group: group, launch: launch)
        let trainer = try group.collectively { () throws -> T in
            do { return try make(cfg, "histodistill \(histodistillVersion)", group) } catch let e as TrainingError { throw CLIError(e.message) }
        }
        announce()
        if group.isCoordinator { trainer.progress = progressSink() }
        let outcome: RunOutcome
        do { outcome = try trainer.run(resume: options.resume, stopAfter: options.stopAfter) } catch let e as TrainingError {
            throw CLIError(e.message)
        } catch let e as CheckpointError {
            throw CLIError(e.message)
        }
        guard group.isCoordinator else { return outcome.exitStatus }
        if isatty(2) != 0 { FileHandle.standardError.write(Data("\n".utf8)) }
        if let line = unfinishedLine(outcome, store: trainer.store, stopAfter: options.stopAfter) ?? done(trainer) {
            print(line)
        } else {
            print("nothing to do: the run in \(cfg.output) already reached its last step")   // as train says it
        }
        return outcome.exitStatus
    }
}

/// A MIL head from a run (best weights, else newest checkpoint) or a weights file, and a feature set it fits.
struct MILInputs: ParsableArguments {
    @Option(name: .customLong("run"), help: "MIL run directory written by `histodistill mil train`.")
    var runDirectory: String?

    @Option(help: "MIL weights file (default: the run's best.safetensors, else its newest checkpoint).")
    var weights: String?

    @Option(help: "Feature set directory (`histodistill extract`).")
    var features: String

    @Option(help: "Compute threads (default: SLURM cpus-per-task, else the node's cores).")
    var threads: Int?

    func validate() throws {
        if runDirectory == nil && weights == nil { throw ValidationError("give --run RUN_DIRECTORY or --weights FILE.safetensors") }
        try validateThreads(threads)
    }

    /// The head, the feature set and the weights file. The features must come from the backbone the head was
    /// trained on; `sameClasses` (evaluate) also requires the same class list. Sets the compute threads (`--threads`)
    /// and says them in one line, as every command that runs a model does (the head is float32).
    func load(sameClasses: Bool) throws -> (AttentionMIL<Float>, FeatureSet, URL, MILDescription) {
        if let threads { BLAS.setThreadCount(threads) }
        announceCompute(precision: .float32, threadsChosen: threads != nil, setting: "--threads")
        let run = runDirectory.map { RunDirectory(path: $0) }
        if let runDirectory, weights == nil {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: runDirectory, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw CLIError("\(runDirectory): no such run directory", hint: "check the path, or pass --weights")
            }
        }
        guard let url = weights.map({ URL(fileURLWithPath: $0) }) ?? run?.preferredWeights() else {
            throw CLIError("\(runDirectory ?? "?"): holds no best.safetensors and no checkpoint", hint: "train first with `histodistill mil train`, or pass --weights")
        }
        do {
            let (head, description) = try MILDescription.load(url)
            let set = try FeatureSet(directory: URL(fileURLWithPath: features))
            let a = description.features, b = set.metadata
            guard a.sameBackbone(as: b) else {
                throw CLIError("\(features) was extracted with another backbone than the head was trained on: head \(a.summary); features \(b.summary)",
                               hint: "extract with the backbone and options recorded in the MIL run (RUN/features.json)")
            }
            guard !sameClasses || a.classes == b.classes else {
                throw CLIError("\(features) holds slides of classes \(b.classes), the head was trained on \(a.classes)",
                               hint: "evaluate on slides of the head's classes; `histodistill mil predict` applies the head to slides of any classes")
            }
            return (head, set, url, description)
        } catch let e as TrainingError { throw CLIError(e.message) }
    }
}

/// Writes per-slide probabilities and per-patch attention as CSV.
func writeSlideOutputs(_ p: [SlidePrediction], classes: [String], labelClasses: [String]? = nil, slidesCSV: URL, attentionCSV: URL?) throws {
    try writeOutput(Data(SlidePrediction.slidesCSV(p, classes: classes, labelClasses: labelClasses).utf8), to: slidesCSV)
    if let attentionCSV { try writeOutput(Data(SlidePrediction.attentionCSV(p).utf8), to: attentionCSV) }
}

struct MILEvaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evaluate",
        abstract: "Slide-level accuracy, balanced accuracy, AUC and confusion matrix of a MIL head; per-slide probabilities and per-patch attention as CSV.")

    @OptionGroup var inputs: MILInputs

    @Option(name: .shortAndLong, help: "Metrics JSON (default: RUN/eval.json, or eval.json beside --weights).")
    var output: String?

    @Option(help: "Per-slide probabilities CSV (default: slides.csv beside the metrics).")
    var slides: String?

    @Option(help: "Per-patch attention CSV: slide, x, y, attention (default: attention.csv beside the metrics).")
    var attention: String?

    @OptionGroup var heatmaps: HeatmapOptions

    @Option(help: "Class-balanced bootstrap resamples for the 95% intervals in the metrics JSON (0: none).")
    var bootstrap = 10_000

    func validate() throws {
        if !(0...1_000_000).contains(bootstrap) { throw ValidationError("--bootstrap must be 0 to 1000000 resamples (10000 is usual), got \(bootstrap)") }
    }

    func run() throws {
        let (head, set, weights, _) = try inputs.load(sameClasses: true)
        let folder = inputs.runDirectory.map { URL(fileURLWithPath: $0) } ?? weights.deletingLastPathComponent()
        let json = output.map { URL(fileURLWithPath: $0) } ?? folder.appendingPathComponent("eval.json")
        let slidesURL = slides.map { URL(fileURLWithPath: $0) } ?? json.deletingLastPathComponent().appendingPathComponent("slides.csv")
        let attentionURL = attention.map { URL(fileURLWithPath: $0) } ?? json.deletingLastPathComponent().appendingPathComponent("attention.csv")
        for f in [json, slidesURL, attentionURL] { try checkWritable(f) }
        let tiles = try heatmaps.prepare(set: set)
        let p = MILTrainer.predict(head, set)
        let labeled = p.filter { $0.label >= 0 }
        guard !labeled.isEmpty else { throw CLIError("\(inputs.features): no slide has a label", hint: "use `histodistill mil predict` for unlabeled slides") }
        let classes = set.metadata.classes
        let report = ClassificationReport.compute(probabilities: labeled.map(\.probabilities), labels: labeled.map { Int($0.label) }, classes: classes.count)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        var object = try JSONSerialization.jsonObject(with: encoder.encode(report)) as! [String: Any]
        object["classes"] = classes
        object["weights"] = weights.path
        object["features"] = inputs.features
        object["level"] = "slide"
        if bootstrap > 0 {
            let intervals = Bootstrap.intervals(probabilities: labeled.map(\.probabilities), labels: labeled.map { Int($0.label) },
                                                classes: classes.count, iterations: bootstrap)
            object["bootstrap"] = try JSONSerialization.jsonObject(with: encoder.encode(intervals))
            print(String(format: "95%% class-balanced bootstrap intervals (%d resamples): accuracy %.4f-%.4f, macro AUC %@", bootstrap,
                         intervals.accuracy.lower, intervals.accuracy.upper,
                         intervals.macroAUC.map { String(format: "%.4f-%.4f", $0.lower, $0.upper) } ?? "n/a"))
        }
        try writeOutput(JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys]), to: json)
        try writeSlideOutputs(p, classes: classes, slidesCSV: slidesURL, attentionCSV: attentionURL)
        try heatmaps.write(p, set: set, dataset: tiles)
        print(String(format: "%d slides: accuracy %.4f, balanced accuracy %.4f, macro AUC %@", report.samples, report.accuracy,
                     report.balancedAccuracy, report.macroAUC.map { String(format: "%.4f", $0) } ?? "n/a"))
        print("confusion (rows true, columns predicted): \(report.confusion)")
        print("wrote \(json.path), \(slidesURL.path) and \(attentionURL.path)")
    }
}

struct MILPredict: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict", abstract: "Per-slide probabilities (and per-patch attention) of a MIL head over any feature set, as CSV.")

    @OptionGroup var inputs: MILInputs

    @Option(name: .shortAndLong, help: "Per-slide probabilities CSV.")
    var output: String

    @Option(help: "Also write per-patch attention (slide, x, y, attention) to this CSV.")
    var attention: String?

    @OptionGroup var heatmaps: HeatmapOptions

    func run() throws {
        let (head, set, _, description) = try inputs.load(sameClasses: false)
        let out = URL(fileURLWithPath: output), att = attention.map { URL(fileURLWithPath: $0) }
        for f in [out] + (att.map { [$0] } ?? []) { try checkWritable(f) }
        let tiles = try heatmaps.prepare(set: set)
        let p = MILTrainer.predict(head, set)
        try writeSlideOutputs(p, classes: description.features.classes, labelClasses: set.metadata.classes, slidesCSV: out, attentionCSV: att)
        try heatmaps.write(p, set: set, dataset: tiles)
        print("wrote probabilities of \(p.count) slides to \(output)")
    }
}

/// Attention heatmaps: one PNG per slide, the attention over the slide's tile grid (viridis, relative to the
/// slide's largest) blended over the slide: a whole-slide image's own thumbnail when its file is still where it was
/// packed from, else the slide drawn from its own tiles (grey where no tile was kept).
struct HeatmapOptions: ParsableArguments {
    @Option(help: "Write one attention heatmap PNG per slide into this directory.")
    var heatmaps: String?

    @Option(help: "The tile shards the features were extracted from: the heatmaps are drawn over the slides' tiles.")
    var shards: String?

    @Option(help: "Heatmap pixels per slide pixel: 1/N of the packing resolution.")
    var downscale = 4

    func validate() throws {
        if downscale < 1 { throw ValidationError("--downscale must be at least 1, got \(downscale)") }
        if shards != nil && heatmaps == nil { throw ValidationError("--shards is only used to draw --heatmaps: add --heatmaps DIR") }
    }

    /// Checks the options against the feature set before anything is written; returns the tile shards (if any).
    func prepare(set: FeatureSet) throws -> ShardDataset? {
        guard let heatmaps else { return nil }
        try checkWritable(URL(fileURLWithPath: heatmaps).appendingPathComponent("slide.png"))
        guard let shards else { return nil }
        let dataset: ShardDataset
        do { dataset = try ShardDataset(directory: URL(fileURLWithPath: shards)) } catch let e as ShardError { throw CLIError(e.message) }
        guard dataset.identity == set.metadata.sourceShards else {
            throw CLIError("\(shards) is not the tile shard set these features were extracted from (\(dataset.identity) vs \(set.metadata.sourceShards))",
                           hint: "give the shards passed to `histodistill extract`")
        }
        return dataset
    }

    func write(_ predictions: [SlidePrediction], set: FeatureSet, dataset: ShardDataset?) throws {
        guard let heatmaps else { return }
        let folder = URL(fileURLWithPath: heatmaps)
        let tilesBySlide = Dictionary(uniqueKeysWithValues: (dataset?.slideTiles ?? []).map { ($0.name, $0.tiles) })
        let records = dataset?.slideRecords ?? [:]
        let context = TileDecompressor()
        for r in predictions {
            // Drawing units are tile pixels: slide tiles' level-0 positions are divided by their downsample.
            let record = records[r.slide]
            var tileSize = 0
            var scale = 1.0
            var background: RGBImage?
            if let dataset, let tiles = tilesBySlide[r.slide], let first = tiles.first {
                tileSize = Int(dataset.entry(first).width)
                if let record { scale = record.level0TileExtent / Double(tileSize) }
                func at(_ v: Int32) -> Int { Int((Double(v) / scale).rounded()) }
                // A whole slide is drawn whole; an image's extent is that of its tiles.
                let w = max(record.map { Int((Double($0.properties.levels[0].width) / scale).rounded(.up)) } ?? 0,
                            tiles.map { at(dataset.entry($0).x) }.max()! + tileSize) / downscale
                let h = max(record.map { Int((Double($0.properties.levels[0].height) / scale).rounded(.up)) } ?? 0,
                            tiles.map { at(dataset.entry($0).y) }.max()! + tileSize) / downscale
                if let record, let path = record.path, let slide = try? WholeSlide(url: URL(fileURLWithPath: path)) {
                    // The slide itself (glass and all) at the heatmap's scale.
                    background = try? slide.thumbnail(width: max(1, w), height: max(1, h), perPixel: scale * Double(downscale))
                }
                if background == nil {
                    var px = [UInt8](repeating: 230, count: max(1, w) * max(1, h) * 3)
                    for t in tiles {
                        let e = dataset.entry(t), a = dataset.addresses[t]
                        let rgb: [UInt8]
                        do { rgb = try dataset.readers[a.shard].tile(a.index, context: context) } catch let e as ShardError { throw CLIError(e.message) }
                        let s = Int(e.width) / downscale
                        for yy in 0..<s {
                            for xx in 0..<s {
                                let X = at(e.x) / downscale + xx, Y = at(e.y) / downscale + yy
                                guard X < w && Y < h else { continue }
                                for c in 0..<3 {   // area average of the downscale x downscale block
                                    var sum = 0
                                    for dy in 0..<downscale { for dx in 0..<downscale { sum += Int(rgb[((yy * downscale + dy) * Int(e.width) + xx * downscale + dx) * 3 + c]) } }
                                    px[(Y * w + X) * 3 + c] = UInt8(sum / (downscale * downscale))
                                }
                            }
                        }
                    }
                    background = RGBImage(width: max(1, w), height: max(1, h), pixels: px)
                }
            }
            if tileSize == 0 {   // no shards: the grid step of the slide's positions
                let steps = Set(r.x.map(Int.init) + r.y.map(Int.init)).sorted()
                tileSize = zip(steps, steps.dropFirst()).map { $1 - $0 }.filter { $0 > 0 }.min() ?? 32
            }
            let xs = r.x.map { Int32((Double($0) / scale).rounded()) }, ys = r.y.map { Int32((Double($0) / scale).rounded()) }
            let image = Heatmap.attention(x: xs, y: ys, attention: r.attention, tile: tileSize, downscale: downscale, background: background)
            let name = r.slide.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." ? $0 : "_" }
            do { try ImageCodec.writePNG(image, to: folder.appendingPathComponent(String(name) + ".png")) } catch {
                throw CLIError("\(folder.path): cannot write the heatmap of \(r.slide) (\(error))")
            }
        }
        print("wrote \(predictions.count) attention heatmaps to \(folder.path)")
    }
}

struct FineTune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "finetune",
        abstract: "Top-k fine-tuning (HistoTransfer): train a backbone's last stage(s) with an attention-MIL head on each slide's k most attended tiles.",
        discussion: """
            data.train is a tile shard set whose slides carry the labels (e.g. `pack --tile-size`); the finetune section \\
            names the backbone (a run or weights file), its cut and top_k; the mil section the head; mil.folds/fold \\
            pick the validation slides. Each epoch rescores every training slide's tiles with the current backbone and \\
            head. Writes RUN/best-backbone.safetensors (use it with `extract --weights`) and RUN/best.safetensors (the \\
            head, for `mil evaluate`). Checkpoints hold both; --resume, --stop-after and mpirun work as for `train`.
            """)

    @Option(help: "YAML config (run, data, optimizer, schedule, train, mil and finetune sections).")
    var config: String

    @OptionGroup var options: TrainingOptions

    func run() throws {
        try runTrainerCommand(.finetune, config: config, options: options, make: { try TopKFineTuner(config: $0, writer: $1, group: $2) }) { tuner in
            guard let last = tuner.history.last else { return nil }
            return "done: step \(last.step), loss \(StepMetrics.finalLossText(tuner.history))"
                + (tuner.bestAccuracy.map { String(format: ", best val slide accuracy %.4f", $0) } ?? "")
                + "; backbone in \(tuner.runDirectory.bestBackbone.path), head in \(tuner.runDirectory.bestWeights.path)"
        }
    }
}
