// Convolutions on maps smaller than their kernel, run as dense layers (DenseConv), against im2col + GEMM.
import Testing
@testable import TensorCore

@Suite("Dense-layer convolutions on small maps", .serialized)
struct DenseConvTests {
    static let cases: [Conv2dShape] = [
        Conv2dShape(n: 5, cIn: 16, h: 1, w: 1, cOut: 24, kernel: 3, padding: 1),               // a 1x1 map: the centre tap
        Conv2dShape(n: 4, cIn: 12, h: 2, w: 2, cOut: 20, kernel: 3, stride: 2, padding: 1),    // 2x2 -> 1x1, 4 taps
        Conv2dShape(n: 3, cIn: 7, h: 2, w: 1, cOut: 9, kernel: 5, padding: 2),                 // 2x1 map, 5x5 kernel
        Conv2dShape(n: 2, cIn: 5, h: 1, w: 3, cOut: 6, kernel: (3, 5), stride: (1, 2), padding: (1, 2)),   // rectangular
        Conv2dShape(n: 7, cIn: 64, h: 1, w: 1, cOut: 128, kernel: 3, padding: 1),              // deep enough for bf16-mixed
    ]

    /// Forward, input gradient (accumulated onto a non-zero start), weight gradient (likewise) and bias gradient.
    static func run<T: KernelScalar>(_ s: Conv2dShape, _: T.Type, algorithm: ConvAlgorithm, threads: Int,
                                     precision: MatmulPrecision = .float32) -> [[Double]] {
        var rng = SeededRNG(seed: 31)
        func buffer(_ n: Int) -> Buffer<T> { Buffer<T>(rng.values(n).map { T(Float($0)) }) }
        let x = buffer(s.inputCount), w = buffer(s.weightCount), b = buffer(s.cOut), dy = buffer(s.outputCount)
        let dx = buffer(s.inputCount), dw = buffer(s.weightCount), db = buffer(s.cOut)
        let y = Buffer<T>(count: s.outputCount)
        BF16GEMM.$scoped.withValue(precision) {
            Parallel.withWidth(threads) {
                let ws = Workspace<T>()
                Conv2d.forward(output: y.pointer, input: x.pointer, weight: w.pointer, bias: b.pointer, shape: s,
                               workspace: ws, algorithm: algorithm)
                Conv2d.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: db.pointer, gradOutput: dy.pointer,
                                input: x.pointer, weight: w.pointer, shape: s, workspace: ws, algorithm: algorithm)
            }
        }
        return [y, dx, dw, db].map { $0.array.map { Double($0) } }
    }

    static func maxRelative(_ a: [Double], _ b: [Double]) -> Double {
        var err = 0.0, ref = 0.0
        for i in a.indices { err = max(err, abs(a[i] - b[i])); ref = max(ref, abs(b[i])) }
        return err / max(1, ref)
    }

    @Test("forward and every gradient equal im2col + GEMM, Double and Float, 1-3 threads", arguments: cases)
    func matchesGEMM(_ s: Conv2dShape) {
        #expect(DenseConv.chooses(.automatic, s), "\(s)")
        let reference = Self.run(s, Double.self, algorithm: .im2colGEMM, threads: 1)
        let names = ["output", "input gradient", "weight gradient", "bias gradient"]
        for threads in [1, 2, 3] {
            let dense = Self.run(s, Double.self, algorithm: .automatic, threads: threads)
            let float = Self.run(s, Float.self, algorithm: .automatic, threads: threads)
            for (part, name) in names.enumerated() {
                #expect(Self.maxRelative(dense[part], reference[part]) < 1e-12, "\(name) of \(s), Double, \(threads) threads")
                #expect(Self.maxRelative(float[part], reference[part]) < 1e-5, "\(name) of \(s), Float, \(threads) threads")
            }
        }
    }

    @Test("under bf16-mixed a deep enough conv takes bfloat16 operands: close to the float32 result, not equal to it; natively and emulated")
    func bf16Mixed() {
        let s = Self.cases[4]
        #expect(BF16GEMM.$scoped.withValue(.bf16Mixed) { Conv2d.usesBF16(s) })
        let full = Self.run(s, Float.self, algorithm: .automatic, threads: 2)
        let saved = BF16GEMM.forceEmulation
        defer { BF16GEMM.forceEmulation = saved }
        for emulated in BF16GEMM.cpuHasKernel ? [false, true] : [true] {
            BF16GEMM.forceEmulation = emulated
            let dense = Self.run(s, Float.self, algorithm: .automatic, threads: 2, precision: .bf16Mixed)
            let gemm = Self.run(s, Float.self, algorithm: .im2colGEMM, threads: 2, precision: .bf16Mixed)
            for part in 0..<3 {
                let rounding = Self.maxRelative(dense[part], full[part])
                #expect(rounding > 1e-5 && rounding < 2e-2, "part \(part), emulated \(emulated): \(rounding) from float32")
                #expect(Self.maxRelative(dense[part], gemm[part]) < 1e-5, "part \(part), emulated \(emulated): as im2col's bfloat16 GEMM")
            }
        }
    }

    @Test("chosen only where W_eff is smaller than the weight: a 1x1 map or 2x2 to 1x1, not 2x2 to 2x2, not pointwise, not when asked for im2col")
    func choice() {
        let paper56 = Conv2dShape(n: 32, cIn: 256, h: 2, w: 2, cOut: 256, kernel: 3, padding: 1)    // layer4.conv2 at 56 px
        let paper28 = Conv2dShape(n: 32, cIn: 256, h: 1, w: 1, cOut: 256, kernel: 3, padding: 1)    // layer4.conv2 at 28 px
        let down28 = Conv2dShape(n: 32, cIn: 128, h: 2, w: 2, cOut: 256, kernel: 3, stride: 2, padding: 1)
        let pointwise = Conv2dShape(n: 32, cIn: 128, h: 1, w: 1, cOut: 256, kernel: 1)
        #expect(!DenseConv.chooses(.automatic, paper56))
        #expect(DenseConv.chooses(.automatic, paper28) && DenseConv.chooses(.automatic, down28))
        #expect(!DenseConv.chooses(.automatic, pointwise))
        #expect(!DenseConv.chooses(.im2colGEMM, paper28) && !DenseConv.chooses(.direct, paper28))
        // The tap map of the stride-2 case: output (0, 0) reads input (0, 0), (0, 1), (1, 0), (1, 1) through taps
        // (1, 1), (1, 2), (2, 1), (2, 2).
        #expect(DenseConv.taps(down28) == [4, 5, 7, 8])
        #expect(DenseConv.taps(paper28) == [4])
    }
}
