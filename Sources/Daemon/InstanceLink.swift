// The instance link (SPEC §20): a second component link under this instance's own domain. When the server
// balances the component domain over several instances, a result addressed to the component domain reaches
// whichever instance the server picks; one addressed to this instance's domain reaches this instance. So the iq
// requests this instance originates and waits for go out from its own domain, over this link.

import ComponentLink
import Logging
import XMPPCore

/// The second link and how addresses move between the component domain and this instance's domain.
struct InstanceLink: Sendable {
    let connection: ComponentConnection
    let addressing: InstanceAddressing
}

/// Moves a stanza's sender from the component domain to the instance domain and a reply's addressee back: a REST
/// client sees the reply it would get without the instance link.
struct InstanceAddressing: Sendable, Equatable {
    /// The component domain (`[component] jid`).
    let domain: String
    /// This instance's domain (`[component] instance_jid`).
    let instance: String

    /// The sender of a request sent from this instance: `node@domain/resource` becomes `node@instance/resource`
    /// (the node and resource stay); no sender, or any address outside the component domain, becomes the
    /// instance domain.
    func outbound(from: String?) -> String {
        guard let from, let jid = JID.parse(from), jid.domain == domain,
            let moved = try? JID(localpart: jid.localpart, domain: instance, resource: jid.resource)
        else { return instance }
        return moved.description
    }

    /// A reply to a request sent with `outbound(from: original)`: addressed to `original` again.
    func inbound(_ reply: Stanza, original: String?) -> Stanza {
        var reply = reply
        reply.to = original ?? domain
        return reply
    }

    /// Sends `iq` from the instance domain over `connection`; `completion` gets the reply addressed as the request
    /// was.
    func request(_ iq: Stanza, over connection: ComponentConnection, timeout: Duration, maxPending: Int,
                 completion: @escaping @Sendable (Result<Stanza, SendError>) -> Void) -> (@Sendable () -> Void)? {
        let original = iq.from
        var moved = iq
        moved.from = outbound(from: original)
        return connection.request(moved, timeout: timeout, maxPending: maxPending) { [self] result in
            completion(result.map { inbound($0, original: original) })
        }
    }
}

/// What arrives at the instance domain that is not a reply the link is waiting for: the answers to the main link's
/// pings and barriers go to the main link; a ping is answered (a monitor may check each instance), any other
/// request gets cancel/service-unavailable, the rest (late replies) is dropped. Runs on the link's task: sends
/// without waiting.
struct InstanceInbound: Sendable {
    let connection: ComponentConnection
    /// The main link, whose pings go from the instance domain.
    let main: ComponentConnection
    let logger: Logger

    func take(_ stanza: Stanza) -> Bool {
        if main.relayReply(stanza) { return true }
        guard stanza.isRequest else {
            logger.debug("stanza to the instance domain dropped", metadata: [
                "kind": "\(stanza.kind.rawValue)", "type": "\(stanza.type ?? "")", "stanza.id": "\(stanza.id ?? "")",
                "from": "\(stanza.from ?? "")",
            ])
            return true
        }
        let isPing = stanza.type == "get" && stanza.element.child("ping", namespace: "urn:xmpp:ping") != nil
        let reply = isPing ? stanza.replySkeleton() : stanza.errorReply(StanzaError(.cancel, .serviceUnavailable))
        do {
            try connection.send(reply)
        } catch {
            logger.notice("reply from the instance domain not sent", metadata: ["stanza.id": "\(stanza.id ?? "")", "error": "\(error)"])
        }
        return true
    }
}
