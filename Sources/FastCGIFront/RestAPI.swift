// The mod_rest-compatible REST API (SPEC §9) as request in, response out: routes, auth, body parsing,
// stamping and validation with their status codes, content negotiation, the iq long-poll, /health.

import Foundation
import Logging
import Synchronization
import XMPPCore

package struct RestSettings: Sendable {
    package var domain: String
    package var path: String
    package var credentials: [String]
    package var iqTimeout: Duration
    package var maxIQTimeout: Duration
    package var maxBody: Int
    package var maxPending: Int
    package var sendWait: Duration
    package var maxStanza: Int

    package init(domain: String, path: String = "/rest", credentials: [String], iqTimeout: Duration = .seconds(120),
                maxIQTimeout: Duration = .seconds(300), maxBody: Int = 196_608, maxPending: Int = 10_000,
                sendWait: Duration = .seconds(5), maxStanza: Int = 524_288) {
        self.domain = domain.lowercased()
        var path = path
        while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
        self.path = path
        self.credentials = credentials
        self.iqTimeout = iqTimeout
        self.maxIQTimeout = maxIQTimeout
        self.maxBody = maxBody
        self.maxPending = maxPending
        self.sendWait = sendWait
        self.maxStanza = maxStanza
    }
}

/// A failed request: HTTP status plus the stanza error that describes it.
struct RestFailure: Error {
    var status: Int
    var error: StanzaError
    var headers: [(String, String)] = []

    init(_ status: Int, _ type: StanzaError.ErrorType, _ condition: StanzaError.Condition, _ text: String, headers: [(String, String)] = []) {
        self.status = status
        self.error = StanzaError(type, condition, text: text)
        self.headers = headers
    }
}

