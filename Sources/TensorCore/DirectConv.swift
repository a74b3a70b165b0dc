// Direct convolution on grids (Float32, AVX-512): no im2col columns, the input is read in place.
import CKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Which algorithm a convolution uses.
public enum ConvAlgorithm: Sendable, Hashable {
    /// Under `bf16-mixed` on AVX512-BF16, Winograd for the forward and input gradient of the 3x3 convolutions where
    /// measured faster (`Winograd.chooses`); otherwise the direct kernel where it is available and measured faster
    /// (`DirectConv.chooses`), the dense-layer form on maps of fewer positions than kernel taps (`DenseConv.chooses`),
    /// else im2col + GEMM.
    case automatic
    /// im2col + GEMM (any element type, any geometry).
    case im2colGEMM
    /// The direct kernel; falls back to im2col + GEMM where it cannot run (Double, stride > 2, no AVX-512). Under
    /// `bf16-mixed` it runs in bfloat16 (`Conv2d.directUsesBF16`).
    case direct
    /// Winograd F(2x2, 3x3) for the forward and the input gradient wherever it runs (`Winograd.chooses`: `bf16-mixed`
    /// on AVX512-BF16, 3x3 kernels with stride 1 and padding 1; `automatic` takes it only where measured faster); the
    /// weight gradient and every other convolution as `automatic`.
    case winograd
}

/// Lays a convolution out so that each kernel tap is a constant offset from the output position.
///
/// The padded input (hp x wp) is split into stride x stride phase planes of hq x wq, phase (a, b) holding
/// padded pixels (s*i + a, s*j + b); with stride 1 there is one phase, the padded input itself. Output position
/// (oy, ox) sits at oy * wq + ox of an output "grid" whose rows are wq long (columns ox >= outW are computed and
/// thrown away), and tap (ky, kx) reads phase (ky % s, kx % s) at offset (ky / s) * wq + kx / s from it. So the
/// forward is `out[co][p] = sum over pairs j = (ci, ky, kx) of w[co][j] * planes[offset(j) + p]`, one kernel
/// (`hd_direct_sum`) with 8 output channels x 48 positions in registers. The weight gradient is the same sum
/// turned into dot products over positions (`hd_direct_wgrad`). The input gradient of phase (a, b) is again a
/// forward-style sum: over the output gradient, zero-padded by `pt` rows and columns at the top left, with the
/// taps of that phase mirrored: dxpad(s*i + a, s*j + b) = sum over (m, n) of w[s*m + a][s*n + b] * g(i - m, j - n).
struct DirectConvPlan {
    let s: Conv2dShape
    let stride: Int
    let hq: Int, wq: Int
    /// Phase slot of phase (a, b) at a * stride + b, or -1 when no tap reads it.
    let phaseSlot: [Int]
    /// Floats of one input channel's phase planes.
    let channelStride: Int
    /// Floats of one image's planes, including the slack the last tiles read past the end.
    let planesCount: Int
    /// Offset of pair j = (ci, ky, kx) in the planes (weight order).
    let forwardOffsets: [Int]
    /// Output grid positions (outH * wq) and the row length of the grid buffer (rounded up to 16).
    let outCount: Int, outLd: Int
    /// Input-gradient layout: padding of the output gradient, its grid width and per-channel size.
    let pt: Int, wd: Int, gPadStride: Int, gPadCount: Int
    /// First padded row and number of rows of dxpad that are computed.
    let dxRowStart: Int, dxRows: Int
    /// Input-gradient grid positions per phase (dxRows * wd) and its row length.
    let dxCount: Int, dxLd: Int
    /// Whether the padded output gradient, read from (pt, pt), is also the weight gradient's grid.
    let sharesGradient: Bool
    /// Where each input row of a channel lands in that channel's planes: `count` pixels from `src` (offset in the
    /// channel's h x w map) every `step`-th one, written from `dst` (offset in its planes) on. A stride-1 row is one
    /// segment at its padded place; a stride-2 row is two, its even and its odd pixels, each in its column phase.
    let rowSegments: [(dst: Int, src: Int, count: Int, step: Int)]

