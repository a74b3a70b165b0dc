// A parallel-for for elementwise kernels, im2col and col2im that uses the same cores as OpenBLAS.
import CKernels
import Dispatch
import Foundation
import Synchronization

/// Splits loops over the engine's thread width.
///
/// Kernels and GEMMs run one after the other, never at once, so the parallel-for uses the same number of
/// threads as OpenBLAS (`BLAS.setThreadCount` sets both); with a width of 1 everything runs on the caller.
public enum Parallel {
    private static let widthStorage = Atomic<Int>(1)

    /// Number of chunks a parallel loop is split into: the calling thread's own width inside `replicas`, else the
    /// process-wide one.
    public static var width: Int {
        let own = hd_thread_width()
        return own > 0 ? Int(own) : widthStorage.load(ordering: .relaxed)
    }

    /// Sets the width of parallel loops (normally through `BLAS.setThreadCount`).
    public static func setWidth(_ width: Int) {
        precondition(width >= 1, "Parallel.setWidth: width must be >= 1, got \(width)")
        widthStorage.store(width, ordering: .relaxed)
    }

    private static let session = NSRecursiveLock()

    /// Runs `body` with the thread width set to `width` (OpenBLAS single-threaded, as `BLAS.setThreadCount`),
    /// restoring the previous width after. Calls from different threads run one at a time, so code that varies the
    /// width (kernel tests at 1, 2, 3 threads) never changes it under code that needs it fixed for bit-exact results
    /// (a training run and its resume), when both go through here.
    public static func withWidth<T>(_ width: Int, _ body: () throws -> T) rethrows -> T {
        let saved = beginExclusiveWidth()
        defer { endExclusiveWidth(restoring: saved) }
        BLAS.setThreadCount(width)
        return try body()
    }

    /// Starts a stretch of code that owns the width (see `withWidth`): waits for other owners, returns the width to
    /// restore. Pair with `endExclusiveWidth(restoring:)` (in a `defer`).
    public static func beginExclusiveWidth() -> Int {
        session.lock()
        return width
    }

    /// Ends a stretch started by `beginExclusiveWidth`, restoring `saved` (OpenBLAS single-threaded).
    public static func endExclusiveWidth(restoring saved: Int) {
        BLAS.setThreadCount(saved)
        session.unlock()
    }

    /// Runs `body(replica)` for replica in 0..<count concurrently, each on its own thread with a width of 1: for
    /// independent copies of a model, each running all its kernels alone (the threads meet once, at the end, instead
    /// of at every kernel).
    public static func replicas(_ count: Int, _ body: (Int) -> Void) {
        workers(count) { i in
            let saved = hd_thread_width()
            hd_set_thread_width(1)
            defer { hd_set_thread_width(saved) }
            body(i)
        }
    }

    /// Runs `body(worker)` for worker in 0..<workers, concurrently when workers > 1.
    @inline(__always)
    public static func workers(_ workers: Int, _ body: (Int) -> Void) {
        if workers <= 1 {
            body(0)
            return
        }
        withoutActuallyEscaping(body) { body in
            nonisolated(unsafe) let body = body
            DispatchQueue.concurrentPerform(iterations: workers) { body($0) }
        }
    }

    /// Runs `body` over disjoint subranges covering `0..<count`, each at least `grain` long when possible.
    ///
    /// `body` must only write locations owned by its subrange.
    @inline(__always)
    public static func forEach(_ count: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
        if count <= 0 { return }
        let w = width
        let chunks = min(w, max(1, count / max(grain, 1)))
        if chunks <= 1 {
            body(0..<count)
            return
        }
        withoutActuallyEscaping(body) { body in
            nonisolated(unsafe) let body = body
            DispatchQueue.concurrentPerform(iterations: chunks) { i in
                let lo = count * i / chunks
                let hi = count * (i + 1) / chunks
                if lo < hi { body(lo..<hi) }
            }
        }
    }
}
