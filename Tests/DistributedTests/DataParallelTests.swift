// Data-parallel training under real `mpirun`: the all-reduced gradient is the whole global batch's, losses do
// not depend on the number of ranks, a resume on another world size covers every sample once, and faults (a
// dead rank, SIGTERM/SIGUSR1, ranks started differently) end the job cleanly and promptly.
import Foundation
import Testing
@testable import Layers
import SafeTensors
@testable import TileShards
@testable import Training

/// A run directory's metrics.jsonl as (step, loss) pairs.
func losses(_ run: URL) throws -> [Int: Float] {
    let text = try String(contentsOf: run.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
    var out: [Int: Float] = [:]
    for line in text.split(separator: "\n") {
        let m = try JSONDecoder().decode(StepMetrics.self, from: Data(line.utf8))
        out[m.step] = m.loss
    }
    return out
}

/// (epoch, step) -> sorted sample indices, from every rank's trace file in `run/trace`.
func traces(_ run: URL) throws -> [[Int]: [Int]] {
    let dir = run.appendingPathComponent("trace")
    var out: [[Int]: [Int]] = [:]
    for name in try FileManager.default.contentsOfDirectory(atPath: dir.path) {
        for line in try String(contentsOf: dir.appendingPathComponent(name), encoding: .utf8).split(separator: "\n") {
            let f = line.split(separator: "\t").compactMap { Int($0) }
            out[[f[0], f[1]], default: []].append(f[2])
        }
    }
    return out.mapValues { $0.sorted() }
}

/// A tiny data-parallel experiment: 24 tiles of 32 px, the paper's model cut to two stages.
func dataParallelConfig(_ dir: URL, shards: URL, batch: Int, optimizer: String = "{name: adamw, lr: 0.003}") throws -> URL {
    let url = dir.appendingPathComponent("dp.yaml")
    try """
    run: {output: \(dir.appendingPathComponent("run").path), seed: 5}
    data: {train: \(shards.path), val: \(shards.path), input_factor: 2}
    augment: {brightness: 0.2, hue: 0.05}
    model: {planes: [32, 32], blocks: [1, 1]}
    optimizer: \(optimizer)
    train: {epochs: 2, batch_size: \(batch), checkpoint_every: 100}
    """.write(to: url, atomically: true, encoding: .utf8)
    return url
}

/// `mpirun -np N histodistill ARGS` as root on one node.
func mpirun(_ ranks: Int, _ arguments: [String], timeout: TimeInterval = 180) throws -> (status: Int32, stdout: String, stderr: String) {
    try run(["mpirun", "-np", "\(ranks)"] + mpirunFlags + [try histodistillBinary()] + arguments, environment: rootEnvironment, timeout: timeout)
}

/// A process started in the background whose output is collected; `finish` waits for it with a deadline.
final class Background: @unchecked Sendable {
    let process = Process()
    private let out = Pipe(), err = Pipe()
    private var outData = Data(), errData = Data()
    private let group = DispatchGroup()

    init(_ arguments: [String], environment: [String: String] = [:]) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardOutput = out
        process.standardError = err
        // The child inherits this thread's signal mask; the test runner's threads may block the signals under test.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM); sigaddset(&set, SIGUSR1); sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        try process.run()
        group.enter(); DispatchQueue.global().async { self.outData = self.out.fileHandleForReading.readDataToEndOfFile(); self.group.leave() }
        group.enter(); DispatchQueue.global().async { self.errData = self.err.fileHandleForReading.readDataToEndOfFile(); self.group.leave() }
    }

    /// Waits up to `timeout` seconds; kills the process if it is still running then. Returns the status, the
    /// seconds waited and the outputs.
    func finish(timeout: TimeInterval) -> (status: Int32, seconds: Double, stdout: String, stderr: String) {
        let start = Date()
        while process.isRunning && Date().timeIntervalSince(start) < timeout { Thread.sleep(forTimeInterval: 0.05) }
        let waited = Date().timeIntervalSince(start)
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        group.wait()
        return (process.terminationStatus, waited, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }
}

/// Waits until `run/metrics.jsonl` has at least `lines` lines (or `timeout` passes); true when it has.
func waitForSteps(_ run: URL, lines: Int, timeout: TimeInterval = 120) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if let text = try? String(contentsOf: run.appendingPathComponent("metrics.jsonl"), encoding: .utf8),
           text.split(separator: "\n").count >= lines { return true }
        Thread.sleep(forTimeInterval: 0.1)
    }
    return false
}

