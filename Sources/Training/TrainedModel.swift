// A trained model ready for new tiles: its weights and its self-description, from a run directory or from a
// weights file alone.
import Foundation
import Layers
import SafeTensors
import TileShards

/// A trained network with what it needs to be applied to new tiles (`RunMetadata`).
public struct TrainedModel {
    /// The network, weights loaded.
    public let model: any ImageModel
    /// Classes, normalisation, input factor and the rest.
    public let metadata: RunMetadata
    /// The weights file it was loaded from.
    public let weights: URL
    /// Digest of that file's bytes (`FNV1a64`): what a distillation checkpoint records of its teacher.
    public let digest: String

    /// Loads a trained model from `weights`, or from `run`'s preferred weights (best, else newest checkpoint).
    ///
    /// The description comes from the weights file's metadata (enough on its own), else from the run's run.json,
    /// else, for a run written before runs described themselves, from its config.yaml (class names unknown).
    /// Throws `TrainingError` naming the file and a fix.
    /// A MIL head's weights where a CNN's are expected: one line saying so (rather than a list of missing keys).
    static func refuseMILHead(_ file: SafeTensorsFile, path: String) throws {
        if file.metadata["histodistill.mil"] != nil {
            throw TrainingError("\(path) is an attention-MIL head (`histodistill mil train`), not a CNN. Hint: give the run or weights of a CNN trained with `histodistill train` or `distill`.")
        }
    }

    public static func load(run: RunDirectory?, weights: URL?, weightsHint: String = "train first, or pass --weights FILE") throws -> TrainedModel {
        guard let chosen = weights ?? run?.preferredWeights() else {
            if let run {
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: run.url.path, isDirectory: &isDirectory), isDirectory.boolValue else {
                    throw TrainingError("\(run.url.path): no such run directory. Hint: check the path (a relative path in a config file is relative to the current directory; in a run's own config.yaml, to that run).")
                }
                throw TrainingError("\(run.url.path): holds no best.safetensors and no complete checkpoint. Hint: \(weightsHint).")
            }
            throw TrainingError("no model given. Hint: pass --run RUN_DIRECTORY or --weights FILE.safetensors.")
        }
        let file: SafeTensorsFile
        // One read: the bytes give both the tensors and the digest a distillation checkpoint records.
        let bytes: Data
        do {
            bytes = try Data(contentsOf: chosen, options: .alwaysMapped)
            file = try SafeTensorsFile(data: bytes, source: chosen.path)
        } catch let e as SafeTensorsError {
            throw TrainingError("\(e.message) Hint: the file is damaged or not a weights file; give a .safetensors file written by histodistill (RUN/best.safetensors), or retrain if this one was.")
        } catch {
            throw TrainingError("\(chosen.path): cannot be read (\(fileErrorReason(error))). Hint: check the path.")
        }
        InputFiles.note(chosen)
        try refuseMILHead(file, path: chosen.path)
        var metadata = RunMetadata(safetensors: file)
        if metadata == nil, let run {
            do { metadata = try run.loadMetadata() } catch let e as ConfigError { throw TrainingError(e.message) }
            if metadata == nil { metadata = try legacyMetadata(run: run, file: file) }
        }
        guard let metadata else {
            throw TrainingError("\(chosen.path) does not describe its model (no '\(RunMetadata.safetensorsKey)' metadata: written by PyTorch or an older histodistill). Hint: also pass --run with the run directory that trained it.")
        }
        let problems = metadata.problems
        guard problems.isEmpty else {
            throw TrainingError("\(chosen.path): its description (or the run's run.json) is invalid: \(problems.joined(separator: "; ")). Hint: the file was damaged or edited; use the weights the run wrote, or retrain.")
        }
        let model = ResNet(metadata.model, initialize: false)
        do { try model.load(file, source: chosen.path) } catch let e as WeightsError { throw TrainingError(e.message) }
        guard GradientOps.allFinite(model.parameters.values.pointer, count: model.parameterCount),
              GradientOps.allFinite(model.buffers.values.pointer, count: model.buffers.layout.count) else {
            throw TrainingError("\(chosen.path) holds non-finite weights (NaN or infinity): the run that wrote it diverged. Hint: use an earlier checkpoint of that run, or retrain with a lower optimizer.lr.")
        }
        return TrainedModel(model: model, metadata: metadata, weights: chosen, digest: FNV1a64.digest(bytes))
    }

    /// A description rebuilt from an older run's config.yaml and the classifier's shape.
    static func legacyMetadata(run: RunDirectory, file: SafeTensorsFile) throws -> RunMetadata {
        let config: RunConfig
        do { config = try run.loadConfig() } catch let e as ConfigError {
            throw TrainingError("\(e.message) Hint: give --run the directory `histodistill train` wrote (it holds config.yaml).")
        }
        let fc = file["fc.weight"] ?? file["module.fc.weight"]
        let classes = fc.map { $0.shape[0] } ?? config.classes
        return RunMetadata(model: config.modelConfig(classes: classes), classes: [], mean: config.mean, std: config.std,
                           inputFactor: config.inputFactor, tileSize: nil, tileMicronsPerPixel: nil, trainShards: nil,
                           trainShardsPath: nil, objective: config.isDistillation ? "distillation" : "supervised",
                           teacherRun: config.teacherRun, program: "unknown (a run older than run.json)")
    }

    /// Maps the class names of `dataset` to the model's class indices, by name: entry i is the model's index of
    /// the dataset's class i. Throws naming both lists when a dataset class is not one of the model's. With a
    /// model whose names are unknown (an older run), the dataset's classes are taken in order when the counts match.
    public func labelMap(for datasetClasses: [String], source: String) throws -> [Int32] {
        if metadata.classes.isEmpty {
            guard datasetClasses.count == model.classes else {
                throw TrainingError("the model has \(model.classes) classes but \(source) has \(datasetClasses.count) \(datasetClasses). Hint: evaluate on shards packed with the training classes.")
            }
            return datasetClasses.indices.map(Int32.init)
        }
        let missing = datasetClasses.filter { !metadata.classes.contains($0) }
        guard missing.isEmpty else {
            throw TrainingError("\(source) has classes \(datasetClasses), the model was trained on \(metadata.classes); \(missing) are not among them. Hint: evaluate on shards whose class folders are named like the training classes, or use `histodistill predict` for tiles of other classes.")
        }
        return datasetClasses.map { Int32(metadata.classes.firstIndex(of: $0)!) }
    }

    /// Class names for output columns: the model's, or class0... when unknown.
    public var classNames: [String] {
        metadata.classes.count == model.classes ? metadata.classes : (0..<model.classes).map { "class\($0)" }
    }
}
