// One exec handler process: posix_spawn into its own session and process group with a clean environment,
// stdin written then closed, stdout captured up to a cap, stderr read concurrently and handed over line by
// line, a deadline with SIGTERM → grace → SIGKILL to the whole group, and whatever is left of the group killed
// after the handler exits, with any descendant that escaped the group and was adopted by stanzad (OrphanReaper),
// so a grandchild holding a pipe neither stalls the reply nor survives it.
//
// Exec handlers live for milliseconds, so their spawn path is ours rather than swift-subprocess's (which
// workers use): swift-subprocess spawns on one shared thread and hops between threads several times per run,
// which cost about a tenth of bench/exec's throughput (docs/PERFORMANCE.md).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import CSpawn
import Subprocess
import Synchronization
import SystemPackage

/// What to run and with which limits.
public struct ProcessSpec: Sendable {
    public var argv: [String]
    public var environment: [String: String]
    public var workdir: String
    public var stdin: [UInt8]
    public var timeout: Duration
    public var killGrace: Duration
    public var maxOutput: Int
    /// stderr bytes logged; the rest is read and dropped.
    public var maxStderr: Int

    public init(argv: [String], environment: [String: String], workdir: String, stdin: [UInt8], timeout: Duration,
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
public struct ProcessResult: Sendable {
    public enum Ending: Sendable, Hashable {
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

    public var ending: Ending
    public var stdout: [UInt8]
    public var pid: Int32?
    public var duration: Duration
    /// Descendants that had escaped the handler's group, adopted by stanzad and killed after it ended.
    public var escapedKilled = 0
}

public enum ProcessRunner {
    /// A handler that exits without reading all of stdin makes our write fail with EPIPE; without this the
    /// default SIGPIPE disposition would end stanzad instead. Children get default dispositions back at spawn.
    static let ignoreBrokenPipes: Void = { _ = signal(SIGPIPE, SIG_IGN) }()

    /// Runs `spec` to completion. `stderrLine` gets each stderr line (without its newline) as it arrives.
    ///
    /// The process is watched by one OS thread of its own (a `poll` loop over its pipes, a pidfd and a
    /// cancellation pipe), never by the cooperative pool: a handler costs one spawn and one thread, with no
    /// hops between threads while it runs. Cancelling the calling task stops the handler like its deadline
    /// does (SIGTERM to the group, `killGrace`, SIGKILL).
    public static func run(_ spec: ProcessSpec, stderrLine: @escaping @Sendable (String, Int32) -> Void) async -> ProcessResult {
        _ = ignoreBrokenPipes
        let started = ContinuousClock.now
        let stop: StopSignal
        do { stop = try StopSignal() } catch {
            return ProcessResult(ending: .spawnFailed("cannot create a pipe: \(error)"), stdout: [], pid: nil, duration: .zero)
        }
        var result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<ProcessResult, Never>) in
                let thread = BlockingThread.start {
                    continuation.resume(returning: HandlerProcess.run(spec, stop: stop, stderrLine: stderrLine))
                }
                if !thread {
                    continuation.resume(returning: ProcessResult(
                        ending: .spawnFailed("cannot start a thread to watch the handler"), stdout: [], pid: nil, duration: .zero))
                }
            }
        } onCancel: {
            stop.fire()
        }
        stop.close()
        result.duration = ContinuousClock.now - started
        return result
    }
}

