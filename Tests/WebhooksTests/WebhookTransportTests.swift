// The two webhook transports (our plain HTTP/1.1 client for http:// and async-http-client, which https:// uses)
// against one scripted local server: both must report the same result for the same exchange.

import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Routing
import Testing
import XMPPCore

@testable import Webhooks

/// A scripted HTTP/1.1 server speaking raw bytes, so it can misbehave on purpose. The request path picks the
/// answer; it counts connections and requests.
private final class ScriptedServer: Sendable {
    let channel: any Channel
    let connections = NIOLockedValueBox(0)
    let requests = NIOLockedValueBox<[String]>([])
    /// The Stanzad-Delivery header of each request ("" without one).
    let deliveries = NIOLockedValueBox<[String]>([])
    /// One element per connection the other side closed.
    let closes: AsyncStream<Void>
    let closed: AsyncStream<Void>.Continuation

    var port: Int { channel.localAddress?.port ?? 0 }

    init() async throws {
        (closes, closed) = AsyncStream.makeStream()
        let box = NIOLockedValueBox<ScriptedServer?>(nil)
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Connection(server: box))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        box.withLockedValue { $0 = self }
    }

    func stop() async {
        try? await channel.close()
    }

    private final class Connection: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let server: NIOLockedValueBox<ScriptedServer?>
        var buffer = ByteBuffer()
        var served = 0

        init(server: NIOLockedValueBox<ScriptedServer?>) {
            self.server = server
        }

        func channelActive(context: ChannelHandlerContext) {
            server.withLockedValue { $0 }?.connections.withLockedValue { $0 += 1 }
        }

        func channelInactive(context: ChannelHandlerContext) {
            server.withLockedValue { $0 }?.closed.yield()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var part = unwrapInboundIn(data)
            buffer.writeBuffer(&part)
            while let text = buffer.getString(at: buffer.readerIndex, length: buffer.readableBytes),
                  let headEnd = text.range(of: "\r\n\r\n") {
                let head = String(text[..<headEnd.lowerBound])
                let length = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                    .flatMap { Int($0.dropFirst(15).trimmingCharacters(in: .whitespaces)) } ?? 0
                let headBytes = text.utf8.distance(from: text.startIndex, to: headEnd.upperBound)
                guard buffer.readableBytes >= headBytes + length else { return }
                buffer.moveReaderIndex(forwardBy: headBytes)
                let body = buffer.readString(length: length) ?? ""
                let path = head.split(separator: " ").dropFirst().first.map(String.init) ?? "/"
                server.withLockedValue { $0 }?.requests.withLockedValue { $0.append(path) }
                let delivery = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("stanzad-delivery:") }
                    .map { $0.dropFirst(17).trimmingCharacters(in: .whitespaces) } ?? ""
                server.withLockedValue { $0 }?.deliveries.withLockedValue { $0.append(delivery) }
                served += 1
                answer(path, body: body, head: head, context: context)
            }
        }

        func answer(_ path: String, body: String, head: String, context: ChannelHandlerContext) {
            func send(_ text: String, close: Bool = false) {
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
                // Only our side closes (FIN): a full close with request bytes still unread (a body sent after the
                // head) resets the connection, and the client may then lose the answer before it reads it.
                if close { context.close(mode: .output, promise: nil) }
            }
            switch path {
            case "/echo":
                send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
            case "/host":
                let line = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("host:") } ?? ""
                let host = line.dropFirst(5).trimmingCharacters(in: .whitespaces)
                send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \(host.utf8.count)\r\n\r\n\(host)")
            case "/busy":
                send("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n")
            case "/big":
                send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + String(repeating: "x", count: 100))
            case "/big-chunked":
                send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nxxxxxxxx\r\n8\r\nxxxxxxxx\r\n0\r\n\r\n")
            case "/until-close":
                send("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", close: true)
            case "/silent":
                break
            case "/hang-up":
                context.close(promise: nil)
            case "/half":
                send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 50\r\n\r\nonly part", close: true)
            case "/extra":
                // More bytes than the Content-Length says: the connection must not be used again.
                send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nokGARBAGE")
            case "/switch":
                send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\nConnection: Upgrade\r\n\r\n")
            case "/second-partial":
                // A later request on the connection gets the start of an answer, then the connection closes: the
                // server may have acted on it, so it must not be sent again.
                if served == 1 {
                    send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
                } else {
                    send("HTTP/1.1 200 OK\r\nContent-", close: true)
                }
            case "/second-dropped":
                // The first request on a connection is answered; a later one on the same connection is dropped, the
                // way a server drops a kept-alive connection it has just timed out.
                if served == 1 {
                    send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
                } else {
                    context.close(promise: nil)
                }
            default:
                send("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            }
        }
    }
}

