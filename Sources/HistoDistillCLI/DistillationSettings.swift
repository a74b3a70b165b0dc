// The distillation settings of a timed step (`cost --measure --distill`, `bench-step --teacher-resolution`):
// a config's distill section, then single flags, else the paper's defaults.
import ArgumentParser
import Foundation
import Layers
import TensorCore
import Training

struct DistillationSettings: ParsableArguments {
    @Option(help: "Take the distillation settings from this config's distill section (an experiment config or RUN/config.yaml).")
    var distillConfig: String?

    @Option(help: "Softmax temperature of the KD term (default 4).")
    var temperature: Float?

    @Option(help: "How the teacher's map is resized: maxpool, bicubic or maxpool+bicubic (default maxpool).")
    var pixelResize: PixelResize?

    @Option(help: "Pixel loss: l1 or l2 (default l2).")
    var pixelNorm: PixelNorm?

    @Option(help: "Weight of the KD term (default 1).")
    var kdWeight: Float?

    @Option(help: "Weight of the pixel term (default 1).")
    var pixelWeight: Float?

    @Option(help: "Weight of cross-entropy on labeled tiles (default 0).")
    var ceWeight: Float?

    /// The flags of this group given on the command line (they describe a distillation step's objective).
    var givenFlags: [String] {
        [("--distill-config", distillConfig != nil), ("--temperature", temperature != nil), ("--pixel-resize", pixelResize != nil),
         ("--pixel-norm", pixelNorm != nil), ("--kd-weight", kdWeight != nil), ("--pixel-weight", pixelWeight != nil),
         ("--ce-weight", ceWeight != nil)].filter(\.1).map(\.0)
    }

    /// Refuses distillation flags given to a command that will time no distillation step (`without`: what would
    /// make it time one), rather than ignore them.
    func requireDistillation(_ distilling: Bool, without: String) throws {
        let given = givenFlags
        guard distilling || given.isEmpty else {
            throw ValidationError("\(given.joined(separator: ", ")) set\(given.count == 1 ? "s" : "") the objective of a distillation step, but none is measured: add \(without), or leave \(given.count == 1 ? "it" : "them") out")
        }
    }

    /// The objective these settings describe.
    func objective() throws -> DistillationObjective {
        var o = DistillationObjective()
        if let distillConfig {
            let text: String
            do { text = try String(contentsOfFile: distillConfig, encoding: .utf8) } catch {
                throw CLIError("\(distillConfig): cannot be read", hint: "give a YAML config with a distill section (configs/student-*.yaml)")
            }
            // Only the distill section matters here: the data paths need not exist on this machine.
            let parsed: RunConfig
            do { parsed = try RunConfig.parse(text, source: distillConfig, overrides: ["data.train=unused"]) } catch let e as ConfigError {
                throw CLIError(e.message)
            }
            guard parsed.isDistillation else {
                throw CLIError("\(distillConfig) has no distill section", hint: "give a student's config (configs/student-*.yaml) or set the flags")
            }
            o = parsed.objective
        }
        if let temperature { o.temperature = temperature }
        if let pixelResize { o.pixelResize = pixelResize }
        if let pixelNorm { o.pixelNorm = pixelNorm }
        // + 0 turns a -0 into 0 (a weight of -0 is off, and printed as 0).
        if let kdWeight { o.kdWeight = kdWeight + 0 }
        if let pixelWeight { o.pixelWeight = pixelWeight + 0 }
        if let ceWeight { o.crossEntropyWeight = ceWeight + 0 }
        // The checks `distill` makes of its config, named as this command's flags (or the config's keys).
        let flag = { (field: String) in "--" + field.replacingOccurrences(of: "_", with: "-") }
        let given = givenFlags
        let name = { (field: String) in distillConfig != nil && !given.contains(flag(field)) ? "distill.\(field) of \(distillConfig!)" : flag(field) }
        if let first = o.problems(naming: name).first { throw CLIError("\(name(first.field)) \(first.text)") }
        return o
    }
}

extension PixelResize: ExpressibleByArgument {}
extension PixelNorm: ExpressibleByArgument {}
extension MatmulPrecision: ExpressibleByArgument {
    public init?(argument: String) { self.init(lightningName: argument) }
}

/// Help for `--precision`, shared by every command that runs a model.
let precisionHelp = ArgumentHelp(
    "Precision of the convolutions: 32-true (float32) or bf16-mixed (bfloat16 operands with float32 accumulation in the convolutions, except shallow im2col ones of fewer than 64 output channels or depth below 128; native on CPUs with AVX512-BF16, emulated and slower elsewhere).",
    valueName: "32-true|bf16-mixed")
