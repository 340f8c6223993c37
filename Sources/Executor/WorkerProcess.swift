// One worker process on the process loop: spawned there (CSpawn, like exec handlers) with the pool's stdin
// pipe, its answers read from stdout line by line and handed straight to their requesters, stderr logged line
// by line, its exit seen through a pidfd, and its teardown (SIGTERM to the group, kill grace, SIGKILL) timed
// there. No thread of its own.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CSpawn
import Logging
import Routing
import XMPPCore

final class WorkerProcess: ProcessLoopWatcher, @unchecked Sendable {
    /// How the process ended, for its supervisor.
    struct Ending: Sendable {
        var pid: Int32?
        /// "exit N", "signal N", "status lost", or why it could not start.
        var status: String
        /// It could not be started.
        var startProblem: String?
        /// The problem with its output that ended it (garbage, an unknown ref, an over-long line).
        var garbage: String?
    }

    let pool: WorkerPool
    let index: Int
    let generation: Int
    let settings: WorkerPool.Settings
    let input: WorkerInput
    let log: Logger
    let loop: ProcessLoop
    /// Gets the ending, once, on the loop's thread. Set before `start` is handed to the loop.
    var completion: @Sendable (Ending) -> Void = { _ in }

    private var pid: pid_t = 0
    private var spawn: OrphanReaper.Spawn?
    private var stdout: Int32 = -1
    private var stderr: Int32 = -1
    private var pidfd: Int32 = -1
    private var splitter: LineSplitter
    private var lines = StderrLines(limit: 65_536)
    private var garbage: String?
    private var running = false
    private var killTimer: Int?
    private var graceTimer: Int?
    private var exitPoll: Int?

    init(pool: WorkerPool, index: Int, generation: Int, settings: WorkerPool.Settings, input: WorkerInput, log: Logger,
         loop: ProcessLoop = .shared) {
        self.pool = pool
        self.index = index
        self.generation = generation
        self.settings = settings
        self.input = input
        self.log = log
        self.loop = loop
        self.splitter = LineSplitter(limit: settings.maxLine)
    }

    func start() {
        var stdinEnd = input.readEnd
        defer { if stdinEnd >= 0 { _ = Glibc.close(stdinEnd) } }  // the child has its copy
        let program = settings.argv.first ?? ""
        guard !program.isEmpty, let path = HandlerProcess.resolve(program, in: settings.environment["PATH"]) else {
            return fail("\(program): not found in PATH")
        }
        var output = [Int32](repeating: -1, count: 2), errors = [Int32](repeating: -1, count: 2)
        defer { for fd in output + errors where fd >= 0 { _ = Glibc.close(fd) } }
        guard stanzad_pipe(&output, O_CLOEXEC) == 0, stanzad_pipe(&errors, O_CLOEXEC) == 0 else {
            return fail("cannot create pipes: errno \(errno)")
        }
        let started = HandlerProcess.spawn(path: path, argv: settings.argv, environment: settings.environment,
                                           workdir: settings.workdir, stdin: stdinEnd, stdout: output[1], stderr: errors[1])
        spawn = started.spawn
        guard let child = started.pid else { return fail(started.problem) }
        _ = Glibc.close(stdinEnd)
        stdinEnd = -1
        pid = child
        running = true
        (stdout, stderr) = (output[0], errors[0])
        (output[0], errors[0]) = (-1, -1)
        for fd in [stdout, stderr] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        pidfd = stanzad_pidfd_open(pid)
        if pidfd >= 0, !loop.watch(pidfd, readable: true, by: self) { loop.close(&pidfd) }
        if pidfd < 0 { pollExit() }
        if !loop.watch(stdout, readable: true, by: self) { loop.close(&stdout); _ = kill(-pid, SIGKILL) }
        if !loop.watch(stderr, readable: true, by: self) { loop.close(&stderr); _ = kill(-pid, SIGKILL) }
        log.notice("worker started", metadata: ["pid": "\(pid)"])
        let stopNow = pool.workerStarted(index, generation: generation, pid: pid, input: input) { [self] in
            loop.execute { [self] in terminate() }
        }
        if stopNow { terminate() }
        // At shutdown the worker has kill_grace to exit by itself once its stdin is closed.
        input.whenClosed { [self] in
            loop.execute { [self] in
                guard running, graceTimer == nil, pool.isShuttingDown else { return }
                graceTimer = loop.schedule(at: .now + settings.killGrace) { [self] in
                    pool.stopWorker(index, generation: generation, reason: "shutdown grace elapsed")
                    terminate()
                }
            }
        }
    }

