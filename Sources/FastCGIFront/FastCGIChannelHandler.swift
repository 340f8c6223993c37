// The I/O shell around FastCGIConnectionStateMachine: one per connection, on its event loop. It keeps the read
// deadline (a client that sends nothing, or half a record, costs only its own connection), hands complete
// requests to the server as exchanges, and writes their responses.

import Logging
import NIOCore
import Synchronization
import XMPPCore

/// A request handed to the REST API, answered at most once with `respond`. When the connection goes away first
/// (the HTTP client left and nginx closed the upstream connection, or FCGI_ABORT_REQUEST), the request's wait is
/// cancelled, so what it holds (a long-poll's `max_pending` slot) is given back at once.
final class FastCGIExchange: Sendable {
    let request: RestRequest
    private let write: @Sendable (RestResponse) -> Void
    /// Closes the connection without an answer.
    private let drop: @Sendable () -> Void
    private let state = Mutex(State.open(nil))

    private enum State {
        case open(RestCancellation?)
        /// The connection is gone; a late response is dropped.
        case closed
        case answered
    }

    init(request: RestRequest, drop: @escaping @Sendable () -> Void = {}, write: @escaping @Sendable (RestResponse) -> Void) {
        self.request = request
        self.drop = drop
        self.write = write
    }

    /// Shutdown, before the request was read by the API: the connection is closed without an answer, so that
    /// nginx sends the request again on a fresh connection (to the process that runs next, with socket
    /// activation or a take-over) instead of passing a refusal to its client.
    func refuseByClosing() {
        let open: Bool = state.withLock { state in
            guard case .open = state else { return false }
            state = .closed
            return true
        }
        if open { drop() }
    }

    /// The way to stop the request's wait; cancelled at once when the connection is already gone.
    func attach(_ cancellation: RestCancellation?) {
        guard let cancellation else { return }
        let closed: Bool = state.withLock { state in
            guard case .open = state else { return true }
            state = .open(cancellation)
            return false
        }
        if closed { cancellation.cancel() }
    }

    /// Writes the response unless one was written or the connection is gone; true when it was written.
    @discardableResult
    func respond(_ response: RestResponse) -> Bool {
        let first: Bool = state.withLock { state in
            guard case .open = state else { return false }
            state = .answered
            return true
        }
        if first { write(response) }
        return first
    }

    /// Answers (if not yet answered) and stops the wait: shutdown.
    func abandon(with response: RestResponse) {
        let cancellation: RestCancellation? = state.withLock { state in
            guard case .open(let cancellation) = state else { return nil }
            state = .answered
            return cancellation
        }
        write(response)
        cancellation?.cancel()
    }

    /// The connection is gone (or aborted): stops the wait.
    func connectionClosed() {
        let cancellation: RestCancellation? = state.withLock { state in
            guard case .open(let cancellation) = state else { return nil }
            state = .closed
            return cancellation
        }
        cancellation?.cancel()
    }
}

