// Winograd F(2x2, 3x3) convolutions in bfloat16 with float32 sums (CKernels/winograd_bf16.c): the forward and the
// input gradient of 3x3, stride-1, padding-1 convolutions with 2.25x fewer multiply-adds than the direct kernel.
import CKernels
import Synchronization

/// Winograd F(2x2, 3x3) (Lavin & Gray 2016) for `bf16-mixed` on CPUs with AVX512-BF16: the 4x4 input patch of
/// every 2x2 output block is transformed (B^T d B), multiplied elementwise by the transformed weights (G g G^T) as 16
/// bfloat16 matrix products with float32 sums, and transformed back (A^T m A). Only 3x3 kernels with stride 1 and
/// padding 1; the transforms round to bfloat16 values other than the direct kernel's, so its sums differ from it by
/// bfloat16 rounding (tested against float64 convolutions).
public enum Winograd {
    /// Whether this CPU has the kernels (AVX512-BF16).
    public static var isAvailable: Bool { hd_winograd_available() != 0 }

    /// Whether `s` has the geometry the kernels compute: a 3x3 kernel, stride 1, padding 1.
    public static func supports(_ s: Conv2dShape) -> Bool {
        s.kh == 3 && s.kw == 3 && s.strideH == 1 && s.strideW == 1 && s.padH == 1 && s.padW == 1
    }

    /// How `bf16-mixed` runs 3x3 convolutions here, for `doctor`.
    public static var description: String {
        guard isAvailable else { return "direct kernel or im2col + GEMM (Winograd needs AVX512-BF16)" }
        guard BF16GEMM.native else {
            return "direct kernel or im2col + GEMM (Winograd off while the bfloat16 emulation is forced, \(BF16GEMM.emulateVariable)=1)"
        }
        return "Winograd F(2x2, 3x3) for stride 1 with \(minimumChannels)+ channels on maps of \(minimumMapSide) px or more (forward and input gradient), else the direct kernel or im2col + GEMM"
    }

    /// Fewest input and output channels for which `.automatic` runs these kernels: with 32 (layer1 of the paper's
    /// model) the transforms cost what the 2.25x fewer multiply-adds save against the direct kernel (measured with
    /// `histodistill-bench --algorithm winograd` on AMD Zen 4; docs/benchmarks.md).
    public static let minimumChannels = 64
    /// Smallest map side for which `.automatic` runs these kernels: a 2x2 map is one tile in two slots, and loses to
    /// im2col (measured as above).
    public static let minimumMapSide = 4

    private static let automaticStorage = Atomic<Bool>(true)
    /// Whether `.automatic` may choose these kernels (default true); `histodistill-bench --no-winograd` turns it off
    /// to compare.
    public static var automaticEnabled: Bool {
        get { automaticStorage.load(ordering: .relaxed) }
        set { automaticStorage.store(newValue, ordering: .relaxed) }
    }

    /// Whether `algorithm` runs the forward and input gradient of `s` with these kernels: only under `bf16-mixed`
    /// (read on the calling thread) on a CPU with native AVX512-BF16, for the geometry they compute (`supports`);
    /// `.winograd` always there, `.automatic` where they were measured faster (`minimumChannels`, `minimumMapSide`).
    static func chooses(_ algorithm: ConvAlgorithm, _ s: Conv2dShape) -> Bool {
        guard supports(s), BF16GEMM.precision == .bf16Mixed, BF16GEMM.native, isAvailable else { return false }
        switch algorithm {
        case .winograd: return true
        case .automatic:
            return automaticEnabled && min(s.cIn, s.cOut) >= minimumChannels && min(s.h, s.w) >= minimumMapSide
        case .im2colGEMM, .direct: return false
        }
    }

    /// output (n, cOut, h, w) = conv(input (n, cIn, h, w), weight (cOut, cIn, 3, 3)) + bias (cOut, or nil),
    /// overwritten. Images are split among `Parallel.width` workers. Precondition: `isAvailable && supports(s)`.
    public static func forward(
        output: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>, weight: UnsafePointer<Float>,
        bias: UnsafePointer<Float>?, shape s: Conv2dShape, workspace: Workspace<Float>
    ) {
        run(output: output, input: input, weight: weight, bias: bias, n: s.n, cIn: s.cIn, cOut: s.cOut, h: s.h, w: s.w,
            adjoint: false, accumulate: false, workspace: workspace)
    }

    /// gradInput (n, cIn, h, w) += the input gradient of `forward` for gradOutput (n, cOut, h, w): the same kernel
    /// over the output gradient with the weights flipped and transposed (torch.nn.grad.conv2d_input).
    public static func inputGradient(
        gradInput: UnsafeMutablePointer<Float>, gradOutput: UnsafePointer<Float>, weight: UnsafePointer<Float>,
        shape s: Conv2dShape, workspace: Workspace<Float>
    ) {
        run(output: gradInput, input: gradOutput, weight: weight, bias: nil, n: s.n, cIn: s.cOut, cOut: s.cIn, h: s.h, w: s.w,
            adjoint: true, accumulate: true, workspace: workspace)
    }

    private static func run(
        output: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>, weight: UnsafePointer<Float>,
        bias: UnsafePointer<Float>?, n: Int, cIn: Int, cOut: Int, h: Int, w: Int, adjoint: Bool, accumulate: Bool,
        workspace: Workspace<Float>
    ) {
        precondition(isAvailable, "Winograd: this CPU has no AVX512-BF16")
        let workers = min(Parallel.width, n)
        // Each worker's images, and the scratch the largest share needs.
        let shares = (0..<workers).map { (n * $0 / workers)..<(n * ($0 + 1) / workers) }
        let per = shares.map { hd_winograd_scratch_floats($0.count, cIn, h, w) }.max() ?? 0
        let words = hd_winograd_weight_words(cOut, cIn)
        let scratch = workspace.reserve(words + per * workers)
        let packed = UnsafeMutableRawPointer(scratch).assumingMemoryBound(to: UInt32.self)
        hd_winograd_pack_weights(packed, weight, cOut, cIn, adjoint ? 1 : 0)
        let inImage = cIn * h * w, outImage = cOut * h * w
        Parallel.workers(workers) { i in
            let r = shares[i]
            guard !r.isEmpty else { return }
            hd_winograd_conv_bf16(output + r.lowerBound * outImage, input + r.lowerBound * inImage, packed, bias, r.count,
                                  cIn, cOut, h, w, accumulate ? 1 : 0, scratch + words + i * per)
        }
    }
}
