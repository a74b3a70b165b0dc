// What the CPU supports, read from /proc/cpuinfo, and whether OpenBLAS is using the best kernels for it.
import Foundation
import TensorCore

/// CPU model and the vector extensions that decide OpenBLAS's kernel family.
struct CPUFeatures {
    var modelName: String
    var flags: Set<String>

    static func current() -> CPUFeatures {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else {
            return CPUFeatures(modelName: "unknown", flags: [])
        }
        var model = "unknown", flags = Set<String>()
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let key = parts[0].trimmingCharacters(in: .whitespaces)
            let value = parts[1].trimmingCharacters(in: .whitespaces)
            if key == "model name", model == "unknown" { model = value }
            if key == "flags", flags.isEmpty { flags = Set(value.split(separator: " ").map(String.init)) }
        }
        return CPUFeatures(modelName: model, flags: flags)
    }

    /// The newest OpenBLAS x86-64 kernel family this CPU can run.
    var bestOpenBLASCore: String {
        if flags.contains("amx_bf16") && flags.contains("avx512_bf16") { return "SapphireRapids" }
        if flags.contains("avx512_bf16") { return "Cooperlake" }
        if ["avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512cd"].allSatisfy(flags.contains) { return "SkylakeX" }
        if flags.contains("avx2") && flags.contains("fma") { return "Haswell" }
        if flags.contains("avx") { return "Sandybridge" }
        if flags.isEmpty { return "unknown" }
        return "Nehalem"
    }
}

/// Warnings about OpenBLAS kernel selection, each with its fix.
enum KernelAdvice {
    /// Vector ISA class of an OpenBLAS x86-64 kernel family: 0 SSE, 1 AVX, 2 AVX2+FMA, 3 AVX-512.
    /// Float32 GEMM speed depends on this class only (Cooperlake and Sapphire Rapids add bf16 and AMX, not fp32).
    static func vectorClass(_ core: String) -> Int? {
        switch core.lowercased() {
        case "prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "barcelona", "bobcat": return 0
        case "sandybridge", "bulldozer", "piledriver", "steamroller", "excavator": return 1
        case "haswell", "zen": return 2
        case "skylakex", "cooperlake", "sapphirerapids": return 3
        default: return nil
        }
    }

    /// Warnings for this process: the CPU, the kernels OpenBLAS chose, and the environment.
    static func current() -> [String] {
        let env = ProcessInfo.processInfo.environment
        return check(cpuBest: CPUFeatures.current().bestOpenBLASCore, inUse: BLAS.coreName,
                     forcedCoreType: env["OPENBLAS_CORETYPE"], forcedL2: env["OPENBLAS_L2_SIZE"])
    }

    /// Warnings when the kernels in use are older than the CPU supports, naming the variable that forced them.
    static func check(cpuBest: String, inUse: String, forcedCoreType: String?, forcedL2: String?) -> [String] {
        guard let best = vectorClass(cpuBest), let used = vectorClass(inUse), used < best else { return [] }
        var cause = "OpenBLAS is using \(inUse) kernels but this CPU supports \(cpuBest)"
        var unset = ""
        if let forcedCoreType {
            cause += " because OPENBLAS_CORETYPE=\(forcedCoreType) is set in the environment"
            unset = "-u OPENBLAS_CORETYPE"
            if forcedL2 != nil { unset += " -u OPENBLAS_L2_SIZE" }
        }
        let fix = unset.isEmpty
            ? "install an OpenBLAS built with DYNAMIC_ARCH (Debian's libopenblas0-pthread is)"
            : "unset OPENBLAS_CORETYPE\(forcedL2 != nil ? " OPENBLAS_L2_SIZE" : "") before running, e.g. `env \(unset) histodistill ...` (mpirun forwards the environment to every rank)"
        return ["\(cause): float32 GEMMs run at about half speed. Fix: \(fix)."]
    }
}
