// Model weights of any `Module` as PyTorch state_dicts in safetensors: write, and load with name and shape checks.
import Foundation
import Layers
import SafeTensors
import TensorCore

/// A weights file that does not fit the model, naming the file and the keys.
public struct WeightsError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension Module {
    /// The state_dict in PyTorch's order: parameters and running statistics as F32, num_batches_tracked as I64
    /// scalars, so `model.load_state_dict(safetensors.torch.load_file(path))` works in PyTorch.
    public func stateDict() -> [SafeTensor] {
        stateEntries.map { entry in
            switch entry {
            case .parameter(let s):
                return SafeTensor(name: s.name, shape: s.shape, floats: Array(UnsafeBufferPointer(start: parameters.value(s), count: s.count)))
            case .buffer(let s):
                return SafeTensor(name: s.name, shape: s.shape, floats: Array(UnsafeBufferPointer(start: buffers.value(s), count: s.count)))
            case .counter(let name, let index):
                var v = counters[index].littleEndian
                return SafeTensor(name: name, dtype: .i64, shape: [], data: Data(bytes: &v, count: 8))
            }
        }
    }

    /// Writes the state_dict to `url` as safetensors with `metadata` (plus the architecture), atomically.
    public func saveWeights(to url: URL, metadata: [String: String] = [:]) throws {
        var meta = metadata
        meta["architecture"] = architectureDescription
        let data = try SafeTensorsFile(tensors: stateDict(), metadata: meta).serialized()
        try CheckpointStore.writeAtomically(data, to: url)
    }

    /// Loads a state_dict. Keys may carry DataParallel's "module." prefix. With `strict`, every key of the
    /// model must be present and no other key may be (other keys are allowed with `allowUnexpected`, e.g. a
    /// classifier or later stages a truncated backbone does not have); shapes must match exactly. `source` names
    /// the file in errors.
    public func load(_ file: SafeTensorsFile, source: String, strict: Bool = true, allowUnexpected: Bool = false) throws {
        var byName: [String: SafeTensor] = [:]
        for t in file.tensors {
            let name = t.name.hasPrefix("module.") ? String(t.name.dropFirst(7)) : t.name
            byName[name] = t
        }
        let expected = Set(stateEntries.map(\.name))
        let missing = stateEntries.map(\.name).filter { byName[$0] == nil }
        let unexpected = allowUnexpected ? [] : byName.keys.filter { !expected.contains($0) }.sorted()
        if strict && (!missing.isEmpty || !unexpected.isEmpty) {
            var parts: [String] = []
            if !missing.isEmpty { parts.append("missing keys \(missing.prefix(5).joined(separator: ", "))\(missing.count > 5 ? " (+\(missing.count - 5) more)" : "")") }
            if !unexpected.isEmpty { parts.append("unexpected keys \(unexpected.prefix(5).joined(separator: ", "))\(unexpected.count > 5 ? " (+\(unexpected.count - 5) more)" : "")") }
            throw WeightsError("\(source): does not fit \(architectureDescription): \(parts.joined(separator: "; ")). "
                               + "Hint: check the architecture (planes, blocks, norm, classes) the weights were saved with.")
        }
        for entry in stateEntries {
            guard let t = byName[entry.name] else { continue }
            switch entry {
            case .parameter(let s), .buffer(let s):
                guard t.shape == s.shape else {
                    throw WeightsError("\(source): '\(entry.name)' has shape \(t.shape) but \(architectureDescription) expects \(s.shape). "
                                       + "Hint: the weights belong to a model with other widths or another number of classes.")
                }
                let dst: UnsafeMutablePointer<Float>
                if case .parameter = entry { dst = parameters.value(s) } else { dst = buffers.value(s) }
                let values = t.floats
                values.withUnsafeBufferPointer { dst.update(from: $0.baseAddress!, count: s.count) }
            case .counter(_, let index):
                guard t.count == 1 else {
                    throw WeightsError("\(source): '\(entry.name)' must be a scalar, has shape \(t.shape)")
                }
                counters[index] = Int64(t.floats[0])
            }
        }
    }

    /// Loads weights from a safetensors file at `url`.
    public func loadWeights(from url: URL, strict: Bool = true) throws {
        let file: SafeTensorsFile
        do { file = try SafeTensorsFile(contentsOf: url) } catch let e as SafeTensorsError {
            throw WeightsError(e.message + " Hint: is this a .safetensors file written by histodistill or safetensors.torch.save_file?")
        }
        try load(file, source: url.path, strict: strict)
    }
}
