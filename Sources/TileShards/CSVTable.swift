// CSV in and out through yaslab/CSV.swift (RFC 4180): quoted fields, CRLF or LF, a UTF-8 byte-order mark.
import CSV
import Foundation

/// Reading and writing CSV files the way spreadsheets and pandas do.
public enum CSVTable {
    /// The records of the CSV file at `url`: fields unquoted, CRLF and LF line ends, a leading UTF-8 BOM skipped.
    /// Records whose first field starts with `#` are comments and empty lines are skipped; each record comes with its
    /// number (1-based, counting every record of the file). Throws naming the file when it cannot be read or parsed.
    public static func read(_ url: URL) throws -> [(number: Int, fields: [String])] {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw ShardError("\(url.path): cannot be read (\(fileErrorReason(error))). Hint: check the path and permissions.")
        }
        guard var text = String(data: data, encoding: .utf8) else {
            throw ShardError("\(url.path): is not UTF-8 text. Hint: save it as CSV UTF-8.")
        }
        if text.hasPrefix("\u{FEFF}") { text.removeFirst() }
        let reader: CSVReader
        do { reader = try CSVReader(string: text, trimFields: true) } catch {
            throw ShardError("\(url.path): is not a readable CSV file (\(error)). Hint: save it as UTF-8 CSV.")
        }
        var records: [(Int, [String])] = []
        var n = 0
        while let row = reader.next() {
            n += 1
            if row.allSatisfy(\.isEmpty) || row.first?.hasPrefix("#") == true { continue }
            records.append((n, row))
        }
        if let error = reader.error {
            throw ShardError("\(url.path): is not valid CSV after record \(n) (\(error)). Hint: check quotes; a field with commas, quotes or line breaks must be in double quotes.")
        }
        return records
    }

    /// `header` and `rows` as CSV text (LF line ends; CSVWriter quotes fields with commas, quotes or line breaks).
    public static func text(header: [String], rows: [[String]]) -> String {
        let writer = try! CSVWriter(stream: .toMemory())
        do {
            try writer.write(row: header)
            for row in rows { try writer.write(row: row) }
        } catch {
            preconditionFailure("CSVTable: writing to memory failed: \(error)")
        }
        writer.stream.close()
        let data = writer.stream.property(forKey: .dataWrittenToMemoryStreamKey) as! Data
        return String(decoding: data, as: UTF8.self) + "\n"
    }

}