    init(_ s: Conv2dShape) {
        self.s = s
        let st = s.strideH
        stride = st
        let hp = s.h + 2 * s.padH, wp = s.w + 2 * s.padW
        hq = (hp + st - 1) / st
        wq = (wp + st - 1) / st
        var slot = [Int](repeating: -1, count: st * st)
        var used = 0
        for a in 0..<st where a < s.kh {
            for b in 0..<st where b < s.kw {
                slot[a * st + b] = used
                used += 1
            }
        }
        phaseSlot = slot
        let phaseSize = hq * wq
        channelStride = used * phaseSize
        var offsets: [Int] = []
        offsets.reserveCapacity(s.k)
        for c in 0..<s.cIn {
            for ky in 0..<s.kh {
                for kx in 0..<s.kw {
                    let phase = slot[(ky % st) * st + kx % st]
                    offsets.append(c * channelStride + phase * phaseSize + (ky / st) * wq + kx / st)
                }
            }
        }
        forwardOffsets = offsets
        outCount = s.outH * wq
        outLd = (outCount + 15) / 16 * 16
        planesCount = max(s.cIn * channelStride, offsets.max()! + outLd) + 16

        if st == 1 {
            // Only the interior rows of dxpad (the input's own) are computed, which needs a top-left padding of
            // k - 1 - pad; when that fits inside the input's padding the padded gradient has the planes' width and
            // doubles as the weight gradient's grid (`sharesGradient`).
            pt = max(0, s.kh - 1 - s.padH, s.kw - 1 - s.padW)
            wd = max(wq, s.padW + s.w + pt)
            dxRowStart = s.padH
            dxRows = s.h
        } else {
            pt = (max(s.kh, s.kw) + st - 1) / st - 1
            wd = wq + pt
            dxRowStart = 0
            dxRows = hq
        }
        sharesGradient = st == 1 && wd == wq
        gPadStride = max(pt + s.outH, dxRowStart + dxRows + pt) * wd
        dxCount = dxRows * wd
        dxLd = (dxCount + 15) / 16 * 16
        // The last channel's reads run up to offset (pt * wd + pt) + dxLd past its first computed row.
        gPadCount = max(s.cOut * gPadStride, (s.cOut - 1) * gPadStride + (dxRowStart + pt) * wd + pt + dxLd) + 16

        var segments: [(dst: Int, src: Int, count: Int, step: Int)] = []
        if st == 2 {
            let bEven = s.padW % 2, bOdd = 1 - bEven
            for y in 0..<s.h {
                let yp = y + s.padH, a = yp % 2, i = yp / 2
                let se = slot[a * 2 + bEven], so = slot[a * 2 + bOdd]
                if se >= 0 { segments.append((se * phaseSize + i * wq + (s.padW - bEven) / 2, y * s.w, (s.w + 1) / 2, 2)) }
                if so >= 0 && s.w > 1 { segments.append((so * phaseSize + i * wq + (s.padW + 1 - bOdd) / 2, y * s.w + 1, s.w / 2, 2)) }
            }
        } else {
            for y in 0..<s.h { segments.append(((y + s.padH) * wq + s.padW, y * s.w, s.w, 1)) }
        }
        rowSegments = segments
    }

    static func roundUp8(_ x: Int) -> Int { (x + 7) / 8 * 8 }

    /// Writes one image's phase planes (zero padding included) and zeroes the slack after them.
    func buildPlanes(_ planes: UnsafeMutablePointer<Float>, image x: UnsafePointer<Float>) {
        let hw = s.h * s.w, phaseSize = hq * wq
        if stride == 2 {
            // Each input row splits into its even and odd pixels, which land in the two column phases of its row phase.
            planes.update(repeating: 0, count: planesCount)
            let bEven = s.padW % 2, bOdd = 1 - bEven
            for c in 0..<s.cIn {
                for y in 0..<s.h {
                    let yp = y + s.padH, a = yp % 2, i = yp / 2
                    let se = phaseSlot[a * 2 + bEven], so = phaseSlot[a * 2 + bOdd]
                    guard se >= 0 || so >= 0 else { continue }
                    let rowBase = planes + c * channelStride + i * wq
                    hd_deinterleave(x + c * hw + y * s.w, s.w,
                                    se >= 0 ? rowBase + se * phaseSize + (s.padW - bEven) / 2 : nil,
                                    so >= 0 ? rowBase + so * phaseSize + (s.padW + 1 - bOdd) / 2 : nil)
                }
            }
            return
        }
        for c in 0..<s.cIn {
            let plane = planes + c * channelStride
            (plane).update(repeating: 0, count: s.padH * wq)
            for y in 0..<s.h {
                let row = plane + (y + s.padH) * wq
                for j in 0..<s.padW { row[j] = 0 }
                (row + s.padW).update(from: x + c * hw + y * s.w, count: s.w)
                for j in (s.padW + s.w)..<wq { row[j] = 0 }
            }
            (plane + (s.h + s.padH) * wq).update(repeating: 0, count: (hq - s.h - s.padH) * wq)
        }
        let used = s.cIn * channelStride
        (planes + used).update(repeating: 0, count: planesCount - used)
    }

