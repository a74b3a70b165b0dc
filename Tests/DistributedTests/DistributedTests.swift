// Process groups: launcher detection, thread policy, the single-process group, and real `mpirun` runs.
import Foundation
import TensorCore
import Testing
@testable import Distributed
@testable import HistoDistillCLI
@testable import Training

/// Runs a command with a time limit; returns exit status, standard output and standard error.
func run(_ arguments: [String], environment extra: [String: String] = [:], unsetting: Set<String> = [], timeout: TimeInterval = 120,
         in directory: URL? = nil) throws
    -> (status: Int32, stdout: String, stderr: String)
{
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    if let directory { process.currentDirectoryURL = directory }
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.filter { !unsetting.contains($0.key) }.merging(extra) { $1 }
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let deadline = Date().addingTimeInterval(timeout)
    // Read while waiting so a full pipe cannot block the child.
    nonisolated(unsafe) var outData = Data(), errData = Data()
    let group = DispatchGroup()
    group.enter(); DispatchQueue.global().async { outData = out.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    group.enter(); DispatchQueue.global().async { errData = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
    if process.isRunning {
        process.terminate()
        kill(process.processIdentifier, SIGKILL)
        Issue.record("\(arguments.joined(separator: " ")) did not finish within \(timeout) s")
    }
    process.waitUntilExit()
    group.wait()
    return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
}

/// A fresh path under the temporary directory for one test (`histodistill-NAME-UUID`; the test removes it).
func tempDir(_ name: String) -> URL {
    FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-\(name)-\(UUID().uuidString)")
}

/// The built `histodistill` executable next to the test bundle.
func histodistillBinary() throws -> String {
    let candidates = [
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("histodistill"),
        Bundle.main.bundleURL.appendingPathComponent("histodistill"),
        Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("histodistill"),
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(".build/debug/histodistill"),
    ]
    for c in candidates where FileManager.default.isExecutableFile(atPath: c.path) { return c.path }
    throw ProcessGroupError("histodistill executable not found next to the tests (looked in \(candidates.map(\.path)))")
}

/// mpirun flags for a single node as root: the fastest shared-memory transport here (see docs/cluster.md).
let mpirunFlags = ["--oversubscribe", "--mca", "btl", "self,vader", "--mca", "btl_vader_single_copy_mechanism", "none"]
let rootEnvironment = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"]

@Suite("Process groups")
struct DistributedTests {
    @Test("launcher detection from mpirun, PMIx (srun) and plain environments")
    func launchDetection() {
        let mpi = LaunchEnvironment.current(["OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"])
        #expect(mpi == LaunchEnvironment(rank: 2, size: 4, localSize: 2, launcher: "mpirun"))
        #expect(mpi.isUnderMPI)
        let srun = LaunchEnvironment.current(["PMIX_RANK": "1", "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4"])
        #expect(srun.launcher == "pmix" && srun.rank == 1 && srun.size == 8 && srun.localSize == 4)
        let plain = LaunchEnvironment.current(["HOME": "/root"])
        #expect(!plain.isUnderMPI && plain.rank == nil)
    }

    @Test("threads per rank default to cores per node / ranks per node")
    func threadPolicy() {
        #expect(LaunchEnvironment(rank: 0, size: 2, localSize: 2, launcher: "mpirun").defaultThreadsPerRank(cores: 2) == 1)
        #expect(LaunchEnvironment(rank: 0, size: 8, localSize: 4, launcher: "mpirun").defaultThreadsPerRank(cores: 32) == 8)
        #expect(LaunchEnvironment(rank: 0, size: 3, localSize: 3, launcher: "mpirun").defaultThreadsPerRank(cores: 2) == 1)
        #expect(LaunchEnvironment(rank: nil, size: nil, localSize: nil, launcher: nil).defaultThreadsPerRank(cores: 6) == 6)
        // SLURM's --cpus-per-task wins over the division.
        let slurm = LaunchEnvironment.current(["PMIX_RANK": "0", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_CPUS_PER_TASK": "7"])
        #expect(slurm.defaultThreadsPerRank(cores: 64) == 7)
        // srun with only --ntasks: the per-node count comes from SLURM_TASKS_PER_NODE ("4(x2)").
        let srunTasks = LaunchEnvironment.current(["PMI_SIZE": "8", "PMI_RANK": "3", "SLURM_TASKS_PER_NODE": "4(x2)"])
        #expect(srunTasks.launcher == "pmi" && srunTasks.localSize == 4 && srunTasks.defaultThreadsPerRank(cores: 32) == 8)
    }

    @Test("single-process group: collectives are identities")
    func singleProcess() throws {
        let g = SingleProcessGroup()
        var values: [Float] = [1, 2, 3]
        try values.withUnsafeMutableBufferPointer { try g.allReduceMean($0) }
        #expect(values == [1, 2, 3])
        #expect(try g.broadcast(string: "hello", root: 0) == "hello")
        #expect(g.rank == 0 && g.size == 1 && g.isCoordinator)
    }

    @Test("kernel advice: warns when OPENBLAS_CORETYPE forces AVX2 kernels on an AVX-512 CPU, with the fix")
    func kernelAdvice() {
        let forced = KernelAdvice.check(cpuBest: "SkylakeX", inUse: "Haswell", forcedCoreType: "Haswell", forcedL2: "512")
        #expect(forced.count == 1)
        #expect(forced.first?.contains("OPENBLAS_CORETYPE=Haswell") == true)
        #expect(forced.first?.contains("env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE") == true)
        #expect(KernelAdvice.check(cpuBest: "SapphireRapids", inUse: "SkylakeX", forcedCoreType: nil, forcedL2: nil).isEmpty,
                "Sapphire Rapids adds no fp32 kernels over SkylakeX")
        #expect(KernelAdvice.check(cpuBest: "Haswell", inUse: "Haswell", forcedCoreType: "Haswell", forcedL2: nil).isEmpty)
        let unforced = KernelAdvice.check(cpuBest: "SkylakeX", inUse: "Sandybridge", forcedCoreType: nil, forcedL2: nil)
        #expect(unforced.first?.contains("OPENBLAS_CORETYPE=SkylakeX") == true)
    }

    @Test("doctor reports libraries and warns about a forced OpenBLAS core type")
    func doctorSingle() throws {
        let binary = try histodistillBinary()
        let r = try run([binary, "doctor", "--json"], environment: ["OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        #expect(json?["OpenBLAS kernels in use"] as? String == "Haswell")
        #expect((json?["zstd"] as? String)?.hasPrefix("1.") == true)
        #expect((json?["MPI library"] as? String)?.contains("MPI") == true)
        #expect(json?["ranks"] as? Int == 1)
        let cpu = CPUCapabilities.current
        if KernelAdvice.vectorClass(cpu.bestOpenBLASCore) ?? 0 > 2 {
            let warnings = json?["warnings"] as? [String] ?? []
            #expect(warnings.contains { $0.contains("OPENBLAS_CORETYPE=Haswell") }, "warnings: \(warnings)")
        }
    }

    @Test("mpirun: every rank all-reduces and broadcasts correctly", arguments: [2, 3])
    func mpirunDoctor(_ ranks: Int) throws {
        let binary = try histodistillBinary()
        let r = try run(["mpirun", "-np", "\(ranks)"] + mpirunFlags + [binary, "doctor", "--json", "--allreduce-floats", "100003"],
                        environment: rootEnvironment, timeout: 120)
        #expect(r.status == 0, "mpirun -np \(ranks) failed: \(r.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        #expect(json?["ranks"] as? Int == ranks, "stdout: \(r.stdout)")
        #expect(json?["allreduce_ok"] as? Bool == true)
        #expect(json?["threads"] as? Int == max(1, ProcessInfo.processInfo.activeProcessorCount / ranks))
    }
}
