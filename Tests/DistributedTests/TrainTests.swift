// Training: configs with clear errors, metrics files, and resume that reproduces the uninterrupted losses bit for bit.
import Foundation
import Testing
@testable import HistoDistillCLI
@testable import Layers
import SafeTensors
import TensorCore
@testable import TileShards
@testable import Training

/// Packs 24 synthetic 32x32 tiles of two classes (the class shows in the red channel) into `dir/shards`.
func trainingShards(_ dir: URL) throws -> URL {
    for i in 0..<24 {
        let cls = i % 2 == 0 ? "a" : "b"
        let folder = dir.appendingPathComponent("in/\(cls)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        var g = SplitMix64(seed: UInt64(i))
        let px = (0..<(32 * 32 * 3)).map { k -> UInt8 in
            let noise = UInt8(truncatingIfNeeded: g.next() % 64)
            return k % 3 == 0 ? (cls == "a" ? 40 : 190) &+ noise : 100 &+ noise
        }
        try ImageCodec.writePNG(RGBImage(width: 32, height: 32, pixels: px), to: folder.appendingPathComponent("\(i).png"))
    }
    var options = PackOptions(output: dir.appendingPathComponent("shards"))
    options.targetShardBytes = 20_000
    _ = try Packer.pack(try PackPlan.imageFolder(dir.appendingPathComponent("in")), options: options)
    return dir.appendingPathComponent("shards")
}

/// Flips a byte in the middle of tile 0's frame of the first shard (by name) in `shards`; returns that shard file.
func corruptFirstTile(of shards: URL) throws -> URL {
    let first = try #require(try FileManager.default.contentsOfDirectory(atPath: shards.path).filter { $0.hasSuffix(".shard") }.sorted().first)
    let url = shards.appendingPathComponent(first)
    let entry = try ShardReader(url: url).entries[0]
    var bytes = try Data(contentsOf: url)
    bytes[Int(entry.offset) + Int(entry.compressedSize) / 2] ^= 0x5A
    try bytes.write(to: url)
    return url
}

func tinyConfig(shards: URL, output: URL, maxSteps: Int) throws -> RunConfig {
    try RunConfig.parse("""
    run: {name: t, output: \(output.path), seed: 3}
    data: {train: \(shards.path), val: \(shards.path), input_factor: 2, workers: 2}
    augment: {brightness: 0.2, hue: 0.05}
    model: {architecture: resnet-gn, planes: [32, 32], blocks: [1, 1]}
    optimizer: {name: adamw, lr: 0.003, weight_decay: 0.01}
    schedule: {name: cosine, warmup_steps: 2}
    train: {epochs: 3, max_steps: \(maxSteps), batch_size: 4, checkpoint_every: 2, keep: 2}
    """, source: "test.yaml")
}

@Suite("Training")
struct TrainTests {
    @Test("the summary line's loss: the last step's, else the last trained step's with the untrained steps after it; a run of untrained steps is warned about")
    func finalLoss() {
        func m(_ step: Int, _ loss: Float?) -> StepMetrics { StepMetrics(step: step, epoch: 0, loss: loss, lr: 1e-3, imagesPerSecond: nil, skippedTiles: 0) }
        #expect(StepMetrics.finalLossText([m(1, 0.5), m(2, 0.25)]) == "0.2500")
        #expect(StepMetrics.finalLossText([m(8, nil), m(9, 1.0721), m(10, nil), m(11, nil)]) == "1.0721 at step 9 (steps 10-11 trained nothing)")
        #expect(StepMetrics.finalLossText([m(4, nil), m(5, nil)]) == "n/a (steps 4-5 trained nothing)")
        #expect(StepMetrics.untrainedWarning([m(1, nil), m(2, 0.5)]) == nil)
        let fresh = try? #require(StepMetrics.untrainedWarning([m(1, nil), m(2, nil), m(3, nil)]))
        #expect(fresh?.hasPrefix("warning: steps 1-3 trained nothing") == true && fresh?.contains("the weights are the initial ones") == true)
        #expect(StepMetrics.untrainedWarning([m(7, nil)])?.contains("initial") == false)
        // CSV: empty cells for the loss and the speed of an untrained step.
        #expect(m(3, nil).csvRow.hasPrefix("3,0,,,,,0.001,,0,"), "\(m(3, nil).csvRow)")
    }

    @Test("stop at step 5, resume: every later loss equals the uninterrupted run's, bit for bit")
    func resumeEquivalence() throws {
        // Bit-exact comparisons need one thread width for the whole test (kernel tests vary it in parallel).
        let width = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: width) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-train-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let straight = try SupervisedTrainer(config: try tinyConfig(shards: shards, output: dir.appendingPathComponent("a"), maxSteps: 9), writer: "test")
        try straight.run(resume: false)
        let first = try SupervisedTrainer(config: try tinyConfig(shards: shards, output: dir.appendingPathComponent("b"), maxSteps: 9), writer: "test")
        try first.run(resume: false, stopAfter: 5)
        let resumed = try SupervisedTrainer(config: try tinyConfig(shards: shards, output: dir.appendingPathComponent("b"), maxSteps: 9), writer: "test")
        try resumed.run(resume: true)
        #expect(straight.history.count == 9 && first.history.count == 5 && resumed.history.count == 4)
        #expect(first.history.map(\.loss) == Array(straight.history.prefix(5)).map(\.loss))
        #expect(resumed.history.map(\.loss) == Array(straight.history.suffix(4)).map(\.loss), "resumed \(resumed.history.map(\.loss)) vs \(straight.history.suffix(4).map(\.loss))")
        #expect(resumed.history.first?.step == 6)
        // The resumed run knows the kept weights' step, as the uninterrupted one does (its summary line names it).
        #expect(resumed.bestStep != nil && resumed.bestStep == straight.bestStep, "\(String(describing: resumed.bestStep)) vs \(String(describing: straight.bestStep))")
        let kept = try SupervisedTrainer(config: try tinyConfig(shards: shards, output: dir.appendingPathComponent("c"), maxSteps: 9), writer: "test")
        try kept.run(resume: false, stopAfter: 6)
        let again = try SupervisedTrainer(config: try tinyConfig(shards: shards, output: dir.appendingPathComponent("c"), maxSteps: 9), writer: "test")
        try again.run(resume: true, stopAfter: 6)
        #expect(kept.bestStep == 6 && again.bestStep == 6, "read from best.safetensors on resume: \(String(describing: again.bestStep))")
        #expect(Set(straight.history.map(\.loss)).count > 1, "losses change from step to step")
        // Validation at each epoch end (6 steps per epoch) and the metrics files.
        #expect(straight.history[5].valAccuracy != nil)
        let jsonl = try String(contentsOf: dir.appendingPathComponent("a/metrics.jsonl"), encoding: .utf8)
        #expect(jsonl.split(separator: "\n").count == 9)
        let csv = try String(contentsOf: dir.appendingPathComponent("b/metrics.csv"), encoding: .utf8)
        #expect(csv.split(separator: "\n").count == 10, "header + 5 + 4 rows")
        #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("a/best.safetensors").path))
        #expect(try String(contentsOf: dir.appendingPathComponent("a/config.yaml"), encoding: .utf8).contains("max_steps: 9"))
    }

    @Test("metrics written by an older version are kept on resume: old JSONL lines still decode, an old CSV is renamed, not mixed")
    func olderMetrics() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-oldmetrics-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let run = dir.appendingPathComponent("run")
        // A run paused after step 1 whose metrics files are in an older version's format.
        try SupervisedTrainer(config: try tinyConfig(shards: shards, output: run, maxSteps: 2), writer: "test").run(resume: false, stopAfter: 1)
        let oldCSV = "step,epoch,loss,lr,images_per_second,skipped_tiles,val_accuracy,val_loss\n1,0,0.5,0.001,30.0,0,,\n"
        try oldCSV.write(to: run.appendingPathComponent("metrics.csv"), atomically: true, encoding: .utf8)
        try "{\"step\":1,\"epoch\":0,\"loss\":0.5,\"lr\":0.001,\"images_per_second\":30,\"skipped_tiles\":0}\n"
            .write(to: run.appendingPathComponent("metrics.jsonl"), atomically: true, encoding: .utf8)
        let trainer = try SupervisedTrainer(config: try tinyConfig(shards: shards, output: run, maxSteps: 2), writer: "test")
        #expect(try trainer.run(resume: true) == .finished)
        #expect(try String(contentsOf: run.appendingPathComponent("metrics.1.csv"), encoding: .utf8) == oldCSV)
        let csv = try String(contentsOf: run.appendingPathComponent("metrics.csv"), encoding: .utf8).split(separator: "\n")
        #expect(csv.count == 2 && csv[0] == Substring(StepMetrics.csvHeader) && csv[1].hasPrefix("2,"), "\(csv)")
        let lines = try String(contentsOf: run.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        let decoded = try lines.map { try JSONDecoder().decode(StepMetrics.self, from: Data($0.utf8)) }
        #expect(decoded.map(\.step) == [1, 2] && decoded[0].ranks == 1 && decoded[0].kdLoss == nil && decoded[0].loss == 0.5)
    }

    @Test("a loss that becomes NaN or Inf stops the run naming the step and keeps the last good checkpoint; val classes must match")
    func badTraining() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-nan-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let run = dir.appendingPathComponent("run")
        // A teacher, and a copy of its weights whose classifier is finite but so large that its logits overflow.
        let teacherDir = dir.appendingPathComponent("teacher")
        let teacherConfig = try RunConfig.parse("""
        run: {output: \(teacherDir.path), seed: 1}
        data: {train: \(shards.path), input_factor: 1}
        model: {planes: [32, 32], blocks: [1, 1]}
        train: {max_steps: 2, batch_size: 4}
        """, source: "teacher.yaml")
        try SupervisedTrainer(config: teacherConfig, writer: "test").run(resume: false)
        let teacher = ResNet(teacherConfig.modelConfig(classes: 2), initialize: false)
        try teacher.loadWeights(from: try #require(CheckpointStore(directory: teacherDir.appendingPathComponent("checkpoints")).newest())
            .appendingPathComponent("model.safetensors"))
        let brokenWeights = dir.appendingPathComponent("diverged.safetensors")
        let tensors = teacher.stateDict().map { t in
            t.name == "fc.weight" ? SafeTensor(name: t.name, shape: t.shape, floats: t.floats.map { _ in Float.greatestFiniteMagnitude / 4 }) : t
        }
        try SafeTensorsFile(tensors: tensors, metadata: [:]).serialized().write(to: brokenWeights)
        func student(_ weights: String?) throws -> RunConfig {
            try RunConfig.parse("""
            run: {output: \(run.path), seed: 1}
            data: {train: \(shards.path), input_factor: 2}
            model: {planes: [32, 32], blocks: [1, 1]}
            train: {max_steps: 6, batch_size: 4, checkpoint_every: 1}
            distill: {teacher_run: \(teacherDir.path)\(weights.map { ", teacher_weights: \($0)" } ?? "")}
            """, source: "student.yaml")
        }
        let config = try student(nil)
        try SupervisedTrainer(config: config, writer: "test").run(resume: false, stopAfter: 2)
        // Resumed with a learning rate that overflows the weights at step 3: stopped, naming the step and what is kept.
        let trainer = try SupervisedTrainer(config: try RunConfig.parse(config.yaml, source: "x", overrides: ["optimizer.lr=1e38"]), writer: "test")
        let e = #expect(throws: TrainingError.self) { try trainer.run(resume: true) }
        #expect(e?.message.contains("non-finite") == true && e?.message.contains("at step 3") == true, "\(String(describing: e))")
        #expect(e?.message.contains("the newest intact checkpoint is step-000000002") == true, "\(String(describing: e))")
        // A fresh run whose teacher's logits overflow: the KD loss of step 1 is not finite, and nothing was written.
        let fresh = try SupervisedTrainer(config: try RunConfig.parse(try student(brokenWeights.path).yaml, source: "x",
                                                                      overrides: ["run.output=\(dir.appendingPathComponent("fresh").path)"]), writer: "test")
        let f = #expect(throws: TrainingError.self) { try fresh.run(resume: false) }
        #expect(f?.message.contains("the loss became") == true && f?.message.contains("at step 1") == true
                && f?.message.contains("no checkpoint has been written yet") == true, "\(String(describing: f))")
        // A teacher whose weights are not finite at all is refused before any step, naming the file.
        let infinite = dir.appendingPathComponent("infinite.safetensors")
        try SafeTensorsFile(tensors: teacher.stateDict().map { t in
            t.name == "fc.weight" ? SafeTensor(name: t.name, shape: t.shape, floats: t.floats.map { _ in Float.infinity }) : t
        }, metadata: [:]).serialized().write(to: infinite)
        let refused = #expect(throws: TrainingError.self) { _ = try SupervisedTrainer(config: try student(infinite.path), writer: "test") }
        #expect(refused?.message.contains("infinite.safetensors holds non-finite weights") == true, "\(String(describing: refused))")
        #expect(trainer.history.isEmpty)
        // The newest checkpoint is still step 2, and it loads.
        let store = CheckpointStore(directory: run.appendingPathComponent("checkpoints"))
        let newest = try #require(store.newest())
        #expect(newest.lastPathComponent == "step-000000002")
        let again = try SupervisedTrainer(config: config, writer: "test")
        #expect(try store.load(newest, model: again.model, optimizer: again.optimizer).step == 2)
        #expect(GradientOps.allFinite(again.model.parameters.values.pointer, count: again.model.parameterCount))
        // A validation set packed with other classes is refused naming both lists.
        let other = dir.appendingPathComponent("other/x")
        try FileManager.default.createDirectory(at: other, withIntermediateDirectories: true)
        for f in try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("in/a").path).prefix(2) {
            try FileManager.default.copyItem(at: dir.appendingPathComponent("in/a/\(f)"), to: other.appendingPathComponent(f))
        }
        _ = try Packer.pack(try PackPlan.imageFolder(dir.appendingPathComponent("other")), options: PackOptions(output: dir.appendingPathComponent("otherShards")))
        var mismatched = teacherConfig
        mismatched.valShards = dir.appendingPathComponent("otherShards").path
        let v = #expect(throws: TrainingError.self) { _ = try SupervisedTrainer(config: mismatched, writer: "test") }
        #expect(v?.message.contains("data.val classes [\"x\"] differ from data.train classes [\"a\", \"b\"]") == true, "\(String(describing: v))")
    }

    @Test("config typos and bad values name the key and suggest a fix")
    func configErrors() throws {
        let e1 = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}\noptimiser: {lr: 0.1}", source: "c.yaml") }
        #expect(e1?.message.contains("c.yaml") == true && e1?.message.contains("did you mean 'optimizer'") == true, "\(String(describing: e1))")
        let e2 = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}\ntrain: {epocs: 3}", source: "c.yaml") }
        #expect(e2?.message.contains("train.epocs") == true && e2?.message.contains("epochs") == true)
        let e3 = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}\noptimizer: {lr: fast}", source: "c.yaml") }
        #expect(e3?.message.contains("optimizer.lr must be a number") == true)
        let e4 = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("model: {architecture: resnet-gn}", source: "c.yaml") }
        #expect(e4?.message.contains("data.train is required") == true)
        let ok = try? RunConfig.parse("data: {train: x}", source: "c.yaml", overrides: ["train.epochs=7", "optimizer.name=sgd"])
        #expect(ok?.epochs == 7 && ok?.optimizer == .sgd)
        #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}", source: "c.yaml", overrides: ["train.epoch=7"]) }
        // The shipped configs parse.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        // The effective config written to a run directory (config.yaml) parses back to the same config.
        for name in ["teacher-lung-224.yaml", "student-lung-56-distill.yaml"] {
            let c = try RunConfig.load(root.appendingPathComponent("configs/\(name)"), overrides: ["train.max_steps=7", "train.clip_grad_norm=2.5"])
            #expect(try RunConfig.parse(c.yaml, source: "\(name) written back") == c, "\(name) round-trips through RunConfig.yaml")
        }
        let shipped = try FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent("configs").path).filter { $0.hasSuffix(".yaml") }
        #expect(shipped.count >= 5)
        for name in shipped {
            let c = try? RunConfig.load(root.appendingPathComponent("configs/\(name)"))
            #expect(c != nil, "\(name) parses")
            #expect(c?.isDistillation == name.contains("distill"), "\(name) is a \(name.contains("distill") ? "distill" : "train") config")
            // ...and set nothing their command does not read, written back as a run's config.yaml or not.
            let command: TrainingCommand = name.hasPrefix("mil-") ? .milTrain : name.hasPrefix("finetune-") ? .finetune : name.contains("distill") ? .distill : .train
            let written = try c.map { try RunConfig.parse($0.yaml, source: "\(name) written back") }
            for config in [c, written].compactMap({ $0 }) {
                #expect(config.ignoredKeys(by: command).isEmpty, "\(name) for \(command)")
            }
        }
        // Keys meant for another command are found: MIL settings given to train, augmentation given to mil train.
        let misplaced = try RunConfig.parse("data: {train: x}\nmil: {beta: 2}\naugment: {crop_scale: 0.5}", source: "c.yaml")
        #expect(misplaced.ignoredKeys(by: .train) == ["mil.beta"])
        #expect(misplaced.ignoredKeys(by: .milTrain) == ["augment.crop_scale"])
        // A key of a section the command reads that it has no use for: the MIL head has no convolutions.
        let precision = try RunConfig.parse("data: {train: x}\ntrain: {precision: bf16-mixed}", source: "p.yaml")
        #expect(precision.ignoredKeys(by: .milTrain) == ["train.precision"])
        #expect(precision.ignoredKeys(by: .finetune).isEmpty && precision.ignoredKeys(by: .train).isEmpty)
        // ...and their values are not checked for a command that does not read them (they are for one that does).
        let forMIL = try RunConfig.parse("data: {train: x}\ndistill: {kd_weight: 2}\naugment: {mixup: 1}", source: "m.yaml", overrides: ["model.planes=[0]"], command: .milTrain)
        #expect(forMIL.ignoredKeys(by: .milTrain).sorted() == ["augment.mixup", "distill.kd_weight", "model.planes"])
        #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}", source: "t.yaml", overrides: ["model.planes=[0]"], command: .train) }
        #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}\ndistill: {kd_weight: 2}", source: "m.yaml") }
    }

    @Test("train, evaluate, predict: a second run into a directory with checkpoints is refused unless --resume; missing shards are named")
    func trainCommand() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-traincli-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let config = dir.appendingPathComponent("c.yaml")
        try """
        run: {output: \(dir.appendingPathComponent("run").path)}
        data: {train: \(shards.path), input_factor: 2}
        model: {planes: [32, 32], blocks: [1, 1]}
        train: {max_steps: 2, batch_size: 4}
        """.write(to: config, atomically: true, encoding: .utf8)
        let bin = try histodistillBinary()
        let a = try run([bin, "train", "--config", config.path])
        #expect(a.status == 0 && a.stdout.contains("done: step 2"), "\(a.stdout) \(a.stderr)")
        let b = try run([bin, "train", "--config", config.path])
        #expect(b.status != 0 && b.stderr.contains("--resume"), "\(b.stderr)")
        let c = try run([bin, "train", "--config", config.path, "--resume", "--set", "train.max_steps=3", "--set", "mil.beta=2"])
        #expect(c.status == 0 && c.stdout.contains("done: step 3"), "\(c.stdout) \(c.stderr)")
        #expect(c.stderr.contains("warning: --set gives mil.beta, which `histodistill train` does not read: it has no effect here"), "\(c.stderr)")
        #expect(!c.stderr.contains("mil.beta: 0.5"), "a key train does not read may change on --resume: \(c.stderr)")
        #expect(!a.stderr.contains("does not read"), "\(a.stderr)")
        // evaluate and predict the trained run on the training shards
        let runDir = dir.appendingPathComponent("run").path
        let e = try run([bin, "evaluate", "--run", runDir, "--shards", shards.path])
        #expect(e.status == 0 && e.stdout.contains("24 tiles: accuracy"), "\(e.stdout) \(e.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: runDir + "/eval.json"))) as? [String: Any]
        #expect((report?["confusion"] as? [[Int]])?.flatMap { $0 }.reduce(0, +) == 24)
        #expect(report?["classes"] as? [String] == ["a", "b"])
        let p = try run([bin, "predict", "--run", runDir, "--shards", shards.path, "-o", dir.appendingPathComponent("p.csv").path])
        #expect(p.status == 0, "\(p.stderr)")
        let csv = try String(contentsOf: dir.appendingPathComponent("p.csv"), encoding: .utf8).split(separator: "\n")
        #expect(csv.count == 25 && csv[0] == "tile_id,slide,label,predicted,p_a,p_b")
        let probs = csv[1].split(separator: ",").suffix(2).compactMap { Double($0) }
        #expect(abs(probs.reduce(0, +) - 1) < 1e-5)
        let d = try run([bin, "train", "--config", config.path, "--set", "data.train=/nonexistent"])
        #expect(d.status != 0 && d.stderr.contains("/nonexistent") && !d.stderr.contains("Fatal error"), "\(d.stderr)")
    }
}