    /// Interleaves `channels` float32 maps of `stride` floats (`planes`) in pairs into bfloat16 words: word u of pair
    /// q holds (channel 2q, channel 2q + 1) at u, an odd last channel paired with 0; words from the last pair's end up
    /// to `count` are zero (the slack the last tiles read). With `forwardWords`, the definition of the words layout:
    /// the kernels' builders (`buildForwardWords`, `padGradientWords`) write the same bits straight from the maps and
    /// are tested against these two.
    func pairWords(_ words: UnsafeMutablePointer<Float>, planes: UnsafePointer<Float>, channels: Int, stride: Int, count: Int) {
        let pairs = (channels + 1) / 2
        for q in 0..<pairs {
            hd_bf16_pair_words(words + q * stride, planes + 2 * q * stride, 2 * q + 1 < channels ? planes + (2 * q + 1) * stride : nil, stride)
        }
        if count > pairs * stride { (words + pairs * stride).update(repeating: 0, count: count - pairs * stride) }
    }

    /// The native bfloat16 forward's steps: each a word offset in the planes `forwardWords` writes and the weight
    /// indices (ci * kh * kw + tap) of its low and high halves (nil: a zero half). Channels go in pairs at every tap;
    /// an odd last channel pairs its taps instead, tap (ky, kx) with (ky, kx + stride), which reads the next word of
    /// the same phase plane: the 3-channel stem takes 11 steps per kernel row where channel pairs with a zero
    /// channel would take 14.
    func bf16ForwardSteps() -> [(offset: Int, low: Int?, high: Int?)] {
        let kk = s.kh * s.kw, evenPairs = s.cIn / 2
        var steps: [(offset: Int, low: Int?, high: Int?)] = []
        for q in 0..<evenPairs {
            for t in 0..<kk { steps.append((forwardOffsets[2 * q * kk + t] - q * channelStride, 2 * q * kk + t, (2 * q + 1) * kk + t)) }
        }
        if s.cIn % 2 == 1 {
            let c = s.cIn - 1, shift = (c - evenPairs) * channelStride   // the odd channel's words sit after the pairs'
            for ky in 0..<s.kh {
                var used = [Bool](repeating: false, count: s.kw)
                for kx in 0..<s.kw where !used[kx] {
                    used[kx] = true
                    let partner = kx + stride < s.kw ? kx + stride : nil
                    if let partner { used[partner] = true }
                    let tap = ky * s.kw + kx
                    steps.append((forwardOffsets[c * kk + tap] - shift, c * kk + tap, partner.map { c * kk + ky * s.kw + $0 }))
                }
            }
        }
        return steps
    }

    /// One image's planes (`buildPlanes`) as the words `bf16ForwardSteps` reads: channel pairs interleaved, and an odd
    /// last channel as (x[u], x[u + 1]) of its own planes; zero after them up to `planesCount`.
    func forwardWords(_ words: UnsafeMutablePointer<Float>, planes: UnsafePointer<Float>) {
        let evenPairs = s.cIn / 2
        pairWords(words, planes: planes, channels: 2 * evenPairs, stride: channelStride, count: evenPairs * channelStride)
        var filled = evenPairs * channelStride
        if s.cIn % 2 == 1 {
            let p = planes + (s.cIn - 1) * channelStride   // the planes' slack covers the read one past its end
            hd_bf16_pair_words(words + filled, p, p + 1, channelStride)
            filled += channelStride
        }
        if planesCount > filled { (words + filled).update(repeating: 0, count: planesCount - filled) }
    }

    /// `buildPlanes` then `forwardWords`, bit for bit, without float planes for the channel pairs: each row is
    /// converted where it lands (`hd_bf16_pair_words_strided`). An odd last channel's float planes are built in
    /// `scratch` (channelStride + 1 floats).
    func buildForwardWords(_ words: UnsafeMutableRawPointer, image x: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>) {
        memset(words, 0, 4 * planesCount)
        let hw = s.h * s.w, evenPairs = s.cIn / 2
        for q in 0..<evenPairs {
            let lo = x + 2 * q * hw, hi = lo + hw, dst = words + 4 * q * channelStride
            for r in rowSegments { hd_bf16_pair_words_strided(dst + 4 * r.dst, lo + r.src, hi + r.src, r.count, r.step) }
        }
        if s.cIn % 2 == 1 {
            scratch.update(repeating: 0, count: channelStride + 1)
            let c = x + (s.cIn - 1) * hw
            for r in rowSegments {
                for k in 0..<r.count { scratch[r.dst + k] = c[r.src + k * r.step] }
            }
            hd_bf16_pair_words(words + 4 * evenPairs * channelStride, scratch, scratch + 1, channelStride)
        }
    }

