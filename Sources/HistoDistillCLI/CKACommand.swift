// `histodistill cka`: stage-by-stage linear CKA between two models on the same tiles (each at its own input
// resolution and normalisation), as CSV and a heatmap PNG.
import ArgumentParser
import Foundation
import TileShards
import Training

struct CKACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cka",
        abstract: "Stage-by-stage linear CKA (Kornblith et al. 2019) between two models' representations of the same tiles.",
        discussion: """
            Each model is a run directory (--run-a) or a weights file (--weights-a; --model-a for weights not written \\
            by histodistill), and sees the tiles as it was trained to (its own input factor and normalisation): a \\
            224 px teacher and its 56 px student are compared on the same tiles. Each stage's output is globally \\
            average-pooled per tile. Output: a CSV matrix (rows: stages of A, columns: stages of B) and a PNG heatmap.
            """)

    @Option(help: "Model A: run directory.") var runA: String?
    @Option(help: "Model A: weights file.") var weightsA: String?
    @Option(help: "Model A's architecture, for weights not written by histodistill.") var modelA: Architecture?
    @Option(help: "Model B: run directory.") var runB: String?
    @Option(help: "Model B: weights file.") var weightsB: String?
    @Option(help: "Model B's architecture, for weights not written by histodistill.") var modelB: Architecture?

    @Option(help: "Tile shard directory.")
    var shards: String

    @Option(help: "Tiles compared (evenly spaced over the shard set).")
    var maxTiles = 512

    @Option(name: .shortAndLong, help: "CSV file for the matrix.")
    var output: String

    @Option(help: "PNG heatmap of the matrix (default: the CSV's name with .png).")
    var png: String?

    func validate() throws {
        if runA == nil && weightsA == nil { throw ValidationError("give model A with --run-a or --weights-a") }
        if runB == nil && weightsB == nil { throw ValidationError("give model B with --run-b or --weights-b") }
        if maxTiles < 10 { throw ValidationError("--max-tiles must be at least 10 (CKA on a handful of tiles is close to 1 for anything), got \(maxTiles)") }
    }

    func run() throws {
        let dataset: ShardDataset
        do { dataset = try ShardDataset(directory: URL(fileURLWithPath: shards)) } catch let e as ShardError { throw CLIError(e.message) }
        func load(_ run: String?, _ weights: String?, _ model: Architecture?, _ flag: String) throws -> Backbone {
            do {
                return try Backbone.load(run: run.map { RunDirectory(path: $0) }, weights: weights.map { URL(fileURLWithPath: $0) }, architecture: model,
                                         truncateAfter: nil, inputFactor: nil, mean: nil, std: nil, modelFlag: flag)
            } catch let e as TrainingError { throw CLIError(e.message) }
        }
        let a = try load(runA, weightsA, modelA, "--model-a"), b = try load(runB, weightsB, modelB, "--model-b")
        let csvURL = URL(fileURLWithPath: output)
        let pngURL = URL(fileURLWithPath: png ?? csvURL.deletingPathExtension().appendingPathExtension("png").path)
        try checkWritable(csvURL); try checkWritable(pngURL)
        let n = min(maxTiles, dataset.count)
        // The same floor as --max-tiles: below it CKA says nothing (and one tile has no variance to compare).
        guard n >= 10 else {
            throw CLIError("\(shards) holds \(dataset.count) tile(s); CKA compares representations over at least 10 tiles",
                           hint: "give a shard set of 100 tiles or more (e.g. a validation split)")
        }
        if n < 100 { FileHandle.standardError.write(Data("note: CKA on \(n) tiles is noisy (unrelated representations read high below about 100 tiles)\n".utf8)) }
        let indices = (0..<n).map { $0 * dataset.count / n }
        let ra = try CKA.stageRepresentations(model: a.model, dataset: dataset, settings: a.settings, indices: indices)
        let rb = try CKA.stageRepresentations(model: b.model, dataset: dataset, settings: b.settings, indices: indices)
        let m = CKA.matrix(ra, rb, n: n)
        let csv = CSVTable.text(header: ["stage"] + (1...m[0].count).map { "b_stage\($0)" },
                                rows: m.enumerated().map { i, row in ["a_stage\(i + 1)"] + row.map { String(format: "%.6f", $0) } })
        try writeOutput(Data(csv.utf8), to: csvURL)
        do { try ImageCodec.writePNG(Heatmap.image(m.map { $0.map(Optional.init) }, cell: 48, range: 0...1), to: pngURL) } catch {
            throw CLIError("\(pngURL.path): cannot be written (\(error))")
        }
        print("linear CKA on \(n) tiles, A = \(a.model.architectureDescription) at factor \(a.settings.inputFactor), B = \(b.model.architectureDescription) at factor \(b.settings.inputFactor)")
        print("rows: stages of A; columns: stages of B")
        for (i, row) in m.enumerated() { print("  stage \(i + 1): " + row.map { String(format: "%.3f", $0) }.joined(separator: "  ")) }
        print("wrote \(csvURL.path) and \(pngURL.path)")
    }
}
