// GroupNorm (affine) and BatchNorm2d (training and eval), forward and backward, NCHW.
import CKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@inline(__always)
func reciprocalSqrt<T: KernelScalar>(_ x: T) -> T { 1 / x.squareRoot() }

/// Group normalisation: channels split into `groups` groups; statistics per (image, group).
public enum GroupNorm {
    /// Scratch elements `backward` needs: 2 * n * c.
    public static func workspaceCount(n: Int, c: Int) -> Int { 2 * n * c }

    /// y = (x - mean) * rstd * weight[c] + bias[c], then with `relu` max(y, 0) in the same pass (the bits of
    /// `ReLU.forward` on the output). Overwrites `output`, `mean`, `rstd`.
    /// - Parameters:
    ///   - output: (n, c, h, w). May alias `input` only if the backward gets the input some other way; don't.
    ///   - mean: (n, groups), saved for backward.
    ///   - rstd: (n, groups), 1 / sqrt(var + eps) with the biased variance, saved for backward.
    ///   - input: (n, c, h, w).
    ///   - weight, bias: (c).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func forward<T: KernelScalar>(
        output: UnsafeMutablePointer<T>, mean: UnsafeMutablePointer<T>, rstd: UnsafeMutablePointer<T>,
        input: UnsafePointer<T>, weight: UnsafePointer<T>, bias: UnsafePointer<T>,
        shape: NCHW, groups: Int, eps: T = 1e-5, relu: Bool = false
    ) {
        precondition(groups > 0 && shape.c % groups == 0,
                     "GroupNorm: \(shape.c) channels of \(shape) are not divisible into \(groups) groups")
        let cpg = shape.c / groups, plane = shape.plane, size = cpg * plane
        if T.self == Float.self {
            // In C, a range of groups per call (GroupNorm(32) makes groups of 1-8 channels; per group, the Swift loops'
            // reductions waited for each other and dominated the 56 px model's GroupNorm).
            Parallel.forEach(shape.n * groups, grain: 1) { r in
                hd_groupnorm_forward_groups(asFloat(output), asFloat(input), r.lowerBound, r.count, Int32(groups), Int32(cpg),
                                            plane, asFloat(weight), asFloat(bias), unsafeBitCast(eps, to: Float.self),
                                            relu ? 1 : 0, asFloat(mean), asFloat(rstd))
            }
            return
        }
        Parallel.forEach(shape.n * groups, grain: 1) { r in
            for ng in r {
                let base = ng * size
                let x = input + base
                let mu = reduceSum(x, size) / T(size)
                let rs = reciprocalSqrt(reduceSquaredDeviation(x, size, mean: mu) / T(size) + eps)
                mean[ng] = mu
                rstd[ng] = rs
                let g = ng % groups
                for ci in 0..<cpg {
                    let c = g * cpg + ci
                    let scale = rs * weight[c], shift = bias[c] - mu * scale
                    let xp = x + ci * plane, yp = output + base + ci * plane
                    if relu {
                        for i in 0..<plane { let v = xp[i] * scale + shift; yp[i] = v < 0 ? 0 : v }
                    } else {
                        for i in 0..<plane { yp[i] = xp[i] * scale + shift }
                    }
                }
            }
        }
    }

    /// Gradients of `forward`; accumulates into `gradInput`, `gradWeight`, `gradBias`.
    /// - Parameters:
    ///   - gradInput: (n, c, h, w), accumulated (overwritten with `accumulateInput: false`, so a fresh buffer
    ///     needs no zeroing).
    ///   - gradWeight, gradBias: (c), accumulated.
    ///   - gradOutput: (n, c, h, w).
    ///   - input, weight, mean, rstd: as in and out of `forward`.
    ///   - reluOutput: for a `forward` with `relu`, its output: `gradOutput` is then the gradient of the ReLU's output
    ///     and is masked on the fly where that output is not positive (the bits of `ReLU.maskGradient` first, without
    ///     writing `gradOutput`).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func backward<T: KernelScalar>(
        gradInput: UnsafeMutablePointer<T>, gradWeight: UnsafeMutablePointer<T>, gradBias: UnsafeMutablePointer<T>,
        gradOutput: UnsafePointer<T>, input: UnsafePointer<T>, weight: UnsafePointer<T>,
        mean: UnsafePointer<T>, rstd: UnsafePointer<T>, shape: NCHW, groups: Int, workspace: Workspace<T>,
        accumulateInput: Bool = true, reluOutput: UnsafePointer<T>? = nil
    ) {
        precondition(groups > 0 && shape.c % groups == 0,
                     "GroupNorm: \(shape.c) channels of \(shape) are not divisible into \(groups) groups")
        let cpg = shape.c / groups, plane = shape.plane, size = cpg * plane, c = shape.c, n = shape.n
        // Per (image, channel): sum(dy) and sum(dy * xhat).
        let sumDy = workspace.reserve(workspaceCount(n: n, c: c))
        let sumDyX = sumDy + n * c
        if T.self == Float.self {
            // In C, a range of groups per call (the Swift loops' per-channel work was mostly overhead on 2x2 and 4x4 maps).
            Parallel.forEach(n * groups, grain: 1) { r in
                hd_groupnorm_backward_groups(asFloat(gradInput), asFloat(gradOutput), reluOutput.map { asFloat($0) }, asFloat(input),
                                             r.lowerBound, r.count, Int32(groups), Int32(cpg), plane, asFloat(weight), asFloat(mean),
                                             asFloat(rstd), accumulateInput ? 1 : 0, asFloat(sumDy), asFloat(sumDyX))
            }
        } else {
            Parallel.forEach(n * groups, grain: 1) { r in
                for ng in r {
                    let b = ng / groups, g = ng % groups
                    let mu = mean[ng], rs = rstd[ng]
                    let base = ng * size
                    var gSum: T = 0, gSumX: T = 0   // sums of dxhat and dxhat * xhat over the group
                    for ci in 0..<cpg {
                        let ch = g * cpg + ci
                        let x = input + base + ci * plane, dy = gradOutput + base + ci * plane
                        var (s, sx): (T, T)
                        if let reluOutput {
                            (s, sx) = reduceMaskedGradientMoments(dy, reluOutput + base + ci * plane, x, plane, mean: mu)
                        } else {
                            (s, sx) = reduceGradientMoments(dy, x, plane, mean: mu)
                        }
                        sx *= rs
                        sumDy[b * c + ch] = s
                        sumDyX[b * c + ch] = sx
                        gSum += s * weight[ch]
                        gSumX += sx * weight[ch]
                    }
                    // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
                    let mSum = gSum / T(size), mSumX = gSumX / T(size)
                    for ci in 0..<cpg {
                        let ch = g * cpg + ci
                        let x = input + base + ci * plane, dy = gradOutput + base + ci * plane
                        let dx = gradInput + base + ci * plane
                        let w = weight[ch]
                        if let reluOutput {
                            let out = reluOutput + base + ci * plane
                            if accumulateInput {
                                for i in 0..<plane {
                                    let gi = out[i] > 0 ? dy[i] : 0
                                    dx[i] += rs * (gi * w - mSum - (x[i] - mu) * rs * mSumX)
                                }
                            } else {
                                for i in 0..<plane {
                                    let gi = out[i] > 0 ? dy[i] : 0
                                    dx[i] = rs * (gi * w - mSum - (x[i] - mu) * rs * mSumX)
                                }
                            }
                        } else if accumulateInput {
                            for i in 0..<plane { dx[i] += rs * (dy[i] * w - mSum - (x[i] - mu) * rs * mSumX) }
                        } else {
                            for i in 0..<plane { dx[i] = rs * (dy[i] * w - mSum - (x[i] - mu) * rs * mSumX) }
                        }
                    }
                }
            }
        }
        for ch in 0..<c {
            var s: T = 0, sx: T = 0
            for b in 0..<n { s += sumDy[b * c + ch]; sx += sumDyX[b * c + ch] }
            gradBias[ch] += s
            gradWeight[ch] += sx
        }
    }
}

