// The component link as a Service: the I/O shell around `LinkStateMachine`. The machine decides (handshake,
// keepalive and ping, the send queue and its deadlines, iq replies, the reconnect backoff); this file connects,
// reads, writes, sleeps and sets the one timer that answers every deadline in every phase of the link. Inbound is
// bounded: when the router falls `inboundBacklog` stanzas behind, the link stops reading the socket.

import DequeModule
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import XMPPCore

/// Settings of the link (SPEC §4 [component]).
package struct ComponentSettings: Sendable {
    package var jid: String
    package var host: String
    package var port: Int
    package var secret: String
    package var reconnectMax: Duration = .seconds(60)
    package var pingInterval: Duration = .seconds(60)
    package var pingTimeout: Duration = .seconds(20)
    package var keepaliveInterval: Duration = .seconds(30)
    package var handshakeTimeout: Duration = .seconds(20)
    package var sendQueue: Int = 1000
    package var sendQueueTTL: Duration = .seconds(60)
    package var maxStanza: Int = 524_288
    /// Stanzas read from the server and not yet taken by the router, at most; beyond it the link stops reading the
    /// socket until the router catches up (TCP then pushes back to the server).
    package var inboundBacklog: Int = 1000
    /// Where XEP-0199 pings go: the server's domain.
    package var pingTarget: String
    /// Where the link's own pings (keepalive and barriers) go from; nil: `jid`. With an instance link (SPEC §20),
    /// the instance domain: when the server balances `jid` over several processes, the answer to a ping from `jid`
    /// reaches any of them, the answer to one from the instance domain this process (see `relayReply`).
    package var pingFrom: String?
    /// Ids of the link's keepalive pings start with this (two links of one process need different ones).
    package var pingIDPrefix = "stanzad-ping-"

    package init(jid: String, host: String, port: Int, secret: String, pingTarget: String? = nil) {
        self.jid = jid
        self.host = host
        self.port = port
        self.secret = secret
        self.pingTarget = pingTarget ?? ComponentSettings.parentDomain(of: jid)
    }

    /// `bot.example.org` → `example.org` (a component usually sits under its server's domain).
    package static func parentDomain(of jid: String) -> String {
        let labels = jid.split(separator: ".")
        return labels.count > 1 ? labels.dropFirst().joined(separator: ".") : jid
    }
}

/// What a link observer is told.
package enum LinkEvent: Sendable, Equatable {
    /// The handshake is done and whatever waited in the queue is written: stanzas sent now go out at once.
    case up
    /// The link was lost after it had been up; stanzas sent now wait in the queue.
    case down
    /// The server closed the link with `conflict` after it had been up: another process connected as this
    /// component (Prosody's `component_conflict_resolve = "kick_old"`, a take-over restart). The link does not
    /// reconnect (it would throw the other out in turn); it waits for shutdown.
    case replaced
}

/// The link's health, as `/rest/health` reports it.
package enum LinkHealth: String, Sendable {
    case connecting, connected, failed
}

