// Connects the REST API to the component link, callback to callback: a waiting REST request holds no task.

import ComponentLink
import FastCGIFront
import XMPPCore

struct LinkSender: StanzaSender {
    let connection: ComponentConnection

    var linkState: String { connection.health.rawValue }

    func deliver(_ stanza: Stanza, wait: Duration,
                 completion: @escaping @Sendable (Result<Void, SendError>) -> Void) -> RestCancellation? {
        connection.sendAndWait(stanza, wait: wait, completion: completion).map(RestCancellation.init)
    }

    func ask(_ iq: Stanza, timeout: Duration, maxPending: Int,
             completion: @escaping @Sendable (Result<Stanza, SendError>) -> Void) -> RestCancellation? {
        connection.request(iq, timeout: timeout, maxPending: maxPending, completion: completion).map(RestCancellation.init)
    }
}
