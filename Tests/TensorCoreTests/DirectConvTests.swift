// The direct convolution (AVX-512) against im2col + GEMM, which is gradient-checked and matched to PyTorch.
import Testing
@testable import TensorCore
import CKernels

/// A conv geometry for the comparison: (n, cIn, h, w, cOut, kernel (h, w), stride, padding (h, w)).
struct DirectCase: CustomStringConvertible, Sendable {
    var n: Int, cIn: Int, h: Int, w: Int, cOut: Int, k: (Int, Int), stride: Int, pad: (Int, Int)
    var shape: Conv2dShape {
        Conv2dShape(n: n, cIn: cIn, h: h, w: w, cOut: cOut, kernel: k, stride: (stride, stride), padding: pad)
    }
    var description: String { shape.description }
}

let directCases: [DirectCase] = [
    DirectCase(n: 2, cIn: 32, h: 20, w: 20, cOut: 32, k: (3, 3), stride: 1, pad: (1, 1)),   // a layer1 block
    DirectCase(n: 3, cIn: 3, h: 30, w: 27, cOut: 10, k: (7, 7), stride: 2, pad: (3, 3)),    // the stem, odd sizes
    DirectCase(n: 2, cIn: 16, h: 15, w: 17, cOut: 24, k: (3, 3), stride: 2, pad: (1, 1)),   // stride-2 3x3, odd
    DirectCase(n: 2, cIn: 12, h: 14, w: 14, cOut: 20, k: (1, 1), stride: 2, pad: (0, 0)),   // downsample
    DirectCase(n: 1, cIn: 5, h: 9, w: 31, cOut: 3, k: (1, 1), stride: 1, pad: (0, 0)),      // pointwise
    DirectCase(n: 4, cIn: 7, h: 6, w: 5, cOut: 9, k: (3, 3), stride: 1, pad: (0, 0)),       // valid conv, tiny map
    DirectCase(n: 2, cIn: 4, h: 11, w: 13, cOut: 17, k: (5, 3), stride: 1, pad: (2, 0)),    // rectangular kernel
    DirectCase(n: 2, cIn: 6, h: 10, w: 12, cOut: 8, k: (4, 4), stride: 2, pad: (3, 1)),     // even kernel, big pad
    DirectCase(n: 3, cIn: 9, h: 7, w: 7, cOut: 40, k: (3, 3), stride: 1, pad: (1, 1)),      // 7x7 map, 40 outputs
    DirectCase(n: 2, cIn: 5, h: 9, w: 70, cOut: 8, k: (3, 3), stride: 2, pad: (0, 0)),      // wide rows, even padding
    DirectCase(n: 2, cIn: 3, h: 8, w: 67, cOut: 16, k: (3, 5), stride: 2, pad: (1, 1)),     // wide rows, odd padding
]