/// One POST through `client` (plain or async-http-client), its result as text.
private func post(_ url: String, client: WebhookClient, body: String = "hi", headers: [(String, String)] = [],
                  timeout: TimeAmount = .seconds(5), maxBody: Int = 64) async -> String {
    let handler = WebhookHandler(
        settings: WebhookSettings(urlTemplate: url, format: .text, maxBody: maxBody), client: client)
    let request = WebhookRequest(url: url, headers: [("Content-Type", "text/plain")] + headers, body: Array(body.utf8))
    let attempt = await withCheckedContinuation { continuation in
        handler.send(request, timeout: timeout) { continuation.resume(returning: $0) }
    }
    switch attempt {
    case .response(let status, _, let contentType, let retryAfter, let body):
        return "\(status) \(contentType ?? "-") \(retryAfter ?? "-") \(String(decoding: body, as: UTF8.self))"
    case .connectionFailed:
        return "connection failed"
    case .timedOut:
        return "timed out"
    case .bodyTooLarge:
        return "body too large"
    }
}

/// Runs `body` with a fresh scripted server, a client using the plain HTTP transport and the server's base URL,
/// then stops both.
private func withPlainClient(_ body: (ScriptedServer, WebhookClient, String) async throws -> Void) async throws {
    let server = try await ScriptedServer()
    let client = WebhookClient(plainHTTP: true)
    try await body(server, client, "http://127.0.0.1:\(server.port)")
    await client.shutdown()
    await server.stop()
}

@Suite(.serialized) struct WebhookTransportTests {
    static let transports = [true, false]

    @Test(arguments: transports)
    func bothTransportsAgree(plain: Bool) async throws {
        let server = try await ScriptedServer()
        let client = WebhookClient(plainHTTP: plain)
        let base = "http://127.0.0.1:\(server.port)"
        #expect(await post(base + "/echo", client: client, body: "hello") == "200 text/plain - hello")
        #expect(await post(base + "/host", client: client) == "200 text/plain - 127.0.0.1:\(server.port)")
        #expect(await post(base + "/host", client: client, headers: [("Host", "hooks.example")]) == "200 text/plain - hooks.example")
        #expect(await post(base + "/echo", client: client, body: "abc", headers: [("Content-Length", "999")]) == "200 text/plain - abc")
        #expect(await post(base + "/busy", client: client) == "503 - 7 ")
        #expect(await post(base + "/big", client: client) == "body too large")
        #expect(await post(base + "/big-chunked", client: client, maxBody: 10) == "body too large")
        // On a client of its own: async-http-client's pool can hand a request to a connection it is still closing
        // (here the one the oversized answer above ended) and fail it with remoteConnectionClosed, a race of that
        // library's pool; this line is about a body that ends with the connection.
        let fresh = WebhookClient(plainHTTP: plain)
        #expect(await post(base + "/until-close", client: fresh) == "200 text/plain - all of it")
        await fresh.shutdown()
        #expect(await post(base + "/silent", client: client, timeout: .milliseconds(300)) == "timed out")
        #expect(await post(base + "/hang-up", client: client) == "connection failed")
        #expect(await post(base + "/half", client: client) == "connection failed")
        #expect(await post(base + "/echo", client: client, headers: [("X-Bad", "a\r\nInjected: 1")]) == "connection failed")
        await server.stop()
        #expect(await post(base + "/echo", client: client) == "connection failed")
        await client.shutdown()
    }

    @Test func keepAliveReusesOneConnection() async throws {
        try await withPlainClient { server, client, base in
            for number in 0..<20 {
                #expect(await post(base + "/echo", client: client, body: "n\(number)") == "200 text/plain - n\(number)")
            }
            #expect(server.connections.withLockedValue { $0 } == 1)
        }
    }

