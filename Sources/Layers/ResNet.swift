// BasicBlock ResNets (the paper's GroupNorm model, torchvision ResNet-18/34, truncated variants) with an
// explicit backward over the flat parameter store. Parameter names are PyTorch's state_dict names.
import TensorCore

/// A convolution of the network: its weight slice and geometry (no bias, as in ResNets).
struct ConvUnit {
    let weight: ParameterSlice
    let cIn: Int, cOut: Int, kernel: Int, stride: Int, padding: Int

    func shape(_ x: NCHW) -> Conv2dShape {
        Conv2dShape(n: x.n, cIn: cIn, h: x.h, w: x.w, cOut: cOut, kernel: kernel, stride: stride, padding: padding)
    }
}

/// A normalisation of the network: affine slices, and for BatchNorm its running-statistics slices.
struct NormUnit {
    let weight: ParameterSlice, bias: ParameterSlice
    let runningMean: ParameterSlice?, runningVar: ParameterSlice?
    /// Index of this BatchNorm's num_batches_tracked counter.
    let counter: Int?
    let channels: Int
}

/// One BasicBlock: conv3x3-norm-ReLU-conv3x3-norm, plus the shortcut, then ReLU.
struct BlockUnit {
    let conv1: ConvUnit, norm1: NormUnit, conv2: ConvUnit, norm2: NormUnit
    let downsample: (ConvUnit, NormUnit)?
}

/// What a forward kept of one conv + norm (+ ReLU) for the backward.
struct ConvNormRecord {
    var input: UnsafePointer<Float>
    var inShape: NCHW
    var convOut: UnsafeMutablePointer<Float>
    var normOut: UnsafeMutablePointer<Float>
    var outShape: NCHW
    var mean: UnsafeMutablePointer<Float>
    var rstd: UnsafeMutablePointer<Float>
    var relu: Bool
}

/// What a forward kept of one block.
struct BlockRecord {
    var input: UnsafePointer<Float>
    var first: ConvNormRecord, second: ConvNormRecord
    var shortcut: ConvNormRecord?
    var output: UnsafeMutablePointer<Float>
    var outShape: NCHW
}

/// A BasicBlock ResNet over one flat parameter buffer.
///
/// `forward` keeps what `backward` needs in an arena that is reset by the next forward; `backward` adds into
/// `parameters.gradients` (zero them first with `parameters.zeroGradients()`).
public final class ResNet: ImageModel, ReportsGradientProgress {
    /// The architecture.
    public let config: ResNetConfig
    /// Trainable parameters (and their gradients), in forward order, PyTorch names.
    public let parameters: ParameterStore<Float>
    /// BatchNorm running means and variances (empty for GroupNorm models).
    public let buffers: ParameterStore<Float>
    /// BatchNorm num_batches_tracked counters.
    public var batchesTracked: [Int64]
    /// Every state_dict entry in PyTorch's order.
    public let stateEntries: [StateEntry]
    /// The BatchNorm counters, as `Module` names them.
    public var counters: [Int64] {
        get { batchesTracked }
        set { batchesTracked = newValue }
    }
    /// The architecture, e.g. "resnet-gn: planes [32, 64, 128, 256], ...".
    public var architectureDescription: String { config.description }
    /// Classes of the classifier (0 for a truncated feature extractor).
    public var classes: Int { config.classes }
    /// Channels of the last kept stage.
    public var featureDimension: Int { config.featureDimension }

    let stemConv: ConvUnit
    let stemNorm: NormUnit
    let stages: [[BlockUnit]]
    let fcWeight: ParameterSlice?, fcBias: ParameterSlice?

    /// Called during `backward` with the lowest flat offset whose gradients are final (`ReportsGradientProgress`):
    /// after the classifier, after each convolution + norm of a block without a downsample, after each block with one
    /// (its downsample's parameters are stored after the block's second convolution but run last), after the stem.
    public var gradientReady: ((_ offset: Int) -> Void)?

    /// Called during `forward` after each convolution with its norm (the stem's, each block's and each downsample's):
    /// a point where a caller can let work in flight progress (a teacher forward overlapping the previous step's
    /// gradient all-reduce, `DistillationStep.prepare`). Runs on the forward's thread.
    public var forwardProgress: (() -> Void)?

