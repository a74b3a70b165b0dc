// Bicubic resize identical to PyTorch's interpolate(mode="bicubic", align_corners=False), forward and backward.

/// Bicubic interpolation to a given size: A = -0.75, source index (dst + 0.5) * in/out - 0.5 (not clamped),
/// the four taps clamped to the border, no antialiasing (PyTorch's defaults).
public enum BicubicResize {
    static let a = -0.75

    @inline(__always)
    static func cubic1<T: KernelScalar>(_ x: T) -> T {
        let A = T(a)
        return ((A + 2) * x - (A + 3)) * x * x + 1
    }

    @inline(__always)
    static func cubic2<T: KernelScalar>(_ x: T) -> T {
        let A = T(a)
        return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A
    }

    /// For each output index along one axis: the first tap's input index (before clamping) and 4 weights.
    @inline(__always)
    static func taps<T: KernelScalar>(_ dst: Int, inSize: Int, outSize: Int) -> (Int, T, T, T, T) {
        let scale = T(inSize) / T(outSize)
        let src = scale * (T(dst) + T(0.5)) - T(0.5)
        let f = src.rounded(.down)
        let t = src - f
        return (Int(f) - 1, cubic2(t + 1), cubic1(t), cubic1(1 - t), cubic2(2 - t))
    }

    @inline(__always)
    static func clamp(_ i: Int, _ size: Int) -> Int { min(max(i, 0), size - 1) }

    /// Resizes each (h, w) plane to (outH, outW). Overwrites `output` (n, c, outH, outW).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func forward<T: KernelScalar>(
        output: UnsafeMutablePointer<T>, input: UnsafePointer<T>, shape: NCHW, outH: Int, outW: Int
    ) {
        precondition(outH > 0 && outW > 0, "BicubicResize: output size \(outH)x\(outW) must be positive")
        let h = shape.h, w = shape.w
        Parallel.forEach(shape.n * shape.c, grain: 4) { r in
            for p in r {
                let x = input + p * h * w, y = output + p * outH * outW
                for oy in 0..<outH {
                    let (y0, wy0, wy1, wy2, wy3): (Int, T, T, T, T) = taps(oy, inSize: h, outSize: outH)
                    let wy = (wy0, wy1, wy2, wy3)
                    for ox in 0..<outW {
                        let (x0, wx0, wx1, wx2, wx3): (Int, T, T, T, T) = taps(ox, inSize: w, outSize: outW)
                        var acc: T = 0
                        for ky in 0..<4 {
                            let row = x + clamp(y0 + ky, h) * w
                            let rowValue = wx0 * row[clamp(x0, w)] + wx1 * row[clamp(x0 + 1, w)]
                                + wx2 * row[clamp(x0 + 2, w)] + wx3 * row[clamp(x0 + 3, w)]
                            let k: T = ky == 0 ? wy.0 : ky == 1 ? wy.1 : ky == 2 ? wy.2 : wy.3
                            acc += k * rowValue
                        }
                        y[oy * outW + ox] = acc
                    }
                }
            }
        }
    }

    /// dx += the adjoint of `forward` applied to dy.
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
                    let (y0, wy0, wy1, wy2, wy3): (Int, T, T, T, T) = taps(oy, inSize: h, outSize: outH)
                    for ox in 0..<outW {
                        let (x0, wx0, wx1, wx2, wx3): (Int, T, T, T, T) = taps(ox, inSize: w, outSize: outW)
                        let g = dy[oy * outW + ox]
                        for ky in 0..<4 {
                            let row = dx + clamp(y0 + ky, h) * w
                            let gk = g * (ky == 0 ? wy0 : ky == 1 ? wy1 : ky == 2 ? wy2 : wy3)
                            row[clamp(x0, w)] += gk * wx0
                            row[clamp(x0 + 1, w)] += gk * wx1
                            row[clamp(x0 + 2, w)] += gk * wx2
                            row[clamp(x0 + 3, w)] += gk * wx3
                        }
                    }
                }
            }
        }
    }
}