    /// `buildPlanes` then `hd_bf16_halves` over `planesCount`, bit for bit, without the float planes.
    func buildHalves(_ halves: UnsafeMutableRawPointer, image x: UnsafePointer<Float>) {
        memset(halves, 0, 2 * planesCount)
        let hw = s.h * s.w
        for c in 0..<s.cIn {
            let src = x + c * hw, dst = halves + 2 * c * channelStride
            for r in rowSegments { hd_bf16_halves_strided(dst + 2 * r.dst, src + r.src, r.count, r.step) }
        }
    }

    /// `padGradient` then `hd_bf16_halves` over `gPadCount`, bit for bit.
    func padGradientHalves(_ halves: UnsafeMutableRawPointer, _ g: UnsafePointer<Float>) {
        memset(halves, 0, 2 * gPadCount)
        let plane = s.outPlane
        for co in 0..<s.cOut {
            for oy in 0..<s.outH {
                hd_bf16_halves_strided(halves + 2 * (co * gPadStride + (oy + pt) * wd + pt), g + co * plane + oy * s.outW, s.outW, 1)
            }
        }
    }

    /// `gridGradient` then `hd_bf16_halves` over cOut * outLd, bit for bit.
    func gridGradientHalves(_ halves: UnsafeMutableRawPointer, _ g: UnsafePointer<Float>) {
        memset(halves, 0, 2 * s.cOut * outLd)
        let plane = s.outPlane
        for co in 0..<s.cOut {
            for oy in 0..<s.outH {
                hd_bf16_halves_strided(halves + 2 * (co * outLd + oy * wq), g + co * plane + oy * s.outW, s.outW, 1)
            }
        }
    }

    /// `padGradient` then `pairWords(channels: cOut, stride: gPadStride, count: gPadCount)`, bit for bit: the
    /// output gradient's channel pairs as words at (pt, pt) of zeroed planes of width wd.
    func padGradientWords(_ words: UnsafeMutableRawPointer, _ g: UnsafePointer<Float>) {
        memset(words, 0, 4 * gPadCount)
        let plane = s.outPlane
        for q in 0..<(s.cOut + 1) / 2 {
            let lo = g + 2 * q * plane, hi: UnsafePointer<Float>? = 2 * q + 1 < s.cOut ? lo + plane : nil
            for oy in 0..<s.outH {
                hd_bf16_pair_words_strided(words + 4 * (q * gPadStride + (oy + pt) * wd + pt), lo + oy * s.outW,
                                           hi.map { $0 + oy * s.outW }, s.outW, 1)
            }
        }
    }

    /// Writes one image's output gradient (cOut, outH, outW) at (pt, pt) of zeroed planes of width wd.
    func padGradient(_ gPad: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>) {
        gPad.update(repeating: 0, count: gPadCount)
        let plane = s.outPlane
        for co in 0..<s.cOut {
            for oy in 0..<s.outH {
                (gPad + co * gPadStride + (oy + pt) * wd + pt).update(from: g + co * plane + oy * s.outW, count: s.outW)
            }
        }
    }

    /// Writes one image's output gradient on the output grid (rows of wq, thrown-away columns zero).
    func gridGradient(_ grid: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>) {
        let plane = s.outPlane
        for co in 0..<s.cOut {
            let row = grid + co * outLd
            for oy in 0..<s.outH {
                let dst = row + oy * wq
                dst.update(from: g + co * plane + oy * s.outW, count: s.outW)
                for ox in s.outW..<wq { dst[ox] = 0 }
            }
            for p in outCount..<outLd { row[p] = 0 }
        }
    }

    /// Packs rows x pairs weights (element (r, j) at `weight(r, j)`) into 8-row blocks, zero rows past `rows`.
    static func pack(_ dst: UnsafeMutablePointer<Float>, rows: Int, pairs: Int, _ weight: (Int, Int) -> Float) {
        let blocks = (rows + 7) / 8
        for blk in 0..<blocks {
            let base = dst + blk * pairs * 8
            for j in 0..<pairs {
                for r in 0..<8 {
                    let row = blk * 8 + r
                    base[j * 8 + r] = row < rows ? weight(row, j) : 0
                }
            }
        }
    }

