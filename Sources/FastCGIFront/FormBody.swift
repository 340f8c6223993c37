// Text request bodies decoded strictly: the Content-Type's charset is honoured (UTF-8, ISO-8859-1, US-ASCII) or
// refused, and application/x-www-form-urlencoded is percent-decoded without guessing. Nothing is repaired
// silently: what cannot be read exactly is answered 400 (or 415 for a charset we do not read) with the reason.

import XMPPCore

/// The charset of a text body.
enum BodyCharset: Equatable {
    case utf8
    case latin1
    case ascii

    struct Unsupported: Error, Equatable {
        var name: String
    }

    /// From the `charset` parameter of a Content-Type; UTF-8 when there is none.
    static func of(contentType: String?) throws(Unsupported) -> BodyCharset {
        guard let contentType else { return .utf8 }
        for parameter in contentType.split(separator: ";").dropFirst() {
            let pair = parameter.split(separator: "=", maxSplits: 1)
            guard pair.count == 2, pair[0].trimmingWhitespace().lowercased() == "charset" else { continue }
            var value = pair[1].trimmingWhitespace()
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            switch value.lowercased() {
            case "utf-8", "utf8": return .utf8
            case "iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "iso_8859-1", "cp819", "ibm819": return .latin1
            case "us-ascii", "ascii": return .ascii
            default: throw Unsupported(name: value)
            }
        }
        return .utf8
    }

    /// The text of `bytes` in this charset, or a reason why they are not text in it.
    func decode(_ bytes: [UInt8]) -> Result<String, FormBody.Failure> {
        switch self {
        case .utf8:
            guard UTF8Validator.isValid(bytes) else { return .failure(FormBody.Failure("is not valid UTF-8")) }
            return .success(String(decoding: bytes, as: UTF8.self))
        case .latin1:
            // Every byte is a character: U+0000–U+00FF.
            var scalars = String.UnicodeScalarView()
            for byte in bytes { scalars.append(Unicode.Scalar(byte)) }
            return .success(String(scalars))
        case .ascii:
            guard bytes.allSatisfy({ $0 < 0x80 }) else { return .failure(FormBody.Failure("has bytes over 127, which US-ASCII does not have")) }
            return .success(String(decoding: bytes, as: UTF8.self))
        }
    }
}

/// application/x-www-form-urlencoded.
enum FormBody {
    struct Failure: Error, Equatable, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    /// Pairs `key=value` joined by `&` (the last of repeated keys wins); `+` is a space; `%XX` a byte of `charset`.
    /// An empty body is an empty form; a pair without `=`, an invalid escape or undecodable bytes are errors.
    static func decode(_ body: [UInt8], charset: BodyCharset) -> Result<[String: String], Failure> {
        var form: [String: String] = [:]
        guard !body.isEmpty else { return .success(form) }
        for (index, pair) in body.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: false).enumerated() {
            if pair.isEmpty { continue }  // "a=1&&b=2" and a trailing "&" carry no pair
            guard let equals = pair.firstIndex(of: UInt8(ascii: "=")) else {
                return .failure(Failure("pair \(index + 1) has no \"=\" (expected key=value&…)"))
            }
            let key: String
            let value: String
            switch component(pair[pair.startIndex..<equals], charset: charset, what: "key of pair \(index + 1)") {
            case .success(let text): key = text
            case .failure(let failure): return .failure(failure)
            }
            switch component(pair[pair.index(after: equals)...], charset: charset, what: "value of pair \(index + 1)") {
            case .success(let text): value = text
            case .failure(let failure): return .failure(failure)
            }
            form[key] = value
        }
        return .success(form)
    }

    private static func component(_ raw: ArraySlice<UInt8>, charset: BodyCharset, what: String) -> Result<String, Failure> {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(raw.count)
        var index = raw.startIndex
        while index < raw.endIndex {
            let byte = raw[index]
            if byte == UInt8(ascii: "%") {
                guard index + 2 < raw.endIndex,
                      let high = hexValue(raw[index + 1]), let low = hexValue(raw[index + 2])
                else {
                    let shown = String(decoding: raw[index..<min(index + 3, raw.endIndex)], as: UTF8.self)
                    return .failure(Failure("the \(what) has an invalid percent escape \"\(shown)\" (use %XX with two hex digits)"))
                }
                bytes.append(high << 4 | low)
                index += 3
            } else {
                bytes.append(byte == UInt8(ascii: "+") ? UInt8(ascii: " ") : byte)
                index += 1
            }
        }
        switch charset.decode(bytes) {
        case .success(let text): return .success(text)
        case .failure(let failure): return .failure(Failure("the \(what) \(failure.description)"))
        }
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

extension Substring {
    fileprivate func trimmingWhitespace() -> String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
