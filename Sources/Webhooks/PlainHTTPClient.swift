// A small HTTP/1.1 client for `http://` webhooks: one POST at a time per keep-alive connection, on NIO with
// NIOHTTP1's response decoder; a request goes out as one buffer of bytes made here. It exists for speed.
// async-http-client's per-request machinery (request bag, task, pool state machine, tracing) cost more CPU per
// stanza than everything else on a webhook route together (docs/PERFORMANCE.md); `https://` URLs still go through
// async-http-client and its TLS stack.
//
// Threading: a connection's state lives on its channel's event loop. The idle list is shared under a lock.

import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// Where an `http://` URL points.
struct PlainHTTPTarget: Sendable, Hashable {
    var host: String
    var port: Int
    /// The `Host` header: the URL's authority.
    var authority: String
    /// Path and query, at least "/".
    var path: String

    /// nil for anything but a plain `http://host[:port][/path][?query]` URL (https, user info, bad port, no host).
    init?(_ url: String) {
        guard url.utf8.count > 7, url.prefix(7).lowercased() == "http://" else { return nil }
        let rest = url.dropFirst(7)
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        var path = String(rest[authorityEnd...])
        if let fragment = path.firstIndex(of: "#") { path = String(path[..<fragment]) }
        if path.isEmpty || path.first == "?" { path = "/" + path }
        guard !authority.isEmpty, !authority.contains("@"),
              !path.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F }) else { return nil }
        var host: Substring
        var portText: Substring?
        if authority.first == "[" {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.first == ":" else { return nil }
                portText = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        guard !host.isEmpty else { return nil }
        var port = 80
        if let portText, !portText.isEmpty {
            guard portText.allSatisfy(\.isASCII), let number = Int(portText), (1...65535).contains(number) else { return nil }
            port = number
        }
        self.host = String(host)
        self.port = port
        self.authority = String(authority)
        self.path = path
    }
}

/// Keep-alive connections to plain HTTP webhooks, shared by every route.
final class PlainHTTPClient: Sendable {
    let group: any EventLoopGroup
    let connectTimeout: TimeAmount
    let idleTimeout: TimeAmount
    private let pool = NIOLockedValueBox(Pool())

    private struct Pool {
        var idle: [PlainHTTPTarget.Key: [PlainHTTPConnection]] = [:]
        var stopped = false
    }

    private let sweeper = NIOLockedValueBox<RepeatedTask?>(nil)

    init(group: any EventLoopGroup, connectTimeout: TimeAmount, idleTimeout: TimeAmount) {
        self.group = group
        self.connectTimeout = connectTimeout
        self.idleTimeout = idleTimeout
        let every = max(TimeAmount.nanoseconds(idleTimeout.nanoseconds / 6), .milliseconds(10))
        let task = group.next().scheduleRepeatedTask(initialDelay: every, delay: every) { [weak self] _ in
            self?.closeIdle()
        }
        sweeper.withLockedValue { $0 = task }
    }

    deinit {
        sweeper.withLockedValue { $0 }?.cancel()
    }

    /// Closes connections idle for `idleTimeout` or longer, and forgets ones the server has closed.
    func closeIdle() {
        let now = NIODeadline.now()
        let expired = pool.withLockedValue { pool -> [PlainHTTPConnection] in
            var expired: [PlainHTTPConnection] = []
            for key in pool.idle.keys {
                pool.idle[key]?.removeAll { connection in
                    let drop = !connection.reusable(at: now, idleTimeout: idleTimeout)
                    if drop { expired.append(connection) }
                    return drop
                }
                if pool.idle[key]?.isEmpty == true { pool.idle[key] = nil }
            }
            return expired
        }
        for connection in expired { connection.channel.close(promise: nil) }
    }

    /// Idle connections per host:port (tests).
    var idleCount: Int {
        pool.withLockedValue { $0.idle.values.reduce(0) { $0 + $1.count } }
    }

