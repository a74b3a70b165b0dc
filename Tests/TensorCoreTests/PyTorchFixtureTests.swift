// Forward outputs and gradients of every kernel, in Float32, against PyTorch (Tests/Fixtures/kernels.safetensors).
import Testing
@testable import TensorCore

/// Runs a fixture case: inputs from the file, zeroed gradient buffers, the case's upstream gradient.
struct FixtureCase {
    let name: String
    init(_ name: String) { self.name = name }
    func input(_ n: String) -> Buffer<Float> { Fixtures.buffer(name, n) }
    func int(_ k: String) -> Int { Fixtures.int(name, k) }
    func zeros(like n: String) -> Buffer<Float> { Buffer(count: Fixtures.values(name, n).count) }
    func expect(_ b: Buffer<Float>, _ n: String, tolerance: Float = 1e-4, sourceLocation: SourceLocation = #_sourceLocation) {
        expectMatches(b.array, name, n, tolerance: tolerance, sourceLocation: sourceLocation)
    }
}

@Suite("Kernels against PyTorch fixtures")
struct PyTorchFixtureTests {
    @Test("fixture file holds every kernel family")
    func fixtureCoverage() {
        for prefix in ["conv.", "gn.", "bn.", "relu", "linear", "softmax", "logsoftmax", "maxpool.", "gap", "adamax.", "adaavg.", "bicubic."] {
            #expect(!Fixtures.names(prefix: prefix).isEmpty, "no fixture case starts with \(prefix)")
        }
    }

