// State-dict names (torchvision), safetensors round trips and clear errors for weights that do not fit.
import Foundation
import SafeTensors
import Testing
@testable import Layers
@testable import TensorCore
@testable import Training

/// torchvision's state_dict (name, shape, dtype) for `arch`, recorded by make_model_fixtures.py.
func torchvisionKeys(_ arch: String) throws -> [(String, [Int], String)] {
    let json = try #require(ModelFixtures.file.metadata[arch])
    let rows = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[Any]])
    return rows.map { ($0[0] as! String, $0[1] as! [Int], $0[2] as! String) }
}

@Suite("Weights and names")
struct WeightsTests {
    @Test("a model description says its classes, or that a backbone has no classifier (not \"0 classes\")")
    func describesClassifier() {
        #expect(ResNetConfig.paper(classes: 3).description.contains(", 3 classes, "))
        let backbone = ResNetConfig.paper(classes: 0).description
        #expect(backbone.contains("no classifier (a feature extractor)") && !backbone.contains("0 classes"), "\(backbone)")
    }

    @Test("ResNet-18 and ResNet-34 state_dicts have exactly torchvision's names, shapes, dtypes and order",
          arguments: [("resnet18", ResNetConfig.resnet18()), ("resnet34", ResNetConfig.resnet34())])
    func torchvisionNames(_ arch: String, _ config: ResNetConfig) throws {
        let expected = try torchvisionKeys(arch)
        let model = ResNet(config)
        let ours = model.stateDict()
        #expect(ours.count == expected.count)
        for (t, e) in zip(ours, expected) {
            #expect(t.name == e.0)
            #expect(t.shape == e.1, "\(t.name)")
            #expect((t.dtype == .i64) == (e.2 == "torch.int64"), "\(t.name) dtype \(t.dtype) vs \(e.2)")
        }
        #expect(model.parameterCount == (arch == "resnet18" ? 11_689_512 : 21_797_672))
    }

    @Test("a torchvision ResNet-18 state_dict with DataParallel's module. prefix loads")
    func loadsPrefixedResNet18() throws {
        var g = SeededGenerator(seed: 5)
        let tensors = try torchvisionKeys("resnet18").map { name, shape, dtype -> SafeTensor in
            if dtype == "torch.int64" {
                var v = Int64(7).littleEndian
                return SafeTensor(name: "module." + name, dtype: .i64, shape: shape, data: Data(bytes: &v, count: 8))
            }
            return SafeTensor(name: "module." + name, shape: shape,
                              floats: (0..<shape.reduce(1, *)).map { _ in Float.random(in: -1..<1, using: &g) })
        }
        let bytes = try SafeTensorsFile(tensors: tensors).serialized()
        let parsed = try SafeTensorsFile(data: bytes, source: "resnet18.safetensors")
        let model = ResNet(.resnet18())
        try model.load(parsed, source: "resnet18.safetensors")
        let fc = try #require(parsed["module.fc.weight"]).floats
        #expect(array(model.parameters.value(model.parameters.layout["fc.weight"]!), 10) == Array(fc.prefix(10)))
        #expect(model.batchesTracked.allSatisfy { $0 == 7 })
        let rv = try #require(parsed["module.layer3.1.bn2.running_var"]).floats
        #expect(array(model.buffers.value(model.buffers.layout["layer3.1.bn2.running_var"]!), rv.count) == rv)
    }

    @Test("save then load reproduces every parameter, buffer and counter")
    func roundTrip() throws {
        let a = ResNet(ModelFixtureTests.bnConfig, seed: 1)
        a.batchesTracked[3] = 42
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-roundtrip-\(UUID()).safetensors")
        defer { try? FileManager.default.removeItem(at: url) }
        try a.saveWeights(to: url, metadata: ["note": "test"])
        let b = ResNet(ModelFixtureTests.bnConfig, seed: 2)
        #expect(a.parameters.values.array != b.parameters.values.array)
        try b.loadWeights(from: url)
        #expect(a.parameters.values.array == b.parameters.values.array)
        #expect(a.buffers.values.array == b.buffers.values.array)
        #expect(b.batchesTracked[3] == 42)
        #expect(try SafeTensorsFile(contentsOf: url).metadata["note"] == "test")
    }

    @Test("weights of another architecture fail with the file, the key and a hint")
    func mismatchErrors() throws {
        let gn = ResNet(.paper(classes: 5))
        let other = ResNet(.paper(classes: 3))
        let file = SafeTensorsFile(tensors: other.stateDict())
        let shapeError = #expect(throws: WeightsError.self) { try gn.load(file, source: "teacher.safetensors") }
        #expect(shapeError?.message.contains("teacher.safetensors") == true)
        #expect(shapeError?.message.contains("fc.weight") == true)
        #expect(shapeError?.message.contains("[3, 256]") == true)

        let bnFile = SafeTensorsFile(tensors: ResNet(ModelFixtureTests.bnConfig).stateDict())
        let keyError = #expect(throws: WeightsError.self) { try gn.load(bnFile, source: "bn.safetensors") }
        #expect(keyError?.message.contains("missing keys") == true || keyError?.message.contains("unexpected keys") == true)

        let truncated = Data("not safetensors at all".utf8)
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-bad-\(UUID()).safetensors")
        defer { try? FileManager.default.removeItem(at: url) }
        try truncated.write(to: url)
        let fileError = #expect(throws: WeightsError.self) { try gn.loadWeights(from: url) }
        #expect(fileError?.message.contains(url.path) == true)
    }

