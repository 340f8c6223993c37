// mod_rest's JSON schema (its res/schema-xmpp.json) as data, and the walk that maps XML to JSON and back by it:
// most JSON keys of SPEC §7 are a property here. StanzaJSON adds the keys a schema cannot say (html, disco,
// items, command, dataform, formdata, oob_url, error) and the checks that give bad input a clear error.

/// One JSON key and where its value lives in XML.
struct SchemaProperty: Sendable {
    /// The JSON type. A struct of plain stored fields rather than a recursive enum: the schema lives in statics,
    /// and pointers an enum tags in their spare bits hide it from LeakSanitizer (scripts/fuzz).
    struct Shape: Sendable {
        enum Kind: Sendable { case string, integer, number, boolean, object, message, array }

        /// What the hot paths switch on (no enum payload to build).
        let kind: Kind
        private let range: ClosedRange<Int64>?
        /// An object's properties, or an array's one item.
        let nested: [SchemaProperty]

        private init(_ kind: Kind, range: ClosedRange<Int64>? = nil, nested: [SchemaProperty] = []) {
            self.kind = kind
            self.range = range
            self.nested = nested
        }

        static let string = Shape(.string)
        /// An integer, optionally bounded (the schema's minimum/maximum).
        static func integer(_ range: ClosedRange<Int64>?) -> Shape { Shape(.integer, range: range) }
        static let number = Shape(.number)
        static let boolean = Shape(.boolean)
        static func object(_ properties: [SchemaProperty]) -> Shape { Shape(.object, nested: properties) }
        /// A whole message, properties and attributes (forwarded and archived messages).
        static let message = Shape(.message)
        static func array(item: SchemaProperty) -> Shape { Shape(.array, nested: [item]) }

        /// The shape as an enum to switch on (built when asked, never stored).
        enum Form {
            case string, number, boolean, message
            case integer(ClosedRange<Int64>?)
            case object([SchemaProperty])
            case array(item: SchemaProperty)
        }

        var form: Form {
            switch kind {
            case .string: .string
            case .integer: .integer(range)
            case .number: .number
            case .boolean: .boolean
            case .object: .object(nested)
            case .message: .message
            case .array: nested.first.map { .array(item: $0) } ?? .object([])
            }
        }
    }

    enum Placement: Sendable {
        /// The text of a child element named `name` (the default for scalars).
        case textTag
        /// An attribute of the parent named `name` ("xml:lang" for lang).
        case attribute
        /// The parent's own text.
        case text
        /// A boolean: whether a child `name` exists; a string: which of `enums` is the name of a child.
        case tagName
        /// The attribute `attribute` of a child `name`.
        case singleAttribute(String)
        /// An object in a child `name`; an array of items that are children of the parent.
        case children
        /// An array whose items are children of one wrapper child `name`.
        case wrapper
    }

    let key: String
    let shape: Shape
    let name: String
    /// nil: the parent's namespace.
    let namespace: String?
    let placement: Placement
    let enums: [String]?

    init(_ key: String, _ shape: Shape, name: String? = nil, ns: String? = nil, _ placement: Placement? = nil,
         enums: [String]? = nil) {
        self.key = key
        self.shape = shape
        self.name = name ?? key
        self.namespace = ns
        switch shape.form {
        case .object, .message, .array: self.placement = placement ?? .children
        default: self.placement = placement ?? .textTag
        }
        self.enums = enums
    }

    static func attribute(_ key: String, _ shape: Shape = .string, name: String? = nil) -> SchemaProperty {
        SchemaProperty(key, shape, name: name, .attribute)
    }
}

/// The schema: per kind, the properties mod_rest maps through its schema (common ones included).
enum StanzaSchema {
    typealias P = SchemaProperty

    static let delay = P("delay", .string, ns: "urn:xmpp:delay", .singleAttribute("stamp"))

    static let rsm = P("rsm", .object([
        P("after", .string), P("before", .string), P("count", .integer(nil)), P("first", .string),
        P("index", .integer(nil)), P("last", .string), P("max", .integer(nil)),
    ]), name: "set", ns: "http://jabber.org/protocol/rsm")

