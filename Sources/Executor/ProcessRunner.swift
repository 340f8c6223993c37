// One exec handler process: posix_spawn into its own session and process group with a clean environment,
// stdin written then closed, stdout captured up to a cap, stderr read concurrently and handed over line by
// line, a deadline with SIGTERM → grace → SIGKILL to the whole group, and whatever is left of the group killed
// after the handler exits, with any descendant that escaped the group and was adopted by stanzad (OrphanReaper),
// so a grandchild holding a pipe neither stalls the reply nor survives it. It runs on the process loop
// (ProcessLoop): no thread of its own.
//
// Exec handlers live for milliseconds, so their spawn path is ours rather than swift-subprocess's (used before):
// swift-subprocess spawns on one shared thread and hops between threads several times per run, which cost about
// a tenth of bench/exec's throughput (docs/PERFORMANCE.md).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import CSpawn

/// What to run and with which limits.
package struct ProcessSpec: Sendable {
    package var argv: [String]
    package var environment: [String: String]
    package var workdir: String
    package var stdin: [UInt8]
    package var timeout: Duration
    package var killGrace: Duration
    package var maxOutput: Int
    /// stderr bytes logged; the rest is read and dropped.
    package var maxStderr: Int

    package init(argv: [String], environment: [String: String], workdir: String, stdin: [UInt8], timeout: Duration,
                killGrace: Duration, maxOutput: Int, maxStderr: Int = 65_536) {
        self.argv = argv
        self.environment = environment
        self.workdir = workdir
        self.stdin = stdin
        self.timeout = timeout
        self.killGrace = killGrace
        self.maxOutput = maxOutput
        self.maxStderr = maxStderr
    }
}

/// How a handler process ended.
package struct ProcessResult: Sendable {
    package enum Ending: Sendable, Hashable {
        case exited(Int32)
        case signaled(Int32)
        /// Killed at the deadline.
        case timedOut
        /// Wrote more than `maxOutput` bytes to stdout.
        case outputTooLarge
        /// Could not be started (missing, not executable, bad workdir…).
        case spawnFailed(String)
        /// Exited, but its status was collected by someone else (ECHILD): how it ended is unknown, so its
        /// output cannot be trusted as a successful reply.
        case statusLost
    }

    package var ending: Ending
    package var stdout: [UInt8]
    package var pid: Int32?
    package var duration: Duration
    /// Descendants that had escaped the handler's group, adopted by stanzad and killed after it ended.
    package var escapedKilled = 0
}

package enum ProcessRunner {
    /// A handler that exits without reading all of stdin makes our write fail with EPIPE; without this the
    /// default SIGPIPE disposition would end stanzad instead. Children get default dispositions back at spawn.
    static let ignoreBrokenPipes: Void = { _ = signal(SIGPIPE, SIG_IGN) }()

    /// Runs `spec` to completion. `stderrLine` gets each stderr line (without its newline) as it arrives, on the
    /// process loop's thread.
    ///
    /// The process is started and watched by the process loop (one thread for every child of stanzad), never by
    /// the cooperative pool: a handler costs one spawn and a few descriptors, no thread. Cancelling the calling
    /// task stops the handler like its deadline does (SIGTERM to the group, `killGrace`, SIGKILL).
    package static func run(_ spec: ProcessSpec, stderrLine: @escaping @Sendable (String, Int32) -> Void) async -> ProcessResult {
        _ = ignoreBrokenPipes
        let started = ContinuousClock.now
        let loop = ProcessLoop.shared
        let handler = HandlerProcess(spec: spec, loop: loop, stderrLine: stderrLine)
        var result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<ProcessResult, Never>) in
                // Set before the loop sees the handler (the hand-over through `execute` orders the two).
                handler.completion = { continuation.resume(returning: $0) }
                ProcessLoop.spawner().execute { handler.start() }
            }
        } onCancel: {
            loop.execute { handler.stop() }
        }
        result.duration = ContinuousClock.now - started
        return result
    }

    /// `run` without a task: `completion` gets the result once, on the process loop's thread. The returned closure
    /// stops the handler like its deadline does.
    @discardableResult
    package static func start(_ spec: ProcessSpec, stderrLine: @escaping @Sendable (String, Int32) -> Void,
                              completion: @escaping @Sendable (ProcessResult) -> Void) -> @Sendable () -> Void {
        _ = ignoreBrokenPipes
        let started = ContinuousClock.now
        let loop = ProcessLoop.shared
        let handler = HandlerProcess(spec: spec, loop: loop, stderrLine: stderrLine)
        handler.completion = { result in
            var result = result
            result.duration = ContinuousClock.now - started
            completion(result)
        }
        ProcessLoop.spawner().execute { handler.start() }
        return { loop.execute { handler.stop() } }
    }
}
/// One handler process from spawn to reap: spawned on a spawner thread, then on the process loop, where its pipes
/// and pidfd are watched and its deadline and kill grace are timers. Created by the caller; after the spawn, every
/// use is on the loop's thread.
final class HandlerProcess: ProcessLoopWatcher, @unchecked Sendable {
    let spec: ProcessSpec
    let loop: ProcessLoop
    let stderrLine: @Sendable (String, Int32) -> Void
    /// Gets the result, once, on the loop's thread.
    var completion: @Sendable (ProcessResult) -> Void = { _ in }

