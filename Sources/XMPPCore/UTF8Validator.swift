// Incremental UTF-8 validation across arbitrary chunk splits (RFC 3629: no overlongs, no surrogates,
// nothing above U+10FFFF).

package struct UTF8Validator: Sendable {
    private var need = 0
    private var lower: UInt8 = 0x80
    private var upper: UInt8 = 0xBF

    package init() {}

    /// Feeds bytes; false at the first byte that cannot continue a valid UTF-8 sequence.
    package mutating func feed(_ bytes: UnsafeRawBufferPointer) -> Bool {
        for byte in bytes {
            if need == 0 {
                if byte < 0x80 { continue }
                switch byte {
                case 0xC2...0xDF: need = 1
                case 0xE0: need = 2; lower = 0xA0
                case 0xE1...0xEC, 0xEE, 0xEF: need = 2
                case 0xED: need = 2; upper = 0x9F
                case 0xF0: need = 3; lower = 0x90
                case 0xF1...0xF3: need = 3
                case 0xF4: need = 3; upper = 0x8F
                default: return false
                }
            } else {
                guard byte >= lower && byte <= upper else { return false }
                lower = 0x80
                upper = 0xBF
                need -= 1
            }
        }
        return true
    }

    /// True when no multi-byte sequence is left open.
    package var isAtBoundary: Bool { need == 0 }

    /// Whether `bytes` is complete, valid UTF-8.
    package static func isValid(_ bytes: [UInt8]) -> Bool {
        var validator = UTF8Validator()
        return bytes.withUnsafeBytes { validator.feed($0) } && validator.isAtBoundary
    }
}
