// A worker's stdin: our own pipe, written by whoever hands the worker a request, with a nonblocking write(2): no
// task, thread or hop to another loop between a stanza arriving and the worker seeing it. On an event loop (the
// link reading stanzas) the lines of one turn are gathered and written together at its end: a socket read carries
// many stanzas, and written one by one each line would be a write(2) and a wake-up of the worker, which on a busy
// machine preempts the loop and is preempted back once per stanza. Elsewhere a line is written at once. When the
// pipe is full (the worker is not reading) the remaining bytes wait in a buffer that the process loop flushes as it
// drains.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CSpawn
import NIOCore
import NIOPosix
import Synchronization

final class WorkerInput: ProcessLoopWatcher, Sendable {
    /// The read end, for the worker's fd 0 (blocking; the spawn closes our copy).
    let readEnd: Int32
    private let writeEnd: Int32
    private let loop: ProcessLoop
    private let state: Mutex<State>

    private struct State {
        /// Bytes accepted but not yet in the pipe, in order: gathered for the end of this event-loop turn, or
        /// waiting for room.
        var pending: [UInt8] = []
        /// No more lines: close once `pending` is written.
        var closing = false
        /// The write end is closed (or broken); every later `send` is refused.
        var closed = false
        /// The loop watches the write end for room (only while `pending` is not empty).
        var watched = false
        var closedCallbacks: [@Sendable () -> Void] = []
    }

    /// Creates the pipe; what does not fit is flushed by `loop`.
    init(loop: ProcessLoop = .shared) throws(SystemCallError) {
        _ = ProcessRunner.ignoreBrokenPipes
        var ends: [Int32] = [-1, -1]
        guard stanzad_pipe(&ends, O_CLOEXEC) == 0 else { throw SystemCallError(code: errno) }
        readEnd = ends[0]
        writeEnd = ends[1]
        _ = fcntl(writeEnd, F_SETFL, fcntl(writeEnd, F_GETFL) | O_NONBLOCK)
        self.loop = loop
        state = Mutex(State())
    }

    /// Queues `line` for the worker, writing as much as the pipe takes right now. False when the input is
    /// closed (the worker takes no more requests, or its stdin broke): the caller must place the request elsewhere.
    @discardableResult
    func send(_ line: [UInt8]) -> Bool {
        enum Then { case nothing, flushAtEndOfTurn, waitForRoom }
        // NIO runs the tasks queued during a turn right after that turn's I/O, in the same wake-up.
        let turn = MultiThreadedEventLoopGroup.currentEventLoop
        let (accepted, then, callbacks) = state.withLock { state -> (Bool, Then, [@Sendable () -> Void]) in
            guard !state.closed, !state.closing else { return (false, .nothing, []) }
            if !state.pending.isEmpty {
                // Gathered for this turn, or waiting for room: goes out with the rest.
                state.pending += line
                return (true, .nothing, [])
            }
            if turn != nil {
                state.pending = line
                return (true, .flushAtEndOfTurn, [])
            }
            let written = writeSome(line[...])
            if written < 0 {
                state.closing = true
                return (false, .nothing, finish(&state))
            }
            if written == line.count { return (true, .nothing, []) }
            state.pending = Array(line[written...])
            return (true, .waitForRoom, [])
        }
        for callback in callbacks { callback() }
        switch then {
        case .nothing: break
        case .flushAtEndOfTurn: turn?.execute { self.flushAtEndOfTurn() }
        case .waitForRoom: loop.execute { self.watchForRoom() }
        }
        return accepted
    }

    /// The end of the event-loop turn that gathered lines: they are written together.
    private func flushAtEndOfTurn() {
        let (waitForRoom, callbacks) = state.withLock { state -> (Bool, [@Sendable () -> Void]) in
            // Closed since, or the process loop already waits for room and writes `pending` itself.
            guard !state.closed, !state.watched, !state.pending.isEmpty else { return (false, []) }
            writePending(&state)
            if state.pending.isEmpty { return (false, state.closing ? finish(&state) : []) }
            return (true, [])
        }
        for callback in callbacks { callback() }
        if waitForRoom { loop.execute { self.watchForRoom() } }
    }

    /// No more lines: stdin is closed once what was accepted has been written (the worker then sees EOF).
    func close() {
        let callbacks = state.withLock { state -> [@Sendable () -> Void] in
            state.closing = true
            guard !state.closed, state.pending.isEmpty else { return [] }
            return finish(&state)
        }
        for callback in callbacks { callback() }
    }

    /// Calls `callback` once stdin is closed (at once if it is), on the thread that closes it.
    func whenClosed(_ callback: @escaping @Sendable () -> Void) {
        let now = state.withLock { state -> Bool in
            if state.closed { return true }
            state.closedCallbacks.append(callback)
            return false
        }
        if now { callback() }
    }

    /// Returns once stdin is closed.
    func waitUntilClosed() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            whenClosed { continuation.resume() }
        }
    }

    // MARK: On the loop's thread

    /// The pipe was full: the loop writes the rest as it drains.
    private func watchForRoom() {
        let callbacks = state.withLock { state -> [@Sendable () -> Void] in
            guard !state.closed, !state.pending.isEmpty, !state.watched else { return [] }
            state.watched = loop.watch(writeEnd, readable: false, by: self)
            guard !state.watched else { return [] }
            state.pending = []
            state.closing = true
            return finish(&state)
        }
        for callback in callbacks { callback() }
    }

    func ready(_ fd: Int32) {
        let callbacks = state.withLock { state -> [@Sendable () -> Void] in
            guard !state.closed, state.watched else { return [] }
            writePending(&state)
            guard state.pending.isEmpty else { return [] }
            loop.stopWatching(writeEnd)
            state.watched = false
            return state.closing ? finish(&state) : []
        }
        for callback in callbacks { callback() }
    }

    // MARK: Under the lock

    /// Writes as much of `pending` as the pipe takes; a broken pipe drops it and closes the input.
    private func writePending(_ state: inout State) {
        let written = writeSome(state.pending[...])
        if written < 0 {
            state.pending = []
            state.closing = true
        } else {
            state.pending.removeFirst(written)
        }
    }

    /// Writes without blocking; the count written (0 when the pipe is full), or -1 when the pipe is broken.
    private func writeSome(_ bytes: ArraySlice<UInt8>) -> Int {
        var total = 0
        while total < bytes.count {
            let count = bytes.withUnsafeBytes { buffer in
                write(writeEnd, buffer.baseAddress.map { $0 + total }, buffer.count - total)
            }
            if count > 0 {
                total += count
            } else if count < 0 && errno == EINTR {
                continue
            } else if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                break
            } else {
                return -1
            }
        }
        return total
    }

    /// Closes the write end (never while the loop watches it); returns the callbacks to run outside the lock.
    private func finish(_ state: inout State) -> [@Sendable () -> Void] {
        state.closed = true
        state.pending = []
        _ = Glibc.close(writeEnd)
        defer { state.closedCallbacks = [] }
        return state.closedCallbacks
    }
}
