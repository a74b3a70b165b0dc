// One training step per objective, and the data-parallel step every caller runs: the trainer (`train`,
// `distill`), `cost --measure` and `bench-step` time and train the same code. An objective computes this rank's
// forward and backward; `DataParallelStep` averages loss terms and gradients over the global batch by
// all-reduce, checks them, clips, and applies the optimizer, for any `Module`.
import CKernels
import Dispatch
import Layers
import TensorCore
import TileShards
#if canImport(Glibc)
import Glibc
#endif

/// Loss terms of a step (cross-entropy training fills `total` only).
public typealias LossTerms = DistillationObjective.Terms

/// One rank's tiles of a step, as pointers valid for the duration of the call.
public struct StepInput {
    /// What the trained model sees: (count, 3, edge, edge), normalised.
    public var images: UnsafePointer<Float>
    public var edge: Int
    /// The same tiles as the teacher sees them (count, 3, teacherEdge, teacherEdge): full resolution, or downsampled
    /// by the teacher run's own input factor; nil without a teacher.
    public var teacherImages: UnsafePointer<Float>?
    public var teacherEdge: Int
    /// Class index per tile, -1 for unlabeled (count).
    public var labels: UnsafePointer<Int32>
    public var count: Int
    /// Multiplies terms averaged over labeled tiles (cross-entropy): global tiles x local labeled over local tiles x
    /// global labeled, so that after the tile-weighted reduction they average over the global batch's labeled
    /// tiles. 1 on one process; set by `DataParallelStep.step`.
    public var labeledScale: Float = 1
    /// Supervised mixup: the label of each tile's blend partner and the weight λ of its own pixels (count each;
    /// `LoadedBatch.mixPartnerLabels`, `mixWeights`); nil without mixup. Cross-entropy then targets the blend of
    /// the two labels (Zhang et al. 2018).
    public var mixPartnerLabels: UnsafePointer<Int32>? = nil
    public var mixWeights: UnsafePointer<Float>? = nil
    /// Which batch this is, for work prepared ahead of its step (`StepObjective.prepare`): the trainer gives the global
    /// step index the batch is trained at. nil: nothing prepared is used.
    public var key: Int? = nil

    public init(images: UnsafePointer<Float>, edge: Int, teacherImages: UnsafePointer<Float>?, teacherEdge: Int,
                labels: UnsafePointer<Int32>, count: Int) {
        self.images = images; self.edge = edge; self.teacherImages = teacherImages; self.teacherEdge = teacherEdge
        self.labels = labels; self.count = count
    }
}

extension LoadedBatch {
    /// Calls `body` with this batch as a step input for a model that sees tiles downsampled `inputFactor` times and a
    /// teacher that sees them downsampled `teacherFactor` times (1: the full-resolution tiles; any other factor must be
    /// one of the batch's views, `BatchLoader`'s `extraFactors`).
    public func withStepInput<R>(inputFactor: Int, teacherFactor: Int = 1, _ body: (StepInput) throws -> R) rethrows -> R {
        let view = modelView(inputFactor: inputFactor)
        let teacherView = modelView(inputFactor: teacherFactor)
        precondition(teacherView.edge * teacherFactor == size, "withStepInput: the batch has no view downsampled \(teacherFactor)x for the teacher")
        return try view.tiles.withUnsafeBufferPointer { s in
            try teacherView.tiles.withUnsafeBufferPointer { t in
                try labels.withUnsafeBufferPointer { l in
                    try mixPartnerLabels.withUnsafeBufferPointer { mp in
                        try mixWeights.withUnsafeBufferPointer { mw in
                            var input = StepInput(images: s.baseAddress!, edge: view.edge, teacherImages: t.baseAddress,
                                                  teacherEdge: teacherView.edge, labels: l.baseAddress!, count: count)
                            if !mixWeights.isEmpty { input.mixPartnerLabels = mp.baseAddress; input.mixWeights = mw.baseAddress }
                            return try body(input)
                        }
                    }
                }
            }
        }
    }
}

