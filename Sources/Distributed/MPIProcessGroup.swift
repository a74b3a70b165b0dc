// The MPI process group over Open MPI: the only file in HistoDistill that calls MPI.
import CKernels
import CMPI
import Training
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A process group over MPI_COMM_WORLD. Errors are returned, not fatal, so a failure becomes a message that
/// names the rank and the operation; `abort` ends every rank (MPI_Abort) so no rank is left waiting.
public final class MPIProcessGroup: ProcessGroup {
    public let rank: Int
    public let size: Int
    private let comm: MPI_Comm
    private var finalized = false
    /// Requests of the started non-blocking reductions, until `waitForReductions`.
    private var pending: [MPI_Request?] = []
    /// The bfloat16 copies of compressed buckets in flight and the float32 buffers they are widened back into.
    private var compressed: [(staging: UnsafeMutableBufferPointer<UInt16>, destination: UnsafeMutableBufferPointer<Float>)] = []
    /// Staging buffers kept for the next buckets (a fresh allocation per bucket costs a page fault per 4 KB).
    private var stagingPool: [UnsafeMutableBufferPointer<UInt16>] = []
    /// The bfloat16 sum (a commutative user-defined MPI_Op over 16-bit values), made on first use.
    private var bf16Sum: MPI_Op?
    /// Whether MPI allows calls from any thread, one at a time (MPI_THREAD_SERIALIZED or better was provided).
    public let callableFromAnyThread: Bool

    /// Initialises MPI, asking for serialized threading (any thread may call MPI, one at a time: the gradient
    /// reduction is started from whichever engine thread finishes a bucket's backward last); with only funneled
    /// threading provided, only the thread that created the group calls MPI.
    public init() throws {
        var initialized: Int32 = 0
        MPI_Initialized(&initialized)
        var provided: Int32 = 0
        if initialized == 0 {
            // The gradient buckets go through Open MPI's non-blocking all-reduce (libnbc), whose default algorithm for
            // 2 ranks took 7.2 ms for the paper's 4.9 MB over 10 GbE against 4.8 for its ring (4.1 for the blocking
            // call; docs/scaling.md). Ask for the ring unless the user chose; other MPI libraries ignore the variable.
            setenv(Self.nonBlockingAllReduceVariable, "1", 0)
            let rc = MPI_Init_thread(nil, nil, cmpi_thread_serialized(), &provided)
            guard rc == cmpi_success() else { throw ProcessGroupError("MPI_Init_thread failed with code \(rc)") }
        } else {
            MPI_Query_thread(&provided)
        }
        callableFromAnyThread = provided >= cmpi_thread_serialized()
        comm = cmpi_comm_world()
        MPI_Comm_set_errhandler(comm, cmpi_errors_return())
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(comm, &r)
        MPI_Comm_size(comm, &s)
        rank = Int(r)
        size = Int(s)
    }

    /// The Open MPI parameter that picks libnbc's MPI_Iallreduce algorithm (1: ring), set by `init` when unset.
    public static let nonBlockingAllReduceVariable = "OMPI_MCA_coll_libnbc_iallreduce_algorithm"

    /// The MPI library's version string, e.g. "Open MPI v4.1.4, package: Debian OpenMPI, ...".
    public static var libraryVersion: String {
        var buffer = [CChar](repeating: 0, count: Int(cmpi_max_library_version_string()) + 1)
        var length: Int32 = 0
        MPI_Get_library_version(&buffer, &length)
        let s = string(fromCBuffer: buffer)
        return s.split(separator: "\n").first.map(String.init)?.trimmingSpaces ?? s
    }

    public var transportName: String { Self.libraryVersion }

    /// The node's name as MPI reports it.
    public var processorName: String {
        var buffer = [CChar](repeating: 0, count: Int(cmpi_max_processor_name()) + 1)
        var length: Int32 = 0
        MPI_Get_processor_name(&buffer, &length)
        return string(fromCBuffer: buffer)
    }

