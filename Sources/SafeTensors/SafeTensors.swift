// safetensors read and write: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.
import Foundation

/// A failure reading or writing a safetensors file, naming the file and what is wrong.
public struct SafeTensorsError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Element types of safetensors this tool reads and writes.
public enum SafeTensorsDType: String, Sendable {
    case f32 = "F32", f64 = "F64", i64 = "I64", i32 = "I32", u8 = "U8"
    /// Bytes per element.
    public var size: Int {
        switch self {
        case .f32, .i32: return 4
        case .f64, .i64: return 8
        case .u8: return 1
        }
    }
}

/// One tensor: name, dtype, shape and its raw little-endian bytes.
public struct SafeTensor: Sendable {
    public var name: String
    public var dtype: SafeTensorsDType
    public var shape: [Int]
    public var data: Data

    /// A float32 tensor from values.
    public init(name: String, shape: [Int], floats: [Float]) {
        precondition(shape.reduce(1, *) == floats.count, "SafeTensor '\(name)': shape \(shape) does not hold \(floats.count) values")
        self.name = name; dtype = .f32; self.shape = shape
        data = floats.withUnsafeBufferPointer { Data(buffer: $0) }
    }

    /// A tensor from raw bytes.
    public init(name: String, dtype: SafeTensorsDType, shape: [Int], data: Data) {
        self.name = name; self.dtype = dtype; self.shape = shape; self.data = data
    }

    /// Number of elements.
    public var count: Int { shape.reduce(1, *) }

    /// The values as Float (converting F64 and integer types).
    public var floats: [Float] {
        data.withUnsafeBytes { raw -> [Float] in
            switch dtype {
            case .f32: return (0..<count).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) }
            case .f64: return (0..<count).map { Float(raw.loadUnaligned(fromByteOffset: $0 * 8, as: Double.self)) }
            case .i64: return (0..<count).map { Float(raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) }
            case .i32: return (0..<count).map { Float(raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
            case .u8: return (0..<count).map { Float(raw[$0]) }
            }
        }
    }

    /// The values as Double.
    public var doubles: [Double] {
        if dtype == .f64 {
            return data.withUnsafeBytes { raw in (0..<count).map { raw.loadUnaligned(fromByteOffset: $0 * 8, as: Double.self) } }
        }
        return floats.map(Double.init)
    }
}

/// A whole safetensors file: tensors in file order plus string metadata.
public struct SafeTensorsFile: Sendable {
    public var tensors: [SafeTensor]
    public var metadata: [String: String]

    public init(tensors: [SafeTensor], metadata: [String: String] = [:]) {
        self.tensors = tensors; self.metadata = metadata
    }

    /// The tensor named `name`, or nil.
    public subscript(name: String) -> SafeTensor? { tensors.first { $0.name == name } }

    /// Parses safetensors bytes; `source` names the file in errors.
    public init(data: Data, source: String) throws {
        guard data.count >= 8 else { throw SafeTensorsError("\(source): too short for a safetensors header (\(data.count) bytes)") }
        let headerLength = data.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard headerLength <= UInt64(data.count - 8), headerLength < 100_000_000 else {
            throw SafeTensorsError("\(source): header length \(headerLength) exceeds the file size \(data.count); the file is truncated or not safetensors")
        }
        let headerData = data.subdata(in: 8..<(8 + Int(headerLength)))
        guard let header = try? JSONSerialization.jsonObject(with: headerData) as? [String: Any] else {
            throw SafeTensorsError("\(source): header is not a JSON object")
        }
        let bodyStart = 8 + Int(headerLength)
        var tensors: [(Int, SafeTensor)] = []
        var metadata: [String: String] = [:]
        for (name, value) in header {
            if name == "__metadata__" {
                guard let m = value as? [String: String] else { throw SafeTensorsError("\(source): __metadata__ is not a map of strings") }
                metadata = m
                continue
            }
            guard let entry = value as? [String: Any], let dtypeName = entry["dtype"] as? String,
                  let shape = entry["shape"] as? [Int], let offsets = entry["data_offsets"] as? [Int], offsets.count == 2
            else { throw SafeTensorsError("\(source): tensor '\(name)' has a malformed header entry") }
            guard let dtype = SafeTensorsDType(rawValue: dtypeName) else {
                throw SafeTensorsError("\(source): tensor '\(name)' has unsupported dtype \(dtypeName)")
            }
            let begin = offsets[0], end = offsets[1]
            guard begin >= 0, end >= begin, bodyStart + end <= data.count,
                  end - begin == shape.reduce(1, *) * dtype.size else {
                throw SafeTensorsError("\(source): tensor '\(name)' has data_offsets \(offsets) that do not fit shape \(shape) \(dtypeName) or the file size")
            }
            let bytes = data.subdata(in: (bodyStart + begin)..<(bodyStart + end))
            tensors.append((begin, SafeTensor(name: name, dtype: dtype, shape: shape, data: bytes)))
        }
        self.tensors = tensors.sorted { $0.0 < $1.0 }.map(\.1)
        self.metadata = metadata
    }

    /// Reads the file at `url`.
    public init(contentsOf url: URL) throws {
        let data: Data
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue {
            throw SafeTensorsError("\(url.path): cannot be read (it is a directory; a .safetensors file was expected here)")
        }
        do { data = try Data(contentsOf: url, options: .alwaysMapped) } catch {
            throw SafeTensorsError("\(url.path): cannot be read (\(error.localizedDescription))")
        }
        try self.init(data: data, source: url.path)
    }

    /// The file's bytes: header padded with spaces to a multiple of 8, tensors in order.
    public func serialized() throws -> Data {
        var header: [String: Any] = [:]
        var offset = 0
        for t in tensors {
            header[t.name] = ["dtype": t.dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + t.data.count]]
            offset += t.data.count
        }
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (json.count + 8) % 8 != 0 { json.append(0x20) }
        var out = Data()
        var length = UInt64(json.count).littleEndian
        out.append(Data(bytes: &length, count: 8))
        out.append(json)
        for t in tensors { out.append(t.data) }
        return out
    }
}
