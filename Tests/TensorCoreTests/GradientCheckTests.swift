// Finite-difference gradient checks in Double, random upstream gradients, for every kernel input and parameter.
import Testing
@testable import TensorCore

/// Conv geometries covering the im2col, grouped-GEMM and pointwise paths, strides, padding, non-square kernels.
struct ConvCase: CustomTestStringConvertible, Sendable {
    var n: Int, cIn: Int, h: Int, w: Int, cOut: Int, kernel: (Int, Int), stride: (Int, Int), padding: (Int, Int)
    var bias: Bool
    var minColumns: Int
    var tiling: ConvTiling { ConvTiling(columnBudget: 1, minColumns: minColumns) }
    var shape: Conv2dShape {
        Conv2dShape(n: n, cIn: cIn, h: h, w: w, cOut: cOut, kernel: kernel, stride: stride, padding: padding)
    }
    var testDescription: String { "\(shape) bias \(bias) columns \(minColumns)" }
}

let convCases: [ConvCase] = [
    ConvCase(n: 2, cIn: 3, h: 6, w: 5, cOut: 4, kernel: (3, 3), stride: (1, 1), padding: (1, 1), bias: true, minColumns: 1),
    ConvCase(n: 3, cIn: 3, h: 6, w: 5, cOut: 4, kernel: (3, 3), stride: (1, 1), padding: (1, 1), bias: true, minColumns: 100_000),
    ConvCase(n: 2, cIn: 2, h: 7, w: 8, cOut: 3, kernel: (3, 3), stride: (2, 2), padding: (1, 1), bias: false, minColumns: 20),
    ConvCase(n: 2, cIn: 2, h: 9, w: 9, cOut: 3, kernel: (7, 7), stride: (2, 2), padding: (3, 3), bias: false, minColumns: 1),
    ConvCase(n: 2, cIn: 4, h: 3, w: 4, cOut: 5, kernel: (1, 1), stride: (1, 1), padding: (0, 0), bias: true, minColumns: 1),
    ConvCase(n: 3, cIn: 4, h: 5, w: 5, cOut: 3, kernel: (1, 1), stride: (2, 2), padding: (0, 0), bias: false, minColumns: 100),
    ConvCase(n: 2, cIn: 2, h: 5, w: 6, cOut: 3, kernel: (2, 3), stride: (1, 2), padding: (0, 1), bias: true, minColumns: 7),
    ConvCase(n: 1, cIn: 1, h: 2, w: 2, cOut: 2, kernel: (3, 3), stride: (3, 3), padding: (1, 1), bias: false, minColumns: 1),
    // Output rows of 16 or more take the run-based im2col (narrower ones the gather map): stride 1, 2 and 3.
    ConvCase(n: 1, cIn: 2, h: 3, w: 40, cOut: 2, kernel: (3, 3), stride: (1, 1), padding: (1, 1), bias: true, minColumns: 30),
    ConvCase(n: 2, cIn: 1, h: 5, w: 37, cOut: 2, kernel: (3, 3), stride: (2, 2), padding: (1, 1), bias: false, minColumns: 25),
    ConvCase(n: 1, cIn: 2, h: 3, w: 50, cOut: 2, kernel: (3, 5), stride: (1, 3), padding: (1, 2), bias: false, minColumns: 1),
]

@Suite("Finite-difference gradients (Double)")
struct GradientCheckTests {
    @Test("Conv2d", arguments: convCases)
    func conv(_ c: ConvCase) {
        let s = c.shape
        var rng = SeededRNG(seed: 11)
        var inputs = [("x", rng.values(s.inputCount)), ("weight", rng.values(s.weightCount, scale: 0.5))]
        if c.bias { inputs.append(("bias", rng.values(s.cOut))) }
        let ws = Workspace<Double>()
        checkGradients("Conv2d \(s)", inputs: inputs, outputCount: s.outputCount, forward: { io, y in
            Conv2d.forward(output: y, input: io.inputs[0], weight: io.inputs[1], bias: c.bias ? io.inputs[2] : nil,
                           shape: s, workspace: ws, tiling: c.tiling)
        }, backward: { io, dy in
            Conv2d.backward(gradInput: io.grads[0], gradWeight: io.grads[1]!, gradBias: c.bias ? io.grads[2] : nil,
                            gradOutput: dy, input: io.inputs[0], weight: io.inputs[1], shape: s, workspace: ws,
                            tiling: c.tiling)
        })
    }