/// What one rank computes in a step: forward and backward of its tiles, leaving the gradient of the MEAN loss
/// over them in `model.parameters.gradients` (overwritten; zero when `count` is 0), and the loss terms.
public protocol StepObjective: AnyObject {
    /// The trained model.
    var model: any Module { get }
    /// True when a term averages over the labeled tiles only (so ranks need the global labeled count).
    var hasLabeledTerms: Bool { get }
    /// True when every term needs a label (cross-entropy alone): a global batch without a labeled tile then trains
    /// nothing, as a batch of no tiles (no forward, no update; `GlobalStep.updated` false).
    var labelsOnly: Bool { get }
    /// Forward and backward of `input`. With a `reduction`, the model (or the replicas the batch is split over) is
    /// attached to it before backward, which then hands it the gradient bucket by bucket (the gradient is complete
    /// only after `reduction.complete()`); without one, the gradient is in `model.parameters.gradients` on return.
    func localGradients(_ input: StepInput, reduction: OverlappedGradientReduction?) -> LossTerms
    /// True when `prepare` does work ahead (a distillation step's teacher forward).
    var preparesAhead: Bool { get }
    /// Work for the step that will train `next` (identified by `next.key`) that does not depend on the model being
    /// trained, done now while the current step's reduction is still in flight; `progress` is to be called now and
    /// then while it runs. The default does nothing.
    func prepare(_ next: StepInput, progress: (() -> Void)?)
}

extension StepObjective {
    /// Forward and backward of `input`, leaving the gradient in `model.parameters.gradients`.
    public func localGradients(_ input: StepInput) -> LossTerms { localGradients(input, reduction: nil) }
    public var preparesAhead: Bool { false }
    public func prepare(_ next: StepInput, progress: (() -> Void)?) {}
}

/// Supervised training: softmax cross-entropy on the labels (torch.nn.CrossEntropyLoss, mean reduction).
public final class SupervisedStep: StepObjective {
    public let network: any ImageModel
    public var model: any Module { network }
    public var hasLabeledTerms: Bool { true }
    public var labelsOnly: Bool { true }
    /// Label smoothing ε (torch.nn.CrossEntropyLoss's `label_smoothing`).
    public let labelSmoothing: Float

    public init(model: any ImageModel, labelSmoothing: Float = 0) {
        precondition(model.classes > 0, "SupervisedStep: the model has no classifier")
        network = model
        self.labelSmoothing = labelSmoothing
    }

    /// With more than one engine thread, a GroupNorm ResNet's batch is split over copies of the model, one per thread
    /// (`Parallel.replicas`: the threads meet once per step instead of at every kernel), and their gradients and terms
    /// are averaged by tiles as `DataParallelStep` averages ranks'. GroupNorm normalises each image alone, so this is
    /// the same step up to the order of float sums; BatchNorm models (whose statistics depend on the batch) are not
    /// split.
    public func localGradients(_ input: StepInput, reduction: OverlappedGradientReduction?) -> LossTerms {
        let k = min(Parallel.width, input.count)
        if k > 1, let net = network as? ResNet, case .group = net.config.norm {
            return replicated(input, net: net, k: k, reduction: reduction)
        }
        reduction?.attach([network])
        return single(input)
    }

    /// Copies of the model for the split steps, made on first use; their weights follow the model's at every step.
    private var copies: [SupervisedStep] = []
    /// How many copies of the model the split steps have made so far.
    public var replicaCount: Int { copies.count }

    private func replicated(_ input: StepInput, net: ResNet, k: Int, reduction: OverlappedGradientReduction?) -> LossTerms {
        while copies.count < k - 1 {
            copies.append(SupervisedStep(model: ResNet(net.config, initialize: false), labelSmoothing: labelSmoothing))
        }
        let steps = [self] + copies.prefix(k - 1)
        return splitOverReplicas(input, net: net, copies: steps.dropFirst().map { $0.network as! ResNet }, reduction: reduction) { i, sub, _ in
            steps[i].single(sub)
        }
    }

    /// Forward and backward of the whole batch on the model itself.
    func single(_ input: StepInput) -> LossTerms {
        network.parameters.zeroGradients()
        guard input.count > 0 else { return LossTerms() }
        let classes = network.classes
        let out = network.forward(input.images, shape: NCHW(input.count, 3, input.edge, input.edge), training: true)
        var grad = [Float](repeating: 0, count: input.count * classes)
        var terms = LossTerms()
        terms.total = CrossEntropy.forwardBackward(logits: out.logits!.data, labels: input.labels, n: input.count, classes: classes,
                                                   gradLogits: &grad, scale: input.labeledScale, labelSmoothing: labelSmoothing,
                                                   mixPartnerLabels: input.mixPartnerLabels, mixWeights: input.mixWeights)
        if input.labeledScale != 1 { terms.total *= input.labeledScale }
        // A non-finite loss is caught after the reduction, on every rank alike; backward is harmless.
        grad.withUnsafeBufferPointer { network.backward(gradLogits: $0.baseAddress!, gradFeatureMap: nil, gradPooled: nil) }
        return terms
    }
}

