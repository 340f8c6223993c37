// The XEP-0114 component stream as a pure state machine: events in, actions out. The connection
// handler around it only performs the actions (write bytes, deliver stanzas, close).

import XMPPCore

/// Why a component stream ended.
package struct ComponentLinkError: Error, Hashable, Sendable, CustomStringConvertible {
    package struct Code: Hashable, Sendable, CustomStringConvertible {
        let value: String
        package var description: String { value }
        /// The server sent a stream error.
        package static let streamError = Code(value: "stream-error")
        /// The server closed the stream or the TCP connection.
        package static let closedByPeer = Code(value: "closed-by-peer")
        /// The server's XML was refused by our parser.
        package static let badInput = Code(value: "bad-input")
        /// The server's stream header lacked what XEP-0114 needs (an id).
        package static let badHeader = Code(value: "bad-header")
        /// No pong within `ping_timeout`.
        package static let pingTimeout = Code(value: "ping-timeout")
        /// TCP connect failed.
        package static let connectFailed = Code(value: "connect-failed")
        /// No handshake reply in time.
        package static let handshakeTimeout = Code(value: "handshake-timeout")
    }

    package var code: Code
    /// The stream error condition, for `.streamError` (e.g. "not-authorized").
    package var condition: String?
    package var message: String

    package init(_ code: Code, condition: String? = nil, _ message: String) {
        self.code = code
        self.condition = condition
        self.message = message
    }

    package var description: String {
        if let condition { return "\(code) \(condition): \(message)" }
        return "\(code): \(message)"
    }

    /// Failures that retrying will not fix without a configuration change.
    package var isConfigurationError: Bool {
        guard code == .streamError, let condition else { return false }
        return ["not-authorized", "host-unknown", "invalid-namespace", "improper-addressing", "invalid-from"]
            .contains(condition)
    }

    /// A hint for the operator, for configuration errors.
    package func hint(jid: String) -> String? {
        switch condition {
        case "not-authorized":
            "the server refused the secret: make [component] secret match the server's component_secret for \(jid) (Prosody) or the listener's password (ejabberd)"
        case "host-unknown":
            "the server has no external component named \(jid): add `Component \"\(jid)\"` with component_secret to Prosody's config (or a hosts entry to ejabberd's ejabberd_service listener), or fix [component] jid"
        case "invalid-namespace":
            "the server did not accept a component stream: check that [component] server points at the component port (Prosody: 5347), not the client port (5222)"
        case "improper-addressing", "invalid-from":
            "the server refused the component's address: check [component] jid"
        default:
            nil
        }
    }
}

