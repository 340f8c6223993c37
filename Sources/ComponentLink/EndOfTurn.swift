// Writes that can wait for the end of the event loop's current turn. A socket read can carry many stanzas
// (a client keeps 16 or 64 in flight, and they arrive together); each is handled as it is decoded, and each
// may write a line to a worker's stdin. Written one by one, every line is a write(2) and a wake-up of the worker,
// which on a busy machine preempts the loop and is preempted back once per stanza. Written at the end of the turn,
// the lines of one read leave together: one write, one wake-up.

import NIOCore
import NIOPosix

package struct EndOfTurn: Sendable {
    private let loop: any EventLoop

    /// The turn of the event loop running on this thread; nil on any other thread.
    package static var current: EndOfTurn? {
        MultiThreadedEventLoopGroup.currentEventLoop.map { EndOfTurn(loop: $0) }
    }

    /// Runs `job` once the loop has handled the I/O of this turn (NIO runs the tasks queued during a turn after
    /// that turn's events, in the same wake-up).
    package func schedule(_ job: @escaping @Sendable () -> Void) {
        loop.execute(job)
    }
}
