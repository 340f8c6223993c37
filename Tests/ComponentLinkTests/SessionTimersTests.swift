import Testing

@testable import ComponentLink

/// SPEC §11's clock rules on a fake clock: every instant is `start` plus a duration; nothing sleeps.
@Suite struct SessionTimersTests {
    let start = ContinuousClock.now
    let limits = SessionTimers.Limits(
        handshakeTimeout: .seconds(20), keepaliveInterval: .seconds(30), pingInterval: .seconds(60), pingTimeout: .seconds(20))

    func at(_ seconds: Double) -> ContinuousClock.Instant { start + .milliseconds(Int(seconds * 1000)) }

    /// A session whose handshake finished at `start`.
    func ready() -> SessionTimers {
        var timers = SessionTimers(limits: limits, now: start)
        timers.handshakeDone()
        return timers
    }

    @Test func theHandshakeTimesOutAtHandshakeTimeout() {
        var timers = SessionTimers(limits: limits, now: start)
        #expect(timers.nextDeadline == at(20))
        #expect(timers.due(at: at(19.999)) == [])
        // Reads during the handshake (the server's header) do not extend it.
        timers.read(at: at(5))
        #expect(timers.nextDeadline == at(20))
        #expect(timers.due(at: at(20)) == [.handshakeTimedOut])
        #expect(timers.nextDeadline == nil, "a timed-out session has nothing more due")
        #expect(timers.due(at: at(100)) == [])
    }

    @Test func aFinishedHandshakeHasNoHandshakeDeadline() {
        var timers = SessionTimers(limits: limits, now: start)
        timers.read(at: at(1))
        timers.handshakeDone()
        #expect(timers.due(at: at(20)) == [])
        #expect(timers.nextDeadline == at(30), "the keepalive is the next thing due")
    }

    @Test func aKeepaliveGoesOutAfterThirtySecondsWithoutWriting() {
        var timers = ready()
        timers.read(at: at(25))  // reads keep the ping away, not the keepalive
        #expect(timers.nextDeadline == at(30))
        #expect(timers.due(at: at(29.9)) == [])
        #expect(timers.due(at: at(30)) == [.sendKeepalive])
        #expect(timers.nextDeadline == at(60), "the next keepalive is 30 s after this one")
        #expect(timers.due(at: at(30)) == [], "one keepalive per idle period")
    }

    @Test func aWriteMovesTheKeepaliveLater() {
        var timers = ready()
        timers.read(at: at(28))
        timers.wrote(at: at(20))
        #expect(timers.nextDeadline == at(50))
        #expect(timers.due(at: at(30)) == [])
        #expect(timers.due(at: at(50)) == [.sendKeepalive])
    }

    @Test func aPingGoesOutAfterPingIntervalOfReadSilence() {
        var timers = ready()
        for second in stride(from: 25.0, through: 55, by: 30) { timers.wrote(at: at(second)) }  // no keepalives
        #expect(timers.nextDeadline == at(60))
        #expect(timers.due(at: at(59.9)) == [])
        #expect(timers.due(at: at(60)) == [.sendPing(id: "stanzad-ping-1")], "a ping counts as a write: no keepalive with it")
        #expect(timers.state == .awaitingPong(id: "stanzad-ping-1", sentAt: at(60)))
    }

    @Test func aReadBeforeThePingDeadlineCancelsThePing() {
        var timers = ready()
        timers.wrote(at: at(55))
        timers.read(at: at(59))
        #expect(timers.due(at: at(60)) == [])
        #expect(timers.nextDeadline == at(85), "the keepalive (55 + 30) comes before the ping (59 + 60)")
        timers.wrote(at: at(85))
        #expect(timers.nextDeadline == at(115), "keepalive again (85 + 30)")
        #expect(timers.due(at: at(118.9)) == [.sendKeepalive])
        #expect(timers.nextDeadline == at(119), "the ping comes 60 s after the last read, not after the start")
        #expect(timers.due(at: at(119)) == [.sendPing(id: "stanzad-ping-1")])
    }

    @Test func noReplyToThePingWithinPingTimeoutClosesTheSession() {
        var timers = ready()
        timers.wrote(at: at(50))
        #expect(timers.due(at: at(60)) == [.sendPing(id: "stanzad-ping-1")])
        // Other traffic does not count as the reply.
        timers.read(at: at(70))
        let otherReply = timers.pong(id: "someone-else")
        #expect(otherReply == false)
        #expect(timers.nextDeadline == at(80))
        #expect(timers.due(at: at(79.9)) == [])
        #expect(timers.due(at: at(80)) == [.pingTimedOut])
        #expect(timers.nextDeadline == nil)
    }

    @Test func thePongEndsTheWaitAndThePingCycleStartsAgain() {
        var timers = ready()
        #expect(timers.due(at: at(60)) == [.sendPing(id: "stanzad-ping-1")])
        timers.read(at: at(61))
        let pong = timers.pong(id: "stanzad-ping-1")
        #expect(pong)
        #expect(timers.state == .ready)
        #expect(timers.due(at: at(80)) == [], "the ping timeout no longer applies")
        #expect(timers.nextDeadline == at(90), "keepalive: 30 s after the ping was written")
        let second = timers.pong(id: "stanzad-ping-1")
        #expect(second == false, "a second reply is not a pong")
        timers.wrote(at: at(110))
        #expect(timers.due(at: at(121)) == [.sendPing(id: "stanzad-ping-2")])
    }

    @Test func whileTheLinkHoldsOffReadingNoPingGoesOutAndTheOutstandingOneWaits() {
        var timers = ready()
        timers.wrote(at: at(50))
        #expect(timers.due(at: at(60)) == [.sendPing(id: "stanzad-ping-1")])
        // The router falls behind at 70 s: the pong may sit unread in the socket.
        timers.readingPaused(at: at(79))
        #expect(timers.due(at: at(80)) == [], "no ping timeout while stanzad itself does not read")
        #expect(timers.nextDeadline == at(90), "keepalive (60 + 30) is still due")
        #expect(timers.due(at: at(90)) == [.sendKeepalive])
        #expect(timers.due(at: at(99)) == [.pingTimedOut], "once reading resumes, the pong has ping_timeout again")
    }

    @Test func withoutAPingIntervalOnlyTheKeepaliveHoldsTheLink() {
        var timers = SessionTimers(limits: .init(handshakeTimeout: .seconds(20), keepaliveInterval: .seconds(30), pingInterval: nil, pingTimeout: .seconds(20)), now: start)
        timers.handshakeDone()
        #expect(timers.due(at: at(600)) == [.sendKeepalive])
        #expect(timers.nextDeadline == at(630))
    }

    @Test func aClosedSessionHasNothingDue() {
        var timers = ready()
        timers.close()
        #expect(timers.nextDeadline == nil)
        #expect(timers.due(at: at(1000)) == [])
    }
}
