// HistoTransfer: patch features (extract), attention-MIL over bags (mil train/evaluate), and their bad inputs.
import Foundation
import Testing
@testable import HistoDistillCLI
@testable import Layers
import SafeTensors
import TensorCore
@testable import TileShards
@testable import Training

/// `count` synthetic 96x64 "slides" per class, packed on a 32 px grid (6 tiles per slide, tissue everywhere).
func slideShards(_ dir: URL, classes: [String] = ["benign", "malignant"], count: Int = 3) throws -> URL {
    let input = dir.appendingPathComponent("slides")
    for (k, cls) in classes.enumerated() {
        let folder = input.appendingPathComponent(cls)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        for i in 0..<count {
            var g = SplitMix64(seed: UInt64(1000 * k + i))
            let px = (0..<(96 * 64 * 3)).map { j -> UInt8 in
                let noise = UInt8(truncatingIfNeeded: g.next() % 60)
                return j % 3 == 1 ? 60 &+ noise : UInt8(120 + 60 * k) &+ noise   // saturated (tissue), class in R and B
            }
            try ImageCodec.writePNG(RGBImage(width: 96, height: 64, pixels: px), to: folder.appendingPathComponent("\(cls)-\(i).png"))
        }
    }
    var options = PackOptions(output: dir.appendingPathComponent("tiles"))
    options.grid = GridSpec(tileSize: 32, minTissueFraction: 0)
    _ = try Packer.pack(try PackPlan.imageFolder(input), options: options)
    return dir.appendingPathComponent("tiles")
}

/// Saves `model` to `dir/name` as a weights file that describes itself (classes benign/malignant, fixed
/// normalisation, input factor `factor`, 32 px tiles); returns the file and its description.
@discardableResult
func describedWeights(_ model: ResNet, _ dir: URL, _ name: String, factor: Int = 1) throws -> (URL, RunMetadata) {
    let meta = RunMetadata(model: model.config, classes: ["benign", "malignant"], mean: [0.5, 0.4, 0.6], std: [0.2, 0.25, 0.3],
                           inputFactor: factor, tileSize: 32, tileMicronsPerPixel: nil, trainShards: nil, trainShardsPath: nil,
                           objective: "supervised", teacherRun: nil, program: "test")
    let url = dir.appendingPathComponent(name)
    try model.saveWeights(to: url, metadata: meta.safetensorsMetadata)
    return (url, meta)
}

/// The description of a feature set made by hand (no backbone, no source shards).
func syntheticFeatures(classes: [String], dimension d: Int) -> FeatureSetMetadata {
    FeatureSetMetadata(classes: classes, featureDimension: d, backbone: "synthetic", truncateAfter: nil, inputFactor: 1, mean: [0, 0, 0],
                       std: [1, 1, 1], sourceShards: ShardSetIdentity(digest: "0", tiles: 0, shards: 0), weights: "-", weightsDigest: "0",
                       program: "test")
}

@Suite("HistoTransfer", .serialized)
struct HistoTransferTests {
    @Test("extract: feature vectors equal the truncated backbone's pooled output; 2 ranks write the same vectors as 1")
    func extractMatchesModel() throws {
        let dir = tempDir("extract")
        defer { try? FileManager.default.removeItem(at: dir) }
        let tiles = try slideShards(dir)
        let model = ResNet(.paper(classes: 2, planes: [32, 64], blocks: [1, 1]), seed: 7)
        let (weights, meta) = try describedWeights(model, dir, "w.safetensors")
        let bin = try histodistillBinary()
        let one = try run([bin, "extract", "--weights", weights.path, "--truncate-after", "1", "--shards", tiles.path, "-o", dir.appendingPathComponent("f1").path])
        #expect(one.status == 0 && one.stdout.contains("36 feature vectors of length 32 for 6 slides"), "\(one.stdout) \(one.stderr)")
        let two = try mpirun(2, ["extract", "--weights", weights.path, "--truncate-after", "1", "--shards", tiles.path, "-o", dir.appendingPathComponent("f2").path])
        #expect(two.status == 0, "\(two.stderr)")
        let a = try FeatureSet(directory: dir.appendingPathComponent("f1")), b = try FeatureSet(directory: dir.appendingPathComponent("f2"))
        #expect(a.slides.map(\.name) == b.slides.map(\.name) && a.slides.count == 6)
        #expect(a.slides == b.slides, "2 ranks hold the same vectors, slides, positions and ids as 1")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("f2").path).count == 2, "one file per rank")
        #expect(a.metadata.truncateAfter == 1 && a.metadata.featureDimension == 32 && a.metadata.classes == ["benign", "malignant"])
        #expect(a.slides.allSatisfy { $0.count == 6 } && a.slides.filter { $0.label == 1 }.count == 3)
        // The first tile's vector is the truncated model's pooled output on that tile, prepared as the weights describe.
        let truncated = ResNet(model.config.truncated(after: 1), initialize: false)
        try truncated.load(try SafeTensorsFile(contentsOf: weights), source: "w", allowUnexpected: true)
        let dataset = try ShardDataset(directory: tiles)
        let settings = InferenceSettings(meta)
        let direct = try Inference.features(model: truncated, dataset: dataset, settings: settings, range: 0..<1).features[0]
        let first = a.slides.first { $0.tileIDs.contains(dataset.entry(0).id) }!
        let k = first.tileIDs.firstIndex(of: dataset.entry(0).id)!
        // (Batched and single-tile GEMMs may differ in the last bits.)
        #expect(zip(Array(first.features[(k * 32)..<((k + 1) * 32)]), direct).allSatisfy { abs($0 - $1) <= 1e-5 * max(1, abs($1)) })
        #expect(first.x[k] == dataset.entry(0).x && first.y[k] == dataset.entry(0).y)
    }

