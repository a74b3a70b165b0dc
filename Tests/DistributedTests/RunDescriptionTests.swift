// Self-describing runs: a trained model applies to any shards (unlabeled, other classes), evaluate matches
// classes by name, runs work from any directory and after a move, a weights file alone predicts; the model seam
// (checkpoints of the MIL head), the one step every timing runs, the config key table and its docs.
import Foundation
import Testing
@testable import HistoDistillCLI
@testable import Layers
import SafeTensors
import TensorCore
@testable import TileShards
@testable import Training

/// Packs `count` synthetic 32x32 tiles per class (class k shows in the red channel) into `dir/NAME`.
func classShards(_ dir: URL, name: String, classes: [String], count: Int = 6, unlabeled: Bool = false, micronsPerPixel: Double? = nil) throws -> URL {
    let input = dir.appendingPathComponent("in-\(name)")
    for (k, cls) in classes.enumerated() {
        let folder = input.appendingPathComponent(cls)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        for i in 0..<count {
            var g = SplitMix64(seed: UInt64(100 * k + i))
            let px = (0..<(32 * 32 * 3)).map { j -> UInt8 in
                let noise = UInt8(truncatingIfNeeded: g.next() % 64)
                return j % 3 == 0 ? UInt8(30 + 80 * (k % 3)) &+ noise : 100 &+ noise
            }
            try ImageCodec.writePNG(RGBImage(width: 32, height: 32, pixels: px), to: folder.appendingPathComponent("\(i).png"))
        }
    }
    let out = dir.appendingPathComponent(name)
    var options = PackOptions(output: out)
    options.micronsPerPixel = micronsPerPixel
    _ = try Packer.pack(try PackPlan.imageFolder(input, unlabeled: unlabeled), options: options)
    return out
}

@Suite("Self-describing runs")
struct RunDescriptionTests {
    /// A 3-class run trained for 2 steps under `dir/project/runs/teacher`, from a config with relative paths,
    /// started in `dir/project`.
    func trainedRun(_ dir: URL) throws -> (project: URL, run: URL) {
        let project = dir.appendingPathComponent("project")
        try FileManager.default.createDirectory(at: project, withIntermediateDirectories: true)
        _ = try classShards(project, name: "shards-abc", classes: ["a", "b", "c"])
        try """
        run: {output: runs/teacher}
        data: {train: shards-abc, val: shards-abc, input_factor: 2, mean: [0.4, 0.4, 0.4], std: [0.2, 0.2, 0.2]}
        model: {planes: [32, 32], blocks: [1, 1]}
        train: {max_steps: 2, batch_size: 6}
        """.write(to: project.appendingPathComponent("teacher.yaml"), atomically: true, encoding: .utf8)
        let r = try run([try histodistillBinary(), "train", "--config", "teacher.yaml"], in: project)
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        return (project, project.appendingPathComponent("runs/teacher"))
    }

