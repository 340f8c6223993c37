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
        var out = ""
        out.reserveCapacity(256)
        let omitTop = Namespace.isStanzaNamespace(namespace)
        try XMLWriter.write(self, into: &out, inherited: omitTop ? namespace : nil, prefixes: [:], top: true)
        return out
    }

    /// The serialized form, or a description of why it cannot be written (for logs and tests).
    package var xmlDescription: String {
        do { return try serialized() } catch { return "<!-- \(error) -->" }
    }

    /// The UTF-8 bytes of `serialized()`.
    package func serializedBytes() throws(XMLSerializationError) -> [UInt8] {
        Array(try serialized().utf8)
    }
}

enum XMLWriter {
    /// Writes `element` where `inherited` is the default namespace in scope (nil: none). An element in the XML
    /// namespace takes the `xml:` prefix, which is predeclared and may never be declared (nor may that namespace
    /// be the default), and leaves the default namespace in scope as it is for its children; at the `top` of a
    /// document, where the default namespace of the context is not known, it sets it to none (`xmlns=""`).
    static func write(
        _ element: Element, into out: inout String, inherited: String?, prefixes: [String: String], top: Bool = false
    ) throws(XMLSerializationError) {
        try checkName(element.name)
        let inXMLNamespace = element.namespace == Namespace.xml
        let tag = inXMLNamespace ? "xml:" + element.name : element.name
        var inScope = element.namespace
        out += "<"
        out += tag
        if inXMLNamespace {
            inScope = top ? nil : inherited
            if top { out += " xmlns=\"\"" }
        } else if element.namespace != inherited {
            out += " xmlns=\""
            try escape(element.namespace ?? "", attribute: true, into: &out)
            out += "\""
        }
        var scope = prefixes
        var generated = 0
        for attribute in element.attributes {
            try checkName(attribute.name)
            out += " "
            if let ns = attribute.namespace, !ns.isEmpty {
                if ns == Namespace.xml {
                    out += "xml:"
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
                        out += "xmlns:\(prefix)=\""
                        try escape(ns, attribute: true, into: &out)
                        out += "\" "
                    }
                    out += prefix
                    out += ":"
                }
            }
            out += attribute.name
            out += "=\""
            try escape(attribute.value, attribute: true, into: &out)
            out += "\""
        }
        if element.children.isEmpty {
            out += "/>"
            return
        }
        out += ">"
        for child in element.children {
            switch child {
            case .text(let text):
                try escape(text, attribute: false, into: &out)
            case .element(let e):
                try write(e, into: &out, inherited: inScope, prefixes: scope)
            }
        }
        out += "</"
        out += tag
        out += ">"
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
    static func escape(_ string: String, attribute: Bool, into out: inout String) throws(XMLSerializationError) {
        // Nearly every value needs nothing: it is scanned in place and appended as it is, with no copy of its bytes.
        let needsWork = string.utf8.contains { byte in
            byte < 0x20 || byte == 0x26 || byte == 0x3C || byte == 0x3E || byte == 0x22 || byte == 0xEF
        }
        if !needsWork {
            out += string
            return
        }
        var utf8 = Array(string.utf8)
        var result: [UInt8] = []
        result.reserveCapacity(utf8.count + 16)
        var index = 0
        while index < utf8.count {
            let byte = utf8[index]
            switch byte {
            case 0x26: result += Array("&amp;".utf8)
            case 0x3C: result += Array("&lt;".utf8)
            case 0x3E: result += Array("&gt;".utf8)
            case 0x22 where attribute: result += Array("&quot;".utf8)
            case 0x0D: result += Array("&#13;".utf8)
            case 0x0A where attribute: result += Array("&#10;".utf8)
            case 0x09 where attribute: result += Array("&#9;".utf8)
            case 0x09, 0x0A: result.append(byte)
            case 0..<0x20:
                throw XMLSerializationError(code: .forbiddenCharacter, detail: "U+\(hex4(UInt32(byte)))")
            case 0xEF where index + 2 < utf8.count && utf8[index + 1] == 0xBF && (utf8[index + 2] == 0xBE || utf8[index + 2] == 0xBF):
                throw XMLSerializationError(code: .forbiddenCharacter, detail: utf8[index + 2] == 0xBE ? "U+FFFE" : "U+FFFF")
            default: result.append(byte)
            }
            index += 1
        }
        utf8 = result
        out += String(decoding: utf8, as: UTF8.self)
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
