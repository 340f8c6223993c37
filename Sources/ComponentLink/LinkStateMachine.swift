// The whole component link as one pure value: which phase it is in (connecting, handshaking, ready, backing off,
// closing), the stream's handshake, the session's clock rules, the send queue with its iq tracker and the
// reconnect schedule. The I/O shell (ComponentConnection) reports what happened and when, performs the actions it
// gets back, and sets one timer for `nextDeadline`. Every deadline is answered by `due(at:)` in every phase, the
// backoff sleep included: nothing here waits for a socket.

import DequeModule
import XMPPCore

struct LinkStateMachine<Waiter, Replier> {
    typealias Instant = ContinuousClock.Instant
    typealias Queue = OutboundQueue<Waiter, Replier>

    enum Phase: Hashable, Sendable {
        /// A TCP connection is being opened.
        case connecting
        /// The stream is open; waiting for `<handshake/>`.
        case handshaking
        /// Stanzas flow.
        case ready
        /// The last session failed; the next attempt is at `until`.
        case backingOff(until: Instant)
        /// Shutting down: what is queued is written once more, then the stream is closed.
        case closing
        /// Shut down: nothing is accepted any more.
        case closed
    }

    /// What the stream's next event asks of the shell.
    enum StreamAction {
        /// Write this text.
        case write(String)
        /// The handshake is done: log it, write what is queued (`takeForWrite`), tell observers.
        case ready(streamID: String)
        /// A stanza for the router.
        case deliver(Stanza)
        /// The server's answer to our ping, or an iq reply for its requester (give it to `replier`).
        case reply(Queue.PendingIQ, Stanza)
        /// The server answered a barrier: these spool entries were handled and may be deleted. `more`: spooled
        /// stanzas were written after that barrier (the shell asks for the next one, `barrierIfNeeded`, soon).
        case confirmed([Int64], more: Bool)
        /// An element that is not a stanza: nothing to do.
        case ignore(Element)
        /// A stanza the parser skipped for breaking a per-stanza limit.
        case refuse(RefusedStanza)
        /// End the session: write the stream error if any, then `</stream:stream>`, then `sessionEnded(reason)`.
        case close(streamError: String?, reason: ComponentLinkError)
        case none
    }

    /// What is due at a moment.
    struct Due {
        /// Queued stanzas and iqs whose time is up: their waiters get errors.
        var expired = Queue.Expired()
        /// What the session has to do (ping, keepalive) or why it ends (handshake or ping timeout).
        var session: [SessionTimers.Action] = []
    }

    /// What ending a session leaves to the shell.
    struct SessionEnd {
        /// When to try again.
        var delay: Duration
        /// iqs already written on the lost stream: their replies cannot come any more.
        var lostIQs: [Queue.PendingIQ]
        /// The session had reached `ready` (observers are told the link went down).
        var wasReady: Bool
        /// Spooled stanzas written on the lost stream and not confirmed: queued again, first.
        var resent = 0
    }

    /// What the shell writes when it flushes: the queued items, then (at shutdown, when spooled ones are among
    /// them) a barrier ping with this id, whose answer confirms them. `wantsBarrier`: spooled stanzas were written
    /// and no barrier is on its way; the shell asks `barrierIfNeeded` a moment later, so that one barrier covers a
    /// burst (the server sees a ping per burst, not per write).
    struct Batch {
        var items: [Queue.Item] = []
        var barrier: String?
        var wantsBarrier = false

        var isEmpty: Bool { items.isEmpty }
    }

    let jid: String
    let secret: String
    let limits: SessionTimers.Limits
    let sendQueueTTL: Duration

    private(set) var phase: Phase = .connecting
    private(set) var queue: Queue
    private(set) var health: LinkHealth = .connecting
    private(set) var lastError: ComponentLinkError?
    private var stream: HandshakeStateMachine
    /// The clock rules of the current session, from TCP connect to its end.
    private var timers: SessionTimers?
    private var schedule: ReconnectSchedule
    private var wasReady = false

    // The spool's part (SPEC §18). Spooled stanzas written on this stream and not yet confirmed, in write order,
    // each with its number among the spooled stanzas written on the stream.
    private(set) var unconfirmed = Deque<(item: Queue.Item, number: Int)>()
    /// Spooled stanzas written on this stream so far.
    private var spooledWritten = 0
    /// The barrier written and not answered yet (one at a time, so that the server sees one ping per round
    /// trip, not one per write): its id and how many spooled stanzas had been written before it.
    private var barrier: (id: String, mark: Int)?
    private var barrierCounter = 0
    /// Barrier ids carry a token per process, so that no other iq result can pass for one.
    private let barrierToken = RandomID.make()
    /// Spooled stanzas in the queue, and stanzas on their way into the spool (accepted, not yet committed).
    private(set) var spooledQueued = 0
    private(set) var spooling = 0
    /// How many spooled stanzas this process may hold at once (`send_queue`).
    let spoolCapacity: Int

