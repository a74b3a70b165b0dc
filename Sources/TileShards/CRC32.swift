// CRC-32 (IEEE 802.3 polynomial, reflected, as in zlib) for shard frames, index and metadata.

/// CRC-32 as computed by zlib's `crc32`, eight bytes per step ("slicing by 8").
public enum CRC32 {
    /// table[k][b]: the CRC of byte b followed by k zero bytes; table[0] is the classic byte table.
    static let tables: [UInt32] = {
        var t = [UInt32](repeating: 0, count: 8 * 256)
        for i in 0..<256 {
            var c = UInt32(i)
            for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
            t[i] = c
        }
        for i in 0..<256 {
            for k in 1..<8 { t[k * 256 + i] = (t[(k - 1) * 256 + i] >> 8) ^ t[Int(t[(k - 1) * 256 + i] & 0xFF)] }
        }
        return t
    }()

    /// The CRC of `count` bytes at `p`, continuing from `crc` (0 to start).
    public static func checksum(_ p: UnsafeRawPointer, count: Int, crc: UInt32 = 0) -> UInt32 {
        var c = ~crc
        tables.withUnsafeBufferPointer { tb in
            let t = tb.baseAddress!
            var i = 0
            while i + 8 <= count {
                let lo = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: i, as: UInt32.self)) ^ c
                let hi = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: i + 4, as: UInt32.self))
                c = t[7 * 256 + Int(lo & 0xFF)] ^ t[6 * 256 + Int((lo >> 8) & 0xFF)]
                    ^ t[5 * 256 + Int((lo >> 16) & 0xFF)] ^ t[4 * 256 + Int(lo >> 24)]
                    ^ t[3 * 256 + Int(hi & 0xFF)] ^ t[2 * 256 + Int((hi >> 8) & 0xFF)]
                    ^ t[256 + Int((hi >> 16) & 0xFF)] ^ t[Int(hi >> 24)]
                i += 8
            }
            let bytes = p.assumingMemoryBound(to: UInt8.self)
            while i < count {
                c = t[Int((c ^ UInt32(bytes[i])) & 0xFF)] ^ (c >> 8)
                i += 1
            }
        }
        return ~c
    }

    /// The CRC of a byte array.
    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0.baseAddress!, count: $0.count) }
    }
}
