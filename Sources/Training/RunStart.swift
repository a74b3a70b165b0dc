// How every training command (train, distill, mil train) takes its run directory on the coordinator: one
// writer, stale temporaries removed, a resume checked before anything is loaded, the run's description
// rewritten only when it goes ahead, metrics after the checkpoint dropped.
import Foundation
import Layers
import TileShards

/// The coordinator's start of a run.
enum RunStart {
    /// Takes `run`'s lock (kept in the returned value), cleans, and resumes from the newest checkpoint of `store`
    /// into `model` and `optimizer` when `resume` (after `check` accepted its state), or refuses a fresh start over
    /// existing checkpoints; then calls `describe` (writes config.yaml and the run's description).
    static func begin(_ run: RunDirectory, store: CheckpointStore, resume: Bool, model: any Module, optimizer: Optimizer, parts: [CheckpointPart] = [],
                      check: (CheckpointState, URL) throws -> Void, describe: () throws -> Void) throws -> (RunLock, CheckpointState?, URL?) {
        // One writer per run directory, taken before anything in it is touched.
        let lock = try RunLock(run)
        run.removeStaleTemporaries()
        var state: CheckpointState?, checkpoint: URL?
        if resume, let latest = store.newest() {
            try check(try store.state(of: latest), latest)
            state = try store.load(latest, model: model, optimizer: optimizer, parts: parts)
            checkpoint = latest
        } else if !resume && !store.completeCheckpoints().isEmpty {
            throw TrainingError("\(store.directory.path) already holds checkpoints. Hint: pass --resume to continue that run, or choose another run.output.")
        } else {
            try refuseOverwritingResults(of: run, resume: resume)
        }
        // Only a run that is going ahead (re)writes its description: a refused resume leaves the old one intact.
        try describe()
        // Metrics lines after the checkpoint's step (all of them on a fresh start) belong to steps that will run again.
        try MetricsLog.truncate(run: run, after: state?.step ?? 0)
        return (lock, state, checkpoint)
    }

    /// A fresh start in `run` (no checkpoint to continue from) would overwrite an earlier run's results (kept
    /// weights, metrics with at least one step). Without --resume it is refused, naming them. With --resume (a run
    /// that died before its first checkpoint, requeued by a batch system) they are moved into
    /// `RUN/previous-TIME/` with a note, and the run starts over.
    static func refuseOverwritingResults(of run: RunDirectory, resume: Bool) throws {
        let fm = FileManager.default
        func hasSteps(_ url: URL, header: Bool) -> Bool {
            guard let text = try? String(contentsOf: url, encoding: .utf8) else { return false }
            return text.split(separator: "\n").count > (header ? 1 : 0)
        }
        let found = [run.bestWeights, run.bestBackbone].filter { fm.fileExists(atPath: $0.path) }
            + [run.metricsJSONL].filter { hasSteps($0, header: false) } + [run.metricsCSV].filter { hasSteps($0, header: true) }
        guard !found.isEmpty else { return }
        let names = found.map(\.lastPathComponent).joined(separator: ", ")
        guard resume else {
            throw TrainingError("\(run.url.path) holds an earlier run's results (\(names)) but no checkpoint to continue; starting here would overwrite them. "
                + "Hint: pass --resume to start this run over (they are moved to a previous-* folder), choose another run.output (or --runs-dir), or move them away.")
        }
        let stamp = ISO8601DateFormatter().string(from: Date()).replacingOccurrences(of: ":", with: "")
        let aside = run.url.appendingPathComponent("previous-\(stamp)")
        do {
            try fm.createDirectory(at: aside, withIntermediateDirectories: true)
            for url in found { try fm.moveItem(at: url, to: aside.appendingPathComponent(url.lastPathComponent)) }
        } catch {
            throw TrainingError("\(run.url.path): cannot move the earlier results (\(names)) aside into \(aside.path) (\(fileErrorReason(error))). Hint: check that the run directory is writable.")
        }
        FileHandle.standardError.write(Data("note: \(run.url.path) had no checkpoint to resume from: starting over; the earlier results (\(names)) were moved to \(aside.path)\n".utf8))
    }

