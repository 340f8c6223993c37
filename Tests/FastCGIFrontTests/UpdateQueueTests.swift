import NIOCore
import NIOEmbedded
import Synchronization
import Testing
import XMPPCore

@testable import FastCGIFront

/// The update queue of a pull route (SPEC §17), on an embedded event loop whose clock the test moves.
@Suite struct UpdateQueueTests {
    func message(_ body: String) -> Stanza {
        var stanza = Stanza(kind: .message, type: "chat", from: "alice@example.org/phone", to: "inbox@bot.example.org")
        stanza.element.append(Element("body", namespace: Namespace.client, text: body))
        return stanza
    }

    func bodies(_ updates: [UpdateQueue.Update]) -> [String] {
        updates.compactMap { update in
            guard case .object(let object)? = try? JSONValue.parse(update.json), case .string(let body)? = object["body"] else { return nil }
            return body
        }
    }

    /// Collects what a fetch or stream delivers.
    final class Box: Sendable {
        let value = Mutex<[[UpdateQueue.Update]]>([])
        func add(_ updates: [UpdateQueue.Update]) { value.withLock { $0.append(updates) } }
        var all: [[UpdateQueue.Update]] { value.withLock { $0 } }
    }

    @Test func offsetAcknowledgesAndIdsOnlyGrow() {
        let queue = UpdateQueue(route: "inbox", capacity: 10, retention: .seconds(60), loop: EmbeddedEventLoop(), firstID: 500)
        for body in ["a", "b", "c"] { queue.append(message(body)) }
        let box = Box()
        _ = queue.fetch(offset: nil, limit: 2, timeout: .zero) { box.add($0) }
        #expect(box.all.first.map(bodies) == ["a", "b"])
        #expect(box.all.first?.map(\.id) == [500, 501])
        _ = queue.fetch(offset: 502, limit: 10, timeout: .zero) { box.add($0) }
        #expect(box.all.last.map(bodies) == ["c"])
        #expect(queue.count == 1, "a and b acknowledged")
        let response = RestAPI.updatesResponse(box.all.last ?? [], offset: 502)
        #expect(String(decoding: response.body, as: UTF8.self).hasSuffix(",\"next_offset\":503}"))
    }

    @Test func aFullQueueDropsTheOldestAndSaysSo() {
        let drops = Mutex<[Int]>([])
        let queue = UpdateQueue(route: "small", capacity: 2, retention: .seconds(60), loop: EmbeddedEventLoop(), firstID: 1,
                                onDrop: { _, total in drops.withLock { $0.append(total) } })
        for body in ["a", "b", "c", "d"] { queue.append(message(body)) }
        let box = Box()
        _ = queue.fetch(offset: nil, limit: 10, timeout: .zero) { box.add($0) }
        #expect(box.all.first.map(bodies) == ["c", "d"])
        #expect(drops.withLock { $0 } == [1, 2])
    }

    @Test func aWaitingFetchGetsTheNextUpdateAtOnceAndAnEmptyListAtItsTimeout() {
        let loop = EmbeddedEventLoop()
        let queue = UpdateQueue(route: "inbox", capacity: 10, retention: .seconds(60), loop: loop, firstID: 1)
        let box = Box()
        let waiting = queue.fetch(offset: nil, limit: 10, timeout: .seconds(30)) { box.add($0) }
        #expect(waiting != nil && box.all.isEmpty && queue.listeners.fetches == 1)
        queue.append(message("now"))
        #expect(box.all.map(bodies) == [["now"]])
        #expect(queue.listeners.fetches == 0)
        let second = Box()
        _ = queue.fetch(offset: 2, limit: 10, timeout: .seconds(30)) { second.add($0) }
        loop.advanceTime(by: .seconds(29))
        #expect(second.all.isEmpty)
        loop.advanceTime(by: .seconds(1))
        #expect(second.all.count == 1 && second.all.first?.isEmpty == true, "the timeout answers with no updates")
    }