    @Test("truncated ResNets: feature dimension, no classifier, map size", arguments: [1, 2, 3, 4])
    func truncation(_ k: Int) {
        let config = ResNetConfig.paper().truncated(after: k)
        let model = ResNet(config)
        #expect(config.featureDimension == [32, 64, 128, 256][k - 1])
        #expect(model.parameters.layout["fc.weight"] == nil)
        #expect(model.parameters.layout.slices.allSatisfy { !$0.name.hasPrefix("layer\(k + 1)") })
        let x = Buffer<Float>(count: 2 * 3 * 64 * 64)
        for i in 0..<x.count { x[i] = Float(i % 17) / 17 }
        let out = model.forward(x.pointer, shape: NCHW(2, 3, 64, 64), training: false)
        #expect(out.logits == nil)
        #expect(out.pooled.shape == [2, config.featureDimension])
        #expect(out.featureMap.shape[2] == model.featureMapSize(resolution: 64))
    }

    @Test("the paper model: 1,231,525 parameters and the paper's multiply-add counts")
    func paperCost() {
        let model = ResNet(.paper())
        #expect(model.parameterCount == 1_231_525)
        // ANCHORS.md (rbd_model.count_macs): 224 px 251.7 M; 112 px 66.4 M; 56 px 17.45 M; 28 px 4.58 M.
        #expect(abs(Double(model.macs(resolution: 224)) / 1e6 - 251.7) < 0.1)
        #expect(abs(Double(model.macs(resolution: 112)) / 1e6 - 66.4) < 0.1)
        #expect(abs(Double(model.macs(resolution: 56)) / 1e6 - 17.45) < 0.01)
        #expect(abs(Double(model.macs(resolution: 28)) / 1e6 - 4.58) < 0.01)
    }

    @Test("configuration problems name the field")
    func configProblems() {
        #expect(ResNetConfig.paper(planes: [30, 64, 128, 256]).problems.contains { $0.contains("GroupNorm(32) cannot split 30") })
        #expect(!ResNetConfig(name: "x", planes: [8], blocks: [1, 1], norm: .batch, classes: 2).problems.isEmpty)
    }
}

@Suite("Schedules and gradient utilities")
struct ScheduleTests {
    @Test("exponential, step and cosine-with-warm-up rates")
    func schedules() {
        #expect(abs(LRSchedule.exponential(gamma: 0.9).rate(base: 0.1, step: 500, epoch: 3) - 0.1 * 0.729) < 1e-12)
        #expect(LRSchedule.step(stepEpochs: 10, gamma: 0.1).rate(base: 1, step: 0, epoch: 9) == 1)
        #expect(abs(LRSchedule.step(stepEpochs: 10, gamma: 0.1).rate(base: 1, step: 0, epoch: 10) - 0.1) < 1e-12)
        let cos = LRSchedule.cosine(warmupSteps: 10, totalSteps: 110, minLR: 0)
        #expect(abs(cos.rate(base: 1, step: 0, epoch: 0) - 0.1) < 1e-12)
        #expect(cos.rate(base: 1, step: 9, epoch: 0) == 1)
        #expect(abs(cos.rate(base: 1, step: 60, epoch: 0) - 0.5) < 1e-12)
        #expect(abs(cos.rate(base: 1, step: 110, epoch: 0)) < 1e-12)
    }

    @Test("gradient clipping follows clip_grad_norm_, scaling and finiteness checks")
    func clipping() {
        let g = Buffer<Float>([3, 4])
        let before = GradientOps.clipNorm(g.pointer, count: 2, maxNorm: 1)
        #expect(before == 5)
        #expect(abs(g[0] - 0.6) < 1e-5 && abs(g[1] - 0.8) < 1e-5)
        let small = Buffer<Float>([0.3, 0.4])
        GradientOps.clipNorm(small.pointer, count: 2, maxNorm: 1)
        #expect(small.array == [0.3, 0.4])
        GradientOps.scale(small.pointer, count: 2, by: 0.5)
        #expect(small.array == [0.15, 0.2])
        small[1] = .nan
        #expect(!GradientOps.allFinite(small.pointer, count: 2))
        // Every position of the vector loop and its tail, infinities of both signs, NaN; the largest finite values and
        // subnormals are finite.
        for count in [1, 4, 7, 9, 16, 33, 100] {
            let finite: [Float] = [.greatestFiniteMagnitude, -.greatestFiniteMagnitude, .leastNonzeroMagnitude, -.leastNonzeroMagnitude, 0, -3e38, 1e37]
            let v = Buffer<Float>((0..<count).map { finite[$0 % finite.count] })
            #expect(GradientOps.allFinite(v.pointer, count: count))
            for k in 0..<count {
                for bad in [Float.infinity, -Float.infinity, Float.nan] {
                    let saved = v[k]
                    v[k] = bad
                    #expect(!GradientOps.allFinite(v.pointer, count: count), "\(bad) at \(k) of \(count)")
                    v[k] = saved
                }
            }
        }
    }
}
