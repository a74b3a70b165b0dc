// The process-group protocol that training code talks to, and its single-process implementation.
import CKernels
import Foundation
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

/// An error every rank of the job raised together (the coordinator's verdict, a check all ranks ran): the
/// coordinator reports it once and every rank exits, with no abort needed.
public struct CollectiveError: Error, CustomStringConvertible, Sendable {
    public let message: String
    /// True on the rank that should print the message (the coordinator, or a rank that failed alone).
    public let report: Bool
    public init(_ message: String, report: Bool) { self.message = message; self.report = report }
    public var description: String { message }
}

/// How gradient buckets travel in the all-reduce (`train.gradient_compression`).
public enum GradientCompression: String, Sendable, Codable, CaseIterable {
    /// float32: the exact sums.
    case none
    /// bfloat16: each bucket rounded to bfloat16 (nearest even), summed in bfloat16 at every step of the all-reduce (each
    /// partial sum rounded again) and widened back to float32: half the bytes on the network, gradients to about 3
    /// significant digits (PyTorch DDP's `bf16_compress_hook`).
    case bf16
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
    /// Starts an in-place sum over ranks of `buffer` and returns without waiting for it (MPI_Iallreduce). The buffer
    /// must not be read or written until `waitForReductions()` returns; every rank must start the same reductions in
    /// the same order, and no other collective may run until they are waited for.
    func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws
    /// As `startAllReduceSum(_:)`, with the bucket sent as `compression` says (the buffer holds the float32 sum of the
    /// compressed values once `waitForReductions()` or a `progressReductions()` that returned true is done).
    func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>, compression: GradientCompression) throws
    /// Lets the started reductions progress without blocking (MPI_Testall); true when all of them are complete.
    func progressReductions() throws -> Bool
    /// Waits until every started reduction is complete (MPI_Waitall).
    func waitForReductions() throws
    /// True when any thread may call the group's operations, one at a time (MPI_THREAD_SERIALIZED or better); false
    /// when only the thread that created the group may (MPI_THREAD_FUNNELED).
    var callableFromAnyThread: Bool { get }
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
    /// A group without non-blocking collectives sums at once (the reduction is complete when this returns).
    public func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws { try allReduceSum(buffer) }
    public func progressReductions() throws -> Bool { true }
    /// A group without bfloat16 sums rounds the values to bfloat16, sums them in float32 and rounds the sum again (the
    /// same as one bfloat16 step of two ranks).
    public func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>, compression: GradientCompression) throws {
        guard compression == .bf16, let base = buffer.baseAddress, buffer.count > 0 else { return try startAllReduceSum(buffer) }
        let staging = UnsafeMutablePointer<UInt16>.allocate(capacity: buffer.count)
        defer { staging.deallocate() }
        hd_bf16_halves(staging, base, buffer.count)
        hd_bf16_decompress(base, staging, buffer.count)
        try startAllReduceSum(buffer)
        try waitForReductions()
        hd_bf16_halves(staging, base, buffer.count)
        hd_bf16_decompress(base, staging, buffer.count)
    }
    public func waitForReductions() throws {}
    public var callableFromAnyThread: Bool { true }

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

    /// Runs `body` on the coordinator only and returns its result on every rank. When it throws, every rank
    /// throws a `CollectiveError` with the coordinator's message (one group: the process is alone, the
    /// original error is rethrown unchanged).
    public func onCoordinator<T: Codable>(_ body: () throws -> T) throws -> T {
        guard size > 1 else { return try body() }
        var payload = ""
        if isCoordinator {
            do {
                payload = "ok:" + String(decoding: try JSONEncoder().encode([try body()]), as: UTF8.self)
            } catch {
                payload = "er:" + "\(error)"
            }
        }
        let answer = try broadcast(string: payload, root: 0)
        guard answer.hasPrefix("ok:") else { throw CollectiveError(String(answer.dropFirst(3)), report: isCoordinator) }
        return try JSONDecoder().decode([T].self, from: Data(answer.dropFirst(3).utf8))[0]
    }

    /// Refuses to go on unless every rank holds the same `text` as rank 0 (`what` names it in the message,
    /// e.g. "config"). A differing rank also prints the first differing line to standard error.
    public func requireIdentical(_ text: String, what: String) throws {
        guard size > 1 else { return }
        let root = try broadcast(string: text, root: 0)
        if root != text {
            let mine = text.split(separator: "\n", omittingEmptySubsequences: false)
            let theirs = root.split(separator: "\n", omittingEmptySubsequences: false)
            let i = (0..<min(mine.count, theirs.count)).first(where: { mine[$0] != theirs[$0] }) ?? min(mine.count, theirs.count)
            let a = i < mine.count ? String(mine[i]) : "(end)", b = i < theirs.count ? String(theirs[i]) : "(end)"
            FileHandle.standardError.write(Data("histodistill: rank \(rank) of \(size): my \(what) differs from rank 0's at line \(i + 1): '\(a)' here, '\(b)' on rank 0\n".utf8))
        }
        var flag: [Int64] = [root == text ? 0 : Int64(rank + 1)]
        try flag.withUnsafeMutableBufferPointer { try allReduceMax($0) }
        if flag[0] != 0 {
            throw CollectiveError("rank \(flag[0] - 1) of \(size) was started with a different \(what) than rank 0. Hint: start every rank with the same histodistill binary, config file and --set overrides.", report: isCoordinator)
        }
    }

    /// Runs `body` on every rank and lets every rank know whether any failed, so that a start-up failure on some
    /// ranks (a missing shard directory, a config typo) ends all of them together instead of leaving the rest
    /// waiting in a collective. A failing rank rethrows its error as a `CollectiveError` that it reports
    /// (only the coordinator reports when every rank failed); the others throw one they do not report.
    /// Collectives inside `body` must come before anything that can fail on one rank only.
    public func collectively<T>(_ body: () throws -> T) throws -> T {
        guard size > 1 else { return try body() }
        let result = Result { try body() }
        var failures: [Double] = [0]
        if case .failure = result { failures[0] = 1 }
        try failures.withUnsafeMutableBufferPointer { try allReduceSum($0) }
        let failed = Int(failures[0])
        switch result {
        case .success(let value):
            guard failed > 0 else { return value }
            throw CollectiveError("\(failed) of \(size) ranks failed to start (see their messages)", report: false)
        case .failure(let error as CollectiveError):
            throw error
        case .failure(let error):
            let everyone = failed == size
            throw CollectiveError(everyone ? "\(error)" : "rank \(rank) of \(size): \(error)", report: everyone ? isCoordinator : true)
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
        let line = message.hasSuffix("\n") ? message : message + "\n"
        FileHandle.standardError.write(Data(line.utf8))
        exit(code)
    }
    public func finalize() {}
}