    /// POSTs `body` and calls `done` once, on an event loop, with the result.
    func post(_ target: PlainHTTPTarget, headers: [(String, String)], body: [UInt8], timeout: TimeAmount, maxBody: Int,
              done: @escaping @Sendable (WebhookHandler.Attempt) -> Void) {
        if let problem = Self.invalidHeader(headers) {
            done(.connectionFailed(problem))
            return
        }
        if pool.withLockedValue({ $0.stopped }) {
            done(.connectionFailed("stanzad is shutting down"))
            return
        }
        let (request, keepAlive) = Self.request(target, headers: headers, body: body)
        let exchange = PlainHTTPExchange(
            request: request, keepAlive: keepAlive, deadline: .now() + timeout, maxBody: maxBody, done: done)
        if let connection = checkOut(target.key) {
            connection.start(exchange, reused: true)
        } else {
            connect(target, exchange)
        }
    }

    /// Opens a new connection for `exchange`.
    func connect(_ target: PlainHTTPTarget, _ exchange: PlainHTTPExchange) {
        let eventLoop = group.any()
        let timeout = min(connectTimeout, max(exchange.deadline - .now(), .milliseconds(1)))
        ClientBootstrap(group: eventLoop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = PlainHTTPHandler(client: self, target: target)
                    try channel.pipeline.syncOperations.addHandler(BytesArrived(handler))
                    try channel.pipeline.syncOperations.addHandler(RequestBytes())
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes)))
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: target.host, port: target.port)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    PlainHTTPConnection(channel: channel, client: self, target: target).start(exchange, reused: false)
                case .failure(let error):
                    // Out of time for the whole request (the connect timeout was cut to fit it): a timeout.
                    exchange.finish(exchange.deadline <= .now() ? .timedOut : .connectionFailed("\(error)"))
                }
            }
    }

    /// Puts a connection whose last response ended cleanly back for the next request.
    func checkIn(_ connection: PlainHTTPConnection) {
        let now = NIODeadline.now()
        let kept = pool.withLockedValue { pool -> Bool in
            if pool.stopped { return false }
            connection.idleSince = now
            pool.idle[connection.key, default: []].append(connection)
            return true
        }
        if !kept { connection.channel.close(promise: nil) }
    }

    private func checkOut(_ key: PlainHTTPTarget.Key) -> PlainHTTPConnection? {
        let now = NIODeadline.now()
        var stale: [PlainHTTPConnection] = []
        let found = pool.withLockedValue { pool -> PlainHTTPConnection? in
            // Taken out and put back rather than changed in place: the dictionary's in-place access allocated its
            // accessor's frame on every request.
            guard var idle = pool.idle.removeValue(forKey: key) else { return nil }
            defer { if !idle.isEmpty { pool.idle[key] = idle } }
            while let connection = idle.popLast() {
                if connection.reusable(at: now, idleTimeout: idleTimeout) { return connection }
                stale.append(connection)
            }
            return nil
        }
        for connection in stale { connection.channel.close(promise: nil) }
        return found
    }

    /// Closes every idle connection; later check-ins close theirs.
    func shutdown() {
        sweeper.withLockedValue { $0 }?.cancel()
        let all = pool.withLockedValue { pool in
            defer { pool = Pool(stopped: true) }
            return pool.idle.values.flatMap { $0 }
        }
        for connection in all { connection.channel.close(promise: nil) }
    }

    /// The POST as it goes on the wire, and whether it lets the connection be kept alive (no `Connection: close`
    /// among `headers`). The framing is ours: a route's own Host replaces the URL's, its Content-Length or
    /// Transfer-Encoding is dropped (as async-http-client does), so the request never carries two of them. The
    /// headers are valid (`invalidHeader`). One buffer, written as it is: going through NIOHTTP1's encoder (three
    /// parts per request, each wrapped, cast and encoded) was 6% of a webhook echo's CPU.
    static func request(_ target: PlainHTTPTarget, headers: [(String, String)], body: [UInt8]) -> (ByteBuffer, keepAlive: Bool) {
        var buffer = ByteBufferAllocator().buffer(capacity: 128 + target.path.utf8.count + target.authority.utf8.count
            + headers.reduce(0) { $0 + $1.0.utf8.count + $1.1.utf8.count + 4 } + body.count)
        buffer.writeStaticString("POST ")
        buffer.writeString(target.path)
        buffer.writeStaticString(" HTTP/1.1\r\n")
        if !headers.contains(where: { isName($0.0, "host") }) {
            buffer.writeStaticString("Host: ")
            buffer.writeString(target.authority)
            buffer.writeStaticString("\r\n")
        }
        var connection: [(String, String)] = []
        for (name, value) in headers where !isName(name, "content-length") && !isName(name, "transfer-encoding") {
            if isName(name, "connection") { connection.append((name, value)) }
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("Content-Length: ")
        buffer.writeString(String(body.count))
        buffer.writeStaticString("\r\n\r\n")
        buffer.writeBytes(body)
        // NIO's rule for the Connection options, as when the request went through its encoder (only a route that
        // sets Connection pays for it).
        let keepAlive = connection.isEmpty
            || HTTPRequestHead(version: .http1_1, method: .POST, uri: target.path, headers: HTTPHeaders(connection)).isKeepAlive
        return (buffer, keepAlive)
    }

    /// Whether header `name` is `lowercased` (ASCII, case-insensitive).
    private static func isName(_ name: String, _ lowercased: StaticString) -> Bool {
        let name = name.utf8
        guard name.count == lowercased.utf8CodeUnitCount else { return false }
        return lowercased.withUTF8Buffer { expected in
            zip(name, expected).allSatisfy { byte, lower in
                (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte) == lower
            }
        }
    }

    /// A reason when a header would break the request: a name that is not an HTTP token, or a control character
    /// (line breaks included) other than a tab in a value. The same rules as async-http-client's.
    static func invalidHeader(_ headers: [(String, String)]) -> String? {
        for (name, value) in headers {
            if name.isEmpty || !name.utf8.allSatisfy(isTokenCharacter) {
                return "header name \"\(name)\" is not a valid HTTP token"
            }
            if value.utf8.contains(where: { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F }) {
                return "header \(name) has a line break or another control character in its value"
            }
        }
        return nil
    }

    private static func isTokenCharacter(_ byte: UInt8) -> Bool {
        // Bit n of the two words: ASCII byte n is a token character (RFC 9110 tchar). Every request's headers pass
        // through here, so this is a lookup, not a scan of the punctuation list.
        byte < 64 ? tokenBitsLow >> byte & 1 == 1 : byte < 128 && tokenBitsHigh >> (byte - 64) & 1 == 1
    }

    private static let (tokenBitsLow, tokenBitsHigh): (UInt64, UInt64) = {
        var bits: (UInt64, UInt64) = (0, 0)
        for byte in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~".utf8 {
            if byte < 64 { bits.0 |= 1 << byte } else { bits.1 |= 1 << (byte - 64) }
        }
        return bits
    }()
}

