// Descendants that escape a handler's process group (setsid, double fork) and lose their parent are adopted by
// stanzad (a child subreaper) instead of init; a sweep after every handler ends kills and reaps every adopted
// child that stanzad did not spawn itself, so nothing a handler starts outlives it or holds its pipes.
//
// Only ever one pid at a time is waited for (waitid P_PID): exec handlers and workers reap their own children,
// and a wait on "any child" would steal their exit statuses.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CSpawn
import Synchronization

package final class OrphanReaper: Sendable {
    package static let shared = OrphanReaper()

    /// Makes this process the child subreaper of its descendants (prctl PR_SET_CHILD_SUBREAPER). Call once at
    /// startup; false when the kernel refused (escaped descendants then go to init and are not killed).
    package static func adoptOrphans() -> Bool {
        stanzad_become_subreaper() == 0
    }

    /// One spawn, so that untracking a pid never forgets a newer child that got the same pid.
    package struct Spawn: Sendable, Hashable {
        let token: Int
    }

    private struct State {
        /// Children stanzad spawned and still waits for (exec handlers, workers), with the spawn's token. They
        /// belong to the thread that spawned them (the process loop's), never to the main thread whose children a
        /// sweep reads, so this is a safety net: a tracked child is never killed, whichever thread's list it is in.
        var tracked: [pid_t: Int] = [:]
        var nextToken = 0
    }

    private let state = Mutex(State())
    /// One sweep at a time: an adopted child is then killed and reaped by one sweep only, so its pid cannot be
    /// reaped and reused by a new spawn between a sweep's decision and its kill.
    private let sweeping = Mutex(())

    /// Runs `start` (a spawn on the calling thread, never the main thread, returning the child's pid or nil) and
    /// tracks the child. Spawns run in parallel: the lock is taken only to record the pid.
    package func spawn(_ start: () -> pid_t?) -> Spawn {
        let spawn = spawning()
        spawned(spawn, pid: start())
        return spawn
    }

    /// For a spawn that cannot run inside `spawn(_:)`: call before it and pass the result to `spawned(_:pid:)`
    /// once the pid is known.
    package func spawning() -> Spawn {
        state.withLock { state in
            state.nextToken += 1
            return Spawn(token: state.nextToken)
        }
    }

    /// `pid` (nil: the spawn failed, or was reported already) is tracked until `reap`/`reaped`.
    package func spawned(_ spawn: Spawn, pid: pid_t?) {
        guard let pid else { return }
        state.withLock { state in state.tracked[pid] = spawn.token }
    }

    /// Reaps the exited child `pid` (a zombie by now) and stops tracking it, atomically with respect to spawns, so
    /// a new child that gets the same pid is never mistaken for this one. Returns its wait status, or nil when it
    /// was already reaped by someone else (ECHILD).
    package func reap(_ spawn: Spawn, pid: pid_t) -> Int32? {
        state.withLock { state -> Int32? in
            var status: Int32 = 0
            let result = stanzad_wait(pid, 0, &status)
            if state.tracked[pid] == spawn.token { state.tracked[pid] = nil }
            return result == pid ? status : nil
        }
    }

    /// A child someone else reaped (ECHILD): no longer ours to spare.
    package func reaped(_ spawn: Spawn, pid: pid_t) {
        state.withLock { state in
            if state.tracked[pid] == spawn.token { state.tracked[pid] = nil }
        }
    }

    /// Kills (SIGKILL) and reaps every child of stanzad that it did not spawn: descendants of handlers that were
    /// re-parented to it. Repeats until none is left (killing one re-parents its own children). Blocks: call on
    /// a thread of its own, never in the cooperative pool or on an event loop. Returns how many were killed.
    @discardableResult
    package func sweep() -> Int {
        sweeping.withLock { _ -> Int in
            var killed = 0
            var stuck = Set<pid_t>()  // killed but not dead within a second: left for a later sweep
            for _ in 0..<64 {  // each round takes one generation of descendants; 64 bounds a fork bomb's depth
                let victims = adopted().filter { !stuck.contains($0) }
                if victims.isEmpty { break }
                for pid in victims { _ = kill(pid, SIGKILL) }
                for pid in victims where !Self.awaitExit(pid) { stuck.insert(pid) }
                killed += victims.count
            }
            return killed
        }
    }

    /// `sweep()` on the sweeper's thread, for async callers.
    package func sweepOffThePool() async -> Int {
        await withCheckedContinuation { (continuation: CheckedContinuation<Int, Never>) in
            ProcessLoop.sweeper.execute { continuation.resume(returning: self.sweep()) }
        }
    }

    /// Whether stanzad has adopted children to sweep (reads one small /proc file; never blocks on a process).
    package func hasAdopted() -> Bool {
        !adopted().isEmpty
    }

    /// Adopted children: the main thread's children that stanzad did not spawn.
    private func adopted() -> [pid_t] {
        let children = Self.children()
        guard !children.isEmpty else { return [] }
        let tracked = state.withLock { $0.tracked }
        return children.filter { tracked[$0] == nil }
    }

    /// Waits up to 1 s for a killed child to exit and reaps it; false when it did not die (stuck in the kernel):
    /// it is left for a later sweep rather than stalling this one.
    private static func awaitExit(_ pid: pid_t) -> Bool {
        var status: Int32 = 0
        if stanzad_wait(pid, WNOHANG, &status) != 0 { return true }  // reaped now, or not ours any more
        let pidfd = stanzad_pidfd_open(pid)
        guard pidfd >= 0 else { return false }
        defer { _ = close(pidfd) }
        var entry = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        var rc: Int32
        repeat { rc = poll(&entry, 1, 1000) } while rc < 0 && errno == EINTR
        return rc > 0 && stanzad_wait(pid, WNOHANG, &status) != 0
    }

    /// Children of the main thread: /proc/self/task/<pid>/children. The kernel hands an orphan to the first live
    /// thread of the subreaper (find_new_reaper), which is the main thread for the daemon's whole life, while the
    /// children stanzad spawns belong to the process loop's thread, which spawned them. So one small file holds
    /// every adopted process.
    static func children() -> [pid_t] {
        readSmallFile("/proc/self/task/\(getpid())/children").split(separator: 0x20).compactMap {
            Int32(String(decoding: $0, as: UTF8.self))
        }
    }

    private static func readSmallFile(_ path: String) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { _ = close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            bytes.append(contentsOf: buffer[0..<count])
        }
        if bytes.last == 0x0A { bytes.removeLast() }
        return bytes
    }
}
