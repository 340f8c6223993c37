import Logging
import Testing
import XMPPCore

@testable import ComponentLink

/// The session loop performs what `SessionTimers` has due, from its one timer, against a fake server (the rules
/// themselves are tested on a fake clock in `SessionTimersTests`).
@Suite(.timeLimit(.minutes(1))) struct ComponentConnectionTimerTests {
    func settings(port: Int) -> ComponentSettings {
        var settings = ComponentSettings(jid: "bot.example.org", host: "127.0.0.1", port: port, secret: "s")
        settings.reconnectMax = .seconds(60)
        return settings
    }

    @Test func aServerThatNeverAnswersTheHeaderIsLeftAtTheHandshakeTimeout() async throws {
        let server = try await FakeComponentServer.start(stanzas: 0, bodyBytes: 0, answersHeader: false)
        var settings = settings(port: server.port)
        settings.handshakeTimeout = .milliseconds(300)
        let link = ComponentConnection(settings: settings, logger: Logger(label: "test"))
        let running = Task { try await link.run() }
        await server.linkClosed()
        #expect(server.received.contains("<stream:stream"))
        #expect(!server.received.contains("<handshake>"))
        running.cancel()
        _ = try? await running.value
        await server.close()
    }

    @Test func anUnansweredPingEndsTheSessionWithConnectionTimeout() async throws {
        let server = try await FakeComponentServer.start(stanzas: 0, bodyBytes: 0)
        var settings = settings(port: server.port)
        settings.pingInterval = .milliseconds(300)
        settings.pingTimeout = .milliseconds(300)
        let link = ComponentConnection(settings: settings, logger: Logger(label: "test"))
        let running = Task { try await link.run() }
        await server.linkClosed()
        #expect(server.received.contains("urn:xmpp:ping"))
        #expect(server.received.contains("stanzad-ping-1"))
        #expect(server.received.contains("<connection-timeout"))
        running.cancel()
        _ = try? await running.value
        await server.close()
    }
}