    @Test("GroupNorm", arguments: [(NCHW(2, 8, 3, 4), 4), (NCHW(3, 6, 2, 3), 6), (NCHW(2, 4, 3, 3), 1)])
    func groupNorm(_ shape: NCHW, _ groups: Int) {
        var rng = SeededRNG(seed: 12)
        let inputs = [("x", rng.values(shape.count, scale: 2).map { $0 + 0.3 }), ("weight", rng.values(shape.c)),
                      ("bias", rng.values(shape.c))]
        let mean = Buffer<Double>(count: shape.n * groups), rstd = Buffer<Double>(count: shape.n * groups)
        let ws = Workspace<Double>()
        checkGradients("GroupNorm \(shape) groups \(groups)", inputs: inputs, outputCount: shape.count, forward: { io, y in
            GroupNorm.forward(output: y, mean: mean.pointer, rstd: rstd.pointer, input: io.inputs[0], weight: io.inputs[1],
                              bias: io.inputs[2], shape: shape, groups: groups)
        }, backward: { io, dy in
            GroupNorm.backward(gradInput: io.grads[0]!, gradWeight: io.grads[1]!, gradBias: io.grads[2]!, gradOutput: dy,
                               input: io.inputs[0], weight: io.inputs[1], mean: mean.pointer, rstd: rstd.pointer,
                               shape: shape, groups: groups, workspace: ws)
        })
    }

    @Test("BatchNorm2d", arguments: [true, false])
    func batchNorm(_ training: Bool) {
        let shape = NCHW(3, 4, 3, 2)
        var rng = SeededRNG(seed: 13)
        let inputs = [("x", rng.values(shape.count, scale: 2).map { $0 + 0.5 }), ("weight", rng.values(shape.c)),
                      ("bias", rng.values(shape.c))]
        let rm = Buffer<Double>(rng.values(shape.c, scale: 0.1)), rv = Buffer<Double>((0..<shape.c).map { 0.5 + Double($0) * 0.25 })
        let sm = Buffer<Double>(count: shape.c), sr = Buffer<Double>(count: shape.c)
        checkGradients("BatchNorm2d training \(training)", inputs: inputs, outputCount: shape.count, forward: { io, y in
            BatchNorm2d.forward(output: y, saveMean: sm.pointer, saveRstd: sr.pointer, input: io.inputs[0],
                                weight: io.inputs[1], bias: io.inputs[2], runningMean: rm.pointer, runningVar: rv.pointer,
                                shape: shape, training: training)
        }, backward: { io, dy in
            BatchNorm2d.backward(gradInput: io.grads[0]!, gradWeight: io.grads[1]!, gradBias: io.grads[2]!, gradOutput: dy,
                                 input: io.inputs[0], weight: io.inputs[1], saveMean: sm.pointer, saveRstd: sr.pointer,
                                 shape: shape, training: training)
        })
    }

    @Test("ReLU")
    func relu() {
        var rng = SeededRNG(seed: 14)
        // Keep values away from the kink at 0 so finite differences are exact.
        let x = rng.values(50).map { $0 >= 0 ? $0 + 0.01 : $0 - 0.01 }
        checkGradients("ReLU", inputs: [("x", x)], outputCount: 50, forward: { io, y in
            ReLU.forward(output: y, input: io.inputs[0], count: 50)
        }, backward: { io, dy in
            let y = Buffer<Double>(count: 50)
            ReLU.forward(output: y.pointer, input: io.inputs[0], count: 50)
            ReLU.backward(gradInput: io.grads[0]!, gradOutput: dy, output: y.pointer, count: 50)
        })
    }

    @Test("Residual add")
    func add() {
        var rng = SeededRNG(seed: 15)
        checkGradients("Add", inputs: [("a", rng.values(30)), ("b", rng.values(30))], outputCount: 30, forward: { io, y in
            Add.forward(output: y, a: io.inputs[0], b: io.inputs[1], count: 30)
        }, backward: { io, dy in
            Add.backward(gradA: io.grads[0], gradB: io.grads[1], gradOutput: dy, count: 30)
        })
    }

    @Test("Linear")
    func linear() {
        var rng = SeededRNG(seed: 16)
        let n = 3, i = 5, o = 4
        checkGradients("Linear", inputs: [("x", rng.values(n * i)), ("weight", rng.values(o * i)), ("bias", rng.values(o))],
                       outputCount: n * o, forward: { io, y in
            Linear.forward(output: y, input: io.inputs[0], weight: io.inputs[1], bias: io.inputs[2], n: n, inFeatures: i, outFeatures: o)
        }, backward: { io, dy in
            Linear.backward(gradInput: io.grads[0], gradWeight: io.grads[1]!, gradBias: io.grads[2], gradOutput: dy,
                            input: io.inputs[0], weight: io.inputs[1], n: n, inFeatures: i, outFeatures: o)
        })
    }

