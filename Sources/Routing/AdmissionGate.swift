// Bounded concurrency with a bounded FIFO queue: `concurrency` runs at once, `queue` more may wait,
// anything beyond is refused at arrival (SPEC §4 concurrency/queue, §5.3 resource-constraint). A waiter whose
// task is cancelled leaves the queue, and closing the gate (shutdown) turns every waiter away: neither runs.

import DequeModule
import Synchronization

package final class AdmissionGate: Sendable {
    package let concurrency: Int
    /// nil: unbounded waiting (the global process limit, whose waiters are already bounded by their routes).
    package let queue: Int?

    private struct Waiter {
        let id: Int
        /// Resumed with true when the run slot passes to it, false when it is turned away.
        let continuation: CheckedContinuation<Bool, Never>
    }

    private struct State {
        var admitted = 0
        var running = 0
        var waiters: Deque<Waiter> = []
        var nextWaiter = 0
        /// Shutting down: nobody waits for a slot any more.
        var closed = false
    }

    private let state = Mutex(State())

    package init(concurrency: Int, queue: Int?) {
        self.concurrency = max(1, concurrency)
        self.queue = queue
    }

    /// Reserves a place (running or waiting). False: the route is full; the caller answers resource-constraint.
    /// Decided at arrival, synchronously, so overflow is exact even when many stanzas arrive at once.
    package func admit() -> Bool {
        state.withLock { state in
            if let queue, state.admitted >= concurrency + queue { return false }
            state.admitted += 1
            return true
        }
    }

    /// Waits for a run slot. Call after `admit()` returned true (or without it when `queue` is nil).
    /// True: the slot is taken; `release()` gives it back. False: the caller's task was cancelled or the gate was
    /// closed before a slot came; the admission is given back already and nothing may run.
    ///
    /// A free slot is taken even after `close`: a stanza admitted before shutdown whose task comes here only after
    /// it would not have waited (a take-over's last stanzas, read just before the link closed), so it runs instead
    /// of being turned away. Only waiting is refused.
    package func acquire() async -> Bool {
        let id = state.withLock { state -> Int? in
            if queue == nil { state.admitted += 1 }
            if state.running < concurrency, !Task.isCancelled {
                state.running += 1
                return nil
            }
            state.nextWaiter += 1
            return state.nextWaiter
        }
        guard let id else { return true }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let now = state.withLock { state -> Bool? in
                    // Checked under the lock: a cancellation either came before (seen here) or finds the waiter.
                    if state.closed || Task.isCancelled {
                        state.admitted -= 1
                        return false
                    }
                    if state.running < concurrency {
                        state.running += 1
                        return true
                    }
                    state.waiters.append(Waiter(id: id, continuation: continuation))
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> Waiter? in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                state.admitted -= 1
                return state.waiters.remove(at: index)
            }
            waiter?.continuation.resume(returning: false)
        }
    }

    /// Shutdown: every waiter is turned away now (its `acquire` returns false) and so is every later one. Runs
    /// that hold a slot are not touched.
    package func close() {
        let waiters = state.withLock { state -> Deque<Waiter> in
            state.closed = true
            let waiters = state.waiters
            state.waiters.removeAll()
            state.admitted -= waiters.count
            return waiters
        }
        for waiter in waiters { waiter.continuation.resume(returning: false) }
    }

    /// Takes a run slot if one is free right now (never while others wait: a free slot means nobody does).
    /// Call after `admit()` returned true (or without it when `queue` is nil); `release()` gives it back.
    package func tryAcquire() -> Bool {
        state.withLock { state in
            guard state.running < concurrency, !state.closed else { return false }
            if queue == nil { state.admitted += 1 }
            state.running += 1
            return true
        }
    }

    /// Gives the run slot (and the admission) back; the longest waiter runs next.
    package func release() {
        let next = state.withLock { state -> Waiter? in
            state.admitted -= 1
            if let waiter = state.waiters.popFirst() { return waiter }  // the slot passes on: running unchanged
            state.running -= 1
            return nil
        }
        next?.continuation.resume(returning: true)
    }

    /// Gives back an admission that will never wait for a slot (its stanza was turned away after `admit()`).
    package func withdraw() {
        state.withLock { $0.admitted -= 1 }
    }

    /// Stanzas admitted and not yet released (running plus waiting).
    package var load: Int { state.withLock { $0.admitted } }

    /// Stanzas waiting for a run slot.
    package var waiting: Int { state.withLock { $0.waiters.count } }

    /// Run slots free right now (none while anyone waits: a free slot means nobody does).
    package var freeSlots: Int { state.withLock { $0.waiters.isEmpty ? max(0, concurrency - $0.running) : 0 } }
}