package final class ComponentConnection: Service, Sendable {
    package let settings: ComponentSettings
    package let policy: OutboundPolicy
    /// The policy for the link's own pings: `pingFrom` may be outside `jid`.
    let pingPolicy: OutboundPolicy
    let logger: Logger
    let group: any EventLoopGroup
    private let shared: Mutex<SharedState>
    /// Stanzas addressed to the component, for the router; bounded by `inboundBudget`.
    package let inbound: InboundStanzas
    private let inboundContinuation: AsyncStream<Stanza>.Continuation
    /// Stream events read and not yet handled: the session loop gives back what it handles itself, the router
    /// what it takes from `inbound`.
    let inboundBudget: InboundBudget
    /// Takes stanzas synchronously on the link's own task before they reach `inbound` (see `setDirectInbound`).
    private let directInbound = DirectInboundSlot()
    /// Stanzas waiting requests take aside before the router sees them (archive query results).
    package let collectors = StanzaCollectors()
    /// Told when the link comes up and goes down (see `setLinkObserver`).
    private let linkObservers = Mutex<[@Sendable (LinkEvent) -> Void]>([])
    /// Where durable stanzas wait for the server's confirmation (SPEC §18); nil: memory only.
    package let spool: (any OutboundSpool)?
    /// The ping target can be pinged, so spooled stanzas are confirmed by barriers.
    let canPing: Bool

    package init(settings: ComponentSettings, logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                 spool: (any OutboundSpool)? = nil) {
        self.settings = settings
        self.spool = spool
        self.policy = OutboundPolicy(domain: settings.jid, maxStanzaBytes: settings.maxStanza)
        self.pingPolicy = OutboundPolicy(
            domain: settings.pingFrom.flatMap { JID.parse($0)?.domain } ?? settings.jid, maxStanzaBytes: settings.maxStanza)
        self.logger = logger
        self.group = group
        // A ping target the policy refuses (a bad `ping_target`) leaves the keepalive alone to hold the link.
        let canPing = (try? pingPolicy.serialize(Self.ping(id: "stanzad-ping-0", settings: settings))) != nil
        self.canPing = canPing
        let limits = SessionTimers.Limits(
            handshakeTimeout: settings.handshakeTimeout, keepaliveInterval: settings.keepaliveInterval,
            pingInterval: canPing ? settings.pingInterval : nil, pingTimeout: settings.pingTimeout,
            pingIDPrefix: settings.pingIDPrefix)
        self.shared = Mutex(SharedState(machine: LinkStateMachine(
            jid: settings.jid, secret: settings.secret, limits: limits, reconnectMax: settings.reconnectMax,
            sendQueue: settings.sendQueue, sendQueueTTL: settings.sendQueueTTL)))
        let (stream, continuation) = AsyncStream.makeStream(of: Stanza.self)
        inboundBudget = InboundBudget(limit: settings.inboundBacklog)
        inbound = InboundStanzas(stream: stream, budget: inboundBudget)
        inboundContinuation = continuation
    }

    // MARK: Public API

    /// Lets `handler` take each arriving stanza where the link reads it, without a hop to the `inbound`
    /// consumer's task; a stanza it returns false for goes to `inbound` as usual. It must not block. nil removes it.
    package func setDirectInbound(_ handler: (@Sendable (Stanza) -> Bool)?) {
        directInbound.set(handler)
    }

    /// The router stops taking stanzas (shutdown): from now on every stanza the link reads goes to `leftover`, and
    /// `inbound` ends once the router has taken what it holds already.
    package func endInbound(leftover: @escaping @Sendable (Stanza) -> Void) {
        directInbound.set { stanza in
            leftover(stanza)
            return true
        }
        inboundContinuation.finish()
    }

    /// Adds `observer`, told when the link is up (handshake done, the queue flushed) and when it went down. It
    /// runs on the link's task and must not block. nil removes every observer.
    package func setLinkObserver(_ observer: (@Sendable (LinkEvent) -> Void)?) {
        linkObservers.withLock { observers in
            if let observer { observers.append(observer) } else { observers.removeAll() }
        }
    }

    fileprivate func notify(_ event: LinkEvent) {
        let observers = linkObservers.withLock { $0 }
        for observer in observers { observer(event) }
    }

    package var health: LinkHealth { shared.withLock { $0.machine.health } }
    package var lastError: ComponentLinkError? { shared.withLock { $0.machine.lastError } }
    package var isConnected: Bool { shared.withLock { $0.machine.isReady } }
    /// Held for another process (see `hold`).
    var isHolding: Bool { shared.withLock { $0.holding } }

    /// Stanzas waiting for the link and iqs waiting for replies (for tests).
    var backlog: (queued: Int, pendingIQs: Int) {
        shared.withLock { ($0.machine.queue.items.count, $0.machine.queue.pending.count) }
    }

    /// Stanzas waiting for the link (the send queue, and with a spool the stanzas it holds unconfirmed) and iqs
    /// waiting for replies (for metrics).
    package var depth: (queued: Int, pendingIQs: Int) {
        shared.withLock { state in
            let spooledInQueue = state.machine.spooledQueued
            return (state.machine.queue.items.count - spooledInQueue + state.machine.spoolDepth, state.machine.queue.pending.count)
        }
    }

    /// The link's phase (for tests).
    var phase: LinkStateMachine<Waiter, IQReplier>.Phase { shared.withLock { $0.machine.phase } }

    /// Validates and queues a stanza; it is written as soon as the link is up. Does not wait.
    package func send(_ stanza: Stanza) throws(SendError) {
        let xml = try policy.serialize(stanza)
        let deadline = ContinuousClock.now + settings.sendQueueTTL
        let wake: Wake? = try shared.withLock { (state) throws(SendError) in
            let writeNow = try state.machine.enqueue(Outgoing(xml: xml, deadline: deadline, waiter: nil, iqID: nil))
            return queued(&state, deadline: deadline, writeNow: writeNow)
        }
        LinkMetrics.queued(stanza.kind)
        wake?()
    }

    /// Hands the link to another process that runs on the same spool (a take-over restart, SPEC §18): what is
    /// queued is written (spooled stanzas excepted: the other process sends those), the stream is closed, and what
    /// the server still sends before it closes its side is read and delivered as usual; then the link stays down.
    /// Returns when the stream is closed (at most `timeout`). Stanzas sent afterwards stay in the spool for the
    /// other process.
    package func leave(timeout: Duration = .seconds(3)) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let session: AsyncStream<Input>.Continuation? = shared.withLock { state in
                state.leaving = true
                state.holding = false
                guard let session = state.session else { return nil }
                state.leaveWaiters.append(continuation)
                return session
            }
            if let session {
                session.yield(.leave)
                group.any().scheduleTask(in: TimeAmount(timeout)) { session.yield(.drainTimeout) }
            } else {
                continuation.resume()
            }
        }
    }

    /// The first step of handing the link to another process (a take-over restart, SPEC §18): from now on nothing is
    /// written to the server (stanzas stay queued, spooled ones in the spool for the other process), while what the
    /// server sends is read and delivered as usual; the link does not connect again. Returns once nothing more will
    /// be written.
    ///
    /// Why: Prosody with `component_conflict_resolve = "kick_old"` closes this stream when the other process
    /// connects, after writing out what it had routed here. If this process writes anything meanwhile, Prosody (0.12)
    /// drops the connection at once and with it the stanzas not yet written out, which the sender never hears of.
    package func hold() async {
        let direct: DirectSession? = shared.withLock { state in
            state.holding = true
            return state.direct
        }
        // A batch the event loop took just before is written in the same turn of the loop: this waits for it.
        if let direct { try? await direct.channel.eventLoop.submit {}.get() }
    }

    /// Waits until the current session ends (the server closed it, or `leave`) and returns true; false after
    /// `timeout`. True at once when there is no session.
    package func waitForSessionEnd(timeout: Duration) async -> Bool {
        let waiter = OneShotWait()
        return await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            waiter.set(continuation)
            let waiting = shared.withLock { state in
                guard state.session != nil else { return false }
                state.endWaiters.append(waiter)
                return true
            }
            guard waiting else { return waiter.resume(true) }
            group.any().scheduleTask(in: TimeAmount(timeout)) { [self] in
                shared.withLock { $0.endWaiters.removeAll { $0 === waiter } }
                waiter.resume(false)
            }
        }
    }

    /// Waits until the router has taken every stanza the link read (after the session ended: the last stanzas the
    /// server sent before it closed); false after `timeout`. Shutdown stops the router taking stanzas, so a handover
    /// waits for this first.
    package func waitUntilInboundTaken(timeout: Duration) async -> Bool {
        await inboundBudget.drained(timeout: timeout, on: group.any())
    }

    /// `gate` runs once, before the link first connects (a take-over waits there for the running process to hold
    /// its link). Set it before the service runs.
    package func setStartGate(_ gate: @escaping @Sendable () async -> Void) {
        shared.withLock { $0.startGate = gate }
    }

    /// A stanza stanzad answers for (a handler's reply, a hook's or a REST client's stanza): with a spool, it is
    /// stored first and `completion` hears success once it is committed; it is then sent until the server confirms
    /// it, across link losses and restarts. Without a spool, this is `sendAndWait`.
    @discardableResult
    package func sendDurably(_ stanza: Stanza, wait: Duration? = nil,
                             completion: @escaping @Sendable (Result<Void, SendError>) -> Void) -> (@Sendable () -> Void)? {
        guard let spool else { return sendAndWait(stanza, wait: wait, completion: completion) }
        do {
            try store(stanza, in: spool, completion: completion)
        } catch {
            completion(.failure(error))
        }
        return nil
    }

    /// `sendDurably` for a sender that does not wait: a bad stanza or a full spool throws; a failed commit is
    /// logged.
    package func sendReply(_ stanza: Stanza) throws(SendError) {
        guard let spool else { return try send(stanza) }
        let id = stanza.id
        try store(stanza, in: spool) { [logger] result in
            if case .failure(let error) = result {
                logger.warning("reply not stored in the spool", metadata: ["stanza.id": "\(id ?? "")", "error": "\(error)"])
            }
        }
    }

    /// Validates `stanza`, reserves its place and hands it to the spool; once committed it is queued.
    private func store(_ stanza: Stanza, in spool: any OutboundSpool,
                       completion: @escaping @Sendable (Result<Void, SendError>) -> Void) throws(SendError) {
        let xml = try policy.serialize(stanza)
        try shared.withLock { (state) throws(SendError) in try state.machine.reserveSpool() }
        let kind = stanza.kind
        spool.append(xml) { [self] result in
            switch result {
            case .success(let seq):
                let item = Outgoing(xml: xml, deadline: .now + Self.forever, waiter: nil, iqID: nil, seq: seq)
                let (wake, landed): (Wake?, [CheckedContinuation<Void, Never>]) = shared.withLock { state in
                    (self.flushSignal(&state, writeNow: state.machine.spooled(item)), Self.commitsLanded(&state))
                }
                LinkMetrics.queued(kind)
                wake?()
                for waiter in landed { waiter.resume() }
                completion(.success(()))
            case .failure(let error):
                let landed = shared.withLock { state in
                    state.machine.spoolFailed()
                    return Self.commitsLanded(&state)
                }
                for waiter in landed { waiter.resume() }
                completion(.failure(error))
            }
        }
    }

    /// The waiters of `waitForCommits` to resume (under the lock) when no stored stanza is waiting for its commit.
    private static func commitsLanded(_ state: inout SharedState) -> [CheckedContinuation<Void, Never>] {
        guard state.machine.spooling == 0, !state.commitWaiters.isEmpty else { return [] }
        defer { state.commitWaiters = [] }
        return state.commitWaiters
    }

    /// Returns once every stanza handed to the spool has been committed (and queued, so written while the link
    /// writes directly), or after `timeout`. Shutdown waits for this before it closes the stream: a reply stored
    /// just before would otherwise be committed after the last batch and stay in the spool for the next start.
    fileprivate func waitForCommits(timeout: Duration) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = shared.withLock { state -> Bool in
                if state.machine.spooling == 0 { return true }
                state.commitWaiters.append(continuation)
                return false
            }
            if now { return continuation.resume() }
            group.any().scheduleTask(in: TimeAmount(timeout)) { [self] in
                let late = shared.withLock { state in
                    defer { state.commitWaiters = [] }
                    return state.commitWaiters
                }
                for waiter in late { waiter.resume() }
            }
        }
    }

    /// The deadline of a spooled stanza: it waits as long as it takes.
    static let forever: Duration = .seconds(100 * 365 * 86_400)

    /// Spool entries this process took over: queued behind whatever is queued.
    private func adopt(_ entries: [SpooledStanza]) {
        let items = entries.map { Outgoing(xml: $0.xml, deadline: .now + Self.forever, waiter: nil, iqID: nil, seq: $0.seq) }
        let wake: Wake? = shared.withLock { state in
            flushSignal(&state, writeNow: state.machine.adopted(items))
        }
        wake?()
    }

    /// Validates and queues a stanza and waits until it has been written to the server (or has expired in the
    /// queue, or `wait` has passed while the link was down).
    package func sendAndWait(_ stanza: Stanza, wait: Duration? = nil) async throws(SendError) {
        let box = CancellationBox()
        let result: Result<Void, SendError> = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, SendError>, Never>) in
                box.set(sendAndWait(stanza, wait: wait) { continuation.resume(returning: $0) })
            }
        } onCancel: {
            box.cancel()
        }
        try result.get()
    }

    /// `sendAndWait` without a task: `completion` runs once, when the stanza is written or cannot be (at once when
    /// the link is up: queued on a ready link counts as written). The returned closure stops the wait
    /// (`completion` then gets `expired`); nil when `completion` already ran.
    @discardableResult
    package func sendAndWait(_ stanza: Stanza, wait: Duration? = nil,
                            completion: @escaping @Sendable (Result<Void, SendError>) -> Void) -> (@Sendable () -> Void)? {
        let xml: String
        do {
            xml = try policy.serialize(stanza)
        } catch {
            completion(.failure(error))
            return nil
        }
        let deadline = ContinuousClock.now + min(wait ?? settings.sendQueueTTL, settings.sendQueueTTL)
        // While the link is up, the stanza is as good as written once it is queued (it would wait in the queue
        // across a reconnect): the sender hears so at once, without waiting for the link's task and its event loop.
        let queued: Result<(id: Int?, wake: Wake?), SendError> = shared.withLock { state in
            do throws(SendError) {
                if state.machine.isReady {
                    let item = Outgoing(xml: xml, deadline: deadline, waiter: nil, iqID: nil)
                    let writeNow = try state.machine.enqueue(item)
                    return .success((nil, self.queued(&state, deadline: deadline, writeNow: writeNow)))
                }
                let id = state.nextWaiterID()
                let item = Outgoing(xml: xml, deadline: deadline, waiter: Waiter(id: id, complete: completion), iqID: nil)
                let writeNow = try state.machine.enqueue(item)
                return .success((id, self.queued(&state, deadline: deadline, writeNow: writeNow)))
            } catch {
                return .failure(error)
            }
        }
        switch queued {
        case .success(let (id, wake)):
            LinkMetrics.queued(stanza.kind)
            wake?()
            guard let id else {
                completion(.success(()))
                return nil
            }
            return { self.cancelWaiter(id) }
        case .failure(let error):
            completion(.failure(error))
            return nil
        }
    }

    /// Sends an iq get/set and waits for its reply (result or error stanza).
    package func request(_ iq: Stanza, timeout: Duration, maxPending: Int = 10_000) async throws(SendError) -> Stanza {
        let box = CancellationBox()
        let result: Result<Stanza, SendError> = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<Stanza, SendError>, Never>) in
                box.set(request(iq, timeout: timeout, maxPending: maxPending) { continuation.resume(returning: $0) })
            }
        } onCancel: {
            box.cancel()
        }
        return try result.get()
    }

    /// `request` without a task: `completion` gets the reply, or why there is none, exactly once. A waiting iq costs
    /// its entry in the queue and nothing else. The returned closure stops the wait (`completion` then gets
    /// `timeout`, and a request not yet written is not sent); nil when `completion` already ran.
    @discardableResult
    package func request(_ iq: Stanza, timeout: Duration, maxPending: Int = 10_000,
                        completion: @escaping @Sendable (Result<Stanza, SendError>) -> Void) -> (@Sendable () -> Void)? {
        var iq = iq
        if iq.id == nil { iq.id = RandomID.make() }
        guard let id = iq.id else {
            completion(.failure(SendError(.invalidTo, "iq has no id")))
            return nil
        }
        let xml: String
        do {
            xml = try policy.serialize(iq)
        } catch {
            completion(.failure(error))
            return nil
        }
        let deadline = ContinuousClock.now + timeout
        // An iq's request is due no later than the iq itself; when the timer fires for it, it is set again for the
        // iq's own deadline if the request was written by then.
        let itemDeadline = min(deadline, .now + settings.sendQueueTTL)
        let item = Outgoing(xml: xml, deadline: itemDeadline, waiter: nil, iqID: id)
        let pending = PendingIQ(deadline: deadline, to: iq.to, replier: completion)
        let queued: Result<Wake?, SendError> = shared.withLock { state in
            do throws(SendError) {
                let writeNow = try state.machine.request(item, id: id, iq: pending, maxPending: maxPending)
                return .success(self.queued(&state, deadline: itemDeadline, writeNow: writeNow))
            } catch {
                return .failure(error)
            }
        }
        switch queued {
        case .success(let wake):
            LinkMetrics.queued(.iq)
            wake?()
            return {
                if let pending = self.shared.withLock({ $0.machine.cancelRequest(id: id) }) {
                    pending.replier(.failure(SendError(.timeout, "request cancelled")))
                }
            }
        case .failure(let error):
            completion(.failure(error))
            return nil
        }
    }

    // MARK: Service

    package func run() async throws {
        var lastLoggedError: String?
        defer {
            inboundContinuation.finish()
            closeAll(SendError(.shuttingDown, "stanzad is shutting down"))
        }
        var logger = self.logger
        logger[metadataKey: "component"] = "\(settings.jid)"
        spool?.startAdopting { [weak self] entries in self?.adopt(entries) }
        if spool != nil && !canPing {
            logger.warning("spooled stanzas are confirmed when written, not by the server: ping_target is not a JID the link can ping")
        }
        if let gate = shared.withLock({ state in defer { state.startGate = nil }; return state.startGate }) {
            await gate()
        }
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            if shared.withLock({ $0.leaving || $0.holding }) {
                // Another process has the link now (see `leave` and `hold`): this one waits for its own shutdown.
                try? await gracefulShutdown()
                return
            }
            shared.withLock { $0.machine.connecting() }
            let outcome = await connectOnce(logger: logger)
            if case .left = outcome { continue }
            guard case .failed(let error) = outcome else { return }
            let end = shared.withLock { $0.machine.sessionEnded(error, at: .now, jitter: Double.random(in: 0.8...1.2)) }
            let lost = SendError(.linkLost, "the component link was lost: \(error)")
            for iq in end.lostIQs { iq.replier(.failure(lost)) }
            if end.wasReady { notify(.down) }
            if shared.withLock({ $0.leaving }) { continue }  // closed after `leave`: the loop's top waits for shutdown
            if shared.withLock({ $0.holding }) {
                // The server closed the link this process held for another (Prosody's kick_old, without the stream
                // error when the socket closed first): it must not connect again and throw the other out.
                logger.notice("another process took over the component link; not reconnecting", metadata: ["error": "\(error.description)"])
                notify(.replaced)
                try? await gracefulShutdown()
                return
            }
            if end.wasReady, error.condition == "conflict" {
                logger.notice("another process took over the component link (conflict); not reconnecting",
                              metadata: ["error": "\(error.description)"])
                notify(.replaced)
                try? await gracefulShutdown()
                return
            }
            if end.resent > 0 {
                logger.notice("spooled stanzas not confirmed by the server will be sent again", metadata: ["count": "\(end.resent)"])
            }
            let text = error.description
            var metadata: Logger.Metadata = ["error": "\(text)", "retry_in": "\(end.delay)"]
            if error.isConfigurationError, let hint = hint(for: error) {
                metadata["hint"] = "\(hint)"
                if lastLoggedError != text {
                    logger.error("component link refused by the server (configuration error)", metadata: metadata)
                } else {
                    logger.debug("component link refused again", metadata: metadata)
                }
            } else if lastLoggedError != text || end.wasReady {
                logger.notice("component link down, reconnecting", metadata: metadata)
            } else {
                logger.debug("component link attempt failed", metadata: metadata)
            }
            lastLoggedError = text
            // The deadline timer keeps answering queued stanzas and iqs while this sleeps.
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: end.delay) }
            } catch {
                return
            }
            if Task.isShuttingDownGracefully { return }
        }
    }

    /// What the operator should change; a refused `from` after the link was up is our pings' instance domain.
    private func hint(for error: ComponentLinkError) -> String? {
        if let pingFrom = settings.pingFrom, error.condition == "invalid-from" || error.condition == "improper-addressing" {
            return "the server refused a ping from \(pingFrom) (instance_jid) on the link of \(settings.jid): declare both in the hosts of one ejabberd_service listener, with global_routes: false (examples/ejabberd/cluster.yml)"
        }
        return error.hint(jid: settings.jid)
    }

    enum Outcome {
        case shutdown
        /// The link was handed to another process (`leave`).
        case left
        case failed(ComponentLinkError)
    }

    enum Input: Sendable {
        case event(XMLStreamEvent)
        case parseError(XMLStreamError)
        case eof
        case flush
        /// What the session's clock has due (from the deadline timer).
        case timers([SessionTimers.Action])
        case shutdown
        /// Shutdown stops waiting for the last barrier's answer.
        case drainTimeout
        /// Shutdown stops waiting for the server to close its side after ours.
        case closeTimeout
        /// Hand the link over (see `leave`).
        case leave
        /// Time to write a barrier for the spooled stanzas written since the last one.
        case barrierDue
        /// The answer to a ping or barrier of this link that arrived over another link (`relayReply`).
        case relayed(LinkStateMachine<Waiter, IQReplier>.StreamAction)
        /// What a stanza read on the event loop (`LinkFastPath`) asks of the session loop.
        case action(LinkStateMachine<Waiter, IQReplier>.StreamAction)
    }

    static func ping(id: String, settings: ComponentSettings) -> Stanza {
        var ping = Stanza(kind: .iq, type: "get", id: id, from: settings.pingFrom ?? settings.jid, to: settings.pingTarget)
        ping.element.append(Element("ping", namespace: "urn:xmpp:ping"))
        return ping
    }

    private func connectOnce(logger: Logger) async -> Outcome {
        let limits = XMLLimits(maxStanzaBytes: settings.maxStanza)
        let (inputs, input) = AsyncStream.makeStream(of: Input.self)
        let pipe = EventPipe(input: input)
        let channel: NIOAsyncChannel<XMLStreamEvent, ByteBuffer>
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(10))
                .channelOption(.socketOption(.so_keepalive), value: 1)
                .connect(host: settings.host, port: settings.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(XMLStreamDecoder(limits: limits)))
                        try channel.pipeline.syncOperations.addHandler(LinkFastPath(connection: self, pipe: pipe))
                        return try NIOAsyncChannel<XMLStreamEvent, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            return .failed(ComponentLinkError(.connectFailed, "cannot connect to \(settings.host):\(settings.port): \(error)"))
        }
        logger.debug("connected, opening stream", metadata: ["server": "\(settings.host):\(settings.port)"])
        do {
            return try await channel.executeThenClose { [channel = channel.channel] inbound, outbound in
                try await session(inbound: inbound, outbound: outbound, channel: channel, inputs: inputs, pipe: pipe, logger: logger)
            }
        } catch {
            return .failed(ComponentLinkError(.closedByPeer, "connection error: \(error)"))
        }
    }

    private func session(
        inbound: NIOAsyncChannelInboundStream<XMLStreamEvent>, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
        channel: any Channel, inputs: AsyncStream<Input>, pipe: EventPipe, logger: Logger
    ) async throws -> Outcome {
        let input = pipe.input
        // Events the reader passed on that the session loop never took: their units go back with the session.
        defer { inboundBudget.give(pipe.queued.load(ordering: .relaxed)) }
        return try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { [inboundBudget] in
                    do {
                        // Waiting for the budget stops this loop, so NIOAsyncChannel stops reading the socket.
                        var pastHandshake = false
                        for try await event in inbound {
                            // The handshake never waits for the router (a reconnect while it is behind). What comes
                            // after the server's <handshake/> does, even before the session loop has marked the
                            // link ready: a server that floods right behind its reply is held to the budget too.
                            if pastHandshake || pipe.ready.load(ordering: .relaxed) {
                                guard await inboundBudget.take() else { break }
                            } else {
                                inboundBudget.takeNow()
                                if case .stanza(let element) = event, element.name == "handshake" { pastHandshake = true }
                            }
                            pipe.queued.add(1, ordering: .relaxed)
                            input.yield(.event(event))
                        }
                        input.yield(.eof)
                    } catch let error as XMLStreamError {
                        input.yield(.parseError(error))
                    } catch {
                        input.yield(.eof)
                    }
                }
                let opening = sessionStarted(input)
                var loop = SessionLoop(connection: self, outbound: outbound, channel: channel, pipe: pipe, logger: logger)
                defer {
                    group.cancelAll()
                    let (waiters, ended) = shared.withLock { state in
                        state.session = nil
                        state.direct = nil
                        defer {
                            state.leaveWaiters = []
                            state.endWaiters = []
                        }
                        return (state.leaveWaiters, state.endWaiters)
                    }
                    input.finish()
                    for waiter in waiters { waiter.resume() }
                    for waiter in ended { waiter.resume(true) }
                }
                return try await loop.run(inputs, opening: opening)
            }
        } onGracefulShutdown: {
            input.yield(.shutdown)
        }
    }

    // MARK: Machine plumbing (used by SessionLoop)

    /// TCP is up: the machine starts a stream and a session clock, the timer covers the clock, and the session's
    /// input receives flush signals and the clock's actions. Returns our stream header's action.
    private func sessionStarted(_ input: AsyncStream<Input>.Continuation) -> LinkStateMachine<Waiter, IQReplier>.StreamAction {
        shared.withLock { state in
            state.session = input
            state.flushSignalled = false
            let action = state.machine.connected(at: .now)
            armSessionTimer(&state)
            return action
        }
    }

    /// After something was queued (under the lock): the timer covers its deadline, and the session loop is
    /// signalled (once per batch) when the link is up. Returns the loop's input to signal, if any.
    private func queued(_ state: inout SharedState, deadline: ContinuousClock.Instant, writeNow: Bool) -> Wake? {
        armTimer(&state, for: deadline)
        return flushSignal(&state, writeNow: writeNow)
    }

    /// What to call (outside the lock) when something was queued on a ready link, once per batch: a flush on the
    /// session's event loop, which takes everything queued by then and writes it as one buffer; before the session
    /// writes directly (the handshake, the first batch), a signal to the session loop, which does the same.
    private func flushSignal(_ state: inout SharedState, writeNow: Bool) -> Wake? {
        guard writeNow, !state.flushSignalled, !state.holding else { return nil }
        if let direct = state.direct {
            state.flushSignalled = true
            return { direct.channel.eventLoop.execute { self.flushDirect() } }
        }
        guard let session = state.session else { return nil }
        state.flushSignalled = true
        return { session.yield(.flush) }
    }

    /// Called outside the lock to get the queued stanzas written.
    typealias Wake = @Sendable () -> Void

    /// On the session's event loop: writes everything queued, unless the session stopped writing directly (then
    /// whoever stopped it writes what is left, or the next session does).
    ///
    /// Nothing is taken while the channel cannot take it: when it is closing (what is queued waits for the next
    /// stream, in order, instead of going into a dead socket) or not writable because the server reads slowly (what
    /// is queued stays bounded by `send_queue` and expires by `send_queue_ttl`; `LinkFastPath` flushes again once the
    /// channel is writable).
    fileprivate func flushDirect() {
        enum Taken {
            case nothing
            case batch(LinkStateMachine<Waiter, IQReplier>.Batch, DirectSession)
            case elsewhere(any EventLoop)
        }
        let taken: Taken = shared.withLock { state in
            guard let direct = state.direct else {
                state.flushSignalled = false
                return .nothing
            }
            // A wake of an earlier session on another loop: the batch is taken and written on this session's loop.
            guard direct.channel.eventLoop.inEventLoop else { return .elsewhere(direct.channel.eventLoop) }
            state.flushSignalled = false
            guard direct.channel.isActive, direct.channel.isWritable, !state.holding else { return .nothing }
            let batch = state.machine.takeForWrite()
            // Written below, in this same turn of the event loop.
            if !batch.isEmpty { state.machine.wrote(at: .now) }
            return .batch(batch, direct)
        }
        switch taken {
        case .nothing: return
        case .elsewhere(let loop): loop.execute { self.flushDirect() }
        case .batch(let batch, let direct): writeDirect(batch, on: direct)
        }
    }

    /// Writes `batch` on `direct`'s event loop (called there), as one buffer; waiters hear when it is written. (The
    /// write was noted when the batch was taken; a batch taken for writing carries no barrier of its own, so one
    /// without items is nothing to write.)
    private func writeDirect(_ batch: LinkStateMachine<Waiter, IQReplier>.Batch, on direct: DirectSession) {
        guard let buffer = buffer(for: batch, pipe: direct.pipe) else { return }
        let items = batch.items
        let promise: EventLoopPromise<Void>? = items.contains { $0.waiter != nil } ? direct.channel.eventLoop.makePromise() : nil
        direct.channel.writeAndFlush(buffer, promise: promise)
        promise?.futureResult.whenComplete { result in
            let outcome = result.mapError { SendError(.linkLost, "write failed: \($0)") }
            for item in items { item.waiter?.complete(outcome) }
        }
    }

    /// `batch` as one buffer, with a barrier ping after spooled stanzas (or one scheduled); nil when there is
    /// nothing to write. A barrier alone is written too: shutdown's last batch may hold nothing new but a barrier for
    /// what was written before it.
    fileprivate func buffer(for batch: LinkStateMachine<Waiter, IQReplier>.Batch, pipe: EventPipe) -> ByteBuffer? {
        let items = batch.items
        guard !items.isEmpty || batch.barrier != nil else { return nil }
        var buffer = ByteBuffer()
        buffer.reserveCapacity(items.reduce(0) { $0 + $1.xml.utf8.count })
        for item in items { buffer.writeString(item.xml) }
        if !canPing {
            if batch.barrier != nil || batch.wantsBarrier {
                spool?.confirm(withMachine { $0.confirmWithoutBarrier() })
            }
        } else if let barrier = batch.barrier, let ping = try? pingPolicy.serialize(Self.ping(id: barrier, settings: settings)) {
            buffer.writeString(ping)
        } else if batch.wantsBarrier {
            scheduleBarrier(pipe)
        }
        return buffer
    }

    /// How long spooled stanzas wait for their barrier: long enough that a burst shares one, short enough that
    /// the spool forgets them about as fast as the server confirms.
    static let barrierDelay: TimeAmount = .milliseconds(10)

    /// Has the session loop write a barrier after `barrierDelay`, unless one is on its way.
    fileprivate func scheduleBarrier(_ pipe: EventPipe) {
        guard pipe.barrierScheduled.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
        else { return }
        group.any().scheduleTask(in: Self.barrierDelay) { pipe.input.yield(.barrierDue) }
    }

    /// From now on (nil: no longer) queued stanzas are written on the session's event loop, not by the session loop.
    fileprivate func setDirect(_ direct: DirectSession?) {
        shared.withLock { $0.direct = direct }
    }

    /// The session writing directly, if it does.
    fileprivate var direct: DirectSession? { shared.withLock { $0.direct } }

    /// A stanza read on the event loop while nothing read before it waits for the session loop (`LinkFastPath`),
    /// handled there: delivered, or an iq reply given to its requester; anything else goes to the session loop.
    fileprivate func receivedDirectly(_ event: XMLStreamEvent, pipe: EventPipe) {
        let action = received(event)
        switch action {
        case .deliver(let stanza):
            LinkMetrics.received(stanza.kind)
            deliver(stanza)  // gives the unit back unless the router's queue holds the stanza
        case .reply(let pending, let stanza):
            inboundBudget.give()
            LinkMetrics.received(.iq)
            pending.replier(.success(stanza))
        case .none:
            inboundBudget.give()
        default:
            inboundBudget.give()
            pipe.input.yield(.action(confirmingNow(action)))
        }
    }

    /// Makes sure the deadline timer fires by `deadline` (under the lock). One timer on the link's event loop
    /// group covers every deadline: it is moved earlier when needed and, when it fires, set for the next one.
    private func armTimer(_ state: inout SharedState, for deadline: ContinuousClock.Instant) {
        if let armed = state.timer, armed.deadline <= deadline { return }
        state.timer?.task.cancel()
        // A cancel can come too late (the old timer is already running): its callback then finds another
        // generation and leaves the new timer alone.
        state.timerGeneration += 1
        let generation = state.timerGeneration
        let delay = max(.zero, deadline - .now)
        let task = group.any().scheduleTask(in: TimeAmount(delay)) { [weak self] in self?.deadlinesDue(generation) ?? () }
        state.timer = (deadline, task)
    }

    /// The session clock's next deadline may have come earlier (a new session, the handshake done): cheap.
    private func armSessionTimer(_ state: inout SharedState) {
        if let deadline = state.machine.nextSessionDeadline { armTimer(&state, for: deadline) }
    }

    /// The timer fired: answers everything due, hands the session clock's actions to the session loop and sets
    /// the timer for what is due next. Timers are at least `timerResolution` apart, so a crowd of iqs with
    /// deadlines a few microseconds apart costs a few scans of the queue, not one each.
    private func deadlinesDue(_ generation: Int) {
        let (due, session): (LinkStateMachine<Waiter, IQReplier>.Due, AsyncStream<Input>.Continuation?) =
            shared.withLock { state in
                guard generation == state.timerGeneration else { return (.init(), nil) }
                state.timer = nil
                let now = ContinuousClock.now
                if inboundBudget.isWaiting { state.machine.readingPaused(at: now) }
                let due = state.machine.due(at: now)
                if let next = state.machine.nextDeadline { armTimer(&state, for: max(next, now + Self.timerResolution)) }
                return (due, state.session)
            }
        if !due.session.isEmpty { session?.yield(.timers(due.session)) }
        finish(due.expired)
    }

    static let timerResolution: Duration = .milliseconds(20)

    private func finish(_ expired: OutboundQueue<Waiter, IQReplier>.Expired) {
        guard !expired.isEmpty else { return }
        let error = SendError(.expired, "waited longer than send_queue_ttl (or send_wait) for the component link")
        for item in expired.items { item.waiter?.complete(.failure(error)) }
        for (iq, code) in expired.iqs {
            let error = code == .timeout ? SendError(.timeout, "no reply within the timeout") : error
            iq.replier(.failure(error))
        }
    }

    /// Runs `body` on the machine under the lock.
    fileprivate func withMachine<T>(_ body: (inout LinkStateMachine<Waiter, IQReplier>) -> T) -> T {
        shared.withLock { body(&$0.machine) }
    }

    /// A stream event read at `now`, through the machine; the timer follows the session clock if it moved earlier.
    fileprivate func received(_ event: XMLStreamEvent) -> LinkStateMachine<Waiter, IQReplier>.StreamAction {
        shared.withLock { state in
            let action = state.machine.received(event, at: .now)
            if case .ready = action { armSessionTimer(&state) }
            // The server ended the stream (a stream error): nothing more is written on it, whoever handles the close.
            if case .close = action { state.direct = nil }
            return action
        }
    }

    /// What the session loop writes when it handles a flush signal (nothing unless the link is up).
    fileprivate func takeForWrite() -> LinkStateMachine<Waiter, IQReplier>.Batch {
        shared.withLock { state in
            state.flushSignalled = false
            return state.machine.takeForWrite()
        }
    }

    /// Takes the answer to one of this link's pings or barriers that arrived over another link of this process (the
    /// instance link, when `pingFrom` is its domain); false when `stanza` is not one. Does not wait.
    package func relayReply(_ stanza: Stanza) -> Bool {
        let (action, session) = shared.withLock { state in (state.machine.relayed(stanza, at: .now), state.session) }
        guard let action else { return false }
        if case .none = action { return true }
        session?.yield(.relayed(confirmingNow(action)))
        return true
    }

    /// A barrier's answer read outside the session loop: the machine has forgotten the stanzas it confirms, so the
    /// spool is told now, not when the session loop gets to it (a draining shutdown that sees nothing unconfirmed
    /// closes the stream and would never tell it: the stanzas stayed in the spool and went again at the next start).
    /// Returns what the session loop still does (ask for the next barrier).
    fileprivate func confirmingNow(_ action: LinkStateMachine<Waiter, IQReplier>.StreamAction) -> LinkStateMachine<Waiter, IQReplier>.StreamAction {
        guard case .confirmed(let seqs, let more) = action else { return action }
        spool?.confirm(seqs)
        return .confirmed([], more: more)
    }

    /// Delivers an iq reply that did not come through the stream's own path (a refused reply); true when it was one.
    fileprivate func resolveIQ(_ stanza: Stanza) -> Bool {
        guard let pending = withMachine({ $0.resolve(stanza) }) else { return false }
        pending.replier(.success(stanza))
        return true
    }

    /// Shutdown: the machine is closed and everything still waiting is told why.
    private func closeAll(_ error: SendError) {
        let (items, pending) = shared.withLock { state in
            state.timer?.task.cancel()
            state.timer = nil
            return state.machine.closed()
        }
        for item in items { item.waiter?.complete(.failure(error)) }
        for entry in pending { entry.replier(.failure(error)) }
    }

    private func cancelWaiter(_ id: Int) {
        let item = withMachine { $0.cancelItem { $0.waiter?.id == id } }
        item?.waiter?.complete(.failure(SendError(.expired, "cancelled while waiting for the link")))
    }

    /// Hands `stanza` to the router as if the server had just sent it (a webhook delivery kept in the spool by a
    /// process that stopped, routed again).
    package func redeliver(_ stanza: Stanza) {
        inboundBudget.takeNow()
        deliver(stanza)
    }

    /// Hands a stanza to the router; its budget unit comes back when the router takes it from `inbound`, or now
    /// when the direct handler took it.
    fileprivate func deliver(_ stanza: Stanza) {
        if collectors.take(stanza) || directInbound.take(stanza) {
            inboundBudget.give()
            return
        }
        if case .enqueued = inboundContinuation.yield(stanza) { return }
        // `inbound` ended between the two (`endInbound`): the handler it left takes the stanza.
        if !directInbound.take(stanza) {
            // Only when the router ended without a graceful shutdown (cancelled): nothing takes stanzas any more.
            logger.error("inbound stanza dropped: the router has stopped", metadata: [
                "kind": "\(stanza.kind.rawValue)", "from": "\(stanza.from ?? "")", "stanza.id": "\(stanza.id ?? "")",
            ])
        }
        inboundBudget.give()
    }
}