    private func check(_ rc: Int32, _ what: String) throws {
        guard rc != cmpi_success() else { return }
        var buffer = [CChar](repeating: 0, count: 512)
        var length: Int32 = 0
        MPI_Error_string(rc, &buffer, &length)
        throw ProcessGroupError("rank \(rank) of \(size): \(what) failed: \(string(fromCBuffer: buffer))")
    }

    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        try check(MPI_Allreduce(cmpi_in_place(), base, Int32(buffer.count), cmpi_float(), cmpi_op_sum(), comm),
                  "MPI_Allreduce(sum, \(buffer.count) floats)")
    }

    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        try check(MPI_Allreduce(cmpi_in_place(), base, Int32(buffer.count), cmpi_double(), cmpi_op_sum(), comm),
                  "MPI_Allreduce(sum, \(buffer.count) doubles)")
    }

    public func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        var request: MPI_Request? = cmpi_request_null()
        try check(MPI_Iallreduce(cmpi_in_place(), base, Int32(buffer.count), cmpi_float(), cmpi_op_sum(), comm, &request),
                  "MPI_Iallreduce(sum, \(buffer.count) floats)")
        pending.append(request)
    }

    public func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>, compression: GradientCompression) throws {
        guard compression == .bf16, let base = buffer.baseAddress, buffer.count > 0 else { return try startAllReduceSum(buffer) }
        if bf16Sum == nil {
            var op: MPI_Op?
            // Commutative: Open MPI may then pick any algorithm; every step rounds its partial sum to bfloat16.
            try check(MPI_Op_create({ input, target, length, _ in
                guard let input, let target, let length else { return }
                hd_bf16_add(input.assumingMemoryBound(to: UInt16.self), target.assumingMemoryBound(to: UInt16.self), Int(length.pointee))
            }, 1, &op), "MPI_Op_create(bfloat16 sum)")
            bf16Sum = op
        }
        let staging: UnsafeMutableBufferPointer<UInt16>
        if let i = stagingPool.firstIndex(where: { $0.count >= buffer.count }) {
            staging = stagingPool.remove(at: i)
        } else {
            staging = .allocate(capacity: buffer.count)
        }
        hd_bf16_halves(staging.baseAddress!, base, buffer.count)
        var request: MPI_Request? = cmpi_request_null()
        do {
            try check(MPI_Iallreduce(cmpi_in_place(), staging.baseAddress, Int32(buffer.count), cmpi_uint16(), bf16Sum, comm, &request),
                      "MPI_Iallreduce(bfloat16 sum, \(buffer.count) values)")
        } catch {
            stagingPool.append(staging)
            throw error
        }
        pending.append(request)
        compressed.append((staging, buffer))
    }

    public func progressReductions() throws -> Bool {
        guard !pending.isEmpty else { return true }
        var done: Int32 = 0
        let count = Int32(pending.count)
        // On an error the staging buffers are kept (MPI may still own them); the job ends.
        try check(pending.withUnsafeMutableBufferPointer { MPI_Testall(count, $0.baseAddress, &done, cmpi_statuses_ignore()) },
                  "MPI_Testall(\(count) gradient reductions)")
        if done != 0 {
            pending.removeAll(keepingCapacity: true)
            releaseCompressed(widening: true)
        }
        return done != 0
    }

    public func waitForReductions() throws {
        guard !pending.isEmpty else { return }
        let count = Int32(pending.count)
        var ok = false
        defer {
            pending.removeAll(keepingCapacity: true)
            releaseCompressed(widening: ok)
        }
        try check(pending.withUnsafeMutableBufferPointer { MPI_Waitall(count, $0.baseAddress, cmpi_statuses_ignore()) },
                  "MPI_Waitall(\(count) gradient reductions)")
        ok = true
    }

    /// Widens the completed bfloat16 sums into their float32 buffers (unless the reduction failed) and keeps the
    /// staging buffers for the next buckets.
    private func releaseCompressed(widening: Bool) {
        for c in compressed {
            if widening, let base = c.destination.baseAddress { hd_bf16_decompress(base, c.staging.baseAddress!, c.destination.count) }
            stagingPool.append(c.staging)
        }
        compressed.removeAll(keepingCapacity: true)
    }

    public func allReduceMax(_ buffer: UnsafeMutableBufferPointer<Int64>) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        try check(MPI_Allreduce(cmpi_in_place(), base, Int32(buffer.count), cmpi_int64(), cmpi_op_max(), comm),
                  "MPI_Allreduce(max, \(buffer.count) int64)")
    }

    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {
        precondition(root >= 0 && root < size, "MPIProcessGroup.broadcast: root \(root) out of range for \(size) ranks")
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        try check(MPI_Bcast(base, Int32(buffer.count), cmpi_byte(), Int32(root), comm),
                  "MPI_Bcast(\(buffer.count) bytes from rank \(root))")
    }

    public func barrier() throws {
        try check(MPI_Barrier(comm), "MPI_Barrier")
    }

    public func abort(code: Int32, message: String) -> Never {
        FileHandleStderr.write("histodistill: rank \(rank) of \(size): \(message)")
        MPI_Abort(comm, code)
        exit(code)
    }

    public func finalize() {
        guard !finalized else { return }
        finalized = true
        if bf16Sum != nil { MPI_Op_free(&bf16Sum) }
        for b in stagingPool { b.deallocate() }
        stagingPool = []
        MPI_Finalize()
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " || s.last == "," { s = s.dropLast() }
        return String(s)
    }
}
