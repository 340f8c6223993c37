// Stanzas taken aside for a waiting request instead of going to the router: the results of a XEP-0313 archive
// query made through REST arrive as messages before the iq's result, and mod_rest answers them all together.

import Synchronization
import XMPPCore

package final class StanzaCollectors: Sendable {
    private struct Entry {
        let matches: @Sendable (Stanza) -> Bool
        var taken: [Stanza] = []
    }

    private struct State {
        var next: UInt64 = 0
        var entries: [UInt64: Entry] = [:]
    }

    private let state = Mutex(State())
    /// How many collectors exist: arriving stanzas skip the lock while there are none (the usual case).
    private let count = Atomic<Int>(0)

    package init() {}

    /// Starts taking the stanzas `matches` accepts; `finish` with the returned token ends it.
    package func start(_ matches: @escaping @Sendable (Stanza) -> Bool) -> UInt64 {
        let token = state.withLock { state in
            state.next += 1
            state.entries[state.next] = Entry(matches: matches)
            return state.next
        }
        count.add(1, ordering: .relaxed)
        return token
    }

    /// Ends a collector and returns what it took, in arrival order.
    package func finish(_ token: UInt64) -> [Stanza] {
        let entry = state.withLock { $0.entries.removeValue(forKey: token) }
        if entry != nil { count.subtract(1, ordering: .relaxed) }
        return entry?.taken ?? []
    }

    /// True when a collector took `stanza` (it then goes nowhere else).
    package func take(_ stanza: Stanza) -> Bool {
        guard count.load(ordering: .relaxed) > 0 else { return false }
        return state.withLock { state in
            for (token, entry) in state.entries where entry.matches(stanza) {
                state.entries[token]?.taken.append(stanza)
                return true
            }
            return false
        }
    }
}
