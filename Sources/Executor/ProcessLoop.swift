// One OS thread that starts and watches child processes: an epoll loop over their pipes and pidfds, with their
// deadlines (timeouts, kill grace) in a timer heap. Every exec handler and every worker lives on `shared`, so
// running processes cost descriptors, not threads (docs/PERFORMANCE.md, "process I/O on one thread").
//
// Everything a watcher does runs on the loop's thread: `execute` hands work over from any thread, and the
// state behind it (the watched descriptors, the timers, the read buffer) is touched by that thread only.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CSpawn
import HeapModule
import Synchronization

/// Something on the loop that owns watched descriptors.
protocol ProcessLoopWatcher: AnyObject {
    /// `fd` is readable, writable or hung up (level-triggered: called again while it stays so).
    func ready(_ fd: Int32)
}

final class ProcessLoop: @unchecked Sendable {
    /// Exec handlers and workers.
    static let shared = ProcessLoop(name: "stanzad-procs")
    /// Sweeps of adopted orphans (OrphanReaper), which wait up to a second for a killed process and so stay off
    /// `shared`.
    static let sweeper = ProcessLoop(name: "stanzad-sweep")

    /// Spawns of exec handlers: posix_spawn blocks its caller until the child has exec'd (vfork), so handlers
    /// start in parallel there, off `shared` (whose I/O would otherwise wait), and never in the cooperative pool.
    private static let spawners = [ProcessLoop(name: "stanzad-spawn"), ProcessLoop(name: "stanzad-spawn")]
    private static let nextSpawner = Atomic<UInt>(0)

    /// The spawner thread for the next spawn (in turn).
    static func spawner() -> ProcessLoop {
        let turn = nextSpawner.add(1, ordering: .relaxed).oldValue
        return spawners[Int(turn % UInt(spawners.count))]
    }

    private let epoll: Int32
    private let wakeFD: Int32
    private let inbox = Mutex<[@Sendable () -> Void]>([])

    // Loop thread only.
    private var watchers: [Int32: any ProcessLoopWatcher] = [:]
    private var timers = Heap<TimerEntry>()
    private var timerActions: [Int: () -> Void] = [:]
    private var nextTimer = 0
    /// One read buffer for every pipe.
    private var buffer = [UInt8](repeating: 0, count: 65_536)

    private struct TimerEntry: Comparable {
        let due: ContinuousClock.Instant
        let id: Int
        static func < (a: TimerEntry, b: TimerEntry) -> Bool { a.due < b.due || (a.due == b.due && a.id < b.id) }
    }

    private init(name: String) {
        var wake: Int32 = -1
        let fd = stanzad_epoll_create(&wake)
        guard fd >= 0 else { fatalError("cannot create the process loop's epoll: errno \(errno)") }
        epoll = fd
        wakeFD = wake
        guard BlockingThread.start({ [self] in
            stanzad_name_thread(name)
            run()
        }) else { fatalError("cannot start the process loop's thread") }
    }

    /// Runs `job` on the loop's thread, after the jobs handed over before it.
    func execute(_ job: @escaping @Sendable () -> Void) {
        let first = inbox.withLock { jobs in
            jobs.append(job)
            return jobs.count == 1
        }
        if first { stanzad_wake(wakeFD) }
    }

    // MARK: Loop thread only

    /// Watches `fd` for reading (or writing) on behalf of `watcher`; false when epoll refused it.
    func watch(_ fd: Int32, readable: Bool, by watcher: any ProcessLoopWatcher) -> Bool {
        guard stanzad_epoll_add(epoll, fd, readable ? 1 : 0, Int64(fd)) == 0 else { return false }
        watchers[fd] = watcher
        return true
    }

    /// Stops watching `fd` (if it was), leaving it open.
    func stopWatching(_ fd: Int32) {
        if watchers.removeValue(forKey: fd) != nil { _ = stanzad_epoll_remove(epoll, fd) }
    }

    /// Stops watching `fd` (if it was) and closes it; `fd` becomes -1.
    func close(_ fd: inout Int32) {
        guard fd >= 0 else { return }
        if watchers.removeValue(forKey: fd) != nil { _ = stanzad_epoll_remove(epoll, fd) }
        _ = Glibc.close(fd)
        fd = -1
    }

    /// Runs `action` on the loop at `due` (or at once on the next turn if it has passed); returns its id.
    func schedule(at due: ContinuousClock.Instant, _ action: @escaping () -> Void) -> Int {
        nextTimer += 1
        timers.insert(TimerEntry(due: due, id: nextTimer))
        timerActions[nextTimer] = action
        return nextTimer
    }

    func cancelTimer(_ id: Int?) {
        if let id { timerActions[id] = nil }
    }

    /// Reads what nonblocking `fd` holds now, handing each chunk to `body` (false: stop reading). At EOF or on
    /// an error `fd` is closed. A bounded number of reads per call, so one chatty process cannot starve the rest.
    func readAvailable(_ fd: inout Int32, _ body: (UnsafeRawBufferPointer) -> Bool) {
        for _ in 0..<16 {
            guard fd >= 0 else { return }
            let descriptor = fd
            let count = buffer.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                let more = buffer.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
                if !more { return }
                continue
            }
            if count < 0, errno == EINTR { continue }
            if count < 0, errno == EAGAIN { return }
            close(&fd)
        }
    }

    private func run() {
        var tokens = [Int64](repeating: 0, count: 64)
        var kinds = [Int32](repeating: 0, count: 64)
        while true {
            let timeout = runDueTimers()
            let count = stanzad_epoll_wait(epoll, &tokens, &kinds, 64, timeout)
            if count < 0 { continue }  // EINTR (nothing else can fail with valid arguments)
            for index in 0..<Int(count) {
                let token = tokens[index]
                if token == -1 {
                    stanzad_drain_wake(wakeFD)
                    let jobs = inbox.withLock { jobs in
                        defer { jobs.removeAll(keepingCapacity: true) }
                        return jobs
                    }
                    for job in jobs { job() }
                } else if let watcher = watchers[Int32(truncatingIfNeeded: token)] {
                    // A stale event for a descriptor closed and reused within this batch is harmless: watchers
                    // read and write nonblocking and treat "nothing there" as such.
                    watcher.ready(Int32(truncatingIfNeeded: token))
                }
            }
        }
    }

    /// Runs the timers that are due; returns the milliseconds to the next one (-1: none).
    private func runDueTimers() -> Int32 {
        while let next = timers.min {
            guard timerActions[next.id] != nil else {
                _ = timers.popMin()
                continue
            }
            let now = ContinuousClock.now
            if next.due <= now {
                _ = timers.popMin()
                timerActions.removeValue(forKey: next.id)?()
                continue
            }
            let left = next.due - now
            let milliseconds = left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1
            return Int32(min(milliseconds, 60_000))
        }
        return -1
    }
}

/// For the systemd watchdog: runs `done` on the process loop's thread (it does not run while the loop is stuck).
package enum ProcessLoopProbe {
    package static func ping(_ done: @escaping @Sendable () -> Void) {
        ProcessLoop.shared.execute(done)
    }
}
