import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing
import XMPPCore

@testable import ComponentLink

/// A thread that hands the link a batch of stanzas inside `LinkWakes.deferring` (the process loop, with a worker's
/// answers) wakes the link's event loop once, when the batch is done, so the batch leaves in one write.
@Suite(.timeLimit(.minutes(1))) struct LinkWakesTests {
    @Test func wakesAskedForInsideRunInOrderOnceTheOutermostBlockReturns() {
        let log = Mutex<[String]>([])
        LinkWakes.deferring {
            LinkWakes.wake { log.withLock { $0.append("a") } }
            LinkWakes.deferring {
                LinkWakes.wake { log.withLock { $0.append("b") } }
            }
            #expect(log.withLock { $0 }.isEmpty, "a wake ran inside the block")
        }
        #expect(log.withLock { $0 } == ["a", "b"])
        LinkWakes.wake { log.withLock { $0.append("c") } }
        #expect(log.withLock { $0 } == ["a", "b", "c"], "outside a block a wake runs at once")
    }

    @Test func stanzasSentInsideTheBlockWaitInTheQueueAndLeaveWhenItEnds() async throws {
        let server = try await FakeComponentServer.start(stanzas: 0, bodyBytes: 0)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let (link, running) = await server.connectedLink(on: loop)

        // On a thread of its own, as the process loop is: after each send a task submitted to the link's loop has
        // run, so a flush asked for at the send (queued before that task) would have taken the queue by then.
        let (inside, outside): ([Int], Int) = await withCheckedContinuation { continuation in
            Thread {
                let inside = LinkWakes.deferring {
                    (0..<3).map { index -> Int in
                        try? link.send(Self.message("w\(index)"))
                        try? loop.submit {}.wait()
                        return link.backlog.queued
                    }
                }
                try? link.send(Self.message("alone"))
                try? loop.submit {}.wait()
                continuation.resume(returning: (inside, link.backlog.queued))
            }.start()
        }
        #expect(inside == [1, 2, 3], "stanzas were taken for writing before the block ended")
        #expect(outside == 0, "the queue did not leave once the block had ended")
        await server.receives("id=\"alone\"")
        let written = server.received
        #expect(written.contains("id=\"w0\"") && written.contains("id=\"w2\""))
        running.cancel()
        _ = try? await running.value
        await server.close()
    }

    static func message(_ id: String) -> Stanza {
        var message = Stanza(kind: .message, type: "chat", id: id, from: "bot.example.org", to: "alice@example.org")
        message.element.append(Element("body", text: "hi"))
        return message
    }
}
