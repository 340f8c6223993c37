import Testing
import XMPPCore

@testable import ComponentLink

/// The link's rules (SPEC §11) on a fake clock: no sockets, no timers; time is whatever the test says it is.
@Suite struct LinkStateMachineTests {
    typealias Machine = LinkStateMachine<String, String>
    typealias Instant = ContinuousClock.Instant

    let t0 = ContinuousClock.now
    let limits = SessionTimers.Limits(
        handshakeTimeout: .seconds(20), keepaliveInterval: .seconds(30), pingInterval: .seconds(60),
        pingTimeout: .seconds(20))

    func machine(queue: Int = 10, ttl: Duration = .seconds(60), reconnectMax: Duration = .seconds(60)) -> Machine {
        Machine(jid: "bot.example.org", secret: "s3cret", limits: limits, reconnectMax: reconnectMax, sendQueue: queue,
                sendQueueTTL: ttl)
    }

    func at(_ seconds: Double) -> Instant { t0 + .milliseconds(Int64(seconds * 1000)) }

    func header(id: String = "abc123") -> XMLStreamEvent {
        var element = Element("stream", namespace: Namespace.stream)
        element[attribute: "from"] = "bot.example.org"
        element[attribute: "id"] = id
        return .streamOpened(element)
    }

    let handshakeOK = XMLStreamEvent.stanza(Element("handshake", namespace: Namespace.componentAccept))

    func item(_ xml: String, deadline: Instant, waiter: String? = nil, iq: String? = nil) -> Machine.Queue.Item {
        .init(xml: xml, deadline: deadline, waiter: waiter, iqID: iq)
    }

    func iqResult(id: String, from: String) -> XMLStreamEvent {
        var element = Element("iq", namespace: Namespace.componentAccept)
        element[attribute: "type"] = "result"
        element[attribute: "id"] = id
        element[attribute: "from"] = from
        element[attribute: "to"] = "bot.example.org"
        return .stanza(element)
    }

    func streamError(_ condition: String) -> XMLStreamEvent {
        var error = Element("error", namespace: Namespace.stream)
        error.append(Element(condition, namespace: Namespace.streams))
        return .stanza(error)
    }

    func written(_ action: Machine.StreamAction) -> String? {
        if case .write(let text) = action { return text }
        return nil
    }

    /// Connects at `start` and completes the handshake.
    func ready(_ link: inout Machine, at start: Instant) {
        _ = link.connected(at: start)
        _ = link.received(header(), at: start)
        guard case .ready = link.received(handshakeOK, at: start) else {
            Issue.record("handshake did not complete")
            return
        }
    }

    // MARK: Handshake

    @Test func theStreamOpensToTheJIDAndStanzasFlowOnlyAfterTheHandshake() throws {
        var link = machine()
        #expect(link.phase == .connecting)
        guard case .write(let open) = link.connected(at: t0) else {
            Issue.record("no stream header")
            return
        }
        #expect(open.contains("xmlns='jabber:component:accept'") && open.contains("to='bot.example.org'"))
        #expect(link.phase == .handshaking)
        #expect(try link.enqueue(item("<message/>", deadline: at(60))) == false, "not written before the handshake")
        #expect(link.takeForWrite().isEmpty)
        let digest = HandshakeStateMachine.handshakeDigest(streamID: "abc123", secret: "s3cret")
        guard case .write(let handshake) = link.received(header(), at: t0) else {
            Issue.record("no handshake")
            return
        }
        #expect(handshake == "<handshake>\(digest)</handshake>", "lowercase hex, as ejabberd compares it")
        guard case .ready(let streamID) = link.received(handshakeOK, at: t0) else {
            Issue.record("not ready")
            return
        }
        #expect(streamID == "abc123")
        #expect(link.phase == .ready && link.health == .connected)
        #expect(link.takeForWrite().items.map(\.xml) == ["<message/>"], "what waited is written after the handshake")
        #expect(try link.enqueue(item("<presence/>", deadline: at(60))) == true, "written at once while up")
    }

