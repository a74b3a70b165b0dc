// The gradient all-reduce overlapped with backward: buckets from the end of the flat gradient are summed over the
// ranks while the backward of the layers before them still runs (PyTorch DistributedDataParallel's bucketing).
import CKernels
import Foundation
import Layers
import Synchronization
import TensorCore
#if canImport(Glibc)
import Glibc
#endif

/// The tile-weighted mean of replicas' gradients over `range` of the flat buffer, into `gradients` (replica 0's own):
/// `g = weights[0] g + weights[1] others[0] + ...` (`hd_scale_add`, one replica at a time, as `splitOverReplicas`).
func combineReplicaGradients(_ gradients: UnsafeMutablePointer<Float>, others: [UnsafePointer<Float>], weights: [Float],
                             range: Range<Int>) {
    for (i, o) in others.enumerated() {
        hd_scale_add(gradients + range.lowerBound, i == 0 ? weights[0] : 1, o + range.lowerBound, weights[i + 1], range.count)
    }
}

/// Sums one step's gradient over the ranks while its backward still runs, in buckets taken from the end of the flat
/// buffer (parameters are stored in forward order, so the last layers' gradients are final first): the bucketed
/// overlap of PyTorch's DistributedDataParallel (Li et al., "PyTorch Distributed: Experiences on Accelerating Data
/// Parallel Training", VLDB 2020), over MPI_Iallreduce.
///
/// Use: create it for the step, `attach` the model (or the replicas the step splits the batch over) before their
/// backward, then `complete()` once the objective has returned. A bucket is started when every attached replica's
/// backward has reported it final (`ReportsGradientProgress`); the replicas' tile-weighted mean and the rank's
/// weight (`scale`, its share of the global batch) are applied to it first, in the same order and with the same bits
/// as the reduction after backward (`DataParallelStep.reduce`). Started reductions progress each time a replica
/// reports and, with `progressInterval` > 0 and more than one rank, on a progress thread that calls MPI_Testall every
/// `progressInterval` microseconds while buckets are in flight and sleeps in between (MPI over TCP moves a large
/// message only inside MPI calls, and a backward reports only a few times; but where TCP's work runs on the ranks'
/// own cores the thread takes it from the compute: docs/scaling.md). Every rank starts the same buckets in the same
/// order.
/// A model that does not report, or none attached, has every bucket started by `complete()` (the reduction after
/// backward, in buckets).
public final class OverlappedGradientReduction: @unchecked Sendable {
    /// The group the gradient is summed over.
    public let group: any ProcessGroup
    /// Bucket ranges of the flat gradient, in the order they are started (from the end of the buffer).
    public let buckets: [Range<Int>]
    private let gradients: UnsafeMutablePointer<Float>
    private let scale: Float
    private let owner = pthread_self()
    /// Per attached replica: the lowest offset its backward has reported final (Int.max before its first report).
    private var watermarks: [Watermark] = []
    private var replicas: [ReportsGradientProgress] = []
    private var others: [UnsafePointer<Float>] = []
    private var weights: [Float] = [1]
    /// Buckets started so far and the first error a replica's report met (reported by `complete()`); both only
    /// touched under this lock.
    private let state = Mutex<(started: Int, error: (any Error)?)>((0, nil))
    /// Seconds from this reduction's creation (the step's start) to the start of each bucket, and to `complete()`'s
    /// call (the end of backward): the timeline `bench-step --overlap` reports.
    public private(set) var startTimes: [Double] = []
    public private(set) var completeTime: Double = 0
    /// Seconds from the step's start to the first progress call that found every bucket started and summed, when that
    /// happened before `complete()` (the all-reduce finished during the compute); nil otherwise.
    public private(set) var summedTime: Double?
    private let origin = DispatchTime.now().uptimeNanoseconds
    /// Microseconds the progress thread sleeps between MPI_Testall calls (0: no progress thread).
    public var progressInterval: UInt32 = 0
    /// How the buckets travel (bfloat16 halves the bytes; `GradientCompression`).
    public var compression = GradientCompression.none
    /// Signalled by `complete()` to wake and end the progress thread at once (not after its current sleep).
    private let stopProgress = DispatchSemaphore(value: 0)
    private var progressDone: DispatchSemaphore?

    private final class Watermark: Sendable {
        let offset: Atomic<Int>
        init(_ offset: Int) { self.offset = Atomic(offset) }
    }

    /// A reduction of the gradient at `gradients` over `group` in `buckets` (ranges of the flat buffer from its end down
    /// to 0, `buckets(count:bucketElements:boundaries:)`), each multiplied by `scale` (this rank's tiles over the global
    /// batch's) before it is summed.
    public init(group: any ProcessGroup, gradients: UnsafeMutablePointer<Float>, buckets: [Range<Int>], scale: Float) {
        self.group = group; self.gradients = gradients; self.scale = scale
        self.buckets = buckets
    }

    /// The buckets of a gradient of `count` floats, from the end of the buffer. With `boundaries` (the offsets a model's
    /// backward reports, `ReportsGradientProgress.gradientReadyOffsets`) a bucket is one or more whole stretches between
    /// consecutive boundaries, closed once it holds at least `bucketElements` floats (so a bucket is ready as soon as
    /// the backward of its last layer is done, and a layer larger than the cap is one bucket, as PyTorch DDP never
    /// splits a parameter); the last bucket ends at 0. Without them, pieces of `bucketElements` floats. The same on
    /// every rank: it depends on the model and the cap only.
    public static func buckets(count: Int, bucketElements: Int, boundaries: [Int]?) -> [Range<Int>] {
        let size = max(1, bucketElements)
        var out: [Range<Int>] = []
        var end = count
        if let boundaries {
            for b in boundaries.sorted(by: >) where b < end && (end - b >= size || b == 0) {
                out.append(b..<end)
                end = b
            }
            if end > 0 { out.append(0..<end) }
            return out
        }
        while end > 0 {
            let start = max(0, end - size)
            out.append(start..<end)
            end = start
        }
        return out
    }

