// The training recipe's options: the moving average of the weights, checked against a hand computation and
// through checkpoints and resume.
import Foundation
import Testing
@testable import Layers
import SafeTensors
import TensorCore
@testable import TileShards
@testable import Training

@Suite("Weight EMA")
struct EMATests {
    /// Every float of a safetensors file, tensor by tensor in file order.
    static func weights(_ url: URL) throws -> [String: [Float]] {
        Dictionary(uniqueKeysWithValues: try SafeTensorsFile(contentsOf: url).tensors.map { ($0.name, $0.floats) })
    }

    @Test("WeightEMA: the first update copies, later ones lerp by 1 - decay, for parameters and buffers (a Double hand computation)")
    func handComputation() {
        var mc = ResNetConfig.resnet18(classes: 3)
        mc.planes = [4, 4]; mc.blocks = [1, 1]; mc.stages = 2
        let model = ResNet(mc, seed: 1), shadow = ResNet(mc, seed: 2)
        #expect(model.buffers.layout.count > 0, "BatchNorm buffers are averaged too")
        let ema = WeightEMA(decay: 0.8, shadow: shadow, source: model)
        let n = model.parameterCount, nb = model.buffers.layout.count
        func snapshot(_ m: any Module) -> [Double] {
            (0..<n).map { Double(m.parameters.values.pointer[$0]) } + (0..<nb).map { Double(m.buffers.values.pointer[$0]) }
        }
        #expect(snapshot(shadow) == snapshot(model), "starts as a copy (AveragedModel's deepcopy)")
        var expected: [Double] = []
        var g = SplitMix64(seed: 3)
        for t in 0..<4 {
            for i in 0..<n { model.parameters.values.pointer[i] += g.uniform(-0.5, 0.5) }
            for i in 0..<nb { model.buffers.values.pointer[i] += g.uniform(0, 0.5) }
            let theta = snapshot(model)
            expected = t == 0 ? theta : zip(expected, theta).map { 0.8 * $0 + 0.2 * $1 }
            ema.update(from: model)
            let got = snapshot(shadow)
            let worst = zip(got, expected).map { abs($0 - $1) }.max()!
            #expect(worst < 1e-6, "update \(t + 1): largest difference \(worst)")
        }
        #expect(ema.updates == 4)
        #expect(zip(snapshot(shadow), snapshot(model)).map { abs($0 - $1) }.max()! > 0.05, "the average lags the model")
    }

