// Takes stanzas from the component link and answers them: routes first (later issues), then the
// built-in responders of SPEC §10. One log line per handled stanza (SPEC §13).

import ComponentLink
import Logging
import ServiceLifecycle
import XMPPCore

public final class Router: Service, Sendable {
    let connection: ComponentConnection
    let builtIns: BuiltInResponder
    let logger: Logger

    public init(connection: ComponentConnection, builtIns: BuiltInResponder, logger: Logger) {
        self.connection = connection
        self.builtIns = builtIns
        self.logger = logger
    }

    public func run() async throws {
        // On shutdown stop taking stanzas; the link (shut down after the router) then flushes the replies.
        for await stanza in connection.inbound.cancelOnGracefulShutdown() {
            handle(stanza)
        }
    }

    func handle(_ stanza: Stanza) {
        let started = ContinuousClock.now
        let replies = builtIns.respond(to: stanza)
        var outcome = replies.isEmpty ? "none" : "reply"
        for reply in replies {
            if let error = reply.error, reply.type == "error" { outcome = "error \(error.condition)" }
            do {
                try connection.send(reply)
            } catch {
                logger.warning("reply not sent", metadata: ["stanza.id": "\(stanza.id ?? "")", "error": "\(error)"])
                outcome = "unsent"
            }
        }
        logger.info("stanza handled", metadata: [
            "route": "(built-in)", "kind": "\(stanza.kind.rawValue)", "type": "\(stanza.type ?? "")",
            "stanza.id": "\(stanza.id ?? "")", "from": "\(stanza.from ?? "")", "outcome": "\(outcome)",
            "duration_ms": "\((ContinuousClock.now - started).components.attoseconds / 1_000_000_000_000_000)",
        ])
    }
}
