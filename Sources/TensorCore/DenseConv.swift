// Convolutions on maps of fewer input positions than kernel taps, run as the dense layer they are.
//
// On a 2x2 map a padded 3x3 convolution reads, for each output position, 4 input positions through 4 of its 9 taps:
// im2col + GEMM multiplies 5 of every 9 weights by padding zeros. Written as a dense layer over whole images, output
// (cOut x outPositions) = W_eff (cOut * outPositions x cIn * inPositions) * input (cIn * inPositions), where
// W_eff[(co, po), (ci, pi)] is the weight of the tap joining input position pi to output position po (0 when none
// does), it multiplies only what some tap joins: 4/9 of the work at 2x2 and 1/9 on a 1x1 map (the low-resolution
// students' last layers: layer4 at 56 px, layer3 and layer4 at 28 and 14 px). The batch is the GEMM's rows, so an
// image's NCHW data is one row as it lies in memory: no im2col, no col2im.
import CKernels

/// Dense-layer form of a convolution on a small map (see the file's header).
public enum DenseConv {
    /// Whether `algorithm` runs `s` as a dense layer: `.automatic` does when output positions times input positions
    /// are fewer than the kernel's taps, so that W_eff is smaller than the weight and the dense layer has fewer
    /// multiply-adds than im2col's GEMM (a 1x1 map, or 2x2 to 1x1 at stride 2; on a 2x2 map to 2x2, W_eff is 16/9 of
    /// the weight and packing it costs what the skipped zeros save, measured with `histodistill-bench`), and the conv
    /// is not a plain per-pixel GEMM already (`isPointwise`).
    public static func chooses(_ algorithm: ConvAlgorithm, _ s: Conv2dShape) -> Bool {
        (algorithm == .automatic || algorithm == .winograd) && !s.isPointwise && s.outPlane * s.h * s.w < s.kh * s.kw
    }

    /// The tap joining input position pi to output position po of one image (index ky * kw + kx), or -1: entry
    /// po * inPositions + pi.
    static func taps(_ s: Conv2dShape) -> [Int] {
        let inPositions = s.h * s.w
        var t = [Int](repeating: -1, count: s.outPlane * inPositions)
        for oy in 0..<s.outH {
            for ox in 0..<s.outW {
                let po = oy * s.outW + ox
                for ky in 0..<s.kh {
                    let iy = oy * s.strideH - s.padH + ky
                    guard iy >= 0 && iy < s.h else { continue }
                    for kx in 0..<s.kw {
                        let ix = ox * s.strideW - s.padW + kx
                        guard ix >= 0 && ix < s.w else { continue }
                        t[po * inPositions + iy * s.w + ix] = ky * s.kw + kx
                    }
                }
            }
        }
        return t
    }

    /// Writes W_eff (cOut * outPlane rows of cIn * inPositions) from the weight (cOut, cIn, kh, kw).
    static func effectiveWeight<T: KernelScalar>(_ dst: UnsafeMutablePointer<T>, weight: UnsafePointer<T>, shape s: Conv2dShape,
                                                 taps: [Int]) {
        let inPositions = s.h * s.w, kk = s.kh * s.kw, cols = s.cIn * inPositions
        Parallel.forEach(s.cOut, grain: 8) { r in
            for co in r {
                for po in 0..<s.outPlane {
                    let row = dst + (co * s.outPlane + po) * cols
                    for ci in 0..<s.cIn {
                        let w = weight + (co * s.cIn + ci) * kk, out = row + ci * inPositions
                        for pi in 0..<inPositions {
                            let t = taps[po * inPositions + pi]
                            out[pi] = t >= 0 ? w[t] : 0
                        }
                    }
                }
            }
        }
    }

