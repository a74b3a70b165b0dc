// The training recipe's options: the moving average of the weights, checked against a hand computation and
// through checkpoints and resume.
import Foundation
import Testing
@testable import Layers
import SafeTensors
import TensorCore
@testable import TileShards
@testable import Training

@Suite("Weight EMA")
struct EMATests {
    /// Every float of a safetensors file, tensor by tensor in file order.
    static func weights(_ url: URL) throws -> [String: [Float]] {
        Dictionary(uniqueKeysWithValues: try SafeTensorsFile(contentsOf: url).tensors.map { ($0.name, $0.floats) })
    }

    @Test("WeightEMA: the first update copies, later ones lerp by 1 - decay, for parameters and buffers (a Double hand computation)")
    func handComputation() {
        var mc = ResNetConfig.resnet18(classes: 3)
        mc.planes = [4, 4]; mc.blocks = [1, 1]; mc.stages = 2
        let model = ResNet(mc, seed: 1), shadow = ResNet(mc, seed: 2)
        #expect(model.buffers.layout.count > 0, "BatchNorm buffers are averaged too")
        let ema = WeightEMA(decay: 0.8, shadow: shadow, source: model)
        let n = model.parameterCount, nb = model.buffers.layout.count
        func snapshot(_ m: any Module) -> [Double] {
            (0..<n).map { Double(m.parameters.values.pointer[$0]) } + (0..<nb).map { Double(m.buffers.values.pointer[$0]) }
        }
        #expect(snapshot(shadow) == snapshot(model), "starts as a copy (AveragedModel's deepcopy)")
        var expected: [Double] = []
        var g = SplitMix64(seed: 3)
        for t in 0..<4 {
            for i in 0..<n { model.parameters.values.pointer[i] += g.uniform(-0.5, 0.5) }
            for i in 0..<nb { model.buffers.values.pointer[i] += g.uniform(0, 0.5) }
            let theta = snapshot(model)
            expected = t == 0 ? theta : zip(expected, theta).map { 0.8 * $0 + 0.2 * $1 }
            ema.update(from: model)
            let got = snapshot(shadow)
            let worst = zip(got, expected).map { abs($0 - $1) }.max()!
            #expect(worst < 1e-6, "update \(t + 1): largest difference \(worst)")
        }
        #expect(ema.updates == 4)
        #expect(zip(snapshot(shadow), snapshot(model)).map { abs($0 - $1) }.max()! > 0.05, "the average lags the model")
    }

    @Test("train.ema_decay: each checkpoint's ema.safetensors is the average of the models so far; resume continues it bit for bit; best.safetensors is the average")
    func throughTraining() throws {
        let width = Parallel.beginExclusiveWidth()
        defer { Parallel.endExclusiveWidth(restoring: width) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-ema-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        func config(_ out: String) throws -> RunConfig {
            var c = try tinyConfig(shards: shards, output: dir.appendingPathComponent(out), maxSteps: 5)
            c.emaDecay = 0.7; c.checkpointEvery = 1; c.keep = 10; c.valEvery = 5
            return c
        }
        let straight = try SupervisedTrainer(config: try config("a"), writer: "test")
        try straight.run(resume: false)
        let checkpoints = straight.store.completeCheckpoints()
        #expect(checkpoints.count == 5)
        var average: [String: [Double]] = [:]
        for (t, checkpoint) in checkpoints.enumerated() {
            let theta = try Self.weights(checkpoint.appendingPathComponent("model.safetensors"))
            for (name, v) in theta {
                let x = v.map(Double.init)
                average[name] = t == 0 ? x : zip(average[name]!, x).map { 0.7 * $0 + 0.3 * $1 }
            }
            let ema = try Self.weights(checkpoint.appendingPathComponent("ema.safetensors"))
            #expect(Set(ema.keys) == Set(theta.keys))
            let worst = ema.map { name, v in zip(v, average[name]!).map { abs(Double($0) - $1) }.max() ?? 0 }.max()!
            #expect(worst < 1e-5, "step \(t + 1): largest difference from the hand average \(worst)")
            #expect(try straight.store.state(of: checkpoint).emaUpdates == t + 1)
        }
        // Validation (step 5) ran on the average, and best.safetensors holds it.
        let last = try Self.weights(checkpoints.last!.appendingPathComponent("ema.safetensors"))
        let best = try SafeTensorsFile(contentsOf: straight.runDirectory.bestWeights)
        #expect(best.metadata["ema_decay"] == "0.7" && best.metadata["ema_updates"] == "5")
        #expect(best.tensors.allSatisfy { $0.floats == last[$0.name] })
        #expect(straight.runDirectory.preferredWeights() == straight.runDirectory.bestWeights)
        // Stopped after 2 steps and resumed: the average continues as if uninterrupted.
        let first = try SupervisedTrainer(config: try config("b"), writer: "test")
        try first.run(resume: false, stopAfter: 2)
        let resumed = try SupervisedTrainer(config: try config("b"), writer: "test")
        try resumed.run(resume: true)
        let resumedLast = try Self.weights(resumed.store.completeCheckpoints().last!.appendingPathComponent("ema.safetensors"))
        #expect(resumedLast == last)
        #expect(resumed.history.map(\.valAccuracy) == Array(straight.history.suffix(3)).map(\.valAccuracy))
        // Without validation the newest checkpoint's average is the run's preferred weights.
        try FileManager.default.removeItem(at: resumed.runDirectory.bestWeights)
        #expect(resumed.runDirectory.preferredWeights()?.lastPathComponent == "ema.safetensors")
    }

    @Test("train.ema_decay outside [0, 1) is refused naming the key")
    func badDecay() throws {
        for bad in ["1", "-0.1", "1.5"] {
            #expect(throws: ConfigError.self) { try RunConfig.parse("data: {train: x}\ntrain: {ema_decay: \(bad)}", source: "c.yaml") }
        }
        do { _ = try RunConfig.parse("data: {train: x}\ntrain: {ema_decay: 1}", source: "c.yaml") } catch let e as ConfigError {
            #expect(e.message.contains("train.ema_decay") && e.message.contains("c.yaml"))
        }
        #expect(try RunConfig.parse("data: {train: x}\ntrain: {ema_decay: 0.999}", source: "c.yaml").emaDecay == 0.999)
    }
}
