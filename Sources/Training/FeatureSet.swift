// Patch feature sets (HistoTransfer): one pooled feature vector per tile, grouped by slide, in safetensors files
// that PyTorch reads as they are (`safetensors.torch.load_file`). Written by `histodistill extract`, read by
// `histodistill mil`.
import Foundation
import Layers
import SafeTensors
import TensorCore
import TileShards

/// What a feature set holds and where it came from (safetensors metadata key `histodistill.features`).
public struct FeatureSetMetadata: Codable, Equatable, Sendable {
    public var format = "histodistill-features"
    public var version = 1
    /// Slide-label class names (the tile shards' classes).
    public var classes: [String]
    /// Length of every feature vector.
    public var featureDimension: Int
    /// The backbone ("resnet-gn: planes ..., 2 stages") and the stage it was cut after (nil: all stages).
    public var backbone: String
    public var truncateAfter: Int?
    /// How tiles were prepared: downsampling factor, normalisation.
    public var inputFactor: Int
    public var mean: [Float], std: [Float]
    /// The tile shard set the features come from.
    public var sourceShards: ShardSetIdentity
    /// The weights file and its digest.
    public var weights: String, weightsDigest: String
    public var program: String

    enum CodingKeys: String, CodingKey {
        case format, version, classes, backbone, mean, std, weights, program
        case featureDimension = "feature_dimension", truncateAfter = "truncate_after", inputFactor = "input_factor"
        case sourceShards = "source_shards", weightsDigest = "weights_digest"
    }

    public init(classes: [String], featureDimension: Int, backbone: String, truncateAfter: Int?, inputFactor: Int, mean: [Float],
                std: [Float], sourceShards: ShardSetIdentity, weights: String, weightsDigest: String, program: String) {
        self.classes = classes; self.featureDimension = featureDimension; self.backbone = backbone; self.truncateAfter = truncateAfter
        self.inputFactor = inputFactor; self.mean = mean; self.std = std; self.sourceShards = sourceShards; self.weights = weights
        self.weightsDigest = weightsDigest; self.program = program
    }

    static let key = "histodistill.features"

    /// True when `other` comes from the same backbone, weights, cut, preparation and classes (features that can be
    /// mixed or compared).
    /// "'resnet-gn: ...' (weights 0123..., cut after 3, factor 1, length 128, classes [...])", for messages.
    public var summary: String {
        "'\(backbone)' (weights \(weightsDigest), cut after \(truncateAfter.map(String.init) ?? "all stages"), factor \(inputFactor), length \(featureDimension), classes \(classes))"
    }

    public func sameExtraction(as other: FeatureSetMetadata) -> Bool {
        classes == other.classes && sameBackbone(as: other)
    }

    /// True when the vectors come from the same backbone, weights, cut, input factor and normalisation (whatever
    /// the slides' classes): a head trained on one applies to the other.
    public func sameBackbone(as other: FeatureSetMetadata) -> Bool {
        featureDimension == other.featureDimension && backbone == other.backbone && weightsDigest == other.weightsDigest
            && truncateAfter == other.truncateAfter && inputFactor == other.inputFactor && mean == other.mean && std == other.std
    }
}

/// One slide's bag: its label and the feature vector and grid position of each of its tiles.
public struct SlideBag: Sendable, Equatable {
    /// The slide id.
    public var name: String
    /// Class index of the slide (-1 when unlabeled).
    public var label: Int32
    /// (tiles, featureDimension), row-major.
    public var features: [Float]
    /// Each tile's position in the slide (pixels at the packing resolution) and id.
    public var x: [Int32], y: [Int32]
    public var tileIDs: [UInt64]

    public init(name: String, label: Int32, features: [Float], x: [Int32], y: [Int32], tileIDs: [UInt64]) {
        self.name = name; self.label = label; self.features = features; self.x = x; self.y = y; self.tileIDs = tileIDs
    }

    /// Number of tiles.
    public var count: Int { x.count }
}

/// A feature set on disk: `DIR/features-NNNNN.safetensors`, each holding whole slides (tensors `features`
/// (tiles, D) F32, `slide` (tiles) I32 indexing the file's `slides` metadata list, `x`, `y` I32, `tile_id` I64;
/// metadata `slides`, `slide_labels` and `histodistill.features`).
public struct FeatureSet: Sendable {
    public var metadata: FeatureSetMetadata
    public var slides: [SlideBag]

    public init(metadata: FeatureSetMetadata, slides: [SlideBag]) { self.metadata = metadata; self.slides = slides }

