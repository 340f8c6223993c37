// A `webhook` route's handler (SPEC §6): POSTs the stanza, maps the response to the reply, retries messages
// on connection failures, timeouts, 429, 502, 503 and 504 (honouring Retry-After) within
// timeout × (retries + 1), and sends the error reply only after the last attempt.
//
// Everything runs on async-http-client's event loops without a task per stanza: the request is started from the
// thread that routes the stanza, its response arrives in a callback, and a retry is a task scheduled on an event
// loop. The router sends the reply from that callback. At shutdown, retries still waiting for their turn end at
// once with the last attempt's outcome, and the client is a Service that closes its connections after the
// router has drained.

import AsyncHTTPClient
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Routing
import ServiceLifecycle
import Synchronization
import XMPPCore

/// The HTTP clients all webhook routes share: keep-alive connections, redirects not followed. Plain `http://`
/// URLs go through our own small client (`PlainHTTPClient`), `https://` through async-http-client. As a Service it
/// runs until graceful shutdown, then ends pending retries and closes its connections.
package final class WebhookClient: Service, Sendable {
    package let http: HTTPClient
    /// nil: every URL goes through async-http-client (tests compare the two transports this way).
    let plain: PlainHTTPClient?
    /// Retries waiting for their turn; ended at once when stanzad shuts down.
    let retries = PendingRetries()
    private let stopped = Mutex(false)
    /// With a spool (SPEC §18): takes a stanza whose retry is still waiting at shutdown, for the next start to
    /// route again; true when it was kept (its sender then hears nothing from this process).
    private let keeper = Mutex<(@Sendable (Stanza) -> Bool)?>(nil)

    /// Sets what keeps waiting deliveries at shutdown (see `keeper`).
    package func keepWaitingDeliveries(_ keep: @escaping @Sendable (Stanza) -> Bool) {
        keeper.withLock { $0 = keep }
    }

    /// Hands `stanza` to the keeper; false without one.
    func keep(_ stanza: Stanza) -> Bool {
        keeper.withLock { $0 }?(stanza) ?? false
    }

    package convenience init() {
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

    package func run() async throws {
        try? await gracefulShutdown()
        await shutdown()
    }

    /// Ends pending retries and closes every connection; once (later calls do nothing).
    package func shutdown() async {
        guard stopped.withLock({ stopped in defer { stopped = true }; return !stopped }) else { return }
        retries.endAll()
        plain?.shutdown()
        try? await http.shutdown()
    }
}

/// Webhook retries scheduled and not yet started. Each can be ended early: its timer is cancelled and its stanza
/// gets the outcome of the attempt before.
final class PendingRetries: Sendable {
    private struct State {
        var next = 0
        var entries: [Int: (task: Scheduled<Void>?, giveUp: @Sendable () -> Void)] = [:]
        var ended = false
    }

    private let state = Mutex(State())

    /// Schedules `retry` after `delay` on `loop`; `giveUp` runs instead if retries are ended first. False: retries
    /// are ended already (the caller gives up now).
    func schedule(on loop: any EventLoop, in delay: TimeAmount, retry: @escaping @Sendable () -> Void,
                  giveUp: @escaping @Sendable () -> Void) -> Bool {
        let id: Int? = state.withLock { state in
            guard !state.ended else { return nil }
            state.next += 1
            state.entries[state.next] = (nil, giveUp)
            return state.next
        }
        guard let id else { return false }
        let task = loop.scheduleTask(in: delay) { [self] in
            if state.withLock({ $0.entries.removeValue(forKey: id) }) != nil { retry() }
        }
        state.withLock { state in
            if state.entries[id] != nil { state.entries[id]?.task = task }
        }
        return true
    }

    /// Ends every pending retry now (its `giveUp` runs) and every later one at once.
    func endAll() {
        let ended = state.withLock { state in
            state.ended = true
            defer { state.entries.removeAll() }
            return Array(state.entries.values)
        }
        for entry in ended {
            entry.task?.cancel()
            entry.giveUp()
        }
    }

    var count: Int { state.withLock { $0.entries.count } }
}

package struct WebhookHandler: StanzaHandler {
    package let settings: WebhookSettings
    package let client: WebhookClient
    /// A URL template without placeholders (the common case) is parsed once.
    private let fixedEndpoint: Endpoint?
    /// `format = "auto"`: the negotiated body format.
    private let probe: WebhookFormatProbe?
    fileprivate let responses = MadeOncePerKey<ResponseKey, Counter> {
        Counter(label: "stanzad_webhook_responses_total", dimensions: [("route", $0.route), ("code", $0.code)])
    }

    package init(settings: WebhookSettings, client: WebhookClient) {
        self.settings = settings
        self.client = client
        fixedEndpoint = settings.urlTemplate.contains("{") ? nil : try? Self.endpoint(settings.urlTemplate, client: client)
        probe = settings.negotiate ? WebhookFormatProbe(fallback: .xml) : nil
    }

    /// Which client a URL goes to: plain `http://` to ours, anything else to async-http-client.
    private enum Endpoint: Sendable {
        case plain(PlainHTTPTarget)
        case other(HTTPClient.Request)
    }

    private static func endpoint(_ url: String, client: WebhookClient) throws -> Endpoint {
        if client.plain != nil, let target = PlainHTTPTarget(url) { return .plain(target) }
        return .other(try HTTPClient.Request(url: url, method: .POST))
    }

    enum Attempt {
        case response(status: Int, reason: String, contentType: String?, retryAfter: String?, body: [UInt8])
        case connectionFailed(String)
        case timedOut
        case bodyTooLarge
    }

    package var startsWithoutWaiting: Bool { true }

    /// Shutdown: retries waiting for their turn end now, with the outcome of the attempt before.
    package func shutDown() {
        client.retries.endAll()
    }

    package func handle(_ stanza: Stanza, context: HandlerContext) async -> HandlerOutcome {
        await withCheckedContinuation { continuation in
            start(stanza, context: context) { continuation.resume(returning: $0) }
        }
    }

    package func start(_ stanza: Stanza, context: HandlerContext, completion: @escaping @Sendable (HandlerOutcome) -> Void) {
        guard let probe else {
            start(stanza, context: context, body: nil, completion: completion)
            return
        }
        // mod_rest renders the probe's URL for a pseudo-stanza of kind "meta", type "info", to and from the host.
        let host = stanza.to.flatMap { JID.parse($0)?.domain } ?? ""
        let url = WebhookRequest.render(settings.urlTemplate, values: ["kind": "meta", "type": "info", "to": host, "from": host, "id": ""])
        probe.resolve(url: url, client: client.http, timeout: TimeAmount(settings.timeout), userAgent: settings.userAgent) { body in
            start(stanza, context: context, body: body, completion: completion)
        }
    }

    private func start(_ stanza: Stanza, context: HandlerContext, body: WebhookBody?,
                       completion: @escaping @Sendable (HandlerOutcome) -> Void) {
        let delivery = RandomID.make()
        let request: WebhookRequest
        do {
            request = try WebhookRequest(stanza: stanza, settings: settings, delivery: delivery, room: context.room, body: body)
        } catch {
            completion(.failed(.modify, .badRequest, metadata: ["problem": "\(error)"]))
            return
        }
        let retries = stanza.kind == .message ? settings.retries : 0
        let attempts = Delivery(
            handler: self, stanza: stanza, request: request, context: context, delivery: delivery, retries: retries,
            route: context.route,
            budgetEnd: .now() + TimeAmount(settings.timeout * (retries + 1)), completion: completion)
        attempts.attempt(1)
    }

    /// One stanza's attempts. Each attempt starts only after the one before it has ended. A class: each attempt's
    /// completion holds it by one reference instead of a copy of every field.
    private final class Delivery: Sendable {
        let handler: WebhookHandler
        let stanza: Stanza
        let request: WebhookRequest
        let context: HandlerContext
        let delivery: String
        let retries: Int
        let route: String
        let budgetEnd: NIODeadline
        let completion: @Sendable (HandlerOutcome) -> Void

        init(handler: WebhookHandler, stanza: Stanza, request: WebhookRequest, context: HandlerContext, delivery: String,
             retries: Int, route: String, budgetEnd: NIODeadline, completion: @escaping @Sendable (HandlerOutcome) -> Void) {
            self.handler = handler
            self.stanza = stanza
            self.request = request
            self.context = context
            self.delivery = delivery
            self.retries = retries
            self.route = route
            self.budgetEnd = budgetEnd
            self.completion = completion
        }

        /// The handler's logger with the delivery id; built only for a line that is logged (retries, failures).
        var logger: Logger {
            var logger = context.logger
            logger[metadataKey: "delivery"] = "\(delivery)"
            return logger
        }

        func attempt(_ number: Int) {
            let remaining = budgetEnd - .now()
            let timeout = min(TimeAmount(handler.settings.timeout), max(remaining, .milliseconds(1)))
            handler.send(request, timeout: timeout) { result in self.attempted(number, result) }
        }

        private func attempted(_ number: Int, _ result: Attempt) {
            let code: String
            switch result {
            case .response(let status, _, _, _, _): code = "\(status)"
            case .connectionFailed: code = "connection_failed"
            case .timedOut: code = "timeout"
            case .bodyTooLarge: code = "too_large"
            }
            handler.responses[ResponseKey(route: route, code: code)].increment()
            var metadata = Logger.Metadata(minimumCapacity: 2)
            metadata["attempts"] = "\(number)"
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
                let backoff = TimeAmount(retryAfter ?? .milliseconds(250) * (1 << min(number - 1, 10)))
                if .now() + backoff < budgetEnd {
                    logger.notice("webhook attempt failed; retrying", metadata: metadata.merging(["retry_in_ms": "\(backoff.nanoseconds / 1_000_000)"]) { $1 })
                    let metadata = metadata
                    let scheduled = handler.client.retries.schedule(
                        on: handler.client.http.eventLoopGroup.any(), in: backoff, retry: { self.attempt(number + 1) },
                        giveUp: {
                            // Not one from a room: the next process has not joined it yet (as the dispatcher's
                            // stanzas left at shutdown).
                            if self.context.room == nil, self.handler.client.keep(self.stanza) {
                                self.logger.notice("webhook retry kept in the spool: the next start routes the stanza again",
                                                   metadata: metadata)
                                self.completion(HandlerOutcome(metadata: metadata.merging(["kept": "spool"]) { $1 }))
                                return
                            }
                            self.logger.notice("webhook retry dropped: stanzad is shutting down", metadata: metadata)
                            self.completion(self.outcome(result, metadata: metadata))
                        })
                    if scheduled { return }
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
        var http: HTTPClient.Request
        do {
            switch try fixedEndpoint ?? Self.endpoint(request.url, client: client) {
            case .plain(let target):
                client.plain?.post(target, headers: request.headers, body: request.body, timeout: timeout, maxBody: settings.maxBody, done: done)
                return
            case .other(let prepared):
                http = prepared
            }
        } catch {
            done(.connectionFailed("\(error)"))
            return
        }
        http.headers = HTTPHeaders(request.headers)
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

}

/// `stanzad_webhook_responses_total{route,code}`: every attempt's answer, each counter made once.
private struct ResponseKey: Hashable, Sendable {
    var route: String
    var code: String
}
