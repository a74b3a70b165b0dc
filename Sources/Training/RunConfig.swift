// Experiment configuration: YAML with every option, command-line overrides (`section.key=value`), and
// validation that names the file and the bad key or value.
import Foundation
import Layers
import TileShards
import Yams

/// A configuration problem naming the file, the key and a fix.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Every option of a training run (supervised now; distillation adds its own section later).
public struct RunConfig: Codable, Equatable, Sendable {
    // run
    public var name = "run"
    public var output = "runs/run"
    public var seed: UInt64 = 0
    // data
    public var trainShards = ""
    public var valShards: String?
    /// Extra shard directories whose tiles are used without labels (distillation only).
    public var unlabeledShards: [String] = []
    /// The model sees tiles area-downsampled by this factor (1 = full resolution).
    public var inputFactor = 1
    public var mean: [Float] = [0, 0, 0]
    public var std: [Float] = [1, 1, 1]
    public var workers = 1
    public var onCorrupt = CorruptTilePolicy.stop
    // augment
    public var augment = AugmentOptions()
    // model
    public var architecture = "resnet-gn"
    public var classes = 0   // 0: from the shards
    public var planes: [Int]?
    public var blocks: [Int]?
    public var groups = 32
    // optimizer and schedule
    public var optimizer = "adam"
    public var lr = 1e-3
    public var weightDecay: Float = 0
    public var momentum: Float = 0.9
    public var nesterov = false
    public var schedule = "exponential"
    public var gamma = 1.0
    public var stepEpochs = 10
    public var warmupSteps = 0
    public var minLR = 0.0
    // train
    public var epochs = 1
    public var maxSteps: Int?
    public var batchSize = 32
    public var checkpointEvery = 100
    /// Validate every this many steps (and at each epoch end); nil: at each epoch end only.
    public var valEvery: Int?
    public var keep = 3
    public var clipGradNorm: Float?
    public var threads: Int?
    // distill (present only for `histodistill distill`)
    /// Run directory of the teacher (its config.yaml and best weights).
    public var teacherRun: String?
    /// Teacher weights file (default: the teacher run's best.safetensors).
    public var teacherWeights: String?
    public var objective = DistillationObjective()

    /// True when the config describes a distillation run.
    public var isDistillation: Bool { teacherRun != nil }

    public init() {}

    /// (section, key, keyPath name) of every YAML key, for validation and overrides.
    static let keys: [String: [String]] = [
        "run": ["name", "output", "seed"],
        "data": ["train", "val", "unlabeled", "input_factor", "mean", "std", "workers", "on_corrupt"],
        "augment": ["horizontal_flip", "vertical_flip", "rotate90", "brightness", "contrast", "saturation", "hue"],
        "model": ["architecture", "classes", "planes", "blocks", "groups"],
        "optimizer": ["name", "lr", "weight_decay", "momentum", "nesterov"],
        "schedule": ["name", "gamma", "step_epochs", "warmup_steps", "min_lr"],
        "train": ["epochs", "max_steps", "batch_size", "checkpoint_every", "val_every", "keep", "clip_grad_norm", "threads"],
        "distill": ["teacher_run", "teacher_weights", "kd_weight", "temperature", "pixel_weight", "pixel_resize", "pixel_norm", "ce_weight"],
    ]

    /// Reads `url` (YAML), applies `overrides` ("section.key=value", value in YAML syntax) and validates.
    public static func load(_ url: URL, overrides: [String] = []) throws -> RunConfig {
        let text: String
        do { text = try String(contentsOf: url, encoding: .utf8) } catch {
            throw ConfigError("\(url.path): cannot be read (\(error.localizedDescription)). Hint: check the path; examples are in configs/.")
        }
        return try parse(text, source: url.path, overrides: overrides)
    }

