// Whole models, losses and optimizers against PyTorch (Tests/Fixtures/models.safetensors).
import Foundation
import SafeTensors
import Testing
@testable import Layers
@testable import TensorCore
@testable import Training

enum ModelFixtures {
    static let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/models.safetensors")
    static let file: SafeTensorsFile = {
        do { return try SafeTensorsFile(contentsOf: url) } catch { fatalError("cannot load model fixtures: \(error)") }
    }()

    static func tensor(_ name: String) -> SafeTensor {
        guard let t = file[name] else { fatalError("fixture tensor \(name) missing") }
        return t
    }

    static func floats(_ name: String) -> [Float] { tensor(name).floats }

    /// The tensors under `prefix` with the prefix removed: a state_dict.
    static func stateDict(_ prefix: String) -> SafeTensorsFile {
        SafeTensorsFile(tensors: file.tensors.filter { $0.name.hasPrefix(prefix) }.map {
            SafeTensor(name: String($0.name.dropFirst(prefix.count)), dtype: $0.dtype, shape: $0.shape, data: $0.data)
        })
    }
}

/// Max |a - b| over max |b| (relative error of the largest element).
func relErr(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "relErr: \(a.count) vs \(b.count)")
    var e: Float = 0, r: Float = 0
    for i in a.indices { e = max(e, abs(a[i] - b[i])); r = max(r, abs(b[i])) }
    return r > 0 ? e / r : e
}

func array(_ p: UnsafePointer<Float>, _ n: Int) -> [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }

/// Runs forward + cross-entropy + backward and returns (loss, model output arrays).
func trainStep(_ model: ResNet, x: [Float], shape: NCHW, labels: [Int32], training: Bool) -> (loss: Float, fmap: [Float], logits: [Float]) {
    let input = Buffer<Float>(x)
    let out = model.forward(input.pointer, shape: shape, training: training)
    let logits = out.logits!
    let grad = Buffer<Float>(count: logits.count)
    let loss = labels.withUnsafeBufferPointer {
        CrossEntropy.forwardBackward(logits: logits.data, labels: $0.baseAddress!, n: shape.n, classes: model.config.classes, gradLogits: grad.pointer)
    }
    model.parameters.zeroGradients()
    model.backward(gradLogits: grad.pointer)
    return (loss, array(out.featureMap.data, out.featureMap.count), array(logits.data, logits.count))
}

@Suite("Models against PyTorch")
struct ModelFixtureTests {
    static let gnConfig = ResNetConfig.paper(classes: 5, planes: [32, 32, 64, 64])
    static let bnConfig = ResNetConfig(name: "narrow-resnet18", planes: [8, 16, 32, 64], blocks: [2, 2, 2, 2], norm: .batch, classes: 5)

    func expectGradients(_ model: ResNet, prefix: String, sourceLocation: SourceLocation = #_sourceLocation) {
        var worst: (String, Float) = ("", 0)
        for slice in model.parameters.layout.slices {
            let e = relErr(array(model.parameters.gradient(slice), slice.count), ModelFixtures.floats(prefix + slice.name))
            if e > worst.1 { worst = (slice.name, e) }
            #expect(e <= 1e-4, "gradient of \(slice.name): relative error \(e)", sourceLocation: sourceLocation)
        }
        print("\(prefix): worst parameter gradient \(worst.0) relative error \(worst.1)")
    }

    @Test("paper ResNet-GN: feature map, logits, loss and every parameter gradient")
    func paperModel() throws {
        let model = ResNet(Self.gnConfig)
        try model.load(ModelFixtures.stateDict("gn.sd."), source: "fixture gn.sd")
        let labels = ModelFixtures.floats("gn.labels").map { Int32($0) }
        let r = trainStep(model, x: ModelFixtures.floats("gn.x"), shape: NCHW(2, 3, 64, 64), labels: labels, training: true)
        #expect(relErr(r.fmap, ModelFixtures.floats("gn.fmap")) <= 1e-4)
        #expect(relErr(r.logits, ModelFixtures.floats("gn.logits")) <= 1e-4)
        #expect(relErr([r.loss], ModelFixtures.floats("gn.loss")) <= 1e-5)
        expectGradients(model, prefix: "gn.grad.")
    }