/// Holds the direct-inbound handler. A plain pthread mutex rather than `Mutex` or NIO's `NIOLockedValueBox`: with
/// the closure kept in either and read back through its `withLock` body, every stanza passed to it stayed
/// allocated (RSS grew by about 600 bytes per stanza in the 10,000-stanza soak test; Swift 6.3.1).
final class DirectInboundSlot: @unchecked Sendable {
    private var handler: (@Sendable (Stanza) -> Bool)?
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func set(_ handler: (@Sendable (Stanza) -> Bool)?) {
        pthread_mutex_lock(mutex)
        self.handler = handler
        pthread_mutex_unlock(mutex)
    }

    /// Offers `stanza` to the handler (called outside the lock); false when there is none or it declined.
    func take(_ stanza: Stanza) -> Bool {
        pthread_mutex_lock(mutex)
        let handler = self.handler
        pthread_mutex_unlock(mutex)
        return handler?(stanza) ?? false
    }
}

// MARK: - Session loop

/// One connection's I/O: reads the session's inputs, asks the machine what they mean and performs it (writes,
/// deliveries, replies). Owns the writer; everything else talks to it through `Input`.
private struct SessionLoop {
    let connection: ComponentConnection
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    /// The connection's channel: once the link is up, queued stanzas are written on its event loop.
    let channel: any Channel
    let pipe: EventPipe
    let logger: Logger
    /// Shutdown has written the last stanzas and waits for their barrier's answer.
    var draining = false
    /// The stream was closed by `leave`: reading on until the server closes its side.
    var leaving = false
    /// Shutdown wrote our `</stream:stream>`: what the server sent before it saw it is still read and handed on (the
    /// router has stopped taking stanzas: kept in the spool or answered), until the server closes its side or
    /// `closeWait` has passed. Nothing more is written.
    var streamClosed = false
    static let closeWait: TimeAmount = .seconds(2)

