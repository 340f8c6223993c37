// Per-sender rate limit (`[limits] per_sender = "20/10s"`): a token bucket per bare sender JID. Components get
// no flood protection from the XMPP server (Prosody's limits cover c2s and s2s only), so one sender must not be
// able to keep a route's handlers busy for everyone. Pure: the caller passes the time.

import Synchronization

/// "N/Ds": N stanzas per D seconds, as a bucket of N tokens refilled at N/D per second.
package struct RateLimitSpec: Sendable, Equatable, CustomStringConvertible {
    package var count: Int
    package var seconds: Int

    package init(count: Int, seconds: Int) {
        self.count = count
        self.seconds = seconds
    }

    /// Parses "20/10s", "5/1s", "100/60s" (also "20/10"). nil with a reason otherwise.
    package static func parse(_ text: String) -> Result<RateLimitSpec, ParseFailure> {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        var window = parts.count == 2 ? Substring(parts[1]) : ""
        if window.hasSuffix("s") { window = window.dropLast() }
        guard parts.count == 2, let count = Int(parts[0]), let seconds = Int(window) else {
            return .failure(ParseFailure(description: "\"\(text)\" is not a rate such as \"20/10s\" (stanzas per seconds)"))
        }
        guard count >= 1, seconds >= 1 else {
            return .failure(ParseFailure(description: "\"\(text)\": both numbers must be at least 1"))
        }
        return .success(RateLimitSpec(count: count, seconds: seconds))
    }

    package struct ParseFailure: Error, Equatable, CustomStringConvertible {
        package var description: String
    }

    package var description: String { "\(count)/\(seconds)s" }
}

/// The buckets of every sender seen recently. Full buckets are forgotten, so memory follows the senders of the
/// last window, not all senders ever.
package struct SenderBuckets: Sendable {
    package let spec: RateLimitSpec
    private var buckets: [String: Bucket] = [:]
    private var lastSweep: ContinuousClock.Instant?

    private struct Bucket: Sendable {
        var tokens: Double
        var updated: ContinuousClock.Instant
        /// Stanzas refused since the last one that passed (for the log).
        var refused = 0
    }

    package enum Decision: Equatable, Sendable {
        case allowed
        /// Over the limit; `refusedInARow` counts this sender's refusals since its last allowed stanza.
        case limited(refusedInARow: Int)
    }

    package init(spec: RateLimitSpec) {
        self.spec = spec
    }

    private var rate: Double { Double(spec.count) / Double(spec.seconds) }

    /// Takes a token for `sender` (a bare JID) at `now`, if there is one.
    package mutating func take(sender: String, now: ContinuousClock.Instant) -> Decision {
        sweep(now: now)
        var bucket = buckets[sender] ?? Bucket(tokens: Double(spec.count), updated: now)
        bucket.tokens = min(Double(spec.count), bucket.tokens + rate * seconds(now - bucket.updated))
        bucket.updated = now
        defer { buckets[sender] = bucket }
        if bucket.tokens >= 1 {
            bucket.tokens -= 1
            bucket.refused = 0
            return .allowed
        }
        bucket.refused += 1
        return .limited(refusedInARow: bucket.refused)
    }

    /// Senders tracked right now.
    package var trackedSenders: Int { buckets.count }

    /// Once per window, drops buckets that would be full again by now.
    private mutating func sweep(now: ContinuousClock.Instant) {
        if let lastSweep, now - lastSweep < .seconds(spec.seconds) { return }
        lastSweep = now
        let refill = Double(spec.count) / rate
        buckets = buckets.filter { seconds(now - $0.value.updated) < refill }
    }

    private func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

/// `SenderBuckets` behind a lock, shared by the routing paths.
package final class SenderRateLimit: Sendable {
    private let buckets: Mutex<SenderBuckets>
    package let spec: RateLimitSpec

    package init(spec: RateLimitSpec) {
        self.spec = spec
        self.buckets = Mutex(SenderBuckets(spec: spec))
    }

    package func take(sender: String, now: ContinuousClock.Instant = .now) -> SenderBuckets.Decision {
        buckets.withLock { $0.take(sender: sender, now: now) }
    }
}