@Suite("Distillation")
struct DistillTests {
    @Test("distill a 2x-downsampled student from a trained teacher; resume is bit-exact; a mismatched teacher is refused")
    func distill() throws {
        // Bit-exact comparisons need one thread width for the whole test (kernel tests vary it in parallel).
        let width = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: width) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-distill-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let teacherDir = dir.appendingPathComponent("teacher")
        let teacherConfig = try RunConfig.parse("""
        run: {output: \(teacherDir.path), seed: 1}
        data: {train: \(shards.path), val: \(shards.path), input_factor: 1}
        model: {planes: [32, 32], blocks: [1, 1]}
        train: {max_steps: 6, batch_size: 4}
        """, source: "teacher.yaml")
        try SupervisedTrainer(config: teacherConfig, writer: "test").run(resume: false)
        func student(_ out: String, _ extra: String = "") throws -> RunConfig {
            try RunConfig.parse("""
            run: {output: \(dir.appendingPathComponent(out).path), seed: 2}
            data: {train: \(shards.path), val: \(shards.path), input_factor: 2}
            augment: {brightness: 0.2}
            model: {planes: [32, 32], blocks: [1, 1]}
            train: {epochs: 2, max_steps: 8, batch_size: 4, checkpoint_every: 3}
            distill: {teacher_run: \(teacherDir.path), kd_weight: 1, temperature: 4, pixel_weight: 0.5, pixel_resize: maxpool+bicubic, pixel_norm: l1\(extra)}
            """, source: "student.yaml")
        }
        let straight = try SupervisedTrainer(config: try student("s1"), writer: "test")
        #expect(straight.teacher != nil)
        try straight.run(resume: false)
        let losses = straight.history.map(\.loss)
        #expect(losses.count == 8 && losses.allSatisfy { ($0 ?? .nan).isFinite && $0! > 0 })
        let interrupted = try SupervisedTrainer(config: try student("s2"), writer: "test")
        try interrupted.run(resume: false, stopAfter: 3)
        let resumed = try SupervisedTrainer(config: try student("s2"), writer: "test")
        try resumed.run(resume: true)
        #expect(interrupted.history.map(\.loss) + resumed.history.map(\.loss) == losses)
        // The teacher's weights were not changed by distillation.
        let reloaded = ResNet((straight.teacher as! ResNet).config, initialize: false)
        try reloaded.loadWeights(from: teacherDir.appendingPathComponent("best.safetensors"))
        #expect(reloaded.parameters.values.array == straight.teacher!.parameters.values.array)
        // A student with another class count cannot use this teacher.
        let bad = try RunConfig.parse("""
        run: {output: \(dir.appendingPathComponent("bad").path)}
        data: {train: \(shards.path), input_factor: 2}
        model: {planes: [32, 32], blocks: [1, 1], classes: 3}
        distill: {teacher_run: \(teacherDir.path)}
        """, source: "bad.yaml")
        let e = #expect(throws: TrainingError.self) { _ = try SupervisedTrainer(config: bad, writer: "test") }
        #expect(e?.message.contains("2 classes, the student 3") == true, "\(String(describing: e))")
        // A teacher_run that does not exist is said so, not "holds no best.safetensors".
        var missing = try student("missing")
        missing.teacherRun = dir.appendingPathComponent("no-such-teacher").path
        let e2 = #expect(throws: TrainingError.self) { _ = try SupervisedTrainer(config: missing, writer: "test") }
        #expect(e2?.message.contains("no-such-teacher: no such run directory") == true, "\(String(describing: e2))")
        #expect(e2.map { $0.message.components(separatedBy: "no-such-teacher").count - 1 } == 1, "the path is named once: \(String(describing: e2))")
        // A teacher_weights file that does not exist is named once, after its key.
        var noWeights = try student("noweights")
        noWeights.teacherWeights = dir.appendingPathComponent("no-such-weights.safetensors").path
        let e3 = #expect(throws: TrainingError.self) { _ = try SupervisedTrainer(config: noWeights, writer: "test") }
        #expect(e3?.message.hasPrefix("distill.teacher_weights: ") == true && e3.map { $0.message.components(separatedBy: "no-such-weights").count - 1 } == 1,
                "\(String(describing: e3))")
    }

    @Test("a teacher trained on downsampled tiles (a teacher assistant) sees the batch's view at its own factor, alone and in a pass of several students; a student not coarser than it is refused")
    func teacherAssistant() throws {
        let width = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: width) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-assistant-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        // The assistant: trained on 16 px views (factor 2) of the 32 px tiles.
        let assistant = dir.appendingPathComponent("assistant")
        try SupervisedTrainer(config: try RunConfig.parse("""
        run: {output: \(assistant.path), seed: 1}
        data: {train: \(shards.path), val: \(shards.path), input_factor: 2}
        model: {planes: [32, 32], blocks: [1, 1]}
        train: {max_steps: 6, batch_size: 4}
        """, source: "assistant.yaml"), writer: "test").run(resume: false)
        func student(_ factor: Int, _ out: String) throws -> RunConfig {
            try RunConfig.parse("""
            run: {output: \(dir.appendingPathComponent(out).path), seed: 2}
            data: {train: \(shards.path), val: \(shards.path), input_factor: \(factor)}
            augment: {brightness: 0.2, crop_scale: 0.7}
            model: {planes: [32, 32], blocks: [1, 1]}
            train: {max_steps: 4, batch_size: 4}
            distill: {teacher_run: \(assistant.path), kd_weight: 1, temperature: 4, pixel_weight: 0.5}
            """, source: "s\(factor).yaml")
        }
        let alone = try SupervisedTrainer(config: try student(4, "alone"), writer: "test")
        #expect(alone.teacherFactor == 2)
        #expect(alone.teacherSummary?.contains("16 px views (input factor 2); student: 8 px (input factor 4)") == true, "\(alone.teacherSummary ?? "-")")
        try alone.run(resume: false)
        // run.json says which weights taught, at which factor.
        let described = try JSONDecoder().decode(RunMetadata.self, from: Data(contentsOf: alone.runDirectory.url.appendingPathComponent("run.json")))
        #expect(described.teacherInputFactor == 2 && described.teacherWeights == "../assistant/best.safetensors", "\(described.teacherWeights ?? "-")")
        #expect(alone.history.count == 4 && alone.history.allSatisfy { ($0.loss ?? .nan).isFinite && $0.loss! > 0 })

        // The first step by hand: the trainer's batch carries the 2x view, which is exactly what the assistant's own
        // run makes of the same augmented tiles (a loader at factor 2), and the step's loss is the objective on it.
        let fresh = try SupervisedTrainer(config: try student(4, "by-hand"), writer: "test")
        let batch = try fresh.makeLoader(try fresh.begin(resume: false)).next()
        let own = try BatchLoader(dataset: fresh.train, transform: PairedTransform(augment: fresh.config.augment, factor: 2, mean: fresh.config.mean, std: fresh.config.std),
                                  seed: fresh.config.seed, globalBatch: 4, rank: 0, worldSize: 1, cursor: DataCursor(), withLowResolution: true).next()
        #expect(batch.extraViews[2] == own.lr && !own.lr.isEmpty, "the assistant's view is the one its own pipeline makes")
        #expect(batch.lr != own.lr, "the student's view is coarser")
        let handLoss = batch.withStepInput(inputFactor: 4, teacherFactor: 2) { input -> Float in
            #expect(input.teacherEdge == 16 && input.edge == 8)
            return fresh.stepper.objective!.localGradients(input).total
        }
        #expect(handLoss == alone.history[0].loss, "\(handLoss) vs \(alone.history[0].loss)")
        // The teacher fed the full-resolution tiles instead would give another loss: the view matters.
        let teacherOnFull = try SupervisedTrainer(config: try student(4, "full"), writer: "test")
        let fullLoss = batch.withStepInput(inputFactor: 4, teacherFactor: 1) { teacherOnFull.stepper.objective!.localGradients($0).total }
        #expect(fullLoss != handLoss)

        // Students at 4x and 8x of the assistant in one pass: one assistant forward per batch, the 4x student as alone.
        let pass = try MultiStudentDistiller(configs: [(try student(4, "pass-4"), "s4.yaml"), (try student(8, "pass-8"), "s8.yaml")], writer: "test")
        #expect(try pass.run(resume: false) == [.finished, .finished])
        #expect(pass.teacher.forwards == 4)
        #expect(pass.students[0].history.map(\.loss) == alone.history.map(\.loss))

        // A student as fine as the assistant, or finer, is refused naming the key.
        let e = #expect(throws: TrainingError.self) { _ = try SupervisedTrainer(config: try student(2, "same"), writer: "test") }
        #expect(e?.message.contains("data.input_factor 2") == true && e?.message.contains("above 2") == true, "\(String(describing: e))")
        // In a pass, the refusal names the config at fault.
        let e2 = #expect(throws: TrainingError.self) {
            _ = try MultiStudentDistiller(configs: [(try student(4, "p-4"), "s4.yaml"), (try student(2, "p-2"), "s2.yaml")], writer: "test")
        }
        #expect(e2?.message.hasPrefix("s2.yaml: ") == true, "\(String(describing: e2))")
    }

    @Test("a corrupt validation tile: under stop the trained step is checkpointed before the error and --resume finishes once val is fixed; under skip it is left out and reported")
    func corruptValidationTile() throws {
        let width = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: width) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-badval-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let val = dir.appendingPathComponent("val")
        try FileManager.default.copyItem(at: shards, to: val)
        let first = try corruptFirstTile(of: val).lastPathComponent
        func config(_ policy: String) throws -> RunConfig {
            try RunConfig.parse("""
            run: {output: \(dir.appendingPathComponent("run-\(policy)").path), seed: 1}
            data: {train: \(shards.path), val: \(val.path), on_corrupt: \(policy)}
            model: {planes: [32, 32], blocks: [1, 1]}
            train: {max_steps: 4, batch_size: 4, checkpoint_every: 100}
            """, source: "c.yaml")
        }
        // Validation runs after step 4 (the last): the error names the file, and step 4 is kept.
        let stopped = try SupervisedTrainer(config: try config("stop"), writer: "test")
        let e = #expect(throws: (any Error).self) { try stopped.run(resume: false) }
        #expect("\(String(describing: e))".contains(first), "\(String(describing: e))")
        let kept = try #require(stopped.store.completeCheckpoints().last)
        let state = try stopped.store.load(kept, model: ResNet((stopped.model as! ResNet).config, initialize: false), optimizer: Optimizer(stopped.config.optimizerKind, count: stopped.model.parameterCount))
        #expect(state.step == 4, "the trained steps are not lost: checkpoint at step \(state.step)")
        // val fixed (pointed at the intact shards): the run resumes from step 4 and has nothing left but to finish.
        var fixed = try config("stop")
        fixed.valShards = shards.path
        #expect(FileManager.default.fileExists(atPath: stopped.pendingValidation.path), "the undone validation is remembered")
        #expect(!FileManager.default.fileExists(atPath: stopped.runDirectory.bestWeights.path))
        let resumed = try SupervisedTrainer(config: fixed, writer: "test")
        #expect(try resumed.run(resume: true) == .finished)
        #expect(resumed.history.isEmpty, "step 4 is not trained twice")
        // ...but it is validated: best.safetensors is written, the marker gone.
        #expect(resumed.bestAccuracy != nil && resumed.bestStep == 4, "\(String(describing: resumed.bestAccuracy)) at \(String(describing: resumed.bestStep))")
        #expect(FileManager.default.fileExists(atPath: resumed.runDirectory.bestWeights.path))
        #expect(!FileManager.default.fileExists(atPath: resumed.pendingValidation.path))
        // Under skip the tile is left out of the accuracy and reported.
        let skipping = try SupervisedTrainer(config: try config("skip"), writer: "test")
        try skipping.run(resume: false)
        #expect(skipping.history.last?.valAccuracy != nil)
        let p = try Inference.run(model: skipping.evaluatedModel, dataset: try ShardDataset(directory: val), settings: InferenceSettings(try config("skip")))
        #expect(p.skipped.count == 1 && p.skipped[0].contains(first) && p.probabilities.count == 23, "\(p.skipped)")
    }

    @Test("labeled and unlabeled shard sets combine for distillation; validation every N steps")
    func unlabeledAndValEvery() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-unlabeled-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        // A second, unlabeled set: the same images packed without labels and with other class names.
        let other = dir.appendingPathComponent("other")
        try FileManager.default.createDirectory(at: other.appendingPathComponent("x"), withIntermediateDirectories: true)
        for f in try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("in/a").path).prefix(8) {
            try FileManager.default.copyItem(at: dir.appendingPathComponent("in/a/\(f)"), to: other.appendingPathComponent("x/\(f)"))
        }
        _ = try Packer.pack(try PackPlan.imageFolder(other, unlabeled: true), options: PackOptions(output: dir.appendingPathComponent("unlabeled")))
        let teacherDir = dir.appendingPathComponent("teacher")
        try SupervisedTrainer(config: try RunConfig.parse("""
        run: {output: \(teacherDir.path), seed: 1}
        data: {train: \(shards.path), input_factor: 1}
        model: {planes: [32, 32], blocks: [1, 1]}
        train: {max_steps: 2, batch_size: 4}
        """, source: "teacher.yaml"), writer: "test").run(resume: false)
        let config = try RunConfig.parse("""
        run: {output: \(dir.appendingPathComponent("student").path), seed: 2}
        data: {train: \(shards.path), unlabeled: [\(dir.appendingPathComponent("unlabeled").path)], val: \(shards.path), input_factor: 2}
        model: {planes: [32, 32], blocks: [1, 1]}
        train: {max_steps: 5, batch_size: 4, val_every: 2}
        distill: {teacher_run: \(teacherDir.path), ce_weight: 1}
        """, source: "student.yaml")
        #expect(try RunConfig.parse(config.yaml, source: "written back") == config)
        let trainer = try SupervisedTrainer(config: config, writer: "test")
        #expect(trainer.train.count == 24 + 8)
        let labels = (0..<trainer.train.count).map { trainer.train.entry($0).label }
        #expect(labels.prefix(24).allSatisfy { $0 >= 0 } && labels.suffix(8).allSatisfy { $0 == -1 })
        try trainer.run(resume: false)
        #expect(trainer.history.map { $0.valAccuracy != nil } == [false, true, false, true, true], "validated at steps 2, 4 and the last")
        #expect(trainer.history.allSatisfy { ($0.loss ?? .nan).isFinite && $0.kdLoss != nil && $0.ceLoss != nil })
        // Supervised training cannot use unlabeled sets.
        let e = #expect(throws: ConfigError.self) {
            _ = try RunConfig.parse("data: {train: x, unlabeled: y}", source: "u.yaml")
        }
        #expect(e?.message.contains("data.unlabeled needs a distill section") == true)
    }
}