    @Test("train.ema_decay: each checkpoint's ema.safetensors is the average of the models so far; resume continues it bit for bit; best.safetensors is the average")
    func throughTraining() throws {
        let width = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: width) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-ema-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        func config(_ out: String) throws -> RunConfig {
            var c = try tinyConfig(shards: shards, output: dir.appendingPathComponent(out), maxSteps: 5)
            c.emaDecay = 0.7; c.checkpointEvery = 1; c.keep = 10; c.valEvery = 5
            return c
        }
        let straight = try SupervisedTrainer(config: try config("a"), writer: "test")
        try straight.run(resume: false)
        let checkpoints = straight.store.completeCheckpoints()
        #expect(checkpoints.count == 5)
        var average: [String: [Double]] = [:]
        for (t, checkpoint) in checkpoints.enumerated() {
            let theta = try Self.weights(checkpoint.appendingPathComponent("model.safetensors"))
            for (name, v) in theta {
                let x = v.map(Double.init)
                average[name] = t == 0 ? x : zip(average[name]!, x).map { 0.7 * $0 + 0.3 * $1 }
            }
            let ema = try Self.weights(checkpoint.appendingPathComponent("ema.safetensors"))
            #expect(Set(ema.keys) == Set(theta.keys))
            let worst = ema.map { name, v in zip(v, average[name]!).map { abs(Double($0) - $1) }.max() ?? 0 }.max()!
            #expect(worst < 1e-5, "step \(t + 1): largest difference from the hand average \(worst)")
            #expect(try straight.store.state(of: checkpoint).emaUpdates == t + 1)
        }
        // Validation (step 5) ran on the average, and best.safetensors holds it.
        let last = try Self.weights(checkpoints.last!.appendingPathComponent("ema.safetensors"))
        let best = try SafeTensorsFile(contentsOf: straight.runDirectory.bestWeights)
        #expect(best.metadata["ema_decay"] == "0.7" && best.metadata["ema_updates"] == "5")
        #expect(best.tensors.allSatisfy { $0.floats == last[$0.name] })
        #expect(straight.runDirectory.preferredWeights() == straight.runDirectory.bestWeights)
        // Stopped after 2 steps and resumed: the average continues as if uninterrupted.
        let first = try SupervisedTrainer(config: try config("b"), writer: "test")
        try first.run(resume: false, stopAfter: 2)
        let resumed = try SupervisedTrainer(config: try config("b"), writer: "test")
        try resumed.run(resume: true)
        let resumedLast = try Self.weights(resumed.store.completeCheckpoints().last!.appendingPathComponent("ema.safetensors"))
        #expect(resumedLast == last)
        #expect(resumed.history.map(\.valAccuracy) == Array(straight.history.suffix(3)).map(\.valAccuracy))
        // Without validation the newest checkpoint's average is the run's preferred weights.
        try FileManager.default.removeItem(at: resumed.runDirectory.bestWeights)
        #expect(resumed.runDirectory.preferredWeights()?.lastPathComponent == "ema.safetensors")
    }

    @Test("train.ema_decay longer than the run is warned about with the share of the first weights and a decay that fits")
    func horizonWarning() throws {
        // 0.998^277 = 0.574; 0.01^(1/277) = 0.98351 (2 epochs of 139 steps, the quick start's teacher).
        let short = try #require(SupervisedTrainer.emaHorizonWarning(decay: 0.998, steps: 278))
        #expect(short.contains("train.ema_decay 0.998") && short.contains("278 optimizer steps") && short.contains("57%") && short.contains("0.983"))
        #expect(SupervisedTrainer.emaHorizonWarning(decay: 0.998, steps: 1390) == nil, "0.998^1389 = 6%: long enough")
        #expect(SupervisedTrainer.emaHorizonWarning(decay: 0, steps: 10) == nil)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-ema-warn-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        var c = try tinyConfig(shards: try trainingShards(dir), output: dir.appendingPathComponent("run"), maxSteps: 5)
        c.emaDecay = 0.9
        #expect(try SupervisedTrainer(config: c, writer: "test").notes.contains { $0.contains("train.ema_decay 0.9 ") && $0.contains("66%") })
        c.emaDecay = 0.3
        #expect(try SupervisedTrainer(config: c, writer: "test").notes.allSatisfy { !$0.contains("ema_decay") })
        // Partly labeled tiles under cross-entropy: only global batches holding a labeled tile update, 1 - (1 - p)^batch
        // of the steps (1 labeled in 4, batch 4: 1 - 0.75^4 = 0.6836 of 100 steps = 68).
        c.batchSize = 4
        #expect(SupervisedTrainer.expectedUpdates(c, tiles: 400, labeled: 100) == Int((Double(SupervisedTrainer.totalSteps(c, tiles: 400)) * (1 - 0.31640625)).rounded()))
        #expect(SupervisedTrainer.expectedUpdates(c, tiles: 400, labeled: 400) == SupervisedTrainer.totalSteps(c, tiles: 400))
        let partly = try #require(SupervisedTrainer.emaHorizonWarning(decay: 0.998, steps: 68, estimated: true))
        #expect(partly.contains("the run makes about 68 optimizer updates (a global batch without a labeled tile makes none)") && partly.contains("87%"), "\(partly)")
    }

    @Test("train.ema_warmup: the decay ramps up as timm ModelEmaV3 (1 - (1 + n)^(-2/3), capped at ema_decay), through the trainer's checkpoints; short runs are no longer warned about")
    func warmup() throws {
        // 2^(-2/3) = 0.629961, 3^(-2/3) = 0.480750, 1001^(-2/3) = 0.0099933 (by hand).
        #expect(WeightEMA.decay(update: 0, decay: 0.999, warmup: true) == 0, "the first update copies")
        #expect(abs(WeightEMA.decay(update: 1, decay: 0.999, warmup: true) - 0.370039) < 1e-5)
        #expect(abs(WeightEMA.decay(update: 2, decay: 0.999, warmup: true) - 0.519250) < 1e-5)
        #expect(abs(WeightEMA.decay(update: 1000, decay: 0.999, warmup: true) - 0.990007) < 1e-5)
        #expect(WeightEMA.decay(update: 2, decay: 0.5, warmup: true) == 0.5, "capped at ema_decay")
        #expect(WeightEMA.decay(update: 2, decay: 0.999, warmup: false) == 0.999)
        // 278 steps with warm-up: the first weights' share is tiny; without it 57% (see horizonWarning).
        #expect(WeightEMA.firstWeightsShare(updates: 278, decay: 0.998, warmup: true) < 1e-6)
        #expect(SupervisedTrainer.emaHorizonWarning(decay: 0.998, warmup: true, steps: 278) == nil)

        let width = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: width) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-ema-warmup-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        var c = try tinyConfig(shards: try trainingShards(dir), output: dir.appendingPathComponent("run"), maxSteps: 4)
        c.emaDecay = 0.45; c.emaWarmup = true; c.checkpointEvery = 1; c.keep = 10; c.valEvery = 4
        let trainer = try SupervisedTrainer(config: c, writer: "test")
        try trainer.run(resume: false)
        let checkpoints = trainer.store.completeCheckpoints()
        #expect(checkpoints.count == 4)
        let decays = [0, 0.370039, 0.45, 0.45]   // update 2 would be 0.519, capped at 0.45
        var average: [String: [Double]] = [:]
        for (t, checkpoint) in checkpoints.enumerated() {
            for (name, v) in try Self.weights(checkpoint.appendingPathComponent("model.safetensors")) {
                let x = v.map(Double.init)
                average[name] = t == 0 ? x : zip(average[name]!, x).map { decays[t] * $0 + (1 - decays[t]) * $1 }
            }
            let ema = try Self.weights(checkpoint.appendingPathComponent("ema.safetensors"))
            let worst = ema.map { name, v in zip(v, average[name]!).map { abs(Double($0) - $1) }.max() ?? 0 }.max()!
            #expect(worst < 1e-5, "step \(t + 1): largest difference from the ramped hand average \(worst)")
        }
        #expect(try SafeTensorsFile(contentsOf: trainer.runDirectory.bestWeights).metadata["ema_warmup"] == "true")
    }

    @Test("schedule.warmup_epochs sizes the warm-up from the steps per epoch; refused beside warmup_steps, with a schedule that has no warm-up, and ema_warmup without an average")
    func warmupEpochs() throws {
        let c = try RunConfig.parse("data: {train: x}\nschedule: {name: cosine, warmup_epochs: 0.1}\ntrain: {epochs: 2}", source: "c.yaml")
        #expect(c.warmupSteps(stepsPerEpoch: 139) == 14, "0.1 x 139 = 13.9, rounded")
        #expect(c.lrSchedule(stepsPerEpoch: 139) == .cosine(warmupSteps: 14, totalSteps: 278, minLR: 0))
        let one = try RunConfig.parse("data: {train: x}\nschedule: {name: cosine, warmup_epochs: 1}", source: "c.yaml")
        #expect(one.warmupSteps(stepsPerEpoch: 36) == 36 && one.warmupSteps(stepsPerEpoch: 139) == 139)
        let steps = try RunConfig.parse("data: {train: x}\nschedule: {name: cosine, warmup_steps: 7}", source: "c.yaml")
        #expect(steps.warmupSteps(stepsPerEpoch: 139) == 7)
        for (yaml, key) in [("schedule: {name: cosine, warmup_steps: 5, warmup_epochs: 1}", "warmup_epochs are both set"),
                            ("schedule: {name: exponential, warmup_epochs: 1}", "schedule.warmup_epochs applies to the cosine schedule only"),
                            ("schedule: {name: cosine, warmup_epochs: -1}", "schedule.warmup_epochs must be 0 or more"),
                            ("train: {ema_warmup: true}", "train.ema_warmup has no effect without an average")] {
            do {
                _ = try RunConfig.parse("data: {train: x}\n" + yaml, source: "c.yaml")
                Issue.record("accepted: \(yaml)")
            } catch let e as ConfigError {
                #expect(e.message.contains(key) && e.message.contains("c.yaml"), "\(yaml): \(e.message)")
            }
        }
    }

    @Test("train.ema_decay outside [0, 1) is refused naming the key")
    func badDecay() throws {
        for bad in ["1", "-0.1", "1.5"] {
            #expect(throws: ConfigError.self) { try RunConfig.parse("data: {train: x}\ntrain: {ema_decay: \(bad)}", source: "c.yaml") }
        }
        do { _ = try RunConfig.parse("data: {train: x}\ntrain: {ema_decay: 1}", source: "c.yaml") } catch let e as ConfigError {
            #expect(e.message.contains("train.ema_decay") && e.message.contains("c.yaml"))
        }
        #expect(try RunConfig.parse("data: {train: x}\ntrain: {ema_decay: 0.999}", source: "c.yaml").emaDecay == 0.999)
    }
}