    @Test("a torchvision-format ResNet-18 state_dict with a 1000-class fc loads as a backbone (fc ignored, said once); weights that do not fit are named")
    func torchvisionBackbone() throws {
        let dir = tempDir("tv")
        defer { try? FileManager.default.removeItem(at: dir) }
        let tiles = try slideShards(dir, count: 1)
        let tv = ResNet(.resnet18(classes: 1000), seed: 3)
        let weights = dir.appendingPathComponent("resnet18.safetensors")
        try SafeTensorsFile(tensors: tv.stateDict()).serialized().write(to: weights)   // no histodistill metadata, as PyTorch writes it
        let bin = try histodistillBinary()
        let r = try run([bin, "extract", "--weights", weights.path, "--model", "resnet18", "--truncate-after", "2", "--shards", tiles.path,
                         "-o", dir.appendingPathComponent("f").path])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.components(separatedBy: "1000-class classifier fc").count == 2, "said once: \(r.stderr)")
        let set = try FeatureSet(directory: dir.appendingPathComponent("f"))
        #expect(set.metadata.featureDimension == 128 && set.metadata.mean == Backbone.imageNetMean)
        let noModel = try run([bin, "extract", "--weights", weights.path, "--shards", tiles.path, "-o", dir.appendingPathComponent("g").path])
        #expect(noModel.status != 0 && noModel.stderr.contains("--model"), "\(noModel.stderr)")
        let wrong = try run([bin, "extract", "--weights", weights.path, "--model", "resnet-gn", "--shards", tiles.path, "-o", dir.appendingPathComponent("h").path])
        #expect(wrong.status != 0 && wrong.stderr.contains("conv1.weight") && !wrong.stderr.contains("Fatal error"), "\(wrong.stderr)")
        // A resnet34 read as a resnet18: its extra blocks are not "later stages", so it is refused, not silently cut.
        let r34 = dir.appendingPathComponent("resnet34.safetensors")
        try SafeTensorsFile(tensors: ResNet(.resnet34(classes: 1000), seed: 4).stateDict()).serialized().write(to: r34)
        let mismatch = try run([bin, "extract", "--weights", r34.path, "--model", "resnet18", "--shards", tiles.path, "-o", dir.appendingPathComponent("i").path])
        #expect(mismatch.status != 0 && mismatch.stderr.contains("layer1.2") && mismatch.stderr.contains("does not fit resnet18"), "\(mismatch.stderr)")
    }

    @Test("attention-MIL learns a bag task decided by one patch type: slide AUC 1.0, attention on the deciding patches")
    func milSyntheticBags() throws {
        let dir = tempDir("milsyn")
        defer { try? FileManager.default.removeItem(at: dir) }
        let d = 8
        var g = SeededGenerator(seed: 11)
        func bag(_ name: String, positive: Bool) -> SlideBag {
            let n = 12, deciding = positive ? Int.random(in: 1...3, using: &g) : 0
            var f: [Float] = []
            for i in 0..<n {
                for j in 0..<d { f.append(Float.random(in: -1..<1, using: &g) + (i < deciding && j == 0 ? 3 : 0)) }
            }
            return SlideBag(name: name, label: positive ? 1 : 0, features: f, x: (0..<n).map { Int32($0 * 32) }, y: Array(repeating: 0, count: n),
                            tileIDs: (0..<n).map { UInt64($0) })
        }
        let meta = syntheticFeatures(classes: ["negative", "positive"], dimension: d)
        try FeatureSet(metadata: meta, slides: (0..<40).map { bag("train\($0)", positive: $0 % 2 == 0) }).write(to: dir.appendingPathComponent("train"))
        try FeatureSet(metadata: meta, slides: (0..<20).map { bag("test\($0)", positive: $0 % 2 == 0) }).write(to: dir.appendingPathComponent("test"))
        let config = try RunConfig.parse("""
        run: {output: \(dir.appendingPathComponent("run").path), seed: 1}
        data: {train: \(dir.appendingPathComponent("train").path), val: \(dir.appendingPathComponent("test").path)}
        optimizer: {name: adam, lr: 0.001}
        schedule: {name: constant}
        train: {epochs: 15, batch_size: 1, checkpoint_every: 1000}
        mil: {beta: 0.5}
        """, source: "mil.yaml")
        let trainer = try MILTrainer(config: config, writer: "test")
        try trainer.run(resume: false)
        let p = trainer.predict(try FeatureSet(directory: dir.appendingPathComponent("test")))
        let report = ClassificationReport.compute(probabilities: p.map(\.probabilities), labels: p.map { Int($0.label) }, classes: 2)
        #expect(report.macroAUC == 1.0, "AUC \(String(describing: report.macroAUC))")
        // On positive slides most attention sits on the deciding patches (feature 0 shifted).
        let test = try FeatureSet(directory: dir.appendingPathComponent("test"))
        for (r, b) in zip(p, test.slides) where b.label == 1 {
            let deciding = (0..<b.count).filter { b.features[$0 * d] > 1.5 }
            let mass = deciding.map { r.attention[$0] }.reduce(0, +)
            #expect(mass > 0.5, "\(r.slide): attention on deciding patches \(mass), \(deciding.count) of \(b.count) patches")
        }
        // The CLI writes slide metrics, per-slide probabilities and per-patch attention.
        let bin = try histodistillBinary()
        let e = try run([bin, "mil", "evaluate", "--run", dir.appendingPathComponent("run").path, "--features", dir.appendingPathComponent("test").path, "--threads", "1"])
        #expect(e.status == 0 && e.stdout.contains("20 slides: accuracy"), "\(e.stdout) \(e.stderr)")
        #expect(e.stderr.contains("compute: 1 thread per process, 32-true"), "\(e.stderr)")
        let zero = try run([bin, "mil", "predict", "--run", dir.appendingPathComponent("run").path, "--features", dir.appendingPathComponent("test").path, "--threads", "0"])
        #expect(zero.status != 0 && zero.stderr.contains("--threads must be 1 to 4096"), "\(zero.stderr)")
        let nowhere = try run([bin, "mil", "evaluate", "--run", dir.appendingPathComponent("no-such-run").path, "--features", dir.appendingPathComponent("test").path])
        #expect(nowhere.status != 0 && nowhere.stderr.contains("no-such-run: no such run directory"), "\(nowhere.stderr)")
        let attention = try String(contentsOf: dir.appendingPathComponent("run/attention.csv"), encoding: .utf8).split(separator: "\n")
        #expect(attention.first == "slide,x,y,attention" && attention.count == 1 + 20 * 12)
        let slides = try String(contentsOf: dir.appendingPathComponent("run/slides.csv"), encoding: .utf8).split(separator: "\n")
        #expect(slides.first == "slide,label,predicted,p_negative,p_positive" && slides.count == 21)
        // One heatmap per slide; the deciding patches are drawn brighter (viridis: higher green) than the others.
        let maps = dir.appendingPathComponent("maps")
        let h = try run([bin, "mil", "predict", "--run", dir.appendingPathComponent("run").path, "--features", dir.appendingPathComponent("test").path,
                         "-o", dir.appendingPathComponent("p.csv").path, "--heatmaps", maps.path, "--downscale", "8"])
        #expect(h.status == 0, "\(h.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: maps.path).filter { $0.hasSuffix(".png") }.count == 20)
        let image = try ImageCodec.decode(maps.appendingPathComponent("test0.png"))
        let bag0 = test.slides[0]
        let decidingPatch = (0..<bag0.count).first { bag0.features[$0 * d] > 1.5 }!, plainPatch = (0..<bag0.count).first { bag0.features[$0 * d] < 0.5 }!
        func green(_ patch: Int) -> UInt8 { image.pixels[(Int(bag0.x[patch]) / 8 + 1) * 3 + 1] }
        #expect(image.width == 12 * 32 / 8 && green(decidingPatch) > green(plainPatch), "green \(green(decidingPatch)) vs \(green(plainPatch))")
    }

    @Test("mil train: stopped mid-epoch and resumed equals the uninterrupted run bit for bit; 2 ranks under mpirun give 1 rank's losses and validation")
    func milResumeAndRanks() throws {
        let width = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: width) }
        let dir = tempDir("milrun")
        defer { try? FileManager.default.removeItem(at: dir) }
        let d = 6
        var g = SeededGenerator(seed: 5)
        func bags(_ prefix: String, _ n: Int) -> [SlideBag] {
            (0..<n).map { i in
                let count = 3 + i % 4
                return SlideBag(name: "\(prefix)\(i)", label: Int32(i % 2), features: (0..<(count * d)).map { j in Float.random(in: -1..<1, using: &g) + (j % d == 0 ? Float(i % 2) : 0) },
                                x: (0..<count).map { Int32($0 * 32) }, y: Array(repeating: 0, count: count), tileIDs: (0..<count).map { UInt64($0) })
            }
        }
        let meta = syntheticFeatures(classes: ["a", "b"], dimension: d)
        try FeatureSet(metadata: meta, slides: bags("t", 16)).write(to: dir.appendingPathComponent("train"))
        try FeatureSet(metadata: meta, slides: bags("v", 6)).write(to: dir.appendingPathComponent("val"))
        func config(_ name: String) throws -> RunConfig {
            try RunConfig.parse("""
            run: {output: \(dir.appendingPathComponent(name).path), seed: 4}
            data: {train: \(dir.appendingPathComponent("train").path), val: \(dir.appendingPathComponent("val").path)}
            optimizer: {name: adam, lr: 0.003}
            schedule: {name: cosine, warmup_steps: 2}
            train: {epochs: 3, batch_size: 4, checkpoint_every: 1000}
            mil: {beta: 0.5}
            """, source: "mil.yaml")
        }
        let straight = try MILTrainer(config: try config("a"), writer: "t")
        #expect(try straight.run(resume: false) == .finished && straight.history.count == 12)
        #expect(straight.history.filter { $0.valAccuracy != nil && $0.valLoss != nil }.map(\.step) == [4, 8, 12])
        let first = try MILTrainer(config: try config("b"), writer: "t")
        #expect(try first.run(resume: false, stopAfter: 5) == .paused(step: 5))
        let resumed = try MILTrainer(config: try config("b"), writer: "t")
        #expect(try resumed.run(resume: true) == .finished)
        #expect((first.history + resumed.history).map(\.loss) == straight.history.map(\.loss))
        #expect(resumed.head.parameters.values.array == straight.head.parameters.values.array)
        #expect(try Data(contentsOf: dir.appendingPathComponent("b/val-slides.csv")) == Data(contentsOf: dir.appendingPathComponent("a/val-slides.csv")))
        // The same run on 2 ranks: each rank takes half of every global batch, the gradients are summed.
        let file = dir.appendingPathComponent("c.yaml")
        try (try config("c")).yaml.write(to: file, atomically: true, encoding: .utf8)
        let r = try mpirun(2, ["mil", "train", "--config", file.path, "--set", "train.threads=1"])
        #expect(r.status == 0, "\(r.stderr)")
        let two = try losses(dir.appendingPathComponent("c"))
        #expect(two.keys.sorted() == Array(1...12))
        for m in straight.history { let l = try #require(m.loss); #expect(abs(two[m.step]! - l) <= 1e-5 * max(1, abs(l)), "step \(m.step): \(two[m.step]!) vs \(l)") }
        let best = { (run: String) in try SafeTensorsFile(contentsOf: dir.appendingPathComponent("\(run)/best.safetensors")).metadata["val_accuracy"] }
        #expect(try best("c") == best("a") && best("a") != nil)
    }

    @Test("MIL bad input: mixed feature lengths, features of another backbone, a resume with other settings; cross-validation folds are stratified")
    func milBadInput() throws {
        let dir = tempDir("milbad")
        defer { try? FileManager.default.removeItem(at: dir) }
        func meta(_ d: Int, digest: String = "0") -> FeatureSetMetadata {
            FeatureSetMetadata(classes: ["a", "b"], featureDimension: d, backbone: "b\(d)", truncateAfter: nil, inputFactor: 1, mean: [0, 0, 0],
                               std: [1, 1, 1], sourceShards: ShardSetIdentity(digest: "0", tiles: 0, shards: 0), weights: "-", weightsDigest: digest, program: "t")
        }
        func bags(_ d: Int, _ n: Int) -> [SlideBag] {
            (0..<n).map { SlideBag(name: "s\($0)", label: Int32($0 % 2), features: [Float](repeating: Float($0), count: 3 * d), x: [0, 1, 2], y: [0, 0, 0], tileIDs: [1, 2, 3]) }
        }
        let mixed = dir.appendingPathComponent("mixed")
        try FeatureSet(metadata: meta(4), slides: bags(4, 2)).write(to: mixed, part: 0)
        try FeatureSet(metadata: meta(6), slides: bags(6, 2)).write(to: mixed, part: 1)
        let e = #expect(throws: TrainingError.self) { _ = try FeatureSet(directory: mixed) }
        #expect(e?.message.contains("length 6") == true && e?.message.contains("4") == true, "\(String(describing: e))")
        // Cross-validation: 5 folds of 20 slides (10 per class), each fold 2 + 2, every slide validated exactly once.
        let set = FeatureSet(metadata: meta(4), slides: bags(4, 20))
        var seen: [String] = []
        for k in 0..<5 {
            let (t, v) = set.crossValidationSplit(folds: 5, fold: k, seed: 3)
            #expect(v.slides.filter { $0.label == 0 }.count == 2 && v.slides.filter { $0.label == 1 }.count == 2 && t.slides.count == 16)
            seen += v.slides.map(\.name)
        }
        #expect(seen.sorted() == set.slides.map(\.name).sorted())
        // A head evaluated on features of other weights is refused, naming both.
        try FeatureSet(metadata: meta(4, digest: "aaaa"), slides: bags(4, 10)).write(to: dir.appendingPathComponent("train"))
        try FeatureSet(metadata: meta(4, digest: "bbbb"), slides: bags(4, 4)).write(to: dir.appendingPathComponent("other"))
        let config = try RunConfig.parse("""
        run: {output: \(dir.appendingPathComponent("run").path)}
        data: {train: \(dir.appendingPathComponent("train").path)}
        train: {epochs: 1, batch_size: 2}
        mil: {folds: 2}
        """, source: "m.yaml")
        try MILTrainer(config: config, writer: "t").run(resume: false)
        let bin = try histodistillBinary()
        let r = try run([bin, "mil", "evaluate", "--run", dir.appendingPathComponent("run").path, "--features", dir.appendingPathComponent("other").path])
        #expect(r.status != 0 && r.stderr.contains("aaaa") && r.stderr.contains("bbbb"), "\(r.stderr)")
        // Validation features of another extraction than training's are refused; so is a directory mixing two.
        let withOtherVal = try RunConfig.parse("""
        run: {output: \(dir.appendingPathComponent("run2").path)}
        data: {train: \(dir.appendingPathComponent("train").path), val: \(dir.appendingPathComponent("other").path)}
        mil: {beta: 0.5}
        """, source: "m.yaml")
        let v = #expect(throws: TrainingError.self) { _ = try MILTrainer(config: withOtherVal, writer: "t") }
        #expect(v?.message.contains("aaaa") == true && v?.message.contains("bbbb") == true, "\(String(describing: v))")
        let twoExtractions = dir.appendingPathComponent("two")
        try FeatureSet(metadata: meta(4, digest: "aaaa"), slides: bags(4, 2)).write(to: twoExtractions, part: 0)
        try FeatureSet(metadata: meta(4, digest: "aaaa"), slides: bags(4, 2)).write(to: twoExtractions, part: 1)
        let dup = #expect(throws: TrainingError.self) { _ = try FeatureSet(directory: twoExtractions) }
        #expect(dup?.message.contains("appears in two feature files") == true, "\(String(describing: dup))")
        // More folds than a class has slides leaves a fold empty: refused.
        let tooMany = try RunConfig.parse(config.yaml, source: "x", overrides: ["mil.folds=20", "mil.fold=19", "run.output=\(dir.appendingPathComponent("run3").path)"])
        let empty = #expect(throws: TrainingError.self) { _ = try MILTrainer(config: tooMany, writer: "t") }
        #expect(empty?.message.contains("empty") == true, "\(String(describing: empty))")
        // A learning-rate change on resume is noted.
        let lrChanged = try RunConfig.parse(config.yaml, source: "x", overrides: ["optimizer.lr=0.01", "train.epochs=2"])
        let resumed = try MILTrainer(config: lrChanged, writer: "t")
        var notes: [String] = []
        resumed.progress = { notes.append($0) }
        try resumed.run(resume: true)
        #expect(notes.contains { $0.contains("resuming from step") } && notes.contains { $0.contains("optimizer.lr: 0.001 -> 0.01") }, "\(notes)")
        // Heatmap options are checked before any output is written; a MIL head is not a backbone.
        let noWrite = dir.appendingPathComponent("nowrite.json")
        let h = try run([bin, "mil", "evaluate", "--run", dir.appendingPathComponent("run").path, "--features", dir.appendingPathComponent("train").path,
                         "-o", noWrite.path, "--heatmaps", dir.appendingPathComponent("hm").path, "--shards", dir.path])
        #expect(h.status != 0 && !FileManager.default.fileExists(atPath: noWrite.path), "\(h.stderr)")
        let asBackbone = #expect(throws: TrainingError.self) {
            _ = try Backbone.load(run: RunDirectory(dir.appendingPathComponent("run")), weights: nil, architecture: nil, truncateAfter: nil,
                                  inputFactor: nil, mean: nil, std: nil)
        }
        #expect(asBackbone?.message.contains("is an attention-MIL head") == true, "\(String(describing: asBackbone))")
        let asClassifier = #expect(throws: TrainingError.self) { _ = try TrainedModel.load(run: RunDirectory(dir.appendingPathComponent("run")), weights: nil) }
        #expect(asClassifier?.message.contains("is an attention-MIL head") == true && asClassifier?.message.contains("not a CNN") == true, "\(String(describing: asClassifier))")
        let changed = try RunConfig.parse(config.yaml, source: "x", overrides: ["mil.hidden=[128, 32]"])
        let f = #expect(throws: TrainingError.self) { try MILTrainer(config: changed, writer: "t").run(resume: true) }
        #expect(f?.message.contains("mil.hidden: [256, 64] -> [128, 32]") == true, "\(String(describing: f))")
    }

    @Test("linear CKA: the independent NumPy reference values, CKA(X, X) = 1, invariance to orthogonal transforms and isotropic scaling")
    func ckaValues() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/cka.json")
        let f = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        let n = f["n"] as! Int, x = f["x"] as! [Double], y = f["y"] as! [Double], z = f["z"] as! [Double]
        for (a, b, key) in [(x, y, "cka_xy"), (x, z, "cka_xz"), (y, z, "cka_yz")] {
            let expected = f[key] as! Double
            #expect(abs(CKA.linear(a, b, n: n) - expected) < 1e-10, "\(key): \(CKA.linear(a, b, n: n)) vs NumPy \(expected)")
        }
        #expect(abs(CKA.linear(x, x, n: n) - 1) < 1e-12)
        // A random orthogonal 7x7 (Gram-Schmidt) and a scale leave CKA unchanged.
        var g = SeededGenerator(seed: 5)
        var q = (0..<49).map { _ in Double.random(in: -1..<1, using: &g) }
        for i in 0..<7 {
            for j in 0..<i {
                let dot = (0..<7).reduce(0.0) { $0 + q[i * 7 + $1] * q[j * 7 + $1] }
                for k in 0..<7 { q[i * 7 + k] -= dot * q[j * 7 + k] }
            }
            let norm = (0..<7).reduce(0.0) { $0 + q[i * 7 + $1] * q[i * 7 + $1] }.squareRoot()
            for k in 0..<7 { q[i * 7 + k] /= norm }
        }
        var rotated = [Double](repeating: 0, count: n * 7)
        for r in 0..<n { for c in 0..<7 { rotated[r * 7 + c] = 3.5 * (0..<7).reduce(0.0) { $0 + x[r * 7 + $1] * q[c * 7 + $1] } } }
        #expect(abs(CKA.linear(rotated, y, n: n) - CKA.linear(x, y, n: n)) < 1e-10)
        #expect(abs(CKA.linear(rotated, x, n: n) - 1) < 1e-10)
    }

    @Test("cka command: a model against itself has 1 on the diagonal; a teacher against a student at a quarter of the resolution runs on the same tiles")
    func ckaCommand() throws {
        let dir = tempDir("ckacli")
        defer { try? FileManager.default.removeItem(at: dir) }
        let tiles = try slideShards(dir)
        let model = ResNet(.paper(classes: 2, planes: [32, 64], blocks: [1, 1]), seed: 7)
        func weights(_ name: String, factor: Int) throws -> URL { try describedWeights(model, dir, name, factor: factor).0 }
        let a = try weights("a.safetensors", factor: 1), b = try weights("b.safetensors", factor: 2)
        let bin = try histodistillBinary()
        let r = try run([bin, "cka", "--weights-a", a.path, "--weights-b", a.path, "--shards", tiles.path, "--max-tiles", "20", "-o", dir.appendingPathComponent("m.csv").path])
        #expect(r.status == 0, "\(r.stderr)")
        let rows = try String(contentsOf: dir.appendingPathComponent("m.csv"), encoding: .utf8).split(separator: "\n").dropFirst().map { $0.split(separator: ",").dropFirst().compactMap { Double($0) } }
        #expect(rows.count == 2 && rows[0][0] > 0.999999 && rows[1][1] > 0.999999, "\(rows)")
        #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("m.png").path))
        let s = try run([bin, "cka", "--weights-a", a.path, "--weights-b", b.path, "--shards", tiles.path, "--max-tiles", "20", "-o", dir.appendingPathComponent("s.csv").path])
        #expect(s.status == 0 && s.stdout.contains("at factor 1") && s.stdout.contains("at factor 2"), "\(s.stdout) \(s.stderr)")
        let other = try String(contentsOf: dir.appendingPathComponent("s.csv"), encoding: .utf8).split(separator: "\n").dropFirst().map { $0.split(separator: ",").dropFirst().compactMap { Double($0) } }
        #expect(other[1][1] < 0.999999, "another resolution gives another representation: \(other)")
    }

    @Test("slides in, slide answers and heatmaps out: a whole-slide image packed at 2 µm/px, its features, a MIL head's prediction for it (classes of its own) and a heatmap covering the whole slide")
    func wholeSlideToHeatmap() throws {
        let wsi = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("shared/data/wsi/CMU-1-Small-Region.svs")
        guard FileManager.default.fileExists(atPath: wsi.path) else {
            print("skipping: \(wsi.path) is absent (real whole-slide images live in ../shared/data/wsi)")
            return
        }
        let dir = tempDir("wsi-mil")
        defer { try? FileManager.default.removeItem(at: dir) }
        let bin = try histodistillBinary()
        let skin = dir.appendingPathComponent("wsi/skin")
        try FileManager.default.createDirectory(at: skin, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(at: skin.appendingPathComponent("CMU-1.svs"), withDestinationURL: wsi)
        let wsiTiles = dir.appendingPathComponent("wsi-tiles")
        let p = try run([bin, "pack", skin.deletingLastPathComponent().path, "-o", wsiTiles.path, "--tile-size", "64", "--tile-mpp", "1.996"])
        #expect(p.status == 0 && p.stdout.contains("1 whole-slide image(s)") && p.stdout.contains("tiles at 1.996 µm/px"), "\(p.stdout) \(p.stderr)")
        let i = try run([bin, "inspect", wsiTiles.path])
        #expect(i.stdout.contains("CMU-1: aperio, 0.499 µm/px, 20x objective; levels 2220x2967") && i.stdout.contains("tiled at 1.996 µm/px from level 0"), "\(i.stdout)")
        // A head trained on synthetic benign/malignant slides with the same backbone.
        let tiles = try slideShards(dir)
        let (weights, _) = try describedWeights(ResNet(.paper(classes: 2, planes: [32, 64], blocks: [1, 1]), seed: 7), dir, "backbone.safetensors")
        for (shards, out) in [(tiles, "feat"), (wsiTiles, "wsi-feat")] {
            let x = try run([bin, "extract", "--weights", weights.path, "--shards", shards.path, "-o", dir.appendingPathComponent(out).path])
            #expect(x.status == 0, "\(x.stderr)")
        }
        let config = try RunConfig.parse("""
        run: {output: \(dir.appendingPathComponent("mil").path), seed: 1}
        data: {train: \(dir.appendingPathComponent("feat").path)}
        optimizer: {name: adam, lr: 0.001}
        schedule: {name: constant}
        train: {epochs: 2, batch_size: 1, checkpoint_every: 1000}
        mil: {beta: 0.5}
        """, source: "mil.yaml")
        try MILTrainer(config: config, writer: "test").run(resume: false)
        let maps = dir.appendingPathComponent("maps"), csv = dir.appendingPathComponent("slides.csv")
        let m = try run([bin, "mil", "predict", "--run", dir.appendingPathComponent("mil").path, "--features", dir.appendingPathComponent("wsi-feat").path,
                         "-o", csv.path, "--heatmaps", maps.path, "--shards", wsiTiles.path, "--downscale", "2"])
        #expect(m.status == 0, "\(m.stderr)")
        let rows = try String(contentsOf: csv, encoding: .utf8).split(separator: "\n")
        #expect(rows.first == "slide,label,predicted,p_benign,p_malignant" && rows.count == 2 && rows[1].hasPrefix("CMU-1,skin,"), "\(rows) \(m.stdout)")
        // The heatmap covers the whole slide: 2220x2967 level-0 px at 4x (1.996 / 0.499), then 1/2.
        let image = try ImageCodec.decode(maps.appendingPathComponent("CMU-1.png"))
        // (A kept edge tile may reach up to one tile beyond.)
        #expect((555 / 2...(555 + 64) / 2).contains(image.width) && (742 / 2...(742 + 64) / 2).contains(image.height), "\(image.width)x\(image.height)")
        // Glass far from any tile is drawn from the slide itself (near white), not the grey of a missing tile.
        let corner = Array(image.pixels[((5 * image.width) + 5) * 3 ..< ((5 * image.width) + 6) * 3])
        #expect(corner.allSatisfy { $0 > 215 } && corner != [230, 230, 230], "\(corner)")
        // evaluate needs slides of the head's classes, and says so.
        let e = try run([bin, "mil", "evaluate", "--run", dir.appendingPathComponent("mil").path, "--features", dir.appendingPathComponent("wsi-feat").path])
        #expect(e.status != 0 && e.stderr.contains("classes [\"skin\"]") && e.stderr.contains("mil predict"), "\(e.stderr)")
    }

    @Test("top-k fine-tuning trains only the backbone's last stage with the head, resumes at an epoch boundary bit for bit, and its outputs chain into extract and mil evaluate")
    func topKFineTuning() throws {
        // Bit-exact comparisons need one thread width for the whole test (kernel tests vary it in parallel).
        let width = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: width) }
        let dir = tempDir("finetune")
        defer { try? FileManager.default.removeItem(at: dir) }
        let tiles = try slideShards(dir)
        let model = ResNet(.paper(classes: 2, planes: [32, 64], blocks: [1, 1]), seed: 7)
        let (weights, _) = try describedWeights(model, dir, "backbone.safetensors")
        func config(_ name: String, topK: Int = 3) throws -> RunConfig {
            try RunConfig.parse("""
            run: {output: \(dir.appendingPathComponent(name).path), seed: 2}
            data: {train: \(tiles.path)}
            optimizer: {name: adam, lr: 0.001}
            schedule: {name: constant}
            train: {epochs: 2, batch_size: 1, checkpoint_every: 100}
            mil: {beta: 0.5}
            finetune: {backbone_weights: \(weights.path), truncate_after: 2, top_k: \(topK), train_stages: 1}
            """, source: "ft.yaml")
        }
        let straight = try TopKFineTuner(config: try config("a"), writer: "t")
        let before = straight.backbone.model.parameters.values.array
        #expect(try straight.run(resume: false) == .finished && straight.history.count == 12)
        let after = straight.backbone.model.parameters.values.array
        let offset = straight.trainOffset
        #expect(offset > 0 && Array(after[..<offset]) == Array(before[..<offset]), "the stem and stage 1 stay frozen")
        #expect(Array(after[offset...]) != Array(before[offset...]), "stage 2 is trained")
        // Stopped at the end of epoch 0 and resumed: the same losses as without the stop.
        let first = try TopKFineTuner(config: try config("b"), writer: "t")
        #expect(try first.run(resume: false, stopAfter: 6) == .paused(step: 6))
        let resumed = try TopKFineTuner(config: try config("b"), writer: "t")
        #expect(try resumed.run(resume: true) == .finished)
        #expect((first.history + resumed.history).map(\.loss) == straight.history.map(\.loss))
        #expect(resumed.backbone.model.parameters.values.array == after)
        // The fine-tuned backbone describes the precision it was trained in (extract's default).
        let backboneFile = try SafeTensorsFile(contentsOf: dir.appendingPathComponent("a/best-backbone.safetensors"))
        #expect(RunMetadata(safetensors: backboneFile)?.precision == "32-true")
        // The fine-tuned backbone extracts features that the fine-tuned head evaluates.
        let bin = try histodistillBinary()
        let feat = dir.appendingPathComponent("feat")
        let x = try run([bin, "extract", "--weights", dir.appendingPathComponent("a/best-backbone.safetensors").path, "--shards", tiles.path, "-o", feat.path])
        #expect(x.status == 0, "\(x.stderr)")
        let e = try run([bin, "mil", "evaluate", "--weights", dir.appendingPathComponent("a/best.safetensors").path, "--features", feat.path])
        #expect(e.status == 0 && e.stdout.contains("6 slides: accuracy"), "\(e.stdout) \(e.stderr)")
        // The backbone has no classifier: evaluate says so and points to extract (it said "the model has 0 classes").
        let noHead = try run([bin, "evaluate", "--weights", dir.appendingPathComponent("a/best-backbone.safetensors").path, "--shards", tiles.path])
        #expect(noHead.status != 0 && noHead.stderr.contains("a backbone without a classifier") && noHead.stderr.contains("histodistill extract"), "\(noHead.stderr)")
        // top_k above a slide's tile count is refused, naming the slide.
        let big = #expect(throws: TrainingError.self) { _ = try TopKFineTuner(config: try config("c", topK: 7), writer: "t") }
        #expect(big?.message.contains("has 6 tiles") == true, "\(String(describing: big))")
    }
}