    static let dataformProperties: [P] = [
        .attribute("type"), P("title", .string), P("instructions", .string),
        P("fields", .array(item: P("field", .object([
            .attribute("var"), .attribute("type"), .attribute("label"), P("desc", .string),
            P("required", .boolean, .tagName),
            P("values", .array(item: P("value", .string))),
            P("options", .array(item: P("option", .object([.attribute("label"), P("value", .string)])))),
        ])))),
    ]

    /// The schema's own dataform (used inside `archive`; the top-level `dataform` key is StanzaJSON's).
    static func dataform(_ key: String) -> P { P(key, .object(dataformProperties), name: "x", ns: "jabber:x:data") }

    static let common: [P] = [
        .attribute("to"), .attribute("from"), .attribute("id"), .attribute("type"), .attribute("lang", name: "xml:lang"),
        delay,
        P("nick", .string, ns: "http://jabber.org/protocol/nick"),
        P("payload", .object([P("datatype", .string, .attribute), P("data", .string, .text)]), ns: "urn:xmpp:json-msg:0"),
        rsm,
    ]

    static let stanzaIDs = P("stanza_ids", .array(item: P("stanza-id", .object([.attribute("id"), .attribute("by")]), ns: "urn:xmpp:sid:0")))

    static let forwarded = P("forwarded", .object([delay, P("message", .message)]), ns: "urn:xmpp:forward:0")

    static let message: [P] = common + [
        P("body", .string), P("subject", .string),
        P("thread", .object([P("id", .string, .text), .attribute("parent")])),
        P("state", .string, ns: "http://jabber.org/protocol/chatstates", .tagName,
          enums: ["active", "inactive", "gone", "composing", "paused"]),
        P("replace", .string, ns: "urn:xmpp:message-correct:0", .singleAttribute("id")),
        P("oob", .object([P("url", .string), P("desc", .string)]), name: "x", ns: "jabber:x:oob"),
        P("invite", .object([
            .attribute("jid"), .attribute("password"), .attribute("reason"), .attribute("thread"), .attribute("continue", .boolean),
        ]), name: "x", ns: "jabber:x:conference"),
        P("reactions", .object([.attribute("id"), P("reactions", .array(item: P("reaction", .string)))]), ns: "urn:xmpp:reactions:0"),
        P("occupant_id", .string, name: "occupant-id", ns: "urn:xmpp:occupant-id:0", .singleAttribute("id")),
        P("attach_to", .string, name: "attach-to", ns: "urn:xmpp:message-attaching:1", .singleAttribute("id")),
        P("fallback", .boolean, ns: "urn:xmpp:fallback:0", .tagName),
        stanzaIDs,
        P("reference", .object([
            .attribute("begin", .integer(0...Int64.max)), .attribute("end", .integer(0...Int64.max)), .attribute("type"), .attribute("uri"),
        ]), ns: "urn:xmpp:reference:0"),
        P("reply", .object([.attribute("id"), .attribute("to")]), ns: "urn:xmpp:reply:0"),
        P("markable", .boolean, ns: "urn:xmpp:chat-markers:0", .tagName),
        P("displayed", .string, ns: "urn:xmpp:chat-markers:0", .singleAttribute("id")),
        P("encryption", .string, ns: "urn:xmpp:eme:0", .singleAttribute("namespace")),
        P("archive", .object([.attribute("queryid"), .attribute("id"), P("forward", forwarded.shape, name: "forwarded", ns: "urn:xmpp:forward:0")]),
          name: "result", ns: "urn:xmpp:mam:2"),
        forwarded,
    ]

    static let presence: [P] = common + [
        P("show", .string, enums: ["away", "chat", "dnd", "xa"]), P("status", .string), P("priority", .integer(-128...127)),
        P("caps", .object([.attribute("ext"), .attribute("hash"), .attribute("node"), .attribute("ver")]), name: "c",
          ns: "http://jabber.org/protocol/caps"),
        P("vcard_update", .object([P("photo", .string)]), name: "x", ns: "vcard-temp:x:update"),
        P("idle_since", .string, name: "idle", ns: "urn:xmpp:idle:1", .singleAttribute("since")),
        P("muc", .object([P("history", .object([
            .attribute("maxchars", .integer(0...Int64.max)), .attribute("maxstanzas", .integer(0...Int64.max)),
            .attribute("seconds", .integer(0...Int64.max)), .attribute("since"),
        ]))]), name: "x", ns: "http://jabber.org/protocol/muc"),
    ]

