// A run never silently becomes a different run: resume refuses changed model/data/objective keys and another
// shard set, allows schedule keys with a note; metrics after the checkpoint are dropped on resume; one process
// per run directory; stray temporaries are cleaned; checkpoints are finite; divergence is caught and names what
// was kept; disk-full errors name the file; CE is the same on any number of ranks; the teacher sees its own
// normalisation; unlabeled validation reads n/a.
import Foundation
import Testing
@testable import HistoDistillCLI
@testable import Layers
import SafeTensors
import TensorCore
@testable import TileShards
@testable import Training

/// A tiny supervised config over `shards` writing to `output`.
func lifecycleConfig(shards: URL, output: URL, maxSteps: Int = 6, batch: Int = 4, extra: String = "") throws -> RunConfig {
    try RunConfig.parse("""
    run: {output: \(output.path), seed: 3}
    data: {train: \(shards.path), val: \(shards.path), input_factor: 2}
    model: {planes: [32, 32], blocks: [1, 1]}
    optimizer: {name: adam, lr: 0.003}
    train: {epochs: 3, max_steps: \(maxSteps), batch_size: \(batch), checkpoint_every: 2, keep: 5}
    \(extra)
    """, source: "test.yaml")
}

/// `lifecycleConfig` written to `dir/c.yaml` for the command line; returns the file.
func lifecycleConfigFile(_ dir: URL, shards: URL, output: URL, maxSteps: Int = 6) throws -> URL {
    let url = dir.appendingPathComponent("c.yaml")
    try (try lifecycleConfig(shards: shards, output: output, maxSteps: maxSteps)).yaml.write(to: url, atomically: true, encoding: .utf8)
    return url
}