    @Test func noHandshakeReplyEndsTheSessionAtTheHandshakeTimeout() {
        var link = machine()
        _ = link.connected(at: t0)
        #expect(link.nextSessionDeadline == at(20))
        #expect(link.due(at: at(19.9)).session.isEmpty)
        #expect(link.due(at: at(20)).session == [.handshakeTimedOut])
    }

    @Test func everyConnectionGetsAFreshStream() {
        var link = machine()
        ready(&link, at: t0)
        _ = link.sessionEnded(ComponentLinkError(.closedByPeer, "gone"), at: at(1), jitter: 1)
        guard case .write(let open) = link.connected(at: at(2)) else {
            Issue.record("no new stream header")
            return
        }
        #expect(open.contains("jabber:component:accept"))
        // The old stream's id is not reused: the new header's id goes into the new digest.
        let digest = HandshakeStateMachine.handshakeDigest(streamID: "second", secret: "s3cret")
        #expect(written(link.received(header(id: "second"), at: at(2))) == "<handshake>\(digest)</handshake>")
    }

    // MARK: Reconnect

    @Test func anyDisconnectIsRetriedAboutASecondLaterWhileTheOutageIsYoung() {
        var link = machine()
        ready(&link, at: t0)
        let end = link.sessionEnded(ComponentLinkError(.closedByPeer, "connection closed"), at: at(5), jitter: 1)
        #expect(end.wasReady)
        #expect(end.delay == .seconds(1))
        #expect(link.phase == .backingOff(until: at(6)))
        #expect(link.health == .connecting)
        link.connecting()
        let again = link.sessionEnded(ComponentLinkError(.connectFailed, "refused"), at: at(6), jitter: 1.2)
        #expect(!again.wasReady)
        #expect(again.delay == .milliseconds(1200), "jitter spreads the attempts")
    }

    @Test func anOldOutageBacksOffExponentiallyUpToReconnectMax() {
        var link = machine(reconnectMax: .seconds(8))
        var delays: [Duration] = []
        var now = at(0)
        _ = link.sessionEnded(ComponentLinkError(.connectFailed, "refused"), at: now, jitter: 1)
        now = at(301)  // past the fast window
        for _ in 0..<6 {
            let end = link.sessionEnded(ComponentLinkError(.connectFailed, "refused"), at: now, jitter: 1)
            delays.append(end.delay)
            now = now + end.delay
        }
        #expect(delays == [.seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(8), .seconds(8)])
    }

    @Test func aRefusedSecretIsAConfigurationErrorAndStillRetried() {
        var link = machine()
        _ = link.connected(at: t0)
        _ = link.received(header(), at: t0)
        guard case .close(_, let reason) = link.received(streamError("not-authorized"), at: t0) else {
            Issue.record("not closed")
            return
        }
        let end = link.sessionEnded(reason, at: t0, jitter: 1)
        #expect(link.health == .failed)
        #expect(link.lastError?.condition == "not-authorized")
        #expect(end.delay == .seconds(1))
        #expect(link.phase == .backingOff(until: t0 + end.delay), "still retried")
        let next = link.sessionEnded(reason, at: at(1), jitter: 1)
        #expect(next.delay == .seconds(2), "backs off: retrying at once will not fix it")
        // The link stays `failed` through attempts until a handshake succeeds.
        link.connecting()
        #expect(link.health == .failed)
        ready(&link, at: at(3))
        #expect(link.health == .connected && link.lastError == nil)
    }

    @Test func aConflictIsRetriedQuickly() {
        var link = machine()
        _ = link.connected(at: t0)
        _ = link.received(header(), at: t0)
        guard case .close(_, let reason) = link.received(streamError("conflict"), at: t0) else {
            Issue.record("not closed")
            return
        }
        let end = link.sessionEnded(reason, at: t0, jitter: 1)
        #expect(link.health == .connecting)
        #expect(end.delay == .seconds(1))
    }

