// Updates (SPEC §17): stanzas routed to a `pull = true` route wait in its queue until a client fetches them,
// Telegram-`getUpdates` style (`GET {path}/updates/{route}`, long-polled), or streams them (`GET
// {path}/events/{route}`, server-sent events). A waiting fetch and an open stream hold a callback, not a
// thread or a task.

import DequeModule
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import XMPPCore

/// Where a pull route's updates are kept across restarts (SPEC §18: the spool). Every call returns at once.
package protocol UpdateStore: Sendable {
    /// An update was queued.
    func saveUpdate(route: String, id: Int64, json: [UInt8], arrived: Date)
    /// Updates below `id` were acknowledged, expired or dropped.
    func deleteUpdates(route: String, below id: Int64)
    /// A stored update (another process's, taken over) is queued here under a new id.
    func renumberUpdate(seq: Int64, id: Int64)
}

/// An update as the store keeps it.
package struct StoredUpdate: Sendable, Equatable {
    /// Its row in the store.
    package var seq: Int64
    package var id: Int64
    package var json: [UInt8]
    package var arrived: Date

    package init(seq: Int64, id: Int64, json: [UInt8], arrived: Date) {
        self.seq = seq
        self.id = id
        self.json = json
        self.arrived = arrived
    }
}

/// One pull route's updates, in memory, and with a store (SPEC §18) also on disk.
package final class UpdateQueue: Sendable {
    package struct Update: Sendable {
        package var id: Int64
        /// The stanza in the JSON mapping (SPEC §7), serialized once.
        package var json: [UInt8]
        package var arrived: ContinuousClock.Instant
    }

    private struct Waiter {
        var offset: Int64
        var limit: Int
        var deliver: @Sendable ([Update]) -> Void
        var timer: Scheduled<Void>?
    }

    private struct State {
        var updates = Deque<Update>()
        var nextID: Int64
        var dropped = 0
        var waiters: [Int: Waiter] = [:]
        /// Open event streams: each gets every new update (which is acknowledged by that) and is ended by `close`.
        var streams: [Int: (send: @Sendable (Update) -> Void, end: @Sendable () -> Void)] = [:]
        var nextToken = 0
        var capacity: Int
        var retention: Duration
    }

    package let route: String
    private let state: Mutex<State>
    private let loop: any EventLoop
    /// Told when the queue drops its oldest update because it is full.
    private let onDrop: @Sendable (_ dropped: Int, _ total: Int) -> Void
    /// The clock retention is measured on (tests give their own).
    private let now: @Sendable () -> ContinuousClock.Instant
    /// Keeps the updates across restarts; nil: memory only.
    private let store: (any UpdateStore)?

    /// Update ids start at the clock's milliseconds × 1000, so they keep growing across restarts (a restart
    /// would have to follow more than a thousand updates per millisecond since the last start to reuse one).
    package init(route: String, capacity: Int, retention: Duration, loop: any EventLoop = MultiThreadedEventLoopGroup.singleton.any(),
                 firstID: Int64 = Int64(Date().timeIntervalSince1970 * 1000) * 1000,
                 now: @escaping @Sendable () -> ContinuousClock.Instant = { .now },
                 store: (any UpdateStore)? = nil, stored: [StoredUpdate] = [],
                 onDrop: @escaping @Sendable (Int, Int) -> Void = { _, _ in }) {
        self.route = route
        self.loop = loop
        self.onDrop = onDrop
        self.now = now
        self.store = store
        var state = State(nextID: firstID, capacity: max(1, capacity), retention: retention)
        // What the store kept from before, with its ids (a client's offset stays valid across the restart).
        let clock = now()
        for update in stored.sorted(by: { $0.id < $1.id }) {
            let age = max(0, Date().timeIntervalSince(update.arrived))
            state.updates.append(Update(id: update.id, json: update.json, arrived: clock - .milliseconds(Int64(age * 1000))))
            state.nextID = max(state.nextID, update.id + 1)
        }
        self.state = Mutex(state)
    }

    /// Updates another process stored and left (a take-over): queued here under new ids, after the others.
    package func adopt(_ stored: [StoredUpdate]) {
        let clock = now()
        for update in stored.sorted(by: { $0.seq < $1.seq }) {
            let age = max(0, Date().timeIntervalSince(update.arrived))
            let id: Int64 = state.withLock { state in
                let id = state.nextID
                state.nextID += 1
                state.updates.append(Update(id: id, json: update.json, arrived: clock - .milliseconds(Int64(age * 1000))))
                return id
            }
            store?.renumberUpdate(seq: update.seq, id: id)
        }
    }

    /// Tells the store what is gone: everything below the first update still queued (or below the next id).
    private func forget(_ state: State) {
        store?.deleteUpdates(route: route, below: state.updates.first?.id ?? state.nextID)
    }

    /// SIGHUP: new limits (the oldest updates go if the queue is now over its capacity).
    package func reconfigure(capacity: Int, retention: Duration) {
        state.withLock { state in
            state.capacity = max(1, capacity)
            state.retention = retention
            while state.updates.count > state.capacity { state.updates.removeFirst() }
            forget(state)
        }
    }

    /// Queues a stanza; waiting fetches and open streams get it at once. Open streams get it in order (it is
    /// handed to them under the lock; handing over only queues it on their connection's event loop), and an
    /// update an open stream got is acknowledged.
    package func append(_ stanza: Stanza) {
        let json = StanzaJSON.encode(stanza).serializedBytes()
        let now = self.now()
        var dropped: (Int, Int)?
        let (update, waiters): (Update, [Waiter]) = state.withLock { state in
            let update = Update(id: state.nextID, json: json, arrived: now)
            state.nextID += 1
            if state.streams.isEmpty {
                state.updates.append(update)
                store?.saveUpdate(route: route, id: update.id, json: json, arrived: Date())
                if state.updates.count > state.capacity {
                    state.updates.removeFirst()
                    state.dropped += 1
                    dropped = (1, state.dropped)
                    forget(state)
                }
            } else {
                for stream in state.streams.values { stream.send(update) }
            }
            // A fetch waiting for ids beyond this one (an offset ahead of the queue) keeps waiting.
            var ready: [Waiter] = []
            for (token, waiter) in state.waiters where waiter.offset <= update.id {
                ready.append(waiter)
                state.waiters[token] = nil
            }
            return (update, ready)
        }
        if let (count, total) = dropped { onDrop(count, total) }
        for waiter in waiters {
            waiter.timer?.cancel()
            waiter.deliver([update])
        }
    }

    /// Acknowledges (deletes) every update below `offset` and returns up to `limit` from there on; when there is
    /// none, waits up to `timeout` for one. `deliver` runs once (an empty list at the timeout). The returned
    /// cancellation ends the wait at once with an empty list.
    package func fetch(offset: Int64?, limit: Int, timeout: Duration,
                       deliver: @escaping @Sendable ([Update]) -> Void) -> RestCancellation? {
        let now = self.now()
        // The check and the registration of the waiter are one step: an update appended between them would
        // otherwise reach nobody, and the next offset would delete it unseen.
        enum Found { case updates([Update]), waiting(Int) }
        let result: Found = state.withLock { state in
            expire(&state, now: now)
            if let offset, let first = state.updates.first, first.id < offset {
                while let first = state.updates.first, first.id < offset { state.updates.removeFirst() }
                forget(state)
            }
            let from = offset ?? 0
            let available = state.updates.lazy.filter { $0.id >= from }.prefix(limit)
            if !available.isEmpty || timeout <= .zero { return .updates(Array(available)) }
            state.nextToken += 1
            state.waiters[state.nextToken] = Waiter(offset: from, limit: limit, deliver: deliver)
            return .waiting(state.nextToken)
        }
        let token: Int
        switch result {
        case .updates(let updates):
            deliver(updates)
            return nil
        case .waiting(let waiting):
            token = waiting
        }
        let timer = loop.scheduleTask(in: TimeAmount(timeout)) { [self] in self.endWait(token) }
        let stillWaiting: Bool = state.withLock { state in
            guard state.waiters[token] != nil else { return false }
            state.waiters[token]?.timer = timer
            return true
        }
        if !stillWaiting { timer.cancel() }
        return RestCancellation { [self] in
            timer.cancel()
            self.endWait(token)
        }
    }

    private func endWait(_ token: Int) {
        guard let waiter = state.withLock({ $0.waiters.removeValue(forKey: token) }) else { return }
        waiter.deliver([])
    }

    /// Streams every update after `lastID` (those still queued first), then each new one as it arrives; updates
    /// are acknowledged (deleted) as they are handed to `send`, which must only queue them (it runs under the
    /// queue's lock, which keeps the events in order). `end` runs if the queue is closed (its route removed). The
    /// returned cancellation stops the stream.
    package func subscribe(after lastID: Int64?, send: @escaping @Sendable (Update) -> Void,
                           end: @escaping @Sendable () -> Void = {}) -> RestCancellation {
        let now = self.now()
        let token: Int = state.withLock { state in
            expire(&state, now: now)
            for update in state.updates where update.id > (lastID ?? Int64.min) { send(update) }
            // Acknowledged: the backlog as it was sent, and what is older than the client's last event.
            if !state.updates.isEmpty {
                state.updates.removeAll()
                forget(state)
            }
            state.nextToken += 1
            state.streams[state.nextToken] = (send, end)
            return state.nextToken
        }
        return RestCancellation { [self] in
            _ = self.state.withLock { $0.streams.removeValue(forKey: token) }
        }
    }

    /// The route is gone (a reload removed it): waiting fetches get an empty answer and open streams end.
    package func close() {
        let (waiters, streams) = state.withLock { state in
            defer {
                state.waiters.removeAll()
                state.streams.removeAll()
            }
            return (Array(state.waiters.values), Array(state.streams.values))
        }
        for waiter in waiters {
            waiter.timer?.cancel()
            waiter.deliver([])
        }
        for stream in streams { stream.end() }
    }

    /// Updates waiting (for tests and metrics).
    package var count: Int { state.withLock { $0.updates.count } }
    /// Fetches and streams waiting.
    package var listeners: (fetches: Int, streams: Int) { state.withLock { ($0.waiters.count, $0.streams.count) } }

    private func expire(_ state: inout State, now: ContinuousClock.Instant) {
        guard let first = state.updates.first, now - first.arrived > state.retention else { return }
        while let first = state.updates.first, now - first.arrived > state.retention { state.updates.removeFirst() }
        forget(state)
    }
}