    static let iq: [P] = common + [
        P("ping", .boolean, ns: "urn:xmpp:ping", .tagName),
        P("version", .object([P("name", .string), P("version", .string), P("os", .string)]), name: "query", ns: "jabber:iq:version"),
        P("archive", .object([.attribute("queryid"), dataform("form"), P("page", rsm.shape, name: "set", ns: "http://jabber.org/protocol/rsm")]),
          name: "query", ns: "urn:xmpp:mam:2"),
        P("result", .object([P("page", rsm.shape, name: "set", ns: "http://jabber.org/protocol/rsm")]), name: "fin", ns: "urn:xmpp:mam:2"),
        P("extdisco", .object([
            .attribute("type"),
            P("services", .array(item: P("service", .object([
                .attribute("expires"), .attribute("host"), .attribute("name"), .attribute("password"),
                .attribute("port", .integer(0...65535)), .attribute("restricted", .boolean), .attribute("transport"), .attribute("type"),
                .attribute("username"),
            ])))),
        ]), name: "services", ns: "urn:xmpp:extdisco:2"),
        P("gateway", .object([P("desc", .string), P("jid", .string), P("prompt", .string)]), name: "query", ns: "jabber:iq:gateway"),
        P("lastactivity", .object([.attribute("seconds", .integer(0...Int64.max)), P("status", .string, .text)]), name: "query",
          ns: "jabber:iq:last"),
        P("oob", .object([P("url", .string), P("desc", .string)]), name: "query", ns: "jabber:iq:oob"),
        P("register", .object(
            ["address", "city", "date", "email", "first", "instructions", "key", "last", "misc", "name", "nick", "password",
             "phone", "state", "text", "url", "username", "zip"].map { P($0, .string) }
                + [P("registered", .boolean, .tagName), P("remove", .boolean, .tagName)]),
          name: "query", ns: "jabber:iq:register"),
        P("stats", .array(item: P("stat", .object([.attribute("name"), .attribute("unit"), .attribute("value", .number)]))),
          name: "query", ns: "http://jabber.org/protocol/stats", .wrapper),
        P("upload_request", .object([
            .attribute("filename"), .attribute("size", .integer(0...Int64.max)), .attribute("content-type"),
        ]), name: "request", ns: "urn:xmpp:http:upload:0"),
        P("upload_slot", .object([
            P("put", .object([
                .attribute("url"),
                P("headers", .array(item: P("header", .object([
                    P("name", .string, .attribute, enums: ["Authorization", "Cookie", "Expires"]), P("value", .string, .text),
                ])))),
            ])),
            P("get", .object([.attribute("url")])),
        ]), name: "slot", ns: "urn:xmpp:http:upload:0"),
        P("block", .array(item: blockItem(report: true)), ns: "urn:xmpp:blocking", .wrapper),
        P("blocklist", .array(item: blockItem(report: false)), ns: "urn:xmpp:blocking", .wrapper),
    ]

    static func blockItem(report: Bool) -> P {
        var properties: [P] = [.attribute("jid")]
        if report {
            properties.append(P("report", .object([
                P("reason", .string, .attribute, enums: ["urn:xmpp:reporting:spam", "urn:xmpp:reporting:abuse"]), stanzaIDs,
            ]), ns: "urn:xmpp:reporting:1"))
        }
        return P("item", .object(properties))
    }

    static func properties(of kind: StanzaKind) -> [P] {
        switch kind {
        case .message: message
        case .presence: presence
        case .iq: iq
        }
    }

    /// A kind's top-level properties indexed for one pass over a stanza's children (the codec is on every
    /// stanza's path: a lookup per child instead of a search per property).
    struct Index: Sendable {
        let attributes: [P]
        /// By element name (a short string to hash); the namespace is compared after (nil: the stanza's own).
        let children: [String: [(namespace: String?, property: P)]]
        /// The properties JSON → XML maps through the schema (those StanzaJSON does not map by hand), in schema
        /// order, and their keys.
        let unparsed: [P]
        /// The same by key, with their place in schema order.
        let unparsedByKey: [String: (order: Int, property: P)]

