// Test helpers: a seeded RNG, finite-difference gradient checks in Double, and the PyTorch fixture file.
import Foundation
import SafeTensors
import Testing
@testable import TensorCore

/// SplitMix64: small, seeded, reproducible.
struct SeededRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform values in [-1, 1) scaled by `scale`.
    mutating func values(_ n: Int, scale: Double = 1) -> [Double] {
        (0..<n).map { _ in Double.random(in: -1..<1, using: &self) * scale }
    }
}

/// Pointers to the inputs of a kernel under test and to their gradient buffers.
struct GradCheckIO {
    var inputs: [UnsafeMutablePointer<Double>]
    var grads: [UnsafeMutablePointer<Double>?]
}

/// Checks a kernel's backward against central finite differences in Double.
///
/// The loss is sum(y * g) with a RANDOM upstream gradient g (a plain sum would hide wrong normalisation
/// gradients). Gradient buffers are pre-filled with random values to check that backward accumulates.
/// `forward` must fully recompute the output from the inputs; `backward` runs right after a forward at the
/// unperturbed inputs.
func checkGradients(
    _ kernel: String, inputs: [(String, [Double])], outputCount: Int, noGradient: Set<String> = [],
    seed: UInt64 = 7, tolerance: Double = 1e-6,
    forward: (GradCheckIO, UnsafeMutablePointer<Double>) -> Void,
    backward: (GradCheckIO, UnsafePointer<Double>) -> Void,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    var rng = SeededRNG(seed: seed)
    let buffers = inputs.map { Buffer<Double>($0.1) }
    let output = Buffer<Double>(count: outputCount)
    let upstream = Buffer<Double>(rng.values(outputCount))
    let needs = inputs.map { !noGradient.contains($0.0) }
    let prefill = inputs.map { Buffer<Double>(rng.values($0.1.count)) }
    let grads = zip(inputs, prefill).map { Buffer<Double>($0.1.array) }
    let io = GradCheckIO(inputs: buffers.map(\.pointer),
                         grads: grads.enumerated().map { needs[$0.offset] ? $0.element.pointer : nil })
    func loss() -> Double {
        forward(io, output.pointer)
        var s = 0.0
        for i in 0..<outputCount { s += output[i] * upstream[i] }
        return s
    }
    let eps = 1e-5
    var numeric: [[Double]] = []
    for (i, b) in buffers.enumerated() {
        guard needs[i] else { numeric.append([]); continue }
        var g = [Double](repeating: 0, count: b.count)
        for j in 0..<b.count {
            let v = b[j]
            b[j] = v + eps; let lp = loss()
            b[j] = v - eps; let lm = loss()
            b[j] = v
            g[j] = (lp - lm) / (2 * eps)
        }
        numeric.append(g)
    }
    forward(io, output.pointer)
    backward(io, upstream.pointer)
    for (i, (name, values)) in inputs.enumerated() where needs[i] {
        var maxErr = 0.0, maxRef = 0.0
        for j in 0..<values.count {
            let analytic = grads[i][j] - prefill[i][j]
            maxErr = max(maxErr, abs(analytic - numeric[i][j]))
            maxRef = max(maxRef, abs(numeric[i][j]))
        }
        let rel = maxErr / max(1, maxRef)
        #expect(maxRef > 0 || values.isEmpty, "\(kernel): d\(name) is identically zero; the check would be vacuous",
                sourceLocation: sourceLocation)
        #expect(rel <= tolerance, "\(kernel): d\(name) max abs error \(maxErr) (max |grad| \(maxRef))",
                sourceLocation: sourceLocation)
    }
}

/// The PyTorch fixtures, loaded once.
enum Fixtures {
    static let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/kernels.safetensors")

    static let file: SafeTensorsFile = {
        do { return try SafeTensorsFile(contentsOf: url) } catch { fatalError("cannot load fixtures: \(error)") }
    }()

    /// Case parameters from the metadata.
    nonisolated(unsafe) static let cases: [String: [String: Any]] = {
        let json = file.metadata["cases"] ?? "{}"
        return (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: [String: Any]] ?? [:]
    }()

    static func names(prefix: String) -> [String] { cases.keys.filter { $0.hasPrefix(prefix) }.sorted() }

    static func int(_ c: String, _ key: String) -> Int {
        guard let v = cases[c]?[key] as? Int else { fatalError("fixture case \(c) has no integer \(key)") }
        return v
    }

    static func bool(_ c: String, _ key: String) -> Bool { (cases[c]?[key] as? Bool) ?? false }

    /// A Float buffer with the fixture tensor "<case>.<name>".
    static func buffer(_ c: String, _ name: String) -> Buffer<Float> {
        guard let t = file["\(c).\(name)"] else { fatalError("fixture tensor \(c).\(name) missing") }
        return Buffer(t.floats)
    }

    static func values(_ c: String, _ name: String) -> [Float] { buffer(c, name).array }
}

/// Max |a - b| over max(1, max |b|): a relative error robust to tiny references.
func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "relativeError: \(a.count) vs \(b.count) elements")
    var err: Float = 0, ref: Float = 0
    for i in 0..<a.count { err = max(err, abs(a[i] - b[i])); ref = max(ref, abs(b[i])) }
    return err / max(1, ref)
}

/// Expects `actual` to match the fixture tensor within `tolerance` (relative, see `relativeError`).
func expectMatches(
    _ actual: [Float], _ c: String, _ name: String, tolerance: Float = 1e-4,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    let expected = Fixtures.values(c, name)
    #expect(actual.count == expected.count, "\(c).\(name): \(actual.count) values, PyTorch has \(expected.count)",
            sourceLocation: sourceLocation)
    guard actual.count == expected.count else { return }
    let e = relativeError(actual, expected)
    #expect(e <= tolerance, "\(c).\(name): max relative error \(e) against PyTorch", sourceLocation: sourceLocation)
}
