// Lowercase hex SHA-1 for the XEP-0114 handshake.

import Crypto

enum SHA1Hex {
    static func digest(_ bytes: [UInt8]) -> String {
        let digest = Insecure.SHA1.hash(data: bytes)
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(40)
        for byte in digest {
            out.append(hex[Int(byte >> 4)])
            out.append(hex[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
