// The REST API's request and response, independent of FastCGI (SPEC §9), so the API is unit-testable.

package struct RestRequest: Sendable {
    package var method: String
    /// The URI path, percent-encoded as received, without the query string.
    package var path: String
    package var query: String
    package var contentType: String?
    /// From CONTENT_LENGTH: checked against max_body before the body is read.
    package var contentLength: Int?
    package var body: [UInt8]
    /// The body ran past max_body and was not kept (answered 413 whatever CONTENT_LENGTH said).
    package var bodyTooLarge = false
    package var authorization: String?
    package var accept: String?
    /// `Rest-Timeout` or `Prosody-Rest-Timeout`.
    package var timeout: String?
    /// Every FastCGI parameter as nginx sent it (`HTTP_*` for the request headers): hooks pass them on.
    package var params: [String: String] = [:]

    package init(method: String, path: String, query: String = "", contentType: String? = nil, contentLength: Int? = nil,
                body: [UInt8] = [], authorization: String? = nil, accept: String? = nil, timeout: String? = nil) {
        self.method = method
        self.path = path
        self.query = query
        self.contentType = contentType
        self.contentLength = contentLength
        self.body = body
        self.authorization = authorization
        self.accept = accept
        self.timeout = timeout
    }
}

package struct RestResponse: Sendable {
    package var status: Int
    package var headers: [(String, String)]
    package var body: [UInt8]
    /// A streamed body (server-sent events): the head is written, then whatever the stream sends, until it ends
    /// or the client goes away. `body` is ignored then.
    package var stream: RestEventStream?

    package init(status: Int, headers: [(String, String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    package func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
}

/// Stops a request that waits (for the link, or for an iq's reply): its completion then runs with a failure at
/// once. Used when the HTTP client went away and at shutdown.
package struct RestCancellation: Sendable {
    private let action: @Sendable () -> Void

    package init(_ action: @escaping @Sendable () -> Void) {
        self.action = action
    }

    package func cancel() {
        action()
    }
}

/// Why the link could not send a request's stanza or bring its reply: what the API turns into an HTTP status. The
/// link's own error type stays in ComponentLink; the Daemon maps one to the other.
package struct SendFailure: Error, Sendable, Equatable {
    package enum Reason: Sendable, Equatable {
        /// No reply within the timeout (504).
        case timeout
        /// The link went down after the iq was written (502).
        case linkLost
        /// `max_pending` iqs already wait (503).
        case tooManyPending
        /// Larger than `max_stanza` once serialized (413).
        case tooLarge
        /// `from` outside the component domain (403).
        case invalidFrom
        /// `to` missing, not a JID, or the stanza cannot be serialized (422).
        case invalidStanza
        /// An iq with this id already waits (409).
        case duplicateID
        /// The link cannot take it now: queue full, waited too long, shutting down (503); the value names which.
        case unavailable(String)
    }

    package var reason: Reason
    package var message: String

    package init(_ reason: Reason, _ message: String) {
        self.reason = reason
        self.message = message
    }
}

/// What the REST API needs from the component link (ComponentConnection conforms in the Daemon). Completions
/// run exactly once, on whatever thread finishes the work; nothing waits in a task, so a waiting request costs
/// only its bookkeeping.
package protocol StanzaSender: Sendable {
    /// "connected", "connecting" or "failed".
    var linkState: String { get }
    /// The instance link's domain and state (SPEC §20), when there is one.
    var instanceLinkState: (jid: String, state: String)? { get }
    /// Writes a message or presence; waits up to `wait` for a lost link to come back.
    func deliver(_ stanza: XMPPCore.Stanza, wait: Duration,
                 completion: @escaping @Sendable (Result<Void, SendFailure>) -> Void) -> RestCancellation?
    /// Sends an iq get/set; `completion` gets its reply (result or error stanza) or why there is none.
    func ask(_ iq: XMPPCore.Stanza, timeout: Duration, maxPending: Int,
             completion: @escaping @Sendable (Result<XMPPCore.Stanza, SendFailure>) -> Void) -> RestCancellation?
    /// `ask`, and the stanzas `collecting` accepts that arrive while the iq waits (they go nowhere else): the
    /// answer is those in arrival order, then the reply.
    func ask(_ iq: XMPPCore.Stanza, collecting: @escaping @Sendable (XMPPCore.Stanza) -> Bool, timeout: Duration,
             maxPending: Int, completion: @escaping @Sendable (Result<[XMPPCore.Stanza], SendFailure>) -> Void) -> RestCancellation?
}

extension StanzaSender {
    /// Without a way to take stanzas aside: the reply alone.
    package func ask(_ iq: XMPPCore.Stanza, collecting: @escaping @Sendable (XMPPCore.Stanza) -> Bool, timeout: Duration,
                     maxPending: Int, completion: @escaping @Sendable (Result<[XMPPCore.Stanza], SendFailure>) -> Void) -> RestCancellation? {
        ask(iq, timeout: timeout, maxPending: maxPending) { completion($0.map { [$0] }) }
    }
}

extension StanzaSender {
    package var instanceLinkState: (jid: String, state: String)? { nil }
}

import XMPPCore

/// The rooms stanzad is in (SPEC §14), as the REST API needs them: `GET /rest/rooms`, and the `from` of a group
/// chat message sent to a room.
package protocol RoomDirectory: Sendable {
    /// `[{room, nick, state, since, occupants}]`.
    func listing() -> JSONValue
    /// Our occupant's real JID in `room` (bare JID), when stanzad keeps that room.
    func occupantJID(inRoom room: String) -> String?
}