    // MARK: Keepalive and ping

    @Test func aSpaceAfterThirtySecondsWithoutWriting() {
        var link = machine()
        ready(&link, at: t0)
        link.wrote(at: at(10))
        #expect(link.due(at: at(39)).session.isEmpty)
        #expect(link.due(at: at(40)).session == [.sendKeepalive])
        #expect(link.due(at: at(41)).session.isEmpty, "the keepalive counts as a write")
    }

    @Test func aPingAfterReadSilenceAndAReconnectWhenItGetsNoReply() {
        var link = machine()
        ready(&link, at: t0)
        link.wrote(at: at(75))
        _ = link.received(.stanza(Element("message", namespace: Namespace.componentAccept)), at: at(30))
        #expect(link.due(at: at(89)).session.isEmpty)
        let due = link.due(at: at(90)).session
        guard case .sendPing(let id) = due.first else {
            Issue.record("no ping: \(due)")
            return
        }
        #expect(link.nextSessionDeadline == at(110))
        #expect(id.hasPrefix("stanzad-ping-"))
        #expect(link.due(at: at(110)).session == [.pingTimedOut])
    }

    @Test func aPongIsTheLinksOwnAndKeepsItUp() {
        var link = machine()
        ready(&link, at: t0)
        link.wrote(at: at(60))
        guard case .sendPing(let id) = link.due(at: at(60)).session.first else {
            Issue.record("no ping")
            return
        }
        guard case .none = link.received(iqResult(id: id, from: "example.org"), at: at(61)) else {
            Issue.record("the pong was routed")
            return
        }
        #expect(link.due(at: at(80)).session.isEmpty, "no timeout after the pong")
    }

    // MARK: The queue while down

    @Test func stanzasQueueWhileDownAndExpireAtTheirTTLDuringTheBackoff() throws {
        var link = machine(ttl: .seconds(5))
        ready(&link, at: t0)
        _ = link.sessionEnded(ComponentLinkError(.closedByPeer, "gone"), at: at(1), jitter: 1)
        #expect(try link.enqueue(item("<message id='a'/>", deadline: at(6), waiter: "a")) == false)
        #expect(link.nextDeadline == at(6))
        #expect(link.due(at: at(5.9)).expired.isEmpty)
        let due = link.due(at: at(6))
        #expect(due.expired.items.map(\.waiter) == ["a"], "answered during the backoff, with nothing else happening")
        #expect(link.queue.items.isEmpty)
    }

    @Test func anIqWaitingForADownLinkTimesOutAtItsOwnTimeout() throws {
        var link = machine()
        let request = item("<iq id='p'/>", deadline: at(2), iq: "p")
        _ = try link.request(request, id: "p", iq: .init(deadline: at(2), to: "example.org", replier: "p"), maxPending: 10)
        let due = link.due(at: at(2))
        #expect(due.expired.iqs.map(\.iq.replier) == ["p"])
        #expect(due.expired.iqs.map(\.code) == [.timeout])
        #expect(link.queue.isEmpty)
    }

    @Test func aFullQueueRefusesAndQueuedStanzasAreWrittenInOrderAfterTheHandshake() throws {
        var link = machine(queue: 2)
        _ = try link.enqueue(item("1", deadline: at(60)))
        _ = try link.enqueue(item("2", deadline: at(60)))
        #expect(throws: SendError.self) { try link.enqueue(item("3", deadline: at(60))) }
        ready(&link, at: at(1))
        #expect(link.takeForWrite().items.map(\.xml) == ["1", "2"])
    }

