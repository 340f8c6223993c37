// A `webhook` route's handler (SPEC §6): POSTs the stanza, maps the response to the reply, retries messages
// on connection failures, timeouts, 429, 502, 503 and 504 (honouring Retry-After) within
// timeout × (retries + 1), and sends the error reply only after the last attempt.
//
// Everything runs on async-http-client's event loops without a task per stanza: the request is started from the
// thread that routes the stanza, its response arrives in a callback, and a retry is a task scheduled on an event
// loop. The router sends the reply from that callback.

import AsyncHTTPClient
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Routing
import XMPPCore

/// The HTTP clients all webhook routes share: keep-alive connections, redirects not followed. Plain `http://`
/// URLs go through our own small client (`PlainHTTPClient`), `https://` through async-http-client.
public final class WebhookClient: Sendable {
    public let http: HTTPClient
    /// nil: every URL goes through async-http-client (tests compare the two transports this way).
    let plain: PlainHTTPClient?

    public convenience init() {
        self.init(plainHTTP: true)
    }

    init(plainHTTP: Bool) {
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 64)
        configuration.timeout = .init(connect: .seconds(10))
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        plain = plainHTTP
            ? PlainHTTPClient(group: MultiThreadedEventLoopGroup.singleton, connectTimeout: .seconds(10), idleTimeout: .seconds(60))
            : nil
    }

    public func shutdown() async {
        plain?.shutdown()
        try? await http.shutdown()
    }
}

public struct WebhookHandler: StanzaHandler {
    public let settings: WebhookSettings
    public let client: WebhookClient
    /// A URL template without placeholders (the common case) is parsed once.
    private let fixedRequest: HTTPClient.Request?
    private let fixedTarget: PlainHTTPTarget?

    public init(settings: WebhookSettings, client: WebhookClient) {
        self.settings = settings
        self.client = client
        let fixed = !settings.urlTemplate.contains("{")
        fixedTarget = fixed && client.plain != nil ? PlainHTTPTarget(settings.urlTemplate) : nil
        fixedRequest = fixed && fixedTarget == nil ? try? HTTPClient.Request(url: settings.urlTemplate, method: .POST) : nil
    }

    enum Attempt {
        case response(status: Int, reason: String, contentType: String?, retryAfter: String?, body: [UInt8])
        case connectionFailed(String)
        case timedOut
        case bodyTooLarge
    }

    public var startsWithoutWaiting: Bool { true }

    public func handle(_ stanza: Stanza, context: HandlerContext) async -> HandlerOutcome {
        await withCheckedContinuation { continuation in
            start(stanza, context: context) { continuation.resume(returning: $0) }
        }
    }

    public func start(_ stanza: Stanza, context: HandlerContext, completion: @escaping @Sendable (HandlerOutcome) -> Void) {
        let delivery = RandomID.make()
        let request: WebhookRequest
        do {
            request = try WebhookRequest(stanza: stanza, settings: settings, delivery: delivery)
        } catch {
            completion(.failed(.modify, .badRequest, metadata: ["problem": "\(error)"]))
            return
        }
        var logger = context.logger
        logger[metadataKey: "delivery"] = "\(delivery)"
        let retries = stanza.kind == .message ? settings.retries : 0
        let delivering = Delivery(
            handler: self, stanza: stanza, request: request, logger: logger, retries: retries,
            budgetEnd: .now() + Self.timeAmount(settings.timeout * (retries + 1)), completion: completion)
        delivering.attempt(1)
    }

    /// One stanza's attempts. Immutable: each attempt starts only after the one before it has ended.
    private final class Delivery: Sendable {
        let handler: WebhookHandler
        let stanza: Stanza
        let request: WebhookRequest
        let logger: Logger
        let retries: Int
        let budgetEnd: NIODeadline
        let completion: @Sendable (HandlerOutcome) -> Void

        init(handler: WebhookHandler, stanza: Stanza, request: WebhookRequest, logger: Logger, retries: Int,
             budgetEnd: NIODeadline, completion: @escaping @Sendable (HandlerOutcome) -> Void) {
            self.handler = handler
            self.stanza = stanza
            self.request = request
            self.logger = logger
            self.retries = retries
            self.budgetEnd = budgetEnd
            self.completion = completion
        }

        func attempt(_ number: Int) {
            let remaining = budgetEnd - .now()
            let timeout = min(WebhookHandler.timeAmount(handler.settings.timeout), max(remaining, .milliseconds(1)))
            handler.send(request, timeout: timeout) { result in self.attempted(number, result) }
        }

