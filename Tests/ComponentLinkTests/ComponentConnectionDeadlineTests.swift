import Logging
import Testing
import XMPPCore

@testable import ComponentLink

/// Deadlines while the link is down. The connection is never run here: no server, no session loop, no reconnect
/// loop; only the deadline timer can answer the waiters.
@Suite(.timeLimit(.minutes(1))) struct ComponentConnectionDeadlineTests {
    func connection(ttl: Duration = .seconds(60)) -> ComponentConnection {
        var settings = ComponentSettings(jid: "bot.example.org", host: "127.0.0.1", port: 1, secret: "x")
        settings.sendQueueTTL = ttl
        return ComponentConnection(settings: settings, logger: Logger(label: "test"))
    }

    func message() -> Stanza {
        Stanza(kind: .message, type: "chat", from: "bot.example.org", to: "alice@example.org")
    }

    func ping(_ id: String) -> Stanza {
        var iq = Stanza(kind: .iq, type: "get", id: id, from: "bot.example.org", to: "example.org")
        iq.element.append(Element("ping", namespace: "urn:xmpp:ping"))
        return iq
    }

    /// Runs `body` and returns how long it took and what it threw.
    func timed(_ body: () async throws -> Void) async -> (Duration, SendError?) {
        let start = ContinuousClock.now
        do {
            try await body()
            return (.now - start, nil)
        } catch {
            return (.now - start, error as? SendError ?? SendError(.unserializable, "unexpected \(error)"))
        }
    }

    @Test func aSenderWaitingForADownLinkGetsExpiredAtSendWait() async {
        let link = connection()
        let (elapsed, error) = await timed { try await link.sendAndWait(message(), wait: .milliseconds(300)) }
        #expect(error?.code == .expired)
        #expect(elapsed >= .milliseconds(300) && elapsed < .seconds(2), "answered after \(elapsed)")
        #expect(link.backlog == (0, 0))
    }

    @Test func anIqWhileTheLinkIsDownTimesOutAtItsTimeout() async {
        let link = connection()
        let (elapsed, error) = await timed { _ = try await link.request(ping("p1"), timeout: .milliseconds(300)) }
        #expect(error?.code == .timeout, "a timeout (504), not a queue expiry")
        #expect(elapsed >= .milliseconds(300) && elapsed < .seconds(2), "answered after \(elapsed)")
        #expect(link.backlog == (0, 0))
    }

    @Test func aQueuedStanzaExpiresAtTheQueueTTLWithoutAnotherEnqueue() async throws {
        let link = connection(ttl: .milliseconds(200))
        let start = ContinuousClock.now
        try link.send(message())
        #expect(link.backlog == (1, 0))
        // Nothing else happens: only the deadline can empty the queue.
        while link.backlog.queued > 0 && ContinuousClock.now - start < .seconds(3) { try await Task.sleep(for: .milliseconds(5)) }
        let elapsed = ContinuousClock.now - start
        #expect(link.backlog == (0, 0))
        #expect(elapsed >= .milliseconds(200) && elapsed < .seconds(1), "expired after \(elapsed)")
    }

    @Test func earlierDeadlinesArrivingLaterStillFireOnTime() async {
        let link = connection()
        async let long: (Duration, SendError?) = timed { try await link.sendAndWait(message(), wait: .seconds(3)) }
        // Registered after the 3 s one: the timer must be moved earlier for it.
        while link.backlog.queued == 0 { await Task.yield() }
        let (elapsed, error) = await timed { _ = try await link.request(ping("p2"), timeout: .milliseconds(200)) }
        #expect(error?.code == .timeout)
        #expect(elapsed < .seconds(1), "answered after \(elapsed)")
        let (longElapsed, longError) = await long
        #expect(longError?.code == .expired && longElapsed >= .seconds(3))
    }

    @Test func aRequestCancelledBeforeItRegistersIsNotLeftWaiting() async {
        let link = connection()
        let task = Task { () async -> (Duration, SendError?) in
            // Cancelled before `request` runs: its cancellation handler runs before the waiter is registered.
            withUnsafeCurrentTask { $0?.cancel() }
            return await timed { _ = try await link.request(ping("p3"), timeout: .seconds(60)) }
        }
        let (elapsed, error) = await task.value
        #expect(error != nil)
        #expect(elapsed < .seconds(1), "answered after \(elapsed)")
        #expect(link.backlog == (0, 0), "nothing left registered")
    }

    @Test func aSenderCancelledBeforeItQueuesIsNotLeftWaiting() async {
        let link = connection()
        let task = Task { () async -> (Duration, SendError?) in
            withUnsafeCurrentTask { $0?.cancel() }
            return await timed { try await link.sendAndWait(message(), wait: .seconds(60)) }
        }
        let (elapsed, error) = await task.value
        #expect(error?.code == .expired)
        #expect(elapsed < .seconds(1), "answered after \(elapsed)")
        #expect(link.backlog == (0, 0), "nothing left queued")
    }

    @Test func cancellingAWaitingRequestAnswersItAndDropsItsStanza() async {
        let link = connection()
        let task = Task { await timed { _ = try await link.request(ping("p4"), timeout: .seconds(60)) } }
        while link.backlog.pendingIQs == 0 { await Task.yield() }
        task.cancel()
        let (elapsed, error) = await task.value
        #expect(error?.code == .timeout && elapsed < .seconds(1))
        #expect(link.backlog == (0, 0))
    }
}