    /// Follows the backward of `models` (models[0] owns the reduced gradient; the others are replicas whose gradients,
    /// `others`, are averaged into it with `weights`, one per model) through their `gradientReady` reports.
    /// Models that do not report progress leave their buckets to `complete()`.
    public func attach(_ models: [any Module], others: [UnsafePointer<Float>] = [], weights: [Float] = [1]) {
        precondition(models.count == others.count + 1 && weights.count == models.count,
                     "OverlappedGradientReduction.attach: \(models.count) models, \(others.count) other gradients, \(weights.count) weights")
        self.others = others; self.weights = weights
        let reporting = models.compactMap { $0 as? ReportsGradientProgress }
        guard reporting.count == models.count else { return }
        watermarks = models.map { _ in Watermark(Int.max) }
        replicas = reporting
        for (i, model) in reporting.enumerated() {
            model.gradientReady = { [unowned self] offset in self.report(replica: i, offset: offset) }
        }
    }

    private func report(replica: Int, offset: Int) {
        watermarks[replica].offset.store(offset, ordering: .releasing)
        guard group.callableFromAnyThread || pthread_equal(owner, pthread_self()) != 0 else { return }
        // A replica that finds another inside the group's calls goes on with its backward (the other starts the bucket).
        _ = state.withLockIfAvailable { state in
            guard state.error == nil else { return }
            do {
                try startReady(&state.started)
                noteSummed(try group.progressReductions(), started: state.started)
            } catch {
                state.error = error
            }
        }
    }

    /// Lets the started buckets progress (MPI_Testall), from work that runs between backward and `complete()` (a teacher
    /// forward done ahead, `DistillationStep.prepare`); returns at once when another thread is in the group's calls or
    /// the group cannot be called from this thread. An error is kept for `complete()`.
    public func progress() {
        guard group.size > 1, group.callableFromAnyThread || pthread_equal(owner, pthread_self()) != 0 else { return }
        _ = state.withLockIfAvailable { state in
            guard state.error == nil else { return }
            do { noteSummed(try group.progressReductions(), started: state.started) } catch { state.error = error }
        }
    }

    /// Records when every bucket was first seen summed (`summedTime`). Under the lock.
    private func noteSummed(_ done: Bool, started: Int) {
        if done && started == buckets.count && summedTime == nil {
            summedTime = Double(DispatchTime.now().uptimeNanoseconds - origin) / 1e9
        }
    }

    /// Starts every bucket all replicas have finished, in order. Under the lock.
    private func startReady(_ started: inout Int) throws {
        // Final on every replica: at or above the highest offset any replica has reached (the slowest one's).
        var final = 0
        for w in watermarks { final = max(final, w.offset.load(ordering: .acquiring)) }
        while started < buckets.count, buckets[started].lowerBound >= final {
            let r = buckets[started]
            if !others.isEmpty { combineReplicaGradients(gradients, others: others, weights: weights, range: r) }
            // As `GradientOps.scale` does after backward, on this thread (the other copies may still be computing).
            if scale != 1 { for i in r { gradients[i] *= scale } }
            startTimes.append(Double(DispatchTime.now().uptimeNanoseconds - origin) / 1e9)
            try group.startAllReduceSum(UnsafeMutableBufferPointer(start: gradients + r.lowerBound, count: r.count), compression: compression)
            started += 1
            if progressDone == nil && progressInterval > 0 && group.size > 1 && group.callableFromAnyThread { startProgressThread() }
        }
    }

    /// Lets the started buckets progress until every bucket is started and complete, or `complete()` takes over.
    private func startProgressThread() {
        let done = DispatchSemaphore(value: 0)
        progressDone = done
        let thread = Thread { [self] in
            defer { done.signal() }
            while stopProgress.wait(timeout: .now() + .microseconds(Int(progressInterval))) == .timedOut {
                let finished = state.withLockIfAvailable { state -> Bool in
                    guard state.error == nil else { return true }
                    do {
                        let done = try group.progressReductions()
                        noteSummed(done, started: state.started)
                        return done && state.started == buckets.count
                    } catch {
                        state.error = error
                        return true
                    }
                }
                if finished == true { return }
            }
        }
        thread.name = "histodistill gradient all-reduce progress"
        thread.start()
    }

    /// After the backward of every attached model has returned: starts the buckets not yet started and waits for all of
    /// them, so the gradient is the sum over ranks; detaches from the models. Rethrows the first error a report met.
    public func complete() throws {
        if let done = progressDone {
            stopProgress.signal()
            done.wait()
        }
        for w in watermarks { w.offset.store(0, ordering: .releasing) }
        for model in replicas { model.gradientReady = nil }
        replicas = []
        try state.withLock { state in
            if let error = state.error { throw error }
            completeTime = Double(DispatchTime.now().uptimeNanoseconds - origin) / 1e9
            try startReady(&state.started)
            try group.waitForReductions()
        }
    }
}