    /// Input-gradient taps of phase (a, b): (ky, kx, m, n) with ky = s*m + a, kx = s*n + b.
    func gradientTaps(a: Int, b: Int) -> [(ky: Int, kx: Int, m: Int, n: Int)] {
        var taps: [(Int, Int, Int, Int)] = []
        var ky = a
        while ky < s.kh {
            var kx = b
            while kx < s.kw {
                taps.append((ky, kx, ky / stride, kx / stride))
                kx += stride
            }
            ky += stride
        }
        return taps
    }
}

/// The direct convolution's entry points (Float32 only; see `DirectConvPlan`).
public enum DirectConv {
    /// True when this CPU has the AVX-512 kernels.
    public static let isAvailable: Bool = CPUCapabilities.current.avx512

    /// Narrowest output on which `.automatic` uses the direct kernel: on narrower maps the thrown-away grid
    /// columns cost more than im2col (measured with `histodistill-bench`, docs/benchmarks.md).
    public static let minimumOutputWidth = 14

    /// Positions per weight-gradient call: the gradient rows and input rows of one call stay in L1/L2.
    static let gradientChunk = 1024

    /// Whether the direct kernel can run `s` (stride 1 or 2 in both directions, AVX-512).
    public static func supports(_ s: Conv2dShape) -> Bool {
        isAvailable && s.strideH == s.strideW && (s.strideH == 1 || s.strideH == 2)
    }

    /// Whether `algorithm` runs `s` with the direct kernel (in float32, or bfloat16 under `bf16-mixed`: the same rule
    /// in both precisions; measured, `histodistill-bench --precision bf16-mixed`: at 224 px the direct kernel beats the
    /// bfloat16 GEMM on the 28 and 14 px maps of layer2/layer3 and loses on layer4's 7 px maps).
    static func chooses(_ algorithm: ConvAlgorithm, _ s: Conv2dShape) -> Bool {
        switch algorithm {
        case .im2colGEMM: return false
        case .direct: return supports(s)
        case .automatic, .winograd: return supports(s) && !s.isPointwise && s.outW >= minimumOutputWidth
        }
    }

    /// Forward: output (n, cOut, outH, outW) = conv(input, weight) + bias. With `bf16` (`bf16-mixed`) the input and
    /// weights are rounded to bfloat16 and the products summed in float32: natively by `hd_direct_sum_bf16` over pairs of
    /// input channels (AVX512-BF16), elsewhere by the float32 kernel on rounded operands (`BF16GEMM.native`).
    static func forward(
        output: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>, weight: UnsafePointer<Float>,
        bias: UnsafePointer<Float>?, shape s: Conv2dShape, workspace: Workspace<Float>, bf16: Bool = false
    ) {
        let plan = DirectConvPlan(s)
        let blocks = (s.cOut + 7) / 8
        let native = bf16 && BF16GEMM.native
        // Native bfloat16 steps: (input channel pair, tap), one 32-bit word per pair of channels.
        let steps = native ? plan.bf16ForwardSteps() : []
        let pairs = native ? steps.count : s.k
        let packCount = blocks * 8 * pairs
        let workers = min(Parallel.width, s.n)
        let wordPlanes = native ? plan.planesCount : 0
        let perWorker = plan.planesCount + wordPlanes + blocks * 8 * plan.outLd
        let scratch = workspace.reserve(packCount + workers * perWorker)
        if native {
            DirectConv.packWords(UnsafeMutableRawPointer(scratch), rows: s.cOut, pairs: pairs) { r, j, h in
                (h == 0 ? steps[j].low : steps[j].high).map { weight[r * s.k + $0] } ?? 0
            }
        } else {
            DirectConvPlan.pack(scratch, rows: s.cOut, pairs: s.k) { r, j in weight[r * s.k + j] }
            if bf16 { hd_round_bf16(scratch, 0, scratch, 0, 1, packCount) }
        }
        let wpack = UnsafePointer(scratch)
        let inImage = s.cIn * s.h * s.w, plane = s.outPlane
        (native ? steps.map(\.offset) : plan.forwardOffsets).withUnsafeBufferPointer { offs in
            Parallel.workers(workers) { w in
                let planes = scratch + packCount + w * perWorker
                let words = planes + plan.planesCount
                let grid = words + wordPlanes
                for img in (s.n * w / workers)..<(s.n * (w + 1) / workers) {
                    if native {
                        plan.buildForwardWords(UnsafeMutableRawPointer(words), image: input + img * inImage, scratch: planes)
                        hd_direct_sum_bf16(grid, plan.outLd, Int32(blocks), words, offs.baseAddress!, Int32(pairs), wpack,
                                           Int32(plan.outCount))
                    } else {
                        plan.buildPlanes(planes, image: input + img * inImage)
                        if bf16 { hd_round_bf16(planes, 0, planes, 0, 1, plan.planesCount) }
                        hd_direct_sum(grid, plan.outLd, Int32(blocks), planes, offs.baseAddress!, Int32(s.k), wpack,
                                      Int32(plan.outCount))
                    }
                    let y = output + img * s.cOut * plane
                    for co in 0..<s.cOut {
                        let bv: Float = bias?[co] ?? 0
                        for oy in 0..<s.outH {
                            let src = grid + co * plan.outLd + oy * plan.wq, dst = y + co * plane + oy * s.outW
                            for ox in 0..<s.outW { dst[ox] = src[ox] + bv }
                        }
                    }
                }
            }
        }
    }