    /// Parses YAML text; `source` names it in errors.
    public static func parse(_ text: String, source: String, overrides: [String] = []) throws -> RunConfig {
        var tree: [String: [String: Any]] = [:]
        let loaded: Any?
        do { loaded = try Yams.load(yaml: text) } catch {
            throw ConfigError("\(source): not valid YAML: \(error)")
        }
        if let root = loaded {
            guard let top = root as? [String: Any] else { throw ConfigError("\(source): the top level must be a mapping of sections (run, data, model, ...)") }
            for (section, value) in top {
                guard let allowed = keys[section] else {
                    throw ConfigError("\(source): unknown section '\(section)'\(suggestion(section, Array(keys.keys))). Sections: \(keys.keys.sorted().joined(separator: ", ")).")
                }
                guard let map = value as? [String: Any] else { throw ConfigError("\(source): section '\(section)' must be a mapping") }
                for k in map.keys where !allowed.contains(k) {
                    throw ConfigError("\(source): unknown key '\(section).\(k)'\(suggestion(k, allowed)). Keys of \(section): \(allowed.joined(separator: ", ")).")
                }
                tree[section] = map
            }
        }
        for o in overrides {
            let parts = o.split(separator: "=", maxSplits: 1).map(String.init)
            let path = parts.first?.split(separator: ".").map(String.init) ?? []
            guard parts.count == 2, path.count == 2, let allowed = keys[path[0]], allowed.contains(path[1]) else {
                throw ConfigError("override '\(o)': expected section.key=value with a known key (e.g. train.epochs=3)")
            }
            let value: Any?
            do { value = try Yams.load(yaml: parts[1]) } catch { throw ConfigError("override '\(o)': the value is not valid YAML") }
            tree[path[0], default: [:]][path[1]] = value ?? NSNull()
        }
        var c = RunConfig()
        var reader = Reader(tree: tree, source: source)
        c.name = try reader.string("run", "name") ?? c.name
        c.output = try reader.string("run", "output") ?? "runs/\(c.name)"
        c.seed = UInt64(try reader.int("run", "seed") ?? 0)
        c.trainShards = try reader.string("data", "train") ?? ""
        c.valShards = try reader.string("data", "val")
        c.unlabeledShards = try reader.strings("data", "unlabeled") ?? []
        c.inputFactor = try reader.int("data", "input_factor") ?? 1
        c.mean = try reader.floats("data", "mean") ?? c.mean
        c.std = try reader.floats("data", "std") ?? c.std
        c.workers = try reader.int("data", "workers") ?? 1
        if let p = try reader.string("data", "on_corrupt") {
            guard let v = CorruptTilePolicy(rawValue: p) else { throw ConfigError("\(source): data.on_corrupt must be stop or skip, got '\(p)'") }
            c.onCorrupt = v
        }
        c.augment.horizontalFlip = try reader.bool("augment", "horizontal_flip") ?? true
        c.augment.verticalFlip = try reader.bool("augment", "vertical_flip") ?? true
        c.augment.rotate90 = try reader.bool("augment", "rotate90") ?? true
        c.augment.brightness = try reader.float("augment", "brightness") ?? 0
        c.augment.contrast = try reader.float("augment", "contrast") ?? 0
        c.augment.saturation = try reader.float("augment", "saturation") ?? 0
        c.augment.hue = try reader.float("augment", "hue") ?? 0
        c.architecture = try reader.string("model", "architecture") ?? c.architecture
        c.classes = try reader.int("model", "classes") ?? 0
        c.planes = try reader.ints("model", "planes")
        c.blocks = try reader.ints("model", "blocks")
        c.groups = try reader.int("model", "groups") ?? 32
        c.optimizer = try reader.string("optimizer", "name") ?? c.optimizer
        c.lr = try reader.double("optimizer", "lr") ?? c.lr
        c.weightDecay = try reader.float("optimizer", "weight_decay") ?? 0
        c.momentum = try reader.float("optimizer", "momentum") ?? 0.9
        c.nesterov = try reader.bool("optimizer", "nesterov") ?? false
        c.schedule = try reader.string("schedule", "name") ?? c.schedule
        c.gamma = try reader.double("schedule", "gamma") ?? 1
        c.stepEpochs = try reader.int("schedule", "step_epochs") ?? 10
        c.warmupSteps = try reader.int("schedule", "warmup_steps") ?? 0
        c.minLR = try reader.double("schedule", "min_lr") ?? 0
        c.epochs = try reader.int("train", "epochs") ?? 1
        c.maxSteps = try reader.int("train", "max_steps")
        c.batchSize = try reader.int("train", "batch_size") ?? 32
        c.checkpointEvery = try reader.int("train", "checkpoint_every") ?? 100
        c.valEvery = try reader.int("train", "val_every")
        c.keep = try reader.int("train", "keep") ?? 3
        c.clipGradNorm = try reader.float("train", "clip_grad_norm")
        c.threads = try reader.int("train", "threads")
        c.teacherRun = try reader.string("distill", "teacher_run")
        c.teacherWeights = try reader.string("distill", "teacher_weights")
        c.objective.kdWeight = try reader.float("distill", "kd_weight") ?? 1
        c.objective.temperature = try reader.float("distill", "temperature") ?? 4
        c.objective.pixelWeight = try reader.float("distill", "pixel_weight") ?? 1
        c.objective.crossEntropyWeight = try reader.float("distill", "ce_weight") ?? 0
        if let r = try reader.string("distill", "pixel_resize") {
            guard let v = PixelResize(rawValue: r) else { throw ConfigError("\(source): distill.pixel_resize must be maxpool, bicubic or maxpool+bicubic, got '\(r)'") }
            c.objective.pixelResize = v
        }
        if let n = try reader.string("distill", "pixel_norm") {
            guard let v = PixelNorm(rawValue: n) else { throw ConfigError("\(source): distill.pixel_norm must be l1 or l2, got '\(n)'") }
            c.objective.pixelNorm = v
        }
        if tree["distill"] != nil && c.teacherRun == nil {
            throw ConfigError("\(source): distill.teacher_run is required in a distill section (the teacher's run directory)")
        }
        if !c.unlabeledShards.isEmpty && !c.isDistillation {
            throw ConfigError("\(source): data.unlabeled needs a distill section: supervised training learns from labels only. Hint: remove data.unlabeled, or distill a student from a teacher.")
        }
        if c.isDistillation && !(c.objective.temperature > 0) {
            throw ConfigError("\(source): distill.temperature must be positive, got \(c.objective.temperature)")
        }
        try c.validate(source: source)
        return c
    }

