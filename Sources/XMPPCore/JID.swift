// XMPP addresses (RFC 7622 shape): parsing, validation, bare/full forms, glob matching.

/// Why a string is not a JID.
package struct JIDError: Error, Hashable, Sendable, CustomStringConvertible {
    package var reason: String
    package var input: String
    package var description: String { "invalid JID \(JID.quoted(input)): \(reason)" }
}

/// A validated JID. The domain is lower-cased; a trailing dot on it is removed.
package struct JID: Hashable, Sendable, CustomStringConvertible {
    package let localpart: String?
    package let domain: String
    package let resource: String?

    package static let maxPartBytes = 1023

    package init(_ string: String) throws(JIDError) {
        if let simple = Self.simpleASCII(string) {
            self = simple
            return
        }
        try self.init(checking: string)
    }

    /// The JID when `string` is one of the common shape: ASCII, valid, a domain already in lower case, without a
    /// trailing dot or an IP literal. Read in one pass over its bytes (every stanza's `to` and `from` are parsed
    /// to route it). nil: anything else, for `init(checking:)`, which also says what is wrong.
    static func simpleASCII(_ string: String) -> JID? {
        var string = string
        string.makeContiguousUTF8()  // a no-op for native strings
        return string.utf8.withContiguousStorageIfAvailable { bytes -> JID? in
            guard let (at, slash) = simpleShape(bytes) else { return nil }
            let count = bytes.count
            func part(_ range: Range<Int>) -> String { String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self) }
            return JID(uncheckedLocal: at > 0 ? part(0..<at) : nil, domain: part((at + 1)..<slash),
                       resource: slash < count ? part((slash + 1)..<count) : nil)
        } ?? nil
    }

    /// Whether `string` is a valid JID whose domain is `domain` (nil: any). The common shape (`simpleASCII`) is
    /// checked without building the JID's parts: every stanza stanzad sends has its `from` and `to` checked.
    package static func isValid(_ string: String, domain: String? = nil) -> Bool {
        var string = string
        string.makeContiguousUTF8()
        let simple = string.utf8.withContiguousStorageIfAvailable { bytes -> Bool? in
            guard let (at, slash) = simpleShape(bytes) else { return nil }
            guard let domain else { return true }
            return domain.utf8.elementsEqual(UnsafeBufferPointer(rebasing: bytes[(at + 1)..<slash]))
        } ?? nil
        if let simple { return simple }
        guard let jid = parse(string) else { return false }
        return domain == nil || jid.domain == domain
    }

    /// The positions of the first `@` (-1: none) and the first `/` (`bytes.count`: none) when `bytes` are a JID
    /// of the common shape (see `simpleASCII`); nil otherwise.
    private static func simpleShape(_ bytes: UnsafeBufferPointer<UInt8>) -> (at: Int, slash: Int)? {
        let count = bytes.count
        guard count > 0, count <= maxPartBytes else { return nil }
        var at = -1, slash = count
        for index in 0..<count {
            let byte = bytes[index]
            if byte >= 0x80 { return nil }
            if byte == UInt8(ascii: "/") {
                slash = index
                break
            }
            if byte == UInt8(ascii: "@") && at < 0 { at = index }
        }
        let domainStart = at + 1
        // Parts present are not empty; the domain ends in a label (no trailing dot) and is no IP literal.
        guard at != 0, domainStart < slash, slash != count - 1, bytes[domainStart] != UInt8(ascii: "["),
            bytes[slash - 1] != UInt8(ascii: ".")
        else { return nil }
        for index in 0..<max(at, 0) {
            let byte = bytes[index]
            if byte <= 0x20 || byte == 0x7F || isForbidden(Unicode.Scalar(byte), in: forbiddenInLocalpart) { return nil }
        }
        var label = 0
        for index in domainStart..<slash {
            let byte = bytes[index]
            if byte == UInt8(ascii: ".") {
                if label == 0 { return nil }
                label = 0
                continue
            }
            label += 1
            if label > 63 || byte <= 0x20 || byte == 0x7F || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
                || isForbidden(Unicode.Scalar(byte), in: forbiddenInDomain)
            {
                return nil
            }
        }
        if slash < count {
            for index in (slash + 1)..<count where bytes[index] < 0x20 || bytes[index] >= 0x7F { return nil }
        }
        return (at, slash)
    }

    /// Parses and validates any string, saying what is wrong with an invalid one.
    init(checking string: String) throws(JIDError) {
        func fail(_ reason: String) -> JIDError { JIDError(reason: reason, input: string) }
        // Split on the first "/" and then the first "@" before it, by UTF-8 code unit (both are ASCII).
        var rest = Substring(string)
        var resource: Substring?
        if let slash = rest.utf8.firstIndex(of: UInt8(ascii: "/")) {
            resource = rest[rest.utf8.index(after: slash)...]
            rest = rest[..<slash]
        }
        var local: Substring?
        if let at = rest.utf8.firstIndex(of: UInt8(ascii: "@")) {
            local = rest[..<at]
            rest = rest[rest.utf8.index(after: at)...]
        }
        if rest.utf8.last == UInt8(ascii: ".") { rest = rest.dropLast() }
        let domain = Self.lowercased(rest)

        if let local {
            if local.isEmpty { throw fail("empty localpart") }
            if local.utf8.count > Self.maxPartBytes { throw fail("localpart longer than 1023 bytes") }
            if let bad = Self.firstBad(in: local, forbidden: Self.forbiddenInLocalpart, spaces: true) {
                throw fail(bad.isControlOrSpace
                    ? "localpart contains a space or control character"
                    : "localpart contains the forbidden character \(Character(bad.scalar))")
            }
        }
        if domain.isEmpty { throw fail("empty domain") }
        if domain.utf8.count > Self.maxPartBytes { throw fail("domain longer than 1023 bytes") }
        if domain.utf8.first == UInt8(ascii: "[") {
            // IPv6 literal: brackets around hex digits, colons and dots.
            guard domain.hasSuffix("]"), domain.count > 2,
                domain.dropFirst().dropLast().allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." })
            else { throw fail("malformed IPv6 literal domain") }
        } else {
            // Labels between dots: none empty, none over 63 bytes.
            var labelBytes = 0
            for byte in domain.utf8 {
                if byte == UInt8(ascii: ".") {
                    if labelBytes == 0 { throw fail("empty label in domain") }
                    labelBytes = 0
                } else {
                    labelBytes += 1
                    if labelBytes > 63 { throw fail("domain label longer than 63 bytes") }
                }
            }
            if labelBytes == 0 { throw fail("empty label in domain") }
            if let bad = Self.firstBad(in: Substring(domain), forbidden: Self.forbiddenInDomain, spaces: true) {
                throw fail(bad.isControlOrSpace
                    ? "domain contains a space or control character"
                    : "domain contains the forbidden character \(Character(bad.scalar))")
            }
        }
        if let resource {
            if resource.isEmpty { throw fail("empty resource") }
            if resource.utf8.count > Self.maxPartBytes { throw fail("resource longer than 1023 bytes") }
            if Self.firstBad(in: resource, forbidden: (0, 0), spaces: false) != nil {
                throw fail("resource contains a control character")
            }
        }
        self.localpart = local.map(String.init)
        self.domain = domain
        self.resource = resource.map(String.init)
    }

    /// The domain lower-cased; ASCII (nearly every domain) without `String.lowercased()`'s Unicode machinery.
    private static func lowercased(_ domain: Substring) -> String {
        var hasUpper = false
        for byte in domain.utf8 {
            if byte >= 0x80 { return domain.lowercased() }
            if byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") { hasUpper = true }
        }
        guard hasUpper else { return String(domain) }
        return String(decoding: domain.utf8.map { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") ? $0 + 32 : $0 },
                      as: UTF8.self)
    }

    /// The first character a part must not contain: a control character (or, with `spaces`, whitespace), or
    /// one of the `forbidden` ASCII characters. Pure-ASCII parts are checked byte by byte.
    private static func firstBad(in part: Substring, forbidden: (low: UInt64, high: UInt64), spaces: Bool)
        -> (scalar: Unicode.Scalar, isControlOrSpace: Bool)?
    {
        if part.utf8.allSatisfy({ $0 < 0x80 }) {
            for byte in part.utf8 {
                let scalar = Unicode.Scalar(byte)
                if byte < 0x20 || byte == 0x7F || (spaces && byte == 0x20) { return (scalar, true) }
                if isForbidden(scalar, in: forbidden) { return (scalar, false) }
            }
            return nil
        }
        for scalar in part.unicodeScalars {
            if spaces ? isControlOrSpace(scalar) : isControl(scalar) { return (scalar, true) }
            if isForbidden(scalar, in: forbidden) { return (scalar, false) }
        }
        return nil
    }

    package init(localpart: String? = nil, domain: String, resource: String? = nil) throws(JIDError) {
        var s = ""
        if let localpart { s += localpart + "@" }
        s += domain
        if let resource { s += "/" + resource }
        try self.init(s)
    }

    /// Parses, returning nil for invalid input.
    package static func parse(_ string: String?) -> JID? {
        guard let string else { return nil }
        return try? JID(string)
    }

    package var bare: JID {
        JID(uncheckedLocal: localpart, domain: domain, resource: nil)
    }

    package var isBare: Bool { resource == nil }

    package var description: String {
        var s = ""
        if let localpart { s += localpart + "@" }
        s += domain
        if let resource { s += "/" + resource }
        return s
    }

    /// True when `self` is the domain `domain` or an address `node@domain[/res]` inside it.
    package func isInside(domain other: String) -> Bool { domain == other }

    private init(uncheckedLocal: String?, domain: String, resource: String?) {
        self.localpart = uncheckedLocal
        self.domain = domain
        self.resource = resource
    }

    static func isControl(_ s: Unicode.Scalar) -> Bool {
        s.value < 0x20 || (s.value >= 0x7F && s.value < 0xA0) || s.value == 0x2028 || s.value == 0x2029
    }

    static func isControlOrSpace(_ s: Unicode.Scalar) -> Bool {
        // ASCII (nearly every JID): the controls, the whitespace among them and the space; no property lookup.
        if s.value < 0x80 { return s.value <= 0x20 || s.value == 0x7F }
        return isControl(s) || s.properties.isWhitespace
    }

    /// ASCII characters a part must not contain, as a 128-bit set.
    static let forbiddenInLocalpart = asciiSet("\"&'/:<>@")
    static let forbiddenInDomain = asciiSet("\"&'/:<>@[]\\,;=?!#$%()*+^`{|}~")

    static func asciiSet(_ characters: String) -> (low: UInt64, high: UInt64) {
        var set: (low: UInt64, high: UInt64) = (0, 0)
        for byte in characters.utf8 where byte < 0x80 {
            if byte < 64 { set.low |= 1 << UInt64(byte) } else { set.high |= 1 << UInt64(byte - 64) }
        }
        return set
    }

    static func isForbidden(_ s: Unicode.Scalar, in set: (low: UInt64, high: UInt64)) -> Bool {
        let value = s.value
        if value >= 0x80 { return false }
        return value < 64 ? set.low & (1 << UInt64(value)) != 0 : set.high & (1 << UInt64(value - 64)) != 0
    }

    /// `s` in quotes for messages: long values shortened, control characters shown as escapes.
    package static func quoted(_ s: String) -> String {
        let shown = s.count > 80 ? String(s.prefix(80)) + "…" : s
        return "\"" + shown.unicodeScalars.map { isControl($0) ? "\\u{\(String($0.value, radix: 16))}" : String($0) }.joined() + "\""
    }
}

