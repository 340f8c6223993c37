import Synchronization

/// A value made the first time its key is asked for and handed out again after that: a metric for each value of
/// its labels, say, which would otherwise be looked up in the metrics factory (an object, its dimensions and a lock)
/// on every request. Nothing is ever removed, so the keys must come from a small set.
package final class MadeOncePerKey<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private let values = Mutex<[Key: Value]>([:])
    private let make: @Sendable (Key) -> Value

    package init(_ make: @escaping @Sendable (Key) -> Value) {
        self.make = make
    }

    /// The value for `key`, made now (under the lock, so once) if it is the first time.
    package subscript(key: Key) -> Value {
        values.withLock { values in
            if let value = values[key] { return value }
            let value = make(key)
            values[key] = value
            return value
        }
    }
}