    /// Reads every feature file of `directory`; throws `TrainingError` naming the file for anything inconsistent.
    public init(directory: URL) throws {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).filter { $0.hasSuffix(".safetensors") }.sorted()
        guard !names.isEmpty else {
            throw TrainingError("\(directory.path): holds no feature files (features-*.safetensors). Hint: make them with `histodistill extract`.")
        }
        var meta: FeatureSetMetadata?
        var slides: [SlideBag] = []
        for name in names {
            let url = directory.appendingPathComponent(name)
            let file: SafeTensorsFile
            InputFiles.note(url)
            do { file = try SafeTensorsFile(contentsOf: url) } catch let e as SafeTensorsError { throw TrainingError(e.message) }
            guard let text = file.metadata[FeatureSetMetadata.key],
                  let m = try? JSONDecoder().decode(FeatureSetMetadata.self, from: Data(text.utf8)) else {
                throw TrainingError("\(url.path): not a histodistill feature file (no '\(FeatureSetMetadata.key)' metadata). Hint: make feature sets with `histodistill extract`.")
            }
            if let meta, !meta.sameExtraction(as: m) {
                throw TrainingError("\(url.path): features from \(m.summary) do not match \(names[0])'s from \(meta.summary). Hint: keep one extraction per directory.")
            }
            meta = meta ?? m
            guard let f = file["features"], f.shape.count == 2, f.shape[1] == m.featureDimension,
                  let s = file["slide"], let x = file["x"], let y = file["y"], let ids = file["tile_id"],
                  [s.count, x.count, y.count, ids.count].allSatisfy({ $0 == f.shape[0] }),
                  let slideNames = file.metadata["slides"].flatMap({ try? JSONDecoder().decode([String].self, from: Data($0.utf8)) }),
                  let slideLabels = file.metadata["slide_labels"].flatMap({ try? JSONDecoder().decode([Int32].self, from: Data($0.utf8)) }),
                  slideNames.count == slideLabels.count else {
                throw TrainingError("\(url.path): damaged feature file (tensors features (tiles, \(m.featureDimension)), slide, x, y, tile_id of one length, and the slides metadata are required). Hint: extract again.")
            }
            let values = f.floats, slideIndex = s.floats.map { Int($0) }
            let xs = x.floats.map { Int32($0) }, ys = y.floats.map { Int32($0) }
            let tileIDs: [UInt64] = ids.data.withUnsafeBytes { raw in (0..<ids.count).map { UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self)) } }
            var bags = slideNames.enumerated().map { i, n in SlideBag(name: n, label: slideLabels[i], features: [], x: [], y: [], tileIDs: []) }
            let d = m.featureDimension
            for t in 0..<slideIndex.count {
                let k = slideIndex[t]
                guard k >= 0 && k < bags.count else { throw TrainingError("\(url.path): tile \(t) names slide \(k) of \(bags.count). Hint: extract again.") }
                bags[k].features += values[(t * d)..<((t + 1) * d)]
                bags[k].x.append(xs[t]); bags[k].y.append(ys[t]); bags[k].tileIDs.append(tileIDs[t])
            }
            slides += bags.filter { $0.count > 0 }
        }
        var seen = Set<String>()
        for s in slides where !seen.insert(s.name).inserted {
            throw TrainingError("\(directory.path): slide '\(s.name)' appears in two feature files. Hint: keep one extraction per directory (extract replaces the files of its output).")
        }
        self.metadata = meta!
        self.slides = slides
    }

    /// (training, validation) for fold `fold` of `folds`: each class's slides are shuffled with `seed` and dealt
    /// round-robin into the folds, so every fold holds about the same share of every class (stratified k-fold).
    /// Unlabeled slides stay in training.
    public func crossValidationSplit(folds: Int, fold: Int, seed: UInt64) -> (FeatureSet, FeatureSet) {
        let (train, val) = Self.foldIndices(labels: slides.map(\.label), classes: metadata.classes.count, folds: folds, fold: fold, seed: seed)
        return (FeatureSet(metadata: metadata, slides: train.map { slides[$0] }), FeatureSet(metadata: metadata, slides: val.map { slides[$0] }))
    }

    /// (training, validation) item indices of fold `fold` (see `stratifiedFolds`; unlabeled items train).
    public static func foldIndices(labels: [Int32], classes: Int, folds: Int, fold: Int, seed: UInt64) -> (train: [Int], val: [Int]) {
        let foldOf = stratifiedFolds(labels: labels, classes: classes, folds: folds, seed: seed)
        return (labels.indices.filter { foldOf[$0] != fold }, labels.indices.filter { foldOf[$0] == fold })
    }

    /// `foldIndices` for a run's `mil.folds`/`mil.fold`, refusing a split that leaves either side empty.
    public static func foldIndices(labels: [Int32], classes: Int, config: RunConfig) throws -> (train: [Int], val: [Int]) {
        let split = foldIndices(labels: labels, classes: classes, folds: config.milFolds, fold: config.milFold, seed: config.seed)
        guard !split.train.isEmpty && !split.val.isEmpty else {
            throw TrainingError("mil.folds \(config.milFolds) leaves fold \(config.milFold) empty (\(labels.count) slides). Hint: use at most as many folds as the smallest class has slides.")
        }
        return split
    }

    /// The fold of each item (-1 for unlabeled ones): each class's items are shuffled with `seed` and dealt
    /// round-robin into `folds` folds (stratified k-fold).
    public static func stratifiedFolds(labels: [Int32], classes: Int, folds: Int, seed: UInt64) -> [Int] {
        var foldOf = [Int](repeating: -1, count: labels.count)
        for c in 0..<classes {
            var members = labels.indices.filter { labels[$0] == Int32(c) }
            var g = SplitMix64.stream(seed, 0xF01D, UInt64(c))
            for i in stride(from: members.count - 1, to: 0, by: -1) { members.swapAt(i, Int(g.next() % UInt64(i + 1))) }
            for (k, s) in members.enumerated() { foldOf[s] = k % folds }
        }
        return foldOf
    }

    /// True for the name of a feature set's file (`features-PART-NNNNN.safetensors`).
    public static func isFeatureFile(_ name: String) -> Bool { name.hasPrefix("features-") && name.hasSuffix(".safetensors") }

    /// Writes the set into `directory` (created) as `features-PART-NNNNN.safetensors`, whole slides per file, files
    /// of about `maxBytes` each. Ranks write their own parts (`part` = rank); files read back in name order.
    public func write(to directory: URL, part: Int = 0, maxBytes: Int = 256 << 20) throws {
        let fm = FileManager.default
        try fm.createDirectory(at: directory, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let metaText = String(decoding: try encoder.encode(metadata), as: UTF8.self)
        var groups: [[SlideBag]] = [[]]
        var bytes = 0
        for s in slides {
            let size = s.features.count * 4 + s.count * 20
            if bytes > 0 && bytes + size > maxBytes { groups.append([]); bytes = 0 }
            groups[groups.count - 1].append(s)
            bytes += size
        }
        for (i, group) in groups.enumerated() where !group.isEmpty {
            func ints<T: FixedWidthInteger>(_ v: [T]) -> Data { v.map(\.littleEndian).withUnsafeBufferPointer { Data(buffer: $0) } }
            let n = group.reduce(0) { $0 + $1.count }
            let tensors = [
                SafeTensor(name: "features", shape: [n, metadata.featureDimension], floats: group.flatMap(\.features)),
                SafeTensor(name: "slide", dtype: .i32, shape: [n], data: ints(group.enumerated().flatMap { k, s in Array(repeating: Int32(k), count: s.count) })),
                SafeTensor(name: "x", dtype: .i32, shape: [n], data: ints(group.flatMap(\.x))),
                SafeTensor(name: "y", dtype: .i32, shape: [n], data: ints(group.flatMap(\.y))),
                SafeTensor(name: "tile_id", dtype: .i64, shape: [n], data: ints(group.flatMap(\.tileIDs).map { Int64(bitPattern: $0) })),
            ]
            let meta = [FeatureSetMetadata.key: metaText,
                        "slides": String(decoding: try encoder.encode(group.map(\.name)), as: UTF8.self),
                        "slide_labels": String(decoding: try encoder.encode(group.map(\.label)), as: UTF8.self)]
            try CheckpointStore.writeAtomically(try SafeTensorsFile(tensors: tensors, metadata: meta).serialized(),
                                                to: directory.appendingPathComponent(String(format: "features-%04d-%05d.safetensors", part, i)))
        }
    }

    /// Builds the bags of `predictions` (from `Inference.features`) grouped by slide in order of first appearance;
    /// a slide whose tiles carry different labels is an error naming it.
    public static func bags(from p: Predictions, dataset: ShardDataset) throws -> [SlideBag] {
        var order: [String] = [], bags: [String: SlideBag] = [:]
        for (k, t) in p.samples.enumerated() {
            let e = dataset.entry(t), name = p.slides[k]
            if bags[name] == nil {
                order.append(name)
                bags[name] = SlideBag(name: name, label: e.label, features: [], x: [], y: [], tileIDs: [])
            }
            guard bags[name]!.label == e.label else {
                let names = dataset.classes
                func text(_ l: Int32) -> String { l >= 0 && Int(l) < names.count ? names[Int(l)] : "unlabeled" }
                throw TrainingError("slide '\(name)' has tiles labeled \(text(bags[name]!.label)) and \(text(e.label)): a slide has one label. Hint: pack each slide under one class folder (or one manifest label).")
            }
            bags[name]!.features += p.features[k]
            bags[name]!.x.append(e.x); bags[name]!.y.append(e.y); bags[name]!.tileIDs.append(e.id)
        }
        return order.map { bags[$0]! }
    }
}
