// train.precision through the command line: bf16-mixed trains and evaluates, is recorded in the run's config, differs
// from float32 by bfloat16 rounding only, may change on --resume, and is shared by the students of one pass.
import Foundation
import SafeTensors
import TensorCore
import Testing
@testable import Training

@Suite("bf16-mixed runs")
struct PrecisionTests {
    /// A 3-step run of a two-stage ResNet with 64 planes (so its convolutions of 64 output channels run in bfloat16).
    func config(_ dir: URL, _ name: String, shards: URL, precision: String, extra: String = "") throws -> String {
        let url = dir.appendingPathComponent("\(name).yaml")
        try """
        run: {name: \(name), output: \(dir.appendingPathComponent(name).path), seed: 3}
        data: {train: \(shards.path), val: \(shards.path)}
        model: {planes: [64, 64], blocks: [1, 1]}
        train: {max_steps: 3, batch_size: 4, threads: 1, precision: \(precision), checkpoint_every: 1}
        \(extra)
        """.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    static func floats(_ url: URL) throws -> [Float] {
        try SafeTensorsFile(contentsOf: url).tensors.sorted { $0.name < $1.name }.flatMap(\.floats)
    }

    @Test("bf16-mixed trains, is written to config.yaml, stays within bfloat16 rounding of float32, resumes from a float32 checkpoint, and evaluates with --precision")
    func trainAndEvaluate() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-bf16-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let bin = try histodistillBinary()
        var weights: [[Float]] = []
        for precision in ["32-true", "bf16-mixed"] {
            let r = try run([bin, "train", "--config", try config(dir, precision, shards: shards, precision: precision)])
            #expect(r.status == 0, "stderr: \(r.stderr)")
            // The emulation is announced only where it runs.
            #expect(r.stderr.contains("emulated") == (precision == "bf16-mixed" && !BF16GEMM.cpuHasKernel), "stderr: \(r.stderr)")
            let saved = try String(contentsOf: dir.appendingPathComponent("\(precision)/config.yaml"), encoding: .utf8)
            #expect(saved.contains("precision: \(precision)"), "config.yaml: \(saved)")
            weights.append(try Self.floats(dir.appendingPathComponent("\(precision)/best.safetensors")))
        }
        // Same seed, same data: after 3 Adam steps the weights differ (bfloat16 products) but only slightly.
        let diff = zip(weights[0], weights[1]).map { abs($0 - $1) }.max() ?? 0
        #expect(diff > 0 && diff < 0.05, "largest weight difference after 3 steps: \(diff)")

        // The emulation other CPUs run (forced here): announced once, and the same training up to summation order.
        let emulated = try run([bin, "train", "--config", try config(dir, "emulated", shards: shards, precision: "bf16-mixed")],
                               environment: [BF16GEMM.emulateVariable: "1"])
        #expect(emulated.status == 0, "stderr: \(emulated.stderr)")
        #expect(emulated.stderr.components(separatedBy: "emulated").count - 1 >= 1 && emulated.stderr.contains("warning:"), "stderr: \(emulated.stderr)")
        let emulatedWeights = try Self.floats(dir.appendingPathComponent("emulated/best.safetensors"))
        let emulationDiff = zip(emulatedWeights, weights[1]).map { abs($0 - $1) }.max() ?? 1
        #expect(emulationDiff < diff, "emulated vs native bf16-mixed \(emulationDiff), bf16-mixed vs 32-true \(diff)")

        // A float32 run resumed in bf16-mixed: allowed, and said.
        let resumed = try run([bin, "train", "--config", dir.appendingPathComponent("32-true/config.yaml").path, "--resume",
                               "--set", "train.max_steps=4", "--set", "train.precision=bf16-mixed"])
        #expect(resumed.status == 0, "stderr: \(resumed.stderr)")
        #expect(resumed.stderr.contains("train.precision"), "the change is noted: \(resumed.stderr)")

        // Evaluation in both precisions: the same predictions on this tiny set up to rounding, but not the same bits
        // (so --precision took effect).
        var accuracies: [Double] = [], predictions: [String] = []
        for precision in ["32-true", "bf16-mixed"] {
            let out = dir.appendingPathComponent("eval-\(precision).json")
            let r = try run([bin, "evaluate", "--run", dir.appendingPathComponent("bf16-mixed").path, "--precision", precision, "--output", out.path])
            #expect(r.status == 0, "stderr: \(r.stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(contentsOf: out)) as? [String: Any]
            accuracies.append((json?["accuracy"] as? Double) ?? -1)
            predictions.append(try String(contentsOf: dir.appendingPathComponent("eval-\(precision).predictions.csv"), encoding: .utf8))
        }
        #expect(accuracies.allSatisfy { $0 >= 0 } && abs(accuracies[0] - accuracies[1]) <= 0.25, "accuracies \(accuracies)")
        #expect(!predictions[0].isEmpty && predictions[0] != predictions[1], "evaluate --precision bf16-mixed gave float32's probabilities")
        // extract follows --precision too: different features, same layout.
        var features: [[Float]] = []
        for precision in ["32-true", "bf16-mixed"] {
            let out = dir.appendingPathComponent("features-\(precision)")
            let r = try run([bin, "extract", "--run", dir.appendingPathComponent("bf16-mixed").path, "--shards", shards.path,
                             "--output", out.path, "--precision", precision])
            #expect(r.status == 0, "stderr: \(r.stderr)")
            let files = try FileManager.default.contentsOfDirectory(atPath: out.path).filter { $0.hasSuffix(".safetensors") }.sorted()
            features.append(try files.flatMap { try Self.floats(out.appendingPathComponent($0)) })
        }
        let featureDiff = zip(features[0], features[1]).map { abs($0 - $1) }.max() ?? 0
        #expect(features[0].count == features[1].count && featureDiff > 0 && featureDiff < 0.1, "features differ by \(featureDiff)")

        // Lightning's aliases 32 and bf16 are taken and written back by their full names.
        for (alias, name) in [("32", "32-true"), ("bf16", "bf16-mixed")] {
            let r = try run([bin, "train", "--config", try config(dir, "alias-\(name)", shards: shards, precision: alias), "--set", "train.max_steps=1"])
            #expect(r.status == 0, "stderr: \(r.stderr)")
            let saved = try String(contentsOf: dir.appendingPathComponent("alias-\(name)/config.yaml"), encoding: .utf8)
            #expect(saved.contains("precision: \(name)"), "config.yaml: \(saved)")
        }

        // Without --precision, a model runs in the precision it was trained in (run.json and the weights say which),
        // and eval.json says which it used. (The 32-true run above was resumed in bf16-mixed: a run of its own here.)
        for (trained, expected) in [("bf16-mixed", predictions[1] as String?), ("alias-32-true", nil)] {
            let precision = trained == "bf16-mixed" ? "bf16-mixed" : "32-true"
            let runJSON = try String(contentsOf: dir.appendingPathComponent("\(trained)/run.json"), encoding: .utf8)
            #expect(runJSON.contains("\"precision\" : \"\(precision)\""), "run.json: \(runJSON)")
            let out = dir.appendingPathComponent("eval-default-\(trained).json")
            let r = try run([bin, "evaluate", "--run", dir.appendingPathComponent(trained).path, "--output", out.path])
            #expect(r.status == 0, "stderr: \(r.stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(contentsOf: out)) as? [String: Any]
            #expect(json?["compute_precision"] as? String == precision, "eval.json: \(String(describing: json?["compute_precision"]))")
            #expect((json?["precision"] as? [Double])?.count == 2, "the per-class precision metric is kept: \(String(describing: json?["precision"]))")
            if let expected {
                let got = try String(contentsOf: dir.appendingPathComponent("eval-default-\(trained).predictions.csv"), encoding: .utf8)
                #expect(got == expected, "evaluate without --precision on a bf16-mixed run ran it in bf16-mixed")
            }
        }

        let bad = try run([bin, "train", "--config", try config(dir, "bad", shards: shards, precision: "fp16")])
        #expect(bad.status != 0 && bad.stderr.contains("train.precision") && bad.stderr.contains("bf16-mixed") && !bad.stderr.contains("Fatal error"),
                "stderr: \(bad.stderr)")
        let badFlag = try run([bin, "evaluate", "--run", dir.appendingPathComponent("bf16-mixed").path, "--precision", "fp16"])
        #expect(badFlag.status != 0 && badFlag.stderr.contains("precision"), "stderr: \(badFlag.stderr)")
    }

    @Test("a key in the wrong section or without one is pointed to its section; an empty --set value is named as such; aliases 32 and bf16")
    func keyMessages() throws {
        func message(_ text: String, _ overrides: [String] = []) -> String {
            do { _ = try RunConfig.parse(text, source: "c.yaml", overrides: overrides); return "" } catch let e as ConfigError { return e.message } catch { return "\(error)" }
        }
        #expect(message("model: {precision: bf16-mixed}").contains("did you mean 'train.precision'"))
        #expect(message("train: {epochs: 1}", ["precision=bf16-mixed"]).contains("did you mean 'train.precision'"))
        #expect(message("train: {epochs: 1}", ["model.precision=bf16-mixed"]).contains("did you mean 'train.precision'"))
        #expect(message("train: {epochs: 1}", ["train.precison=bf16-mixed"]).contains("did you mean 'train.precision'"))
        let empty = message("train: {epochs: 1}", ["train.precision="])
        #expect(empty.contains("train.precision") && empty.contains("no value") && !empty.contains("expected section.key=value"), "\(empty)")
        #expect(message("train: {precision: fp16}").contains("one of 32-true, bf16-mixed"))
        let data = "data: {train: shards}\n"
        #expect(try RunConfig.parse(data + "train: {precision: 32}", source: "c.yaml").precision == .float32)
        #expect(try RunConfig.parse(data + "train: {precision: bf16}", source: "c.yaml").precision == .bf16Mixed)
        #expect(try RunConfig.parse(data + "train: {epochs: 1}", source: "c.yaml").precision == .float32, "32-true by default")
    }

    @Test("students of one pass share the precision: configs that differ are refused naming train.precision")
    func multiStudent() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-bf16multi-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let teacherDir = try tinyTeacher(shards: shards, in: dir, steps: 2)
        let distill = "distill: {teacher_run: \(teacherDir.path)}"
        let a = try config(dir, "s32", shards: shards, precision: "32-true", extra: distill)
        let b = try config(dir, "sbf", shards: shards, precision: "bf16-mixed", extra: distill)
        let r = try run([try histodistillBinary(), "distill", "--config", a, b, "--runs-dir", dir.appendingPathComponent("runs").path])
        #expect(r.status != 0 && r.stderr.contains("train.precision") && !r.stderr.contains("Fatal error"), "stderr: \(r.stderr)")
    }
}