    private var pid: pid_t = 0
    private var spawn: OrphanReaper.Spawn?
    private var stdin: Int32 = -1
    private var stdout: Int32 = -1
    private var stderr: Int32 = -1
    private var pidfd: Int32 = -1

    private var written = 0
    private var collected: [UInt8] = []
    private var lines: StderrLines
    /// Its wait status once it has exited (seen with WNOWAIT: it stays a zombie, holding its pid and group id,
    /// until `finish` reaps it at the very end).
    private var status: Int32?
    /// It has exited but someone else reaped it (ECHILD).
    private var lost = false
    private var timedOut = false
    private var tooLarge = false
    /// The caller was cancelled.
    private var stopRequested = false
    private var running = false
    private var deadlineTimer: Int?
    private var killTimer: Int?
    /// Without a pidfd, the exit is polled every 10 ms.
    private var exitPoll: Int?

    init(spec: ProcessSpec, loop: ProcessLoop, stderrLine: @escaping @Sendable (String, Int32) -> Void) {
        self.spec = spec
        self.loop = loop
        self.stderrLine = stderrLine
        self.lines = StderrLines(limit: spec.maxStderr)
    }

    /// On a spawner thread (posix_spawn blocks until the child has exec'd): the spawn, then the watch on the loop.
    func start() {
        if let problem = spawnProcess() {
            loop.execute { [self] in fail(problem) }
        } else {
            loop.execute { [self] in watch() }
        }
    }

    /// Spawns the handler with its three pipes; nil, or why it could not be started. Touches only `pid`, `spawn`
    /// and the three descriptors, which the loop reads after the hand-over.
    private func spawnProcess() -> String? {
        guard let program = spec.argv.first else { return "empty argv" }
        guard let path = Self.resolve(program, in: spec.environment["PATH"]) else { return "\(program): not found in PATH" }
        var input = Pipe(), output = Pipe(), errors = Pipe()
        defer { input.closeBoth(); output.closeBoth(); errors.closeBoth() }
        do {
            input = try Pipe.make()
            output = try Pipe.make()
            errors = try Pipe.make()
        } catch {
            return "cannot create pipes: \(error)"
        }
        let started = Self.spawn(path: path, argv: spec.argv, environment: spec.environment, workdir: spec.workdir,
                                 stdin: input.read, stdout: output.write, stderr: errors.write)
        spawn = started.spawn
        guard let child = started.pid else { return started.problem }
        pid = child
        // The child has its copies; ours of its ends go (defer above), so EOF means every holder is gone.
        (stdin, stdout, stderr) = (input.write, output.read, errors.read)
        (input.write, output.read, errors.read) = (-1, -1, -1)
        return nil
    }

    /// On the loop: its pipes and pidfd are watched, its deadline set.
    private func watch() {
        running = true
        for fd in [stdin, stdout, stderr] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        pidfd = stanzad_pidfd_open(pid)
        if pidfd >= 0, !loop.watch(pidfd, readable: true, by: self) { loop.close(&pidfd) }
        if pidfd < 0 { pollExit() }
        // A pipe epoll cannot take is not read: the handler is stopped rather than left to block on it.
        if !loop.watch(stdout, readable: true, by: self) { loop.close(&stdout); _ = kill(-pid, SIGKILL) }
        if !loop.watch(stderr, readable: true, by: self) { loop.close(&stderr); _ = kill(-pid, SIGKILL) }
        if spec.stdin.isEmpty {
            loop.close(&stdin)
        } else {
            feedInput()
            if stdin >= 0, !loop.watch(stdin, readable: false, by: self) { loop.close(&stdin) }
        }
        deadlineTimer = loop.schedule(at: .now + spec.timeout) { [self] in
            deadlineTimer = nil
            timedOut = true
            terminate()
        }
        if stopRequested { terminate() }
    }

    /// The caller was cancelled: stop the handler like its deadline does.
    func stop() {
        stopRequested = true
        if running { terminate() }
    }