/// The component stream's states and transitions.
package struct HandshakeStateMachine: Sendable {
    package enum State: Hashable, Sendable {
        case idle
        /// Our header is sent; waiting for the server's.
        case awaitingHeader
        /// The server's header had no id. Prosody sends such a header right before a stream error
        /// (host-unknown, …): wait for it, so the real reason is reported.
        case headerWithoutID
        /// Our handshake is sent; waiting for `<handshake/>`.
        case awaitingHandshake(streamID: String)
        /// Stanzas may flow.
        case ready(streamID: String)
        /// We are shutting down and close our side: what the server sent before it saw that is still delivered
        /// (nothing is lost unread); its own close, or a stream error, ends the stream.
        case closing
        /// Closed.
        case closed
    }

    package enum Action: Hashable, Sendable {
        /// Write these bytes.
        case write(String)
        /// The handshake succeeded: flush the queue, report connected.
        case ready(streamID: String)
        /// A stanza for the router.
        case deliver(Element)
        /// A stanza the parser skipped for breaking a per-stanza limit: answer it with an error if it may be
        /// answered; the stream goes on.
        case refuse(RefusedStanza)
        /// Write a stream error (if any), `</stream:stream>`, then close the connection.
        case close(streamError: String?, reason: ComponentLinkError)
        /// Nothing to do.
        case none
    }

    package let jid: String
    package let secret: String
    package private(set) var state: State = .idle

    package init(jid: String, secret: String) {
        self.jid = jid
        self.secret = secret
    }

    /// TCP is connected: open the stream.
    package mutating func connected() -> Action {
        state = .awaitingHeader
        let to = (try? XMLEscape.attribute(jid)) ?? jid
        return .write(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
                + "xmlns:stream='http://etherx.jabber.org/streams' to='\(to)'>")
    }

    /// An event from the parser.
    package mutating func received(_ event: XMLStreamEvent) -> Action {
        switch (state, event) {
        case (.awaitingHeader, .streamOpened(let header)):
            guard header.name == "stream", header.namespace == Namespace.stream else {
                return fail(streamError: "invalid-namespace", .badHeader, "the server's stream header is not a stream:stream")
            }
            guard let id = header[attribute: "id"], !id.isEmpty else {
                state = .headerWithoutID
                return .none
            }
            state = .awaitingHandshake(streamID: id)
            return .write("<handshake>\(Self.handshakeDigest(streamID: id, secret: secret))</handshake>")

        case (.awaitingHandshake(let id), .stanza(let element)):
            if element.name == "handshake" && element.elements.isEmpty {
                state = .ready(streamID: id)
                return .ready(streamID: id)
            }
            if let error = streamError(element) { return fail(streamError: nil, error) }
            return fail(streamError: "not-authorized", .badHeader, "expected <handshake/>, got <\(element.name)>")

        case (.ready, .stanza(let element)):
            if let error = streamError(element) { return fail(streamError: nil, error) }
            return .deliver(element)

        case (.ready, .refused(let refused)):
            return .refuse(refused)

        case (.closed, _):
            return .none

        case (.closing, .stanza(let element)):
            if streamError(element) != nil {
                state = .closed
                return .none
            }
            return .deliver(element)

        case (.closing, .streamClosed):
            state = .closed
            return .none

        case (.closing, .refused(let refused)):
            // Said in the log; not answered (nothing is written after our close).
            return .refuse(refused)

        case (.closing, _):
            return .none

        case (.headerWithoutID, .stanza(let element)):
            if let error = streamError(element) { return fail(streamError: nil, error) }
            return fail(streamError: "bad-format", .badHeader, Self.noIDMessage)

        case (.headerWithoutID, .streamClosed):
            return fail(streamError: nil, .badHeader, Self.noIDMessage)

        case (_, .streamClosed):
            state = .closed
            return .close(streamError: nil, reason: ComponentLinkError(.closedByPeer, "the server closed the stream"))

        case (_, .stanza(let element)):
            if let error = streamError(element) { return fail(streamError: nil, error) }
            return fail(streamError: "not-authorized", .badHeader, "stanza <\(element.name)> before the handshake completed")

        case (_, .refused(let refused)):
            return fail(streamError: "not-authorized", .badHeader, "<\(refused.name)> before the handshake completed (\(refused.reason))")

        case (_, .streamOpened):
            return fail(streamError: "bad-format", .badHeader, "unexpected second stream header")
        }
    }

    /// The parser refused the server's bytes.
    package mutating func parseFailed(_ error: XMLStreamError) -> Action {
        fail(streamError: error.streamCondition, .badInput, error.description)
    }

    /// The TCP connection went away.
    package mutating func disconnected() -> ComponentLinkError {
        defer { state = .closed }
        if state == .headerWithoutID { return ComponentLinkError(.badHeader, Self.noIDMessage) }
        return ComponentLinkError(.closedByPeer, "connection closed")
    }

    static let noIDMessage = "the server's stream header has no id"

    /// We are shutting down.
    package mutating func close() -> Action {
        guard state != .closed, state != .closing else { return .none }
        // A stream that was up keeps delivering until the server closes its side (see `closing`).
        state = isReady ? .closing : .closed
        return .close(streamError: nil, reason: ComponentLinkError(.closedByPeer, "shutting down"))
    }

    package var isReady: Bool {
        if case .ready = state { return true }
        return false
    }

    private mutating func fail(streamError: String?, _ code: ComponentLinkError.Code, _ message: String) -> Action {
        fail(streamError: streamError, ComponentLinkError(code, message))
    }

    private mutating func fail(streamError: String?, _ error: ComponentLinkError) -> Action {
        state = .closed
        return .close(streamError: streamError, reason: error)
    }

    /// A `<stream:error/>` as a link error.
    private func streamError(_ element: Element) -> ComponentLinkError? {
        guard element.name == "error", element.namespace == Namespace.stream else { return nil }
        let condition = element.elements.first { $0.namespace == Namespace.streams && $0.name != "text" }?.name ?? "undefined-condition"
        let text = element.child("text", namespace: Namespace.streams)?.text
        return ComponentLinkError(.streamError, condition: condition, text ?? "the server sent a stream error")
    }

    /// XEP-0114: lowercase hex SHA-1 of stream id + secret (ejabberd compares case-sensitively).
    package static func handshakeDigest(streamID: String, secret: String) -> String {
        SHA1Hex.digest(Array((streamID + secret).utf8))
    }
}
