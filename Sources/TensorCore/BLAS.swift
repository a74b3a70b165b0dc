// The OpenBLAS facade: thread control and what the loaded library reports about itself.
import COpenBLAS

/// Runtime controls and facts of the loaded OpenBLAS.
public enum BLAS {
    /// Number of threads OpenBLAS uses for one GEMM.
    public static var threadCount: Int { Int(openblas_get_num_threads()) }

    /// Sets OpenBLAS's thread count and the engine's parallel-for width together, so both use the same cores.
    public static func setThreadCount(_ count: Int) {
        precondition(count >= 1, "BLAS.setThreadCount: thread count must be >= 1, got \(count)")
        openblas_set_num_threads(Int32(count))
        Parallel.setWidth(count)
    }

    /// Runs `body` with OpenBLAS single-threaded, so that `Parallel.width` workers can each call GEMM on their
    /// own tile; restores the thread count afterwards. Call from the thread that owns the engine.
    public static func withSingleThreadedGEMM<R>(_ body: () throws -> R) rethrows -> R {
        let saved = openblas_get_num_threads()
        if saved == 1 { return try body() }
        openblas_set_num_threads(1)
        defer { openblas_set_num_threads(saved) }
        return try body()
    }

    /// Processors OpenBLAS detected.
    public static var processorCount: Int { Int(openblas_get_num_procs()) }

    /// The build configuration string, e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64".
    public static var configuration: String {
        guard let p = openblas_get_config() else { return "unknown" }
        return String(cString: p)
    }

    /// The kernel family OpenBLAS selected at load time (e.g. "SkylakeX", "Haswell").
    public static var coreName: String {
        guard let p = openblas_get_corename() else { return "unknown" }
        return String(cString: p)
    }

    /// The version number parsed from `configuration` ("0.3.21"), or "unknown".
    public static var version: String {
        let parts = configuration.split(separator: " ")
        if parts.count >= 2, parts[0] == "OpenBLAS" { return String(parts[1]) }
        return "unknown"
    }

    /// Threading model: 0 sequential, 1 pthreads, 2 OpenMP.
    public static var parallelMode: Int { Int(openblas_get_parallel()) }
}