/// A streamed response (server-sent events): the API produces chunks over time, the FastCGI connection writes
/// them as they come. The channel attaches a sink once the response head is written; the producer learns when
/// the client has gone.
package final class RestEventStream: Sendable {
    package struct Sink: Sendable {
        package var write: @Sendable ([UInt8]) -> Void
        package var end: @Sendable () -> Void
    }

    private enum State {
        case waiting
        case attached(Sink)
        case over
    }

    private let state = Mutex(State.waiting)
    private let gone = Mutex<RestCancellation?>(nil)
    private let start: @Sendable (RestEventStream) -> RestCancellation?

    /// `start` runs once the response head is written: it begins producing and returns how to stop.
    package init(start: @escaping @Sendable (RestEventStream) -> RestCancellation?) {
        self.start = start
    }

    /// Writes a chunk (dropped once the stream is over).
    package func send(_ bytes: [UInt8]) {
        let sink: Sink? = state.withLock { if case .attached(let sink) = $0 { return sink } else { return nil } }
        sink?.write(bytes)
    }

    /// Ends the response (shutdown, or the producer is done).
    package func end() {
        let sink: Sink? = state.withLock { state in
            defer { state = .over }
            if case .attached(let sink) = state { return sink }
            return nil
        }
        sink?.end()
        gone.withLock { $0 }?.cancel()
    }

    /// The channel wrote the head: production begins.
    func attach(_ sink: Sink) {
        let attached: Bool = state.withLock { state in
            guard case .waiting = state else { return false }
            state = .attached(sink)
            return true
        }
        guard attached else { return }
        let stop = start(self)
        let over: Bool = state.withLock { if case .over = $0 { return true } else { return false } }
        if over { stop?.cancel() } else { gone.withLock { $0 = stop } }
    }

    /// The client went away: production stops.
    func clientGone() {
        state.withLock { $0 = .over }
        gone.withLock { gone in defer { gone = nil }; return gone }?.cancel()
    }
}

