// The clock rules of one component session (SPEC §11) as a pure value: the session loop reports what happened
// and when, asks which actions are due at a given time, and sleeps until `nextDeadline`. No timer inside.

/// Handshake timeout, whitespace keepalive, XEP-0199 ping after read silence and the ping's timeout.
struct SessionTimers: Sendable {
    typealias Instant = ContinuousClock.Instant

    struct Limits: Sendable, Hashable {
        var handshakeTimeout: Duration
        /// A single space after this long without writing.
        var keepaliveInterval: Duration
        /// A ping after this long without reading; nil: never ping.
        var pingInterval: Duration?
        /// The link is dead when a ping gets no reply within this.
        var pingTimeout: Duration
        /// Ping ids are this and a counter: two links of one process that share where their answers arrive (SPEC
        /// §20) need different ones.
        var pingIDPrefix = "stanzad-ping-"
    }

    enum Action: Hashable, Sendable {
        /// No `<handshake/>` in time: close the session.
        case handshakeTimedOut
        /// Write a single space.
        case sendKeepalive
        /// Send an XEP-0199 ping with this id to the server.
        case sendPing(id: String)
        /// The ping got no reply in time: close the session.
        case pingTimedOut
    }

    enum State: Hashable, Sendable {
        case handshaking(since: Instant)
        case ready
        case awaitingPong(id: String, sentAt: Instant)
        /// Timed out or closing: nothing more is due.
        case closed
    }

    let limits: Limits
    private(set) var state: State
    private(set) var lastRead: Instant
    private(set) var lastWrite: Instant
    private var pingCounter = 0

    /// The TCP connection is up at `now`; the handshake starts.
    init(limits: Limits, now: Instant) {
        self.limits = limits
        self.state = .handshaking(since: now)
        self.lastRead = now
        self.lastWrite = now
    }

    /// Something arrived from the server.
    mutating func read(at now: Instant) {
        lastRead = max(lastRead, now)
    }

    /// The link holds off reading (the router is behind): the silence is ours, not the server's, so it neither
    /// brings a ping nor counts against the one in flight, whose reply may wait unread in the socket.
    mutating func readingPaused(at now: Instant) {
        lastRead = max(lastRead, now)
        if case .awaitingPong(let id, let sentAt) = state { state = .awaitingPong(id: id, sentAt: max(sentAt, now)) }
    }

    /// Something was written to the server.
    mutating func wrote(at now: Instant) {
        lastWrite = max(lastWrite, now)
    }

    /// The server accepted the handshake: keepalives and pings begin.
    mutating func handshakeDone() {
        guard case .handshaking = state else { return }
        state = .ready
    }

    /// An iq result or error with `id` arrived; true when it answers the outstanding ping (then it is not a stanza
    /// for anyone else).
    mutating func pong(id: String) -> Bool {
        guard case .awaitingPong(let pingID, _) = state, pingID == id else { return false }
        state = .ready
        return true
    }

    /// The session is closing: no more deadlines.
    mutating func close() {
        state = .closed
    }

    /// The actions due at `now`, in order. Sending a ping counts as a write, so no keepalive goes with it.
    mutating func due(at now: Instant) -> [Action] {
        var actions: [Action] = []
        switch state {
        case .closed:
            return []
        case .handshaking(let since):
            if now >= since + limits.handshakeTimeout {
                state = .closed
                return [.handshakeTimedOut]
            }
            return []
        case .awaitingPong(_, let sentAt):
            if now >= sentAt + limits.pingTimeout {
                state = .closed
                return [.pingTimedOut]
            }
        case .ready:
            if let interval = limits.pingInterval, now >= lastRead + interval {
                pingCounter += 1
                let id = "\(limits.pingIDPrefix)\(pingCounter)"
                state = .awaitingPong(id: id, sentAt: now)
                lastWrite = max(lastWrite, now)
                actions.append(.sendPing(id: id))
            }
        }
        if now >= lastWrite + limits.keepaliveInterval {
            lastWrite = now
            actions.append(.sendKeepalive)
        }
        return actions
    }

    /// When `due(at:)` next has something to do; nil when nothing ever will.
    var nextDeadline: Instant? {
        switch state {
        case .closed:
            return nil
        case .handshaking(let since):
            return since + limits.handshakeTimeout
        case .ready:
            let keepalive = lastWrite + limits.keepaliveInterval
            guard let interval = limits.pingInterval else { return keepalive }
            return min(keepalive, lastRead + interval)
        case .awaitingPong(_, let sentAt):
            return min(lastWrite + limits.keepaliveInterval, sentAt + limits.pingTimeout)
        }
    }
}
