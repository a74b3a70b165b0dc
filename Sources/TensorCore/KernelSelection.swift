// Choosing OpenBLAS's kernel family before any work: OpenBLAS picks its kernels when the library loads (a
// DYNAMIC_ARCH build reads cpuid, or OPENBLAS_CORETYPE), and an OpenBLAS older than the CPU falls back to old kernels
// (Debian's 0.3.21 runs Prescott SSE3 kernels on Sapphire Rapids). The program then restarts itself once with the best
// family the library has for this CPU, checks that family's GEMM against a reference, and falls back when it is wrong.
import Foundation

/// The start-up decision about OpenBLAS's kernels. Pure: `decide` takes what the CPU supports, what OpenBLAS loaded
/// and the environment, and says whether to keep this process or restart it with other settings.
public enum KernelSelection {
    /// Set (to "1") in a process this program restarted with OPENBLAS_CORETYPE of its own choosing; "failed" when it
    /// gave up (no family loaded, or the GEMM self-check failed) and restarted with OpenBLAS's own choice.
    public static let autoVariable = "HISTODISTILL_CORETYPE_AUTO"
    /// The kernel families already tried by restarts, comma-separated.
    public static let triedVariable = "HISTODISTILL_CORETYPE_TRIED"
    /// The family OpenBLAS chose by itself, kept for `doctor`.
    public static let originalVariable = "HISTODISTILL_CORETYPE_ORIGINAL"
    /// Why the automatic choice was given up (for `doctor` and one warning).
    public static let reasonVariable = "HISTODISTILL_CORETYPE_REASON"
    /// Testing aid: pretend OpenBLAS loaded this family on its own (to exercise the restart on CPUs OpenBLAS knows).
    public static let simulateVariable = "HISTODISTILL_SIMULATE_OPENBLAS_CORE"
    /// Set to "0" to turn the automatic choice off.
    public static let enableVariable = "HISTODISTILL_AUTO_CORETYPE"

    /// What to do at start-up.
    public enum Action: Equatable, Sendable {
        /// Run as is.
        case keep
        /// Restart with these variables set (nil: removed).
        case restart([String: String?])
    }

    /// OpenBLAS families to try for a CPU whose best family is `best`, best first, down to the first of the same vector
    /// class as `best` that every OpenBLAS with AVX-512 support has (SkylakeX) or AVX2 (Haswell).
    public static func candidates(best: String) -> [String] {
        switch best.lowercased() {
        case "sapphirerapids": return ["SapphireRapids", "Cooperlake", "SkylakeX"]
        case "cooperlake": return ["Cooperlake", "SkylakeX"]
        case "skylakex": return ["SkylakeX"]
        case "haswell": return ["Haswell"]
        default: return []
        }
    }

    /// The decision for a process whose CPU supports `cpuBest`, whose OpenBLAS loaded `loaded`, with environment `env`.
    public static func decide(cpuBest: String, loaded: String, env: [String: String]) -> Action {
        if env[enableVariable] == "0" { return .keep }
        let auto = env[autoVariable]
        if auto == "failed" { return .keep }
        let tried = (env[triedVariable] ?? "").split(separator: ",").map(String.init)
        if auto == "1" {
            // A restart of ours: did OpenBLAS load the family we asked for?
            let asked = env["OPENBLAS_CORETYPE"] ?? ""
            if loaded.lowercased() == asked.lowercased() { return .keep }
            let next = candidates(best: cpuBest).first { c in !tried.contains { $0.lowercased() == c.lowercased() } }
            if let next {
                return .restart(["OPENBLAS_CORETYPE": next, triedVariable: (tried + [next]).joined(separator: ",")])
            }
            return .restart(["OPENBLAS_CORETYPE": nil, autoVariable: "failed",
                             reasonVariable: "this OpenBLAS has none of \(candidates(best: cpuBest).joined(separator: ", ")) (it loaded \(loaded) when asked for \(asked))"])
        }
        // The user's own choice is respected (KernelAdvice warns when it is slower).
        if env["OPENBLAS_CORETYPE"] != nil { return .keep }
        let effective = env[simulateVariable] ?? loaded
        guard let best = KernelAdvice.vectorClass(cpuBest), let used = KernelAdvice.vectorClass(effective), used < best,
              let first = candidates(best: cpuBest).first else { return .keep }
        return .restart(["OPENBLAS_CORETYPE": first, autoVariable: "1", triedVariable: first, originalVariable: effective])
    }

    /// Why the kernels in use are in use, in one line, for `doctor`.
    public static func explanation(env: [String: String]) -> String {
        switch env[autoVariable] {
        case "1":
            return "chosen by histodistill: OpenBLAS picked \(env[originalVariable] ?? "an older family") for this CPU, which supports \(CPUCapabilities.current.bestOpenBLASCore); the GEMM self-check passed"
        case "failed":
            return "OpenBLAS's own choice: histodistill's choice was given up (\(env[reasonVariable] ?? "unknown reason"))"
        default:
            if let forced = env["OPENBLAS_CORETYPE"] { return "as OPENBLAS_CORETYPE=\(forced) in the environment asks" }
            return "OpenBLAS's own choice for this CPU"
        }
    }

    /// GEMM self-check: a 67 x 45 x 53 SGEMM with transposes (C = A Bᵀ, as the convolutions call it) against a
    /// Double reference; true when every element is within 1e-4 relative to the largest. Catches kernels that compute
    /// wrong results on a CPU they were not built for. `multiply` is the GEMM under test (row-major, Float.gemm's
    /// arguments); the loaded OpenBLAS by default.
    public static func gemmSelfCheck(
        multiply: (Bool, Bool, Int, Int, Int, Float, UnsafePointer<Float>, Int, UnsafePointer<Float>, Int, Float, UnsafeMutablePointer<Float>, Int) -> Void = {
            Float.gemm(transA: $0, transB: $1, m: $2, n: $3, k: $4, alpha: $5, a: $6, lda: $7, b: $8, ldb: $9, beta: $10, c: $11, ldc: $12)
        }
    ) -> Bool {
        let m = 67, n = 45, k = 53
        var g = SplitMix64(seed: 0x5E1F)
        let a = (0..<(m * k)).map { _ in g.uniform(-1, 1) }, b = (0..<(n * k)).map { _ in g.uniform(-1, 1) }
        var c = [Float](repeating: 0, count: m * n)
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                c.withUnsafeMutableBufferPointer { cp in
                    multiply(false, true, m, n, k, 1, ap.baseAddress!, k, bp.baseAddress!, k, 0, cp.baseAddress!, n)
                }
            }
        }
        var worst = 0.0, scale = 1e-30
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                for p in 0..<k { s += Double(a[i * k + p]) * Double(b[j * k + p]) }
                worst = max(worst, abs(s - Double(c[i * n + j])))
                scale = max(scale, abs(s))
            }
        }
        return worst <= 1e-4 * scale
    }
}