        init(_ properties: [P], handled: Set<String>) {
            var attributes: [P] = []
            var children: [String: [(namespace: String?, property: P)]] = [:]
            for property in properties {
                switch (property.shape.form, property.placement) {
                case (_, .attribute): attributes.append(property)
                case (.array(let item), .children):
                    children[item.name, default: []].append((item.namespace, property))
                case (.string, .tagName):
                    for name in property.enums ?? [] { children[name, default: []].append((property.namespace, property)) }
                default:
                    children[property.name, default: []].append((property.namespace, property))
                }
            }
            self.attributes = attributes
            self.children = children
            unparsed = properties.filter { !handled.contains($0.key) }
            var byKey: [String: (order: Int, property: P)] = [:]
            for (order, property) in unparsed.enumerated() { byKey[property.key] = (order, property) }
            unparsedByKey = byKey
        }
    }

    static let messageIndex = Index(message, handled: StanzaJSON.handledKeys(.message))
    static let presenceIndex = Index(presence, handled: StanzaJSON.handledKeys(.presence))
    static let iqIndex = Index(iq, handled: StanzaJSON.handledKeys(.iq))

    static func index(of kind: StanzaKind) -> Index {
        switch kind {
        case .message: messageIndex
        case .presence: presenceIndex
        case .iq: iqIndex
        }
    }

    /// `parse` of a whole stanza through its kind's index: the same result in one pass over the children (the
    /// first child wins where a key is found twice).
    static func parseStanza(_ kind: StanzaKind, _ element: Element) -> [String: JSONValue] {
        let index = index(of: kind)
        var out = [String: JSONValue](minimumCapacity: 16)
        for property in index.attributes {
            if let raw = element[attribute: property.name], let value = typed(property.shape, raw) { out[property.key] = value }
        }
        for case .element(let child) in element.children {
            guard let candidates = index.children[child.name] else { continue }
            let namespace = child.namespace == element.namespace ? nil : child.namespace
            for (expected, property) in candidates where expected == namespace {
                switch (property.shape.kind, property.placement) {
                case (.array, .children):
                    guard let item = property.shape.nested.first else { continue }
                    let value: JSONValue?
                    if item.shape.kind == .object {
                        value = .object(parse(item.shape.nested, child))
                    } else {
                        value = typed(item.shape, child.text)
                    }
                    guard let value else { continue }
                    if case .array(var list)? = out[property.key] {
                        list.append(value)
                        out[property.key] = .array(list)
                    } else {
                        out[property.key] = .array([value])
                    }
                case (.array, .wrapper):
                    guard out[property.key] == nil, let item = property.shape.nested.first else { continue }
                    let items = parseArray(item, child)
                    out[property.key] = items.isEmpty ? .object([:]) : .array(items)
                case (.object, _):
                    if out[property.key] == nil { out[property.key] = .object(parse(property.shape.nested, child)) }
                case (.boolean, .tagName):
                    out[property.key] = true
                case (.string, .tagName):
                    if out[property.key] == nil { out[property.key] = .string(child.name) }
                case (_, .singleAttribute(let attribute)):
                    if out[property.key] == nil, let raw = child[attribute: attribute], let value = typed(property.shape, raw) {
                        out[property.key] = value
                    }
                case (_, .textTag):
                    if out[property.key] == nil, let value = typed(property.shape, child.text) { out[property.key] = value }
                default:
                    break
                }
            }
        }
        return out
    }

    // MARK: XML → JSON

    /// The properties of `element` as mod_rest's schema reads them. Values that do not parse (a non-number for
    /// an integer) are left out.
    static func parse(_ properties: [P], _ element: Element) -> [String: JSONValue] {
        var out = [String: JSONValue](minimumCapacity: properties.count)
        for property in properties {
            let ns = property.namespace ?? element.namespace
            switch (property.shape.form, property.placement) {
            case (.object(let nested), _):
                if let child = element.child(property.name, namespace: ns) { out[property.key] = .object(parse(nested, child)) }
            case (.message, _):
                if let child = element.child("message", namespace: Namespace.client) {
                    out[property.key] = .object(parse(message, child))
                }
            case (.array(let item), .wrapper):
                if let wrapper = element.child(property.name, namespace: ns) {
                    let items = parseArray(item, wrapper)
                    // mod_rest's JSON writer cannot tell an empty array from an empty object.
                    out[property.key] = items.isEmpty ? .object([:]) : .array(items)
                }
            case (.array(let item), _):
                let items = parseArray(item, element)
                if !items.isEmpty { out[property.key] = .array(items) }
            default:
                if let value = scalar(property, in: element, ns: ns) { out[property.key] = value }
            }
        }
        return out
    }

