// What the CPU can run, in one place: the vector extensions the kernels dispatch on (cpuid, through the C
// kernels' own check), the model name, and the OpenBLAS kernel family that fits; plus the advice when the
// loaded OpenBLAS uses an older family than the CPU supports.
import CKernels
import Foundation

/// The CPU's model and vector extensions. `current` is what every kernel choice and `histodistill doctor` use.
public struct CPUCapabilities: Sendable, Equatable {
    /// The model name from /proc/cpuinfo ("unknown" elsewhere).
    public var modelName: String
    /// AVX2 with FMA (the C kernels' AVX2 clones).
    public var avx2: Bool
    /// AVX-512 F (the direct convolution, the AVX-512 clones and masked im2col/max-pool kernels).
    public var avx512: Bool
    /// AVX-512 F, BW and VL (what OpenBLAS's SkylakeX kernels need).
    public var avx512SkylakeX: Bool
    /// AVX512-BF16 dot products.
    public var avx512BF16: Bool
    /// AMX tiles with bf16.
    public var amxBF16: Bool

    public init(modelName: String, avx2: Bool, avx512: Bool, avx512SkylakeX: Bool, avx512BF16: Bool, amxBF16: Bool) {
        self.modelName = modelName; self.avx2 = avx2; self.avx512 = avx512; self.avx512SkylakeX = avx512SkylakeX
        self.avx512BF16 = avx512BF16; self.amxBF16 = amxBF16
    }

    /// This machine's CPU, read once.
    public static let current: CPUCapabilities = {
        let f = hd_cpu_features()
        func has(_ bit: Int32) -> Bool { f & bit != 0 }
        return CPUCapabilities(modelName: cpuinfoModelName(), avx2: has(Int32(HD_CPU_AVX2)) && has(Int32(HD_CPU_FMA)),
                               avx512: has(Int32(HD_CPU_AVX512F)),
                               avx512SkylakeX: has(Int32(HD_CPU_AVX512F)) && has(Int32(HD_CPU_AVX512BW)) && has(Int32(HD_CPU_AVX512VL)),
                               avx512BF16: has(Int32(HD_CPU_AVX512BF16)), amxBF16: has(Int32(HD_CPU_AMX_BF16)))
    }()

    private static func cpuinfoModelName() -> String {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown" }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == "model name" {
                return parts[1].trimmingCharacters(in: .whitespaces)
            }
        }
        return "unknown"
    }

    /// The vector extensions as a short list ("AVX2, AVX-512, AVX512-BF16, AMX-BF16").
    public var summary: String {
        let names = [(avx2, "AVX2+FMA"), (avx512, "AVX-512"), (avx512BF16, "AVX512-BF16"), (amxBF16, "AMX-BF16")].filter(\.0).map(\.1)
        return names.isEmpty ? "no AVX2" : names.joined(separator: ", ")
    }

    /// The newest OpenBLAS x86-64 kernel family this CPU can run.
    public var bestOpenBLASCore: String {
        if amxBF16 && avx512BF16 { return "SapphireRapids" }
        if avx512BF16 { return "Cooperlake" }
        if avx512SkylakeX { return "SkylakeX" }
        if avx2 { return "Haswell" }
        return "Nehalem"
    }
}

/// Warnings about OpenBLAS kernel selection, each with its fix.
public enum KernelAdvice {
    /// Vector ISA class of an OpenBLAS x86-64 kernel family: 0 SSE, 1 AVX, 2 AVX2+FMA, 3 AVX-512.
    /// Float32 GEMM speed depends on this class only (Cooperlake and Sapphire Rapids add bf16 and AMX, not fp32).
    public static func vectorClass(_ core: String) -> Int? {
        switch core.lowercased() {
        case "prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "barcelona", "bobcat": return 0
        case "sandybridge", "bulldozer", "piledriver", "steamroller", "excavator": return 1
        case "haswell", "zen": return 2
        case "skylakex", "cooperlake", "sapphirerapids": return 3
        default: return nil
        }
    }

    /// Warnings for this process: the CPU, the kernels OpenBLAS chose, and the environment.
    public static func current() -> [String] {
        let env = ProcessInfo.processInfo.environment
        if env[KernelSelection.autoVariable] == "failed" {
            return ["OpenBLAS runs \(BLAS.coreName) kernels: histodistill's choice of \(CPUCapabilities.current.bestOpenBLASCore)-class kernels was given up (\(env[KernelSelection.reasonVariable] ?? "unknown reason")); float32 GEMMs may run at half speed. Fix: install an OpenBLAS that knows this CPU (a newer release), or see `histodistill doctor`."]
        }
        return check(cpuBest: CPUCapabilities.current.bestOpenBLASCore, inUse: BLAS.coreName,
                     forcedCoreType: env["OPENBLAS_CORETYPE"], forcedL2: env["OPENBLAS_L2_SIZE"])
    }

    /// Warnings when the kernels in use are older than the CPU supports, naming the variable that forced them.
    public static func check(cpuBest: String, inUse: String, forcedCoreType: String?, forcedL2: String?) -> [String] {
        guard let best = vectorClass(cpuBest), let used = vectorClass(inUse), used < best else { return [] }
        var cause = "OpenBLAS is using \(inUse) kernels but this CPU supports \(cpuBest)"
        var unset = ""
        if let forcedCoreType {
            cause += " because OPENBLAS_CORETYPE=\(forcedCoreType) is set in the environment"
            unset = "-u OPENBLAS_CORETYPE"
            if forcedL2 != nil { unset += " -u OPENBLAS_L2_SIZE" }
        }
        let fix = unset.isEmpty
            ? "run with OPENBLAS_CORETYPE=\(cpuBest) (this OpenBLAS does not recognise the CPU model)"
            : "unset OPENBLAS_CORETYPE\(forcedL2 != nil ? " OPENBLAS_L2_SIZE" : "") before running, e.g. `env \(unset) histodistill ...` (mpirun forwards the environment to every rank)"
        return ["\(cause): float32 GEMMs run at about half speed. Fix: \(fix)."]
    }
}
