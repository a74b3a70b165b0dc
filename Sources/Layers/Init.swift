// Seeded parameter initialisation with PyTorch's distributions (Kaiming normal fan_out, Linear's uniform).
import TensorCore
#if canImport(Glibc)
import Glibc
#endif

/// A small seeded generator (SplitMix64) for initialisation and tests; reproducible across platforms.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    public var state: UInt64
    /// A generator whose whole future is fixed by `seed`.
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A standard normal sample (Box-Muller).
    public mutating func normal() -> Double {
        let u1 = max(Double.random(in: 0..<1, using: &self), 1e-300), u2 = Double.random(in: 0..<1, using: &self)
        return (-2 * Glibc.log(u1)).squareRoot() * Glibc.cos(2 * Double.pi * u2)
    }
}

/// PyTorch's initialisers over a slice of a flat buffer.
public enum Initializer {
    /// nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out), fan_out = shape[0] * receptive field.
    public static func kaimingNormalFanOut(_ p: UnsafeMutablePointer<Float>, shape: [Int], using g: inout SeededGenerator) {
        let fanOut = shape[0] * shape.dropFirst(2).reduce(1, *)
        let std = (2.0 / Double(fanOut)).squareRoot()
        for i in 0..<shape.reduce(1, *) { p[i] = Float(g.normal() * std) }
    }

    /// nn.Linear's default for weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    public static func linearUniform(_ p: UnsafeMutablePointer<Float>, count: Int, fanIn: Int, using g: inout SeededGenerator) {
        let bound = 1 / Double(fanIn).squareRoot()
        for i in 0..<count { p[i] = Float(Double.random(in: -bound..<bound, using: &g)) }
    }

    /// Fills with a constant.
    public static func constant(_ p: UnsafeMutablePointer<Float>, count: Int, value: Float) {
        p.update(repeating: value, count: count)
    }
}
