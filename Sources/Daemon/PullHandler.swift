// A `pull = true` route's handler (SPEC §17): the stanza goes into the route's update queue, where a client
// fetches it (`GET {rest.path}/updates/{route}`) or receives it as an event. A message or presence gets no
// reply; an iq request gets cancel/service-unavailable, since nobody is there to answer it now.

import FastCGIFront
import Routing
import XMPPCore

struct PullHandler: StanzaHandler {
    let queue: UpdateQueue

    var startsWithoutWaiting: Bool { true }

    func handle(_ stanza: Stanza, context: HandlerContext) async -> HandlerOutcome {
        take(stanza)
    }

    func start(_ stanza: Stanza, context: HandlerContext, completion: @escaping @Sendable (HandlerOutcome) -> Void) {
        completion(take(stanza))
    }

    private func take(_ stanza: Stanza) -> HandlerOutcome {
        queue.append(stanza)
        if stanza.kind == .iq && stanza.isRequest {
            return .failed(.cancel, .serviceUnavailable, text: "this address only queues stanzas for a client to fetch",
                           metadata: ["update": "queued"])
        }
        return HandlerOutcome(metadata: ["update": "queued"])
    }
}
