// The gradient all-reduce overlapped with backward (train.overlap_allreduce): buckets from the end of the gradient
// start while backward runs, and the step is the same, bit for bit, as the reduction after backward.
import Foundation
import Testing
@testable import Layers
@testable import TensorCore
@testable import Training

/// Two ranks holding the same tiles, in one process: every sum over ranks doubles the buffer. Records the buckets the
/// non-blocking reduction was given (offsets into `base`), in order.
class TwinRanksGroup: ProcessGroup, @unchecked Sendable {
    var rank: Int { 0 }
    var size: Int { 2 }
    var transportName: String { "two identical ranks (test)" }
    var base: UnsafeMutablePointer<Float>?
    var started: [Range<Int>] = []
    var waits = 0
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws { for i in buffer.indices { buffer[i] *= 2 } }
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws { for i in buffer.indices { buffer[i] *= 2 } }
    func allReduceMax(_ buffer: UnsafeMutableBufferPointer<Int64>) throws {}
    func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        if let base, let start = buffer.baseAddress { started.append((start - base)..<(start - base + buffer.count)) }
        try allReduceSum(buffer)
    }
    func progressReductions() throws -> Bool { true }
    func waitForReductions() throws { waits += 1 }
    func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {}
    func barrier() throws {}
    func abort(code: Int32, message: String) -> Never { fatalError(message) }
    func finalize() {}
}

/// `TwinRanksGroup` counting the calls that let its reductions progress.
final class CountingTwinRanksGroup: TwinRanksGroup, @unchecked Sendable {
    var progressCalls = 0
    override func progressReductions() throws -> Bool { progressCalls += 1; return true }
}

@Suite("Gradient all-reduce overlapped with backward", .serialized)
struct OverlapTests {
    /// Two Adam steps of `config`'s model (supervised, or distilled from a frozen teacher at twice the edge) on 2 "ranks"
    /// at `width` engine threads, with the reduction overlapped in buckets of `bucket` floats or after backward.
    /// Returns the weights and the last step's reduction and recorded buckets.
    static func train(_ config: ResNetConfig, distill: Bool, width: Int, overlap: Bool, bucket: Int)
        -> (weights: [Float], reduction: OverlappedGradientReduction?, started: [Range<Int>], group: TwinRanksGroup) {
        let n = 5, edge = 16
        var g = SplitMix64(seed: 3)
        let x = Buffer<Float>((0..<(n * 3 * edge * edge)).map { _ in Float(g.next() % 1000) / 500 - 1 })
        let xt = Buffer<Float>((0..<(n * 3 * 4 * edge * edge)).map { _ in Float(g.next() % 1000) / 500 - 1 })
        let labels: [Int32] = [0, 2, 1, 1, 0]
        let model = ResNet(config, seed: 7)
        let objective: any StepObjective = distill
            ? DistillationStep(student: model, teacher: FrozenTeacher(ResNet(config, seed: 8)),
                               objective: DistillationObjective(kdWeight: 0.7, temperature: 4, pixelWeight: 0.5, pixelResize: .both,
                                                                pixelNorm: .l2, crossEntropyWeight: 0.3))
            : SupervisedStep(model: model)
        let group = TwinRanksGroup()
        group.base = model.parameters.gradients!.pointer
        let stepper = DataParallelStep(objective: objective, group: group)
        stepper.overlapReduction = overlap
        stepper.bucketElements = bucket
        let optimizer = Optimizer(.adam(), count: model.parameterCount)
        labels.withUnsafeBufferPointer { l in
            let input = StepInput(images: x.pointer, edge: edge, teacherImages: xt.pointer, teacherEdge: 2 * edge, labels: l.baseAddress!, count: n)
            for _ in 0..<2 {
                group.started.removeAll()
                let step = Parallel.withWidth(width) { try? stepper.step(input, optimizer: optimizer, lr: 1e-3) }
                #expect(step?.updated == true)
            }
        }
        return (model.parameters.values.array, stepper.lastReduction, group.started, group)
    }