    /// The session's own input (for the drain timer).
    var input: AsyncStream<ComponentConnection.Input>.Continuation { pipe.input }

    var settings: ComponentSettings { connection.settings }

    mutating func run(_ inputs: AsyncStream<ComponentConnection.Input>,
                      opening: LinkStateMachine<Waiter, IQReplier>.StreamAction) async throws -> ComponentConnection.Outcome {
        if let outcome = try await perform(opening) { return outcome }
        for await item in inputs {
            switch item {
            case .event(let event):
                pipe.queued.subtract(1, ordering: .relaxed)
                let action = connection.received(event)
                if case .deliver(let stanza) = action {
                    LinkMetrics.received(stanza.kind)
                    connection.deliver(stanza)  // gives the unit back unless the router's queue holds the stanza
                } else {
                    connection.inboundBudget.give()
                    if streamClosed {
                        // The server closed its side too (its close or a stream error): done. Of other actions only
                        // those that write nothing are performed.
                        if connection.withMachine({ $0.streamEnded }) { return .shutdown }
                        if case .reply = action, let outcome = try await perform(action) { return outcome }
                        if case .confirmed = action, let outcome = try await perform(action) { return outcome }
                        if case .refuse(let refused) = action { try await refuse(refused, answer: false) }
                    } else if let outcome = try await perform(action) { return outcome }
                }
                // Only now may the event loop handle the stanzas read after this one itself (in order).
                pipe.forwarded.subtract(1, ordering: .sequentiallyConsistent)
            case .parseError(let error):
                if streamClosed { return .shutdown }
                if let outcome = try await perform(connection.withMachine({ $0.parseFailed(error) })) { return outcome }
            case .eof:
                if draining || streamClosed { return .shutdown }
                if leaving { return .left }
                return .failed(connection.withMachine { $0.disconnected() })
            case .flush:
                // After our </stream:stream>, or while another process takes the link over: nothing is written.
                if leaving || streamClosed || connection.isHolding { continue }
                if connection.direct != nil {
                    // The link went direct after this signal: the event loop writes, in order with its other writes.
                    channel.eventLoop.execute { [connection] in connection.flushDirect() }
                } else {
                    try await write(connection.takeForWrite())
                }
            case .timers(let actions):
                if leaving || streamClosed || connection.isHolding { continue }
                if let outcome = try await perform(actions) { return outcome }
            case .shutdown:
                if leaving || connection.isHolding { return .left }
                if draining || streamClosed { continue }
                // Replies handed to the spool just before (their handlers are done) are committed and written first.
                if connection.spool != nil { await connection.waitForCommits(timeout: .seconds(2)) }
                connection.setDirect(nil)
                let (last, unconfirmedNow, spoolingNow) = connection.withMachine { ($0.close(), $0.unconfirmed.count, $0.spooling) }
                logger.debug("link shutting down: the last batch", metadata: [
                    "items": "\(last.items.count)", "barrier": "\(last.barrier ?? "-")", "unconfirmed": "\(unconfirmedNow)",
                    "spooling": "\(spoolingNow)",
                ])
                try await write(last)
                // Spooled stanzas just written: their barrier's answer lets the spool forget them, so that the next
                // start does not send them again. It is awaited for a moment, no longer.
                if connection.canPing, connection.withMachine({ !$0.unconfirmed.isEmpty }) {
                    draining = true
                    let input = self.input
                    connection.group.any().scheduleTask(in: .seconds(2)) { input.yield(.drainTimeout) }
                    continue
                }
                if await closeForShutdown() { return .shutdown }
            case .drainTimeout:
                if leaving { return .left }
                if await closeForShutdown() { return .shutdown }
            case .closeTimeout:
                // What the server sent and was read but not handed on yet ends here; the line says how much.
                let unread = pipe.queued.load(ordering: .relaxed)
                logger.log(level: unread > 0 ? .notice : .debug, "the server did not close its side in time; the link ends",
                           metadata: ["waited": "\(Self.closeWait)", "events_not_handled": "\(unread)"])
                return .shutdown
            case .barrierDue:
                pipe.barrierScheduled.store(false, ordering: .sequentiallyConsistent)
                // While draining too: what was written after the barrier on its way needs the next one.
                if leaving || streamClosed || connection.isHolding { continue }
                if let id = connection.withMachine({ $0.barrierIfNeeded() }) {
                    try await write(connection.pingPolicy.serialize(ComponentConnection.ping(id: id, settings: settings)))
                }
            case .relayed(let action):
                if leaving || streamClosed { continue }
                if let outcome = try await perform(action) { return outcome }
            case .action(let action):
                if streamClosed { continue }
                if let outcome = try await perform(action) { return outcome }
            case .leave:
                guard !leaving, !streamClosed else { continue }
                leaving = true
                connection.setDirect(nil)
                try await write(connection.withMachine { $0.takeForLeave() })
                try? await write("</stream:stream>")
                logger.notice("component stream closed: handing the link to the other stanzad on this spool")
            }
            if draining, !streamClosed, connection.withMachine({ $0.unconfirmed.isEmpty }), await closeForShutdown() {
                return .shutdown
            }
        }
        return .shutdown
    }