/// A teacher (two stages of 32 planes, full resolution) trained for `steps` steps on `shards`, in `dir/teacher`.
func tinyTeacher(shards: URL, in dir: URL, steps: Int) throws -> URL {
    let teacherDir = dir.appendingPathComponent("teacher")
    try SupervisedTrainer(config: try RunConfig.parse("""
    run: {output: \(teacherDir.path), seed: 1}
    data: {train: \(shards.path), val: \(shards.path)}
    model: {planes: [32, 32], blocks: [1, 1]}
    train: {max_steps: \(steps), batch_size: 4}
    """, source: "teacher.yaml"), writer: "test").run(resume: false)
    return teacherDir
}

@Suite("Several students in one pass")
struct MultiStudentTests {
    @Test("students at 2x and 4x distilled in one pass equal their separate runs bit for bit, with one teacher forward per batch (also with the next batch's forward run ahead on 2 ranks); resume; refusals")
    func onePass() throws {
        let width = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: width) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-multi-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let teacherDir = try tinyTeacher(shards: shards, in: dir, steps: 6)
        // Two students that differ in everything a student may: view, model width, optimizer, objective, average.
        func student(_ factor: Int, _ out: String, seed: Int = 2) throws -> RunConfig {
            try RunConfig.parse("""
            run: {name: s\(factor), output: \(dir.appendingPathComponent(out).path), seed: \(seed)}
            data: {train: \(shards.path), val: \(shards.path), input_factor: \(factor)}
            augment: {brightness: 0.2, crop_scale: 0.6, blur_probability: 0.5, blur_sigma: 1}
            model: {planes: [\(factor == 2 ? 64 : 32), 32], blocks: [1, 1]}
            optimizer: {name: \(factor == 2 ? "adam" : "adamw"), lr: \(factor == 2 ? 0.002 : 0.001)}
            train: {epochs: 2, max_steps: 8, batch_size: 4, checkpoint_every: 3\(factor == 4 ? ", ema_decay: 0.8" : "")}
            distill: {teacher_run: \(teacherDir.path), kd_weight: 1, temperature: \(factor == 2 ? 4 : 2), pixel_weight: 0.5, pixel_resize: maxpool+bicubic}
            """, source: "s\(factor).yaml")
        }
        var separate: [SupervisedTrainer] = []
        for f in [2, 4] {
            let t = try SupervisedTrainer(config: try student(f, "alone-\(f)"), writer: "test")
            try t.run(resume: false)
            separate.append(t)
        }
        func weights(_ t: SupervisedTrainer) throws -> Data {
            try Data(contentsOf: t.store.completeCheckpoints().last!.appendingPathComponent("model.safetensors"))
        }
        let pass = try MultiStudentDistiller(configs: [(try student(2, "pass-2"), "s2.yaml"), (try student(4, "pass-4"), "s4.yaml")], writer: "test")
        let outcomes = try pass.run(resume: false)
        #expect(outcomes == [.finished, .finished])
        #expect(pass.teacher.forwards == 8, "one teacher forward per batch, not per student: \(pass.teacher.forwards)")
        for (a, b) in zip(separate, pass.students) {
            #expect(a.history.map(\.loss) == b.history.map(\.loss), "\(a.config.name): \(a.history.map(\.loss)) vs \(b.history.map(\.loss))")
            #expect(a.history.map(\.valAccuracy) == b.history.map(\.valAccuracy))
            #expect(try weights(a) == weights(b))
        }
        #expect(Set(separate[0].history.map(\.loss)) != Set(separate[1].history.map(\.loss)), "the students differ")
        // On "2 ranks" (two identical ranks in this process) the last student's step runs the next batch's teacher forward
        // during its all-reduce (train.overlap_teacher) for both: still one forward per batch, the same weights as without.
        var twins: [MultiStudentDistiller] = []
        for on in [true, false] {
            let configs = try [2, 4].map { f in
                var c = try student(f, "twins-\(on)-\(f)")
                c.overlapTeacher = on
                return (c, "s\(f).yaml")
            }
            let p = try MultiStudentDistiller(configs: configs, writer: "test", group: TwinRanksGroup())
            #expect(try p.run(resume: false) == [.finished, .finished])
            twins.append(p)
        }
        #expect(twins[0].teacher.forwards == 8 && twins[1].teacher.forwards == 8, "\(twins[0].teacher.forwards), \(twins[1].teacher.forwards)")
        // Ahead whenever the loader already had the next batch (not the last step): the students use it alike.
        let used = twins[0].students.map(\.teacherForwardsAhead)
        #expect(used[0] == used[1] && (1...7).contains(used[0]) && twins[1].students.map(\.teacherForwardsAhead) == [0, 0], "\(used)")
        for (a, b) in zip(twins[0].students, twins[1].students) { #expect(try weights(a) == weights(b)) }
        // Stopped after 3 steps and resumed as a pass: still the separate runs' losses.
        let first = try MultiStudentDistiller(configs: [(try student(2, "resumed-2"), "s2.yaml"), (try student(4, "resumed-4"), "s4.yaml")], writer: "test")
        #expect(try first.run(resume: false, stopAfter: 3) == [.paused(step: 3), .paused(step: 3)])
        let second = try MultiStudentDistiller(configs: [(try student(2, "resumed-2"), "s2.yaml"), (try student(4, "resumed-4"), "s4.yaml")], writer: "test")
        try second.run(resume: true)
        for (i, a) in separate.enumerated() {
            #expect(first.students[i].history.map(\.loss) + second.students[i].history.map(\.loss) == a.history.map(\.loss))
        }
        // Students whose checkpoints are at different steps cannot continue together.
        try SupervisedTrainer(config: try student(2, "apart-2"), writer: "test").run(resume: false, stopAfter: 3)
        try SupervisedTrainer(config: try student(4, "apart-4"), writer: "test").run(resume: false, stopAfter: 6)
        let apart = try MultiStudentDistiller(configs: [(try student(2, "apart-2"), "s2.yaml"), (try student(4, "apart-4"), "s4.yaml")], writer: "test")
        let e1 = #expect(throws: TrainingError.self) { try apart.run(resume: true) }
        #expect(e1?.message.contains("different steps") == true && e1?.message.contains("step 3") == true && e1?.message.contains("step 6") == true, "\(String(describing: e1))")
        // Configs that disagree on the data stream, or share a run directory, are refused naming the key or path.
        let e2 = #expect(throws: TrainingError.self) {
            _ = try MultiStudentDistiller(configs: [(try student(2, "x-2"), "s2.yaml"), (try student(4, "x-4", seed: 5), "s4.yaml")], writer: "test")
        }
        #expect(e2?.message.contains("run.seed") == true && e2?.message.contains("s4.yaml") == true, "\(String(describing: e2))")
        let e3 = #expect(throws: TrainingError.self) {
            _ = try MultiStudentDistiller(configs: [(try student(2, "same"), "s2.yaml"), (try student(4, "same"), "s4.yaml")], writer: "test")
        }
        #expect(e3?.message.contains("both write to") == true, "\(String(describing: e3))")
        // A student whose last feature map has other channels than the teacher's cannot take the pixel loss: an error, not a trap.
        var wide = try student(2, "wide")
        wide.planes = [32, 64]
        let e4 = #expect(throws: TrainingError.self) { _ = try SupervisedTrainer(config: wide, writer: "test") }
        #expect(e4?.message.contains("distill.pixel_weight") == true && e4?.message.contains("64") == true && e4?.message.contains("32") == true, "\(String(describing: e4))")
        wide.objective.pixelWeight = 0
        _ = try SupervisedTrainer(config: wide, writer: "test")
    }
}

