// A component server for tests of the link's I/O shell: real sockets on loopback, scripted replies.

import Logging
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import ComponentLink

/// Accepts one component connection, completes the handshake without checking it (unless told not to answer), then
/// writes `stanzas` messages in chunks (each write waits for the channel to become writable again) and records what
/// the link writes until it closes the connection.
final class FakeComponentServer: Sendable {
    let channel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
    let port: Int
    private let written = Latch()
    private let closed = Latch()
    private let text = Mutex("")
    /// Why serving ended early, if it did (the link closed the connection, a write failed).
    private let failure = Mutex<String?>(nil)
    private let task = Mutex<Task<Void, Never>?>(nil)
    /// With `stallsAfterHandshake`: opened by `release`, when the server reads again.
    private let released = Latch()

    private init(channel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>, port: Int) {
        self.channel = channel
        self.port = port
    }

    /// `stallsAfterHandshake`: after its handshake (and stanzas) the server reads nothing until `release`, so what
    /// the link writes backs up in TCP.
    /// `lateAfterClose`: once the link writes `</stream:stream>`, the server writes that many more messages (ids
    /// `late0`…), as a server does that had them on their way, then its own close.
    static func start(stanzas: Int, bodyBytes: Int, answersHeader: Bool = true, stallsAfterHandshake: Bool = false,
                      lateAfterClose: Int? = nil)
        async throws -> FakeComponentServer
    {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0) { child in
                child.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: child) }
            }
        let server = FakeComponentServer(channel: channel, port: try #require(channel.channel.localAddress?.port))
        server.task.withLock {
            $0 = Task {
                await server.serve(stanzas: stanzas, bodyBytes: bodyBytes, answersHeader: answersHeader,
                                   stallsAfterHandshake: stallsAfterHandshake, lateAfterClose: lateAfterClose)
            }
        }
        return server
    }

    /// A link to this server (component bot.example.org) on `loop`, running, returned once it is up; cancel the task
    /// to stop it.
    func connectedLink(on loop: any EventLoop, _ configure: (inout ComponentSettings) -> Void = { _ in }) async
        -> (link: ComponentConnection, running: Task<Void, any Error>)
    {
        var settings = ComponentSettings(jid: "bot.example.org", host: "127.0.0.1", port: port, secret: "s")
        configure(&settings)
        let link = ComponentConnection(settings: settings, logger: Logger(label: "test"), group: loop)
        let (events, event) = AsyncStream.makeStream(of: LinkEvent.self)
        link.setLinkObserver { event.yield($0) }
        let running = Task { try await link.run() }
        var observed = events.makeAsyncIterator()
        #expect(await observed.next() == .up)
        return (link, running)
    }

    var allWritten: Bool { written.isOpen }
    /// Set when serving ended with an error before or after writing everything (for failure messages).
    var error: String? { failure.withLock { $0 } }

    /// Everything the link wrote on the first connection so far.
    var received: String { text.withLock { $0 } }
    private let watchers = Mutex<[(marker: String, continuation: CheckedContinuation<Void, Never>)]>([])

    /// Returns once the link has written `marker` (at once if it has).
    func receives(_ marker: String) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = watchers.withLock { watchers -> Bool in
                if received.contains(marker) { return true }
                watchers.append((marker, continuation))
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Records what the link wrote; true when `marker` is in it (searched in the new bytes and just before them).
    private func append(_ bytes: ByteBuffer, lookingFor marker: String) -> Bool {
        let chunk = String(buffer: bytes)
        var found = false
        let due = watchers.withLock { watchers -> [CheckedContinuation<Void, Never>] in
            // A marker may straddle two chunks: the new one is searched with the end of what came before.
            let recent = text.withLock { text in
                defer { text += chunk }
                return String(text.suffix(256)) + chunk
            }
            found = recent.contains(marker)
            let due = watchers.filter { recent.contains($0.marker) }.map(\.continuation)
            watchers.removeAll { recent.contains($0.marker) }
            return due
        }
        for continuation in due { continuation.resume() }
        return found
    }

    /// Returns when every stanza is written.
    func finished() async { await written.wait() }

    /// Returns when the link closed the first connection.
    func linkClosed() async { await closed.wait() }

    /// The stalled server reads again.
    func release() { released.open() }

    func close() async {
        task.withLock { $0?.cancel() }
        try? await channel.channel.close()
    }

    private func serve(stanzas: Int, bodyBytes: Int, answersHeader: Bool, stallsAfterHandshake: Bool, lateAfterClose: Int?) async {
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
                            guard !received.contains(marker) else { return }
                            while let bytes = try await iterator.next() {
                                if append(bytes, lookingFor: marker) { return }
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
                        if stallsAfterHandshake { await released.wait() }
                        if let late = lateAfterClose {
                            try await read(until: "</stream:stream>")
                            let messages = (0..<late).map { "<message from='alice@example.org/r' to='bot.example.org' id='late\($0)' type='chat'><body>late</body></message>" }
                            try await outbound.write(ByteBuffer(string: messages.joined() + "</stream:stream>"))
                        }
                        // Keepalives, pings and the closing tag: read until the link goes away.
                        try await read(until: "\u{0}")
                    }
                    return
                }
            }
        } catch {
            failure.withLock { $0 = "\(error)" }
        }
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
