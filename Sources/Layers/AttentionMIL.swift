// Attention-pooling multiple-instance learning over a bag of patch features (Ilse et al. 2018, as used by
// HistoTransfer): MLP feature->256->64 with ReLU, attention 64->32 tanh ->1 softmax over the bag, weighted
// sum, bag classifier 64->classes and patch classifier 64->classes. Forward and explicit backward.
import TensorCore

/// The attention-MIL head. Parameter names follow the PyTorch module
/// `mlp = Sequential(Linear(F, 256), ReLU, Linear(256, 64), ReLU)`, `attention = Sequential(Linear(64, 32), Tanh,
/// Linear(32, 1))`, `classifier = Linear(64, C)`, `patch_classifier = Linear(64, C)`.
public final class AttentionMIL<T: KernelScalar> {
    /// Length of each patch feature vector.
    public let featureDimension: Int
    /// Classes of the bag and patch classifiers.
    public let classes: Int
    /// Widths of the MLP and the attention layer (256, 64, 32 by default).
    public let hidden1: Int, hidden2: Int, attentionWidth: Int
    /// All parameters and gradients in one flat buffer.
    public let parameters: ParameterStore<T>
    /// No buffers: the head has no running statistics.
    public let buffers: ParameterStore<T>
    /// No counters.
    public var counters: [Int64] = []
    /// The state_dict entries: every parameter, in the PyTorch module's order.
    public let stateEntries: [StateEntry]

    let w1, b1, w2, b2, wa1, ba1, wa2, ba2, wc, bc, wp, bp: ParameterSlice
    let arena = Arena<T>()
    let gradArena = Arena<T>()

    // Saved by forward.
    private var n = 0
    private var x: UnsafePointer<T>?
    private var h1: UnsafeMutablePointer<T>?, h2: UnsafeMutablePointer<T>?, a1: UnsafeMutablePointer<T>?
    private var weights: UnsafeMutablePointer<T>?, pooled: UnsafeMutablePointer<T>?

    /// A head for bags of `featureDimension`-long vectors, with PyTorch's Linear initialisation from `seed`.
    public init(featureDimension: Int, classes: Int, hidden1: Int = 256, hidden2: Int = 64, attentionWidth: Int = 32, seed: UInt64 = 0) {
        precondition(featureDimension > 0 && classes > 0, "AttentionMIL: feature dimension \(featureDimension) and classes \(classes) must be positive")
        self.featureDimension = featureDimension; self.classes = classes
        self.hidden1 = hidden1; self.hidden2 = hidden2; self.attentionWidth = attentionWidth
        var l = ParameterLayout()
        w1 = l.add("mlp.0.weight", shape: [hidden1, featureDimension]); b1 = l.add("mlp.0.bias", shape: [hidden1])
        w2 = l.add("mlp.2.weight", shape: [hidden2, hidden1]); b2 = l.add("mlp.2.bias", shape: [hidden2])
        wa1 = l.add("attention.0.weight", shape: [attentionWidth, hidden2]); ba1 = l.add("attention.0.bias", shape: [attentionWidth])
        wa2 = l.add("attention.2.weight", shape: [1, attentionWidth]); ba2 = l.add("attention.2.bias", shape: [1])
        wc = l.add("classifier.weight", shape: [classes, hidden2]); bc = l.add("classifier.bias", shape: [classes])
        wp = l.add("patch_classifier.weight", shape: [classes, hidden2]); bp = l.add("patch_classifier.bias", shape: [classes])
        parameters = ParameterStore(layout: l)
        buffers = ParameterStore(layout: ParameterLayout(), withGradients: false)
        stateEntries = l.slices.map { .parameter($0) }
        var g = SeededGenerator(seed: seed)
        for (w, b) in [(w1, b1), (w2, b2), (wa1, ba1), (wa2, ba2), (wc, bc), (wp, bp)] {
            let bound = 1 / Double(w.shape[1]).squareRoot()
            for i in 0..<w.count { parameters.value(w)[i] = T(Double.random(in: -bound..<bound, using: &g)) }
            for i in 0..<b.count { parameters.value(b)[i] = T(Double.random(in: -bound..<bound, using: &g)) }
        }
    }

    private func v(_ s: ParameterSlice) -> UnsafeMutablePointer<T> { parameters.value(s) }
    private func g(_ s: ParameterSlice) -> UnsafeMutablePointer<T> { parameters.gradient(s) }

