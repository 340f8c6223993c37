import Testing

@testable import Routing

@Suite struct SenderRateLimitTests {
    let start = ContinuousClock.now

    @Test func aSenderGetsItsBurstThenOneStanzaPerRefill() {
        var buckets = SenderBuckets(spec: RateLimitSpec(count: 3, seconds: 3))  // 1 token per second
        let decisions = (0..<5).map { _ in buckets.take(sender: "a@x", now: start) }
        #expect(decisions == [.allowed, .allowed, .allowed, .limited(refusedInARow: 1), .limited(refusedInARow: 2)])
        #expect(buckets.take(sender: "a@x", now: start + .milliseconds(900)) == .limited(refusedInARow: 3))
        #expect(buckets.take(sender: "a@x", now: start + .milliseconds(1000)) == .allowed)
        #expect(buckets.take(sender: "a@x", now: start + .milliseconds(1100)) == .limited(refusedInARow: 1))
    }

    @Test func sendersHaveTheirOwnBuckets() {
        var buckets = SenderBuckets(spec: RateLimitSpec(count: 1, seconds: 10))
        #expect(buckets.take(sender: "a@x", now: start) == .allowed)
        #expect(buckets.take(sender: "a@x", now: start) == .limited(refusedInARow: 1))
        #expect(buckets.take(sender: "b@x", now: start) == .allowed)
    }

    @Test func aQuietSenderIsForgottenWithAFullBucket() {
        var buckets = SenderBuckets(spec: RateLimitSpec(count: 2, seconds: 10))
        for index in 0..<100 { _ = buckets.take(sender: "user\(index)@x", now: start) }
        #expect(buckets.trackedSenders == 100)
        _ = buckets.take(sender: "late@x", now: start + .seconds(11))
        #expect(buckets.trackedSenders == 1)
        // The bucket never exceeds its size however long the sender was away.
        let burst = (0..<3).map { _ in buckets.take(sender: "late@x", now: start + .seconds(100)) }
        #expect(burst == [.allowed, .allowed, .limited(refusedInARow: 1)])
    }

    @Test(arguments: [("20/10s", 20, 10), ("5/1s", 5, 1), ("100/60", 100, 60)])
    func ratesParse(text: String, count: Int, seconds: Int) throws {
        #expect(try RateLimitSpec.parse(text).get() == RateLimitSpec(count: count, seconds: seconds))
    }

    @Test(arguments: ["20", "20/", "/10s", "a/10s", "0/10s", "20/0s", "20/10m", "1/2/3s"])
    func malformedRatesSayWhatIsExpected(text: String) {
        guard case .failure(let failure) = RateLimitSpec.parse(text) else {
            Issue.record("\(text) parsed")
            return
        }
        #expect(failure.description.contains(text))
    }
}
