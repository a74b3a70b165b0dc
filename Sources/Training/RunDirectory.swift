// A run directory and what a run says about itself: every path of a run in one type, the "which weights"
// rule, the path rule that lets a run work from any current directory and after a move, and `RunMetadata`
// (architecture, class names, normalisation, input size and factor, microns per pixel, training data identity,
// program version), stored as run.json and in every weights file's safetensors metadata.
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Layers
import SafeTensors
import TileShards

/// What a trained model needs to be applied to new tiles, carried by the run (run.json) and by its weights files
/// (safetensors `__metadata__`, key `histodistill.run`), so a weights file alone is enough to predict.
public struct RunMetadata: Codable, Equatable, Sendable {
    public var format = "histodistill-run"
    public var version = 1
    /// The network (architecture name, planes, blocks, norm, classifier outputs, stages).
    public var model: ResNetConfig
    /// Class names in the classifier's order (empty for a feature extractor, or a run older than run.json).
    public var classes: [String]
    /// Per-channel normalisation applied to tiles in [0, 1].
    public var mean: [Float], std: [Float]
    /// The model sees tiles area-downsampled by this factor.
    public var inputFactor: Int
    /// Edge of the training tiles in pixels, and of what the model sees (tileSize / inputFactor).
    public var tileSize: Int?, inputSize: Int?
    /// Microns per pixel of the training tiles and of the model's input, when the shards recorded it.
    public var tileMicronsPerPixel: Double?, inputMicronsPerPixel: Double?
    /// The training shard set: its identity and its path relative to the run directory.
    public var trainShards: ShardSetIdentity?
    public var trainShardsPath: String?
    /// "supervised" or "distillation".
    public var objective: String
    /// The teacher's run directory relative to the run directory (distillation).
    public var teacherRun: String?
    /// The teacher's weights file the run was distilled from, relative to the run directory, and the input factor it
    /// saw the tiles at (1: full resolution; more for a teacher assistant). Nil before they were recorded.
    public var teacherWeights: String?, teacherInputFactor: Int?
    /// The program that trained it ("histodistill 0.x.y").
    public var program: String
    /// The convolutions' precision it was trained in ("32-true" or "bf16-mixed"; nil for runs written before it was
    /// recorded): `evaluate`, `predict` and `extract` run it in that precision unless told otherwise.
    public var precision: String?

    /// What no run writes: a model no CNN has (`ResNetConfig.problems`), an input factor other than 1, 2, 4, 8, 16,
    /// normalisation that is not 3 finite means and 3 positive standard deviations.
    public var problems: [String] {
        var p = model.problems
        if ![1, 2, 4, 8, 16].contains(inputFactor) { p.append("input_factor \(inputFactor) must be 1, 2, 4, 8 or 16") }
        if mean.count != 3 || std.count != 3 || !mean.allSatisfy(\.isFinite) || !std.allSatisfy({ $0 > 0 && $0.isFinite }) {
            p.append("mean \(mean) and std \(std) must be 3 finite values each, std positive")
        }
        return p
    }

    enum CodingKeys: String, CodingKey {
        case format, version, model, classes, mean, std, objective, program
        case inputFactor = "input_factor", tileSize = "tile_size", inputSize = "input_size"
        case tileMicronsPerPixel = "tile_microns_per_pixel", inputMicronsPerPixel = "input_microns_per_pixel"
        case trainShards = "train_shards", trainShardsPath = "train_shards_path", teacherRun = "teacher_run", precision
        case teacherWeights = "teacher_weights", teacherInputFactor = "teacher_input_factor"
    }

    public init(model: ResNetConfig, classes: [String], mean: [Float], std: [Float], inputFactor: Int, tileSize: Int?,
                tileMicronsPerPixel: Double?, trainShards: ShardSetIdentity?, trainShardsPath: String?, objective: String,
                teacherRun: String?, program: String) {
        self.model = model; self.classes = classes; self.mean = mean; self.std = std; self.inputFactor = inputFactor
        self.tileSize = tileSize; self.inputSize = tileSize.map { $0 / inputFactor }
        self.tileMicronsPerPixel = tileMicronsPerPixel; self.inputMicronsPerPixel = tileMicronsPerPixel.map { $0 * Double(inputFactor) }
        self.trainShards = trainShards; self.trainShardsPath = trainShardsPath; self.objective = objective
        self.teacherRun = teacherRun; self.program = program
    }

    /// The safetensors metadata key holding this description as JSON.
    public static let safetensorsKey = "histodistill.run"