@Suite("Model replicas, one per thread", .serialized)
struct EvalReplicaTests {
    /// Max |a - b| over max(1, max |b|).
    static func relativeError(_ a: [Float], _ b: [Float]) -> Float {
        var err: Float = 0, ref: Float = 0
        for i in 0..<min(a.count, b.count) { err = max(err, abs(a[i] - b[i])); ref = max(ref, abs(b[i])) }
        return a.count == b.count ? err / max(1, ref) : .infinity
    }

    /// Runs `model` on `n` synthetic images of `edge` px through `EvalReplicas` at `width` threads.
    static func outputs(_ replicas: EvalReplicas, n: Int, edge: Int, width: Int) -> [[Float]] {
        var g = SplitMix64(seed: 9)
        let x = Buffer<Float>((0..<(n * 3 * edge * edge)).map { _ in Float(g.next() % 1000) / 500 - 1 })
        return Parallel.withWidth(width) {
            let out = replicas.forward(x.pointer, shape: NCHW(n, 3, edge, edge))
            return [Array(UnsafeBufferPointer(start: out.featureMap.data, count: out.featureMap.count)),
                    Array(UnsafeBufferPointer(start: out.pooled.data, count: out.pooled.count)),
                    out.logits.map { Array(UnsafeBufferPointer(start: $0.data, count: $0.count)) } ?? []]
        }
    }