    private static func parseArray(_ item: P, _ parent: Element) -> [JSONValue] {
        let ns = item.namespace ?? parent.namespace
        var out: [JSONValue] = []
        for child in parent.elements where child.name == item.name && child.namespace == ns {
            switch item.shape.form {
            case .object(let nested): out.append(.object(parse(nested, child)))
            case .message: out.append(.object(parse(message, child)))
            default:
                if let value = typed(item.shape, child.text) { out.append(value) }
            }
        }
        return out
    }

    private static func scalar(_ property: P, in element: Element, ns: String?) -> JSONValue? {
        let raw: String?
        switch property.placement {
        case .attribute: raw = element[attribute: property.name]
        case .text: raw = element.text
        case .textTag: raw = element.child(property.name, namespace: ns)?.text
        case .singleAttribute(let attribute): raw = element.child(property.name, namespace: ns)?[attribute: attribute]
        case .tagName:
            if case .boolean = property.shape.form {
                return element.child(property.name, namespace: ns) == nil ? nil : .bool(true)
            }
            let names = property.enums ?? []
            return names.first { element.child($0, namespace: ns) != nil }.map(JSONValue.string)
        case .children, .wrapper: raw = nil
        }
        return raw.flatMap { typed(property.shape, $0) }
    }

    /// mod_rest's conversion of XML text to a JSON value of the schema's type.
    static func typed(_ shape: SchemaProperty.Shape, _ text: String) -> JSONValue? {
        switch shape.kind {
        case .string: return .string(text)
        case .boolean:
            switch text {
            case "true", "1": return .bool(true)
            case "false", "0": return .bool(false)
            default: return nil
            }
        case .integer, .number:
            let trimmed = text.trimmingWhitespace()
            if let value = Int64(trimmed) { return .int(value) }
            if let value = Double(trimmed), value.isFinite {
                return value == value.rounded() && abs(value) < 1e15 ? .int(Int64(value)) : .double(value)
            }
            return nil
        default: return nil
        }
    }

    // MARK: JSON → XML

    /// Appends to `element` what the properties of `fields` say, skipping `skip`. Wrong types and values outside
    /// the schema's enums and ranges throw, naming the key.
    static func unparse(_ properties: [P], _ fields: StanzaJSON.Fields, into element: inout Element) throws(JSONMappingError) {
        for property in properties {
            guard let value = fields.value(property.key) else { continue }
            try unparseProperty(property, value, fields, into: &element)
        }
    }

    /// `unparse` of a whole stanza's schema keys (those not mapped by hand), in schema order; nothing to do, and
    /// no search, when the JSON has none of them (the usual body-and-addresses case).
    static func unparseStanza(_ kind: StanzaKind, _ fields: StanzaJSON.Fields, into element: inout Element) throws(JSONMappingError) {
        let index = index(of: kind)
        // One lookup per key the JSON has (not per property the schema has), then schema order.
        var present: [(order: Int, property: P, value: JSONValue)] = []
        for (key, value) in fields.object where value != .null {
            if let entry = index.unparsedByKey[key] { present.append((entry.order, entry.property, value)) }
        }
        present.sort { $0.order < $1.order }
        for entry in present { try unparseProperty(entry.property, entry.value, fields, into: &element) }
    }

