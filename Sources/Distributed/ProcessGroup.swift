// The process-group protocol that training code talks to, and its single-process implementation.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A failure of a collective operation or of the process group itself.
public struct ProcessGroupError: Error, CustomStringConvertible, Sendable {
    /// What failed, naming the rank and the operation.
    public let message: String
    /// Creates an error with `message`.
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A group of cooperating processes (ranks): collectives over Float buffers, a barrier, and abort.
///
/// Training code sees only this protocol; `SingleProcessGroup` needs no MPI at run time.
public protocol ProcessGroup: AnyObject {
    /// This process's index in 0..<size.
    var rank: Int { get }
    /// Number of processes.
    var size: Int { get }
    /// Human-readable name of the transport ("single process", "Open MPI v4.1.4 ...").
    var transportName: String { get }
    /// In place: every rank's `buffer` becomes the element-wise sum over ranks.
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws
    /// In place: every rank's `buffer` becomes the element-wise sum over ranks (Double).
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws
    /// In place: every rank's `buffer` becomes the element-wise maximum over ranks (Int64).
    func allReduceMax(_ buffer: UnsafeMutableBufferPointer<Int64>) throws
    /// Copies `root`'s buffer to every rank.
    func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws
    /// Returns when every rank has called it.
    func barrier() throws
    /// Ends every rank of the job with `code` after printing `message` (never returns).
    func abort(code: Int32, message: String) -> Never
    /// Shuts the group down (MPI_Finalize); a no-op for a single process.
    func finalize()
}

extension ProcessGroup {
    /// True on the coordinator rank (0), which logs and writes checkpoints.
    public var isCoordinator: Bool { rank == 0 }

    /// In place: `buffer` becomes the element-wise mean over ranks (sum, then one scaling pass).
    public func allReduceMean(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        try allReduceSum(buffer)
        if size > 1 {
            let inv = 1 / Float(size)
            for i in buffer.indices { buffer[i] *= inv }
        }
    }

    /// Broadcasts a UTF-8 string from `root` (length first, then bytes) and returns root's string everywhere.
    public func broadcast(string: String, root: Int) throws -> String {
        var length = [Int64(string.utf8.count)]
        try length.withUnsafeMutableBytes { try broadcast($0, root: root) }
        var bytes = [UInt8](repeating: 0, count: Int(length[0]))
        if rank == root { bytes = Array(string.utf8) }
        try bytes.withUnsafeMutableBytes { try broadcast($0, root: root) }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The group of one: collectives are identities. Needs no MPI at run time.
public final class SingleProcessGroup: ProcessGroup {
    /// Creates the group of one.
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public var transportName: String { "single process" }
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {}
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {}
    public func allReduceMax(_ buffer: UnsafeMutableBufferPointer<Int64>) throws {}
    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {
        precondition(root == 0, "SingleProcessGroup.broadcast: root \(root) out of range for 1 rank")
    }
    public func barrier() throws {}
    public func abort(code: Int32, message: String) -> Never {
        FileHandleStderr.write(message)
        exit(code)
    }
    public func finalize() {}
}