    /// Packs rows x pairs bfloat16 pairs (half h of word (r, j) is `weight(r, j, h)`) into 8-row blocks of 32-bit
    /// words, as `hd_direct_sum_bf16` reads them; rows past `rows` are zero.
    static func packWords(_ dst: UnsafeMutableRawPointer, rows: Int, pairs: Int, _ weight: (Int, Int, Int) -> Float) {
        let count = (rows + 7) / 8 * 8 * pairs
        var lo = [Float](repeating: 0, count: count), hi = lo
        lo.withUnsafeMutableBufferPointer { l in
            hi.withUnsafeMutableBufferPointer { h in
                DirectConvPlan.pack(l.baseAddress!, rows: rows, pairs: pairs) { r, j in weight(r, j, 0) }
                DirectConvPlan.pack(h.baseAddress!, rows: rows, pairs: pairs) { r, j in weight(r, j, 1) }
                hd_bf16_pair_words(dst, l.baseAddress!, h.baseAddress!, count)
            }
        }
    }

    /// Backward: accumulates into gradWeight and (unless nil) gradInput. The bias gradient is the caller's.
    static func backward(
        gradInput: UnsafeMutablePointer<Float>?, gradWeight: UnsafeMutablePointer<Float>,
        gradOutput: UnsafePointer<Float>, input: UnsafePointer<Float>, weight: UnsafePointer<Float>,
        shape s: Conv2dShape, workspace: Workspace<Float>, bf16: Bool = false
    ) {
        let plan = DirectConvPlan(s)
        let st = plan.stride, kk = s.kh * s.kw
        // With `bf16` both products take bfloat16 operands: the input gradient's sums natively over pairs of output
        // channels, the weight gradient's over pairs of adjacent positions (bfloat16 copies of the planes and grids).
        let native = bf16 && BF16GEMM.native
        let outPairs = native && gradInput != nil ? (s.cOut + 1) / 2 : s.cOut
        // Input-gradient weights per phase: rows ci, pairs (co, tap) reading the padded output gradient.
        var phaseTaps: [[(ky: Int, kx: Int, m: Int, n: Int)]] = []
        var phaseOffsets: [[Int]] = []
        var packOffsets: [Int] = []
        var packCount = 0
        let ciBlocks = (s.cIn + 7) / 8
        if gradInput != nil {
            for a in 0..<st {
                for b in 0..<st {
                    let taps = plan.gradientTaps(a: a, b: b)
                    phaseTaps.append(taps)
                    var offs: [Int] = []
                    offs.reserveCapacity(outPairs * taps.count)
                    for co in 0..<outPairs {
                        for t in taps { offs.append(co * plan.gPadStride + (plan.pt - t.m) * plan.wd + (plan.pt - t.n)) }
                    }
                    phaseOffsets.append(offs)
                    packOffsets.append(packCount)
                    packCount += ciBlocks * 8 * offs.count
                }
            }
        }
        // Images per weight-gradient call: small maps are grouped so each call runs over enough positions.
        let workers = min(Parallel.width, s.n)
        let imagesPerWorkerMax = (s.n + workers - 1) / workers
        let group = max(1, min(imagesPerWorkerMax, DirectConv.gradientChunk / max(plan.outCount, 1)))
        // Per worker: `group` images' planes and gradient grids, the padded gradient of one image (unless the
        // grids are the padded gradients), every phase's input-gradient grid, a private weight gradient. Padded
        // gradients start `lead` floats into their slot: taps that only feed thrown-away columns of the first
        // row read a little before it.
        let lead = plan.wd + 16
        let padSlot = lead + plan.gPadCount
        let gSlot = plan.sharesGradient ? padSlot : s.cOut * plan.outLd
        let gPadCount = gradInput == nil || plan.sharesGradient ? 0 : padSlot
        let dxGridCount = gradInput == nil ? 0 : st * st * ciBlocks * 8 * plan.dxLd
        // Natively, the padded gradient as pair words for the input gradient's sums, `lead` words in (emulated, the
        // padded gradient is rounded where it is).
        let bf16PadCount = native && gradInput != nil ? padSlot : 0
        // Natively, bfloat16 copies (16 bits each) of the group's planes and gradient grids for the weight gradient.
        let halvesCount = native ? (group * (plan.planesCount + gSlot) + 1) / 2 + 16 : 0
        let perWorker = group * (plan.planesCount + gSlot) + gPadCount + bf16PadCount + halvesCount + dxGridCount + s.weightCount
        let scratch = workspace.reserve(packCount + workers * perWorker)
        for (ph, taps) in phaseTaps.enumerated() {
            let pairs = outPairs * taps.count
            if native && gradInput != nil {
                DirectConv.packWords(UnsafeMutableRawPointer(scratch + packOffsets[ph]), rows: s.cIn, pairs: pairs) { ci, j, h in
                    let co = 2 * (j / taps.count) + h, t = taps[j % taps.count]
                    return co < s.cOut ? weight[(co * s.cIn + ci) * kk + t.ky * s.kw + t.kx] : 0
                }
                continue
            }
            DirectConvPlan.pack(scratch + packOffsets[ph], rows: s.cIn, pairs: pairs) { ci, j in
                let co = j / taps.count, t = taps[j % taps.count]
                return weight[(co * s.cIn + ci) * kk + t.ky * s.kw + t.kx]
            }
            if bf16 { hd_round_bf16(scratch + packOffsets[ph], 0, scratch + packOffsets[ph], 0, 1, ciBlocks * 8 * pairs) }
        }
        let inImage = s.cIn * s.h * s.w, plane = s.outPlane
        plan.forwardOffsets.withUnsafeBufferPointer { offs in
            Parallel.workers(workers) { w in
                let base = scratch + packCount + w * perWorker
                let planes = base, grids = base + group * plan.planesCount
                let ownPad = grids + group * gSlot, bf16Pad = ownPad + gPadCount, halves = bf16Pad + bf16PadCount
                let dxGrid = halves + halvesCount
                let partial = dxGrid + dxGridCount
                let dW: UnsafeMutablePointer<Float>
                if w == 0 { dW = gradWeight } else { dW = partial; partial.update(repeating: 0, count: s.weightCount) }
                // The sums read up to `lead` words before the pair-word gradient (thrown-away columns): zero there.
                if bf16PadCount > 0 { bf16Pad.update(repeating: 0, count: lead) }
                // The weight gradient's grid of image i of the group: row co at g0 + i * gSlot + co * ldg.
                let g0: UnsafeMutablePointer<Float>, ldg: Int
                if plan.sharesGradient {
                    g0 = grids + lead + plan.pt * plan.wd + plan.pt; ldg = plan.gPadStride
                } else {
                    g0 = grids; ldg = plan.outLd
                }
                let lo = s.n * w / workers, hi = s.n * (w + 1) / workers
                var first = lo
                while first < hi {
                    let count = min(group, hi - first)
                    // Natively the group's planes and gradient grids are written straight in bfloat16 (same layout).
                    let planesHalves = UnsafeMutableRawPointer(halves), gridsHalves = planesHalves + 2 * count * plan.planesCount
                    for i in 0..<count {
                        let img = first + i, g = gradOutput + img * s.cOut * plane
                        if native {
                            plan.buildHalves(planesHalves + 2 * i * plan.planesCount, image: input + img * inImage)
                            if plan.sharesGradient {
                                plan.padGradientHalves(gridsHalves + 2 * (i * gSlot + lead), g)
                            } else {
                                plan.gridGradientHalves(gridsHalves + 2 * i * gSlot, g)
                            }
                            continue
                        }
                        plan.buildPlanes(planes + i * plan.planesCount, image: input + img * inImage)
                        if plan.sharesGradient {
                            plan.padGradient(grids + i * gSlot + lead, g)
                        } else {
                            plan.gridGradient(grids + i * gSlot, g)
                        }
                    }
                    // Weight gradient, in chunks of positions.
                    if bf16 && !native {
                        hd_round_bf16(planes, 0, planes, 0, 1, count * plan.planesCount)
                        hd_round_bf16(grids, 0, grids, 0, 1, count * gSlot)
                    }
                    var p0 = 0
                    while p0 < plan.outCount {
                        let len = min(DirectConv.gradientChunk, plan.outCount - p0)
                        if native {
                            hd_direct_wgrad_bf16(dW, s.k, Int32(s.cOut), Int32(s.k), gridsHalves + 2 * (g0 - grids + p0), ldg, gSlot,
                                                 planesHalves + 2 * p0, offs.baseAddress!, plan.planesCount, Int32(count), Int32(len))
                        } else {
                            hd_direct_wgrad(dW, s.k, Int32(s.cOut), Int32(s.k), g0 + p0, ldg, gSlot,
                                            planes + p0, offs.baseAddress!, plan.planesCount, Int32(count), Int32(len))
                        }
                        p0 += len
                    }
                    if let gradInput {
                        for i in 0..<count {
                            let img = first + i, g = gradOutput + img * s.cOut * plane
                            let source: UnsafeMutablePointer<Float>
                            if native {
                                source = bf16Pad + lead
                                plan.padGradientWords(UnsafeMutableRawPointer(source), g)
                            } else {
                                if plan.sharesGradient {
                                    source = grids + i * gSlot + lead
                                } else {
                                    source = ownPad + lead
                                    plan.padGradient(source, g)
                                }
                                // No other reader after the weight gradient.
                                if bf16 { hd_round_bf16(source, 0, source, 0, 1, plan.gPadCount) }
                            }
                            inputGradient(gradInput + img * inImage, plan: plan, gPad: source, dxGrid: dxGrid,
                                          packs: scratch, packOffsets: packOffsets, phaseOffsets: phaseOffsets,
                                          ciBlocks: ciBlocks, words: native)
                        }
                    }
                    first += count
                }
            }
        }
        Conv2d.addWorkerPartials(into: gradWeight, count: s.weightCount, workers: workers,
                                 partials: scratch + packCount + perWorker - s.weightCount, stride: perWorker)
    }

