// The one declaration of every config key: section, name, type, default (the `RunConfig` field's initial
// value) and a one-line doc. It drives YAML parsing, `--set`, type errors, the saved config.yaml, the
// `histodistill config-keys` listing and the reference table in configs/README.md.
import Foundation
import Layers
import TensorCore
import TileShards
import Yams

/// Model architectures a run can train.
public enum Architecture: String, CaseIterable, Codable, Sendable {
    /// The paper's ResNet with GroupNorm (planes 32/64/128/256, one BasicBlock per stage).
    case resnetGN = "resnet-gn"
    /// torchvision ResNet-18 (BatchNorm).
    case resnet18
    /// torchvision ResNet-34 (BatchNorm).
    case resnet34
}

/// Optimizers (torch.optim semantics).
public enum OptimizerName: String, CaseIterable, Codable, Sendable { case adam, adamw, sgd }

/// Learning-rate schedules.
public enum ScheduleName: String, CaseIterable, Codable, Sendable { case constant, exponential, step, cosine }

/// How a YAML value becomes a field of type `T`, and back.
struct ConfigValueType<T> {
    /// For errors and docs ("a whole number").
    let name: String
    let parse: (Any) -> T?
    let yaml: (T) -> String
}

/// YAML text of a string: plain when YAML reads it back as the same string, else double-quoted (JSON escaping).
func yamlScalar(_ s: String) -> String {
    if !s.isEmpty, let back = try? Yams.load(yaml: s) as? String, back == s, !s.contains(": "), !s.contains(" #") { return s }
    let data = (try? JSONSerialization.data(withJSONObject: [s], options: [.withoutEscapingSlashes])) ?? Data("[\"\"]".utf8)
    return String(String(decoding: data, as: UTF8.self).dropFirst().dropLast())
}

extension ConfigValueType where T == String {
    static var string: Self { .init(name: "a string", parse: { ($0 as? String) ?? ($0 as? Int).map(String.init) }, yaml: yamlScalar) }
}
/// A YAML whole number; "-0", which YAML's resolver leaves a string, is 0.
func yamlInt(_ v: Any) -> Int? { (v as? Int) ?? (v as? String == "-0" ? 0 : nil) }

extension ConfigValueType where T == Int {
    static var int: Self { .init(name: "a whole number", parse: yamlInt, yaml: { "\($0)" }) }
}
extension ConfigValueType where T == UInt64 {
    static var uint64: Self { .init(name: "a whole number >= 0", parse: { yamlInt($0).flatMap { $0 >= 0 ? UInt64($0) : nil } }, yaml: { "\($0)" }) }
}
extension ConfigValueType where T == Double {
    static var double: Self {
        .init(name: "a number", parse: { v in yamlNumber(v).flatMap { d in float32Value(d) == nil ? nil : d + 0 } }, yaml: { "\($0)" })
    }
}
/// `d` as a float32 config value (the engine computes in float32, so double keys are held to the same range): nil
/// for NaN and infinity, and when a non-zero number would round to 0, a subnormal or infinity (1e-46 is refused
/// rather than read as "off", 1e39 rather than trained as infinity); -0 is 0.
public func float32Value(_ d: Double) -> Float? {
    guard d.isFinite, d == 0 || (abs(d) >= Double(Float.leastNormalMagnitude) && abs(d) <= Double(Float.greatestFiniteMagnitude)) else { return nil }
    return Float(d) + 0
}

