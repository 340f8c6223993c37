// A `worker` route's long-lived processes (SPEC §5.4): `workers` processes started at boot, each taking up
// to `inFlight` requests from one shared queue, answered in any order by `ref`. A worker that exits, crashes,
// writes garbage or an unknown ref, or lets a request time out is stopped (its group killed) and restarted
// with backoff; its in-flight stanzas fail. `maxRequests` recycles a worker: it gets no new requests, its
// stdin is closed once the last answer is in, and a fresh one starts. On shutdown stdin is closed, the
// workers get `killGrace` to exit, then their groups are killed.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DequeModule
import Logging
import ServiceLifecycle
import CSpawn
import Subprocess
import Synchronization
import SystemPackage
import XMPPCore

public final class WorkerPool: Service, Sendable {
    public struct Settings: Sendable {
        public var route: String
        public var argv: [String]
        /// The worker's whole environment (built like an exec handler's, without the STANZA_* variables).
        public var environment: [String: String]
        public var workdir: String
        public var workers: Int
        public var inFlight: Int
        /// 0: never recycle.
        public var maxRequests: Int
        public var timeout: Duration
        public var killGrace: Duration
        /// Longest answer line accepted (`max_output`).
        public var maxLine: Int

        public init(route: String, argv: [String], environment: [String: String], workdir: String, workers: Int = 1,
                    inFlight: Int = 1, maxRequests: Int = 0, timeout: Duration = .seconds(10),
                    killGrace: Duration = .seconds(2), maxLine: Int = 262_144) {
            self.route = route
            self.argv = argv
            self.environment = environment
            self.workdir = workdir
            self.workers = max(1, workers)
            self.inFlight = max(1, inFlight)
            self.maxRequests = maxRequests
            self.timeout = timeout
            self.killGrace = killGrace
            self.maxLine = maxLine
        }
    }

    /// The fate of one request.
    public enum Reply: Sendable {
        case answered([JSONValue])
        case failed(StanzaError, reason: String)
    }

    struct Request {
        let ref: String
        let line: [UInt8]
        let continuation: CheckedContinuation<Reply, Never>
    }

    struct Slot {
        var generation = 0
        var running = false
        var accepting = false
        var served = 0
        var pid: Int32?
        var inFlight: [String: Request] = [:]
        /// The writer waiting for a request (nil resumes it with "stop taking requests").
        var writer: CheckedContinuation<Request?, Never>?
        /// The supervisor's kill switch for the current process.
        var stop: CheckedContinuation<Void, Never>?
        var stopRequested = false
        var stopReason: String?
        /// Being replaced after a reload: its end is planned, not a crash.
        var recycling = false
    }

    struct State {
        var queue: Deque<Request> = []
        var slots: [Slot]
        var nextRef = 0
        var shuttingDown = false
        /// Refs whose requests timed out; a late answer to one is ignored rather than treated as garbage.
        var expired: Set<String> = []
    }

    /// The current settings (replaced by `reload`).
    public var settings: Settings { current.withLock { $0 } }
    private let current: Mutex<Settings>
    let logger: Logger
    private let state: Mutex<State>

    public init(settings: Settings, logger: Logger) {
        self.current = Mutex(settings)
        var logger = logger
        logger[metadataKey: "route"] = "\(settings.route)"
        self.logger = logger
        self.state = Mutex(State(slots: Array(repeating: Slot(), count: settings.workers)))
    }

    /// SIGHUP: new settings for the next processes. Every worker is recycled: it takes no new requests,
    /// finishes the ones it has, gets EOF and is replaced by one started with the new settings. Queued
    /// stanzas stay queued for the new workers. The number of workers is fixed until restart.
    public func reload(_ settings: Settings) {
        var settings = settings
        let count = state.withLock { $0.slots.count }
        if settings.workers != count {
            logger.warning("workers count changes take effect at restart", metadata: ["workers": "\(count)", "configured": "\(settings.workers)"])
            settings.workers = count
        }
        current.withLock { $0 = settings }
        let writers = state.withLock { state -> [CheckedContinuation<Request?, Never>] in
            var writers: [CheckedContinuation<Request?, Never>] = []
            for index in state.slots.indices where state.slots[index].running {
                state.slots[index].accepting = false
                state.slots[index].recycling = true
                if let writer = state.slots[index].writer { writers.append(writer) }
                state.slots[index].writer = nil
            }
            return writers
        }
        for writer in writers { writer.resume(returning: nil) }
        logger.notice("worker settings reloaded; recycling workers")
    }

