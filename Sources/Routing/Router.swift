// Takes stanzas from the component link, dispatches each (SPEC §4 routes, §10 built-ins) and sends the
// replies. Handlers run concurrently; on shutdown the router stops taking stanzas and lets running
// handlers finish for up to `drainTimeout` before cancelling them (which tears their processes down).

import ComponentLink
import Logging
import ServiceLifecycle
import Synchronization
import XMPPCore

package final class Router: Service, Sendable {
    let connection: ComponentConnection
    let dispatcher: Dispatcher
    let logger: Logger
    let drainTimeout: Duration
    /// Sees every stanza first: takes the rooms' presence and says which messages come from a room (SPEC §14).
    let rooms: (any RoomFilter)?
    private let running = RunningHandlers()
    /// Direct-start stanzas admitted while every run slot of their route was taken: they wait for a slot in a child
    /// task of `run`'s group, never in a task of their own.
    private let overflow: AsyncStream<(Stanza, Route, RoomOrigin?, Dispatcher.Ticket)>
    private let overflowContinuation: AsyncStream<(Stanza, Route, RoomOrigin?, Dispatcher.Ticket)>.Continuation
    /// Stanzas the link read after `endInbound`, held until `run`'s loop has left what `inbound` still held, so both
    /// are left in the order they arrived. `draining` false: left at once.
    private let lateStanzas = Mutex((draining: true, held: [Stanza]()))

    package init(connection: ComponentConnection, dispatcher: Dispatcher, logger: Logger, drainTimeout: Duration = .seconds(10),
                 rooms: (any RoomFilter)? = nil) {
        self.connection = connection
        self.dispatcher = dispatcher
        self.logger = logger
        self.drainTimeout = drainTimeout
        self.rooms = rooms
        (overflow, overflowContinuation) = AsyncStream.makeStream(of: (Stanza, Route, RoomOrigin?, Dispatcher.Ticket).self)
    }

    /// Where an inbound stanza goes first.
    private enum Intake {
        /// The room keeper took it (room presence, an invite) or dropped it (a reflection, history, a subject).
        case taken
        /// To the routes, with the room it came from, if any.
        case route(RoomOrigin?)
    }

    private func intake(_ stanza: Stanza) -> Intake {
        guard let rooms else { return .route(nil) }
        switch rooms.classify(stanza) {
        case .notFromRoom: return .route(nil)
        case .taken: return .taken
        case .route(let origin): return .route(origin)
        }
    }

    package func run() async throws {
        connection.setDirectInbound { [self] stanza in handleDirectly(stanza) }
        await withDiscardingTaskGroup { group in
            group.addTask {
                await withDiscardingTaskGroup { waiting in
                    for await (stanza, route, room, ticket) in self.overflow {
                        waiting.addTask {
                            self.finish(await self.dispatcher.run(stanza, on: route, room: room, ticket: ticket), for: stanza)
                        }
                    }
                }
            }
            // On shutdown stop taking stanzas; the link (shut down after the router) then flushes the replies. The
            // stanzas still queued, what the link read and the router had not taken, and what it reads from now on
            // are left (`leave`: kept for the next process or answered), in that order.
            let stopping = Atomic(false)
            await withGracefulShutdownHandler {
                for await stanza in connection.inbound {
                    if stopping.load(ordering: .acquiring) {
                        leave(stanza)
                        continue
                    }
                    guard case .route(let room) = intake(stanza) else { continue }
                    switch dispatcher.admit(stanza, room: room) {
                    case .builtIn:
                        send(dispatcher.answerBuiltIn(stanza, room: room), for: stanza)
                    case .full(let route):
                        send(dispatcher.answerFull(stanza, route: route, room: room), for: stanza)
                    case .limited(_, let replies):
                        send(replies, for: stanza)
                    case .admitted(let route):
                        // Handlers that start without waiting were taken by `handleDirectly` already.
                        guard let ticket = dispatcher.ticket(for: stanza, route: route, room: room) else {
                            // Shutdown began after the check above: left after the queued stanzas, like what follows.
                            send(dispatcher.turnAway(stanza, route: route, room: room), for: stanza)
                            continue
                        }
                        running.enter()
                        group.addTask {
                            self.finish(await self.dispatcher.run(stanza, on: route, room: room, ticket: ticket), for: stanza)
                        }
                    }
                }
            } onGracefulShutdown: {
                // In arrival order: the stanzas still queued, then what `inbound` holds (the loop above: `stopping`
                // is set only now, so nothing it holds is left before them), then what the link reads from now on
                // (held in `lateStanzas` until the loop is done).
                for (stanza, replies) in self.dispatcher.leaveNotStarted() { self.send(replies, for: stanza) }
                stopping.store(true, ordering: .releasing)
                self.connection.endInbound { stanza in self.leaveLate(stanza) }
            }
            leaveHeldLateStanzas()
            // Stanzas still waiting in a handler's own queue (the process limit), and queued ones a router ended by
            // cancellation did not leave above, never start: kept for the next process (with a spool) or answered
            // "shutting down" now, while the link still sends.
            dispatcher.shutDown()
            // Stanzas already handed to the overflow child are turned away by the closed gates; later ones at once.
            overflowContinuation.finish()
            defer {
                let kept = dispatcher.keptCount
                if kept > 0 { logger.notice("stanzas kept in the spool for the next process", metadata: ["count": "\(kept)"]) }
            }
            let count = running.count
            guard count > 0 else { return }
            logger.notice("waiting for running handlers", metadata: ["handlers": "\(count)", "limit_s": "\(drainTimeout.components.seconds)"])
            if await !running.drained(by: .now + drainTimeout) {
                logger.warning("handlers still running at shutdown; stopping them", metadata: ["handlers": "\(running.count)"])
                group.cancelAll()
            }
        }
    }

    /// Takes, where the link reads them, the stanzas that need no task: built-in answers, refusals of full routes
    /// and routes whose handler starts without waiting (workers). False: the stanza goes through `run`'s loop.
    private func handleDirectly(_ stanza: Stanza) -> Bool {
        // The room keeper's verdict is asked again in `run`'s loop for a stanza given back here; it has side
        // effects only for what it takes (presence, invites), and those never go back.
        guard case .route(let room) = intake(stanza) else { return true }
        guard let route = dispatcher.route(for: stanza, room: room) else {
            send(dispatcher.answerBuiltIn(stanza, room: room), for: stanza)
            return true
        }
        guard route.handler.startsWithoutWaiting else { return false }
        if let replies = dispatcher.refuseOverLimit(stanza, route: route, room: room) {
            send(replies, for: stanza)
            return true
        }
        guard route.gate.admit() else {
            send(dispatcher.answerFull(stanza, route: route, room: room), for: stanza)
            return true
        }
        running.enter()
        if !dispatcher.start(stanza, on: route, room: room, completion: { self.finish($0, for: stanza) }) {
            // Every run slot is taken: this stanza waits for one (in its place in the route's queue) in `run`'s group.
            guard let ticket = dispatcher.ticket(for: stanza, route: route, room: room) else {
                // Shutdown began between the link's read and here: it is answered like a stanza still queued.
                finish(dispatcher.turnAway(stanza, route: route, room: room), for: stanza)
                return true
            }
            if case .terminated = overflowContinuation.yield((stanza, route, room, ticket)) {
                if dispatcher.redeem(ticket) {
                    finish(dispatcher.turnAway(stanza, route: route, room: room), for: stanza)
                } else {
                    // Left by the shutdown already; only its admission is still to give back.
                    route.gate.withdraw()
                    finish([], for: stanza)
                }
            }
        }
        return true
    }

    /// A stanza the link read after `endInbound`: held while `run`'s loop still leaves what `inbound` held, so the
    /// two are left in arrival order; left at once after that.
    private func leaveLate(_ stanza: Stanza) {
        let now = lateStanzas.withLock { late in
            if late.draining { late.held.append(stanza) }
            return !late.draining
        }
        if now { leave(stanza) }
    }

    /// After `run`'s loop has left what `inbound` held: the late stanzas held meanwhile, in order, including any that
    /// arrive while these are left; later ones are left where they are read.
    private func leaveHeldLateStanzas() {
        while true {
            let held = lateStanzas.withLock { late -> [Stanza] in
                if late.held.isEmpty { late.draining = false }
                defer { late.held.removeAll() }
                return late.held
            }
            if held.isEmpty { return }
            for stanza in held { leave(stanza) }
        }
    }

    /// A stanza read after the router stopped taking stanzas: kept for the next process (with a spool) or answered
    /// "shutting down". The room keeper still sees it first (a room's presence is not left unread).
    private func leave(_ stanza: Stanza) {
        guard case .route(let room) = intake(stanza) else { return }
        send(dispatcher.leftAtShutdown(stanza, route: nil, room: room), for: stanza)
    }

    /// An admitted stanza is done: its replies go out and it no longer counts as running.
    private func finish(_ replies: [Stanza], for stanza: Stanza) {
        send(replies, for: stanza)
        running.leave()
    }

    private func send(_ replies: [Stanza], for stanza: Stanza) {
        for reply in replies {
            do {
                try connection.sendReply(reply)
            } catch {
                logger.warning("reply not sent", metadata: ["stanza.id": "\(stanza.id ?? "")", "error": "\(error)"])
            }
        }
    }
}
