// `histodistill _checkpoint-writer`: a hidden command for crash tests that writes checkpoints in a loop.
import ArgumentParser
import Foundation
import Layers
import TileShards
import Training

struct CheckpointWriter: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "_checkpoint-writer",
        abstract: "Write checkpoints of a ResNet-18 in a loop (for crash-safety tests); every weight equals the step number.",
        shouldDisplay: false)

    @Argument(help: "Checkpoint directory.")
    var directory: String

    @Option(help: "Checkpoints to write.")
    var steps: Int = 1000

    func run() throws {
        let model = ResNet(.resnet18(classes: 10), initialize: false)
        let optimizer = Optimizer(.adam(), count: model.parameterCount)
        let store = CheckpointStore(directory: URL(fileURLWithPath: directory), keep: 2)
        for step in 1...steps {
            model.parameters.values.pointer.update(repeating: Float(step), count: model.parameterCount)
            optimizer.first.pointer.update(repeating: Float(step), count: optimizer.count)
            optimizer.step = step
            let state = CheckpointState(step: step, cursor: DataCursor(epoch: 0, samplesConsumed: step * 8), seed: 1, worldSize: 1,
                                        config: "{}", writer: "histodistill \(histodistillVersion)")
            try store.save(model: model, optimizer: optimizer, state: state)
            FileHandle.standardOutput.write(Data("saved \(step)\n".utf8))
        }
    }
}

/// `histodistill _stop-probe`: a hidden command for signal tests: installs the stop handlers, says "ready" and then
/// waits like a run's set-up (before any training loop) or, with `--armed`, like a training loop that ends with
/// status 75 at the next "step" after a stop signal.
struct StopProbe: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "_stop-probe", abstract: "Wait for a stop signal (signal tests).",
                                                    shouldDisplay: false)

    @Flag(help: "Behave as a running training loop.")
    var armed = false

    func run() throws {
        StopSignals.install()
        if armed { StopSignals.arm() }
        FileHandle.standardOutput.write(Data("ready\n".utf8))
        for _ in 0..<600 {
            if let s = StopSignals.pending {
                FileHandle.standardOutput.write(Data("stopped at a step boundary by \(StopSignals.name(s))\n".utf8))
                throw ExitCode(interruptedExitStatus)
            }
            usleep(100_000)
        }
    }
}