    /// Metadata entries for a weights file: the whole description as JSON, plus readable single keys.
    public var safetensorsMetadata: [String: String] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var m: [String: String] = [:]
        if let data = try? encoder.encode(self) { m[Self.safetensorsKey] = String(decoding: data, as: UTF8.self) }
        func json<T: Encodable>(_ v: T) -> String { (try? encoder.encode(v)).map { String(decoding: $0, as: UTF8.self) } ?? "" }
        m["classes"] = json(classes)
        m["mean"] = json(mean)
        m["std"] = json(std)
        m["input_factor"] = "\(inputFactor)"
        if let inputSize { m["input_size"] = "\(inputSize)" }
        if let inputMicronsPerPixel { m["input_microns_per_pixel"] = "\(inputMicronsPerPixel)" }
        if let trainShards { m["train_shards"] = trainShards.description }
        m["program"] = program
        return m
    }

    /// The description stored in a weights file, or nil when it has none (written by PyTorch or an older version).
    public init?(safetensors file: SafeTensorsFile) {
        guard let text = file.metadata[Self.safetensorsKey],
              let m = try? JSONDecoder().decode(RunMetadata.self, from: Data(text.utf8)) else { return nil }
        self = m
    }
}

/// A run directory: `config.yaml` (the effective config), `run.json` (`RunMetadata`), `metrics.jsonl`/`.csv`,
/// `best.safetensors`, `checkpoints/`, and what `evaluate` writes.
///
/// Path rule: paths inside a run (config.yaml's data and teacher paths, run.json's) are stored relative to the
/// run directory and resolved against it when read, so a run works from any current directory, and keeps
/// working when it is moved or copied together with the shards and teacher runs it names (same relative
/// layout). Paths in a user's own config file resolve against the current directory, as on the command line.
public struct RunDirectory: Sendable {
    /// The directory.
    public let url: URL

    public init(_ url: URL) { self.url = url.standardizedFileURL }
    public init(path: String) { self.init(URL(fileURLWithPath: path)) }

    public var config: URL { url.appendingPathComponent("config.yaml") }
    public var metadata: URL { url.appendingPathComponent("run.json") }
    public var bestWeights: URL { url.appendingPathComponent("best.safetensors") }
    /// The fine-tuned backbone a `finetune` run keeps next to its head.
    public var bestBackbone: URL { url.appendingPathComponent("best-backbone.safetensors") }
    public var checkpoints: URL { url.appendingPathComponent("checkpoints") }
    public var metricsJSONL: URL { url.appendingPathComponent("metrics.jsonl") }
    public var metricsCSV: URL { url.appendingPathComponent("metrics.csv") }
    public var trace: URL { url.appendingPathComponent("trace") }
    public var evaluation: URL { url.appendingPathComponent("eval.json") }
    public var predictions: URL { url.appendingPathComponent("predictions.csv") }

    /// True when `directory` holds a run's self-description (run.json): its config's paths are relative to it.
    public static func isRunDirectory(_ directory: URL) -> Bool {
        FileManager.default.fileExists(atPath: directory.appendingPathComponent("run.json").path)
    }

    /// The first line of every config.yaml a run writes into its directory (`kind`: "", "MIL ", "fine-tuning ").
    public static func effectiveConfigHeader(kind: String = "") -> String {
        "# Effective config of this \(kind)run, written by histodistill. \(effectiveConfigPathNote)\n"
    }

    static let effectiveConfigPathNote = "Relative paths are relative to this directory."

    /// True when `text` is a config.yaml a run wrote into its own directory (its header says so), whatever the
    /// command (train, distill, mil train, finetune): its relative paths are relative to that directory.
    public static func isEffectiveConfig(_ text: String) -> Bool {
        guard let first = text.split(separator: "\n", maxSplits: 1).first else { return false }
        return first.hasPrefix("# Effective config of this ") && first.contains("written by histodistill. " + effectiveConfigPathNote)
    }

    /// The run's checkpoints.
    public func checkpointStore(keep: Int = 3) -> CheckpointStore { CheckpointStore(directory: checkpoints, keep: keep) }

    /// The weights a trained run is used with: best.safetensors (best validation accuracy), else the newest
    /// complete checkpoint's moving average (`ema.safetensors`, runs with `train.ema_decay`) or model (a run
    /// trained without validation); nil when it has neither.
    public func preferredWeights() -> URL? {
        if FileManager.default.fileExists(atPath: bestWeights.path) { return bestWeights }
        guard let newest = checkpointStore().newest() else { return nil }
        let ema = newest.appendingPathComponent("ema.safetensors")
        return FileManager.default.fileExists(atPath: ema.path) ? ema : newest.appendingPathComponent("model.safetensors")
    }