    @Test("buckets start from the end of the gradient while backward runs, and the weights equal the reduction after backward bit for bit: supervised and distillation, 1-3 threads (model copies), GroupNorm and BatchNorm",
          arguments: [false, true])
    func overlappedEqualsAfterBackward(_ distill: Bool) throws {
        let configs = [ResNetConfig.paper(classes: 3, planes: [16, 32, 32], blocks: [1, 2, 1], groups: 8),
                       ResNetConfig(name: "bn", planes: [16, 32], blocks: [1, 1], norm: .batch, classes: 3)]
        for config in configs {
            for width in [1, 2, 3] {
                let reference = Self.train(config, distill: distill, width: width, overlap: false, bucket: 1 << 22)
                #expect(reference.reduction == nil)
                let bucket = 1500
                let overlapped = Self.train(config, distill: distill, width: width, overlap: true, bucket: bucket)
                let what = "\(config.name), distill \(distill), width \(width)"
                let differing = zip(overlapped.weights, reference.weights).filter { $0.0 != $0.1 }.count
                let reduction = try #require(overlapped.reduction)
                let count = reference.weights.count
                // Buckets of `bucket` floats from the end, started in that order, covering the gradient once.
                let model = ResNet(config, initialize: false)
                #expect(reduction.buckets == OverlappedGradientReduction.buckets(count: count, bucketElements: bucket,
                                                                                 boundaries: model.gradientReadyOffsets))
                #expect(reduction.buckets.count >= 3, "\(what): \(reduction.buckets.count) buckets")
                #expect(overlapped.started == reduction.buckets, "\(what): buckets started out of order")
                #expect(reduction.buckets.first?.upperBound == count && reduction.buckets.last?.lowerBound == 0)
                #expect(zip(reduction.buckets, reduction.buckets.dropFirst()).allSatisfy { $0.lowerBound == $1.upperBound })
                #expect(overlapped.group.waits == 2, "one wait per step")
                // Started during backward: before `complete()` (whose time every later start is at or after).
                let during = reduction.startTimes.filter { $0 < reduction.completeTime }.count
                #expect(during >= reduction.buckets.count / 2, "\(what): only \(during) of \(reduction.buckets.count) buckets started during backward")
                #expect(reduction.startTimes.count == reduction.buckets.count)
            }
        }
    }

    @Test("a ResNet's backward reports the offsets it promises, decreasing to 0, and each report's gradients are final: classifier or truncated, GroupNorm or BatchNorm, with downsamples")
    func reportsAreFinal() {
        let configs = [ResNetConfig.paper(classes: 3, planes: [16, 32, 32], blocks: [1, 2, 1], groups: 8),
                       ResNetConfig(name: "bn", planes: [16, 32], blocks: [2, 1], norm: .batch, classes: 4),
                       ResNetConfig.paper(classes: 3, planes: [16, 32, 32], blocks: [1, 1, 1], groups: 8).truncated(after: 2)]
        for config in configs {
            let model = ResNet(config, seed: 4)
            let n = 2, edge = 32
            var g = SplitMix64(seed: 5)
            let x = Buffer<Float>((0..<(n * 3 * edge * edge)).map { _ in Float(g.next() % 1000) / 500 - 1 })
            var reports: [(offset: Int, gradients: [Float])] = []
            model.gradientReady = { offset in reports.append((offset, model.parameters.gradients!.array)) }
            model.parameters.zeroGradients()
            let out = model.forward(x.pointer, shape: NCHW(n, 3, edge, edge), training: true)
            let mapGrad = (0..<out.featureMap.count).map { Float($0 % 7) / 7 - 0.4 }
            let logitGrad = (0..<(n * max(1, model.classes))).map { Float($0 % 5) / 5 - 0.3 }
            logitGrad.withUnsafeBufferPointer { l in
                mapGrad.withUnsafeBufferPointer { m in
                    model.backward(gradLogits: model.classes > 0 ? l.baseAddress! : nil, gradFeatureMap: m.baseAddress!, gradPooled: nil)
                }
            }
            let final = model.parameters.gradients!.array
            #expect(reports.map(\.offset) == model.gradientReadyOffsets, "\(config.name): reported \(reports.map(\.offset))")
            #expect(reports.last?.offset == 0 && zip(reports, reports.dropFirst()).allSatisfy { $0.offset > $1.offset })
            for r in reports {
                let changed = (r.offset..<final.count).filter { r.gradients[$0] != final[$0] }.count
                #expect(changed == 0, "\(config.name): \(changed) gradients at or above \(r.offset) changed after it was reported final")
            }
            // Not vacuous: the last report before the stem saw the stem's gradient still unset.
            #expect(reports.dropLast().last.map { r in (0..<r.offset).contains { r.gradients[$0] != final[$0] } } == true)
        }
    }

    /// Three distillation steps on three different batches (keys 0-2) on 2 "ranks" at `width` threads with the reduction
    /// overlapped, each step given the next batch as `lookahead` (or none); `keys` overrides the keys of the
    /// lookaheads. Returns the weights, the step's objective and the group's progress calls.
    static func distillThree(width: Int, lookahead: Bool, lookaheadKeys: [Int] = [1, 2]) -> (weights: [Float], objective: DistillationStep, progress: Int, lastAhead: Double?, summed: [Double?]) {
        let config = ResNetConfig.paper(classes: 3, planes: [16, 32, 32], blocks: [1, 2, 1], groups: 8)
        let n = 5, edge = 16
        var g = SplitMix64(seed: 11)
        let xs = (0..<3).map { _ in Buffer<Float>((0..<(n * 3 * edge * edge)).map { _ in Float(g.next() % 1000) / 500 - 1 }) }
        let xts = (0..<3).map { _ in Buffer<Float>((0..<(n * 3 * 4 * edge * edge)).map { _ in Float(g.next() % 1000) / 500 - 1 }) }
        let labels: [Int32] = [0, 2, 1, 1, 0]
        let model = ResNet(config, seed: 7)
        let objective = DistillationStep(student: model, teacher: FrozenTeacher(ResNet(config, seed: 8)),
                                         objective: DistillationObjective(kdWeight: 0.7, temperature: 4, pixelWeight: 0.5, pixelResize: .both,
                                                                          pixelNorm: .l2, crossEntropyWeight: 0.3))
        let group = CountingTwinRanksGroup()
        let stepper = DataParallelStep(objective: objective, group: group)
        stepper.overlapReduction = true
        stepper.bucketElements = 1500
        let optimizer = Optimizer(.adam(), count: model.parameterCount)
        var summed: [Double?] = []
        labels.withUnsafeBufferPointer { l in
            func input(_ i: Int, key: Int) -> StepInput {
                var input = StepInput(images: xs[i].pointer, edge: edge, teacherImages: xts[i].pointer, teacherEdge: 2 * edge,
                                      labels: l.baseAddress!, count: n)
                input.key = key
                return input
            }
            for i in 0..<3 {
                let next = lookahead && i < 2 ? input(i + 1, key: lookaheadKeys[i]) : nil
                let step = Parallel.withWidth(width) { try? stepper.step(input(i, key: i), optimizer: optimizer, lr: 1e-3, lookahead: next) }
                #expect(step?.updated == true)
                // When every bucket was seen summed, relative to the wait after the compute (this group sums at once).
                summed.append(stepper.lastReduction.flatMap { r in r.summedTime.map { $0 <= r.completeTime && $0 >= (r.startTimes.last ?? 0) ? 1 : -1 } })
            }
        }
        return (model.parameters.values.array, objective, group.progressCalls, stepper.lastLookaheadSeconds, summed)
    }

    @Test("the next batch's teacher forward run while the reduction is in flight (train.overlap_teacher) gives the weights of the plain overlapped step bit for bit at 1-3 threads; the step uses it, lets the reduction progress after each teacher convolution, and recomputes for another batch's key")
    func teacherForwardAhead() throws {
        for width in [1, 2, 3] {
            let plain = Self.distillThree(width: width, lookahead: false)
            let ahead = Self.distillThree(width: width, lookahead: true)
            let differing = zip(plain.weights, ahead.weights).filter { $0.0 != $0.1 }.count
            #expect(differing == 0, "width \(width): \(differing) of \(plain.weights.count) weights differ")
            #expect(plain.objective.preparedUsed == 0 && ahead.objective.preparedUsed == 2, "width \(width): used \(ahead.objective.preparedUsed)")
            #expect(ahead.lastAhead == nil, "the last step had no lookahead")
            // Every bucket summed after the last one started and before the step's wait (`summedTime`).
            #expect(ahead.summed.prefix(2).allSatisfy { $0 == 1 }, "width \(width): \(ahead.summed)")
            if width == 1 {
                // One progress call per convolution + norm of each teacher forward done ahead (the backward's reports come on top).
                let teacher = ResNet(.paper(classes: 3, planes: [16, 32, 32], blocks: [1, 2, 1], groups: 8), seed: 8)
                var convs = 0
                teacher.forwardProgress = { convs += 1 }
                let x = [Float](repeating: 0.1, count: 3 * 32 * 32)
                x.withUnsafeBufferPointer { _ = teacher.forward($0.baseAddress!, shape: NCHW(1, 3, 32, 32), training: false) }
                #expect(convs == 1 + 2 * 4 + 2, "stem, two per block, two downsamples: \(convs)")
                #expect(ahead.progress - plain.progress == 2 * convs, "\(ahead.progress - plain.progress) more progress calls")
            }
            // Prepared for a key no step trains: recomputed, and still the same weights.
            let stale = Self.distillThree(width: width, lookahead: true, lookaheadKeys: [7, 2])
            #expect(stale.objective.preparedUsed == 1)
            #expect(zip(plain.weights, stale.weights).allSatisfy { $0.0 == $0.1 }, "width \(width): a stale teacher output was used")
        }
    }

    @Test("bench-step --overlap --overlap-teacher: the profile counts the next batch's teacher forward after backward (buckets ready before the step's end, teacher_ahead_ms), and the scaling model reads it; without --overlap the flag is refused")
    func benchStepTeacherAheadProfile() throws {
        let bin = try histodistillBinary()
        let common = ["bench-step", "--resolution", "16", "--teacher-resolution", "128", "--batch", "4", "--steps", "3", "--reps", "1",
                      "--warmup", "1", "--threads", "1", "--overlap", "--json"]
        func profile(_ extra: [String]) throws -> [String: Any] {
            let r = try run([bin] + common + extra)
            #expect(r.status == 0, "\(r.stderr)")
            let line = r.stdout.split(separator: "\n").first { $0.hasPrefix("{") } ?? ""
            let json = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            return try #require(json?["overlap"] as? [String: Any])
        }
        let plain = try profile([]), ahead = try profile(["--overlap-teacher"])
        let plainLast = try #require((plain["ready_fraction"] as? [Double])?.last)
        let aheadLast = try #require((ahead["ready_fraction"] as? [Double])?.last)
        let aheadMs = try #require(ahead["teacher_ahead_ms"] as? Double), computeMs = try #require(ahead["compute_ms"] as? Double)
        #expect(plain["teacher_ahead_ms"] == nil && plainLast > 0.99, "last bucket at \(plainLast) without the teacher ahead")
        // The last bucket is ready before the next teacher's forward, which ends the step's compute (medians of 3 steps:
        // half its share as the margin).
        #expect(aheadMs > 0 && aheadMs < computeMs && aheadLast < 1 - 0.5 * aheadMs / computeMs,
                "last bucket at \(aheadLast); teacher \(aheadMs) of \(computeMs) ms")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-ahead-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: dir) }
        try JSONSerialization.data(withJSONObject: ["overlap": ahead]).write(to: dir)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("cluster/scaling_model.py")
        if (try? run(["python3", "--version"]))?.status == 0 {
            let m = try run(["python3", script.path, "--rank-images-per-second", "300", "--overlap", dir.path])
            #expect(m.status == 0 && m.stdout.contains("overlapped with backward and the next batch's teacher forward"), "\(m.stdout) \(m.stderr)")
        }
        let refused = try run([bin, "bench-step", "--overlap-teacher", "--teacher-resolution", "64"])
        #expect(refused.status != 0 && refused.stderr.contains("--overlap-teacher needs --overlap and --teacher-resolution"), "\(refused.stderr)")
    }

    @Test("no tile on any rank: no reduction; a reduction whose model never reported (a rank without tiles) sends every bucket in complete()")
    func emptyRankSendsEveryBucket() throws {
        let model = ResNet(.paper(classes: 3, planes: [16, 32], blocks: [1, 1], groups: 8), seed: 1)
        let group = TwinRanksGroup()
        group.base = model.parameters.gradients!.pointer
        let stepper = DataParallelStep(objective: SupervisedStep(model: model), group: group)
        stepper.overlapReduction = true
        stepper.bucketElements = 2000
        let optimizer = Optimizer(.adam(), count: model.parameterCount)
        let image = Buffer<Float>([0])
        let step = try [Int32(0)].withUnsafeBufferPointer { l in
            try stepper.step(StepInput(images: image.pointer, edge: 32, teacherImages: nil, teacherEdge: 32, labels: l.baseAddress!, count: 0),
                             optimizer: optimizer, lr: 1e-3)
        }
        #expect(step.updated == false && group.started.isEmpty && stepper.lastReduction == nil)
        // What a rank without tiles does while others have some: its objective zeroes the gradient and runs no backward.
        let reduction = OverlappedGradientReduction(group: group, gradients: model.parameters.gradients!.pointer,
                                                    buckets: stepper.gradientBuckets, scale: 1)
        model.parameters.zeroGradients()
        reduction.attach([model])
        try reduction.complete()
        #expect(group.started == reduction.buckets && reduction.buckets.count >= 3)
        #expect(reduction.buckets == OverlappedGradientReduction.buckets(count: model.parameterCount, bucketElements: 2000,
                                                                         boundaries: model.gradientReadyOffsets))
        #expect(model.gradientReady == nil, "complete() detaches from the model")
    }

    @Test("the scaling model with overlap: a bucket ready at the end costs what the reduction after backward does, one ready halfway is hidden, two buckets pipeline, bfloat16 halves the bytes (hand-computed); a missing profile is one clear line")
    func scalingModelOverlap() throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("cluster/scaling_model.py")
        guard (try? run(["python3", "--version"]))?.status == 0 else {
            print("skipped: python3 is not installed")
            return
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-scaling-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        /// The 8-rank cell of the weak-scaling row of a 1.25 GB/s, zero-latency link, for a rank at 100 img/s (T_c = 320 ms).
        func cell(_ extra: [String], profile: (mb: [Double], ready: [Double])? = nil) throws -> String {
            var args = ["python3", script.path, "--rank-images-per-second", "100", "--network", "link=10,1.0,0"] + extra
            if let profile {
                let file = dir.appendingPathComponent("profile-\(UUID().uuidString).json")
                try "{\"overlap\": {\"bucket_mb\": \(profile.mb), \"ready_fraction\": \(profile.ready)}}".write(to: file, atomically: true, encoding: .utf8)
                args += ["--overlap", file.path]
            }
            let r = try run(args)
            #expect(r.status == 0, "\(r.stderr)")
            let row = r.stdout.split(separator: "\n").first { $0.hasPrefix("| link |") } ?? ""
            return row.split(separator: "|").dropFirst().first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        }
        // 2 (p-1)/p x 4 MB / 1.25 GB/s = 5.6 ms at 8 ranks: 320 / 325.6 = 98%.
        #expect(try cell(["--gradient-mb", "4"]) == "98% (5.6 ms)")
        #expect(try cell([], profile: ([4], [1.0])) == "98% (5.6 ms)")
        #expect(try cell([], profile: ([4], [0.5])) == "100% (0.0 ms)")
        // 2 MB ready at 316.8 ms ends at 319.6; the next, ready at 320, ends at 322.8: 2.8 ms left.
        #expect(try cell([], profile: ([2, 2], [0.99, 1.0])) == "99% (2.8 ms)")
        #expect(try cell(["--gradient-compression", "bf16"], profile: ([4], [1.0])) == "99% (2.8 ms)")
        #expect(try cell(["--gradient-mb", "4", "--gradient-compression", "bf16", "--compression-cost-ms", "1"]) == "99% (3.8 ms)")
        let bad = try run(["python3", script.path, "--rank-images-per-second", "100", "--overlap", dir.appendingPathComponent("missing.json").path])
        #expect(bad.status != 0 && bad.stderr.contains("missing.json") && !bad.stderr.contains("Traceback"), "\(bad.stderr)")
        for (args, named) in [(["--gradient-mb", "4", "--gradient-compression", "bf16", "--compression-cost-ms", "-1"], "--compression-cost-ms"),
                              (["--gradient-mb", "nan"], "--gradient-mb"), (["--gradient-mb", "4", "--compression-cost-ms", "1"], "--compression-cost-ms")] {
            let r = try run(["python3", script.path, "--rank-images-per-second", "100"] + args)
            #expect(r.status != 0 && r.stderr.contains(named) && !r.stderr.contains("Traceback"), "\(args): \(r.stderr)")
        }
    }

    @Test("all-reduce settings that do nothing in a launch are said once: compression or a progress thread in one process, a progress thread without the overlap")
    func inertSettingsAreNoted() {
        var c = RunConfig()
        #expect(SupervisedTrainer.allReduceNotes(c, ranks: 1).isEmpty && SupervisedTrainer.allReduceNotes(c, ranks: 2).isEmpty)
        c.gradientCompression = .bf16
        #expect(SupervisedTrainer.allReduceNotes(c, ranks: 1).first?.contains("train.gradient_compression has no effect in a single process") == true)
        #expect(SupervisedTrainer.allReduceNotes(c, ranks: 2).isEmpty)
        c.allreduceProgressMicroseconds = 50
        #expect(SupervisedTrainer.allReduceNotes(c, ranks: 1).first?.contains("train.gradient_compression and train.allreduce_progress_us have") == true)
        c.overlapAllreduce = false
        #expect(SupervisedTrainer.allReduceNotes(c, ranks: 3).first?.contains("train.overlap_allreduce: false") == true)
    }
}
