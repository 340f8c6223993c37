// Connects the REST API to the component link.

import ComponentLink
import FastCGIFront
import XMPPCore

struct LinkSender: StanzaSender {
    let connection: ComponentConnection

    var linkState: String { connection.health.rawValue }

    func deliver(_ stanza: Stanza, wait: Duration) async throws(SendError) {
        try await connection.sendAndWait(stanza, wait: wait)
    }

    func ask(_ iq: Stanza, timeout: Duration, maxPending: Int) async throws(SendError) -> Stanza {
        try await connection.request(iq, timeout: timeout, maxPending: maxPending)
    }
}