extension PlainHTTPTarget {
    struct Key: Hashable, Sendable {
        var host: String
        var port: Int
    }

    var key: Key { Key(host: host, port: port) }
}

/// One request and its response, finished exactly once.
final class PlainHTTPExchange: Sendable {
    /// The request's bytes (`PlainHTTPClient.request`).
    let request: ByteBuffer
    let keepAlive: Bool
    let deadline: NIODeadline
    let maxBody: Int
    private let done: NIOLockedValueBox<(@Sendable (WebhookHandler.Attempt) -> Void)?>

    init(request: ByteBuffer, keepAlive: Bool, deadline: NIODeadline, maxBody: Int,
         done: @escaping @Sendable (WebhookHandler.Attempt) -> Void) {
        self.request = request
        self.keepAlive = keepAlive
        self.deadline = deadline
        self.maxBody = maxBody
        self.done = NIOLockedValueBox(done)
    }

    func finish(_ result: WebhookHandler.Attempt) {
        let callback = done.withLockedValue { done in
            defer { done = nil }
            return done
        }
        callback?(result)
    }
}

/// A keep-alive connection.
final class PlainHTTPConnection: @unchecked Sendable {
    let channel: any Channel
    let client: PlainHTTPClient
    let target: PlainHTTPTarget
    var key: PlainHTTPTarget.Key { target.key }
    /// Only read and written under the client's pool lock.
    var idleSince = NIODeadline.now()

    init(channel: any Channel, client: PlainHTTPClient, target: PlainHTTPTarget) {
        self.channel = channel
        self.client = client
        self.target = target
    }