    // MARK: Requests

    /// Sends `stanza` to a worker and waits for its answer, at most `timeout`.
    public func submit(_ stanza: Stanza) async -> Reply {
        let ref = state.withLock { state -> String in
            state.nextRef += 1
            return "r\(state.nextRef)"
        }
        let line = WorkerProtocol.requestLine(for: stanza, ref: ref)
        let timer = OneShotTimer(after: settings.timeout) { self.expire(ref) }
        defer { timer.cancel() }
        return await withCheckedContinuation { (continuation: CheckedContinuation<Reply, Never>) in
            enqueue(Request(ref: ref, line: line, continuation: continuation))
        }
    }

    private func enqueue(_ request: Request) {
        enum Action { case fail, handOver(CheckedContinuation<Request?, Never>), queued }
        let action = state.withLock { state -> Action in
            if state.shuttingDown { return .fail }
            for index in state.slots.indices {
                let slot = state.slots[index]
                if slot.accepting, slot.inFlight.count < settings.inFlight, let writer = slot.writer {
                    state.slots[index].writer = nil
                    state.slots[index].inFlight[request.ref] = request
                    return .handOver(writer)
                }
            }
            state.queue.append(request)
            return .queued
        }
        switch action {
        case .fail: request.continuation.resume(returning: .failed(StanzaError(.cancel, .serviceUnavailable), reason: "shutting down"))
        case .handOver(let writer): writer.resume(returning: request)
        case .queued: break
        }
    }

    /// The request's deadline passed: it fails with remote-server-timeout; a worker holding it is restarted.
    private func expire(_ ref: String) {
        let (request, stop) = state.withLock { state -> (Request?, CheckedContinuation<Void, Never>?) in
            if let index = state.queue.firstIndex(where: { $0.ref == ref }) {
                return (state.queue.remove(at: index), nil)
            }
            for index in state.slots.indices {
                if let request = state.slots[index].inFlight.removeValue(forKey: ref) {
                    state.expired.insert(ref)
                    return (request, Self.requestStop(&state.slots[index], reason: "request \(ref) timed out"))
                }
            }
            return (nil, nil)
        }
        stop?.resume()
        request?.continuation.resume(returning: .failed(StanzaError(.wait, .remoteServerTimeout), reason: "worker did not answer in time"))
    }

    /// Marks the slot's process for stopping; returns the kill switch to resume (outside the lock).
    private static func requestStop(_ slot: inout Slot, reason: String) -> CheckedContinuation<Void, Never>? {
        slot.accepting = false
        if slot.stopReason == nil { slot.stopReason = reason }
        slot.stopRequested = true
        defer { slot.stop = nil }
        return slot.stop
    }

    // MARK: Writer side