/// One handler process from spawn to reap, on the calling (blocking) thread.
enum HandlerProcess {
    static func run(_ spec: ProcessSpec, stop: StopSignal, stderrLine: @escaping @Sendable (String, Int32) -> Void) -> ProcessResult {
        guard let program = spec.argv.first else {
            return ProcessResult(ending: .spawnFailed("empty argv"), stdout: [], pid: nil, duration: .zero)
        }
        guard let path = resolve(program, in: spec.environment["PATH"]) else {
            return ProcessResult(ending: .spawnFailed("\(program): not found in PATH"), stdout: [], pid: nil, duration: .zero)
        }
        var input = Pipe(), output = Pipe(), errors = Pipe()
        defer { input.closeBoth(); output.closeBoth(); errors.closeBoth() }
        do {
            input = try Pipe.make()
            output = try Pipe.make()
            errors = try Pipe.make()
        } catch {
            return ProcessResult(ending: .spawnFailed("cannot create pipes: \(error)"), stdout: [], pid: nil, duration: .zero)
        }
        let environment = spec.environment.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        var rc: Int32 = 0
        let spawn = withCStrings(spec.argv) { argv in
            withCStrings(environment) { envp in
                OrphanReaper.shared.spawn { () -> pid_t? in
                    rc = stanzad_spawn(path, argv, envp, spec.workdir, input.read, output.write, errors.write, &pid)
                    return rc == 0 ? pid : nil
                }
            }
        }
        guard rc == 0 else {
            return ProcessResult(ending: .spawnFailed("\(path): \(String(cString: strerror(rc)))"), stdout: [], pid: nil, duration: .zero)
        }
        // The child has its copies; ours of its ends go, so EOF means every holder is gone.
        input.closeRead()
        output.closeWrite()
        errors.closeWrite()
        var watch = Watch(spec: spec, pid: pid, spawn: spawn, stdin: input.write, stdout: output.read, stderr: errors.read, stop: stop.readEnd)
        input.write = -1
        output.read = -1
        errors.read = -1
        return watch.run { stderrLine($0, pid) }
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

/// The poll loop around one running handler.
private struct Watch {
    let spec: ProcessSpec
    let pid: pid_t
    let spawn: OrphanReaper.Spawn
    var stdin: Int32
    var stdout: Int32
    var stderr: Int32
    let stop: Int32
    var pidfd: Int32

    var written = 0
    var collected: [UInt8] = []
    /// Read buffer for stdout and stderr, reused for every read.
    var scratch = [UInt8](repeating: 0, count: 65_536)
    var lines: StderrLines
    /// Its wait status once it has exited (seen with WNOWAIT: it stays a zombie, holding its pid and group id,
    /// until `run` reaps it at the very end).
    var status: Int32?
    /// It has exited but someone else reaped it (ECHILD).
    var lost = false
    var timedOut = false
    var tooLarge = false
    var stopped = false
    let deadline: ContinuousClock.Instant
    var killAt: ContinuousClock.Instant?

    init(spec: ProcessSpec, pid: pid_t, spawn: OrphanReaper.Spawn, stdin: Int32, stdout: Int32, stderr: Int32, stop: Int32) {
        self.spec = spec
        self.pid = pid
        self.spawn = spawn
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.stop = stop
        self.pidfd = stanzad_pidfd_open(pid)
        self.lines = StderrLines(limit: spec.maxStderr)
        self.deadline = .now + spec.timeout
        for fd in [stdin, stdout, stderr] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        if spec.stdin.isEmpty { Self.close(&self.stdin) }
    }

    mutating func run(stderrLine: (String) -> Void) -> ProcessResult {
        while status == nil, !lost {
            let now = ContinuousClock.now
            if let killAt, now >= killAt {
                _ = kill(-pid, SIGKILL)
                self.killAt = nil
            } else if killAt == nil, !timedOut, !stopped, now >= deadline {
                timedOut = true
                terminate()
            }
            if pidfd < 0 {
                checkExit()
                if status != nil || lost { break }
            }
            var fds: [pollfd] = []
            if stdin >= 0 { fds.append(pollfd(fd: stdin, events: Int16(POLLOUT), revents: 0)) }
            if stdout >= 0 { fds.append(pollfd(fd: stdout, events: Int16(POLLIN), revents: 0)) }
            if stderr >= 0 { fds.append(pollfd(fd: stderr, events: Int16(POLLIN), revents: 0)) }
            if pidfd >= 0 { fds.append(pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)) }
            if !stopped { fds.append(pollfd(fd: stop, events: Int16(POLLIN), revents: 0)) }
            let timeout = pollTimeout(now: now)
            let ready = poll(&fds, nfds_t(fds.count), timeout)
            if ready < 0 {
                if errno == EINTR { continue }
                break
            }
            for entry in fds where entry.revents != 0 {
                switch entry.fd {
                case stdin: feedInput()
                case stdout: readOutput()
                case stderr: readErrors(stderrLine)
                case pidfd: checkExit()
                case stop:
                    stopped = true
                    terminate()
                default: break
                }
            }
        }
        // Whatever the handler left behind in its group goes now. Its pid (so its group id) stays taken until it is
        // reaped below, so this never hits an unrelated process.
        _ = kill(-pid, SIGKILL)
        if status == nil, !lost { awaitExit() }  // poll failed: the handler was killed just above
        Self.close(&stdin)
        // Descendants that left the group (setsid, double fork) and were re-parented to stanzad go too.
        let escapedKilled = OrphanReaper.shared.sweep()
        // Every writer is gone or killed: what is in the pipes now is all there is. A killed process may take a
        // moment to close its ends; its output is not waited for (no EOF needed).
        if stdout >= 0 { readOutput() }
        if stderr >= 0 { readErrors(stderrLine) }
        lines.finish(emit: stderrLine)
        Self.close(&stdout)
        Self.close(&stderr)
        Self.close(&pidfd)
        if lost {
            OrphanReaper.shared.reaped(spawn, pid: pid)
        } else if let final = OrphanReaper.shared.reap(spawn, pid: pid) {
            status = final
        } else {
            lost = true
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
        return ProcessResult(
            ending: ending, stdout: tooLarge || lost ? [] : collected, pid: pid, duration: .zero, escapedKilled: escapedKilled)
    }

    /// A wait(2) status as an exit code or a signal.
    static func ending(ofWaitStatus raw: Int32) -> ProcessResult.Ending {
        raw & 0x7f == 0 ? .exited((raw >> 8) & 0xff) : .signaled(raw & 0x7f)
    }

    /// Milliseconds to the next timed step, at most 1 s (without a pidfd: 10 ms, the exit is polled).
    func pollTimeout(now: ContinuousClock.Instant) -> Int32 {
        var next: ContinuousClock.Instant
        if let killAt {
            next = killAt
        } else if !timedOut, !stopped {
            next = deadline
        } else {
            next = now + .seconds(1)
        }
        if pidfd < 0 { next = min(next, now + .milliseconds(10)) }
        let left = next - now
        if left <= .zero { return 0 }
        let milliseconds = left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1
        return Int32(min(milliseconds, 1000))
    }

    /// SIGTERM to the group now, SIGKILL after the grace.
    mutating func terminate() {
        guard status == nil, killAt == nil else { return }
        _ = kill(-pid, SIGTERM)
        killAt = .now + spec.killGrace
    }

    mutating func feedInput() {
        while written < spec.stdin.count {
            let count = spec.stdin.withUnsafeBytes { bytes in
                write(stdin, bytes.baseAddress.map { $0 + written }, bytes.count - written)
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
        Self.close(&stdin)
    }

    mutating func readOutput() {
        while true {
            let count = Self.readSome(&stdout, into: &scratch)
            guard count > 0 else { return }
            collected.append(contentsOf: scratch[0..<count])
            if collected.count > spec.maxOutput {
                tooLarge = true
                collected = []
                _ = kill(-pid, SIGKILL)
                Self.close(&stdout)
                return
            }
        }
    }

    mutating func readErrors(_ emit: (String) -> Void) {
        while true {
            let count = Self.readSome(&stderr, into: &scratch)
            guard count > 0 else { return }
            scratch.withUnsafeBytes { lines.feed(UnsafeRawBufferPointer(rebasing: $0[0..<count]), emit: emit) }
        }
    }

    /// One read from a nonblocking pipe into `buffer`: the byte count, or 0 when nothing is there now (EAGAIN)
    /// or ever again (EOF or an error: `fd` is then closed).
    static func readSome(_ fd: inout Int32, into buffer: inout [UInt8]) -> Int {
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count > 0 { return count }
            if count < 0, errno == EINTR { continue }
            if count < 0, errno == EAGAIN { return 0 }
            Self.close(&fd)
            return 0
        }
    }

    /// Learns whether the handler has exited, without reaping it (WNOWAIT). ECHILD means someone else reaped
    /// it: its status is lost, and an unknown ending is never taken for success.
    mutating func checkExit() {
        var raw: Int32 = 0
        let result = stanzad_wait(pid, WNOHANG | WNOWAIT, &raw)
        if result == pid {
            status = raw
            killAt = nil
        } else if result < 0 {
            lost = true
        }
    }

    /// Blocks until the (killed) handler has exited, without reaping it.
    mutating func awaitExit() {
        var raw: Int32 = 0
        let result = stanzad_wait(pid, WNOWAIT, &raw)
        if result == pid { status = raw } else { lost = true }
    }

    static func close(_ fd: inout Int32) {
        if fd >= 0 { _ = Glibc.close(fd) }
        fd = -1
    }
}

/// A pipe's two ends (-1 once closed).
private struct Pipe {
    var read: Int32 = -1
    var write: Int32 = -1

    static func make() throws(Errno) -> Pipe {
        var ends: [Int32] = [-1, -1]
        guard stanzad_pipe(&ends, O_CLOEXEC) == 0 else { throw Errno(rawValue: errno) }
        return Pipe(read: ends[0], write: ends[1])
    }

    mutating func closeRead() { if read >= 0 { _ = Glibc.close(read) }; read = -1 }
    mutating func closeWrite() { if write >= 0 { _ = Glibc.close(write) }; write = -1 }
    mutating func closeBoth() { closeRead(); closeWrite() }
}

/// Wakes a handler's watching thread from the task that awaits it (cancellation).
final class StopSignal: Sendable {
    let readEnd: Int32
    /// The write end; nil once closed, so a late `fire` can never write into a reused descriptor number.
    private let writeEnd: Mutex<Int32?>

    init() throws(Errno) {
        var ends: [Int32] = [-1, -1]
        guard stanzad_pipe(&ends, O_CLOEXEC | O_NONBLOCK) == 0 else { throw Errno(rawValue: errno) }
        readEnd = ends[0]
        writeEnd = Mutex(ends[1])
    }

    func fire() {
        writeEnd.withLock { fd in
            guard let fd else { return }
            var byte: UInt8 = 1
            _ = write(fd, &byte, 1)
        }
    }

    /// After the watching thread is done; a later `fire` is a no-op.
    func close() {
        let fd = writeEnd.withLock { fd in
            defer { fd = nil }
            return fd
        }
        guard let fd else { return }
        _ = Glibc.close(fd)
        _ = Glibc.close(readEnd)
    }
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
private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for pointer in pointers { free(pointer) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}

/// How every handler process (exec and worker) is started.
enum HandlerLaunch {
    /// Its own session and process group, on swift-subprocess's posix_spawn path (no uid/gid, no
    /// processGroupID), exactly `environment`, and a teardown of SIGTERM to the group, `killGrace`, then
    /// SIGKILL to the group.
    static func configuration(program: String, arguments: [String], environment: [String: String], workdir: String,
                              killGrace: Duration) -> Configuration {
        var options = PlatformOptions()
        options.createSession = true
        options.teardownSequence = teardown(killGrace)
        var keys: [Environment.Key: String] = [:]
        for (name, value) in environment {
            if let key = Environment.Key(rawValue: name) { keys[key] = value }
        }
        return Configuration(
            executable: program.contains("/") ? .path(FilePath(program)) : .name(program),
            arguments: Arguments(arguments), environment: .custom(keys), workingDirectory: FilePath(workdir),
            platformOptions: options)
    }

    static func teardown(_ killGrace: Duration) -> [TeardownStep] {
        [.gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: killGrace)]
    }
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
