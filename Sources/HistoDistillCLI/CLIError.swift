// The error type the CLI turns into one clear line and a non-zero exit.
import ArgumentParser

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
