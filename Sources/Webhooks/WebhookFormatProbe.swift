// `format = "auto"` (mod_rest's negotiation): before the first POST, an OPTIONS request to the webhook; the
// `Accept` header of its answer picks the body format (XML, JSON or a form), as mod_rest's startup probe does.
// Until a probe is answered the default (XML, mod_rest's default) is used; an unreachable URL is probed again
// with the next stanza.

import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import Synchronization
import XMPPCore

/// The body of a webhook POST.
package enum WebhookBody: String, Sendable, Equatable {
    case text, json, xml
    /// `application/x-www-form-urlencoded`: the top-level strings and numbers of the JSON mapping (true as "").
    case form

    /// mod_rest's choice from an `Accept` value: the supported type that appears first; nil when none does.
    package static func negotiated(accept: String) -> WebhookBody? {
        let types: [(String, WebhookBody)] = [
            ("application/xmpp+xml", .xml), ("application/json", .json), ("application/x-www-form-urlencoded", .form),
        ]
        let lowered = accept.lowercased()
        var best: (position: String.Index, body: WebhookBody)?
        for (type, body) in types {
            guard let range = lowered.range(of: type) else { continue }
            if let current = best, current.position <= range.lowerBound { continue }
            best = (range.lowerBound, body)
        }
        return best?.body
    }
}

/// The state of one route's negotiation, shared by its deliveries.
final class WebhookFormatProbe: Sendable {
    private enum State {
        case unknown
        case probing([@Sendable (WebhookBody) -> Void])
        case known(WebhookBody)
    }

    let fallback: WebhookBody
    private let state = Mutex(State.unknown)

    init(fallback: WebhookBody) {
        self.fallback = fallback
    }

    var known: WebhookBody? {
        state.withLock { if case .known(let body) = $0 { body } else { nil } }
    }

    /// Calls `use` with the format, probing `url` first when nothing is known yet (one probe at a time; stanzas that
    /// arrive meanwhile wait for it).
    func resolve(url: String, client: HTTPClient, timeout: TimeAmount, userAgent: String,
                 _ use: @escaping @Sendable (WebhookBody) -> Void) {
        enum Next { case use(WebhookBody), wait, probe }
        let next: Next = state.withLock { state in
            switch state {
            case .known(let body): return .use(body)
            case .probing(var waiters):
                waiters.append(use)
                state = .probing(waiters)
                return .wait
            case .unknown:
                state = .probing([use])
                return .probe
            }
        }
        switch next {
        case .use(let body): use(body)
        case .wait: break
        case .probe: probe(url: url, client: client, timeout: timeout, userAgent: userAgent)
        }
    }

    private func probe(url: String, client: HTTPClient, timeout: TimeAmount, userAgent: String) {
        var request: HTTPClient.Request
        do {
            request = try HTTPClient.Request(url: url, method: .OPTIONS)
        } catch {
            finish(nil, answered: false)
            return
        }
        request.headers = HTTPHeaders([("User-Agent", userAgent), ("Accept", WebhookRequest.accept)])
        client.execute(request: request, deadline: .now() + timeout).whenComplete { [self] result in
            switch result {
            case .success(let response):
                finish(response.headers.first(name: "Accept").flatMap(WebhookBody.negotiated(accept:)), answered: true)
            case .failure:
                finish(nil, answered: false)
            }
        }
    }

    /// An answered probe fixes the format (its Accept's choice, else the fallback); an unanswered one leaves it to
    /// be probed again.
    private func finish(_ body: WebhookBody?, answered: Bool) {
        let chosen = body ?? fallback
        let waiters: [@Sendable (WebhookBody) -> Void] = state.withLock { state in
            guard case .probing(let waiters) = state else { return [] }
            state = answered ? .known(chosen) : .unknown
            return waiters
        }
        for waiter in waiters { waiter(chosen) }
    }
}
