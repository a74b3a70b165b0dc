// The branch-free C kernels that Float32 runs (ReLU forward/backward/mask, max-pool forward) against the Swift
// loops that Double runs: same values bit for bit (NaN included) and the same argmax indices.
import Testing
@testable import TensorCore

@Suite("Float32 C kernels against the reference loops")
struct FloatKernelTests {
    /// Values with NaN, infinities, signed zeros and many ties (a coarse grid), so that the NaN rule, the
    /// first-maximum rule and the ReLU's treatment of 0 and -0 are all exercised.
    static func awkwardValues(_ n: Int, seed: UInt64) -> [Double] {
        var rng = SeededRNG(seed: seed)
        return (0..<n).map { _ in
            switch Int.random(in: 0..<40, using: &rng) {
            case 0: return .nan
            case 1: return .infinity
            case 2: return -.infinity
            case 3: return -0.0
            default: return Double(Int.random(in: -6...6, using: &rng)) / 4
            }
        }
    }

    /// The first index where the Float result differs from the Double result converted to Float (NaN must meet
    /// NaN, zeros must have the same sign), or nil when they agree everywhere.
    static func firstDifference(_ a: [Float], _ b: [Double]) -> Int? {
        precondition(a.count == b.count)
        return zip(a, b).enumerated().first { _, pair in
            let (x, y) = (pair.0, Float(pair.1))
            return !((x.isNaN && y.isNaN) || (x == y && x.sign == y.sign))
        }?.offset
    }

    /// Records an issue naming the first differing element (not the whole arrays).
    static func expectSame(_ a: [Float], _ b: [Double], _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
        if let i = firstDifference(a, b) {
            Issue.record("\(what): element \(i) is \(a[i]), reference \(b[i])", sourceLocation: sourceLocation)
        }
    }

    @Test("max pool: values and argmax indices equal the reference on every geometry, 1-3 threads",
          arguments: [(3, 2, 1, false), (3, 2, 0, true), (2, 2, 0, false), (3, 1, 1, false), (3, 3, 1, true),
                      (2, 1, 0, false), (5, 2, 2, true), (4, 3, 2, false)])
    func maxPool(_ k: Int, _ s: Int, _ p: Int, _ ceil: Bool) {
        // 37 wide: more than two 16-lane vectors of outputs at stride 1, with a masked tail.
        for input in [NCHW(3, 5, 37, 37), NCHW(2, 3, 9, 14), NCHW(1, 7, 5, 6)] {
            let shape = Pool2dShape(input: input, kernel: k, stride: s, padding: p, ceilMode: ceil)
            let x = Self.awkwardValues(input.count, seed: UInt64(k * 100 + s * 10 + p))
            let out = shape.output.count
            let yd = Buffer<Double>(count: out), xd = Buffer<Double>(x)
            let id = UnsafeMutablePointer<Int32>.allocate(capacity: out), idf = UnsafeMutablePointer<Int32>.allocate(capacity: out)
            defer { id.deallocate(); idf.deallocate() }
            MaxPool2d.forward(output: yd.pointer, indices: id, input: xd.pointer, shape: shape)
            let saved = Parallel.beginExclusiveWidth()
            defer { Parallel.endExclusiveWidth(restoring: saved) }
            for threads in [1, 2, 3] {
                BLAS.setThreadCount(threads)
                let yf = Buffer<Float>(count: out), xf = Buffer<Float>(x.map(Float.init))
                MaxPool2d.forward(output: yf.pointer, indices: idf, input: xf.pointer, shape: shape)
                Self.expectSame(yf.array, yd.array, "values, \(shape.input) k\(k) s\(s) p\(p), \(threads) threads")
                let mismatch = (0..<out).first { id[$0] != idf[$0] }
                #expect(mismatch == nil, "argmax at output \(mismatch ?? -1): Float \(mismatch.map { idf[$0] } ?? 0), Double \(mismatch.map { id[$0] } ?? 0), \(shape.input) k\(k) s\(s) p\(p)")
            }
        }
    }