    /// Still open and idle for less than `idleTimeout`. Called under the client's pool lock.
    func reusable(at now: NIODeadline, idleTimeout: TimeAmount) -> Bool {
        channel.isActive && now - idleSince < idleTimeout
    }

    /// Sends `exchange` on this connection (from any thread). A kept-alive connection is always written to from a
    /// task of its event loop, never inline: the loop first handles what already arrived on the socket, so a close
    /// the server sent while the connection sat idle is seen before the request is written (it then goes out on a
    /// new connection instead of into a closing one).
    func start(_ exchange: PlainHTTPExchange, reused: Bool) {
        if channel.eventLoop.inEventLoop && !reused {
            start0(exchange, reused: reused)
        } else {
            channel.eventLoop.execute { self.start0(exchange, reused: reused) }
        }
    }

    private func start0(_ exchange: PlainHTTPExchange, reused: Bool) {
        guard let handler = try? channel.pipeline.syncOperations.handler(type: PlainHTTPHandler.self) else {
            // Closed and torn down since it was put back.
            if reused { client.connect(target, exchange) } else { exchange.finish(.connectionFailed("the connection was closed")) }
            return
        }
        handler.begin(exchange, connection: self, reused: reused)
    }
}

/// The end of a connection's pipeline: sends the request, collects the response (up to the cap), enforces the
/// deadline, and hands the connection back when the response ended and the server keeps it open.
final class PlainHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let client: PlainHTTPClient
    private let target: PlainHTTPTarget
    private var context: ChannelHandlerContext?
    private var current: Current?
    /// One deadline timer per connection, not one per request: armed at the running request's deadline and left
    /// to run when that request ends early, as nearly all do. When it fires it fails a request that is late, or
    /// waits on for the one running now. (Scheduling and cancelling a task for every request was 2.5% of the
    /// webhook path's CPU.)
    private var timer: Scheduled<Void>?
    private var timerDue: NIODeadline?

    private struct Current {
        var exchange: PlainHTTPExchange
        var connection: PlainHTTPConnection
        var reused: Bool
        var head: HTTPResponseHead?
        var body: ByteBuffer?
        /// The request's last byte was handed to the kernel: from here on the server may have acted on it.
        var sent = false
        var received = false
    }

    init(client: PlainHTTPClient, target: PlainHTTPTarget) {
        self.client = client
        self.target = target
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        timer?.cancel()
        timer = nil
        timerDue = nil
    }

    /// Makes sure the timer fires by `deadline`.
    private func armTimer(by deadline: NIODeadline, on context: ChannelHandlerContext) {
        if let due = timerDue, due <= deadline { return }
        timer?.cancel()
        timerDue = deadline
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: deadline) { bound.value.timerFired() }
    }

    private func timerFired() {
        timer = nil
        timerDue = nil
        guard let current else { return }
        if current.exchange.deadline <= .now() {
            fail(.timedOut)
        } else if let context {
            armTimer(by: current.exchange.deadline, on: context)
        }
    }

    private static let post = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/")

    func begin(_ exchange: PlainHTTPExchange, connection: PlainHTTPConnection, reused: Bool) {
        guard let context, current == nil, context.channel.isActive else {
            retryOrFail(exchange, reused: reused, "the connection was closed")
            return
        }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        current = Current(exchange: exchange, connection: connection, reused: reused)
        armTimer(by: exchange.deadline, on: context)
        // The head is for the response decoder, which learns from it that a body follows the response's head
        // (`RequestBytes` drops it); the request itself goes out as the bytes made for it.
        context.write(wrapOutboundOut(.head(Self.post)), promise: nil)
        let written = context.eventLoop.makePromise(of: Void.self)
        written.futureResult.whenComplete { result in bound.value.written(exchange, result) }
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(exchange.request))), promise: written)
    }

    /// The request was written out, or the write failed: then not all of it reached the server, which therefore
    /// cannot have acted on it, and it may go out again on a new connection.
    private func written(_ exchange: PlainHTTPExchange, _ result: Result<Void, any Error>) {
        guard let current, current.exchange === exchange else { return }
        switch result {
        case .success:
            self.current?.sent = true
        case .failure(let error):
            connectionLost(before: "the request could not be written: \(error)", during: "\(error)")
            context?.close(promise: nil)
        }
    }

    /// Bytes came in (before decoding): they belong to the current request's answer; on an idle connection they
    /// are something no request asked for, so the connection is not reused.
    func bytesArrived(context: ChannelHandlerContext) {
        if current != nil {
            current?.received = true
        } else {
            context.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard current != nil else {
            context.close(promise: nil)
            return
        }
        switch unwrapInboundIn(data) {
        case .head(let head):
            // 1xx other than 101 are interim (NIO drops them anyway); 101 is final: a protocol switch ends this
            // exchange and the connection.
            if head.status.code < 200 && head.status.code != 101 { return }
            if let length = head.headers.first(name: "Content-Length").flatMap({ Int($0) }), length > (current?.exchange.maxBody ?? 0) {
                fail(.bodyTooLarge)
                return
            }
            current?.head = head
        case .body(var part):
            guard let maxBody = current?.exchange.maxBody else { return }
            if (current?.body?.readableBytes ?? 0) + part.readableBytes > maxBody {
                fail(.bodyTooLarge)
                return
            }
            if current?.body == nil {
                current?.body = part
            } else {
                current?.body?.writeBuffer(&part)
            }
        case .end:
            guard let current, let head = current.head else { return }
            self.current = nil
            if head.isKeepAlive && current.exchange.keepAlive && head.status.code != 101 && context.channel.isActive {
                client.checkIn(current.connection)
            } else {
                context.close(promise: nil)
            }
            current.exchange.finish(.response(
                status: Int(head.status.code), reason: head.status.reasonPhrase,
                contentType: head.headers.first(name: "Content-Type"), retryAfter: head.headers.first(name: "Retry-After"),
                body: current.body.map { Array(buffer: $0) } ?? []))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        connectionLost(before: "the webhook closed the connection without responding",
                       during: "the webhook closed the connection in the middle of its response")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        connectionLost(before: "\(error)", during: "\(error)")
        context.close(promise: nil)
    }

    /// The connection closed or failed with a request on it: `before` any byte of the answer came back, `during` it.
    /// Only a request that provably never reached the server (its write failed) is sent again; one that was
    /// written out may have been read and acted on even though no answer came (a POST is not idempotent), so it
    /// fails, and whether to try again is the route's decision (`retries`, with the same Stanzad-Delivery).
    private func connectionLost(before: String, during: String) {
        guard let current else { return }
        if current.received {
            fail(.connectionFailed(during))
        } else if current.sent {
            fail(.connectionFailed(before))
        } else {
            self.current = nil
            retryOrFail(current.exchange, reused: current.reused, before)
        }
    }

    /// A request that never got onto a kept-alive connection (found closed before the write, or the write failed)
    /// goes out on a new connection; on a new connection the same failure is final.
    private func retryOrFail(_ exchange: PlainHTTPExchange, reused: Bool, _ reason: String) {
        if exchange.deadline <= .now() {
            exchange.finish(.timedOut)
        } else if reused {
            client.connect(target, exchange)
        } else {
            exchange.finish(.connectionFailed(reason))
        }
    }

    /// Ends the current exchange with `result` and closes the connection (it is mid-response).
    private func fail(_ result: WebhookHandler.Attempt) {
        guard let current else { return }
        self.current = nil
        context?.close(promise: nil)
        current.exchange.finish(result)
    }
}

/// First in a connection's pipeline: tells the handler when raw bytes arrive, before the decoder has made anything
/// of them. A request is only sent again on a new connection when not one byte of an answer came back.
final class BytesArrived: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let handler: PlainHTTPHandler

    init(_ handler: PlainHTTPHandler) {
        self.handler = handler
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        handler.bytesArrived(context: context)
        context.fireChannelRead(data)
    }
}

/// Below the response decoder: passes a request's bytes (`.body`) to the socket and drops the rest (the head is
/// only there for the decoder to see; the bytes carry their own).
final class RequestBytes: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = IOData

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .body(let bytes):
            context.write(wrapOutboundOut(bytes), promise: promise)
        case .head, .end:
            promise?.succeed()
        }
    }
}
