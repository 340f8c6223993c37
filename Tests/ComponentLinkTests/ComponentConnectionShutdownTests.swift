import Logging
import NIOPosix
import ServiceLifecycle
import Synchronization
import Testing
import XMPPCore

@testable import ComponentLink

/// Shutdown closes our side of the stream; what the server sent before it saw that is still read and handed on.
@Suite(.timeLimit(.minutes(1))) struct ComponentConnectionShutdownTests {
    @Test func stanzasTheServerSentBeforeItSawOurCloseAreHandedOn() async throws {
        let server = try await FakeComponentServer.start(stanzas: 0, bodyBytes: 0, lateAfterClose: 3)
        var settings = ComponentSettings(jid: "bot.example.org", host: "127.0.0.1", port: server.port, secret: "s")
        settings.reconnectMax = .seconds(60)
        let link = ComponentConnection(settings: settings, logger: Logger(label: "test"), group: MultiThreadedEventLoopGroup.singleton.next())
        let (events, event) = AsyncStream.makeStream(of: LinkEvent.self)
        link.setLinkObserver { event.yield($0) }
        // As the router does when it stops: everything read from now on is left to `leftover`.
        let left = Mutex<[String]>([])
        link.endInbound { stanza in left.withLock { $0.append(stanza.id ?? "") } }
        let group = ServiceGroup(configuration: .init(services: [.init(service: link)], logger: Logger(label: "test")))
        let running = Task { try await group.run() }
        var observed = events.makeAsyncIterator()
        #expect(await observed.next() == .up)
        await group.triggerGracefulShutdown()
        try await running.value
        #expect(server.received.contains("</stream:stream>"))
        #expect(left.withLock { $0 } == ["late0", "late1", "late2"], "read after our close, not dropped")
        await server.close()
    }

    /// A stream that never came up (the server has not answered our header) has nothing to wait for at shutdown:
    /// the link ends at once instead of waiting for the server's close.
    @Test func aStreamNotUpYetEndsAtShutdownWithoutWaitingForTheServer() async throws {
        let server = try await FakeComponentServer.start(stanzas: 0, bodyBytes: 0, answersHeader: false)
        let lines = LinesLogged()
        var logger = Logger(label: "test") { _ in lines }
        logger.logLevel = .debug
        let settings = ComponentSettings(jid: "bot.example.org", host: "127.0.0.1", port: server.port, secret: "s")
        let link = ComponentConnection(settings: settings, logger: logger, group: MultiThreadedEventLoopGroup.singleton.next())
        let group = ServiceGroup(configuration: .init(services: [.init(service: link)], logger: Logger(label: "test")))
        let running = Task { try await group.run() }
        while !server.received.contains("<stream:stream") { try await Task.sleep(for: .milliseconds(5)) }
        await group.triggerGracefulShutdown()
        try await running.value
        #expect(!lines.messages.contains { $0.contains("did not close its side") }, "\(lines.messages)")
        await server.close()
    }
}

/// Keeps the messages logged through it (tests read them).
final class LinesLogged: LogHandler, Sendable {
    private let lines = Mutex<[String]>([])
    var messages: [String] { lines.withLock { $0 } }

    func log(event: LogEvent) {
        lines.withLock { $0.append("\(event.message)") }
    }

    subscript(metadataKey _: String) -> Logger.Metadata.Value? {
        get { nil }
        set {}
    }

    var metadata: Logger.Metadata {
        get { [:] }
        set {}
    }

    var logLevel: Logger.Level {
        get { .trace }
        set {}
    }
}
