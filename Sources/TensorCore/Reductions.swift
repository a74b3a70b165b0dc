// Vectorisable reductions: several independent accumulators so the compiler can use SIMD lanes without
// fast-math (a single running sum is a serial dependency chain under strict IEEE semantics). Float goes to the C
// kernels (CKernels/elementwise.c: 64 or 32 interleaved partial sums, the same bits on every CPU path; 4-8 partial sums
// in Swift ran at about one float per cycle, about 14% of a 224 px training step in GroupNorm); other scalars (Double,
// the tests' reference) take the loops below.
import CKernels

/// Sum of `n` values.
@inline(__always)
public func reduceSum<T: KernelScalar>(_ x: UnsafePointer<T>, _ n: Int) -> T {
    if T.self == Float.self { return unsafeBitCast(hd_sum(asFloat(x), n), to: T.self) }
    var a0: T = 0, a1: T = 0, a2: T = 0, a3: T = 0, a4: T = 0, a5: T = 0, a6: T = 0, a7: T = 0
    var i = 0
    while i + 8 <= n {
        a0 += x[i]; a1 += x[i + 1]; a2 += x[i + 2]; a3 += x[i + 3]
        a4 += x[i + 4]; a5 += x[i + 5]; a6 += x[i + 6]; a7 += x[i + 7]
        i += 8
    }
    while i < n { a0 += x[i]; i += 1 }
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
}

/// Sum of (x - mean)^2 over `n` values.
@inline(__always)
public func reduceSquaredDeviation<T: KernelScalar>(_ x: UnsafePointer<T>, _ n: Int, mean: T) -> T {
    if T.self == Float.self {
        return unsafeBitCast(hd_squared_deviation(asFloat(x), n, unsafeBitCast(mean, to: Float.self)), to: T.self)
    }
    var a0: T = 0, a1: T = 0, a2: T = 0, a3: T = 0, a4: T = 0, a5: T = 0, a6: T = 0, a7: T = 0
    var i = 0
    while i + 8 <= n {
        let d0 = x[i] - mean, d1 = x[i + 1] - mean, d2 = x[i + 2] - mean, d3 = x[i + 3] - mean
        let d4 = x[i + 4] - mean, d5 = x[i + 5] - mean, d6 = x[i + 6] - mean, d7 = x[i + 7] - mean
        a0 += d0 * d0; a1 += d1 * d1; a2 += d2 * d2; a3 += d3 * d3
        a4 += d4 * d4; a5 += d5 * d5; a6 += d6 * d6; a7 += d7 * d7
        i += 8
    }
    while i < n { let d = x[i] - mean; a0 += d * d; i += 1 }
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
}

/// (sum of dy, sum of dy * (x - mean)) over `n` values.
@inline(__always)
public func reduceGradientMoments<T: KernelScalar>(_ dy: UnsafePointer<T>, _ x: UnsafePointer<T>, _ n: Int, mean: T) -> (T, T) {
    if T.self == Float.self {
        var s: Float = 0, p: Float = 0
        hd_gradient_moments(asFloat(dy), asFloat(x), n, unsafeBitCast(mean, to: Float.self), &s, &p)
        return (unsafeBitCast(s, to: T.self), unsafeBitCast(p, to: T.self))
    }
    var s0: T = 0, s1: T = 0, s2: T = 0, s3: T = 0
    var p0: T = 0, p1: T = 0, p2: T = 0, p3: T = 0
    var i = 0
    while i + 4 <= n {
        s0 += dy[i]; s1 += dy[i + 1]; s2 += dy[i + 2]; s3 += dy[i + 3]
        p0 += dy[i] * (x[i] - mean); p1 += dy[i + 1] * (x[i + 1] - mean)
        p2 += dy[i + 2] * (x[i + 2] - mean); p3 += dy[i + 3] * (x[i + 3] - mean)
        i += 4
    }
    while i < n { s0 += dy[i]; p0 += dy[i] * (x[i] - mean); i += 1 }
    return ((s0 + s1) + (s2 + s3), (p0 + p1) + (p2 + p3))
}

/// (sum of dy', sum of dy' * (x - mean)) over `n` values, with dy' = dy where `output` is positive and 0 elsewhere (0
/// and NaN outputs included): the moments of a ReLU's masked gradient (`ReLU.maskGradient`) without writing it.
@inline(__always)
public func reduceMaskedGradientMoments<T: KernelScalar>(_ dy: UnsafePointer<T>, _ output: UnsafePointer<T>, _ x: UnsafePointer<T>,
                                                         _ n: Int, mean: T) -> (T, T) {
    if T.self == Float.self {
        var s: Float = 0, p: Float = 0
        hd_masked_gradient_moments(asFloat(dy), asFloat(output), asFloat(x), n, unsafeBitCast(mean, to: Float.self), &s, &p)
        return (unsafeBitCast(s, to: T.self), unsafeBitCast(p, to: T.self))
    }
    var s0: T = 0, s1: T = 0, s2: T = 0, s3: T = 0
    var p0: T = 0, p1: T = 0, p2: T = 0, p3: T = 0
    var i = 0
    while i + 4 <= n {
        let g0 = output[i] > 0 ? dy[i] : 0, g1 = output[i + 1] > 0 ? dy[i + 1] : 0
        let g2 = output[i + 2] > 0 ? dy[i + 2] : 0, g3 = output[i + 3] > 0 ? dy[i + 3] : 0
        s0 += g0; s1 += g1; s2 += g2; s3 += g3
        p0 += g0 * (x[i] - mean); p1 += g1 * (x[i + 1] - mean)
        p2 += g2 * (x[i + 2] - mean); p3 += g3 * (x[i + 3] - mean)
        i += 4
    }
    while i < n { let gi = output[i] > 0 ? dy[i] : 0; s0 += gi; p0 += gi * (x[i] - mean); i += 1 }
    return ((s0 + s1) + (s2 + s3), (p0 + p1) + (p2 + p3))
}
