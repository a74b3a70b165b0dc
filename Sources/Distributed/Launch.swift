// Detects how the process was launched (plain, mpirun, srun) and makes the matching process group.
import Training
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What the environment says about the launcher.
public struct LaunchEnvironment: Sendable, Equatable {
    /// Rank announced by the launcher, if any.
    public let rank: Int?
    /// World size announced by the launcher, if any.
    public let size: Int?
    /// Ranks on this node announced by the launcher, if any.
    public let localSize: Int?
    /// Which launcher set the variables ("mpirun", "pmix", "slurm") or nil.
    public let launcher: String?
    /// SLURM's --cpus-per-task for this job, if set.
    public var cpusPerTask: Int? = nil

    public init(rank: Int?, size: Int?, localSize: Int?, launcher: String?, cpusPerTask: Int? = nil) {
        self.rank = rank; self.size = size; self.localSize = localSize; self.launcher = launcher; self.cpusPerTask = cpusPerTask
    }

    /// Reads the variables Open MPI's mpirun, PMIx and SLURM's srun export.
    public static func current(_ env: [String: String] = environment()) -> LaunchEnvironment {
        func int(_ k: String) -> Int? { env[k].flatMap { Int($0) } }
        var launch = detect(env, int)
        launch.cpusPerTask = int("SLURM_CPUS_PER_TASK")
        return launch
    }

    private static func detect(_ env: [String: String], _ int: (String) -> Int?) -> LaunchEnvironment {
        if let size = int("OMPI_COMM_WORLD_SIZE") {
            return LaunchEnvironment(rank: int("OMPI_COMM_WORLD_RANK"), size: size,
                                     localSize: int("OMPI_COMM_WORLD_LOCAL_SIZE"), launcher: "mpirun")
        }
        // srun: tasks on this node from SLURM_NTASKS_PER_NODE, else SLURM_TASKS_PER_NODE ("4(x2),3" lists the
        // nodes' counts; the first is the most common case of equal nodes).
        let slurmLocal = int("SLURM_NTASKS_PER_NODE")
            ?? env["SLURM_TASKS_PER_NODE"].flatMap { Int($0.prefix { $0.isNumber }) }
        if let rank = int("PMIX_RANK") {
            return LaunchEnvironment(rank: rank, size: int("SLURM_NTASKS"), localSize: slurmLocal, launcher: "pmix")
        }
        if let size = int("PMI_SIZE") {
            return LaunchEnvironment(rank: int("PMI_RANK"), size: size, localSize: int("MPI_LOCALNRANKS") ?? slurmLocal, launcher: "pmi")
        }
        return LaunchEnvironment(rank: nil, size: nil, localSize: nil, launcher: nil)
    }

    /// True when an MPI launcher started this process.
    public var isUnderMPI: Bool { launcher != nil }

    /// The process environment as a dictionary.
    public static func environment() -> [String: String] {
        var result: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") {
                result[String(s[..<eq])] = String(s[s.index(after: eq)...])
            }
            p += 1
        }
        return result
    }
}

/// Makes the process group for this launch: MPI when an MPI launcher started us, otherwise a single process.
public func makeProcessGroup(_ launch: LaunchEnvironment = .current()) throws -> any ProcessGroup {
    if launch.isUnderMPI { return try MPIProcessGroup() }
    return SingleProcessGroup()
}

/// Writes to standard error without Foundation.
enum FileHandleStderr {
    static func write(_ s: String) {
        var line = s
        if !line.hasSuffix("\n") { line += "\n" }
        var bytes = Array(line.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress! + offset, $0.count - offset) }
            if n <= 0 { break }
            offset += n
        }
    }
}

extension LaunchEnvironment {
    /// Threads per rank by default: SLURM's cpus-per-task when the job sets it, else the node's cores divided
    /// by the ranks on this node, at least 1.
    public func defaultThreadsPerRank(cores: Int) -> Int {
        if let cpus = cpusPerTask, cpus > 0 { return cpus }
        return max(1, cores / max(1, localSize ?? 1))
    }
}

/// A NUL-terminated C character buffer as a String.
func string(fromCBuffer buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