    @Test func iqsWrittenOnALostStreamFailAndUnwrittenOnesWait() throws {
        var link = machine()
        ready(&link, at: t0)
        _ = try link.request(item("<iq id='sent'/>", deadline: at(30), iq: "sent"), id: "sent",
                             iq: .init(deadline: at(30), to: "example.org", replier: "sent"), maxPending: 10)
        _ = link.takeForWrite()
        let end = link.sessionEnded(ComponentLinkError(.closedByPeer, "gone"), at: at(1), jitter: 1)
        #expect(end.lostIQs.map(\.replier) == ["sent"], "its reply cannot come on a new stream")
        _ = try link.request(item("<iq id='later'/>", deadline: at(30), iq: "later"), id: "later",
                             iq: .init(deadline: at(30), to: "example.org", replier: "later"), maxPending: 10)
        ready(&link, at: at(2))
        #expect(link.takeForWrite().items.map(\.iqID) == ["later"])
    }

    @Test func aReplyCountsOnlyFromWhereTheRequestWent() throws {
        var link = machine()
        ready(&link, at: t0)
        _ = try link.request(item("<iq id='q'/>", deadline: at(30), iq: "q"), id: "q",
                             iq: .init(deadline: at(30), to: "alice@example.org/phone", replier: "q"), maxPending: 10)
        _ = link.takeForWrite()
        guard case .deliver = link.received(iqResult(id: "q", from: "mallory@example.org"), at: at(1)) else {
            Issue.record("a reply from elsewhere was taken as the answer")
            return
        }
        guard case .reply(let pending, _) = link.received(iqResult(id: "q", from: "alice@example.org/phone"), at: at(1)) else {
            Issue.record("the real reply was not matched")
            return
        }
        #expect(pending.replier == "q")
        #expect(link.queue.pending.isEmpty)
    }

    // MARK: The spool (SPEC §18)

    func spooled(_ seq: Int64) -> Machine.Queue.Item {
        .init(xml: "s\(seq)", deadline: at(1_000_000), waiter: nil, iqID: nil, seq: seq)
    }

    func confirmedSeqs(_ action: Machine.StreamAction) -> [Int64]? {
        if case .confirmed(let seqs, more: _) = action { return seqs }
        return nil
    }

    @Test func spooledStanzasAreFollowedByABarrierWhoseAnswerConfirmsThem() throws {
        var link = machine()
        ready(&link, at: t0)
        try link.reserveSpool()
        try link.reserveSpool()
        let writeFirst = link.spooled(spooled(1))
        let writeSecond = link.spooled(spooled(2))
        #expect(writeFirst && writeSecond)
        let batch = link.takeForWrite()
        #expect(batch.items.map(\.xml) == ["s1", "s2"])
        #expect(batch.wantsBarrier && batch.barrier == nil, "the barrier follows a moment later, for the whole burst")
        let barrierAsked = link.barrierIfNeeded()
        let barrier = try #require(barrierAsked)
        #expect(link.spoolDepth == 2, "written is not confirmed")
        _ = try link.enqueue(item("plain", deadline: at(60)))
        let plain = link.takeForWrite()
        #expect(!plain.wantsBarrier, "no barrier for stanzas that are not spooled")
        let answer = link.received(iqResult(id: barrier, from: "example.org"), at: at(1))
        #expect(confirmedSeqs(answer) == [1, 2])
        #expect(link.spoolDepth == 0)
    }

    func relayedResult(id: String) -> Stanza? {
        var element = Element("iq", namespace: Namespace.componentAccept)
        element[attribute: "type"] = "result"
        element[attribute: "id"] = id
        element[attribute: "from"] = "example.org"
        element[attribute: "to"] = "i1.bot.example.org"
        return Stanza(element)
    }