    func ready(_ fd: Int32) {
        switch fd {
        case stdin: feedInput()
        case stdout: readOutput()
        case stderr: readErrors()
        case pidfd: checkExit()
        default: break
        }
    }

    private func fail(_ reason: String) {
        completion(ProcessResult(ending: .spawnFailed(reason), stdout: [], pid: nil, duration: .zero))
    }

    /// SIGTERM to the group now, SIGKILL after the grace.
    private func terminate() {
        guard running, status == nil, killTimer == nil else { return }
        _ = kill(-pid, SIGTERM)
        killTimer = loop.schedule(at: .now + spec.killGrace) { [self] in
            _ = kill(-pid, SIGKILL)
        }
    }

    private func pollExit() {
        exitPoll = loop.schedule(at: .now + .milliseconds(10)) { [self] in
            exitPoll = nil
            checkExit()
            if running { pollExit() }
        }
    }

    private func feedInput() {
        while written < spec.stdin.count {
            let fd = stdin
            let count = spec.stdin.withUnsafeBytes { bytes in
                write(fd, bytes.baseAddress.map { $0 + written }, bytes.count - written)
            }
            if count > 0 {
                written += count
            } else if count < 0, errno == EINTR {
                continue
            } else if count < 0, errno == EAGAIN {
                return
            } else {
                break  // EPIPE: the handler stopped reading, which is its right.
            }
        }
        loop.close(&stdin)
    }

    private func readOutput() {
        guard !tooLarge else { return }
        loop.readAvailable(&stdout) { bytes in
            collected.append(contentsOf: bytes)
            guard collected.count > spec.maxOutput else { return true }
            tooLarge = true
            collected = []
            return false
        }
        if tooLarge {
            _ = kill(-pid, SIGKILL)
            loop.close(&stdout)
        }
    }

    private func readErrors() {
        let pid = self.pid
        let emit = stderrLine
        loop.readAvailable(&stderr) { bytes in
            lines.feed(bytes) { emit($0, pid) }
            return true
        }
    }

    /// Learns whether the handler has exited, without reaping it (WNOWAIT). ECHILD means someone else reaped
    /// it: its status is lost, and an unknown ending is never taken for success.
    private func checkExit() {
        guard running else { return }
        switch Self.exitState(of: pid) {
        case .running: return
        case .exited(let raw): status = raw
        case .lost: lost = true
        }
        finish()
    }

    /// The handler has exited: whatever it left behind in its group goes, then what escaped the group and was
    /// adopted by stanzad, then it is reaped and the result handed over.
    private func finish() {
        running = false
        for timer in [deadlineTimer, killTimer, exitPoll] { loop.cancelTimer(timer) }
        // Its pid (so its group id) stays taken until it is reaped below, so this never hits an unrelated process.
        _ = kill(-pid, SIGKILL)
        loop.close(&stdin)
        loop.close(&pidfd)
        // Descendants that left the group (setsid, double fork) and were re-parented to stanzad go too, on the
        // sweeper's thread when there are any (a killed process is waited for).
        if OrphanReaper.shared.hasAdopted() {
            let shared = loop
            ProcessLoop.sweeper.execute { [self] in
                let killed = OrphanReaper.shared.sweep()
                shared.execute { [self] in complete(escapedKilled: killed) }
            }
        } else {
            complete(escapedKilled: 0)
        }
    }

    private func complete(escapedKilled: Int) {
        // Every writer is gone or killed: what is in the pipes now is all there is. A killed process may take a
        // moment to close its ends; its output is not waited for (no EOF needed).
        if stdout >= 0 { readOutput() }
        if stderr >= 0 { readErrors() }
        let pid = self.pid
        let emit = stderrLine
        lines.finish { emit($0, pid) }
        loop.close(&stdout)
        loop.close(&stderr)
        if let spawn {
            if lost {
                OrphanReaper.shared.reaped(spawn, pid: pid)
            } else if let final = OrphanReaper.shared.reap(spawn, pid: pid) {
                status = final
            } else {
                lost = true
            }
        }
        let ending: ProcessResult.Ending
        if lost {
            ending = .statusLost
        } else if timedOut {
            ending = .timedOut
        } else if tooLarge {
            ending = .outputTooLarge
        } else {
            ending = Self.ending(ofWaitStatus: status ?? 0)
        }
        completion(ProcessResult(
            ending: ending, stdout: tooLarge || lost ? [] : collected, pid: pid, duration: .zero, escapedKilled: escapedKilled))
    }