        private func attempted(_ number: Int, _ result: Attempt) {
            var metadata: Logger.Metadata = ["attempts": "\(number)"]
            let retryable: Bool
            var retryAfter: Duration?
            switch result {
            case .response(let status, _, _, let header, _):
                retryable = WebhookResponse.isRetryable(status)
                retryAfter = WebhookResponse.retryAfter(header)
                metadata["http_status"] = "\(status)"
            case .connectionFailed, .timedOut:
                retryable = true
            case .bodyTooLarge:
                retryable = false
            }
            if retryable && number <= retries {
                let backoff = WebhookHandler.timeAmount(retryAfter ?? .milliseconds(250) * (1 << min(number - 1, 10)))
                if .now() + backoff < budgetEnd {
                    logger.notice("webhook attempt failed; retrying", metadata: metadata.merging(["retry_in_ms": "\(backoff.nanoseconds / 1_000_000)"]) { $1 })
                    handler.client.http.eventLoopGroup.any().scheduleTask(in: backoff) { self.attempt(number + 1) }
                    return
                }
            }
            completion(outcome(result, metadata: metadata))
        }

        private func outcome(_ result: Attempt, metadata: Logger.Metadata) -> HandlerOutcome {
            var metadata = metadata
            switch result {
            case .response(let status, let reason, let contentType, _, let body):
                var (outcome, problem) = WebhookResponse.outcome(
                    status: status, reason: reason, contentType: contentType, body: body, incoming: stanza,
                    maxStanza: handler.settings.maxStanza)
                outcome.metadata.merge(metadata) { $1 }
                if let problem {
                    logger.error("webhook response rejected", metadata: ["problem": "\(problem)"])
                    outcome.metadata["problem"] = "\(problem)"
                }
                return outcome
            case .connectionFailed(let reason):
                logger.warning("webhook unreachable", metadata: ["url": "\(request.url)", "problem": "\(reason)"])
                metadata["problem"] = "connection failed"
                return .failed(.wait, .recipientUnavailable, text: "The webhook could not be reached", metadata: metadata)
            case .timedOut:
                logger.warning("webhook timed out", metadata: ["url": "\(request.url)", "timeout_s": "\(handler.settings.timeout.components.seconds)"])
                metadata["problem"] = "timeout"
                return .failed(.wait, .remoteServerTimeout, metadata: metadata)
            case .bodyTooLarge:
                logger.error("webhook response rejected", metadata: ["problem": "body over max_output (\(handler.settings.maxBody) bytes)"])
                metadata["problem"] = "response body over max_output"
                return .failed(.cancel, .internalServerError, metadata: metadata)
            }
        }
    }

    /// One POST; `done` gets its result on an event loop.
    func send(_ request: WebhookRequest, timeout: TimeAmount, _ done: @escaping @Sendable (Attempt) -> Void) {
        if let plain = client.plain, let target = fixedTarget ?? (fixedRequest == nil ? PlainHTTPTarget(request.url) : nil) {
            plain.post(target, headers: request.headers, body: request.body, timeout: timeout, maxBody: settings.maxBody, done: done)
            return
        }
        var http: HTTPClient.Request
        do {
            http = try fixedRequest ?? HTTPClient.Request(url: request.url, method: .POST)
        } catch {
            done(.connectionFailed("\(error)"))
            return
        }
        var headers = HTTPHeaders()
        headers.reserveCapacity(request.headers.count + 2)
        for (name, value) in request.headers { headers.add(name: name, value: value) }
        http.headers = headers
        http.body = .bytes(request.body)
        let accumulator = ResponseAccumulator(request: http, maxBodySize: settings.maxBody)
        let task = client.http.execute(request: http, delegate: accumulator, eventLoop: .indifferent,
                                       deadline: .now() + timeout, logger: nil)
        task.futureResult.whenComplete { result in
            switch result {
            case .success(let response):
                let body = response.body.map { Array(buffer: $0) } ?? []
                done(.response(
                    status: Int(response.status.code), reason: response.status.reasonPhrase,
                    contentType: response.headers.first(name: "Content-Type"),
                    retryAfter: response.headers.first(name: "Retry-After"), body: body))
            case .failure(let error as HTTPClientError) where error == .deadlineExceeded || error == .readTimeout:
                done(.timedOut)
            case .failure(is ResponseAccumulator.ResponseTooBigError):
                done(.bodyTooLarge)
            case .failure(let error):
                done(.connectionFailed("\(error)"))
            }
        }
    }

    static func timeAmount(_ duration: Duration) -> TimeAmount {
        let (seconds, attoseconds) = duration.components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