    /// Writes our `</stream:stream>` and reads on until the server closes its side (see `streamClosed`). True: the
    /// stream had already ended (shutdown before the handshake completed, or after a stream error): nothing to wait
    /// for.
    mutating func closeForShutdown() async -> Bool {
        guard !streamClosed else { return false }
        let (unconfirmed, queued) = connection.withMachine { ($0.unconfirmed.count, $0.queue.items.count) }
        logger.debug("closing the stream for shutdown", metadata: ["unconfirmed": "\(unconfirmed)", "queued": "\(queued)"])
        // Armed before the write: a server that stopped reading holds the write up, and the wait covers it too.
        let input = self.input
        connection.group.any().scheduleTask(in: Self.closeWait) { input.yield(.closeTimeout) }
        try? await write("</stream:stream>")
        logger.notice("component stream closed for shutdown")
        streamClosed = true
        return connection.withMachine { $0.streamEnded }
    }

    /// Performs what the session clock has due.
    mutating func perform(_ actions: [SessionTimers.Action]) async throws -> ComponentConnection.Outcome? {
        for action in actions {
            switch action {
            case .handshakeTimedOut:
                return .failed(ComponentLinkError(.handshakeTimeout, "no handshake reply within \(settings.handshakeTimeout)"))
            case .pingTimedOut:
                connection.setDirect(nil)
                logger.notice("no reply to ping, reconnecting", metadata: ["ping_timeout": "\(settings.pingTimeout)"])
                try? await write("<stream:error><connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>")
                return .failed(ComponentLinkError(.pingTimeout, "no reply to a ping within \(settings.pingTimeout)"))
            case .sendPing(let id):
                logger.debug("link idle, pinging the server", metadata: ["to": "\(settings.pingTarget)"])
                try await write(connection.pingPolicy.serialize(ComponentConnection.ping(id: id, settings: settings)))
            case .sendKeepalive:
                try await write(" ")
            }
        }
        return nil
    }

