// The JSON mapping of SPEC §7 (mod_rest's jsonmap, plus the lossless `stanza` field): one codec for REST
// bodies, webhook bodies, handler stdin/stdout and worker lines.

/// Why JSON could not be read or mapped to a stanza. `message` says what to fix.
package struct JSONMappingError: Error, Hashable, Sendable, CustomStringConvertible {
    package enum Code: String, Hashable, Sendable {
        /// Not JSON text (syntax, encoding, empty input).
        case invalidJSON
        /// JSON, but not an object.
        case notAnObject
        /// `kind` is not message, presence or iq.
        case unknownKind
        /// A known field with the wrong JSON type or a value outside its range.
        case invalidField
        /// `to`, `from` or another address field that is not a valid JID.
        case invalidJID
        /// The `stanza` field is not a single well-formed message, presence or iq.
        case invalidStanza
    }

    package var code: Code
    /// The offending field (`"priority"`, `"error.type"`, …), when there is one.
    package var field: String?
    package var message: String

    package init(_ code: Code, _ message: String, field: String? = nil) {
        self.code = code
        self.message = message
        self.field = field
    }

    package var description: String { message }
}

/// Defaults for a handler's reply (SPEC §5.2, §8), used only where the reply's JSON leaves a field out.
package struct ReplyDefaults: Hashable, Sendable {
    /// Usually the sender of the stanza being answered.
    package var to: String?
    /// Usually the JID the stanza was addressed to.
    package var from: String?
    package var id: String?
    /// The kind when neither `kind`, `type` nor the keys decide it (otherwise message).
    package var kind: StanzaKind?
    /// The type of a message reply: the incoming message's type, or chat.
    package var messageType: String?
    /// The type of an iq reply (otherwise get).
    package var iqType: String?
    /// The XEP-0201 thread of a message reply, and its parent.
    package var thread: String?
    package var threadParent: String?

    package init(
        to: String? = nil, from: String? = nil, id: String? = nil, kind: StanzaKind? = nil,
        messageType: String? = nil, iqType: String? = nil, thread: String? = nil, threadParent: String? = nil
    ) {
        self.to = to
        self.from = from
        self.id = id
        self.kind = kind
        self.messageType = messageType
        self.iqType = iqType
        self.thread = thread
        self.threadParent = threadParent
    }

    /// The defaults for replying to `stanza`: swapped addresses; a message reply takes its type (chat when it
    /// has none or is not a message) and thread; an iq reply is an iq `result` with the same id.
    package init(replyingTo stanza: Stanza) {
        self.init(to: stanza.from, from: stanza.to)
        let incomingType = stanza.kind == .message ? stanza.type : nil
        messageType = incomingType.flatMap { StanzaJSON.messageTypes.contains($0) ? $0 : nil } ?? "chat"
        if stanza.kind == .message, let thread = stanza.thread {
            self.thread = thread.text.isEmpty ? nil : thread.text
            threadParent = thread[attribute: "parent"]
        }
        if stanza.kind == .iq {
            id = stanza.id
            kind = .iq
            iqType = "result"
        }
    }
}

