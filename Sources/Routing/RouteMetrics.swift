// The route metrics of SPEC §19 through swift-metrics (the daemon bootstraps Prometheus): requests by outcome
// and their duration. Made once per route, so handling a stanza costs an increment, not a lookup.

import Metrics

package final class RouteMetrics: Sendable {
    /// `stanzad_route_requests_total{route,outcome}`: `ok` (the handler ran, no error reply), `error` (the handler
    /// failed or answered an error), `busy` (route full), `limited` (sender over `per_sender`), `shutdown`.
    package enum Outcome: String, CaseIterable, Sendable {
        case ok, error, busy, limited, shutdown
    }

    private let requests: [Counter]
    /// `stanzad_route_duration_seconds{route}`: from admission to the stamped replies, for runs of the handler.
    private let duration: Timer

    package init(route: String) {
        requests = Outcome.allCases.map { outcome in
            Counter(label: "stanzad_route_requests_total", dimensions: [("route", route), ("outcome", outcome.rawValue)])
        }
        duration = Timer(label: "stanzad_route_duration_seconds", dimensions: [("route", route)], preferredDisplayUnit: .seconds)
    }

    package func count(_ outcome: Outcome) {
        requests[Outcome.allCases.firstIndex(of: outcome) ?? 0].increment()
    }

    package func ran(_ outcome: Outcome, since started: ContinuousClock.Instant) {
        count(outcome)
        let elapsed = ContinuousClock.now - started
        duration.recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
    }
}
