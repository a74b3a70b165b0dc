// 2-D convolution (NCHW, any kernel, stride and padding, optional bias) via im2col + GEMM, forward and backward.

/// Geometry of a convolution: input (n, cIn, h, w), weight (cOut, cIn, kh, kw), output (n, cOut, outH, outW).
public struct Conv2dShape: Hashable, Sendable, CustomStringConvertible {
    public let n: Int, cIn: Int, h: Int, w: Int
    public let cOut: Int, kh: Int, kw: Int
    public let strideH: Int, strideW: Int, padH: Int, padW: Int

    /// A convolution geometry; the kernel must fit the padded input.
    public init(
        n: Int, cIn: Int, h: Int, w: Int, cOut: Int, kernel: (Int, Int),
        stride: (Int, Int) = (1, 1), padding: (Int, Int) = (0, 0)
    ) {
        precondition(n > 0 && cIn > 0 && h > 0 && w > 0 && cOut > 0,
                     "Conv2dShape: extents must be positive: input (\(n), \(cIn), \(h), \(w)), cOut \(cOut)")
        precondition(kernel.0 > 0 && kernel.1 > 0 && stride.0 > 0 && stride.1 > 0 && padding.0 >= 0 && padding.1 >= 0,
                     "Conv2dShape: bad kernel \(kernel), stride \(stride) or padding \(padding)")
        precondition(h + 2 * padding.0 >= kernel.0 && w + 2 * padding.1 >= kernel.1,
                     "Conv2dShape: kernel \(kernel) larger than padded input \(h)x\(w) + 2*\(padding)")
        self.n = n; self.cIn = cIn; self.h = h; self.w = w; self.cOut = cOut
        kh = kernel.0; kw = kernel.1; strideH = stride.0; strideW = stride.1; padH = padding.0; padW = padding.1
    }

    /// Square-kernel convenience.
    public init(n: Int, cIn: Int, h: Int, w: Int, cOut: Int, kernel: Int, stride: Int = 1, padding: Int = 0) {
        self.init(n: n, cIn: cIn, h: h, w: w, cOut: cOut, kernel: (kernel, kernel),
                  stride: (stride, stride), padding: (padding, padding))
    }

    /// Output height, PyTorch's floor((h + 2p - k) / s) + 1.
    public var outH: Int { (h + 2 * padH - kh) / strideH + 1 }
    /// Output width.
    public var outW: Int { (w + 2 * padW - kw) / strideW + 1 }
    /// Output positions per image.
    public var outPlane: Int { outH * outW }
    /// GEMM inner dimension: cIn * kh * kw.
    public var k: Int { cIn * kh * kw }
    /// Elements of the weight (cOut, cIn, kh, kw).
    public var weightCount: Int { cOut * k }
    /// Elements of the input.
    public var inputCount: Int { n * cIn * h * w }
    /// Elements of the output.
    public var outputCount: Int { n * cOut * outPlane }
    /// A 1x1, stride-1, unpadded convolution: a plain GEMM on each image, no im2col.
    public var isPointwise: Bool { kh == 1 && kw == 1 && strideH == 1 && strideW == 1 && padH == 0 && padW == 0 }
    /// Multiply-adds of the forward pass for the whole batch.
    public var macs: Int { n * cOut * outPlane * k }

    public var description: String {
        "conv \(cIn)->\(cOut) \(kh)x\(kw)/\(strideH) pad \(padH) on (\(n), \(cIn), \(h), \(w)) -> (\(n), \(cOut), \(outH), \(outW))"
    }

    /// Images per GEMM: enough for about `targetColumns` output columns, capped by the batch.
    func groupSize(targetColumns: Int) -> Int {
        if isPointwise { return 1 }
        return max(1, min(n, (targetColumns + outPlane - 1) / outPlane))
    }
}

