// Bounded concurrency with a bounded FIFO queue: `concurrency` runs at once, `queue` more may wait,
// anything beyond is refused at arrival (SPEC §4 concurrency/queue, §5.3 resource-constraint).

import DequeModule
import Synchronization

public final class AdmissionGate: Sendable {
    public let concurrency: Int
    /// nil: unbounded waiting (the global process limit, whose waiters are already bounded by their routes).
    public let queue: Int?

    private struct State {
        var admitted = 0
        var running = 0
        var waiters: Deque<CheckedContinuation<Void, Never>> = []
    }

    private let state = Mutex(State())

    public init(concurrency: Int, queue: Int?) {
        self.concurrency = max(1, concurrency)
        self.queue = queue
    }

    /// Reserves a place (running or waiting). False: the route is full; the caller answers resource-constraint.
    /// Decided at arrival, synchronously, so overflow is exact even when many stanzas arrive at once.
    public func admit() -> Bool {
        state.withLock { state in
            if let queue, state.admitted >= concurrency + queue { return false }
            state.admitted += 1
            return true
        }
    }

    /// Waits for a run slot. Call after `admit()` returned true (or without it when `queue` is nil).
    public func acquire() async {
        let granted = state.withLock { state -> Bool in
            if queue == nil { state.admitted += 1 }
            if state.running < concurrency {
                state.running += 1
                return true
            }
            return false
        }
        if granted { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLock { state -> Bool in
                if state.running < concurrency {
                    state.running += 1
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    /// Takes a run slot if one is free right now (never while others wait: a free slot means nobody does).
    /// Call after `admit()` returned true (or without it when `queue` is nil); `release()` gives it back.
    public func tryAcquire() -> Bool {
        state.withLock { state in
            guard state.running < concurrency else { return false }
            if queue == nil { state.admitted += 1 }
            state.running += 1
            return true
        }
    }

    /// Gives the run slot (and the admission) back; the longest waiter runs next.
    public func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.admitted -= 1
            if let waiter = state.waiters.popFirst() { return waiter }  // the slot passes on: running unchanged
            state.running -= 1
            return nil
        }
        next?.resume()
    }

    /// Stanzas admitted and not yet released (running plus waiting).
    public var load: Int { state.withLock { $0.admitted } }

    /// Stanzas waiting for a run slot.
    public var waiting: Int { state.withLock { $0.waiters.count } }
}
