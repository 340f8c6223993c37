import Testing

@testable import ComponentLink

private let refused = ComponentLinkError(.connectFailed, "cannot connect to 127.0.0.1:5347: connection refused")
private let notAuthorized = ComponentLinkError(.streamError, condition: "not-authorized", "Given token does not match calculated token")

/// Walks the schedule on a fake clock: each failure happens when the previous delay has passed.
private func delays(
    _ schedule: inout ReconnectSchedule, failing error: ComponentLinkError, from start: ContinuousClock.Instant,
    for span: Duration, jitter: Double = 1.0
) -> (delays: [Duration], end: ContinuousClock.Instant) {
    var now = start
    var result: [Duration] = []
    while now - start < span {
        let delay = schedule.delay(after: error, at: now, jitter: jitter)
        result.append(delay)
        now += delay
    }
    return (result, now)
}

@Suite struct ReconnectScheduleTests {
    @Test func aRefusedServerIsRetriedAboutEverySecondForFiveMinutes() {
        var schedule = ReconnectSchedule(cap: .seconds(60))
        let start = ContinuousClock.now
        let (early, _) = delays(&schedule, failing: refused, from: start, for: .seconds(299))
        #expect(early.allSatisfy { $0 == .seconds(1) }, "one attempt a second: \(Set(early))")
        #expect(early.count == 299)
        // With jitter the delay stays within 0.8…1.2 s, one attempt a second on average.
        var jittered = ReconnectSchedule(cap: .seconds(60))
        #expect(jittered.delay(after: refused, at: start, jitter: 0.8) == .milliseconds(800))
        #expect(jittered.delay(after: refused, at: start + .seconds(1), jitter: 1.2) == .milliseconds(1200))
        #expect(jittered.delay(after: refused, at: start + .seconds(2), jitter: 3) == .milliseconds(1200), "jitter is clamped")
    }

    @Test func anOutageOlderThanFiveMinutesBacksOffExponentiallyToTheCap() {
        var schedule = ReconnectSchedule(cap: .seconds(60))
        let start = ContinuousClock.now
        let (_, later) = delays(&schedule, failing: refused, from: start, for: .seconds(300))
        let (slow, _) = delays(&schedule, failing: refused, from: later, for: .seconds(400))
        #expect(Array(slow.prefix(8)) == [1, 2, 4, 8, 16, 32, 60, 60].map { Duration.seconds($0) })
        #expect(slow.allSatisfy { $0 <= .seconds(60) })
    }

    @Test func theLinkComingBackStartsANewOutage() {
        var schedule = ReconnectSchedule(cap: .seconds(60))
        let start = ContinuousClock.now
        let (_, later) = delays(&schedule, failing: refused, from: start, for: .seconds(600))
        #expect(schedule.delay(after: refused, at: later, jitter: 1) == .seconds(60))
        schedule.linkUp()
        #expect(schedule.delay(after: refused, at: later + .seconds(100), jitter: 1) == .seconds(1))
        #expect(schedule.outageStart == later + .seconds(100))
    }

    @Test func configurationErrorsKeepTheCappedExponentialBackoff() {
        var schedule = ReconnectSchedule(cap: .seconds(10))
        let (slow, _) = delays(&schedule, failing: notAuthorized, from: .now, for: .seconds(60))
        #expect(Array(slow.prefix(6)) == [1, 2, 4, 8, 10, 10].map { Duration.seconds($0) })
        // Jitter never takes it under 1 s or over the cap.
        var jittered = ReconnectSchedule(cap: .seconds(10))
        #expect(jittered.delay(after: notAuthorized, at: .now, jitter: 0.8) == .seconds(1))
        for _ in 0..<10 { _ = jittered.delay(after: notAuthorized, at: .now, jitter: 1.2) }
        #expect(jittered.delay(after: notAuthorized, at: .now, jitter: 1.2) == .seconds(10))
    }

    @Test func whichFailuresAreTransient() {
        #expect(ReconnectSchedule.isTransient(refused))
        #expect(ReconnectSchedule.isTransient(ComponentLinkError(.closedByPeer, "connection closed")))
        #expect(ReconnectSchedule.isTransient(ComponentLinkError(.pingTimeout, "no pong")))
        #expect(ReconnectSchedule.isTransient(ComponentLinkError(.streamError, condition: "system-shutdown", "bye")))
        #expect(!ReconnectSchedule.isTransient(notAuthorized))
        #expect(!ReconnectSchedule.isTransient(ComponentLinkError(.streamError, condition: "host-unknown", "no such host")))
        #expect(!ReconnectSchedule.isTransient(ComponentLinkError(.badInput, "not-well-formed")))
    }

    @Test func aCapUnderOneSecondMeansOneSecond() {
        var schedule = ReconnectSchedule(cap: .milliseconds(10))
        #expect(schedule.delay(after: refused, at: .now, jitter: 1) == .seconds(1))
        #expect(schedule.delay(after: notAuthorized, at: .now, jitter: 1.2) == .seconds(1))
    }

    @Test func settingsParentDomain() {
        #expect(ComponentSettings.parentDomain(of: "bot.example.org") == "example.org")
        #expect(ComponentSettings.parentDomain(of: "localhost") == "localhost")
    }
}