    @Test("a batch split over model copies, one per thread, gives the model's outputs: uneven shares, GroupNorm and BatchNorm, truncated models, refreshed weights")
    func replicasMatchTheModel() {
        let models: [ResNet] = [
            ResNet(.paper(classes: 3, planes: [32, 32], blocks: [1, 1]), seed: 1),
            ResNet(ResNetConfig(name: "bn", planes: [16, 32], blocks: [1, 1], norm: .batch, classes: 4), seed: 2),
            ResNet(ResNetConfig.paper(classes: 3, planes: [32, 32], blocks: [1, 1]).truncated(after: 1), seed: 3),
        ]
        for (m, model) in models.enumerated() {
            if case .batch = model.config.norm {   // running statistics away from their initial 0 and 1
                for i in 0..<model.buffers.values.count { model.buffers.values[i] = 0.5 + Float(i % 7) * 0.1 }
            }
            let single = Self.outputs(EvalReplicas(model), n: 5, edge: 40, width: 1)
            for width in [2, 3] {
                let split = Self.outputs(EvalReplicas(model), n: 5, edge: 40, width: width)
                for part in 0..<3 {
                    #expect(split[part].count == single[part].count, "model \(m), part \(part)")
                    if !single[part].isEmpty {
                        #expect(Self.relativeError(split[part], single[part]) < 1e-5, "model \(m), width \(width), part \(part): \(Self.relativeError(split[part], single[part]))")
                    }
                }
            }
            #expect(model.classes == 0 ? single[2].isEmpty : single[2].count == 5 * model.classes)
        }
        // Copies hold the weights they were made with until refreshed.
        let model = models[0], replicas = EvalReplicas(model)
        let before = Self.outputs(replicas, n: 4, edge: 32, width: 2)
        for i in 0..<model.parameters.values.count { model.parameters.values[i] *= 0.9 }
        let stale = Self.outputs(replicas, n: 4, edge: 32, width: 2)
        replicas.refresh()
        let fresh = Self.outputs(replicas, n: 4, edge: 32, width: 2), reference = Self.outputs(EvalReplicas(model), n: 4, edge: 32, width: 1)
        #expect(Self.relativeError(stale[2], before[2]) > 1e-4 && Self.relativeError(stale[2], reference[2]) > 1e-4, "the second half ran the old weights")
        #expect(Self.relativeError(fresh[2], reference[2]) < 1e-5)
    }