/// A GroupNorm ResNet's step split over copies of the model, one per engine thread (`Parallel.replicas`): the threads
/// meet once per step instead of at every kernel. Share i of the batch (tiles n*i/k ..< n*(i+1)/k, k = copies + 1) runs
/// `pass(i, share, range)` on network i (0: `net` itself, else `copies[i-1]`, whose weights and buffers are first set
/// to `net`'s); each pass leaves the gradient of its share's mean loss in its network's gradients. Their tile-weighted
/// mean goes into `net`'s gradients, as `DataParallelStep` averages ranks', and the terms are averaged the same way;
/// a share's cross-entropy scale is set so that cross-entropy still averages over all the batch's labeled tiles. The
/// same step as one pass over the batch up to the order of float sums (GroupNorm normalises each image alone;
/// BatchNorm models, whose statistics depend on the batch, must not be split). With a `reduction`, the networks are
/// attached to it and it takes the mean bucket by bucket as their backward passes finish them.
func splitOverReplicas(_ input: StepInput, net: ResNet, copies: [ResNet], reduction: OverlappedGradientReduction?,
                       pass: (Int, StepInput, Range<Int>) -> LossTerms) -> LossTerms {
    let k = copies.count + 1
    for copy in copies { copy.copyState(from: net) }
    let n = input.count
    let shares = (0..<k).map { (n * $0 / k)..<(n * ($0 + 1) / k) }
    let weights = shares.map { Float(Double($0.count) / Double(n)) }
    let g = net.parameters.gradients!.pointer
    let others = copies.map { UnsafePointer($0.parameters.gradients!.pointer) }
    reduction?.attach([net] + copies, others: others, weights: weights)
    let labeled = shares.map { r in r.reduce(0) { $0 + (input.labels[$1] >= 0 ? 1 : 0) } }
    let allLabeled = labeled.reduce(0, +)
    var terms = [LossTerms](repeating: LossTerms(), count: k)
    let image = 3 * input.edge * input.edge, teacherImage = 3 * input.teacherEdge * input.teacherEdge
    terms.withUnsafeMutableBufferPointer { t in
        Parallel.replicas(k) { i in
            let r = shares[i]
            var sub = input
            sub.images = input.images + r.lowerBound * image
            sub.teacherImages = input.teacherImages.map { $0 + r.lowerBound * teacherImage }
            sub.labels = input.labels + r.lowerBound
            sub.mixPartnerLabels = input.mixPartnerLabels.map { $0 + r.lowerBound }
            sub.mixWeights = input.mixWeights.map { $0 + r.lowerBound }
            sub.count = r.count
            // As DataParallelStep's labeledScale: after weighting by tiles, CE averages over all labeled tiles.
            sub.labeledScale = allLabeled > 0 && labeled[i] > 0
                ? input.labeledScale * Float(Double(n * labeled[i]) / Double(r.count * allLabeled)) : 0
            t[i] = pass(i, sub, r)
        }
    }
    // The tile-weighted mean of the copies' gradients, into the model's (the reduction takes it bucket by bucket).
    if reduction == nil {
        Parallel.forEach(net.parameterCount, grain: 1 << 15) { range in
            combineReplicaGradients(g, others: others, weights: weights, range: range)
        }
    }
    var out = LossTerms()
    for (i, t) in terms.enumerated() {
        out.kd += t.kd * weights[i]; out.pixel += t.pixel * weights[i]
        out.crossEntropy += t.crossEntropy * weights[i]; out.total += t.total * weights[i]
    }
    return out
}

/// Where a distillation step's teacher outputs come from.
public protocol TeacherSource: AnyObject {
    /// The teacher's logits (n, classes) and last feature map for `images` (n, 3, edge, edge); valid until the next call.
    func outputs(_ images: UnsafePointer<Float>, shape: NCHW) -> ImageModelOutput
    /// The same, calling `progress` now and then while it computes (a ResNet teacher after each convolution with its
    /// norm, from the threads it runs on). The default ignores `progress`.
    func outputs(_ images: UnsafePointer<Float>, shape: NCHW, progress: (() -> Void)?) -> ImageModelOutput
    /// Classes of the teacher's classifier.
    var classes: Int { get }
}

extension TeacherSource {
    public func outputs(_ images: UnsafePointer<Float>, shape: NCHW, progress: (() -> Void)?) -> ImageModelOutput {
        outputs(images, shape: shape)
    }
}

