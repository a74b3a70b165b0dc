// An exponential moving average of a model's weights, kept beside the trained model and used as the evaluated one.
#if canImport(Glibc)
import Glibc
#endif
import Layers
import TensorCore

/// An exponential moving average of a model's parameters and buffers: the model a run validates, keeps as
/// best.safetensors and checkpoints as `ema.safetensors` when `train.ema_decay` is set.
///
/// Semantics of PyTorch's `torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
/// use_buffers=True)` (timm's `ModelEmaV2` averages the same state): the first update copies the model; every later
/// update, after an optimizer step, sets `ema = ema.lerp(θ, 1 - decay)` for every parameter and buffer (torch.lerp's
/// formula, `ema + w (θ - ema)` for weights w < 0.5). Integer counters (BatchNorm's num_batches_tracked) are copied.
/// With `warmup`, the decay of each update ramps up as timm's `ModelEmaV3(use_warmup=True)` (see `decay(update:)`).
public final class WeightEMA {
    /// The decay in [0, 1): 0.999 averages over about the last 1,000 steps; with `warmup`, the largest decay.
    public let decay: Float
    /// Whether the decay ramps up from 0 (timm ModelEmaV3 `use_warmup`, `warmup_gamma` 1, `warmup_power` 2/3).
    public let warmup: Bool
    /// The averaged model (same architecture as the trained one).
    public let model: any ImageModel
    /// Updates taken so far (0: the next update copies the model).
    public var updates: Int

    /// `shadow` must have the architecture of the trained model; it starts as a copy of `source`, as
    /// AveragedModel's deepcopy does.
    public init(decay: Float, warmup: Bool = false, shadow: any ImageModel, source: any Module, updates: Int = 0) {
        precondition(decay >= 0 && decay < 1, "WeightEMA: decay \(decay) must be in [0, 1)")
        precondition(shadow.parameterCount == source.parameterCount && shadow.buffers.layout.count == source.buffers.layout.count,
                     "WeightEMA: the shadow model's state does not fit the source's")
        self.decay = decay; self.warmup = warmup; self.model = shadow; self.updates = updates
        shadow.copyState(from: source)
    }

    /// The decay of update `n` (0-based; update 0 copies the model, so its decay is 0). Without warm-up, `decay`;
    /// with it, `min(decay, 1 - (1 + n)^(-2/3))`, timm `ModelEmaV3.get_decay` with `warmup_gamma` 1 and
    /// `warmup_power` 2/3 (0.37 at the second update, 0.9 at about the 31st, 0.99 at about the 1,000th).
    public static func decay(update n: Int, decay: Float, warmup: Bool) -> Float {
        guard n > 0 else { return 0 }
        guard warmup else { return decay }
        return min(decay, Float(1 - pow(1 + Double(n), -2.0 / 3)))
    }

    /// The share the weights of the first update still hold in the average after `updates` updates: the product
    /// of the decays of updates 1..<updates.
    public static func firstWeightsShare(updates: Int, decay: Float, warmup: Bool) -> Double {
        guard updates > 1 else { return 1 }
        var share = 1.0
        for n in 1..<updates { share *= Double(Self.decay(update: n, decay: decay, warmup: warmup)) }
        return share
    }

    /// One update after an optimizer step of `source`.
    public func update(from source: any Module) {
        if updates == 0 {
            model.copyState(from: source)
        } else {
            let w = 1 - Self.decay(update: updates, decay: decay, warmup: warmup)
            Self.lerp(model.parameters.values.pointer, toward: source.parameters.values.pointer, count: model.parameterCount, weight: w)
            Self.lerp(model.buffers.values.pointer, toward: source.buffers.values.pointer, count: model.buffers.layout.count, weight: w)
            model.counters = source.counters
        }
        updates += 1
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
