import Testing
import XMPPCore

@testable import ComponentLink

/// Waiters and repliers are plain labels here: the queue only keeps and returns them.
private typealias Queue = OutboundQueue<String, String>

private func item(_ label: String, deadline: ContinuousClock.Instant, iq: String? = nil) -> Queue.Item {
    Queue.Item(xml: "<message id='\(label)'/>", deadline: deadline, waiter: iq == nil ? label : nil, iqID: iq)
}

@Suite struct OutboundQueueTests {
    let t0 = ContinuousClock.now

    /// A take-over's leave writes what is not spooled and leaves the spooled stanzas, in order, for the other
    /// process (which sends them once from the spool).
    @Test func leavingTakesWhatIsNotSpooledAndKeepsTheSpooledInOrder() {
        var queue = Queue(capacity: 10)
        let forever = t0 + .seconds(3600)
        queue.appendSpooled([Queue.Item(xml: "<message id='s1'/>", deadline: forever, waiter: nil, iqID: nil, seq: 1)])
        try? queue.request(item("q1", deadline: t0 + .seconds(2), iq: "q1"), id: "q1",
                           iq: Queue.PendingIQ(deadline: t0 + .seconds(2), to: "a@b", replier: "rest-1"), maxPending: 10)
        queue.appendSpooled([Queue.Item(xml: "<message id='s2'/>", deadline: forever, waiter: nil, iqID: nil, seq: 2)])
        try? queue.append(item("m1", deadline: t0 + .seconds(60)))
        let taken = queue.takeUnspooled()
        #expect(taken.map(\.xml) == ["<message id='q1'/>", "<message id='m1'/>"])
        #expect(queue.pending["q1"]?.sent == true, "a written iq waits for its reply as sent")
        #expect(queue.items.map(\.seq) == [1, 2])
        #expect(queue.takeUnspooled().isEmpty)
    }

    @Test func aWaitingSenderExpiresAtItsDeadlineWithNothingElseHappening() {
        var queue = Queue(capacity: 10)
        try? queue.append(item("wait2s", deadline: t0 + .seconds(2)))
        try? queue.append(item("ttl60s", deadline: t0 + .seconds(60)))
        #expect(queue.nextDeadline == t0 + .seconds(2), "the shell is told to wake at the earliest deadline")
        #expect(queue.expire(now: t0 + .milliseconds(1999)).isEmpty)
        let due = queue.expire(now: t0 + .seconds(2))
        #expect(due.items.map(\.waiter) == ["wait2s"])
        #expect(queue.items.map(\.waiter) == ["ttl60s"])
        #expect(queue.nextDeadline == t0 + .seconds(60))
    }

    @Test func anIqTimesOutAtItsOwnDeadlineWhetherQueuedOrSent() {
        var queue = Queue(capacity: 10)
        // Link down: the request stays queued; its timeout (2 s) is shorter than send_queue_ttl.
        try? queue.request(item("q1", deadline: t0 + .seconds(2), iq: "q1"), id: "q1",
                           iq: Queue.PendingIQ(deadline: t0 + .seconds(2), to: "a@b", replier: "rest-1"), maxPending: 10)
        // Link up: the request was written, the reply does not come.
        try? queue.request(item("q2", deadline: t0 + .seconds(3), iq: "q2"), id: "q2",
                           iq: Queue.PendingIQ(deadline: t0 + .seconds(3), to: "a@b", replier: "rest-2"), maxPending: 10)
        #expect(queue.nextDeadline == t0 + .seconds(2))
        let due = queue.expire(now: t0 + .seconds(2))
        #expect(due.iqs.map(\.iq.replier) == ["rest-1"])
        #expect(due.iqs.map(\.code) == [.timeout], "a timed-out iq is a timeout (504), not a queue expiry")
        #expect(due.items.isEmpty && queue.items.map(\.iqID) == ["q2"], "its request is dropped, nobody waits for it")
        #expect(queue.takeAll().map(\.iqID) == ["q2"])
        #expect(queue.pending["q2"]?.sent == true)
        #expect(queue.nextDeadline == t0 + .seconds(3), "a sent iq still has its deadline")
        let later = queue.expire(now: t0 + .seconds(3))
        #expect(later.iqs.map(\.iq.replier) == ["rest-2"] && later.iqs.map(\.code) == [.timeout])
        #expect(queue.isEmpty && queue.nextDeadline == nil)
    }

    @Test func anIqWhoseRequestOutlivesTheQueueTTLExpires() {
        var queue = Queue(capacity: 10)
        try? queue.request(item("q", deadline: t0 + .seconds(60), iq: "q"), id: "q",
                           iq: Queue.PendingIQ(deadline: t0 + .seconds(120), to: nil, replier: "rest"), maxPending: 10)
        let due = queue.expire(now: t0 + .seconds(60))
        #expect(due.iqs.map(\.code) == [.expired])
        #expect(queue.isEmpty)
    }

    @Test func limitsAndDuplicates() {
        var queue = Queue(capacity: 1)
        #expect(throws: Never.self) { try queue.append(item("a", deadline: t0 + .seconds(1))) }
        #expect { try queue.append(item("b", deadline: t0 + .seconds(1))) } throws: { ($0 as? SendError)?.code == .queueFull }
        var iqs = Queue(capacity: 10)
        let pending = Queue.PendingIQ(deadline: t0 + .seconds(5), to: nil, replier: "r")
        #expect(throws: Never.self) { try iqs.request(item("x", deadline: t0 + .seconds(5), iq: "x"), id: "x", iq: pending, maxPending: 2) }
        #expect { try iqs.request(item("x", deadline: t0 + .seconds(5), iq: "x"), id: "x", iq: pending, maxPending: 2) } throws: {
            ($0 as? SendError)?.code == .duplicateID
        }
        #expect(throws: Never.self) { try iqs.request(item("y", deadline: t0 + .seconds(5), iq: "y"), id: "y", iq: pending, maxPending: 2) }
        #expect { try iqs.request(item("z", deadline: t0 + .seconds(5), iq: "z"), id: "z", iq: pending, maxPending: 2) } throws: {
            ($0 as? SendError)?.code == .tooManyPending
        }
        #expect(iqs.items.count == 2, "a refused request is not queued")
    }

    @Test func repliesCancellationAndLinkLoss() {
        var queue = Queue(capacity: 10)
        for id in ["a", "b", "c"] {
            try? queue.request(item(id, deadline: t0 + .seconds(5), iq: id), id: id,
                               iq: Queue.PendingIQ(deadline: t0 + .seconds(5), to: "x@y/r", replier: id), maxPending: 10)
        }
        _ = queue.takeAll()  // a, b, c written
        try? queue.request(item("d", deadline: t0 + .seconds(5), iq: "d"), id: "d",
                           iq: Queue.PendingIQ(deadline: t0 + .seconds(5), to: "x@y/r", replier: "d"), maxPending: 10)
        #expect(queue.resolve(id: "a", from: "elsewhere@y") == nil, "only a reply from the addressee counts")
        #expect(queue.resolve(id: "a", from: "x@y/r")?.replier == "a")
        #expect(queue.cancelRequest(id: "d")?.replier == "d")
        #expect(queue.items.isEmpty, "a cancelled request is not sent")
        #expect(queue.removeSent().map(\.replier).sorted() == ["b", "c"])
        #expect(queue.isEmpty)
    }
}
