// Faults of one kind: a command writing over results it should keep, or in the wrong place. A run directory's
// config.yaml resolves against that directory for every kind of run (train, distill, mil train, finetune); a fresh
// start never overwrites an earlier run's kept weights or metrics; a failed extraction leaves the old feature set;
// synth and pack never mix their output with other files or with another writer; a checkpoint's state.json with
// values no run writes is refused; evaluate --output elsewhere keeps the run's predictions; Foundation's file
// errors and a file-size limit read as one line naming the file.
import Foundation
import Testing
@testable import HistoDistillCLI
import Layers
import SafeTensors
import TensorCore
@testable import TileShards
@testable import Training

/// The step of every line of a run's metrics.jsonl, in file order (a step logged twice shows twice).
func loggedSteps(_ run: URL) throws -> [Int] {
    try String(contentsOf: run.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        .map { try JSONDecoder().decode(StepMetrics.self, from: Data($0.utf8)).step }
}

@Suite("Output safety", .serialized)
struct OutputSafetyTests {
    @Test("a MIL run's own config.yaml resolves against its directory: --resume from another directory continues that run there")
    func slideRunPathsFromAnotherDirectory() throws {
        let dir = tempDir("milcwd")
        defer { try? FileManager.default.removeItem(at: dir) }
        let meta = syntheticFeatures(classes: ["a", "b"], dimension: 4)
        var g = SplitMix64(seed: 3)
        func bags(_ prefix: String, _ n: Int) -> [SlideBag] {
            (0..<n).map { i in
                SlideBag(name: "\(prefix)\(i)", label: Int32(i % 2), features: (0..<12).map { _ in Float(g.next() % 100) / 100 },
                         x: [0, 32, 64], y: [0, 0, 0], tileIDs: [0, 1, 2])
            }
        }
        try FeatureSet(metadata: meta, slides: bags("t", 8)).write(to: dir.appendingPathComponent("train"))
        try FeatureSet(metadata: meta, slides: bags("v", 4)).write(to: dir.appendingPathComponent("val"))
        // Relative paths, as a user writes them, resolved against where the first run starts.
        try """
        run: {output: runs/m, seed: 1}
        data: {train: train, val: val}
        optimizer: {name: adam, lr: 0.003}
        train: {epochs: 3, batch_size: 4, checkpoint_every: 1000, threads: 1}
        mil: {beta: 0.5}
        """.write(to: dir.appendingPathComponent("mil.yaml"), atomically: true, encoding: .utf8)
        let bin = try histodistillBinary()
        let first = try run([bin, "mil", "train", "--config", "mil.yaml", "--stop-after", "3", "--set", "train.precision=bf16-mixed"], in: dir)
        #expect(first.status == 0 && first.stdout.contains("paused after step 3 (--stop-after)"), "\(first.stdout) \(first.stderr)")
        // The attention head has no convolutions: train.precision is warned about as having no effect, and not announced.
        #expect(first.stderr.contains("train.precision, which `histodistill mil train` does not read") && !first.stderr.contains("precision: bf16-mixed"),
                "\(first.stderr)")
        let runDir = dir.appendingPathComponent("runs/m")
        let header = try String(contentsOf: runDir.appendingPathComponent("config.yaml"), encoding: .utf8)
        #expect(RunDirectory.isEffectiveConfig(header) && !FileManager.default.fileExists(atPath: runDir.appendingPathComponent("run.json").path))
        // The run's own config, from another directory: its paths are the run's, not the current directory's.
        let loaded = try RunConfig.load(runDir.appendingPathComponent("config.yaml"))
        #expect(loaded.output == runDir.path && loaded.trainShards == dir.appendingPathComponent("train").path, "\(loaded.output) \(loaded.trainShards)")
        let elsewhere = dir.appendingPathComponent("elsewhere")
        try FileManager.default.createDirectory(at: elsewhere, withIntermediateDirectories: true)
        let behind = try run([bin, "mil", "train", "--config", "../runs/m/config.yaml", "--resume", "--stop-after", "2"], in: elsewhere)
        #expect(behind.status == 0 && behind.stdout.contains("nothing to do: the run is already at step 3, past --stop-after 2"), "\(behind.stdout)")
        let resumed = try run([bin, "mil", "train", "--config", "../runs/m/config.yaml", "--resume"], in: elsewhere)
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: elsewhere.path).isEmpty, "nothing is written into the current directory")
        #expect(try loggedSteps(runDir) == Array(1...6), "the run itself went on from step 3 to its end (6), each step once")
        let again = try run([bin, "mil", "train", "--config", "../runs/m/config.yaml", "--resume"], in: elsewhere)
        #expect(again.status == 0 && again.stdout.contains("nothing to do: the run in") && again.stdout.contains("already reached its last step"), "\(again.stdout)")
        // A user's own config (no header) still resolves against the current directory.
        #expect(!RunDirectory.isEffectiveConfig(try String(contentsOf: dir.appendingPathComponent("mil.yaml"), encoding: .utf8)))
    }

    @Test("over a run's own config.yaml, a path given with --set resolves against the current directory, the file's against the run's")
    func commandLinePathsResolveAgainstCurrentDirectory() throws {
        let dir = tempDir("setpaths")
        defer { try? FileManager.default.removeItem(at: dir) }
        let runDir = dir.appendingPathComponent("runs/a")
        try FileManager.default.createDirectory(at: runDir, withIntermediateDirectories: true)
        let file = runDir.appendingPathComponent("config.yaml")
        try (RunDirectory.effectiveConfigHeader() + """
        run: {name: a, output: .}
        data: {train: ../../shards/train, val: ../../shards/val}
        distill: {teacher_run: ../teacher}
        """).write(to: file, atomically: true, encoding: .utf8)
        let here = FileManager.default.currentDirectoryPath
        let c = try RunConfig.load(file, overrides: ["run.output=runs/b", "data.unlabeled=[pool, /abs/pool2]",
                                                     "distill.teacher_weights=w.safetensors"])
        #expect(c.output == here + "/runs/b", "\(c.output)")
        #expect(c.unlabeledShards == [here + "/pool", "/abs/pool2"] && c.teacherWeights == here + "/w.safetensors")
        // What the file says stays the run's.
        #expect(c.trainShards == dir.appendingPathComponent("shards/train").path && c.teacherRun == dir.appendingPathComponent("runs/teacher").path,
                "\(c.trainShards) \(c.teacherRun ?? "nil")")
        // Each entry of RunConfig.pathKeys maps its own key (the keys mappingPaths changes are exactly its keys), and
        // each, given with --set, resolves against the current directory. (A path key missing from the table would
        // go unnoticed here: mappingPaths is built from the same table.)
        var found: Set<String> = []
        for key in ConfigKey.table {
            guard let parsed = try? RunConfig.parse("data: {train: t}\ndistill: {teacher_run: r}\nfinetune: {}", source: "k.yaml",
                                                    overrides: ["\(key.path)=rel/x"]) else { continue }
            guard key.write(parsed) != key.write(parsed.mappingPaths { "/mark/" + $0 }) else { continue }
            found.insert(key.path)
            let loaded = try RunConfig.load(file, overrides: ["\(key.path)=rel/x"])
            #expect(key.write(loaded)?.contains(here + "/rel/x") == true, "\(key.path): \(key.write(loaded) ?? "nil")")
        }
        #expect(found == Set(RunConfig.pathKeys.keys), "\(found.sorted())")
    }

    @Test("a fresh start never overwrites an earlier run's kept weights or metrics; --resume without a checkpoint drops only stale metrics")
    func freshStartKeepsResults() throws {
        let dir = tempDir("fresh")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let out = dir.appendingPathComponent("run")
        let config = try lifecycleConfigFile(dir, shards: shards, output: out, maxSteps: 4)
        let bin = try histodistillBinary()
        #expect(try run([bin, "train", "--config", config.path, "--set", "train.threads=1"]).status == 0)
        let best = try Data(contentsOf: out.appendingPathComponent("best.safetensors"))
        let metrics = try Data(contentsOf: out.appendingPathComponent("metrics.jsonl"))
        // The checkpoints removed (to save space), best.safetensors and metrics kept.
        try FileManager.default.removeItem(at: out.appendingPathComponent("checkpoints"))
        let r = try run([bin, "train", "--config", config.path, "--set", "train.threads=1", "--set", "train.max_steps=2"])
        #expect(r.status != 0 && r.stderr.contains("holds an earlier run's results") && r.stderr.contains("best.safetensors")
                && r.stderr.contains("run.output"), "\(r.stderr)")
        #expect(try Data(contentsOf: out.appendingPathComponent("best.safetensors")) == best)
        #expect(try Data(contentsOf: out.appendingPathComponent("metrics.jsonl")) == metrics)
        // With --resume (a requeued job whose run died before its first checkpoint): it starts over, and the
        // earlier results are moved into previous-TIME/, whole.
        let restarted = try run([bin, "train", "--config", config.path, "--set", "train.threads=1", "--resume"])
        #expect(restarted.status == 0 && restarted.stderr.contains("no checkpoint to resume from: starting over"), "\(restarted.stderr)")
        let previous = try #require(try FileManager.default.contentsOfDirectory(atPath: out.path).first { $0.hasPrefix("previous-") })
        #expect(try Data(contentsOf: out.appendingPathComponent("\(previous)/best.safetensors")) == best)
        #expect(try Data(contentsOf: out.appendingPathComponent("\(previous)/metrics.jsonl")) == metrics)
        #expect(try loggedSteps(out) == Array(1...4), "each step logged once")
        let csvSteps = try String(contentsOf: out.appendingPathComponent("metrics.csv"), encoding: .utf8).split(separator: "\n").dropFirst().map { $0.split(separator: ",")[0] }
        #expect(csvSteps == ["1", "2", "3", "4"], "\(csvSteps)")
        // Metrics files without a step (a multi-student run refused after creating them) do not block a fresh start.
        let other = dir.appendingPathComponent("other")
        try FileManager.default.createDirectory(at: other, withIntermediateDirectories: true)
        try (StepMetrics.csvHeader + "\n").write(to: other.appendingPathComponent("metrics.csv"), atomically: true, encoding: .utf8)
        try Data().write(to: other.appendingPathComponent("metrics.jsonl"))
        let fresh = try run([bin, "train", "--config", config.path, "--set", "train.threads=1", "--set", "run.output=\(other.path)"])
        #expect(fresh.status == 0, "\(fresh.stderr)")
    }

    @Test("no output replaces an input: evaluate, predict and cka refuse an output that is the weights or shards they read; a symlinked -o is followed")
    func outputsNeverReplaceInputs() throws {
        let dir = tempDir("inputs")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let out = dir.appendingPathComponent("run")
        try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out, maxSteps: 2), writer: "t").run(resume: false)
        let bin = try histodistillBinary()
        let best = out.appendingPathComponent("best.safetensors")
        let weights = try Data(contentsOf: best)
        let shard = try #require(try FileManager.default.contentsOfDirectory(atPath: shards.path).first { $0.hasSuffix(".shard") })
        let shardBytes = try Data(contentsOf: shards.appendingPathComponent(shard))
        for args in [["evaluate", "--run", out.path, "--bootstrap", "0", "--output", best.path],
                     ["predict", "--run", out.path, "--shards", shards.path, "-o", best.path],
                     ["predict", "--run", out.path, "--shards", shards.path, "-o", shards.appendingPathComponent(shard).path]] {
            let r = try run([bin] + args)
            #expect(r.status != 0 && r.stderr.contains("is one of this command's inputs"), "\(args): \(r.stderr)")
        }
        #expect(try Data(contentsOf: best) == weights && Data(contentsOf: shards.appendingPathComponent(shard)) == shardBytes)
        let same = dir.appendingPathComponent("same.out")
        let both = try run([bin, "evaluate", "--run", out.path, "--bootstrap", "0", "--output", same.path, "--predictions", same.path])
        #expect(both.status != 0 && both.stderr.contains("both name"), "\(both.stderr)")
        // extract -o through a symbolic link: the set is replaced where the link points, and the link stays a link.
        let target = dir.appendingPathComponent("target"), link = dir.appendingPathComponent("link")
        try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(at: link, withDestinationURL: target)
        let e = try run([bin, "extract", "--run", out.path, "--truncate-after", "1", "--shards", shards.path, "-o", link.path])
        #expect(e.status == 0, "\(e.stderr)")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link.path) == target.path)
        #expect(try FeatureSet(directory: target).slides.isEmpty == false)
    }

    @Test("a failed extraction leaves the feature set in -o as it was; a good one replaces it whole, leaving no staging directory")
    func extractKeepsOldSet() throws {
        let dir = tempDir("extractsafe")
        defer { try? FileManager.default.removeItem(at: dir) }
        let tiles = try slideShards(dir)
        let model = ResNet(.paper(classes: 2, planes: [32, 64], blocks: [1, 1]), seed: 7)
        let (weights, _) = try describedWeights(model, dir, "w.safetensors")
        let bin = try histodistillBinary()
        let out = dir.appendingPathComponent("features")
        let first = try run([bin, "extract", "--weights", weights.path, "--truncate-after", "1", "--shards", tiles.path, "-o", out.path])
        #expect(first.status == 0, "\(first.stderr)")
        func snapshot() throws -> [String: Data] {
            Dictionary(uniqueKeysWithValues: try FileManager.default.contentsOfDirectory(atPath: out.path).filter { $0 != ".lock" }.map { ($0, try Data(contentsOf: out.appendingPathComponent($0))) })
        }
        let before = try snapshot()
        // A copy of the shards with one tile's compressed bytes damaged: extraction stops on it.
        let damaged = dir.appendingPathComponent("damaged")
        try FileManager.default.copyItem(at: tiles, to: damaged)
        let shard = try #require(try FileManager.default.contentsOfDirectory(atPath: damaged.path).first { $0.hasSuffix(".shard") })
        var bytes = try Data(contentsOf: damaged.appendingPathComponent(shard))
        for i in stride(from: bytes.count / 3, to: bytes.count / 3 + 64, by: 1) { bytes[i] ^= 0x5A }
        try bytes.write(to: damaged.appendingPathComponent(shard))
        let failed = try run([bin, "extract", "--weights", weights.path, "--truncate-after", "2", "--shards", damaged.path, "-o", out.path])
        #expect(failed.status != 0, "\(failed.stdout)")
        #expect(try snapshot() == before, "the old set is untouched")
        // A good extraction (another depth) replaces the set whole.
        let second = try run([bin, "extract", "--weights", weights.path, "--truncate-after", "2", "--shards", tiles.path, "-o", out.path])
        #expect(second.status == 0, "\(second.stderr)")
        #expect(try FeatureSet(directory: out).metadata.featureDimension == 64, "the second stage's 64 features replaced the first's 32")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix(".") }.isEmpty, "no staging or old directory left")
    }

    @Test("synth refuses a non-empty directory; pack refuses to run as several MPI ranks and to share its output with a live packer")
    func oneWriterPerOutput() throws {
        let dir = tempDir("writers")
        defer { try? FileManager.default.removeItem(at: dir) }
        let bin = try histodistillBinary()
        let images = dir.appendingPathComponent("images/a")
        try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
        try "keep".write(to: images.appendingPathComponent("00000.png"), atomically: true, encoding: .utf8)
        let s = try run([bin, "synth", dir.appendingPathComponent("images").path, "--train-per-class", "1", "--val-per-class", "1"])
        #expect(s.status != 0 && s.stderr.contains("is not empty"), "\(s.stderr)")
        #expect(try String(contentsOf: images.appendingPathComponent("00000.png"), encoding: .utf8) == "keep")
        let made = try run([bin, "synth", dir.appendingPathComponent("new").path, "--size", "32", "--train-per-class", "2", "--val-per-class", "1"])
        #expect(made.status == 0, "\(made.stderr)")
        // pack as one of two ranks (the variables mpirun sets): refused before anything is written.
        let ranked = try run([bin, "pack", dir.appendingPathComponent("new/train").path, "-o", dir.appendingPathComponent("p").path],
                             environment: ["OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"])
        #expect(ranked.status != 0 && ranked.stderr.contains("pack runs as one process"), "\(ranked.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("p").path))
        // Another packer holding the output: refused, naming it.
        let held = dir.appendingPathComponent("held")
        let lock = try RunLock(directory: held, hint: "test")
        let busy = try run([bin, "pack", dir.appendingPathComponent("new/train").path, "-o", held.path])
        #expect(busy.status != 0 && busy.stderr.contains("in use by another histodistill process") && busy.stderr.contains("pid \(getpid())"), "\(busy.stderr)")
        withExtendedLifetime(lock) {}
    }

    @Test("a checkpoint's state.json with values no run writes is refused, naming the file and the value, with the way back")
    func damagedState() throws {
        let dir = tempDir("state")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let out = dir.appendingPathComponent("run")
        try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out, maxSteps: 6), writer: "t").run(resume: false, stopAfter: 2)
        let store = CheckpointStore(directory: out.appendingPathComponent("checkpoints"))
        let newest = try #require(store.newest())
        let url = newest.appendingPathComponent("state.json")
        let good = try Data(contentsOf: url)
        for (path, value) in [(["cursor", "epoch"], -3), (["step"], -5), (["worldSize"], 0), (["formatVersion"], 99)] {
            var object = try #require(try JSONSerialization.jsonObject(with: good) as? [String: Any])
            if path.count == 2 { var inner = object[path[0]] as! [String: Any]; inner[path[1]] = value; object[path[0]] = inner } else { object[path[0]] = value }
            try JSONSerialization.data(withJSONObject: object).write(to: url)
            let e = #expect(throws: CheckpointError.self) {
                try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out, maxSteps: 6), writer: "t").run(resume: true)
            }
            #expect(e?.message.contains(url.path) == true && e?.message.contains("\(path.last!) \(value)") == true
                    && e?.message.contains("resume from the one before") == true, "\(String(describing: e))")
        }
        // A key removed or of the wrong kind is named by its path, not dumped as a DecodingError.
        for (edit, words) in [({ (o: inout [String: Any]) in o["cursor"] = nil }, "the key 'cursor' is missing"),
                              ({ (o: inout [String: Any]) in var c = o["cursor"] as! [String: Any]; c["epoch"] = "one"; o["cursor"] = c }, "'cursor.epoch' is not a number")] {
            var object = try #require(try JSONSerialization.jsonObject(with: good) as? [String: Any])
            edit(&object)
            try JSONSerialization.data(withJSONObject: object).write(to: url)
            let e = #expect(throws: CheckpointError.self) { _ = try store.state(of: newest) }
            #expect(e?.message.contains("\(url.path): unreadable (\(words))") == true && e?.message.contains("CodingKeys") == false, "\(String(describing: e))")
        }
        // A config that cannot be read is refused (it is what the resume is checked against), not skipped.
        var noConfig = try #require(try JSONSerialization.jsonObject(with: good) as? [String: Any])
        noConfig["config"] = "garbage: ["
        try JSONSerialization.data(withJSONObject: noConfig).write(to: url)
        let unchecked = #expect(throws: TrainingError.self) {
            try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out, maxSteps: 6), writer: "t").run(resume: true)
        }
        #expect(unchecked?.message.contains("the run's config it holds cannot be read") == true, "\(String(describing: unchecked))")
        var fractional = try #require(try JSONSerialization.jsonObject(with: good) as? [String: Any])
        fractional["step"] = 2.5
        for (json, words) in [(try JSONSerialization.data(withJSONObject: fractional), "a value does not fit its field"), (Data("null".utf8), "the file's top level is null")] {
            try json.write(to: url)
            let e = #expect(throws: CheckpointError.self) { _ = try store.state(of: newest) }
            #expect(e?.message.contains(words) == true, "\(String(decoding: json, as: UTF8.self)): \(String(describing: e))")
        }
        try Data("{\"step\": 2,".utf8).write(to: url)
        let truncated = #expect(throws: CheckpointError.self) { _ = try store.state(of: newest) }
        #expect(truncated?.message.contains("unreadable (not valid JSON)") == true, "\(String(describing: truncated))")
        try good.write(to: url)
        #expect(try store.state(of: newest).step == 2)
    }

    @Test("a weights file or run.json describing what no run writes is refused naming the value; a stop signal before the first step ends the process at once")
    func damagedDescriptionAndEarlySignal() throws {
        let dir = tempDir("description")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let out = dir.appendingPathComponent("run")
        try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out, maxSteps: 2), writer: "t").run(resume: false)
        let best = out.appendingPathComponent("best.safetensors")
        let file = try SafeTensorsFile(contentsOf: best)
        let described = try #require(file.metadata[RunMetadata.safetensorsKey])
        var object = try #require(try JSONSerialization.jsonObject(with: Data(described.utf8)) as? [String: Any])
        let bin = try histodistillBinary()
        for (key, value, words) in [("input_factor", 3 as Any, "input_factor 3 must be 1, 2, 4, 8 or 16"), ("std", [0, 0, 0] as Any, "mean [0.0, 0.0, 0.0] and std [0.0, 0.0, 0.0] must be 3 finite values each, std positive")] {
            let saved = object[key]
            object[key] = value
            var metadata = file.metadata
            metadata[RunMetadata.safetensorsKey] = String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)
            let damaged = dir.appendingPathComponent("damaged-\(key).safetensors")
            try SafeTensorsFile(tensors: file.tensors, metadata: metadata).serialized().write(to: damaged)
            let e = try run([bin, "evaluate", "--weights", damaged.path, "--shards", shards.path])
            #expect(e.status != 0 && e.stderr.contains("its description (or the run's run.json) is invalid: \(words)") && !e.stderr.contains("Fatal error"), "\(e.status) \(e.stderr)")
            object[key] = saved
        }
        // A stop signal during set-up (before a training loop arms the handlers) ends the process at once with
        // 128 + the signal; once a loop runs, it stops at the next step boundary (75).
        let script = "\"$0\" _stop-probe $1 > out & pid=$!; for i in $(seq 100); do grep -q ready out 2>/dev/null && break; sleep 0.1; done; kill -TERM $pid; wait $pid; echo status $?; cat out"
        let t = try run(["bash", "-c", script, bin, ""], timeout: 30, in: dir)
        #expect(t.stdout.contains("status 143") && t.stderr.contains("before training started") && !t.stdout.contains("step boundary"), "\(t.stdout) \(t.stderr)")
        let armed = try run(["bash", "-c", script, bin, "--armed"], timeout: 30, in: dir)
        #expect(armed.stdout.contains("status 75") && armed.stdout.contains("stopped at a step boundary by SIGTERM"), "\(armed.stdout) \(armed.stderr)")
    }

    @Test("train says its threads and precision in one line, and warns when train.threads exceeds the node's cores, naming the key")
    func trainThreads() throws {
        let dir = tempDir("threads")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let bin = try histodistillBinary()
        let config = try lifecycleConfigFile(dir, shards: shards, output: dir.appendingPathComponent("run"), maxSteps: 1)
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let many = try run([bin, "train", "--config", config.path, "--set", "train.threads=\(cores + 1)"])
        #expect(many.status == 0 && many.stderr.contains("compute: \(cores + 1) threads per process, 32-true")
                && many.stderr.contains("set train.threads to \(cores)"), "\(many.stderr)")
        let fresh = try lifecycleConfigFile(dir, shards: shards, output: dir.appendingPathComponent("run1"), maxSteps: 1)
        let one = try run([bin, "train", "--config", fresh.path, "--set", "train.threads=1"])
        #expect(one.status == 0 && one.stderr.contains("compute: 1 thread per process, 32-true") && !one.stderr.contains("exceed"), "\(one.stderr)")
    }

    @Test("numeric options out of range are refused naming the option and the value, negative numbers included, never a crash trace; nothing after -- is joined")
    func numericOptions() throws {
        let dir = tempDir("numeric")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let bin = try histodistillBinary()
        let cases: [([String], String)] = [
            (["inspect", shards.path, "--slides", "-1"], "--slides must be 0 or more, got -1"),
            (["bench-step", "--threads", "-2"], "--threads must be 1 to 4096, got -2"),
            (["bench-step", "--threads", "4611686018427387904"], "--threads must be 1 to 4096, got 4611686018427387904"),
            (["bench-step", "--teacher-resolution", "0"], "--teacher-resolution must be above --resolution"),
            (["bench-step", "--warmup", "-1"], "--warmup must be 0 to 1000000, got -1"),
            (["bench-pipeline", shards.path, "--factor", "3"], "--factor must be 1, 2, 4, 8 or 16, got 3"),
            (["bench-pipeline", shards.path, "--steps", "-2"], "--steps must be 1 to 1000000, got -2"),
            (["bench-pipeline", shards.path, "--workers", "0"], "--workers must be 1 to 4096, got 0"),
            (["mil", "train", "--config", "x.yaml", "--stop-after", "0"], "--stop-after must be at least 1, got 0"),
            (["finetune", "--config", "x.yaml", "--stop-after", "-1"], "--stop-after must be at least 1, got -1"),
            (["mil", "evaluate", "--run", "x", "--features", "y", "--bootstrap", "2000000000"], "--bootstrap must be 0 to 1000000"),
            (["cost", "--threads", "5000"], "--threads must be 1 to 4096, got 5000"),
            // Huge values: arithmetic overflow, allocation failures or endless work before they were bounded.
            (["synth", dir.appendingPathComponent("sy").path, "--size", "9223372036854775807"], "--size must be 16 to 4096 pixels"),
            (["synth", dir.appendingPathComponent("sy").path, "--train-per-class", "4611686018427387904"], "--train-per-class must be 1 to 100000"),
            (["pack", shards.path, "-o", dir.appendingPathComponent("pk").path, "--shard-mb", "9223372036854775807"], "--shard-mb must be 1 to 65536"),
            (["bench-step", "--resolution", "4611686018427387904"], "--resolution must be 8 to 4096 pixels"),
            (["bench-step", "--batch", "4611686018427387904"], "--batch must be 1 to 65536"),
            (["bench-step", "--teacher-resolution", "4611686018427387904"], "--teacher-resolution must be above --resolution"),
            (["bench-step", "--bucket-mb", "4611686018427387904"], "--bucket-mb must be more than 0 and at most 4096"),
            (["bench-step", "--steps", "9223372036854775807"], "--steps must be 1 to 1000000"),
            (["bench-pipeline", shards.path, "--workers", "9223372036854775807"], "--workers must be 1 to 4096"),
            (["cost", "--measure", "--reps", "9223372036854775807"], "--reps must be 1 to 1000"),
            // Distillation settings where no distillation step is timed are refused, not ignored.
            (["bench-step", "--temperature", "2"], "--temperature sets the objective of a distillation step, but none is measured: add --teacher-resolution"),
            (["cost", "--measure", "--kd-weight", "2", "--pixel-norm", "l1"], "--pixel-norm, --kd-weight set the objective of a distillation step, but none is measured: add --distill"),
            (["cost", "--kd-weight", "2"], "--kd-weight sets the objective of a distillation step, but none is measured: add --measure --distill"),
            (["cost", "--measure", "--distill", "--resolutions", "224"], "--resolutions gives one (224)"),
            (["cost", "--resolutions", "56,28,28"], "--resolutions lists a size twice ('56,28,28'): each is measured once. Hint: --resolutions 56,28"),
            (["bench-step", "--resolution", "56", "--teacher-resolution", "56"], "--teacher-resolution must be above --resolution (56"),
            // The objective's own limits, as `distill` has them, named as flags.
            (["cost", "--measure", "--distill", "--resolutions", "56,28", "--kd-weight", "9e18"], "--kd-weight must be at most 1000000"),
            (["bench-step", "--resolution", "28", "--teacher-resolution", "56", "--temperature", "1e30"], "--temperature must be at most 100"),
            (["bench-step", "--resolution", "28", "--teacher-resolution", "56", "--kd-weight", "0", "--pixel-weight", "0"], "--kd-weight is 0, and so are --pixel-weight and --ce-weight"),
            (["bench-step", "--resolution", "28", "--teacher-resolution", "56", "--kd-weight=1e-46"], "--kd-weight 1e-46 is outside float32's range"),
            (["cost", "--measure", "--distill", "--resolutions", "56,28", "--temperature", "1e39"], "--temperature 1e+39 is outside float32's range"),
        ]
        for (args, message) in cases {
            let r = try run([bin] + args)
            #expect(r.status != 0 && r.stderr.contains(message) && !r.stderr.contains("crashed") && !r.stderr.contains("Fatal error"),
                    "\(args.joined(separator: " ")): \(r.stderr)")
        }
        // A weight of -0 is 0 (off), and printed so.
        let zero = try run([bin, "bench-step", "--resolution", "14", "--teacher-resolution", "28", "--kd-weight", "-0", "--batch", "2",
                            "--steps", "1", "--reps", "1", "--warmup", "0", "--threads", "1"])
        #expect(zero.status == 0 && zero.stdout.contains("KD T=4.0 x0.0,") && !zero.stdout.contains("x-0"), "\(zero.stdout)\(zero.stderr)")
        let config = try lifecycleConfigFile(dir, shards: shards, output: dir.appendingPathComponent("run"), maxSteps: 1)
        // A start-up error (here a teacher that does not exist) is not preceded by a compute line.
        let startup = try run([bin, "distill", "--config", config.path, "--set", "distill.teacher_run=\(dir.appendingPathComponent("no-teacher").path)",
                               "--set", "data.input_factor=2", "--set", "run.output=\(dir.appendingPathComponent("student").path)"])
        #expect(startup.status != 0 && startup.stderr.contains("no such run directory") && !startup.stderr.contains("compute:"), "\(startup.stderr)")
        let threads = try run([bin, "train", "--config", config.path, "--set", "train.threads=5000"])
        #expect(threads.status != 0 && threads.stderr.contains("train.threads") && threads.stderr.contains("1 to 4096"), "\(threads.stderr)")
        // A directory where a file is read is said in words (Foundation's own message was "error 256").
        let directory = try run([bin, "evaluate", "--weights", dir.path, "--shards", shards.path])
        #expect(directory.status != 0 && directory.stderr.contains("it is a directory") && !directory.stderr.contains("NSCocoaErrorDomain"), "\(directory.stderr)")
        // After "--" an argument that looks like an option, and a number after it, are two paths, not "--json=-1".
        let separated = try run([bin, "stats", "--", "--json", "-1"])
        #expect(separated.status != 0 && separated.stderr.contains("--json: no such file") && !separated.stderr.contains("=-1"), "\(separated.stderr)")
    }

    @Test("evaluate --output elsewhere writes the predictions beside it and leaves the run's own")
    func evaluateOutputElsewhere() throws {
        let dir = tempDir("evalout")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let out = dir.appendingPathComponent("run")
        try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out, maxSteps: 2), writer: "t").run(resume: false)
        let bin = try histodistillBinary()
        #expect(try run([bin, "evaluate", "--run", out.path, "--bootstrap", "0"]).status == 0)
        let own = try Data(contentsOf: out.appendingPathComponent("predictions.csv"))
        let elsewhere = dir.appendingPathComponent("other/e.json")
        let r = try run([bin, "evaluate", "--run", out.path, "--bootstrap", "0", "--output", elsewhere.path])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("other/e.predictions.csv").path), "\(r.stdout)")
        #expect(try Data(contentsOf: out.appendingPathComponent("predictions.csv")) == own)
        // Tiles of another size, labelled with three classes where the model has two: predicted (no crash on a label
        // the model has no output for), with a warning naming both sizes.
        #expect(try run([bin, "synth", dir.appendingPathComponent("s").path, "--size", "48", "--train-per-class", "1", "--val-per-class", "1"]).status == 0)
        #expect(try run([bin, "pack", dir.appendingPathComponent("s/val").path, "-o", dir.appendingPathComponent("s48").path]).status == 0)
        let other = try run([bin, "predict", "--run", out.path, "--shards", dir.appendingPathComponent("s48").path, "-o", dir.appendingPathComponent("p.csv").path])
        #expect(other.status == 0 && other.stderr.contains("trained on 32 px tiles") && other.stderr.contains("holds 48 px tiles"), "\(other.stderr)")
        let features = try run([bin, "extract", "--run", out.path, "--shards", dir.appendingPathComponent("s48").path, "-o", dir.appendingPathComponent("f48").path])
        #expect(features.status == 0 && features.stderr.contains("trained on 32 px tiles") && features.stderr.contains("holds 48 px tiles"), "\(features.stderr)")
        let same = try run([bin, "predict", "--run", out.path, "--shards", shards.path, "-o", dir.appendingPathComponent("q.csv").path])
        #expect(same.status == 0 && !same.stderr.contains("warning: the model was trained on"), "\(same.stderr)")
        let resamples = try run([bin, "evaluate", "--run", out.path, "--bootstrap", "2000000000"])
        #expect(resamples.status != 0 && resamples.stderr.contains("--bootstrap must be 0 to 1000000"), "\(resamples.stderr)")
        // A batch of no tiles is refused by every command that takes one, not run as if it were the default.
        for args in [["evaluate", "--run", out.path], ["extract", "--run", out.path, "--shards", shards.path, "-o", dir.appendingPathComponent("f0").path],
                     ["predict", "--run", out.path, "--shards", shards.path, "-o", dir.appendingPathComponent("p0.csv").path]] {
            let r = try run([bin] + args + ["--batch-size", "0"])
            #expect(r.status != 0 && r.stderr.contains("--batch-size") && r.stderr.contains("at least 1"), "\(args[0]): \(r.stderr)")
            // A negative number reaches the same check (the argument parser alone read "-1" as a flag: "missing value").
            let negative = try run([bin] + args + ["--batch-size", "-1"])
            #expect(negative.status != 0 && negative.stderr.contains("at least 1, got -1"), "\(args[0]): \(negative.stderr)")
            let threads = try run([bin] + args + ["--threads", "0"])
            #expect(threads.status != 0 && threads.stderr.contains("--threads must be 1 to 4096, got 0"), "\(args[0]): \(threads.stderr)")
        }
        // Inference commands take --threads and say what they run with; more threads than cores is warned about.
        let one = try run([bin, "evaluate", "--run", out.path, "--bootstrap", "0", "--threads", "1"])
        #expect(one.status == 0 && one.stderr.contains("compute: 1 thread per process, 32-true") && !one.stderr.contains("exceed"), "\(one.stderr)")
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let many = try run([bin, "predict", "--run", out.path, "--shards", shards.path, "-o", dir.appendingPathComponent("m.csv").path,
                            "--threads", "\(cores + 1)"])
        #expect(many.status == 0 && many.stderr.contains("compute: \(cores + 1) threads per process")
                && many.stderr.contains("exceed this node's \(cores) cores") && many.stderr.contains("set --threads to \(cores)"), "\(many.stderr)")
    }

    @Test("file errors read as one line naming the path; a file-size limit is an error naming the file, not a silent death; bad values are refused")
    func fileErrorsAndValues() throws {
        let dir = tempDir("fileerrors")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let bin = try histodistillBinary()
        let file = dir.appendingPathComponent("afile")
        try "x".write(to: file, atomically: true, encoding: .utf8)
        let p = try run([bin, "pack", dir.appendingPathComponent("missing").path, "-o", file.path])
        #expect(p.status != 0 && !p.stderr.contains("NSCocoaErrorDomain"), "\(p.stderr)")
        let config = try lifecycleConfigFile(dir, shards: shards, output: file, maxSteps: 2)
        let t = try run([bin, "train", "--config", config.path])
        #expect(t.status != 0 && t.stderr.contains(file.path) && !t.stderr.contains("NSCocoaErrorDomain"), "\(t.stderr)")
        // SIGXFSZ at its default would end the process without a word (status 153): it is ignored, the write fails.
        let out = dir.appendingPathComponent("run")
        try (try lifecycleConfig(shards: shards, output: out, maxSteps: 4)).yaml.write(to: config, atomically: true, encoding: .utf8)
        let limited = try run(["bash", "-c", "ulimit -f 200; exec \"$0\" train --config \"$1\"", bin, config.path], timeout: 120)
        #expect(limited.status == 1 && limited.stderr.contains("File too large") && limited.stderr.contains("checkpoints"), "\(limited.status) \(limited.stderr)")
        // Values that would train wrongly, or allocate what no machine has, named with where they came from.
        for (set, words) in [("schedule.gamma=-1", "schedule.gamma must be in (0, 1]"), ("train.clip_grad_norm=-1", "train.clip_grad_norm must be a positive"),
                             ("schedule.min_lr=10", "schedule.min_lr must be at least 0 and below"), ("optimizer.lr=1e400", "optimizer.lr must be a number, got 'inf': a finite number is needed"),
                             ("model.classes=1000000000", "model.classes must be in"), ("model.planes=[100000]", "model.planes must be at most"),
                             ("model.planes=[\(Array(repeating: "8", count: 20).joined(separator: ","))]", "model.planes must list 1 to 4 positive widths, got [8, 8, 8, 8, ...] (20 values)")] {
            let e = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}", source: "c.yaml", overrides: [set]) }
            #expect(e?.message.hasPrefix("--set \(set.split(separator: "=")[0]): \(words)") == true, "\(set): \(String(describing: e))")
        }
        for (set, words) in [("train.epochs=9223372036854775807", "train.epochs must be in"), ("run.name=../escaped", "run.name must be a plain name"),
                             ("optimizer.momentum=5", "optimizer.momentum must be in"), ("optimizer.weight_decay=-1", "optimizer.weight_decay must be 0 or positive")] {
            let e = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}", source: "c.yaml", overrides: [set]) }
            #expect(e?.message.hasPrefix("--set \(set.split(separator: "=")[0]): \(words)") == true, "\(set): \(String(describing: e))")
        }
        // Finite but absurd loss weights and weight decay: refused before they overflow float32 or zero the weights.
        for (yaml, set, words) in [("data: {train: x}\ndistill: {teacher_run: t}", "distill.kd_weight=9.2e18", "distill.kd_weight must be at most 1000000"),
                                   ("data: {train: x}\ndistill: {teacher_run: t}", "distill.pixel_weight=2e6", "distill.pixel_weight must be at most 1000000"),
                                   ("data: {train: x}", "optimizer.weight_decay=9.2e18", "optimizer.weight_decay must be at most 1000000"),
                                   ("data: {train: x}\noptimizer: {name: adamw, lr: 0.01}", "optimizer.weight_decay=100", "--set optimizer.weight_decay: optimizer.weight_decay/lr give lr x weight_decay = 0.01 x 100.0 = 1:"),
                                   ("data: {train: x}\noptimizer: {name: sgd, weight_decay: 0.0001}", "optimizer.lr=10000", "--set optimizer.lr: optimizer.weight_decay/lr give lr x weight_decay = 10000.0 x 0.0001 = 1:"),
                                   ("data: {train: x}\ndistill: {teacher_run: t}", "distill.temperature=1e4", "distill.temperature must be at most 100"),
                                   ("data: {train: x}\ndistill: {teacher_run: t}", "distill.temperature=1e-30", "distill.temperature must be at least 0.01"),
                                   ("data: {train: x}\ndistill: {teacher_run: t, kd_weight: 0, pixel_weight: 0}", "distill.ce_weight=1e-30", "distill.ce_weight must be 0 (off) or at least 1e-06"),
                                   ("data: {train: x}\noptimizer: {name: sgd, lr: 0.5}", "optimizer.weight_decay=3", "sgd multiplies the weights by 1 - lr x weight_decay")] {
            let e = #expect(throws: ConfigError.self) { _ = try RunConfig.parse(yaml, source: "c.yaml", overrides: [set]) }
            #expect(e?.message.contains(words) == true, "\(set): \(String(describing: e))")
        }
        #expect(try RunConfig.parse("data: {train: x}\noptimizer: {name: adamw, lr: 0.001, weight_decay: 0.05}", source: "c.yaml").weightDecay == 0.05)
        #expect(try RunConfig.parse("data: {train: x}\noptimizer: {name: adam, lr: 0.01, weight_decay: 200}", source: "c.yaml").weightDecay == 200,
                "Adam's L2 term is scaled away by its normalisation: no lr x weight_decay bound")
        let temperature = #expect(throws: ConfigError.self) {
            _ = try RunConfig.parse("data: {train: x}\ndistill: {teacher_run: t}", source: "c.yaml", overrides: ["distill.temperature=0"])
        }
        #expect(temperature?.message.hasPrefix("--set distill.temperature: distill.temperature must be positive") == true, "\(String(describing: temperature))")
        // Mixup in distillation may blend with an unlabeled tile: refused with a cross-entropy term; out of range anywhere.
        for (yaml, set, words) in [("data: {train: x}\ndistill: {teacher_run: t, ce_weight: 0.5}", "augment.mixup=1", "(distill.ce_weight is 0.5): the blend's partner may be an unlabeled tile. Hint: remove augment.mixup, or set distill.ce_weight: 0"),
                                   ("data: {train: x}", "augment.mixup=200", "augment.mixup must be 0 (off) or in 0.01...100"),
                                   ("data: {train: x}\ndistill: {teacher_run: t}", "augment.mixup=-1", "augment.mixup must be 0 (off) or in 0.01...100"),
                                   ("data: {train: x}\ndistill: {teacher_run: t}", "augment.mixup=0.001", "below 0.01 the weight is 0 or 1 to within rounding")] {
            let e = #expect(throws: ConfigError.self) { _ = try RunConfig.parse(yaml, source: "c.yaml", overrides: [set]) }
            #expect(e?.message.hasPrefix("--set augment.mixup: ") == true && e?.message.contains(words) == true, "\(set): \(String(describing: e))")
        }
        #expect(try RunConfig.parse("data: {train: x}\ndistill: {teacher_run: t}", source: "c.yaml", overrides: ["augment.mixup=1"]).augment.mixupAlpha == 1)
        #expect(try RunConfig.parse("data: {train: x}", source: "c.yaml", overrides: ["augment.mixup=0.4"]).augment.mixupAlpha == 0.4, "supervised mixup blends the labels too")
        // A number float32 cannot hold is refused, not rounded to 0 ("off") or infinity; -0 is 0.
        for set in ["augment.mixup=1e-46", "distill.ce_weight=1e-45", "optimizer.weight_decay=1e39", "data.mean=[0.5, 1e-50, 0.5]"] {
            let e = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}", source: "c.yaml", overrides: [set]) }
            #expect(e?.message.contains("outside float32's range") == true, "\(set): \(String(describing: e))")
        }
        for set in ["optimizer.lr=1e39", "optimizer.lr=1e-46", "schedule.min_lr=1e-46"] {
            let e = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}", source: "c.yaml", overrides: [set]) }
            #expect(e?.message.contains("outside float32's range") == true, "double keys are held to float32's range too: \(set): \(String(describing: e))")
        }
        // Not a finite number, named by its place in the list (it failed later, writing run.json, as "a file: ... not in the correct format").
        let nan = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}", source: "c.yaml", overrides: ["data.mean=[0.5, .nan, 0.5]"]) }
        #expect(nan?.message.contains("data.mean must be a list of numbers, got a list whose element 2 is 'nan': a finite number is needed") == true, "\(String(describing: nan))")
        let tinyStd = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}", source: "c.yaml", overrides: ["data.std=[1e-30, 1, 1]"]) }
        #expect(tinyStd?.message.contains("std at least 0.001") == true, "\(String(describing: tinyStd))")
        // -0 (which YAML leaves a string) is 0 in number keys, lists and whole-number keys; so are -0.0 and -.0.
        let zeroCases: [(String, (RunConfig) -> Bool)] = [
            ("distill.pixel_weight=-0.0", { c in c.objective.pixelWeight.sign == .plus && c.objective.pixelWeight == 0 }),
            ("distill.pixel_weight=-0", { c in c.objective.pixelWeight.sign == .plus && c.objective.pixelWeight == 0 }),
            ("distill.kd_weight=-.0", { c in c.objective.kdWeight.sign == .plus && c.objective.kdWeight == 0 }),
            ("data.mean=[0.5, -0, 0.25]", { c in c.mean == [0.5, 0, 0.25] }),
            ("run.seed=-0", { c in c.seed == 0 }),
            ("augment.brightness=-0", { c in c.augment.brightness == 0 && c.augment.brightness.sign == .plus }),
        ]
        for (set, check) in zeroCases {
            let c = try RunConfig.parse("data: {train: x}\ndistill: {teacher_run: t}", source: "c.yaml", overrides: [set])
            #expect(check(c), "\(set)")
        }
        // A "billion laughs" file (9 levels of 9 aliases: 387 million values) is refused before it is built.
        var bomb = "data: {train: x}\nl0: &l0 [" + Array(repeating: "lol", count: 9).joined(separator: ", ") + "]\n"
        for i in 1...9 { bomb += "l\(i): &l\(i) [" + Array(repeating: "*l\(i - 1)", count: 9).joined(separator: ", ") + "]\n" }
        bomb += "model: {planes: *l9}\n"
        let laughs = #expect(throws: ConfigError.self) { _ = try RunConfig.parse(bomb, source: "bomb.yaml") }
        #expect(laughs?.message.hasPrefix("bomb.yaml: expands to more than 100000 values") == true, "\(String(describing: laughs))")
        // ...given by --set as well; and nesting thousands deep (which overflows the YAML parser's stack) in either.
        var setBomb = "[&a [x, x, x, x, x, x, x, x, x, x]"
        setBomb = "[" + (1...8).map { i in "&b\(i) [" + Array(repeating: i == 1 ? "*a" : "*b\(i - 1)", count: 10).joined(separator: ", ") + "]" }.joined(separator: ", ") + "]"
        setBomb = "[&a [x, x, x, x, x, x, x, x, x, x], " + setBomb.dropFirst()
        let viaSet = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}", source: "c.yaml", overrides: ["mil.hidden=\(setBomb)"]) }
        #expect(viaSet?.message.hasPrefix("--set mil.hidden: expands to more than 100000 values") == true, "\(String(describing: viaSet))")
        let deep = String(repeating: "[", count: 6000) + String(repeating: "]", count: 6000)
        for (text, overrides, source) in [("data: {train: x}\nmodel: {planes: \(deep)}", [String](), "d.yaml"), ("data: {train: x}", ["model.planes=\(deep)"], "--set model.planes")] {
            let e = #expect(throws: ConfigError.self) { _ = try RunConfig.parse(text, source: "d.yaml", overrides: overrides) }
            #expect(e?.message.hasPrefix("\(source): nests 600") == true && e?.message.contains("brackets deep") == true, "\(String(describing: e))")
        }
        #expect(try RunConfig.parse("# it's [[ a comment\ndata: {train: x} # [[[\n", source: "c.yaml").trainShards == "x")
        let under = try run([bin, "train", "--config", config.path, "--set", "run.output=\(file.path)/sub"])
        #expect(under.status != 0 && under.stderr.contains("\(file.path) is a file, so nothing can be created under it"), "\(under.stderr)")
        let asConfig = try run([bin, "train", "--config", dir.path])
        #expect(asConfig.status != 0 && asConfig.stderr.contains("is a directory, not a config file"), "\(asConfig.stderr)")
        // pack past a file-size limit names the shard file it was writing.
        let packLimited = try run(["bash", "-c", "ulimit -f 8; exec \"$0\" pack \"$1\" -o \"$2\"", bin, dir.appendingPathComponent("in").path,
                                   dir.appendingPathComponent("limited").path])
        #expect(packLimited.status == 1 && packLimited.stderr.contains("shard-00000.shard.tmp: cannot be written (File too large)"), "\(packLimited.stderr)")
        let mapping = #expect(throws: ConfigError.self) { _ = try RunConfig.parse("data: {train: x}", source: "c.yaml", overrides: ["run.name=a: b"]) }
        #expect(mapping?.message.contains("got a mapping") == true && mapping?.message.contains("AnyHashable") == false, "\(String(describing: mapping))")
        let silent = #expect(throws: ConfigError.self) {
            _ = try RunConfig.parse("data: {train: x}\ndistill: {teacher_run: t, kd_weight: 0, pixel_weight: 0}", source: "s.yaml")
        }
        #expect(silent?.message.contains("s.yaml: distill.kd_weight") == true && silent?.message.contains("learn nothing") == true, "\(String(describing: silent))")
        let cost = try run([bin, "cost", "--resolutions", "4000", "--batch", "4096"])
        #expect(cost.status != 0 && cost.stderr.contains("GB of activations") && cost.stderr.contains("lower --batch"), "\(cost.stderr)")
        // Under an address-space limit the limit is what counts (700 px, batch 32: about 4.8 GB, above 0.7 x 4 GB).
        let capped = try run(["bash", "-c", "ulimit -v 4000000; exec \"$0\" cost --resolutions 700", bin])
        #expect(capped.status == 1 && capped.stderr.contains("this process may use (ulimit -v)"), "\(capped.status) \(capped.stderr)")
    }

    @Test("what interrupted writers left is removed by the next writer: partial shard files, half-pruned checkpoints")
    func leftoversRemoved() throws {
        let dir = tempDir("leftovers")
        defer { try? FileManager.default.removeItem(at: dir) }
        let bin = try histodistillBinary()
        #expect(try run([bin, "synth", dir.appendingPathComponent("s").path, "--size", "32", "--train-per-class", "2", "--val-per-class", "1"]).status == 0)
        let packed = dir.appendingPathComponent("p")
        try FileManager.default.createDirectory(at: packed, withIntermediateDirectories: true)
        try Data(count: 100).write(to: packed.appendingPathComponent("shard-00007.shard.tmp"))
        let p = try run([bin, "pack", dir.appendingPathComponent("s/train").path, "-o", packed.path])
        #expect(p.status == 0, "\(p.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: packed.path).filter { !$0.hasPrefix(".") } == ["shard-00000.shard"])
        // A step directory an older version's pruning left half-deleted is removed when the run is taken again.
        let shards = try trainingShards(dir)
        let out = dir.appendingPathComponent("run")
        try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out, maxSteps: 6), writer: "t").run(resume: false, stopAfter: 2)
        let half = out.appendingPathComponent("checkpoints/step-000000001")
        try FileManager.default.createDirectory(at: half, withIntermediateDirectories: true)
        try Data(count: 10).write(to: half.appendingPathComponent("model.safetensors"))
        let resumed = try SupervisedTrainer(config: try lifecycleConfig(shards: shards, output: out, maxSteps: 6), writer: "t")
        #expect(try resumed.run(resume: true, stopAfter: 4) == .paused(step: 4))
        #expect(!FileManager.default.fileExists(atPath: half.path))
        // A shard file given where a shard directory is expected is named as such, with the directory to give.
        let shardFile = try #require(try FileManager.default.contentsOfDirectory(atPath: shards.path).first { $0.hasSuffix(".shard") })
        let e = #expect(throws: ShardError.self) { _ = try ShardDataset(directory: shards.appendingPathComponent(shardFile)) }
        #expect(e?.message.contains("is a file, not a shard directory") == true && e?.message.contains("give the directory holding it") == true, "\(String(describing: e))")
    }
}