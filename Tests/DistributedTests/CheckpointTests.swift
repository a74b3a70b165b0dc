// Checkpoints: round trip, keep-last-K, incompatible runs refused, and SIGKILL during writes never leaves the
// newest loadable checkpoint broken.
import Foundation
import Testing
@testable import Layers
@testable import TileShards
@testable import Training

@Suite("Checkpoints")
struct CheckpointTests {
    func temporary() -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-ckpt-\(UUID().uuidString)")
    }

    @Test("save then load restores weights, buffers, optimizer moments and state; only the last K are kept")
    func roundTrip() throws {
        let dir = temporary()
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = CheckpointStore(directory: dir, keep: 2)
        let config = ResNetConfig(name: "narrow", planes: [8, 16], blocks: [1, 1], norm: .batch, classes: 3)
        let model = ResNet(config, seed: 4)
        let opt = Optimizer(.adamW(), count: model.parameterCount)
        for step in 1...3 {
            opt.first.pointer.update(repeating: Float(step) / 10, count: opt.count)
            opt.second.pointer.update(repeating: Float(step) / 100, count: opt.count)
            opt.step = step
            model.batchesTracked[0] = Int64(step)
            try store.save(model: model, optimizer: opt, state: CheckpointState(step: step, cursor: DataCursor(epoch: 1, samplesConsumed: step * 4),
                                                                                 seed: 7, worldSize: 2, config: "a: 1", writer: "test"))
        }
        #expect(store.completeCheckpoints().map(\.lastPathComponent) == ["step-000000002", "step-000000003"])
        let newest = try #require(store.newest())
        let model2 = ResNet(config, seed: 99), opt2 = Optimizer(.adamW(), count: model2.parameterCount)
        let state = try store.load(newest, model: model2, optimizer: opt2)
        #expect(state.step == 3 && state.cursor == DataCursor(epoch: 1, samplesConsumed: 12) && state.worldSize == 2 && state.seed == 7)
        #expect(model2.parameters.values.array == model.parameters.values.array)
        #expect(model2.batchesTracked[0] == 3)
        #expect(opt2.step == 3 && opt2.first[5] == 0.3 && opt2.second[5] == 0.03)
    }

    @Test("a checkpoint from another architecture or optimizer is refused with the path and a hint")
    func incompatible() throws {
        let dir = temporary()
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = CheckpointStore(directory: dir)
        let model = ResNet(.paper(classes: 5, planes: [32, 32, 64, 64]))
        let url = try store.save(model: model, optimizer: Optimizer(.adam(), count: model.parameterCount),
                                 state: CheckpointState(step: 1, cursor: DataCursor(), seed: 0, worldSize: 1, config: "", writer: "test"))
        let other = ResNet(.paper(classes: 3, planes: [32, 32, 64, 64]))
        let e1 = #expect(throws: CheckpointError.self) { _ = try store.load(url, model: other, optimizer: Optimizer(.adam(), count: other.parameterCount)) }
        #expect(e1?.message.contains(url.path) == true && e1?.message.contains("fc.weight") == true)
        let e2 = #expect(throws: CheckpointError.self) { _ = try store.load(url, model: model, optimizer: Optimizer(.sgd(), count: model.parameterCount)) }
        #expect(e2?.message.contains("optimizer") == true)
    }

    @Test("SIGKILL while writing checkpoints leaves the newest complete one loadable and consistent", arguments: [0.05, 0.23, 0.61])
    func killDuringWrites(_ delay: Double) throws {
        let dir = temporary()
        defer { try? FileManager.default.removeItem(at: dir) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try histodistillBinary())
        process.arguments = ["_checkpoint-writer", dir.path, "--steps", "1000"]
        let out = Pipe()
        process.standardOutput = out
        nonisolated(unsafe) var printed = ""
        let lock = NSLock()
        out.fileHandleForReading.readabilityHandler = { h in
            let chunk = String(decoding: h.availableData, as: UTF8.self)
            lock.lock(); printed += chunk; lock.unlock()
        }
        try process.run()
        // Wait for the first complete save, then kill at a varied moment during later writes.
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            lock.lock(); let started = printed.contains("saved 1\n"); lock.unlock()
            if started { break }
            Thread.sleep(forTimeInterval: 0.01)
        }
        Thread.sleep(forTimeInterval: delay)
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        out.fileHandleForReading.readabilityHandler = nil
        #expect(process.terminationReason == .uncaughtSignal)
        lock.lock(); let output = printed; lock.unlock()
        #expect(output.contains("saved 1"), "the writer never saved within 120 s")
        let printedLines = output
        let lastSaved = printedLines.split(separator: "\n").last.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
        let store = CheckpointStore(directory: dir, keep: 2)
        guard let newest = store.newest() else {
            #expect(lastSaved == 0, "a checkpoint was reported saved but none is complete")
            return
        }
        let model = ResNet(.resnet18(classes: 10), initialize: false), opt = Optimizer(.adam(), count: model.parameterCount)
        let state = try store.load(newest, model: model, optimizer: opt)
        #expect(state.step >= lastSaved, "newest \(state.step) older than the last reported save \(lastSaved)")
        #expect(model.parameters.values[0] == Float(state.step) && model.parameters.values[model.parameterCount - 1] == Float(state.step))
        #expect(opt.step == state.step && opt.first[123] == Float(state.step))
        print("killed after \(delay) s: last reported save \(lastSaved), resumed from step \(state.step)")
    }
}
