// ReLU, residual add, and elementwise accumulation, forward and backward.
import CKernels

/// Rectified linear unit.
public enum ReLU {
    /// y = max(x, 0), NaN kept as NaN (as torch.relu), so a diverged activation is not silently zeroed.
    /// `output` may be `input` (in place).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func forward<T: KernelScalar>(output: UnsafeMutablePointer<T>, input: UnsafePointer<T>, count: Int) {
        Parallel.forEach(count, grain: 1 << 15) { r in
            if T.self == Float.self {
                hd_relu_forward(asFloat(output) + r.lowerBound, asFloat(input) + r.lowerBound, r.count)
            } else {
                for i in r { let v = input[i]; output[i] = v < 0 ? 0 : v }
            }
        }
    }

    /// dx += dy where the forward's output is positive. Uses the OUTPUT, so it also works after in-place forward.
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func backward<T: KernelScalar>(
        gradInput: UnsafeMutablePointer<T>, gradOutput: UnsafePointer<T>, output: UnsafePointer<T>, count: Int
    ) {
        Parallel.forEach(count, grain: 1 << 15) { r in
            if T.self == Float.self {
                let lo = r.lowerBound
                hd_relu_backward_add(asFloat(gradInput) + lo, asFloat(gradOutput) + lo, asFloat(output) + lo, r.count)
            } else {
                for i in r { gradInput[i] += output[i] > 0 ? gradOutput[i] : 0 }
            }
        }
    }

    /// g = g where the forward's output is positive, else 0, in place: the gradient of the ReLU's output becomes
    /// that of its input without a second buffer (for a caller that owns `gradient` and needs it no more).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func maskGradient<T: KernelScalar>(_ gradient: UnsafeMutablePointer<T>, output: UnsafePointer<T>, count: Int) {
        Parallel.forEach(count, grain: 1 << 15) { r in
            if T.self == Float.self {
                hd_relu_mask(asFloat(gradient) + r.lowerBound, asFloat(output) + r.lowerBound, r.count)
            } else {
                for i in r where !(output[i] > 0) { gradient[i] = 0 }
            }
        }
    }
}

/// Residual connection: y = a + b.
public enum Add {
    /// y = a + b, then with `relu` max(y, 0) in the same pass (the bits of `ReLU.forward` on the sum: a residual
    /// block's output). `output` may alias either input.
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func forward<T: KernelScalar>(
        output: UnsafeMutablePointer<T>, a: UnsafePointer<T>, b: UnsafePointer<T>, count: Int, relu: Bool = false
    ) {
        Parallel.forEach(count, grain: 1 << 15) { r in
            if relu && T.self == Float.self {
                let lo = r.lowerBound
                hd_add_relu(asFloat(output) + lo, asFloat(a) + lo, asFloat(b) + lo, r.count)
            } else if relu {
                for i in r { let v = a[i] + b[i]; output[i] = v < 0 ? 0 : v }
            } else {
                for i in r { output[i] = a[i] + b[i] }
            }
        }
    }

    /// da += dy, db += dy (either may be nil when that input needs no gradient).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func backward<T: KernelScalar>(
        gradA: UnsafeMutablePointer<T>?, gradB: UnsafeMutablePointer<T>?, gradOutput: UnsafePointer<T>, count: Int
    ) {
        if let gradA { accumulate(gradA, gradOutput, count: count) }
        if let gradB { accumulate(gradB, gradOutput, count: count) }
    }
}

/// dst += src over `count` elements.
@_specialize(exported: true, where T == Float)
@_specialize(exported: true, where T == Double)
public func accumulate<T: KernelScalar>(_ dst: UnsafeMutablePointer<T>, _ src: UnsafePointer<T>, count: Int) {
    Parallel.forEach(count, grain: 1 << 15) { r in
        for i in r { dst[i] += src[i] }
    }
}
