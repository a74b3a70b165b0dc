// `histodistill cost`: parameters, multiply-adds, activation memory and measured speed per resolution, and the
// teacher/student compute table.
import ArgumentParser
import Distributed
import Foundation
import Layers
import TensorCore
import Training

struct Cost: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Report parameters, multiply-adds, activation memory and measured images/second per input resolution.",
        discussion: """
            Without --measure only counts are printed (instant). With --measure every resolution also gets a timed \
            training step (forward, cross-entropy, backward, Adam) and an inference pass on a synthetic batch, and \
            --distill adds distillation steps (teacher at the first resolution, without gradients; student at each \
            lower one), the same cases as PyTorch's bench_train.py. The timed steps are the ones `train` and \
            `distill` run; the distillation settings come from --distill-config (a run's or an experiment's config) \
            and the flags below, else the paper's defaults.
            """)

    @Option(help: "Architecture: resnet-gn (the paper's), resnet18 or resnet34.")
    var model: String = "resnet-gn"

    @Option(help: "Classes of the classifier.")
    var classes: Int = 5

    @Option(help: "Comma-separated input sizes in pixels; the first is the teacher's.")
    var resolutions: String = "224,112,56,28,14"

    @Option(help: "Batch size for memory and speed.")
    var batch: Int = 32

    @Option(help: "Threads (default: all cores).")
    var threads: Int?

    @Flag(help: "Time training steps and inference.")
    var measure = false

    @Flag(help: "With --measure, also time distillation steps (teacher at the first resolution).")
    var distill = false

    @Option(help: "Timed repetitions (median reported) of --steps steps each.")
    var reps: Int = 3

    @Option(help: "Steps per timed repetition.")
    var steps: Int = 3

    @Option(help: precisionHelp)
    var precision: MatmulPrecision = .float32

    @OptionGroup var distillation: DistillationSettings

    func validate() throws {
        if !(1...100_000).contains(classes) { throw ValidationError("--classes must be in 1...100000, got \(classes)") }
        if !(1...4096).contains(batch) { throw ValidationError("--batch must be in 1...4096, got \(batch)") }
        for (flag, value, most) in [("--reps", reps, 1_000), ("--steps", steps, 1_000_000)] where !(1...most).contains(value) {
            throw ValidationError("\(flag) must be 1 to \(most), got \(value)")
        }
        try validateThreads(threads)
        let sizes = try parsedResolutions()
        _ = try architecture()
        if distill && !measure { throw ValidationError("--distill times distillation steps: add --measure") }
        try distillation.requireDistillation(distill, without: measure ? "--distill" : "--measure --distill")
        if distill && sizes.count < 2 {
            throw ValidationError("--distill times a teacher at the first resolution and students at the others, but --resolutions gives one (\(resolutions)). Hint: --resolutions 224,56,28")
        }
        if distill && sizes.dropFirst().contains(where: { $0 >= sizes[0] }) {
            throw ValidationError("with --distill the first resolution is the teacher's and must be larger than the students' (got \(resolutions))")
        }
    }

    func parsedResolutions() throws -> [Int] {
        let values = resolutions.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !values.isEmpty, values.allSatisfy({ (8...4096).contains($0 ?? 0) }) else {
            throw ValidationError("--resolutions takes comma-separated sizes of 8 to 4096 px, got '\(resolutions)'")
        }
        let sizes = values.map { $0! }
        if Set(sizes).count != sizes.count {
            throw ValidationError("--resolutions lists a size twice ('\(resolutions)'): each is measured once. Hint: --resolutions \(Array(NSOrderedSet(array: sizes)).map { "\($0)" }.joined(separator: ","))")
        }
        return sizes
    }

    func architecture() throws -> ResNetConfig {
        guard let a = Architecture(rawValue: model == "paper" ? "resnet-gn" : model) else {
            throw ValidationError("--model '\(model)' is not known; use \(Architecture.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var c = RunConfig()
        c.architecture = a
        return c.modelConfig(classes: classes)
    }

    func run() throws {
        let config = try architecture()
        let sizes = try parsedResolutions()
        let objective = try distillation.objective()
        BLAS.setThreadCount(threads ?? ProcessInfo.processInfo.activeProcessorCount)
        BF16GEMM.precision = precision
        for w in KernelAdvice.current() { print("warning: " + w) }
        for r in sizes where batch < config.minimumTrainingBatch(resolution: r) {
            throw CLIError("\(config.name) normalises with BatchNorm, which needs more than one value per channel in training: at \(r) px its last feature map is 1x1, so a training step needs at least \(config.minimumTrainingBatch(resolution: r)) images, got --batch \(batch)",
                           hint: "raise --batch")
        }
        let net = ResNet(config)
        let paramMB = Double(net.parameterCount * 4) / 1e6
        print("\(config)")
        print("parameters: \(net.parameterCount.formatted()) (\(String(format: "%.1f", paramMB)) MB; with gradients and Adam moments \(String(format: "%.1f", 4 * paramMB)) MB)")
        print("threads: \(BLAS.threadCount), batch \(batch), precision \(precision.rawValue)\(precision == .bf16Mixed ? " (" + BF16GEMM.kernelDescription + ")" : "")\n")
        // Activations grow with the pixels and the batch: sized from a small probe step, refused before allocating
        // what the machine cannot hold.
        let perPixel: Double = {
            let probe = ResNet(config, seed: 1)
            let n = config.minimumTrainingBatch(resolution: 32)
            let x = Buffer<Float>(count: n * 3 * 32 * 32)
            let out = probe.forward(x.pointer, shape: NCHW(n, 3, 32, 32), training: true)
            let g = Buffer<Float>(count: out.logits?.count ?? 0)
            probe.backward(gradLogits: out.logits == nil ? nil : g.pointer)
            return Double((probe.activationFloats.forward + probe.activationFloats.backward) * 4) / Double(n * 32 * 32)
        }()
        // The memory this process may use: the machine's, or less under an address-space limit (ulimit -v, a batch
        // system's memory limit).
        var limit = rlimit()
        let capped = getrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &limit) == 0 && limit.rlim_cur != rlim_t.max
        let memory = min(Double(ProcessInfo.processInfo.physicalMemory), capped ? Double(limit.rlim_cur) : .infinity)
        let what = capped && Double(limit.rlim_cur) < Double(ProcessInfo.processInfo.physicalMemory) ? "this process may use (ulimit -v)" : "this machine has"
        for r in sizes where perPixel * Double(r * r * batch) > 0.7 * memory {
            throw CLIError(String(format: "a training step at %d px with batch %d needs about %.1f GB of activations; %@ %.1f GB", r, batch,
                                  perPixel * Double(r * r * batch) / 1e9, what, memory / 1e9), hint: "lower --batch or the resolution")
        }
        let teacherMACs = Double(net.macs(resolution: sizes[0]))
        var header = "| input | MACs per image | vs \(sizes[0]) px | feature map | activations, training step (MB) |"
        var rule = "|---|---|---|---|---|"
        if measure { header += " train img/s | inference img/s |"; rule += "---|---|" }
        print(header)
        print(rule)
        for r in sizes {
            let macs = Double(net.macs(resolution: r))
            let fm = net.featureMapSize(resolution: r)
            // One real step sizes the arenas: that is the activation memory of a training step.
            let probe = ResNet(config, seed: 1)
            let x = Buffer<Float>(count: batch * 3 * r * r)
            let out = probe.forward(x.pointer, shape: NCHW(batch, 3, r, r), training: true)
            let g = Buffer<Float>(count: out.logits?.count ?? 0)
            probe.backward(gradLogits: out.logits == nil ? nil : g.pointer)
            let act = probe.activationFloats
            let actMB = Double((act.forward + act.backward) * 4) / 1e6
            var line = "| \(r) px | \(String(format: "%.2f", macs / 1e6)) M | \(teacherMACs == macs ? "reference" : String(format: "%.0fx fewer", teacherMACs / macs)) | "
                + "\(config.featureDimension)x\(fm)x\(fm) | \(String(format: "%.0f", actMB)) |"
            if measure {
                let train = StepRunner.measure(images: batch, reps: reps, steps: steps, StepRunner.supervised(config, resolution: r, batch: batch))
                let infer = StepRunner.measure(images: batch, reps: reps, steps: steps, StepRunner.inference(config, resolution: r, batch: batch))
                line += " \(String(format: "%.1f", train.median)) | \(String(format: "%.1f", infer.median)) |"
            }
            print(line)
        }
        if measure && distill && sizes.count > 1 {
            print("\ndistillation objective: \(objective.summary)")
            print("\n| distillation step | img/s (median) | min | max |")
            print("|---|---|---|---|")
            for r in sizes.dropFirst() {
                let t = StepRunner.measure(images: batch, reps: reps, steps: steps,
                                           StepRunner.distillation(config, teacherResolution: sizes[0], studentResolution: r, batch: batch, objective: objective))
                print("| teacher \(sizes[0]) px + student \(r) px | \(String(format: "%.1f", t.median)) | \(String(format: "%.1f", t.min)) | \(String(format: "%.1f", t.max)) |")
            }
        }
    }
}