@Suite("Several students in one pass: command line")
struct MultiStudentCommandTests {
    @Test("distill --config A B --runs-dir DIR: one run directory per student, one teacher forward per batch; configs that disagree: one clear line")
    func command() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-multicli-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let teacherDir = try tinyTeacher(shards: shards, in: dir, steps: 4)
        func write(_ name: String, factor: Int, seed: Int = 2) throws -> String {
            let url = dir.appendingPathComponent("\(name).yaml")
            try """
            run: {name: \(name), seed: \(seed)}
            data: {train: \(shards.path), val: \(shards.path), input_factor: \(factor)}
            model: {planes: [32, 32], blocks: [1, 1]}
            train: {max_steps: 3, batch_size: 4}
            distill: {teacher_run: \(teacherDir.path)}
            """.write(to: url, atomically: true, encoding: .utf8)
            return url.path
        }
        let bin = try histodistillBinary()
        let a = try write("s2", factor: 2), b = try write("s4", factor: 4)
        let runs = dir.appendingPathComponent("runs")
        let r = try run([bin, "distill", "--config", a, b, "--runs-dir", runs.path, "--set", "train.threads=1"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout.contains("teacher forwards: 3 for 2 students"), "stdout: \(r.stdout)")
        for name in ["s2", "s4"] {
            #expect(FileManager.default.fileExists(atPath: runs.appendingPathComponent("\(name)/best.safetensors").path), "\(name)")
            let config = try String(contentsOf: runs.appendingPathComponent("\(name)/config.yaml"), encoding: .utf8)
            #expect(config.contains("input_factor: \(name == "s2" ? 2 : 4)"))
        }
        let c = try write("s8", factor: 4, seed: 9)
        let bad = try run([bin, "distill", "--config", a, c, "--runs-dir", dir.appendingPathComponent("runs2").path])
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("run.seed") && bad.stderr.contains(c) && !bad.stderr.contains("Fatal error"), "stderr: \(bad.stderr)")
    }
}