/// Convolution kernels. Weight layout (cOut, cIn, kh, kw) like PyTorch; bias (cOut).
///
/// Images are processed in groups: the group's im2col columns sit side by side so one GEMM covers the
/// group, which keeps GEMMs large for small feature maps (7x7 at layer4). The backward recomputes the
/// columns instead of keeping them from the forward.
public enum Conv2d {
    /// Output columns per GEMM that groups aim for.
    public static let defaultTargetColumns = 2048

    /// Workspace elements `forward` and `backward` need for `shape`.
    public static func workspaceCount(_ shape: Conv2dShape, targetColumns: Int = defaultTargetColumns) -> Int {
        let g = shape.groupSize(targetColumns: targetColumns)
        let cols = g * shape.outPlane
        return shape.k * cols * 2 + shape.cOut * cols
    }

    /// y = conv(x, weight) + bias. Overwrites `output`.
    /// - Parameters:
    ///   - output: (n, cOut, outH, outW), overwritten.
    ///   - input: (n, cIn, h, w).
    ///   - weight: (cOut, cIn, kh, kw).
    ///   - bias: (cOut) or nil.
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func forward<T: KernelScalar>(
        output: UnsafeMutablePointer<T>, input: UnsafePointer<T>, weight: UnsafePointer<T>, bias: UnsafePointer<T>?,
        shape s: Conv2dShape, workspace: Workspace<T>, targetColumns: Int = defaultTargetColumns
    ) {
        let plane = s.outPlane, inImage = s.cIn * s.h * s.w, outImage = s.cOut * plane
        if s.isPointwise {
            for b in 0..<s.n {
                T.gemm(transA: false, transB: false, m: s.cOut, n: plane, k: s.cIn, alpha: 1, a: weight, lda: s.cIn,
                       b: input + b * inImage, ldb: plane, beta: 0, c: output + b * outImage, ldc: plane)
            }
        } else {
            let g = s.groupSize(targetColumns: targetColumns)
            let col = workspace.reserve(workspaceCount(s, targetColumns: targetColumns))
            let tmp = col + s.k * g * plane
            var b0 = 0
            while b0 < s.n {
                let gb = min(g, s.n - b0)
                let ld = gb * plane
                im2col(col: col, ld: ld, input: input + b0 * inImage, images: gb, shape: s)
                if gb == 1 {
                    T.gemm(transA: false, transB: false, m: s.cOut, n: plane, k: s.k, alpha: 1, a: weight, lda: s.k,
                           b: col, ldb: ld, beta: 0, c: output + b0 * outImage, ldc: plane)
                } else {
                    T.gemm(transA: false, transB: false, m: s.cOut, n: ld, k: s.k, alpha: 1, a: weight, lda: s.k,
                           b: col, ldb: ld, beta: 0, c: tmp, ldc: ld)
                    // (cOut, gb*plane) -> gb images of (cOut, plane)
                    scatterColumns(dst: output + b0 * outImage, src: tmp, rows: s.cOut, images: gb, plane: plane)
                }
                b0 += gb
            }
        }
        if let bias {
            Parallel.forEach(s.n * s.cOut, grain: 16) { r in
                for i in r {
                    let bv = bias[i % s.cOut]
                    let p = output + i * plane
                    for j in 0..<plane { p[j] += bv }
                }
            }
        }
    }

