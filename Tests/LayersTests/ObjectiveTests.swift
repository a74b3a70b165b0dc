// The weighted distillation objective: terms, total and gradients are the weighted sums of the parts.
import Foundation
import Testing
@testable import Layers
@testable import TensorCore

@Suite("Distillation objective")
struct ObjectiveTests {
    @Test("weighted total and gradients equal the weighted parts; unlabeled rows get no cross-entropy")
    func weightedSum() {
        let s = ModelFixtures.floats("kd.s_logits"), t = ModelFixtures.floats("kd.t_logits")
        let sm = ModelFixtures.floats("kd.s_map"), tm = ModelFixtures.floats("kd.t_map")
        let labels: [Int32] = [2, -1, 0, 4]
        let obj = DistillationObjective(kdWeight: 0.7, temperature: 4, pixelWeight: 2, pixelResize: .both, pixelNorm: .l1,
                                        crossEntropyWeight: 0.5)
        var gl = [Float](repeating: 0, count: 20), gm = [Float](repeating: 0, count: sm.count)
        let terms = obj.evaluate(studentLogits: s, teacherLogits: t, n: 4, classes: 5, studentMap: sm, studentMapShape: NCHW(4, 8, 2, 2),
                                 teacherMap: tm, teacherMapShape: NCHW(4, 8, 7, 7), labels: labels, gradLogits: &gl, gradMap: &gm)
        #expect(relErr([terms.kd], ModelFixtures.floats("kd.kl.loss")) <= 1e-5)
        #expect(relErr([terms.pixel], ModelFixtures.floats("kd.px.maxpool+bicubic.l1.loss")) <= 1e-5)
        #expect(abs(terms.total - (0.7 * terms.kd + 2 * terms.pixel + 0.5 * terms.crossEntropy)) < 1e-5)
        var ce = [Float](repeating: 0, count: 20)
        let ceLoss = CrossEntropy.forwardBackward(logits: s, labels: labels, n: 4, classes: 5, gradLogits: &ce)
        #expect(abs(ceLoss - terms.crossEntropy) < 1e-6)
        #expect(ce[5..<10].allSatisfy { $0 == 0 }, "the unlabeled row gets no cross-entropy gradient")
        let kdGrad = ModelFixtures.floats("kd.kl.grad"), pxGrad = ModelFixtures.floats("kd.px.maxpool+bicubic.l1.grad")
        for i in 0..<20 { #expect(abs(gl[i] - (0.7 * kdGrad[i] + 0.5 * ce[i])) < 1e-6) }
        for i in 0..<gm.count { #expect(abs(gm[i] - 2 * pxGrad[i]) < 1e-6) }
    }
}

@Suite("Label smoothing")
struct LabelSmoothingTests {
    @Test("cross-entropy with label smoothing ε: loss and gradient equal torch.nn.CrossEntropyLoss(label_smoothing=ε)'s definition, computed in Double; ε = 0 is plain cross-entropy; unlabeled rows ignored")
    func smoothedCrossEntropy() {
        let n = 5, c = 4
        var g = SplitMix64(seed: 77)
        let logits = (0..<(n * c)).map { _ in g.uniform(-3, 3) }
        let labels: [Int32] = [2, -1, 0, 3, 1]
        for eps in [Float(0), 0.1, 0.3] {
            var grad = [Float](repeating: 9, count: n * c)
            let loss = CrossEntropy.forwardBackward(logits: logits, labels: labels, n: n, classes: c, gradLogits: &grad, scale: 2, labelSmoothing: eps)
            var expected = 0.0
            var expectedGrad = [Double](repeating: 0, count: n * c)
            let labeled = labels.filter { $0 >= 0 }.count
            for i in 0..<n where labels[i] >= 0 {
                let row = (0..<c).map { Double(logits[i * c + $0]) }
                let m = row.max()!, z = row.map { exp($0 - m) }.reduce(0, +)
                let logp = row.map { $0 - m - log(z) }
                for j in 0..<c {
                    let q = (j == Int(labels[i]) ? 1 - Double(eps) : 0) + Double(eps) / Double(c)
                    expected -= q * logp[j] / Double(labeled)
                    expectedGrad[i * c + j] = 2 * (exp(logp[j]) - q) / Double(labeled)
                }
            }
            #expect(abs(Double(loss) - expected) < 1e-5, "ε \(eps): \(loss) vs \(expected)")
            #expect(zip(grad, expectedGrad).allSatisfy { abs(Double($0) - $1) < 1e-6 }, "ε \(eps) gradient")
            #expect(grad[c..<(2 * c)].allSatisfy { $0 == 0 }, "the unlabeled row has no gradient")
        }
    }

    @Test("mixup's cross-entropy targets λ q(label) + (1 - λ) q(partner), each label smoothed (timm Mixup + SoftTargetCrossEntropy), computed in Double; λ = 1 everywhere is the plain loss bit for bit")
    func mixedTargets() {
        let n = 5, c = 4
        var g = SplitMix64(seed: 78)
        let logits = (0..<(n * c)).map { _ in g.uniform(-3, 3) }
        let labels: [Int32] = [2, -1, 0, 3, 1], partners: [Int32] = [0, 1, 0, 1, 3]
        let lambdas: [Float] = [0.3, 0.5, 0.9, 0.0, 0.62]
        for eps in [Float(0), 0.1] {
            var grad = [Float](repeating: 9, count: n * c)
            let loss = CrossEntropy.forwardBackward(logits: logits, labels: labels, n: n, classes: c, gradLogits: &grad, scale: 2,
                                                    labelSmoothing: eps, mixPartnerLabels: partners, mixWeights: lambdas)
            var expected = 0.0
            var expectedGrad = [Double](repeating: 0, count: n * c)
            for i in 0..<n where labels[i] >= 0 {
                let row = (0..<c).map { Double(logits[i * c + $0]) }
                let m = row.max()!, z = row.map { exp($0 - m) }.reduce(0, +)
                let logp = row.map { $0 - m - log(z) }
                func smoothed(_ y: Int32, _ j: Int) -> Double { (j == Int(y) ? 1 - Double(eps) : 0) + Double(eps) / Double(c) }
                for j in 0..<c {
                    let q = Double(lambdas[i]) * smoothed(labels[i], j) + Double(1 - lambdas[i]) * smoothed(partners[i], j)
                    expected -= q * logp[j] / 4
                    expectedGrad[i * c + j] = 2 * (exp(logp[j]) - q) / 4
                }
            }
            #expect(abs(Double(loss) - expected) < 1e-5, "ε \(eps): \(loss) vs \(expected)")
            #expect(zip(grad, expectedGrad).allSatisfy { abs(Double($0) - $1) < 1e-6 }, "ε \(eps) gradient")
            #expect(grad[c..<(2 * c)].allSatisfy { $0 == 0 }, "the unlabeled row has no gradient")
            var plainGrad = [Float](repeating: 0, count: n * c), onesGrad = plainGrad
            let plain = CrossEntropy.forwardBackward(logits: logits, labels: labels, n: n, classes: c, gradLogits: &plainGrad, labelSmoothing: eps)
            let ones = CrossEntropy.forwardBackward(logits: logits, labels: labels, n: n, classes: c, gradLogits: &onesGrad, labelSmoothing: eps,
                                                    mixPartnerLabels: partners, mixWeights: [Float](repeating: 1, count: n))
            #expect(plain == ones && plainGrad == onesGrad)
        }
    }
}
