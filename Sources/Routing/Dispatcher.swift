// Routes one inbound stanza: the first matching `[[route]]` runs its handler (within the route's
// concurrency and queue), otherwise the built-in responders answer. Produces the stamped stanzas to
// send and one log line per handled stanza (SPEC §13). Used by the Router and by `stanzad try`.

import Logging
import Synchronization
import XMPPCore

/// A configured route: its rule, its handler and its admission gate.
/// A class: every stanza takes its route along (into the handler's completion, the log line), and a reference is
/// one retain where a copy of the struct was one for each of its fields.
package final class Route: Sendable {
    package let name: String
    package let rule: RouteRule
    package let handler: any StanzaHandler
    package let gate: AdmissionGate
    package let metrics: RouteMetrics

    package init(name: String, rule: RouteRule, handler: any StanzaHandler, concurrency: Int, queue: Int) {
        self.name = name
        self.rule = rule
        self.handler = handler
        self.gate = AdmissionGate(concurrency: concurrency, queue: queue)
        self.metrics = RouteMetrics(route: name)
    }
}

package final class Dispatcher: Sendable {
    private struct Table {
        var routes: [Route]
        var builtIns: BuiltInResponder
        /// Routes replaced by a reload that still had stanzas running or queued: shutdown closes them too.
        var retired: [Route] = []
        var shuttingDown = false
    }

    private let table: Mutex<Table>
    /// `[limits] per_sender`; nil: no limit. Replaced (buckets and all) when a reload changes the rate.
    private let rateLimit = Mutex<SenderRateLimit?>(nil)
    /// Keeps a stanza that never ran because stanzad stops, for the next process to route (SPEC §18: the spool);
    /// nil, or false from it: the sender is answered "shutting down".
    private let keeper = Mutex<(@Sendable (Stanza) -> Bool)?>(nil)
    /// How many were kept that way.
    private let keptAtShutdown = Atomic(0)
    /// Admitted stanzas whose handler has not started yet, by arrival (`Ticket`): a shutdown leaves them in that
    /// order (`leaveNotStarted`), before anything read after it, instead of in whatever order their tasks wake.
    private let notStarted = Mutex(NotStarted())

    private struct NotStarted {
        var next = 0
        var entries: [Int: (stanza: Stanza, route: Route, room: RoomOrigin?)] = [:]
        /// `leaveNotStarted` ran: no more tickets.
        var closed = false
    }

    /// An admitted stanza's place in arrival order until its handler starts (`ticket(for:route:room:)`).
    package struct Ticket: Sendable {
        fileprivate let number: Int
    }
    package let stamper: ReplyStamper
    let logger: Logger

    package init(routes: [Route], builtIns: BuiltInResponder, maxStanzaBytes: Int = 524_288, logger: Logger) {
        self.table = Mutex(Table(routes: routes, builtIns: builtIns))
        self.stamper = ReplyStamper(domain: builtIns.domain, maxStanzaBytes: maxStanzaBytes)
        self.logger = logger
    }

    package var routes: [Route] { table.withLock { $0.routes } }
    package var builtIns: BuiltInResponder { table.withLock { $0.builtIns } }

    /// SIGHUP: the next stanza takes the new routes; stanzas already admitted finish on the old ones.
    package func reload(routes: [Route], builtIns: BuiltInResponder) {
        let shuttingDown = table.withLock { table -> Bool in
            table.retired = (table.retired + table.routes).filter { $0.gate.load > 0 }
            table.routes = routes
            table.builtIns = builtIns
            return table.shuttingDown
        }
        if shuttingDown { for route in routes { route.gate.close() } }
    }

    /// Sets the per-sender limit (at start and on SIGHUP); an unchanged rate keeps the senders' buckets.
    package func setRateLimit(_ spec: RateLimitSpec?) {
        rateLimit.withLock { current in
            guard current?.spec != spec else { return }
            current = spec.map(SenderRateLimit.init)
        }
    }

    /// The per-sender limit for a stanza a route would take: nil when it may go on, else the answer to send
    /// instead (wait/policy-violation; nothing for a stanza that takes no error). The handler does not run.
    package func refuseOverLimit(_ stanza: Stanza, route: Route, room: RoomOrigin? = nil) -> [Stanza]? {
        // In a room every occupant is `room/nick`: the sender is the occupant, not the whole room.
        guard let limit = rateLimit.withLock({ $0 }), let from = JID.parse(stanza.from) else { return nil }
        let sender = room == nil ? from.bare.description : from.description
        guard case .limited(let refusedInARow) = limit.take(sender: sender) else { return nil }
        if refusedInARow == 1 {
            logger.warning("sender over its rate limit; its stanzas are refused", metadata: [
                "from": "\(sender)", "route": "\(route.name)", "per_sender": "\(limit.spec)",
            ])
        }
        route.metrics.count(.limited)
        let error = StanzaError(.wait, .policyViolation, text: "rate limit: at most \(limit.spec.count) stanzas per \(limit.spec.seconds) s; try again later")
        let replies = stamper.errorReply(to: stanza, error, fromRoom: room != nil)
        log(stanza, route: route.name, replies: replies, started: ContinuousClock.now, metadata: ["limit": "per_sender", "refused_in_a_row": "\(refusedInARow)"])
        return replies
    }

    /// Shutdown (SPEC §11): stanzas still waiting for a run slot, in a route's queue or in a handler's own (the
    /// process limit), never start; each is kept for the next process (`keepLeftStanzas`) or answered
    /// cancel/service-unavailable "stanzad is shutting down". Running handlers are not touched.
    package func shutDown() {
        let routes = table.withLock { table -> [Route] in
            table.shuttingDown = true
            return table.routes + table.retired
        }
        for route in routes {
            route.gate.close()
            route.handler.shutDown()
        }
    }

    /// The error for a stanza that was admitted but never started because stanzad is going down.
    package static let shuttingDown = StanzaError(.cancel, .serviceUnavailable, text: "stanzad is shutting down")

    /// With a spool: stanzas that never run because stanzad stops go to `keep` (false: not kept, answered as
    /// without it). Set before the router runs.
    package func keepLeftStanzas(_ keep: @escaping @Sendable (Stanza) -> Bool) {
        keeper.withLock { $0 = keep }
    }

    /// Stanzas kept for the next process so far (`leftAtShutdown`).
    package var keptCount: Int { keptAtShutdown.load(ordering: .relaxed) }

    /// A stanza that will never run because stanzad stops: kept for the next process when it can be (not one from a
    /// room: the next process has not joined it yet), else answered "shutting down" (nothing to a room, SPEC §14).
    /// `route` nil: it was read after the router stopped taking stanzas.
    package func leftAtShutdown(_ stanza: Stanza, route: Route?, room: RoomOrigin?,
                                started: ContinuousClock.Instant = .now) -> [Stanza] {
        route?.metrics.count(.shutdown)
        let routeName = route?.name ?? "(not routed)"
        if room == nil, let keep = keeper.withLock({ $0 }), keep(stanza) {
            if keptAtShutdown.add(1, ordering: .relaxed).oldValue == 0 {
                logger.notice("stanzas this process will not handle are kept in the spool for the next one (each logged at info)")
            }
            log(stanza, route: routeName, replies: [], started: started, metadata: ["queue": "kept in the spool at shutdown"])
            return []
        }
        let replies = stamper.errorReply(to: stanza, Self.shuttingDown, fromRoom: room != nil)
        log(stanza, route: routeName, replies: replies, started: started, metadata: ["queue": "left at shutdown"])
        return replies
    }

    /// What happens to a stanza, decided synchronously at arrival.
    package enum Admission: Sendable {
        /// No route matches: the built-in responders answer.
        case builtIn
        /// A route matches and has room; call `run(_:on:)`.
        case admitted(Route)
        /// A route matches but its concurrency and queue are full.
        case full(Route)
        /// A route matches but the sender is over `[limits] per_sender`: send these instead.
        case limited(Route, replies: [Stanza])
    }

    package func admit(_ stanza: Stanza, room: RoomOrigin? = nil) -> Admission {
        guard let route = route(for: stanza, room: room) else { return .builtIn }
        if let replies = refuseOverLimit(stanza, route: route, room: room) { return .limited(route, replies: replies) }
        return route.gate.admit() ? .admitted(route) : .full(route)
    }

    /// The first route whose rule matches, without admitting the stanza; nil: the built-ins answer it.
    package func route(for stanza: Stanza, room: RoomOrigin? = nil) -> Route? {
        var addresses = StanzaAddresses(stanza)
        return routes.first(where: { $0.rule.matches(stanza, room: room, addresses: &addresses) })
    }

    /// The built-in answer to a stanza no route takes. A message from a room gets none (SPEC §14: never
    /// service-unavailable to a room or an occupant).
    package func answerBuiltIn(_ stanza: Stanza, room: RoomOrigin? = nil) -> [Stanza] {
        let started = ContinuousClock.now
        let replies = room == nil ? builtIns.respond(to: stanza) : []
        log(stanza, route: "(built-in)", replies: replies, started: started)
        return replies
    }

    /// The answer to a stanza refused because its route is full: wait/resource-constraint.
    package func answerFull(_ stanza: Stanza, route: Route, room: RoomOrigin? = nil) -> [Stanza] {
        route.metrics.count(.busy)
        let replies = stamper.errorReply(
            to: stanza, StanzaError(.wait, .resourceConstraint, text: "route \(route.name) is busy; try again later"), fromRoom: room != nil)
        log(stanza, route: route.name, replies: replies, started: ContinuousClock.now, metadata: ["queue": "full"])
        return replies
    }

    /// An admitted stanza that will never run because shutdown began before it could wait for a slot: its
    /// admission goes back and it is answered like a stanza left in the queue.
    package func turnAway(_ stanza: Stanza, route: Route, room: RoomOrigin? = nil) -> [Stanza] {
        route.gate.withdraw()
        return leftAtShutdown(stanza, route: route, room: room)
    }

    /// Notes an admitted stanza that will wait for `run` in arrival order. Call where stanzas arrive one by one,
    /// before handing it to its task. nil: a shutdown has begun; turn the stanza away (`turnAway`).
    package func ticket(for stanza: Stanza, route: Route, room: RoomOrigin?) -> Ticket? {
        notStarted.withLock { state in
            guard !state.closed else { return nil }
            state.next += 1
            state.entries[state.next] = (stanza, route, room)
            return Ticket(number: state.next)
        }
    }

    /// True: the stanza is this caller's to run or turn away (its ticket is handed back). False: a shutdown left it
    /// already (`leaveNotStarted`); nothing more may be done with it.
    package func redeem(_ ticket: Ticket?) -> Bool {
        guard let ticket else { return true }
        return notStarted.withLock { $0.entries.removeValue(forKey: ticket.number) != nil }
    }

    /// Shutdown, before the link's last stanzas are left: every admitted stanza whose handler has not started and
    /// would have to wait for a run slot is left now, in arrival order (kept for the next process, or answered
    /// "shutting down"); its task then finds it gone and returns nothing. As many as a route has free slots stay
    /// and run, as they would have (`AdmissionGate.acquire`). Later admissions get no ticket. Returns each stanza
    /// left with the replies to send.
    package func leaveNotStarted() -> [(stanza: Stanza, replies: [Stanza])] {
        // Left under the lock: a stanza admitted meanwhile waits here for its ticket (refused), so it is left after
        // these. Nothing called from here takes this lock.
        notStarted.withLock { state in
            state.closed = true
            var free: [ObjectIdentifier: Int] = [:]
            var left: [(stanza: Stanza, replies: [Stanza])] = []
            for (number, entry) in state.entries.sorted(by: { $0.key < $1.key }) {
                let route = ObjectIdentifier(entry.route)
                let slots = free[route] ?? entry.route.gate.freeSlots
                if slots > 0 {
                    free[route] = slots - 1
                    continue
                }
                free[route] = 0
                state.entries[number] = nil
                left.append((entry.stanza, leftAtShutdown(entry.stanza, route: entry.route, room: entry.room)))
            }
            return left
        }
    }

    /// Runs an admitted stanza through its route's handler and returns the stamped replies. With a `ticket`, a
    /// shutdown may leave the stanza before its handler starts (`leaveNotStarted`); the result is then empty.
    package func run(_ stanza: Stanza, on route: Route, room: RoomOrigin? = nil, ticket: Ticket? = nil) async -> [Stanza] {
        let started = ContinuousClock.now
        guard await route.gate.acquire() else {
            // Cancelled or shut down while queued: the handler never runs.
            guard redeem(ticket) else { return [] }
            return leftAtShutdown(stanza, route: route, room: room, started: started)
        }
        defer { route.gate.release() }
        guard redeem(ticket) else { return [] }
        let context = context(for: stanza, on: route, room: room)
        let outcome = await route.handler.handle(stanza, context: context)
        return finish(outcome, of: stanza, on: route, context: context, started: started)
    }

    /// Starts an admitted stanza without a task of its own when its handler supports that and the route has a
    /// free run slot; `completion` then gets the stamped replies, on whichever thread the handler reports from.
    /// False: nothing was started; use `run(_:on:)`.
    package func start(_ stanza: Stanza, on route: Route, room: RoomOrigin? = nil,
                       completion: @escaping @Sendable ([Stanza]) -> Void) -> Bool {
        guard route.handler.startsWithoutWaiting, route.gate.tryAcquire() else { return false }
        let started = ContinuousClock.now
        let context = context(for: stanza, on: route, room: room)
        route.handler.start(stanza, context: context) { outcome in
            route.gate.release()
            completion(self.finish(outcome, of: stanza, on: route, context: context, started: started))
        }
        return true
    }

    private func context(for stanza: Stanza, on route: Route, room: RoomOrigin?) -> HandlerContext {
        HandlerContext(route: route.name, component: builtIns.domain, routeLogger: logger, stanzaID: stanza.id, room: room)
    }

    /// Stamps the handler's replies and logs the stanza.
    private func finish(_ outcome: HandlerOutcome, of stanza: Stanza, on route: Route, context: HandlerContext,
                        started: ContinuousClock.Instant) -> [Stanza] {
        if outcome.neverStarted { return leftAtShutdown(stanza, route: route, room: context.room, started: started) }
        let (replies, refusal) = stamper.stamp(outcome, replyingTo: stanza, fromRoom: context.room != nil)
        var metadata = outcome.metadata
        if let refusal {
            metadata["problem"] = "\(refusal.description)"
            context.logger.error("handler reply refused", metadata: ["problem": "\(refusal.description)"])
        }
        let failed = outcome.failure != nil || refusal != nil || replies.contains { $0.type == "error" }
        route.metrics.ran(failed ? .error : .ok, since: started)
        log(stanza, route: route.name, replies: replies, started: started, metadata: metadata)
        return replies
    }

    private func log(_ stanza: Stanza, route: String, replies: [Stanza], started: ContinuousClock.Instant,
                     metadata extra: Logger.Metadata = [:]) {
        // Built only when it is printed: at `notice` and above this line costs nothing.
        guard logger.logLevel <= .info else { return }
        var outcome = replies.isEmpty ? "none" : "reply"
        if let error = replies.first(where: { $0.type == "error" })?.error, replies.count == 1 {
            outcome = "error \(error.condition)"
        }
        let elapsed = ContinuousClock.now - started
        let milliseconds = Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
        var metadata: Logger.Metadata = [
            "route": "\(route)", "kind": "\(stanza.kind.rawValue)", "type": "\(stanza.type ?? "")",
            "stanza.id": "\(stanza.id ?? "")", "from": "\(stanza.from ?? "")", "outcome": "\(outcome)",
            "duration_ms": "\((milliseconds * 10).rounded() / 10)",
        ]
        metadata.merge(extra) { $1 }
        logger.info("stanza handled", metadata: metadata)
    }
}