    /// Gradients of `forward`. Accumulates into `gradWeight`, `gradBias` and `gradInput` (skip the input
    /// gradient with nil, e.g. for the first layer).
    /// - Parameters:
    ///   - gradInput: (n, cIn, h, w), accumulated, or nil.
    ///   - gradWeight: (cOut, cIn, kh, kw), accumulated.
    ///   - gradBias: (cOut), accumulated, or nil.
    ///   - gradOutput: (n, cOut, outH, outW).
    ///   - input: the forward's input.
    ///   - weight: the forward's weight.
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func backward<T: KernelScalar>(
        gradInput: UnsafeMutablePointer<T>?, gradWeight: UnsafeMutablePointer<T>, gradBias: UnsafeMutablePointer<T>?,
        gradOutput: UnsafePointer<T>, input: UnsafePointer<T>, weight: UnsafePointer<T>,
        shape s: Conv2dShape, workspace: Workspace<T>, targetColumns: Int = defaultTargetColumns
    ) {
        let plane = s.outPlane, inImage = s.cIn * s.h * s.w, outImage = s.cOut * plane
        if let gradBias {
            Parallel.forEach(s.cOut, grain: 8) { r in
                for m in r {
                    var acc: T = 0
                    for b in 0..<s.n {
                        let p = gradOutput + b * outImage + m * plane
                        for j in 0..<plane { acc += p[j] }
                    }
                    gradBias[m] += acc
                }
            }
        }
        if s.isPointwise {
            for b in 0..<s.n {
                let dy = gradOutput + b * outImage
                T.gemm(transA: false, transB: true, m: s.cOut, n: s.cIn, k: plane, alpha: 1, a: dy, lda: plane,
                       b: input + b * inImage, ldb: plane, beta: 1, c: gradWeight, ldc: s.cIn)
                if let gradInput {
                    T.gemm(transA: true, transB: false, m: s.cIn, n: plane, k: s.cOut, alpha: 1, a: weight, lda: s.cIn,
                           b: dy, ldb: plane, beta: 1, c: gradInput + b * inImage, ldc: plane)
                }
            }
            return
        }
        let g = s.groupSize(targetColumns: targetColumns)
        let col = workspace.reserve(workspaceCount(s, targetColumns: targetColumns))
        let dcol = col + s.k * g * plane
        let dyg = dcol + s.k * g * plane
        var b0 = 0
        while b0 < s.n {
            let gb = min(g, s.n - b0)
            let ld = gb * plane
            let dy: UnsafePointer<T>
            if gb == 1 {
                dy = gradOutput + b0 * outImage
            } else {
                gatherColumns(dst: dyg, src: gradOutput + b0 * outImage, rows: s.cOut, images: gb, plane: plane)
                dy = UnsafePointer(dyg)
            }
            im2col(col: col, ld: ld, input: input + b0 * inImage, images: gb, shape: s)
            // dW (cOut, k) += dy (cOut, ld) * col^T (ld, k)
            T.gemm(transA: false, transB: true, m: s.cOut, n: s.k, k: ld, alpha: 1, a: dy, lda: ld,
                   b: col, ldb: ld, beta: 1, c: gradWeight, ldc: s.k)
            if let gradInput {
                // dcol (k, ld) = W^T (k, cOut) * dy (cOut, ld)
                T.gemm(transA: true, transB: false, m: s.k, n: ld, k: s.cOut, alpha: 1, a: weight, lda: s.k,
                       b: dy, ldb: ld, beta: 0, c: dcol, ldc: ld)
                col2im(gradInput: gradInput + b0 * inImage, col: dcol, ld: ld, images: gb, shape: s)
            }
            b0 += gb
        }
    }

    // MARK: - im2col / col2im