    /// Spawns `argv` (`path` resolved) into its own session and process group with the given stdio ends, tracked
    /// by the orphan reaper. The token is returned even when the spawn failed (`pid` nil, `problem` says why).
    static func spawn(path: String, argv: [String], environment: [String: String], workdir: String,
                      stdin: Int32, stdout: Int32, stderr: Int32) -> (spawn: OrphanReaper.Spawn, pid: pid_t?, problem: String) {
        let variables = environment.map { "\($0.key)=\($0.value)" }
        var rc: Int32 = 0
        var child: pid_t = 0
        let spawn = withCStrings(argv) { argv in
            withCStrings(variables) { envp in
                OrphanReaper.shared.spawn { () -> pid_t? in
                    rc = stanzad_spawn(path, argv, envp, workdir, stdin, stdout, stderr, &child)
                    return rc == 0 ? child : nil
                }
            }
        }
        return rc == 0 ? (spawn, child, "") : (spawn, nil, "\(path): \(String(cString: strerror(rc)))")
    }

    enum ExitState {
        case running
        /// Exited with this wait status; not reaped yet (WNOWAIT).
        case exited(Int32)
        /// Reaped by someone else (ECHILD): its status is lost, and never taken for success.
        case lost
    }

    /// Whether a child has exited, without reaping it.
    static func exitState(of pid: pid_t) -> ExitState {
        var raw: Int32 = 0
        let result = stanzad_wait(pid, WNOHANG | WNOWAIT, &raw)
        if result == pid { return .exited(raw) }
        return result < 0 ? .lost : .running
    }

    /// A wait(2) status as an exit code or a signal.
    static func ending(ofWaitStatus raw: Int32) -> ProcessResult.Ending {
        raw & 0x7f == 0 ? .exited((raw >> 8) & 0xff) : .signaled(raw & 0x7f)
    }

    /// `program` itself when it has a slash, else the first executable `PATH` entry of that name.
    static func resolve(_ program: String, in path: String?) -> String? {
        if program.contains("/") { return program }
        for directory in (path ?? "/usr/bin:/bin").split(separator: ":") where !directory.isEmpty {
            let candidate = "\(directory)/\(program)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}

/// A failed system call's errno.
struct SystemCallError: Error, CustomStringConvertible {
    let code: Int32
    var description: String { "\(String(cString: strerror(code))) (errno \(code))" }
}

/// A pipe's two ends (-1 once closed).
private struct Pipe {
    var read: Int32 = -1
    var write: Int32 = -1

    static func make() throws(SystemCallError) -> Pipe {
        var ends: [Int32] = [-1, -1]
        guard stanzad_pipe(&ends, O_CLOEXEC) == 0 else { throw SystemCallError(code: errno) }
        return Pipe(read: ends[0], write: ends[1])
    }

    mutating func closeRead() { if read >= 0 { _ = Glibc.close(read) }; read = -1 }
    mutating func closeWrite() { if write >= 0 { _ = Glibc.close(write) }; write = -1 }
    mutating func closeBoth() { closeRead(); closeWrite() }
}

/// A detached OS thread for work that blocks.
enum BlockingThread {
    /// Starts `body` on a new thread; false if the thread could not be created.
    static func start(_ body: @escaping @Sendable () -> Void) -> Bool {
        let box = Unmanaged.passRetained(Box(body))
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            let box = Unmanaged<Box>.fromOpaque(raw).takeRetainedValue()
            box.body()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            return false
        }
        pthread_detach(thread)
        return true
    }

    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
}

/// Runs `body` with `strings` as a NULL-terminated C array.
func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for pointer in pointers { free(pointer) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}

/// Splits stderr into lines, keeping at most `limit` bytes in all (the rest is counted and dropped).
struct StderrLines {
    let limit: Int
    private var pending: [UInt8] = []
    private var kept = 0
    private(set) var dropped = 0

    init(limit: Int) { self.limit = limit }

    mutating func feed(_ bytes: UnsafeRawBufferPointer, emit: (String) -> Void) {
        for byte in bytes {
            if kept >= limit {
                dropped += 1
                continue
            }
            kept += 1
            if byte == 0x0A {
                emit(Self.text(pending))
                pending.removeAll(keepingCapacity: true)
            } else {
                pending.append(byte)
            }
        }
    }

    mutating func finish(emit: (String) -> Void) {
        if !pending.isEmpty { emit(Self.text(pending)) }
        pending.removeAll()
        if dropped > 0 { emit("[stanzad: \(dropped) more bytes of stderr dropped (limit \(limit))]") }
    }

    /// Lossy UTF-8 without control characters (they could forge log lines).
    static func text(_ bytes: [UInt8]) -> String {
        var line = bytes
        if line.last == 0x0D { line.removeLast() }
        return String(String(decoding: line, as: UTF8.self).unicodeScalars.map {
            $0.value < 0x20 && $0 != "\t" ? "\u{FFFD}" : Character($0)
        })
    }
}
