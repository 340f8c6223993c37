// Bounds the stanzas read from the server and not yet taken by the router. The link's reader takes one unit per
// stream event before passing it on and waits when none is left; while it waits it reads nothing, so NIO stops
// reading the socket and TCP pushes back to the server instead of memory growing.

import NIOCore
import Synchronization
import XMPPCore

final class InboundBudget: Sendable {
    /// At most this many events are read and not yet handled.
    let limit: Int
    /// A waiting reader resumes when the outstanding count is down to this (half the limit): it then reads a
    /// batch instead of one event per unit given back.
    let resumeAt: Int

    private struct State {
        var outstanding = 0
        var waiter: (id: Int, continuation: CheckedContinuation<Bool, Never>)?
        var nextWaiter = 0
        /// Resumed when a reader starts waiting (`readerWaits`, for tests).
        var watchers: [CheckedContinuation<Void, Never>] = []
        /// Resumed when nothing is outstanding any more (`drained`).
        var drainWaiters: [OneShotWait] = []
    }

    private let state = Mutex(State())

    init(limit: Int) {
        self.limit = max(1, limit)
        self.resumeAt = self.limit / 2
    }

    /// Events read and not yet handled.
    var outstanding: Int { state.withLock { $0.outstanding } }

    /// True while a reader waits for units to come back.
    var isWaiting: Bool { state.withLock { $0.waiter != nil } }

    /// Takes one unit, waiting while none is left. False: the calling task was cancelled first (nothing taken).
    /// One reader at a time.
    func take() async -> Bool {
        let id = state.withLock { state -> Int? in
            if state.outstanding < limit {
                state.outstanding += 1
                return nil
            }
            state.nextWaiter += 1
            return state.nextWaiter
        }
        guard let id else { return true }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                var watchers: [CheckedContinuation<Void, Never>] = []
                let now = state.withLock { state -> Bool? in
                    // Checked under the lock: a cancellation either came before (seen here) or finds the waiter.
                    if Task.isCancelled { return false }
                    if state.outstanding <= resumeAt {
                        state.outstanding += 1
                        return true
                    }
                    state.waiter = (id, continuation)
                    defer { state.watchers.removeAll() }
                    watchers = state.watchers
                    return nil
                }
                for watcher in watchers { watcher.resume() }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Bool, Never>? in
                guard let waiter = state.waiter, waiter.id == id else { return nil }
                state.waiter = nil
                return waiter.continuation
            }
            waiter?.resume(returning: false)
        }
    }

    /// Takes one unit if one is left and no reader waits for units; false otherwise (nothing taken).
    func tryTake() -> Bool {
        state.withLock { state in
            guard state.waiter == nil, state.outstanding < limit else { return false }
            state.outstanding += 1
            return true
        }
    }

    /// Takes one unit without waiting, even beyond the limit (the few events of a handshake).
    func takeNow() {
        state.withLock { $0.outstanding += 1 }
    }

    /// Returns once a reader waits for units (at once if one does already).
    func readerWaits() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.waiter != nil { return true }
                state.watchers.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// `count` events were handled (or dropped with their session).
    func give(_ count: Int = 1) {
        guard count > 0 else { return }
        let (waiter, drained) = state.withLock { state -> (CheckedContinuation<Bool, Never>?, [OneShotWait]) in
            state.outstanding -= count
            var drained: [OneShotWait] = []
            if state.outstanding <= 0, !state.drainWaiters.isEmpty {
                drained = state.drainWaiters
                state.drainWaiters = []
            }
            guard let waiter = state.waiter, state.outstanding <= resumeAt else { return (nil, drained) }
            state.waiter = nil
            state.outstanding += 1  // the waiter's unit
            return (waiter.continuation, drained)
        }
        waiter?.resume(returning: true)
        for waiter in drained { waiter.resume(true) }
    }

    /// Waits until every event read has been handled (for a link that no longer reads: the router has taken the
    /// last stanzas) and returns true; false after `timeout`, run on `loop`.
    func drained(timeout: Duration, on loop: any EventLoop) async -> Bool {
        let waiter = OneShotWait()
        return await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            waiter.set(continuation)
            let waiting = state.withLock { state in
                guard state.outstanding > 0 else { return false }
                state.drainWaiters.append(waiter)
                return true
            }
            guard waiting else { return waiter.resume(true) }
            loop.scheduleTask(in: TimeAmount(timeout)) { [self] in
                state.withLock { $0.drainWaiters.removeAll { $0 === waiter } }
                waiter.resume(false)
            }
        }
    }
}

/// The stanzas addressed to the component, as the router takes them. Taking one gives its unit of the inbound
/// budget back.
package struct InboundStanzas: AsyncSequence, Sendable {
    package typealias Element = Stanza

    let stream: AsyncStream<Stanza>
    let budget: InboundBudget

    package struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncStream<Stanza>.AsyncIterator
        let budget: InboundBudget

        package mutating func next() async -> Stanza? {
            guard let stanza = await base.next() else { return nil }
            budget.give()
            return stanza
        }
    }

    package func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: stream.makeAsyncIterator(), budget: budget)
    }
}