    /// Forward: output (n, cOut, outH, outW) = conv(input, weight) + bias, as input (n x cIn * inPositions) times
    /// W_eff^T. `bf16`: the GEMM takes bfloat16 operands (`Conv2d.usesBF16`).
    static func forward<T: KernelScalar>(
        output: UnsafeMutablePointer<T>, input: UnsafePointer<T>, weight: UnsafePointer<T>, bias: UnsafePointer<T>?,
        shape s: Conv2dShape, workspace: Workspace<T>, bf16: Bool
    ) {
        let inRow = s.cIn * s.h * s.w, outRow = s.cOut * s.outPlane
        let weff = workspace.reserve(outRow * inRow)
        effectiveWeight(weff, weight: weight, shape: s, taps: taps(s))
        let workers = min(Parallel.width, s.n)
        Parallel.workers(workers) { w in
            let lo = s.n * w / workers, hi = s.n * (w + 1) / workers
            guard lo < hi else { return }
            // y (images, outRow) = x (images, inRow) * W_eff^T
            Conv2d.convGEMM(bf16, transA: false, transB: true, m: hi - lo, n: outRow, k: inRow, alpha: 1,
                            a: input + lo * inRow, lda: inRow, b: weff, ldb: inRow, beta: 0, c: output + lo * outRow, ldc: outRow)
            guard let bias else { return }
            for img in lo..<hi {
                for co in 0..<s.cOut {
                    let y = output + img * outRow + co * s.outPlane, b = bias[co]
                    for p in 0..<s.outPlane { y[p] += b }
                }
            }
        }
    }

    /// Backward: accumulates into `gradWeight` and (unless nil) `gradInput`; the bias gradient is the caller's.
    /// dx += dy * W_eff, and dW_eff = dy^T * x folded back onto the taps: dW[co][ci][t] += the entries of dW_eff that
    /// tap t joins.
    static func backward<T: KernelScalar>(
        gradInput: UnsafeMutablePointer<T>?, gradWeight: UnsafeMutablePointer<T>, gradOutput: UnsafePointer<T>,
        input: UnsafePointer<T>, weight: UnsafePointer<T>, shape s: Conv2dShape, workspace: Workspace<T>, bf16: Bool
    ) {
        let inPositions = s.h * s.w, inRow = s.cIn * inPositions, outRow = s.cOut * s.outPlane, kk = s.kh * s.kw
        let map = taps(s)
        let weff = workspace.reserve(2 * outRow * inRow)
        let dweff = weff + outRow * inRow
        if gradInput != nil { effectiveWeight(weff, weight: weight, shape: s, taps: map) }
        let workers = min(Parallel.width, max(s.n, s.cOut))
        Parallel.workers(workers) { w in
            // The input gradient by images: dx (images, inRow) += dy (images, outRow) * W_eff.
            if let gradInput {
                let lo = s.n * w / workers, hi = s.n * (w + 1) / workers
                if lo < hi {
                    Conv2d.convGEMM(bf16, transA: false, transB: false, m: hi - lo, n: inRow, k: outRow, alpha: 1,
                                    a: gradOutput + lo * outRow, lda: outRow, b: weff, ldb: inRow, beta: 1,
                                    c: gradInput + lo * inRow, ldc: inRow)
                }
            }
            // The weight gradient by output channels: rows (co, po) of dW_eff = dy^T * x, then folded.
            let c0 = s.cOut * w / workers, c1 = s.cOut * (w + 1) / workers
            guard c0 < c1 else { return }
            let rows = (c1 - c0) * s.outPlane, first = c0 * s.outPlane
            Conv2d.convGEMM(bf16, transA: true, transB: false, m: rows, n: inRow, k: s.n, alpha: 1,
                            a: gradOutput + first, lda: outRow, b: input, ldb: inRow, beta: 0,
                            c: dweff + first * inRow, ldc: inRow)
            for co in c0..<c1 {
                for po in 0..<s.outPlane {
                    let row = dweff + (co * s.outPlane + po) * inRow
                    for ci in 0..<s.cIn {
                        let dw = gradWeight + (co * s.cIn + ci) * kk, src = row + ci * inPositions
                        for pi in 0..<inPositions {
                            let t = map[po * inPositions + pi]
                            if t >= 0 { dw[t] += src[pi] }
                        }
                    }
                }
            }
        }
    }
}