    @Test("max pool: the last NaN of a window wins, else the first maximum; padding never wins")
    func maxPoolRules() {
        // One 3x3 window (k3 s1 p0): NaNs at offsets 4 and 7 -> index 7; without NaN, ties at 2 and 6 -> 2.
        let shape = Pool2dShape(input: NCHW(1, 1, 3, 3), kernel: 3, stride: 1)
        for (values, expected) in [([0, 1, 2, 0, Float.nan, 0, 2, .nan, 1], Int32(7)), ([0, 1, 2, 0, -1, 0, 2, 1, 1], 2)] {
            let x = Buffer<Float>(values), y = Buffer<Float>(count: 1)
            var index: Int32 = -1
            MaxPool2d.forward(output: y.pointer, indices: &index, input: x.pointer, shape: shape)
            #expect(index == expected, "\(values)")
        }
        // All -inf with padding 1: the output is -inf at a real element (the window's first), never the padding.
        let padded = Pool2dShape(input: NCHW(1, 1, 2, 2), kernel: 3, stride: 2, padding: 1)
        let x = Buffer<Float>([Float](repeating: -.infinity, count: 4)), y = Buffer<Float>(count: 1)
        var index: Int32 = -1
        MaxPool2d.forward(output: y.pointer, indices: &index, input: x.pointer, shape: padded)
        #expect(y[0] == -.infinity && index == 0)
    }