    func ready(_ fd: Int32) {
        switch fd {
        case stdout: readAnswers()
        case stderr: readErrors()
        case pidfd: checkExit()
        default: break
        }
    }

    private func fail(_ reason: String) {
        completion(Ending(pid: nil, status: "could not start: \(reason)", startProblem: reason))
    }

    /// SIGTERM to the group now, SIGKILL after the grace.
    private func terminate() {
        guard running, killTimer == nil else { return }
        _ = kill(-pid, SIGTERM)
        killTimer = loop.schedule(at: .now + settings.killGrace) { [self] in
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

    /// Answers ← stdout, each delivered as soon as its line is complete. A problem stops the worker; EOF means
    /// it takes no more requests.
    private func readAnswers() {
        var problem: String?
        loop.readAvailable(&stdout) { bytes in
            guard let complete = splitter.feed(bytes) else {
                problem = "worker wrote a line longer than max_output (\(settings.maxLine) bytes)"
                return false
            }
            for line in complete where !line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) {
                let answer: WorkerProtocol.Answer
                do {
                    answer = try WorkerProtocol.parseAnswer(line)
                } catch {
                    problem = "\(error): \(HandlerOutput.excerpt(line))"
                    return false
                }
                switch pool.deliver(answer, from: index, settings: settings) {
                case .ok: break
                case .recycle: log.info("worker reached max_requests; recycling", metadata: ["pid": "\(pid)"])
                case .unknownRef(let ref):
                    problem = "worker answered unknown ref \(JID.quoted(ref))"
                    return false
                }
            }
            return true
        }
        if let problem {
            garbage = problem
            loop.close(&stdout)
            pool.stopWorker(index, generation: generation, reason: problem)
            terminate()
        } else if stdout < 0, running {
            // stdout ended: the worker is gone or going, and gets no more requests.
            pool.finishSlot(index, generation: generation)
        }
    }

    private func readErrors() {
        let pid = self.pid
        let log = self.log
        loop.readAvailable(&stderr) { bytes in
            lines.feed(bytes) { log.warning("worker stderr", metadata: ["pid": "\(pid)", "line": "\($0)"]) }
            return true
        }
    }

    private func checkExit() {
        guard running else { return }
        switch HandlerProcess.exitState(of: pid) {
        case .running: return
        case .exited: finish(lost: false)
        case .lost: finish(lost: true)
        }
    }

    /// The worker has exited: the answers it wrote before are delivered, what is left of its group is killed, it
    /// is reaped and its supervisor told.
    private func finish(lost: Bool) {
        if garbage == nil, stdout >= 0 { readAnswers() }
        running = false
        for timer in [killTimer, graceTimer, exitPoll] { loop.cancelTimer(timer) }
        // Its pid (so its group id) stays taken until it is reaped below, so this never hits an unrelated process.
        _ = kill(-pid, SIGKILL)
        readErrors()
        let pid = self.pid
        let log = self.log
        lines.finish { log.warning("worker stderr", metadata: ["pid": "\(pid)", "line": "\($0)"]) }
        loop.close(&pidfd)
        loop.close(&stdout)
        loop.close(&stderr)
        pool.finishSlot(index, generation: generation)
        var status = "status lost"
        if let spawn {
            if lost {
                OrphanReaper.shared.reaped(spawn, pid: pid)
            } else if let raw = OrphanReaper.shared.reap(spawn, pid: pid) {
                switch HandlerProcess.ending(ofWaitStatus: raw) {
                case .exited(let code): status = "exit \(code)"
                case .signaled(let signal): status = "signal \(signal)"
                default: break
                }
            }
        }
        completion(Ending(pid: pid, status: status, startProblem: nil, garbage: garbage))
    }
}
