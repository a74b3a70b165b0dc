// The OpenBLAS facade: thread control and what the loaded library reports about itself.
import COpenBLAS

/// Runtime controls and facts of the loaded OpenBLAS.
public enum BLAS {
    /// Threads the engine uses: the parallel-for width over which kernels split their work (each worker
    /// calling single-threaded GEMMs).
    public static var threadCount: Int { Parallel.width }

    /// Sets the engine's thread count. OpenBLAS itself stays single-threaded: every conv already splits its
    /// images and tiles over the engine's workers, each calling GEMM on its own part, and a second pool of
    /// OpenBLAS threads (which spin for a while after each call) would only compete with them for the cores.
    public static func setThreadCount(_ count: Int) {
        precondition(count >= 1, "BLAS.setThreadCount: thread count must be >= 1, got \(count)")
        openblas_set_num_threads(1)
        Parallel.setWidth(count)
    }

    /// Lets OpenBLAS use `count` threads per GEMM call, for reference measurements of the library alone
    /// (`histodistill-bench`); `setThreadCount` makes it single-threaded again.
    public static func setLibraryThreadCount(_ count: Int) {
        precondition(count >= 1, "BLAS.setLibraryThreadCount: thread count must be >= 1, got \(count)")
        openblas_set_num_threads(Int32(count))
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