    /// A stanza the parser skipped for breaking a per-stanza limit: the link stays up and the sender learns why
    /// (`answer` false: after our close, when nothing is written any more, it is only logged).
    mutating func refuse(_ refused: RefusedStanza, answer: Bool = true) async throws {
        logger.notice(
            answer ? "inbound stanza refused" : "inbound stanza refused; not answered: the stream is closing",
            metadata: [
                "kind": "\(refused.name)", "stanza.id": "\(refused.id ?? "")", "from": "\(refused.from ?? "")",
                "to": "\(refused.to ?? "")", "type": "\(refused.type ?? "")", "reason": "\(refused.reason.message)",
            ])
        if refused.name == "iq", refused.type == "result" || refused.type == "error", let id = refused.id {
            if connection.withMachine({ $0.refusedPong(id: id) }) {
                // The server answered our ping, however oddly.
            } else if let reply = ComponentConnection.refusedReply(refused, domain: settings.jid) {
                // A request waiting for this reply gets the refusal instead of waiting for its timeout.
                _ = connection.resolveIQ(reply)
            }
            return
        }
        guard answer, let reply = ComponentConnection.errorReply(to: refused, domain: settings.jid) else { return }
        do {
            try await write(connection.policy.serialize(reply))
        } catch let error as SendError {
            logger.notice("error reply to a refused stanza not sent", metadata: ["stanza.id": "\(refused.id ?? "")", "error": "\(error)"])
        }
    }

