import Testing
import XMPPCore

@testable import ComponentLink

private func header(id: String? = "abc123") -> XMLStreamEvent {
    var element = Element("stream", namespace: Namespace.stream)
    element[attribute: "from"] = "bot.example.org"
    element[attribute: "id"] = id
    return .streamOpened(element)
}

private func streamError(_ condition: String, text: String? = nil) -> XMLStreamEvent {
    var error = Element("error", namespace: Namespace.stream)
    error.append(Element(condition, namespace: Namespace.streams))
    if let text { error.append(Element("text", namespace: Namespace.streams, text: text)) }
    return .stanza(error)
}

@Suite struct HandshakeStateMachineTests {
    @Test func handshakeDigestIsLowercaseSHA1OfIdAndSecret() {
        // sha1("abc123" + "s3cret")
        let digest = HandshakeStateMachine.handshakeDigest(streamID: "abc123", secret: "s3cret")
        #expect(digest == "c6b71d79e2349af2e00ebb4e78ba32f34c7fc6da")
        #expect(digest == digest.lowercased())
        #expect(HandshakeStateMachine.handshakeDigest(streamID: "", secret: "") == "da39a3ee5e6b4b0d3255bfef95601890afd80709")
    }

    @Test func fullHandshake() {
        var machine = HandshakeStateMachine(jid: "bot.example.org", secret: "s3cret")
        guard case .write(let open) = machine.connected() else {
            Issue.record("no header")
            return
        }
        #expect(open.contains("xmlns='jabber:component:accept'"))
        #expect(open.contains("to='bot.example.org'"))
        #expect(machine.received(header()) == .write("<handshake>\(HandshakeStateMachine.handshakeDigest(streamID: "abc123", secret: "s3cret"))</handshake>"))
        #expect(!machine.isReady)
        #expect(machine.received(.stanza(Element("handshake", namespace: Namespace.componentAccept))) == .ready(streamID: "abc123"))
        #expect(machine.isReady)
        let message = Element("message", namespace: Namespace.componentAccept)
        #expect(machine.received(.stanza(message)) == .deliver(message))
    }

    @Test func stanzaBeforeHandshakeIsRefused() {
        var machine = HandshakeStateMachine(jid: "bot.example.org", secret: "x")
        _ = machine.connected()
        _ = machine.received(header())
        guard case .close(_, let reason) = machine.received(.stanza(Element("message", namespace: Namespace.componentAccept))) else {
            Issue.record("not closed")
            return
        }
        #expect(reason.code == .badHeader)
        #expect(machine.state == .closed)
    }

    @Test func headerWithoutIdIsBadFormat() {
        var machine = HandshakeStateMachine(jid: "bot.example.org", secret: "x")
        _ = machine.connected()
        #expect(machine.received(header(id: nil)) == .none)
        guard case .close(let sent, let reason) = machine.received(.stanza(Element("handshake", namespace: Namespace.componentAccept))) else {
            Issue.record("not closed")
            return
        }
        #expect(sent == "bad-format")
        #expect(reason.code == .badHeader)
    }

    @Test func prosodysHeaderWithoutIdThenHostUnknownReportsHostUnknown() {
        // Prosody 0.12 answers an unknown component address with id='' and then <host-unknown/>.
        var machine = HandshakeStateMachine(jid: "bot.example.org", secret: "x")
        _ = machine.connected()
        #expect(machine.received(header(id: "")) == .none)
        guard case .close(_, let reason) = machine.received(streamError("host-unknown", text: "This server does not serve bot.example.org")) else {
            Issue.record("not closed")
            return
        }
        #expect(reason.condition == "host-unknown")
        #expect(reason.isConfigurationError)
    }

    @Test func headerWithoutIdThenEOFIsABadHeader() {
        var machine = HandshakeStateMachine(jid: "bot.example.org", secret: "x")
        _ = machine.connected()
        _ = machine.received(header(id: nil))
        #expect(machine.disconnected().code == .badHeader)
    }

    @Test(arguments: ["not-authorized", "host-unknown", "invalid-namespace"])
    func configurationErrorsAreRecognisedWithHints(_ condition: String) {
        var machine = HandshakeStateMachine(jid: "bot.example.org", secret: "x")
        _ = machine.connected()
        _ = machine.received(header())
        guard case .close(let sent, let reason) = machine.received(streamError(condition, text: "nope")) else {
            Issue.record("not closed")
            return
        }
        #expect(sent == nil, "no stream error is sent back for the server's stream error")
        #expect(reason.code == .streamError)
        #expect(reason.condition == condition)
        #expect(reason.message == "nope")
        #expect(reason.isConfigurationError)
        #expect(reason.hint(jid: "bot.example.org") != nil)
    }

