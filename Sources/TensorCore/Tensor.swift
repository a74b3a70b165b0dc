// Owned element buffers and NCHW tensor views over them.

/// A block of `count` elements allocated once, 64-byte aligned, zero-initialised, freed with the object.
public final class Buffer<T: KernelScalar>: @unchecked Sendable {
    /// First element.
    public let pointer: UnsafeMutablePointer<T>
    /// Number of elements.
    public let count: Int

    /// Allocates `count` zeroed elements.
    public init(count: Int) {
        precondition(count >= 0, "Buffer: negative element count \(count)")
        let raw = UnsafeMutableRawPointer.allocate(
            byteCount: max(count, 1) * MemoryLayout<T>.stride, alignment: 64)
        pointer = raw.bindMemory(to: T.self, capacity: max(count, 1))
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: max(count, 1) * MemoryLayout<T>.stride)
        self.count = count
    }

    /// Allocates a buffer holding a copy of `values`.
    public convenience init(_ values: [T]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { src in
            if let base = src.baseAddress { pointer.update(from: base, count: values.count) }
        }
    }

    deinit { pointer.deallocate() }

    /// Sets every element to zero.
    public func zero() { zeroFill(pointer, count) }

    /// The elements as an array (for tests and small reports, not hot paths).
    public var array: [T] { Array(UnsafeBufferPointer(start: pointer, count: count)) }

    /// Element access (bounds-checked in debug builds).
    public subscript(i: Int) -> T {
        get { assert(i >= 0 && i < count, "Buffer index \(i) out of 0..<\(count)"); return pointer[i] }
        set { assert(i >= 0 && i < count, "Buffer index \(i) out of 0..<\(count)"); pointer[i] = newValue }
    }
}

/// The shape of an NCHW activation: batch, channels, height, width.
public struct NCHW: Hashable, Sendable, CustomStringConvertible {
    public var n: Int, c: Int, h: Int, w: Int
    /// Creates a shape; every extent must be positive.
    public init(_ n: Int, _ c: Int, _ h: Int, _ w: Int) {
        precondition(n > 0 && c > 0 && h > 0 && w > 0, "NCHW: extents must be positive, got (\(n), \(c), \(h), \(w))")
        self.n = n; self.c = c; self.h = h; self.w = w
    }
    /// Elements in the whole tensor.
    public var count: Int { n * c * h * w }
    /// Elements in one spatial plane.
    public var plane: Int { h * w }
    public var description: String { "(\(n), \(c), \(h), \(w))" }
}

/// A tensor: a shape and a pointer into storage someone else owns (a `Buffer`, an `Arena`, a parameter store).
public struct Tensor<T: KernelScalar> {
    /// Extents, outermost first.
    public let shape: [Int]
    /// First element.
    public let data: UnsafeMutablePointer<T>

    /// Wraps `data` with `shape`.
    public init(shape: [Int], data: UnsafeMutablePointer<T>) {
        precondition(shape.allSatisfy { $0 >= 0 }, "Tensor: negative extent in \(shape)")
        self.shape = shape
        self.data = data
    }

    /// Number of elements.
    public var count: Int { shape.reduce(1, *) }

    /// The NCHW shape of a rank-4 tensor.
    public var nchw: NCHW {
        precondition(shape.count == 4, "Tensor.nchw: tensor has shape \(shape), not rank 4")
        return NCHW(shape[0], shape[1], shape[2], shape[3])
    }
}

/// Sets `count` elements at `p` to zero with one memset (no per-element generic code).
@inline(__always)
public func zeroFill<T: KernelScalar>(_ p: UnsafeMutablePointer<T>, _ count: Int) {
    UnsafeMutableRawPointer(p).initializeMemory(as: UInt8.self, repeating: 0, count: count * MemoryLayout<T>.stride)
}
