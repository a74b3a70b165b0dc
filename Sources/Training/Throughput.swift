// Measured speed of whole steps on synthetic data: supervised training, distillation and inference, the same
// cases as ../shared/anchors/pytorch/bench_train.py so the two can be run side by side. The timed training steps
// are the trainer's own (`DataParallelStep` over the objective), not a re-implementation.
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

    /// A training step exactly as `train` runs it (`SupervisedStep` in a `DataParallelStep` on one process,
    /// Adam at lr 1e-3) on a synthetic batch.
    public static func supervised(_ config: ResNetConfig, resolution: Int, batch: Int) -> () -> Void {
        let model = ResNet(config, seed: 1)
        return training(DataParallelStep(objective: SupervisedStep(model: model), group: SingleProcessGroup()),
                        edge: resolution, teacherEdge: nil, batch: batch, classes: config.classes)
    }

    /// A distillation step exactly as `distill` runs it (`DistillationStep` with `objective`, a frozen teacher
    /// at `teacherResolution`, the student at `studentResolution`, Adam at lr 1e-3) on a synthetic batch.
    public static func distillation(_ config: ResNetConfig, teacherResolution: Int, studentResolution: Int, batch: Int,
                                    objective: DistillationObjective = DistillationObjective()) -> () -> Void {
        let step = distillationStep(config, objective: objective)
        return training(DataParallelStep(objective: step, group: SingleProcessGroup()), edge: studentResolution,
                        teacherEdge: teacherResolution, batch: batch, classes: config.classes)
    }

    /// The objective `distillation` times: a student and a frozen teacher of `config`.
    public static func distillationStep(_ config: ResNetConfig, objective: DistillationObjective) -> DistillationStep {
        DistillationStep(student: ResNet(config, seed: 4), teacher: FrozenTeacher(ResNet(config, seed: 3)), objective: objective)
    }

    /// Repeats `stepper.step` on one fixed synthetic batch (student view, teacher view when `teacherEdge` is set).
    public static func training(_ stepper: DataParallelStep, edge: Int, teacherEdge: Int?, batch: Int, classes: Int) -> () -> Void {
        let optimizer = Optimizer(.adam(), count: stepper.model.parameterCount)
        let x = syntheticBatch(batch * 3 * edge * edge, seed: 2)
        let t = teacherEdge.map { syntheticBatch(batch * 3 * $0 * $0, seed: 5) }
        let labels = (0..<batch).map { Int32($0 % max(classes, 1)) }
        return {
            labels.withUnsafeBufferPointer { l in
                let input = StepInput(images: x.pointer, edge: edge, teacherImages: t.map { UnsafePointer($0.pointer) }, teacherEdge: teacherEdge ?? edge,
                                      labels: l.baseAddress!, count: batch)
                _ = try? stepper.step(input, optimizer: optimizer, lr: 1e-3)
            }
        }
    }

    /// An inference pass (eval mode, no backward).
    public static func inference(_ config: ResNetConfig, resolution: Int, batch: Int) -> () -> Void {
        let model = EvalReplicas(ResNet(config, seed: 6))   // as `predict`, `evaluate` and `extract` run it
        let shape = NCHW(batch, 3, resolution, resolution)
        let x = syntheticBatch(shape.count, seed: 7)
        return { _ = model.forward(x.pointer, shape: shape) }
    }
}
