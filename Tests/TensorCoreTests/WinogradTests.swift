import Testing
@testable import TensorCore

/// Calls body(output index, input index, weight index) for every product of a 3x3, stride-1, padding-1 convolution
/// of x (n, cIn, h, w) with w (cOut, cIn, 3, 3): the one loop both references below run.
private func forEachProduct(n: Int, cIn: Int, cOut: Int, h: Int, wd: Int, _ body: (Int, Int, Int) -> Void) {
    for img in 0..<n {
        for k in 0..<cOut {
            for oy in 0..<h {
                for ox in 0..<wd {
                    for c in 0..<cIn {
                        for a in 0..<3 where oy + a - 1 >= 0 && oy + a - 1 < h {
                            for bb in 0..<3 where ox + bb - 1 >= 0 && ox + bb - 1 < wd {
                                body(((img * cOut + k) * h + oy) * wd + ox, ((img * cIn + c) * h + oy + a - 1) * wd + ox + bb - 1,
                                     ((k * cIn + c) * 3 + a) * 3 + bb)
                            }
                        }
                    }
                }
            }
        }
    }
}

/// y = conv(x, w) + b, in Double: the reference.
private func referenceConv3x3(_ x: [Double], _ w: [Double], _ b: [Double]?, n: Int, cIn: Int, cOut: Int, h: Int, wd: Int) -> [Double] {
    var y = [Double](repeating: 0, count: n * cOut * h * wd)
    if let b { for i in y.indices { y[i] = b[(i / (h * wd)) % cOut] } }
    forEachProduct(n: n, cIn: cIn, cOut: cOut, h: h, wd: wd) { yi, xi, wi in y[yi] += x[xi] * w[wi] }
    return y
}

/// The input gradient of that convolution for the output gradient g: dx (n, cIn, h, w).
private func referenceInputGradient(_ g: [Double], _ w: [Double], n: Int, cIn: Int, cOut: Int, h: Int, wd: Int) -> [Double] {
    var dx = [Double](repeating: 0, count: n * cIn * h * wd)
    forEachProduct(n: n, cIn: cIn, cOut: cOut, h: h, wd: wd) { yi, xi, wi in dx[xi] += g[yi] * w[wi] }
    return dx
}

@Suite("Winograd F(2x2, 3x3), bfloat16", .enabled(if: Winograd.isAvailable, "this CPU has no AVX512-BF16: the Winograd kernels do not run"))
struct WinogradTests {
    /// (n, cIn, cOut, h, w): even and odd maps (a lone row or column, 7x7 as layer4's), odd channel counts (an input
    /// channel paired with zeros, output channels past a block of 8), groups of images that fill several vectors.
    static let shapes: [(Int, Int, Int, Int, Int)] = [
        (1, 1, 1, 1, 1), (2, 3, 5, 2, 3), (3, 8, 16, 7, 7), (5, 17, 9, 5, 9), (2, 4, 33, 17, 3), (17, 6, 8, 4, 4),
        (2, 16, 8, 14, 14), (1, 5, 7, 1, 40), (4, 2, 3, 30, 2),
    ]

    /// Quarter-integer inputs and integer weights: every transformed value is exact in bfloat16 and every sum exact in
    /// float32, so the kernels must reproduce the float64 convolution exactly, whatever the layout and the order.
    @Test("forward and input gradient equal the float64 convolution exactly on values bfloat16 holds, at 1, 2 and 3 threads",
          arguments: shapes.indices)
    func exactOnRepresentableValues(_ index: Int) {
        let (n, cIn, cOut, h, w) = Self.shapes[index]
        var rng = SeededRNG(seed: UInt64(100 + index))
        let x = (0..<(n * cIn * h * w)).map { _ in Double(Int(rng.next() % 9) - 4) / 4 }
        let wt = (0..<(cOut * cIn * 9)).map { _ in Double(Int(rng.next() % 5) - 2) }
        let b = (0..<cOut).map { _ in Double(Int(rng.next() % 9) - 4) / 4 }
        let g = (0..<(n * cOut * h * w)).map { _ in Double(Int(rng.next() % 9) - 4) / 4 }
        let prior = (0..<(n * cIn * h * w)).map { _ in Double(Int(rng.next() % 9) - 4) / 8 }
        let s = Conv2dShape(n: n, cIn: cIn, h: h, w: w, cOut: cOut, kernel: 3, stride: 1, padding: 1)
        let expectY = referenceConv3x3(x, wt, b, n: n, cIn: cIn, cOut: cOut, h: h, wd: w)
        let expectDx = zip(prior, referenceInputGradient(g, wt, n: n, cIn: cIn, cOut: cOut, h: h, wd: w)).map { $0 + $1 }
        let xb = Buffer<Float>(x.map(Float.init)), wb = Buffer<Float>(wt.map(Float.init)), bb = Buffer<Float>(b.map(Float.init))
        let gb = Buffer<Float>(g.map(Float.init))
        for width in [1, 2, 3] {
            let y = Buffer<Float>(count: n * cOut * h * w), dx = Buffer<Float>(prior.map(Float.init))
            let ws = Workspace<Float>()
            y.pointer.update(repeating: .nan, count: y.count)    // overwritten, never read
            Parallel.withWidth(width) {
                Winograd.forward(output: y.pointer, input: xb.pointer, weight: wb.pointer, bias: bb.pointer, shape: s, workspace: ws)
                Winograd.inputGradient(gradInput: dx.pointer, gradOutput: gb.pointer, weight: wb.pointer, shape: s, workspace: ws)
            }
            let yErrors = zip(y.array, expectY).filter { Double($0) != $1 }.count
            let dxErrors = zip(dx.array, expectDx).filter { Double($0) != $1 }.count
            #expect(yErrors == 0, "forward \(s), \(width) thread(s): \(yErrors) of \(y.count) values differ")
            #expect(dxErrors == 0, "input gradient \(s), \(width) thread(s): \(dxErrors) of \(dx.count) values differ")
        }
    }

