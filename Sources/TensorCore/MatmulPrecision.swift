// The precision of the convolutions' matrix products: float32 (the reference) or bfloat16 operands with float32
// accumulation, on AVX512-BF16 where the CPU has it and emulated bit-for-bit in its operands elsewhere.
import CKernels
import Foundation
import Synchronization

/// Precision of the convolutions' GEMMs, named as PyTorch Lightning's `Trainer(precision=...)`.
public enum MatmulPrecision: String, CaseIterable, Codable, Sendable {
    /// float32 operands and accumulation: the reference path.
    case float32 = "32-true"
    /// bfloat16 operands (float32 rounded to nearest even), float32 accumulation and float32 outputs, in every
    /// convolution's forward and both backward GEMMs; weights, gradients, norms, losses and the optimizer stay float32
    /// (PyTorch's `torch.autocast("cpu", dtype=torch.bfloat16)` for convolutions, with float32 master weights).
    case bf16Mixed = "bf16-mixed"

    /// The precision named `name`, with the aliases Lightning accepts for these two ("32", "bf16"), else nil.
    public init?(lightningName name: String) {
        switch name {
        case "32", "32-true": self = .float32
        case "bf16", "bf16-mixed": self = .bf16Mixed
        default: return nil
        }
    }
}

/// The bfloat16 GEMM behind `MatmulPrecision.bf16Mixed`, and the process-wide precision the convolutions read.
public enum BF16GEMM {
    private static let precisionStorage = Atomic<Int>(0)
    private static let emulateStorage = Atomic<Bool>(ProcessInfo.processInfo.environment[emulateVariable] == "1")

    /// Testing aid: set to "1" to run bf16-mixed emulated on a CPU that has AVX512-BF16 (the path other CPUs take).
    public static let emulateVariable = "HISTODISTILL_BF16_EMULATE"

    /// The precision every Float convolution uses (default `.float32`): `scoped` where a task set it, else the
    /// process-wide value set once at start (`train.precision`, `--precision`), like PyTorch's
    /// `torch.set_float32_matmul_precision`. Each convolution reads it once, on the calling thread.
    public static var precision: MatmulPrecision {
        get { scoped ?? (precisionStorage.load(ordering: .relaxed) == 1 ? .bf16Mixed : .float32) }
        set { precisionStorage.store(newValue == .bf16Mixed ? 1 : 0, ordering: .relaxed) }
    }

    /// A precision for the current task and the work it calls (`BF16GEMM.$scoped.withValue(.bf16Mixed) { ... }`),
    /// over the process-wide one; lets tests compare precisions side by side without changing it for others.
    @TaskLocal public static var scoped: MatmulPrecision?

    /// Whether this CPU has the AVX512-BF16 kernel (`hd_sgemm_bf16`).
    public static var cpuHasKernel: Bool { hd_bf16_gemm_available() != 0 }

    /// Forces the emulation (bfloat16-rounded operands through OpenBLAS's sgemm) even where the CPU has the kernel;
    /// for tests that compare the two. Starts true when `HISTODISTILL_BF16_EMULATE=1`.
    public static var forceEmulation: Bool {
        get { emulateStorage.load(ordering: .relaxed) }
        set { emulateStorage.store(newValue, ordering: .relaxed) }
    }

    /// Whether bfloat16 products run on the CPU's own instructions (else emulated, slower than float32).
    public static var native: Bool { cpuHasKernel && !forceEmulation }

    /// Why bf16-mixed is emulated here ("this CPU has no AVX512-BF16"), nil when it runs natively.
    static var emulationCause: String? {
        native ? nil : cpuHasKernel ? "emulation forced by \(emulateVariable)=1" : "this CPU has no AVX512-BF16"
    }

    /// How `bf16-mixed` runs here, for `doctor` and run logs.
    public static var kernelDescription: String {
        guard let cause = emulationCause else { return "AVX512-BF16 (VDPBF16PS, float32 accumulation)" }
        return "emulated: bfloat16-rounded operands through float32 sgemm (\(cause); slower than 32-true, same numbers up to summation order)"
    }

    /// A warning for runs that ask for `bf16-mixed` on a CPU without AVX512-BF16, else nil.
    public static var emulationWarning: String? {
        emulationCause.map { "precision bf16-mixed: \($0), so its bfloat16 products are emulated (operands rounded, then float32 GEMMs): the same numbers, but slower than 32-true. Hint: use 32-true on this machine; a run may change precision on --resume." }
    }

    /// C (m, n) = alpha * op(A) (m, k) * op(B) (k, n) + beta * C, row-major, with A's and B's elements rounded to
    /// bfloat16 (round to nearest even, float32 subnormals to zero) and float32 sums: `hd_sgemm_bf16` on AVX512-BF16,
    /// else the same rounding into scratch copies followed by float32 sgemm (bfloat16 products are exact in float32,
    /// so both compute the same terms, summed in another order). beta 0 never reads C.
    public static func gemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        if native {
            hd_sgemm_bf16(transA ? 1 : 0, transB ? 1 : 0, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
            return
        }
        // Stored extents: op(A) is A, or A^T stored k x m.
        let aRows = transA ? k : m, aCols = transA ? m : k, bRows = transB ? n : k, bCols = transB ? k : n
        let ra = UnsafeMutablePointer<Float>.allocate(capacity: max(1, aRows * aCols))
        let rb = UnsafeMutablePointer<Float>.allocate(capacity: max(1, bRows * bCols))
        defer { ra.deallocate(); rb.deallocate() }
        hd_round_bf16(ra, aCols, a, lda, aRows, aCols)
        hd_round_bf16(rb, bCols, b, ldb, bRows, bCols)
        Float.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: ra, lda: aCols, b: rb, ldb: bCols,
                   beta: beta, c: c, ldc: ldc)
    }

    /// Rounds each element to the nearest bfloat16 (as a float32), the operand rounding of `gemm`.
    public static func round(_ x: Float) -> Float {
        var src = x, dst: Float = 0
        hd_round_bf16(&dst, 1, &src, 1, 1, 1)
        return dst
    }
}