extension RestAPI {
    /// SIGHUP and start: the pull routes' queues by route name.
    package func setUpdateQueues(_ queues: [UpdateQueue]) {
        updateQueues.withLock { $0 = Dictionary(queues.map { ($0.route, $0) }, uniquingKeysWith: { $1 }) }
    }

    private func queue(_ route: String) throws -> UpdateQueue {
        guard let queue = updateQueues.withLock({ $0[route] }) else {
            throw RestFailure(404, .cancel, .itemNotFound, "no pull route named \(JID.quoted(route)); a [[route]] with pull = true serves updates")
        }
        return queue
    }

    /// `GET {path}/updates/{route}?offset=N&limit=100&timeout=30`.
    func updates(_ route: String, request: RestRequest, respond: @escaping @Sendable (RestResponse) -> Void) throws -> RestCancellation? {
        try allow(request, ["GET"])
        let queue = try queue(route)
        let values: [String: String]
        switch FormBody.decode(Array(request.query.utf8), charset: .utf8) {
        case .success(let decoded): values = decoded
        case .failure(let failure): throw RestFailure(400, .modify, .badRequest, "malformed query string: \(failure.description)")
        }
        var offset: Int64?
        if let text = values["offset"] {
            guard let value = Int64(text), value >= 0 else {
                throw RestFailure(400, .modify, .badRequest, "offset must be a non-negative integer (the last update_id + 1), not \(JID.quoted(text))")
            }
            offset = value
        }
        var limit = 100
        if let text = values["limit"] {
            guard let value = Int(text), (1...1000).contains(value) else {
                throw RestFailure(400, .modify, .badRequest, "limit must be an integer from 1 to 1000, not \(JID.quoted(text))")
            }
            limit = value
        }
        var timeout = Duration.zero
        if let text = values["timeout"] {
            let most = settings.maxIQTimeout.components.seconds
            guard let value = Int64(text), value >= 0, value <= most else {
                throw RestFailure(400, .modify, .badRequest, "timeout must be whole seconds from 0 to \(most) (max_iq_timeout), not \(JID.quoted(text))")
            }
            timeout = .seconds(value)
        }
        let given = offset
        let waiting = queue.fetch(offset: given, limit: limit, timeout: timeout) { updates in
            respond(Self.updatesResponse(updates, offset: given))
        }
        if waiting != nil { logger?.debug("update fetch waiting", metadata: ["route": "\(route)"]) }
        return waiting
    }