final class FastCGIChannelHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = FastCGIRecord
    typealias OutboundOut = ByteBuffer

    private var machine: FastCGIConnectionStateMachine
    private let readTimeout: TimeAmount
    private let logger: Logger
    /// Hands a complete request to the server, which answers it through the exchange.
    private let dispatch: @Sendable (FastCGIExchange) -> Void
    private var deadline: Scheduled<Void>?
    private var exchange: FastCGIExchange?
    /// The streamed response being written (server-sent events), if any.
    private var streaming: RestEventStream?
    private var context: ChannelHandlerContext?

    init(limits: FastCGIConnectionStateMachine.Limits, readTimeout: TimeAmount, logger: Logger,
         dispatch: @escaping @Sendable (FastCGIExchange) -> Void) {
        self.machine = FastCGIConnectionStateMachine(limits: limits)
        self.readTimeout = readTimeout
        self.logger = logger
        self.dispatch = dispatch
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { armDeadline(context: context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        armDeadline(context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let record = unwrapInboundIn(data)
        perform(machine.received(record), context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        machine.closed()
        exchange?.connectionClosed()
        exchange = nil
        streaming?.clientGone()
        streaming = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Not FastCGI (a decoder error), or the socket failed: this connection only.
        logger.debug("FastCGI connection closed on error", metadata: ["error": "\(error)"])
        machine.closed()
        context.close(promise: nil)
    }

    private func perform(_ action: FastCGIConnectionStateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .write(let bytes):
            context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
        case .dispatch(let request):
            deadline?.cancel()
            deadline = nil
            start(request, context: context)
        case .abort:
            exchange?.connectionClosed()
            exchange = nil
            streaming?.clientGone()
            streaming = nil
            context.close(promise: nil)
        case .close(let error):
            if let error {
                logger.info("FastCGI client broke the protocol; connection closed", metadata: ["problem": "\(error.description)"])
            }
            context.close(promise: nil)
        }
    }

    private func start(_ request: FastCGIConnectionStateMachine.Request, context: ChannelHandlerContext) {
        let rest = Self.restRequest(request)
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        let id = request.requestID
        let exchange = FastCGIExchange(request: rest, drop: { loop.execute { bound.value.context?.close(promise: nil) } }) { response in
            if let stream = response.stream {
                let head = Self.encodeHead(response, requestID: id)
                loop.execute { bound.value.startStream(head, stream: stream, requestID: id) }
                return
            }
            let bytes = Self.encode(response, requestID: id)
            loop.execute { bound.value.finish(bytes) }
        }
        self.exchange = exchange
        dispatch(exchange)
    }

    /// Writes a response; then the connection serves the next request or closes.
    private func finish(_ bytes: ByteBuffer) {
        guard let context, exchange != nil else { return }  // the connection went away meanwhile
        exchange = nil
        context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
        perform(machine.responseSent(), context: context)
        if machine.isReading, context.channel.isActive { armDeadline(context: context) }
    }

    /// A streamed response: the head now, then each chunk the stream sends as it comes; the request ends when the
    /// stream ends (or the client goes away, which stops the stream).
    private func startStream(_ head: ByteBuffer, stream: RestEventStream, requestID: UInt16) {
        guard let context, exchange != nil else {
            stream.clientGone()
            return
        }
        exchange = nil
        streaming = stream
        context.writeAndFlush(wrapOutboundOut(head), promise: nil)
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        stream.attach(RestEventStream.Sink(
            write: { bytes in
                loop.execute { bound.value.streamWrite(bytes, requestID: requestID) }
            },
            end: {
                loop.execute { bound.value.streamEnd(requestID: requestID) }
            }))
    }

    private func streamWrite(_ bytes: [UInt8], requestID: UInt16) {
        guard let context, streaming != nil, !bytes.isEmpty else { return }
        // A client that stops reading must not make stanzad buffer its events without bound: past the limit the
        // stream is closed (what it had not read is lost to it; `updates` is the at-least-once way).
        guard streamPending + bytes.count <= Self.streamPendingLimit else {
            logger.notice("event stream closed: the client does not keep up", metadata: [
                "unwritten_bytes": "\(streamPending)", "limit": "\(Self.streamPendingLimit)",
            ])
            streaming?.clientGone()
            streaming = nil
            context.close(promise: nil)
            return
        }
        var out = ByteBuffer()
        FastCGIRecord(.stdout, requestID: requestID, content: ByteBuffer(bytes: bytes)).write(into: &out)
        streamPending += bytes.count
        let promise = context.eventLoop.makePromise(of: Void.self)
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        promise.futureResult.whenComplete { _ in bound.value.streamPending -= bytes.count }
        context.writeAndFlush(wrapOutboundOut(out), promise: promise)
    }

    /// Bytes of an event stream written to the connection and not yet taken by the socket.
    private var streamPending = 0
    static let streamPendingLimit = 1 << 20

    private func streamEnd(requestID: UInt16) {
        guard let context, streaming != nil else { return }
        streaming = nil
        var out = ByteBuffer()
        FastCGIRecord(.stdout, requestID: requestID).write(into: &out)
        FastCGIRecord.endRequest(requestID: requestID, appStatus: 0, protocolStatus: .requestComplete).write(into: &out)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        perform(machine.responseSent(), context: context)
        if machine.isReading, context.channel.isActive { armDeadline(context: context) }
    }

    private func armDeadline(context: ChannelHandlerContext) {
        deadline?.cancel()
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: readTimeout) {
            bound.value.deadlinePassed()
        }
    }

    private func deadlinePassed() {
        guard let context, machine.isReading else { return }
        logger.info("FastCGI connection closed: no complete request within read_timeout", metadata: [
            "read_timeout": "\(readTimeout.nanoseconds / 1_000_000_000)s", "idle": "\(machine.isIdle)",
        ])
        machine.closed()
        context.close(promise: nil)
    }

    // MARK: Mapping

    static func restRequest(_ request: FastCGIConnectionStateMachine.Request) -> RestRequest {
        let params = request.params
        func param(_ name: String) -> String? {
            guard let value = params[name], !value.isEmpty else { return nil }
            return value
        }
        let uri = param("DOCUMENT_URI") ?? param("REQUEST_URI") ?? "/"
        var rest = RestRequest(method: param("REQUEST_METHOD") ?? "GET", path: "/")
        rest.path = String(uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "/")
        rest.query = param("QUERY_STRING") ?? ""
        rest.contentType = param("CONTENT_TYPE")
        rest.contentLength = param("CONTENT_LENGTH").flatMap { Int($0) }
        rest.bodyTooLarge = request.bodyTooLarge
        rest.authorization = param("HTTP_AUTHORIZATION")
        rest.accept = param("HTTP_ACCEPT")
        rest.timeout = param("HTTP_REST_TIMEOUT") ?? param("HTTP_PROSODY_REST_TIMEOUT")
        rest.params = params
        if !request.bodyTooLarge {
            rest.body = Array(buffer: request.body)
        }
        return rest
    }

    /// The head of a streamed response (Status line and headers) in one STDOUT record; no length, no end.
    static func encodeHead(_ response: RestResponse, requestID: UInt16) -> ByteBuffer {
        var head = "Status: \(response.status) \(HTTPStanzaErrors.reasonPhrase(response.status))\r\n"
        for (name, value) in response.headers { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        var out = ByteBuffer()
        FastCGIRecord(.stdout, requestID: requestID, content: ByteBuffer(string: head)).write(into: &out)
        return out
    }

    /// A CGI-style response (Status line, headers, body) in STDOUT records, then END_REQUEST.
    static func encode(_ response: RestResponse, requestID: UInt16) -> ByteBuffer {
        var head = "Status: \(response.status) \(HTTPStanzaErrors.reasonPhrase(response.status))\r\n"
        for (name, value) in response.headers { head += "\(name): \(value)\r\n" }
        if response.header("Content-Type") == nil && !response.body.isEmpty { head += "Content-Type: text/plain\r\n" }
        head += "Content-Length: \(response.body.count)\r\n\r\n"
        var bytes = ByteBuffer()
        bytes.reserveCapacity(head.utf8.count + response.body.count)
        bytes.writeString(head)
        bytes.writeBytes(response.body)
        return FastCGIRecord.response(requestID: requestID, bytes: bytes)
    }
}