/// A frozen teacher network run in eval mode, without keeping gradients. With more than one engine thread a ResNet
/// teacher's batch is split over copies of it, one per thread (`EvalReplicas`), made on the first such forward: the
/// teacher's weights must not change after that.
public final class FrozenTeacher: TeacherSource {
    public let model: any ImageModel
    private let replicas: EvalReplicas
    public init(_ model: any ImageModel) {
        precondition(model.classes > 0, "FrozenTeacher: the teacher has no classifier")
        self.model = model
        replicas = EvalReplicas(model)
    }
    public var classes: Int { model.classes }
    public func outputs(_ images: UnsafePointer<Float>, shape: NCHW) -> ImageModelOutput {
        replicas.forward(images, shape: shape)
    }
    public func outputs(_ images: UnsafePointer<Float>, shape: NCHW, progress: (() -> Void)?) -> ImageModelOutput {
        replicas.forward(images, shape: shape, progress: progress)
    }
}

/// A teacher whose run normalised tiles with other statistics than the student's: it maps the student's
/// normalised full-resolution tiles back to [0, 1] and normalises them with the teacher's own mean and std, so the
/// teacher always sees tiles prepared as in its own training.
public final class RenormalizingTeacher: TeacherSource {
    public let base: any TeacherSource
    /// Per channel: x_teacher = x_student * scale + shift.
    let scale: [Float], shift: [Float]
    private var scratch: [Float] = []

    /// `from`: the student run's (mean, std); `to`: the teacher run's.
    public init(_ base: any TeacherSource, from: (mean: [Float], std: [Float]), to: (mean: [Float], std: [Float])) {
        self.base = base
        scale = (0..<3).map { from.std[$0] / to.std[$0] }
        shift = (0..<3).map { (from.mean[$0] - to.mean[$0]) / to.std[$0] }
    }
    public var classes: Int { base.classes }
    public func outputs(_ images: UnsafePointer<Float>, shape: NCHW) -> ImageModelOutput {
        outputs(images, shape: shape, progress: nil)
    }
    public func outputs(_ images: UnsafePointer<Float>, shape: NCHW, progress: (() -> Void)?) -> ImageModelOutput {
        if scratch.count < shape.count { scratch = [Float](repeating: 0, count: shape.count) }
        let plane = shape.h * shape.w
        scratch.withUnsafeMutableBufferPointer { out in
            for n in 0..<shape.n {
                for c in 0..<shape.c {
                    let base = (n * shape.c + c) * plane, a = scale[c], b = shift[c]
                    for i in 0..<plane { out[base + i] = images[base + i] * a + b }
                }
            }
        }
        return scratch.withUnsafeBufferPointer { base.outputs($0.baseAddress!, shape: shape, progress: progress) }
    }
}

/// Teacher outputs computed ahead for one batch (`DistillationStep.prepare`), copied out of the teacher's buffers and
/// kept with the batch's key (the global step index it is trained at) and the teacher input's shape.
public final class TeacherLookahead {
    private var entry: (key: Int, shape: NCHW, output: ImageModelOutput)?
    private var logits = Buffer<Float>(count: 0), map = Buffer<Float>(count: 0), pooled = Buffer<Float>(count: 0)

    public init() {}

    /// Copies `output` (the teacher's, for a batch of `key` whose teacher input is `shape`), replacing what was kept.
    func keep(_ output: ImageModelOutput, key: Int, shape: NCHW) {
        func copy(_ t: Tensor<Float>, _ buffer: inout Buffer<Float>) -> Tensor<Float> {
            if buffer.count < t.count { buffer = Buffer(count: t.count) }
            buffer.pointer.update(from: t.data, count: t.count)
            return Tensor(shape: t.shape, data: buffer.pointer)
        }
        let m = copy(output.featureMap, &map), p = copy(output.pooled, &pooled)
        entry = (key, shape, ImageModelOutput(featureMap: m, pooled: p, logits: output.logits.map { copy($0, &logits) }))
    }

    /// The kept outputs when they are for `key` and `shape`, else nil; valid until the next `keep` or `clear`.
    func outputs(key: Int, shape: NCHW) -> ImageModelOutput? {
        guard let entry, entry.key == key, entry.shape == shape else { return nil }
        return entry.output
    }

    func clear() { entry = nil }
}

/// Resolution-based distillation (DiPalma et al. 2021): the student sees the low-resolution view, the teacher the
/// full-resolution one; `objective` weighs KD(T), the pixel loss to the teacher's resized map and cross-entropy.
public final class DistillationStep: StepObjective {
    public let student: any ImageModel
    public let teacher: any TeacherSource
    public let objective: DistillationObjective
    public var model: any Module { student }
    public var hasLabeledTerms: Bool { objective.crossEntropyWeight != 0 }
    public var labelsOnly: Bool { objective.labelsOnly }

