// 2-D convolution (NCHW, any kernel, stride and padding, optional bias), forward and backward: im2col + GEMM, the
// direct kernel of DirectConv.swift where it runs and is faster, or on maps smaller than the kernel the dense layer of
// DenseConv.swift (`ConvAlgorithm`).
import CKernels

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
}

/// How a convolution splits its output columns (images x output positions) into GEMM tiles.
///
/// A tile is either a range of one image's output positions (large feature maps) or a group of whole images
/// whose columns sit side by side (small feature maps, e.g. 7x7 at layer4, where one image alone would give a
/// GEMM 49 columns wide). Tiles aim for `columnBudget` floats of im2col columns, so the columns are still in
/// cache when the GEMM reads them, and never fewer than `minColumns` output columns.
public struct ConvTiling: Hashable, Sendable {
    /// Floats of im2col columns one tile aims for.
    public var columnBudget: Int
    /// Fewest output columns per tile (GEMMs narrower than this run slowly).
    public var minColumns: Int

    /// A tiling; both sizes must be positive.
    public init(columnBudget: Int, minColumns: Int) {
        precondition(columnBudget > 0 && minColumns > 0, "ConvTiling: budget \(columnBudget) and minColumns \(minColumns) must be positive")
        self.columnBudget = columnBudget
        self.minColumns = minColumns
    }

    /// The tiling used unless a caller asks otherwise (measured best on this machine; docs/benchmarks.md).
    public static let `default` = ConvTiling(columnBudget: 1 << 18, minColumns: 512)

    /// Target output columns per tile for `s`.
    func targetColumns(_ s: Conv2dShape) -> Int { max(minColumns, columnBudget / s.k) }

    /// The tiles covering images `images` of `s`: (first image, image count, first position, position count).
    func tiles(_ s: Conv2dShape, images: Range<Int>) -> [ConvTile] {
        let plane = s.outPlane, target = targetColumns(s), n = images.count
        guard n > 0 else { return [] }
        var result: [ConvTile] = []
        if plane >= target || n == 1 {
            let perImage = max(1, plane / target)
            for img in images {
                for t in 0..<perImage {
                    let lo = plane * t / perImage, hi = plane * (t + 1) / perImage
                    result.append(ConvTile(image: img, images: 1, start: lo, count: hi - lo))
                }
            }
        } else {
            let wanted = (target + plane - 1) / plane
            let groups = (n + wanted - 1) / wanted
            for g in 0..<groups {
                let lo = images.lowerBound + n * g / groups, hi = images.lowerBound + n * (g + 1) / groups
                result.append(ConvTile(image: lo, images: hi - lo, start: 0, count: (hi - lo) * plane))
            }
        }
        return result
    }
}

/// One GEMM's worth of output columns: `images` consecutive images from `image`, positions
/// `start..<start+count` of their concatenated output planes.
struct ConvTile {
    var image: Int, images: Int, start: Int, count: Int
}

/// Convolution kernels. Weight layout (cOut, cIn, kh, kw) like PyTorch; bias (cOut).
///
/// `forward` and `backward` hand Float32 convs to `DirectConv` when `DirectConv.chooses(algorithm, shape)`;
/// the rest of this type is the im2col + GEMM path. Work is split into tiles (`ConvTiling`). With several threads, each worker takes its own images (or, with
/// fewer images than workers in the forward, its own tiles) and calls a single-threaded GEMM on its tile, so
/// im2col, GEMM and col2im of a tile stay on one core and in its cache. The backward recomputes the im2col
/// columns instead of keeping them from the forward; each worker accumulates its weight gradient privately
/// and the partial sums are added at the end.
public enum Conv2d {
    /// Scratch floats one worker needs for `shape`: columns, column gradients, a tile of outputs, a weight gradient.
    static func workerScratch(_ s: Conv2dShape, maxColumns: Int) -> Int {
        s.k * maxColumns * 2 + s.cOut * maxColumns + s.weightCount
    }

    /// Splits images among `workers`: worker w gets images n*w/W ..< n*(w+1)/W, tiled.
    static func assignment(_ s: Conv2dShape, workers: Int, tiling: ConvTiling) -> [[ConvTile]] {
        (0..<workers).map { w in tiling.tiles(s, images: (s.n * w / workers)..<(s.n * (w + 1) / workers)) }
    }