    @Test func conflictIsNotAConfigurationError() {
        var machine = HandshakeStateMachine(jid: "bot.example.org", secret: "x")
        _ = machine.connected()
        guard case .close(_, let reason) = machine.received(streamError("conflict")) else {
            Issue.record("not closed")
            return
        }
        #expect(!reason.isConfigurationError)
    }

    @Test func parseErrorSendsMatchingStreamError() {
        var machine = HandshakeStateMachine(jid: "bot.example.org", secret: "x")
        _ = machine.connected()
        guard case .close(let sent, let reason) = machine.parseFailed(XMLStreamError(.restrictedXML, "comment")) else {
            Issue.record("not closed")
            return
        }
        #expect(sent == "restricted-xml")
        #expect(reason.code == .badInput)
    }

    @Test func serverCloseEndsTheSession() {
        var machine = HandshakeStateMachine(jid: "bot.example.org", secret: "x")
        _ = machine.connected()
        _ = machine.received(header())
        _ = machine.received(.stanza(Element("handshake", namespace: Namespace.componentAccept)))
        guard case .close(nil, let reason) = machine.received(.streamClosed) else {
            Issue.record("not closed")
            return
        }
        #expect(reason.code == .closedByPeer)
        #expect(machine.received(.stanza(Element("message"))) == .none)
    }

    /// Our close at shutdown: what the server sent before it saw it is still delivered, until its own close (or a
    /// stream error); nothing of that is answered with a write.
    @Test func afterOurCloseStanzasAreDeliveredUntilTheServerCloses() {
        for end in [XMLStreamEvent.streamClosed, streamError("system-shutdown")] {
            var machine = HandshakeStateMachine(jid: "bot.example.org", secret: "x")
            _ = machine.connected()
            _ = machine.received(header())
            _ = machine.received(.stanza(Element("handshake", namespace: Namespace.componentAccept)))
            guard case .close(nil, _) = machine.close() else {
                Issue.record("no close")
                return
            }
            #expect(machine.state == .closing && !machine.isReady)
            #expect(machine.close() == .none, "once")
            let late = Element("message", namespace: Namespace.componentAccept)
            #expect(machine.received(.stanza(late)) == .deliver(late))
            // One the parser refused is still reported (the session loop logs it and writes nothing).
            let refused = RefusedStanza(name: "message", id: "deep", reason: XMLStreamError(.depthExceeded, "stanza nested deeper than 64 levels"))
            #expect(machine.received(.refused(refused)) == .refuse(refused))
            #expect(machine.received(end) == .none)
            #expect(machine.state == .closed)
            #expect(machine.received(.stanza(late)) == .none)
        }
    }

    @Test func aStreamNeverUpClosesAtOnce() {
        var machine = HandshakeStateMachine(jid: "bot.example.org", secret: "x")
        _ = machine.connected()
        _ = machine.received(header())
        _ = machine.close()
        #expect(machine.state == .closed)
    }
}

@Suite struct OutboundPolicyTests {
    let policy = OutboundPolicy(domain: "bot.example.org", maxStanzaBytes: 200)

    func stanza(from: String?, to: String?, body: String = "hi") -> Stanza {
        var s = Stanza(kind: .message, type: "chat", id: "1", from: from, to: to)
        s.element.append(Element("body", namespace: Namespace.client, text: body))
        return s
    }

    /// The stamper checks a reply and the link writes it: the bytes are made once, and never kept past a change.
    @Test func aCheckedStanzaIsWrittenAsCheckedUntilItChanges() throws {
        var reply = stanza(from: "echo@bot.example.org", to: "alice@example.org")
        let fresh = try policy.serialize(reply)
        try policy.check(&reply)
        #expect(reply.checked?.xml == fresh)
        #expect(try policy.serialize(reply) == fresh)
        #expect(reply == stanza(from: "echo@bot.example.org", to: "alice@example.org"), "the kept bytes are not part of the value")

        // Changed after the check: checked again, so a bad address is still refused.
        var changed = reply
        changed.to = "not a jid@@"
        #expect(changed.checked == nil)
        #expect(throws: SendError.self) { try policy.serialize(changed) }
        changed = reply
        changed.element.append(Element("subject", namespace: Namespace.client, text: "new"))
        #expect(try policy.serialize(changed).contains("<subject>new</subject>"))

        // A policy with other settings (another link's domain) does not take the bytes another one checked.
        let other = OutboundPolicy(domain: "instance.example.org", maxStanzaBytes: 200)
        #expect(throws: SendError.self) { try other.serialize(reply) }
        let smaller = OutboundPolicy(domain: "bot.example.org", maxStanzaBytes: 50)
        #expect(throws: SendError.self) { try smaller.serialize(reply) }
    }

