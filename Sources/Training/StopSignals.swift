// SIGTERM and SIGUSR1 (SLURM preemption and time limits, `kill`, mpirun's forwarding) and Ctrl-C (SIGINT) ask a
// training run to write a checkpoint at the next step boundary and exit; the handler only records the signal.
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The stop request raised by SIGTERM, SIGUSR1 or SIGINT.
public enum StopSignals {
    /// The last stop signal received, 0 for none. Lock-free, so the handler may store into it.
    static let received = Atomic<Int32>(0)
    /// True once a training loop runs (`arm`): before that (reading the config, the data, the teacher) there is
    /// nothing to checkpoint, and a stop signal ends the process at once instead of waiting for a first step.
    static let armed = Atomic<Bool>(false)

    /// Called when a training loop starts: from now on a stop signal waits for the next step boundary.
    public static func arm() { armed.store(true, ordering: .sequentiallyConsistent) }

    /// Ends the process for `sig` when no loop runs yet (async-signal-safe).
    static func exitIfNotArmed(_ sig: Int32) {
        guard !armed.load(ordering: .relaxed) else { return }
        let note: StaticString = "\nstopped by a signal before training started: nothing to checkpoint yet\n"
        _ = write(2, note.utf8Start, note.utf8CodeUnitCount)
        _exit(128 + sig)
    }

    /// Installs the handlers for SIGTERM, SIGUSR1 and SIGINT (idempotent). After this, those signals no longer kill
    /// the process: the training loop sees them at its next step boundary (a second SIGINT exits with 130).
    public static func install() {
        received.store(0, ordering: .sequentiallyConsistent)   // initialise the statics before any handler runs
        armed.store(false, ordering: .sequentiallyConsistent)
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGTERM, SIGUSR1] {
            signal(s) { sig in
                StopSignals.exitIfNotArmed(sig)
                StopSignals.received.store(sig, ordering: .relaxed)
            }
            sigaddset(&set, s)
        }
        // Ctrl-C stops the same way (a checkpoint, then exit 75), saying so at once; a second Ctrl-C quits at once
        // (status 130, the run resumes from its previous checkpoint). Only async-signal-safe calls in the handler.
        signal(SIGINT) { sig in
            StopSignals.exitIfNotArmed(sig)
            if StopSignals.received.load(ordering: .relaxed) == SIGINT {
                let quit: StaticString = "\nSIGINT again: quitting without a checkpoint (--resume continues from the last one)\n"
                _ = write(2, quit.utf8Start, quit.utf8CodeUnitCount)
                _exit(130)
            }
            StopSignals.received.store(sig, ordering: .relaxed)
            let note: StaticString = "\nSIGINT: writing a checkpoint after this step, then stopping (Ctrl-C again quits at once)\n"
            _ = write(2, note.utf8Start, note.utf8CodeUnitCount)
        }
        sigaddset(&set, SIGINT)
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
