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
