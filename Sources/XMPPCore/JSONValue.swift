// A JSON value for the stanza mapping (SPEC §7): parsed by a small reader of its own (Foundation's JSONDecoder
// through Codable cost a tenth of stanzad's CPU per worker echo), written compactly with sorted keys so the same
// value always gives the same bytes.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A JSON value. Integers that fit in `Int64` stay `.int`; other numbers are `.double`.
package enum JSONValue: Hashable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])
}

// MARK: Parsing and writing

extension JSONValue {
    /// Parses UTF-8 JSON text (RFC 8259). Any JSON value is accepted at the top level. `true`/`false` never come out
    /// as numbers nor numbers as booleans; a number with an exact `Int64` value (`3`, `3.0`, `3e0`) is `.int`.
    /// Nesting is limited to 512 levels; a repeated object key keeps its last value.
    package static func parse(_ bytes: some Collection<UInt8>) throws(JSONMappingError) -> JSONValue {
        let result: Result<JSONValue, JSONMappingError>? = bytes.withContiguousStorageIfAvailable { buffer in
            Result { () throws(JSONMappingError) in try parse(buffer: buffer) }
        }
        if let result { return try result.get() }
        return try Array(bytes).withUnsafeBufferPointer { buffer throws(JSONMappingError) in try parse(buffer: buffer) }
    }

    /// Parses JSON text held in a string.
    package static func parse(_ string: String) throws(JSONMappingError) -> JSONValue {
        try parse(string.utf8)
    }

    private static func parse(buffer: UnsafeBufferPointer<UInt8>) throws(JSONMappingError) -> JSONValue {
        var reader = JSONReader(buffer)
        do throws(JSONReader.Failure) {
            reader.skipWhitespace()
            if reader.atEnd { throw JSONReader.Failure.empty }
            let value = try reader.value(depth: 0)
            reader.skipWhitespace()
            guard reader.atEnd else { throw JSONReader.Failure.syntax }
            return value
        } catch {
            throw JSONMappingError(.invalidJSON, error.message)
        }
    }

    /// Compact JSON text: no whitespace, object keys sorted by their UTF-8 bytes, control characters
    /// (and U+2028/U+2029, and U+FFFE/U+FFFF which XML cannot carry) escaped, other characters as UTF-8. Non-finite doubles, which JSON cannot
    /// carry, are written as `null`.
    package func serialized() -> String {
        String(decoding: serializedBytes(), as: UTF8.self)
    }

