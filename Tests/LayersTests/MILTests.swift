// The attention-MIL head: finite differences in Double, and PyTorch's outputs and gradients in Float.
import Testing
@testable import Layers
@testable import TensorCore

@Suite("Attention MIL")
struct MILTests {
    @Test("every parameter and the bag match finite differences (Double, random upstream gradients)")
    func finiteDifferences() {
        let mil = AttentionMIL<Double>(featureDimension: 5, classes: 3, hidden1: 6, hidden2: 4, attentionWidth: 3, seed: 9)
        let n = 4
        var g = SeededGenerator(seed: 3)
        let bag = Buffer<Double>((0..<(n * 5)).map { _ in Double.random(in: -1..<1, using: &g) })
        let upBag = (0..<3).map { _ in Double.random(in: -1..<1, using: &g) }
        let upPatch = (0..<(n * 3)).map { _ in Double.random(in: -1..<1, using: &g) }
        let bl = Buffer<Double>(count: 3), att = Buffer<Double>(count: n), pl = Buffer<Double>(count: n * 3)
        func loss() -> Double {
            mil.forward(bag: bag.pointer, count: n, bagLogits: bl.pointer, attention: att.pointer, patchLogits: pl.pointer)
            var s = 0.0
            for i in 0..<3 { s += bl[i] * upBag[i] }
            for i in 0..<(n * 3) { s += pl[i] * upPatch[i] }
            return s
        }
        let eps = 1e-6
        func numeric(_ p: UnsafeMutablePointer<Double>, _ count: Int) -> [Double] {
            (0..<count).map { j in
                let v = p[j]
                p[j] = v + eps; let lp = loss()
                p[j] = v - eps; let lm = loss()
                p[j] = v
                return (lp - lm) / (2 * eps)
            }
        }
        let numParams = numeric(mil.parameters.values.pointer, mil.parameters.layout.count)
        let numBag = numeric(bag.pointer, bag.count)
        _ = loss()
        mil.parameters.zeroGradients()
        let dBag = Buffer<Double>(count: bag.count)
        upBag.withUnsafeBufferPointer { b in upPatch.withUnsafeBufferPointer { p in
            mil.backward(gradBagLogits: b.baseAddress!, gradPatchLogits: p.baseAddress!, gradBag: dBag.pointer)
        } }
        for slice in mil.parameters.layout.slices {
            var err = 0.0, ref = 0.0
            for j in 0..<slice.count {
                err = max(err, abs(mil.parameters.gradient(slice)[j] - numParams[slice.offset + j]))
                ref = max(ref, abs(numParams[slice.offset + j]))
            }
            // The attention's last bias shifts every score equally; softmax is shift-invariant, so its gradient is 0.
            let shiftInvariant = slice.name == "attention.2.bias"
            #expect(ref > 0 || shiftInvariant, "\(slice.name): zero gradient, vacuous check")
            #expect(err <= 1e-6 * max(1, ref), "\(slice.name): max error \(err)")
        }
        var bagErr = 0.0
        for j in 0..<bag.count { bagErr = max(bagErr, abs(dBag[j] - numBag[j])) }
        #expect(bagErr <= 1e-6, "bag gradient max error \(bagErr)")
        #expect(abs(att.array.reduce(0, +) - 1) < 1e-12, "attention weights sum to 1")
    }

    @Test("outputs, attention and every gradient match PyTorch")
    func againstPyTorch() throws {
        let mil = AttentionMIL<Float>(featureDimension: 16, classes: 3)
        for slice in mil.parameters.layout.slices {
            let values = ModelFixtures.floats("mil.sd.\(slice.name)")
            #expect(values.count == slice.count, "\(slice.name)")
            mil.parameters.value(slice).update(from: values, count: slice.count)
        }
        let bag = Buffer<Float>(ModelFixtures.floats("mil.bag"))
        let bl = Buffer<Float>(count: 3), att = Buffer<Float>(count: 7), pl = Buffer<Float>(count: 21)
        mil.forward(bag: bag.pointer, count: 7, bagLogits: bl.pointer, attention: att.pointer, patchLogits: pl.pointer)
        #expect(relErr(bl.array, ModelFixtures.floats("mil.bag_logits")) <= 1e-5)
        #expect(relErr(pl.array, ModelFixtures.floats("mil.patch_logits")) <= 1e-5)
        #expect(relErr(att.array, ModelFixtures.floats("mil.attention")) <= 1e-5)
        mil.parameters.zeroGradients()
        let dBag = Buffer<Float>(count: bag.count)
        mil.backward(gradBagLogits: ModelFixtures.floats("mil.g_bag"), gradPatchLogits: ModelFixtures.floats("mil.g_patch"), gradBag: dBag.pointer)
        for slice in mil.parameters.layout.slices {
            let ours = array(mil.parameters.gradient(slice), slice.count), theirs = ModelFixtures.floats("mil.grad.\(slice.name)")
            if slice.name == "attention.2.bias" {
                // Exactly zero in exact arithmetic (softmax is shift-invariant): both must be rounding noise.
                #expect(abs(ours[0]) < 1e-6 && abs(theirs[0]) < 1e-6, "attention.2.bias: \(ours[0]) vs \(theirs[0])")
                continue
            }
            let e = relErr(ours, theirs)
            #expect(e <= 1e-4, "\(slice.name): relative error \(e)")
        }
        #expect(relErr(dBag.array, ModelFixtures.floats("mil.dbag")) <= 1e-4)
    }
}
