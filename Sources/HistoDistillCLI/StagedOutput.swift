// Replacing a set of files in an output directory (a shard set, a feature set) as a whole, so that a failed or
// interrupted write never leaves the old set damaged or half-replaced.
import Foundation
import TileShards
#if canImport(Glibc)
import Glibc
#endif

/// A new set of files written into `staging` (a hidden directory beside `final`) and swapped into `final` by
/// `commit`: the old directory's other files are copied beside the new set, the old directory is renamed aside,
/// the staging one renamed into place, then the old one removed. A crash between the two renames leaves both
/// sets, each complete, under their names; a failure before `commit` leaves `final` as it was.
struct StagedOutput {
    let final: URL
    let staging: URL
    /// Names of `final`'s files that belong to the set being replaced (not copied beside the new set).
    let isSetFile: (String) -> Bool

    /// `tag` names the staging directory (`.NAME.TAG`): a process id for a one-process writer, or a fixed word for
    /// several ranks writing into one staging directory (a stale one of an interrupted run is removed by `prepare`).
    init(final: URL, tag: String, isSetFile: @escaping (String) -> Bool) {
        // A symbolic link (features -> /scratch/...) is followed: the set is replaced where it lives, the link kept.
        self.final = final.standardizedFileURL.resolvingSymlinksInPath()
        staging = self.final.deletingLastPathComponent().appendingPathComponent(".\(self.final.lastPathComponent).\(tag)")
        self.isSetFile = isSetFile
    }

    /// Creates an empty staging directory (removing a stale one).
    func prepare() throws {
        let fm = FileManager.default
        try? fm.removeItem(at: staging)
        do { try fm.createDirectory(at: staging, withIntermediateDirectories: true) } catch {
            throw CLIError("\(staging.path): cannot be created (\(fileErrorReason(error)))", hint: "choose an output path in a writable directory")
        }
    }

    /// Puts the staged set in place of `final` (created when it does not exist).
    func commit() throws {
        let fm = FileManager.default
        guard fm.fileExists(atPath: final.path) else {
            guard rename(staging.path, final.path) == 0 else { throw placeError() }
            return
        }
        // Other files move with the set; a lock file belongs to the directory its holder opened and stays.
        for name in try fm.contentsOfDirectory(atPath: final.path) where !isSetFile(name) && name != ".lock" && !fm.fileExists(atPath: staging.appendingPathComponent(name).path) {
            try fm.copyItem(at: final.appendingPathComponent(name), to: staging.appendingPathComponent(name))
        }
        let old = final.deletingLastPathComponent().appendingPathComponent(".\(final.lastPathComponent).old-\(getpid())")
        guard rename(final.path, old.path) == 0 else { throw placeError() }
        guard rename(staging.path, final.path) == 0 else {
            let error = placeError()
            _ = rename(old.path, final.path)
            throw error
        }
        try fm.removeItem(at: old)
    }

    /// Removes the staging directory (after a failure).
    func discard() { try? FileManager.default.removeItem(at: staging) }

    private func placeError() -> CLIError {
        CLIError("\(final.path): cannot put the new set in place (\(String(cString: strerror(errno)))); it is in \(staging.path)",
                 hint: "move it into place by hand, or write into an empty directory")
    }
}
