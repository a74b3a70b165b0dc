// The model seam: what training, weights files, checkpoints, the all-reduce, broadcasts and optimizers need of
// any model (parameters in one flat store, named state entries, buffers, counters), and what image models add
// (a forward over NCHW tiles and its backward).
import TensorCore

/// An entry of the PyTorch state_dict, in PyTorch's order.
public enum StateEntry: Sendable {
    /// A trainable parameter in `parameters`.
    case parameter(ParameterSlice)
    /// A non-trainable tensor in `buffers` (e.g. a BatchNorm running statistic).
    case buffer(ParameterSlice)
    /// An integer counter in `counters` (e.g. BatchNorm's num_batches_tracked, an int64 scalar in PyTorch).
    case counter(name: String, index: Int)

    /// The state_dict key.
    public var name: String {
        switch self {
        case .parameter(let s), .buffer(let s): return s.name
        case .counter(let name, _): return name
        }
    }
}

/// A model whose whole state lives in flat stores, like a PyTorch `nn.Module`'s state_dict.
///
/// Contract: every trainable parameter is a named slice of `parameters` (its gradients are the same slice of
/// `parameters.gradients`), non-trainable tensors are slices of `buffers`, integer state is `counters`, and
/// `stateEntries` lists all of them in PyTorch's state_dict order with PyTorch's names. A model's forward keeps
/// what its backward needs until the next forward; its backward ADDS into `parameters.gradients` (zero them first).
/// Weights files, checkpoints, the gradient all-reduce, state broadcasts and optimizers see only this protocol.
public protocol Module: AnyObject {
    /// Trainable parameters and their gradients, in forward order.
    var parameters: ParameterStore<Float> { get }
    /// Non-trainable tensors (BatchNorm running means and variances); an empty store when there are none.
    var buffers: ParameterStore<Float> { get }
    /// Integer state (BatchNorm num_batches_tracked); empty when there is none.
    var counters: [Int64] { get set }
    /// Every state_dict entry in PyTorch's order.
    var stateEntries: [StateEntry] { get }
    /// A one-line description of the architecture, for metadata and error messages.
    var architectureDescription: String { get }
}

extension Module {
    /// Copies `source`'s weights, buffers and counters into this module (the same architecture).
    public func copyState(from source: any Module) {
        precondition(source.parameterCount == parameterCount && source.buffers.layout.count == buffers.layout.count,
                     "Module.copyState: \(source.architectureDescription) into \(architectureDescription)")
        parameters.values.pointer.update(from: source.parameters.values.pointer, count: parameterCount)
        buffers.values.pointer.update(from: source.buffers.values.pointer, count: buffers.layout.count)
        counters = source.counters
    }

    /// Number of trainable parameters.
    public var parameterCount: Int { parameters.layout.count }
}

/// What an image model's forward returns. Pointers stay valid until the model's next forward.
public struct ImageModelOutput {
    /// Last kept stage's feature map (n, C, h, w).
    public let featureMap: Tensor<Float>
    /// Global average of the feature map (n, C).
    public let pooled: Tensor<Float>
    /// Classifier output (n, classes), nil for a feature extractor.
    public let logits: Tensor<Float>?

    /// Outputs over the given tensors.
    public init(featureMap: Tensor<Float>, pooled: Tensor<Float>, logits: Tensor<Float>?) {
        self.featureMap = featureMap; self.pooled = pooled; self.logits = logits
    }
}

/// The outputs of a ResNet forward pass.
public typealias ResNetOutput = ImageModelOutput

/// A model over NCHW tiles (n, 3, h, w): a classifier, or a feature extractor when `classes` is 0.
public protocol ImageModel: Module {
    /// Outputs of the classifier (0 for a feature extractor without one).
    var classes: Int { get }
    /// Channels of the feature map and length of the pooled feature vector.
    var featureDimension: Int { get }
    /// Runs the model on `input` (n, 3, h, w); `training` selects batch statistics (and updates running ones).
    /// The input must stay valid until `backward`.
    func forward(_ input: UnsafePointer<Float>, shape: NCHW, training: Bool) -> ImageModelOutput
    /// Adds the gradients of the last forward's outputs into `parameters.gradients`: the logits' (n, classes), the
    /// feature map's (n, C, h, w) and the pooled features' (n, C), each optional.
    func backward(gradLogits: UnsafePointer<Float>?, gradFeatureMap: UnsafePointer<Float>?, gradPooled: UnsafePointer<Float>?)
    /// Spatial edge of the feature map for a square input of `resolution` pixels.
    func featureMapSize(resolution: Int) -> Int
    /// Multiply-adds of one forward for one square image of `resolution` pixels.
    func macs(resolution: Int) -> Int
}

/// A model whose backward says, as it goes, which part of `parameters.gradients` is final: after the backward of a
/// unit (the classifier, a convolution with its norm, a block) it calls `gradientReady(offset)`, meaning that no
/// gradient at flat index `offset` or above changes again in this backward. Parameters are stored in forward order
/// and backward runs in reverse, so the offsets only decrease, ending at 0. The data-parallel step uses it to start
/// reducing the tail of the gradient over the ranks while backward still runs (the bucket hooks of PyTorch's
/// DistributedDataParallel; Li et al., "PyTorch Distributed", VLDB 2020). Nil (the default): no calls.
public protocol ReportsGradientProgress: AnyObject {
    /// Called on the thread running the backward with the lowest flat index whose gradients are final.
    var gradientReady: ((_ offset: Int) -> Void)? { get set }
    /// The offsets a backward reports, in the order it reports them (decreasing, ending at 0): where gradient buckets
    /// can end so that each is ready as soon as its last layer's backward is done.
    var gradientReadyOffsets: [Int] { get }
}