@Suite("Inference pipeline")
struct InferencePipelineTests {
    let mean: [Float] = [0.4, 0.4, 0.4], std: [Float] = [0.25, 0.25, 0.25]

    /// The 24 training tiles packed in `dir` and an untrained two-stage ResNet with `classes` outputs.
    func fixture(_ dir: URL, classes: Int, seed: UInt64) throws -> (ShardDataset, ResNet) {
        var mc = ResNetConfig.paper(classes: classes)
        mc.planes = [32, 32]; mc.blocks = [1, 1]; mc.stages = 2
        return (try ShardDataset(directory: try trainingShards(dir)), ResNet(mc, seed: seed))
    }

    @Test("inference of a student's view prefetches batches in order and skips the full-resolution tiles: the same probabilities as one batch made with them")
    func prefetchedLowResolution() throws {
        let width = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: width) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-infer-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let (dataset, model) = try fixture(dir, classes: 2, seed: 4)
        // 24 tiles in batches of 5: four full batches and a partial one, two decoding threads.
        let p = try Inference.run(model: model, dataset: dataset, settings: InferenceSettings(inputFactor: 4, mean: mean, std: std, batchSize: 5, workers: 2))
        #expect(p.samples == Array(0..<24))
        // The reference: one batch of every tile, full-resolution tiles kept, then the model.
        let maker = try BatchMaker(dataset: dataset, transform: PairedTransform(augment: .none, factor: 4, mean: mean, std: std), seed: 0,
                                   globalBatch: 24, rank: 0, worldSize: 1, withLowResolution: true, shuffle: false)
        let all = try maker.makeBatchAt(plan: EpochPlan(count: 24, seed: 0, epoch: 0, globalBatch: 24, shuffle: false), range: 0..<24)
        #expect(all.hr.count == 24 * 3 * 32 * 32 && all.lr.count == 24 * 3 * 8 * 8)
        var scratchless = maker
        scratchless.keepHighResolution = false
        let lean = try scratchless.makeBatchAt(plan: EpochPlan(count: 24, seed: 0, epoch: 0, globalBatch: 24, shuffle: false), range: 0..<24)
        #expect(lean.hr.isEmpty && lean.lr == all.lr, "the view is the same without keeping the full-resolution tiles")
        let out = all.lr.withUnsafeBufferPointer { model.forward($0.baseAddress!, shape: NCHW(24, 3, 8, 8), training: false) }
        var probs = [Float](repeating: 0, count: 48)
        Softmax.forward(output: &probs, input: out.logits!.data, rows: 24, cols: 2)
        for t in 0..<24 {
            #expect(abs(p.probabilities[t][0] - Double(probs[2 * t])) < 1e-6 && abs(p.probabilities[t][1] - Double(probs[2 * t + 1])) < 1e-6, "tile \(t)")
        }
    }
}

