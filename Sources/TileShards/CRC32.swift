// CRC-32 (IEEE 802.3 polynomial, reflected, as in zlib) for shard frames, index and metadata.
import CKernels

/// CRC-32 as computed by zlib's `crc32` (it is zlib's: `crc32_z`).
public enum CRC32 {
    /// The CRC of `count` bytes at `p`, continuing from `crc` (0 to start).
    public static func checksum(_ p: UnsafeRawPointer, count: Int, crc: UInt32 = 0) -> UInt32 {
        hd_crc32(crc, p, count)
    }

    /// The CRC of a byte array.
    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { hd_crc32(0, $0.baseAddress, $0.count) }
    }
}