/// A bare-JID glob such as `*@bot.example.org` or `bot.example.org`: `*` matches any run of characters.
/// Matching is against the bare form; the domain compares case-insensitively.
package struct JIDPattern: Hashable, Sendable, CustomStringConvertible {
    package let pattern: String
    /// The pattern's scalars, for the glob.
    private let scalars: [Unicode.Scalar]
    /// A pattern without `*` and with at most one `@` names one bare JID: it is compared part by part, with no
    /// string built per match (routes match every stanza's addresses).
    private let exact: Exact?

    private struct Exact: Hashable, Sendable {
        let local: String?
        let domain: String
    }

    package init(_ pattern: String) {
        // The domain half is case-insensitive in JIDs; lower-case the whole pattern's domain part.
        if let at = pattern.lastIndex(of: "@") {
            self.pattern = String(pattern[...at]) + pattern[pattern.index(after: at)...].lowercased()
        } else {
            self.pattern = pattern.lowercased()
        }
        scalars = Array(self.pattern.unicodeScalars)
        let parts = self.pattern.split(separator: "@", maxSplits: 2, omittingEmptySubsequences: false)
        if self.pattern.contains("*") || parts.count > 2 {
            exact = nil
        } else if parts.count == 2 {
            exact = Exact(local: String(parts[0]), domain: String(parts[1]))
        } else {
            exact = Exact(local: nil, domain: self.pattern)
        }
    }

    package var description: String { pattern }

    package func matches(_ jid: JID) -> Bool {
        guard let exact else { return Self.glob(scalars, Array(jid.bare.description.unicodeScalars)) }
        // Scalar for scalar, as the glob compares (not String's canonical equivalence).
        guard Self.sameBytes(jid.domain, exact.domain) else { return false }
        switch (jid.localpart, exact.local) {
        case (nil, nil): return true
        case (let local?, let expected?): return Self.sameBytes(local, expected)
        default: return false
        }
    }

    /// Whether `a` and `b` are the same UTF-8 bytes, compared in place.
    static func sameBytes(_ a: String, _ b: String) -> Bool {
        guard a.utf8.count == b.utf8.count else { return false }
        let inPlace = a.utf8.withContiguousStorageIfAvailable { x in
            b.utf8.withContiguousStorageIfAvailable { y in x.elementsEqual(y) }
        }
        return (inPlace ?? nil) ?? a.utf8.elementsEqual(b.utf8)
    }

    /// Iterative glob with backtracking on the last `*` (linear in practice, no recursion).
    static func glob(_ p: [Unicode.Scalar], _ s: [Unicode.Scalar]) -> Bool {
        var pi = 0, si = 0
        var star = -1, mark = 0
        while si < s.count {
            if pi < p.count && p[pi] == "*" {
                star = pi; mark = si; pi += 1
            } else if pi < p.count && p[pi] == s[si] {
                pi += 1; si += 1
            } else if star >= 0 {
                pi = star + 1; mark += 1; si = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == "*" { pi += 1 }
        return pi == p.count
    }
}
