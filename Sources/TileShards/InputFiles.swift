// The files a command has read as its inputs, so that none of its outputs can replace one of them.
import Foundation
import Synchronization

/// Every file this process has opened as an input (shards, weights, feature files, metrics, configs), by its
/// resolved path. Output writers refuse a path in this set (`histodistill evaluate --output RUN/best.safetensors`
/// would otherwise replace the weights it just evaluated).
public enum InputFiles {
    private static let paths = Mutex<Set<String>>([])

    /// The path `url` names after resolving `.`/`..` and symbolic links.
    static func canonical(_ url: URL) -> String { url.standardizedFileURL.resolvingSymlinksInPath().path }

    /// Records `url` as read by this process.
    public static func note(_ url: URL) {
        let path = canonical(url)
        paths.withLock { _ = $0.insert(path) }
    }

    /// True when `url` is (resolves to) a file this process has read as an input.
    public static func contains(_ url: URL) -> Bool {
        let path = canonical(url)
        return paths.withLock { $0.contains(path) }
    }
}

/// A file operation's failure in a user's words: Foundation's common file error codes ("permission denied"), else
/// the POSIX reason ("File too large", "No space left on device") under Foundation's error, else its description.
public func fileErrorReason(_ error: Error) -> String {
    let ns = error as NSError
    // A directory given where a file is read: Foundation says only "error 256" (fileReadUnknown).
    let path = ns.userInfo[NSFilePathErrorKey] as? String ?? (ns.userInfo[NSURLErrorKey] as? URL)?.path
    var isDirectory: ObjCBool = false
    if let path, FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
        return "it is a directory; a file was expected here"
    }
    if ns.domain == NSCocoaErrorDomain {
        switch CocoaError.Code(rawValue: ns.code) {
        case .fileWriteFileExists: return "a file of that name is in the way (a directory was expected, or the name is taken)"
        case .fileNoSuchFile, .fileReadNoSuchFile: return "no such file or directory"
        case .fileReadNoPermission, .fileWriteNoPermission: return "permission denied"
        case .fileWriteOutOfSpace: return "no space left on the device"
        case .fileWriteVolumeReadOnly: return "the file system is read-only"
        default: break
        }
    }
    if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
        return String(cString: strerror(Int32(underlying.code)))
    }
    if ns.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(ns.code))) }
    return ns.localizedDescription
}

/// Why a JSON file could not be decoded, in a user's words: the missing or mistyped key by its path
/// ("the key 'cursor.epoch' is missing"), "not valid JSON", or the file error's reason; never the DecodingError dump.
/// `data` (the bytes decoded) tells valid JSON with a value that fits no field from JSON that is not valid.
public func decodingReason(_ error: Error, data: Data? = nil) -> String {
    func path(_ keys: [CodingKey]) -> String {
        keys.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().trimmingCharacters(in: CharacterSet(charactersIn: "."))
    }
    func at(_ keys: [CodingKey]) -> String { keys.isEmpty ? "the file's top level" : "'\(path(keys))'" }
    switch error {
    case DecodingError.keyNotFound(let key, let context): return "the key '\(path(context.codingPath + [key]))' is missing"
    case DecodingError.typeMismatch(let type, let context): return "\(at(context.codingPath)) is not \(jsonKind(type))"
    case DecodingError.valueNotFound(let type, let context): return "\(at(context.codingPath)) is null where \(jsonKind(type)) is needed"
    case DecodingError.dataCorrupted(let context):
        // Foundation reports a number that fits no field ("Parsed JSON number <2.5> does not fit in Int.") this way too.
        if context.debugDescription.contains("number") { return "\(at(context.codingPath)): \(context.debugDescription)" }
        if context.codingPath.isEmpty, let data, (try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])) != nil {
            // Foundation on Linux reports a number that fits no field (2.5 for a whole number, 1e30) as invalid JSON.
            return "a value does not fit its field (a fraction or a huge number where a whole number belongs?)"
        }
        return context.codingPath.isEmpty ? "not valid JSON" : "\(at(context.codingPath)) holds an invalid value"
    default: return fileErrorReason(error)
    }
}

/// A Swift type as JSON calls its values ("a number", "a string").
private func jsonKind(_ type: Any.Type) -> String {
    switch type {
    case is any BinaryInteger.Type, is any BinaryFloatingPoint.Type: return "a number"
    case is String.Type: return "a string"
    case is Bool.Type: return "true or false"
    default: return String(describing: type).hasPrefix("Array") ? "a list" : "an object"
    }
}
