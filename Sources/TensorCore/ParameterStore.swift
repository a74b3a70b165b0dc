// The flat parameter store: every parameter of a model in one contiguous buffer, in forward order.

/// One named parameter: a range of the flat buffer with a shape.
public struct ParameterSlice: Hashable, Sendable {
    /// PyTorch state_dict name, e.g. "layer1.0.conv1.weight".
    public let name: String
    /// Extents, as PyTorch stores them.
    public let shape: [Int]
    /// First element in the flat buffer.
    public let offset: Int
    /// Number of elements.
    public var count: Int { shape.reduce(1, *) }
}

/// The layout of a flat buffer: names, shapes and offsets of its slices, in the order they were added.
public struct ParameterLayout: Sendable {
    /// Slices in forward order.
    public private(set) var slices: [ParameterSlice] = []
    private var index: [String: Int] = [:]
    /// Total elements.
    public private(set) var count = 0

    /// An empty layout.
    public init() {}

    /// Appends a slice named `name` with `shape`; names must be unique.
    @discardableResult
    public mutating func add(_ name: String, shape: [Int]) -> ParameterSlice {
        precondition(index[name] == nil, "ParameterLayout: duplicate parameter name '\(name)'")
        precondition(shape.allSatisfy { $0 > 0 }, "ParameterLayout: '\(name)' has a non-positive extent in \(shape)")
        let slice = ParameterSlice(name: name, shape: shape, offset: count)
        index[name] = slices.count
        slices.append(slice)
        count += slice.count
        return slice
    }

    /// The slice named `name`, or nil.
    public subscript(name: String) -> ParameterSlice? { index[name].map { slices[$0] } }
}

/// Values (and optionally gradients) of a whole model, each in one contiguous allocation with `layout`.
///
/// One all-reduce, one optimizer loop and one checkpoint write cover the whole model; gradient buckets are
/// ranges of `gradients`.
public final class ParameterStore<T: KernelScalar>: @unchecked Sendable {
    /// Names, shapes and offsets.
    public let layout: ParameterLayout
    /// All values.
    public let values: Buffer<T>
    /// All gradients (same layout), or nil for stores of non-trainable buffers such as running statistics.
    public let gradients: Buffer<T>?

    /// Allocates zeroed values, and gradients when `withGradients`.
    public init(layout: ParameterLayout, withGradients: Bool = true) {
        self.layout = layout
        values = Buffer(count: layout.count)
        gradients = withGradients ? Buffer(count: layout.count) : nil
    }

    /// Pointer to the values of `slice`.
    public func value(_ slice: ParameterSlice) -> UnsafeMutablePointer<T> { values.pointer + slice.offset }

    /// Pointer to the gradients of `slice`.
    public func gradient(_ slice: ParameterSlice) -> UnsafeMutablePointer<T> {
        guard let g = gradients else { preconditionFailure("ParameterStore: '\(slice.name)' has no gradient buffer") }
        return g.pointer + slice.offset
    }

    /// Zeroes every gradient (one memset; backward kernels accumulate).
    public func zeroGradients() { gradients?.zero() }
}