    @Test func aCancelledFetchEndsAtOnceAndLeavesNothingBehind() {
        let queue = UpdateQueue(route: "inbox", capacity: 10, retention: .seconds(60), loop: EmbeddedEventLoop(), firstID: 1)
        let box = Box()
        let waiting = queue.fetch(offset: nil, limit: 10, timeout: .seconds(30)) { box.add($0) }
        waiting?.cancel()
        #expect(box.all.count == 1 && queue.listeners.fetches == 0)
        queue.append(message("later"))
        #expect(box.all.count == 1, "delivered once")
    }

    @Test func aStreamGetsTheBacklogAfterItsLastIdThenEachNewUpdateAndAcknowledgesThem() {
        let queue = UpdateQueue(route: "stream", capacity: 10, retention: .seconds(60), loop: EmbeddedEventLoop(), firstID: 1)
        for body in ["a", "b", "c"] { queue.append(message(body)) }
        let box = Box()
        let subscription = queue.subscribe(after: 1, send: { box.add([$0]) })
        #expect(box.all.flatMap(bodies) == ["b", "c"])
        queue.append(message("d"))
        #expect(box.all.flatMap(bodies) == ["b", "c", "d"])
        #expect(queue.count == 0, "written events are acknowledged")
        subscription.cancel()
        queue.append(message("e"))
        #expect(box.all.count == 3 && queue.count == 1, "after the client left, updates wait")
    }

    @Test func updatesOlderThanTheRetentionAreDropped() {
        let start = ContinuousClock.now
        let clock = Mutex(start)
        let queue = UpdateQueue(route: "inbox", capacity: 10, retention: .seconds(60), loop: EmbeddedEventLoop(), firstID: 1,
                                now: { clock.withLock { $0 } })
        queue.append(message("old"))
        clock.withLock { $0 = start + .seconds(61) }
        queue.append(message("new"))
        let box = Box()
        _ = queue.fetch(offset: nil, limit: 10, timeout: .zero) { box.add($0) }
        #expect(box.all.first.map(bodies) == ["new"])
    }

    @Test func aLastEventIdAtTheTopOfTheRangeResumesAfterEverythingWithoutTrapping() {
        let queue = UpdateQueue(route: "stream", capacity: 10, retention: .seconds(60), loop: EmbeddedEventLoop(), firstID: 1)
        queue.append(message("a"))
        let box = Box()
        let subscription = queue.subscribe(after: Int64.max, send: { box.add([$0]) })
        #expect(box.all.isEmpty)
        queue.append(message("b"))
        #expect(box.all.flatMap(bodies) == ["b"])
        subscription.cancel()
    }

    @Test func closingTheQueueAnswersWaitingFetchesAndEndsStreams() {
        let queue = UpdateQueue(route: "gone", capacity: 10, retention: .seconds(60), loop: EmbeddedEventLoop(), firstID: 1)
        let fetched = Box()
        _ = queue.fetch(offset: nil, limit: 10, timeout: .seconds(30)) { fetched.add($0) }
        let ended = Mutex(false)
        _ = queue.subscribe(after: nil, send: { _ in }, end: { ended.withLock { $0 = true } })
        queue.close()
        #expect(fetched.all.count == 1 && fetched.all.first?.isEmpty == true)
        #expect(ended.withLock { $0 })
        #expect(queue.listeners == (0, 0))
    }

    @Test func anOpenStreamGetsUpdatesInOrderAndTheyAreNotQueuedForFetches() {
        let queue = UpdateQueue(route: "stream", capacity: 10, retention: .seconds(60), loop: EmbeddedEventLoop(), firstID: 1)
        let box = Box()
        let subscription = queue.subscribe(after: nil, send: { box.add([$0]) })
        for body in ["a", "b", "c"] { queue.append(message(body)) }
        #expect(box.all.flatMap { $0.map(\.id) } == [1, 2, 3])
        #expect(queue.count == 0)
        subscription.cancel()
    }
}