    @Test("shard sets at different µm/px: a warning naming both for training vs validation; distilling from a teacher trained at another scale is refused; ce_weight on unlabeled tiles is warned")
    func scaleMismatch() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-scale-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let fine = try classShards(dir, name: "fine", classes: ["a", "b"], micronsPerPixel: 0.5)
        let coarse = try classShards(dir, name: "coarse", classes: ["a", "b"], micronsPerPixel: 1.0)
        func config(_ yaml: String) throws -> RunConfig { try RunConfig.parse(yaml, source: "t.yaml") }
        let mixed = try SupervisedTrainer(config: try config("""
        run: {output: \(dir.appendingPathComponent("mixed").path)}
        data: {train: \(fine.path), val: \(coarse.path)}
        model: {planes: [32, 32], blocks: [1, 1]}
        train: {max_steps: 1, batch_size: 4}
        """), writer: "t")
        #expect(mixed.notes.count == 1 && mixed.notes[0].contains("data.train tiles are at 0.5 µm/px, data.val tiles at 1 µm/px"), "\(mixed.notes)")
        _ = try mixed.run(resume: false)
        let same = try SupervisedTrainer(config: try config("""
        run: {output: \(dir.appendingPathComponent("same").path)}
        data: {train: \(fine.path), val: \(fine.path)}
        model: {planes: [32, 32], blocks: [1, 1]}
        """), writer: "t")
        #expect(same.notes.isEmpty)
        let e = #expect(throws: TrainingError.self) {
            try SupervisedTrainer(config: try config("""
            run: {output: \(dir.appendingPathComponent("student").path)}
            data: {train: \(coarse.path), input_factor: 2}
            model: {planes: [32, 32], blocks: [1, 1]}
            distill: {teacher_run: \(dir.appendingPathComponent("mixed").path)}
            """), writer: "t")
        }
        #expect(e?.message.contains("trained on tiles at 0.5 µm/px, data.train holds tiles at 1 µm/px") == true, "\(e?.message ?? "")")
        // Cross-entropy asked for on tiles without labels: warned (the term would silently stay 0).
        let unlabeled = try classShards(dir, name: "u", classes: ["a", "b"], unlabeled: true, micronsPerPixel: 0.5)
        for (weight, warned) in [(1.0, true), (0.0, false)] {
            let student = try SupervisedTrainer(config: try config("""
            run: {output: \(dir.appendingPathComponent("ce-\(weight)").path)}
            data: {train: \(unlabeled.path), input_factor: 2}
            model: {planes: [32, 32], blocks: [1, 1]}
            distill: {teacher_run: \(dir.appendingPathComponent("mixed").path), ce_weight: \(weight)}
            """), writer: "t")
            #expect(student.notes.contains { $0.hasPrefix("distill.ce_weight is 1.0, but data.train (\(unlabeled.path)) holds no labeled tile") } == warned, "\(student.notes)")
        }
    }

    @Test("a run describes itself: run.json and best.safetensors carry classes, normalisation, input size and factor, shard identity, version; config.yaml paths are relative")
    func selfDescription() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-describe-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let (project, runURL) = try trainedRun(dir)
        let runDir = RunDirectory(runURL)
        let meta = try #require(try runDir.loadMetadata())
        #expect(meta.classes == ["a", "b", "c"])
        #expect(meta.mean == [0.4, 0.4, 0.4] && meta.std == [0.2, 0.2, 0.2])
        #expect(meta.inputFactor == 2 && meta.tileSize == 32 && meta.inputSize == 16)
        #expect(meta.model.classes == 3 && meta.model.planes == [32, 32])
        #expect(meta.program.hasPrefix("histodistill "))
        let shards = try ShardDataset(directory: project.appendingPathComponent("shards-abc"))
        #expect(meta.trainShards == shards.identity && meta.trainShards?.tiles == 18)
        #expect(meta.trainShardsPath == "../../shards-abc")
        let weights = try SafeTensorsFile(contentsOf: runDir.bestWeights)
        #expect(RunMetadata(safetensors: weights) == meta)
        #expect(weights.metadata["classes"] == "[\"a\",\"b\",\"c\"]")
        let checkpoint = try #require(runDir.checkpointStore().newest())
        #expect(RunMetadata(safetensors: try SafeTensorsFile(contentsOf: checkpoint.appendingPathComponent("model.safetensors"))) == meta)
        let yaml = try String(contentsOf: runDir.config, encoding: .utf8)
        #expect(yaml.contains("train: ../../shards-abc") && yaml.contains("output: ."), "\(yaml)")
        // Read back from the run directory, the paths resolve against it.
        let c = try runDir.loadConfig()
        #expect(c.trainShards == project.appendingPathComponent("shards-abc").standardizedFileURL.path)
        #expect(c.output == runURL.standardizedFileURL.path)
        // Another shard set has another identity; the same tiles copied elsewhere keep it.
        let copy = dir.appendingPathComponent("copy")
        try FileManager.default.copyItem(at: project.appendingPathComponent("shards-abc"), to: copy)
        #expect(try ShardDataset(directory: copy).identity == shards.identity)
        let other = try classShards(dir, name: "other", classes: ["a", "b", "c"], count: 5)
        #expect(try ShardDataset(directory: other).identity != shards.identity)
    }

    @Test("predict works on unlabeled shards and on shards of other classes; the CSV names the model's classes")
    func predictAnyShards() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-predict-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let (_, runURL) = try trainedRun(dir)
        let bin = try histodistillBinary()
        let unlabeled = try classShards(dir, name: "unlabeled", classes: ["slides"], count: 4, unlabeled: true)
        let two = try classShards(dir, name: "two", classes: ["x", "y"], count: 3)
        for (shards, tiles, label) in [(unlabeled, 4, ""), (two, 6, "x")] {
            let out = dir.appendingPathComponent("p-\(shards.lastPathComponent).csv")
            let r = try run([bin, "predict", "--run", runURL.path, "--shards", shards.path, "-o", out.path])
            #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
            let lines = try String(contentsOf: out, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.isEmpty }
            #expect(lines.first == "tile_id,slide,label,predicted,p_a,p_b,p_c")
            #expect(lines.count == tiles + 1)
            let first = lines[1].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            #expect(first[2] == label, "label column of \(shards.lastPathComponent): \(first)")
            #expect(["a", "b", "c"].contains(first[3]))
            #expect(abs(first.suffix(3).compactMap(Double.init).reduce(0, +) - 1) < 1e-5)
        }
        // The weights file alone is enough.
        let alone = dir.appendingPathComponent("alone.safetensors")
        try FileManager.default.copyItem(at: runURL.appendingPathComponent("best.safetensors"), to: alone)
        let out = dir.appendingPathComponent("alone.csv")
        let r = try run([bin, "predict", "--weights", alone.path, "--shards", two.path, "-o", out.path])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try String(contentsOf: out, encoding: .utf8).hasPrefix("tile_id,slide,label,predicted,p_a,p_b,p_c\n"))
        let same = try String(contentsOf: dir.appendingPathComponent("p-two.csv"), encoding: .utf8)
        #expect(try String(contentsOf: out, encoding: .utf8) == same, "a weights file alone predicts what its run predicts")
    }

    @Test("evaluate matches classes by name: a subset is fine, an unknown class stops naming both lists")
    func evaluateClassNames() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-evalnames-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let (_, runURL) = try trainedRun(dir)
        let bin = try histodistillBinary()
        let wrong = try classShards(dir, name: "wrong", classes: ["a", "zebra"], count: 2)
        let e = try run([bin, "evaluate", "--run", runURL.path, "--shards", wrong.path])
        #expect(e.status != 0)
        #expect(e.stderr.contains("[\"a\", \"zebra\"]") && e.stderr.contains("[\"a\", \"b\", \"c\"]") && e.stderr.contains("zebra"), "\(e.stderr)")
        #expect(!e.stderr.contains("Fatal error"))
        // Shards with classes c and a only: labels map by name (c is the model's class 2).
        let subset = try classShards(dir, name: "subset", classes: ["c", "a"], count: 2)
        let ok = try run([bin, "evaluate", "--run", runURL.path, "--shards", subset.path, "--output", dir.appendingPathComponent("e.json").path])
        #expect(ok.status == 0, "\(ok.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("e.json"))) as? [String: Any]
        #expect(report?["classes"] as? [String] == ["a", "b", "c"])
        #expect(report?["support"] as? [Int] == [2, 0, 2], "\(String(describing: report?["support"]))")
        #expect(report?["test_time_augmentation"] as? String == "none")
        // Test-time augmentation: recorded in the metrics, said on the summary line; predict takes it too.
        let tta = try run([bin, "evaluate", "--run", runURL.path, "--shards", subset.path, "--tta", "dihedral", "--bootstrap", "0",
                           "--output", dir.appendingPathComponent("t.json").path, "--predictions", dir.appendingPathComponent("t.csv").path])
        #expect(tta.status == 0 && tta.stdout.contains("4 tiles (test-time augmentation: dihedral, 8 views): accuracy"), "\(tta.stdout) \(tta.stderr)")
        let t = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("t.json"))) as? [String: Any]
        #expect(t?["test_time_augmentation"] as? String == "dihedral")
        let p = try run([bin, "predict", "--run", runURL.path, "--shards", subset.path, "--tta", "flips", "-o", dir.appendingPathComponent("p.csv").path])
        #expect(p.status == 0, "\(p.stderr)")
        #expect(try String(contentsOf: dir.appendingPathComponent("p.csv"), encoding: .utf8).split(separator: "\n").count == 5)
        let bad = try run([bin, "evaluate", "--run", runURL.path, "--tta", "rotations"])
        #expect(bad.status != 0 && bad.stderr.contains("--tta") && bad.stderr.contains("dihedral") && !bad.stderr.contains("Fatal error"), "\(bad.stderr)")
    }

    @Test("evaluate --run works from another directory and after the run and its shards are moved")
    func runFromAnywhere() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-move-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let (project, runURL) = try trainedRun(dir)
        let bin = try histodistillBinary()
        let elsewhere = dir.appendingPathComponent("elsewhere")
        try FileManager.default.createDirectory(at: elsewhere, withIntermediateDirectories: true)
        let a = try run([bin, "evaluate", "--run", runURL.path], in: elsewhere)
        #expect(a.status == 0 && a.stdout.contains("18 tiles: accuracy"), "\(a.stdout) \(a.stderr)")
        let moved = dir.appendingPathComponent("moved-project")
        try FileManager.default.moveItem(at: project, to: moved)
        let b = try run([bin, "evaluate", "--run", "runs/teacher"], in: moved)
        #expect(b.status == 0 && b.stdout.contains("18 tiles: accuracy"), "\(b.stdout) \(b.stderr)")
        let c = try run([bin, "evaluate", "--run", moved.appendingPathComponent("runs/teacher").path], in: elsewhere)
        #expect(c.status == 0, "\(c.stderr)")
        // Resume of the moved run finds its shards and checkpoints.
        let d = try run([bin, "train", "--config", "runs/teacher/config.yaml", "--resume", "--set", "train.max_steps=3"], in: moved)
        #expect(d.status == 0 && d.stdout.contains("done: step 3"), "\(d.stdout) \(d.stderr)")
    }

    @Test("the attention-MIL head goes through the same checkpoints and weights files as the ResNets")
    func milCheckpointRoundTrip() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-milckpt-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let head = AttentionMIL<Float>(featureDimension: 12, classes: 2, seed: 5)
        let optimizer = Optimizer(.adam(), count: head.parameterCount)
        // One real Adam step so the moments are not zero.
        var g = SeededGenerator(seed: 9)
        let bag = (0..<(5 * 12)).map { _ in Float.random(in: -1..<1, using: &g) }
        var logits = [Float](repeating: 0, count: 2), attention = [Float](repeating: 0, count: 5), patch = [Float](repeating: 0, count: 10)
        bag.withUnsafeBufferPointer { head.forward(bag: $0.baseAddress!, count: 5, bagLogits: &logits, attention: &attention, patchLogits: &patch) }
        head.parameters.zeroGradients()
        let grad: [Float] = [0.3, -0.3]
        grad.withUnsafeBufferPointer { head.backward(gradBagLogits: $0.baseAddress!, gradPatchLogits: nil) }
        // The data-parallel step's update path works for the head as for the ResNets.
        let stepper = DataParallelStep(model: head, group: SingleProcessGroup())
        let before = head.parameters.values.array
        let applied = try stepper.finish(LossTerms(total: 0.5), count: 1, optimizer: optimizer, lr: 0.01)
        #expect(applied.divergence == nil && head.parameters.values.array != before && optimizer.step == 1)
        let updated = head.parameters.values.array
        head.parameters.gradients!.pointer[3] = .nan
        let refused = try stepper.finish(LossTerms(total: 0.5), count: 1, optimizer: optimizer, lr: 0.01)
        #expect(refused.divergence?.contains("non-finite") == true && head.parameters.values.array == updated && optimizer.step == 1)
        let store = CheckpointStore(directory: dir)
        let state = CheckpointState(step: 1, cursor: DataCursor(), seed: 0, worldSize: 1, config: "{}", writer: "test")
        let saved = try store.save(model: head, optimizer: optimizer, state: state)
        let other = AttentionMIL<Float>(featureDimension: 12, classes: 2, seed: 77)
        let otherOptimizer = Optimizer(.adam(), count: other.parameterCount)
        #expect(other.parameters.values.array != head.parameters.values.array)
        #expect(try store.load(saved, model: other, optimizer: otherOptimizer).step == 1)
        #expect(other.parameters.values.array == head.parameters.values.array)
        #expect(otherOptimizer.second.array == optimizer.second.array && otherOptimizer.step == 1)
        let names = try SafeTensorsFile(contentsOf: saved.appendingPathComponent("model.safetensors")).tensors.map(\.name)
        #expect(names.first == "mlp.0.weight" && names.contains("attention.2.bias") && names.last == "patch_classifier.bias")
        // A head of another width does not load, with a message naming the key.
        let wide = AttentionMIL<Float>(featureDimension: 16, classes: 2)
        let e = #expect(throws: CheckpointError.self) { _ = try store.load(saved, model: wide, optimizer: Optimizer(.adam(), count: wide.parameterCount)) }
        #expect(e?.message.contains("mlp.0.weight") == true, "\(String(describing: e))")
    }

    @Test("a truncated ResNet (no classifier) gives pooled patch features through the inference path; classifying with it is a clear error")
    func truncatedFeatures() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-features-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try classShards(dir, name: "s", classes: ["a", "b"], count: 3)
        let dataset = try ShardDataset(directory: shards)
        let model = ResNet(ResNetConfig.paper(classes: 2, planes: [32, 64], blocks: [1, 1]).truncated(after: 1), seed: 2)
        let settings = InferenceSettings(inputFactor: 2, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25], batchSize: 4)
        let p = try Inference.features(model: model, dataset: dataset, settings: settings)
        #expect(p.features.count == 6 && p.features.allSatisfy { $0.count == 32 } && p.labels == [0, 0, 0, 1, 1, 1])
        // The same numbers as a forward of the first tile on its own.
        let one = try BatchMaker(dataset: dataset, transform: PairedTransform(augment: .none, factor: 2, mean: settings.mean, std: settings.std),
                                 seed: 0, globalBatch: 1, rank: 0, worldSize: 1, withLowResolution: true, shuffle: false)
            .makeBatchAt(plan: EpochPlan(count: 6, seed: 0, epoch: 0, globalBatch: 1, shuffle: false), range: 0..<1)
        let pooled = one.lr.withUnsafeBufferPointer { Array(UnsafeBufferPointer(start: model.forward($0.baseAddress!, shape: NCHW(1, 3, 16, 16), training: false).pooled.data, count: 32)) }
        #expect(zip(pooled, p.features[0]).allSatisfy { abs($0 - $1) <= 1e-5 * max(1, abs($0)) })
        let e = #expect(throws: TrainingError.self) { _ = try Inference.run(model: model, dataset: dataset, settings: settings) }
        #expect(e?.message.contains("no classifier") == true)
    }

    @Test("a BatchNorm model whose last map is 1x1 refuses one tile per step (train names train.batch_size, cost names --batch) and trains with two")
    func batchNormNeedsTwoValues() throws {
        #expect(ResNetConfig.resnet18(classes: 2).minimumTrainingBatch(resolution: 32) == 2)   // 32 px: layer4 is 1x1
        #expect(ResNetConfig.resnet18(classes: 2).minimumTrainingBatch(resolution: 64) == 1)   // 2x2
        #expect(ResNetConfig.paper(classes: 2).minimumTrainingBatch(resolution: 32) == 1)      // GroupNorm
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-bn-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try classShards(dir, name: "s", classes: ["a", "b"], count: 3)
        func config(_ batch: Int) throws -> RunConfig {
            try RunConfig.parse("""
            run: {output: \(dir.appendingPathComponent("r\(batch)").path)}
            data: {train: \(shards.path)}
            model: {architecture: resnet18}
            train: {max_steps: 1, batch_size: \(batch)}
            """, source: "t.yaml")
        }
        let e = #expect(throws: TrainingError.self) { try SupervisedTrainer(config: try config(1), writer: "t") }
        #expect(e?.message.contains("train.batch_size 1 over 1 rank(s) gives 1") == true && e?.message.contains("at 32 px") == true, "\(e?.message ?? "")")
        #expect(try SupervisedTrainer(config: try config(2), writer: "t").run(resume: false) == .finished)
        let bin = try histodistillBinary()
        let refused = try run([bin, "cost", "--model", "resnet18", "--batch", "1", "--resolutions", "32"])
        #expect(refused.status != 0 && refused.stderr.contains("at 32 px its last feature map is 1x1") && refused.stderr.contains("--batch")
                && !refused.stderr.contains("Backtrac"), "\(refused.stderr)")
        let sized = try run([bin, "cost", "--model", "resnet18", "--batch", "2", "--resolutions", "32"])
        #expect(sized.status == 0 && sized.stdout.contains("| 32 px |"), "\(sized.stdout) \(sized.stderr)")
    }

    @Test("cost --measure --distill times the distillation settings it is given")
    func costHonoursDistillSettings() throws {
        let bin = try histodistillBinary()
        let r = try run([bin, "cost", "--measure", "--distill", "--resolutions", "32,16", "--batch", "2", "--reps", "1", "--steps", "1",
                         "--temperature", "2", "--pixel-resize", "bicubic", "--pixel-norm", "l1", "--ce-weight", "0.5"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("distillation objective: KD T=2.0 x1.0, pixel l1 bicubic x1.0, CE x0.5"), "\(r.stdout)")
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let fromConfig = try run([bin, "cost", "--measure", "--distill", "--resolutions", "32,16", "--batch", "2", "--reps", "1", "--steps", "1",
                                  "--distill-config", root.appendingPathComponent("configs/student-lung-56-distill.yaml").path])
        let shipped = try RunConfig.load(root.appendingPathComponent("configs/student-lung-56-distill.yaml")).objective
        #expect(fromConfig.stdout.contains("distillation objective: \(shipped.summary)"), "\(fromConfig.stdout) \(fromConfig.stderr)")
        // The timed step is the trainer's: a DistillationStep with exactly that objective.
        var o = DistillationObjective()
        o.temperature = 2; o.pixelResize = .bicubic
        #expect(StepRunner.distillationStep(.paper(classes: 3), objective: o).objective == o)
    }

    @Test("every config key is declared once: configs/README.md holds the generated reference, --set typos get a suggestion, enums list their values")
    func configTable() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let readme = try String(contentsOf: root.appendingPathComponent("configs/README.md"), encoding: .utf8)
        #expect(readme.contains(ConfigKey.markdownReference), "configs/README.md is out of date: regenerate its reference with `histodistill config-keys --markdown`")
        #expect(Set(ConfigKey.table.map(\.path)).count == ConfigKey.table.count, "no key declared twice")
        let e = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}", source: "c.yaml", overrides: ["train.epoch=7"]) }
        #expect(e?.message.contains("did you mean 'train.epochs'") == true, "\(String(describing: e))")
        let f = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}\nmodel: {architecture: resnet19}", source: "c.yaml") }
        #expect(f?.message.contains("model.architecture must be one of resnet-gn, resnet18, resnet34") == true && f?.message.contains("did you mean 'resnet18'") == true,
                "\(String(describing: f))")
        let g = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}", source: "c.yaml", overrides: ["schedule.name=cosin"]) }
        #expect(g?.message.contains("did you mean 'cosine'") == true)
        // Every key survives the saved YAML: set each to a non-default value and read it back.
        var c = try RunConfig.parse("data: {train: \"a dir: with colon\", val: v}\ndistill: {teacher_run: t}", source: "c.yaml",
                                    overrides: ["model.architecture=resnet18", "optimizer.name=sgd", "schedule.name=cosine", "distill.pixel_resize=maxpool+bicubic",
                                                "data.unlabeled=[u1, u2]", "train.max_steps=9", "model.planes=[16, 32]", "data.on_corrupt=skip"])
        c.augment.hue = 0.25
        #expect(try RunConfig.parse(c.yaml, source: "written") == c, "\(c.yaml)")
    }

    @Test("CPU capabilities come from one place and agree with /proc/cpuinfo")
    func cpuCapabilities() throws {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return }
        let flags = Set(text.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: ":")[1].split(separator: " ").map(String.init) ?? [])
        let cpu = CPUCapabilities.current
        #expect(cpu.avx512 == flags.contains("avx512f"))
        #expect(cpu.avx2 == (flags.contains("avx2") && flags.contains("fma")))
        #expect(cpu.avx512BF16 == flags.contains("avx512_bf16"))
        #expect(DirectConv.isAvailable == cpu.avx512)
        #expect(cpu.modelName != "unknown")
    }
}
