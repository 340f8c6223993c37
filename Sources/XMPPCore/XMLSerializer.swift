// Writes element trees as XML text: correct escaping, namespace declarations only where they change,
// and refusal of characters XML 1.0 cannot carry (they would make the peer close the stream).

/// Why an element could not be written.
package struct XMLSerializationError: Error, Hashable, Sendable, CustomStringConvertible {
    package enum Code: Hashable, Sendable {
        /// A character XML 1.0 forbids (control characters, U+FFFE, U+FFFF).
        case forbiddenCharacter
        /// An element or attribute name that is not an XML name.
        case invalidName
    }

    package var code: Code
    package var detail: String

    package var description: String {
        switch code {
        case .forbiddenCharacter: "character not allowed in XML 1.0: \(detail)"
        case .invalidName: "not a valid XML name: \(detail)"
        }
    }
}

extension Element {
    /// The element as XML. A top-level stanza (namespace `jabber:client`, `jabber:component:accept`,
    /// `jabber:server` or none) is written without `xmlns`, so it takes the namespace of the stream or
    /// document it is put into; any other top element declares its namespace.
    package func serialized() throws(XMLSerializationError) -> String {
        String(decoding: try serializedBytes(), as: UTF8.self)
    }

    /// The serialized form, or a description of why it cannot be written (for logs and tests).
    package var xmlDescription: String {
        do { return try serialized() } catch { return "<!-- \(error) -->" }
    }

    /// The UTF-8 bytes of `serialized()`.
    package func serializedBytes() throws(XMLSerializationError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        let omitTop = Namespace.isStanzaNamespace(namespace)
        try XMLWriter.write(self, into: &out, inherited: omitTop ? namespace : nil, prefixes: [:], top: true)
        return out
    }
}

