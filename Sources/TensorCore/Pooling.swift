// Max pooling, global average pooling, and adaptive max/average pooling (PyTorch's bins), forward and backward.
import CKernels

/// Geometry of a 2-D max pool (dilation 1) with PyTorch's output size rule.
public struct Pool2dShape: Hashable, Sendable {
    public let input: NCHW
    public let kernel: Int, stride: Int, padding: Int, ceilMode: Bool

    /// A pooling geometry; padding must be at most half the kernel (PyTorch's rule).
    public init(input: NCHW, kernel: Int, stride: Int? = nil, padding: Int = 0, ceilMode: Bool = false) {
        let s = stride ?? kernel
        precondition(kernel > 0 && s > 0 && padding >= 0, "MaxPool2d: bad kernel \(kernel), stride \(s), padding \(padding)")
        precondition(padding * 2 <= kernel, "MaxPool2d: padding \(padding) must be at most half of kernel \(kernel)")
        self.input = input; self.kernel = kernel; self.stride = s; self.padding = padding; self.ceilMode = ceilMode
        precondition(outH > 0 && outW > 0, "MaxPool2d: kernel \(kernel) gives an empty output for input \(input)")
    }

    static func outSize(_ size: Int, kernel: Int, stride: Int, padding: Int, ceil: Bool) -> Int {
        let num = size + 2 * padding - (kernel - 1) - 1 + (ceil ? stride - 1 : 0)
        var out = floorDivide(num, stride) + 1
        // The last window must start inside the input or the left padding.
        if ceil && (out - 1) * stride >= size + padding { out -= 1 }
        return out
    }

    /// Output height.
    public var outH: Int { Self.outSize(input.h, kernel: kernel, stride: stride, padding: padding, ceil: ceilMode) }
    /// Output width.
    public var outW: Int { Self.outSize(input.w, kernel: kernel, stride: stride, padding: padding, ceil: ceilMode) }
    /// Output shape.
    public var output: NCHW { NCHW(input.n, input.c, outH, outW) }
}

/// Max pooling over square windows.
public enum MaxPool2d {
    /// y = max over each window (padding never wins; NaN propagates like PyTorch: the window's last NaN wins,
    /// else its first maximum in row-major order). Overwrites `output` and `indices` (the argmax's offset within
    /// its input plane, for backward). Float32 runs the branch-free C kernel, Double this file's loop.
    /// - Parameters:
    ///   - output, indices: (n, c, outH, outW).
    ///   - input: (n, c, h, w).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func forward<T: KernelScalar>(
        output: UnsafeMutablePointer<T>, indices: UnsafeMutablePointer<Int32>, input: UnsafePointer<T>,
        shape s: Pool2dShape
    ) {
        let h = s.input.h, w = s.input.w, oh = s.outH, ow = s.outW
        Parallel.forEach(s.input.n * s.input.c, grain: 4) { r in
            if T.self == Float.self {
                let lo = r.lowerBound
                hd_maxpool2d_forward(asFloat(output) + lo * oh * ow, indices + lo * oh * ow, asFloat(input) + lo * h * w,
                                     r.count, Int32(h), Int32(w), Int32(oh), Int32(ow),
                                     Int32(s.kernel), Int32(s.stride), Int32(s.padding))
                return
            }
            for p in r {
                let x = input + p * h * w, y = output + p * oh * ow, idx = indices + p * oh * ow
                for oy in 0..<oh {
                    let y0 = oy * s.stride - s.padding
                    let ys = max(y0, 0), ye = min(y0 + s.kernel, h)
                    for ox in 0..<ow {
                        let x0 = ox * s.stride - s.padding
                        let xs = max(x0, 0), xe = min(x0 + s.kernel, w)
                        var best = -T.infinity, bestIndex = ys * w + xs
                        for iy in ys..<ye {
                            for ix in xs..<xe {
                                let v = x[iy * w + ix]
                                if v > best || v.isNaN { best = v; bestIndex = iy * w + ix }
                            }
                        }
                        y[oy * ow + ox] = best
                        idx[oy * ow + ox] = Int32(bestIndex)
                    }
                }
            }
        }
    }

    /// dx[argmax] += dy.
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func backward<T: KernelScalar>(
        gradInput: UnsafeMutablePointer<T>, gradOutput: UnsafePointer<T>, indices: UnsafePointer<Int32>,
        input: NCHW, outPlane: Int
    ) {
        scatterByIndex(gradInput: gradInput, gradOutput: gradOutput, indices: indices, planes: input.n * input.c,
                       inPlane: input.plane, outPlane: outPlane)
    }
}

/// Scatters each plane's output gradients to the input positions named by `indices` (max pools' backward).
@_specialize(exported: true, where T == Float)
@_specialize(exported: true, where T == Double)
func scatterByIndex<T: KernelScalar>(
    gradInput: UnsafeMutablePointer<T>, gradOutput: UnsafePointer<T>, indices: UnsafePointer<Int32>,
    planes: Int, inPlane: Int, outPlane: Int
) {
    Parallel.forEach(planes, grain: 4) { r in
        for p in r {
            let dx = gradInput + p * inPlane, dy = gradOutput + p * outPlane, idx = indices + p * outPlane
            for i in 0..<outPlane { dx[Int(idx[i])] += dy[i] }
        }
    }
}

