// Random stanza ids: 18 random bytes as URL-safe base64 (24 characters), like mod_rest's.

public enum RandomID {
    public static func make() -> String {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(24)
        for _ in 0..<24 { out.append(alphabet[Int(generator.next(upperBound: UInt8(64)))]) }
        return String(decoding: out, as: UTF8.self)
    }
}