    /// The offsets `backward` reports through `gradientReady`, in order (`ReportsGradientProgress`).
    public var gradientReadyOffsets: [Int] {
        var out: [Int] = []
        if let fcWeight { out.append(fcWeight.offset) }
        for unit in stages.joined().reversed() {
            if unit.downsample == nil { out.append(unit.conv2.weight.offset) }
            out.append(unit.conv1.weight.offset)
        }
        out.append(0)
        return out
    }

    let arena = Arena<Float>()
    let gradArena = Arena<Float>()
    let workspace = Workspace<Float>()
    private var poolIndices: UnsafeMutablePointer<Int32>?
    private var poolIndicesCapacity = 0

    // What the last forward kept.
    private var lastTraining = false
    private var stem: ConvNormRecord?
    private var poolShape: NCHW?
    private var blockRecords: [BlockRecord] = []
    private var output: ResNetOutput?

    /// Builds the network with PyTorch's initialisation drawn from `seed` (or all zeros when `initialize` is
    /// false, for weights about to be loaded).
    public init(_ config: ResNetConfig, seed: UInt64 = 0, initialize: Bool = true) {
        let problems = config.problems
        precondition(problems.isEmpty, "ResNet: invalid configuration \(config): \(problems.joined(separator: "; "))")
        self.config = config
        var params = ParameterLayout(), bufs = ParameterLayout()
        var entries: [StateEntry] = []
        var counters = 0
        func conv(_ name: String, _ cIn: Int, _ cOut: Int, _ k: Int, _ stride: Int, _ pad: Int) -> ConvUnit {
            let w = params.add("\(name).weight", shape: [cOut, cIn, k, k])
            entries.append(.parameter(w))
            return ConvUnit(weight: w, cIn: cIn, cOut: cOut, kernel: k, stride: stride, padding: pad)
        }
        func norm(_ name: String, _ c: Int) -> NormUnit {
            let w = params.add("\(name).weight", shape: [c]), b = params.add("\(name).bias", shape: [c])
            entries.append(.parameter(w)); entries.append(.parameter(b))
            guard config.norm == .batch else {
                return NormUnit(weight: w, bias: b, runningMean: nil, runningVar: nil, counter: nil, channels: c)
            }
            let rm = bufs.add("\(name).running_mean", shape: [c]), rv = bufs.add("\(name).running_var", shape: [c])
            entries.append(.buffer(rm)); entries.append(.buffer(rv))
            entries.append(.counter(name: "\(name).num_batches_tracked", index: counters))
            counters += 1
            return NormUnit(weight: w, bias: b, runningMean: rm, runningVar: rv, counter: counters - 1, channels: c)
        }
        let p = config.planes
        stemConv = conv("conv1", 3, p[0], 7, 2, 3)
        stemNorm = norm("bn1", p[0])
        var inPlanes = p[0]
        var stageUnits: [[BlockUnit]] = []
        for s in 0..<config.stages {
            var units: [BlockUnit] = []
            for b in 0..<config.blocks[s] {
                let stride = (s > 0 && b == 0) ? 2 : 1
                let prefix = "layer\(s + 1).\(b)"
                let c1 = conv("\(prefix).conv1", inPlanes, p[s], 3, stride, 1)
                let n1 = norm("\(prefix).bn1", p[s])
                let c2 = conv("\(prefix).conv2", p[s], p[s], 3, 1, 1)
                let n2 = norm("\(prefix).bn2", p[s])
                var ds: (ConvUnit, NormUnit)?
                if stride != 1 || inPlanes != p[s] {
                    ds = (conv("\(prefix).downsample.0", inPlanes, p[s], 1, stride, 0), norm("\(prefix).downsample.1", p[s]))
                }
                units.append(BlockUnit(conv1: c1, norm1: n1, conv2: c2, norm2: n2, downsample: ds))
                inPlanes = p[s]
            }
            stageUnits.append(units)
        }
        stages = stageUnits
        if config.classes > 0 {
            let w = params.add("fc.weight", shape: [config.classes, inPlanes]), b = params.add("fc.bias", shape: [config.classes])
            entries.append(.parameter(w)); entries.append(.parameter(b))
            fcWeight = w; fcBias = b
        } else {
            fcWeight = nil; fcBias = nil
        }
        parameters = ParameterStore(layout: params)
        buffers = ParameterStore(layout: bufs, withGradients: false)
        batchesTracked = Array(repeating: 0, count: counters)
        stateEntries = entries
        if initialize { reset(seed: seed) }
    }

    deinit { poolIndices?.deallocate() }