    /// Refuses a resume whose seed or `mustMatch` config keys differ from the checkpoint's, or whose training data
    /// (`identity`) is another; `hint` ends each message.
    static func checkConfig(_ state: CheckpointState, checkpoint: URL, config: RunConfig, command: TrainingCommand, identity: TrainingDataIdentity?,
                            run: RunDirectory) throws {
        let hint = "Hint: resume with the settings and data the run was trained with (they are in \(run.config.path)), or start a new run with another run.output."
        guard state.seed == config.seed else {
            throw TrainingError("\(checkpoint.path): written by a run with seed \(state.seed), this config has \(config.seed). \(hint)")
        }
        // The checkpoint's config is what the resume is checked against: one that cannot be read is refused, not skipped.
        let stored: RunConfig
        do { stored = try RunConfig.parse(state.config, source: "config") } catch let e as ConfigError {
            throw TrainingError("\(checkpoint.appendingPathComponent("state.json").path): the run's config it holds cannot be read (\(e.message)), so the resume cannot be checked. \(CheckpointStore.olderCheckpointHint)")
        }
        let refused = ConfigKey.differences(stored: stored, current: config, by: command).refused
        if !refused.isEmpty {
            throw TrainingError("cannot resume \(run.url.path) with changed settings that alter the model, the data, the sample order or the objective: \(refused.joined(separator: "; ")) (checkpoint -> now). \(hint)")
        }
        if let trained = state.trainShards, let identity, trained != identity.value {
            throw TrainingError("cannot resume: the checkpoint was trained on \(identity.what) \(trained), but data.train (\(config.trainShards)) now holds \(identity.value). \(hint)")
        }
    }

    /// The coordinator's start of a run over slides (`mil train`, `finetune`): `begin` with the resume checked
    /// against the config and `identity` (its training data), the effective config written with a header naming
    /// `kind`, then `more` (further description files).
    static func beginSlideRun(_ run: RunDirectory, store: CheckpointStore, resume: Bool, model: any Module, optimizer: Optimizer,
                              parts: [CheckpointPart] = [], config: RunConfig, command: TrainingCommand, identity: TrainingDataIdentity, kind: String,
                              more: () throws -> Void = {}) throws -> (RunLock, CheckpointState?) {
        let (lock, state, _) = try begin(run, store: store, resume: resume, model: model, optimizer: optimizer, parts: parts, check: { s, url in
            try checkConfig(s, checkpoint: url, config: config, command: command, identity: identity, run: run)
        }, describe: {
            try CheckpointStore.writeAtomically(Data((RunDirectory.effectiveConfigHeader(kind: kind + " ") + run.relativized(config).yaml).utf8), to: run.config)
            try more()
        })
        return (lock, state)
    }

    /// The note a resume with changed "may change" settings prints (nil when nothing changed).
    static func changedSettingsNote(_ state: CheckpointState, config: RunConfig, command: TrainingCommand) -> String? {
        guard let stored = try? RunConfig.parse(state.config, source: "checkpoint") else { return nil }
        let (_, changed, moved) = ConfigKey.differences(stored: stored, current: config, by: command)
        if changed.isEmpty && moved.isEmpty { return nil }
        if changed.isEmpty {
            return "note: continuing with \(moved.joined(separator: "; ")): only where the run stops changes; its steps are those of an uninterrupted run"
        }
        return "note: continuing with changed settings (\((changed + moved).joined(separator: "; "))): the continuation is no longer bit-exact with an uninterrupted run"
    }

    /// Whether a step ends with a checkpoint: every `checkpoint_every` steps, at the end of the schedule or of this
    /// call, at each epoch end, and before a stop.
    static func checkpointDue(step: Int, config: RunConfig, totalSteps: Int, stopAt: Int, epochEnded: Bool, stopping: Bool) -> Bool {
        step % config.checkpointEvery == 0 || step == totalSteps || step == stopAt || epochEnded || stopping
    }
}

/// The training data's identity and what to call it in messages ("the shard set", "the feature set").
struct TrainingDataIdentity {
    let value: ShardSetIdentity
    let what: String
}