    /// Runs the head on a bag of `count` feature vectors (count, featureDimension). Writes the bag logits
    /// (classes), the attention weights (count, summing to 1) and the patch logits (count, classes). The bag
    /// must stay valid until `backward`.
    public func forward(bag: UnsafePointer<T>, count: Int, bagLogits: UnsafeMutablePointer<T>,
                        attention: UnsafeMutablePointer<T>, patchLogits: UnsafeMutablePointer<T>) {
        precondition(count > 0, "AttentionMIL.forward: a bag needs at least one patch")
        arena.reset()
        n = count
        x = bag
        let h1 = arena.allocate(count * hidden1), h2 = arena.allocate(count * hidden2), a1 = arena.allocate(count * attentionWidth)
        let scores = arena.allocate(count), pooled = arena.allocate(hidden2)
        Linear.forward(output: h1, input: bag, weight: v(w1), bias: v(b1), n: count, inFeatures: featureDimension, outFeatures: hidden1)
        ReLU.forward(output: h1, input: h1, count: count * hidden1)
        Linear.forward(output: h2, input: h1, weight: v(w2), bias: v(b2), n: count, inFeatures: hidden1, outFeatures: hidden2)
        ReLU.forward(output: h2, input: h2, count: count * hidden2)
        Linear.forward(output: a1, input: h2, weight: v(wa1), bias: v(ba1), n: count, inFeatures: hidden2, outFeatures: attentionWidth)
        for i in 0..<(count * attentionWidth) { a1[i] = tanh(a1[i]) }
        Linear.forward(output: scores, input: a1, weight: v(wa2), bias: v(ba2), n: count, inFeatures: attentionWidth, outFeatures: 1)
        Softmax.forward(output: attention, input: scores, rows: 1, cols: count)
        for i in 0..<count {
            let wi = attention[i], row = h2 + i * hidden2
            for j in 0..<hidden2 { pooled[j] += wi * row[j] }
        }
        Linear.forward(output: bagLogits, input: pooled, weight: v(wc), bias: v(bc), n: 1, inFeatures: hidden2, outFeatures: classes)
        Linear.forward(output: patchLogits, input: h2, weight: v(wp), bias: v(bp), n: count, inFeatures: hidden2, outFeatures: classes)
        // Keep a copy of the attention weights for backward (the caller owns `attention`).
        let w = arena.allocate(count)
        w.update(from: attention, count: count)
        self.h1 = h1; self.h2 = h2; self.a1 = a1; self.weights = w; self.pooled = pooled
    }

    /// Adds gradients into `parameters.gradients` (and `gradBag` when given) from the gradients of the bag
    /// logits (classes) and/or the patch logits (count, classes) of the last forward.
    public func backward(gradBagLogits: UnsafePointer<T>?, gradPatchLogits: UnsafePointer<T>?, gradBag: UnsafeMutablePointer<T>? = nil) {
        guard let x, let h1, let h2, let a1, let w = weights, let pooled else {
            preconditionFailure("AttentionMIL.backward called without a forward")
        }
        gradArena.reset()
        let dh2 = gradArena.allocate(n * hidden2), dz = gradArena.allocate(hidden2)
        if let gradBagLogits {
            Linear.backward(gradInput: dz, gradWeight: g(wc), gradBias: g(bc), gradOutput: gradBagLogits, input: pooled,
                            weight: v(wc), n: 1, inFeatures: hidden2, outFeatures: classes)
        }
        if let gradPatchLogits {
            Linear.backward(gradInput: dh2, gradWeight: g(wp), gradBias: g(bp), gradOutput: gradPatchLogits, input: h2,
                            weight: v(wp), n: n, inFeatures: hidden2, outFeatures: classes)
        }
        // pooled = sum_i w_i h2_i
        let dw = gradArena.allocate(n)
        for i in 0..<n {
            let row = h2 + i * hidden2, drow = dh2 + i * hidden2
            var s: T = 0
            for j in 0..<hidden2 { drow[j] += w[i] * dz[j]; s += dz[j] * row[j] }
            dw[i] = s
        }
        // softmax over the bag, then the attention MLP
        let ds = gradArena.allocate(n)
        Softmax.backward(gradInput: ds, gradOutput: dw, output: w, rows: 1, cols: n)
        let da1 = gradArena.allocate(n * attentionWidth)
        Linear.backward(gradInput: da1, gradWeight: g(wa2), gradBias: g(ba2), gradOutput: ds, input: a1, weight: v(wa2),
                        n: n, inFeatures: attentionWidth, outFeatures: 1)
        for i in 0..<(n * attentionWidth) { da1[i] *= 1 - a1[i] * a1[i] }
        Linear.backward(gradInput: dh2, gradWeight: g(wa1), gradBias: g(ba1), gradOutput: da1, input: h2, weight: v(wa1),
                        n: n, inFeatures: hidden2, outFeatures: attentionWidth)
        // MLP
        let dpre2 = gradArena.allocate(n * hidden2)
        ReLU.backward(gradInput: dpre2, gradOutput: dh2, output: h2, count: n * hidden2)
        let dh1 = gradArena.allocate(n * hidden1)
        Linear.backward(gradInput: dh1, gradWeight: g(w2), gradBias: g(b2), gradOutput: dpre2, input: h1, weight: v(w2),
                        n: n, inFeatures: hidden1, outFeatures: hidden2)
        let dpre1 = gradArena.allocate(n * hidden1)
        ReLU.backward(gradInput: dpre1, gradOutput: dh1, output: h1, count: n * hidden1)
        Linear.backward(gradInput: gradBag, gradWeight: g(w1), gradBias: g(b1), gradOutput: dpre1, input: x, weight: v(w1),
                        n: n, inFeatures: featureDimension, outFeatures: hidden1)
    }

    @inline(__always)
    private func tanh(_ v: T) -> T {
        // tanh(v) = 1 - 2 / (exp(2v) + 1), stable for large |v|
        if v > 20 { return 1 }
        if v < -20 { return -1 }
        return 1 - 2 / (T.exp(2 * v) + 1)
    }
}


extension AttentionMIL {
    /// "attention-mil: features F, hidden 256/64, attention 32, C classes".
    public var architectureDescription: String {
        "attention-mil: features \(featureDimension), hidden \(hidden1)/\(hidden2), attention \(attentionWidth), \(classes) classes"
    }
}

/// The Float head is a `Module`: its weights files, checkpoints, all-reduce and optimizer are the ResNets'.
extension AttentionMIL: Module where T == Float {}