    /// Re-initialises every parameter and buffer like PyTorch: Kaiming normal (fan_out) convs, norms weight 1
    /// and bias 0, running mean 0 and variance 1, Linear's uniform default.
    public func reset(seed: UInt64) {
        var g = SeededGenerator(seed: seed)
        for slice in parameters.layout.slices {
            let ptr = parameters.value(slice)
            if slice.name.hasSuffix(".weight") && slice.shape.count == 4 {
                Initializer.kaimingNormalFanOut(ptr, shape: slice.shape, using: &g)
            } else if slice.name.hasPrefix("fc.") {
                Initializer.linearUniform(ptr, count: slice.count, fanIn: slice.name == "fc.weight" ? slice.shape[1] : fcWeight!.shape[1], using: &g)
            } else {
                Initializer.constant(ptr, count: slice.count, value: slice.name.hasSuffix(".weight") ? 1 : 0)
            }
        }
        for slice in buffers.layout.slices {
            Initializer.constant(buffers.value(slice), count: slice.count, value: slice.name.hasSuffix("running_var") ? 1 : 0)
        }
        for i in batchesTracked.indices { batchesTracked[i] = 0 }
    }

    // MARK: - Forward

    /// Runs the network on `input` (n, 3, h, w). `training` selects batch statistics for BatchNorm (and updates
    /// its running statistics). The input must stay valid until `backward`.
    public func forward(_ input: UnsafePointer<Float>, shape: NCHW, training: Bool) -> ResNetOutput {
        precondition(shape.c == 3, "ResNet.forward: input \(shape) must have 3 channels")
        arena.reset()
        lastTraining = training
        let s = convNorm(stemConv, stemNorm, input: input, shape: shape, relu: true, training: training)
        stem = s
        let pool = Pool2dShape(input: s.outShape, kernel: 3, stride: 2, padding: 1)
        let pooled = arena.allocate(pool.output.count, zeroed: false)
        MaxPool2d.forward(output: pooled, indices: indices(pool.output.count), input: s.normOut, shape: pool)
        poolShape = pool.output
        var x = UnsafePointer(pooled), xs = pool.output
        blockRecords.removeAll(keepingCapacity: true)
        for stage in stages {
            for unit in stage {
                let r1 = convNorm(unit.conv1, unit.norm1, input: x, shape: xs, relu: true, training: training)
                let r2 = convNorm(unit.conv2, unit.norm2, input: UnsafePointer(r1.normOut), shape: r1.outShape, relu: false, training: training)
                var shortcut: ConvNormRecord?
                var identity = x
                if let (dc, dn) = unit.downsample {
                    let r = convNorm(dc, dn, input: x, shape: xs, relu: false, training: training)
                    shortcut = r
                    identity = UnsafePointer(r.normOut)
                }
                let out = arena.allocate(r2.outShape.count, zeroed: false)
                Add.forward(output: out, a: r2.normOut, b: identity, count: r2.outShape.count, relu: true)
                blockRecords.append(BlockRecord(input: x, first: r1, second: r2, shortcut: shortcut, output: out, outShape: r2.outShape))
                x = UnsafePointer(out)
                xs = r2.outShape
            }
        }
        let fmap = Tensor(shape: [xs.n, xs.c, xs.h, xs.w], data: UnsafeMutablePointer(mutating: x))
        let pooledVec = arena.tensor([xs.n, xs.c])
        GlobalAvgPool.forward(output: pooledVec.data, input: x, shape: xs)
        var logits: Tensor<Float>?
        if let fcWeight, let fcBias {
            let l = arena.tensor([xs.n, config.classes])
            Linear.forward(output: l.data, input: pooledVec.data, weight: parameters.value(fcWeight), bias: parameters.value(fcBias),
                           n: xs.n, inFeatures: xs.c, outFeatures: config.classes)
            logits = l
        }
        let result = ResNetOutput(featureMap: fmap, pooled: pooledVec, logits: logits)
        output = result
        return result
    }

    private func indices(_ count: Int) -> UnsafeMutablePointer<Int32> {
        if poolIndicesCapacity < count {
            poolIndices?.deallocate()
            poolIndices = .allocate(capacity: count)
            poolIndicesCapacity = count
        }
        return poolIndices!
    }

