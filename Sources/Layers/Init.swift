// Seeded parameter initialisation with PyTorch's distributions (Kaiming normal fan_out, Linear's uniform).
import TensorCore

/// The seeded generator used for initialisation (SplitMix64 from TensorCore).
public typealias SeededGenerator = SplitMix64

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