    @Test func pongsAndBarrierAnswersRelayedFromTheInstanceLinkCountAsThisLinks() throws {
        var link = Machine(jid: "bot.example.org", secret: "s3cret",
                           limits: SessionTimers.Limits(handshakeTimeout: .seconds(20), keepaliveInterval: .seconds(30),
                                                        pingInterval: .seconds(60), pingTimeout: .seconds(20),
                                                        pingIDPrefix: "main-ping-"),
                           reconnectMax: .seconds(60), sendQueue: 10, sendQueueTTL: .seconds(60))
        ready(&link, at: t0)
        guard case .sendPing(let id) = link.due(at: at(60)).session.first else {
            Issue.record("no ping")
            return
        }
        #expect(id.hasPrefix("main-ping-"))
        let unknown = try #require(relayedResult(id: "someone-elses"))
        #expect(link.relayed(unknown, at: at(61)) == nil, "not this link's: the instance link keeps it")
        let pong = try #require(relayedResult(id: id))
        guard case .some(.none) = link.relayed(pong, at: at(61)) else {
            Issue.record("the relayed pong was not taken")
            return
        }
        #expect(link.due(at: at(81)).session.isEmpty, "no timeout after the relayed pong")
        #expect(link.relayed(pong, at: at(82)) == nil, "answered once")

        try link.reserveSpool()
        _ = link.spooled(spooled(1))
        _ = link.takeForWrite()
        let barrierAsked = link.barrierIfNeeded()
        let barrier = try #require(barrierAsked)
        let answer = try #require(relayedResult(id: barrier))
        let relayed = link.relayed(answer, at: at(83))
        let action = try #require(relayed)
        #expect(confirmedSeqs(action) == [1])
    }

    @Test func shutdownWithABarrierOnItsWayAsksForAnotherForWhatWasWrittenAfterIt() throws {
        var link = machine()
        ready(&link, at: t0)
        try link.reserveSpool()
        _ = link.spooled(spooled(1))
        _ = link.takeForWrite()
        let firstAsked = link.barrierIfNeeded()
        let first = try #require(firstAsked)
        try link.reserveSpool()
        _ = link.spooled(spooled(2))
        let last = link.close()
        #expect(last.items.map(\.xml) == ["s2"] && last.barrier == nil, "one barrier at a time")
        let firstAnswer = try #require(relayedResult(id: first))
        let relayed = link.relayed(firstAnswer, at: at(1))
        let confirmedFirst = try #require(relayed, "an answer relayed while closing still counts")
        guard case .confirmed(let seqs, more: true) = confirmedFirst else {
            Issue.record("expected a confirmation asking for the next barrier, got \(confirmedFirst)")
            return
        }
        #expect(seqs == [1])
        let nextAsked = link.barrierIfNeeded()
        let next = try #require(nextAsked, "closing still asks for the barrier that confirms s2")
        #expect(confirmedSeqs(link.received(iqResult(id: next, from: "example.org"), at: at(2))) == [2])
        #expect(link.unconfirmed.isEmpty)
    }

    @Test func oneBarrierAtATimeAndItsAnswerAsksForTheNextWhenMoreWereWritten() throws {
        var link = machine()
        ready(&link, at: t0)
        for seq in Int64(1)...3 {
            try link.reserveSpool()
            _ = link.spooled(spooled(seq))
        }
        _ = link.takeForWrite()
        let firstAsked = link.barrierIfNeeded()
        let first = try #require(firstAsked)
        try link.reserveSpool()
        _ = link.spooled(spooled(4))
        let meanwhile = link.takeForWrite()
        #expect(meanwhile.items.map(\.xml) == ["s4"])
        let another = link.barrierIfNeeded()
        #expect(!meanwhile.wantsBarrier && another == nil, "the barrier in flight is answered first")
        let firstAnswer = link.received(iqResult(id: first, from: "example.org"), at: at(1))
        guard case .confirmed(let seqs, more: true) = firstAnswer else {
            Issue.record("expected a confirmation asking for the next barrier, got \(firstAnswer)")
            return
        }
        #expect(seqs == [1, 2, 3])
        let nextAsked = link.barrierIfNeeded()
        let next = try #require(nextAsked)
        let secondAnswer = link.received(iqResult(id: next, from: "example.org"), at: at(1))
        guard case .confirmed(let rest, more: false) = secondAnswer else {
            Issue.record("expected the last confirmation, got \(secondAnswer)")
            return
        }
        #expect(rest == [4])
        let stale = link.received(iqResult(id: first, from: "example.org"), at: at(1))
        #expect(confirmedSeqs(stale) == nil, "a barrier answered twice is just an iq result")
    }

