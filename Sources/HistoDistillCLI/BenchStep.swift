// `histodistill bench-step`: images/second of a whole data-parallel training step (supervised or distillation)
// on synthetic tiles, alone or under mpirun, with the time spent in the gradient all-reduce.
import ArgumentParser
import Distributed
import Foundation
import Layers
import TensorCore
import Training

extension GradientCompression: ExpressibleByArgument {}

struct BenchStep: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-step",
        abstract: "Measure a data-parallel training step on synthetic tiles (alone or under mpirun): images/s, all-reduce time and share.",
        discussion: """
            The global batch is split among the ranks as in training; each step is forward and backward of every \
            rank's share, the bucketed all-reduce of the gradients, and an Adam update. With --teacher-resolution, \
            the step is a distillation step (frozen teacher forward, KD + pixel loss). Compare launches, e.g. \
            `histodistill bench-step --threads 2` vs `cluster/mpirun-local.sh 2 histodistill bench-step --threads 1`.
            """)

    @Option(help: "Input edge of the trained model (the student) in pixels.")
    var resolution = 56

    @Option(help: "Input edge of a frozen teacher: measure a distillation step instead of a supervised one.")
    var teacherResolution: Int?

    @Option(help: "Global batch (split among the ranks).")
    var batch = 32

    @Option(help: "Timed steps per repetition.")
    var steps = 10

    @Option(help: "Repetitions (the median is reported).")
    var reps = 3

    @Option(help: "Untimed warm-up steps.")
    var warmup = 2

    @Option(help: "Compute threads per rank (default: SLURM cpus-per-task, else cores per node / ranks per node).")
    var threads: Int?

    @Option(help: "All-reduce bucket in MB (default: 2 with --overlap, as train.bucket_mb, else 16).")
    var bucketMB: Double?

    @Flag(help: "Sum each bucket over the ranks while backward still runs (train.overlap_allreduce), and report when each bucket was ready.")
    var overlap = false

    @Flag(help: "With --overlap and --teacher-resolution: run the next step's teacher forward while the last buckets are summed, before the update (train.overlap_teacher); the profile then counts it in the step's compute.")
    var overlapTeacher = false

    @Option(help: "With --overlap: microseconds between the MPI_Testall calls of a progress thread while buckets are in flight (train.allreduce_progress_us; 0: no progress thread).")
    var progressUs: UInt32 = 0

    @Option(help: "How gradients travel in the all-reduce: none (float32) or bf16 (train.gradient_compression).")
    var gradientCompression: GradientCompression = .none

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    @Option(help: precisionHelp)
    var precision: MatmulPrecision = .float32

    @OptionGroup var distillation: DistillationSettings

    func validate() throws {
        if !(8...4096).contains(resolution) { throw ValidationError("--resolution must be 8 to 4096 pixels, got \(resolution)") }
        if let t = teacherResolution, !(resolution < t && t <= 4096) {
            throw ValidationError("--teacher-resolution must be above --resolution (\(resolution): the student sees the tiles coarser than its teacher) and at most 4096, got \(t)")
        }
        for (flag, value, most) in [("--batch", batch, 65_536), ("--steps", steps, 1_000_000), ("--reps", reps, 1_000)]
        where !(1...most).contains(value) {
            throw ValidationError("\(flag) must be 1 to \(most), got \(value)")
        }
        try distillation.requireDistillation(teacherResolution != nil, without: "--teacher-resolution")
        if !(0...1_000_000).contains(warmup) { throw ValidationError("--warmup must be 0 to 1000000, got \(warmup)") }
        if overlapTeacher && (!overlap || teacherResolution == nil) {
            throw ValidationError("--overlap-teacher needs --overlap and --teacher-resolution (it runs the next distillation step's teacher forward while the overlapped all-reduce is in flight)")
        }
        if progressUs > 0 && !overlap { throw ValidationError("--progress-us needs --overlap (it paces the overlapped all-reduce's progress thread)") }
        if progressUs > 1_000_000 { throw ValidationError("--progress-us must be 0 to 1000000 microseconds, got \(progressUs)") }
        if let bucketMB, !(bucketMB > 0 && bucketMB <= 4096) { throw ValidationError("--bucket-mb must be more than 0 and at most 4096, got \(bucketMB)") }
        try validateThreads(threads)
    }

    func run() throws {
        let launch = LaunchEnvironment.current()
        let group = try makeProcessGroup(launch)
        defer { group.finalize() }
        guard batch >= group.size else {
            throw CLIError("--batch \(batch) gives no tile to some of the \(group.size) ranks", hint: "use a global batch of at least the number of ranks")
        }
        BLAS.setThreadCount(threads ?? launch.defaultThreadsPerRank(cores: ProcessInfo.processInfo.activeProcessorCount))
        BF16GEMM.precision = precision
        let classes = 3
        let model = ResNet(.paper(classes: classes), seed: 1)
        let objective: any StepObjective = try teacherResolution.map { _ in
            DistillationStep(student: model, teacher: FrozenTeacher(ResNet(.paper(classes: classes), seed: 2)), objective: try distillation.objective())
        } ?? SupervisedStep(model: model)
        let stepper = DataParallelStep(objective: objective, group: group)
        stepper.bucketElements = max(1, Int((bucketMB ?? (overlap ? 2 : 16)) * 1_000_000 / 4))
        stepper.overlapReduction = overlap
        stepper.prepareAhead = overlapTeacher
        stepper.progressInterval = progressUs
        stepper.gradientCompression = gradientCompression
        let optimizer = Optimizer(.adam(), count: model.parameterCount)
        try stepper.broadcastState(optimizer: optimizer)
        let local = batch * (group.rank + 1) / group.size - batch * group.rank / group.size
        var g = SeededGenerator(seed: UInt64(100 + group.rank))
        let student = (0..<(local * 3 * resolution * resolution)).map { _ in Float.random(in: -1..<1, using: &g) }
        let tr = teacherResolution ?? resolution
        let teacherInput = teacherResolution == nil ? [Float(0)] : (0..<(local * 3 * tr * tr)).map { _ in Float.random(in: -1..<1, using: &g) }
        let labels = (0..<local).map { Int32($0 % classes) }
        var reduceSeconds = 0.0
        // With --overlap: per timed step, when each bucket was started and when backward ended (seconds from the step's start).
        var timelines: [(starts: [Double], end: Double, summed: Double?)] = []
        // With --overlap-teacher: seconds per timed step spent on the next step's teacher forward after backward.
        var ahead: [Double] = []
        var key = 0
        // The trainer's step: local forward/backward, the bucketed all-reduce, the checks and the Adam update.
        func step() throws {
            let global = try student.withUnsafeBufferPointer { s in
                try teacherInput.withUnsafeBufferPointer { t in
                    try labels.withUnsafeBufferPointer { l in
                        // The same tiles every step; keys tell the step that its teacher outputs were prepared ahead.
                        var input = StepInput(images: s.baseAddress!, edge: resolution, teacherImages: t.baseAddress!, teacherEdge: tr,
                                              labels: l.baseAddress!, count: local)
                        input.key = key
                        var next = input
                        next.key = key + 1
                        key += 1
                        return try stepper.step(input, optimizer: optimizer, lr: 1e-4, lookahead: overlapTeacher ? next : nil)
                    }
                }
            }
            reduceSeconds += global.reduceSeconds
            if let r = stepper.lastReduction { timelines.append((r.startTimes, r.completeTime, r.summedTime)) }
            if let a = stepper.lastLookaheadSeconds { ahead.append(a) }
        }
        for _ in 0..<warmup { try step() }
        timelines.removeAll()
        ahead.removeAll()
        try group.barrier()
        var rates: [Double] = [], shares: [Double] = [], reduceMs: [Double] = []
        for _ in 0..<reps {
            reduceSeconds = 0
            let t0 = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<steps { try step() }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            rates.append(Double(steps * batch) / seconds)
            shares.append(reduceSeconds / seconds)
            reduceMs.append(reduceSeconds / Double(steps) * 1000)
        }
        // The bare all-reduce of the gradient buffer in the step's buckets, ranks aligned by a barrier first (no waiting
        // for stragglers).
        var bare: [Double] = []
        for _ in 0..<(group.size > 1 ? 20 : 0) {
            try group.barrier()
            let t0 = DispatchTime.now().uptimeNanoseconds
            try stepper.allReduceGradients()
            bare.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
        }
        guard group.isCoordinator else { return }
        func median(_ v: [Double]) -> Double { v.isEmpty ? 0 : v.sorted()[v.count / 2] }
        let kind = try teacherResolution.map { "distillation (teacher \($0) px, student \(resolution) px; \(try distillation.objective().summary))" } ?? "supervised \(resolution) px"
        var report: [String: Any] = [
            "step": kind, "ranks": group.size, "threads_per_rank": BLAS.threadCount, "precision": precision.rawValue, "global_batch": batch,
            "images_per_second": median(rates), "images_per_second_min": rates.min()!, "images_per_second_max": rates.max()!,
            "allreduce_ms_per_step": median(reduceMs), "allreduce_share": median(shares),
            "bare_allreduce_ms": median(bare), "gradient_mb": Double(model.parameterCount * 4) / 1e6,
            "gradient_compression": gradientCompression.rawValue,
        ]
        // The overlap profile cluster/scaling_model.py reads: each bucket's size and the median fraction of the step's
        // compute (its start to the end of backward) at which it was ready.
        var profile: [String: Any]?
        if let buckets = stepper.lastReduction?.buckets, !timelines.isEmpty {
            let fractions = buckets.indices.map { j in median(timelines.compactMap { j < $0.starts.count && $0.end > 0 ? min(1, $0.starts[j] / $0.end) : nil }) }
            profile = ["bucket_mb": buckets.map { Double($0.count * 4) / 1e6 }, "ready_fraction": fractions,
                       "compute_ms": median(timelines.map(\.end)) * 1000]
            if overlapTeacher { profile?["teacher_ahead_ms"] = median(ahead) * 1000 }
            // Whether the network finished during the compute: the share of steps whose buckets were all seen summed
            // by a progress call before the wait after the compute (with several ranks).
            if group.size > 1 { profile?["summed_during_compute_share"] = Double(timelines.filter { $0.summed != nil }.count) / Double(timelines.count) }
            report["overlap"] = profile
        }
        if json {
            let data = try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("\(kind), global batch \(batch), \(group.size) rank(s) x \(BLAS.threadCount) thread(s), precision \(precision.rawValue)")
            print(String(format: "  %.1f img/s (min %.1f, max %.1f over %d x %d steps)", median(rates), rates.min()!, rates.max()!, reps, steps))
            if group.size > 1 {
                print(String(format: "  all-reduce incl. waiting for the slowest rank: %.2f ms/step, %.1f%% of the step; bare all-reduce of %.1f MB%@: %.2f ms",
                             median(reduceMs), median(shares) * 100, Double(model.parameterCount * 4) / 1e6,
                             gradientCompression == .bf16 ? " (sent as bfloat16)" : "", median(bare)))
            }
            if let profile, let sizes = profile["bucket_mb"] as? [Double], let fractions = profile["ready_fraction"] as? [Double] {
                let aheadText = (profile["teacher_ahead_ms"] as? Double).map { String(format: " (including the next step's teacher forward, %.1f ms, after backward)", $0) } ?? ""
                print(String(format: "  overlapped all-reduce: %d bucket%@; each ready at this fraction of the %.1f ms forward + backward%@:",
                             sizes.count, sizes.count == 1 ? "" : "s", profile["compute_ms"] as? Double ?? 0, aheadText))
                print("  " + zip(sizes, fractions).map { String(format: "%.2f MB at %.2f", $0, $1) }.joined(separator: ", "))
                if let share = profile["summed_during_compute_share"] as? Double {
                    print(String(format: "  every bucket summed before the compute ended on %.0f%% of the steps (else the rest was waited for)", share * 100))
                }
            }
        }
    }
}
