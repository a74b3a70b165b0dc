// SplitMix64, the seeded generator behind initialisation, data order and augmentation.
#if canImport(Glibc)
import Glibc
#endif

/// SplitMix64: a small seeded generator; streams are derived by hashing (seed, epoch, position).
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// A generator for stream `values` of `seed`: different tuples give independent streams.
    public static func stream(_ seed: UInt64, _ values: UInt64...) -> SplitMix64 {
        var g = SplitMix64(seed: seed)
        for v in values { g.state ^= v &* 0xD6E8_FEB8_6659_FD93; _ = g.next() }
        return g
    }
    /// Uniform in [lo, hi).
    public mutating func uniform(_ lo: Float, _ hi: Float) -> Float {
        lo + (hi - lo) * Float(next() >> 40) / Float(1 << 24)
    }
}

extension SplitMix64 {
    /// A standard normal sample (Box-Muller).
    public mutating func normal() -> Double {
        let u1 = max(Double.random(in: 0..<1, using: &self), 1e-300), u2 = Double.random(in: 0..<1, using: &self)
        return (-2 * Glibc.log(u1)).squareRoot() * Glibc.cos(2 * Double.pi * u2)
    }
}

extension SplitMix64 {
    /// A Gamma(shape, 1) sample, shape > 0 (Marsaglia & Tsang 2000; for shape < 1, Gamma(shape + 1) U^(1/shape)).
    public mutating func gamma(shape: Double) -> Double {
        if shape < 1 {
            let u = max(Double.random(in: 0..<1, using: &self), 1e-300)
            return gamma(shape: shape + 1) * Glibc.pow(u, 1 / shape)
        }
        let d = shape - 1.0 / 3, c = 1 / (9 * d).squareRoot()
        while true {
            var x: Double, v: Double
            repeat { x = normal(); v = 1 + c * x } while v <= 0
            v = v * v * v
            let u = Double.random(in: 0..<1, using: &self)
            if u < 1 - 0.0331 * x * x * x * x || Glibc.log(max(u, 1e-300)) < 0.5 * x * x + d * (1 - v + Glibc.log(v)) { return d * v }
        }
    }

    /// The natural log of a Gamma(shape, 1) sample, the same draws as `gamma(shape:)`, exact where the sample
    /// itself underflows to 0 (shapes far below 1: Gamma(a) = Gamma(a + 1) U^(1/a), whose U^(1/a) is below 1e-308 half
    /// the time at a = 0.001).
    public mutating func logGamma(shape: Double) -> Double {
        if shape < 1 {
            let u = max(Double.random(in: 0..<1, using: &self), 1e-300)
            return logGamma(shape: shape + 1) + Glibc.log(u) / shape
        }
        return Glibc.log(gamma(shape: shape))
    }

    /// A Beta(a, b) sample in [0, 1] (X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b); numpy.random.beta's definition).
    /// Shapes below 1 take the ratio in log space, so tiny shapes (X and Y both underflowing) still give λ near 0
    /// or near 1 with the right odds rather than always 1.
    public mutating func beta(_ a: Double, _ b: Double) -> Double {
        guard a < 1 || b < 1 else {
            let x = gamma(shape: a), y = gamma(shape: b)
            return x / (x + y)
        }
        let lx = logGamma(shape: a), ly = logGamma(shape: b)
        return 1 / (1 + Glibc.exp(ly - lx))
    }
}