    @Test("Conv2d", arguments: Fixtures.names(prefix: "conv."))
    func conv(_ c: String) {
        let f = FixtureCase(c)
        let s = Conv2dShape(n: f.int("n"), cIn: f.int("cin"), h: f.int("h"), w: f.int("w"), cOut: f.int("cout"),
                            kernel: (f.int("kh"), f.int("kw")), stride: (f.int("sh"), f.int("sw")), padding: (f.int("ph"), f.int("pw")))
        let hasBias = Fixtures.bool(c, "bias")
        let x = f.input("x"), w = f.input("w"), b = hasBias ? f.input("b") : nil, dy = f.input("dy")
        let runs: [(ConvTiling, ConvAlgorithm)] = [
            (ConvTiling(columnBudget: 1, minColumns: 1), .im2colGEMM), (ConvTiling(columnBudget: 1, minColumns: 13), .im2colGEMM),
            (.default, .im2colGEMM), (.default, .direct),
        ]
        for (tiling, algorithm) in runs {
            let ws = Workspace<Float>()
            let y = Buffer<Float>(count: s.outputCount)
            Conv2d.forward(output: y.pointer, input: x.pointer, weight: w.pointer, bias: b?.pointer, shape: s,
                           workspace: ws, tiling: tiling, algorithm: algorithm)
            f.expect(y, "y")
            let dx = f.zeros(like: "x"), dw = f.zeros(like: "w"), db = Buffer<Float>(count: s.cOut)
            Conv2d.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: hasBias ? db.pointer : nil,
                            gradOutput: dy.pointer, input: x.pointer, weight: w.pointer, shape: s, workspace: ws,
                            tiling: tiling, algorithm: algorithm)
            f.expect(dx, "dx"); f.expect(dw, "dw")
            if hasBias { f.expect(db, "db") }
        }
    }

    @Test("GroupNorm", arguments: Fixtures.names(prefix: "gn."))
    func groupNorm(_ c: String) {
        let f = FixtureCase(c)
        let shape = NCHW(f.int("n"), f.int("c"), f.int("h"), f.int("w")), g = f.int("groups")
        let x = f.input("x"), w = f.input("weight"), b = f.input("bias"), dy = f.input("dy")
        let y = Buffer<Float>(count: shape.count), mean = Buffer<Float>(count: shape.n * g), rstd = Buffer<Float>(count: shape.n * g)
        GroupNorm.forward(output: y.pointer, mean: mean.pointer, rstd: rstd.pointer, input: x.pointer, weight: w.pointer,
                          bias: b.pointer, shape: shape, groups: g)
        f.expect(y, "y")
        let dx = f.zeros(like: "x"), dw = f.zeros(like: "weight"), db = f.zeros(like: "bias")
        GroupNorm.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: db.pointer, gradOutput: dy.pointer,
                           input: x.pointer, weight: w.pointer, mean: mean.pointer, rstd: rstd.pointer, shape: shape,
                           groups: g, workspace: Workspace())
        f.expect(dx, "dx"); f.expect(dw, "dweight"); f.expect(db, "dbias")
    }

    @Test("BatchNorm2d: batch statistics, running-statistics update, eval mode", arguments: ["bn.train", "bn.eval"])
    func batchNorm(_ c: String) {
        let f = FixtureCase(c)
        let shape = NCHW(f.int("n"), f.int("c"), f.int("h"), f.int("w")), training = Fixtures.bool(c, "training")
        let x = f.input("x"), w = f.input("weight"), b = f.input("bias"), dy = f.input("dy")
        let rm = f.input("running_mean_in"), rv = f.input("running_var_in")
        let y = Buffer<Float>(count: shape.count), sm = Buffer<Float>(count: shape.c), sr = Buffer<Float>(count: shape.c)
        BatchNorm2d.forward(output: y.pointer, saveMean: sm.pointer, saveRstd: sr.pointer, input: x.pointer, weight: w.pointer,
                            bias: b.pointer, runningMean: rm.pointer, runningVar: rv.pointer, shape: shape, training: training)
        f.expect(y, "y")
        f.expect(rm, "running_mean_out", tolerance: 1e-6)
        f.expect(rv, "running_var_out", tolerance: 1e-6)
        let dx = f.zeros(like: "x"), dw = f.zeros(like: "weight"), db = f.zeros(like: "bias")
        BatchNorm2d.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: db.pointer, gradOutput: dy.pointer,
                             input: x.pointer, weight: w.pointer, saveMean: sm.pointer, saveRstd: sr.pointer, shape: shape,
                             training: training)
        f.expect(dx, "dx"); f.expect(dw, "dweight"); f.expect(db, "dbias")
    }

    @Test("ReLU, Linear, Softmax, LogSoftmax, global average pool")
    func small() {
        do {
            let f = FixtureCase("relu"), n = f.int("count")
            let x = f.input("x"), dy = f.input("dy"), y = Buffer<Float>(count: n), dx = Buffer<Float>(count: n)
            ReLU.forward(output: y.pointer, input: x.pointer, count: n)
            ReLU.backward(gradInput: dx.pointer, gradOutput: dy.pointer, output: y.pointer, count: n)
            f.expect(y, "y"); f.expect(dx, "dx")
        }
        do {
            let f = FixtureCase("linear"), n = f.int("n"), i = f.int("inf"), o = f.int("outf")
            let x = f.input("x"), w = f.input("w"), b = f.input("b"), dy = f.input("dy"), y = Buffer<Float>(count: n * o)
            Linear.forward(output: y.pointer, input: x.pointer, weight: w.pointer, bias: b.pointer, n: n, inFeatures: i, outFeatures: o)
            let dx = f.zeros(like: "x"), dw = f.zeros(like: "w"), db = f.zeros(like: "b")
            Linear.backward(gradInput: dx.pointer, gradWeight: dw.pointer, gradBias: db.pointer, gradOutput: dy.pointer,
                            input: x.pointer, weight: w.pointer, n: n, inFeatures: i, outFeatures: o)
            f.expect(y, "y"); f.expect(dx, "dx"); f.expect(dw, "dw"); f.expect(db, "db")
        }
        for name in ["softmax", "logsoftmax"] {
            let f = FixtureCase(name), r = f.int("rows"), c = f.int("cols")
            let x = f.input("x"), dy = f.input("dy"), y = Buffer<Float>(count: r * c), dx = Buffer<Float>(count: r * c)
            if name == "softmax" {
                Softmax.forward(output: y.pointer, input: x.pointer, rows: r, cols: c)
                Softmax.backward(gradInput: dx.pointer, gradOutput: dy.pointer, output: y.pointer, rows: r, cols: c)
            } else {
                LogSoftmax.forward(output: y.pointer, input: x.pointer, rows: r, cols: c)
                LogSoftmax.backward(gradInput: dx.pointer, gradOutput: dy.pointer, output: y.pointer, rows: r, cols: c)
            }
            f.expect(y, "y"); f.expect(dx, "dx")
        }
        do {
            let f = FixtureCase("gap"), shape = NCHW(f.int("n"), f.int("c"), f.int("h"), f.int("w"))
            let x = f.input("x"), dy = f.input("dy"), y = Buffer<Float>(count: shape.n * shape.c), dx = f.zeros(like: "x")
            GlobalAvgPool.forward(output: y.pointer, input: x.pointer, shape: shape)
            GlobalAvgPool.backward(gradInput: dx.pointer, gradOutput: dy.pointer, shape: shape)
            f.expect(y, "y"); f.expect(dx, "dx")
        }
    }

    @Test("MaxPool2d (PyTorch output sizes, ceil mode)", arguments: Fixtures.names(prefix: "maxpool."))
    func maxPool(_ c: String) {
        let f = FixtureCase(c)
        let shape = Pool2dShape(input: NCHW(f.int("n"), f.int("c"), f.int("h"), f.int("w")), kernel: f.int("k"),
                                stride: f.int("s"), padding: f.int("p"), ceilMode: Fixtures.bool(c, "ceil"))
        let x = f.input("x"), dy = f.input("dy")
        #expect(shape.output.count == Fixtures.values(c, "y").count, "\(c): output size differs from PyTorch's")
        let y = Buffer<Float>(count: shape.output.count), dx = f.zeros(like: "x")
        let idx = UnsafeMutablePointer<Int32>.allocate(capacity: shape.output.count)
        defer { idx.deallocate() }
        MaxPool2d.forward(output: y.pointer, indices: idx, input: x.pointer, shape: shape)
        MaxPool2d.backward(gradInput: dx.pointer, gradOutput: dy.pointer, indices: idx, input: shape.input, outPlane: shape.output.plane)
        f.expect(y, "y"); f.expect(dx, "dx")
    }

    @Test("Adaptive max/avg pool and bicubic resize", arguments: Fixtures.names(prefix: "adamax.").map { String($0.dropFirst(7)) })
    func resize(_ suffix: String) {
        for kind in ["adamax.", "adaavg.", "bicubic."] {
            let f = FixtureCase(kind + suffix)
            let shape = NCHW(f.int("n"), f.int("c"), f.int("h"), f.int("w")), oh = f.int("oh"), ow = f.int("ow")
            let x = f.input("x"), dy = f.input("dy")
            let y = Buffer<Float>(count: shape.n * shape.c * oh * ow), dx = f.zeros(like: "x")
            switch kind {
            case "adamax.":
                let idx = UnsafeMutablePointer<Int32>.allocate(capacity: y.count)
                defer { idx.deallocate() }
                AdaptiveMaxPool2d.forward(output: y.pointer, indices: idx, input: x.pointer, shape: shape, outH: oh, outW: ow)
                AdaptiveMaxPool2d.backward(gradInput: dx.pointer, gradOutput: dy.pointer, indices: idx, shape: shape, outH: oh, outW: ow)
            case "adaavg.":
                AdaptiveAvgPool2d.forward(output: y.pointer, input: x.pointer, shape: shape, outH: oh, outW: ow)
                AdaptiveAvgPool2d.backward(gradInput: dx.pointer, gradOutput: dy.pointer, shape: shape, outH: oh, outW: ow)
            default:
                BicubicResize.forward(output: y.pointer, input: x.pointer, shape: shape, outH: oh, outW: ow)
                BicubicResize.backward(gradInput: dx.pointer, gradOutput: dy.pointer, shape: shape, outH: oh, outW: ow)
            }
            f.expect(y, "y"); f.expect(dx, "dx")
        }
    }
}