    init(jid: String, secret: String, limits: SessionTimers.Limits, reconnectMax: Duration, sendQueue: Int,
         sendQueueTTL: Duration) {
        self.jid = jid
        self.secret = secret
        self.limits = limits
        self.sendQueueTTL = sendQueueTTL
        self.queue = Queue(capacity: sendQueue)
        self.spoolCapacity = sendQueue
        self.stream = HandshakeStateMachine(jid: jid, secret: secret)
        self.schedule = ReconnectSchedule(cap: reconnectMax)
    }

    var isReady: Bool { phase == .ready }
    var isOpen: Bool { phase != .closing && phase != .closed }
    /// The stream has ended on both sides (after ours: the server's close or stream error came).
    var streamEnded: Bool { stream.state == .closed }

    // MARK: Connection

    /// A connection attempt begins (at start and after each backoff).
    mutating func connecting() {
        guard isOpen else { return }
        phase = .connecting
        if health != .failed { health = .connecting }
    }

    /// TCP is up at `now`: a fresh stream and a fresh session clock. Returns our stream header.
    mutating func connected(at now: Instant) -> StreamAction {
        guard isOpen else { return .none }
        phase = .handshaking
        wasReady = false
        stream = HandshakeStateMachine(jid: jid, secret: secret)
        timers = SessionTimers(limits: limits, now: now)
        return streamAction(stream.connected())
    }

    /// An event from the server's stream, read at `now`.
    mutating func received(_ event: XMLStreamEvent, at now: Instant) -> StreamAction {
        timers?.read(at: now)
        // Closing: the stream takes nothing more, but the answer to the last barrier still confirms what was
        // written before it (shutdown waits for it, so that the next start does not send those stanzas again).
        if phase == .closing, case .stanza(let element) = event, let current = barrier, element.name == "iq",
            element[attribute: "id"] == current.id, element[attribute: "type"] == "result" || element[attribute: "type"] == "error"
        {
            return streamAction(.deliver(element))
        }
        return streamAction(stream.received(event))
    }

    /// The server's XML broke the parser.
    mutating func parseFailed(_ error: XMLStreamError) -> StreamAction {
        streamAction(stream.parseFailed(error))
    }

    /// The server closed the connection.
    mutating func disconnected() -> ComponentLinkError {
        stream.disconnected()
    }

    /// Something was written at `now` (keepalives wait for write silence).
    mutating func wrote(at now: Instant) {
        timers?.wrote(at: now)
    }

    /// The link holds off reading because the router is behind: the silence is ours, not the server's.
    mutating func readingPaused(at now: Instant) {
        timers?.readingPaused(at: now)
    }

    /// An iq reply that reached this process over another link: the instance link, where the answers to this
    /// link's pings and barriers arrive when they go from the instance domain (SPEC §20). A pong or a barrier's
    /// answer is handled as if read here; nil when it is neither.
    mutating func relayed(_ stanza: Stanza, at now: Instant) -> StreamAction? {
        // Also while closing: shutdown waits for the answer to its last barrier.
        guard isReady || phase == .closing, stanza.kind == .iq, stanza.type == "result" || stanza.type == "error",
            let id = stanza.id
        else { return nil }
        let isPong: Bool
        if case .awaitingPong(let pingID, _) = timers?.state { isPong = pingID == id } else { isPong = false }
        guard isPong || barrier?.id == id else { return nil }
        timers?.read(at: now)
        return streamAction(.deliver(stanza.element))
    }

    /// A refused iq result or error with `id`: true when it answered our ping (then it is nobody else's).
    mutating func refusedPong(id: String) -> Bool {
        timers?.pong(id: id) ?? false
    }

