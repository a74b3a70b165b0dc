// Measured speed of whole steps on synthetic data: supervised training, distillation and inference, the same
// cases as ../shared/anchors/pytorch/bench_train.py so the two can be run side by side.
import Dispatch
import Layers
import TensorCore

/// Images per second over repetitions of a number of steps.
public struct Throughput: Sendable, CustomStringConvertible {
    public var median: Double, min: Double, max: Double
    public var description: String {
        String(format: "%.1f img/s (min %.1f, max %.1f)", median, min, max)
    }
}

/// One supervised or distillation training step, or an inference pass, on a fixed synthetic batch.
public enum StepRunner {
    /// A batch of deterministic pseudo-random values in [-1, 1).
    static func syntheticBatch(_ count: Int, seed: UInt64) -> Buffer<Float> {
        var g = SeededGenerator(seed: seed)
        let b = Buffer<Float>(count: count)
        for i in 0..<count { b[i] = Float.random(in: -1..<1, using: &g) }
        return b
    }

    /// Times `step` (which processes `images` images): `warmup` untimed steps, then `reps` x `steps` timed.
    public static func measure(images: Int, warmup: Int = 2, reps: Int = 3, steps: Int = 3, _ step: () -> Void) -> Throughput {
        for _ in 0..<warmup { step() }
        var rates: [Double] = []
        for _ in 0..<reps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<steps { step() }
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            rates.append(Double(steps * images) / dt)
        }
        rates.sort()
        return Throughput(median: rates[rates.count / 2], min: rates.first!, max: rates.last!)
    }

    /// A supervised step: forward, cross-entropy, backward, Adam (lr 1e-3).
    public static func supervised(_ config: ResNetConfig, resolution: Int, batch: Int) -> () -> Void {
        let model = ResNet(config, seed: 1)
        let opt = Optimizer(.adam(), count: model.parameterCount)
        let shape = NCHW(batch, 3, resolution, resolution)
        let x = syntheticBatch(shape.count, seed: 2)
        let labels = (0..<batch).map { Int32($0 % max(config.classes, 1)) }
        let grad = Buffer<Float>(count: batch * config.classes)
        return {
            let out = model.forward(x.pointer, shape: shape, training: true)
            _ = labels.withUnsafeBufferPointer {
                CrossEntropy.forwardBackward(logits: out.logits!.data, labels: $0.baseAddress!, n: batch, classes: config.classes, gradLogits: grad.pointer)
            }
            model.parameters.zeroGradients()
            model.backward(gradLogits: grad.pointer)
            opt.update(values: model.parameters.values.pointer, gradients: model.parameters.gradients!.pointer, lr: 1e-3)
        }
    }

    /// A distillation step as in bench_train.py: frozen teacher forward at `teacherResolution`, student forward
    /// at `studentResolution`, KL (T = 4) + MSE to the teacher's max-pooled map, backward, Adam.
    public static func distillation(_ config: ResNetConfig, teacherResolution: Int, studentResolution: Int, batch: Int) -> () -> Void {
        let teacher = ResNet(config, seed: 3), student = ResNet(config, seed: 4)
        let opt = Optimizer(.adam(), count: student.parameterCount)
        let ts = NCHW(batch, 3, teacherResolution, teacherResolution), ss = NCHW(batch, 3, studentResolution, studentResolution)
        let xt = syntheticBatch(ts.count, seed: 5)
        let xs = Buffer<Float>(count: ss.count)
        BicubicResize.forward(output: xs.pointer, input: xt.pointer, shape: ts, outH: studentResolution, outW: studentResolution)
        let gLogits = Buffer<Float>(count: batch * config.classes)
        let mapEdge = student.featureMapSize(resolution: studentResolution)
        let gMap = Buffer<Float>(count: batch * config.featureDimension * mapEdge * mapEdge)
        return {
            let t = teacher.forward(xt.pointer, shape: ts, training: false)
            let s = student.forward(xs.pointer, shape: ss, training: true)
            let sMap = s.featureMap.nchw
            _ = DistillationKL.forwardBackward(student: s.logits!.data, teacher: t.logits!.data, n: batch, classes: config.classes,
                                               temperature: 4, gradStudent: gLogits.pointer)
            _ = PixelLoss.forwardBackward(student: s.featureMap.data, studentShape: sMap, teacher: t.featureMap.data,
                                          teacherShape: t.featureMap.nchw, mode: .maxpool, norm: .l2, gradStudent: gMap.pointer)
            student.parameters.zeroGradients()
            student.backward(gradLogits: gLogits.pointer, gradFeatureMap: gMap.pointer)
            opt.update(values: student.parameters.values.pointer, gradients: student.parameters.gradients!.pointer, lr: 1e-3)
        }
    }

    /// An inference pass (eval mode, no backward).
    public static func inference(_ config: ResNetConfig, resolution: Int, batch: Int) -> () -> Void {
        let model = ResNet(config, seed: 6)
        let shape = NCHW(batch, 3, resolution, resolution)
        let x = syntheticBatch(shape.count, seed: 7)
        return { _ = model.forward(x.pointer, shape: shape, training: false) }
    }
}