    @Test("a supervised step split over model copies, one per thread, is the whole batch's step: terms and gradients, partly labeled batches, uneven shares, mixup's blended labels; BatchNorm models are not split",
          arguments: [false, true])
    func replicatedSupervisedStep(_ mixup: Bool) {
        let n = 7, edge = 32
        var g = SplitMix64(seed: 4)
        let x = Buffer<Float>((0..<(n * 3 * edge * edge)).map { _ in Float(g.next() % 1000) / 500 - 1 })
        let labels: [Int32] = [0, 2, -1, 1, 1, -1, 0]
        let partners: [Int32] = [1, 0, 2, 2, 0, 1, 2], weights: [Float] = [0.3, 0.8, 0.5, 0.1, 0.55, 1, 0.7]
        func step(_ config: ResNetConfig, width: Int, scale: Float, mix: Bool = mixup) -> (LossTerms, [Float], Int) {
            let model = ResNet(config, seed: 11)
            let objective = SupervisedStep(model: model, labelSmoothing: 0.1)
            let mixed = UnsafeMutablePointer<Int32>.allocate(capacity: n), lambdas = UnsafeMutablePointer<Float>.allocate(capacity: n)
            mixed.initialize(from: partners, count: n); lambdas.initialize(from: weights, count: n)
            defer { mixed.deallocate(); lambdas.deallocate() }
            return labels.withUnsafeBufferPointer { l in
                var input = StepInput(images: x.pointer, edge: edge, teacherImages: nil, teacherEdge: edge, labels: l.baseAddress!, count: n)
                input.labeledScale = scale
                if mix { input.mixPartnerLabels = UnsafePointer(mixed); input.mixWeights = UnsafePointer(lambdas) }
                let terms = Parallel.withWidth(width) { objective.localGradients(input) }
                // Mirror to a second step: the copies follow the model's weights (changed here as an update would).
                for i in 0..<model.parameterCount { model.parameters.values[i] *= 0.95 }
                let again = Parallel.withWidth(width) { objective.localGradients(input) }
                return (terms, model.parameters.gradients!.array + [again.total], objective.replicaCount)
            }
        }
        Self.expectSplitMatchesWhole { step($0, width: $1, scale: $2) }
        if mixup {
            let gn = ResNetConfig.paper(classes: 3, planes: [32, 32], blocks: [1, 1])
            let (t, _, _) = step(gn, width: 1, scale: 1), (plain, _, _) = step(gn, width: 1, scale: 1, mix: false)
            #expect(abs(t.total - plain.total) > 1e-3, "the blended labels change the loss: \(t.total) vs \(plain.total)")
        }
    }

