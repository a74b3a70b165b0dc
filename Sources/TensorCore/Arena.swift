// A bump allocator for activations: sized on the first step, one block and no allocation after it.

/// Activation memory for one step. `allocate` hands out zeroed ranges; `reset` frees them all at once.
///
/// The first step may spill into extra blocks; `reset` then replaces them with one block of the high-water
/// size, so every later step with the same shapes allocates nothing.
public final class Arena<T: KernelScalar>: @unchecked Sendable {
    private var blocks: [Buffer<T>] = []
    private var used = 0          // elements used in the last block
    private var spilled = 0       // elements used in earlier blocks
    /// Largest number of elements in use at once so far.
    public private(set) var highWater = 0

    /// An arena with an initial capacity of `capacity` elements.
    public init(capacity: Int = 0) {
        if capacity > 0 { blocks.append(Buffer(count: capacity)) }
    }

    /// Total capacity in elements.
    public var capacity: Int { blocks.reduce(0) { $0 + $1.count } }

    /// A range of `count` elements, 64-byte aligned, valid until `reset`; zeroed unless `zeroed` is false
    /// (for outputs a kernel overwrites anyway).
    public func allocate(_ count: Int, zeroed: Bool = true) -> UnsafeMutablePointer<T> {
        precondition(count >= 0, "Arena.allocate: negative count \(count)")
        let aligned = (count + 15) & ~15
        if blocks.isEmpty || used + aligned > blocks[blocks.count - 1].count {
            spilled += used
            blocks.append(Buffer(count: max(aligned, 1 << 20)))
            used = 0
        }
        let p = blocks[blocks.count - 1].pointer + used
        used += aligned
        highWater = max(highWater, spilled + used)
        if zeroed { zeroFill(p, count) }
        return p
    }

    /// A tensor of `shape` allocated from the arena.
    public func tensor(_ shape: [Int]) -> Tensor<T> {
        Tensor(shape: shape, data: allocate(shape.reduce(1, *)))
    }

    /// Frees everything; consolidates into one block of the high-water size if the last step spilled.
    public func reset() {
        if blocks.count > 1 {
            blocks = [Buffer(count: highWater)]
        }
        used = 0
        spilled = 0
    }
}
