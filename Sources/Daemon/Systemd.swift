// systemd integration (SPEC §19) without libsystemd: the notification protocol is one datagram per state change
// on $NOTIFY_SOCKET. READY=1 once the services run, RELOADING=1 / READY=1 around a SIGHUP reload (with
// MONOTONIC_USEC, as Type=notify-reload wants), STOPPING=1 when shutdown begins, and WATCHDOG=1 at half of
// $WATCHDOG_USEC while every event loop and the process loop still run what is handed to them.

#if canImport(Glibc)
import Glibc
#endif
import Executor
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import UnixSignals

enum SystemdNotify {
    /// Sends `message` to $NOTIFY_SOCKET; false when there is none (not started by systemd) or it failed.
    @discardableResult
    static func send(_ message: String) -> Bool {
        guard let path = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !path.isEmpty else { return false }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        // "@name" is an abstract socket: a leading NUL instead of the @.
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let sent = message.withCString { text in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, text, strlen(text), 0, $0, length) }
            }
        }
        return sent >= 0
    }

    /// CLOCK_MONOTONIC in microseconds (what systemd compares RELOADING's MONOTONIC_USEC with).
    static func monotonicMicroseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
    }

    /// Half of $WATCHDOG_USEC when the watchdog is on for this process.
    static var watchdogInterval: Duration? {
        let environment = ProcessInfo.processInfo.environment
        guard let usec = environment["WATCHDOG_USEC"].flatMap({ UInt64($0) }), usec > 0 else { return nil }
        if let pid = environment["WATCHDOG_PID"].flatMap({ Int32($0) }), pid != getpid() { return nil }
        return .microseconds(Int64(usec / 2))
    }
}

/// Tells systemd the daemon is ready, pets the watchdog while the loops respond, and says when it stops.
/// Listed last in the ServiceGroup: it starts after every other service and is the first told to stop.
final class SystemdService: Service {
    let logger: Logger
    /// Loops of our own beyond NIO's shared ones (the FastCGI front's): each runs the closure it is given.
    let probes: [@Sendable (@escaping @Sendable () -> Void) -> Void]

    init(logger: Logger, probes: [@Sendable (@escaping @Sendable () -> Void) -> Void] = []) {
        self.logger = logger
        self.probes = probes
    }

    func run() async throws {
        SystemdNotify.send("READY=1\nSTATUS=running")
        await withDiscardingTaskGroup { group in
            if let interval = SystemdNotify.watchdogInterval {
                group.addTask { await self.watchdog(every: interval) }
            }
            if ProcessInfo.processInfo.environment["STANZAD_TEST_BLOCK_LOOP_ON_SIGUSR2"] == "1" {
                group.addTask { await self.blockALoopOnSIGUSR2() }
            }
            try? await gracefulShutdown()
            SystemdNotify.send("STOPPING=1\nSTATUS=stopping")
            group.cancelAll()
        }
    }

    /// WATCHDOG=1 every `interval` while the loops respond within it; silence otherwise, so systemd restarts us.
    private func watchdog(every interval: Duration) async {
        var failing = false
        while !Task.isCancelled {
            let responded = await Self.loopsRespond(within: interval, probes: probes)
            if responded {
                SystemdNotify.send("WATCHDOG=1")
                if failing { logger.notice("watchdog: every loop responds again") }
            } else if !failing {
                logger.error("watchdog: an event loop or the process loop does not respond; systemd will restart stanzad")
            }
            failing = !responded
        }
    }

    /// Hands a no-op to every NIO event loop, the process loop and each probe's loop, and waits `within` for all
    /// to have run it.
    static func loopsRespond(within: Duration, probes: [@Sendable (@escaping @Sendable () -> Void) -> Void]) async -> Bool {
        let pending = Atomic<Int>(0)
        for loop in MultiThreadedEventLoopGroup.singleton.makeIterator() {
            pending.add(1, ordering: .relaxed)
            loop.execute { pending.subtract(1, ordering: .relaxed) }
        }
        pending.add(1, ordering: .relaxed)
        ProcessLoopProbe.ping { pending.subtract(1, ordering: .relaxed) }
        for probe in probes {
            pending.add(1, ordering: .relaxed)
            probe { pending.subtract(1, ordering: .relaxed) }
        }
        try? await Task.sleep(for: within)
        return pending.load(ordering: .relaxed) == 0
    }

    /// Test hook (STANZAD_TEST_BLOCK_LOOP_ON_SIGUSR2=1): SIGUSR2 blocks one event loop for good, as a deadlocked
    /// handler of ours would, so that a test can see the watchdog stop.
    private func blockALoopOnSIGUSR2() async {
        for await _ in await UnixSignalsSequence(trapping: .sigusr2) {
            logger.warning("test hook: blocking an event loop")
            MultiThreadedEventLoopGroup.singleton.any().execute {
                while true { sleep(3600) }
            }
        }
    }
}
