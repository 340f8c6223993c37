// A Sendable copy of a parsed TOML document, with the line of every key, so that every configuration
// error can say file:line.

import TOMLKit

/// A TOML value.
indirect enum ConfigValue: Sendable, Equatable {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case array([ConfigValue])
    case table(ConfigTable)
    case other(String)

    var typeName: String {
        switch self {
        case .string: "a string"
        case .int: "an integer"
        case .double: "a number"
        case .bool: "a boolean"
        case .array: "an array"
        case .table: "a table"
        case .other(let name): name
        }
    }
}

/// A TOML table: keys in document order, each with the line it was written on.
struct ConfigTable: Sendable, Equatable {
    var entries: [(key: String, value: ConfigValue, line: Int)]
    /// The line of the table's header (`[component]`), or of the key that holds it inline.
    var line: Int

    static func == (lhs: ConfigTable, rhs: ConfigTable) -> Bool {
        lhs.line == rhs.line && lhs.entries.count == rhs.entries.count
            && zip(lhs.entries, rhs.entries).allSatisfy { $0.key == $1.key && $0.value == $1.value && $0.line == $1.line }
    }

    subscript(key: String) -> ConfigValue? { entries.first { $0.key == key }?.value }
    func line(of key: String) -> Int { entries.first { $0.key == key }?.line ?? line }
}

/// A problem in the configuration, reported as `file:line: message`.
package struct ConfigError: Error, Hashable, Sendable, CustomStringConvertible {
    package var file: String
    package var line: Int
    package var message: String

    package var description: String { "\(file):\(line): \(message)" }
}

/// Several configuration errors at once (every problem is reported, not just the first).
package struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    package var errors: [ConfigError]
    package var description: String { errors.map(\.description).joined(separator: "\n") }
}

enum ConfigDocument {
    /// Parses TOML text into a table with line numbers.
    static func parse(_ text: String, file: String) throws(ConfigErrors) -> ConfigTable {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigErrors(errors: [ConfigError(file: file, line: error.source.begin.line, message: "TOML syntax error: \(error.description)")])
        } catch {
            throw ConfigErrors(errors: [ConfigError(file: file, line: 1, message: "TOML syntax error: \(error)")])
        }
        let lines = KeyLineIndex(text: text)
        return convert(table, path: [], line: 1, lines: lines)
    }

    private static func convert(_ table: TOMLTable, path: [String], line: Int, lines: KeyLineIndex) -> ConfigTable {
        var entries: [(key: String, value: ConfigValue, line: Int)] = []
        for key in table.keys {
            guard let value = table[key] else { continue }
            let keyLine = lines.line(path: path, key: key) ?? lines.headerLine(path: path + [key])
                ?? lines.headerLine(path: path + [key + "#0"]) ?? line
            entries.append((key, convert(value, path: path + [key], line: keyLine, lines: lines), keyLine))
        }
        entries.sort { $0.line < $1.line }
        return ConfigTable(entries: entries, line: lines.headerLine(path: path) ?? line)
    }

    private static func convert(_ value: any TOMLValueConvertible, path: [String], line: Int, lines: KeyLineIndex) -> ConfigValue {
        switch value.type {
        case .string: return .string(value.string ?? "")
        case .int: return .int(value.int ?? 0)
        case .double: return .double(value.double ?? 0)
        case .bool: return .bool(value.bool ?? false)
        case .table:
            guard let table = value.table else { return .other("a table") }
            return .table(convert(table, path: path, line: line, lines: lines))
        case .array:
            guard let array = value.array else { return .other("an array") }
            var items: [ConfigValue] = []
            for (index, item) in array.enumerated() {
                // Arrays of tables ([[route]]) are indexed as "route#0", "route#1", ….
                var itemPath = path
                itemPath[itemPath.count - 1] += "#\(index)"
                let itemLine = lines.headerLine(path: itemPath) ?? line
                items.append(convert(item, path: itemPath, line: itemLine, lines: lines))
            }
            return .array(items)
        default:
            return .other("a date or time")
        }
    }
}