@Suite("Direct convolution", .enabled(if: DirectConv.isAvailable, "this CPU has no AVX-512: the direct kernel is never used here (skipped)"))
struct DirectConvTests {
    @Test("direct forward, weight and input gradients equal im2col + GEMM (1-3 threads)", arguments: directCases)
    func matchesGEMM(_ c: DirectCase) throws {
        let s = c.shape
        #expect(DirectConv.chooses(.direct, s))
        var rng = SeededRNG(seed: 21)
        func random(_ n: Int) -> Buffer<Float> { Buffer(rng.values(n).map(Float.init)) }
        let x = random(s.inputCount), w = random(s.weightCount), b = random(s.cOut), dy = random(s.outputCount)
        // Gradients start non-zero: backward must accumulate.
        let dx0 = random(s.inputCount), dw0 = random(s.weightCount)
        func run(_ algorithm: ConvAlgorithm) -> [[Float]] {
            let ws = Workspace<Float>()
            let y = Buffer<Float>(count: s.outputCount)
            let dx = Buffer<Float>(dx0.array), dw = Buffer<Float>(dw0.array), db = Buffer<Float>(count: s.cOut)
            Conv2d.forward(output: y.pointer, input: x.pointer, weight: w.pointer, bias: b.pointer, shape: s,
                           workspace: ws, algorithm: algorithm)
            Conv2d.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: db.pointer, gradOutput: dy.pointer,
                            input: x.pointer, weight: w.pointer, shape: s, workspace: ws, algorithm: algorithm)
            return [y.array, dx.array, dw.array, db.array]
        }
        let saved = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: saved) }
        BLAS.setThreadCount(1)
        let reference = run(.im2colGEMM)
        for threads in [1, 2, 3] {
            BLAS.setThreadCount(threads)
            let direct = run(.direct)
            for (part, name) in ["output", "input gradient", "weight gradient", "bias gradient"].enumerated() {
                #expect(relativeError(direct[part], reference[part]) < 1e-5, "\(name) of \(s), \(threads) threads")
            }
        }
    }

    @Test("without an input gradient (the stem), the weight gradient still matches im2col + GEMM")
    func noInputGradient() throws {
        let s = Conv2dShape(n: 2, cIn: 3, h: 16, w: 16, cOut: 8, kernel: 7, stride: 2, padding: 3)
        var rng = SeededRNG(seed: 5)
        let x = Buffer<Float>(rng.values(s.inputCount).map(Float.init)), w = Buffer<Float>(rng.values(s.weightCount).map(Float.init))
        let dy = Buffer<Float>(rng.values(s.outputCount).map(Float.init))
        var results: [[Float]] = []
        for algorithm in [ConvAlgorithm.im2colGEMM, .direct] {
            let dw = Buffer<Float>(count: s.weightCount)
            Conv2d.backward(gradInput: nil, gradWeight: dw.pointer, gradBias: nil, gradOutput: dy.pointer, input: x.pointer,
                            weight: w.pointer, shape: s, workspace: Workspace<Float>(), algorithm: algorithm)
            results.append(dw.array)
        }
        #expect(relativeError(results[1], results[0]) < 2e-5)
        #expect(results[1].contains { $0 != 0 })
    }

    @Test("bfloat16 grids written straight from the maps equal the float32 grids converted, bit for bit (input words and halves, gradient grids, halves and words)",
          arguments: directCases + [DirectCase(n: 1, cIn: 3, h: 40, w: 40, cOut: 32, k: (7, 7), stride: 2, pad: (3, 3)),
                                    DirectCase(n: 1, cIn: 4, h: 48, w: 47, cOut: 7, k: (3, 3), stride: 1, pad: (1, 1))])
    func bf16GridsAsConverted(_ c: DirectCase) {
        let s = c.shape, plan = DirectConvPlan(s)
        var rng = SeededRNG(seed: 8)
        // Values that need rounding, ties, signed zeros and a NaN.
        var xs = rng.values(s.cIn * s.h * s.w).map { Float($0) * 3 }
        var gs = rng.values(s.cOut * s.outPlane).map { Float($0) }
        xs[0] = -0.0; xs[xs.count - 1] = Float(bitPattern: 0x3F80_8000); xs[xs.count / 2] = .nan
        gs[0] = -0.0; gs[gs.count - 1] = Float(bitPattern: 0x3F81_8000)
        let x = Buffer<Float>(xs), g = Buffer<Float>(gs)
        func bits<T>(_ raw: UnsafeMutableRawPointer, _ count: Int, as _: T.Type) -> [T] {
            Array(UnsafeBufferPointer(start: raw.bindMemory(to: T.self, capacity: count), count: count))
        }
        // Garbage first: everything the builders leave must be written by them.
        func garbage(_ count: Int) -> Buffer<Float> { Buffer<Float>([Float](repeating: Float(bitPattern: 0x7FC1_2345), count: count)) }

        let planes = garbage(plan.planesCount), words = garbage(plan.planesCount), direct = garbage(plan.planesCount)
        let scratch = garbage(plan.channelStride + 1)
        plan.buildPlanes(planes.pointer, image: x.pointer)
        plan.forwardWords(words.pointer, planes: planes.pointer)
        plan.buildForwardWords(UnsafeMutableRawPointer(direct.pointer), image: x.pointer, scratch: scratch.pointer)
        #expect(bits(UnsafeMutableRawPointer(direct.pointer), plan.planesCount, as: UInt32.self)
                == bits(UnsafeMutableRawPointer(words.pointer), plan.planesCount, as: UInt32.self), "input words of \(s)")

        let halves = garbage(plan.planesCount), directHalves = garbage(plan.planesCount)
        hd_bf16_halves(halves.pointer, planes.pointer, plan.planesCount)
        plan.buildHalves(UnsafeMutableRawPointer(directHalves.pointer), image: x.pointer)
        #expect(bits(UnsafeMutableRawPointer(directHalves.pointer), plan.planesCount, as: UInt16.self)
                == bits(UnsafeMutableRawPointer(halves.pointer), plan.planesCount, as: UInt16.self), "input halves of \(s)")

        let pad = garbage(plan.gPadCount), padHalves = garbage(plan.gPadCount), directPad = garbage(plan.gPadCount)
        plan.padGradient(pad.pointer, g.pointer)
        hd_bf16_halves(padHalves.pointer, pad.pointer, plan.gPadCount)
        plan.padGradientHalves(UnsafeMutableRawPointer(directPad.pointer), g.pointer)
        #expect(bits(UnsafeMutableRawPointer(directPad.pointer), plan.gPadCount, as: UInt16.self)
                == bits(UnsafeMutableRawPointer(padHalves.pointer), plan.gPadCount, as: UInt16.self), "padded gradient halves of \(s)")

        let padWords = garbage(plan.gPadCount), directWords = garbage(plan.gPadCount)
        plan.pairWords(padWords.pointer, planes: pad.pointer, channels: s.cOut, stride: plan.gPadStride, count: plan.gPadCount)
        plan.padGradientWords(UnsafeMutableRawPointer(directWords.pointer), g.pointer)
        #expect(bits(UnsafeMutableRawPointer(directWords.pointer), plan.gPadCount, as: UInt32.self)
                == bits(UnsafeMutableRawPointer(padWords.pointer), plan.gPadCount, as: UInt32.self), "padded gradient words of \(s)")

        let gridCount = s.cOut * plan.outLd
        let grid = garbage(gridCount), gridHalves = garbage(gridCount), directGrid = garbage(gridCount)
        plan.gridGradient(grid.pointer, g.pointer)
        hd_bf16_halves(gridHalves.pointer, grid.pointer, gridCount)
        plan.gridGradientHalves(UnsafeMutableRawPointer(directGrid.pointer), g.pointer)
        #expect(bits(UnsafeMutableRawPointer(directGrid.pointer), gridCount, as: UInt16.self)
                == bits(UnsafeMutableRawPointer(gridHalves.pointer), gridCount, as: UInt16.self), "gradient grid halves of \(s)")
    }

    @Test("strided bfloat16 conversions: every length and step 1-3 equal the one-value rounding, reading nothing past the last element used")
    func stridedConversions() {
        var rng = SeededRNG(seed: 3)
        for step in 1...3 {
            for n in 0...40 {
                // The last element used is the buffer's last: a read past it would touch unmapped memory only by luck,
                // so the values past it are checked instead by giving them NaN and expecting no NaN out.
                let used = n == 0 ? 0 : (n - 1) * step + 1
                let lo = rng.values(used).map { Float($0) * 5 }, hi = rng.values(used).map { Float($0) }
                let loBuf = Buffer<Float>(lo + [Float](repeating: .nan, count: 40)), hiBuf = Buffer<Float>(hi + [Float](repeating: .nan, count: 40))
                var halves = [UInt16](repeating: 0xABCD, count: n + 16), words = [UInt32](repeating: 0xABCD_ABCD, count: n + 16)
                hd_bf16_halves_strided(&halves, loBuf.pointer, n, step)
                hd_bf16_pair_words_strided(&words, loBuf.pointer, hiBuf.pointer, n, step)
                for k in 0..<n {
                    let l = BF16GEMM.round(lo[k * step]).bitPattern >> 16, h = BF16GEMM.round(hi[k * step]).bitPattern >> 16
                    #expect(halves[k] == UInt16(l), "step \(step), n \(n), k \(k)")
                    #expect(words[k] == l | h << 16, "step \(step), n \(n), k \(k)")
                }
                #expect(halves[n...].allSatisfy { $0 == 0xABCD } && words[n...].allSatisfy { $0 == 0xABCD_ABCD },
                        "nothing written past n = \(n), step \(step)")
            }
        }
        var lows = [UInt32](repeating: 1, count: 20)
        let ones = Buffer<Float>([Float](repeating: 1, count: 20))
        hd_bf16_pair_words_strided(&lows, ones.pointer, nil, 20, 1)
        #expect(lows.allSatisfy { $0 == 0x3F80 }, "no high source: upper halves 0")
    }

    @Test("automatic choice: direct on wide maps, im2col + GEMM on narrow maps, pointwise convs and Double")
    func automaticChoice() {
        let wide = Conv2dShape(n: 32, cIn: 32, h: 56, w: 56, cOut: 32, kernel: 3, stride: 1, padding: 1)
        let narrow = Conv2dShape(n: 32, cIn: 256, h: 7, w: 7, cOut: 256, kernel: 3, stride: 1, padding: 1)
        let pointwise = Conv2dShape(n: 32, cIn: 64, h: 56, w: 56, cOut: 64, kernel: 1)
        let stride3 = Conv2dShape(n: 2, cIn: 3, h: 30, w: 30, cOut: 8, kernel: 3, stride: 3)
        #expect(DirectConv.chooses(.automatic, wide) == DirectConv.isAvailable)
        #expect(!DirectConv.chooses(.automatic, narrow))
        #expect(!DirectConv.chooses(.automatic, pointwise))
        #expect(!DirectConv.chooses(.direct, stride3))
        #expect(!DirectConv.chooses(.im2colGEMM, wide))
    }
}
