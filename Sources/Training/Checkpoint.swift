// Checkpoints: model weights (safetensors, PyTorch names), optimizer state and a JSON state, written to a
// temporary directory, fsynced, renamed into place, and only then is `latest` moved; the last K are kept.
import Foundation
import Layers
import SafeTensors
import TensorCore
import TileShards
#if canImport(Glibc)
import Glibc
#endif

/// Everything besides weights and optimizer moments that a resume needs.
public struct CheckpointState: Codable, Equatable, Sendable {
    public var formatVersion = 1
    /// Optimizer steps taken.
    public var step: Int
    /// Position in the data stream (world-size independent).
    public var cursor: DataCursor
    /// The run's seed (data order and augmentation derive from it and the cursor).
    public var seed: UInt64
    /// Ranks the run had when this was written.
    public var worldSize: Int
    /// The effective configuration, as the run saved it.
    public var config: String
    /// The program that wrote it.
    public var writer: String
    /// Best validation metric so far, if any.
    public var bestMetric: Double?
    /// The training shard set (train and unlabeled) this run trains on; nil in checkpoints of older versions.
    public var trainShards: ShardSetIdentity?
    /// Digest of the teacher's weights file (distillation); nil otherwise and in older checkpoints.
    public var teacherWeights: String?
    /// Updates of the weights' moving average (`train.ema_decay`) so far; nil without one and in older checkpoints.
    public var emaUpdates: Int?

    public init(step: Int, cursor: DataCursor, seed: UInt64, worldSize: Int, config: String, writer: String, bestMetric: Double? = nil,
                trainShards: ShardSetIdentity? = nil, teacherWeights: String? = nil, emaUpdates: Int? = nil) {
        self.step = step; self.cursor = cursor; self.seed = seed; self.worldSize = worldSize; self.config = config
        self.writer = writer; self.bestMetric = bestMetric; self.trainShards = trainShards; self.teacherWeights = teacherWeights
        self.emaUpdates = emaUpdates
    }
}

/// A further module saved in the same checkpoint as the main model (e.g. the backbone being fine-tuned next to a
/// MIL head): `NAME.safetensors` and, with an optimizer, `OPTIMIZERFILE.safetensors`, written and loaded together.
public struct CheckpointPart {
    public let name: String
    public let model: any Module
    public let optimizer: Optimizer?
    public let optimizerFile: String
    public let metadata: [String: String]

    public init(name: String, model: any Module, optimizer: Optimizer?, optimizerFile: String? = nil, metadata: [String: String] = [:]) {
        self.name = name; self.model = model; self.optimizer = optimizer; self.optimizerFile = optimizerFile ?? "\(name)-optimizer"; self.metadata = metadata
    }
}

/// A checkpoint directory that cannot be written or does not fit, naming the path and a fix.
public struct CheckpointError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The checkpoints of one run: `DIR/step-NNNNNNNNN/{model.safetensors, optimizer.safetensors, state.json}` and
/// `DIR/latest` naming the newest complete one.
public final class CheckpointStore {
    public let directory: URL
    /// Complete checkpoints kept (older ones are deleted after a successful write).
    public let keep: Int

    public static let files = ["model.safetensors", "optimizer.safetensors", "state.json"]

    public init(directory: URL, keep: Int = 3) {
        precondition(keep >= 1, "CheckpointStore: keep must be at least 1, got \(keep)")
        self.directory = directory
        self.keep = keep
    }

    static func name(step: Int) -> String { String(format: "step-%09d", step) }