    private func convNorm(_ conv: ConvUnit, _ norm: NormUnit, input: UnsafePointer<Float>, shape: NCHW, relu: Bool,
                          training: Bool) -> ConvNormRecord {
        let cs = conv.shape(shape)
        let outShape = NCHW(shape.n, conv.cOut, cs.outH, cs.outW)
        let convOut = arena.allocate(outShape.count, zeroed: false)
        Conv2d.forward(output: convOut, input: input, weight: parameters.value(conv.weight), bias: nil, shape: cs, workspace: workspace)
        let normOut = arena.allocate(outShape.count, zeroed: false)
        let stats: Int
        switch config.norm {
        case .group(let g): stats = shape.n * g
        case .batch: stats = conv.cOut
        }
        let mean = arena.allocate(stats, zeroed: false), rstd = arena.allocate(stats, zeroed: false)
        switch config.norm {
        case .group(let g):
            GroupNorm.forward(output: normOut, mean: mean, rstd: rstd, input: convOut, weight: parameters.value(norm.weight),
                              bias: parameters.value(norm.bias), shape: outShape, groups: g, relu: relu)
        case .batch:
            BatchNorm2d.forward(output: normOut, saveMean: mean, saveRstd: rstd, input: convOut, weight: parameters.value(norm.weight),
                                bias: parameters.value(norm.bias), runningMean: buffers.value(norm.runningMean!),
                                runningVar: buffers.value(norm.runningVar!), shape: outShape, training: training)
            if training { batchesTracked[norm.counter!] += 1 }
        }
        if relu, case .batch = config.norm { ReLU.forward(output: normOut, input: normOut, count: outShape.count) }
        forwardProgress?()
        return ConvNormRecord(input: input, inShape: shape, convOut: convOut, normOut: normOut, outShape: outShape,
                              mean: mean, rstd: rstd, relu: relu)
    }

    // MARK: - Backward

    /// Adds the gradients of the last forward's outputs into `parameters.gradients`.
    /// - Parameters:
    ///   - gradLogits: (n, classes) or nil.
    ///   - gradFeatureMap: (n, C, h, w) of the feature map, or nil (e.g. a pixel loss on the feature map).
    ///   - gradPooled: (n, C) of the pooled features, or nil.
    public func backward(gradLogits: UnsafePointer<Float>? = nil, gradFeatureMap: UnsafePointer<Float>? = nil,
                         gradPooled: UnsafePointer<Float>? = nil) {
        guard let out = output, let stem, let poolShape else {
            preconditionFailure("ResNet.backward called without a forward")
        }
        gradArena.reset()
        let fs = out.featureMap.nchw
        let dFmap = gradArena.allocate(fs.count)
        let dPooled = gradArena.allocate(fs.n * fs.c)
        if let gradPooled { accumulate(dPooled, gradPooled, count: fs.n * fs.c) }
        if let gradLogits, let fcWeight, let fcBias {
            Linear.backward(gradInput: dPooled, gradWeight: parameters.gradient(fcWeight), gradBias: parameters.gradient(fcBias),
                            gradOutput: gradLogits, input: out.pooled.data, weight: parameters.value(fcWeight),
                            n: fs.n, inFeatures: fs.c, outFeatures: config.classes)
            gradientReady?(fcWeight.offset)
        }
        GlobalAvgPool.backward(gradInput: dFmap, gradOutput: dPooled, shape: fs)
        if let gradFeatureMap { accumulate(dFmap, gradFeatureMap, count: fs.count) }

        var dOut = dFmap
        var units: [BlockUnit] = []
        for stage in stages { units.append(contentsOf: stage) }
        for (unit, rec) in zip(units, blockRecords).reversed() {
            // out = relu(second + identity)
            // dOut is this block's own gradient buffer, so the ReLU's mask is applied in place.
            let dSum = dOut
            ReLU.maskGradient(dSum, output: rec.output, count: rec.outShape.count)
            let dIn = gradArena.allocate(rec.first.inShape.count)
            let dMid = gradArena.allocate(rec.first.outShape.count)
            convNormBackward(unit.conv2, unit.norm2, rec.second, gradOutput: dSum, gradInput: dMid)
            if unit.downsample == nil { gradientReady?(unit.conv2.weight.offset) }
            convNormBackward(unit.conv1, unit.norm1, rec.first, gradOutput: dMid, gradInput: dIn)
            if let (dc, dn) = unit.downsample, let sc = rec.shortcut {
                convNormBackward(dc, dn, sc, gradOutput: dSum, gradInput: dIn)
            } else {
                accumulate(dIn, dSum, count: rec.outShape.count)
            }
            gradientReady?(unit.conv1.weight.offset)
            dOut = dIn
        }
        // Max-pool and stem; the image needs no gradient.
        let dStem = gradArena.allocate(stem.outShape.count)
        MaxPool2d.backward(gradInput: dStem, gradOutput: dOut, indices: indices(poolShape.count), input: stem.outShape,
                           outPlane: poolShape.plane)
        convNormBackward(stemConv, stemNorm, stem, gradOutput: dStem, gradInput: nil)
        gradientReady?(0)
    }

