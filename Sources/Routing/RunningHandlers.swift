// Counts the handlers the router has started and not yet finished, and lets shutdown wait for the count to
// reach zero: the last handler to finish resumes the waiter, so nothing polls.

import Synchronization

final class RunningHandlers: Sendable {
    private struct State {
        var count = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
    }

    private let state = Mutex(State())

    var count: Int { state.withLock { $0.count } }

    /// Tasks waiting in `idle()` (for tests).
    var waiting: Int { state.withLock { $0.waiters.count } }

    /// A handler started.
    func enter() {
        state.withLock { $0.count += 1 }
    }

    /// A handler finished; the last one resumes whoever waits for the count to reach zero.
    func leave() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.count -= 1
            guard state.count == 0 else { return [] }
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns when no handler runs, or when the calling task is cancelled.
    func idle() async {
        let id = state.withLock { state -> Int in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    // Checked under the lock: a cancellation either came before (seen here) or finds the waiter.
                    if state.count == 0 || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }

    /// Waits until no handler runs or `deadline` passes, whichever comes first; true when none runs.
    func drained(by deadline: ContinuousClock.Instant) async -> Bool {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.idle() }
            group.addTask { try? await Task.sleep(until: deadline, clock: .continuous) }
            _ = await group.next()
            group.cancelAll()
        }
        return count == 0
    }
}