    /// The UTF-8 bytes of `serialized()`.
    package func serializedBytes() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(into: &out)
        return out
    }

    private func write(into out: inout [UInt8]) {
        switch self {
        case .null: out += "null".utf8
        case .bool(let value): out += (value ? "true" : "false").utf8
        case .int(let value): out += String(value).utf8
        case .double(let value):
            // `description` is the shortest form that reads back exactly, and is valid JSON for finite values.
            out += (value.isFinite ? value.description : "null").utf8
        case .string(let value): Self.writeString(value, into: &out)
        case .array(let values):
            out.append(UInt8(ascii: "["))
            for (index, value) in values.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                value.write(into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            let sorted = members.sorted { Self.bytesPrecede($0.key, $1.key) }
            for (index, member) in sorted.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                Self.writeString(member.key, into: &out)
                out.append(UInt8(ascii: ":"))
                member.value.write(into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// Byte order of the keys' UTF-8, compared in place.
    private static func bytesPrecede(_ a: String, _ b: String) -> Bool {
        let inPlace = a.utf8.withContiguousStorageIfAvailable { x in
            b.utf8.withContiguousStorageIfAvailable { y in
                for index in 0..<min(x.count, y.count) where x[index] != y[index] { return x[index] < y[index] }
                return x.count < y.count
            }
        }
        return (inPlace ?? nil) ?? a.utf8.lexicographicallyPrecedes(b.utf8)
    }

    private static func writeString(_ string: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var string = string
        string.makeContiguousUTF8()  // a no-op for native strings
        _ = string.utf8.withContiguousStorageIfAvailable { bytes in
            // Runs that need no escape are copied as they are. U+2028 and U+2029 are E2 80 A8 / E2 80 A9.
            var runStart = 0
            var index = 0
            while index < bytes.count {
                let byte = bytes[index]
                // An escape is a backslash and one letter, or \u and four hex digits; appended with no array made
                // for it (the `stanza` field alone has a quote to escape in every attribute).
                var letter: UInt8 = 0
                var scalar: UInt32 = 0
                var width = 1
                switch byte {
                case 0x22: letter = UInt8(ascii: "\"")
                case 0x5C: letter = UInt8(ascii: "\\")
                case 0x0A: letter = UInt8(ascii: "n")
                case 0x0D: letter = UInt8(ascii: "r")
                case 0x09: letter = UInt8(ascii: "t")
                case 0x08: letter = UInt8(ascii: "b")
                case 0x0C: letter = UInt8(ascii: "f")
                case 0..<0x20, 0x7F: scalar = UInt32(byte)
                case 0xE2 where index + 2 < bytes.count && bytes[index + 1] == 0x80 && (bytes[index + 2] == 0xA8 || bytes[index + 2] == 0xA9):
                    scalar = bytes[index + 2] == 0xA8 ? 0x2028 : 0x2029
                    width = 3
                case 0xEF where index + 2 < bytes.count && bytes[index + 1] == 0xBF && (bytes[index + 2] == 0xBE || bytes[index + 2] == 0xBF):
                    // U+FFFE and U+FFFF: valid in JSON, not in XML 1.0. Escaped, the text can travel inside a stanza
                    // (a `payload`, a `stanza` field) and still reads back as the same value.
                    scalar = bytes[index + 2] == 0xBE ? 0xFFFE : 0xFFFF
                    width = 3
                default:
                    index += 1
                    continue
                }
                out += UnsafeBufferPointer(rebasing: bytes[runStart..<index])
                out.append(UInt8(ascii: "\\"))
                if letter != 0 {
                    out.append(letter)
                } else {
                    appendHexEscape(scalar, into: &out)
                }
                index += width
                runStart = index
            }
            out += UnsafeBufferPointer(rebasing: bytes[runStart..<bytes.count])
        }
        out.append(UInt8(ascii: "\""))
    }

    /// What `init(from:)` says about a number token Foundation cannot represent.
    fileprivate static let badNumber = "unrepresentable number"

    /// `u` and four lower-case hex digits (after the backslash).
    private static func appendHexEscape(_ value: UInt32, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "u"))
        for shift: UInt32 in [12, 8, 4, 0] {
            let digit = UInt8((value >> shift) & 0xF)
            out.append(digit < 10 ? UInt8(ascii: "0") + digit : UInt8(ascii: "a") + digit - 10)
        }
    }
}

/// A recursive-descent reader over UTF-8 JSON text.
private struct JSONReader {
    static let maxDepth = 512

    enum Failure: Error {
        case empty
        case invalidUTF8
        case syntax
        case tooDeep
        /// A malformed or unrepresentable number; `path` is filled in (innermost first) as the error unwinds.
        case number(path: [String])

        var message: String {
            switch self {
            case .empty: "invalid JSON: the input is empty"
            case .invalidUTF8: "invalid JSON: the input is not valid UTF-8"
            case .syntax, .tooDeep:
                "invalid JSON: the input is not well-formed JSON text (check quotes, commas, brackets, escapes and "
                    + "number syntax; nesting is limited to \(JSONReader.maxDepth) levels)"
            case .number(let path):
                path.isEmpty
                    ? "invalid JSON: the number is malformed or too large for a double"
                    : "invalid JSON: the number at $\(path.reversed().joined()) is malformed or too large for a double"
            }
        }

        func inside(_ component: @autoclosure () -> String) -> Failure {
            if case .number(let path) = self { return .number(path: path + [component()]) }
            return self
        }
    }

    let bytes: UnsafeBufferPointer<UInt8>
    var index = 0

    init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    var atEnd: Bool { index >= bytes.count }

    mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    mutating func expect(_ literal: StaticString, _ value: JSONValue) throws(Failure) -> JSONValue {
        let count = literal.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw .syntax }
        for offset in 0..<count where bytes[index + offset] != literal.utf8Start[offset] { throw .syntax }
        index += count
        return value
    }

    mutating func value(depth: Int) throws(Failure) -> JSONValue {
        guard index < bytes.count else { throw .syntax }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): return try expect("true", .bool(true))
        case UInt8(ascii: "f"): return try expect("false", .bool(false))
        case UInt8(ascii: "n"): return try expect("null", .null)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw .syntax
        }
    }

    mutating func object(depth: Int) throws(Failure) -> JSONValue {
        guard depth <= Self.maxDepth else { throw .tooDeep }
        index += 1  // {
        var members: [String: JSONValue] = [:]
        skipWhitespace()
        if index < bytes.count && bytes[index] == UInt8(ascii: "}") {
            index += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw .syntax }
            let key = try string()
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw .syntax }
            index += 1
            skipWhitespace()
            do {
                members[key] = try value(depth: depth)
            } catch {
                throw error.inside("." + key)
            }
            skipWhitespace()
            guard index < bytes.count else { throw .syntax }
            if bytes[index] == UInt8(ascii: ",") {
                index += 1
                continue
            }
            guard bytes[index] == UInt8(ascii: "}") else { throw .syntax }
            index += 1
            return .object(members)
        }
    }

    mutating func array(depth: Int) throws(Failure) -> JSONValue {
        guard depth <= Self.maxDepth else { throw .tooDeep }
        index += 1  // [
        var values: [JSONValue] = []
        skipWhitespace()
        if index < bytes.count && bytes[index] == UInt8(ascii: "]") {
            index += 1
            return .array(values)
        }
        while true {
            skipWhitespace()
            do {
                values.append(try value(depth: depth))
            } catch {
                throw error.inside("[\(values.count)]")
            }
            skipWhitespace()
            guard index < bytes.count else { throw .syntax }
            if bytes[index] == UInt8(ascii: ",") {
                index += 1
                continue
            }
            guard bytes[index] == UInt8(ascii: "]") else { throw .syntax }
            index += 1
            return .array(values)
        }
    }

    /// A string starting at the opening quote. Runs without escapes are copied whole and validated as UTF-8 once.
    mutating func string() throws(Failure) -> String {
        index += 1  // "
        var decoded: [UInt8] = []
        var runStart = index
        while true {
            guard index < bytes.count else { throw .syntax }
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                let result: String
                if decoded.isEmpty {
                    guard let text = String(validating: UnsafeBufferPointer(rebasing: bytes[runStart..<index]), as: UTF8.self)
                    else { throw .invalidUTF8 }
                    result = text
                } else {
                    decoded += UnsafeBufferPointer(rebasing: bytes[runStart..<index])
                    guard let text = String(validating: decoded, as: UTF8.self) else { throw .invalidUTF8 }
                    result = text
                }
                index += 1
                return result
            }
            if byte < 0x20 { throw .syntax }  // control characters must be escaped
            if byte != UInt8(ascii: "\\") {
                index += 1
                continue
            }
            decoded += UnsafeBufferPointer(rebasing: bytes[runStart..<index])
            index += 1
            guard index < bytes.count else { throw .syntax }
            let escaped = bytes[index]
            index += 1
            switch escaped {
            case UInt8(ascii: "\""): decoded.append(0x22)
            case UInt8(ascii: "\\"): decoded.append(0x5C)
            case UInt8(ascii: "/"): decoded.append(0x2F)
            case UInt8(ascii: "b"): decoded.append(0x08)
            case UInt8(ascii: "f"): decoded.append(0x0C)
            case UInt8(ascii: "n"): decoded.append(0x0A)
            case UInt8(ascii: "r"): decoded.append(0x0D)
            case UInt8(ascii: "t"): decoded.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800..<0xDC00).contains(scalar) {
                    // A high surrogate must be followed by an escaped low one.
                    guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u")
                    else { throw .syntax }
                    index += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw .syntax }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00..<0xE000).contains(scalar) {
                    throw .syntax
                }
                guard let unicode = Unicode.Scalar(scalar) else { throw .syntax }
                decoded += UTF8.encode(unicode).map { Array($0) } ?? []
            default: throw .syntax
            }
            runStart = index
        }
    }

    mutating func hex4() throws(Failure) -> UInt32 {
        guard index + 4 <= bytes.count else { throw .syntax }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw .syntax
            }
            value = value << 4 | UInt32(digit)
            index += 1
        }
        return value
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`; a leading zero followed by a digit (`01`) is malformed.
    mutating func number() throws(Failure) -> JSONValue {
        let start = index
        var isInteger = true
        if bytes[index] == UInt8(ascii: "-") { index += 1 }
        func digits(_ reader: inout JSONReader) -> Int {
            let from = reader.index
            while reader.index < reader.bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(reader.bytes[reader.index]) {
                reader.index += 1
            }
            return reader.index - from
        }
        let integerStart = index
        let integerDigits = digits(&self)
        if integerDigits == 0 { throw start == index ? .syntax : .number(path: []) }
        if integerDigits > 1 && bytes[integerStart] == UInt8(ascii: "0") { throw .number(path: []) }
        if index < bytes.count && bytes[index] == UInt8(ascii: ".") {
            isInteger = false
            index += 1
            if digits(&self) == 0 { throw .number(path: []) }
        }
        if index < bytes.count && (bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E")) {
            isInteger = false
            index += 1
            if index < bytes.count && (bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-")) { index += 1 }
            if digits(&self) == 0 { throw .number(path: []) }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
        if isInteger, let value = Int64(text) { return .int(value) }
        guard let double = Double(text), double.isFinite else { throw .number(path: []) }
        if let exact = Int64(exactly: double) { return .int(exact) }
        return .double(double)
    }
}

extension JSONValue: CustomStringConvertible {
    package var description: String { serialized() }
}

// MARK: Codable

extension JSONValue: Codable {
    private struct MemberKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    package init(from decoder: any Decoder) throws {
        // Containers first, so that an error deep inside an array or object propagates as it is.
        if let container = try? decoder.container(keyedBy: MemberKey.self) {
            var members: [String: JSONValue] = [:]
            members.reserveCapacity(container.allKeys.count)
            for key in container.allKeys {
                members[key.stringValue] = try container.decode(JSONValue.self, forKey: key)
            }
            self = .object(members)
            return
        }
        if var container = try? decoder.unkeyedContainer() {
            var values: [JSONValue] = []
            if let count = container.count { values.reserveCapacity(count) }
            while !container.isAtEnd {
                values.append(try container.decode(JSONValue.self))
            }
            self = .array(values)
            return
        }
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .int(value)
        } else if let value = try? container.decode(Double.self) {
            self = .double(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else {
            // Foundation reads the token as a number but cannot represent it (`01`, `1e400`).
            throw DecodingError.dataCorrupted(
                DecodingError.Context(codingPath: decoder.codingPath, debugDescription: Self.badNumber))
        }
    }

    package func encode(to encoder: any Encoder) throws {
        switch self {
        case .null:
            var container = encoder.singleValueContainer()
            try container.encodeNil()
        case .bool(let value):
            var container = encoder.singleValueContainer()
            try container.encode(value)
        case .int(let value):
            var container = encoder.singleValueContainer()
            try container.encode(value)
        case .double(let value):
            var container = encoder.singleValueContainer()
            try container.encode(value)
        case .string(let value):
            var container = encoder.singleValueContainer()
            try container.encode(value)
        case .array(let values):
            var container = encoder.unkeyedContainer()
            for value in values { try container.encode(value) }
        case .object(let members):
            var container = encoder.container(keyedBy: MemberKey.self)
            for (key, value) in members { try container.encode(value, forKey: MemberKey(stringValue: key)) }
        }
    }
}

// MARK: Accessors

extension JSONValue {
    /// The member `key` of an object; nil for a missing key or a value that is not an object.
    package subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members[key] }
        return nil
    }

    /// The element at `index` of an array; nil when out of range or not an array.
    package subscript(index: Int) -> JSONValue? {
        if case .array(let values) = self, values.indices.contains(index) { return values[index] }
        return nil
    }

    package var isNull: Bool { self == .null }

    package var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    package var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    /// An `.int`, or a `.double` with an exact `Int64` value.
    package var intValue: Int64? {
        switch self {
        case .int(let value): value
        case .double(let value): Int64(exactly: value)
        default: nil
        }
    }

    /// A `.double`, or an `.int` as a double.
    package var doubleValue: Double? {
        switch self {
        case .double(let value): value
        case .int(let value): Double(value)
        default: nil
        }
    }

    package var arrayValue: [JSONValue]? {
        if case .array(let values) = self { return values }
        return nil
    }

    package var objectValue: [String: JSONValue]? {
        if case .object(let members) = self { return members }
        return nil
    }

    /// "a string", "an object", … for error messages.
    package var kindDescription: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .int: "an integer"
        case .double: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}

// MARK: Literals

extension JSONValue: ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByStringLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral
{
    package init(booleanLiteral value: Bool) { self = .bool(value) }
    package init(integerLiteral value: Int64) { self = .int(value) }
    package init(floatLiteral value: Double) { self = .double(value) }
    package init(stringLiteral value: String) { self = .string(value) }
    package init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    package init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}
