// Optimizers over the flat parameter and gradient buffers: Adam, AdamW, SGD (momentum, Nesterov), with
// PyTorch's update formulas, plus gradient-norm clipping and gradient scaling for accumulation.
import CKernels
import TensorCore
#if canImport(Glibc)
import Glibc
#endif

/// Which optimizer and its hyperparameters (the learning rate comes from the schedule at each step).
public enum OptimizerKind: Hashable, Sendable, Codable {
    /// torch.optim.Adam: L2 weight decay added to the gradient.
    case adam(beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0)
    /// torch.optim.AdamW: decoupled weight decay.
    case adamW(beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0.01)
    /// torch.optim.SGD with momentum, dampening 0, optional Nesterov, L2 weight decay.
    case sgd(momentum: Float = 0, nesterov: Bool = false, weightDecay: Float = 0)
}

/// An optimizer over one flat parameter buffer. Its state (moments, momentum buffer, step count) is flat too,
/// so a checkpoint writes it in one piece and every rank holds an identical copy.
public final class Optimizer {
    /// The algorithm.
    public let kind: OptimizerKind
    /// Elements of the parameter buffer.
    public let count: Int
    /// Steps taken (Adam's bias correction uses it).
    public var step: Int = 0
    /// First moments (Adam/AdamW) or the momentum buffer (SGD with momentum).
    public let first: Buffer<Float>
    /// Second moments (Adam/AdamW); empty for SGD.
    public let second: Buffer<Float>

    /// An optimizer for `count` parameters with zeroed state.
    public init(_ kind: OptimizerKind, count: Int) {
        self.kind = kind
        self.count = count
        first = Buffer(count: count)
        switch kind {
        case .adam, .adamW: second = Buffer(count: count)
        case .sgd: second = Buffer(count: 0)
        }
    }

    /// One update of `values` from `gradients` with learning rate `lr`.
    public func update(values: UnsafeMutablePointer<Float>, gradients: UnsafePointer<Float>, lr: Float) {
        step += 1
        let n = count
        switch kind {
        case .adam(let b1, let b2, let eps, let wd), .adamW(let b1, let b2, let eps, let wd):
            let decoupled: Bool
            if case .adamW = kind { decoupled = true } else { decoupled = false }
            let t = Float(step)
            let bc1 = 1 - powf(b1, t), bc2 = 1 - powf(b2, t)
            let stepSize = lr / bc1, bc2Root = bc2.squareRoot()
            let m = first.pointer, v = second.pointer
            // torch's order: m.lerp_(g, 1 - b1); v = v * b2 + (1 - b2) g^2; p -= stepSize m / (sqrt(v) / bc2Root + eps).
            Parallel.forEach(n, grain: 1 << 14) { r in
                let i = r.lowerBound
                hd_adam_update(values + i, gradients + i, m + i, v + i, r.count, b1, b2, eps, lr, wd,
                               decoupled ? 1 : 0, stepSize, bc2Root)
            }
        case .sgd(let momentum, let nesterov, let wd):
            let buf = first.pointer
            let firstStep = step == 1
            Parallel.forEach(n, grain: 1 << 14) { r in
                for i in r {
                    var d = gradients[i]
                    if wd != 0 { d += wd * values[i] }
                    if momentum != 0 {
                        buf[i] = firstStep ? d : momentum * buf[i] + d
                        d = nesterov ? d + momentum * buf[i] : buf[i]
                    }
                    values[i] -= lr * d
                }
            }
        }
    }
}

/// Gradient utilities on a flat gradient buffer.
public enum GradientOps {
    /// The L2 norm of all gradients (accumulated in Double).
    public static func norm(_ g: UnsafePointer<Float>, count: Int) -> Float {
        var s: Double = 0
        for i in 0..<count { s += Double(g[i]) * Double(g[i]) }
        return Float(s.squareRoot())
    }

    /// torch.nn.utils.clip_grad_norm_: scales by max / (norm + 1e-6) when that is below 1. Returns the norm before clipping.
    @discardableResult
    public static func clipNorm(_ g: UnsafeMutablePointer<Float>, count: Int, maxNorm: Float) -> Float {
        let total = norm(g, count: count)
        let coef = maxNorm / (total + 1e-6)
        if coef < 1 { scale(g, count: count, by: coef) }
        return total
    }

    /// Multiplies every gradient by `factor` (e.g. 1 / accumulation steps).
    public static func scale(_ g: UnsafeMutablePointer<Float>, count: Int, by factor: Float) {
        Parallel.forEach(count, grain: 1 << 15) { r in for i in r { g[i] *= factor } }
    }

    /// True when every gradient is finite.
    public static func allFinite(_ g: UnsafePointer<Float>, count: Int) -> Bool {
        // The exponent bits, tested as integers in C (vectorised; the trainer checks every gradient of every step).
        hd_all_finite(g, count) != 0
    }
}
