// A worker's stdin: our own pipe, written by whoever hands the worker a request. A request line is written
// straight from the caller's thread with one nonblocking write(2): no task, thread or event-loop hop between a
// stanza arriving and the worker seeing it. Only when the pipe is full (the worker is not reading) do the
// remaining bytes wait in a buffer that a thread of this input's own flushes as the pipe drains.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CSpawn
import Synchronization
import SystemPackage

final class WorkerInput: Sendable {
    /// The read end, for the worker's fd 0 (blocking; handed to the spawn, which closes our copy).
    let readEnd: Int32
    private let writeEnd: Int32
    private let wake: StopSignal
    private let state: Mutex<State>

    private struct State {
        /// Bytes accepted but not yet in the pipe, in order.
        var pending: [UInt8] = []
        /// No more lines: close once `pending` is written.
        var closing = false
        /// The write end is closed (or broken); every later `send` is refused.
        var closed = false
        var closedWaiters: [CheckedContinuation<Void, Never>] = []
    }

    /// Creates the pipe and starts the flushing thread.
    init() throws(Errno) {
        _ = ProcessRunner.ignoreBrokenPipes
        var ends: [Int32] = [-1, -1]
        guard stanzad_pipe(&ends, O_CLOEXEC) == 0 else { throw Errno(rawValue: errno) }
        readEnd = ends[0]
        writeEnd = ends[1]
        _ = fcntl(writeEnd, F_SETFL, fcntl(writeEnd, F_GETFL) | O_NONBLOCK)
        do {
            wake = try StopSignal()
        } catch {
            _ = Glibc.close(ends[0])
            _ = Glibc.close(ends[1])
            throw error
        }
        state = Mutex(State())
        guard BlockingThread.start({ [self] in flushUntilClosed() }) else {
            wake.close()
            _ = Glibc.close(ends[0])
            _ = Glibc.close(ends[1])
            throw Errno(rawValue: EAGAIN)
        }
    }

    /// Queues `line` for the worker, writing as much as the pipe takes right now. False when the input is
    /// closed (the worker takes no more requests, or its stdin broke): the caller must place the request elsewhere.
    @discardableResult
    func send(_ line: [UInt8]) -> Bool {
        let (accepted, wakeFlusher) = state.withLock { state -> (Bool, Bool) in
            guard !state.closed, !state.closing else { return (false, false) }
            if !state.pending.isEmpty {
                state.pending += line
                return (true, false)
            }
            let written = writeSome(line[...])
            if written < 0 {
                markBroken(&state)
                return (false, true)
            }
            if written == line.count { return (true, false) }
            state.pending = Array(line[written...])
            return (true, true)
        }
        if wakeFlusher { wake.fire() }
        return accepted
    }

    /// No more lines: stdin is closed once what was accepted has been written (the worker then sees EOF).
    func close() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.closing = true
            guard !state.closed, state.pending.isEmpty else { return [] }
            return finish(&state)
        }
        wake.fire()
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once stdin is closed.
    func waitUntilClosed() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.closed { return true }
                state.closedWaiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
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

    private func markBroken(_ state: inout State) {
        state.pending = []
        state.closing = true
    }

    /// Closes the write end; returns the waiters to resume (outside the lock).
    private func finish(_ state: inout State) -> [CheckedContinuation<Void, Never>] {
        state.closed = true
        state.pending = []
        _ = Glibc.close(writeEnd)
        defer { state.closedWaiters = [] }
        return state.closedWaiters
    }

    /// The flushing thread: sleeps until woken, writes what is pending as the pipe drains, closes the write end
    /// when asked (once everything is written) and ends.
    private func flushUntilClosed() {
        while true {
            let (waitForRoom, waiters, done) = state.withLock { state -> (Bool, [CheckedContinuation<Void, Never>], Bool) in
                if state.closed { return (false, [], true) }
                if !state.pending.isEmpty {
                    let written = writeSome(state.pending[...])
                    if written < 0 {
                        markBroken(&state)
                    } else {
                        state.pending.removeFirst(written)
                    }
                }
                if state.closing && state.pending.isEmpty { return (false, finish(&state), true) }
                return (!state.pending.isEmpty, [], false)
            }
            for waiter in waiters { waiter.resume() }
            if done { break }
            var fds = [
                pollfd(fd: wake.readEnd, events: Int16(POLLIN), revents: 0),
                pollfd(fd: writeEnd, events: Int16(POLLOUT), revents: 0),
            ]
            let ready = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, waitForRoom ? 2 : 1, -1) }
            if ready < 0 && errno != EINTR {
                state.withLock { markBroken(&$0) }  // closed at the top of the loop
                continue
            }
            if fds[0].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                while drain.withUnsafeMutableBytes({ read(wake.readEnd, $0.baseAddress, $0.count) }) > 0 {}
            }
        }
        wake.close()
    }
}
