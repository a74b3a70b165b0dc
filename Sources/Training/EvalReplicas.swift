// Eval-mode forwards split over the engine's threads by images, one model copy per thread.
import Layers
import TensorCore

/// Runs a model in eval mode over a batch split by images among `Parallel.width` copies of it, each on its own
/// thread with a width of 1 (`Parallel.replicas`): the threads meet once per batch instead of at every kernel. On a
/// 2-core Zen 4 at 56 px, two single-threaded models side by side classify 1.4x the tiles of one model on two threads
/// (docs/benchmarks.md). In eval mode every image's outputs depend on that image alone (GroupNorm normalises each
/// image; BatchNorm uses its running statistics), so the outputs are the model's, up to the order of float sums.
///
/// The copies take the model's weights and buffers when made: call `refresh()` after the model's weights change
/// (inference loads them once). Models other than `ResNet`, batches of one image and a width of 1 run the model
/// itself.
public final class EvalReplicas {
    /// The model replica 0 is.
    public let model: any ImageModel
    private var copies: [ResNet] = []
    private var logits = Buffer<Float>(count: 0), pooled = Buffer<Float>(count: 0), featureMaps = Buffer<Float>(count: 0)

    /// Replicas of `model` (made on the first forward that splits).
    public init(_ model: any ImageModel) { self.model = model }

    /// Copies the model's current weights and buffers into every replica.
    public func refresh() {
        for c in copies { c.copyState(from: model) }
    }

    /// The model's eval-mode outputs for `input` (n, 3, h, w): feature map, pooled features and logits, valid until the
    /// next call. `progress`: called by each ResNet copy after each convolution with its norm
    /// (`ResNet.forwardProgress`), from the copies' threads.
    public func forward(_ input: UnsafePointer<Float>, shape: NCHW, progress: (() -> Void)? = nil) -> ImageModelOutput {
        let k = min(Parallel.width, shape.n)
        guard k > 1, shape.h == shape.w, let net = model as? ResNet else {
            let resnet = model as? ResNet
            resnet?.forwardProgress = progress
            defer { resnet?.forwardProgress = nil }
            return model.forward(input, shape: shape, training: false)
        }
        if copies.count < k - 1 {
            while copies.count < k - 1 { copies.append(ResNet(net.config, initialize: false)) }
            refresh()
        }
        let models: [ResNet] = [net] + copies.prefix(k - 1)
        for m in models { m.forwardProgress = progress }
        defer { for m in models { m.forwardProgress = nil } }
        let side = net.featureMapSize(resolution: shape.h), d = net.featureDimension, classes = net.classes
        let mapCount = shape.n * d * side * side
        if featureMaps.count < mapCount { featureMaps = Buffer(count: mapCount) }
        if pooled.count < shape.n * d { pooled = Buffer(count: shape.n * d) }
        if logits.count < shape.n * classes { logits = Buffer(count: shape.n * classes) }
        let image = shape.c * shape.h * shape.w
        let (maps, pools, outs) = (featureMaps.pointer, pooled.pointer, logits.pointer)
        Parallel.replicas(k) { i in
            let lo = shape.n * i / k, hi = shape.n * (i + 1) / k
            guard lo < hi else { return }
            let out = models[i].forward(input + lo * image, shape: NCHW(hi - lo, shape.c, shape.h, shape.w), training: false)
            precondition(out.featureMap.count == (hi - lo) * d * side * side, "EvalReplicas: feature map \(out.featureMap.shape) of a \(shape.h) px input")
            (maps + lo * d * side * side).update(from: out.featureMap.data, count: out.featureMap.count)
            (pools + lo * d).update(from: out.pooled.data, count: (hi - lo) * d)
            if let l = out.logits { (outs + lo * classes).update(from: l.data, count: (hi - lo) * classes) }
        }
        return ImageModelOutput(featureMap: Tensor(shape: [shape.n, d, side, side], data: maps),
                                pooled: Tensor(shape: [shape.n, d], data: pools),
                                logits: classes > 0 ? Tensor(shape: [shape.n, classes], data: outs) : nil)
    }
}
