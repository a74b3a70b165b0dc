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
    var temperature: Double?

    @Option(help: "How the teacher's map is resized: maxpool, bicubic or maxpool+bicubic (default maxpool).")
    var pixelResize: PixelResize?

    @Option(help: "Pixel loss: l1 or l2 (default l2).")
    var pixelNorm: PixelNorm?

    @Option(help: "Weight of the KD term (default 1).")
    var kdWeight: Double?

    @Option(help: "Weight of the pixel term (default 1).")
    var pixelWeight: Double?

    @Option(help: "Weight of cross-entropy on labeled tiles (default 0).")
    var ceWeight: Double?

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
        // Read as typed and held to float32's range as the config keys are (1e-46 is not 0, 1e39 not infinity); -0 is 0.
        func float32(_ value: Double?, _ flag: String) throws -> Float? {
            guard let value else { return nil }
            guard let f = float32Value(value) else {
                throw CLIError("\(flag) \(value) is outside float32's range: a number other than 0 needs a magnitude from 1.2e-38 to 3.4e38",
                               hint: "give a value inside that range")
            }
            return f
        }
        if let t = try float32(temperature, "--temperature") { o.temperature = t }
        if let pixelResize { o.pixelResize = pixelResize }
        if let pixelNorm { o.pixelNorm = pixelNorm }
        if let w = try float32(kdWeight, "--kd-weight") { o.kdWeight = w }
        if let w = try float32(pixelWeight, "--pixel-weight") { o.pixelWeight = w }
        if let w = try float32(ceWeight, "--ce-weight") { o.crossEntropyWeight = w }
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