    /// `{"updates": [{"update_id": n, "stanza": {…}}], "next_offset": m}`, built from the stanzas' JSON as stored.
    static func updatesResponse(_ updates: [UpdateQueue.Update], offset: Int64?) -> RestResponse {
        var body = Array("{\"updates\":[".utf8)
        for (index, update) in updates.enumerated() {
            if index > 0 { body.append(UInt8(ascii: ",")) }
            body += Array("{\"update_id\":\(update.id),\"stanza\":".utf8)
            body += update.json
            body.append(UInt8(ascii: "}"))
        }
        let next = updates.last.map { $0.id + 1 } ?? offset ?? 0
        body += Array("],\"next_offset\":\(next)}".utf8)
        return RestResponse(status: 200, headers: [("Content-Type", json)], body: body)
    }

    /// How often an open event stream gets a comment line, so that proxies do not time it out.
    static let keepaliveInterval: TimeAmount = .seconds(15)

    /// `GET {path}/events/{route}`: server-sent events, one per update (`id:` the update id); `Last-Event-ID` resumes.
    func events(_ route: String, request: RestRequest, respond: @escaping @Sendable (RestResponse) -> Void) throws {
        try allow(request, ["GET"])
        let queue = try queue(route)
        var lastID: Int64?
        if let text = request.params["HTTP_LAST_EVENT_ID"], !text.isEmpty {
            guard let value = Int64(text.trimmingCharacters(in: .whitespaces)) else {
                throw RestFailure(400, .modify, .badRequest, "Last-Event-ID must be an update id, not \(JID.quoted(text))")
            }
            lastID = value
        }
        let resumeAfter = lastID
        let logger = self.logger
        let stream = RestEventStream { stream in
            logger?.debug("event stream opened", metadata: ["route": "\(route)", "last_event_id": "\(resumeAfter.map(String.init) ?? "")"])
            stream.send(Array(": stanzad updates of route \(route)\n\n".utf8))
            let subscription = queue.subscribe(after: resumeAfter, send: { update in
                var event = Array("id: \(update.id)\ndata: ".utf8)
                event += update.json
                event += Array("\n\n".utf8)
                stream.send(event)
            }, end: { stream.end() })
            let keepalive = MultiThreadedEventLoopGroup.singleton.any().scheduleRepeatedTask(
                initialDelay: Self.keepaliveInterval, delay: Self.keepaliveInterval
            ) { _ in
                stream.send(Array(": keepalive\n\n".utf8))
            }
            return RestCancellation {
                subscription.cancel()
                keepalive.cancel()
            }
        }
        var response = RestResponse(status: 200, headers: [
            ("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
            // nginx passes the events on as they come, whatever fastcgi_buffering says.
            ("X-Accel-Buffering", "no"),
        ])
        response.stream = stream
        respond(response)
    }
}
