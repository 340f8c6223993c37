// A top-level stanza (message, presence, iq) over an element, with the reply rules of SPEC §8.

/// A stanza's serialized form as one outbound policy accepted it.
package struct CheckedXML: Sendable {
    package let xml: String
    /// Which policy (its settings) accepted it.
    package let key: String
}

package enum StanzaKind: String, Hashable, Sendable, CaseIterable {
    case message, presence, iq

    /// The kind named `rawValue`. By hand: the synthesized initializer's string switch was 0.5% of a webhook
    /// echo's CPU (a stanza's kind is asked for several times on its way); `==` on these short names compares the
    /// strings' two words.
    package init?(rawValue: String) {
        if rawValue == "message" {
            self = .message
        } else if rawValue == "iq" {
            self = .iq
        } else if rawValue == "presence" {
            self = .presence
        } else {
            return nil
        }
    }
}

package struct Stanza: Hashable, Sendable {
    package var element: Element {
        didSet { checked = nil }
    }

    /// The bytes an outbound check produced for this very element (`OutboundPolicy`), so that the link does not
    /// serialize a reply the stamper has just serialized. Any change to the element drops it. Not part of the
    /// stanza's value: equality and hashing look at the element only.
    package private(set) var checked: CheckedXML?

    package static func == (lhs: Stanza, rhs: Stanza) -> Bool { lhs.element == rhs.element }
    package func hash(into hasher: inout Hasher) { hasher.combine(element) }

    /// Keeps the XML an outbound policy (named by `key`) made of this stanza, for writers with that same key.
    package mutating func keepChecked(_ xml: String, by key: String) {
        checked = CheckedXML(xml: xml, key: key)
    }

    /// Wraps an element that is a message, presence or iq in a stanza namespace; nil otherwise.
    package init?(_ element: Element) {
        guard StanzaKind(rawValue: element.name) != nil, Namespace.isStanzaNamespace(element.namespace) else {
            return nil
        }
        self.element = element
    }

    package init(kind: StanzaKind, type: String? = nil, id: String? = nil, from: String? = nil, to: String? = nil) {
        var e = Element(kind.rawValue, namespace: Namespace.client)
        e[attribute: "type"] = type
        e[attribute: "id"] = id
        e[attribute: "from"] = from
        e[attribute: "to"] = to
        self.element = e
    }

    package var kind: StanzaKind { StanzaKind(rawValue: element.name) ?? .message }

    package var type: String? {
        get { element[attribute: "type"] }
        set { element[attribute: "type"] = newValue }
    }
    package var id: String? {
        get { element[attribute: "id"] }
        set { element[attribute: "id"] = newValue }
    }
    package var from: String? {
        get { element[attribute: "from"] }
        set { element[attribute: "from"] = newValue }
    }
    package var to: String? {
        get { element[attribute: "to"] }
        set { element[attribute: "to"] = newValue }
    }
    package var lang: String? {
        get { element[attribute: "xml:lang"] }
        set { element[attribute: "xml:lang"] = newValue }
    }

    /// The message body, if any.
    package var body: String? { element.child("body", namespace: element.namespace)?.text }

    /// The `<thread/>` element of a message, if any.
    package var thread: Element? { element.child("thread", namespace: element.namespace) }

    /// The stanza error carried by a `type="error"` stanza.
    package var error: StanzaError? {
        element.child("error", namespace: element.namespace).flatMap(StanzaError.init(element:))
    }

    /// iq get/set: a request that must get exactly one reply.
    package var isRequest: Bool { kind == .iq && (type == "get" || type == "set") }

    /// Never reply to `error` or `result` (SPEC §8).
    package var allowsReply: Bool { type != "error" && type != "result" }

    /// An empty reply skeleton: swapped addresses, same namespace; iq keeps the id and becomes `result`.
    package func replySkeleton(kind replyKind: StanzaKind? = nil) -> Stanza {
        var reply = Element((replyKind ?? kind).rawValue, namespace: element.namespace)
        reply[attribute: "from"] = to
        reply[attribute: "to"] = from
        if (replyKind ?? kind) == .iq {
            reply[attribute: "id"] = id
            reply[attribute: "type"] = "result"
        }
        // Safe: the element name is one of the stanza kinds and the namespace is this stanza's.
        return Stanza(uncheckedElement: reply)
    }

    /// The error reply to this stanza (SPEC §8): same kind, type=error, swapped addresses, same id,
    /// `<error type by>` with the condition and optional text.
    package func errorReply(_ error: StanzaError) -> Stanza {
        var reply = Element(kind.rawValue, namespace: element.namespace)
        reply[attribute: "from"] = to
        reply[attribute: "to"] = from
        reply[attribute: "id"] = id
        reply[attribute: "type"] = "error"
        reply.append(error.element(namespace: element.namespace))
        return Stanza(uncheckedElement: reply)
    }

    init(uncheckedElement: Element) { self.element = uncheckedElement }

    package func serialized() throws(XMLSerializationError) -> String { try element.serialized() }
}