    /// Writes everything queued as one buffer: one hop to the event loop and one system call for a burst of
    /// replies instead of one per stanza. Spooled stanzas among them are followed by a barrier ping.
    mutating func write(_ batch: LinkStateMachine<Waiter, IQReplier>.Batch) async throws {
        let items = batch.items
        guard let buffer = connection.buffer(for: batch, pipe: pipe) else { return }
        do {
            try await outbound.write(buffer)
            connection.withMachine { $0.wrote(at: .now) }
        } catch {
            for item in items {
                item.waiter?.complete(.failure(SendError(.linkLost, "write failed: \(error)")))
            }
            throw error
        }
        for item in items { item.waiter?.complete(.success(())) }
    }

    mutating func write(_ text: String) async throws {
        if connection.isHolding {
            // An answer to the server (to its ping, to a refused stanza) or the close of a stream it ended: the link is
            // being handed over and must stay silent (see `hold`).
            logger.debug("not written: the link is held for the process taking it over", metadata: ["xml": "\(text.prefix(200))"])
            return
        }
        try await outbound.write(ByteBuffer(string: text))
        connection.withMachine { $0.wrote(at: .now) }
    }

    /// Performs the machine's answer to a stream event; returns an outcome when the session is over.
    mutating func perform(_ action: LinkStateMachine<Waiter, IQReplier>.StreamAction) async throws -> ComponentConnection.Outcome? {
        switch action {
        case .none:
            return nil
        case .write(let text):
            try await write(text)
            return nil
        case .ready(let streamID):
            pipe.ready.store(true, ordering: .sequentiallyConsistent)
            logger.notice("component connected", metadata: ["stream.id": "\(streamID)", "server": "\(settings.host):\(settings.port)"])
            // From now on queued stanzas are written on the event loop, beginning with what waited for the link.
            connection.setDirect(DirectSession(channel: channel, pipe: pipe))
            channel.eventLoop.execute { [connection] in connection.flushDirect() }
            connection.notify(.up)
            return nil
        case .deliver(let stanza):
            connection.deliver(stanza)
            return nil
        case .reply(let pending, let stanza):
            LinkMetrics.received(.iq)
            pending.replier(.success(stanza))
            return nil
        case .confirmed(let seqs, let more):
            connection.spool?.confirm(seqs)
            if more { connection.scheduleBarrier(pipe) }
            return nil
        case .ignore(let element):
            logger.debug("ignoring non-stanza element from the server", metadata: ["element": "\(element.name)"])
            return nil
        case .refuse(let refused):
            try await refuse(refused)
            return nil
        case .close(let streamError, let reason):
            connection.setDirect(nil)
            if let streamError {
                try? await write("<stream:error><\(streamError) xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
            }
            try? await write("</stream:stream>")
            return .failed(reason)
        }
    }
}

/// What a session's reader, event loop and session loop share.
final class EventPipe: Sendable {
    /// The session loop's input.
    let input: AsyncStream<ComponentConnection.Input>.Continuation
    /// Events the reader passed to the session loop and the loop has not taken yet.
    let queued = Atomic<Int>(0)
    /// Events the event loop passed on to the reader and the session loop has not handled yet: while there are
    /// any, the event loop passes on every event (so that stanzas are handled in the order they were read).
    let forwarded = Atomic<Int>(0)
    /// The handshake is done: from now on the reader waits for the budget, and the event loop may handle stanzas.
    let ready = Atomic<Bool>(false)
    /// A `.barrierDue` is on its way.
    let barrierScheduled = Atomic<Bool>(false)