    /// The session ended with `error` at `now`: its written iqs are lost and the next attempt is scheduled.
    /// `jitter` (0.8…1.2) is a parameter so that tests can pin it.
    mutating func sessionEnded(_ error: ComponentLinkError, at now: Instant, jitter: Double) -> SessionEnd {
        let hadBeenReady = wasReady
        wasReady = false
        timers = nil
        if hadBeenReady { schedule.linkUp() }
        lastError = error
        if error.isConfigurationError {
            health = .failed
        } else if !(health == .failed && !hadBeenReady) {
            health = .connecting
        }
        let lost = queue.removeSent()
        // Spooled stanzas the server may not have handled go again, before anything newer, on the next stream.
        let resent = unconfirmed.count
        if resent > 0 {
            queue.appendSpooled(unconfirmed.map(\.item), atFront: true)
            spooledQueued += resent
        }
        unconfirmed.removeAll()
        barrier = nil
        spooledWritten = 0
        let delay = schedule.delay(after: error, at: now, jitter: jitter)
        if isOpen { phase = .backingOff(until: now + delay) }
        return SessionEnd(delay: delay, lostIQs: lost, wasReady: hadBeenReady, resent: resent)
    }

    /// Shutdown begins: nothing new is accepted and the session's timers stop. Returns what a ready link writes
    /// before it closes its stream (everything queued); empty when the link is not up.
    mutating func close() -> Batch {
        let wasUp = isReady
        phase = .closing
        timers?.close()
        _ = stream.close()
        guard wasUp else { return Batch() }
        var last = batch(queue.takeAll())
        if barrier == nil && !unconfirmed.isEmpty { last.barrier = newBarrier() }
        return last
    }

    /// Shut down: everything still held, for its waiters to be told.
    mutating func closed() -> (items: [Queue.Item], iqs: [Queue.PendingIQ]) {
        phase = .closed
        timers = nil
        unconfirmed.removeAll()
        spooledQueued = 0
        return queue.removeAll()
    }

    // MARK: Senders

    /// Queues a stanza. True when the link is up and the shell should write the queue now.
    mutating func enqueue(_ item: Queue.Item) throws(SendError) -> Bool {
        try checkOpen()
        try queue.append(item)
        return isReady
    }

    /// Registers an iq waiting for its reply and queues its request. True when the shell should write now.
    mutating func request(_ item: Queue.Item, id: String, iq: Queue.PendingIQ, maxPending: Int) throws(SendError) -> Bool {
        try checkOpen()
        try queue.request(item, id: id, iq: iq, maxPending: maxPending)
        return isReady
    }

    /// What is queued, to be written now; empty unless the link is ready.
    mutating func takeForWrite() -> Batch {
        guard isReady else { return Batch() }
        return batch(queue.takeAll())
    }

    /// Leaving the link to another process on the same spool: what is queued and not spooled, for writing. Spooled
    /// stanzas stay in the spool for the other process, which sends them once: written here, they would go again
    /// from there unless the server confirmed them first (and its answer may go to the other process's link).
    mutating func takeForLeave() -> Batch {
        guard isReady else { return Batch() }
        return batch(queue.takeUnspooled())
    }

    /// Notes the spooled stanzas among `items` as written and, when there are any, a barrier after them.
    private mutating func batch(_ items: [Queue.Item]) -> Batch {
        var batch = Batch(items: items)
        var spooledInBatch = false
        for item in items where item.seq != nil {
            spooledWritten += 1
            unconfirmed.append((item, spooledWritten))
            spooledQueued -= 1
            spooledInBatch = true
        }
        // Written after an unanswered barrier: the next one, asked for when that is answered, covers them.
        batch.wantsBarrier = spooledInBatch && barrier == nil
        return batch
    }

    /// A barrier to write now, when spooled stanzas wait for one and none is on its way. Also while closing: the
    /// stanzas written after a barrier that was on its way when shutdown began need one of their own.
    mutating func barrierIfNeeded() -> String? {
        guard isReady || phase == .closing, barrier == nil, !unconfirmed.isEmpty else { return nil }
        return newBarrier()
    }

    private mutating func newBarrier() -> String {
        barrierCounter += 1
        let id = "stanzad-barrier-\(barrierToken)-\(barrierCounter)"
        barrier = (id, spooledWritten)
        return id
    }

    // MARK: The spool

    /// Spooled stanzas this process holds: queued, on their way into the spool, or written and not confirmed.
    var spoolDepth: Int { spooledQueued + spooling + unconfirmed.count }

    /// A stanza is about to go into the spool: refused when the spool holds `send_queue` stanzas already.
    mutating func reserveSpool() throws(SendError) {
        try checkOpen()
        guard spoolDepth < spoolCapacity else {
            throw SendError(.queueFull, "the spool is full (\(spoolCapacity) stanzas not yet confirmed by the server)")
        }
        spooling += 1
    }