    @Test("ReLU forward, backward (accumulating) and in-place mask equal the reference loops, 1-3 threads")
    func relu() {
        // Long enough that a 3-way split makes chunks of uneven, unaligned lengths.
        let n = 3 * (1 << 15) + 37
        let x = Self.awkwardValues(n, seed: 11), dy = Self.awkwardValues(n, seed: 12), acc = Self.awkwardValues(n, seed: 13)
        let xd = Buffer<Double>(x), yd = Buffer<Double>(count: n), dyd = Buffer<Double>(dy), dxd = Buffer<Double>(acc)
        ReLU.forward(output: yd.pointer, input: xd.pointer, count: n)
        ReLU.backward(gradInput: dxd.pointer, gradOutput: dyd.pointer, output: yd.pointer, count: n)
        let maskd = Buffer<Double>(dy)
        ReLU.maskGradient(maskd.pointer, output: yd.pointer, count: n)
        let saved = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: saved) }
        for threads in [1, 2, 3] {
            BLAS.setThreadCount(threads)
            let xf = Buffer<Float>(x.map(Float.init)), yf = Buffer<Float>(count: n)
            ReLU.forward(output: yf.pointer, input: xf.pointer, count: n)
            Self.expectSame(yf.array, yd.array, "forward, \(threads) threads")
            let dyf = Buffer<Float>(dy.map(Float.init)), dxf = Buffer<Float>(acc.map(Float.init))
            ReLU.backward(gradInput: dxf.pointer, gradOutput: dyf.pointer, output: yf.pointer, count: n)
            Self.expectSame(dxf.array, dxd.array, "backward, \(threads) threads")
            ReLU.maskGradient(dyf.pointer, output: yf.pointer, count: n)
            Self.expectSame(dyf.array, maskd.array, "mask, \(threads) threads")
            // In place, as the models call it.
            ReLU.forward(output: xf.pointer, input: xf.pointer, count: n)
            Self.expectSame(xf.array, yd.array, "in-place forward, \(threads) threads")
        }
        // The mask zeroes where the output is 0 or NaN and keeps the gradient (NaN included) where it is positive.
        let g = Buffer<Float>([1, 2, .nan, 4, .nan]), out = Buffer<Float>([0, .nan, 3, -0.0, 1])
        ReLU.maskGradient(g.pointer, output: out.pointer, count: 5)
        #expect(g[0] == 0 && g[1] == 0 && g[2].isNaN && g[3] == 0 && g[4].isNaN)
    }

    @Test("narrow-map im2col/col2im (gather map): Float conv forward and gradients equal the Double loops, with the scalar and the AVX-512 gather and scatter-add and the shifted copies alike",
          .serialized, arguments: [Conv2dShape(n: 3, cIn: 5, h: 7, w: 7, cOut: 6, kernel: 3, padding: 1),
                      Conv2dShape(n: 3, cIn: 4, h: 4, w: 4, cOut: 5, kernel: 3, padding: 1),
                      Conv2dShape(n: 2, cIn: 3, h: 6, w: 6, cOut: 4, kernel: 5, padding: 2),
                      Conv2dShape(n: 4, cIn: 3, h: 7, w: 7, cOut: 4, kernel: 3, stride: 2, padding: 1),
                      Conv2dShape(n: 2, cIn: 4, h: 2, w: 2, cOut: 3, kernel: 3, padding: 1),
                      Conv2dShape(n: 5, cIn: 2, h: 1, w: 1, cOut: 3, kernel: 3, padding: 1),
                      Conv2dShape(n: 2, cIn: 3, h: 9, w: 13, cOut: 5, kernel: (2, 4), stride: (1, 2), padding: (0, 2)),
                      Conv2dShape(n: 3, cIn: 2, h: 8, w: 8, cOut: 3, kernel: 1, stride: 2)])
    func narrowConv(_ s: Conv2dShape) {
        #expect(s.outW < Conv2d.gatherBelowWidth, "\(s) must take the gather-map path")
        // The kernels are compared bit for bit, so no other test may change the thread width (and with it the split of
        // the weight gradient's partial sums) between their runs.
        let width = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: width) }
        var rng = SeededRNG(seed: 21)
        let x = rng.values(s.inputCount), w = rng.values(s.weightCount), dy = rng.values(s.outputCount)
        let dx0 = rng.values(s.inputCount), dw0 = rng.values(s.weightCount)
        func run<T: KernelScalar>(_: T.Type, tiling: ConvTiling) -> [[Double]] {
            let xb = Buffer<T>(x.map { T($0) }), wb = Buffer<T>(w.map { T($0) }), dyb = Buffer<T>(dy.map { T($0) })
            let y = Buffer<T>(count: s.outputCount), dx = Buffer<T>(dx0.map { T($0) }), dw = Buffer<T>(dw0.map { T($0) })
            let ws = Workspace<T>()
            Conv2d.forward(output: y.pointer, input: xb.pointer, weight: wb.pointer, bias: nil, shape: s, workspace: ws,
                           tiling: tiling, algorithm: .im2colGEMM)
            Conv2d.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: nil, gradOutput: dyb.pointer,
                            input: xb.pointer, weight: wb.pointer, shape: s, workspace: ws, tiling: tiling,
                            algorithm: .im2colGEMM)
            return [y.array, dx.array, dw.array].map { $0.map { Double($0) } }
        }
        let reference = run(Double.self, tiling: .default)
        // Tiles of whole images, and tiles that start and end inside an image (budget of a few positions); every
        // gather/scatter-add kernel this CPU has, which give the same bits.
        let chosen = Conv2d.gatherKernels
        defer { Conv2d.setGatherKernels(avx512Gather: chosen.gather == "AVX-512", avx512Scatter: chosen.scatter == "AVX-512") }
        defer { Conv2d.setShiftCopies(true) }
        let linear = s.strideH == 1 && s.strideW == 1 && s.outH == s.h && s.outW == s.w && s.outPlane >= 32
        #expect(Conv2d.shiftCopiesInUse(s) == (linear && CPUCapabilities.current.avx512), "\(s)")
        var byKernel: [[[Double]]] = []
        for (avx512, shift) in CPUCapabilities.current.avx512 ? [(false, false), (true, false), (true, true)] : [(false, false)] {
            Conv2d.setGatherKernels(avx512Gather: avx512, avx512Scatter: avx512)
            Conv2d.setShiftCopies(shift)
            #expect(Conv2d.gatherKernels == (avx512 ? ("AVX-512", "AVX-512") : ("scalar", "scalar")))
            #expect(!Conv2d.shiftCopiesInUse(s) || shift)
            for tiling in [ConvTiling.default, ConvTiling(columnBudget: 5 * s.k, minColumns: 5)] {
                let float = run(Float.self, tiling: tiling)
                if tiling.columnBudget == ConvTiling.default.columnBudget { byKernel.append(float) }
                for (part, name) in ["output", "input gradient", "weight gradient"].enumerated() {
                    let err = relativeError(float[part].map(Float.init), reference[part].map(Float.init))
                    #expect(err < 1e-5, "\(name) of \(s), tiling \(tiling.columnBudget)/\(tiling.minColumns), AVX-512 \(avx512), shifts \(shift): error \(err)")
                }
            }
        }
        #expect(byKernel.allSatisfy { $0 == byKernel[0] }, "the scalar and AVX-512 kernels give the same bits")
        // A tile's images gathered in runs of one or two images (the split that keeps offsets in 32 bits on large
        // inputs) give the same bits as one run over all of them.
        defer { Conv2d.setGatherRunImages(0) }
        for images in [1, 2] {
            Conv2d.setGatherRunImages(images)
            #expect(run(Float.self, tiling: .default) == byKernel.last!, "runs of \(images) image(s), \(s)")
        }
    }
}