    /// Random values: the error is bfloat16 rounding of the transformed operands, a small fraction of the outputs' scale.
    @Test("forward and input gradient within bfloat16 rounding of the float64 convolution on random values")
    func randomValues() {
        let (n, cIn, cOut, h, w) = (3, 32, 24, 11, 14)
        var rng = SeededRNG(seed: 7)
        let x = rng.values(n * cIn * h * w), wt = rng.values(cOut * cIn * 9, scale: 0.1), g = rng.values(n * cOut * h * w)
        let s = Conv2dShape(n: n, cIn: cIn, h: h, w: w, cOut: cOut, kernel: 3, stride: 1, padding: 1)
        let expectY = referenceConv3x3(x, wt, nil, n: n, cIn: cIn, cOut: cOut, h: h, wd: w)
        let expectDx = referenceInputGradient(g, wt, n: n, cIn: cIn, cOut: cOut, h: h, wd: w)
        let xb = Buffer<Float>(x.map(Float.init)), wb = Buffer<Float>(wt.map(Float.init)), gb = Buffer<Float>(g.map(Float.init))
        let y = Buffer<Float>(count: n * cOut * h * w), dx = Buffer<Float>(count: n * cIn * h * w)
        dx.pointer.update(repeating: 0, count: dx.count)
        let ws = Workspace<Float>()
        Winograd.forward(output: y.pointer, input: xb.pointer, weight: wb.pointer, bias: nil, shape: s, workspace: ws)
        Winograd.inputGradient(gradInput: dx.pointer, gradOutput: gb.pointer, weight: wb.pointer, shape: s, workspace: ws)
        for (got, want, name) in [(y.array, expectY, "forward"), (dx.array, expectDx, "input gradient")] {
            let scale = want.map(abs).max()!
            let err = zip(got, want).map { abs(Double($0) - $1) }.max()!
            // bfloat16 keeps 8 significant bits (relative rounding 2^-9); a few percent of the scale at most.
            #expect(err < 0.02 * scale, "\(name): largest error \(err) against outputs up to \(scale)")
            #expect(err > 0, "\(name): bfloat16 operands cannot reproduce random float64 values exactly")
        }
    }
}

// In the bf16-mixed suite, which runs one test at a time: its tests force the emulation (no Winograd) for a while.
extension BF16Tests {
    @Test("under bf16-mixed `automatic` runs Winograd for the forward and input gradient of 3x3 convolutions of 64 channels or more on maps of 4 px or more, the weight gradient as before; not for 32 channels, 2x2 maps or float32",
          .enabled(if: Winograd.isAvailable, "this CPU has no AVX512-BF16: the Winograd kernels do not run"))
    func winogradDispatch() {
        func pass(_ s: Conv2dShape, _ algorithm: ConvAlgorithm, _ precision: MatmulPrecision = .bf16Mixed) -> [[Float]] {
            var rng = SeededRNG(seed: 3)
            let x = Buffer<Float>(rng.values(s.inputCount).map(Float.init)), w = Buffer<Float>(rng.values(s.weightCount, scale: 0.1).map(Float.init))
            let g = Buffer<Float>(rng.values(s.outputCount).map(Float.init))
            let y = Buffer<Float>(count: s.outputCount), dx = Buffer<Float>(count: s.inputCount), dw = Buffer<Float>(count: s.weightCount)
            dx.pointer.update(repeating: 0, count: dx.count); dw.pointer.update(repeating: 0, count: dw.count)
            let ws = Workspace<Float>()
            BF16GEMM.$scoped.withValue(precision) {
                Parallel.withWidth(2) {
                    Conv2d.forward(output: y.pointer, input: x.pointer, weight: w.pointer, bias: nil, shape: s, workspace: ws, algorithm: algorithm)
                    Conv2d.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: nil, gradOutput: g.pointer, input: x.pointer,
                                    weight: w.pointer, shape: s, workspace: ws, algorithm: algorithm)
                }
            }
            return [y.array, dx.array, dw.array]
        }
        let wide = Conv2dShape(n: 3, cIn: 64, h: 6, w: 7, cOut: 72, kernel: 3, stride: 1, padding: 1)
        let automatic = pass(wide, .automatic), winograd = pass(wide, .winograd), direct = pass(wide, .direct)
        #expect(automatic == winograd, "automatic took Winograd for \(wide)")
        #expect(automatic[0] != direct[0] && automatic[1] != direct[1], "Winograd's sums are not the direct kernel's")
        #expect(automatic[2] == pass(wide, .im2colGEMM)[2], "the weight gradient as `automatic` without Winograd (im2col on a 7 px map)")
        for s in [Conv2dShape(n: 2, cIn: 32, h: 8, w: 8, cOut: 64, kernel: 3, stride: 1, padding: 1),
                  Conv2dShape(n: 2, cIn: 64, h: 2, w: 2, cOut: 64, kernel: 3, stride: 1, padding: 1)] {
            #expect(pass(s, .automatic) != pass(s, .winograd), "\(s): not Winograd")
        }
        #expect(pass(wide, .automatic, .float32) == pass(wide, .winograd, .float32), "float32: Winograd never runs, the choice is `automatic`'s")
        #expect(pass(wide, .automatic, .float32) != automatic, "float32 is not bf16-mixed")
    }
}
