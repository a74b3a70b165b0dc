// An exponential moving average of a model's weights, kept beside the trained model and used as the evaluated one.
import Layers
import TensorCore

/// An exponential moving average of a model's parameters and buffers: the model a run validates, keeps as
/// best.safetensors and checkpoints as `ema.safetensors` when `train.ema_decay` is set.
///
/// Semantics of PyTorch's `torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
/// use_buffers=True)` (timm's `ModelEmaV2` averages the same state): the first update copies the model; every later
/// update, after an optimizer step, sets `ema = ema.lerp(θ, 1 - decay)` for every parameter and buffer (torch.lerp's
/// formula, `ema + w (θ - ema)` for weights w < 0.5). Integer counters (BatchNorm's num_batches_tracked) are copied.
public final class WeightEMA {
    /// The decay in [0, 1): 0.999 averages over about the last 1,000 steps.
    public let decay: Float
    /// The averaged model (same architecture as the trained one).
    public let model: any ImageModel
    /// Updates taken so far (0: the next update copies the model).
    public var updates: Int

    /// `shadow` must have the architecture of the trained model; it starts as a copy of `source`, as
    /// AveragedModel's deepcopy does.
    public init(decay: Float, shadow: any ImageModel, source: any Module, updates: Int = 0) {
        precondition(decay >= 0 && decay < 1, "WeightEMA: decay \(decay) must be in [0, 1)")
        precondition(shadow.parameterCount == source.parameterCount && shadow.buffers.layout.count == source.buffers.layout.count,
                     "WeightEMA: the shadow model's state does not fit the source's")
        self.decay = decay; self.model = shadow; self.updates = updates
        Self.copy(from: source, to: shadow)
    }

    /// One update after an optimizer step of `source`.
    public func update(from source: any Module) {
        if updates == 0 {
            Self.copy(from: source, to: model)
        } else {
            let w = 1 - decay
            Self.lerp(model.parameters.values.pointer, toward: source.parameters.values.pointer, count: model.parameterCount, weight: w)
            Self.lerp(model.buffers.values.pointer, toward: source.buffers.values.pointer, count: model.buffers.layout.count, weight: w)
            model.counters = source.counters
        }
        updates += 1
    }

    static func copy(from source: any Module, to target: any Module) {
        target.parameters.values.pointer.update(from: source.parameters.values.pointer, count: source.parameterCount)
        target.buffers.values.pointer.update(from: source.buffers.values.pointer, count: source.buffers.layout.count)
        target.counters = source.counters
    }

    /// x = torch.lerp(x, y, w) element-wise.
    static func lerp(_ x: UnsafeMutablePointer<Float>, toward y: UnsafePointer<Float>, count: Int, weight w: Float) {
        if w < 0.5 {
            for i in 0..<count { x[i] = x[i] + w * (y[i] - x[i]) }
        } else {
            let v = 1 - w
            for i in 0..<count { x[i] = y[i] - (y[i] - x[i]) * v }
        }
    }
}
