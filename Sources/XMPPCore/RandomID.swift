// Random stanza ids: 24 characters of URL-safe base64 (144 random bits), like mod_rest's.

#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif
import Synchronization

package enum RandomID {
    /// Random bytes fetched from the kernel 4 KiB at a time: one read of /dev/urandom per 170 ids instead of
    /// 24 `getrandom` calls per id (`SystemRandomNumberGenerator` makes a system call per number; at thousands
    /// of replies a second that was 2% of stanzad's CPU).
    private struct Pool: ~Copyable {
        var bytes = [UInt8](repeating: 0, count: 4096)
        var next = 4096
        var source: Int32 = -1

        mutating func take(_ count: Int) -> ArraySlice<UInt8> {
            if next + count > bytes.count {
                if source < 0 { source = open("/dev/urandom", O_RDONLY | O_CLOEXEC) }
                bytes.withUnsafeMutableBytes { buffer in
                    var generator = SystemRandomNumberGenerator()
                    var filled = 0
                    while filled < buffer.count {
                        let got = source < 0 ? -1 : read(source, buffer.baseAddress.map { $0 + filled }, buffer.count - filled)
                        if got > 0 {
                            filled += got
                        } else if got < 0 && errno == EINTR {
                            continue
                        } else {
                            // No /dev/urandom (an unusual sandbox): the standard generator.
                            for index in filled..<buffer.count { buffer[index] = generator.next() }
                            filled = buffer.count
                        }
                    }
                }
                next = 0
            }
            defer { next += count }
            return bytes[next..<(next + count)]
        }
    }

    private static let pool = Mutex(Pool())
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    package static func make() -> String {
        pool.withLock { pool in
            let random = pool.take(24)
            // Written straight into the string's storage: `String(decoding:)` over a lazy map went through the
            // generic, non-contiguous path (dynamic casts included), 2% of a webhook echo's CPU for two ids.
            return String(unsafeUninitializedCapacity: 24) { text in
                alphabet.withUnsafeBufferPointer { symbols in
                    // 64 symbols: the low six bits of a uniform byte are uniform.
                    for (index, byte) in zip(text.indices, random) { text[index] = symbols[Int(byte & 63)] }
                }
                return 24
            }
        }
    }
}