    /// Writes the columns of `images` consecutive images: row r = (c, ky, kx), column j*outPlane + (oy, ox).
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    static func im2col<T: KernelScalar>(
        col: UnsafeMutablePointer<T>, ld: Int, input: UnsafePointer<T>, images: Int, shape s: Conv2dShape
    ) {
        let kk = s.kh * s.kw, plane = s.outPlane, inImage = s.cIn * s.h * s.w
        let oh = s.outH, ow = s.outW
        Parallel.forEach(s.k, grain: 4) { rows in
            for r in rows {
                let c = r / kk, ky = (r / s.kw) % s.kh, kx = r % s.kw
                // Valid output columns for this kx: ix = ox*sw - pw + kx in [0, w).
                let oxLo = max(0, (s.padW - kx + s.strideW - 1) / s.strideW)
                let oxHi = min(ow, floorDivide(s.w - 1 + s.padW - kx, s.strideW) + 1)   // exclusive
                for j in 0..<images {
                    let src = input + j * inImage + c * s.h * s.w
                    var dst = col + r * ld + j * plane
                    for oy in 0..<oh {
                        let iy = oy * s.strideH - s.padH + ky
                        if iy < 0 || iy >= s.h || oxLo >= oxHi {
                            dst.update(repeating: 0, count: ow)
                        } else {
                            if oxLo > 0 { dst.update(repeating: 0, count: oxLo) }
                            let row = src + iy * s.w
                            if s.strideW == 1 {
                                (dst + oxLo).update(from: row + (oxLo - s.padW + kx), count: oxHi - oxLo)
                            } else {
                                var ix = oxLo * s.strideW - s.padW + kx
                                for ox in oxLo..<oxHi {
                                    dst[ox] = row[ix]
                                    ix += s.strideW
                                }
                            }
                            if oxHi < ow { (dst + oxHi).update(repeating: 0, count: ow - oxHi) }
                        }
                        dst += ow
                    }
                }
            }
        }
    }

    /// Adds the columns back into the images they came from (the adjoint of `im2col`).
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    static func col2im<T: KernelScalar>(
        gradInput: UnsafeMutablePointer<T>, col: UnsafePointer<T>, ld: Int, images: Int, shape s: Conv2dShape
    ) {
        let kk = s.kh * s.kw, plane = s.outPlane, inImage = s.cIn * s.h * s.w
        let oh = s.outH, ow = s.outW
        // Parallel over channels: the rows of channel c only write channel c of the input gradient.
        Parallel.forEach(s.cIn, grain: 1) { channels in
            for c in channels {
                for kidx in 0..<kk {
                    let r = c * kk + kidx
                    let ky = kidx / s.kw, kx = kidx % s.kw
                    let oxLo = max(0, (s.padW - kx + s.strideW - 1) / s.strideW)
                    let oxHi = min(ow, floorDivide(s.w - 1 + s.padW - kx, s.strideW) + 1)
                    if oxLo >= oxHi { continue }
                    for j in 0..<images {
                        let dstImage = gradInput + j * inImage + c * s.h * s.w
                        var src = col + r * ld + j * plane
                        for oy in 0..<oh {
                            let iy = oy * s.strideH - s.padH + ky
                            if iy >= 0 && iy < s.h {
                                let row = dstImage + iy * s.w
                                var ix = oxLo * s.strideW - s.padW + kx
                                for ox in oxLo..<oxHi {
                                    row[ix] += src[ox]
                                    ix += s.strideW
                                }
                            }
                            src += ow
                        }
                    }
                }
            }
        }
    }

    /// (rows, images*plane) -> images x (rows, plane).
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    static func scatterColumns<T: KernelScalar>(
        dst: UnsafeMutablePointer<T>, src: UnsafePointer<T>, rows: Int, images: Int, plane: Int
    ) {
        let ld = images * plane
        Parallel.forEach(rows, grain: 4) { r in
            for m in r {
                for j in 0..<images {
                    (dst + (j * rows + m) * plane).update(from: src + m * ld + j * plane, count: plane)
                }
            }
        }
    }

    /// images x (rows, plane) -> (rows, images*plane).
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    static func gatherColumns<T: KernelScalar>(
        dst: UnsafeMutablePointer<T>, src: UnsafePointer<T>, rows: Int, images: Int, plane: Int
    ) {
        let ld = images * plane
        Parallel.forEach(rows, grain: 4) { r in
            for m in r {
                for j in 0..<images {
                    (dst + m * ld + j * plane).update(from: src + (j * rows + m) * plane, count: plane)
                }
            }
        }
    }
}

/// Integer division rounding toward negative infinity.
@inline(__always)
func floorDivide(_ a: Int, _ b: Int) -> Int {
    let q = a / b
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q
}