    /// The connection's one timer: armed for an earlier request's deadline, it still times out a later request on
    /// the same connection whose deadline is earlier, or later, than that one. (Were either left to the wrong
    /// deadline, the test would hang until its time limit.)
    @Test(.timeLimit(.minutes(1))) func aKeptAliveConnectionTimesOutEachRequestAtItsOwnDeadline() async throws {
        try await withPlainClient { server, client, base in
            #expect(await post(base + "/echo", client: client, body: "a", timeout: .seconds(3600)) == "200 text/plain - a")
            #expect(await post(base + "/silent", client: client, timeout: .milliseconds(300)) == "timed out")
            #expect(server.connections.withLockedValue { $0 } == 1, "the second request went on the kept-alive connection")
        }
        try await withPlainClient { server, client, base in
            #expect(await post(base + "/echo", client: client, body: "b", timeout: .milliseconds(200)) == "200 text/plain - b")
            // Past the first request's deadline the timer fires, finds this one not yet late, and waits on for it.
            #expect(await post(base + "/silent", client: client, timeout: .milliseconds(600)) == "timed out")
            #expect(server.connections.withLockedValue { $0 } == 1)
        }
    }

    /// A route that sends `Connection: close` gets a new connection for each request (the server may keep it open).
    @Test func aRequestThatSaysConnectionCloseDoesNotKeepItsConnection() async throws {
        try await withPlainClient { server, client, base in
            for number in 0..<3 {
                #expect(await post(base + "/echo", client: client, body: "c\(number)", headers: [("Connection", "close")])
                    == "200 text/plain - c\(number)")
            }
            #expect(server.connections.withLockedValue { $0 } == 3)
        }
    }

    @Test func aConnectionWithUnaskedBytesIsNotReused() async throws {
        try await withPlainClient { server, client, base in
            #expect(await post(base + "/extra", client: client) == "200 text/plain - ok")
            #expect(await post(base + "/echo", client: client, body: "next") == "200 text/plain - next")
            #expect(server.connections.withLockedValue { $0 } == 2)
        }
    }

    @Test func aPartlyAnsweredRequestIsNotSentAgain() async throws {
        try await withPlainClient { server, client, base in
            #expect(await post(base + "/second-partial", client: client) == "200 text/plain - ok")
            #expect(await post(base + "/second-partial", client: client) == "connection failed")
            #expect(server.requests.withLockedValue { $0 }.count == 2)
        }
    }

    @Test func aProtocolSwitchEndsTheExchange() async throws {
        try await withPlainClient { server, client, base in
            #expect(await post(base + "/switch", client: client) == "101 - - ")
            #expect(await post(base + "/echo", client: client, body: "x") == "200 text/plain - x")
            #expect(server.connections.withLockedValue { $0 } == 2)
        }
    }

    @Test func nothingIsSentAfterShutdown() async throws {
        let server = try await ScriptedServer()
        let client = WebhookClient(plainHTTP: true)
        await client.shutdown()
        #expect(await post("http://127.0.0.1:\(server.port)/echo", client: client) == "connection failed")
        #expect(server.connections.withLockedValue { $0 } == 0)
        await server.stop()
    }

    @Test(.timeLimit(.minutes(1))) func idleConnectionsAreClosed() async throws {
        let server = try await ScriptedServer()
        let client = PlainHTTPClient(group: MultiThreadedEventLoopGroup.singleton, connectTimeout: .seconds(5), idleTimeout: .milliseconds(200))
        let target = try #require(PlainHTTPTarget("http://127.0.0.1:\(server.port)/echo"))
        let attempt = await withCheckedContinuation { continuation in
            client.post(target, headers: [], body: Array("x".utf8), timeout: .seconds(5), maxBody: 10) { continuation.resume(returning: $0) }
        }
        guard case .response(200, _, _, _, _) = attempt else {
            Issue.record("no 200: \(attempt)")
            return
        }
        #expect(client.idleCount == 1)
        // The sweep (every 33 ms here) closes it once it has been idle for 200 ms: the server sees the close.
        var closes = server.closes.makeAsyncIterator()
        await closes.next()
        #expect(client.idleCount == 0)
        client.shutdown()
        await server.stop()
    }

    @Test(arguments: transports)
    func aRequestTheServerReadOnAKeptAliveConnectionAndClosedWithoutAnsweringIsSentOnce(plain: Bool) async throws {
        let server = try await ScriptedServer()
        let client = WebhookClient(plainHTTP: plain)
        let base = "http://127.0.0.1:\(server.port)"
        #expect(await post(base + "/second-dropped", client: client) == "200 text/plain - ok")
        // The server read the second POST and may have acted on it: it must not arrive a second time.
        #expect(await post(base + "/second-dropped", client: client) == "connection failed")
        #expect(server.requests.withLockedValue { $0 }.count == 2, "exactly one POST per request")
        #expect(server.connections.withLockedValue { $0 } == 1)
        await client.shutdown()
        await server.stop()
    }

    // Through the handler (same serialized suite: these servers and clients do not run beside the others).

    static func stanza(_ xml: String) throws -> Stanza {
        try #require(Stanza(try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)[0]))
    }

    static let context = HandlerContext(route: "hook", component: "bot.example.org", logger: Logger(label: "test"))

    @Test(arguments: transports)
    func anIqSetTheServerReadAndDroppedGetsRecipientUnavailableAfterOnePOST(plain: Bool) async throws {
        let server = try await ScriptedServer()
        let client = WebhookClient(plainHTTP: plain)
        let handler = WebhookHandler(
            settings: WebhookSettings(urlTemplate: "http://127.0.0.1:\(server.port)/second-dropped", format: .xml), client: client)
        let prime = try Self.stanza("<message type='chat' id='m1' from='a@example.org/r' to='bot.example.org'><body>hi</body></message>")
        #expect(await handler.handle(prime, context: Self.context).failure == nil)
        let set = try Self.stanza("<iq type='set' id='q1' from='a@example.org/r' to='bot.example.org'><query xmlns='urn:example:deploy'/></iq>")
        let outcome = await handler.handle(set, context: Self.context)
        #expect(outcome.failure?.type == .wait)
        #expect(outcome.failure?.condition == .recipientUnavailable)
        #expect(server.requests.withLockedValue { $0 }.count == 2, "the iq set was POSTed once")
        await client.shutdown()
        await server.stop()
    }

    /// At shutdown a retry still waiting is kept for the next process (with a spool), but not one of a message
    /// from a room: the next process has not joined the room yet, and would answer it as a direct message.
    @Test func aRetryWaitingAtShutdownIsKeptUnlessItCameFromARoom() async throws {
        try await withPlainClient { _, client, base in
            let kept = NIOLockedValueBox<[String]>([])
            client.keepWaitingDeliveries { stanza in
                kept.withLockedValue { $0.append(stanza.id ?? "") }
                return true
            }
            let handler = WebhookHandler(
                settings: WebhookSettings(urlTemplate: base + "/busy", format: .text, retries: 3), client: client)
            let direct = try Self.stanza("<message type='chat' id='d1' from='a@example.org/r' to='bot.example.org'><body>hi</body></message>")
            let fromRoom = try Self.stanza(
                "<message type='groupchat' id='g1' from='den@conference.example.org/ann' to='bot.example.org'><body>hi</body></message>")
            var inRoom = Self.context
            inRoom.room = RoomOrigin(room: "den@conference.example.org", nick: "ann", ownNick: "bot", isGroupchat: true)
            async let directOutcome = handler.handle(direct, context: Self.context)
            async let roomOutcome = handler.handle(fromRoom, context: inRoom)
            // Both wait for their retry (the server said Retry-After: 7).
            while client.retries.count < 2 { try await Task.sleep(for: .milliseconds(5)) }
            handler.shutDown()
            let (directResult, roomResult) = await (directOutcome, roomOutcome)
            #expect(directResult.metadata["kept"] == "spool")
            #expect(roomResult.metadata["kept"] == nil)
            #expect(roomResult.metadata["http_status"] == "503", "the room's stanza ends with its last answer")
            #expect(kept.withLockedValue { $0 } == ["d1"])
        }
    }

    @Test func aMessageOnARouteWithRetriesIsSentAgainWithTheSameDelivery() async throws {
        try await withPlainClient { server, client, base in
            let handler = WebhookHandler(
                settings: WebhookSettings(urlTemplate: base + "/second-dropped", format: .text, retries: 1), client: client)
            let first = try Self.stanza("<message type='chat' id='m1' from='a@example.org/r' to='bot.example.org'><body>hi</body></message>")
            #expect(await handler.handle(first, context: Self.context).failure == nil)
            let second = try Self.stanza("<message type='chat' id='m2' from='a@example.org/r' to='bot.example.org'><body>again</body></message>")
            let outcome = await handler.handle(second, context: Self.context)
            #expect(outcome.failure == nil, "the route's retry got the answer on a new connection")
            let deliveries = server.deliveries.withLockedValue { $0 }
            #expect(deliveries.count == 3)
            #expect(deliveries.count == 3 && deliveries[1] == deliveries[2] && deliveries[0] != deliveries[1])
        }
    }
}