    /// The reserved stanza is in the spool now: it is queued. True when the shell should write now.
    mutating func spooled(_ item: Queue.Item) -> Bool {
        spooling -= 1
        guard isOpen else { return false }  // it stays in the spool for the next start
        queue.appendSpooled([item])
        spooledQueued += 1
        return isReady
    }

    /// The reserved stanza could not be stored.
    mutating func spoolFailed() {
        spooling -= 1
    }

    /// Spool entries this process took over (left by another): queued. True when the shell should write now.
    mutating func adopted(_ items: [Queue.Item]) -> Bool {
        guard isOpen, !items.isEmpty else { return false }
        queue.appendSpooled(items)
        spooledQueued += items.count
        return isReady
    }

    /// The shell could not ping: spooled stanzas count as confirmed once written.
    mutating func confirmWithoutBarrier() -> [Int64] {
        let seqs = unconfirmed.compactMap(\.item.seq)
        unconfirmed.removeAll()
        barrier = nil
        return seqs
    }

    /// A requester stopped waiting: its iq, if it still waited (its request is not sent any more).
    mutating func cancelRequest(id: String) -> Queue.PendingIQ? {
        queue.cancelRequest(id: id)
    }

    /// A sender stopped waiting: its queued stanza, if still queued.
    mutating func cancelItem(where predicate: (Queue.Item) -> Bool) -> Queue.Item? {
        queue.removeItem(where: predicate)
    }

    /// An iq reply that arrived outside the stream (a refused reply turned into an error): its requester.
    mutating func resolve(_ reply: Stanza) -> Queue.PendingIQ? {
        guard reply.kind == .iq, reply.type == "result" || reply.type == "error", let id = reply.id else { return nil }
        return queue.resolve(id: id, from: reply.from)
    }

    // MARK: Time

    /// The earliest moment anything is due: a queued stanza's or iq's deadline, or the session's next timer.
    /// Scans the queue: call it after `due(at:)`, not per stanza.
    var nextDeadline: Instant? {
        let session = timers?.nextDeadline
        guard let queued = queue.nextDeadline else { return session }
        return session.map { min($0, queued) } ?? queued
    }

    /// The session clock's next deadline alone (cheap).
    var nextSessionDeadline: Instant? { timers?.nextDeadline }

    /// Everything due at `now`, in every phase.
    mutating func due(at now: Instant) -> Due {
        var due = Due()
        due.expired = queue.expire(now: now)
        if let actions = timers?.due(at: now) { due.session = actions }
        return due
    }

    // MARK: Helpers

    private func checkOpen() throws(SendError) {
        if !isOpen { throw SendError(.shuttingDown, "stanzad is shutting down") }
    }

    /// Turns the stream's action into the link's, taking pongs and iq replies out on the way.
    private mutating func streamAction(_ action: HandshakeStateMachine.Action) -> StreamAction {
        switch action {
        case .none:
            return .none
        case .write(let text):
            return .write(text)
        case .ready(let streamID):
            guard isOpen else { return .none }
            phase = .ready
            wasReady = true
            health = .connected
            lastError = nil
            timers?.handshakeDone()
            return .ready(streamID: streamID)
        case .deliver(let element):
            guard let stanza = Stanza(element) else { return .ignore(element) }
            if stanza.kind == .iq, stanza.type == "result" || stanza.type == "error", let id = stanza.id {
                if timers?.pong(id: id) == true { return .none }
                if let current = barrier, current.id == id {
                    // In order: everything written before the barrier was handled.
                    barrier = nil
                    var seqs: [Int64] = []
                    while let first = unconfirmed.first, first.number <= current.mark {
                        if let seq = first.item.seq { seqs.append(seq) }
                        unconfirmed.removeFirst()
                    }
                    return .confirmed(seqs, more: !unconfirmed.isEmpty)
                }
                if let pending = queue.resolve(id: id, from: stanza.from) { return .reply(pending, stanza) }
            }
            return .deliver(stanza)
        case .refuse(let refused):
            return .refuse(refused)
        case .close(let streamError, let reason):
            return .close(streamError: streamError, reason: reason)
        }
    }
}

extension LinkStateMachine: Sendable where Waiter: Sendable, Replier: Sendable {}
extension LinkStateMachine.StreamAction: Sendable where Waiter: Sendable, Replier: Sendable {}
extension LinkStateMachine.Due: Sendable where Waiter: Sendable, Replier: Sendable {}
extension LinkStateMachine.SessionEnd: Sendable where Waiter: Sendable, Replier: Sendable {}