    /// Tiles per worker for the forward: each worker its own images, or with fewer images than workers, the
    /// tiles of all images dealt round-robin.
    static func forwardPlan(_ s: Conv2dShape, tiling: ConvTiling) -> [[ConvTile]] {
        let width = Parallel.width
        var plan: [[ConvTile]]
        if s.n >= width {
            plan = assignment(s, workers: width, tiling: tiling)
        } else {
            let all = tiling.tiles(s, images: 0..<s.n)
            let w = min(width, all.count)
            plan = (0..<w).map { k in stride(from: k, to: all.count, by: w).map { all[$0] } }
        }
        plan.removeAll { $0.isEmpty }
        return plan
    }

    /// y = conv(x, weight) + bias. Overwrites `output`.
    /// - Parameters:
    ///   - output: (n, cOut, outH, outW), overwritten.
    ///   - input: (n, cIn, h, w).
    ///   - weight: (cOut, cIn, kh, kw).
    ///   - bias: (cOut) or nil.
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func forward<T: KernelScalar>(
        output: UnsafeMutablePointer<T>, input: UnsafePointer<T>, weight: UnsafePointer<T>, bias: UnsafePointer<T>?,
        shape s: Conv2dShape, workspace: Workspace<T>, tiling: ConvTiling = .default,
        algorithm: ConvAlgorithm = .automatic
    ) {
        if T.self == Float.self && Winograd.chooses(algorithm, s) {
            Winograd.forward(output: asFloat(output), input: asFloat(input), weight: asFloat(weight), bias: bias.map { asFloat($0) },
                             shape: s, workspace: unsafeDowncast(workspace, to: Workspace<Float>.self))
            return
        }
        if T.self == Float.self && DirectConv.chooses(algorithm, s) {
            DirectConv.forward(
                output: UnsafeMutableRawPointer(output).assumingMemoryBound(to: Float.self),
                input: UnsafeRawPointer(input).assumingMemoryBound(to: Float.self),
                weight: UnsafeRawPointer(weight).assumingMemoryBound(to: Float.self),
                bias: bias.map { UnsafeRawPointer($0).assumingMemoryBound(to: Float.self) },
                shape: s, workspace: unsafeDowncast(workspace, to: Workspace<Float>.self), bf16: directUsesBF16(s))
            return
        }
        let bf16 = T.self == Float.self && usesBF16(s)   // read here, not in the workers: it may be task-local
        if DenseConv.chooses(algorithm, s) {
            DenseConv.forward(output: output, input: input, weight: weight, bias: bias, shape: s, workspace: workspace, bf16: bf16)
            return
        }
        let plan = forwardPlan(s, tiling: tiling)
        let workers = plan.count
        let maxColumns = plan.joined().map(\.count).max() ?? 0
        let per = workerScratch(s, maxColumns: maxColumns)
        let scratch = workspace.reserve(per * max(workers, 1))
        let body = { (w: Int) in
            let col = scratch + w * per, tmp = col + 2 * s.k * maxColumns
            for tile in plan[w] {
                forwardTile(tile, output: output, input: input, weight: weight, bias: bias, shape: s, col: col, tmp: tmp, bf16: bf16)
            }
        }
        Parallel.workers(workers, body)
    }

