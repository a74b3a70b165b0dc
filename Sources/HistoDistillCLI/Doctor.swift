// `histodistill doctor`: what the tool found on this machine (libraries, cores, threads, MPI) and what to fix.
import ArgumentParser
import CZstd
import Distributed
import Training
import Foundation
import TensorCore

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Report libraries, cores, BLAS threads and kernels, and check MPI collectives when under mpirun.",
        discussion: """
            Run it alone for a report of this machine, or under `mpirun -np N histodistill doctor` to also check \
            that every rank can all-reduce and broadcast (rank 0 prints the report).
            """)

    @Option(help: "Compute threads per rank (default: SLURM cpus-per-task, else cores per node / ranks per node).")
    var threads: Int?

    @Option(help: "Floats in the all-reduce check buffer (default: the paper's model, 1,231,525).")
    var allreduceFloats: Int = 1_231_525

    @Flag(help: "Print the report as JSON.")
    var json = false

    func validate() throws {
        try validateThreads(threads)
        if allreduceFloats < 1 { throw ValidationError("--allreduce-floats must be at least 1, got \(allreduceFloats)") }
    }

    func run() throws {
        let launch = LaunchEnvironment.current()
        let group: any ProcessGroup
        do {
            group = try makeProcessGroup(launch)
        } catch {
            throw CLIError("could not start MPI: \(error)", hint: "check `mpirun --version` and that libopenmpi is installed")
        }
        defer { group.finalize() }

        let cores = ProcessInfo.processInfo.activeProcessorCount
        let threadCount = threads ?? launch.defaultThreadsPerRank(cores: cores)
        BLAS.setThreadCount(threadCount)
        let cpu = CPUCapabilities.current
        let forced = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"]
        let env = ProcessInfo.processInfo.environment
        let advice = env[KernelSelection.autoVariable] == "failed" ? KernelAdvice.current()
            : KernelAdvice.check(cpuBest: cpu.bestOpenBLASCore, inUse: BLAS.coreName, forcedCoreType: env[KernelSelection.autoVariable] == "1" ? nil : forced,
                                 forcedL2: env["OPENBLAS_L2_SIZE"])

        var check: CollectiveCheck?
        if group.size > 1 {
            check = try CollectiveCheck.run(group: group, floats: allreduceFloats)
        }
        guard group.isCoordinator else { return }

        var report: [(String, String)] = [
            ("histodistill", histodistillVersion),
            ("OpenBLAS", "\(BLAS.version) (\(BLAS.configuration))"),
            ("OpenBLAS kernels in use", BLAS.coreName),
            ("OpenBLAS kernel choice", KernelSelection.explanation(env: env)),
            ("compute threads", "\(BLAS.threadCount) per rank (OpenBLAS itself single-threaded)"),
            ("zstd", String(cString: ZSTD_versionString())),
            ("MPI library", MPIProcessGroup.libraryVersion),
            ("CPU", "\(cpu.modelName), \(cores) cores, \(cpu.summary); best OpenBLAS kernels: \(cpu.bestOpenBLASCore)"),
            ("engine kernels", DirectConv.isAvailable ? "AVX-512 direct convolution, AVX-512 C kernels" : cpu.avx2 ? "im2col + GEMM, AVX2 C kernels" : "im2col + GEMM, baseline C kernels"),
            ("narrow-map im2col", "gather \(Conv2d.gatherKernels.gather), scatter-add \(Conv2d.gatherKernels.scatter) (the faster of each, timed at start)"),
            ("bf16-mixed GEMM", BF16GEMM.kernelDescription),
            ("bf16-mixed 3x3 convolutions", Winograd.description),
            ("launch", launch.isUnderMPI ? "\(launch.launcher!) with \(group.size) ranks" : "single process"),
        ]
        if let check {
            report.append(("all-reduce check", check.summary))
        }
        if json {
            var object: [String: Any] = Dictionary(uniqueKeysWithValues: report)
            object["warnings"] = advice
            object["ranks"] = group.size
            object["threads"] = BLAS.threadCount
            if let check { object["allreduce_ok"] = check.ok; object["allreduce_ms"] = check.medianMilliseconds }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            let width = report.map(\.0.count).max() ?? 0
            for (k, v) in report { print(k.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + v) }
            for w in advice { print("warning: " + w) }
        }
        if let check, !check.ok {
            throw CLIError("the all-reduce check gave wrong sums on \(group.size) ranks", hint: "see docs/cluster.md, troubleshooting")
        }
    }
}

/// An all-reduce and broadcast check across every rank, timed.
struct CollectiveCheck {
    var ok: Bool
    var medianMilliseconds: Double
    var floats: Int
    var ranks: Int

    var summary: String {
        let mb = Double(floats * 4) / 1e6
        return "\(ok ? "ok" : "WRONG SUMS"), \(ranks) ranks, \(String(format: "%.1f", mb)) MB in "
            + "\(String(format: "%.3f", medianMilliseconds)) ms (median of 10)"
    }

    static func run(group: any ProcessGroup, floats: Int) throws -> CollectiveCheck {
        let buffer = Buffer<Float>(count: floats)
        let n = group.size, r = group.rank
        let expected = Float(n * (n + 1) / 2)
        var ok = true
        var times: [Double] = []
        for _ in 0..<10 {
            for i in 0..<floats { buffer[i] = Float(r + 1) }
            try group.barrier()
            let t0 = DispatchTime.now().uptimeNanoseconds
            try group.allReduceSum(UnsafeMutableBufferPointer(start: buffer.pointer, count: floats))
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
            for i in stride(from: 0, to: floats, by: max(1, floats / 1024)) where buffer[i] != expected { ok = false }
            if buffer[floats - 1] != expected { ok = false }
        }
        // Every rank must agree the check passed, and a broadcast from rank 0 must arrive intact.
        var flag = [Int64(ok ? 0 : 1)]
        try flag.withUnsafeMutableBufferPointer { try group.allReduceMax($0) }
        let token = try group.broadcast(string: "histodistill \(histodistillVersion)", root: 0)
        ok = flag[0] == 0 && token == "histodistill \(histodistillVersion)"
        times.sort()
        return CollectiveCheck(ok: ok, medianMilliseconds: times[times.count / 2], floats: floats, ranks: n)
    }
}
