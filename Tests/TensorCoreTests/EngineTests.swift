// The engine's plumbing: flat parameter store, arena, workspace, parallel-for, BLAS facade, shape preconditions.
import Testing
@testable import TensorCore

@Suite("Engine plumbing")
struct EngineTests {
    @Test("ReLU keeps NaN as NaN (as torch.relu): a diverged activation must not be silently zeroed")
    func reluNaN() {
        let x = Buffer<Float>([-1, 0, 2, .nan, .infinity, -.infinity])
        let y = Buffer<Float>(count: 6)
        ReLU.forward(output: y.pointer, input: x.pointer, count: 6)
        #expect(y[0] == 0 && y[1] == 0 && y[2] == 2 && y[3].isNaN && y[4] == .infinity && y[5] == 0)
    }

    @Test("parameter layout: forward order, contiguous offsets, lookup by name")
    func parameterLayout() {
        var layout = ParameterLayout()
        let a = layout.add("conv1.weight", shape: [32, 3, 7, 7])
        let b = layout.add("bn1.weight", shape: [32])
        let c = layout.add("fc.weight", shape: [5, 256])
        #expect(a.offset == 0 && b.offset == 32 * 147 && c.offset == 32 * 147 + 32)
        #expect(layout.count == 32 * 147 + 32 + 5 * 256)
        #expect(layout.slices.map(\.name) == ["conv1.weight", "bn1.weight", "fc.weight"])
        #expect(layout["bn1.weight"] == b)
        #expect(layout["missing"] == nil)

        let store = ParameterStore<Float>(layout: layout)
        store.value(b)[0] = 3
        store.gradient(c)[4] = 2
        #expect(store.values[b.offset] == 3)
        #expect(store.gradients![c.offset + 4] == 2)
        store.zeroGradients()
        #expect(store.gradients!.array.allSatisfy { $0 == 0 })
        #expect(store.values[b.offset] == 3, "zeroing gradients must not touch values")
    }

    @Test("arena: aligned, zeroed, consolidates to one block after the first step")
    func arena() {
        let arena = Arena<Float>(capacity: 64)
        let p = arena.allocate(10)
        p[0] = 5
        let q = arena.allocate(100)   // spills into a new block
        #expect(Int(bitPattern: q) % 64 == 0)
        #expect(arena.highWater >= 16 + 112)
        arena.reset()
        #expect(arena.capacity == arena.highWater, "after reset one block of the high-water size")
        let r = arena.allocate(10)
        #expect(r[0] == 0, "allocations are zeroed")
        let before = arena.capacity
        _ = arena.allocate(100)
        #expect(arena.capacity == before, "the second step with the same sizes allocates nothing")
    }