    /// Backward of conv -> norm (-> ReLU): `gradOutput` is the gradient of the record's output.
    private func convNormBackward(_ conv: ConvUnit, _ norm: NormUnit, _ r: ConvNormRecord,
                                  gradOutput: UnsafeMutablePointer<Float>, gradInput: UnsafeMutablePointer<Float>?) {
        let count = r.outShape.count
        // `gradOutput` belongs to this unit alone (no other consumer reads it), so the ReLU masks it in place; GroupNorm
        // applies the mask as it reads it (and its forward applied the ReLU as it wrote the output).
        let dNorm = gradOutput
        if r.relu, case .batch = config.norm { ReLU.maskGradient(dNorm, output: r.normOut, count: count) }
        // The norm's backward overwrites dConv, so it needs no zeroing.
        let dConv = gradArena.allocate(count, zeroed: false)
        switch config.norm {
        case .group(let g):
            GroupNorm.backward(gradInput: dConv, gradWeight: parameters.gradient(norm.weight), gradBias: parameters.gradient(norm.bias),
                               gradOutput: dNorm, input: r.convOut, weight: parameters.value(norm.weight), mean: r.mean, rstd: r.rstd,
                               shape: r.outShape, groups: g, workspace: workspace, accumulateInput: false,
                               reluOutput: r.relu ? UnsafePointer(r.normOut) : nil)
        case .batch:
            BatchNorm2d.backward(gradInput: dConv, gradWeight: parameters.gradient(norm.weight), gradBias: parameters.gradient(norm.bias),
                                 gradOutput: dNorm, input: r.convOut, weight: parameters.value(norm.weight), saveMean: r.mean,
                                 saveRstd: r.rstd, shape: r.outShape, training: lastTraining, accumulateInput: false)
        }
        Conv2d.backward(gradInput: gradInput, gradWeight: parameters.gradient(conv.weight), gradBias: nil, gradOutput: dConv,
                        input: r.input, weight: parameters.value(conv.weight), shape: conv.shape(r.inShape), workspace: workspace)
    }

    // MARK: - Cost

    /// Multiply-adds of convolutions and the classifier for one image of `size` x `size` (norms, pools ignored,
    /// as in the paper's count).
    public func macs(resolution size: Int) -> Int {
        var total = 0
        var h = size
        func convMacs(_ c: ConvUnit, _ inSize: Int) -> Int {
            let o = (inSize + 2 * c.padding - c.kernel) / c.stride + 1
            total += c.cOut * o * o * c.cIn * c.kernel * c.kernel
            return o
        }
        h = convMacs(stemConv, h)
        h = (h + 2 - 3) / 2 + 1
        for stage in stages {
            for u in stage {
                let o = convMacs(u.conv1, h)
                _ = convMacs(u.conv2, o)
                if let (dc, _) = u.downsample { _ = convMacs(dc, h) }
                h = o
            }
        }
        if let fcWeight { total += fcWeight.count }
        return total
    }

    /// Spatial size of the feature map for a square input of `size` (``ResNetConfig/featureMapSize(resolution:)``).
    public func featureMapSize(resolution size: Int) -> Int { config.featureMapSize(resolution: size) }

    /// Each kept stage's output map (n, C_s, h_s, w_s) of the last forward (after the stage's last block), in
    /// stage order; valid until the next forward. For representation analyses (CKA) and stage features.
    public func stageOutputs() -> [Tensor<Float>] {
        var out: [Tensor<Float>] = []
        var index = -1
        for stage in stages {
            index += stage.count
            guard index < blockRecords.count else { break }
            let r = blockRecords[index]
            out.append(Tensor(shape: [r.outShape.n, r.outShape.c, r.outShape.h, r.outShape.w], data: r.output))
        }
        return out
    }

    /// Floats of activations the last training step kept (forward arena) and used for gradients.
    public var activationFloats: (forward: Int, backward: Int) { (arena.highWater, gradArena.highWater) }
}