/// Finds the line of each key and table header by scanning the text (TOMLKit keeps no positions for values).
/// Understands `[a]`, `[a.b]`, `[[a]]` headers and `key = value` lines; keys inside multi-line arrays or
/// inline tables are attributed to the line of the key that holds them.
struct KeyLineIndex {
    private var keys: [String: Int] = [:]
    private var headers: [String: Int] = [:]

    init(text: String) {
        var current: [String] = []
        var arrayCounts: [String: Int] = [:]
        var depth = 0
        for (offset, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let lineNumber = offset + 1
            let line = Self.stripComment(String(rawLine)).trimmingCharacters()
            if depth > 0 {
                depth += Self.bracketBalance(line)
                continue
            }
            if line.hasPrefix("[[") && line.hasSuffix("]]") {
                let name = String(line.dropFirst(2).dropLast(2)).trimmingCharacters()
                let parts = Self.splitKey(name)
                let joined = parts.joined(separator: ".")
                let index = arrayCounts[joined, default: 0]
                arrayCounts[joined] = index + 1
                current = parts
                current[current.count - 1] += "#\(index)"
                headers[current.joined(separator: ".")] = lineNumber
                continue
            }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                current = Self.splitKey(String(line.dropFirst().dropLast()).trimmingCharacters())
                headers[current.joined(separator: ".")] = lineNumber
                continue
            }
            guard let equals = Self.keyEnd(line) else { continue }
            let keyParts = Self.splitKey(String(line[..<equals]).trimmingCharacters())
            guard !keyParts.isEmpty else { continue }
            var full = current
            for part in keyParts.dropLast() {
                full.append(part)
                if headers[full.joined(separator: ".")] == nil { headers[full.joined(separator: ".")] = lineNumber }
            }
            keys[(current + keyParts).joined(separator: ".")] = lineNumber
            depth = Self.bracketBalance(String(line[line.index(after: equals)...]))
            if depth < 0 { depth = 0 }
        }
    }

    func line(path: [String], key: String) -> Int? { keys[(path + [key]).joined(separator: ".")] }
    func headerLine(path: [String]) -> Int? { path.isEmpty ? nil : headers[path.joined(separator: ".")] ?? keys[path.joined(separator: ".")] }

    /// The index of the `=` that ends a key, outside quotes.
    private static func keyEnd(_ line: String) -> String.Index? {
        var found: String.Index?
        forEachUnquoted(line) { index, c in
            if c == "=" { found = index }
            return found == nil
        }
        return found
    }

    private static func splitKey(_ key: String) -> [String] {
        var parts: [String] = []
        var current = ""
        var quote: Character?
        for c in key {
            if let q = quote {
                if c == q { quote = nil } else { current.append(c) }
            } else if c == "\"" || c == "'" {
                quote = c
            } else if c == "." {
                parts.append(current.trimmingCharacters())
                current = ""
            } else {
                current.append(c)
            }
        }
        parts.append(current.trimmingCharacters())
        return parts.filter { !$0.isEmpty }
    }

    /// Open minus closed brackets and braces outside strings.
    private static func bracketBalance(_ text: String) -> Int {
        var balance = 0
        forEachUnquoted(text) { _, c in
            if c == "[" || c == "{" { balance += 1 } else if c == "]" || c == "}" { balance -= 1 }
            return true
        }
        return balance
    }

    private static func stripComment(_ line: String) -> String {
        var end = line.endIndex
        forEachUnquoted(line) { index, c in
            if c == "#" { end = index }
            return c != "#"
        }
        return String(line[..<end])
    }

    /// Calls `body` with each character outside '…' and "…" strings until it returns false.
    private static func forEachUnquoted(_ text: String, _ body: (String.Index, Character) -> Bool) {
        var quote: Character?
        for index in text.indices {
            let c = text[index]
            if let q = quote {
                if c == q { quote = nil }
            } else if c == "\"" || c == "'" {
                quote = c
            } else if !body(index, c) {
                return
            }
        }
    }
}

extension String {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\t" || c == "\r" { s.removeFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "\r" { s.removeLast() }
        return String(s)
    }
}
