// The `histodistill` command line: the root command and its subcommands.
import ArgumentParser
import Foundation
import TensorCore

/// The program's version, reported by `--version` and written into run directories.
let histodistillVersion = "0.1.0"

@main
struct HistoDistill: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "histodistill",
        abstract: "Resolution-based self-supervised knowledge distillation for histology tiles on CPU clusters.",
        discussion: "OpenBLAS kernels: when the loaded OpenBLAS would use an older kernel family than this CPU supports (and OPENBLAS_CORETYPE is not set), histodistill restarts itself once with the best family the library has, checks its GEMM against a reference, and falls back when it is wrong; `histodistill doctor` says what was chosen. HISTODISTILL_AUTO_CORETYPE=0 turns this off.",
        version: histodistillVersion,
        subcommands: [Doctor.self, Synth.self, Pack.self, Train.self, Distill.self, Evaluate.self, Predict.self, Report.self, Inspect.self, Verify.self, Stats.self, Export.self, Cost.self, ConfigKeys.self, Extract.self, MIL.self, FineTune.self, CKACommand.self, BenchStep.self, BenchPipeline.self, CheckpointWriter.self, StopProbe.self])

    /// Chooses OpenBLAS's kernels (restarting the process when needed), then runs the command.
    static func main() {
        KernelStartup.run()
        // A write past the file-size limit (ulimit -f, a batch system's limit) fails with EFBIG and is reported,
        // naming the file, by the code that writes it; by default SIGXFSZ would end the process without a word.
        signal(SIGXFSZ, SIG_IGN)
        do {
            var command = try parseAsRoot(joiningNegativeValues(Array(CommandLine.arguments.dropFirst())))
            try command.run()
        } catch {
            exit(withError: userFacing(error))
        }
    }
}

/// `--option -1` as `--option=-1`: the argument parser reads a lone `-1` as a short flag, so a negative number given
/// to a numeric option failed as "missing value"; joined, it reaches the option's own check ("must be at least 1,
/// got -1"). Only a value that starts like a negative number ("-1", "-0.5,0.1,0.2") after a `--long` option without
/// `=`, or after a short option (`-o -4` as `-o=-4`: every short option of this tool takes a value), is joined, and
/// nothing after `--`.
func joiningNegativeValues(_ arguments: [String]) -> [String] {
    var out: [String] = []
    for (i, a) in arguments.enumerated() {
        if a == "--" { return out + arguments[i...] }   // after "--" every argument is a positional value, as it is
        // A `--long` option without "=", or a short one (`-o`: every short option here takes a value; not -h).
        let takesValue = { (o: String) in
            (o.hasPrefix("--") && o.count > 2 && !o.contains("=")) || (o.count == 2 && o.hasPrefix("-") && o != "-h" && o.last!.isLetter)
        }
        if let last = out.last, takesValue(last), a.hasPrefix("-"),
           let second = a.dropFirst().first, second.isNumber || second == "." {
            out[out.count - 1] = last + "=" + a
        } else {
            out.append(a)
        }
    }
    return out
}

/// Applies `KernelSelection`'s start-up decision: a restart replaces this process (same pid, arguments and other
/// environment; before MPI starts, so every rank under mpirun does the same).
enum KernelStartup {
    static func run() {
        let env = ProcessInfo.processInfo.environment
        var action = KernelSelection.decide(cpuBest: CPUCapabilities.current.bestOpenBLASCore, loaded: BLAS.coreName, env: env)
        if action == .keep && env[KernelSelection.autoVariable] == "1" && !KernelSelection.gemmSelfCheck() {
            action = .restart(["OPENBLAS_CORETYPE": nil, KernelSelection.autoVariable: "failed",
                               KernelSelection.reasonVariable: "the GEMM self-check failed with \(BLAS.coreName) kernels"])
        }
        guard case .restart(let variables) = action else { return }
        for (name, value) in variables {
            if let value { setenv(name, value, 1) } else { unsetenv(name) }
        }
        var argv: [UnsafeMutablePointer<CChar>?] = CommandLine.arguments.map { strdup($0) } + [nil]
        execv("/proc/self/exe", &argv)
        FileHandle.standardError.write(Data("warning: could not restart to choose OpenBLAS kernels (\(String(cString: strerror(errno)))); running with \(BLAS.coreName) kernels\n".utf8))
    }
}