    /// Writes a checkpoint of any `Module` for `state.step` (`metadata` goes into model.safetensors, e.g. the run's
    /// self-description) and returns its directory. A crash at any point leaves the previous
    /// checkpoints and `latest` untouched (at worst a `.tmp-*` directory that the next save removes).
    @discardableResult
    public func save(model: any Module, optimizer: Optimizer, state: CheckpointState, metadata: [String: String] = [:],
                     parts: [CheckpointPart] = []) throws -> URL {
        let fm = FileManager.default
        guard GradientOps.allFinite(model.parameters.values.pointer, count: model.parameterCount),
              GradientOps.allFinite(model.buffers.values.pointer, count: model.buffers.layout.count),
              GradientOps.allFinite(optimizer.first.pointer, count: optimizer.first.count),
              GradientOps.allFinite(optimizer.second.pointer, count: optimizer.second.count),
              parts.allSatisfy({ GradientOps.allFinite($0.model.parameters.values.pointer, count: $0.model.parameterCount) }) else {
            throw CheckpointError("step \(state.step): the weights or the optimizer state are not finite (NaN or infinity), so no checkpoint was written; \(intactText()). Hint: lower optimizer.lr or set train.clip_grad_norm.")
        }
        try fm.createDirectory(at: directory, withIntermediateDirectories: true)
        // Only this process's own leftovers: a run directory has one writer (RunLock), which cleans older ones.
        for stale in (try? fm.contentsOfDirectory(atPath: directory.path)) ?? [] where stale.hasSuffix(".tmp-\(getpid())") {
            try? fm.removeItem(at: directory.appendingPathComponent(stale))
        }
        let final = directory.appendingPathComponent(Self.name(step: state.step))
        let temporary = directory.appendingPathComponent(Self.name(step: state.step) + ".tmp-\(getpid())")
        do {
            try fm.createDirectory(at: temporary, withIntermediateDirectories: true)
            try writeSynced(try SafeTensorsFile(tensors: model.stateDict(), metadata: metadata.merging(["architecture": model.architectureDescription]) { _, new in new }).serialized(),
                            to: temporary.appendingPathComponent("model.safetensors"))
            try writeSynced(try optimizerFile(optimizer).serialized(), to: temporary.appendingPathComponent("optimizer.safetensors"))
            for part in parts {
                try writeSynced(try SafeTensorsFile(tensors: part.model.stateDict(), metadata: part.metadata.merging(["architecture": part.model.architectureDescription]) { $1 }).serialized(),
                                to: temporary.appendingPathComponent("\(part.name).safetensors"))
                if let o = part.optimizer { try writeSynced(try optimizerFile(o).serialized(), to: temporary.appendingPathComponent("\(part.optimizerFile).safetensors")) }
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try writeSynced(try encoder.encode(state), to: temporary.appendingPathComponent("state.json"))
            try syncDirectory(temporary)
            if fm.fileExists(atPath: final.path) { try fm.removeItem(at: final) }
            try fm.moveItem(at: temporary, to: final)
        } catch {
            try? fm.removeItem(at: temporary)
            let reason = (error as? CheckpointError)?.message ?? fileErrorReason(error)
            throw CheckpointError("step \(state.step): writing the checkpoint \(final.path) failed (\(reason)); the partial copy was removed and \(intactText()). Hint: free disk space or fix the permissions, then resume with --resume.")
        }
        try syncDirectory(directory)
        // Move `latest` atomically.
        let latestTemporary = directory.appendingPathComponent("latest.tmp-\(getpid())")
        try writeSynced(Data(final.lastPathComponent.utf8), to: latestTemporary)
        if rename(latestTemporary.path, directory.appendingPathComponent("latest").path) != 0 {
            throw CheckpointError("\(directory.path): cannot update 'latest' (\(String(cString: strerror(errno)))). Hint: check the disk and permissions.")
        }
        try syncDirectory(directory)
        // Pruning renames a checkpoint out of the complete ones before deleting it, so a process killed while
        // deleting leaves a `.tmp-*` directory (removed by the next save), never a half-deleted step directory.
        for old in completeCheckpoints().dropLast(keep) {
            let doomed = directory.appendingPathComponent("\(old.lastPathComponent).tmp-\(getpid())-pruned")
            if rename(old.path, doomed.path) == 0 { try? fm.removeItem(at: doomed) }
        }
        return final
    }

    /// Complete checkpoint directories, oldest first.
    public func completeCheckpoints() -> [URL] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasPrefix("step-") && !$0.contains(".tmp-") }.sorted().map { directory.appendingPathComponent($0) }
            .filter { d in Self.files.allSatisfy { FileManager.default.fileExists(atPath: d.appendingPathComponent($0).path) } }
    }

    /// The newest complete checkpoint: the one `latest` names if it is complete, else the newest complete one.
    public func newest() -> URL? {
        let complete = completeCheckpoints()
        if let name = try? String(contentsOf: directory.appendingPathComponent("latest"), encoding: .utf8),
           let match = complete.last(where: { $0.lastPathComponent == name.trimmingCharacters(in: .whitespacesAndNewlines) }),
           match == complete.last {
            return match
        }
        return complete.last
    }

    /// The state.json of `checkpoint`, without loading any weights.
    public func state(of checkpoint: URL) throws -> CheckpointState {
        let url = checkpoint.appendingPathComponent("state.json")
        let state: CheckpointState
        var bytes: Data?
        do {
            bytes = try Data(contentsOf: url)
            state = try JSONDecoder().decode(CheckpointState.self, from: bytes!)
        } catch {
            throw CheckpointError("\(url.path): unreadable (\(decodingReason(error, data: bytes))). \(Self.olderCheckpointHint)")
        }
        // Values no run writes (a damaged or hand-edited file) are refused here, before they reach the data order.
        let problems = [state.formatVersion == 1 ? nil : "formatVersion \(state.formatVersion) (this program reads 1)",
                        state.step >= 0 ? nil : "step \(state.step)",
                        state.cursor.epoch >= 0 ? nil : "cursor.epoch \(state.cursor.epoch)",
                        state.cursor.samplesConsumed >= 0 ? nil : "cursor.samplesConsumed \(state.cursor.samplesConsumed)",
                        state.worldSize >= 1 ? nil : "worldSize \(state.worldSize)",
                        (state.emaUpdates ?? 0) >= 0 ? nil : "emaUpdates \(state.emaUpdates!)"].compactMap { $0 }
        guard problems.isEmpty else {
            throw CheckpointError("\(url.path): holds values no run writes (\(problems.joined(separator: ", "))). \(Self.olderCheckpointHint)")
        }
        return state
    }

    /// The fix for a damaged checkpoint: the store keeps older ones.
    static let olderCheckpointHint = "Hint: remove this checkpoint directory to resume from the one before (the run keeps train.keep of them)."

    /// Loads `checkpoint` into `model` and `optimizer`, which must have the architecture and optimizer it was
    /// written with; returns its state.
    public func load(_ checkpoint: URL, model: any Module, optimizer: Optimizer, parts: [CheckpointPart] = []) throws -> CheckpointState {
        try loadPart(CheckpointPart(name: "model", model: model, optimizer: optimizer, optimizerFile: "optimizer"), from: checkpoint)
        for part in parts { try loadPart(part, from: checkpoint) }
        return try state(of: checkpoint)
    }

    /// Loads one module and its optimizer (if any) of a checkpoint, checking names, shapes, kind and finiteness.
    func loadPart(_ part: CheckpointPart, from checkpoint: URL) throws {
        let path = checkpoint.path, model = part.model
        do {
            try model.loadWeights(from: checkpoint.appendingPathComponent("\(part.name).safetensors"))
        } catch let e as WeightsError {
            throw CheckpointError("\(path): the checkpoint's weights (\(part.name)) do not fit this run's model: \(e.message) If the run's config is unchanged, the file is damaged: \(Self.olderCheckpointHint.dropFirst(6))")
        }
        guard let optimizer = part.optimizer else { return }
        let opt: SafeTensorsFile
        do { opt = try SafeTensorsFile(contentsOf: checkpoint.appendingPathComponent("\(part.optimizerFile).safetensors")) } catch let e as SafeTensorsError {
            throw CheckpointError("\(path): \(e.message) \(Self.olderCheckpointHint)")
        }
        let savedKind = opt.metadata["kind"].flatMap { try? JSONDecoder().decode(OptimizerKind.self, from: Data($0.utf8)) }
        guard savedKind == optimizer.kind else {
            throw CheckpointError("\(path): written with optimizer \(opt.metadata["kind"] ?? "?"), this run uses \(optimizerKindText(optimizer.kind)). Hint: resume with the run's own config.")
        }
        guard let first = opt["first"], first.count == optimizer.count, let stepText = opt.metadata["step"], let step = Int(stepText) else {
            throw CheckpointError("\(path): optimizer state does not fit \(optimizer.count) parameters. Hint: resume with the run's own config.")
        }
        first.floats.withUnsafeBufferPointer { optimizer.first.pointer.update(from: $0.baseAddress!, count: optimizer.count) }
        if optimizer.second.count > 0 {
            guard let second = opt["second"], second.count == optimizer.count else {
                throw CheckpointError("\(path): optimizer second moments missing or of the wrong size. \(Self.olderCheckpointHint)")
            }
            second.floats.withUnsafeBufferPointer { optimizer.second.pointer.update(from: $0.baseAddress!, count: optimizer.count) }
        }
        optimizer.step = step
        guard GradientOps.allFinite(model.parameters.values.pointer, count: model.parameterCount),
              GradientOps.allFinite(model.buffers.values.pointer, count: model.buffers.layout.count),
              GradientOps.allFinite(optimizer.first.pointer, count: optimizer.count),
              GradientOps.allFinite(optimizer.second.pointer, count: optimizer.second.count) else {
            throw CheckpointError("\(path): holds non-finite weights or optimizer state (NaN or infinity). \(Self.olderCheckpointHint)")
        }
    }

    private func optimizerKindText(_ kind: OptimizerKind) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: (try? encoder.encode(kind)) ?? Data(), as: UTF8.self)
    }

    private func optimizerFile(_ o: Optimizer) -> SafeTensorsFile {
        var tensors = [SafeTensor(name: "first", shape: [o.count], floats: Array(UnsafeBufferPointer(start: o.first.pointer, count: o.count)))]
        if o.second.count > 0 {
            tensors.append(SafeTensor(name: "second", shape: [o.count], floats: Array(UnsafeBufferPointer(start: o.second.pointer, count: o.count))))
        }
        return SafeTensorsFile(tensors: tensors, metadata: ["step": "\(o.step)", "kind": optimizerKindText(o.kind)])
    }

    /// "the newest intact checkpoint is step-N (DIR)" or "no checkpoint has been written yet".
    public func intactText() -> String {
        newest().map { "the newest intact checkpoint is \($0.lastPathComponent) in \(directory.path)" } ?? "no checkpoint has been written yet"
    }

    /// Writes `data` to `url` and fsyncs it; throws naming the file and errno's reason.
    static func writeSynced(_ data: Data, to url: URL) throws {
        let fd = open(url.path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw CheckpointError("\(url.lastPathComponent): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var offset = 0
        try data.withUnsafeBytes { raw in
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw CheckpointError("\(url.lastPathComponent): \(String(cString: strerror(errno)))")
                }
                offset += n
            }
        }
        guard fsync(fd) == 0 else { throw CheckpointError("\(url.lastPathComponent): \(String(cString: strerror(errno)))") }
    }

    private func writeSynced(_ data: Data, to url: URL) throws { try Self.writeSynced(data, to: url) }

    /// Writes `data` to `url` atomically: a `.tmp-PID` file beside it, fsynced, renamed over it (a crash leaves
    /// the old file or the new one, and at worst a temporary that the run's next start removes).
    public static func writeAtomically(_ data: Data, to url: URL) throws {
        let temporary = url.deletingLastPathComponent().appendingPathComponent(url.lastPathComponent + ".tmp-\(getpid())")
        do {
            try writeSynced(data, to: temporary)
            guard rename(temporary.path, url.path) == 0 else { throw CheckpointError("\(url.lastPathComponent): \(String(cString: strerror(errno)))") }
        } catch {
            unlink(temporary.path)
            throw CheckpointError("\(url.path): cannot be written (\((error as? CheckpointError)?.message ?? fileErrorReason(error))). Hint: free disk space or fix the permissions.")
        }
    }

    private func syncDirectory(_ url: URL) throws {
        let fd = open(url.path, O_RDONLY)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }
}
