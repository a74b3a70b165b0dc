// Experiment configuration: YAML with every option, command-line overrides (`section.key=value`), and
// validation that names the file and the bad key or value.
import Foundation
import Layers
import TensorCore
import TileShards
import Yams

/// A configuration problem naming the file, the key and a fix.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Every option of a training or distillation run. Each YAML key is declared once, in `ConfigKey.table`.
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
    /// Keep only tiles with at least this tissue fraction (as recorded by `pack`); 0 keeps every tile.
    public var minTissue: Float = 0
    // augment
    public var augment = AugmentOptions()
    // model
    public var architecture = Architecture.resnetGN
    public var classes = 0   // 0: from the shards
    public var planes: [Int]?
    public var blocks: [Int]?
    public var groups = 32
    // optimizer and schedule
    public var optimizer = OptimizerName.adam
    public var lr = 1e-3
    public var weightDecay: Float = 0
    public var momentum: Float = 0.9
    public var nesterov = false
    public var schedule = ScheduleName.exponential
    public var gamma = 1.0
    public var stepEpochs = 10
    public var warmupSteps = 0
    /// Linear warm-up in epochs (timm's `warmup_epochs`), rounded to steps; the alternative to `warmupSteps`.
    public var warmupEpochs = 0.0
    public var minLR = 0.0
    // train
    public var epochs = 1
    public var maxSteps: Int?
    public var batchSize = 32
    /// Cross-entropy label smoothing ε (0: none).
    public var labelSmoothing: Float = 0
    /// Decay of the exponential moving average of the weights kept as the evaluated model (0: none).
    public var emaDecay: Float = 0
    /// Ramp the average's decay up from 0 as timm's `ModelEmaV3(use_warmup=True)` does, so a short run's average
    /// does not keep the untrained network (see `WeightEMA.decay(update:)`).
    public var emaWarmup = false
    public var checkpointEvery = 100
    /// Validate every this many steps (and at each epoch end); nil: at each epoch end only.
    public var valEvery: Int?
    public var keep = 3
    public var clipGradNorm: Float?
    public var threads: Int?
    /// Sum the gradient over the ranks while backward runs (PyTorch DDP's overlap); only with more than one rank.
    public var overlapAllreduce = true
    /// `train.overlap_teacher`: in distillation with the overlapped all-reduce, run the next batch's teacher forward
    /// while the last gradient buckets are summed.
    public var overlapTeacher = true
    /// Gradient all-reduce bucket size, in MB (PyTorch DDP's `bucket_cap_mb`; `OverlappedGradientReduction.buckets`).
    public var bucketMB: Float = 2
    /// Microseconds between MPI_Testall calls of the overlapped reduction's progress thread (0: none).
    public var allreduceProgressMicroseconds = 0
    /// How the gradient travels in the all-reduce (float32, or bfloat16 as DDP's bf16_compress_hook).
    public var gradientCompression = GradientCompression.none
    /// Most compute threads a process may ask for: far above any node's cores, low enough that threads x ranks
    /// cannot overflow.
    public static let maximumThreads = 4096
    /// Precision of the convolutions' GEMMs (`BF16GEMM.precision` for the run's process).
    public var precision = MatmulPrecision.float32
    /// A step whose loss exceeds this many times the running median of recent losses stops the run (0: never).
    public var divergenceFactor: Float = 1000
    // distill (present only for `histodistill distill`)
    /// Run directory of the teacher (its config.yaml and best weights).
    public var teacherRun: String?
    /// Teacher weights file (default: the teacher run's best.safetensors).
    public var teacherWeights: String?
    public var objective = DistillationObjective()
    // mil (only for `histodistill mil`)
    /// Weight of the patch classifier's loss (every patch labeled with its slide's label) next to the bag loss.
    public var milBeta: Float = 0.5
    /// Widths of the MIL head's MLP and attention layer.
    public var milHidden: [Int] = [256, 64]
    public var milAttention = 32
    /// Cross-validation: split data.train's slides into this many class-stratified folds (0: no split) and
    /// validate on fold `milFold`.
    public var milFolds = 0
    public var milFold = 0
    // finetune (only for `histodistill finetune`)
    /// The backbone: a run directory and/or a weights file, cut after this stage.
    public var finetuneBackboneRun: String?
    public var finetuneBackboneWeights: String?
    public var finetuneTruncateAfter = 4
    /// Patches per slide kept by attention each epoch, and how many of the backbone's last stages are trained.
    public var finetuneTopK = 16
    public var finetuneTrainStages = 1

    /// True when the config has a mil section (an attention-MIL run over feature sets).
    public var hasMILSection = false
    /// True when the config has a finetune section (top-k fine-tuning of a backbone with a MIL head).
    public var hasFinetuneSection = false

    /// True when the config describes a distillation run.
    public var isDistillation: Bool { teacherRun != nil }

    public init() {}

    /// Reads `url` (YAML), applies `overrides` ("section.key=value", value in YAML syntax) and validates.
    /// Relative paths resolve against the current directory, except those written in a run directory's own
    /// config.yaml (a `run.json` beside it, or the header every run writes), which resolve against that directory
    /// (see `RunDirectory`). A path given in `overrides` is typed on the command line, so it always resolves against
    /// the current directory (`--config runs/a/config.yaml --set run.output=runs/b` writes to ./runs/b, not
    /// runs/a/runs/b).
    public static func load(_ url: URL, overrides: [String] = [], command: TrainingCommand? = nil) throws -> RunConfig {
        let text: String
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue {
            throw ConfigError("\(url.path) is a directory, not a config file. Hint: give a YAML config file; examples are in configs/.")
        }
        do { text = try String(contentsOf: url, encoding: .utf8) } catch {
            throw ConfigError("\(url.path): cannot be read (\(fileErrorReason(error))). Hint: check the path; examples are in configs/.")
        }
        InputFiles.note(url)
        let config = try parse(text, source: url.path, overrides: overrides, command: command)
        let folder = url.deletingLastPathComponent()
        let current = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
        let inRun = RunDirectory.isRunDirectory(folder) || RunDirectory.isEffectiveConfig(text)
        guard inRun else { return config.resolvingPaths(against: current) }
        let typed = Set(overrides.map { String($0.prefix { $0 != "=" }) })
        var resolved = config
        for (key, map) in pathKeys {
            map(&resolved) { resolve($0, against: typed.contains(key) ? current : folder) }
        }
        return resolved
    }

    /// The keys whose values are paths, each with how to map its path(s): `mappingPaths` applies them all.
    static let pathKeys: [String: @Sendable (inout RunConfig, (String) -> String) -> Void] = [
        "run.output": { $0.output = $1($0.output) },
        "data.train": { $0.trainShards = $1($0.trainShards) },
        "data.val": { $0.valShards = $0.valShards.map($1) },
        "data.unlabeled": { $0.unlabeledShards = $0.unlabeledShards.map($1) },
        "distill.teacher_run": { $0.teacherRun = $0.teacherRun.map($1) },
        "distill.teacher_weights": { $0.teacherWeights = $0.teacherWeights.map($1) },
        "finetune.backbone_run": { $0.finetuneBackboneRun = $0.finetuneBackboneRun.map($1) },
        "finetune.backbone_weights": { $0.finetuneBackboneWeights = $0.finetuneBackboneWeights.map($1) },
    ]

    /// `path` made absolute against `base` (a directory); an absolute or empty path as it is.
    static func resolve(_ path: String, against base: URL) -> String {
        path.hasPrefix("/") || path.isEmpty ? path : base.appendingPathComponent(path).standardizedFileURL.path
    }

    /// Parses YAML text; `source` names it in errors. Every key is read, checked and defaulted by `ConfigKey.table`.
    /// With `command`, the values of sections it does not read are kept but not checked (they have no effect on it).
    public static func parse(_ text: String, source: String, overrides: [String] = [], command: TrainingCommand? = nil) throws -> RunConfig {
        var tree: [String: [String: Any]] = [:]
        let loaded: Any?
        let composed = try composeChecked(text, source: source)
        do { loaded = try Yams.load(yaml: text) } catch {
            throw ConfigError("\(source): not valid YAML: \(error)")
        }
        let sections = ConfigKey.sections
        try rejectDuplicateKeys(composed, source: source)
        if let root = loaded {
            guard let top = root as? [String: Any] else { throw ConfigError("\(source): the top level must be a mapping of sections (run, data, model, ...)") }
            for (section, value) in top {
                guard sections.contains(section) else {
                    throw ConfigError("\(source): unknown section '\(section)'\(suggestion(section, sections)). Sections: \(sections.joined(separator: ", ")).")
                }
                guard let map = value as? [String: Any] else { throw ConfigError("\(source): section '\(section)' must be a mapping") }
                let allowed = ConfigKey.keys(of: section)
                for k in map.keys where !allowed.contains(k) {
                    throw ConfigError("\(source): unknown key '\(section).\(k)'\(keySuggestion(k, section: section)). Keys of \(section): \(allowed.joined(separator: ", ")).")
                }
                tree[section] = map
            }
        }
        var overridden: Set<String> = []
        for o in overrides {
            let parts = o.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty else {
                throw ConfigError("--set '\(o)': expected section.key=value (e.g. train.epochs=3)")
            }
            guard let key = ConfigKey.table.first(where: { $0.path == parts[0] }) else {
                let name = parts[0].split(separator: ".").last.map(String.init) ?? parts[0]
                let section = parts[0].contains(".") ? String(parts[0].split(separator: ".")[0]) : nil
                throw ConfigError("--set '\(o)': unknown key '\(parts[0])'\(keySuggestion(name, section: section, path: parts[0])). Every key: `histodistill config-keys`.")
            }
            let value: Any?
            try composeChecked(parts[1], source: "--set \(parts[0])")
            do { value = try Yams.load(yaml: parts[1]) } catch { throw ConfigError("--set '\(o)': the value is not valid YAML") }
            tree[key.section, default: [:]][key.name] = value ?? NSNull()
            overridden.insert(key.path)
        }
        var c = RunConfig()
        for key in ConfigKey.table {
            guard let v = tree[key.section]?[key.name] else { continue }
            try key.read(&c, v, overridden.contains(key.path) ? "--set \(key.path)" : source)
        }
        if tree["run"]?["output"] == nil || tree["run"]?["output"] is NSNull { c.output = "runs/\(c.name)" }
        c.hasMILSection = tree["mil"] != nil
        c.hasFinetuneSection = tree["finetune"] != nil
        if tree["distill"] != nil && c.teacherRun == nil && command?.sectionsRead.contains("distill") != false {
            throw ConfigError("\(source): distill.teacher_run is required in a distill section (the teacher's run directory)")
        }
        if !c.unlabeledShards.isEmpty && !c.isDistillation {
            throw ConfigError("\(source): data.unlabeled needs a distill section: supervised training learns from labels only. Hint: remove data.unlabeled, or distill a student from a teacher.")
        }
        var checked = c
        if let command { for key in ConfigKey.table where !command.sectionsRead.contains(key.section) { key.reset(&checked) } }
        try checked.validate(source: source, overridden: overridden)
        return c
    }

    /// The YAML's node tree (nil when it does not parse; the caller's load says why), once checked: YAML aliases that
    /// repeat aliases (a "billion laughs" file) expand to more values than memory holds when the config is built, so
    /// a text that expands to more than `limit` values is refused, counting with an early stop; nesting deeper than
    /// `maxDepth` (brackets, braces or indentation) is refused before the YAML parser, which recurses once per level
    /// and would overflow the stack thousands of levels down.
    @discardableResult
    static func composeChecked(_ text: String, source: String, limit: Int = 100_000, maxDepth: Int = 64) throws -> Node? {
        try rejectDeepNesting(text, source: source, maxDepth: maxDepth)
        guard let root = try? Yams.compose(yaml: text) else { return nil }
        var count = 0
        func fits(_ n: Node) -> Bool {
            count += 1
            guard count <= limit else { return false }
            switch n {
            case .mapping(let m): return m.allSatisfy { fits($0.key) && fits($0.value) }
            case .sequence(let s): return s.allSatisfy(fits)
            case .scalar: return true
            }
        }
        guard fits(root) else {
            throw ConfigError("\(source): expands to more than \(limit) values (aliases that repeat aliases?), where a run config holds a few dozen. Hint: write the values out instead of nesting YAML aliases.")
        }
        return root
    }

    /// Refuses flow collections nested more than `maxDepth` deep (`[[[...`, outside quoted strings) and lines indented
    /// more than 8 spaces per level of that depth.
    static func rejectDeepNesting(_ text: String, source: String, maxDepth: Int) throws {
        var depth = 0, deepest = 0, quote: Character? = nil, column = 0, indent = 0, atLineStart = true, comment = false
        var previous: Character = "\n"
        for ch in text {
            defer { previous = ch }
            if ch == "\n" { column = 0; atLineStart = true; comment = false; quote = nil; continue }
            if comment { continue }
            if atLineStart { if ch == " " { column += 1; continue }; atLineStart = false; indent = max(indent, column) }
            if let q = quote { if ch == q { quote = nil }; continue }
            switch ch {
            case "\"", "'": quote = ch
            case "[", "{": depth += 1; deepest = max(deepest, depth)
            case "]", "}": depth = max(0, depth - 1)
            case "#" where previous == " " || previous == "\t" || previous == "\n": comment = true   // YAML: '#' after a blank
            default: break
            }
        }
        if deepest > maxDepth || indent > 8 * maxDepth {
            throw ConfigError("\(source): nests \(deepest > maxDepth ? "\(deepest) brackets deep" : "\(indent) spaces deep"), more than a run config ever needs (\(maxDepth) levels). Hint: write the values as a flat list, e.g. [32, 64, 128, 256].")
        }
    }

    /// A section or key written twice would silently keep only the last one: refuse it, naming both lines.
    static func rejectDuplicateKeys(_ root: Node?, source: String) throws {
        guard let top = root?.mapping else { return }
        func check(_ mapping: Node.Mapping, _ prefix: String) throws {
            var seen: [String: Int] = [:]
            for (k, v) in mapping {
                guard let name = k.string else { continue }
                let line = k.mark.map { $0.line } ?? 0
                if let first = seen[name] {
                    throw ConfigError("\(source): '\(prefix)\(name)' is given twice (lines \(first) and \(line)); only one would be used. Hint: merge them into one.")
                }
                seen[name] = line
                if prefix.isEmpty, let inner = v.mapping { try check(inner, "\(name).") }
            }
        }
        try check(top, "")
    }

    /// A list for an error message: whole when short, else its first values and its length.
    private func brief(_ xs: [Int]) -> String { xs.count <= 8 ? "\(xs)" : "[\(xs.prefix(4).map(String.init).joined(separator: ", ")), ...] (\(xs.count) values)" }

    /// Checks ranges and combinations; an error names `source` (the file), or the `--set` when the key was given
    /// on the command line (`overridden`: "section.key" paths).
    func validate(source: String, overridden: Set<String> = []) throws {
        func bad(_ key: String, _ why: String) -> ConfigError {
            // "data.mean/std" names two keys of one section: either given by --set counts.
            let section = key.split(separator: ".").first.map(String.init) ?? ""
            let names = key.dropFirst(section.count + 1).split(separator: "/").map { "\(section).\($0)" }
            let given = names.filter(overridden.contains)
            return ConfigError(given.isEmpty ? "\(source): \(key) \(why)" : "--set \(given.joined(separator: ", ")): \(key) \(why)")
        }
        if trainShards.isEmpty { throw bad("data.train", "is required: a directory of .shard files (make one with `histodistill pack`)") }
        if !(0...1).contains(labelSmoothing) { throw bad("train.label_smoothing", "must be in 0...1 (0.1 is usual), got \(labelSmoothing)") }
        if !(emaDecay >= 0 && emaDecay < 1) { throw bad("train.ema_decay", "must be in [0, 1) (0 off; 0.999 averages over about 1,000 steps), got \(emaDecay)") }
        if emaWarmup && emaDecay == 0 { throw bad("train.ema_warmup", "has no effect without an average. Hint: set train.ema_decay (0.999 is usual) or remove train.ema_warmup.") }
        if warmupSteps < 0 { throw bad("schedule.warmup_steps", "must be 0 or more, got \(warmupSteps)") }
        if !(warmupEpochs >= 0) { throw bad("schedule.warmup_epochs", "must be 0 or more, got \(warmupEpochs)") }
        if warmupSteps > 0 && warmupEpochs > 0 {
            throw bad("schedule.warmup_steps", "and schedule.warmup_epochs are both set (\(warmupSteps) steps, \(warmupEpochs) epochs); only one can size the warm-up. Hint: set the other to 0 (for example --set schedule.warmup_epochs=0 to count the warm-up in steps).")
        }
        if (warmupSteps > 0 || warmupEpochs > 0) && schedule != .cosine {
            throw bad(warmupSteps > 0 ? "schedule.warmup_steps" : "schedule.warmup_epochs", "applies to the cosine schedule only, but schedule.name is \(schedule.rawValue). Hint: set schedule.name: cosine, or remove the warm-up.")
        }
        if !(0...1).contains(minTissue) { throw bad("data.min_tissue", "must be a fraction in 0...1, got \(minTissue)") }
        if ![1, 2, 4, 8, 16].contains(inputFactor) { throw bad("data.input_factor", "must be 1, 2, 4, 8 or 16, got \(inputFactor)") }
        if mean.count != 3 || std.count != 3 || std.contains(where: { $0 < 0.001 }) {
            // Pixels lie in [0, 1]: a std below 0.001 (none measured on tissue is) would scale them past what float32 trains on.
            throw bad("data.mean/std", "need 3 values each, std at least 0.001 (see `histodistill stats`)")
        }
        if workers < 1 { throw bad("data.workers", "must be at least 1") }
        if !(0...0.5).contains(augment.hue) { throw bad("augment.hue", "must be in 0...0.5 (torchvision ColorJitter), got \(augment.hue)") }
        if !(0...0.5).contains(augment.hedJitter) { throw bad("augment.hed_jitter", "must be in 0...0.5 (0.02-0.05 is usual), got \(augment.hedJitter)") }
        if !(augment.cropScale > 0 && augment.cropScale <= 1) { throw bad("augment.crop_scale", "must be in (0, 1] (1 off; 0.5 keeps at least half the tile's area), got \(augment.cropScale)") }
        if !(0...1).contains(augment.blurProbability) { throw bad("augment.blur_probability", "must be in 0...1 (0 off), got \(augment.blurProbability)") }
        if !(augment.blurSigma >= 0.1 && augment.blurSigma <= 16) { throw bad("augment.blur_sigma", "must be in 0.1...16 pixels (1-2 is usual), got \(augment.blurSigma)") }
        if !(augment.mixupAlpha == 0 || (augment.mixupAlpha >= 0.01 && augment.mixupAlpha <= 100)) {
            throw bad("augment.mixup", "must be 0 (off) or in 0.01...100 (1 draws the blend weight uniformly; below 0.01 the weight is 0 or 1 to within rounding, so nothing is blended), got \(augment.mixupAlpha)")
        }
        if augment.mixupAlpha > 0 && isDistillation && objective.crossEntropyWeight > 0 {
            throw bad("augment.mixup", "in distillation applies without labels only (distill.ce_weight is \(objective.crossEntropyWeight)): the blend's partner may be an unlabeled tile. Hint: remove augment.mixup, or set distill.ce_weight: 0.")
        }
        for (k, v) in [("brightness", augment.brightness), ("contrast", augment.contrast), ("saturation", augment.saturation)] where !(v >= 0) {
            throw bad("augment.\(k)", "must be 0 or positive, got \(v)")
        }
        if let planes, planes.isEmpty || planes.count > 4 || planes.contains(where: { $0 < 1 }) { throw bad("model.planes", "must list 1 to 4 positive widths, got \(brief(planes))") }
        if let blocks, blocks.isEmpty || blocks.contains(where: { $0 < 1 }) { throw bad("model.blocks", "must list positive block counts, got \(brief(blocks))") }
        if classes < 0 || classes > ResNetConfig.maxClasses { throw bad("model.classes", "must be in 0...\(ResNetConfig.maxClasses) (0: taken from the shards), got \(classes)") }
        // Widths far beyond any CNN's would only end in a failed allocation: refuse them with the key named.
        if let planes, planes.contains(where: { $0 > ResNetConfig.maxPlanes }) { throw bad("model.planes", "must be at most \(ResNetConfig.maxPlanes) each (ResNet-50's widest is 2048), got \(brief(planes))") }
        if let blocks, blocks.contains(where: { $0 > ResNetConfig.maxBlocks }) { throw bad("model.blocks", "must be at most \(ResNetConfig.maxBlocks) each, got \(brief(blocks))") }
        if milHidden.contains(where: { $0 > 65_536 }) || milAttention > 65_536 {
            throw bad("mil.hidden/attention", "must be at most 65536 wide (CLAM uses [512, 256] and 256), got \(milHidden) and \(milAttention)")
        }
        if batchSize > 65_536 { throw bad("train.batch_size", "must be at most 65536, got \(batchSize)") }
        if !(lr > 0 && lr.isFinite) { throw bad("optimizer.lr", "must be a positive number, got \(lr)") }
        if !(momentum >= 0 && momentum < 1) { throw bad("optimizer.momentum", "must be in [0, 1) (0.9 is usual), got \(momentum)") }
        if !(weightDecay >= 0 && weightDecay.isFinite) { throw bad("optimizer.weight_decay", "must be 0 or positive (1e-4 is usual), got \(weightDecay)") }
        if weightDecay > DistillationObjective.maximumWeight {
            throw bad("optimizer.weight_decay", "must be at most \(Int(DistillationObjective.maximumWeight)), got \(weightDecay): its term overflows float32 gradients (1e-4 is usual)")
        }
        // SGD and AdamW multiply the weights by (1 - lr x weight_decay) every step: at 1 or more that zeroes or flips
        // them. weight_decay is a float32, so the product of two decimal settings is compared to 1 within its rounding.
        let decayPerStep = Double(weightDecay) * lr
        if optimizer != .adam && decayPerStep >= 1 - 1e-6 {
            throw bad("optimizer.weight_decay/lr", "give lr x weight_decay = \(lr) x \(weightDecay) = \(String(format: "%.4g", decayPerStep)): \(optimizer.rawValue) multiplies the weights by 1 - lr x weight_decay every step, which would zero or flip them. Hint: lower optimizer.lr or optimizer.weight_decay (1e-4 with sgd and 0.01 to 0.05 with adamw are usual).")
        }
        if !(gamma > 0 && gamma <= 1) {
            throw bad("schedule.gamma", "must be in (0, 1] (the factor the learning rate is multiplied by per decay; 1 keeps it constant), got \(gamma)")
        }
        if !(minLR >= 0 && minLR < lr) { throw bad("schedule.min_lr", "must be at least 0 and below optimizer.lr (\(lr)), got \(minLR)") }
        if stepEpochs < 1 { throw bad("schedule.step_epochs", "must be at least 1, got \(stepEpochs)") }
        if let clipGradNorm, !(clipGradNorm > 0 && clipGradNorm.isFinite) {
            throw bad("train.clip_grad_norm", "must be a positive norm (1.0 is usual; leave it out for no clipping), got \(clipGradNorm)")
        }
        if isDistillation {
            if let first = objective.problems(naming: { "distill.\($0)" }).first { throw bad("distill.\(first.field)", first.text) }
        }
        if !(1...1_000_000).contains(epochs) { throw bad("train.epochs", "must be in 1...1000000, got \(epochs)") }
        if let maxSteps, maxSteps > 1_000_000_000 { throw bad("train.max_steps", "must be at most 1000000000, got \(maxSteps)") }
        if !(warmupEpochs <= 1_000_000) { throw bad("schedule.warmup_epochs", "must be at most 1000000, got \(warmupEpochs)") }
        if name.isEmpty || name == "." || name == ".." || name.contains("/") {
            throw bad("run.name", "must be a plain name (it names the run's directory under --runs-dir), not empty and without '/', got '\(name)'")
        }
        if batchSize < 1 { throw bad("train.batch_size", "must be at least 1") }
        if checkpointEvery < 1 || keep < 1 { throw bad("train.checkpoint_every/keep", "must be at least 1") }
        if let maxSteps, maxSteps < 1 { throw bad("train.max_steps", "must be at least 1") }
        if let valEvery, valEvery < 1 { throw bad("train.val_every", "must be at least 1 (leave it out to validate at each epoch end)") }
        if let threads, !(1...Self.maximumThreads).contains(threads) { throw bad("train.threads", "must be 1 to \(Self.maximumThreads)") }
        if !(0...1_000_000).contains(allreduceProgressMicroseconds) {
            throw bad("train.allreduce_progress_us", "must be 0 (no progress thread) to 1000000 microseconds, got \(allreduceProgressMicroseconds)")
        }
        if !(bucketMB > 0 && bucketMB <= 4096) { throw bad("train.bucket_mb", "must be more than 0 and at most 4096 (MB), got \(bucketMB)") }
        if milHidden.count != 2 || milHidden.contains(where: { $0 < 1 }) || milAttention < 1 { throw bad("mil.hidden/attention", "need two positive widths and a positive attention width") }
        if milFolds == 1 || milFolds < 0 || (milFolds > 1 && !(0..<milFolds).contains(milFold)) {
            throw bad("mil.folds/fold", "need folds 0 (no split) or at least 2, and fold in 0..<folds; got folds \(milFolds), fold \(milFold)")
        }
        if !(1...4).contains(finetuneTruncateAfter) || finetuneTopK < 1 || finetuneTrainStages < 1 || finetuneTrainStages > finetuneTruncateAfter {
            throw bad("finetune.truncate_after/top_k/train_stages", "need truncate_after 1-4, top_k >= 1 and train_stages in 1...truncate_after; got \(finetuneTruncateAfter), \(finetuneTopK), \(finetuneTrainStages)")
        }
        if milFolds > 1 && valShards != nil { throw bad("mil.folds", "and data.val exclude each other: cross-validation validates on a fold of data.train") }
        if !(milBeta >= 0) { throw bad("mil.beta", "must be 0 or positive, got \(milBeta)") }
        if !(divergenceFactor >= 0) { throw bad("train.divergence_factor", "must be 0 (off) or positive, got \(divergenceFactor)") }
    }

    /// Keys set to other than their default in sections `command` does not read: `mil.beta` in a config given to
    /// `train`, `augment.crop_scale` in one given to `mil train`. Such keys have no effect.
    public func ignoredKeys(by command: TrainingCommand) -> [String] {
        let defaults = RunConfig()
        return ConfigKey.table.filter {
            (!command.sectionsRead.contains($0.section) || command.keysNotRead.contains($0.path)) && $0.write(self) != $0.write(defaults)
        }.map(\.path)
    }

    /// The effective configuration as YAML, every key of `ConfigKey.table` that has a value, in table order
    /// (saved in the run directory and in checkpoints; parses back to an equal config).
    public var yaml: String {
        var s = ""
        for section in ConfigKey.sections where (section != "distill" || isDistillation) && section != "mil" && section != "finetune"
            || (section == "mil" && hasMILSection) || (section == "finetune" && hasFinetuneSection) {
            s += "\(section):\n"
            for key in ConfigKey.table where key.section == section {
                if let v = key.write(self) { s += "  \(key.name): \(v)\n" }
            }
        }
        return s
    }

    /// Paths of the config (`pathKeys`: run.output, data.train/val/unlabeled, distill.teacher_run/teacher_weights,
    /// finetune.backbone_run/backbone_weights) with `transform` applied to each.
    func mappingPaths(_ transform: (String) -> String) -> RunConfig {
        var c = self
        for map in RunConfig.pathKeys.values { map(&c, transform) }
        return c
    }

    /// Relative paths made absolute against `base` (a directory).
    public func resolvingPaths(against base: URL) -> RunConfig {
        mappingPaths { RunConfig.resolve($0, against: base) }
    }

    /// The model architecture for `classes` classes.
    public func modelConfig(classes: Int) -> ResNetConfig {
        var c: ResNetConfig
        switch architecture {
        case .resnet18: c = .resnet18(classes: classes)
        case .resnet34: c = .resnet34(classes: classes)
        case .resnetGN: c = .paper(classes: classes, groups: groups)
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
        case .adamw: return .adamW(weightDecay: weightDecay)
        case .sgd: return .sgd(momentum: momentum, nesterov: nesterov, weightDecay: weightDecay)
        case .adam: return .adam(weightDecay: weightDecay)
        }
    }

    /// The warm-up in optimizer steps: `schedule.warmup_steps`, or `schedule.warmup_epochs` times the steps per
    /// epoch, rounded to the nearest step.
    public func warmupSteps(stepsPerEpoch: Int) -> Int {
        warmupSteps > 0 ? warmupSteps : Int((warmupEpochs * Double(stepsPerEpoch)).rounded())
    }

    /// The learning-rate schedule for `stepsPerEpoch` steps per epoch.
    public func lrSchedule(stepsPerEpoch: Int) -> LRSchedule {
        switch schedule {
        case .exponential: return .exponential(gamma: gamma)
        case .step: return .step(stepEpochs: stepEpochs, gamma: gamma)
        case .cosine: return .cosine(warmupSteps: warmupSteps(stepsPerEpoch: stepsPerEpoch), totalSteps: maxSteps ?? epochs * stepsPerEpoch, minLR: minLR)
        case .constant: return .constant
        }
    }

    /// " (did you mean 'train.precision'?)" for a key `name` given in `section` (nil: none) or as `path`: a key of that
    /// name in another section first (precision under model), else the nearest key of the section, else the nearest path.
    static func keySuggestion(_ name: String, section: String?, path: String? = nil) -> String {
        let sameName = ConfigKey.table.filter { $0.name == name && $0.section != section }.map(\.path)
        if !sameName.isEmpty { return " (did you mean '\(sameName.joined(separator: "' or '"))'?)" }
        if let section, path == nil { return suggestion(name, ConfigKey.keys(of: section)) }
        return suggestion(path ?? name, ConfigKey.table.map(\.path))
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


/// The commands that train from a run config, and the sections of it each reads (the rest has no effect on them:
/// warned about at start, and free to change on `--resume`).
public enum TrainingCommand: String, Sendable {
    case train, distill, milTrain = "mil train", finetune

    public var sectionsRead: Set<String> {
        let cnn: Set<String> = ["run", "data", "augment", "model", "optimizer", "schedule", "train"]
        let slides: Set<String> = ["run", "data", "optimizer", "schedule", "train", "mil"]
        switch self {
        case .train: return cnn
        case .distill: return cnn.union(["distill"])
        case .milTrain: return slides
        case .finetune: return slides.union(["finetune"])
        }
    }

    /// Keys of sections the command reads that it still has no use for: `mil train` trains an attention head on
    /// stored features, without convolutions, so `train.precision` does nothing there.
    public var keysNotRead: Set<String> {
        self == .milTrain ? ["train.precision"] : []
    }
}