    @Test func acceptsAddressesInsideTheDomain() throws {
        for from in ["bot.example.org", "echo@bot.example.org", "echo@bot.example.org/r", "Bot.Example.Org"] {
            #expect(throws: Never.self, "\(from)") { try policy.serialize(stanza(from: from, to: "alice@example.org")) }
        }
    }

    @Test func refusesWhatWouldCloseTheStream() {
        func code(_ s: Stanza) -> SendError.Code? {
            do { _ = try policy.serialize(s); return nil } catch { return error.code }
        }
        #expect(code(stanza(from: nil, to: "a@b")) == .invalidFrom)
        #expect(code(stanza(from: "example.org", to: "a@b")) == .invalidFrom)
        #expect(code(stanza(from: "sub.bot.example.org", to: "a@b")) == .invalidFrom)
        #expect(code(stanza(from: "bot.example.org", to: nil)) == .invalidTo)
        #expect(code(stanza(from: "bot.example.org", to: "a b@c")) == .invalidTo)
        #expect(code(stanza(from: "bot.example.org", to: "a@b", body: String(repeating: "x", count: 200))) == .tooLarge)
        #expect(code(stanza(from: "bot.example.org", to: "a@b", body: "bad\u{1}")) == .unserializable)
    }
}

@Suite struct RefusedStanzaTests {
    let deep = XMLStreamError(.depthExceeded, "stanza nested deeper than 64 levels")

    func refused(_ name: String, type: String?, from: String? = "alice@example.org/phone") -> RefusedStanza {
        RefusedStanza(name: name, namespace: Namespace.componentAccept, id: "x1", from: from, to: "echo@bot.example.org", type: type, reason: deep)
    }

    @Test func aRefusedStanzaKeepsTheLinkUp() {
        var machine = HandshakeStateMachine(jid: "bot.example.org", secret: "s3cret")
        _ = machine.connected()
        _ = machine.received(header())
        _ = machine.received(.stanza(Element("handshake", namespace: Namespace.componentAccept)))
        let event = XMLStreamEvent.refused(refused("message", type: "chat"))
        #expect(machine.received(event) == .refuse(refused("message", type: "chat")))
        #expect(machine.isReady)
    }

    @Test func aRefusedStanzaBeforeTheHandshakeClosesTheStream() {
        var machine = HandshakeStateMachine(jid: "bot.example.org", secret: "s3cret")
        _ = machine.connected()
        _ = machine.received(header())
        guard case .close = machine.received(.refused(refused("handshake", type: nil))) else {
            Issue.record("not closed")
            return
        }
    }

    @Test func theSenderGetsPolicyViolationSayingWhy() throws {
        let reply = try #require(ComponentConnection.errorReply(to: refused("message", type: "chat"), domain: "bot.example.org"))
        #expect(reply.kind == .message && reply.type == "error" && reply.id == "x1")
        #expect(reply.from == "echo@bot.example.org" && reply.to == "alice@example.org/phone")
        let error = try #require(reply.error)
        #expect(error.type == .modify && error.condition == .policyViolation)
        #expect(error.text == "stanza nested deeper than 64 levels" && error.by == "bot.example.org")
        for (name, type) in [("iq", "get"), ("iq", "set"), ("presence", nil), ("presence", "subscribe"), ("message", nil)] {
            #expect(ComponentConnection.errorReply(to: refused(name, type: type), domain: "bot.example.org") != nil, "\(name) \(type ?? "-")")
        }
    }

    @Test func noErrorReplyToErrorsResultsOrNonStanzas() {
        for (name, type) in [("message", "error"), ("presence", "error"), ("iq", "result"), ("iq", "error"), ("iq", nil), ("handshake", nil)] {
            #expect(ComponentConnection.errorReply(to: refused(name, type: type), domain: "bot.example.org") == nil, "\(name) \(type ?? "-")")
        }
        #expect(ComponentConnection.errorReply(to: refused("message", type: "chat", from: nil), domain: "bot.example.org") == nil)
    }

    @Test func aRefusedIqResultBecomesAnErrorForItsRequester() throws {
        let reply = try #require(ComponentConnection.refusedReply(refused("iq", type: "result"), domain: "bot.example.org"))
        #expect(reply.type == "error" && reply.id == "x1" && reply.from == "alice@example.org/phone")
        #expect(reply.error?.condition == .policyViolation)
    }
}
