// The direct convolution (AVX-512) against im2col + GEMM, which is gradient-checked and matched to PyTorch.
import Testing
@testable import TensorCore

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