@Suite("Run lifecycle")
struct RunLifecycleTests {
    @Test("resume refuses changed batch size, input factor and model keys, naming old and new; config.yaml is left as it was; a changed learning rate or thread count is noted")
    func resumeRefusesChangedKeys() throws {
        let dir = tempDir("resume-keys")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let out = dir.appendingPathComponent("run")
        try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out), writer: "test").run(resume: false, stopAfter: 2)
        let saved = try String(contentsOf: out.appendingPathComponent("config.yaml"), encoding: .utf8)
        for (override, expected) in [("train.batch_size=8", "train.batch_size: 4 -> 8"), ("data.input_factor=4", "data.input_factor: 2 -> 4"),
                                     ("model.planes=[32, 64]", "model.planes: [32, 32] -> [32, 64]")] {
            var c = try lifecycleConfig(shards: shards, output: out)
            c = try RunConfig.parse(c.yaml, source: "x", overrides: [override])
            let e = #expect(throws: TrainingError.self) { try SupervisedTrainer(config: c, writer: "test").run(resume: true) }
            #expect(e?.message.contains(expected) == true, "\(String(describing: e))")
            #expect(try String(contentsOf: out.appendingPathComponent("config.yaml"), encoding: .utf8) == saved, "a refused resume keeps config.yaml")
        }
        // A learning rate and the thread count may change (threads order the float sums of the split batch): the resume
        // goes ahead and says it is no longer bit-exact, naming both.
        let c = try RunConfig.parse(try lifecycleConfig(shards: shards, output: out).yaml, source: "x",
                                    overrides: ["optimizer.lr=0.001", "train.threads=1"])
        let t = try SupervisedTrainer(config: c, writer: "test")
        var notes: [String] = []
        t.progress = { notes.append($0) }
        #expect(try t.run(resume: true) == .finished)
        #expect(notes.contains { $0.contains("optimizer.lr: 0.003 -> 0.001") && $0.contains("train.threads") && $0.contains("no longer bit-exact") },
                "\(notes)")
        // Raising train.max_steps only moves where the run stops: the note says so, and the steps equal an uninterrupted run's.
        let whole = try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: dir.appendingPathComponent("whole"), maxSteps: 5), writer: "test")
        try whole.run(resume: false)
        let first = try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: dir.appendingPathComponent("longer"), maxSteps: 3), writer: "test")
        try first.run(resume: false)
        let longer = try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: dir.appendingPathComponent("longer"), maxSteps: 5), writer: "test")
        var stopNotes: [String] = []
        longer.progress = { stopNotes.append($0) }
        try longer.run(resume: true)
        #expect(stopNotes.contains { $0.contains("train.max_steps: 3 -> 5") && $0.contains("only where the run stops changes") && !$0.contains("no longer bit-exact") },
                "\(stopNotes)")
        #expect(first.history.map(\.loss) + longer.history.map(\.loss) == whole.history.map(\.loss))
    }

    @Test("resume after the training shards were repacked with fewer tiles is refused with a message, not a crash")
    func resumeRefusesOtherShards() throws {
        let dir = tempDir("resume-shards")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let out = dir.appendingPathComponent("run")
        try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out, maxSteps: 40), writer: "test").run(resume: false, stopAfter: 5)
        // Repack the same folder with 8 of the 24 images.
        try FileManager.default.removeItem(at: shards)
        let small = dir.appendingPathComponent("small")
        for cls in ["a", "b"] {
            try FileManager.default.createDirectory(at: small.appendingPathComponent(cls), withIntermediateDirectories: true)
            for f in try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("in/\(cls)").path).sorted().prefix(4) {
                try FileManager.default.copyItem(at: dir.appendingPathComponent("in/\(cls)/\(f)"), to: small.appendingPathComponent("\(cls)/\(f)"))
            }
        }
        _ = try Packer.pack(try PackPlan.imageFolder(small), options: PackOptions(output: shards))
        let e = #expect(throws: TrainingError.self) {
            try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out, maxSteps: 40), writer: "test").run(resume: true)
        }
        #expect(e?.message.contains("24 tiles") == true && e?.message.contains("8 tiles") == true, "\(String(describing: e))")
        // The same tiles moved elsewhere resume fine (identity, not path).
    }

    @Test("metrics logged after the newest checkpoint are dropped on resume: steps read 1...N once")
    func metricsAfterCheckpointDropped() throws {
        let dir = tempDir("resume-metrics")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let out = dir.appendingPathComponent("run")
        try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out, maxSteps: 8), writer: "test").run(resume: false, stopAfter: 5)
        // As if killed after step 5 was logged but before its checkpoint: the newest checkpoint is step 4.
        let store = CheckpointStore(directory: out.appendingPathComponent("checkpoints"))
        try FileManager.default.removeItem(at: try #require(store.newest()))
        #expect(try store.state(of: try #require(store.newest())).step == 4)
        try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out, maxSteps: 8), writer: "test").run(resume: true)
        #expect(try losses(out).keys.sorted() == Array(1...8))
        let jsonl = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(jsonl.compactMap { try? JSONDecoder().decode(StepMetrics.self, from: Data($0.utf8)).step } == Array(1...8))
        let csv = try String(contentsOf: out.appendingPathComponent("metrics.csv"), encoding: .utf8).split(separator: "\n")
        #expect(csv.dropFirst().compactMap { Int($0.split(separator: ",")[0]) } == Array(1...8))
    }

    @Test("one process per run directory: a second train on a live run exits at once naming the holder; stray temporaries are removed")
    func oneWriter() throws {
        let dir = tempDir("lock")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let out = dir.appendingPathComponent("run")
        let config = dir.appendingPathComponent("c.yaml")
        // Bounded by neither steps nor epochs (3 epochs of this data is 18 steps, which a loaded machine can finish
        // before the second process starts): the first run holds the lock until it is killed.
        let unbounded = try RunConfig.parse(try lifecycleConfig(shards: shards, output: out, maxSteps: 100000).yaml, source: "x",
                                            overrides: ["train.epochs=100000"])
        try unbounded.yaml.write(to: config, atomically: true, encoding: .utf8)
        // Leftovers of a dead process: removed when a run takes the directory.
        try FileManager.default.createDirectory(at: out.appendingPathComponent("checkpoints/step-000000007.tmp-999999"), withIntermediateDirectories: true)
        try Data([1, 2, 3]).write(to: out.appendingPathComponent("best.safetensors.tmp-999999"))
        let bin = try histodistillBinary()
        let first = try Background([bin, "train", "--config", config.path])
        #expect(waitForSteps(out, lines: 2), "the first run trains")
        #expect(!FileManager.default.fileExists(atPath: out.appendingPathComponent("best.safetensors.tmp-999999").path))
        #expect(!FileManager.default.fileExists(atPath: out.appendingPathComponent("checkpoints/step-000000007.tmp-999999").path))
        let second = try run([bin, "train", "--config", config.path, "--resume"], timeout: 30)
        let running = first.process.isRunning
        kill(first.process.processIdentifier, SIGKILL)
        let ended = first.finish(timeout: 10)
        #expect(running, "the first run ended before it was killed: status \(ended.status): \(ended.stderr)")
        #expect(second.status != 0 && second.stderr.contains("in use by another histodistill process")
                && second.stderr.contains("pid \(first.process.processIdentifier)"), "\(second.stderr)")
        // The holder died: its lock is gone with it and the run resumes (and takes a step past its last checkpoint).
        let newest = try #require(CheckpointStore(directory: out.appendingPathComponent("checkpoints")).newest())
        let step = try CheckpointStore(directory: out.appendingPathComponent("checkpoints")).state(of: newest).step
        let third = try run([bin, "train", "--config", config.path, "--resume", "--stop-after", "\(step + 1)"], timeout: 120)
        #expect(third.status == 0 && third.stdout.contains("paused after step \(step + 1)"), "\(third.stdout) \(third.stderr)")
    }

    @Test("no checkpoint or best weights with non-finite values; the divergence message names what was kept; evaluate refuses NaN weights")
    func finiteCheckpoints() throws {
        let dir = tempDir("finite")
        defer { try? FileManager.default.removeItem(at: dir) }
        let model = ResNet(.paper(classes: 2, planes: [32, 32], blocks: [1, 1]), seed: 1)
        let optimizer = Optimizer(.adam(), count: model.parameterCount)
        let store = CheckpointStore(directory: dir.appendingPathComponent("ckpt"))
        let state = { (step: Int) in CheckpointState(step: step, cursor: DataCursor(), seed: 0, worldSize: 1, config: "{}", writer: "t") }
        try store.save(model: model, optimizer: optimizer, state: state(1))
        model.parameters.values.pointer[5] = .infinity
        let e = #expect(throws: CheckpointError.self) { try store.save(model: model, optimizer: optimizer, state: state(2)) }
        #expect(e?.message.contains("step-000000001") == true, "\(String(describing: e))")
        #expect(store.newest()?.lastPathComponent == "step-000000001")
        // A weights file with a NaN is refused by evaluate/predict's loader.
        model.parameters.values.pointer[5] = .nan
        let meta = RunMetadata(model: model.config, classes: ["a", "b"], mean: [0, 0, 0], std: [1, 1, 1], inputFactor: 1, tileSize: 32,
                               tileMicronsPerPixel: nil, trainShards: nil, trainShardsPath: nil, objective: "supervised", teacherRun: nil, program: "t")
        let file = dir.appendingPathComponent("nan.safetensors")
        try model.saveWeights(to: file, metadata: meta.safetensorsMetadata)
        let f = #expect(throws: TrainingError.self) { _ = try TrainedModel.load(run: nil, weights: file) }
        #expect(f?.message.contains("non-finite") == true)
        // A learning rate that blows the run up: it stops, saying no checkpoint was written yet.
        let shards = try trainingShards(dir)
        let c = try RunConfig.parse(try lifecycleConfig(shards: shards, output: dir.appendingPathComponent("run"), maxSteps: 30).yaml,
                                    source: "x", overrides: ["optimizer.lr=1e30", "train.checkpoint_every=1000"])
        let g = #expect(throws: TrainingError.self) { try SupervisedTrainer(config: c, writer: "t").run(resume: false) }
        #expect(g?.message.contains("no checkpoint has been written yet") == true, "\(String(describing: g))")
    }

    @Test("a finite but exploding loss is stopped by the divergence guard")
    func explodingLoss() throws {
        let dir = tempDir("explode")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let c = try RunConfig.parse(try lifecycleConfig(shards: shards, output: dir.appendingPathComponent("run"), maxSteps: 60).yaml,
                                    source: "x", overrides: ["optimizer.lr=1e6", "train.checkpoint_every=1000", "data.val=null"])
        let t = try SupervisedTrainer(config: c, writer: "t")
        let e = #expect(throws: TrainingError.self) { try t.run(resume: false) }
        #expect(e?.message.contains("exploded") == true || e?.message.contains("non-finite") == true, "\(String(describing: e)) \(t.history.map(\.loss))")
        #expect(t.history.count < 60, "stopped before the end")
        #expect(t.history.allSatisfy { ($0.loss ?? .nan).isFinite })
        // With the guard off, the same run is only stopped by non-finite values, if at all.
        let off = try RunConfig.parse(c.yaml, source: "x", overrides: ["train.divergence_factor=0", "train.max_steps=12",
                                                                       "run.output=\(dir.appendingPathComponent("off").path)"])
        let u = try SupervisedTrainer(config: off, writer: "t")
        _ = try? u.run(resume: false)
        #expect(u.history.count >= t.history.count)
    }

    @Test("a checkpoint write that fails (file size limit) names the step and the file, removes the partial copy, and keeps what was intact")
    func failingCheckpointWrite() throws {
        let dir = tempDir("efbig")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let out = dir.appendingPathComponent("run")
        let config = try lifecycleConfigFile(dir, shards: shards, output: out, maxSteps: 4)
        let bin = try histodistillBinary()
        // 200 KiB per file: the model (about 150 KB) fits, the optimizer state (twice that) does not.
        let r = try run(["bash", "-c", "ulimit -f 200; trap '' XFSZ; exec \"$0\" train --config \"$1\"", bin, config.path], timeout: 120)
        #expect(r.status != 0)
        #expect(r.stderr.contains("step 2: writing the checkpoint") && r.stderr.contains("File too large")
                && r.stderr.contains("no checkpoint has been written yet"), "\(r.stderr)")
        #expect(!r.stderr.contains("NSCocoaErrorDomain"))
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: out.appendingPathComponent("checkpoints").path)) ?? []
        #expect(!leftovers.contains { $0.contains(".tmp-") }, "\(leftovers)")
    }

    @Test("the teacher sees tiles normalised with its own statistics, whatever the student's")
    func teacherNormalisation() throws {
        let teacher = ResNet(.paper(classes: 2, planes: [32, 32], blocks: [1, 1]), seed: 4)
        var g = SeededGenerator(seed: 1)
        let raw = (0..<(2 * 3 * 16 * 16)).map { _ in Float.random(in: 0..<1, using: &g) }   // tiles in [0, 1]
        let s = (mean: [Float](arrayLiteral: 0.6, 0.5, 0.8), std: [Float](arrayLiteral: 0.17, 0.2, 0.11))
        let t = (mean: [Float](arrayLiteral: 0.5, 0.5, 0.5), std: [Float](arrayLiteral: 0.25, 0.3, 0.2))
        func normalised(_ m: (mean: [Float], std: [Float])) -> [Float] {
            raw.enumerated().map { i, v in let c = (i / 256) % 3; return (v - m.mean[c]) / m.std[c] }
        }
        let student = normalised(s), own = normalised(t)
        let direct = own.withUnsafeBufferPointer { Array(UnsafeBufferPointer(start: teacher.forward($0.baseAddress!, shape: NCHW(2, 3, 16, 16), training: false).logits!.data, count: 4)) }
        let source = RenormalizingTeacher(FrozenTeacher(teacher), from: s, to: t)
        let via = student.withUnsafeBufferPointer { Array(UnsafeBufferPointer(start: source.outputs($0.baseAddress!, shape: NCHW(2, 3, 16, 16)).logits!.data, count: 4)) }
        #expect(zip(direct, via).allSatisfy { abs($0 - $1) < 1e-4 }, "\(direct) vs \(via)")
        let naive = student.withUnsafeBufferPointer { Array(UnsafeBufferPointer(start: teacher.forward($0.baseAddress!, shape: NCHW(2, 3, 16, 16), training: false).logits!.data, count: 4)) }
        #expect(zip(direct, naive).contains { abs($0 - $1) > 1e-3 }, "the statistics matter for this check")
    }

    @Test("distill wires the teacher's own normalisation in when the student's differs, and refuses a teacher of another tile size")
    func distillUsesTeacherStatistics() throws {
        let dir = tempDir("teacher-stats")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let teacherDir = dir.appendingPathComponent("teacher")
        let tc = try RunConfig.parse(try lifecycleConfig(shards: shards, output: teacherDir, maxSteps: 2).yaml, source: "x",
                                     overrides: ["data.input_factor=1", "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.25, 0.25, 0.25]"])
        try SupervisedTrainer(config: tc, writer: "t").run(resume: false)
        func student(_ mean: String) throws -> SupervisedTrainer {
            let c = try RunConfig.parse("""
            run: {output: \(dir.appendingPathComponent("s\(UUID().uuidString)").path)}
            data: {train: \(shards.path), input_factor: 2, mean: \(mean), std: [0.25, 0.25, 0.25]}
            model: {planes: [32, 32], blocks: [1, 1]}
            train: {max_steps: 1, batch_size: 4}
            distill: {teacher_run: \(teacherDir.path)}
            """, source: "s.yaml")
            return try SupervisedTrainer(config: c, writer: "t")
        }
        #expect((try student("[0.5, 0.5, 0.5]").stepper.objective as? DistillationStep)?.teacher is FrozenTeacher)
        let renormalised = (try student("[0.6, 0.4, 0.7]").stepper.objective as? DistillationStep)?.teacher as? RenormalizingTeacher
        #expect(renormalised != nil)
        #expect(zip(renormalised?.shift ?? [], [0.4, -0.4, 0.8] as [Float]).allSatisfy { abs($0 - $1) < 1e-6 } && renormalised?.scale == [1, 1, 1],
                "(student mean - teacher mean) / teacher std")
        // Shards of another tile size: refused.
        let big = dir.appendingPathComponent("big")
        try FileManager.default.createDirectory(at: big.appendingPathComponent("a"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: big.appendingPathComponent("b"), withIntermediateDirectories: true)
        for i in 0..<8 {
            try ImageCodec.writePNG(RGBImage(width: 64, height: 64, pixels: [UInt8](repeating: UInt8(i * 20), count: 64 * 64 * 3)),
                                    to: big.appendingPathComponent("\(i % 2 == 0 ? "a" : "b")/\(i).png"))
        }
        _ = try Packer.pack(try PackPlan.imageFolder(big), options: PackOptions(output: dir.appendingPathComponent("bigshards")))
        let c = try RunConfig.parse("""
        data: {train: \(dir.appendingPathComponent("bigshards").path), input_factor: 2}
        model: {planes: [32, 32], blocks: [1, 1]}
        train: {max_steps: 1, batch_size: 4}
        distill: {teacher_run: \(teacherDir.path)}
        """, source: "s.yaml")
        let e = #expect(throws: TrainingError.self) { _ = try SupervisedTrainer(config: c, writer: "t") }
        #expect(e?.message.contains("32 px tiles") == true && e?.message.contains("64 px") == true, "\(String(describing: e))")
    }

    @Test("validation shards without labels give no accuracy (null, n/a), not 0")
    func unlabeledValidation() throws {
        let dir = tempDir("unlabeled-val")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let unlabeled = try classShards(dir, name: "u", classes: ["x"], count: 4, unlabeled: true)
        let c = try RunConfig.parse(try lifecycleConfig(shards: shards, output: dir.appendingPathComponent("run"), maxSteps: 6).yaml,
                                    source: "x", overrides: ["data.val=\(unlabeled.path)", "model.classes=2"])
        let t = try SupervisedTrainer(config: c, writer: "t")
        try t.run(resume: false)
        #expect(t.history.allSatisfy { $0.valAccuracy == nil } && t.bestAccuracy == nil)
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("run/best.safetensors").path))
    }

    @Test("the done line rounds and names the best weights; evaluate checks its output location before inference")
    func doneLineAndEvaluateOutput() throws {
        let dir = tempDir("done")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let config = dir.appendingPathComponent("c.yaml")
        try (try lifecycleConfig(shards: shards, output: dir.appendingPathComponent("run"), maxSteps: 6)).yaml.write(to: config, atomically: true, encoding: .utf8)
        let bin = try histodistillBinary()
        let r = try run([bin, "train", "--config", config.path])
        #expect(r.status == 0, "\(r.stderr)")
        let done = r.stdout.split(separator: "\n").first { $0.hasPrefix("done:") }.map(String.init) ?? ""
        // Not a terminal: timestamped step lines, at most one every 10 s plus the last, never one per step.
        let stepLines = r.stderr.split(separator: "\n").filter { $0.contains(" step ") }
        #expect(stepLines.count >= 2 && stepLines.count <= 3 && stepLines.last?.contains("step 6/6") == true
                && stepLines.allSatisfy { $0.hasPrefix("20") }, "\(r.stderr)")
        #expect(done.range(of: #"last val accuracy \d\.\d{4}; best val accuracy \d\.\d{4} \(step \d+\) kept in .*best\.safetensors"#, options: .regularExpression) != nil, "\(done)")
        let blocked = dir.appendingPathComponent("c.yaml/sub/eval.json")   // under a file: cannot be created
        let e = try run([bin, "evaluate", "--run", dir.appendingPathComponent("run").path, "--output", blocked.path])
        #expect(e.status != 0 && e.stderr.contains("c.yaml/sub") && !e.stdout.contains("tiles: accuracy"), "\(e.stdout) \(e.stderr)")
        let nested = dir.appendingPathComponent("new/folder/eval.json")
        let ok = try run([bin, "evaluate", "--run", dir.appendingPathComponent("run").path, "--output", nested.path])
        #expect(ok.status == 0 && FileManager.default.fileExists(atPath: nested.path), "\(ok.stderr)")
    }

    @Test("user mistakes found by black-box testing each get one clear line")
    func userMistakes() throws {
        let dir = tempDir("mistakes")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let out = dir.appendingPathComponent("run")
        // A checkpoint whose weights were damaged to NaN is not resumed from.
        try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out, maxSteps: 6), writer: "t").run(resume: false, stopAfter: 2)
        let newest = try #require(CheckpointStore(directory: out.appendingPathComponent("checkpoints")).newest())
        let weights = newest.appendingPathComponent("model.safetensors")
        let file = try SafeTensorsFile(contentsOf: weights)
        try SafeTensorsFile(tensors: file.tensors.map { $0.name == "fc.bias" ? SafeTensor(name: $0.name, shape: $0.shape, floats: $0.floats.map { _ in .nan }) : $0 },
                            metadata: file.metadata).serialized().write(to: weights)
        let poisoned = #expect(throws: CheckpointError.self) {
            try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out, maxSteps: 6), writer: "t").run(resume: true)
        }
        #expect(poisoned?.message.contains("non-finite") == true && poisoned?.message.contains(newest.lastPathComponent) == true, "\(String(describing: poisoned))")
        // Supervised training on shards without labels is refused; so is evaluating them.
        let unlabeled = try classShards(dir, name: "u", classes: ["a", "b"], count: 3, unlabeled: true)
        let e = #expect(throws: TrainingError.self) {
            _ = try SupervisedTrainer(config: try lifecycleConfig(shards: unlabeled, output: dir.appendingPathComponent("u-run")), writer: "t")
        }
        #expect(e?.message.contains("no labeled tile") == true, "\(String(describing: e))")
        // Labels of a single class: softmax over one class learns nothing; refused, naming the class.
        let single = try classShards(dir, name: "one", classes: ["tumor"], count: 3)
        let one = #expect(throws: TrainingError.self) {
            _ = try SupervisedTrainer(config: try lifecycleConfig(shards: single, output: dir.appendingPathComponent("one-run")), writer: "t")
        }
        #expect(one?.message.contains("holds labels of one class only (tumor)") == true, "\(String(describing: one))")
        let bin = try histodistillBinary()
        let ev = try run([bin, "evaluate", "--run", dir.appendingPathComponent("run").path, "--shards", unlabeled.path, "--weights",
                          newest.deletingLastPathComponent().appendingPathComponent("step-000000002/model.safetensors").path])
        #expect(ev.status != 0 && (ev.stderr.contains("no labeled tile") || ev.stderr.contains("non-finite")), "\(ev.stderr)")
        // An output path that is a directory; a shard folder that does not exist.
        let p = try run([bin, "predict", "--run", out.path, "--weights", weights.path, "--shards", shards.path, "-o", dir.path])
        #expect(p.status != 0 && !p.stderr.contains("NSCocoaErrorDomain"), "\(p.stderr)")
        let missing = try run([bin, "predict", "--run", out.path, "--shards", dir.appendingPathComponent("nope").path, "-o", dir.appendingPathComponent("p.csv").path])
        #expect(missing.status != 0 && missing.stderr.contains("no such directory"), "\(missing.stderr)")
        // Config: a key given twice, a --set value blamed on --set, hue out of range.
        let twice = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}\ntrain: {epochs: 2}\ntrain: {keep: 1}", source: "c.yaml") }
        #expect(twice?.message.contains("'train' is given twice") == true, "\(String(describing: twice))")
        let blamed = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}", source: "c.yaml", overrides: ["model.architecture=resnet19"]) }
        #expect(blamed?.message.hasPrefix("--set model.architecture: model.architecture must be one of") == true, "\(String(describing: blamed))")
        #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}\naugment: {hue: 0.9}", source: "c.yaml") }
        // cost: --distill needs --measure and a teacher resolution above the students'; weights are not negative.
        for args in [["--distill"], ["--measure", "--distill", "--resolutions", "32,64"], ["--measure", "--distill", "--resolutions", "32,16", "--kd-weight=-1"]] {
            let r = try run([bin, "cost"] + args)
            #expect(r.status != 0 && !r.stderr.isEmpty, "cost \(args): \(r.stdout) \(r.stderr)")
        }
    }

    @Test("resuming with the run's own config.yaml after a run started with relative paths notes nothing but real changes")
    func resumeWithRunConfig() throws {
        let dir = tempDir("relative")
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try trainingShards(dir)
        try """
        run: {output: runs/r}
        data: {train: shards, val: shards, input_factor: 2}
        model: {planes: [32, 32], blocks: [1, 1]}
        train: {max_steps: 2, batch_size: 4}
        """.write(to: dir.appendingPathComponent("c.yaml"), atomically: true, encoding: .utf8)
        let bin = try histodistillBinary()
        let a = try run([bin, "train", "--config", "c.yaml"], in: dir)
        #expect(a.status == 0, "\(a.stderr)")
        let b = try run([bin, "train", "--config", "runs/r/config.yaml", "--resume", "--set", "train.max_steps=3"], in: dir)
        #expect(b.status == 0, "\(b.stderr)")
        #expect(b.stderr.contains("train.max_steps: 2 -> 3") && !b.stderr.contains("run.output") && !b.stderr.contains("data.val"), "\(b.stderr)")
    }
}