    @Test("parallel-for covers every index exactly once for any width", arguments: [1, 2, 3, 8])
    func parallelCoverage(_ width: Int) {
        let saved = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: saved) }
        Parallel.setWidth(width)
        for count in [0, 1, 5, 97, 1000] {
            let hits = Buffer<Float>(count: count)
            Parallel.forEach(count, grain: 3) { r in for i in r { hits[i] += 1 } }
            #expect(hits.array.allSatisfy { $0 == 1 }, "width \(width), count \(count)")
        }
    }

    @Test("BLAS facade sets OpenBLAS and the parallel-for width together")
    func blasThreads() {
        let saved = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: saved) }
        BLAS.setThreadCount(1)
        #expect(BLAS.threadCount == 1 && Parallel.width == 1)
        #expect(BLAS.version.split(separator: ".").count == 3, "version parsed from \(BLAS.configuration)")
        #expect(!BLAS.coreName.isEmpty)
    }

    @Test("sgemm and dgemm row-major with transposes agree with a naive product", arguments: [false, true])
    func gemm(_ transposeA: Bool) {
        var rng = SeededRNG(seed: 3)
        let m = 5, n = 4, k = 3
        let a = rng.values(m * k), b = rng.values(k * n), c0 = rng.values(m * n)
        // a is (m, k) or, transposed, stored as (k, m)
        func aAt(_ i: Int, _ p: Int) -> Double { transposeA ? a[p * m + i] : a[i * k + p] }
        let c = Buffer<Double>(c0)
        a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in
            Double.gemm(transA: transposeA, transB: false, m: m, n: n, k: k, alpha: 2, a: ap.baseAddress!,
                        lda: transposeA ? m : k, b: bp.baseAddress!, ldb: n, beta: 0.5, c: c.pointer, ldc: n)
        } }
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                for p in 0..<k { s += aAt(i, p) * b[p * n + j] }
                #expect(abs(c[i * n + j] - (2 * s + 0.5 * c0[i * n + j])) < 1e-12)
            }
        }
    }

    @Test("conv results do not depend on image grouping or thread width")
    func convGroupingInvariance() {
        let s = Conv2dShape(n: 5, cIn: 3, h: 9, w: 9, cOut: 4, kernel: 3, stride: 1, padding: 1)
        var rng = SeededRNG(seed: 9)
        let x = Buffer<Float>(rng.values(s.inputCount).map(Float.init)), w = Buffer<Float>(rng.values(s.weightCount).map(Float.init))
        let dy = Buffer<Float>(rng.values(s.outputCount).map(Float.init))
        var results: [[Float]] = []
        let saved = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: saved) }
        for (threads, columns) in [(1, 1), (1, 200), (2, 100_000), (2, 1), (3, 50), (8, 30)] {
            BLAS.setThreadCount(threads)
            let y = Buffer<Float>(count: s.outputCount), dx = Buffer<Float>(count: s.inputCount), dw = Buffer<Float>(count: s.weightCount)
            let ws = Workspace<Float>()
            Conv2d.forward(output: y.pointer, input: x.pointer, weight: w.pointer, bias: nil, shape: s, workspace: ws, tiling: ConvTiling(columnBudget: 1, minColumns: columns))
            Conv2d.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: nil, gradOutput: dy.pointer, input: x.pointer,
                            weight: w.pointer, shape: s, workspace: ws, tiling: ConvTiling(columnBudget: 1, minColumns: columns))
            results.append(y.array + dx.array + dw.array)
        }
        for r in results.dropFirst() { #expect(relativeError(r, results[0]) < 1e-5) }
    }

    @Test("a conv called with mismatched shapes stops with a message naming them")
    func convShapePrecondition() async {
        await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let x = Buffer<Float>(count: 2 * 3 * 8 * 8), w = Buffer<Float>(count: 4 * 5 * 3 * 3), y = Buffer<Float>(count: 2 * 4 * 8 * 8)
            Conv2d.forward(output: Tensor(shape: [2, 4, 8, 8], data: y.pointer), input: Tensor(shape: [2, 3, 8, 8], data: x.pointer),
                           weight: Tensor(shape: [4, 5, 3, 3], data: w.pointer), bias: nil, padding: (1, 1), workspace: Workspace())
        }.map { result in
            let text = String(decoding: result.standardErrorContent, as: UTF8.self)
            #expect(text.contains("[4, 5, 3, 3]") && text.contains("[2, 3, 8, 8]"), "message was: \(text)")
        }
    }

    @Test("a linear layer with a wrong output shape stops naming both shapes")
    func linearShapePrecondition() async {
        await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let x = Buffer<Float>(count: 12), w = Buffer<Float>(count: 8), y = Buffer<Float>(count: 9)
            Linear.forward(output: Tensor(shape: [3, 3], data: y.pointer), input: Tensor(shape: [3, 4], data: x.pointer),
                           weight: Tensor(shape: [2, 4], data: w.pointer), bias: nil)
        }.map { result in
            let text = String(decoding: result.standardErrorContent, as: UTF8.self)
            #expect(text.contains("output has shape [3, 3], expected [3, 2]"), "message was: \(text)")
        }
    }

    @Test("norm backward with accumulateInput: false overwrites the input gradient (NaN-filled buffer = zeros + accumulate)",
          arguments: ["group", "batch-train", "batch-eval"])
    func normBackwardOverwrites(_ kind: String) {
        let shape = NCHW(3, 8, 5, 4)
        var rng = SeededRNG(seed: 31)
        let x = Buffer<Float>(rng.values(shape.count).map(Float.init)), dy = Buffer<Float>(rng.values(shape.count).map(Float.init))
        let w = Buffer<Float>(rng.values(8).map { Float($0) + 1.5 }), b = Buffer<Float>(rng.values(8).map(Float.init))
        let y = Buffer<Float>(count: shape.count), mean = Buffer<Float>(count: 24), rstd = Buffer<Float>(count: 24)
        let runMean = Buffer<Float>(count: 8), runVar = Buffer<Float>([Float](repeating: 1, count: 8))
        let ws = Workspace<Float>()
        func backward(_ dx: Buffer<Float>, accumulate: Bool) {
            let dw = Buffer<Float>(count: 8), db = Buffer<Float>(count: 8)
            if kind == "group" {
                GroupNorm.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: db.pointer, gradOutput: dy.pointer,
                                   input: x.pointer, weight: w.pointer, mean: mean.pointer, rstd: rstd.pointer, shape: shape,
                                   groups: 4, workspace: ws, accumulateInput: accumulate)
            } else {
                BatchNorm2d.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: db.pointer, gradOutput: dy.pointer,
                                     input: x.pointer, weight: w.pointer, saveMean: mean.pointer, saveRstd: rstd.pointer,
                                     shape: shape, training: kind == "batch-train", accumulateInput: accumulate)
            }
        }
        if kind == "group" {
            GroupNorm.forward(output: y.pointer, mean: mean.pointer, rstd: rstd.pointer, input: x.pointer, weight: w.pointer,
                              bias: b.pointer, shape: shape, groups: 4)
        } else {
            BatchNorm2d.forward(output: y.pointer, saveMean: mean.pointer, saveRstd: rstd.pointer, input: x.pointer,
                                weight: w.pointer, bias: b.pointer, runningMean: runMean.pointer, runningVar: runVar.pointer,
                                shape: shape, training: kind == "batch-train")
        }
        let accumulated = Buffer<Float>(count: shape.count)
        backward(accumulated, accumulate: true)
        let overwritten = Buffer<Float>([Float](repeating: .nan, count: shape.count))
        backward(overwritten, accumulate: false)
        #expect(overwritten.array == accumulated.array, "\(kind)")
        #expect(accumulated.array.contains { $0 != 0 }, "the gradient under test must not be all zeros")
    }
}