@Suite("GroupNorm in float32")
struct GroupNormFloatTests {
    @Test("GroupNorm in float32 matches a double computation, statistics and gradients, on activations far from zero (where a one-pass float variance would cancel) and on planes with vector tails",
          arguments: [(NCHW(2, 4, 5, 7), 2, 300.0), (NCHW(3, 8, 32, 32), 4, -40.0), (NCHW(1, 6, 1, 1), 3, 0.0)])
    func groupNormFloat(_ shape: NCHW, _ groups: Int, _ offset: Double) {
        var rng = SeededRNG(seed: 31)
        let x = rng.values(shape.count).map { $0 * 0.5 + offset }, dy = rng.values(shape.count)
        let w = rng.values(shape.c).map { 1 + 0.1 * $0 }, b = rng.values(shape.c)
        func run<T: KernelScalar>(_: T.Type) -> [[Double]] {
            let xb = Buffer<T>(x.map { T($0) }), dyb = Buffer<T>(dy.map { T($0) }), wb = Buffer<T>(w.map { T($0) }), bb = Buffer<T>(b.map { T($0) })
            let y = Buffer<T>(count: shape.count), mean = Buffer<T>(count: shape.n * groups), rstd = Buffer<T>(count: shape.n * groups)
            let dx = Buffer<T>(count: shape.count), dw = Buffer<T>(count: shape.c), db = Buffer<T>(count: shape.c)
            GroupNorm.forward(output: y.pointer, mean: mean.pointer, rstd: rstd.pointer, input: xb.pointer, weight: wb.pointer,
                              bias: bb.pointer, shape: shape, groups: groups)
            GroupNorm.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: db.pointer, gradOutput: dyb.pointer,
                               input: xb.pointer, weight: wb.pointer, mean: mean.pointer, rstd: rstd.pointer, shape: shape, groups: groups,
                               workspace: Workspace<T>(), accumulateInput: false)
            return [y.array, dx.array, dw.array, db.array, mean.array, rstd.array].map { $0.map { Double($0) } }
        }
        let float = run(Float.self), double = run(Double.self)
        for (part, name) in ["output", "input gradient", "weight gradient", "bias gradient", "mean", "rstd"].enumerated() {
            let err = relativeError(float[part].map(Float.init), double[part].map(Float.init))
            #expect(err < 2e-4, "\(name) of \(shape), offset \(offset): \(err)")
        }
    }
}

