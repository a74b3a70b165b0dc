// bf16-mixed: the rounding to bfloat16, the AVX512-BF16 GEMM against a double-precision sum of the rounded operands
// and against the emulation other CPUs run, and which convolutions run in bfloat16.
import CKernels
import Testing
@testable import TensorCore

@Suite("bfloat16 GEMM and bf16-mixed convolutions", .serialized)
struct BF16Tests {
    /// op(X) of a row-major matrix stored with leading dimension `ld`, as a Double.
    static func element(_ x: [Float], _ ld: Int, trans: Bool, _ r: Int, _ c: Int) -> Double {
        Double(trans ? x[c * ld + r] : x[r * ld + c])
    }

    /// alpha * op(A) op(B) + beta * C in Double, over operands `a`, `b` as given (round them first for bf16).
    static func reference(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: [Float], lda: Int,
                          b: [Float], ldb: Int, beta: Float, c: [Float], ldc: Int) -> [Float] {
        var out = c
        for i in 0..<m {
            for j in 0..<n {
                var acc = 0.0
                for p in 0..<k { acc += element(a, lda, trans: transA, i, p) * element(b, ldb, trans: transB, p, j) }
                out[i * ldc + j] = Float(Double(alpha) * acc + (beta == 0 ? 0 : Double(beta) * Double(c[i * ldc + j])))
            }
        }
        return out
    }

