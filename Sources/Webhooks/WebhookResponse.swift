// How a webhook's HTTP response becomes the reply (SPEC §6 response table). Pure.

import Foundation
import Logging
import Routing
import XMPPCore

package enum WebhookResponse {
    static func format(forMediaType type: String) -> HandlerFormat? {
        switch type {
        case "application/xmpp+xml", "application/xml", "text/xml": .xml
        case "application/json": .json
        case "text/plain": .text
        default: nil
        }
    }

    /// The outcome for a completed HTTP exchange.
    package static func outcome(
        status: Int, reason: String?, contentType: String?, body: [UInt8], incoming: Stanza, maxStanza: Int
    ) -> (HandlerOutcome, problem: String?) {
        let metadata: Logger.Metadata = ["http_status": "\(status)"]
        let media = HTTPMediaType.essence(contentType)
        let blank = body.allSatisfy { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
        if (200..<300).contains(status) {
            if status == 202 || status == 204 || blank {
                return (HandlerOutcome(metadata: metadata), nil)
            }
            guard let format = format(forMediaType: media) else {
                let problem = "webhook answered \(status) with an unsupported content type \"\(contentType ?? "")\" (use application/xmpp+xml, application/json or text/plain)"
                return (.failed(.cancel, .internalServerError, metadata: metadata), problem)
            }
            do {
                let replies = try HandlerOutput.replies(from: body, format: format, incoming: incoming, maxStanza: maxStanza)
                return (HandlerOutcome(replies: replies, metadata: metadata), nil)
            } catch {
                return (.failed(.cancel, .internalServerError, metadata: metadata), "webhook response: \(error.description): \(error.excerpt)")
            }
        }
        // 3xx (not followed), 4xx, 5xx: an error the body carries, else the status table.
        if !blank, let format = format(forMediaType: media), format != .text,
           let replies = try? HandlerOutput.replies(from: body, format: format, incoming: incoming, maxStanza: maxStanza),
           !replies.isEmpty, replies.allSatisfy({ $0.type == "error" && $0.error != nil })
        {
            return (HandlerOutcome(replies: replies, metadata: metadata), nil)
        }
        let text = reason.flatMap { $0.isEmpty ? nil : $0 } ?? HTTPStanzaErrors.reasonPhrase(status)
        return (HandlerOutcome(failure: HTTPStanzaErrors.error(forStatus: status, text: text), metadata: metadata), nil)
    }

    /// Statuses worth another attempt for messages (SPEC §6).
    static func isRetryable(_ status: Int) -> Bool {
        status == 429 || status == 502 || status == 503 || status == 504
    }

    /// Retry-After as a delay, when it is a number of seconds.
    static func retryAfter(_ value: String?) -> Duration? {
        guard let value, let seconds = Int(value.trimmingCharacters(in: .whitespaces)), seconds >= 0 else { return nil }
        return .seconds(seconds)
    }
}
