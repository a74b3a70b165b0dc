// Architecture descriptions: the paper's ResNet with GroupNorm, torchvision ResNet-18/34, truncation.

/// Which normalisation the ResNet uses.
public enum NormKind: Hashable, Sendable, Codable {
    /// GroupNorm with this many groups (the paper's model: 32).
    case group(Int)
    /// BatchNorm2d (torchvision).
    case batch
}

/// A BasicBlock ResNet: stem conv 7x7/2 + norm + ReLU + max-pool 3x3/2, then stages of BasicBlocks, global
/// average pool and a linear classifier. Truncated models stop after `stages` stages and have no classifier.
public struct ResNetConfig: Hashable, Sendable, Codable, CustomStringConvertible {
    /// A short name used in checkpoints and reports ("resnet-gn", "resnet18", "resnet34").
    public var name: String
    /// Output channels of each stage (the stem has planes[0]).
    public var planes: [Int]
    /// BasicBlocks per stage.
    public var blocks: [Int]
    /// Normalisation.
    public var norm: NormKind
    /// Classes of the classifier (0 for a feature extractor).
    public var classes: Int
    /// Stages kept (1...planes.count); fewer than all gives a truncated feature extractor (HistoTransfer).
    public var stages: Int

    /// A configuration; stages defaults to all of them.
    public init(name: String, planes: [Int], blocks: [Int], norm: NormKind, classes: Int, stages: Int? = nil) {
        self.name = name; self.planes = planes; self.blocks = blocks; self.norm = norm; self.classes = classes
        self.stages = stages ?? planes.count
    }

    /// The paper's model (DiPalma et al. 2021): planes 32/64/128/256, one block per stage, GroupNorm(32).
    public static func paper(classes: Int = 5, planes: [Int] = [32, 64, 128, 256], blocks: [Int] = [1, 1, 1, 1],
                             groups: Int = 32) -> ResNetConfig {
        ResNetConfig(name: "resnet-gn", planes: planes, blocks: blocks, norm: .group(groups), classes: classes)
    }

    /// torchvision's resnet18 (BatchNorm, planes 64/128/256/512, blocks 2/2/2/2).
    public static func resnet18(classes: Int = 1000) -> ResNetConfig {
        ResNetConfig(name: "resnet18", planes: [64, 128, 256, 512], blocks: [2, 2, 2, 2], norm: .batch, classes: classes)
    }

    /// torchvision's resnet34 (BatchNorm, planes 64/128/256/512, blocks 3/4/6/3).
    public static func resnet34(classes: Int = 1000) -> ResNetConfig {
        ResNetConfig(name: "resnet34", planes: [64, 128, 256, 512], blocks: [3, 4, 6, 3], norm: .batch, classes: classes)
    }

    /// The same network cut after stage `k` (1...4): a feature extractor with `featureDimension` outputs.
    public func truncated(after k: Int) -> ResNetConfig {
        precondition(k >= 1 && k <= planes.count, "ResNetConfig.truncated: stage \(k) is outside 1...\(planes.count)")
        var c = self
        c.stages = k
        c.classes = 0
        return c
    }

    /// Channels of the last kept stage: the length of the pooled feature vector.
    public var featureDimension: Int { planes[stages - 1] }

    /// Spatial size of the feature map for a square input of `size`.
    public func featureMapSize(resolution size: Int) -> Int {
        var h = (size + 6 - 7) / 2 + 1
        h = (h + 2 - 3) / 2 + 1
        for _ in 1..<stages { h = (h + 2 - 3) / 2 + 1 }   // stages 2... halve the map
        return h
    }

    /// The fewest images per forward that training mode accepts at `resolution` px: BatchNorm needs more than one
    /// value per channel (PyTorch's "Expected more than 1 value per channel when training"), so a model with
    /// BatchNorm whose last map is 1x1 needs 2; GroupNorm normalises each image alone and needs 1.
    public func minimumTrainingBatch(resolution size: Int) -> Int {
        guard case .batch = norm else { return 1 }
        let side = featureMapSize(resolution: size)
        return side * side >= 2 ? 1 : 2
    }

    /// Widths, depths and class counts beyond any CNN's, which would only end in a failed allocation.
    public static let maxPlanes = 8192, maxBlocks = 256, maxClasses = 100_000

    /// Problems with this configuration, each naming the field; empty when valid.
    public var problems: [String] {
        var p: [String] = []
        if planes.contains(where: { $0 > Self.maxPlanes }) { p.append("planes \(planes) must be at most \(Self.maxPlanes) each") }
        if blocks.contains(where: { $0 > Self.maxBlocks }) { p.append("blocks \(blocks) must be at most \(Self.maxBlocks) each") }
        if classes > Self.maxClasses { p.append("classes \(classes) must be at most \(Self.maxClasses)") }
        if planes.isEmpty || planes.count != blocks.count { p.append("planes \(planes) and blocks \(blocks) must be non-empty and of equal length") }
        if planes.contains(where: { $0 <= 0 }) { p.append("planes \(planes) must be positive") }
        if blocks.contains(where: { $0 <= 0 }) { p.append("blocks \(blocks) must be positive") }
        if stages < 1 || stages > planes.count { p.append("stages \(stages) must be in 1...\(planes.count)") }
        if classes < 0 { p.append("classes \(classes) must not be negative") }
        if case .group(let g) = norm {
            if g <= 0 { p.append("groups \(g) must be positive") }
            let bad = planes.filter { g > 0 && $0 % g != 0 }
            if !bad.isEmpty { p.append("GroupNorm(\(g)) cannot split \(bad.map(String.init).joined(separator: ", ")) channels (planes \(planes)); choose groups that divide every width") }
        }
        return p
    }

    public var description: String {
        let normText: String
        switch norm {
        case .group(let g): normText = "GroupNorm(\(g))"
        case .batch: normText = "BatchNorm"
        }
        return "\(name): planes \(planes), blocks \(blocks), \(normText), \(classes > 0 ? "\(classes) classes" : "no classifier (a feature extractor)"), \(stages) stages"
    }
}
