// The error type the CLI turns into one clear line and a non-zero exit.
import ArgumentParser
import Foundation
import TileShards

/// A user-facing failure: what went wrong (naming the file, record or key) and a hint for the fix.
struct CLIError: Error, CustomStringConvertible {
    var message: String
    var hint: String?

    init(_ message: String, hint: String? = nil) {
        self.message = message
        self.hint = hint
    }

    var description: String { hint.map { "\(message)\nhint: \($0)" } ?? message }
}

/// `error` as a user would read it: Foundation's file errors (which otherwise print as
/// `Error Domain=NSCocoaErrorDomain Code=516 ...`) become one line naming the path and the reason, with a hint;
/// every other error is returned unchanged.
func userFacing(_ error: Error) -> Error {
    let ns = error as NSError
    guard ns.domain == NSCocoaErrorDomain || ns.domain == NSPOSIXErrorDomain else { return error }
    let path = (ns.userInfo[NSFilePathErrorKey] as? String) ?? (ns.userInfo[NSURLErrorKey] as? URL)?.path
    let reason = path.flatMap(pathProblem) ?? fileErrorReason(error)
    return CLIError("\(path ?? "a file"): \(reason)",
                    hint: "check the path: inputs must exist and be readable; outputs need a writable directory (not a file of the same name)")
}

/// What is wrong with `path` that a file error does not say: a file where a directory is needed on the way to it
/// (".../afile/sub"), or a directory where a file was expected; nil when neither.
func pathProblem(_ path: String) -> String? {
    let fm = FileManager.default
    var isDirectory: ObjCBool = false
    if fm.fileExists(atPath: path, isDirectory: &isDirectory) {
        return isDirectory.boolValue ? "is a directory where a file is expected" : nil
    }
    var parent = URL(fileURLWithPath: path).deletingLastPathComponent()
    while parent.path != "/" {
        if fm.fileExists(atPath: parent.path, isDirectory: &isDirectory) {
            return isDirectory.boolValue ? nil : "\(parent.path) is a file, so nothing can be created under it"
        }
        parent = parent.deletingLastPathComponent()
    }
    return nil
}
