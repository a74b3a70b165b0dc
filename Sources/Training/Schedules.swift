// Learning-rate schedules: exponential per epoch (the paper's), step, cosine with linear warm-up.
#if canImport(Glibc)
import Glibc
#endif

/// A learning-rate schedule, evaluated from the step and epoch so a resumed run gets the same rate.
public enum LRSchedule: Hashable, Sendable, Codable {
    /// A fixed rate.
    case constant
    /// base * gamma^epoch (torch ExponentialLR stepped once per epoch).
    case exponential(gamma: Double)
    /// base * gamma^(epoch / stepEpochs) (torch StepLR).
    case step(stepEpochs: Int, gamma: Double)
    /// Linear warm-up over `warmupSteps` from base/warmupSteps to base, then cosine to `minLR` at `totalSteps`.
    case cosine(warmupSteps: Int, totalSteps: Int, minLR: Double)

    /// The rate at global step `step` (0-based) in epoch `epoch` (0-based).
    public func rate(base: Double, step: Int, epoch: Int) -> Double {
        switch self {
        case .constant:
            return base
        case .exponential(let gamma):
            return base * pow(gamma, Double(epoch))
        case .step(let stepEpochs, let gamma):
            return base * pow(gamma, Double(epoch / max(stepEpochs, 1)))
        case .cosine(let warmup, let total, let minLR):
            if step < warmup { return base * Double(step + 1) / Double(warmup) }
            let span = max(total - warmup, 1)
            let progress = min(Double(step - warmup) / Double(span), 1)
            return minLR + (base - minLR) * 0.5 * (1 + cos(Double.pi * progress))
        }
    }
}
