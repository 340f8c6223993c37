import Logging
import NIOPosix
import Testing
import XMPPCore

@testable import ComponentLink

/// A stalled router: the link reads up to `inboundBacklog` stanzas, then stops reading the socket until the router
/// takes some, so the server's writes back up in TCP instead of stanzad's memory.
@Suite(.timeLimit(.minutes(1))) struct InboundBackpressureTests {
    @Test func theReaderWaitsAtTheLimitAndResumesWhenTheRouterTakesStanzas() async {
        let budget = InboundBudget(limit: 4)
        for _ in 0..<4 { #expect(await budget.take()) }
        let reader = Task { await budget.take() }
        await budget.readerWaits()
        #expect(budget.outstanding == 4)
        budget.give()
        #expect(budget.isWaiting, "one unit back is not enough: the reader resumes at half the limit")
        budget.give()
        #expect(await reader.value)
        #expect(budget.outstanding == 3, "two given back, one taken by the reader that waited")
    }

    /// A take-over's hand-over waits for the router to take the last stanzas the link read before it lets the
    /// router stop; a budget that never drains ends the wait at its timeout.
    @Test func drainedReturnsWhenEveryEventIsHandledOrFalseAtItsTimeout() async {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let budget = InboundBudget(limit: 4)
        #expect(await budget.drained(timeout: .seconds(5), on: loop), "nothing outstanding: at once")
        for _ in 0..<2 { #expect(await budget.take()) }
        let waiting = Task { await budget.drained(timeout: .seconds(30), on: loop) }
        budget.give()
        budget.give()
        #expect(await waiting.value)
        #expect(await budget.take())
        #expect(await budget.drained(timeout: .milliseconds(50), on: loop) == false)
        budget.give()
        #expect(await budget.drained(timeout: .seconds(5), on: loop))
    }

    @Test func aCancelledReaderTakesNothing() async {
        let budget = InboundBudget(limit: 1)
        #expect(await budget.take())
        let reader = Task { await budget.take() }
        await budget.readerWaits()
        reader.cancel()
        #expect(await reader.value == false)
        #expect(budget.outstanding == 1)
        budget.give()
        #expect(budget.outstanding == 0)
    }

    /// 12,000 stanzas of 2 KB (24 MB, more than the loopback socket buffers hold) against a link whose router
    /// takes nothing: the link holds at most `inboundBacklog` of them and the server cannot finish writing; once
    /// the router takes them, every stanza arrives, in order.
    @Test func aStalledRouterStopsTheLinkReadingAndEveryStanzaArrivesOnceItDrains() async throws {
        let count = 12_000
        let limit = 100
        let server = try await FakeComponentServer.start(stanzas: count, bodyBytes: 2048)
        var settings = ComponentSettings(jid: "bot.example.org", host: "127.0.0.1", port: server.port, secret: "s")
        settings.inboundBacklog = limit
        let link = ComponentConnection(settings: settings, logger: Logger(label: "test"))
        let running = Task { try await link.run() }

        // Whichever comes first: the link's reader waiting for the router, or the server writing everything (which
        // it can only do when the link reads without bound).
        enum First { case readerWaits, serverDone }
        let (events, event) = AsyncStream.makeStream(of: First.self)
        // Not awaited: the one that loses may never finish (the reader never waits once the router takes stanzas).
        Task { await link.inboundBudget.readerWaits(); event.yield(.readerWaits) }
        Task { await server.finished(); event.yield(.serverDone) }
        var firstEvent = events.makeAsyncIterator()
        let first = await firstEvent.next()
        #expect(first == .readerWaits, "the link read the whole stream while the router took nothing (server: \(server.error ?? "no error"), link: \(link.lastError.map { "\($0)" } ?? "no error"))")
        // The reader stopped at the limit. Of the units then outstanding, the stream header's and the handshake's
        // (taken without waiting) may have come back since, as the session loop handled them.
        #expect((limit - 2)...limit ~= link.inboundBudget.outstanding, "outstanding: \(link.inboundBudget.outstanding)")
        #expect(server.allWritten == false, "the server's writes back up while the router takes nothing")

        var received = 0
        var maxBacklog = 0
        for await stanza in link.inbound {
            maxBacklog = max(maxBacklog, link.inboundBudget.outstanding)
            #expect(stanza.id == "m\(received)")
            received += 1
            if received == count { break }
        }
        #expect(received == count)
        #expect(maxBacklog <= limit)
        await server.finished()
        #expect(server.allWritten)
        running.cancel()
        _ = try? await running.value
        await server.close()
    }

    /// A router still `inboundBacklog` behind (from an earlier session) does not keep a new session from its
    /// handshake: the link comes up and sends.
    @Test func theHandshakeDoesNotWaitForABehindRouter() async throws {
        let server = try await FakeComponentServer.start(stanzas: 0, bodyBytes: 0)
        var settings = ComponentSettings(jid: "bot.example.org", host: "127.0.0.1", port: server.port, secret: "s")
        settings.inboundBacklog = 10
        let link = ComponentConnection(settings: settings, logger: Logger(label: "test"))
        for _ in 0..<10 { link.inboundBudget.takeNow() }
        let running = Task { try await link.run() }
        let message = Stanza(kind: .message, type: "chat", from: "bot.example.org", to: "alice@example.org")
        await #expect(throws: Never.self) { try await link.sendAndWait(message, wait: .seconds(15)) }
        running.cancel()
        _ = try? await running.value
        await server.close()
    }
}