@Suite("Float reductions and GroupNorm over ranges of groups")
struct FloatReductionTests {
    @Test("reduceSum, reduceSquaredDeviation and the (masked) gradient moments in float32 (C, 64 and 32 vector lanes) match a double sum at every length 0-200 and at 1000 (every tail of the lanes), masking where the output is 0, negative or NaN")
    func reductions() {
        var rng = SeededRNG(seed: 61)
        let x = rng.values(1000).map { Float($0) + 3 }, dy = rng.values(1000).map(Float.init)
        var y = rng.values(1000).map(Float.init)
        y[5] = .nan; y[9] = 0
        var worst: Float = 0
        for n in Array(0...200) + [1000] {
            let mean: Float = 3
            var sum = 0.0, sq = 0.0, ms = 0.0, msx = 0.0, gs = 0.0, gsx = 0.0
            for i in 0..<n {
                let d = Double(x[i]) - Double(mean)
                sum += Double(x[i]); sq += d * d
                gs += Double(dy[i]); gsx += Double(dy[i]) * d
                if y[i] > 0 { ms += Double(dy[i]); msx += Double(dy[i]) * d }
            }
            let (g, gx) = reduceGradientMoments(dy, x, n, mean: mean)
            let (m, mx) = reduceMaskedGradientMoments(dy, y, x, n, mean: mean)
            let got = [reduceSum(x, n), reduceSquaredDeviation(x, n, mean: mean), g, gx, m, mx]
            let want = [sum, sq, gs, gsx, ms, msx]
            for (a, b) in zip(got, want) { worst = max(worst, abs(a - Float(b)) / max(1, Float(abs(b)))) }
            if n == 0 { #expect(got.allSatisfy { $0 == 0 }) }
        }
        #expect(worst < 1e-5, "largest relative error \(worst)")
        // The NaN output masks its gradient: a NaN gradient there must not reach the sums.
        var dyNaN = dy
        dyNaN[5] = .nan
        let (m, mx) = reduceMaskedGradientMoments(dyNaN, y, x, 64, mean: 3)
        #expect(m.isFinite && mx.isFinite)
    }

    @Test("GroupNorm in float32 over ranges of groups (blocks of 8 across images, GroupNorm(32)'s one channel per group on 2x2 maps, an accumulated input gradient with and without the ReLU) matches double, with the same bits at 1, 2 and 3 threads",
          arguments: [(NCHW(5, 32, 2, 2), 32, true), (NCHW(3, 24, 3, 5), 8, false), (NCHW(4, 16, 7, 7), 4, true)])
    func ranges(_ shape: NCHW, _ groups: Int, _ relu: Bool) {
        var rng = SeededRNG(seed: 67)
        let x = rng.values(shape.count).map { $0 + 0.5 }, dy = rng.values(shape.count), start = rng.values(shape.count)
        let w = rng.values(shape.c).map { 1 + 0.1 * $0 }, b = rng.values(shape.c)
        func run<T: KernelScalar>(_: T.Type, threads: Int) -> [[Double]] {
            let xb = Buffer<T>(x.map { T($0) }), dyb = Buffer<T>(dy.map { T($0) }), wb = Buffer<T>(w.map { T($0) }), bb = Buffer<T>(b.map { T($0) })
            let y = Buffer<T>(count: shape.count), mean = Buffer<T>(count: shape.n * groups), rstd = Buffer<T>(count: shape.n * groups)
            let dx = Buffer<T>(start.map { T($0) }), dw = Buffer<T>(count: shape.c), db = Buffer<T>(count: shape.c)
            Parallel.withWidth(threads) {
                GroupNorm.forward(output: y.pointer, mean: mean.pointer, rstd: rstd.pointer, input: xb.pointer, weight: wb.pointer,
                                  bias: bb.pointer, shape: shape, groups: groups, relu: relu)
                GroupNorm.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: db.pointer, gradOutput: dyb.pointer,
                                   input: xb.pointer, weight: wb.pointer, mean: mean.pointer, rstd: rstd.pointer, shape: shape,
                                   groups: groups, workspace: Workspace<T>(), accumulateInput: true,
                                   reluOutput: relu ? UnsafePointer(y.pointer) : nil)
            }
            return [y.array, dx.array, dw.array, db.array, mean.array, rstd.array].map { $0.map { Double($0) } }
        }
        let float = run(Float.self, threads: 1), double = run(Double.self, threads: 1)
        for (part, name) in ["output", "input gradient (accumulated)", "weight gradient", "bias gradient", "mean", "rstd"].enumerated() {
            let err = relativeError(float[part].map(Float.init), double[part].map(Float.init))
            #expect(err < 2e-4, "\(name) of \(shape), \(groups) groups: \(err)")
        }
        #expect(run(Float.self, threads: 2) == float && run(Float.self, threads: 3) == float, "thread count changed the bits")
    }
}

