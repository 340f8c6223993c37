// A `webhook` route's handler (SPEC §6): POSTs the stanza, maps the response to the reply, retries messages
// on connection failures, timeouts, 429, 502, 503 and 504 (honouring Retry-After) within
// timeout × (retries + 1), and sends the error reply only after the last attempt.

import AsyncHTTPClient
import Logging
import NIOCore
import NIOHTTP1
import Routing
import XMPPCore

/// The HTTP client all webhook routes share: keep-alive connections, redirects not followed.
public final class WebhookClient: Sendable {
    public let http: HTTPClient

    public init() {
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 64)
        configuration.timeout = .init(connect: .seconds(10))
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    public func shutdown() async {
        try? await http.shutdown()
    }
}

public struct WebhookHandler: StanzaHandler {
    public let settings: WebhookSettings
    public let client: WebhookClient

    public init(settings: WebhookSettings, client: WebhookClient) {
        self.settings = settings
        self.client = client
    }

    enum Attempt {
        case response(status: Int, reason: String, contentType: String?, retryAfter: String?, body: [UInt8])
        case connectionFailed(String)
        case timedOut
        case bodyTooLarge
    }

    public func handle(_ stanza: Stanza, context: HandlerContext) async -> HandlerOutcome {
        let delivery = RandomID.make()
        let request: WebhookRequest
        do {
            request = try WebhookRequest(stanza: stanza, settings: settings, delivery: delivery)
        } catch {
            return .failed(.modify, .badRequest, metadata: ["problem": "\(error)"])
        }
        var logger = context.logger
        logger[metadataKey: "delivery"] = "\(delivery)"
        let retries = stanza.kind == .message ? settings.retries : 0
        let budgetEnd = ContinuousClock.now + settings.timeout * (retries + 1)
        var attempt = 0
        while true {
            attempt += 1
            let remaining = budgetEnd - ContinuousClock.now
            let result = await send(request, timeout: min(settings.timeout, max(remaining, .milliseconds(1))))
            var metadata: Logger.Metadata = ["attempts": "\(attempt)"]
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
            if retryable && attempt <= retries {
                let backoff = retryAfter ?? .milliseconds(250) * (1 << min(attempt - 1, 10))
                if ContinuousClock.now + backoff < budgetEnd {
                    logger.notice("webhook attempt failed; retrying", metadata: metadata.merging(["retry_in_ms": "\(backoff.components.seconds * 1000 + backoff.components.attoseconds / 1_000_000_000_000_000)"]) { $1 })
                    try? await Task.sleep(for: backoff)
                    continue
                }
            }
            switch result {
            case .response(let status, let reason, let contentType, _, let body):
                var (outcome, problem) = WebhookResponse.outcome(
                    status: status, reason: reason, contentType: contentType, body: body, incoming: stanza,
                    maxStanza: settings.maxStanza)
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
                logger.warning("webhook timed out", metadata: ["url": "\(request.url)", "timeout_s": "\(settings.timeout.components.seconds)"])
                metadata["problem"] = "timeout"
                return .failed(.wait, .remoteServerTimeout, metadata: metadata)
            case .bodyTooLarge:
                logger.error("webhook response rejected", metadata: ["problem": "body over max_output (\(settings.maxBody) bytes)"])
                metadata["problem"] = "response body over max_output"
                return .failed(.cancel, .internalServerError, metadata: metadata)
            }
        }
    }

    func send(_ request: WebhookRequest, timeout: Duration) async -> Attempt {
        var http = HTTPClientRequest(url: request.url)
        http.method = .POST
        for (name, value) in request.headers { http.headers.add(name: name, value: value) }
        http.body = .bytes(ByteBuffer(bytes: request.body))
        let (seconds, attoseconds) = timeout.components
        let amount = TimeAmount.nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        do {
            let response = try await client.http.execute(http, timeout: amount)
            let body: ByteBuffer
            do {
                body = try await response.body.collect(upTo: settings.maxBody)
            } catch is NIOTooManyBytesError {
                return .bodyTooLarge
            }
            return .response(
                status: Int(response.status.code), reason: response.status.reasonPhrase,
                contentType: response.headers.first(name: "Content-Type"),
                retryAfter: response.headers.first(name: "Retry-After"), body: Array(buffer: body))
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout {
            return .timedOut
        } catch {
            return .connectionFailed("\(error)")
        }
    }
}