    func validate(source: String) throws {
        func bad(_ key: String, _ why: String) -> ConfigError { ConfigError("\(source): \(key) \(why)") }
        if trainShards.isEmpty { throw bad("data.train", "is required: a directory of .shard files (make one with `histodistill pack`)") }
        if ![1, 2, 4, 8, 16].contains(inputFactor) { throw bad("data.input_factor", "must be 1, 2, 4, 8 or 16, got \(inputFactor)") }
        if mean.count != 3 || std.count != 3 || std.contains(where: { $0 <= 0 }) { throw bad("data.mean/std", "need 3 values each, std > 0 (see `histodistill stats`)") }
        if workers < 1 { throw bad("data.workers", "must be at least 1") }
        if !["resnet-gn", "resnet18", "resnet34"].contains(architecture) { throw bad("model.architecture", "must be resnet-gn, resnet18 or resnet34, got '\(architecture)'") }
        if !["adam", "adamw", "sgd"].contains(optimizer) { throw bad("optimizer.name", "must be adam, adamw or sgd, got '\(optimizer)'") }
        if !(lr > 0) { throw bad("optimizer.lr", "must be positive, got \(lr)") }
        if !["constant", "exponential", "step", "cosine"].contains(schedule) { throw bad("schedule.name", "must be constant, exponential, step or cosine, got '\(schedule)'") }
        if epochs < 1 { throw bad("train.epochs", "must be at least 1") }
        if batchSize < 1 { throw bad("train.batch_size", "must be at least 1") }
        if checkpointEvery < 1 || keep < 1 { throw bad("train.checkpoint_every/keep", "must be at least 1") }
        if let maxSteps, maxSteps < 1 { throw bad("train.max_steps", "must be at least 1") }
        if let valEvery, valEvery < 1 { throw bad("train.val_every", "must be at least 1 (leave it out to validate at each epoch end)") }
    }