    @Test("Softmax and log-softmax", arguments: [false, true])
    func softmax(_ log: Bool) {
        var rng = SeededRNG(seed: 17)
        let rows = 3, cols = 5
        checkGradients(log ? "LogSoftmax" : "Softmax", inputs: [("x", rng.values(rows * cols, scale: 3))],
                       outputCount: rows * cols, forward: { io, y in
            if log { LogSoftmax.forward(output: y, input: io.inputs[0], rows: rows, cols: cols) }
            else { Softmax.forward(output: y, input: io.inputs[0], rows: rows, cols: cols) }
        }, backward: { io, dy in
            let y = Buffer<Double>(count: rows * cols)
            if log {
                LogSoftmax.forward(output: y.pointer, input: io.inputs[0], rows: rows, cols: cols)
                LogSoftmax.backward(gradInput: io.grads[0]!, gradOutput: dy, output: y.pointer, rows: rows, cols: cols)
            } else {
                Softmax.forward(output: y.pointer, input: io.inputs[0], rows: rows, cols: cols)
                Softmax.backward(gradInput: io.grads[0]!, gradOutput: dy, output: y.pointer, rows: rows, cols: cols)
            }
        })
    }

    @Test("MaxPool2d", arguments: [(3, 2, 1, false), (2, 2, 0, true), (3, 3, 1, true), (2, 1, 0, false)])
    func maxPool(_ k: Int, _ s: Int, _ p: Int, _ ceil: Bool) {
        let shape = Pool2dShape(input: NCHW(2, 2, 7, 6), kernel: k, stride: s, padding: p, ceilMode: ceil)
        var rng = SeededRNG(seed: 18)
        let indices = UnsafeMutablePointer<Int32>.allocate(capacity: shape.output.count)
        defer { indices.deallocate() }
        checkGradients("MaxPool2d k\(k) s\(s) p\(p) ceil \(ceil)", inputs: [("x", rng.values(shape.input.count))],
                       outputCount: shape.output.count, forward: { io, y in
            MaxPool2d.forward(output: y, indices: indices, input: io.inputs[0], shape: shape)
        }, backward: { io, dy in
            MaxPool2d.backward(gradInput: io.grads[0]!, gradOutput: dy, indices: indices, input: shape.input,
                               outPlane: shape.output.plane)
        })
    }

    @Test("Global average pool")
    func globalAvgPool() {
        let shape = NCHW(2, 3, 4, 5)
        var rng = SeededRNG(seed: 19)
        checkGradients("GlobalAvgPool", inputs: [("x", rng.values(shape.count))], outputCount: 6, forward: { io, y in
            GlobalAvgPool.forward(output: y, input: io.inputs[0], shape: shape)
        }, backward: { io, dy in
            GlobalAvgPool.backward(gradInput: io.grads[0]!, gradOutput: dy, shape: shape)
        })
    }

    @Test("Adaptive pools and bicubic resize", arguments: [(7, 7, 2, 2), (7, 7, 3, 3), (5, 6, 4, 3), (4, 4, 6, 7), (3, 5, 1, 1)])
    func adaptive(_ h: Int, _ w: Int, _ oh: Int, _ ow: Int) {
        let shape = NCHW(2, 2, h, w), outCount = 4 * oh * ow
        var rng = SeededRNG(seed: 20)
        let x = rng.values(shape.count)
        let indices = UnsafeMutablePointer<Int32>.allocate(capacity: outCount)
        defer { indices.deallocate() }
        checkGradients("AdaptiveMaxPool2d \(shape) -> \(oh)x\(ow)", inputs: [("x", x)], outputCount: outCount, forward: { io, y in
            AdaptiveMaxPool2d.forward(output: y, indices: indices, input: io.inputs[0], shape: shape, outH: oh, outW: ow)
        }, backward: { io, dy in
            AdaptiveMaxPool2d.backward(gradInput: io.grads[0]!, gradOutput: dy, indices: indices, shape: shape, outH: oh, outW: ow)
        })
        checkGradients("AdaptiveAvgPool2d \(shape) -> \(oh)x\(ow)", inputs: [("x", x)], outputCount: outCount, forward: { io, y in
            AdaptiveAvgPool2d.forward(output: y, input: io.inputs[0], shape: shape, outH: oh, outW: ow)
        }, backward: { io, dy in
            AdaptiveAvgPool2d.backward(gradInput: io.grads[0]!, gradOutput: dy, shape: shape, outH: oh, outW: ow)
        })
        checkGradients("BicubicResize \(shape) -> \(oh)x\(ow)", inputs: [("x", x)], outputCount: outCount, forward: { io, y in
            BicubicResize.forward(output: y, input: io.inputs[0], shape: shape, outH: oh, outW: ow)
        }, backward: { io, dy in
            BicubicResize.backward(gradInput: io.grads[0]!, gradOutput: dy, shape: shape, outH: oh, outW: ow)
        })
    }
}