package final class RestAPI: Sendable {
    package let settings: RestSettings
    let sender: any StanzaSender
    let rooms: (any RoomDirectory)?
    private let credentials: Mutex<[String]>
    /// `[[hook]]`s by name (SPEC §16), and what runs their handlers.
    let hooks: Mutex<[String: HookSettings]>
    let hookRunner: (any HookRunner)?
    let logger: Logger?
    /// The pull routes' update queues by route name (SPEC §17).
    let updateQueues = Mutex<[String: UpdateQueue]>([:])
    /// `[metrics]` (SPEC §19): where the Prometheus text is served, who may read it, and what renders it.
    let metrics = Mutex<MetricsEndpoint?>(nil)

    package struct MetricsEndpoint: Sendable {
        package var path: String
        /// Empty: no Authorization needed (keep the location internal in nginx).
        package var credentials: [String]
        package var render: @Sendable () -> [UInt8]

        package init(path: String, credentials: [String], render: @escaping @Sendable () -> [UInt8]) {
            self.path = path
            self.credentials = credentials
            self.render = render
        }
    }

    /// Start and SIGHUP: the metrics endpoint (nil: none).
    package func setMetrics(_ endpoint: MetricsEndpoint?) {
        metrics.withLock { $0 = endpoint }
    }

    package init(settings: RestSettings, sender: any StanzaSender, hooks: [HookSettings] = [],
                 hookRunner: (any HookRunner)? = nil, logger: Logger? = nil, rooms: (any RoomDirectory)? = nil) {
        self.settings = settings
        self.sender = sender
        self.rooms = rooms
        self.credentials = Mutex(settings.credentials)
        self.hooks = Mutex(Dictionary(hooks.map { ($0.name, $0) }, uniquingKeysWith: { $1 }))
        self.hookRunner = hookRunner
        self.logger = logger
    }

    /// SIGHUP: the accepted Authorization values from now on.
    package func reload(credentials: [String]) {
        self.credentials.withLock { $0 = credentials }
    }

    /// SIGHUP: the hooks from now on (requests already running finish with the hook they started with).
    package func reload(hooks: [HookSettings]) {
        self.hooks.withLock { $0 = Dictionary(hooks.map { ($0.name, $0) }, uniquingKeysWith: { $1 }) }
    }

    static let xmppXML = "application/xmpp+xml"
    static let json = "application/json"

    /// Answers `request` through `respond`, exactly once: at once for what needs no XMPP round trip, else when the
    /// link has taken the stanza or the iq's reply has come. The cancellation (for a request that waits) ends the
    /// wait early with 503.
    @discardableResult
    package func handle(_ request: RestRequest, respond: @escaping @Sendable (RestResponse) -> Void) -> RestCancellation? {
        let output = Negotiation.choose(accept: request.accept, requestType: HTTPMediaType.essence(request.contentType))
        do {
            return try route(request, output: output, respond: respond)
        } catch let failure as RestFailure {
            respond(errorResponse(failure, output: output))
        } catch {
            respond(errorResponse(RestFailure(500, .wait, .internalServerError, "\(error)"), output: output))
        }
        return nil
    }

    /// `handle` for callers that can wait (tests, tools).
    package func handle(_ request: RestRequest) async -> RestResponse {
        await withCheckedContinuation { (continuation: CheckedContinuation<RestResponse, Never>) in
            handle(request) { continuation.resume(returning: $0) }
        }
    }

    // MARK: Routing

    private func route(_ request: RestRequest, output: String, respond: @escaping @Sendable (RestResponse) -> Void) throws -> RestCancellation? {
        if let endpoint = metrics.withLock({ $0 }), request.path == endpoint.path {
            try allow(request, ["GET", "HEAD"])
            if !endpoint.credentials.isEmpty { try authorize(request, accepting: endpoint.credentials) }
            respond(RestResponse(status: 200, headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                                 body: request.method.uppercased() == "HEAD" ? [] : endpoint.render()))
            return nil
        }
        guard request.path == settings.path || request.path.hasPrefix(settings.path + "/") else {
            throw RestFailure(404, .cancel, .itemNotFound, "no such resource; the REST API is at \(settings.path)")
        }
        let rest = request.path.dropFirst(settings.path.count)
        // Split on the byte: a "/" followed by a combining mark (or an emoji modifier) is one Character.
        var segments = rest.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
            .map { Self.percentDecode(String(decoding: $0, as: UTF8.self)) }
        if segments.first == "" { segments.removeFirst() }
        if segments.last == "" && segments.count == 1 { segments.removeLast() }

        if segments == ["health"] {
            try allow(request, ["GET", "HEAD"])
            respond(health())
            return nil
        }
        if segments.count == 2, segments[0] == "hooks" {
            return try hook(segments[1], request: request, output: output, respond: respond)
        }
        try authorize(request)
        if segments.count == 2, segments[0] == "updates" {
            return try updates(segments[1], request: request, respond: respond)
        }
        if segments.count == 2, segments[0] == "events" {
            try events(segments[1], request: request, respond: respond)
            return nil
        }
        switch segments.count {
        case 0:
            try allow(request, ["POST"])
            let stanza = try parse(request, kind: nil, type: nil, to: nil)
            return try send(stanza, request: request, output: output, respond: respond)
        case 1 where segments[0] == "rooms":
            try allow(request, ["GET", "HEAD"])
            let body = (rooms?.listing() ?? .array([])).serializedBytes()
            respond(RestResponse(status: 200, headers: [("Content-Type", Self.json)], body: body))
            return nil
        case 1 where segments[0] == "echo":
            try allow(request, ["POST"])
            // Echo shows any stanza mod_rest's mapping can express (iq results and errors too); what may be sent
            // is checked when sending.
            let stanza = try stamp(try parse(request, kind: nil, type: nil, to: nil), sending: false)
            respond(encode(stanza, status: 200, output: output))
            return nil
        case 2:
            try allow(request, ["GET"])
            let stanza = try stamp(try queryIQ(segments[0], to: segments[1], query: request.query))
            return try send(stanza, request: request, output: output, respond: respond)
        case 3:
            try allow(request, ["POST"])
            guard let kind = StanzaKind(rawValue: segments[0]) else {
                throw RestFailure(404, .cancel, .itemNotFound, "unknown kind \(JID.quoted(segments[0])) in the path (use message, presence or iq)")
            }
            let stanza = try parse(request, kind: kind, type: segments[1].isEmpty ? nil : segments[1], to: segments[2].isEmpty ? nil : segments[2])
            return try send(stanza, request: request, output: output, respond: respond)
        default:
            throw RestFailure(404, .cancel, .itemNotFound, "no such resource under \(settings.path)")
        }
    }

    func allow(_ request: RestRequest, _ methods: [String]) throws {
        guard methods.contains(request.method.uppercased()) else {
            throw RestFailure(405, .cancel, .notAllowed, "method \(request.method) is not allowed here; use \(methods.joined(separator: " or "))",
                              headers: [("Allow", methods.joined(separator: ", "))])
        }
    }

    // MARK: Auth

    func authorize(_ request: RestRequest) throws {
        try authorize(request, accepting: credentials.withLock { $0 })
    }

    func authorize(_ request: RestRequest, accepting credentials: [String]) throws {
        guard let header = request.authorization, !header.isEmpty else {
            throw RestFailure(401, .auth, .notAuthorized, "credentials required (Authorization header)",
                              headers: [("WWW-Authenticate", "Bearer realm=\"\(settings.domain)\"")])
        }
        let presented = Self.normalizedCredential(header)
        var accepted = false
        for credential in credentials {
            // Every credential is compared in full, so timing says nothing about which one nearly matched.
            if Self.constantTimeEqual(presented, Self.normalizedCredential(credential)) { accepted = true }
        }
        guard accepted else {
            throw RestFailure(403, .auth, .forbidden, "credentials not accepted")
        }
    }

    /// "Scheme data" with the scheme lower-cased (schemes are case-insensitive, the data is not).
    static func normalizedCredential(_ value: String) -> [UInt8] {
        let trimmed = value.drop { $0 == " " }
        guard let space = trimmed.firstIndex(of: " ") else { return Array(trimmed.utf8) }
        return Array((trimmed[..<space].lowercased() + trimmed[space...]).utf8)
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(a.count == b.count ? 0 : 1)
        for index in 0..<max(a.count, b.count) {
            difference |= (index < a.count ? a[index] : 0) ^ (index < b.count ? b[index] : 0)
        }
        return difference == 0
    }

    // MARK: Health

    private func health() -> RestResponse {
        let state = sender.linkState
        var fields: [String: JSONValue] = ["component": .string(state), "jid": .string(settings.domain)]
        var up = state == "connected"
        // With an instance link (SPEC §20), iq requests need it too: a balancer sends this instance nothing until both are up.
        if let instance = sender.instanceLinkState {
            fields["instance"] = .string(instance.state)
            fields["instance_jid"] = .string(instance.jid)
            up = up && instance.state == "connected"
        }
        let body = JSONValue.object(fields).serializedBytes()
        return RestResponse(status: up ? 200 : 503, headers: [("Content-Type", Self.json)], body: body)
    }

    // MARK: Body → stanza

    /// 413 for a body over `max_body`.
    func checkBodySize(_ request: RestRequest) throws {
        if let length = request.contentLength, length > settings.maxBody {
            throw RestFailure(413, .modify, .resourceConstraint, "body of \(length) bytes exceeds max_body (\(settings.maxBody) bytes)")
        }
        guard request.body.count <= settings.maxBody, !request.bodyTooLarge else {
            throw RestFailure(413, .modify, .resourceConstraint, "body exceeds max_body (\(settings.maxBody) bytes)")
        }
    }

    private func parse(_ request: RestRequest, kind: StanzaKind?, type: String?, to: String?) throws -> Stanza {
        try checkBodySize(request)
        let media = HTTPMediaType.essence(request.contentType)
        if request.body.isEmpty && (media.isEmpty || media == "application/x-www-form-urlencoded") {
            guard let kind else {
                throw RestFailure(400, .modify, .badRequest, "empty body: send a stanza (XML, JSON, form or text)")
            }
            return try fromJSON(.object([:]), kind: kind, type: type, to: to)
        }
        switch media {
        case Self.xmppXML, "application/xml", "text/xml":
            return try fromXML(request.body)
        case Self.json:
            let value: JSONValue
            do {
                value = try JSONValue.parse(request.body)
            } catch {
                throw RestFailure(400, .modify, .badRequest, "malformed JSON: \(error.message)")
            }
            return try fromJSON(value, kind: kind, type: type, to: to)
        case "application/x-www-form-urlencoded":
            switch FormBody.decode(request.body, charset: try charset(of: request)) {
            case .success(let form):
                return try fromJSON(.object(form.mapValues { .string($0) }), kind: kind, type: type, to: to)
            case .failure(let failure):
                throw RestFailure(400, .modify, .badRequest, "malformed form body: \(failure.description)")
            }
        case "text/plain":
            let text: String
            switch try charset(of: request).decode(request.body) {
            case .success(let decoded): text = decoded
            case .failure(let failure): throw RestFailure(400, .modify, .badRequest, "the text body \(failure.description)")
            }
            switch kind ?? .message {
            case .message:
                guard to != nil else {
                    throw RestFailure(422, .modify, .badRequest, "a text/plain body needs the recipient in the path: POST \(settings.path)/message/chat/{to}")
                }
                return try fromJSON(.object(["body": .string(text)]), kind: .message, type: type ?? "chat", to: to)
            case .presence:
                return try fromJSON(.object(["show": .string(text)]), kind: .presence, type: type, to: to)
            case .iq:
                throw RestFailure(422, .modify, .badRequest, "an iq cannot be sent as text/plain")
            }
        case "":
            throw RestFailure(415, .cancel, .featureNotImplemented, "Content-Type missing; use application/xmpp+xml, application/json, application/x-www-form-urlencoded or text/plain")
        default:
            throw RestFailure(415, .cancel, .featureNotImplemented, "unsupported Content-Type \(JID.quoted(media)); use application/xmpp+xml, application/json, application/x-www-form-urlencoded or text/plain")
        }
    }

    /// The body's charset (text and form bodies); 415 for one we do not read.
    private func charset(of request: RestRequest) throws -> BodyCharset {
        do {
            return try BodyCharset.of(contentType: request.contentType)
        } catch {
            throw RestFailure(415, .cancel, .featureNotImplemented,
                              "charset \(JID.quoted(error.name)) is not supported; send UTF-8 (or ISO-8859-1 or US-ASCII)")
        }
    }

    private func fromXML(_ body: [UInt8]) throws -> Stanza {
        let elements: [Element]
        do {
            elements = try XMLStreamParser.parseFragment(body, limits: XMLLimits(maxStanzaBytes: settings.maxBody), maxElements: 1)
        } catch {
            let text = error.code == .multipleRoots ? "the body must hold exactly one stanza" : "malformed XML: \(error.message)"
            throw RestFailure(400, .modify, .badRequest, text)
        }
        guard let element = elements.first else {
            throw RestFailure(400, .modify, .badRequest, "the body holds no stanza")
        }
        guard element.namespace == Namespace.client else {
            throw RestFailure(422, .modify, .badRequest, "the stanza's xmlns must be jabber:client or absent, not \(JID.quoted(element.namespace ?? ""))")
        }
        guard let stanza = Stanza(element) else {
            throw RestFailure(422, .modify, .badRequest, "<\(element.name)> is not a stanza (use message, presence or iq)")
        }
        return stanza
    }

    func fromJSON(_ value: JSONValue, kind: StanzaKind?, type: String?, to: String?) throws -> Stanza {
        guard case .object(var object) = value else {
            throw RestFailure(400, .modify, .badRequest, "the JSON body must be an object such as {\"to\": \"…\", \"body\": \"…\"}")
        }
        // Path values win over the body (mod_rest); `to` only when the path has one.
        if let kind { object["kind"] = .string(kind.rawValue) }
        if let type { object["type"] = .string(type) }
        if let to { object["to"] = .string(to) }
        do {
            return try StanzaJSON.decode(.object(object))
        } catch {
            let status = error.code == .invalidJID ? 422 : 400
            throw RestFailure(status, .modify, error.code == .invalidJID ? .jidMalformed : .badRequest, error.message)
        }
    }

    /// The iq payload keys `GET {path}/{query}/{to}` accepts: mod_rest's (any iq key of the mapping) and `time`.
    static let queryKeys: Set<String> = [
        "ping", "version", "disco", "items", "command", "archive", "extdisco", "lastactivity", "oob", "payload", "stats",
        "upload_request", "register", "gateway", "blocklist",
    ]

    /// `GET {path}/{query}/{to}`: an iq with the named payload, its fields from the query string (mod_rest's
    /// shortcut: `?node=…` for disco, `?with=…&max=…` for archive, `?filename=…&size=…` for upload_request).
    /// `command` and `archive` make a set, the others a get.
    private func queryIQ(_ query: String, to: String, query parameters: String) throws -> Stanza {
        let values: [String: String]
        switch FormBody.decode(Array(parameters.utf8), charset: .utf8) {
        case .success(let decoded): values = decoded
        case .failure(let failure): throw RestFailure(400, .modify, .badRequest, "malformed query string: \(failure.description)")
        }
        if query == "time" {
            var iq = Stanza(kind: .iq, type: "get", to: to)
            iq.element.append(Element("time", namespace: "urn:xmpp:time"))
            return iq
        }
        guard Self.queryKeys.contains(query) else {
            throw RestFailure(404, .cancel, .itemNotFound,
                              "unknown query \(JID.quoted(query)); use one of \((Self.queryKeys.sorted() + ["time"]).joined(separator: ", "))")
        }
        let payload: JSONValue
        switch query {
        case "ping": payload = true
        case "payload": payload = .object(["datatype": values["datatype"].map(JSONValue.string) ?? .null,
                                           "data": values["data"].map(JSONValue.string) ?? .null])
        case "command" where values.count == 1 && values["node"] != nil: payload = .string(values["node"] ?? "")
        default: payload = .object(values.mapValues(JSONValue.string))
        }
        return try fromJSON(.object(["kind": "iq", query: payload]), kind: nil, type: nil, to: to)
    }

    // MARK: Stamping and validation (SPEC §9)

    func stamp(_ input: Stanza, sending: Bool = true) throws -> Stanza {
        var stanza = Stanza(kind: input.kind)
        stanza.element.children = input.element.children
        stanza.type = input.type
        stanza.lang = input.lang
        stanza.id = input.id ?? RandomID.make()
        var to: JID?
        if let toValue = input.to, !toValue.isEmpty {
            guard let parsed = JID.parse(toValue) else {
                throw RestFailure(422, .modify, .jidMalformed, "invalid JID in \"to\": \(JID.quoted(toValue))")
            }
            to = parsed
            stanza.to = parsed.description
        } else if sending {
            throw RestFailure(422, .modify, .badRequest, "the stanza needs a \"to\"")
        }
        if let fromValue = input.from {
            guard let from = JID.parse(fromValue) else {
                throw RestFailure(422, .modify, .jidMalformed, "invalid JID in \"from\": \(JID.quoted(fromValue))")
            }
            guard from.domain == settings.domain else {
                throw RestFailure(403, .auth, .forbidden, "\"from\" must be the component domain \(settings.domain) or an address in it, not \(JID.quoted(fromValue))")
            }
            stanza.from = from.description
        } else if stanza.kind == .message, stanza.type == "groupchat", let to, let occupant = rooms?.occupantJID(inRoom: to.bare.description) {
            // A message to a room we keep goes from the JID we joined it with (SPEC §14), or the room refuses it.
            stanza.from = occupant
        } else {
            stanza.from = settings.domain
        }
        if stanza.kind == .iq && sending {
            guard stanza.type == "get" || stanza.type == "set" else {
                throw RestFailure(422, .modify, .badRequest, "an iq must be type get or set (got \(JID.quoted(stanza.type ?? "")))")
            }
            let children = stanza.element.children.filter { if case .element = $0 { true } else { false } }
            guard children.count == 1 else {
                throw RestFailure(422, .modify, .badRequest, "an iq must have exactly one child element (got \(children.count))")
            }
        }
        return stanza
    }

    // MARK: Sending

    private func send(_ parsed: Stanza, request: RestRequest, output: String,
                      respond: @escaping @Sendable (RestResponse) -> Void) throws -> RestCancellation? {
        let stanza = try stamp(parsed)
        if stanza.kind != .iq {
            return sender.deliver(stanza, wait: settings.sendWait) { [self] result in
                switch result {
                case .success: respond(RestResponse(status: 202))
                case .failure(let error): respond(errorResponse(failure(for: error, iq: false), output: output))
                }
            }
        }
        var timeout = settings.iqTimeout
        if let header = request.timeout {
            guard let seconds = Int(header.trimmingCharacters(in: .whitespaces)), seconds > 0 else {
                throw RestFailure(400, .modify, .badRequest, "Rest-Timeout must be a positive number of seconds")
            }
            timeout = .seconds(seconds)
        }
        timeout = min(timeout, settings.maxIQTimeout)
        if let matches = Self.archiveResults(of: stanza) {
            // mod_rest's answer to an archive query: its result messages, then the iq's reply, all in one body.
            return sender.ask(stanza, collecting: matches, timeout: timeout, maxPending: settings.maxPending) { [self] result in
                switch result {
                case .success(let stanzas): respond(encode(stanzas, status: 200, output: output))
                case .failure(let error): respond(errorResponse(failure(for: error, iq: true), output: output))
                }
            }
        }
        return sender.ask(stanza, timeout: timeout, maxPending: settings.maxPending) { [self] result in
            switch result {
            case .success(let reply): respond(encode(reply, status: 200, output: output))
            case .failure(let error): respond(errorResponse(failure(for: error, iq: true), output: output))
            }
        }
    }

    static let mam = "urn:xmpp:mam:2"

    /// For a XEP-0313 query, what its results look like: messages to the querying JID with a `<result/>` of the
    /// same queryid.
    static func archiveResults(of iq: Stanza) -> (@Sendable (Stanza) -> Bool)? {
        guard iq.kind == .iq, iq.type == "set", let query = iq.element.child("query", namespace: mam) else { return nil }
        let queryID = query[attribute: "queryid"]
        let querier = iq.from
        return { stanza in
            guard stanza.kind == .message, stanza.to == querier,
                  let result = stanza.element.child("result", namespace: mam) else { return false }
            return result[attribute: "queryid"] == queryID
        }
    }

    private func failure(for error: SendFailure, iq: Bool) -> RestFailure {
        let retry = [("Retry-After", "\(max(1, settings.sendWait.components.seconds))")]
        switch error.reason {
        case .timeout:
            return RestFailure(504, .wait, .remoteServerTimeout, "no reply within the timeout")
        case .linkLost:
            return RestFailure(502, .wait, .recipientUnavailable, "the component link was lost while waiting for the reply")
        case .tooManyPending:
            return RestFailure(503, .wait, .resourceConstraint, "too many requests are waiting for replies (max_pending)", headers: retry)
        case .tooLarge:
            return RestFailure(413, .modify, .resourceConstraint, error.message)
        case .invalidFrom:
            return RestFailure(403, .auth, .forbidden, error.message)
        case .invalidStanza:
            return RestFailure(422, .modify, .badRequest, error.message)
        case .duplicateID:
            return RestFailure(409, .cancel, .conflict, error.message)
        case .unavailable(let why):
            // Queue full, expired (link down longer than send_wait / the queue TTL), shutting down.
            return RestFailure(503, .wait, .serviceUnavailable, "the XMPP server is not reachable right now (\(why)); try again later", headers: retry)
        }
    }

    // MARK: Encoding

    private func encode(_ stanza: Stanza, status: Int, output: String) -> RestResponse {
        if output == Self.json {
            return RestResponse(status: status, headers: [("Content-Type", Self.json)],
                                body: StanzaJSON.encode(stanza).serializedBytes())
        }
        let xml = (try? stanza.serialized()) ?? ""
        return RestResponse(status: status, headers: [("Content-Type", Self.xmppXML)], body: Array(xml.utf8))
    }

    /// Several stanzas: one alone as itself, more wrapped as mod_rest does, `{"xmpp": […]}` or `<xmpp>…</xmpp>`.
    private func encode(_ stanzas: [Stanza], status: Int, output: String) -> RestResponse {
        guard stanzas.count > 1 else {
            return stanzas.first.map { encode($0, status: status, output: output) } ?? RestResponse(status: 204)
        }
        if output == Self.json {
            return RestResponse(status: status, headers: [("Content-Type", Self.json)],
                                body: StanzaJSON.encode(stanzas).serializedBytes())
        }
        var wrapper = Element("xmpp", namespace: Namespace.client)
        for stanza in stanzas { wrapper.append(stanza.element) }
        let xml = (try? wrapper.serialized()) ?? ""
        return RestResponse(status: status, headers: [("Content-Type", Self.xmppXML)], body: Array(xml.utf8))
    }

    func errorResponse(_ failure: RestFailure, output: String) -> RestResponse {
        let error = failure.error
        var headers = failure.headers
        let body: [UInt8]
        if output == Self.json {
            var fields: [String: JSONValue] = ["type": .string(error.type.rawValue), "condition": .string(error.condition.rawValue)]
            if let text = error.text { fields["text"] = .string(text) }
            body = JSONValue.object(["type": .string("error"), "code": .int(Int64(failure.status)), "error": .object(fields)]).serializedBytes()
            headers.append(("Content-Type", Self.json))
        } else {
            var element = Element("error")
            element[attribute: "type"] = error.type.rawValue
            element[attribute: "code"] = "\(failure.status)"
            element.append(Element(error.condition.rawValue, namespace: Namespace.stanzas))
            if let text = error.text { element.append(Element("text", namespace: Namespace.stanzas, text: text)) }
            body = Array(((try? element.serialized()) ?? "<error/>").utf8)
            headers.append(("Content-Type", Self.xmppXML))
        }
        return RestResponse(status: failure.status, headers: headers, body: body)
    }

    // MARK: Helpers

    static func percentDecode(_ text: String) -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%"), let high = iterator.next(), let low = iterator.next(),
               let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
            {
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