    /// `lookahead`: where teacher outputs computed ahead are kept; by default a `SharedTeacher`'s own (so every student
    /// of a multi-student pass finds what one of them prepared), else the step's own.
    public init(student: any ImageModel, teacher: any TeacherSource, objective: DistillationObjective, lookahead: TeacherLookahead? = nil) {
        precondition(student.classes == teacher.classes, "DistillationStep: student has \(student.classes) classes, teacher \(teacher.classes)")
        self.student = student; self.teacher = teacher; self.objective = objective
        self.lookahead = lookahead ?? (teacher as? SharedTeacher)?.lookahead ?? TeacherLookahead()
    }

    /// The teacher's outputs for the whole batch first (split over its own copies, `FrozenTeacher`), then, with more
    /// than one engine thread and a GroupNorm ResNet student, the student's forward, losses and backward split over
    /// copies of it, one per thread, as `SupervisedStep` splits (`splitOverReplicas`): the same step up to the order of
    /// float sums. Other students run the batch at once.
    public func localGradients(_ input: StepInput, reduction: OverlappedGradientReduction?) -> LossTerms {
        guard input.count > 0 else {
            student.parameters.zeroGradients()
            return LossTerms()
        }
        guard let teacherImages = input.teacherImages else { preconditionFailure("DistillationStep: the input has no teacher view") }
        let shape = NCHW(input.count, 3, input.teacherEdge, input.teacherEdge)
        let t: ImageModelOutput
        if let key = input.key, let p = lookahead.outputs(key: key, shape: shape) {
            t = p
            preparedUsed += 1
        } else {
            t = teacher.outputs(teacherImages, shape: shape)
        }
        let k = min(Parallel.width, input.count)
        if k > 1, let net = student as? ResNet, case .group = net.config.norm {
            while copies.count < k - 1 { copies.append(ResNet(net.config, initialize: false)) }
            let nets = [net] + copies.prefix(k - 1)
            return splitOverReplicas(input, net: net, copies: Array(nets.dropFirst()), reduction: reduction) { i, sub, range in
                pass(nets[i], sub, teacher: t, tiles: range)
            }
        }
        reduction?.attach([student])
        return pass(student, input, teacher: t, tiles: 0..<input.count)
    }

    /// The teacher's outputs computed ahead by `prepare`, by batch key.
    public let lookahead: TeacherLookahead
    /// Steps that used teacher outputs prepared ahead (for tests and reports).
    public private(set) var preparedUsed = 0

    public var preparesAhead: Bool { true }

    /// Runs the frozen teacher on `next` (a batch with a `key`) now, calling `progress` while it computes, and keeps its
    /// outputs (`lookahead`) for the step that trains `next`: the teacher does not depend on the student's update, so
    /// this can run while the previous step's gradient is still being summed over the ranks (`DataParallelStep.step`'s
    /// `lookahead`). A step uses them only for the same key and shape and recomputes otherwise; a later `prepare`
    /// replaces them. The losses and gradients are the same bits either way.
    public func prepare(_ next: StepInput, progress: (() -> Void)?) {
        lookahead.clear()
        guard let key = next.key, next.count > 0, let images = next.teacherImages else { return }
        let shape = NCHW(next.count, 3, next.teacherEdge, next.teacherEdge)
        lookahead.keep(teacher.outputs(images, shape: shape, progress: progress), key: key, shape: shape)
    }

    /// Copies of the student for the split steps, made on first use; their weights follow the student's at every step.
    private var copies: [ResNet] = []
    /// How many copies of the student the split steps have made so far.
    public var replicaCount: Int { copies.count }

    /// Forward, losses and backward of `input` on `network` (the student or a copy), against the teacher's outputs
    /// for tiles `tiles` of the batch (`input` holds those tiles).
    private func pass(_ network: any ImageModel, _ input: StepInput, teacher t: ImageModelOutput, tiles: Range<Int>) -> LossTerms {
        network.parameters.zeroGradients()
        let n = input.count, classes = network.classes
        guard n > 0 else { return LossTerms() }
        let out = network.forward(input.images, shape: NCHW(n, 3, input.edge, input.edge), training: true)
        let teacherMap = t.featureMap.nchw, perTile = teacherMap.c * teacherMap.h * teacherMap.w
        var grad = [Float](repeating: 0, count: n * classes)
        var mapGrad = [Float](repeating: 0, count: out.featureMap.count)
        let terms = objective.evaluate(studentLogits: out.logits!.data, teacherLogits: t.logits!.data + tiles.lowerBound * classes,
                                       n: n, classes: classes, studentMap: out.featureMap.data, studentMapShape: out.featureMap.nchw,
                                       teacherMap: t.featureMap.data + tiles.lowerBound * perTile,
                                       teacherMapShape: NCHW(n, teacherMap.c, teacherMap.h, teacherMap.w),
                                       labels: input.labels, gradLogits: &grad, gradMap: &mapGrad, crossEntropyScale: input.labeledScale)
        grad.withUnsafeBufferPointer { g in
            mapGrad.withUnsafeBufferPointer { network.backward(gradLogits: g.baseAddress!, gradFeatureMap: $0.baseAddress!, gradPooled: nil) }
        }
        return terms
    }
}