    @Test("gradient compression: widening bfloat16 is exact, hd_bf16_add rounds the float sum as the convolutions' conversion, on random and special values")
    func gradientCompression() {
        var g = SplitMix64(seed: 17)
        var values: [Float] = (0..<997).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: g.next())) }
        values += [0, -0, 1, 1 + 0x1p-8, 1 + 3 * 0x1p-8, .infinity, -.infinity, .nan, Float(bitPattern: 0x0001_2345),
                   Float(bitPattern: 0x8000_0001), .greatestFiniteMagnitude, 0x1p-126]
        /// bf16(x) for each x, by the conversion the convolutions use.
        func rounded(_ x: [Float]) -> [UInt16] {
            var out = [UInt16](repeating: 0, count: x.count)
            out.withUnsafeMutableBytes { hd_bf16_halves($0.baseAddress!, x, x.count) }
            return out
        }
        let halves = rounded(values)
        var wide = [Float](repeating: 0, count: values.count)
        hd_bf16_decompress(&wide, halves, values.count)
        #expect(zip(wide, halves).allSatisfy { $0.0.bitPattern == UInt32($0.1) << 16 }, "widening puts the 16 bits on top")
        // The sum of two compressed vectors: bf16(float(a) + float(b)), including NaN and infinities.
        let other = rounded(values.reversed())
        var sum = other
        hd_bf16_add(halves, &sum, values.count)
        let floatSums = (0..<values.count).map { Float(bitPattern: UInt32(halves[$0]) << 16) + Float(bitPattern: UInt32(other[$0]) << 16) }
        let expected = rounded(floatSums)
        #expect(sum == expected)
        #expect(sum != other, "the sum changed the values")
    }

    @Test("rounding to bfloat16: nearest, ties to even, subnormals to signed zero, NaN kept, overflow to infinity")
    func rounding() {
        let cases: [(Float, Float)] = [
            (1, 1), (-2.5, -2.5),
            (1 + 0x1p-8, 1),                       // halfway, 1 is even
            (1 + 3 * 0x1p-8, 1 + 0x1p-6),          // halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even)
            (1 + 0x1p-8 + 0x1p-20, 1 + 0x1p-7),    // just above halfway
            (0.1, 0.10009765625), (-3.14159265, -3.140625),
            (Float.greatestFiniteMagnitude, .infinity), (Float(bitPattern: 0x0001_2345), 0),   // a subnormal
        ]
        for (x, expected) in cases {
            #expect(BF16GEMM.round(x) == expected, "round(\(x)) = \(BF16GEMM.round(x)), expected \(expected)")
        }
        let negativeSubnormal = Float(bitPattern: 0x8001_2345)
        #expect(BF16GEMM.round(negativeSubnormal) == 0 && BF16GEMM.round(negativeSubnormal).sign == .minus, "a negative subnormal keeps its sign")
        #expect(BF16GEMM.round(.nan).isNaN && BF16GEMM.round(-.infinity) == -.infinity)
        // Every rounded value has 8 significant bits: the low 16 bits of its float32 pattern are zero.
        var rng = SeededRNG(seed: 3)
        for v in rng.values(1000, scale: 1000) {
            #expect(BF16GEMM.round(Float(v)).bitPattern & 0xFFFF == 0)
            #expect(abs(BF16GEMM.round(Float(v)) - Float(v)) <= abs(Float(v)) * 0x1p-8)
        }
    }

    static let shapes: [(m: Int, n: Int, k: Int)] = [(1, 1, 1), (1, 1, 2), (8, 48, 256), (9, 49, 257), (37, 101, 33),
                                                     (64, 130, 576), (130, 97, 600), (17, 3100, 5)]

    /// Runs `BF16GEMM.gemm` for every transposition and shape with alpha 0.75 and beta 0 (C full of NaN: must not be
    /// read) or 0.5, and compares with the Double sum of the rounded operands.
    func checkGEMM(emulated: Bool) {
        let saved = BF16GEMM.forceEmulation
        BF16GEMM.forceEmulation = emulated
        defer { BF16GEMM.forceEmulation = saved }
        #expect(BF16GEMM.native == !emulated)
        var rng = SeededRNG(seed: 17)
        for (m, n, k) in Self.shapes {
            for (transA, transB) in [(false, false), (true, false), (false, true), (true, true)] {
                for beta: Float in [0, 0.5] {
                    // Leading dimensions larger than the rows, so strides are exercised.
                    let lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 2, ldc = n + 1
                    let a = rng.values((transA ? k : m) * lda).map(Float.init), b = rng.values((transB ? n : k) * ldb).map(Float.init)
                    let c0 = beta == 0 ? [Float](repeating: .nan, count: m * ldc) : rng.values(m * ldc).map(Float.init)
                    var c = c0
                    BF16GEMM.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.75, a: a, lda: lda, b: b, ldb: ldb,
                                  beta: beta, c: &c, ldc: ldc)
                    let expected = Self.reference(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.75,
                                                  a: a.map(BF16GEMM.round), lda: lda, b: b.map(BF16GEMM.round), ldb: ldb,
                                                  beta: beta, c: c0, ldc: ldc)
                    let unrounded = Self.reference(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.75, a: a, lda: lda,
                                                   b: b, ldb: ldb, beta: beta, c: c0, ldc: ldc)
                    let label = "m \(m) n \(n) k \(k) transA \(transA) transB \(transB) beta \(beta), emulated \(emulated)"
                    // Columns past n (the +1 of ldc) are never written.
                    for i in 0..<m where !(c[i * ldc + n].bitPattern == c0[i * ldc + n].bitPattern) {
                        Issue.record("\(label): row \(i) written past column n"); break
                    }
                    let keep = (0..<(m * ldc)).filter { $0 % ldc < n }
                    let got = keep.map { c[$0] }, want = keep.map { expected[$0] }
                    #expect(!got.contains { $0.isNaN }, "\(label): beta 0 read C")
                    #expect(relativeError(got, want) < 2e-6, "\(label): error \(relativeError(got, want)) against the rounded operands' sum")
                    if k >= 33 {
                        // The operands really were rounded: the float32 product differs by about 2^-9 relative per term.
                        #expect(relativeError(got, keep.map { unrounded[$0] }) > 1e-5, "\(label): no sign of bfloat16 rounding")
                    }
                }
            }
        }
    }

    @Test("AVX512-BF16 GEMM equals the double-precision sum of the bfloat16-rounded operands, every transposition and edge",
          .enabled(if: BF16GEMM.cpuHasKernel, "this CPU has no AVX512-BF16: the emulation test covers the path it runs"))
    func nativeGEMM() { checkGEMM(emulated: false) }

    @Test("the multiply-add roof loops of `histodistill-bench --peak` run every round: each lane gains 2^-13 (bf16 pairs) or 2^-14 (float32) per round; -1 where the CPU lacks the instructions")
    func peakLoops() {
        // 1000 rounds x 12 accumulators x 16 lanes, each product 1 x 2^-14: exact in float32.
        let bf16 = hd_peak_loop(1, 1000), fp32 = hd_peak_loop(0, 1000), none = hd_peak_loop(0, 0)
        let lanes: Double = 1000 * 12 * 16 / 16384
        let expectedBF16: Double = BF16GEMM.cpuHasKernel ? 2 * lanes : -1
        let expectedFP32: Double = CPUCapabilities.current.avx512 ? lanes : -1
        let expectedNone: Double = CPUCapabilities.current.avx512 ? 0 : -1
        #expect(bf16 == expectedBF16, "\(bf16)")
        #expect(fp32 == expectedFP32, "\(fp32)")
        #expect(none == expectedNone)
    }

    @Test("emulated bf16 GEMM (other CPUs) equals the same sum")
    func emulatedGEMM() { checkGEMM(emulated: true) }

    @Test("AVX512-BF16 and emulation give the same bits for single products, ties and NaN included",
          .enabled(if: BF16GEMM.cpuHasKernel, "this CPU has no AVX512-BF16"))
    func singleProducts() {
        let values: [Float] = [1 + 0x1p-8, 1 + 3 * 0x1p-8, -0.1, 3.14159265, .nan, Float(bitPattern: 0x0001_2345), 65504.7, -7.0000005, 0.33333334]
        let saved = BF16GEMM.forceEmulation
        defer { BF16GEMM.forceEmulation = saved }
        for x in values {
            for y in values {
                var out: [Float] = []
                for emulated in [false, true] {
                    BF16GEMM.forceEmulation = emulated
                    var c: [Float] = [0]
                    BF16GEMM.gemm(transA: false, transB: false, m: 1, n: 1, k: 1, alpha: 1, a: [x], lda: 1, b: [y], ldb: 1,
                                  beta: 0, c: &c, ldc: 1)
                    out.append(c[0])
                }
                #expect(out[0].bitPattern == out[1].bitPattern || (out[0].isNaN && out[1].isNaN),
                        "\(x) * \(y): AVX512-BF16 \(out[0]), emulated \(out[1])")
                #expect(out[1] == BF16GEMM.round(x) * BF16GEMM.round(y) || out[1].isNaN)
            }
        }
    }

    /// Forward and backward of a conv at `precision` (scoped), on `threads` threads.
    static func conv(_ s: Conv2dShape, precision: MatmulPrecision, threads: Int, seed: UInt64 = 5,
                     algorithm: ConvAlgorithm = .automatic) -> [[Float]] {
        var rng = SeededRNG(seed: seed)
        let x = Buffer<Float>(rng.values(s.inputCount).map(Float.init)), w = Buffer<Float>(rng.values(s.weightCount, scale: 0.2).map(Float.init))
        let dy = Buffer<Float>(rng.values(s.outputCount).map(Float.init))
        let y = Buffer<Float>(count: s.outputCount), dx = Buffer<Float>(count: s.inputCount), dw = Buffer<Float>(count: s.weightCount)
        BF16GEMM.$scoped.withValue(precision) {
            Parallel.withWidth(threads) {
                let ws = Workspace<Float>()
                Conv2d.forward(output: y.pointer, input: x.pointer, weight: w.pointer, bias: nil, shape: s, workspace: ws, algorithm: algorithm)
                Conv2d.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: nil, gradOutput: dy.pointer,
                                input: x.pointer, weight: w.pointer, shape: s, workspace: ws, algorithm: algorithm)
            }
        }
        return [y.array, dx.array, dw.array]
    }

    @Test("bf16-mixed convolutions through the GEMM: 64 or more output channels in bfloat16 (close to float32, not equal); narrower ones are not GEMM-bfloat16")
    func convolutions() {
        let wide = Conv2dShape(n: 3, cIn: 16, h: 20, w: 20, cOut: 64, kernel: 3, padding: 1)
        let strided = Conv2dShape(n: 2, cIn: 24, h: 9, w: 9, cOut: 72, kernel: 3, stride: 2, padding: 1)
        let narrow = Conv2dShape(n: 3, cIn: 16, h: 20, w: 20, cOut: 32, kernel: 3, padding: 1)
        BF16GEMM.$scoped.withValue(.bf16Mixed) {
            #expect(Conv2d.usesBF16(wide) && Conv2d.usesBF16(strided) && !Conv2d.usesBF16(narrow))
            #expect(!DirectConv.chooses(.automatic, strided), "a 5 px map: im2col + GEMM")
        }
        #expect(!Conv2d.usesBF16(wide), "float32 unless asked (here: no scoped precision, process default 32-true)")
        for s in [wide, strided] {
            for threads in [1, 2] {
                let full = Self.conv(s, precision: .float32, threads: threads, algorithm: .im2colGEMM)
                let half = Self.conv(s, precision: .bf16Mixed, threads: threads, algorithm: .im2colGEMM)
                for (part, name) in ["output", "input gradient", "weight gradient"].enumerated() {
                    let err = relativeError(half[part], full[part])
                    #expect(err < 1e-2 && err > 1e-5, "\(name) of \(s), \(threads) threads: bf16-mixed vs float32 error \(err)")
                }
            }
        }
        #expect(!Conv2d.usesBF16(narrow))
    }

    /// The forward, input gradient and weight gradient of `s` in Double from the bfloat16-rounded operands of `conv(s, seed: 5)`.
    static func roundedReference(_ s: Conv2dShape, seed: UInt64 = 5) -> [[Float]] {
        var rng = SeededRNG(seed: seed)
        func rounded(_ v: [Double]) -> Buffer<Double> { Buffer<Double>(v.map { Double(BF16GEMM.round(Float($0))) }) }
        let x = rounded(rng.values(s.inputCount)), w = rounded(rng.values(s.weightCount, scale: 0.2).map { Double(Float($0)) })
        let dy = rounded(rng.values(s.outputCount))
        let y = Buffer<Double>(count: s.outputCount), dx = Buffer<Double>(count: s.inputCount), dw = Buffer<Double>(count: s.weightCount)
        let ws = Workspace<Double>()
        Conv2d.forward(output: y.pointer, input: x.pointer, weight: w.pointer, bias: nil, shape: s, workspace: ws)
        Conv2d.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: nil, gradOutput: dy.pointer,
                        input: x.pointer, weight: w.pointer, shape: s, workspace: ws)
        return [y.array.map(Float.init), dx.array.map(Float.init), dw.array.map(Float.init)]
    }

    @Test("bf16-mixed in the direct kernel (stem, layer1): forward, input and weight gradients are float32 sums of the bfloat16-rounded operands, natively and emulated",
          .enabled(if: DirectConv.isAvailable, "this CPU has no AVX-512: the direct kernel does not run"))
    func directConvolutions() {
        let shapes = [
            Conv2dShape(n: 2, cIn: 16, h: 20, w: 20, cOut: 32, kernel: 3, padding: 1),             // layer1-like
            Conv2dShape(n: 2, cIn: 3, h: 40, w: 40, cOut: 32, kernel: 7, stride: 2, padding: 3),   // the stem: 3 channels, stride 2
            Conv2dShape(n: 3, cIn: 5, h: 30, w: 31, cOut: 13, kernel: 3, stride: 2, padding: 1),   // odd channels both ways
            Conv2dShape(n: 1, cIn: 4, h: 48, w: 47, cOut: 8, kernel: 3, padding: 1),               // weight gradient in chunks
            Conv2dShape(n: 2, cIn: 32, h: 16, w: 16, cOut: 64, kernel: 3, padding: 1),             // wide, on a 16 px map
        ]
        for s in shapes {
            BF16GEMM.$scoped.withValue(.bf16Mixed) {
                #expect(DirectConv.chooses(.automatic, s) && Conv2d.directUsesBF16(s), "\(s)")
            }
            #expect(!Conv2d.directUsesBF16(s), "float32 unless asked")
            let full = Self.conv(s, precision: .float32, threads: 2), reference = Self.roundedReference(s)
            let saved = BF16GEMM.forceEmulation
            defer { BF16GEMM.forceEmulation = saved }
            for emulated in BF16GEMM.cpuHasKernel ? [false, true] : [true] {
                BF16GEMM.forceEmulation = emulated
                let half = Self.conv(s, precision: .bf16Mixed, threads: 2)
                let what = "\(s), \(emulated ? "emulated" : "AVX512-BF16")"
                for (part, name) in ["output", "input gradient", "weight gradient"].enumerated() {
                    let err = relativeError(half[part], reference[part]), rounding = relativeError(half[part], full[part])
                    #expect(err < 2e-6 && rounding > 1e-4, "\(name) of \(what): \(err) from the rounded operands' sum, \(rounding) from float32")
                }
            }
        }
    }
}
