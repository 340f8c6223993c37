// SPEC §8: turns what a handler produced into the stanzas that go out, with the addresses, ids and types
// a reply must have, and guarantees exactly one answer to every iq get/set.

import ComponentLink
import XMPPCore

package struct ReplyStamper: Sendable {
    /// What the link will accept (SPEC §8). Checked here too, so that a reply the link would refuse becomes
    /// an error to the sender instead of a reply that silently never leaves.
    package let policy: OutboundPolicy

    /// The component domain; every outgoing `from` must be inside it.
    package var domain: String { policy.domain }

    package init(domain: String, maxStanzaBytes: Int = 524_288) {
        self.policy = OutboundPolicy(domain: domain, maxStanzaBytes: maxStanzaBytes)
    }

    /// A problem that turns the whole reply into internal-server-error.
    package struct Refusal: Error, Hashable, Sendable, CustomStringConvertible {
        package var description: String
    }

    /// The stanzas to send in answer to `incoming`, given the handler's outcome.
    /// - Returns: the stanzas plus, when a reply was refused, why (it is logged; the sender gets an error).
    /// `fromRoom`: `incoming` came from a room or one of its occupants (SPEC §14), which never get an error.
    package func stamp(_ outcome: HandlerOutcome, replyingTo incoming: Stanza, fromRoom: Bool = false) -> (stanzas: [Stanza], refusal: Refusal?) {
        let fromRoom = fromRoom || incoming.type == "groupchat"
        if let failure = outcome.failure {
            return (errorReply(to: incoming, failure, fromRoom: fromRoom), nil)
        }
        var stanzas: [Stanza] = []
        var answered = false
        for reply in outcome.replies {
            do {
                let stamped = try stamp(reply, replyingTo: incoming)
                if incoming.isRequest, answers(stamped, incoming) {
                    // Exactly one answer to an iq get/set: later ones are dropped.
                    if answered { continue }
                    answered = true
                }
                if (!incoming.allowsReply || fromRoom) && stamped.type == "error" { continue }
                stanzas.append(stamped)
            } catch {
                let failure = StanzaError(.cancel, .internalServerError)
                return (errorReply(to: incoming, failure, fromRoom: fromRoom), error)
            }
        }
        if incoming.isRequest && !answered {
            // No output (or only other stanzas) for an iq get/set: an empty result.
            var result = incoming.replySkeleton()
            result.from = incoming.to
            stanzas.append(result)
        }
        return (stanzas, nil)
    }

    /// The error reply to `incoming` (none for error/result stanzas), `by` the component.
    /// Nothing for a group chat message or a stanza `fromRoom`: an error bounced into a room can get us kicked.
    package func errorReply(to incoming: Stanza, _ error: StanzaError, fromRoom: Bool = false) -> [Stanza] {
        guard incoming.allowsReply, !fromRoom, incoming.type != "groupchat" else { return [] }
        var error = error
        if error.by == nil { error.by = domain }
        return [incoming.errorReply(error)]
    }

    /// Fills in what a single reply leaves out and checks it against the outbound policy.
    package func stamp(_ reply: Stanza, replyingTo incoming: Stanza) throws(Refusal) -> Stanza {
        var reply = reply
        if reply.from == nil { reply.from = incoming.to }
        if reply.to == nil {
            reply.to = incoming.from
            // A group chat message is answered to the room (its bare JID), where everyone reads it.
            if incoming.type == "groupchat", reply.kind == .message, reply.type == nil || reply.type == "groupchat",
               let sender = JID.parse(incoming.from) {
                reply.to = sender.bare.description
            }
        }
        switch reply.kind {
        case .iq:
            if incoming.isRequest, reply.type == nil || reply.type == "result" || reply.type == "error" {
                reply.id = incoming.id
                if reply.type == nil { reply.type = "result" }
            } else if reply.id == nil {
                reply.id = RandomID.make()
            }
            if reply.type == nil { reply.type = "get" }
        case .message:
            if reply.id == nil { reply.id = RandomID.make() }
            if reply.type == nil, incoming.kind == .message { reply.type = incoming.type ?? "chat" }
            if reply.type == nil { reply.type = "chat" }
            if reply.thread == nil, incoming.kind == .message, let thread = incoming.thread, !thread.text.isEmpty {
                var copy = Element("thread", namespace: reply.element.namespace, text: thread.text)
                copy[attribute: "parent"] = thread[attribute: "parent"]
                reply.element.append(copy)
            }
        case .presence:
            break
        }
        do {
            try policy.check(&reply)
        } catch {
            throw Refusal(description: "reply refused: \(error.message)")
        }
        return reply
    }

    /// Whether `reply` is the answer to the iq request `incoming`.
    private func answers(_ reply: Stanza, _ incoming: Stanza) -> Bool {
        reply.kind == .iq && (reply.type == "result" || reply.type == "error") && reply.id == incoming.id
    }
}
