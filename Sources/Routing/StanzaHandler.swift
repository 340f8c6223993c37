// The contract between the router and a handler (exec, worker, webhook): a stanza in, an outcome out.
// Handlers never stamp or send; the dispatcher does both, the same way for every kind of handler.

import Logging
import XMPPCore

/// Runs one stanza through a route's target.
package protocol StanzaHandler: Sendable {
    /// Handles `stanza` and reports what should be sent back. Must not throw: every failure is an outcome.
    func handle(_ stanza: Stanza, context: HandlerContext) async -> HandlerOutcome

    /// True when `start` hands the stanza over without waiting and calls back from whichever thread learns the
    /// outcome (a worker pool's reader): the router then runs no task per stanza and the reply is sent from that
    /// thread, without hopping through the cooperative pool.
    var startsWithoutWaiting: Bool { get }

    /// Starts handling `stanza`; `completion` gets the outcome exactly once. Must not block.
    func start(_ stanza: Stanza, context: HandlerContext, completion: @escaping @Sendable (HandlerOutcome) -> Void)

    /// Shutdown: stanzas waiting in the handler's own queue (not yet started) are turned away.
    func shutDown()
}

extension StanzaHandler {
    package var startsWithoutWaiting: Bool { false }

    /// Handlers that do not start without waiting are run through `handle` in a task of the router's group; the
    /// dispatcher never calls their `start`.
    package func start(_ stanza: Stanza, context: HandlerContext, completion: @escaping @Sendable (HandlerOutcome) -> Void) {
        assertionFailure("start(_:context:completion:) is only for handlers whose startsWithoutWaiting is true")
        completion(.failed(.wait, .internalServerError, metadata: ["problem": "handler cannot start without waiting"]))
    }

    package func shutDown() {}
}

/// What a handler knows about the route and the daemon while it runs.
package struct HandlerContext: Sendable {
    package var route: String
    /// The component domain (`[component] jid`).
    package var component: String
    /// The room the stanza came from (SPEC §14), for STANZA_ROOM / STANZA_NICK and JSON `room` / `room_nick`.
    package var room: RoomOrigin?
    private var base: Logger
    /// Set: `logger` adds the route, this stanza id and the room to `base`'s metadata.
    private var stanzaID: String?

    /// For the handler's log lines. Built when asked for: handlers log on failures, and a logger with its own
    /// metadata for every stanza was a dictionary copy and three insertions each time.
    package var logger: Logger {
        get {
            guard let stanzaID else { return base }
            var logger = base
            logger[metadataKey: "route"] = "\(route)"
            logger[metadataKey: "stanza.id"] = "\(stanzaID)"
            if let room { logger[metadataKey: "room"] = "\(room.room)" }
            return logger
        }
        set {
            base = newValue
            stanzaID = nil
        }
    }

    /// `logger` is used as it is.
    package init(route: String, component: String, logger: Logger, room: RoomOrigin? = nil) {
        self.route = route
        self.component = component
        self.base = logger
        self.room = room
    }

    /// `logger` gets the route, the stanza's id ("" without one) and the room as metadata when it is used.
    package init(route: String, component: String, routeLogger: Logger, stanzaID: String?, room: RoomOrigin?) {
        self.init(route: route, component: component, logger: routeLogger, room: room)
        self.stanzaID = stanzaID ?? ""
    }
}

/// The result of one handler run.
package struct HandlerOutcome: Sendable {
    /// Stanzas the handler produced, not yet stamped (SPEC §8).
    package var replies: [Stanza]
    /// The handler failed: the sender gets this error (unless the stanza was an error or result).
    package var failure: StanzaError?
    /// Extra fields for the "stanza handled" log line: exit status, pid, HTTP status, …
    package var metadata: Logger.Metadata
    /// The handler never started because stanzad stops (it waited for the process limit): the dispatcher keeps
    /// the stanza for the next process or answers "shutting down".
    package var neverStarted = false

    package init(replies: [Stanza] = [], failure: StanzaError? = nil, metadata: Logger.Metadata = [:]) {
        self.replies = replies
        self.failure = failure
        self.metadata = metadata
    }

    /// See `neverStarted`.
    package static let leftAtShutdown: HandlerOutcome = {
        var outcome = HandlerOutcome(failure: Dispatcher.shuttingDown, metadata: ["queue": "left at shutdown"])
        outcome.neverStarted = true
        return outcome
    }()

    package static func failed(_ type: StanzaError.ErrorType, _ condition: StanzaError.Condition, text: String? = nil,
                              metadata: Logger.Metadata = [:]) -> HandlerOutcome {
        HandlerOutcome(failure: StanzaError(type, condition, text: text), metadata: metadata)
    }
}