    @Test func spooledStanzasNotConfirmedOnALostStreamGoFirstOnTheNext() throws {
        var link = machine()
        ready(&link, at: t0)
        try link.reserveSpool()
        _ = link.spooled(spooled(1))
        _ = link.takeForWrite()
        _ = try link.enqueue(item("new", deadline: at(60)))
        let end = link.sessionEnded(ComponentLinkError(.closedByPeer, "gone"), at: at(1), jitter: 1)
        #expect(end.resent == 1)
        ready(&link, at: at(3))
        let batch = link.takeForWrite()
        #expect(batch.items.map(\.xml) == ["s1", "new"])
        #expect(batch.wantsBarrier)
    }

    @Test func spooledStanzasNeverExpireAndTheSpoolIsBoundedBySendQueue() throws {
        var link = machine(queue: 2, ttl: .seconds(1))
        try link.reserveSpool()
        _ = link.spooled(spooled(1))
        try link.reserveSpool()
        #expect(throws: SendError(.queueFull, "the spool is full (2 stanzas not yet confirmed by the server)")) {
            try link.reserveSpool()
        }
        link.spoolFailed()
        let due = link.due(at: at(3600))
        #expect(due.expired.isEmpty, "accepted for good: no send_queue_ttl")
        let writeNow = link.adopted([spooled(7), spooled(8)])
        #expect(!writeNow, "adopted while down: queued, nothing to write yet")
        #expect(link.spoolDepth == 3, "adopted entries are held beyond the bound; they were accepted before")
    }

    // MARK: Shutdown

    @Test func shutdownWritesWhatIsQueuedAndThenRefusesNewStanzas() throws {
        var link = machine()
        _ = try link.enqueue(item("1", deadline: at(60)))
        ready(&link, at: t0)
        _ = try link.enqueue(item("2", deadline: at(60)))
        #expect(link.takeForWrite().items.map(\.xml) == ["1", "2"])
        _ = try link.enqueue(item("3", deadline: at(60)))
        #expect(link.close().items.map(\.xml) == ["3"], "flushed before the stream closes")
        #expect(link.phase == .closing)
        #expect(link.nextSessionDeadline == nil, "no keepalive or ping while closing")
        #expect(throws: SendError.self) { try link.enqueue(item("4", deadline: at(60))) }
        _ = try? link.request(item("<iq/>", deadline: at(60), iq: "x"), id: "x",
                              iq: .init(deadline: at(60), to: nil, replier: "x"), maxPending: 10)
        #expect(link.queue.pending.isEmpty, "nothing registered after shutdown began")
    }

    @Test func shutdownWhileDownHandsEverythingBackForItsWaiters() throws {
        var link = machine()
        _ = try link.enqueue(item("1", deadline: at(60), waiter: "w"))
        _ = try link.request(item("<iq/>", deadline: at(60), iq: "i"), id: "i",
                             iq: .init(deadline: at(60), to: nil, replier: "i"), maxPending: 10)
        #expect(link.close().isEmpty, "nothing is written while the link is down")
        let (items, iqs) = link.closed()
        #expect(items.map(\.xml) == ["1", "<iq/>"])
        #expect(items.compactMap(\.waiter) == ["w"])
        #expect(iqs.map(\.replier) == ["i"])
        #expect(link.phase == .closed)
        link.connecting()
        #expect(link.phase == .closed, "a closed link stays closed")
    }
}