/// Stanza ⇄ JSON (SPEC §7).
package enum StanzaJSON {
    enum NS {
        static let chatStates = "http://jabber.org/protocol/chatstates"
        static let oob = "jabber:x:oob"
        static let correction = "urn:xmpp:message-correct:0"
        static let delay = "urn:xmpp:delay"
        static let nick = "http://jabber.org/protocol/nick"
        static let xhtmlIM = "http://jabber.org/protocol/xhtml-im"
        static let xhtml = "http://www.w3.org/1999/xhtml"
        static let ping = "urn:xmpp:ping"
        static let version = "jabber:iq:version"
        static let discoInfo = "http://jabber.org/protocol/disco#info"
        static let discoItems = "http://jabber.org/protocol/disco#items"
        static let jsonPayload = "urn:xmpp:json-msg:0"
        static let commands = "http://jabber.org/protocol/commands"
    }

    static let chatStates = ["active", "inactive", "gone", "composing", "paused"]
    static let shows = ["away", "chat", "dnd", "xa"]
    static let messageTypes = ["normal", "chat", "headline", "groupchat"]
    static let presenceTypes = ["available", "unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe"]
    static let iqTypes = ["get", "set", "result"]

    /// Keys that decide the kind when neither `kind` nor `type` does, in the order they are tried
    /// (mod_rest scans them in hash order; a fixed order makes mixed keys predictable).
    static let kindKeys: [(String, StanzaKind)] = [
        ("disco", .iq), ("items", .iq), ("ping", .iq), ("version", .iq), ("command", .iq), ("archive", .iq),
        ("body", .message), ("html", .message), ("replace", .message), ("state", .message),
        ("subject", .message), ("thread", .message),
        ("join", .presence), ("priority", .presence), ("show", .presence), ("status", .presence),
    ]

    /// The iq payload keys, at most one of which may appear.
    static let iqPayloadKeys = ["ping", "version", "disco", "items", "payload"]

    // MARK: Stanza → JSON

    /// The JSON form of a stanza (mod_rest's mapping). Children the mapping does not know are left out; with
    /// `includeStanza`, `stanza` holds the whole stanza as XML (nothing is lost).
    package static func encode(_ stanza: Stanza, includeStanza: Bool = false) -> JSONValue {
        let element = stanza.element
        var json = StanzaSchema.parseStanza(stanza.kind, element)
        json["kind"] = .string(stanza.kind.rawValue)
        if stanza.type == nil && stanza.kind == .presence { json["type"] = "available" }

        if stanza.type == "error" {
            // An error carries its condition; the other keys the schema read stay, the rest is not looked at.
            json["error"] = encodeError(element)
        } else {
            if case .object(var payload)? = json["payload"] {
                // `data` is JSON text in the XML; a payload whose text is not JSON is left out.
                if case .string(let text)? = payload["data"], let data = try? JSONValue.parse(text) {
                    payload["data"] = data
                    json["payload"] = .object(payload)
                } else {
                    json["payload"] = nil
                }
            }
            for case .element(let child) in element.children {
                switch (child.namespace, child.name) {
                case (NS.xhtmlIM?, "html"):
                    if let html = encodeHTML(child) { json["html"] = .string(html) }
                case (NS.discoInfo?, "query"): json["disco"] = encodeDisco(child)
                case (NS.discoItems?, "query"): json["items"] = encodeItems(child)
                case (NS.commands?, "command"): json["command"] = encodeCommand(child)
                case (NS.oob?, "x"):
                    if let url = child.child("url", namespace: NS.oob) { json["oob_url"] = .string(url.text) }
                case (DataFormJSON.namespace?, "x"): json["dataform"] = DataFormJSON.dataform(child)
                default: break
                }
            }
        }
        if includeStanza, let xml = try? element.serialized() {
            json["stanza"] = .string(xml)
        }
        return .object(json)
    }

    /// Several stanzas in one body, as mod_rest returns them (an archive query's results and its reply):
    /// `{"xmpp": [stanza, …]}`.
    package static func encode(_ stanzas: [Stanza]) -> JSONValue {
        .object(["xmpp": .array(stanzas.map { encode($0) })])
    }

    private static func encodeError(_ element: Element) -> JSONValue {
        guard let error = element.child("error", namespace: element.namespace) else {
            return .object(["condition": "undefined-condition"])
        }
        var object: [String: JSONValue] = [:]
        if let type = error[attribute: "type"] { object["type"] = .string(type) }
        var condition: String?
        for child in error.elements where child.namespace == Namespace.stanzas {
            if child.name == "text" {
                if object["text"] == nil { object["text"] = .string(child.text) }
            } else if condition == nil {
                condition = child.name
            }
        }
        object["condition"] = .string(condition ?? "undefined-condition")
        if let by = error[attribute: "by"] { object["by"] = .string(by) }
        return .object(object)
    }

    /// XEP-0071: the XHTML `<body>` as a string, written inside an implied XHTML scope (no xmlns on it).
    private static func encodeHTML(_ html: Element) -> String? {
        guard let body = html.child("body", namespace: NS.xhtml) else { return nil }
        var out: [UInt8] = []
        do {
            try XMLWriter.write(body, into: &out, inherited: NS.xhtml, prefixes: [:])
        } catch {
            return nil
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// XEP-0030 info: `true` or the node for a query, else `{node, identities, features, extensions}` where
    /// extensions are the XEP-0128 forms as formdata by FORM_TYPE.
    private static func encodeDisco(_ query: Element) -> JSONValue {
        let children = query.elements
        if children.isEmpty { return query[attribute: "node"].map(JSONValue.string) ?? true }
        var identities: [JSONValue] = []
        var features: [JSONValue] = []
        var extensions: [String: JSONValue] = [:]
        for child in children {
            if child.name == "identity", child.namespace == NS.discoInfo, child[attribute: "category"] != nil, child[attribute: "type"] != nil {
                identities.append(attributesObject(child, ["category", "type", "name"]))
            } else if child.name == "feature", child.namespace == NS.discoInfo, let feature = child[attribute: "var"] {
                features.append(.string(feature))
            } else if child.name == "x", child.namespace == DataFormJSON.namespace {
                var form = DataFormJSON.formdata(child)
                if case .string(let formType)? = form.removeValue(forKey: "FORM_TYPE") {
                    extensions[formType] = .object(form)
                }
            }
        }
        var object: [String: JSONValue] = ["identities": .array(identities), "features": .array(features)]
        if let node = query[attribute: "node"] { object["node"] = .string(node) }
        if !extensions.isEmpty { object["extensions"] = .object(extensions) }
        return .object(object)
    }

    /// XEP-0030 items: `true` or the node for a query, else the items `[{jid, node, name}]`.
    private static func encodeItems(_ query: Element) -> JSONValue {
        if query.elements.isEmpty { return query[attribute: "node"].map(JSONValue.string) ?? true }
        return .array(query.elements.filter { $0.name == "item" && $0.namespace == query.namespace }.map {
            attributesObject($0, ["jid", "node", "name"])
        })
    }

    /// XEP-0050: `{node, action, sessionid, status, actions: {execute, next, prev, complete}, note: {type, text},
    /// form}` (a note only when there are no actions, as mod_rest does).
    private static func encodeCommand(_ command: Element) -> JSONValue {
        var object: [String: JSONValue] = [:]
        for name in ["action", "node", "sessionid", "status"] {
            if let value = command[attribute: name] { object[name] = .string(value) }
        }
        if let actions = command.child("actions", namespace: NS.commands) {
            var out: [String: JSONValue] = [:]
            if let execute = actions[attribute: "execute"] { out["execute"] = .string(execute) }
            for action in actions.elements { out[action.name] = true }
            object["actions"] = .object(out)
        } else if let note = command.child("note", namespace: NS.commands) {
            var out: [String: JSONValue] = ["text": .string(note.text)]
            if let type = note[attribute: "type"] { out["type"] = .string(type) }
            object["note"] = .object(out)
        }
        if let form = command.child("x", namespace: DataFormJSON.namespace) { object["form"] = DataFormJSON.dataform(form) }
        return .object(object)
    }

    private static func attributesObject(_ element: Element, _ names: [String]) -> JSONValue {
        var object: [String: JSONValue] = [:]
        for name in names {
            if let value = element[attribute: name] { object[name] = .string(value) }
        }
        return .object(object)
    }

    // MARK: JSON → stanza

    /// Parses JSON text and maps it to a stanza.
    package static func decode(
        parsing bytes: some Collection<UInt8>, defaults: ReplyDefaults? = nil
    ) throws(JSONMappingError) -> Stanza {
        try decode(JSONValue.parse(bytes), defaults: defaults)
    }

    /// The stanza a JSON object describes. A string `stanza` field wins over every other field; otherwise the
    /// fields are mapped back to XML (unknown keys are ignored). `defaults` fill what the JSON leaves out.
    package static func decode(_ json: JSONValue, defaults: ReplyDefaults? = nil) throws(JSONMappingError) -> Stanza {
        guard case .object(let object) = json else {
            throw JSONMappingError(
                .notAnObject,
                "a stanza in JSON must be an object such as {\"kind\": \"message\", \"to\": \"…\", \"body\": \"…\"}, "
                    + "got \(json.kindDescription)")
        }
        let fields = Fields(object: object, path: "")
        if let xml = try fields.string("stanza", validateXML: false) {
            return try decodeStanzaField(xml, fields, defaults)
        }

        // Type and kind (mod_rest's inference, research §3.3).
        var type = try fields.string("type")
        let hasError = fields.has("error")
        if type == nil && hasError { type = "error" }
        let kind = try inferKind(fields, type: type, defaults: defaults)
        // An `error` makes an error stanza whatever `type` says, as in mod_rest (an answer to that type).
        if hasError, let given = type, given != "error" {
            try checkType(given, for: kind)
            type = "error"
        }
        // `command` and `archive` imply an iq set (an archived message's `archive` implies nothing).
        if type == nil && kind == .iq && (fields.has("command") || fields.has("archive")) { type = "set" }
        if let type {
            try checkType(type, for: kind)
        } else {
            switch kind {
            case .message: type = defaults?.messageType
            case .iq: type = defaults?.iqType ?? "get"
            case .presence: break
            }
        }
        if kind == .presence && type == "available" { type = nil }

        var element = Element(kind.rawValue, namespace: Namespace.client)
        // type, id, from, to, xml:lang: one allocation instead of one per growth of the array.
        element.attributes.reserveCapacity(5)
        element[attribute: "type"] = type
        element[attribute: "id"] = try fields.string("id") ?? defaults?.id
        element[attribute: "from"] = try fields.jid("from") ?? defaults?.from
        element[attribute: "to"] = try fields.jid("to") ?? defaults?.to
        element[attribute: "xml:lang"] = try fields.string("lang")

        if hasError {
            // An error stanza carries only its error, as mod_rest builds it.
            element.append(try decodeError(fields).element(namespace: Namespace.client))
            return Stanza(uncheckedElement: element)
        } else if type == "error", let value = fields.value("error_code") {
            // mod_rest's legacy form: `error_code` (XEP-0086) and the text in `body`; written as a defined condition
            // (the legacy code's, as XEP-0086 maps it) that keeps the code.
            var code = value.intValue
            if code == nil, case .string(let text) = value { code = Int64(text) }
            guard let code, (100...599).contains(code) else {
                throw fields.invalid("error_code", "a legacy error code such as 404", value)
            }
            var error = HTTPStanzaErrors.error(forStatus: Int(code), text: try fields.string("body")).element(namespace: Namespace.client)
            error[attribute: "code"] = String(code)
            element.append(error)
            return Stanza(uncheckedElement: element)
        } else if type == "error" {
            throw JSONMappingError(
                .invalidField,
                "a stanza of type \"error\" needs an \"error\" object such as "
                    + "{\"type\": \"cancel\", \"condition\": \"item-not-found\", \"text\": \"…\"}",
                field: "error")
        }

        switch kind {
        case .message: try decodeMessage(fields, defaults, into: &element)
        case .presence: try decodePresence(fields, into: &element)
        case .iq: try decodeIQ(fields, type: type, into: &element)
        }
        // Most JSON holds only the basic keys: then neither the schema nor the forms have anything to map.
        if fields.object.keys.contains(where: { !isBasicKey($0) }) {
            try StanzaSchema.unparseStanza(kind, fields, into: &element)
            try decodeForms(fields, kind: kind, into: &element)
        }

        if let stamp = try fields.string("delay") {
            element.append(Element("delay", namespace: NS.delay, attributes: [Attribute(name: "stamp", value: stamp)]))
        }
        if let nick = try fields.string("nick") {
            element.append(Element("nick", namespace: NS.nick, text: nick))
        }
        if let payload = try fields.object("payload") {
            guard let data = payload.object["data"] else {
                throw JSONMappingError(
                    .invalidField, "\"payload\" needs a \"data\" member holding the JSON to carry", field: "payload")
            }
            var payloadElement = Element("payload", namespace: NS.jsonPayload, text: data.serialized())
            payloadElement[attribute: "datatype"] = try payload.string("datatype")
            element.append(payloadElement)
        }
        return Stanza(uncheckedElement: element)
    }

    /// Keys decoded by hand (with their own checks) rather than through the schema.
    static func handledKeys(_ kind: StanzaKind) -> Set<String> {
        let common: Set<String> = ["to", "from", "id", "type", "lang", "delay", "nick", "payload"]
        switch kind {
        case .message: return common.union(["body", "subject", "thread", "state", "oob", "replace"])
        case .presence: return common.union(["show", "status", "priority"])
        case .iq: return common.union(["ping", "version", "archive"])
        }
    }

    /// Keys mapped by hand and keys that map to nothing (compared by length first: cheaper than hashing each key).
    static func isBasicKey(_ key: String) -> Bool {
        // By length first: a couple of comparisons per key instead of a walk through every name.
        switch key.utf8.count {
        case 2: return key == "id" || key == "to"
        case 4: return key == "kind" || key == "type" || key == "from" || key == "lang" || key == "body"
            || key == "html" || key == "show" || key == "ping" || key == "nick" || key == "room"
        case 5: return key == "state" || key == "disco" || key == "items" || key == "delay" || key == "error"
        case 6: return key == "thread" || key == "status" || key == "stanza"
        case 7: return key == "subject" || key == "replace" || key == "version" || key == "payload"
        case 8: return key == "priority"
        case 9: return key == "room_nick"
        default: return false
        }
    }

    /// Keys only `decodeForms` maps: whether it has anything to do.
    static let formKeys: Set<String> = ["command", "dataform", "formdata", "oob_url", "join", "archive"]

    /// The keys no schema describes: command (XEP-0050), dataform and formdata (XEP-0004), oob_url (XEP-0066),
    /// join (XEP-0045), and the iq archive query (XEP-0313) with mod_rest's shortcuts.
    private static func decodeForms(_ fields: Fields, kind: StanzaKind, into element: inout Element) throws(JSONMappingError) {
        guard fields.object.keys.contains(where: { formKeys.contains($0) }) else { return }
        if let value = fields.value("command") {
            var command = Element("command", namespace: NS.commands)
            switch value {
            case .string: command[attribute: "node"] = try fields.string("command")
            case .object:
                guard let object = try fields.object("command") else { break }
                for name in ["action", "node", "sessionid", "status"] { command[attribute: name] = try object.string(name) }
                if let actions = try object.object("actions") {
                    var out = Element("actions", namespace: NS.commands)
                    out[attribute: "execute"] = try actions.string("execute")
                    for name in ["next", "prev", "complete"] {
                        guard let flag = actions.value(name) else { continue }
                        guard case .bool(let on) = flag else { throw actions.invalid(name, "true or false", flag) }
                        if on { out.append(Element(name, namespace: NS.commands)) }
                    }
                    command.append(out)
                } else if let note = try object.object("note") {
                    var out = Element("note", namespace: NS.commands, text: try note.string("text") ?? "")
                    out[attribute: "type"] = try note.string("type")
                    command.append(out)
                }
                if let form = try object.object("form") {
                    command.append(try DataFormJSON.element(dataform: form))
                } else if let data = try object.object("data") {
                    command.append(try DataFormJSON.element(formdata: data, type: "submit"))
                }
            default:
                throw fields.invalid("command", "a node string or an object {\"node\", \"action\", \"sessionid\", \"form\" or \"data\", …}", value)
            }
            element.append(command)
        }
        if let form = try fields.object("dataform") { element.append(try DataFormJSON.element(dataform: form)) }
        if let data = try fields.object("formdata") { element.append(try DataFormJSON.element(formdata: data, type: nil)) }
        // mod_rest writes a message's oob both as `oob` and `oob_url`: the same URL twice makes one element.
        var oobURL = try fields.string("oob_url")
        if kind == .message, let oob = fields.value("oob"), oob == .string(oobURL ?? "") || oob["url"] == oobURL.map(JSONValue.string) {
            oobURL = nil
        }
        if let url = oobURL {
            var x = Element("x", namespace: NS.oob)
            x.append(Element("url", namespace: NS.oob, text: url))
            element.append(x)
        }
        if kind == .presence, fields.value("join") == .bool(true), !fields.has("muc") {
            element.append(Element("x", namespace: "http://jabber.org/protocol/muc"))
        }
        if kind == .iq, let value = fields.value("archive") {
            guard case .object(var archive) = value else { throw fields.invalid("archive", "an object {\"queryid\", \"form\", \"page\", …}", value) }
            if element[attribute: "type"] == "set", archive["form"] == nil {
                archive = archiveShortcuts(archive)
            }
            let property = StanzaSchema.iq.first { $0.key == "archive" }
            if let property {
                try StanzaSchema.unparse([property], Fields(object: ["archive": .object(archive)], path: ""), into: &element)
            }
        }
    }

    /// mod_rest's XEP-0313 shortcuts: `with start end before-id after-id ids` become the query's form (ids may be
    /// comma-separated), `after before max` its page.
    static func archiveShortcuts(_ input: [String: JSONValue]) -> [String: JSONValue] {
        var archive = input
        let filters = ["with", "start", "end", "before-id", "after-id", "ids"]
        if filters.contains(where: { archive[$0] != nil }) {
            if case .string(let ids)? = archive["ids"] {
                archive["ids"] = .array(ids.split(separator: ",").map { .string(String($0)) })
            }
            var formFields: [JSONValue] = [.object(["var": "FORM_TYPE", "values": .array(["urn:xmpp:mam:2"])])]
            for name in filters {
                let values: [JSONValue]
                switch archive.removeValue(forKey: name) {
                case .array(let list)?: values = list
                case let value? where value != .null: values = [value]
                default: values = []
                }
                formFields.append(.object(["var": .string(name), "values": .array(values)]))
            }
            archive["form"] = .object(["type": "submit", "fields": .array(formFields)])
        }
        if archive["after"] != nil || archive["before"] != nil || archive["max"] != nil {
            var page: [String: JSONValue] = [:]
            page["after"] = archive.removeValue(forKey: "after")
            page["before"] = archive.removeValue(forKey: "before")
            page["max"] = archive.removeValue(forKey: "max")
            archive["page"] = .object(page)
        }
        return archive
    }

    private static func inferKind(_ fields: Fields, type: String?, defaults: ReplyDefaults?) throws(JSONMappingError) -> StanzaKind {
        if let value = fields.value("kind") {
            guard case .string(let name) = value, let kind = StanzaKind(rawValue: name) else {
                throw JSONMappingError(
                    .unknownKind, "\"kind\" must be \"message\", \"presence\" or \"iq\", got \(describe(value))",
                    field: "kind")
            }
            return kind
        }
        if let type {
            if iqTypes.contains(type) { return .iq }
            if messageTypes.contains(type) { return .message }
            if presenceTypes.contains(type) { return .presence }
        }
        for (key, kind) in kindKeys where fields.has(key) { return kind }
        return defaults?.kind ?? .message
    }

    private static func checkType(_ type: String, for kind: StanzaKind) throws(JSONMappingError) {
        let allowed: [String] =
            switch kind {
            case .message: messageTypes
            case .presence: presenceTypes
            case .iq: iqTypes
            }
        guard type == "error" || allowed.contains(type) else {
            throw JSONMappingError(
                .invalidField,
                "\"type\" \(quoted(type)) is not a type of \(kind.rawValue); use one of \((allowed + ["error"]).joined(separator: ", "))",
                field: "type")
        }
    }

    private static func decodeMessage(_ fields: Fields, _ defaults: ReplyDefaults?, into element: inout Element) throws(JSONMappingError) {
        let ns = element.namespace
        if let body = try fields.string("body") { element.append(Element("body", namespace: ns, text: body)) }
        if let subject = try fields.string("subject") { element.append(Element("subject", namespace: ns, text: subject)) }

        var threadID: String?
        var threadParent: String?
        var hasThread = false
        if let value = fields.value("thread") {
            hasThread = true
            switch value {
            case .string: threadID = try fields.string("thread")
            case .object:
                let thread = try fields.object("thread")
                threadID = try thread?.string("id")
                threadParent = try thread?.string("parent")
            default:
                throw fields.invalid("thread", "an object {\"id\": …, \"parent\": …} or a string", value)
            }
        } else if let defaults, defaults.thread != nil || defaults.threadParent != nil {
            hasThread = true
            threadID = defaults.thread
            threadParent = defaults.threadParent
        }
        if hasThread {
            var thread = Element("thread", namespace: ns, text: threadID ?? "")
            thread[attribute: "parent"] = threadParent
            element.append(thread)
        }

        if let html = try fields.string("html") { element.append(try decodeHTML(html)) }
        if let state = try fields.string("state") {
            guard chatStates.contains(state) else {
                throw JSONMappingError(
                    .invalidField,
                    "\"state\" must be one of \(chatStates.joined(separator: ", ")), got \(quoted(state))", field: "state")
            }
            element.append(Element(state, namespace: NS.chatStates))
        }
        if let value = fields.value("oob") {
            var url: String?
            var desc: String?
            switch value {
            case .string: url = try fields.string("oob")
            case .object:
                let oob = try fields.object("oob")
                url = try oob?.string("url")
                desc = try oob?.string("desc")
            default:
                throw fields.invalid("oob", "an object {\"url\": …, \"desc\": …} or a URL string", value)
            }
            guard let url, !url.isEmpty else {
                throw JSONMappingError(.invalidField, "\"oob\" needs a non-empty \"url\"", field: "oob.url")
            }
            var x = Element("x", namespace: NS.oob)
            x.append(Element("url", namespace: NS.oob, text: url))
            if let desc { x.append(Element("desc", namespace: NS.oob, text: desc)) }
            element.append(x)
        }
        if let id = try fields.string("replace") {
            guard !id.isEmpty else {
                throw JSONMappingError(.invalidField, "\"replace\" must be the id of the message to correct", field: "replace")
            }
            element.append(Element("replace", namespace: NS.correction, attributes: [Attribute(name: "id", value: id)]))
        }
    }

    /// XEP-0071 XHTML: a string holding `<body>…</body>` (a string without the wrapper is wrapped).
    private static func decodeHTML(_ html: String) throws(JSONMappingError) -> Element {
        let source = html.trimmingWhitespace().hasPrefix("<body") ? html : "<body>" + html + "</body>"
        let elements: [Element]
        do {
            elements = try XMLStreamParser.parseFragment(Array(source.utf8), defaultNamespace: NS.xhtml, maxElements: 1)
        } catch {
            throw JSONMappingError(.invalidField, "\"html\" is not well-formed XHTML: \(error.message)", field: "html")
        }
        guard let body = elements.first, elements.count == 1, body.name == "body", body.namespace == NS.xhtml else {
            throw JSONMappingError(
                .invalidField, "\"html\" must be one XHTML <body>…</body> element (or markup to put inside one)",
                field: "html")
        }
        var html = Element("html", namespace: NS.xhtmlIM)
        html.append(body)
        return html
    }

    private static func decodePresence(_ fields: Fields, into element: inout Element) throws(JSONMappingError) {
        let ns = element.namespace
        if let show = try fields.string("show") {
            guard shows.contains(show) else {
                throw JSONMappingError(
                    .invalidField,
                    "\"show\" must be one of \(shows.joined(separator: ", ")) (leave it out for plain available), got \(quoted(show))",
                    field: "show")
            }
            element.append(Element("show", namespace: ns, text: show))
        }
        if let status = try fields.string("status") { element.append(Element("status", namespace: ns, text: status)) }
        if let value = fields.value("priority") {
            guard let priority = value.intValue, (-128...127).contains(priority) else {
                throw fields.invalid("priority", "an integer from -128 to 127", value)
            }
            element.append(Element("priority", namespace: ns, text: String(priority)))
        }
    }

    private static func decodeIQ(_ fields: Fields, type: String?, into element: inout Element) throws(JSONMappingError) {
        let present = iqPayloadKeys.filter { key in
            // `ping: false` and `disco: false` ask for nothing.
            guard let value = fields.value(key) else { return false }
            return value != .bool(false)
        }
        if present.count > 1 {
            throw JSONMappingError(
                .invalidField,
                "an iq carries one payload, got \(present.map { "\"\($0)\"" }.joined(separator: " and ")); send one per iq",
                field: present[1])
        }

        if let value = fields.value("ping") {
            guard case .bool(let ping) = value else { throw fields.invalid("ping", "true", value) }
            if ping { element.append(Element("ping", namespace: NS.ping)) }
        }
        if let value = fields.value("version") {
            var query = Element("query", namespace: NS.version)
            switch value {
            case .bool(true): break
            case .object:
                guard let version = try fields.object("version") else { break }
                for name in ["name", "version", "os"] {
                    if let text = try version.string(name) { query.append(Element(name, namespace: NS.version, text: text)) }
                }
            default:
                throw fields.invalid("version", "an object {\"name\", \"version\", \"os\"} ({} for a query)", value)
            }
            element.append(query)
        }
        if let value = fields.value("disco"), value != .bool(false) {
            var query = Element("query", namespace: NS.discoInfo)
            switch value {
            case .bool(true): break
            case .string: query[attribute: "node"] = try fields.string("disco")
            case .object:
                guard let disco = try fields.object("disco") else { break }
                query[attribute: "node"] = try disco.string("node")
                for (index, identity) in try disco.objects("identities").enumerated() {
                    let field = "disco.identities[\(index)]"
                    var e = Element("identity", namespace: NS.discoInfo)
                    e[attribute: "category"] = try identity.requiredString("category", in: field)
                    e[attribute: "type"] = try identity.requiredString("type", in: field)
                    e[attribute: "name"] = try identity.string("name")
                    query.append(e)
                }
                for feature in try disco.strings("features") {
                    query.append(Element("feature", namespace: NS.discoInfo, attributes: [Attribute(name: "var", value: feature)]))
                }
                // XEP-0128: each extension is a result form whose hidden FORM_TYPE is its key.
                if let extensions = try disco.object("extensions") {
                    for formType in extensions.object.keys.sorted() {
                        guard let data = try extensions.object(formType) else { continue }
                        var form = try DataFormJSON.element(formdata: data, type: "result")
                        try checkXMLCharacters(formType, field: extensions.name(formType))
                        var field = Element("field", namespace: DataFormJSON.namespace,
                                            attributes: [Attribute(name: "type", value: "hidden"), Attribute(name: "var", value: "FORM_TYPE")])
                        field.append(Element("value", namespace: DataFormJSON.namespace, text: formType))
                        form.children.insert(.element(field), at: 0)
                        query.append(form)
                    }
                }
            default:
                throw fields.invalid("disco", "true, a node string or an object {\"node\", \"identities\", \"features\"}", value)
            }
            element.append(query)
        }
        if let value = fields.value("items"), value != .bool(false) {
            var query = Element("query", namespace: NS.discoItems)
            var list: [JSONValue] = []
            var listField = "items"
            switch value {
            case .bool(true): break
            case .string: query[attribute: "node"] = try fields.string("items")
            case .array(let values): list = values
            case .object:
                // Input-only form: {node, items: […]}.
                guard let items = try fields.object("items") else { break }
                query[attribute: "node"] = try items.string("node")
                if let value = items.value("items") {
                    guard case .array(let values) = value else { throw items.invalid("items", "an array", value) }
                    list = values
                    listField = "items.items"
                }
            default:
                throw fields.invalid("items", "true, a node string or an array of {\"jid\", \"node\", \"name\"}", value)
            }
            for (index, entry) in list.enumerated() {
                let field = "\(listField)[\(index)]"
                var item = Element("item", namespace: NS.discoItems)
                switch entry {
                case .string(let jid):
                    item[attribute: "jid"] = try validJID(jid, field: field)
                case .object(let members):
                    let object = Fields(object: members, path: field)
                    guard let jid = try object.jid("jid") else {
                        throw JSONMappingError(.invalidField, "\"\(field)\" needs a \"jid\"", field: field + ".jid")
                    }
                    item[attribute: "jid"] = jid
                    item[attribute: "node"] = try object.string("node")
                    item[attribute: "name"] = try object.string("name")
                default:
                    throw JSONMappingError(
                        .invalidField, "\"\(field)\" must be an object {\"jid\", \"node\", \"name\"} or a JID string, got \(describe(entry))",
                        field: field)
                }
                query.append(item)
            }
            element.append(query)
        }
    }

    private static func decodeError(_ fields: Fields) throws(JSONMappingError) -> StanzaError {
        var type = StanzaError.ErrorType.cancel
        var condition = StanzaError.Condition.undefinedCondition
        var text: String?
        var by: String?
        var conditionName: String?
        switch fields.value("error") {
        case .string?:
            conditionName = try fields.string("error")
        case .object?:
            guard let error = try fields.object("error") else { break }
            if let name = try error.string("type") {
                guard let value = StanzaError.ErrorType(rawValue: name) else {
                    throw JSONMappingError(
                        .invalidField,
                        "\"error.type\" must be one of \(StanzaError.ErrorType.allCases.map(\.rawValue).joined(separator: ", ")), got \(quoted(name))",
                        field: "error.type")
                }
                type = value
            }
            conditionName = try error.string("condition")
            text = try error.string("text")
            by = try error.jid("by")
        case let value?:
            throw fields.invalid("error", "an object {\"type\", \"condition\", \"text\"} or a condition string", value)
        case nil:
            break
        }
        if let conditionName {
            condition = StanzaError.Condition(rawValue: conditionName)
            guard condition.isDefined else {
                throw JSONMappingError(
                    .invalidField,
                    "\"error.condition\" \(quoted(conditionName)) is not an RFC 6120 condition; use one such as "
                        + "bad-request, item-not-found, service-unavailable, internal-server-error or undefined-condition",
                    field: "error.condition")
            }
        }
        return StanzaError(type, condition, text: text, by: by)
    }

    /// The `stanza` escape hatch: the XML as given; its own attributes win, then the JSON's to/from/id,
    /// then the defaults.
    private static func decodeStanzaField(_ xml: String, _ fields: Fields, _ defaults: ReplyDefaults?) throws(JSONMappingError) -> Stanza {
        let elements: [Element]
        do {
            elements = try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)
        } catch {
            throw JSONMappingError(.invalidStanza, "\"stanza\" is not one well-formed XML stanza: \(error.message)", field: "stanza")
        }
        guard let root = elements.first else {
            throw JSONMappingError(.invalidStanza, "\"stanza\" holds no XML element", field: "stanza")
        }
        guard var stanza = Stanza(root) else {
            throw JSONMappingError(
                .invalidStanza,
                "\"stanza\" must be a <message/>, <presence/> or <iq/> in namespace jabber:client, got <\(root.name)>"
                    + (root.namespace.map { " in namespace \($0)" } ?? ""),
                field: "stanza")
        }
        for name in ["to", "from"] {
            if let value = stanza.element[attribute: name] { _ = try validJID(value, field: "stanza@\(name)") }
        }
        if stanza.to == nil { stanza.to = try fields.jid("to") ?? defaults?.to }
        if stanza.from == nil { stanza.from = try fields.jid("from") ?? defaults?.from }
        if stanza.id == nil { stanza.id = try fields.string("id") ?? defaults?.id }
        return stanza
    }

    // MARK: Field access

    /// Typed access to an object's members, with errors that name the field. `null` counts as absent.
    struct Fields {
        let object: [String: JSONValue]
        /// Dotted prefix for nested objects ("" at the top).
        let path: String

        func name(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

        func value(_ key: String) -> JSONValue? {
            // Decoding asks for every key the mapping knows. In a small object (most answers: a body and a ref)
            // comparing its few keys costs less than hashing each key asked for.
            let found = object.count <= 4 ? object.first { $0.key == key }?.value : object[key]
            guard let value = found, value != .null else { return nil }
            return value
        }

        func has(_ key: String) -> Bool { value(key) != nil }

        func invalid(_ key: String, _ expectation: String, _ value: JSONValue) -> JSONMappingError {
            JSONMappingError(
                .invalidField, "\"\(name(key))\" must be \(expectation), got \(StanzaJSON.describe(value))", field: name(key))
        }

        /// A string that XML can carry (unless `validateXML` is false).
        func string(_ key: String, validateXML: Bool = true) throws(JSONMappingError) -> String? {
            guard let value = value(key) else { return nil }
            guard case .string(let string) = value else { throw invalid(key, "a string", value) }
            if validateXML { try StanzaJSON.checkXMLCharacters(string, field: name(key)) }
            return string
        }

        func requiredString(_ key: String, in context: String) throws(JSONMappingError) -> String {
            guard let string = try string(key) else {
                throw JSONMappingError(.invalidField, "\"\(context)\" needs a string \"\(key)\"", field: name(key))
            }
            return string
        }

        /// A valid JID, normalised (domain lower-cased, trailing dot removed).
        func jid(_ key: String) throws(JSONMappingError) -> String? {
            guard let string = try string(key, validateXML: false) else { return nil }
            return try StanzaJSON.validJID(string, field: name(key))
        }

        func object(_ key: String) throws(JSONMappingError) -> Fields? {
            guard let value = value(key) else { return nil }
            guard case .object(let members) = value else { throw invalid(key, "an object", value) }
            return Fields(object: members, path: name(key))
        }

        func objects(_ key: String) throws(JSONMappingError) -> [Fields] {
            guard let value = value(key) else { return [] }
            guard case .array(let values) = value else { throw invalid(key, "an array of objects", value) }
            var result: [Fields] = []
            for (index, value) in values.enumerated() {
                guard case .object(let members) = value else {
                    throw invalid("\(key)[\(index)]", "an object", value)
                }
                result.append(Fields(object: members, path: name("\(key)[\(index)]")))
            }
            return result
        }

        func strings(_ key: String) throws(JSONMappingError) -> [String] {
            guard let value = value(key) else { return [] }
            guard case .array(let values) = value else { throw invalid(key, "an array of strings", value) }
            var result: [String] = []
            for (index, value) in values.enumerated() {
                guard case .string(let string) = value else { throw invalid("\(key)[\(index)]", "a string", value) }
                try StanzaJSON.checkXMLCharacters(string, field: name("\(key)[\(index)]"))
                result.append(string)
            }
            return result
        }
    }

    static func validJID(_ string: String, field: String) throws(JSONMappingError) -> String {
        // JID validation allows U+FFFE and U+FFFF in a resource; XML cannot carry them.
        try checkXMLCharacters(string, field: field)
        do {
            return try JID(string).description
        } catch {
            throw JSONMappingError(.invalidJID, "\"\(field)\" is not a valid JID: \(error)", field: field)
        }
    }

    /// Refuses characters XML 1.0 cannot carry, so the failure names the field instead of surfacing later
    /// as a serialization error.
    static func checkXMLCharacters(_ string: String, field: String) throws(JSONMappingError) {
        for scalar in string.unicodeScalars {
            let v = scalar.value
            if (v < 0x20 && v != 0x09 && v != 0x0A && v != 0x0D) || v == 0xFFFE || v == 0xFFFF {
                throw JSONMappingError(
                    .invalidField, "\"\(field)\" contains the character U+\(XMLWriter.hex4(v)), which XML cannot carry",
                    field: field)
            }
        }
    }

    static func describe(_ value: JSONValue) -> String {
        switch value {
        case .array, .object: value.kindDescription
        case .string(let string): quoted(string)
        default: value.serialized()
        }
    }

    static func quoted(_ string: String) -> String {
        let shown = string.count > 60 ? String(string.prefix(60)) + "…" : string
        return JSONValue.string(shown).serialized()
    }
}