    /// One image's input gradient: pads its output gradient, runs each phase's sum and adds the phase grid
    /// back into the (unpadded) input gradient.
    private static func inputGradient(
        _ dx: UnsafeMutablePointer<Float>, plan: DirectConvPlan, gPad: UnsafeMutablePointer<Float>,
        dxGrid: UnsafeMutablePointer<Float>, packs: UnsafeMutablePointer<Float>, packOffsets: [Int],
        phaseOffsets: [[Int]], ciBlocks: Int, words: Bool
    ) {
        let s = plan.s, st = plan.stride
        // Every phase's grid first (`dxGrid` holds stride^2 of them), then each input row gathers its pixels.
        let phaseGrid = ciBlocks * 8 * plan.dxLd
        for ph in 0..<(st * st) {
            let offsets = phaseOffsets[ph]
            guard !offsets.isEmpty else { continue }
            offsets.withUnsafeBufferPointer { offs in
                if words {
                    hd_direct_sum_bf16(dxGrid + ph * phaseGrid, plan.dxLd, Int32(ciBlocks), gPad + plan.dxRowStart * plan.wd, offs.baseAddress!,
                                       Int32(offs.count), packs + packOffsets[ph], Int32(plan.dxCount))
                } else {
                    hd_direct_sum(dxGrid + ph * phaseGrid, plan.dxLd, Int32(ciBlocks), gPad + plan.dxRowStart * plan.wd, offs.baseAddress!,
                                  Int32(offs.count), packs + packOffsets[ph], Int32(plan.dxCount))
                }
            }
        }
        // Input pixel (y, x) is padded pixel (y + padH, x + padW): phase ((y + padH) % s, (x + padW) % s).
        let hw = s.h * s.w
        if st == 1 {
            for c in 0..<s.cIn {
                for y in 0..<s.h {
                    let src = dxGrid + c * plan.dxLd + (y + s.padH - plan.dxRowStart) * plan.wd + s.padW
                    let dst = dx + c * hw + y * s.w
                    for x in 0..<s.w { dst[x] += src[x] }
                }
            }
            return
        }
        let bEven = s.padW % 2, bOdd = 1 - bEven
        for c in 0..<s.cIn {
            for y in 0..<s.h {
                let yp = y + s.padH, a = yp % 2, i = yp / 2
                let pe = a * 2 + bEven, po = a * 2 + bOdd
                let row = c * plan.dxLd + (i - plan.dxRowStart) * plan.wd
                hd_interleave_add(dx + c * hw + y * s.w, s.w,
                                  phaseOffsets[pe].isEmpty ? nil : dxGrid + pe * phaseGrid + row + (s.padW - bEven) / 2,
                                  phaseOffsets[po].isEmpty ? nil : dxGrid + po * phaseGrid + row + (s.padW + 1 - bOdd) / 2)
            }
        }
    }
}