    @inline(__always)
    static func forwardTile<T: KernelScalar>(
        _ t: ConvTile, output: UnsafeMutablePointer<T>, input: UnsafePointer<T>, weight: UnsafePointer<T>,
        bias: UnsafePointer<T>?, shape s: Conv2dShape, col: UnsafeMutablePointer<T>, tmp: UnsafeMutablePointer<T>, bf16: Bool
    ) {
        let plane = s.outPlane, inImage = s.cIn * s.h * s.w, outImage = s.cOut * plane
        let x = input + t.image * inImage
        if t.images == 1 {
            let b: UnsafePointer<T>, ldb: Int
            if s.isPointwise {
                b = x + t.start; ldb = plane
            } else {
                im2col(col: col, ld: t.count, input: x, start: t.start, count: t.count, shape: s)
                b = UnsafePointer(col); ldb = t.count
            }
            let y = output + t.image * outImage + t.start
            convGEMM(bf16, transA: false, transB: false, m: s.cOut, n: t.count, k: s.k, alpha: 1, a: weight, lda: s.k,
                   b: b, ldb: ldb, beta: 0, c: y, ldc: plane)
            if let bias {
                for m in 0..<s.cOut {
                    let row = y + m * plane, bv = bias[m]
                    for j in 0..<t.count { row[j] += bv }
                }
            }
        } else {
            im2col(col: col, ld: t.count, input: x, start: 0, count: t.count, shape: s)
            convGEMM(bf16, transA: false, transB: false, m: s.cOut, n: t.count, k: s.k, alpha: 1, a: weight, lda: s.k,
                   b: col, ldb: t.count, beta: 0, c: tmp, ldc: t.count)
            // (cOut, images*plane) -> images x (cOut, plane), adding the bias on the way.
            for j in 0..<t.images {
                for m in 0..<s.cOut {
                    let dst = output + (t.image + j) * outImage + m * plane, src = tmp + m * t.count + j * plane
                    if let bias {
                        let bv = bias[m]
                        for i in 0..<plane { dst[i] = src[i] + bv }
                    } else {
                        dst.update(from: src, count: plane)
                    }
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
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func backward<T: KernelScalar>(
        gradInput: UnsafeMutablePointer<T>?, gradWeight: UnsafeMutablePointer<T>, gradBias: UnsafeMutablePointer<T>?,
        gradOutput: UnsafePointer<T>, input: UnsafePointer<T>, weight: UnsafePointer<T>,
        shape s: Conv2dShape, workspace: Workspace<T>, tiling: ConvTiling = .default,
        algorithm: ConvAlgorithm = .automatic
    ) {
        let plane = s.outPlane, outImage = s.cOut * plane
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
        var gradInput = gradInput
        if T.self == Float.self && Winograd.chooses(algorithm, s) {
            if let gi = gradInput {
                Winograd.inputGradient(gradInput: asFloat(gi), gradOutput: asFloat(gradOutput), weight: asFloat(weight), shape: s,
                                       workspace: unsafeDowncast(workspace, to: Workspace<Float>.self))
            }
            gradInput = nil    // the weight gradient below, as `automatic` chooses
        }
        if T.self == Float.self && DirectConv.chooses(algorithm, s) {
            DirectConv.backward(
                gradInput: gradInput.map { UnsafeMutableRawPointer($0).assumingMemoryBound(to: Float.self) },
                gradWeight: UnsafeMutableRawPointer(gradWeight).assumingMemoryBound(to: Float.self),
                gradOutput: UnsafeRawPointer(gradOutput).assumingMemoryBound(to: Float.self),
                input: UnsafeRawPointer(input).assumingMemoryBound(to: Float.self),
                weight: UnsafeRawPointer(weight).assumingMemoryBound(to: Float.self),
                shape: s, workspace: unsafeDowncast(workspace, to: Workspace<Float>.self), bf16: directUsesBF16(s))
            return
        }
        let bf16 = T.self == Float.self && usesBF16(s)   // read here, not in the workers: it may be task-local
        if DenseConv.chooses(algorithm, s) {
            DenseConv.backward(gradInput: gradInput, gradWeight: gradWeight, gradOutput: gradOutput, input: input,
                               weight: weight, shape: s, workspace: workspace, bf16: bf16)
            return
        }
        // Workers own disjoint images, so their input gradients never overlap.
        let workers = min(Parallel.width, s.n)
        let plan = assignment(s, workers: workers, tiling: tiling)
        let maxColumns = plan.joined().map(\.count).max() ?? 0
        let per = workerScratch(s, maxColumns: maxColumns)
        let scratch = workspace.reserve(per * workers)
        let body = { (w: Int) in
            let col = scratch + w * per, dcol = col + s.k * maxColumns, dyTile = dcol + s.k * maxColumns
            let partial = dyTile + s.cOut * maxColumns
            // Worker 0 accumulates straight into gradWeight; the others into private buffers added below.
            let dW: UnsafeMutablePointer<T>
            if w == 0 { dW = gradWeight } else { dW = partial; partial.update(repeating: 0, count: s.weightCount) }
            for tile in plan[w] {
                backwardTile(tile, gradInput: gradInput, gradWeight: dW, gradOutput: gradOutput, input: input,
                             weight: weight, shape: s, col: col, dcol: dcol, dyTile: dyTile, bf16: bf16)
            }
        }
        Parallel.workers(workers, body)
        addWorkerPartials(into: gradWeight, count: s.weightCount, workers: workers,
                          partials: scratch + s.k * maxColumns * 2 + s.cOut * maxColumns, stride: per)
    }

    /// Adds the private weight gradients of workers 1..<workers (worker w's at `partials + w * stride`) into
    /// `gradWeight`, which worker 0 accumulated into directly.
    static func addWorkerPartials<T: KernelScalar>(
        into gradWeight: UnsafeMutablePointer<T>, count: Int, workers: Int, partials: UnsafePointer<T>, stride: Int
    ) {
        guard workers > 1 else { return }
        Parallel.forEach(count, grain: 4096) { r in
            for w in 1..<workers {
                let partial = partials + w * stride
                for i in r { gradWeight[i] += partial[i] }
            }
        }
    }

    @inline(__always)
    static func backwardTile<T: KernelScalar>(
        _ t: ConvTile, gradInput: UnsafeMutablePointer<T>?, gradWeight: UnsafeMutablePointer<T>,
        gradOutput: UnsafePointer<T>, input: UnsafePointer<T>, weight: UnsafePointer<T>, shape s: Conv2dShape,
        col: UnsafeMutablePointer<T>, dcol: UnsafeMutablePointer<T>, dyTile: UnsafeMutablePointer<T>, bf16: Bool
    ) {
        let plane = s.outPlane, inImage = s.cIn * s.h * s.w, outImage = s.cOut * plane
        let x = input + t.image * inImage
        let dy: UnsafePointer<T>, lddy: Int
        if t.images == 1 {
            dy = gradOutput + t.image * outImage + t.start; lddy = plane
        } else {
            for j in 0..<t.images {
                for m in 0..<s.cOut {
                    (dyTile + m * t.count + j * plane).update(from: gradOutput + (t.image + j) * outImage + m * plane, count: plane)
                }
            }
            dy = UnsafePointer(dyTile); lddy = t.count
        }
        let direct = s.isPointwise && t.images == 1
        let b: UnsafePointer<T>, ldb: Int
        if direct {
            b = x + t.start; ldb = plane
        } else {
            im2col(col: col, ld: t.count, input: x, start: t.start, count: t.count, shape: s)
            b = UnsafePointer(col); ldb = t.count
        }
        // dW (cOut, k) += dy (cOut, cols) * col^T (cols, k)
        convGEMM(bf16, transA: false, transB: true, m: s.cOut, n: s.k, k: t.count, alpha: 1, a: dy, lda: lddy,
               b: b, ldb: ldb, beta: 1, c: gradWeight, ldc: s.k)
        guard let gradInput else { return }
        let dx = gradInput + t.image * inImage
        if direct {
            // dx (cIn, cols) += W^T (cIn, cOut) * dy (cOut, cols)
            convGEMM(bf16, transA: true, transB: false, m: s.cIn, n: t.count, k: s.cOut, alpha: 1, a: weight, lda: s.cIn,
                   b: dy, ldb: lddy, beta: 1, c: dx + t.start, ldc: plane)
        } else {
            // dcol (k, cols) = W^T (k, cOut) * dy (cOut, cols), then scatter-add into the images.
            convGEMM(bf16, transA: true, transB: false, m: s.k, n: t.count, k: s.cOut, alpha: 1, a: weight, lda: s.k,
                   b: dy, ldb: lddy, beta: 0, c: dcol, ldc: t.count)
            col2im(gradInput: dx, col: dcol, ld: t.count, start: t.start, count: t.count, shape: s)
        }
    }

    /// Fewest output channels for which `bf16-mixed` runs an im2col convolution through the bfloat16 GEMM: with fewer,
    /// the GEMM has so few rows that packing its columns costs more than the faster products save (measured on AMD
    /// Zen 4; docs/benchmarks.md). Convolutions the direct kernel runs follow `directUsesBF16` instead.
    public static let bf16MinimumOutputChannels = 64
    /// Smallest GEMM depth (cIn * kh * kw) for which `bf16-mixed` runs an im2col convolution in bfloat16: shallower ones (1x1
    /// downsamples of 32 or 64 channels) spend more on packing than the products save (measured as above).
    public static let bf16MinimumDepth = 128

    /// Whether a Float convolution of shape `s` that runs as im2col + GEMM takes bfloat16 operands: under
    /// `BF16GEMM.precision == .bf16Mixed` with at least `bf16MinimumOutputChannels` output channels and a depth of
    /// `bf16MinimumDepth`, on every CPU alike (emulated without AVX512-BF16).
    public static func usesBF16(_ s: Conv2dShape) -> Bool {
        BF16GEMM.precision == .bf16Mixed && s.cOut >= bf16MinimumOutputChannels && s.k >= bf16MinimumDepth
    }

    /// Whether a Float convolution that the direct kernel runs (`DirectConv.chooses`: in the paper's model the stem,
    /// layer1 and the convolutions of maps at least 14 px wide) takes bfloat16 operands: under `bf16-mixed`, every one, natively with AVX512-BF16 and
    /// emulated elsewhere: its forward, input gradient and weight gradient are then bfloat16 products summed in
    /// float32, as in the GEMM path. Read on the calling thread (the precision may be task-local).
    public static func directUsesBF16(_ s: Conv2dShape) -> Bool {
        BF16GEMM.precision == .bf16Mixed
    }

    /// The GEMM of every im2col convolution: `T.gemm`, or with `bf16` (Float only, where `usesBF16(s)`) bfloat16
    /// operands with float32 accumulation (`BF16GEMM.gemm`).
    @inline(__always)
    static func convGEMM<T: KernelScalar>(
        _ bf16: Bool, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: T, a: UnsafePointer<T>, lda: Int,
        b: UnsafePointer<T>, ldb: Int, beta: T, c: UnsafeMutablePointer<T>, ldc: Int
    ) {
        if bf16 {
            BF16GEMM.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: unsafeBitCast(alpha, to: Float.self), a: asFloat(a), lda: lda,
                          b: asFloat(b), ldb: ldb, beta: unsafeBitCast(beta, to: Float.self), c: asFloat(c), ldc: ldc)
        } else {
            T.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                   beta: beta, c: c, ldc: ldc)
        }
    }

    // MARK: - im2col / col2im over a range of output positions

    /// One run of output positions inside one output row: input image offset, output row, x range, and the
    /// column (relative to the tile's first position) where it starts.
    struct PositionRun {
        var image: Int, oy: Int, ox0: Int, ox1: Int, column: Int
    }

    /// The runs covering output positions `start..<start+count`; the same for every row of the columns, so
    /// computed once per tile (no divisions in the inner loops).
    static func positionRuns(_ s: Conv2dShape, start: Int, count: Int) -> [PositionRun] {
        let plane = s.outPlane, ow = s.outW, inImage = s.cIn * s.h * s.w
        var runs: [PositionRun] = []
        runs.reserveCapacity(count / max(ow, 1) + 2)
        var p = start
        let end = start + count
        var img = p / plane, q = p - img * plane, oy = q / ow, ox = q - oy * ow
        while p < end {
            let len = min(ow - ox, end - p)
            runs.append(PositionRun(image: img * inImage, oy: oy, ox0: ox, ox1: ox + len, column: p - start))
            p += len
            ox = 0
            oy += 1
            if oy == s.outH { oy = 0; img += 1 }
        }
        return runs
    }

    /// Walks the column matrix of output positions `start..<start+count` (of images concatenated from image 0)
    /// row by row, one run of positions inside one output row at a time, and calls
    /// `body(r, column, ox0, ox1, inputRow, validLo, validHi, kx)`: row r = (c, ky, kx) of the columns, the run's
    /// first column relative to `start`, its output x range ox0..<ox1, the offset of the input row it reads
    /// (nil when that row is padding), and the x range validLo..<validHi whose taps fall inside the input.
    /// Output column ox reads input element inputRow + ox * strideW - padW + kx.
    @inline(__always)
    static func forEachRun(
        _ s: Conv2dShape, start: Int, count: Int,
        _ body: (_ r: Int, _ column: Int, _ ox0: Int, _ ox1: Int, _ inputRow: Int?, _ validLo: Int, _ validHi: Int, _ kx: Int) -> Void
    ) {
        let kk = s.kh * s.kw, ow = s.outW, hw = s.h * s.w
        let runs = positionRuns(s, start: start, count: count)
        runs.withUnsafeBufferPointer { runs in
            for r in 0..<s.k {
                let c = r / kk, ky = (r / s.kw) % s.kh, kx = r % s.kw
                // Valid output columns for this kx: ix = ox*sw - pw + kx in [0, w).
                let oxLo = max(0, (s.padW - kx + s.strideW - 1) / s.strideW)
                let oxHi = min(ow, floorDivide(s.w - 1 + s.padW - kx, s.strideW) + 1)   // exclusive
                let channel = c * hw
                for run in runs {
                    let iy = run.oy * s.strideH - s.padH + ky
                    let a = max(run.ox0, oxLo), b = max(a, min(run.ox1, oxHi))
                    let inside = iy >= 0 && iy < s.h && a < b
                    body(r, run.column, run.ox0, run.ox1, inside ? run.image + channel + iy * s.w : nil, a, b, kx)
                }
            }
        }
    }

    /// Narrow feature maps (fewer output columns than this) use a gather map instead of runs: with rows of
    /// 7 or 14 positions the per-run bookkeeping would cost more than the copying.
    static let gatherBelowWidth = 16

    /// The Float gather (im2col) and scatter-add (col2im) kernels of narrow maps in use: "AVX-512" or "scalar" each,
    /// chosen on first use by timing AVX-512's gather and scatter against the scalar loop (both give the same bits;
    /// AVX-512 scatters are microcoded on some CPUs, AMD Zen 4 among them).
    public static var gatherKernels: (gather: String, scatter: String) {
        var g: Int32 = 0, sc: Int32 = 0
        hd_im2col_kernels(&g, &sc)
        func name(_ k: Int32) -> String { k == Int32(HD_GATHER_AVX512) ? "AVX-512" : "scalar" }
        return (name(g), name(sc))
    }

    /// Forces the narrow-map kernels (true: AVX-512 where the CPU has it, false: the scalar loop, nil: unchanged); for tests.
    public static func setGatherKernels(avx512Gather: Bool?, avx512Scatter: Bool?) {
        func code(_ b: Bool?) -> Int32 { b.map { $0 ? Int32(HD_GATHER_AVX512) : Int32(HD_GATHER_SCALAR) } ?? -1 }
        hd_im2col_set_kernels(code(avx512Gather), code(avx512Scatter))
    }

    /// Whether the Float im2col/col2im of narrow maps copies a stride-1 "same" convolution's taps (each a constant shift
    /// of the plane, as 3x3 with padding 1) as shifted runs with masked AVX-512 loads and stores instead of gathering
    /// them: on AVX-512 CPUs, for planes of at least 32 positions (6x6 and up; 7x7 gained 15-17% per convolution; on 4x4
    /// and 2x2 planes a gather across images fills whole vectors as cheaply). Same bits as the gather.
    public static func shiftCopiesInUse(_ s: Conv2dShape) -> Bool {
        s.outW < gatherBelowWidth && gatherMap(s).withUnsafeBufferPointer {
            hd_im2col_takes_shift($0.baseAddress!, Int32(s.kh * s.kw), Int32(s.outPlane)) != 0
        }
    }

    /// Turns the shifted copies of `shiftCopiesInUse` off or on (the default); for tests.
    public static func setShiftCopies(_ enabled: Bool) {
        hd_im2col_set_shift(enabled ? 1 : 0)
    }

    /// Limits the Float gather and scatter-add of narrow maps to runs of at most `images` images (0: as many as 32-bit
    /// offsets allow, the default); for tests, so that splitting a tile into runs is exercised on small inputs.
    public static func setGatherRunImages(_ images: Int) {
        hd_im2col_set_chunk_images(images)
    }

    /// For each kernel tap (ky, kx) and output position of one image: the input offset inside the channel
    /// plane, or -1 where the tap falls in the padding. The same for every channel and image.
    static func gatherMap(_ s: Conv2dShape) -> [Int32] {
        let plane = s.outPlane
        var map = [Int32](repeating: -1, count: s.kh * s.kw * plane)
        for ky in 0..<s.kh {
            for kx in 0..<s.kw {
                let base = (ky * s.kw + kx) * plane
                for oy in 0..<s.outH {
                    let iy = oy * s.strideH - s.padH + ky
                    guard iy >= 0 && iy < s.h else { continue }
                    for ox in 0..<s.outW {
                        let ix = ox * s.strideW - s.padW + kx
                        if ix >= 0 && ix < s.w { map[base + oy * s.outW + ox] = Int32(iy * s.w + ix) }
                    }
                }
            }
        }
        return map
    }

    /// Calls `body(r, column, channelOffset, map)` for each row r = (c, ky, kx) and each stretch of positions
    /// that lies inside one image: `map` points at the gather map entries of the stretch's first position,
    /// `channelOffset` at channel c of that image.
    @inline(__always)
    static func forEachGather(
        _ s: Conv2dShape, start: Int, count: Int,
        _ body: (_ r: Int, _ column: Int, _ length: Int, _ channelOffset: Int, _ map: UnsafePointer<Int32>) -> Void
    ) {
        let kk = s.kh * s.kw, plane = s.outPlane, inImage = s.cIn * s.h * s.w, hw = s.h * s.w
        let map = gatherMap(s)
        map.withUnsafeBufferPointer { m in
            let end = start + count
            for r in 0..<s.k {
                let c = r / kk, tap = r % kk
                var p = start
                while p < end {
                    let img = p / plane, q = p - img * plane
                    let len = min(plane - q, end - p)
                    body(r, p - start, len, img * inImage + c * hw, m.baseAddress! + tap * plane + q)
                    p += len
                }
            }
        }
    }

    /// Writes columns for output positions `start..<start+count` of the images concatenated from `input`:
    /// row r = (c, ky, kx) of `col` (leading dimension `ld`), column = position - start.
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func im2col<T: KernelScalar>(
        col: UnsafeMutablePointer<T>, ld: Int, input: UnsafePointer<T>, start: Int, count: Int, shape s: Conv2dShape
    ) {
        if s.outW < gatherBelowWidth {
            if T.self == Float.self {
                gatherMap(s).withUnsafeBufferPointer { m in
                    hd_im2col_gather(asFloat(col), ld, asFloat(input), s.cIn * s.h * s.w, s.h * s.w, Int32(s.cIn),
                                     Int32(s.kh * s.kw), Int32(s.outPlane), m.baseAddress!, start, count)
                }
                return
            }
            forEachGather(s, start: start, count: count) { r, column, length, channel, map in
                let d = col + r * ld + column, x = input + channel
                for j in 0..<length {
                    let idx = Int(map[j])
                    d[j] = idx >= 0 ? x[idx] : 0
                }
            }
            return
        }
        // Short runs: inline loops, not memcpy/memset calls (their call overhead dominated at 56-wide rows).
        forEachRun(s, start: start, count: count) { r, column, ox0, ox1, inputRow, a, b, kx in
            let d = col + r * ld + column - ox0   // d[ox] is output column ox of this run
            guard let inputRow else {
                for o in ox0..<ox1 { d[o] = 0 }
                return
            }
            for o in ox0..<a { d[o] = 0 }
            let src = input + inputRow - s.padW + kx
            if s.strideW == 1 {
                for o in a..<b { d[o] = src[o] }
            } else if s.strideW == 2 {
                // A constant stride lets the compiler vectorise the even-element gather with shuffles.
                for o in a..<b { d[o] = src[o &* 2] }
            } else {
                for o in a..<b { d[o] = src[o * s.strideW] }
            }
            for o in b..<ox1 { d[o] = 0 }
        }
    }

    /// Adds columns back into the images they came from (the adjoint of `im2col` over the same range).
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    static func col2im<T: KernelScalar>(
        gradInput: UnsafeMutablePointer<T>, col: UnsafePointer<T>, ld: Int, start: Int, count: Int, shape s: Conv2dShape
    ) {
        if s.outW < gatherBelowWidth {
            if T.self == Float.self {
                gatherMap(s).withUnsafeBufferPointer { m in
                    hd_col2im_gather(asFloat(gradInput), asFloat(col), ld, s.cIn * s.h * s.w, s.h * s.w, Int32(s.cIn),
                                     Int32(s.kh * s.kw), Int32(s.outPlane), m.baseAddress!, start, count)
                }
                return
            }
            forEachGather(s, start: start, count: count) { r, column, length, channel, map in
                let src = col + r * ld + column, dx = gradInput + channel
                for j in 0..<length {
                    let idx = Int(map[j])
                    if idx >= 0 { dx[idx] += src[j] }
                }
            }
            return
        }
        forEachRun(s, start: start, count: count) { r, column, ox0, _, inputRow, a, b, kx in
            guard let inputRow else { return }
            let sp = col + r * ld + column - ox0
            let dst = gradInput + inputRow - s.padW + kx
            if s.strideW == 1 {
                for o in a..<b { dst[o] += sp[o] }
            } else {
                for o in a..<b { dst[o * s.strideW] += sp[o] }
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