/// Child processes of `pid` (the ranks mpirun started on this node).
func children(of pid: Int32) -> [Int32] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return names.compactMap { Int32($0) }.filter { p in
        guard let stat = try? String(contentsOfFile: "/proc/\(p)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 2 && Int32(fields[1]) == pid
    }
}

@Suite("Data parallel under mpirun", .serialized)
struct DataParallelTests {
    @Test("one SGD step: the 2-rank and 3-rank all-reduced gradients equal the 1-process gradient of the global batch; sent as bfloat16, within its rounding")
    func gradientEquality() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-dpgrad-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        // SGD without momentum at lr 1: the weights after one step are w0 - g, so weights compare gradients.
        let config = try dataParallelConfig(dir, shards: shards, batch: 8, optimizer: "{name: sgd, lr: 1.0, momentum: 0}")
        let bin = try histodistillBinary()
        let single = try run([bin, "train", "--config", config.path, "--set", "train.max_steps=1", "--set", "run.output=\(dir.path)/r1"])
        #expect(single.status == 0, "\(single.stderr)")
        let cfg = try RunConfig.load(config)
        let w0 = ResNet(cfg.modelConfig(classes: 2), seed: cfg.seed).stateDict()
        func weights(_ run: String) throws -> SafeTensorsFile {
            try SafeTensorsFile(contentsOf: dir.appendingPathComponent("\(run)/checkpoints/step-000000001/model.safetensors"))
        }
        let w1 = try weights("r1")
        // 3 ranks split the batch of 8 unevenly (2, 3, 3), and overlap backward with 40 KB buckets; "3-bf16" also sends
        // the buckets as bfloat16 (train.gradient_compression).
        for (name, ranks) in [("2", 2), ("3", 3), ("3-bf16", 3)] {
            let r = try mpirun(ranks, ["train", "--config", config.path, "--set", "train.max_steps=1", "--set", "run.output=\(dir.path)/r\(name)"]
                                      + (ranks == 3 ? ["--set", "train.bucket_mb=0.04"] : [])
                                      + (name.hasSuffix("bf16") ? ["--set", "train.gradient_compression=bf16"] : []))
            #expect(r.status == 0, "\(r.stderr)")
            let wn = try weights("r\(name)")
            var worst = 0.0, largest = 0.0
            for t in w0 {
                let a = try #require(w1[t.name]).floats, b = try #require(wn[t.name]).floats, w = t.floats
                for i in w.indices {
                    largest = max(largest, Double(abs(w[i] - a[i])))
                    worst = max(worst, Double(abs(a[i] - b[i])))
                }
            }
            #expect(largest > 1e-3, "the step moved the weights")
            if name.hasSuffix("bf16") {
                // Rounded three times to 8 significant bits (each rank's bucket, the partial sums): within 1% of the largest
                // gradient, and visibly not float32.
                #expect(worst / largest < 1e-2 && worst / largest > 1e-4, "\(name): max |g_ranks - g_single| / max |g| = \(worst / largest)")
            } else {
                #expect(worst / largest < 1e-4, "\(name): max |g_ranks - g_single| / max |g| = \(worst / largest)")
            }
        }
    }

    @Test("2 ranks x 2 threads (model copies) and 3 ranks: the all-reduce overlapped with backward in small buckets, with and without its progress thread, float32 or bfloat16, gives the weights of the same all-reduce after backward, bit for bit")
    func overlappedAllReduce() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-dpoverlap-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let config = try dataParallelConfig(dir, shards: shards, batch: 8)
        var weights: [String: SafeTensorsFile] = [:]
        // 3 ranks: a blocking MPI_Allreduce adds in another order than MPI_Iallreduce there; both paths must use the latter.
        let variants = [("after", false, 0, "none", 2), ("overlap", true, 0, "none", 2), ("overlap-thread", true, 20, "none", 2),
                        ("after-bf16", false, 0, "bf16", 2), ("overlap-bf16", true, 20, "bf16", 2),
                        ("after-3", false, 0, "none", 3), ("overlap-3", true, 20, "none", 3)]
        for (name, overlap, progress, compression, ranks) in variants {
            let out = dir.appendingPathComponent(name)
            let r = try mpirun(ranks, ["train", "--config", config.path, "--set", "train.max_steps=2", "--set", "train.threads=\(4 / ranks)",
                                   "--set", "train.bucket_mb=0.02", "--set", "train.overlap_allreduce=\(overlap)",
                                   "--set", "train.allreduce_progress_us=\(progress)", "--set", "train.gradient_compression=\(compression)",
                                   "--set", "run.output=\(out.path)"])
            #expect(r.status == 0, "\(r.stderr)")
            weights[name] = try SafeTensorsFile(contentsOf: out.appendingPathComponent("checkpoints/step-000000002/model.safetensors"))
        }
        func differing(_ a: String, _ b: String) throws -> (Int, Int) {
            let x = try #require(weights[a]), y = try #require(weights[b])
            var compared = 0, differing = 0
            for t in x.tensors {
                let u = t.floats, v = try #require(y[t.name]).floats
                compared += u.count
                differing += zip(u, v).filter { $0.0 != $0.1 }.count
            }
            return (differing, compared)
        }
        for (name, reference) in [("overlap", "after"), ("overlap-thread", "after"), ("overlap-bf16", "after-bf16"), ("overlap-3", "after-3")] {
            let (d, n) = try differing(name, reference)
            #expect(n > 10_000 && d == 0, "\(name): \(d) of \(n) weights differ from \(reference)'s")
        }
        let (d, n) = try differing("after-bf16", "after")
        #expect(d > n / 10, "bfloat16 all-reduce changed only \(d) of \(n) weights")
    }

    @Test("losses on 1 rank and on 2 then 3 ranks agree; the 2 -> 3 rank resume covers every sample exactly once")
    func elasticResume() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-dpelastic-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let config = try dataParallelConfig(dir, shards: shards, batch: 8)   // 3 steps per epoch, 6 in all
        let bin = try histodistillBinary()
        let one = dir.appendingPathComponent("one"), many = dir.appendingPathComponent("many")
        let a = try run([bin, "train", "--config", config.path, "--set", "run.output=\(one.path)", "--trace-samples"])
        #expect(a.status == 0, "\(a.stderr)")
        let b = try mpirun(2, ["train", "--config", config.path, "--set", "run.output=\(many.path)", "--trace-samples", "--stop-after", "2"])
        #expect(b.status == 0 && b.stdout.contains("paused after step 2"), "\(b.stdout) \(b.stderr)")
        let c = try mpirun(3, ["train", "--config", config.path, "--set", "run.output=\(many.path)", "--trace-samples", "--resume"])
        #expect(c.status == 0 && c.stdout.contains("done: step 6"), "\(c.stdout) \(c.stderr)")
        #expect(c.stderr.contains("written by 2 ranks, continuing on 3"), "\(c.stderr)")
        // Every sample of each epoch exactly once, in the same global batches as the single process.
        let t1 = try traces(one), tn = try traces(many)
        #expect(tn == t1, "the 2+3-rank run saw other samples per step than the 1-rank run")
        for epoch in 0..<2 {
            let seen = (0..<3).flatMap { tn[[epoch, $0]] ?? [] }.sorted()
            #expect(seen == Array(0..<24), "epoch \(epoch): samples \(seen)")
        }
        // The same losses up to floating-point summation order.
        let l1 = try losses(one), ln = try losses(many)
        #expect(l1.count == 6 && ln.count == 6)
        var worst = 0.0
        for s in 1...6 {
            let x = Double(l1[s] ?? 0), y = Double(ln[s] ?? 1)
            worst = max(worst, abs(x - y) / max(abs(x), 1e-6))
        }
        #expect(worst < 1e-4, "max relative loss difference 1 vs 2/3 ranks: \(worst)")
        print("data parallel: max relative loss difference between 1 rank and 2 -> 3 ranks over 6 steps: \(worst)")
    }

    @Test("killing one rank ends the whole job with a non-zero status within 30 seconds")
    func rankDeath() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-dpkill-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let config = try dataParallelConfig(dir, shards: shards, batch: 4)
        let job = try Background(["mpirun", "-np", "2"] + mpirunFlags + [try histodistillBinary(), "train", "--config", config.path,
                                  "--set", "train.epochs=10000"], environment: rootEnvironment)
        #expect(waitForSteps(dir.appendingPathComponent("run"), lines: 3), "the job trains")
        let ranks = children(of: job.process.processIdentifier)
        #expect(ranks.count == 2, "mpirun's children: \(ranks)")
        if let victim = ranks.last { kill(victim, SIGKILL) }
        let r = job.finish(timeout: 30)
        #expect(r.seconds < 30 && r.status != 0, "status \(r.status) after \(r.seconds) s")
        print("data parallel: the job ended \(r.seconds) s after one of its 2 ranks was killed")
    }

    @Test("a corrupt tile met by one rank aborts every rank, naming the rank, the file and the tile")
    func rankError() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-dperror-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let url = try corruptFirstTile(of: shards)
        // Which rank meets dataset tile 0 in epoch 0 (batch 4 on 2 ranks: positions 0-1 of a batch go to rank 0).
        let position = try #require(EpochPlan(count: 24, seed: 5, epoch: 0, globalBatch: 4).order.firstIndex(of: 0))
        let rank = position % 4 < 2 ? 0 : 1
        let config = try dataParallelConfig(dir, shards: shards, batch: 4)
        let r = try mpirun(2, ["train", "--config", config.path], timeout: 60)
        #expect(r.status != 0)
        #expect(r.stderr.contains("rank \(rank) of 2") && r.stderr.contains(url.path) && r.stderr.contains("tile 0"), "\(r.stderr)")
        // With --on-corrupt skip the same job warns, names the tile, counts it in the metrics and finishes.
        let out = dir.appendingPathComponent("skip")
        let s = try mpirun(2, ["train", "--config", config.path, "--on-corrupt", "skip", "--set", "train.max_steps=6", "--set", "run.output=\(out.path)"],
                           timeout: 60)
        #expect(s.status == 0, "\(s.stderr)")
        #expect(s.stderr.contains("rank \(rank) of 2: skipped a corrupt tile") && s.stderr.contains(url.path), "\(s.stderr)")
        #expect(!s.stderr.contains("with --on-corrupt skip") && s.stderr.contains("`histodistill verify` lists every damaged tile"),
                "the warning does not suggest the skipping already chosen: \(s.stderr)")
        let lines = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        let skipped = try lines.map { try JSONDecoder().decode(StepMetrics.self, from: Data($0.utf8)).skippedTiles }.reduce(0, +)
        #expect(skipped == 1)
    }

    @Test("SIGTERM or Ctrl-C (SIGINT) to one process and SIGUSR1 to mpirun checkpoint at a step boundary, exit 75, and resume to the end")
    func preemption() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-dpterm-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let config = try dataParallelConfig(dir, shards: shards, batch: 4)
        let bin = try histodistillBinary()
        for (ranks, signal) in [(1, SIGTERM), (2, SIGUSR1), (1, SIGINT)] {
            let out = dir.appendingPathComponent("run\(ranks)-\(signal)")
            let launcher = ranks == 1 ? [bin] : ["mpirun", "-np", "\(ranks)"] + mpirunFlags + [bin]
            let args = ["train", "--config", config.path, "--set", "run.output=\(out.path)", "--set", "train.epochs=10000"]
            let job = try Background(launcher + args, environment: rootEnvironment)
            #expect(waitForSteps(out, lines: 3), "the job trains")
            kill(job.process.processIdentifier, signal)
            let r = job.finish(timeout: 60)
            #expect(r.status == 75, "\(ranks) rank(s), \(signal): status \(r.status): \(r.stderr)")
            #expect(r.stdout.contains("stopped by"), "\(r.stdout)")
            if signal == SIGINT {
                #expect(r.stdout.contains("stopped by SIGINT") && r.stderr.contains("SIGINT: writing a checkpoint after this step"), "\(r.stdout) \(r.stderr)")
            }
            let store = CheckpointStore(directory: out.appendingPathComponent("checkpoints"))
            let newest = try #require(store.newest())
            let state = try JSONDecoder().decode(CheckpointState.self, from: Data(contentsOf: newest.appendingPathComponent("state.json")))
            let logged = try losses(out).keys.max() ?? -1
            #expect(state.step == logged, "the checkpoint holds the last logged step \(logged), not \(state.step)")
            let resumed = try (ranks == 1 ? run([bin] + args + ["--resume", "--set", "train.max_steps=\(state.step + 2)"])
                                          : mpirun(ranks, args + ["--resume", "--set", "train.max_steps=\(state.step + 2)"]))
            #expect(resumed.status == 0 && resumed.stdout.contains("done: step \(state.step + 2)"), "\(resumed.stdout) \(resumed.stderr)")
        }
    }

    @Test("the SLURM template forwards SIGUSR1 to the ranks and requeues the job when they checkpoint and stop")
    func slurmTemplate() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-slurm-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let config = try dataParallelConfig(dir, shards: shards, batch: 4)
        // A stand-in for scontrol that records its arguments; mpirun as the launcher (no SLURM here).
        let fake = dir.appendingPathComponent("bin")
        try FileManager.default.createDirectory(at: fake, withIntermediateDirectories: true)
        try "#!/bin/sh\necho \"$@\" >> \(dir.path)/scontrol.log\n".write(to: fake.appendingPathComponent("scontrol"), atomically: true, encoding: .utf8)
        chmod(fake.appendingPathComponent("scontrol").path, 0o755)
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let environment = rootEnvironment.merging([
            "PATH": fake.path + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"),
            "SLURM_JOB_ID": "4242", "SLURM_NNODES": "1", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_CPUS_PER_TASK": "1",
            "LAUNCHER": "mpirun", "HISTODISTILL": try histodistillBinary(), "OMPI_MCA_rmaps_base_oversubscribe": "1",
        ]) { $1 }
        let out = dir.appendingPathComponent("run")
        let job = try Background(["bash", root.appendingPathComponent("cluster/slurm-train.sbatch").path, "train", config.path,
                                  "--set", "train.epochs=10000"], environment: environment)
        #expect(waitForSteps(out, lines: 3), "the job trains")
        kill(job.process.processIdentifier, SIGUSR1)   // what SLURM's --signal=B:USR1 does before the time limit
        let r = job.finish(timeout: 60)
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        #expect(r.stdout.contains("requeueing job 4242"), "\(r.stdout)")
        #expect(try String(contentsOf: dir.appendingPathComponent("scontrol.log"), encoding: .utf8) == "requeue 4242\n")
        #expect(CheckpointStore(directory: out.appendingPathComponent("checkpoints")).newest() != nil)
    }

    @Test("evaluate and predict split over 2 and 3 ranks write the single-process metrics and predictions")
    func distributedInference() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-dpeval-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let config = try dataParallelConfig(dir, shards: shards, batch: 4)
        let bin = try histodistillBinary()
        let runDir = dir.appendingPathComponent("run").path
        #expect(try run([bin, "train", "--config", config.path, "--set", "train.max_steps=3"]).status == 0)
        func outputs(_ ranks: Int) throws -> (report: [String: Any], rows: [[String]]) {
            let args = ["evaluate", "--run", runDir, "--shards", shards.path, "--output", "\(dir.path)/e\(ranks).json", "--predictions", "\(dir.path)/p\(ranks).csv"]
            let r = ranks == 1 ? try run([bin] + args) : try mpirun(ranks, args)
            #expect(r.status == 0, "\(r.stderr)")
            let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir.path)/e\(ranks).json"))) as? [String: Any] ?? [:]
            let rows = try String(contentsOf: URL(fileURLWithPath: "\(dir.path)/p\(ranks).csv"), encoding: .utf8)
                .split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
            return (report, rows)
        }
        let one = try outputs(1)
        #expect(one.rows.count == 25)
        for ranks in [2, 3] {
            let many = try outputs(ranks)
            #expect(many.rows.count == one.rows.count)
            for (a, b) in zip(one.rows, many.rows) {
                #expect(a.prefix(3) == b.prefix(3), "tile id, slide and label in the same order")
                for (x, y) in zip(a.dropFirst(3), b.dropFirst(3)) where Double(x) != nil {
                    #expect(abs(Double(x)! - Double(y)!) < 1e-5, "\(ranks) ranks: \(x) vs \(y)")
                }
            }
            #expect(many.report["confusion"] as? [[Int]] == one.report["confusion"] as? [[Int]])
            #expect(many.report["accuracy"] as? Double == one.report["accuracy"] as? Double)
        }
    }

    @Test("distillation with labeled and unlabeled tiles and ce_weight > 0: every loss term is the same on 1 and 2 ranks; on 2 ranks the teacher forward run during the previous step's all-reduce (train.overlap_teacher) gives the weights of the run without it, bit for bit, for one student and for two students in one pass")
    func labeledTermsAcrossRanks() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-dpce-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let unlabeled = try classShards(dir, name: "unlabeled", classes: ["a", "b"], count: 5, unlabeled: true)
        let teacher = try dataParallelConfig(dir, shards: shards, batch: 4)
        let t = try run([try histodistillBinary(), "train", "--config", teacher.path, "--set", "train.max_steps=3", "--set", "data.input_factor=1"])
        #expect(t.status == 0, "\(t.stderr)")
        func student(_ name: String) throws -> URL {
            let url = dir.appendingPathComponent("\(name).yaml")
            try """
            run: {output: \(dir.appendingPathComponent(name).path), seed: 8}
            data: {train: \(shards.path), unlabeled: \(unlabeled.path), input_factor: 2}
            model: {planes: [32, 32], blocks: [1, 1]}
            optimizer: {name: adam, lr: 0.001}
            train: {max_steps: 4, batch_size: 6, checkpoint_every: 100}
            distill: {teacher_run: \(dir.appendingPathComponent("run").path), ce_weight: 0.5, temperature: 2}
            """.write(to: url, atomically: true, encoding: .utf8)
            return url
        }
        let one = try run([try histodistillBinary(), "distill", "--config", try student("one").path])
        #expect(one.status == 0, "\(one.stderr)")
        let two = try mpirun(2, ["distill", "--config", try student("two").path])
        #expect(two.status == 0, "\(two.stderr)")
        // The next batch's teacher forward during the all-reduce (the default) or at its own step: the same weights.
        #expect(two.stdout.contains("steps run here took their teacher forward from the previous step's all-reduce"), "\(two.stdout)")
        #expect(!two.stdout.contains("; 0 of the"), "\(two.stdout)")
        let off = try mpirun(2, ["distill", "--config", try student("off").path, "--set", "train.overlap_teacher=false"])
        #expect(off.status == 0 && !off.stdout.contains("took their teacher forward"), "\(off.stdout) \(off.stderr)")
        let weights = try ["two", "off"].map {
            try SafeTensorsFile(contentsOf: dir.appendingPathComponent("\($0)/checkpoints/step-000000004/model.safetensors"))
        }
        var differing = 0, compared = 0
        for t in weights[0].tensors {
            let u = t.floats, v = try #require(weights[1][t.name]).floats
            compared += u.count
            differing += zip(u, v).filter { $0.0 != $0.1 }.count
        }
        #expect(compared > 1000 && differing == 0, "train.overlap_teacher changed \(differing) of \(compared) weights")
        // Two students in one pass: the last one's step prepares the next batch's teacher outputs for both.
        func multi(_ factor: Int) throws -> String {
            let url = dir.appendingPathComponent("multi-\(factor).yaml")
            try String(contentsOf: try student("unused"), encoding: .utf8)
                .replacingOccurrences(of: "run: {output: \(dir.appendingPathComponent("unused").path), seed: 8}", with: "run: {name: s\(factor), seed: 8}")
                .replacingOccurrences(of: "input_factor: 2", with: "input_factor: \(factor)")
                .write(to: url, atomically: true, encoding: .utf8)
            return url.path
        }
        let passes = try [true, false].map { on in
            let r = try mpirun(2, ["distill", "--config", try multi(2), try multi(4), "--runs-dir", dir.appendingPathComponent("multi-\(on)").path,
                                   "--set", "train.overlap_teacher=\(on)"])
            #expect(r.status == 0, "\(r.stderr)")
            return r.stdout
        }
        #expect(passes[0].components(separatedBy: "took their teacher forward from the previous step's all-reduce").count == 3, "\(passes[0])")
        #expect(!passes[0].contains("; 0 of the") && !passes[1].contains("took their teacher forward"), "\(passes[0]) \(passes[1])")
        for s in ["s2", "s4"] {
            let w = try [true, false].map {
                try SafeTensorsFile(contentsOf: dir.appendingPathComponent("multi-\($0)/\(s)/checkpoints/step-000000004/model.safetensors"))
            }
            var d = 0
            for t in w[0].tensors { d += zip(t.floats, try #require(w[1][t.name]).floats).filter { $0.0 != $0.1 }.count }
            #expect(d == 0, "\(s): train.overlap_teacher changed \(d) weights in the multi-student pass")
        }
        func metrics(_ name: String) throws -> [StepMetrics] {
            try String(contentsOf: dir.appendingPathComponent("\(name)/metrics.jsonl"), encoding: .utf8).split(separator: "\n")
                .map { try JSONDecoder().decode(StepMetrics.self, from: Data($0.utf8)) }
        }
        let a = try metrics("one"), b = try metrics("two")
        #expect(a.count == 4 && b.count == 4)
        func close(_ x: Float?, _ y: Float?) -> Bool {
            guard let x, let y else { return false }
            return abs(x - y) <= 2e-5 * max(1, abs(x))
        }
        for (m, n) in zip(a, b) {
            #expect(close(m.ceLoss, n.ceLoss) && close(m.kdLoss, n.kdLoss) && close(m.pixelLoss, n.pixelLoss) && close(m.loss, n.loss),
                    "step \(m.step): 1 rank ce \(m.ceLoss ?? -1) kd \(m.kdLoss ?? -1) pixel \(m.pixelLoss ?? -1) total \(m.loss); 2 ranks ce \(n.ceLoss ?? -1) kd \(n.kdLoss ?? -1) pixel \(n.pixelLoss ?? -1) total \(n.loss)")
        }
        #expect(a.contains { ($0.ceLoss ?? 0) > 0 }, "labeled tiles contribute")
    }

    @Test("supervised training on partly labeled shards: a global batch without a labeled tile takes no step (Adam's count, EMA and weights unchanged) and logs no loss; the same steps on 2 ranks")
    func unlabeledBatchTrainsNothing() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-nolabel-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try trainingShards(dir)
        // One labeled tile per class among 24: most global batches of 4 hold none.
        var plan = try PackPlan.imageFolder(dir.appendingPathComponent("in"))
        let keep = Set([plan.items.firstIndex { $0.label == 0 }!, plan.items.firstIndex { $0.label == 1 }!])
        plan.items = plan.items.enumerated().map { i, item in var it = item; if !keep.contains(i) { it.label = -1 }; return it }
        let shards = dir.appendingPathComponent("partial")
        _ = try Packer.pack(plan, options: PackOptions(output: shards))
        let config = { (name: String) in try lifecycleConfig(shards: shards, output: dir.appendingPathComponent(name), maxSteps: 12, batch: 4,
                                                              extra: "schedule: {name: constant}") }
        let trainer = try SupervisedTrainer(config: try config("one"), writer: "t")
        var ema = try config("one-ema")
        ema = try RunConfig.parse(ema.yaml, source: "x", overrides: ["train.ema_decay=0.5"])
        let averaged = try SupervisedTrainer(config: ema, writer: "t")
        try trainer.run(resume: false)
        try averaged.run(resume: false)
        let losses = trainer.history.map(\.loss)
        let taken = losses.compactMap { $0 }
        #expect(losses.count == 12 && taken.count >= 2 && taken.count <= 4, "\(losses)")
        #expect(taken.allSatisfy { $0.isFinite && $0 > 0 })
        // Adam counted only the steps taken (it had counted every step, moving the weights on zero gradients).
        #expect(trainer.optimizer.step == taken.count, "Adam steps \(trainer.optimizer.step), steps with a loss \(taken.count)")
        #expect(averaged.history.map { $0.loss == nil } == losses.map { $0 == nil })
        #expect(averaged.ema?.updates == taken.count, "EMA updates \(averaged.ema?.updates ?? -1)")
        // A step that trained nothing has no speed either (its time holds no forward pass).
        #expect(trainer.history.map { $0.imagesPerSecond == nil } == losses.map { $0 == nil })
        // Logged without a loss: JSONL without the key, an empty CSV cell, no train/loss scalar.
        let jsonl = try String(contentsOf: dir.appendingPathComponent("one/metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        let skipped = try #require(losses.firstIndex { $0 == nil })
        #expect(!jsonl[skipped].contains("\"loss\"") && jsonl[skipped].contains("\"step\":\(skipped + 1)"), "\(jsonl[skipped])")
        let decoded = try JSONDecoder().decode(StepMetrics.self, from: Data(jsonl[skipped].utf8))
        #expect(decoded.loss == nil && decoded.step == skipped + 1 && decoded.lr == trainer.history[skipped].lr)
        #expect(trainer.history[skipped].csvRow.hasPrefix("\(skipped + 1),\(trainer.history[skipped].epoch),,"))
        let events = try #require(try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("one").path).first { $0.hasPrefix("events.out.tfevents.") })
        let scalars = try TensorBoardWriter.scalars(in: dir.appendingPathComponent("one/\(events)"))
        #expect(scalars.filter { $0.tag == "train/loss" }.map(\.value) == taken && scalars.filter { $0.tag == "train/lr" }.count == 12)
        // The weights move only on steps taken: a run stopped after an untaken step equals the run one step earlier.
        let n = try #require(losses.indices.first { $0 >= 1 && losses[$0] == nil }) + 1
        let a = try SupervisedTrainer(config: try config("a"), writer: "t"), b = try SupervisedTrainer(config: try config("b"), writer: "t")
        try a.run(resume: false, stopAfter: n - 1)
        try b.run(resume: false, stopAfter: n)
        #expect(a.model.parameters.values.array == b.model.parameters.values.array, "step \(n) trained nothing")
        #expect(a.optimizer.step == b.optimizer.step)
        // Two ranks skip the same steps (every rank sees the global labeled count) and never hang.
        let file = dir.appendingPathComponent("two.yaml")
        try (try config("two")).yaml.write(to: file, atomically: true, encoding: .utf8)
        let two = try mpirun(2, ["train", "--config", file.path])
        #expect(two.status == 0, "\(two.stderr)")
        let twoLosses = try String(contentsOf: dir.appendingPathComponent("two/metrics.jsonl"), encoding: .utf8).split(separator: "\n")
            .map { try JSONDecoder().decode(StepMetrics.self, from: Data($0.utf8)).loss }
        #expect(twoLosses.map { $0 == nil } == losses.map { $0 == nil }, "1 rank \(losses), 2 ranks \(twoLosses)")
        for (x, y) in zip(losses, twoLosses) { if let x, let y { #expect(abs(x - y) <= 2e-5 * max(1, abs(x)), "\(x) vs \(y)") } }
    }

    @Test("a start-up error every rank meets (a global batch larger than the data) is reported once with exit 1, without MPI_Abort")
    func sharedStartupError() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-dpstartup-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let config = try dataParallelConfig(dir, shards: shards, batch: 4)
        let m = try mpirun(2, ["train", "--config", config.path, "--set", "train.batch_size=1000"], timeout: 60)
        #expect(m.status == 1, "\(m.stderr)")
        #expect(m.stderr.components(separatedBy: "fewer than one global batch").count - 1 == 1, "\(m.stderr)")
        #expect(!m.stderr.contains("MPI_ABORT") && !m.stderr.contains("MPI_Abort"), "\(m.stderr)")
    }

    @Test("ranks started with different configs are refused at start-up, naming the rank")
    func mismatchedRanks() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-dpmismatch-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try trainingShards(dir)
        let config = try dataParallelConfig(dir, shards: shards, batch: 4)
        let bin = try histodistillBinary()
        // MPMD: rank 0 and rank 1 get different command lines.
        let r = try run(["mpirun"] + mpirunFlags + ["-np", "1", bin, "train", "--config", config.path, ":",
                                                    "-np", "1", bin, "train", "--config", config.path, "--set", "optimizer.lr=0.5"],
                        environment: rootEnvironment, timeout: 60)
        #expect(r.status != 0)
        #expect(r.stderr.contains("rank 1 of 2 was started with a different config"), "\(r.stderr)")
        #expect(r.stderr.contains("lr: 0.5"), "the differing line is shown: \(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("run/checkpoints").path), "nothing was trained")
        // A start-up failure every rank shares (no shards) is reported once, not once per rank, and ends all ranks.
        let m = try mpirun(2, ["train", "--config", config.path, "--set", "data.train=/nonexistent-shards"], timeout: 60)
        #expect(m.status != 0 && m.stderr.components(separatedBy: "no such directory").count - 1 == 1, "\(m.stderr)")
        // A global batch of one tile over two ranks leaves one without a tile: said as that (a GroupNorm model here),
        // not as BatchNorm's rule.
        let b = try mpirun(2, ["train", "--config", config.path, "--set", "train.batch_size=1"], timeout: 60)
        #expect(b.status != 0 && b.stderr.contains("train.batch_size 1 over 2 ranks leaves a rank without a tile")
                && b.stderr.contains("at least 2") && !b.stderr.contains("BatchNorm") && !b.stderr.contains("Backtrac"), "\(b.stderr)")
    }
}
