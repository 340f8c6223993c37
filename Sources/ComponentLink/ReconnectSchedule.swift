// When to try the server again after the link failed. A pure value: the failure, the time and the jitter go
// in, the delay comes out.

/// The reconnect policy (SPEC §11). While the server is simply not there (connection refused or timed out, the
/// stream dropped or shut down) and the outage is young, it retries about every second, so the link is back
/// within about a second of the server; an outage older than `fastWindow`, and failures that retrying will not
/// fix (the server refused the secret or the domain), back off exponentially up to `cap` (`reconnect_max`).
struct ReconnectSchedule: Sendable {
    typealias Instant = ContinuousClock.Instant

    /// `reconnect_max`: the longest delay.
    let cap: Duration
    /// The delay between quick retries (before jitter).
    let fastInterval: Duration
    /// How long an outage is retried quickly.
    let fastWindow: Duration

    /// When the link was last lost (or first tried), nil while it is up.
    private(set) var outageStart: Instant?
    /// Failures backed off exponentially in this outage so far.
    private(set) var backoffs = 0

    init(cap: Duration, fastInterval: Duration = .seconds(1), fastWindow: Duration = .seconds(300)) {
        self.cap = max(cap, .seconds(1))
        self.fastInterval = fastInterval
        self.fastWindow = fastWindow
    }

    /// The handshake succeeded: the next failure starts a new outage.
    mutating func linkUp() {
        outageStart = nil
        backoffs = 0
    }

    /// The delay before the next attempt after `error` at `now`. `jitter` (0.8…1.2) spreads the attempts of
    /// several instances; it is a parameter so that tests can pin it.
    mutating func delay(after error: ComponentLinkError, at now: Instant, jitter: Double) -> Duration {
        let start = outageStart ?? now
        outageStart = start
        let jitter = min(1.2, max(0.8, jitter))
        if Self.isTransient(error) && now - start < fastWindow {
            return min(cap, Self.scaled(fastInterval, by: jitter))
        }
        // Exponential: about 1, 2, 4, … s, capped; never under 1 s.
        let base = Duration.seconds(1 << min(backoffs, 30))
        backoffs += 1
        return max(.seconds(1), min(cap, Self.scaled(min(cap, base), by: jitter)))
    }

    /// `duration × factor` to the millisecond.
    private static func scaled(_ duration: Duration, by factor: Double) -> Duration {
        let (seconds, attoseconds) = duration.components
        let milliseconds = (Double(seconds) * 1000 + Double(attoseconds) / 1e15) * factor
        return .milliseconds(Int64(milliseconds.rounded()))
    }

    /// Failures that mean "the server is not there right now", as opposed to "the server refuses us".
    static func isTransient(_ error: ComponentLinkError) -> Bool {
        switch error.code {
        case .connectFailed, .closedByPeer, .handshakeTimeout, .pingTimeout:
            return true
        case .streamError:
            // The server is going away or replacing an old session of ours; anything else is a refusal.
            return ["system-shutdown", "connection-timeout", "reset", "conflict"].contains(error.condition ?? "")
        default:
            return false
        }
    }
}
