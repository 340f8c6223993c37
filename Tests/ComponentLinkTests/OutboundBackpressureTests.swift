import NIOCore
import NIOPosix
import Testing
import XMPPCore

@testable import ComponentLink

/// A server that stops reading: the link writes what the socket takes, then keeps stanzas in its send queue, which
/// is bounded by `send_queue` (and `send_queue_ttl`), instead of piling them up in the channel's buffer without end;
/// once the server reads again, the queue is written.
@Suite(.timeLimit(.minutes(1))) struct OutboundBackpressureTests {
    @Test func aServerThatStopsReadingFillsTheSendQueueNotTheChannelsBuffer() async throws {
        let server = try await FakeComponentServer.start(stanzas: 0, bodyBytes: 0, stallsAfterHandshake: true)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let (link, running) = await server.connectedLink(on: loop) { $0.sendQueue = 100 }

        // 2,000 stanzas of 16 KiB (32 MB) are far more than loopback's socket buffers hold. After each one the loop
        // has written what it could (its flush was scheduled before this no-op task).
        let body = String(repeating: "x", count: 16_384)
        var accepted = 0
        var refusal: SendError?
        for index in 0..<2000 {
            var message = Stanza(kind: .message, type: "chat", id: "o\(index)", from: "bot.example.org", to: "alice@example.org")
            message.element.append(Element("body", text: body))
            do {
                try link.send(message)
            } catch {
                refusal = error
                break
            }
            accepted += 1
            try await loop.submit {}.get()
        }
        #expect(refusal?.code == .queueFull, "accepted \(accepted) stanzas of 16 KiB while the server read nothing")
        #expect(accepted < 2000)
        #expect(link.backlog.queued == 100)

        // Once the server reads again, what waited in the queue is written without another send.
        server.release()
        await server.receives("id=\"o\(accepted - 1)\"")
        #expect(link.backlog.queued == 0)
        running.cancel()
        _ = try? await running.value
        await server.close()
    }
}
