// A JSON value for the stanza mapping (SPEC §7): parsed with Foundation's JSONDecoder, written compactly
// with sorted keys so the same value always gives the same bytes.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A JSON value. Integers that fit in `Int64` stay `.int`; other numbers are `.double`.
public enum JSONValue: Hashable, Sendable {
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
    /// Parses UTF-8 JSON text. Any JSON value is accepted at the top level. `true`/`false` never come out
    /// as numbers nor numbers as booleans; a number with an exact `Int64` value (`3`, `3.0`, `3e0`) is `.int`.
    public static func parse(_ bytes: some Collection<UInt8>) throws(JSONMappingError) -> JSONValue {
        let data = Data(bytes)
        do {
            return try JSONDecoder().decode(JSONValue.self, from: data)
        } catch {
            throw JSONMappingError(.invalidJSON, Self.parseFailure(data, error))
        }
    }

    /// Parses JSON text held in a string.
    public static func parse(_ string: String) throws(JSONMappingError) -> JSONValue {
        try parse(string.utf8)
    }

    /// Foundation says only "not valid JSON"; name the common causes it cannot tell apart.
    private static func parseFailure(_ data: Data, _ error: any Error) -> String {
        if data.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }) {
            return "invalid JSON: the input is empty"
        }
        if String(validating: data, as: UTF8.self) == nil {
            return "invalid JSON: the input is not valid UTF-8"
        }
        if case DecodingError.dataCorrupted(let context) = error {
            if context.debugDescription == badNumber {
                let at = context.codingPath.isEmpty ? "" : " at \(path(context.codingPath))"
                return "invalid JSON: the number\(at) is malformed or too large for a double"
            }
            if context.codingPath.isEmpty {
                return "invalid JSON: the input is not well-formed JSON text (check quotes, commas, brackets, "
                    + "escapes and number syntax; nesting is limited to 512 levels)"
            }
        }
        return "invalid JSON: \(error)"
    }

    private static let badNumber = "unrepresentable number"

    /// `$.a[2].b` for a coding path.
    private static func path(_ keys: [any CodingKey]) -> String {
        var out = "$"
        for key in keys {
            if let index = key.intValue { out += "[\(index)]" } else { out += "." + key.stringValue }
        }
        return out
    }

    /// Compact JSON text: no whitespace, object keys sorted by their UTF-8 bytes, control characters
    /// (and U+2028/U+2029) escaped, other characters as UTF-8. Non-finite doubles, which JSON cannot
    /// carry, are written as `null`.
    public func serialized() -> String {
        var out = ""
        write(into: &out)
        return out
    }

    /// The UTF-8 bytes of `serialized()`.
    public func serializedBytes() -> [UInt8] { Array(serialized().utf8) }

    private func write(into out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let value): out += value ? "true" : "false"
        case .int(let value): out += String(value)
        case .double(let value):
            // `description` is the shortest form that reads back exactly, and is valid JSON for finite values.
            out += value.isFinite ? value.description : "null"
        case .string(let value): Self.writeString(value, into: &out)
        case .array(let values):
            out += "["
            for (index, value) in values.enumerated() {
                if index > 0 { out += "," }
                value.write(into: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            let keys = members.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
            for (index, key) in keys.enumerated() {
                if index > 0 { out += "," }
                Self.writeString(key, into: &out)
                out += ":"
                members[key]?.write(into: &out)
            }
            out += "}"
        }
    }

    private static func writeString(_ string: String, into out: inout String) {
        out += "\""
        var scalars = String.UnicodeScalarView()
        for scalar in string.unicodeScalars {
            switch scalar.value {
            case 0x22: scalars.append(contentsOf: #"\""#.unicodeScalars)
            case 0x5C: scalars.append(contentsOf: #"\\"#.unicodeScalars)
            case 0x0A: scalars.append(contentsOf: #"\n"#.unicodeScalars)
            case 0x0D: scalars.append(contentsOf: #"\r"#.unicodeScalars)
            case 0x09: scalars.append(contentsOf: #"\t"#.unicodeScalars)
            case 0x08: scalars.append(contentsOf: #"\b"#.unicodeScalars)
            case 0x0C: scalars.append(contentsOf: #"\f"#.unicodeScalars)
            case 0..<0x20, 0x7F, 0x2028, 0x2029:
                let hex = String(scalar.value, radix: 16)
                scalars.append(contentsOf: ("\\u" + String(repeating: "0", count: 4 - hex.count) + hex).unicodeScalars)
            default: scalars.append(scalar)
            }
        }
        out += String(scalars)
        out += "\""
    }
}

extension JSONValue: CustomStringConvertible {
    public var description: String { serialized() }
}

// MARK: Codable

extension JSONValue: Codable {
    private struct MemberKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: any Decoder) throws {
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

    public func encode(to encoder: any Encoder) throws {
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
    public subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members[key] }
        return nil
    }

    /// The element at `index` of an array; nil when out of range or not an array.
    public subscript(index: Int) -> JSONValue? {
        if case .array(let values) = self, values.indices.contains(index) { return values[index] }
        return nil
    }

    public var isNull: Bool { self == .null }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    /// An `.int`, or a `.double` with an exact `Int64` value.
    public var intValue: Int64? {
        switch self {
        case .int(let value): value
        case .double(let value): Int64(exactly: value)
        default: nil
        }
    }

    /// A `.double`, or an `.int` as a double.
    public var doubleValue: Double? {
        switch self {
        case .double(let value): value
        case .int(let value): Double(value)
        default: nil
        }
    }

    public var arrayValue: [JSONValue]? {
        if case .array(let values) = self { return values }
        return nil
    }

    public var objectValue: [String: JSONValue]? {
        if case .object(let members) = self { return members }
        return nil
    }

    /// "a string", "an object", … for error messages.
    public var kindDescription: String {
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
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}