/// The global view of a step after the reduction.
public struct GlobalStep: Sendable {
    /// Loss terms averaged over the global batch.
    public var terms: LossTerms
    /// Tiles in the global batch that were trained on.
    public var count: Int
    /// Corrupt tiles skipped on all ranks.
    public var skipped: Int
    /// A stop signal seen on any rank (this rank's own, else SIGTERM's number for another rank's).
    public var stopSignal: Int32?
    /// Why the step was not applied: a non-finite loss or gradient (the same on every rank), else nil.
    public var divergence: String?
    /// Whether the optimizer took the step: false when no rank had a tile, when a labels-only objective
    /// (`StepObjective.labelsOnly`) had no labeled tile in the global batch, or on divergence. A step not taken has
    /// no loss to log.
    public var updated = false
    /// Seconds this rank spent in the reduction (including waiting for the slowest rank).
    public var reduceSeconds: Double = 0
}

/// One data-parallel training step of `objective` on one rank of `group`.
///
/// Each rank computes the gradient of the mean loss over its own tiles; `reduce` weights it by the rank's share
/// of the global batch and sums over ranks in place (bucket by bucket), so every rank ends with the gradient of
/// the mean over the whole global batch, whatever the number of ranks and however unevenly it was split.
public final class DataParallelStep {
    /// The objective `step(_:)` runs on tiles; nil for a step whose local gradients are computed by the caller
    /// (a MIL bag step, which feeds `finish`).
    public let objective: (any StepObjective)?
    public let group: any ProcessGroup
    /// Largest all-reduce message, in floats (the gradient buffer is reduced in buckets of this size).
    public var bucketElements = 1 << 22
    /// Sum the gradient over the ranks while backward runs (`OverlappedGradientReduction`, buckets of
    /// `bucketElements` from the end of the buffer) instead of after it. The same sums either way. (The trainer sets
    /// it only with several ranks; on one, the reduction sends nothing and only records when each bucket was ready.)
    public var overlapReduction = false
    /// Microseconds between MPI_Testall calls of the overlapped reduction's progress thread (0: progress only at the
    /// backward's reports; `OverlappedGradientReduction.progressInterval`).
    public var progressInterval: UInt32 = 0
    /// How the gradient travels in the all-reduce (`train.gradient_compression`).
    public var gradientCompression = GradientCompression.none
    /// The last step's overlapped reduction (its bucket timeline), nil when the step did not overlap.
    public private(set) var lastReduction: OverlappedGradientReduction?
    /// With an overlapped reduction, do the next step's work that does not depend on this step's update (the next
    /// batch's teacher forward in distillation, `StepObjective.prepare`) after backward, while the last buckets are
    /// summed, instead of at the start of the next step (`train.overlap_teacher`).
    public var prepareAhead = true
    /// Seconds the last step spent preparing the next one ahead (`prepareAhead`), nil when it did not.
    public private(set) var lastLookaheadSeconds: Double?

    /// The trained model.
    public let model: any Module

    public init(objective: any StepObjective, group: any ProcessGroup) {
        self.objective = objective; self.model = objective.model; self.group = group
    }

    /// A step of any `Module` whose caller computes the local gradients itself and then calls `finish`.
    public init(model: any Module, group: any ProcessGroup) {
        self.objective = nil; self.model = model; self.group = group
    }