    @Test("a distillation step split over student copies, one per thread, against a teacher split over its own copies, is the whole batch's step: every term and the gradients, a partly labeled batch, uneven shares; a BatchNorm student is not split")
    func replicatedDistillationStep() {
        let n = 7, edge = 16, teacherEdge = 32
        var g = SplitMix64(seed: 9)
        let x = Buffer<Float>((0..<(n * 3 * edge * edge)).map { _ in Float(g.next() % 1000) / 500 - 1 })
        let xt = Buffer<Float>((0..<(n * 3 * teacherEdge * teacherEdge)).map { _ in Float(g.next() % 1000) / 500 - 1 })
        let labels: [Int32] = [0, 2, -1, 1, 1, -1, 0]
        let teacherNet = ResNet(ResNetConfig.paper(classes: 3, planes: [32, 32], blocks: [1, 1]), seed: 21)
        // KD, the pixel loss to the max-pooled and bicubic teacher map, and cross-entropy on the labeled tiles.
        let objective = DistillationObjective(kdWeight: 0.7, temperature: 4, pixelWeight: 0.5, pixelResize: .both, pixelNorm: .l2,
                                              crossEntropyWeight: 0.3)
        func step(_ config: ResNetConfig, width: Int, scale: Float) -> (LossTerms, [Float], Int) {
            let student = ResNet(config, seed: 12)
            let distill = DistillationStep(student: student, teacher: FrozenTeacher(teacherNet), objective: objective)
            return labels.withUnsafeBufferPointer { l in
                var input = StepInput(images: x.pointer, edge: edge, teacherImages: xt.pointer, teacherEdge: teacherEdge,
                                      labels: l.baseAddress!, count: n)
                input.labeledScale = scale
                let terms = Parallel.withWidth(width) { distill.localGradients(input) }
                // A second step after an update: the copies follow the student's weights.
                for i in 0..<student.parameterCount { student.parameters.values[i] *= 0.95 }
                let again = Parallel.withWidth(width) { distill.localGradients(input) }
                return (terms, student.parameters.gradients!.array + [again.total], distill.replicaCount)
            }
        }
        Self.expectSplitMatchesWhole({ step($0, width: $1, scale: $2) }) { t1 in
            #expect(t1.kd > 0 && t1.pixel > 0 && t1.crossEntropy > 0, "every term is on: \(t1)")
        }
    }