@Suite("GroupNorm with the ReLU fused")
struct GroupNormReLUTests {
    @Test("GroupNorm's fused ReLU gives the bits of GroupNorm then ReLU.forward, and its masked backward those of ReLU.maskGradient then GroupNorm, NaN gradients included",
          arguments: [(NCHW(2, 4, 5, 7), 2), (NCHW(3, 8, 4, 4), 4)])
    func fused(_ shape: NCHW, _ groups: Int) {
        var rng = SeededRNG(seed: 41)
        let x = rng.values(shape.count), w = rng.values(shape.c).map { 1 + 0.1 * $0 }, b = rng.values(shape.c)
        var dy = rng.values(shape.count)
        dy[3] = .nan; dy[shape.count - 2] = .nan   // a NaN gradient survives where the output is positive, else is masked
        func run<T: KernelScalar>(_: T.Type, fused: Bool) -> [[T]] {
            let xb = Buffer<T>(x.map { T($0) }), dyb = Buffer<T>(dy.map { T($0) }), wb = Buffer<T>(w.map { T($0) }), bb = Buffer<T>(b.map { T($0) })
            let y = Buffer<T>(count: shape.count), mean = Buffer<T>(count: shape.n * groups), rstd = Buffer<T>(count: shape.n * groups)
            let dx = Buffer<T>(count: shape.count), dw = Buffer<T>(count: shape.c), db = Buffer<T>(count: shape.c)
            GroupNorm.forward(output: y.pointer, mean: mean.pointer, rstd: rstd.pointer, input: xb.pointer, weight: wb.pointer,
                              bias: bb.pointer, shape: shape, groups: groups, relu: fused)
            if !fused {
                ReLU.forward(output: y.pointer, input: y.pointer, count: shape.count)
                ReLU.maskGradient(dyb.pointer, output: y.pointer, count: shape.count)
            }
            GroupNorm.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: db.pointer, gradOutput: dyb.pointer,
                               input: xb.pointer, weight: wb.pointer, mean: mean.pointer, rstd: rstd.pointer, shape: shape, groups: groups,
                               workspace: Workspace<T>(), accumulateInput: false, reluOutput: fused ? UnsafePointer(y.pointer) : nil)
            return [y.array, dx.array, dw.array, db.array]
        }
        func same<T: KernelScalar>(_ a: [[T]], _ b: [[T]], _ what: String) {
            for (part, name) in ["output", "input gradient", "weight gradient", "bias gradient"].enumerated() {
                let equal = zip(a[part], b[part]).allSatisfy { $0 == $1 || ($0.isNaN && $1.isNaN) }
                #expect(equal, "\(what) \(name) of \(shape)")
            }
        }
        let float = run(Float.self, fused: true)
        same(float, run(Float.self, fused: false), "Float")
        same(run(Double.self, fused: true), run(Double.self, fused: false), "Double")
        #expect(float[0].contains(0) && float[0].allSatisfy { $0 >= 0 }, "the ReLU clipped some outputs")
    }

    @Test("a residual sum with the ReLU fused gives the bits of Add then ReLU.forward (NaN kept), Float and Double, in place too")
    func addReLU() {
        var rng = SeededRNG(seed: 43)
        var a = rng.values(1000)
        a[7] = .nan
        let b = rng.values(1000)
        func run<T: KernelScalar>(_: T.Type, fused: Bool, inPlace: Bool) -> [T] {
            let ab = Buffer<T>(a.map { T($0) }), bb = Buffer<T>(b.map { T($0) }), y = Buffer<T>(count: 1000)
            let out = inPlace ? ab.pointer : y.pointer
            Add.forward(output: out, a: ab.pointer, b: bb.pointer, count: 1000, relu: fused)
            if !fused { ReLU.forward(output: out, input: out, count: 1000) }
            return inPlace ? ab.array : y.array
        }
        func same<T: KernelScalar>(_ x: [T], _ y: [T]) -> Bool { zip(x, y).allSatisfy { $0 == $1 || ($0.isNaN && $1.isNaN) } }
        let fused = run(Float.self, fused: true, inPlace: false)
        #expect(same(fused, run(Float.self, fused: false, inPlace: false)))
        #expect(same(run(Float.self, fused: true, inPlace: true), fused))
        #expect(same(run(Double.self, fused: true, inPlace: false), run(Double.self, fused: false, inPlace: false)))
        #expect(fused[7].isNaN && fused.contains(0) && fused.filter { !$0.isNaN }.allSatisfy { $0 >= 0 })
    }
}