    /// Forward, backward, reduction and (unless the step diverged or no rank had a tile) the clipped optimizer
    /// update with learning rate `lr`, then BatchNorm buffers from rank 0. `skipped` counts this rank's corrupt tiles.
    /// `lookahead`: the batch of the next step (with its `key`), for work the objective can do for it while this
    /// step's overlapped reduction is in flight (`StepObjective.prepare`: the next batch's teacher forward in
    /// distillation), after this step's backward and before its update; used only when the step overlaps
    /// (`overlapReduction`) and `prepareAhead` is on. The weights are the same bits with or without it.
    @discardableResult
    public func step(_ input: StepInput, optimizer: Optimizer, lr: Float, clipGradNorm: Float? = nil, skipped: Int = 0,
                     lookahead: StepInput? = nil) throws -> GlobalStep {
        guard let objective else { preconditionFailure("DataParallelStep.step: built without an objective; call finish") }
        lastLookaheadSeconds = nil
        var input = input
        var globalLabeled: Double?
        var globalCount: Double?
        // On one process nothing is sent, but the buckets' timeline is still recorded (`bench-step --overlap`'s profile).
        let overlap = overlapReduction
        if objective.labelsOnly || (group.size > 1 && objective.hasLabeledTerms) || overlap {
            var labeled = 0
            for i in 0..<input.count where input.labels[i] >= 0 { labeled += 1 }
            var counts: [Double] = [Double(input.count), Double(labeled)]
            if group.size > 1 {
                try counts.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
                if objective.hasLabeledTerms {
                    input.labeledScale = counts[1] > 0 && labeled > 0 ? Float(counts[0] * Double(labeled) / (Double(input.count) * counts[1])) : 0
                }
            }
            globalLabeled = counts[1]
            globalCount = counts[0]
        }
        // Every rank has the same global count, so all skip alike (and still meet in the reduction below).
        if objective.labelsOnly && globalLabeled == 0 {
            lastReduction = nil
            return try reduce(LossTerms(), count: input.count, skipped: skipped, gradients: false)
        }
        guard overlap, let total = globalCount, total > 0 else {
            lastReduction = nil
            let local = objective.localGradients(input)
            return try finish(local, count: input.count, optimizer: optimizer, lr: lr, clipGradNorm: clipGradNorm, skipped: skipped)
        }
        // The rank's weight is its share of the global batch, applied to each bucket before the sum (as `reduce`).
        let n = Double(input.count)
        let reduction = OverlappedGradientReduction(group: group, gradients: model.parameters.gradients!.pointer,
                                                    buckets: gradientBuckets, scale: input.count > 0 && n != total ? Float(n / total) : 1)
        reduction.progressInterval = progressInterval
        reduction.compression = gradientCompression
        lastReduction = reduction
        let local = objective.localGradients(input, reduction: reduction)
        if prepareAhead, let next = lookahead, next.key != nil, objective.preparesAhead {
            let started = DispatchTime.now().uptimeNanoseconds
            objective.prepare(next, progress: { reduction.progress() })
            lastLookaheadSeconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        }
        let t0 = DispatchTime.now().uptimeNanoseconds
        try reduction.complete()
        let waited = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        return try finish(local, count: input.count, optimizer: optimizer, lr: lr, clipGradNorm: clipGradNorm, skipped: skipped,
                          gradientsReduced: true, reducedSeconds: waited)
    }

    /// Everything after this rank's forward and backward (its mean-loss gradient over `count` samples in
    /// `model.parameters.gradients`): the reduction, the non-finite check, clipping, the update, the buffer broadcast.
    /// `gradientsReduced`: the gradient was already summed over the ranks (an overlapped reduction, which took
    /// `reducedSeconds` after backward).
    public func finish(_ local: LossTerms, count: Int, optimizer: Optimizer, lr: Float, clipGradNorm: Float? = nil, skipped: Int = 0,
                       gradientsReduced: Bool = false, reducedSeconds: Double = 0) throws -> GlobalStep {
        let t0 = DispatchTime.now().uptimeNanoseconds
        var global = try reduce(local, count: count, skipped: skipped, gradients: !gradientsReduced)
        global.reduceSeconds = reducedSeconds + Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        // A NaN can also hide behind a finite loss (in the gradient only): neither may reach the weights. The
        // loss and the gradient are the same on every rank after the reduction, so every rank decides alike.
        let g = model.parameters.gradients!.pointer
        if !global.terms.total.isFinite {
            global.divergence = "the loss became \(global.terms.total)"
        } else if global.count > 0 && !GradientOps.allFinite(g, count: model.parameterCount) {
            global.divergence = "the gradient became non-finite (loss \(global.terms.total))"
        }
        guard global.divergence == nil, global.count > 0 else { return global }
        if let clipGradNorm { GradientOps.clipNorm(g, count: model.parameterCount, maxNorm: clipGradNorm) }
        optimizer.update(values: model.parameters.values.pointer, gradients: g, lr: lr)
        // A finite gradient times a huge learning rate can still overflow the weights (identical on every rank).
        if !GradientOps.allFinite(model.parameters.values.pointer, count: model.parameterCount) {
            global.divergence = "the weights became non-finite after the update (learning rate \(lr))"
            return global
        }
        try broadcastBuffers()
        global.updated = true
        return global
    }