/// Batch normalisation over (n, h, w) per channel, with PyTorch's running-statistics update.
public enum BatchNorm2d {
    /// Forward. In training, normalises with the batch's biased variance and updates the running statistics
    /// (`running = (1 - momentum) * running + momentum * batch`, unbiased variance); in eval, uses them.
    /// - Parameters:
    ///   - output: (n, c, h, w), overwritten.
    ///   - saveMean, saveRstd: (c), overwritten: the mean and 1/sqrt(var + eps) used, for backward.
    ///   - input: (n, c, h, w).
    ///   - weight, bias: (c).
    ///   - runningMean, runningVar: (c); updated in training, read in eval.
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func forward<T: KernelScalar>(
        output: UnsafeMutablePointer<T>, saveMean: UnsafeMutablePointer<T>, saveRstd: UnsafeMutablePointer<T>,
        input: UnsafePointer<T>, weight: UnsafePointer<T>, bias: UnsafePointer<T>,
        runningMean: UnsafeMutablePointer<T>, runningVar: UnsafeMutablePointer<T>,
        shape: NCHW, training: Bool, momentum: T = 0.1, eps: T = 1e-5
    ) {
        let plane = shape.plane, c = shape.c, n = shape.n, count = n * plane
        precondition(!training || count > 1,
                     "BatchNorm2d: training needs more than one value per channel, got input \(shape)")
        Parallel.forEach(c, grain: 1) { r in
            for ch in r {
                let mu: T, rs: T
                if training {
                    var sum: T = 0
                    for b in 0..<n { sum += reduceSum(input + (b * c + ch) * plane, plane) }
                    mu = sum / T(count)
                    var sq: T = 0
                    for b in 0..<n { sq += reduceSquaredDeviation(input + (b * c + ch) * plane, plane, mean: mu) }
                    let variance = sq / T(count)
                    rs = reciprocalSqrt(variance + eps)
                    runningMean[ch] = (1 - momentum) * runningMean[ch] + momentum * mu
                    runningVar[ch] = (1 - momentum) * runningVar[ch] + momentum * (sq / T(count - 1))
                } else {
                    mu = runningMean[ch]
                    rs = reciprocalSqrt(runningVar[ch] + eps)
                }
                saveMean[ch] = mu
                saveRstd[ch] = rs
                let scale = rs * weight[ch], shift = bias[ch] - mu * scale
                for b in 0..<n {
                    let x = input + (b * c + ch) * plane, y = output + (b * c + ch) * plane
                    for i in 0..<plane { y[i] = x[i] * scale + shift }
                }
            }
        }
    }