extension InferencePipelineTests {
    @Test("test-time augmentation: each tile's probabilities are the mean softmax over its flips or its 8 symmetries, at the model's own resolution",
          arguments: [TestTimeAugmentation.flips, .dihedral])
    func testTimeAugmentation(_ tta: TestTimeAugmentation) throws {
        let width = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: width) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-tta-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let (dataset, model) = try fixture(dir, classes: 3, seed: 6)
        var settings = InferenceSettings(inputFactor: 2, mean: mean, std: std, batchSize: 5)
        let plain = try Inference.run(model: model, dataset: dataset, settings: settings)
        settings.testTimeAugmentation = tta
        let p = try Inference.run(model: model, dataset: dataset, settings: settings)
        #expect(p.samples == Array(0..<24) && p.labels == plain.labels)
        // The reference: every tile's 16 px view in one batch, each symmetry applied, the model, softmax, the mean.
        let maker = try BatchMaker(dataset: dataset, transform: PairedTransform(augment: .none, factor: 2, mean: mean, std: std), seed: 0,
                                   globalBatch: 24, rank: 0, worldSize: 1, withLowResolution: true, shuffle: false)
        let lr = try maker.makeBatchAt(plan: EpochPlan(count: 24, seed: 0, epoch: 0, globalBatch: 24, shuffle: false), range: 0..<24).lr
        var expected = [Double](repeating: 0, count: 24 * 3)
        for view in tta.views {
            var turned = lr
            lr.withUnsafeBufferPointer { x in turned.withUnsafeMutableBufferPointer { view.apply(x.baseAddress!, into: $0.baseAddress!, images: 24, channels: 3, edge: 16) } }
            let out = turned.withUnsafeBufferPointer { model.forward($0.baseAddress!, shape: NCHW(24, 3, 16, 16), training: false) }
            var probs = [Float](repeating: 0, count: 24 * 3)
            Softmax.forward(output: &probs, input: out.logits!.data, rows: 24, cols: 3)
            for j in probs.indices { expected[j] += Double(probs[j]) / Double(tta.views.count) }
        }
        var moved = 0.0
        for t in 0..<24 {
            for c in 0..<3 {
                #expect(abs(p.probabilities[t][c] - expected[t * 3 + c]) < 1e-6, "tile \(t) class \(c)")
                moved = max(moved, abs(p.probabilities[t][c] - plain.probabilities[t][c]))
            }
        }
        #expect(moved > 1e-4, "an untrained model is not invariant: the views change the probabilities")
        let labels = p.labels.map(Int.init).filter { $0 >= 0 }
        let loss = zip(p.probabilities, p.labels).filter { $0.1 >= 0 }.map { -Foundation.log($0.0[Int($0.1)]) }.reduce(0, +) / Double(labels.count)
        #expect(abs(p.meanLoss - loss) < 1e-9 && p.labeledCount == 24, "the loss is of the averaged probabilities")
    }
}

