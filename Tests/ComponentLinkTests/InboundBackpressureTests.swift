import Logging
import NIOCore
import NIOPosix
import Synchronization
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
        #expect(first == .readerWaits, "the link read the whole stream while the router took nothing")
        #expect(link.inboundBudget.outstanding == limit)
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

/// Accepts one component connection, completes the handshake without checking it (unless told not to answer), then
/// writes `stanzas` messages in chunks (each write waits for the channel to become writable again) and records what
/// the link writes until it closes the connection.
final class FakeComponentServer: Sendable {
    let channel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
    let port: Int
    private let written = Latch()
    private let closed = Latch()
    private let text = Mutex("")
    private let task = Mutex<Task<Void, Never>?>(nil)

    private init(channel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>, port: Int) {
        self.channel = channel
        self.port = port
    }

    static func start(stanzas: Int, bodyBytes: Int, answersHeader: Bool = true) async throws -> FakeComponentServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0) { child in
                child.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: child) }
            }
        let server = FakeComponentServer(channel: channel, port: try #require(channel.channel.localAddress?.port))
        server.task.withLock {
            $0 = Task { await server.serve(stanzas: stanzas, bodyBytes: bodyBytes, answersHeader: answersHeader) }
        }
        return server
    }

    var allWritten: Bool { written.isOpen }

    /// Everything the link wrote on the first connection so far.
    var received: String { text.withLock { $0 } }

    /// Returns when every stanza is written.
    func finished() async { await written.wait() }

    /// Returns when the link closed the first connection.
    func linkClosed() async { await closed.wait() }

    func close() async {
        task.withLock { $0?.cancel() }
        try? await channel.channel.close()
    }

    private func serve(stanzas: Int, bodyBytes: Int, answersHeader: Bool) async {
        defer {
            written.open()
            closed.open()
        }
        do {
            try await channel.executeThenClose { clients in
                for try await client in clients {
                    try await client.executeThenClose { inbound, outbound in
                        var iterator = inbound.makeAsyncIterator()
                        func read(until marker: String) async throws {
                            while !received.contains(marker), let bytes = try await iterator.next() {
                                text.withLock { $0 += String(buffer: bytes) }
                            }
                        }
                        try await read(until: "<stream:stream")
                        if answersHeader {
                            try await outbound.write(ByteBuffer(string: "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='bot.example.org'>"))
                            try await read(until: "</handshake>")
                            try await outbound.write(ByteBuffer(string: "<handshake/>"))
                        }
                        let body = String(repeating: "x", count: bodyBytes)
                        var chunk = ""
                        for i in 0..<stanzas {
                            chunk += "<message from='alice@example.org/r' to='bot.example.org' id='m\(i)' type='chat'><body>\(body)</body></message>"
                            if i % 32 == 31 || i == stanzas - 1 {
                                try await outbound.write(ByteBuffer(string: chunk))
                                chunk = ""
                            }
                        }
                        written.open()
                        // Keepalives, pings and the closing tag: read until the link goes away.
                        try await read(until: "\u{0}")
                    }
                    return
                }
            }
        } catch {}
    }
}

/// Opens once; `wait` returns when it is open or the waiting task is cancelled (a test's time limit).
final class Latch: Sendable {
    private let state = Mutex<(open: Bool, waiters: [Int: CheckedContinuation<Void, Never>], next: Int)>((false, [:], 0))

    var isOpen: Bool { state.withLock { $0.open } }

    func open() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.open = true
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async {
        let id = state.withLock { state -> Int in
            state.next += 1
            return state.next
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if state.open || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}