    /// A step split over model copies against the same step on one thread: at loss scales 1 and 0.8 and 2 and 3
    /// threads, one copy per extra thread and every term and the gradients within 1e-5; a BatchNorm model is not split.
    /// `step(config, width, scale)` gives the terms, the gradients (and a second step's total) and the copies made;
    /// `check` looks at the one-thread terms.
    static func expectSplitMatchesWhole(_ step: (ResNetConfig, Int, Float) -> (LossTerms, [Float], Int),
                                        check: (LossTerms) -> Void = { _ in }) {
        let gn = ResNetConfig.paper(classes: 3, planes: [32, 32], blocks: [1, 1])
        for scale: Float in [1, 0.8] {
            let (t1, g1, c1) = step(gn, 1, scale)
            #expect(c1 == 0)
            check(t1)
            for width in [2, 3] {
                let (t, gw, copies) = step(gn, width, scale)
                #expect(copies == width - 1, "one copy per extra thread")
                for (a, b, name) in [(t.total, t1.total, "total"), (t.kd, t1.kd, "kd"), (t.pixel, t1.pixel, "pixel"),
                                     (t.crossEntropy, t1.crossEntropy, "crossEntropy")] {
                    #expect(abs(a - b) <= 1e-5 * max(1, abs(b)), "\(name) at width \(width), scale \(scale): \(a) vs \(b)")
                }
                var err: Float = 0, ref: Float = 0
                for i in 0..<g1.count { err = max(err, abs(gw[i] - g1[i])); ref = max(ref, abs(g1[i])) }
                #expect(err <= 1e-5 * max(1, ref), "gradients at width \(width), scale \(scale): \(err) of \(ref)")
            }
        }
        let bn = ResNetConfig(name: "bn", planes: [16, 32], blocks: [1, 1], norm: .batch, classes: 3)
        #expect(step(bn, 2, 1).2 == 0, "BatchNorm statistics depend on the batch: not split")
    }
}

@Suite("Command-line arguments")
struct ArgumentJoiningTests {
    @Test("a negative number after an option that takes a value is joined to it (long options, and short ones: -o -4), never after -h or --")
    func negativeValues() {
        #expect(joiningNegativeValues(["predict", "-o", "-4", "--threads", "-1", "--bootstrap", "-0.5", "-h", "-1", "--json", "--", "-o", "-2"])
                == ["predict", "-o=-4", "--threads=-1", "--bootstrap=-0.5", "-h", "-1", "--json", "--", "-o", "-2"])
        #expect(joiningNegativeValues(["train", "--set=x", "-1", "-o", "out", "-o", "-name"]) == ["train", "--set=x", "-1", "-o", "out", "-o", "-name"],
                "an option already holding its value, a non-numeric value")
    }
}