    /// The effective configuration as YAML (saved in the run directory and in checkpoints).
    public var yaml: String {
        func list<T>(_ v: [T]) -> String { "[" + v.map { "\($0)" }.joined(separator: ", ") + "]" }
        var s = "run:\n  name: \(name)\n  output: \(output)\n  seed: \(seed)\n"
        s += "data:\n  train: \(trainShards)\n" + (valShards.map { "  val: \($0)\n" } ?? "")
        s += unlabeledShards.isEmpty ? "" : "  unlabeled: [" + unlabeledShards.joined(separator: ", ") + "]\n"
        s += "  input_factor: \(inputFactor)\n  mean: \(list(mean))\n  std: \(list(std))\n  workers: \(workers)\n  on_corrupt: \(onCorrupt.rawValue)\n"
        s += "augment:\n  horizontal_flip: \(augment.horizontalFlip)\n  vertical_flip: \(augment.verticalFlip)\n  rotate90: \(augment.rotate90)\n"
        s += "  brightness: \(augment.brightness)\n  contrast: \(augment.contrast)\n  saturation: \(augment.saturation)\n  hue: \(augment.hue)\n"
        s += "model:\n  architecture: \(architecture)\n  classes: \(classes)\n" + (planes.map { "  planes: \(list($0))\n" } ?? "")
        s += (blocks.map { "  blocks: \(list($0))\n" } ?? "") + "  groups: \(groups)\n"
        s += "optimizer:\n  name: \(optimizer)\n  lr: \(lr)\n  weight_decay: \(weightDecay)\n  momentum: \(momentum)\n  nesterov: \(nesterov)\n"
        s += "schedule:\n  name: \(schedule)\n  gamma: \(gamma)\n  step_epochs: \(stepEpochs)\n  warmup_steps: \(warmupSteps)\n  min_lr: \(minLR)\n"
        s += "train:\n  epochs: \(epochs)\n" + (maxSteps.map { "  max_steps: \($0)\n" } ?? "") + "  batch_size: \(batchSize)\n"
        s += "  checkpoint_every: \(checkpointEvery)\n" + (valEvery.map { "  val_every: \($0)\n" } ?? "") + "  keep: \(keep)\n" + (clipGradNorm.map { "  clip_grad_norm: \($0)\n" } ?? "")
        s += threads.map { "  threads: \($0)\n" } ?? ""
        if let teacherRun {
            s += "distill:\n  teacher_run: \(teacherRun)\n" + (teacherWeights.map { "  teacher_weights: \($0)\n" } ?? "")
            s += "  kd_weight: \(objective.kdWeight)\n  temperature: \(objective.temperature)\n  pixel_weight: \(objective.pixelWeight)\n"
            s += "  pixel_resize: \(objective.pixelResize.rawValue)\n  pixel_norm: \(objective.pixelNorm.rawValue)\n  ce_weight: \(objective.crossEntropyWeight)\n"
        }
        return s
    }

    /// The model architecture for `classes` classes.
    public func modelConfig(classes: Int) -> ResNetConfig {
        var c: ResNetConfig
        switch architecture {
        case "resnet18": c = .resnet18(classes: classes)
        case "resnet34": c = .resnet34(classes: classes)
        default: c = .paper(classes: classes, groups: groups)
        }
        if let planes { c.planes = planes }
        // Blocks per stage follow the number of stages unless given.
        c.blocks = blocks ?? Array((c.blocks + Array(repeating: 1, count: max(0, c.planes.count - c.blocks.count))).prefix(c.planes.count))
        c.stages = c.planes.count
        return c
    }