/// Global average pooling: (n, c, h, w) -> (n, c).
public enum GlobalAvgPool {
    /// y[n, c] = mean over the plane. Overwrites `output`.
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func forward<T: KernelScalar>(output: UnsafeMutablePointer<T>, input: UnsafePointer<T>, shape: NCHW) {
        let plane = shape.plane, inv = 1 / T(plane)
        Parallel.forEach(shape.n * shape.c, grain: 64) { r in
            for p in r {
                output[p] = reduceSum(input + p * plane, plane) * inv
            }
        }
    }

    /// dx += dy / (h * w).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func backward<T: KernelScalar>(gradInput: UnsafeMutablePointer<T>, gradOutput: UnsafePointer<T>, shape: NCHW) {
        let plane = shape.plane, inv = 1 / T(plane)
        Parallel.forEach(shape.n * shape.c, grain: 64) { r in
            for p in r {
                let g = gradOutput[p] * inv, dx = gradInput + p * plane
                for i in 0..<plane { dx[i] += g }
            }
        }
    }
}

/// PyTorch's adaptive pooling bins: output index i covers input [floor(i*in/out), ceil((i+1)*in/out)).
@inline(__always)
func adaptiveBin(_ i: Int, inSize: Int, outSize: Int) -> Range<Int> {
    let start = (i * inSize) / outSize
    let end = ((i + 1) * inSize + outSize - 1) / outSize
    return start..<end
}

/// Adaptive max pooling to (outH, outW).
public enum AdaptiveMaxPool2d {
    /// y = max over each adaptive bin. Overwrites `output` and `indices` (argmax offset within the input plane).
    /// - Parameters:
    ///   - output, indices: (n, c, outH, outW).
    ///   - input: (n, c, h, w).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func forward<T: KernelScalar>(
        output: UnsafeMutablePointer<T>, indices: UnsafeMutablePointer<Int32>, input: UnsafePointer<T>,
        shape: NCHW, outH: Int, outW: Int
    ) {
        precondition(outH > 0 && outW > 0, "AdaptiveMaxPool2d: output size \(outH)x\(outW) must be positive")
        let h = shape.h, w = shape.w
        Parallel.forEach(shape.n * shape.c, grain: 4) { r in
            for p in r {
                let x = input + p * h * w, y = output + p * outH * outW, idx = indices + p * outH * outW
                for oy in 0..<outH {
                    let rows = adaptiveBin(oy, inSize: h, outSize: outH)
                    for ox in 0..<outW {
                        let cols = adaptiveBin(ox, inSize: w, outSize: outW)
                        var best = -T.infinity, bestIndex = rows.lowerBound * w + cols.lowerBound
                        scan: for iy in rows {
                            for ix in cols {
                                let v = x[iy * w + ix]
                                if v > best || v.isNaN { best = v; bestIndex = iy * w + ix; if v.isNaN { break scan } }
                            }
                        }
                        y[oy * outW + ox] = best
                        idx[oy * outW + ox] = Int32(bestIndex)
                    }
                }
            }
        }
    }

    /// dx[argmax] += dy.
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func backward<T: KernelScalar>(
        gradInput: UnsafeMutablePointer<T>, gradOutput: UnsafePointer<T>, indices: UnsafePointer<Int32>,
        shape: NCHW, outH: Int, outW: Int
    ) {
        scatterByIndex(gradInput: gradInput, gradOutput: gradOutput, indices: indices, planes: shape.n * shape.c,
                       inPlane: shape.plane, outPlane: outH * outW)
    }
}

/// Adaptive average pooling to (outH, outW).
public enum AdaptiveAvgPool2d {
    /// y = mean over each adaptive bin. Overwrites `output` (n, c, outH, outW).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func forward<T: KernelScalar>(
        output: UnsafeMutablePointer<T>, input: UnsafePointer<T>, shape: NCHW, outH: Int, outW: Int
    ) {
        precondition(outH > 0 && outW > 0, "AdaptiveAvgPool2d: output size \(outH)x\(outW) must be positive")
        let h = shape.h, w = shape.w
        Parallel.forEach(shape.n * shape.c, grain: 4) { r in
            for p in r {
                let x = input + p * h * w, y = output + p * outH * outW
                for oy in 0..<outH {
                    let rows = adaptiveBin(oy, inSize: h, outSize: outH)
                    for ox in 0..<outW {
                        let cols = adaptiveBin(ox, inSize: w, outSize: outW)
                        var s: T = 0
                        for iy in rows { for ix in cols { s += x[iy * w + ix] } }
                        y[oy * outW + ox] = s / T(rows.count * cols.count)
                    }
                }
            }
        }
    }

    /// dx += dy / bin size over each bin.
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func backward<T: KernelScalar>(
        gradInput: UnsafeMutablePointer<T>, gradOutput: UnsafePointer<T>, shape: NCHW, outH: Int, outW: Int
    ) {
        let h = shape.h, w = shape.w
        Parallel.forEach(shape.n * shape.c, grain: 4) { r in
            for p in r {
                let dx = gradInput + p * h * w, dy = gradOutput + p * outH * outW
                for oy in 0..<outH {
                    let rows = adaptiveBin(oy, inSize: h, outSize: outH)
                    for ox in 0..<outW {
                        let cols = adaptiveBin(ox, inSize: w, outSize: outW)
                        let g = dy[oy * outW + ox] / T(rows.count * cols.count)
                        for iy in rows { for ix in cols { dx[iy * w + ix] += g } }
                    }
                }
            }
        }
    }
}