    /// Gradients of `forward` in the same mode; accumulates into `gradInput`, `gradWeight`, `gradBias`.
    /// - Parameters:
    ///   - gradInput: (n, c, h, w), accumulated (overwritten with `accumulateInput: false`).
    ///   - gradWeight, gradBias: (c), accumulated.
    ///   - gradOutput: (n, c, h, w).
    ///   - input, weight, saveMean, saveRstd: as in and out of `forward`.
    ///   - training: the mode the forward ran in (in eval the statistics are constants).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func backward<T: KernelScalar>(
        gradInput: UnsafeMutablePointer<T>, gradWeight: UnsafeMutablePointer<T>, gradBias: UnsafeMutablePointer<T>,
        gradOutput: UnsafePointer<T>, input: UnsafePointer<T>, weight: UnsafePointer<T>,
        saveMean: UnsafePointer<T>, saveRstd: UnsafePointer<T>, shape: NCHW, training: Bool,
        accumulateInput: Bool = true
    ) {
        let plane = shape.plane, c = shape.c, n = shape.n, count = T(n * plane)
        Parallel.forEach(c, grain: 1) { r in
            for ch in r {
                let mu = saveMean[ch], rs = saveRstd[ch], w = weight[ch]
                var s: T = 0, sx: T = 0
                for b in 0..<n {
                    let (a, p) = reduceGradientMoments(gradOutput + (b * c + ch) * plane, input + (b * c + ch) * plane, plane, mean: mu)
                    s += a; sx += p
                }
                sx *= rs
                gradBias[ch] += s
                gradWeight[ch] += sx
                let k = w * rs
                for b in 0..<n {
                    let x = input + (b * c + ch) * plane, dy = gradOutput + (b * c + ch) * plane
                    let dx = gradInput + (b * c + ch) * plane
                    if !accumulateInput { dx.update(repeating: 0, count: plane) }
                    if training {
                        // dx = w * rstd * (dy - mean(dy) - xhat * mean(dy * xhat))
                        let ms = s / count, msx = sx / count
                        for i in 0..<plane { dx[i] += k * (dy[i] - ms - (x[i] - mu) * rs * msx) }
                    } else {
                        for i in 0..<plane { dx[i] += k * dy[i] }
                    }
                }
            }
        }
    }
}