/// Writes into bytes: appending a byte or a native string's bytes to an array costs far less than appending to a
/// String, which updates its count and flags on every append.
enum XMLWriter {
    /// Writes `element` where `inherited` is the default namespace in scope (nil: none). An element in the XML
    /// namespace takes the `xml:` prefix, which is predeclared and may never be declared (nor may that namespace
    /// be the default), and leaves the default namespace in scope as it is for its children; at the `top` of a
    /// document, where the default namespace of the context is not known, it sets it to none (`xmlns=""`).
    static func write(
        _ element: Element, into out: inout [UInt8], inherited: String?, prefixes: [String: String], top: Bool = false
    ) throws(XMLSerializationError) {
        try checkName(element.name)
        let inXMLNamespace = element.namespace == Namespace.xml
        var inScope = element.namespace
        out.append(UInt8(ascii: "<"))
        writeTag(element.name, xml: inXMLNamespace, into: &out)
        if inXMLNamespace {
            inScope = top ? nil : inherited
            if top { out.append(contentsOf: #" xmlns="""#.utf8) }
        } else if element.namespace != inherited {
            out.append(contentsOf: #" xmlns=""#.utf8)
            try escape(element.namespace ?? "", attribute: true, into: &out)
            out.append(UInt8(ascii: "\""))
        }
        var scope = prefixes
        var generated = 0
        for attribute in element.attributes {
            try checkName(attribute.name)
            out.append(UInt8(ascii: " "))
            if let ns = attribute.namespace, !ns.isEmpty {
                if ns == Namespace.xml {
                    out.append(contentsOf: "xml:".utf8)
                } else {
                    var prefix = attribute.prefix ?? ""
                    if prefix.isEmpty || prefix == "xml" || prefix == "xmlns" || (scope[prefix] != nil && scope[prefix] != ns) {
                        repeat {
                            generated += 1
                            prefix = "ns\(generated)"
                        } while scope[prefix] != nil
                    }
                    try checkName(prefix)
                    if scope[prefix] != ns {
                        scope[prefix] = ns
                        out.append(contentsOf: "xmlns:".utf8)
                        out.append(contentsOf: prefix.utf8)
                        out.append(contentsOf: "=\"".utf8)
                        try escape(ns, attribute: true, into: &out)
                        out.append(contentsOf: "\" ".utf8)
                    }
                    out.append(contentsOf: prefix.utf8)
                    out.append(UInt8(ascii: ":"))
                }
            }
            out.append(contentsOf: attribute.name.utf8)
            out.append(contentsOf: "=\"".utf8)
            try escape(attribute.value, attribute: true, into: &out)
            out.append(UInt8(ascii: "\""))
        }
        if element.children.isEmpty {
            out.append(contentsOf: "/>".utf8)
            return
        }
        out.append(UInt8(ascii: ">"))
        for child in element.children {
            switch child {
            case .text(let text):
                try escape(text, attribute: false, into: &out)
            case .element(let e):
                try write(e, into: &out, inherited: inScope, prefixes: scope)
            }
        }
        out.append(contentsOf: "</".utf8)
        writeTag(element.name, xml: inXMLNamespace, into: &out)
        out.append(UInt8(ascii: ">"))
    }

    private static func writeTag(_ name: String, xml: Bool, into out: inout [UInt8]) {
        if xml { out.append(contentsOf: "xml:".utf8) }
        out.append(contentsOf: name.utf8)
    }

    /// XML 1.0 names, approximately: no empty names, no markup or whitespace characters, no leading digit,
    /// '-' or '.'. (Names from the parser are always valid; this guards names built from JSON.)
    static func checkName(_ name: String) throws(XMLSerializationError) {
        guard let first = name.utf8.first else { throw XMLSerializationError(code: .invalidName, detail: "(empty)") }
        if first == UInt8(ascii: "-") || first == UInt8(ascii: ".") || (first >= 0x30 && first <= 0x39) {
            throw XMLSerializationError(code: .invalidName, detail: name)
        }
        for byte in name.utf8 {
            switch byte {
            case 0...0x2C, 0x2F, 0x3B...0x40, 0x5B...0x5E, 0x60, 0x7B...0x7F:
                throw XMLSerializationError(code: .invalidName, detail: name)
            default: continue
            }
        }
    }

    /// Escapes text or an attribute value. `\r` (and in attributes `\t`, `\n`) become character references so
    /// that they survive the parser's end-of-line and attribute-value normalisation.
    static func escape(_ string: String, attribute: Bool, into out: inout [UInt8]) throws(XMLSerializationError) {
        // Nearly every value needs nothing: it is scanned in place and its bytes are appended as they are.
        @inline(__always) func special(_ byte: UInt8) -> Bool {
            byte < 0x20 || byte == 0x26 || byte == 0x3C || byte == 0x3E || byte == 0x22 || byte == 0xEF
        }
        let needsWork = string.utf8.withContiguousStorageIfAvailable { $0.contains(where: special) }
            ?? string.utf8.contains(where: special)
        if !needsWork {
            out.append(contentsOf: string.utf8)
            return
        }
        let utf8 = Array(string.utf8)
        var index = 0
        while index < utf8.count {
            let byte = utf8[index]
            switch byte {
            case 0x26: out.append(contentsOf: "&amp;".utf8)
            case 0x3C: out.append(contentsOf: "&lt;".utf8)
            case 0x3E: out.append(contentsOf: "&gt;".utf8)
            case 0x22 where attribute: out.append(contentsOf: "&quot;".utf8)
            case 0x0D: out.append(contentsOf: "&#13;".utf8)
            case 0x0A where attribute: out.append(contentsOf: "&#10;".utf8)
            case 0x09 where attribute: out.append(contentsOf: "&#9;".utf8)
            case 0x09, 0x0A: out.append(byte)
            case 0..<0x20:
                throw XMLSerializationError(code: .forbiddenCharacter, detail: "U+\(hex4(UInt32(byte)))")
            case 0xEF where index + 2 < utf8.count && utf8[index + 1] == 0xBF && (utf8[index + 2] == 0xBE || utf8[index + 2] == 0xBF):
                throw XMLSerializationError(code: .forbiddenCharacter, detail: utf8[index + 2] == 0xBE ? "U+FFFE" : "U+FFFF")
            default: out.append(byte)
            }
            index += 1
        }
    }

    /// `escape` for a String being built (the stream header, the parser's wrapper).
    static func escape(_ string: String, attribute: Bool, into out: inout String) throws(XMLSerializationError) {
        var bytes: [UInt8] = []
        try escape(string, attribute: attribute, into: &bytes)
        out += String(decoding: bytes, as: UTF8.self)
    }

    static func hex4(_ value: UInt32) -> String {
        let s = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, 4 - s.count)) + s
    }
}

/// Escaping for hand-written XML (e.g. the stream header).
package enum XMLEscape {
    /// The value escaped for use inside a quoted attribute.
    package static func attribute(_ value: String) throws(XMLSerializationError) -> String {
        var out = ""
        try XMLWriter.escape(value, attribute: true, into: &out)
        return out
    }
}
