// An XML element tree with resolved namespaces: what the parser produces and the serializer writes.

/// Well-known namespaces.
package enum Namespace {
    package static let client = "jabber:client"
    package static let componentAccept = "jabber:component:accept"
    package static let server = "jabber:server"
    package static let stream = "http://etherx.jabber.org/streams"
    package static let stanzas = "urn:ietf:params:xml:ns:xmpp-stanzas"
    package static let streams = "urn:ietf:params:xml:ns:xmpp-streams"
    package static let xml = "http://www.w3.org/XML/1998/namespace"

    /// The namespaces a top-level stanza may carry; all mean the same thing on a component stream.
    package static func isStanzaNamespace(_ uri: String?) -> Bool {
        guard let uri else { return true }
        return uri == client || uri == componentAccept || uri == server || uri.isEmpty
    }
}

/// An attribute. `namespace` is nil for the common unprefixed case; `xml:lang` has the XML namespace.
package struct Attribute: Hashable, Sendable {
    package var name: String
    package var value: String
    /// Namespace and prefix, nil in nearly every attribute, share one optional reference: an attribute is five
    /// words instead of eight, and copying or destroying one touches three references instead of four.
    private var qualifier: Qualifier?

    package var namespace: String? {
        get { qualifier?.namespace }
        set { qualifier = Qualifier.make(namespace: newValue, prefix: qualifier?.prefix) }
    }

    /// The prefix seen in the source (or chosen by the builder); used only for namespaced attributes.
    package var prefix: String? {
        get { qualifier?.prefix }
        set { qualifier = Qualifier.make(namespace: qualifier?.namespace, prefix: newValue) }
    }

    package init(name: String, value: String, namespace: String? = nil, prefix: String? = nil) {
        self.name = name
        self.value = value
        self.qualifier = Qualifier.make(namespace: namespace, prefix: prefix)
    }

    /// `xml:lang="…"`.
    package static func lang(_ value: String) -> Attribute {
        Attribute(name: "lang", value: value, qualifier: Qualifier.xml)
    }

    /// For the parser, which keeps one `Qualifier` per namespace and prefix seen.
    init(name: String, value: String, qualifier: Qualifier?) {
        self.name = name
        self.value = value
        self.qualifier = qualifier
    }

    package static func == (lhs: Attribute, rhs: Attribute) -> Bool {
        lhs.name == rhs.name && lhs.value == rhs.value && lhs.namespace == rhs.namespace && lhs.prefix == rhs.prefix
    }

    package func hash(into hasher: inout Hasher) {
        hasher.combine(name)
        hasher.combine(namespace)
        hasher.combine(prefix)
        hasher.combine(value)
    }

    /// An attribute's namespace and prefix. Immutable, so attributes can share one.
    final class Qualifier: Sendable {
        let namespace: String?
        let prefix: String?

        static let xml = Qualifier(namespace: Namespace.xml, prefix: "xml")

        init(namespace: String?, prefix: String?) {
            self.namespace = namespace
            self.prefix = prefix
        }

        /// nil when both are nil (the common case: no allocation).
        static func make(namespace: String?, prefix: String?) -> Qualifier? {
            if namespace == nil && prefix == nil { return nil }
            return Qualifier(namespace: namespace, prefix: prefix)
        }
    }
}

/// A child of an element: another element or character data.
package enum Node: Hashable, Sendable {
    case element(Element)
    case text(String)
}

/// An XML element. `namespace` is the resolved namespace URI (nil means no namespace).
package struct Element: Hashable, Sendable {
    package var name: String
    package var namespace: String?
    package var attributes: [Attribute]
    package var children: [Node]

    package init(
        _ name: String, namespace: String? = nil, attributes: [Attribute] = [], children: [Node] = []
    ) {
        self.name = name
        self.namespace = namespace
        self.attributes = attributes
        self.children = children
    }

    /// Convenience: `Element("body", text: "hi")`.
    package init(_ name: String, namespace: String? = nil, attributes: [String: String] = [:], text: String) {
        self.init(
            name, namespace: namespace,
            attributes: attributes.sorted { $0.key < $1.key }.map { Attribute(name: $0.key, value: $0.value) },
            children: text.isEmpty ? [] : [.text(text)])
    }

    // MARK: Attributes

    /// The value of the unqualified attribute `name` (or `xml:lang` when asked for "xml:lang").
    package subscript(attribute name: String) -> String? {
        get {
            attributeIndex(name).map { attributes[$0].value }
        }
        set {
            if let index = attributeIndex(name) {
                if let newValue { attributes[index].value = newValue } else { attributes.remove(at: index) }
            } else if let newValue {
                attributes.append(name == "xml:lang" ? .lang(newValue) : Attribute(name: name, value: newValue))
            }
        }
    }

    private func attributeIndex(_ name: String) -> Int? {
        if name == "xml:lang" {
            return attributes.firstIndex { $0.name == "lang" && $0.namespace == Namespace.xml }
        }
        return attributes.firstIndex { $0.name == name && $0.namespace == nil }
    }

    // MARK: Children

    /// Child elements, in order.
    package var elements: [Element] {
        children.compactMap { if case .element(let e) = $0 { e } else { nil } }
    }

    /// The first child element with this name, in any namespace.
    package func child(_ name: String) -> Element? {
        for case .element(let e) in children where e.name == name { return e }
        return nil
    }

    /// The first child element with exactly this name and namespace (nil: no namespace).
    package func child(_ name: String, namespace: String?) -> Element? {
        for case .element(let e) in children where e.name == name && e.namespace == namespace { return e }
        return nil
    }

    /// The first child element in this namespace.
    package func child(inNamespace namespace: String) -> Element? {
        for case .element(let e) in children where e.namespace == namespace { return e }
        return nil
    }

    /// All character data directly inside this element, concatenated.
    package var text: String {
        var result = ""
        for case .text(let t) in children { result += t }
        return result
    }

    /// Appends a child element.
    package mutating func append(_ element: Element) { children.append(.element(element)) }

    /// Appends character data (nothing when empty).
    package mutating func append(text: String) {
        if !text.isEmpty { children.append(.text(text)) }
    }

    /// Removes every child element with this name and namespace.
    package mutating func removeChildren(_ name: String, namespace: String?) {
        children.removeAll {
            if case .element(let e) = $0 { return e.name == name && e.namespace == namespace }
            return false
        }
    }

    /// Sets the text of child `name` (creating or replacing it); nil removes it.
    package mutating func setChildText(_ name: String, namespace: String?, _ value: String?) {
        if let index = children.firstIndex(where: {
            if case .element(let e) = $0 { return e.name == name && e.namespace == namespace }
            return false
        }) {
            if let value {
                children[index] = .element(Element(name, namespace: namespace, text: value))
            } else {
                children.remove(at: index)
            }
        } else if let value {
            append(Element(name, namespace: namespace, text: value))
        }
    }
}