@Suite("Export with a config's augmentation")
struct ExportConfigTests {
    @Test("export --config takes the config's input factor and augmentation: crop and blur change the tile, a bad config is one clear line")
    func exportWithConfig() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-export-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let config = dir.appendingPathComponent("aug.yaml")
        try "data: {train: \(shards.path), input_factor: 2}\naugment: {crop_scale: 0.4, blur_probability: 1, blur_sigma: 2}\n"
            .write(to: config, atomically: true, encoding: .utf8)
        let bin = try histodistillBinary()
        let plain = try run([bin, "export", shards.path, "-o", dir.appendingPathComponent("plain").path, "--ids", "0", "--factor", "2"])
        let augmented = try run([bin, "export", shards.path, "-o", dir.appendingPathComponent("aug").path, "--ids", "0", "--config", config.path])
        #expect(plain.status == 0 && augmented.status == 0, "\(plain.stderr) \(augmented.stderr)")
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("aug").path)
        #expect(names.count == 1 && names[0].hasSuffix("-x2.png"), "\(names)")
        let a = try ImageCodec.decodeFile(dir.appendingPathComponent("plain/\(names[0])")).image
        let b = try ImageCodec.decodeFile(dir.appendingPathComponent("aug/\(names[0])")).image
        #expect(a.pixels.count == b.pixels.count && a.pixels != b.pixels, "the config's crop and blur change the exported tile")
        let bad = try run([bin, "export", shards.path, "-o", dir.appendingPathComponent("bad").path, "--ids", "0", "--config", "/nonexistent.yaml"])
        #expect(bad.status != 0 && bad.stderr.contains("/nonexistent.yaml") && !bad.stderr.contains("Fatal error"), "\(bad.stderr)")
    }
}
