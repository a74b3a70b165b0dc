// Softmax and log-softmax over the last dimension of a (rows, cols) matrix, forward and backward.

/// Softmax over each row.
public enum Softmax {
    /// y = exp(x - max) / sum(exp(x - max)) per row. Overwrites `output` (may alias `input`).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func forward<T: KernelScalar>(
        output: UnsafeMutablePointer<T>, input: UnsafePointer<T>, rows: Int, cols: Int
    ) {
        precondition(rows > 0 && cols > 0, "Softmax: bad sizes rows \(rows), cols \(cols)")
        for r in 0..<rows {
            let x = input + r * cols, y = output + r * cols
            let mx = rowMax(x, cols)
            var sum: T = 0
            for j in 0..<cols { let e = T.exp(x[j] - mx); y[j] = e; sum += e }
            let inv = 1 / sum
            for j in 0..<cols { y[j] *= inv }
        }
    }

    /// dx += y * (dy - sum(dy * y)) per row, from the forward's output `y`.
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func backward<T: KernelScalar>(
        gradInput: UnsafeMutablePointer<T>, gradOutput: UnsafePointer<T>, output: UnsafePointer<T>, rows: Int, cols: Int
    ) {
        for r in 0..<rows {
            let y = output + r * cols, dy = gradOutput + r * cols, dx = gradInput + r * cols
            var dot: T = 0
            for j in 0..<cols { dot += dy[j] * y[j] }
            for j in 0..<cols { dx[j] += y[j] * (dy[j] - dot) }
        }
    }
}

/// Log-softmax over each row.
public enum LogSoftmax {
    /// y = x - max - log(sum(exp(x - max))) per row. Overwrites `output` (may alias `input`).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func forward<T: KernelScalar>(
        output: UnsafeMutablePointer<T>, input: UnsafePointer<T>, rows: Int, cols: Int
    ) {
        precondition(rows > 0 && cols > 0, "LogSoftmax: bad sizes rows \(rows), cols \(cols)")
        for r in 0..<rows {
            let x = input + r * cols, y = output + r * cols
            let mx = rowMax(x, cols)
            var sum: T = 0
            for j in 0..<cols { sum += T.exp(x[j] - mx) }
            let lse = mx + T.log(sum)
            for j in 0..<cols { y[j] = x[j] - lse }
        }
    }

    /// dx += dy - exp(y) * sum(dy) per row, from the forward's output `y`.
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func backward<T: KernelScalar>(
        gradInput: UnsafeMutablePointer<T>, gradOutput: UnsafePointer<T>, output: UnsafePointer<T>, rows: Int, cols: Int
    ) {
        for r in 0..<rows {
            let y = output + r * cols, dy = gradOutput + r * cols, dx = gradInput + r * cols
            var s: T = 0
            for j in 0..<cols { s += dy[j] }
            for j in 0..<cols { dx[j] += dy[j] - T.exp(y[j]) * s }
        }
    }
}

/// The largest of `cols` values at `x` (cols >= 1).
@inline(__always)
func rowMax<T: KernelScalar>(_ x: UnsafePointer<T>, _ cols: Int) -> T {
    var mx = x[0]
    for j in 1..<cols where x[j] > mx { mx = x[j] }
    return mx
}