    /// The run's config with its paths resolved (see the path rule).
    public func loadConfig() throws -> RunConfig {
        // A run written before run.json existed stored paths as given (relative to where it was started).
        try RunConfig.load(config)
    }

    /// The run's self-description, or nil for a run written before run.json existed.
    public func loadMetadata() throws -> RunMetadata? {
        guard FileManager.default.fileExists(atPath: metadata.path) else { return nil }
        var bytes: Data?
        do {
            bytes = try Data(contentsOf: metadata)
            return try JSONDecoder().decode(RunMetadata.self, from: bytes!)
        } catch {
            throw ConfigError("\(metadata.path): unreadable (\(decodingReason(error, data: bytes))). Hint: restore it from a copy of the run, or retrain.")
        }
    }

    /// Writes config.yaml (paths relative to this directory) and run.json, each atomically.
    public func write(config c: RunConfig, metadata m: RunMetadata) throws {
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(m).write(to: metadata, options: .atomic)
        try (Self.effectiveConfigHeader() + relativized(c).yaml).write(to: config, atomically: true, encoding: .utf8)
    }

    /// Removes what interrupted writes of an earlier process left (`*.tmp-*` files and directories in the run
    /// directory and in checkpoints/, and incomplete step directories). Call it only while holding the `RunLock`, so no live writer owns them.
    public func removeStaleTemporaries() {
        let fm = FileManager.default
        for dir in [url, checkpoints] {
            for name in (try? fm.contentsOfDirectory(atPath: dir.path)) ?? [] where name.contains(".tmp-") {
                try? fm.removeItem(at: dir.appendingPathComponent(name))
            }
        }
        // A step directory missing one of its files (an older version's pruning, killed halfway) can never be resumed from.
        for name in (try? fm.contentsOfDirectory(atPath: checkpoints.path)) ?? [] where name.hasPrefix("step-") {
            let step = checkpoints.appendingPathComponent(name)
            if !CheckpointStore.files.allSatisfy({ fm.fileExists(atPath: step.appendingPathComponent($0).path) }) { try? fm.removeItem(at: step) }
        }
    }

    /// `c` with every path relative to this directory.
    public func relativized(_ c: RunConfig) -> RunConfig {
        c.mappingPaths(relativePath)
    }

    /// `path` (absolute, or relative to the current directory) relative to this directory.
    public func relativePath(_ path: String) -> String {
        guard !path.isEmpty else { return path }
        let target = URL(fileURLWithPath: path).standardizedFileURL.pathComponents
        let base = url.pathComponents
        var common = 0
        while common < min(target.count, base.count) && target[common] == base[common] { common += 1 }
        let parts = Array(repeating: "..", count: base.count - common) + target[common...]
        return parts.isEmpty ? "." : parts.joined(separator: "/")
    }
}

/// An exclusive lock on a run directory (`RUN/.lock`, a POSIX record lock, so it also holds across NFS clients
/// that support them), held by the process that trains the run (or by the one that packs a shard set). The file records the holder's host and pid;
/// a lock whose holder died is released by the kernel and simply taken over.
public final class RunLock {
    public let url: URL
    private let fd: Int32

    /// Takes the lock or throws `TrainingError` naming the process that holds it.
    public convenience init(_ run: RunDirectory) throws {
        try self.init(directory: run.url, hint: "wait for that run to end or stop it; two processes must never train one run directory (use another run.output).")
    }

    /// Takes the lock of any output directory written by one process at a time (`DIR/.lock`); `hint` ends the
    /// message naming the holder.
    public init(directory: URL, hint: String) throws {
        url = directory.appendingPathComponent(".lock")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        fd = open(url.path, O_RDWR | O_CREAT, 0o644)
        guard fd >= 0 else {
            throw TrainingError("\(url.path): cannot be created (\(String(cString: strerror(errno)))). Hint: check that the run directory is writable.")
        }
        var lock = flock()
        lock.l_type = Int16(F_WRLCK)
        lock.l_whence = Int16(SEEK_SET)
        guard fcntl(fd, F_SETLK, &lock) == 0 else {
            let holder = (try? String(contentsOf: url, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            close(fd)
            throw TrainingError("\(directory.path) is in use by another histodistill process (\(holder.isEmpty ? "holder unknown" : holder)). Hint: \(hint)")
        }
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, 255)
        let text = "pid \(getpid()) on host \(String(cString: host)), since \(ISO8601DateFormatter().string(from: Date()))\n"
        ftruncate(fd, 0)
        _ = text.withCString { write(fd, $0, strlen($0)) }
    }

    deinit { close(fd) }   // closing the descriptor releases the lock
}
