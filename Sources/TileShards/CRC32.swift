// CRC-32 (IEEE 802.3 polynomial, reflected, as in zlib) for shard frames, index and metadata.

/// CRC-32 as computed by zlib's `crc32`.
public enum CRC32 {
    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// The CRC of `count` bytes at `p`, continuing from `crc` (0 to start).
    public static func checksum(_ p: UnsafeRawPointer, count: Int, crc: UInt32 = 0) -> UInt32 {
        var c = ~crc
        let bytes = p.assumingMemoryBound(to: UInt8.self)
        table.withUnsafeBufferPointer { t in
            for i in 0..<count { c = t[Int((c ^ UInt32(bytes[i])) & 0xFF)] ^ (c >> 8) }
        }
        return ~c
    }

    /// The CRC of a byte array.
    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0.baseAddress!, count: $0.count) }
    }
}