    @Test("torchvision-named BatchNorm ResNet in train and eval mode, running statistics", arguments: ["train", "eval"])
    func batchNormModel(_ mode: String) throws {
        let model = ResNet(Self.bnConfig)
        try model.load(ModelFixtures.stateDict("bn.sd."), source: "fixture bn.sd")
        let labels = ModelFixtures.floats("bn.labels").map { Int32($0) }
        let r = trainStep(model, x: ModelFixtures.floats("bn.x"), shape: NCHW(3, 3, 64, 64), labels: labels, training: mode == "train")
        #expect(relErr(r.fmap, ModelFixtures.floats("bn.\(mode).fmap")) <= 1e-4)
        #expect(relErr(r.logits, ModelFixtures.floats("bn.\(mode).logits")) <= 1e-4)
        #expect(relErr([r.loss], ModelFixtures.floats("bn.\(mode).loss")) <= 1e-5)
        expectGradients(model, prefix: "bn.\(mode).grad.")
        let after = Dictionary(uniqueKeysWithValues: model.stateDict().map { ($0.name, $0) })
        for name in after.keys where name.contains("running") || name.contains("num_batches") {
            #expect(relErr(after[name]!.floats, ModelFixtures.floats("bn.\(mode).after.\(name)")) <= 1e-5, "\(name) after one \(mode) step")
        }
    }

    @Test("distillation KL term and its gradient")
    func klTerm() {
        let s = ModelFixtures.floats("kd.s_logits"), t = ModelFixtures.floats("kd.t_logits")
        var grad = [Float](repeating: 0, count: s.count)
        let loss = DistillationKL.forwardBackward(student: s, teacher: t, n: 4, classes: 5, temperature: 4, gradStudent: &grad)
        #expect(relErr([loss], ModelFixtures.floats("kd.kl.loss")) <= 1e-5)
        #expect(relErr(grad, ModelFixtures.floats("kd.kl.grad")) <= 1e-5)
    }

    @Test("pixel loss for every resize mode and norm", arguments: PixelResize.allCases, PixelNorm.allCases)
    func pixelTerm(_ mode: PixelResize, _ norm: PixelNorm) {
        let s = ModelFixtures.floats("kd.s_map"), t = ModelFixtures.floats("kd.t_map")
        var grad = [Float](repeating: 0, count: s.count)
        let loss = PixelLoss.forwardBackward(student: s, studentShape: NCHW(4, 8, 2, 2), teacher: t, teacherShape: NCHW(4, 8, 7, 7),
                                             mode: mode, norm: norm, gradStudent: &grad)
        let key = "kd.px.\(mode.rawValue).\(norm.rawValue)"
        #expect(relErr([loss], ModelFixtures.floats("\(key).loss")) <= 1e-5)
        #expect(relErr(grad, ModelFixtures.floats("\(key).grad")) <= 1e-5)
    }

    @Test("5 optimizer steps reproduce PyTorch's losses", arguments: ["adam", "adamw", "sgd"])
    func optimizerSteps(_ name: String) throws {
        let model = ResNet(Self.gnConfig)
        try model.load(ModelFixtures.stateDict("gn.sd."), source: "fixture gn.sd")
        let kind: OptimizerKind, lr: Float
        switch name {
        case "adam": kind = .adam(weightDecay: 1e-4); lr = 1e-3
        case "adamw": kind = .adamW(weightDecay: 0.01); lr = 1e-3
        default: kind = .sgd(momentum: 0.9, nesterov: true, weightDecay: 1e-4); lr = 0.01
        }
        let opt = Optimizer(kind, count: model.parameterCount)
        let x = ModelFixtures.floats("gn.x"), labels = ModelFixtures.floats("gn.labels").map { Int32($0) }
        var losses: [Float] = []
        for _ in 0..<5 {
            let r = trainStep(model, x: x, shape: NCHW(2, 3, 64, 64), labels: labels, training: true)
            losses.append(r.loss)
            opt.update(values: model.parameters.values.pointer, gradients: model.parameters.gradients!.pointer, lr: lr)
        }
        let expected = ModelFixtures.floats("opt.\(name).losses")
        print("\(name): ours \(losses), PyTorch \(expected)")
        for i in 0..<5 {
            #expect(abs(losses[i] - expected[i]) / abs(expected[i]) <= 1e-5, "\(name) step \(i + 1): \(losses[i]) vs \(expected[i])")
        }
    }
}
