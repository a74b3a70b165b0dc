// A feature backbone (HistoTransfer): a trained run's or a weights file's ResNet, optionally truncated after
// stage k, without its classifier; and the features it gives a tile shard set, split over ranks by slide.
import Foundation
import Layers
import SafeTensors
import TileShards

/// A ResNet feature extractor with the preparation its weights expect.
public struct Backbone {
    /// The network (no classifier; `stages` stages).
    public let model: ResNet
    /// Input factor and normalisation.
    public let settings: InferenceSettings
    /// The weights file, its digest, and a note about keys it had that the backbone does not use.
    public let weights: URL
    public let digest: String
    public let ignoredNote: String?
    /// The stage it was cut after (nil: all of them).
    public let truncateAfter: Int?
    /// The convolutions' precision the weights were trained in, when their description says (`RunMetadata.precision`).
    public var trainedPrecision: String? = nil
    /// The tile edge in pixels the weights were trained on, when their description says (`RunMetadata.tileSize`).
    public var trainedTileSize: Int? = nil

    /// ImageNet's normalisation (torchvision), the default for weights that do not describe their own.
    public static let imageNetMean: [Float] = [0.485, 0.456, 0.406], imageNetStd: [Float] = [0.229, 0.224, 0.225]

    /// Loads a backbone from `weights` (or `run`'s preferred weights). A file written by histodistill describes its
    /// network and preparation; any other state_dict (e.g. torchvision's resnet18 with its 1000-class `fc`) needs
    /// `architecture`. `inputFactor`, `mean`, `std` override the described (or ImageNet) preparation. Every key the
    /// backbone needs must be in the file with its shape; other keys (fc, later stages) are ignored.
    public static func load(run: RunDirectory?, weights: URL?, architecture: Architecture?, truncateAfter: Int?,
                            inputFactor: Int?, mean: [Float]?, std: [Float]?, batchSize: Int = 64, modelFlag: String = "--model",
                            truncateFlag: String = "--truncate-after") throws -> Backbone {
        if let run, weights == nil {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: run.url.path, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw TrainingError("\(run.url.path): no such run directory. Hint: check the path.")
            }
        }
        guard let chosen = weights ?? run?.preferredWeights() else {
            throw TrainingError(run.map { "\($0.url.path): holds no best.safetensors and no complete checkpoint. Hint: train first, or pass --weights FILE." }
                                ?? "no model given. Hint: pass --run RUN_DIRECTORY, or --weights FILE.safetensors (with --model for weights not written by histodistill).")
        }
        let file: SafeTensorsFile
        // One read: the bytes give both the tensors and the digest that feature sets record.
        let bytes: Data
        do {
            bytes = try Data(contentsOf: chosen, options: .alwaysMapped)
            file = try SafeTensorsFile(data: bytes, source: chosen.path)
        } catch let e as SafeTensorsError { throw TrainingError(e.message) } catch {
            throw TrainingError("\(chosen.path): cannot be read (\(fileErrorReason(error))). Hint: check the path.")
        }
        InputFiles.note(chosen)
        try TrainedModel.refuseMILHead(file, path: chosen.path)
        var described = RunMetadata(safetensors: file)
        if described == nil, let run { described = try? run.loadMetadata() }
        var config: ResNetConfig
        var settings: InferenceSettings
        if let architecture {
            var c = RunConfig()
            c.architecture = architecture
            config = c.modelConfig(classes: 0)
            settings = InferenceSettings(inputFactor: 1, mean: imageNetMean, std: imageNetStd, batchSize: batchSize)
            if let described, described.model.name != config.name {
                throw TrainingError("\(chosen.path) holds a \(described.model.name), not a \(architecture.rawValue). Hint: leave out --model; the file describes its network.")
            }
        } else if let described {
            config = described.model
            settings = InferenceSettings(described, batchSize: batchSize)
        } else {
            throw TrainingError("\(chosen.path) does not describe its network (not written by histodistill). Hint: pass \(modelFlag) resnet18, resnet34 or resnet-gn, the architecture the weights belong to.")
        }
        let stages = truncateAfter ?? config.stages
        guard stages >= 1 && stages <= config.planes.count else {
            throw TrainingError("\(truncateFlag) \(stages) is outside 1...\(config.planes.count): \(chosen.path) holds a \(config.name) of \(config.planes.count) stages. Hint: give a stage from 1 to \(config.planes.count).")
        }
        let model = ResNet(config.truncated(after: stages), initialize: false)
        do { try model.load(file, source: chosen.path, allowUnexpected: true) } catch let e as WeightsError {
            throw TrainingError(e.message)
        }
        guard GradientOps.allFinite(model.parameters.values.pointer, count: model.parameterCount) else {
            throw TrainingError("\(chosen.path) holds non-finite weights (NaN or infinity). Hint: use an earlier checkpoint of that run.")
        }
        let used = Set(model.stateEntries.map(\.name))
        let ignored = file.tensors.map { $0.name.hasPrefix("module.") ? String($0.name.dropFirst(7)) : $0.name }.filter { !used.contains($0) }
        // Only the classifier and stages after the cut may be left out: any other key means another network
        // (e.g. a resnet34's extra blocks read as a resnet18).
        let foreign = ignored.filter { name in
            if name.hasPrefix("fc.") { return false }
            if name.hasPrefix("layer"), let digit = name.dropFirst(5).first?.wholeNumberValue, digit > stages { return false }
            return true
        }
        guard foreign.isEmpty else {
            throw TrainingError("\(chosen.path) does not fit \(config.name): it holds \(foreign.prefix(4).joined(separator: ", "))\(foreign.count > 4 ? " (+\(foreign.count - 4) more)" : ""), which \(config.name) has no place for. Hint: check the architecture the weights belong to (\(modelFlag)).")
        }
        var note: String?
        if !ignored.isEmpty {
            let fc = file["fc.weight"] ?? file["module.fc.weight"]
            note = "\(ignored.count) tensors of \(chosen.lastPathComponent) are not part of the backbone and were ignored"
                + (fc.map { " (among them the \($0.shape[0])-class classifier fc)" } ?? "")
                + (stages < config.planes.count ? " (stages after \(stages))" : "")
        }
        if let inputFactor { settings.inputFactor = inputFactor }
        if let mean { settings.mean = mean }
        if let std { settings.std = std }
        // The cut, as recorded with features: the kept stages when fewer than the architecture has, else nil.
        var backbone = Backbone(model: model, settings: settings, weights: chosen, digest: FNV1a64.digest(bytes), ignoredNote: note,
                                truncateAfter: stages < config.planes.count ? stages : nil)
        backbone.trainedPrecision = described?.precision
        backbone.trainedTileSize = described?.tileSize
        return backbone
    }

    /// The slides of `dataset` this rank of `worldSize` extracts: whole slides, contiguous in dataset order, about
    /// an equal number of tiles per rank. Returns the tile index ranges (contiguous runs) of those slides.
    public static func share(of dataset: ShardDataset, rank: Int, worldSize: Int) -> [Range<Int>] {
        var mine: [Int] = [], start = 0
        let n = dataset.count
        for (_, tiles) in dataset.slideTiles {
            let owner = min(worldSize - 1, start * worldSize / max(n, 1))
            if owner == rank { mine += tiles }
            start += tiles.count
        }
        mine.sort()
        var runs: [Range<Int>] = []
        for t in mine {
            if let last = runs.last, last.upperBound == t { runs[runs.count - 1] = last.lowerBound..<(t + 1) } else { runs.append(t..<(t + 1)) }
        }
        return runs
    }

    /// The bags of this rank's share of `dataset`'s slides (all of them on one process).
    public func bags(of dataset: ShardDataset, rank: Int = 0, worldSize: Int = 1, progress: ((Int, Int) -> Void)? = nil) throws -> [SlideBag] {
        var p = Predictions()
        let runs = Self.share(of: dataset, rank: rank, worldSize: worldSize)
        let total = runs.reduce(0) { $0 + $1.count }
        for r in runs {
            let part = try Inference.features(model: model, dataset: dataset, settings: settings, range: r)
            p.features += part.features; p.samples += part.samples; p.slides += part.slides; p.labels += part.labels; p.ids += part.ids
            progress?(p.samples.count, total)
        }
        return try FeatureSet.bags(from: p, dataset: dataset)
    }
}
