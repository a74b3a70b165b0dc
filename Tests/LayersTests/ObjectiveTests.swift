// The weighted distillation objective: terms, total and gradients are the weighted sums of the parts.
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