    private static func unparseProperty(_ property: P, _ value: JSONValue, _ fields: StanzaJSON.Fields,
                                        into element: inout Element) throws(JSONMappingError) {
        let ns = property.namespace ?? element.namespace
        let field = fields.name(property.key)
        switch property.shape.form {
        case .object(let nested):
            guard let object = try fields.object(property.key) else { return }
            var child = Element(property.name, namespace: ns)
            try unparse(nested, object, into: &child)
            element.append(child)
        case .message:
            guard let object = try fields.object(property.key) else { return }
            var child = Element("message", namespace: Namespace.client)
            try unparse(message, object, into: &child)
            element.append(child)
        case .array(let item):
            let values: [JSONValue]
            switch value {
            case .array(let list): values = list
            // Lua has one table type: mod_rest writes an empty array as {}, and so may its users.
            case .object(let members) where members.isEmpty: values = []
            default: throw fields.invalid(property.key, "an array", value)
            }
            var wrapper = Element(property.name, namespace: ns)
            let itemNamespace = item.namespace ?? ns
            for (index, entry) in values.enumerated() {
                let at = "\(field)[\(index)]"
                var child = Element(item.name, namespace: itemNamespace)
                switch item.shape.form {
                case .object(let nested):
                    guard case .object(let members) = entry else {
                        throw JSONMappingError(.invalidField, "\"\(at)\" must be an object, got \(StanzaJSON.describe(entry))", field: at)
                    }
                    try unparse(nested, StanzaJSON.Fields(object: members, path: at), into: &child)
                default:
                    child.append(text: try text(item, entry, at))
                }
                if case .wrapper = property.placement { wrapper.append(child) } else { element.append(child) }
            }
            if case .wrapper = property.placement { element.append(wrapper) }
        case .string, .integer, .number, .boolean:
            switch property.placement {
            case .attribute:
                element[attribute: property.name] = try text(property, value, field)
            case .text:
                element.append(text: try text(property, value, field))
            case .singleAttribute(let attribute):
                let string = try text(property, value, field)
                element.append(Element(property.name, namespace: ns, attributes: [Attribute(name: attribute, value: string)]))
            case .tagName:
                if case .boolean = property.shape.form {
                    guard case .bool(let flag) = value else { throw fields.invalid(property.key, "true or false", value) }
                    if flag { element.append(Element(property.name, namespace: ns)) }
                } else {
                    element.append(Element(try text(property, value, field), namespace: ns))
                }
            case .textTag, .children, .wrapper:
                element.append(Element(property.name, namespace: ns, text: try text(property, value, field)))
            }
        }
    }

    /// The XML text of a scalar, checked against the property's type, enums and range. Numbers and booleans may
    /// come as strings (form bodies and query strings carry nothing else).
    private static func text(_ property: P, _ value: JSONValue, _ field: String) throws(JSONMappingError) -> String {
        func invalid(_ expectation: String) -> JSONMappingError {
            JSONMappingError(.invalidField, "\"\(field)\" must be \(expectation), got \(StanzaJSON.describe(value))", field: field)
        }
        let result: String
        switch property.shape.form {
        case .string:
            switch value {
            case .string(let string): result = string
            case .int(let number): result = String(number)
            case .double(let number): result = number.description
            default: throw invalid("a string")
            }
            if let enums = property.enums, !enums.contains(result) {
                throw invalid("one of \(enums.joined(separator: ", "))")
            }
        case .integer(let range):
            let number: Int64?
            switch value {
            case .int(let value): number = value
            case .double(let value): number = value == value.rounded() && abs(value) < 1e15 ? Int64(value) : nil
            case .string(let string): number = Int64(string.trimmingWhitespace())
            default: number = nil
            }
            guard let number else { throw invalid("an integer") }
            if let range, !range.contains(number) {
                throw invalid(range.upperBound == Int64.max ? "an integer of at least \(range.lowerBound)"
                                                           : "an integer from \(range.lowerBound) to \(range.upperBound)")
            }
            result = String(number)
        case .number:
            switch value {
            case .int(let number): result = String(number)
            case .double(let number) where number.isFinite: result = number.description
            case .string(let string) where Double(string.trimmingWhitespace()) != nil: result = string.trimmingWhitespace()
            default: throw invalid("a number")
            }
        case .boolean:
            switch value {
            case .bool(let flag): result = flag ? "1" : "0"
            case .string("true"), .string("1"): result = "1"
            case .string("false"), .string("0"): result = "0"
            default: throw invalid("true or false")
            }
        default:
            throw invalid("a scalar")
        }
        try StanzaJSON.checkXMLCharacters(result, field: field)
        return result
    }
}
