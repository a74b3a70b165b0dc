// Fully connected layer y = x W^T + b (PyTorch's nn.Linear layout), forward and backward.

/// Linear layer. Weight (out, in) like PyTorch, bias (out).
public enum Linear {
    /// y = x W^T + b. Overwrites `output`.
    /// - Parameters:
    ///   - output: (n, outFeatures).
    ///   - input: (n, inFeatures).
    ///   - weight: (outFeatures, inFeatures).
    ///   - bias: (outFeatures) or nil.
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func forward<T: KernelScalar>(
        output: UnsafeMutablePointer<T>, input: UnsafePointer<T>, weight: UnsafePointer<T>, bias: UnsafePointer<T>?,
        n: Int, inFeatures: Int, outFeatures: Int
    ) {
        precondition(n > 0 && inFeatures > 0 && outFeatures > 0,
                     "Linear: bad sizes n \(n), in \(inFeatures), out \(outFeatures)")
        T.gemm(transA: false, transB: true, m: n, n: outFeatures, k: inFeatures, alpha: 1, a: input, lda: inFeatures,
               b: weight, ldb: inFeatures, beta: 0, c: output, ldc: outFeatures)
        if let bias {
            for i in 0..<n {
                let y = output + i * outFeatures
                for j in 0..<outFeatures { y[j] += bias[j] }
            }
        }
    }

    /// Gradients; accumulates into `gradInput` (nil to skip), `gradWeight`, `gradBias` (nil if no bias).
    /// - Parameters:
    ///   - gradInput: (n, inFeatures), accumulated.
    ///   - gradWeight: (outFeatures, inFeatures), accumulated.
    ///   - gradBias: (outFeatures), accumulated.
    ///   - gradOutput: (n, outFeatures).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func backward<T: KernelScalar>(
        gradInput: UnsafeMutablePointer<T>?, gradWeight: UnsafeMutablePointer<T>, gradBias: UnsafeMutablePointer<T>?,
        gradOutput: UnsafePointer<T>, input: UnsafePointer<T>, weight: UnsafePointer<T>,
        n: Int, inFeatures: Int, outFeatures: Int
    ) {
        if let gradInput {
            T.gemm(transA: false, transB: false, m: n, n: inFeatures, k: outFeatures, alpha: 1, a: gradOutput,
                   lda: outFeatures, b: weight, ldb: inFeatures, beta: 1, c: gradInput, ldc: inFeatures)
        }
        T.gemm(transA: true, transB: false, m: outFeatures, n: inFeatures, k: n, alpha: 1, a: gradOutput,
               lda: outFeatures, b: input, ldb: inFeatures, beta: 1, c: gradWeight, ldc: inFeatures)
        if let gradBias {
            for i in 0..<n {
                let dy = gradOutput + i * outFeatures
                for j in 0..<outFeatures { gradBias[j] += dy[j] }
            }
        }
    }
}
