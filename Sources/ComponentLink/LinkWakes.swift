// Wakes of a link's event loop asked for by a thread that hands over a batch of stanzas one by one.

import NIOPosix

/// While `deferring` runs on a thread, a link asked from that thread to write what was queued is woken when
/// `deferring` returns, not at once.
///
/// The process loop hands a worker's answers to the link one by one, as it parses the lines of one read. Woken at
/// the first answer, the link's event loop (on a busy machine, often at once, on the same core) would write that
/// one alone, and the rest of the read in a second write: the server then reads, and answers, a batch in pieces.
/// Deferred, the link is woken once per read and writes the batch as one buffer.
package enum LinkWakes {
    private final class Pending: @unchecked Sendable {
        // Touched only by the thread that owns it (thread-specific).
        var wakes: [@Sendable () -> Void] = []
        var depth = 0
    }

    private static let pending = ThreadSpecificVariable<Pending>()

    /// Runs `body`; link wakes it asks for run, in order, when it returns (when the outermost call returns).
    package static func deferring<T>(_ body: () throws -> T) rethrows -> T {
        let state: Pending
        if let current = pending.currentValue {
            state = current
        } else {
            state = Pending()
            pending.currentValue = state
        }
        state.depth += 1
        defer {
            state.depth -= 1
            if state.depth == 0, !state.wakes.isEmpty {
                let wakes = state.wakes
                state.wakes.removeAll(keepingCapacity: true)
                for wake in wakes { wake() }
            }
        }
        return try body()
    }

    /// Runs `wake` now, or when the thread's `deferring` returns.
    static func wake(_ wake: @escaping @Sendable () -> Void) {
        if let state = pending.currentValue, state.depth > 0 {
            state.wakes.append(wake)
        } else {
            wake()
        }
    }
}
