// The contract between the router and a handler (exec, worker, webhook): a stanza in, an outcome out.
// Handlers never stamp or send; the dispatcher does both, the same way for every kind of handler.

import Logging
import XMPPCore

/// Runs one stanza through a route's target.
public protocol StanzaHandler: Sendable {
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
    public var startsWithoutWaiting: Bool { false }

    public func start(_ stanza: Stanza, context: HandlerContext, completion: @escaping @Sendable (HandlerOutcome) -> Void) {
        Task { completion(await handle(stanza, context: context)) }
    }

    public func shutDown() {}
}

/// What a handler knows about the route and the daemon while it runs.
public struct HandlerContext: Sendable {
    public var route: String
    /// The component domain (`[component] jid`).
    public var component: String
    public var logger: Logger

    public init(route: String, component: String, logger: Logger) {
        self.route = route
        self.component = component
        self.logger = logger
    }
}

/// The result of one handler run.
public struct HandlerOutcome: Sendable {
    /// Stanzas the handler produced, not yet stamped (SPEC §8).
    public var replies: [Stanza]
    /// The handler failed: the sender gets this error (unless the stanza was an error or result).
    public var failure: StanzaError?
    /// Extra fields for the "stanza handled" log line: exit status, pid, HTTP status, …
    public var metadata: Logger.Metadata

    public init(replies: [Stanza] = [], failure: StanzaError? = nil, metadata: Logger.Metadata = [:]) {
        self.replies = replies
        self.failure = failure
        self.metadata = metadata
    }

    public static func failed(_ type: StanzaError.ErrorType, _ condition: StanzaError.Condition, text: String? = nil,
                              metadata: Logger.Metadata = [:]) -> HandlerOutcome {
        HandlerOutcome(failure: StanzaError(type, condition, text: text), metadata: metadata)
    }
}
