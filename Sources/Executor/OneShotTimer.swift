// A deadline that costs nothing once cancelled. A cancelled `Task.sleep` keeps its timer (and memory) until
// the original deadline passes; at hundreds of handler runs per second with 10 s timeouts that is megabytes
// held for nothing. A cancelled dispatch timer is released at once.

import Dispatch

final class OneShotTimer: @unchecked Sendable {
    // DispatchSource is thread-safe; it is only scheduled, resumed and cancelled.
    private let source: any DispatchSourceTimer
    private static let queue = DispatchQueue(label: "stanzad.deadlines")

    init(after duration: Duration, action: @escaping @Sendable () -> Void) {
        source = DispatchSource.makeTimerSource(queue: Self.queue)
        let (seconds, attoseconds) = duration.components
        let nanoseconds = max(0, seconds) * 1_000_000_000 + max(0, attoseconds) / 1_000_000_000
        source.schedule(deadline: .now() + .nanoseconds(Int(clamping: nanoseconds)))
        source.setEventHandler(handler: action)
        source.resume()
    }

    func cancel() {
        source.cancel()
    }
}
