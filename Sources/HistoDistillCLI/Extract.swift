// `histodistill extract`: patch features (HistoTransfer) of a tile shard set from a trained run or a weights file,
// optionally truncated after stage k, grouped by slide into feature files; split over ranks by slide under mpirun.
import ArgumentParser
import Foundation
import Distributed
import TileShards
import Training

struct Extract: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write one pooled feature vector per tile, grouped by slide, from a trained run or weights file (optionally truncated after stage K).",
        discussion: """
            The backbone is the run's (or the weights file's) ResNet without its classifier; --truncate-after K keeps \\
            stages 1..K (HistoTransfer). A state_dict not written by histodistill (e.g. torchvision's resnet18 in \\
            safetensors) needs --model; its fc and any later stages are ignored (said once), and tiles are normalised \\
            with ImageNet's mean and std unless --mean/--std are given. Output: OUT/features-*.safetensors (tensors \\
            features, slide, x, y, tile_id; readable with safetensors.torch.load_file), the input of `histodistill mil`. \\
            Under mpirun each rank extracts whole slides.
            """)

    @OptionGroup var source: ModelSource

    @Option(help: "Architecture of weights not written by histodistill: resnet-gn, resnet18 or resnet34.")
    var model: Architecture?

    @Option(help: "Keep stages 1..K of the backbone (1-4; default all).")
    var truncateAfter: Int?

    @Option(help: "Tile shard directory (tiles packed with slide ids, e.g. `pack --tile-size`).")
    var shards: String

    @Option(name: .shortAndLong, help: "Output directory for the feature files.")
    var output: String

    @Option(help: "Downsample tiles by this factor before the backbone (default: as the weights describe, else 1).")
    var inputFactor: Int?

    @Option(help: "Per-channel mean, e.g. 0.485,0.456,0.406 (default: as the weights describe, else ImageNet's).")
    var mean: String?

    @Option(help: "Per-channel std (default: as the weights describe, else ImageNet's).")
    var std: String?

    @Option(help: "Tiles per forward pass.")
    var batchSize = 64

    @Option(help: "Only tiles whose tissue fraction (recorded by pack for grid and slide tiles) is at least this.")
    var minTissue: Float = 0

    func validate() throws {
        if let truncateAfter, !(1...4).contains(truncateAfter) { throw ValidationError("--truncate-after must be 1, 2, 3 or 4, got \(truncateAfter)") }
        if let inputFactor, ![1, 2, 4, 8, 16].contains(inputFactor) { throw ValidationError("--input-factor must be 1, 2, 4, 8 or 16, got \(inputFactor)") }
        if !(0...1).contains(minTissue) { throw ValidationError("--min-tissue must be in 0...1, got \(minTissue)") }
        if batchSize < 1 { throw ValidationError("--batch-size must be at least 1, got \(batchSize)") }
        _ = try triple(mean, "--mean"); _ = try triple(std, "--std")
    }

    func triple(_ text: String?, _ flag: String) throws -> [Float]? {
        guard let text else { return nil }
        let v = text.split(separator: ",").compactMap { Float($0.trimmingCharacters(in: .whitespaces)) }
        guard v.count == 3, flag == "--mean" || v.allSatisfy({ $0 > 0 }) else { throw ValidationError("\(flag) takes 3 comma-separated numbers\(flag == "--std" ? " > 0" : ""), got '\(text)'") }
        return v
    }

    func run() throws {
        try runOnRanks { group, _ in
            let (backbone, dataset) = try group.collectively { () throws -> (Backbone, ShardDataset) in
                let dataset: ShardDataset
                do { dataset = try ShardDataset(directory: URL(fileURLWithPath: shards), minTissue: minTissue) } catch let e as ShardError { throw CLIError(e.message) }
                do {
                    let b = try Backbone.load(run: source.run, weights: source.weights.map { URL(fileURLWithPath: $0) }, architecture: model,
                                              truncateAfter: truncateAfter, inputFactor: inputFactor, mean: try triple(mean, "--mean"),
                                              std: try triple(std, "--std"), batchSize: batchSize)
                    source.applyCompute(trainedIn: b.trainedPrecision, coordinator: group.isCoordinator)
                    return (b, dataset)
                } catch let e as TrainingError { throw CLIError(e.message) }
            }
            if group.isCoordinator, let w = tileSizeWarning(trainedSize: backbone.trainedTileSize, inputFactor: backbone.settings.inputFactor,
                                                            dataset, shards: shards) {
                FileHandle.standardError.write(Data((w + "\n").utf8))
            }
            let out = URL(fileURLWithPath: output)
            // Every rank writes its part into one staging directory; the new set replaces the old one only when all
            // parts are written, so a failed or interrupted extraction leaves the set in OUTPUT as it was.
            let staged = StagedOutput(final: out, tag: "extracting", isSetFile: FeatureSet.isFeatureFile)
            var lock: RunLock?   // one extraction per output directory, held by the coordinator until the swap
            defer { withExtendedLifetime(lock) {} }
            try group.collectively {
                if group.isCoordinator {
                    if let note = backbone.ignoredNote { FileHandle.standardError.write(Data("note: \(note)\n".utf8)) }
                    try checkWritable(out.appendingPathComponent("features.safetensors"))
                    do { lock = try RunLock(directory: out, hint: "wait for that extraction to end, or extract into another directory") } catch let e as TrainingError { throw CLIError(e.message) }
                    try staged.prepare()
                }
            }
            try group.barrier()
            let progress = ProgressLine(label: "extract")
            let bags: [SlideBag]
            do {
                bags = try backbone.bags(of: dataset, rank: group.rank, worldSize: group.size) { done, total in
                    if group.isCoordinator { progress.update(done, total, unit: "tiles") }
                }
            } catch {
                // This rank's failure (a corrupt tile, ...): the coordinator's staging directory goes with it.
                if group.isCoordinator { staged.discard() }
                if let e = error as? TrainingError { throw CLIError(e.message) }
                throw error
            }
            let meta = FeatureSetMetadata(classes: dataset.classes, featureDimension: backbone.model.featureDimension,
                                          backbone: backbone.model.architectureDescription, truncateAfter: backbone.truncateAfter,
                                          inputFactor: backbone.settings.inputFactor, mean: backbone.settings.mean, std: backbone.settings.std,
                                          sourceShards: dataset.identity, weights: backbone.weights.path, weightsDigest: backbone.digest,
                                          program: "histodistill \(histodistillVersion)")
            do { try FeatureSet(metadata: meta, slides: bags).write(to: staged.staging, part: group.rank) } catch let e as CheckpointError { throw CLIError(e.message) }
            // The sum is also the barrier: every rank's part is written before the coordinator swaps the set in.
            var counts: [Double] = [Double(bags.count), Double(bags.reduce(0) { $0 + $1.count })]
            try counts.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
            if group.isCoordinator {
                try staged.commit()
                print("wrote \(Int(counts[1])) feature vectors of length \(backbone.model.featureDimension) for \(Int(counts[0])) slides to \(out.path)")
            }
            return 0
        }
    }
}

extension Architecture: ExpressibleByArgument {}

