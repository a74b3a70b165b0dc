// TensorBoard scalar event files: TFRecord framing (length, masked CRC-32C of the length, data, masked CRC-32C of
// the data) around Event protobufs (swift-protobuf, generated from event.proto).
import Foundation
import SwiftProtobuf

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord files use it.
public enum CRC32C {
    static let table: [UInt32] = (0..<256).map { i in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    public static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }

    /// TFRecord's masked CRC: rotate right by 15 and add 0xa282ead8.
    public static func masked<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        let c = checksum(bytes)
        return ((c >> 15) | (c << 17)) &+ 0xA282_EAD8
    }
}

/// One TFRecord: uint64 length, masked CRC-32C of those 8 bytes, the data, masked CRC-32C of the data (little-endian).
public enum TFRecord {
    public static func frame(_ data: Data) -> Data {
        var out = Data()
        var length = UInt64(data.count).littleEndian
        let lengthBytes = withUnsafeBytes(of: &length) { Data($0) }
        var lengthCRC = CRC32C.masked(lengthBytes).littleEndian, dataCRC = CRC32C.masked(data).littleEndian
        out.append(lengthBytes)
        withUnsafeBytes(of: &lengthCRC) { out.append(contentsOf: $0) }
        out.append(data)
        withUnsafeBytes(of: &dataCRC) { out.append(contentsOf: $0) }
        return out
    }

    /// The records of a TFRecord file's bytes; throws on a bad length or checksum (a file cut mid-record ends the list).
    public static func records(_ data: Data) throws -> [Data] {
        var out: [Data] = []
        var i = data.startIndex
        while data.endIndex - i >= 12 {
            let lengthBytes = data[i..<(i + 8)]
            let length = lengthBytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
            let lengthCRC = data[(i + 8)..<(i + 12)].withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
            guard lengthCRC == CRC32C.masked(lengthBytes) else { throw TrainingError("TFRecord: length checksum mismatch at byte \(i - data.startIndex)") }
            guard length <= UInt64(data.endIndex - i - 16) else { break }
            let body = data[(i + 12)..<(i + 12 + Int(length))]
            let bodyCRC = data[(i + 12 + Int(length))..<(i + 16 + Int(length))].withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
            guard bodyCRC == CRC32C.masked(body) else { throw TrainingError("TFRecord: data checksum mismatch at byte \(i - data.startIndex)") }
            out.append(Data(body))
            i += 16 + Int(length)
        }
        return out
    }
}

/// Writes scalars to `DIR/events.out.tfevents.SECONDS.HOST.PID.N` for `tensorboard --logdir` (each writer a new
/// file; a resumed run adds one, and TensorBoard reads them in order).
public final class TensorBoardWriter {
    public let url: URL
    private let handle: FileHandle

    /// Creates the file and writes its first event (file_version "brain.Event:2") at `wallTime`.
    public init(directory: URL, wallTime: Double = Date().timeIntervalSince1970, host: String = ProcessInfo.processInfo.hostName,
                name: String? = nil) throws {
        let safeHost = String(host.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." ? $0 : "_" })
        var candidate = directory.appendingPathComponent(name ?? "events.out.tfevents.\(Int(wallTime)).\(safeHost).\(getpid()).0")
        var n = 0
        while name == nil && FileManager.default.fileExists(atPath: candidate.path) {
            n += 1
            candidate = directory.appendingPathComponent("events.out.tfevents.\(Int(wallTime)).\(safeHost).\(getpid()).\(n)")
        }
        url = candidate
        guard FileManager.default.createFile(atPath: url.path, contents: nil), let h = try? FileHandle(forWritingTo: url) else {
            throw TrainingError("\(url.path): cannot create the TensorBoard event file. Hint: check the run directory is writable.")
        }
        handle = h
        var event = Tensorboard_Event()
        event.wallTime = wallTime
        event.fileVersion = "brain.Event:2"
        try write(event)
    }

    deinit { try? handle.close() }

    /// One event at `step` holding every scalar (tag, value), written through to the file (no fsync: this runs every
    /// training step, like the metrics.jsonl line beside it).
    public func add(step: Int, scalars: [(String, Float)], wallTime: Double = Date().timeIntervalSince1970) throws {
        var event = Tensorboard_Event()
        event.wallTime = wallTime
        event.step = Int64(step)
        var summary = Tensorboard_Summary()
        summary.value = scalars.map { tag, v in
            var value = Tensorboard_Summary.Value()
            value.tag = tag
            value.simpleValue = v
            return value
        }
        event.summary = summary
        try write(event)
    }

    private func write(_ event: Tensorboard_Event) throws {
        try handle.write(contentsOf: TFRecord.frame(try event.serializedData()))
    }

    /// The scalars of an event file, as (tag, step, value), in file order.
    public static func scalars(in url: URL) throws -> [(tag: String, step: Int, value: Float)] {
        try TFRecord.records(Data(contentsOf: url)).flatMap { record -> [(tag: String, step: Int, value: Float)] in
            let event = try Tensorboard_Event(serializedBytes: record)
            return event.summary.value.map { (tag: $0.tag, step: Int(event.step), value: $0.simpleValue) }
        }
    }
}