    /// The optimizer.
    public var optimizerKind: OptimizerKind {
        switch optimizer {
        case "adamw": return .adamW(weightDecay: weightDecay)
        case "sgd": return .sgd(momentum: momentum, nesterov: nesterov, weightDecay: weightDecay)
        default: return .adam(weightDecay: weightDecay)
        }
    }

    /// The learning-rate schedule for `stepsPerEpoch` steps per epoch.
    public func lrSchedule(stepsPerEpoch: Int) -> LRSchedule {
        switch schedule {
        case "exponential": return .exponential(gamma: gamma)
        case "step": return .step(stepEpochs: stepEpochs, gamma: gamma)
        case "cosine": return .cosine(warmupSteps: warmupSteps, totalSteps: maxSteps ?? epochs * stepsPerEpoch, minLR: minLR)
        default: return .constant
        }
    }

    static func suggestion(_ word: String, _ candidates: [String]) -> String {
        func distance(_ a: String, _ b: String) -> Int {
            let a = Array(a), b = Array(b)
            var d = Array(0...b.count)
            for i in 1...max(a.count, 1) where i <= a.count {
                var prev = d[0]; d[0] = i
                for j in 1...max(b.count, 1) where j <= b.count {
                    let cur = d[j]
                    d[j] = min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1))
                    prev = cur
                }
            }
            return d[b.count]
        }
        guard let best = candidates.min(by: { distance(word, $0) < distance(word, $1) }), distance(word, best) <= 3 else { return "" }
        return " (did you mean '\(best)'?)"
    }
}

/// Typed access to the parsed YAML with errors naming the key.
struct Reader {
    let tree: [String: [String: Any]]
    let source: String

    func value(_ s: String, _ k: String) -> Any? {
        guard let v = tree[s]?[k], !(v is NSNull) else { return nil }
        return v
    }
    func fail(_ s: String, _ k: String, _ type: String, _ v: Any) -> ConfigError {
        ConfigError("\(source): \(s).\(k) must be \(type), got '\(v)'")
    }
    func string(_ s: String, _ k: String) throws -> String? {
        guard let v = value(s, k) else { return nil }
        if let x = v as? String { return x }
        if let x = v as? Int { return String(x) }
        throw fail(s, k, "a string", v)
    }
    func int(_ s: String, _ k: String) throws -> Int? {
        guard let v = value(s, k) else { return nil }
        if let x = v as? Int { return x }
        throw fail(s, k, "a whole number", v)
    }
    func double(_ s: String, _ k: String) throws -> Double? {
        guard let v = value(s, k) else { return nil }
        if let x = v as? Double { return x }
        if let x = v as? Int { return Double(x) }
        throw fail(s, k, "a number", v)
    }
    func float(_ s: String, _ k: String) throws -> Float? { try double(s, k).map(Float.init) }
    func bool(_ s: String, _ k: String) throws -> Bool? {
        guard let v = value(s, k) else { return nil }
        if let x = v as? Bool { return x }
        throw fail(s, k, "true or false", v)
    }
    /// A list of strings, or one string as a list of one.
    func strings(_ s: String, _ k: String) throws -> [String]? {
        guard let v = value(s, k) else { return nil }
        if let x = v as? String { return [x] }
        if let x = v as? [Any] {
            let values = x.compactMap { $0 as? String }
            if values.count == x.count { return values }
        }
        throw fail(s, k, "a directory or a list of directories", v)
    }
    func ints(_ s: String, _ k: String) throws -> [Int]? {
        guard let v = value(s, k) else { return nil }
        if let x = v as? [Int] { return x }
        throw fail(s, k, "a list of whole numbers", v)
    }
    func floats(_ s: String, _ k: String) throws -> [Float]? {
        guard let v = value(s, k) else { return nil }
        if let x = v as? [Double] { return x.map(Float.init) }
        if let x = v as? [Any] {
            let values = x.compactMap { ($0 as? Double) ?? ($0 as? Int).map(Double.init) }
            if values.count == x.count { return values.map(Float.init) }
        }
        throw fail(s, k, "a list of numbers", v)
    }
}