    init(input: AsyncStream<ComponentConnection.Input>.Continuation) {
        self.input = input
    }
}

/// A session writing queued stanzas on its channel's event loop.
struct DirectSession: Sendable {
    let channel: any Channel
    let pipe: EventPipe
}

/// In the link's pipeline after the stream decoder: once the link is up, a stanza read while nothing read before it
/// waits for the session loop, and while the inbound budget has room, is handled right here on the event loop
/// (delivered to the router's direct handler, or given to the iq request waiting for it) instead of travelling
/// through the reader and session loop tasks. Everything else is passed on to them.
private final class LinkFastPath: ChannelInboundHandler {
    typealias InboundIn = XMLStreamEvent
    typealias InboundOut = XMLStreamEvent

    let connection: ComponentConnection
    let pipe: EventPipe

    init(connection: ComponentConnection, pipe: EventPipe) {
        self.connection = connection
        self.pipe = pipe
    }

    /// The server reads again: what waited for room is written.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, pipe.ready.load(ordering: .sequentiallyConsistent) { connection.flushDirect() }
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let event = unwrapInboundIn(data)
        if case .stanza = event, pipe.ready.load(ordering: .sequentiallyConsistent),
            pipe.forwarded.load(ordering: .sequentiallyConsistent) == 0, connection.inboundBudget.tryTake()
        {
            connection.receivedDirectly(event, pipe: pipe)
            return
        }
        pipe.forwarded.add(1, ordering: .sequentiallyConsistent)
        context.fireChannelRead(data)
    }
}

// MARK: - Shared state

struct Waiter: Sendable {
    let id: Int
    let complete: @Sendable (Result<Void, SendError>) -> Void
}

typealias IQReplier = @Sendable (Result<Stanza, SendError>) -> Void

/// One timed wait (`waitForSessionEnd`, `InboundBudget.drained`): resumed once, by the event or by its timeout,
/// whichever comes first.
final class OneShotWait: Sendable {
    private let continuation = Mutex<CheckedContinuation<Bool, Never>?>(nil)

    func set(_ continuation: CheckedContinuation<Bool, Never>) {
        self.continuation.withLock { $0 = continuation }
    }

    func resume(_ ended: Bool) {
        continuation.withLock { $0.take() }?.resume(returning: ended)
    }
}

/// Joins a task's cancellation to a callback-style wait: `cancel` before `set` cancels at `set`.
final class CancellationBox: Sendable {
    private enum State {
        case waiting
        case set(@Sendable () -> Void)
        case cancelled
    }

    private let state = Mutex(State.waiting)

    func set(_ cancel: (@Sendable () -> Void)?) {
        guard let cancel else { return }
        let cancelNow: Bool = state.withLock { state in
            guard case .waiting = state else { return true }
            state = .set(cancel)
            return false
        }
        if cancelNow { cancel() }
    }

    func cancel() {
        let action: (@Sendable () -> Void)? = state.withLock { state in
            defer { state = .cancelled }
            if case .set(let action) = state { return action }
            return nil
        }
        action?()
    }
}
typealias Outgoing = OutboundQueue<Waiter, IQReplier>.Item
typealias PendingIQ = OutboundQueue<Waiter, IQReplier>.PendingIQ

private struct SharedState: Sendable {
    /// Every decision of the link.
    var machine: LinkStateMachine<Waiter, IQReplier>
    /// The deadline timer: when it fires, and the task to cancel when an earlier deadline needs it sooner.
    var timer: (deadline: ContinuousClock.Instant, task: Scheduled<Void>)?
    /// Which arming of the timer is current; a callback of an earlier one does nothing.
    var timerGeneration = 0
    /// The current session's input, from TCP connect to the session's end.
    var session: AsyncStream<ComponentConnection.Input>.Continuation?
    /// The session writes queued stanzas on its event loop (from the first batch after the handshake until it
    /// closes its stream).
    var direct: DirectSession?
    /// A flush is on its way (to the event loop or the session loop) and has not been handled yet.
    var flushSignalled = false
    var waiterCounter = 0
    /// The link is being handed to another process: it does not connect again.
    var leaving = false
    /// Waiting for the session to end after `leave`.
    var leaveWaiters: [CheckedContinuation<Void, Never>] = []
    /// Another process is about to take the link over (see `hold`): nothing is written and the link does not
    /// connect again.
    var holding = false
    /// Told when the session ends (see `waitForSessionEnd`).
    var endWaiters: [OneShotWait] = []
    /// Runs once before the first connect (see `setStartGate`).
    var startGate: (@Sendable () async -> Void)?
    /// Waiting for the stanzas handed to the spool to be committed (`waitForCommits`).
    var commitWaiters: [CheckedContinuation<Void, Never>] = []

    init(machine: LinkStateMachine<Waiter, IQReplier>) {
        self.machine = machine
    }

    mutating func nextWaiterID() -> Int {
        waiterCounter += 1
        return waiterCounter
    }
}

// MARK: - Refused stanzas

extension ComponentConnection {
    /// The error a refused stanza gets, as SPEC §8 builds error replies: modify/policy-violation saying which
    /// limit it broke, from the address it was sent to. nil when it must get none: not a stanza, no addresses, an
    /// iq that is not a request, or a stanza of type error or result.
    static func errorReply(to refused: RefusedStanza, domain: String) -> Stanza? {
        guard let incoming = stanza(refused), refused.from != nil, refused.to != nil, incoming.allowsReply,
            incoming.kind != .iq || incoming.isRequest
        else { return nil }
        return incoming.errorReply(policyViolation(refused, domain: domain))
    }

    /// A refused iq result or error as the error stanza its requester gets in its place.
    static func refusedReply(_ refused: RefusedStanza, domain: String) -> Stanza? {
        guard var reply = stanza(refused), reply.kind == .iq else { return nil }
        reply.type = "error"
        reply.element.children = [.element(policyViolation(refused, domain: domain).element(namespace: refused.namespace))]
        return reply
    }

    private static func stanza(_ refused: RefusedStanza) -> Stanza? {
        var element = Element(refused.name, namespace: refused.namespace)
        element[attribute: "type"] = refused.type
        element[attribute: "id"] = refused.id
        element[attribute: "from"] = refused.from
        element[attribute: "to"] = refused.to
        return Stanza(element)
    }

    private static func policyViolation(_ refused: RefusedStanza, domain: String) -> StanzaError {
        StanzaError(.modify, .policyViolation, text: refused.reason.message, by: domain)
    }
}
