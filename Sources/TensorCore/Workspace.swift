// Grow-only scratch memory for kernels that need temporaries (im2col columns, transposed gradients).

/// Scratch memory reused across kernel calls; grows to the largest request and never shrinks.
public final class Workspace<T: KernelScalar>: @unchecked Sendable {
    private var buffer: Buffer<T>?

    /// An empty workspace.
    public init() {}

    /// Elements currently allocated.
    public var capacity: Int { buffer?.count ?? 0 }

    /// A pointer to at least `count` elements. Contents are unspecified; valid until the next `reserve`.
    public func reserve(_ count: Int) -> UnsafeMutablePointer<T> {
        if let b = buffer, b.count >= count { return b.pointer }
        let b = Buffer<T>(count: count)
        buffer = b
        return b.pointer
    }
}
