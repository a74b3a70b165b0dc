// SIGTERM and SIGUSR1 (SLURM preemption and time limits, `kill`, mpirun's forwarding) ask a training run to
// write a checkpoint at the next step boundary and exit; the handler only records the signal.
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The stop request raised by SIGTERM or SIGUSR1.
public enum StopSignals {
    /// The last stop signal received, 0 for none. Lock-free, so the handler may store into it.
    static let received = Atomic<Int32>(0)

    /// Installs the handlers for SIGTERM and SIGUSR1 (idempotent). After this, those signals no longer kill
    /// the process: the training loop sees them at its next step boundary.
    public static func install() {
        received.store(0, ordering: .sequentiallyConsistent)   // initialise the static before any handler runs
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGTERM, SIGUSR1] {
            signal(s) { sig in StopSignals.received.store(sig, ordering: .relaxed) }
            sigaddset(&set, s)
        }
        // A launcher may hand down a mask that blocks them; threads started after this inherit the unblocked mask.
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    /// The signal that asked to stop, or nil.
    public static var pending: Int32? {
        let s = received.load(ordering: .relaxed)
        return s == 0 ? nil : s
    }

    /// "SIGTERM", "SIGUSR1", or "signal N".
    public static func name(_ s: Int32) -> String {
        switch s {
        case SIGTERM: return "SIGTERM"
        case SIGUSR1: return "SIGUSR1"
        case SIGINT: return "SIGINT"
        default: return "signal \(s)"
        }
    }
}