/// A YAML number as a Double: an integer or a float, or a string written as a decimal number that YAML's resolver
/// leaves a string ("-0", "-.5").
func yamlNumber(_ v: Any) -> Double? {
    if let d = v as? Double { return d }
    if let i = v as? Int { return Double(i) }
    guard let text = v as? String, text.range(of: #"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"#, options: .regularExpression) != nil else { return nil }
    return Double(text)
}

extension ConfigValueType where T == Float {
    static var float: Self {
        .init(name: "a number", parse: { yamlNumber($0).flatMap(float32Value) }, yaml: { "\($0)" })
    }
}
extension ConfigValueType where T == Bool {
    static var bool: Self { .init(name: "true or false", parse: { $0 as? Bool }, yaml: { "\($0)" }) }
}
extension ConfigValueType where T == [Float] {
    static var floats: Self {
        .init(name: "a list of numbers", parse: { v in
            guard let x = v as? [Any] else { return nil }
            let values = x.compactMap { yamlNumber($0).flatMap(float32Value) }
            return values.count == x.count ? values : nil
        }, yaml: { "[" + $0.map { "\($0)" }.joined(separator: ", ") + "]" })
    }
}
extension ConfigValueType where T == [Int] {
    static var ints: Self { .init(name: "a list of whole numbers", parse: { $0 as? [Int] }, yaml: { "[" + $0.map { "\($0)" }.joined(separator: ", ") + "]" }) }
}
extension ConfigValueType where T == [String] {
    /// One directory or a list of them.
    static var paths: Self {
        .init(name: "a directory or a list of directories", parse: { v in
            if let x = v as? String { return [x] }
            guard let x = v as? [Any] else { return nil }
            let values = x.compactMap { $0 as? String }
            return values.count == x.count ? values : nil
        }, yaml: { "[" + $0.map(yamlScalar).joined(separator: ", ") + "]" })
    }
}
extension ConfigValueType where T == MatmulPrecision {
    /// `train.precision`: Lightning's names and its aliases 32 and bf16 (written back as 32-true, bf16-mixed).
    static var precision: Self {
        .init(name: "one of 32-true, bf16-mixed", parse: { v in
            if let i = v as? Int { return MatmulPrecision(lightningName: String(i)) }
            return (v as? String).flatMap(MatmulPrecision.init(lightningName:))
        }, yaml: { $0.rawValue })
    }
}
extension ConfigValueType where T: RawRepresentable & CaseIterable, T.RawValue == String {
    static var choice: Self {
        .init(name: "one of " + T.allCases.map(\.rawValue).joined(separator: ", "), parse: { ($0 as? String).flatMap(T.init(rawValue:)) },
              yaml: { $0.rawValue })
    }
}

/// What `--resume` accepts for a key whose value differs from the checkpoint's config.
public enum ResumeRule: Sendable {
    /// It shapes the model, the data, the sample order or the objective: a changed value is refused.
    case mustMatch
    /// It may change (schedule length, learning rate, augmentation, bookkeeping, threads: the batch is split over one
    /// model copy per thread, so the thread count orders the float sums); the run says it is no longer bit-exact with
    /// an uninterrupted one.
    case mayChange
    /// It does not affect what is trained (names, where things are written, validation, bookkeeping).
    case free
    /// Where the run stops (`train.max_steps`; the schedule follows `train.epochs`): it may change and the run says so,
    /// but the steps stay those of an uninterrupted run.
    case stopPoint
    /// A path whose target is compared by identity (shard set digest, teacher weights digest), so a moved
    /// directory still resumes and a different one is refused.
    case byIdentity
}

extension ResumeRule {
    /// For the reference table.
    var text: String {
        switch self {
        case .mustMatch: return "must match"
        case .mayChange: return "may change (noted)"
        case .free: return "free"
        case .stopPoint: return "may change (noted; the steps stay bit-exact)"
        case .byIdentity: return "same data (moved is fine)"
        }
    }
}

/// One config key: where it lives, its type, its default and what it does.
public struct ConfigKey: @unchecked Sendable {
    /// Section and key name ("train", "epochs").
    public let section: String, name: String
    /// The value type for humans ("a whole number").
    public let type: String
    /// The default for humans (from `RunConfig()` unless the default is derived).
    public let defaultText: String
    /// One line on what it does.
    public let doc: String
    /// What `--resume` does when it differs from the checkpoint's.
    public let resume: ResumeRule
    /// Sets the field from a parsed YAML value (NSNull clears an optional key); throws naming the key.
    let read: (inout RunConfig, Any, String) throws -> Void
    /// The field as YAML, nil when unset.
    let write: (RunConfig) -> String?
    /// Sets the field back to its default.
    let reset: (inout RunConfig) -> Void

    /// "section.name".
    public var path: String { "\(section).\(name)" }

    static func key<T>(_ section: String, _ name: String, _ keyPath: WritableKeyPath<RunConfig, T>, _ type: ConfigValueType<T>,
                       default defaultText: String? = nil, resume: ResumeRule = .mustMatch, _ doc: String) -> ConfigKey {
        ConfigKey(section: section, name: name, type: type.name, defaultText: defaultText ?? type.yaml(RunConfig()[keyPath: keyPath]), doc: doc,
                  resume: resume,
                  read: { c, v, source in
                      guard let x = type.parse(v) else { throw typeError(section, name, type.name, v, source) }
                      c[keyPath: keyPath] = x
                  },
                  write: { type.yaml($0[keyPath: keyPath]) }, reset: { $0[keyPath: keyPath] = RunConfig()[keyPath: keyPath] })
    }

    static func key<T>(_ section: String, _ name: String, _ keyPath: WritableKeyPath<RunConfig, T?>, _ type: ConfigValueType<T>,
                       default defaultText: String = "unset", resume: ResumeRule = .mustMatch, _ doc: String) -> ConfigKey {
        ConfigKey(section: section, name: name, type: type.name, defaultText: defaultText, doc: doc, resume: resume,
                  read: { c, v, source in
                      if v is NSNull { c[keyPath: keyPath] = nil; return }
                      guard let x = type.parse(v) else { throw typeError(section, name, type.name, v, source) }
                      c[keyPath: keyPath] = x
                  },
                  write: { $0[keyPath: keyPath].map(type.yaml) }, reset: { $0[keyPath: keyPath] = RunConfig()[keyPath: keyPath] })
    }

    static func typeError(_ section: String, _ name: String, _ type: String, _ v: Any, _ source: String) -> ConfigError {
        var hint = ""
        if type.hasPrefix("one of "), let text = v as? String {
            hint = RunConfig.suggestion(text, type.dropFirst(7).components(separatedBy: ", "))
        }
        // A mapping or list where a scalar belongs (often `key: a: b`, a colon the YAML reads as a mapping) is named
        // as such rather than printed as Swift's dictionary.
        var given = v is [AnyHashable: Any] ? "a mapping (YAML reads 'key: a: b' as one; quote a value that holds ': ')"
            : v is [Any] ? "a list" : v is NSNull ? "no value (an empty or null value)" : "'\(v)'"
        if type == "a number" || type == "a list of numbers" {
            // Name the element of a list at fault, and say when a number is outside what float32 holds.
            let values = v as? [Any] ?? [v]
            if let i = values.firstIndex(where: { yamlNumber($0).flatMap(float32Value) == nil }) {
                if v is [Any] { given = "a list whose element \(i + 1) is '\(values[i])'" }
                if let d = yamlNumber(values[i]) {
                    hint = d.isFinite ? " (outside float32's range: a number other than 0 needs a magnitude from 1.2e-38 to 3.4e38). Hint: give a value inside that range."
                        : ": a finite number is needed."
                }
            }
        }
        return ConfigError("\(source): \(section).\(name) must be \(type), got \(given)\(hint)")
    }

    /// Sections in file order.
    public static let sections = ["run", "data", "augment", "model", "optimizer", "schedule", "train", "distill", "mil", "finetune"]

    /// Key names of `section`, in table order.
    static func keys(of section: String) -> [String] { table.filter { $0.section == section }.map(\.name) }

    /// Every key, in the order config.yaml is written.
    public static let table: [ConfigKey] = [
        key("run", "name", \.name, .string, resume: .free, "run name (also the default output directory's)"),
        key("run", "output", \.output, .string, default: "runs/NAME", resume: .free, "run directory: config.yaml, run.json, metrics, best.safetensors, checkpoints/"),
        key("run", "seed", \.seed, .uint64, "seed of the initial weights, the sample order and the augmentation"),
        key("data", "train", \.trainShards, .string, default: "required", resume: .byIdentity, "directory of training shards (`histodistill pack`); for `histodistill mil`, of feature files (`histodistill extract`)"),
        key("data", "val", \.valShards, .string, resume: .free, "directory of validation shards (validated at each epoch end)"),
        key("data", "unlabeled", \.unlabeledShards, .paths, default: "none", resume: .byIdentity,
            "distillation only: extra shard directories whose tiles are used without labels"),
        key("data", "input_factor", \.inputFactor, .int, "the model sees tiles area-downsampled by 1, 2, 4, 8 or 16"),
        key("data", "mean", \.mean, .floats, "per-channel normalisation mean (from `histodistill stats`)"),
        key("data", "std", \.std, .floats, "per-channel normalisation std (from `histodistill stats`)"),
        key("data", "workers", \.workers, .int, resume: .free, "tile decoding threads per rank"),
        key("data", "on_corrupt", \.onCorrupt, .choice, resume: .free, "a corrupt tile stops the run, or is skipped with a warning"),
        key("data", "min_tissue", \.minTissue, .float, "keep only tiles whose tissue fraction (recorded by `pack` for grid and slide tiles) is at least this; 0 keeps all"),
        key("augment", "horizontal_flip", \.augment.horizontalFlip, .bool, resume: .mayChange, "random horizontal flips"),
        key("augment", "vertical_flip", \.augment.verticalFlip, .bool, resume: .mayChange, "random vertical flips"),
        key("augment", "rotate90", \.augment.rotate90, .bool, resume: .mayChange, "random rotations by multiples of 90 degrees"),
        key("augment", "brightness", \.augment.brightness, .float, resume: .mayChange, "brightness jitter (torchvision ColorJitter range)"),
        key("augment", "contrast", \.augment.contrast, .float, resume: .mayChange, "contrast jitter (torchvision ColorJitter range)"),
        key("augment", "saturation", \.augment.saturation, .float, resume: .mayChange, "saturation jitter (torchvision ColorJitter range)"),
        key("augment", "hue", \.augment.hue, .float, resume: .mayChange, "hue jitter, at most 0.5 (torchvision ColorJitter range)"),
        key("augment", "hed_jitter", \.augment.hedJitter, .float, resume: .mayChange, "HED stain jitter θ (Tellez et al. 2018): each stain of skimage's rgb2hed scaled by U(1-θ, 1+θ) and shifted by U(-θ, θ); 0 off, 0.02-0.05 usual"),
        key("augment", "crop_scale", \.augment.cropScale, .float, resume: .mayChange, "random resized crop: smallest share of the tile's area kept, resized back to the tile (torchvision RandomResizedCrop scale=(this, 1), ratio=(3/4, 4/3), bilinear); the student's view is made from the cropped tile; 1 off"),
        key("augment", "blur_probability", \.augment.blurProbability, .float, resume: .mayChange, "probability of a Gaussian blur of the full-resolution tile (before the student's view is made); 0 off"),
        key("augment", "blur_sigma", \.augment.blurSigma, .float, resume: .mayChange, "largest blur σ in pixels: σ ~ U(0.1, this), kernel 2 ceil(3 this) + 1, reflect padding (torchvision GaussianBlur)"),
        key("augment", "mixup", \.augment.mixupAlpha, .float, resume: .mayChange, "mixup α (Zhang et al. 2018); each tile is blended with a random training tile (a labeled one in `train`), λ ~ Beta(α, α), before the other augmentations; `train` targets the same blend of the two labels, `distill` (with ce_weight 0) shows teacher and student the same blend (function matching, Beyer et al. 2022); 0 off, 1 draws λ uniformly"),
        key("model", "architecture", \.architecture, .choice, "network: the paper's ResNet-GN or torchvision's"),
        key("model", "classes", \.classes, .int, default: "0", "classifier outputs (up to 100000); 0 takes the training shards' class count"),
        key("model", "planes", \.planes, .ints, default: "the architecture's", "channels per stage (each at most 8192)"),
        key("model", "blocks", \.blocks, .ints, default: "the architecture's", "BasicBlocks per stage"),
        key("model", "groups", \.groups, .int, "GroupNorm groups (resnet-gn)"),
        key("optimizer", "name", \.optimizer, .choice, "torch.optim semantics"),
        key("optimizer", "lr", \.lr, .double, resume: .mayChange, "base learning rate"),
        key("optimizer", "weight_decay", \.weightDecay, .float, "L2 (adam, sgd) or decoupled (adamw) weight decay, 0 to 1e6; with sgd and adamw lr x weight_decay must stay below 1"),
        key("optimizer", "momentum", \.momentum, .float, "sgd momentum"),
        key("optimizer", "nesterov", \.nesterov, .bool, "sgd Nesterov momentum"),
        key("schedule", "name", \.schedule, .choice, resume: .mayChange, "learning-rate schedule"),
        key("schedule", "gamma", \.gamma, .double, resume: .mayChange, "decay factor in (0, 1] per epoch (exponential) or per step_epochs (step)"),
        key("schedule", "step_epochs", \.stepEpochs, .int, resume: .mayChange, "epochs between decays (step)"),
        key("schedule", "warmup_steps", \.warmupSteps, .int, resume: .mayChange, "linear warm-up steps (cosine)"),
        key("schedule", "warmup_epochs", \.warmupEpochs, .double, resume: .mayChange, "linear warm-up in epochs, rounded to steps (timm warmup_epochs); instead of warmup_steps, so the warm-up follows the data's size"),
        key("schedule", "min_lr", \.minLR, .double, resume: .mayChange, "final learning rate (cosine), at least 0 and below optimizer.lr"),
        key("train", "epochs", \.epochs, .int, resume: .mayChange, "passes over the training shards"),
        key("train", "max_steps", \.maxSteps, .int, resume: .stopPoint, "stop after this many global steps"),
        key("train", "batch_size", \.batchSize, .int, "global batch, split over the ranks"),
        key("train", "checkpoint_every", \.checkpointEvery, .int, resume: .free, "steps between checkpoints (also at each epoch end)"),
        key("train", "val_every", \.valEvery, .int, default: "epoch ends only", resume: .free, "validate every this many steps as well"),
        key("train", "keep", \.keep, .int, resume: .free, "complete checkpoints kept"),
        key("train", "clip_grad_norm", \.clipGradNorm, .float, resume: .mayChange, "clip the global gradient norm to this positive value (torch.nn.utils.clip_grad_norm_)"),
        key("train", "label_smoothing", \.labelSmoothing, .float, "cross-entropy label smoothing ε in 0...1 (torch.nn.CrossEntropyLoss(label_smoothing=ε)); also the CE term of distillation"),
        key("train", "ema_decay", \.emaDecay, .float, "exponential moving average of the weights and buffers, validated and kept as best.safetensors (torch AveragedModel with get_ema_multi_avg_fn(decay), use_buffers=True); 0 off, 0.999 usual"),
        key("train", "ema_warmup", \.emaWarmup, .bool, "ramp the average's decay up as timm ModelEmaV3(use_warmup=True): min(ema_decay, 1 - (1 + n)^(-2/3)) at the n-th update, so a short run's average forgets the untrained network"),
        key("train", "precision", \.precision, .precision, resume: .mayChange, "convolutions' products (Lightning's Trainer precision names; 32 and bf16 are taken as aliases): 32-true float32, or bf16-mixed bfloat16 operands with float32 accumulation in the convolutions (the teacher's too) except the shallow im2col ones (fewer than 64 output channels or depth, input channels x kernel area, below 128: 1x1 downsamples, layer1 on maps under 14 px), weights, gradients, norms and optimizer float32; native on AVX512-BF16 CPUs, emulated (slower) elsewhere"),
        key("train", "threads", \.threads, .int, default: "cores per rank", resume: .mayChange, "compute threads per rank (1 to \(RunConfig.maximumThreads))"),
        key("train", "overlap_allreduce", \.overlapAllreduce, .bool, resume: .free,
            "with several ranks, sum each gradient bucket over the ranks while backward still runs (PyTorch DistributedDataParallel's overlap); the same sums either way"),
        key("train", "overlap_teacher", \.overlapTeacher, .bool, resume: .free,
            "in distillation with overlap_allreduce: run the next batch's frozen teacher forward while the last gradient buckets are summed, before the update (the teacher does not depend on it); the same weights either way"),
        key("train", "bucket_mb", \.bucketMB, .float, resume: .mayChange,
            "gradient all-reduce bucket size in MB (DistributedDataParallel's bucket_cap_mb): a bucket ends at the first layer boundary at or past this size, counted from the last layer (a layer is never split); smaller buckets start sooner, each costs a message latency per rank"),
        key("train", "allreduce_progress_us", \.allreduceProgressMicroseconds, .int, resume: .free,
            "with overlap_allreduce: microseconds between the MPI_Testall calls of a progress thread while buckets are in flight (0: progress only between layers); pays where the network moves data without the CPU (RDMA), costs compute where TCP runs on the ranks' cores (docs/scaling.md)"),
        key("train", "gradient_compression", \.gradientCompression, .choice, resume: .mayChange,
            "how gradients travel in the all-reduce: none (float32) or bf16 (rounded to bfloat16 and summed in bfloat16, half the bytes; PyTorch DDP's bf16_compress_hook)"),
        key("train", "divergence_factor", \.divergenceFactor, .float, resume: .mayChange,
            "stop when a step's loss exceeds this many times the lowest running median of the last 100 losses, floored at 0.1 (0 disables)"),
        key("distill", "teacher_run", \.teacherRun, .string, default: "required", resume: .byIdentity, "the teacher's run directory: a run at full resolution, or one trained on downsampled tiles finer than the student's (a teacher assistant; it sees the tiles at its own input factor)"),
        key("distill", "teacher_weights", \.teacherWeights, .string, default: "the teacher run's best weights", resume: .byIdentity, "teacher weights file"),
        key("distill", "kd_weight", \.objective.kdWeight, .float, "weight (0 to 1e6) of KL(teacher || student) at the temperature, times T^2; kd, pixel and ce weights not all 0"),
        key("distill", "temperature", \.objective.temperature, .float, "softmax temperature T of the KD term (above 0, at most 100)"),
        key("distill", "pixel_weight", \.objective.pixelWeight, .float, "weight (0 to 1e6) of the pixel loss between the last feature maps"),
        key("distill", "pixel_resize", \.objective.pixelResize, .choice, "how the teacher's map is resized to the student's"),
        key("distill", "pixel_norm", \.objective.pixelNorm, .choice, "L1 or L2 pixel loss"),
        key("distill", "ce_weight", \.objective.crossEntropyWeight, .float, "weight (0 to 1e6) of cross-entropy on labeled tiles"),
        key("mil", "beta", \.milBeta, .float, "weight of the patch classifier's loss (each patch labeled with its slide's label) next to the bag loss"),
        key("mil", "hidden", \.milHidden, .ints, "widths of the MLP over each patch feature (HistoTransfer: 256, 64)"),
        key("mil", "attention", \.milAttention, .int, "width of the attention layer (tanh) before the one-unit score"),
        key("mil", "folds", \.milFolds, .int, "cross-validation: split data.train's slides into this many class-stratified folds (0: no split)"),
        key("mil", "fold", \.milFold, .int, "the fold validated on (0..<folds); the others are trained on"),
        key("finetune", "backbone_run", \.finetuneBackboneRun, .string, resume: .byIdentity, "run directory of the backbone to fine-tune"),
        key("finetune", "backbone_weights", \.finetuneBackboneWeights, .string, default: "the run's best weights", resume: .byIdentity, "backbone weights file"),
        key("finetune", "truncate_after", \.finetuneTruncateAfter, .int, "keep the backbone's stages 1..K (HistoTransfer's truncation)"),
        key("finetune", "top_k", \.finetuneTopK, .int, "patches per slide kept each epoch by the current attention (HistoTransfer's top-k)"),
        key("finetune", "train_stages", \.finetuneTrainStages, .int, "how many of the kept stages, counted from the last, are trained with the head"),
    ]

    /// The keys whose values differ between `stored` (a checkpoint's config) and `current`, as
    /// "section.key: old -> new", split by what `--resume` does with them (`.byIdentity` keys are not compared
    /// here: their targets are compared by identity).
    public static func differences(stored: RunConfig, current: RunConfig, by command: TrainingCommand? = nil) -> (refused: [String], changed: [String], moved: [String]) {
        var refused: [String] = [], changed: [String] = [], moved: [String] = []
        for k in table where k.resume != .free && k.resume != .byIdentity && command.map({ $0.sectionsRead.contains(k.section) }) != false {
            let old = k.write(stored) ?? "unset", new = k.write(current) ?? "unset"
            guard old != new else { continue }
            let line = "\(k.path): \(old) -> \(new)"
            switch k.resume {
            case .mustMatch: refused.append(line)
            case .stopPoint: moved.append(line)
            default: changed.append(line)
            }
        }
        return (refused, changed, moved)
    }

    /// The reference of every key as Markdown tables, one per section (configs/README.md holds this text).
    public static var markdownReference: String {
        var s = ""
        for section in sections {
            let only = section == "distill" ? " (only for `histodistill distill`)" : section == "mil" ? " (only for `histodistill mil` and `finetune`)"
                : section == "finetune" ? " (only for `histodistill finetune`)" : ""
            s += "\n### `\(section)`\(only)\n\n| key | type | default | what it does | on --resume |\n|---|---|---|---|---|\n"
            for k in table where k.section == section {
                s += "| `\(k.name)` | \(k.type) | \(k.defaultText) | \(k.doc) | \(k.resume.text) |\n"
            }
        }
        return s
    }
}