@Suite struct PlainHTTPTargetTests {
    @Test func parsesHostPortAndPath() throws {
        let target = try #require(PlainHTTPTarget("http://127.0.0.1:8080/in/message?to=a%40b#frag"))
        #expect(target.host == "127.0.0.1" && target.port == 8080)
        #expect(target.authority == "127.0.0.1:8080")
        #expect(target.path == "/in/message?to=a%40b")
        let bare = try #require(PlainHTTPTarget("HTTP://example.org"))
        #expect(bare.host == "example.org" && bare.port == 80 && bare.path == "/")
        #expect(PlainHTTPTarget("http://h?x=1")?.path == "/?x=1")
        let v6 = try #require(PlainHTTPTarget("http://[::1]:9/x"))
        #expect(v6.host == "::1" && v6.port == 9 && v6.authority == "[::1]:9")
    }

    @Test(arguments: ["https://example.org/", "http://user:pw@example.org/", "http://:80/", "http://h:0/",
                      "http://h:99999/", "http://h:8x/", "http://[::1/", "http://h/a b", "ftp://h/", "http://"])
    func rejectsWhatItCannotServe(url: String) {
        #expect(PlainHTTPTarget(url) == nil)
    }

    @Test func theRequestIsFramedByStanzadAndSaysWhetherItKeepsTheConnection() throws {
        let target = try #require(PlainHTTPTarget("http://127.0.0.1:8080/in?x=1"))
        let (plain, keepsPlain) = PlainHTTPClient.request(target, headers: [("Content-Type", "text/plain")], body: Array("hi".utf8))
        #expect(String(buffer: plain) == "POST /in?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi")
        #expect(keepsPlain)
        // A route's own Host replaces the URL's; its framing headers are dropped; `Connection: close` in any case
        // and among other options means the connection is not kept.
        let (own, keepsOwn) = PlainHTTPClient.request(
            target, headers: [("host", "bots.example"), ("CONTENT-length", "999"), ("Transfer-Encoding", "chunked"),
                              ("Connection", "keep-alive,  Close ")], body: [])
        #expect(String(buffer: own) == "POST /in?x=1 HTTP/1.1\r\nhost: bots.example\r\nConnection: keep-alive,  Close \r\nContent-Length: 0\r\n\r\n")
        #expect(!keepsOwn)
        #expect(PlainHTTPClient.request(target, headers: [("Connection", "closed")], body: []).keepAlive)
    }

    @Test func headerValidation() {
        #expect(PlainHTTPClient.invalidHeader([("A", "b")]) == nil)
        #expect(PlainHTTPClient.invalidHeader([("A", "b\nc")])?.contains("line break") == true)
        #expect(PlainHTTPClient.invalidHeader([("A", "b\u{7}c")])?.contains("control character") == true)
        #expect(PlainHTTPClient.invalidHeader([("A", "tab\there")]) == nil)
        #expect(PlainHTTPClient.invalidHeader([("a(b", "c")])?.contains("not a valid HTTP token") == true)
        #expect(PlainHTTPClient.invalidHeader([("A B", "c")])?.contains("not a valid HTTP token") == true)
        // Every ASCII byte in a name, against RFC 9110's tchar list written out here.
        let tchar = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        for byte in UInt8(0)...UInt8(127) {
            let name = "X" + String(UnicodeScalar(byte))
            #expect((PlainHTTPClient.invalidHeader([(name, "v")]) == nil) == tchar.contains(byte), "byte \(byte)")
        }
        #expect(PlainHTTPClient.invalidHeader([("Xé", "v")])?.contains("not a valid HTTP token") == true)
    }
}