    /// Averages the loss terms and the gradient over the global batch (the gradient only with `gradients`, which every
    /// rank must pass alike). On one process this changes nothing (bit for bit). Also tells every rank whether any rank
    /// received a stop signal.
    public func reduce(_ local: LossTerms, count: Int, skipped: Int, gradients: Bool = true) throws -> GlobalStep {
        let n = Double(count)
        let mySignal = StopSignals.pending
        guard group.size > 1 else {
            return GlobalStep(terms: local, count: count, skipped: skipped, stopSignal: mySignal)
        }
        var stats: [Double] = [n, Double(local.total) * n, Double(local.kd) * n, Double(local.pixel) * n,
                               Double(local.crossEntropy) * n, Double(skipped), mySignal == nil ? 0 : 1]
        try stats.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
        let total = stats[0]
        func mean(_ i: Int) -> Float { total > 0 ? Float(stats[i] / total) : 0 }
        if total > 0 && gradients {
            let g = model.parameters.gradients!
            if count > 0 && n != total { GradientOps.scale(g.pointer, count: model.parameterCount, by: Float(n / total)) }
            try allReduceGradients()
        }
        return GlobalStep(terms: .init(kd: mean(2), pixel: mean(3), crossEntropy: mean(4), total: mean(1)), count: Int(total),
                          skipped: Int(stats[5]), stopSignal: stats[6] > 0 ? (mySignal ?? SIGTERM) : nil)
    }

    /// The buckets the gradient is summed in, from the end of the buffer: cut at the layer boundaries the model reports
    /// (`ReportsGradientProgress`), else in pieces of `bucketElements` (`OverlappedGradientReduction.buckets`).
    public var gradientBuckets: [Range<Int>] {
        if let cached = bucketCache, cached.elements == bucketElements { return cached.buckets }
        let buckets = OverlappedGradientReduction.buckets(count: model.parameterCount, bucketElements: bucketElements,
                                                          boundaries: (model as? ReportsGradientProgress)?.gradientReadyOffsets)
        bucketCache = (bucketElements, buckets)
        return buckets
    }
    /// The layout of `gradientBuckets` for the `bucketElements` it was made with (the model's layers do not change).
    private var bucketCache: (elements: Int, buckets: [Range<Int>])?

    /// Sums `model.parameters.gradients` over the ranks in place, after backward: the same buckets and the same
    /// non-blocking reductions (MPI_Iallreduce) as the overlapped path, so the sums are the same bits at any number of
    /// ranks whether or not the step overlapped (a blocking MPI_Allreduce may add in another order from 3 ranks on).
    public func allReduceGradients() throws {
        guard group.size > 1 else { return }
        let g = model.parameters.gradients!.pointer
        for r in gradientBuckets {
            try group.startAllReduceSum(UnsafeMutableBufferPointer(start: g + r.lowerBound, count: r.count), compression: gradientCompression)
        }
        try group.waitForReductions()
    }

    /// Buffers (BatchNorm running statistics) follow rank 0's, as PyTorch DDP's broadcast_buffers does.
    public func broadcastBuffers() throws {
        guard group.size > 1, model.buffers.layout.count > 0 else { return }
        try group.broadcast(UnsafeMutableRawBufferPointer(start: model.buffers.values.pointer, count: model.buffers.layout.count * 4), root: 0)
    }

    /// Copies rank 0's weights, buffers, counters and `optimizer`'s state to every rank.
    public func broadcastState(optimizer: Optimizer?) throws {
        try Self.broadcastState(of: model, optimizer: optimizer, group: group)
    }

    /// Copies rank 0's weights, buffers, counters and `optimizer`'s state of any `Module` to every rank of `group`.
    public static func broadcastState(of model: any Module, optimizer: Optimizer?, group: any ProcessGroup) throws {
        guard group.size > 1 else { return }
        func send(_ p: UnsafeMutablePointer<Float>, _ count: Int) throws {
            guard count > 0 else { return }
            try group.broadcast(UnsafeMutableRawBufferPointer(start: p, count: count * MemoryLayout<Float>.stride), root: 0)
        }
        try send(model.parameters.values.pointer, model.parameterCount)
        try send(model.buffers.values.pointer, model.buffers.layout.count)
        var counters = model.counters
        if let optimizer {
            try send(optimizer.first.pointer, optimizer.first.count)
            try send(optimizer.second.pointer, optimizer.second.count)
            counters.append(Int64(optimizer.step))
        }
        if !counters.isEmpty { try counters.withUnsafeMutableBytes { try group.broadcast($0, root: 0) } }
        if let optimizer { optimizer.step = Int(counters.removeLast()) }
        model.counters = counters
    }
}