    /// The next request for worker `index`, or nil when it must take no more.
    private func nextRequest(for index: Int) async -> Request? {
        await withCheckedContinuation { (continuation: CheckedContinuation<Request?, Never>) in
            let immediate = state.withLock { state -> Request?? in
                let slot = state.slots[index]
                guard slot.accepting, !state.shuttingDown else { return .some(nil) }
                if slot.inFlight.count < settings.inFlight, let request = state.queue.popFirst() {
                    state.slots[index].inFlight[request.ref] = request
                    return .some(request)
                }
                state.slots[index].writer = continuation
                return .none
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
    }

    // MARK: Reader side

    private enum AnswerResult { case ok, unknownRef(String), recycle }

    private func deliver(_ answer: WorkerProtocol.Answer, from index: Int) -> AnswerResult {
        let (request, writer, next, result) = state.withLock {
            state -> (Request?, CheckedContinuation<Request?, Never>?, Request?, AnswerResult) in
            guard let request = state.slots[index].inFlight.removeValue(forKey: answer.ref) else {
                if state.expired.remove(answer.ref) != nil { return (nil, nil, nil, .ok) }
                return (nil, nil, nil, .unknownRef(answer.ref))
            }
            state.slots[index].served += 1
            var result = AnswerResult.ok
            if settings.maxRequests > 0, state.slots[index].served >= settings.maxRequests {
                state.slots[index].accepting = false
                result = .recycle
            }
            // Capacity freed: a waiting writer takes the next queued request (or learns to stop).
            var writer: CheckedContinuation<Request?, Never>?
            var next: Request?
            if let waiting = state.slots[index].writer {
                if !state.slots[index].accepting || state.shuttingDown {
                    writer = waiting
                    state.slots[index].writer = nil
                } else if let queued = state.queue.popFirst() {
                    state.slots[index].inFlight[queued.ref] = queued
                    writer = waiting
                    next = queued
                    state.slots[index].writer = nil
                }
            }
            return (request, writer, next, result)
        }
        request?.continuation.resume(returning: .answered(answer.replies))
        writer?.resume(returning: next)
        return result
    }

    // MARK: Supervision

    public func run() async throws {
        await withDiscardingTaskGroup { group in
            for index in 0..<settings.workers {
                group.addTask { await self.supervise(index) }
            }
            try? await gracefulShutdown()
            beginShutdown()
        }
        logger.notice("workers stopped")
    }

    private func beginShutdown() {
        let (writers, queued) = state.withLock { state -> ([CheckedContinuation<Request?, Never>], [Request]) in
            state.shuttingDown = true
            var writers: [CheckedContinuation<Request?, Never>] = []
            for index in state.slots.indices {
                state.slots[index].accepting = false
                if let writer = state.slots[index].writer { writers.append(writer) }
                state.slots[index].writer = nil
            }
            let queued = Array(state.queue)
            state.queue.removeAll()
            return (writers, queued)
        }
        // Writers stop: each worker's stdin is closed and it has kill_grace to finish (see supervise).
        for writer in writers { writer.resume(returning: nil) }
        for request in queued {
            request.continuation.resume(returning: .failed(StanzaError(.cancel, .serviceUnavailable), reason: "shutting down"))
        }
    }

    private var isShuttingDown: Bool { state.withLock { $0.shuttingDown } }

    private func supervise(_ index: Int) async {
        var backoff: Duration = .milliseconds(100)
        while !isShuttingDown {
            let started = ContinuousClock.now
            let clean = await runWorker(index)
            if isShuttingDown { break }
            if clean {
                backoff = .milliseconds(100)
                continue
            }
            if ContinuousClock.now - started > .seconds(10) { backoff = .milliseconds(100) }
            logger.warning("worker will be restarted", metadata: ["worker": "\(index)", "backoff_ms": "\(backoff.components.seconds * 1000 + backoff.components.attoseconds / 1_000_000_000_000_000)"])
            let until = ContinuousClock.now + backoff
            while ContinuousClock.now < until && !isShuttingDown {
                try? await Task.sleep(for: .milliseconds(50))
            }
            backoff = min(backoff * 2, .seconds(5))
        }
    }

    /// Runs one worker process to its end. True when it ended as planned (recycled), false otherwise.
    private func runWorker(_ index: Int) async -> Bool {
        let settings = self.settings  // one snapshot per process (a reload affects the next one)
        let generation = state.withLock { state -> Int in
            state.slots[index].generation += 1
            state.slots[index].running = true
            state.slots[index].accepting = !state.shuttingDown
            state.slots[index].served = 0
            state.slots[index].stopRequested = false
            state.slots[index].stopReason = nil
            state.slots[index].recycling = false
            return state.slots[index].generation
        }
        let grace = settings.killGrace
        guard let program = settings.argv.first else { return false }
        let launch = HandlerLaunch.configuration(
            program: program, arguments: Array(settings.argv.dropFirst()), environment: settings.environment,
            workdir: settings.workdir, killGrace: grace)
        var workerLogger = logger
        workerLogger[metadataKey: "worker"] = "\(index)"
        let log = workerLogger
        var pid: Int32?
        var status: String = "not started"
        var garbage: String?
        // stdout is our own pipe, read by a thread of its own that hands each answer straight to its
        // requester: no task or event-loop hop between the worker's write and the waiting stanza.
        var outputEnds: [Int32] = [-1, -1]
        guard stanzad_pipe(&outputEnds, O_CLOEXEC) == 0 else {
            log.error("worker could not be started", metadata: ["problem": "cannot create a pipe: errno \(errno)"])
            state.withLock { state in
                state.slots[index].running = false
                state.slots[index].accepting = false
            }
            return false
        }
        let answers = outputEnds[0]
        defer { _ = close(answers) }
        do {
            let result = try await Subprocess.run(
                launch, input: .inputWriter,
                output: .fileDescriptor(FileDescriptor(rawValue: outputEnds[1]), closeAfterSpawningProcess: true),
                error: .sequence
            ) { execution -> String? in
                let processID = execution.processIdentifier.value
                state.withLock { $0.slots[index].pid = processID }
                log.notice("worker started", metadata: ["pid": "\(processID)"])
                return await withTaskGroup(of: Void.self, returning: String?.self) { group in
                    // Requests → stdin; stdin is closed when the worker must take no more.
                    group.addTask {
                        let writer = execution.standardInputWriter
                        while let request = await self.nextRequest(for: index) {
                            do {
                                _ = try await writer.write(request.line)
                            } catch {
                                break
                            }
                        }
                        try? await writer.finish()
                        // Shutdown: the worker has kill_grace to exit by itself after EOF.
                        if self.isShuttingDown {
                            do {
                                try await Task.sleep(for: grace)
                                self.stopWorker(index, generation: generation, reason: "shutdown grace elapsed")
                            } catch {
                                // The worker exited by itself within the grace period.
                            }
                        }
                    }
                    group.addTask {
                        var lines = StderrLines(limit: 65_536)
                        do {
                            for try await buffer in execution.standardError {
                                buffer.withUnsafeBytes { bytes in
                                    lines.feed(bytes) { log.warning("worker stderr", metadata: ["pid": "\(processID)", "line": "\($0)"]) }
                                }
                            }
                        } catch {}
                        lines.finish { log.warning("worker stderr", metadata: ["pid": "\(processID)", "line": "\($0)"]) }
                    }
                    group.addTask {
                        // The kill switch: stop requests (timeouts, garbage, shutdown) tear the group down.
                        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                            let now = self.state.withLock { state -> Bool in
                                let slot = state.slots[index]
                                if slot.stopRequested || !slot.running || slot.generation != generation { return true }
                                state.slots[index].stop = continuation
                                return false
                            }
                            if now { continuation.resume() }
                        }
                        if self.state.withLock({ $0.slots[index].running && $0.slots[index].generation == generation }) {
                            await execution.teardown(using: HandlerLaunch.teardown(grace))
                        }
                    }
                    // Answers ← stdout, until EOF (the worker and everything it started are gone) or a problem.
                    let problem = await withCheckedContinuation { (continuation: CheckedContinuation<String?, Never>) in
                        let started = BlockingThread.start {
                            continuation.resume(returning: self.readAnswers(
                                from: answers, index: index, maxLine: settings.maxLine, pid: processID, log: log))
                        }
                        if !started { continuation.resume(returning: "cannot start a thread to read the worker's answers") }
                    }
                    if let problem {
                        self.stopWorker(index, generation: generation, reason: problem)
                        await execution.teardown(using: HandlerLaunch.teardown(grace))
                    }
                    // stdout ended: the worker is gone or going. Release the writer and the kill switch.
                    self.finishSlot(index, generation: generation)
                    group.cancelAll()
                    await group.waitForAll()
                    return problem
                }
            }
            pid = result.processIdentifier.value
            garbage = result.closureResult
            switch result.terminationStatus {
            case .exited(let code): status = "exit \(code)"
            case .signaled(let signal): status = "signal \(signal)"
            }
        } catch {
            status = "could not start: \(error)"
            log.error("worker could not be started", metadata: [
                "argv0": "\(program)", "problem": "\(error)",
                "hint": "check that the file exists and is executable (chmod +x); `stanzad check` tests this",
            ])
        }
        if let pid { _ = kill(-pid, SIGKILL) }

        // Whatever was still in flight fails now.
        let (failed, reason, recycled) = state.withLock { state -> ([Request], String?, Bool) in
            let slot = state.slots[index]
            let failed = Array(slot.inFlight.values)
            state.slots[index].inFlight.removeAll()
            state.slots[index].running = false
            state.slots[index].accepting = false
            state.slots[index].pid = nil
            let recycled = (slot.recycling || (settings.maxRequests > 0 && slot.served >= settings.maxRequests)) && !slot.stopRequested
            return (failed, slot.stopReason, recycled)
        }
        for request in failed {
            request.continuation.resume(returning: .failed(StanzaError(.cancel, .internalServerError), reason: "worker ended (\(status))"))
        }
        if let garbage { log.error("worker output rejected; restarting it", metadata: ["problem": "\(garbage)"]) }
        let planned = recycled || isShuttingDown
        if planned {
            log.info("worker ended", metadata: ["status": "\(status)", "failed_requests": "\(failed.count)"])
        } else {
            log.error("worker ended unexpectedly", metadata: [
                "status": "\(status)", "failed_requests": "\(failed.count)", "reason": "\(reason ?? "it exited")",
            ])
        }
        return planned && garbage == nil
    }

    /// Reads answer lines from a worker's stdout on the calling (blocking) thread and delivers each one.
    /// Returns the problem that ends the worker (garbage, an unknown ref, an over-long line), or nil at EOF.
    private func readAnswers(from fd: Int32, index: Int, maxLine: Int, pid: Int32, log: Logger) -> String? {
        var splitter = LineSplitter(limit: maxLine)
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { return nil }
            let fed = buffer.withUnsafeBytes { splitter.feed(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            guard let lines = fed else {
                return "worker wrote a line longer than max_output (\(maxLine) bytes)"
            }
            for line in lines where !line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) {
                let answer: WorkerProtocol.Answer
                do {
                    answer = try WorkerProtocol.parseAnswer(line)
                } catch {
                    return "\(error): \(HandlerOutput.excerpt(line))"
                }
                switch deliver(answer, from: index) {
                case .ok: break
                case .recycle: log.info("worker reached max_requests; recycling", metadata: ["pid": "\(pid)"])
                case .unknownRef(let ref): return "worker answered unknown ref \(JID.quoted(ref))"
                }
            }
        }
    }

    private func stopWorker(_ index: Int, generation: Int, reason: String) {
        let stop = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard state.slots[index].generation == generation else { return nil }
            return Self.requestStop(&state.slots[index], reason: reason)
        }
        stop?.resume()
    }

    /// stdout ended: no more requests to this process, and its kill switch task may finish.
    private func finishSlot(_ index: Int, generation: Int) {
        let (writer, stop) = state.withLock { state -> (CheckedContinuation<Request?, Never>?, CheckedContinuation<Void, Never>?) in
            guard state.slots[index].generation == generation else { return (nil, nil) }
            state.slots[index].accepting = false
            let writer = state.slots[index].writer
            state.slots[index].writer = nil
            let stop = state.slots[index].stop
            state.slots[index].stop = nil
            // The process is ending on its own; the switch only has to let its task finish.
            state.slots[index].running = false
            return (writer, stop)
        }
        writer?.resume(returning: nil)
        stop?.resume()
    }
}
