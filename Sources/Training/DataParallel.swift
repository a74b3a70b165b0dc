// The arithmetic of one data-parallel step, shared by the trainer and `histodistill bench-step`: forward and
// backward of this rank's tiles, then loss terms and gradients averaged over the global batch by all-reduce.
import Layers
import TensorCore
import TileShards
#if canImport(Glibc)
import Glibc
#endif

/// The global view of a step after the reduction.
public struct GlobalStep: Sendable {
    /// Loss terms averaged over the global batch.
    public var terms: DistillationObjective.Terms
    /// Tiles in the global batch that were trained on.
    public var count: Int
    /// Corrupt tiles skipped on all ranks.
    public var skipped: Int
    /// A stop signal seen on any rank (this rank's own, else SIGTERM's number for another rank's).
    public var stopSignal: Int32?
}

/// One step of supervised or distillation training on one rank of `group`.
///
/// Each rank computes the gradient of the mean loss over its own tiles; `reduce` weights it by the rank's share
/// of the global batch and sums over ranks in place (bucket by bucket), so every rank ends with the gradient of
/// the mean over the whole global batch, whatever the number of ranks and however unevenly it was split.
public final class DataParallelStep {
    public let model: ResNet
    /// The frozen teacher of a distillation step, or nil for cross-entropy training.
    public let teacher: ResNet?
    public let objective: DistillationObjective
    public let group: any ProcessGroup
    /// Largest all-reduce message, in floats (the gradient buffer is reduced in buckets of this size).
    public var bucketElements = 1 << 22

    public init(model: ResNet, teacher: ResNet?, objective: DistillationObjective, group: any ProcessGroup) {
        self.model = model; self.teacher = teacher; self.objective = objective; self.group = group
    }

    /// Forward and backward of this rank's tiles of `batch` (the student sees the tiles downsampled
    /// `inputFactor` times): see `localGradients(student:...)`.
    public func localGradients(_ batch: LoadedBatch, inputFactor: Int) -> DistillationObjective.Terms {
        guard batch.count > 0 else {
            model.parameters.zeroGradients()
            return .init()
        }
        let edge = inputFactor > 1 ? batch.lowSize : batch.size
        let input = inputFactor > 1 ? batch.lr : batch.hr
        return input.withUnsafeBufferPointer { s in
            batch.hr.withUnsafeBufferPointer { t in
                localGradients(student: s.baseAddress!, edge: edge, teacher: t.baseAddress!, teacherEdge: batch.size,
                               labels: batch.labels, count: batch.count)
            }
        }
    }

    /// Forward and backward of `count` tiles: leaves the gradient of the mean loss over them in the model's
    /// gradient buffer (zero when `count` is 0) and returns the loss terms (cross-entropy only: `total`).
    /// The teacher, if any, sees `teacher` (count, 3, teacherEdge, teacherEdge) in eval mode.
    public func localGradients(student: UnsafePointer<Float>, edge: Int, teacher teacherInput: UnsafePointer<Float>, teacherEdge: Int,
                               labels: [Int32], count: Int) -> DistillationObjective.Terms {
        model.parameters.zeroGradients()
        var terms = DistillationObjective.Terms()
        guard count > 0 else { return terms }
        let classes = model.config.classes
        let out = model.forward(student, shape: NCHW(count, 3, edge, edge), training: true)
        var grad = [Float](repeating: 0, count: count * classes)
        var mapGrad: [Float] = []
        if let teacher {
            let t = teacher.forward(teacherInput, shape: NCHW(count, 3, teacherEdge, teacherEdge), training: false)
            mapGrad = [Float](repeating: 0, count: out.featureMap.count)
            terms = labels.withUnsafeBufferPointer { labels in
                objective.evaluate(studentLogits: out.logits!.data, teacherLogits: t.logits!.data, n: count, classes: classes,
                                   studentMap: out.featureMap.data, studentMapShape: out.featureMap.nchw,
                                   teacherMap: t.featureMap.data, teacherMapShape: t.featureMap.nchw,
                                   labels: labels.baseAddress!, gradLogits: &grad, gradMap: &mapGrad)
            }
        } else {
            terms.total = labels.withUnsafeBufferPointer {
                CrossEntropy.forwardBackward(logits: out.logits!.data, labels: $0.baseAddress!, n: count, classes: classes, gradLogits: &grad)
            }
        }
        // A non-finite loss is caught after the reduction, on every rank alike; backward is harmless.
        grad.withUnsafeBufferPointer { g in
            if mapGrad.isEmpty {
                model.backward(gradLogits: g.baseAddress!)
            } else {
                mapGrad.withUnsafeBufferPointer { model.backward(gradLogits: g.baseAddress!, gradFeatureMap: $0.baseAddress!) }
            }
        }
        return terms
    }

    /// Averages the loss terms and the gradient over the global batch. On one process this changes nothing
    /// (bit for bit). Also tells every rank whether any rank received a stop signal.
    public func reduce(_ local: DistillationObjective.Terms, count: Int, skipped: Int) throws -> GlobalStep {
        let n = Double(count)
        let mySignal = StopSignals.pending
        guard group.size > 1 else {
            return GlobalStep(terms: local, count: count, skipped: skipped, stopSignal: mySignal)
        }
        var stats: [Double] = [n, Double(local.total) * n, Double(local.kd) * n, Double(local.pixel) * n,
                               Double(local.crossEntropy) * n, Double(skipped), mySignal == nil ? 0 : 1]
        try stats.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
        let total = stats[0]
        func mean(_ i: Int) -> Float { total > 0 ? Float(stats[i] / total) : 0 }
        if total > 0 {
            let g = model.parameters.gradients!
            if count > 0 && n != total { GradientOps.scale(g.pointer, count: model.parameterCount, by: Float(n / total)) }
            try group.allReduceSum(UnsafeMutableBufferPointer(start: g.pointer, count: model.parameterCount), bucketElements: bucketElements)
        }
        return GlobalStep(terms: .init(kd: mean(2), pixel: mean(3), crossEntropy: mean(4), total: mean(1)), count: Int(total),
                          skipped: Int(stats[5]), stopSignal: stats[6] > 0 ? (mySignal ?? SIGTERM) : nil)
    }

    /// BatchNorm running statistics follow rank 0's, as PyTorch DDP's broadcast_buffers does (no-op for GroupNorm).
    public func broadcastBuffers() throws {
        guard group.size > 1, model.buffers.layout.count > 0 else { return }
        try group.broadcast(UnsafeMutableRawBufferPointer(start: model.buffers.values.pointer, count: model.buffers.layout.count * 4), root: 0)
    }

    /// Copies rank 0's weights, running statistics and `optimizer`'s state to every rank.
    public func broadcastState(optimizer: Optimizer?) throws {
        guard group.size > 1 else { return }
        func send(_ p: UnsafeMutablePointer<Float>, _ count: Int) throws {
            guard count > 0 else { return }
            try group.broadcast(UnsafeMutableRawBufferPointer(start: p, count: count * MemoryLayout<Float>.stride), root: 0)
        }
        try send(model.parameters.values.pointer, model.parameterCount)
        try send(model.buffers.values.pointer, model.buffers.layout.count)
        var counters = model.batchesTracked
        if let optimizer {
            try send(optimizer.first.pointer, optimizer.first.count)
            try send(optimizer.second.pointer, optimizer.second.count)
            counters.append(Int64(optimizer.step))
        }
        try counters.withUnsafeMutableBytes { try group.broadcast($0, root: 0) }
        if let optimizer { optimizer.step = Int(counters.removeLast()) }
        model.batchesTracked = counters
    }
}
