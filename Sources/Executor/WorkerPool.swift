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
        let deadline: ContinuousClock.Instant
        /// Called exactly once with the request's fate, from whichever thread settles it.
        let complete: @Sendable (Reply) -> Void
    }

    struct Slot {
        var generation = 0
        var running = false
        var accepting = false
        var served = 0
        var pid: Int32?
        var inFlight: [String: Request] = [:]
        /// The current process's stdin while it takes requests (nil: it takes none).
        var input: WorkerInput?
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
    /// Finished by `stop()`: the pool shuts down as on the service group's graceful shutdown.
    private let stopRequests: AsyncStream<Void>
    private let stopRequest: AsyncStream<Void>.Continuation

    public init(settings: Settings, logger: Logger) {
        (stopRequests, stopRequest) = AsyncStream.makeStream()
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
        let inputs = state.withLock { state -> [WorkerInput] in
            var inputs: [WorkerInput] = []
            for index in state.slots.indices where state.slots[index].running {
                state.slots[index].recycling = true
                if let input = Self.stopAccepting(&state.slots[index]) { inputs.append(input) }
            }
            return inputs
        }
        for input in inputs { input.close() }
        logger.notice("worker settings reloaded; recycling workers")
    }

    // MARK: Requests

    /// Sends `stanza` to a worker and waits for its answer, at most `timeout`.
    public func submit(_ stanza: Stanza) async -> Reply {
        await withCheckedContinuation { (continuation: CheckedContinuation<Reply, Never>) in
            submit(stanza) { continuation.resume(returning: $0) }
        }
    }

    /// Sends `stanza` to a worker without waiting; `completion` gets the answer (or the failure) exactly once, at
    /// most `timeout` later, on the thread that settles it (a reader thread, the deadline sweep, a supervisor).
    public func submit(_ stanza: Stanza, completion: @escaping @Sendable (Reply) -> Void) {
        let ref = state.withLock { state -> String in
            state.nextRef += 1
            return "r\(state.nextRef)"
        }
        let line = WorkerProtocol.requestLine(for: stanza, ref: ref)
        let deadline = ContinuousClock.now + settings.timeout
        enqueue(Request(ref: ref, line: line, deadline: deadline, complete: completion))
    }

    private func enqueue(_ request: Request) {
        enum Action { case fail, send(Send), queued }
        let inFlight = settings.inFlight
        let action = state.withLock { state -> Action in
            if state.shuttingDown { return .fail }
            for index in state.slots.indices {
                let slot = state.slots[index]
                if slot.accepting, slot.inFlight.count < inFlight, let input = slot.input {
                    state.slots[index].inFlight[request.ref] = request
                    return .send(Send(index: index, input: input, request: request))
                }
            }
            state.queue.append(request)
            return .queued
        }
        switch action {
        case .fail: request.complete(.failed(StanzaError(.cancel, .serviceUnavailable), reason: "shutting down"))
        case .send(let send): perform([send])
        case .queued: break
        }
    }

    /// A request placed with a worker, to be written to its stdin outside the lock.
    struct Send {
        let index: Int
        let input: WorkerInput
        let request: Request
    }

    /// Writes each request line to its worker's stdin, straight from the calling thread. A worker whose stdin was
    /// closed or broke in the meantime takes no more requests; its request is placed again.
    private func perform(_ sends: [Send]) {
        for send in sends where !send.input.send(send.request.line) {
            let (replace, closing) = state.withLock { state -> (Bool, WorkerInput?) in
                var closing: WorkerInput?
                if state.slots[send.index].input === send.input { closing = Self.stopAccepting(&state.slots[send.index]) }
                return (state.slots[send.index].inFlight.removeValue(forKey: send.request.ref) != nil, closing)
            }
            closing?.close()
            if replace { enqueue(send.request) }
        }
    }

    /// Moves queued requests to worker `index` while it has room. Call with the lock held; `perform` the result
    /// after it.
    private static func fill(_ state: inout State, _ index: Int, inFlight: Int) -> [Send] {
        guard let input = state.slots[index].input, state.slots[index].accepting, !state.shuttingDown else { return [] }
        var sends: [Send] = []
        while state.slots[index].inFlight.count < inFlight, let request = state.queue.popFirst() {
            state.slots[index].inFlight[request.ref] = request
            sends.append(Send(index: index, input: input, request: request))
        }
        return sends
    }

    /// The slot takes no more requests; returns its stdin to close (outside the lock).
    private static func stopAccepting(_ slot: inout Slot) -> WorkerInput? {
        slot.accepting = false
        defer { slot.input = nil }
        return slot.input
    }

    /// How often deadlines are checked: a request fails at most this long after its timeout. One sweep for
    /// the whole pool instead of a timer per request (arming and cancelling a dispatch timer per stanza woke the
    /// dispatch manager thread twice per request).
    static let deadlineSweep: Duration = .milliseconds(50)

    /// Requests whose deadline passed fail with remote-server-timeout; a worker holding one is restarted.
    private func expireDue(now: ContinuousClock.Instant) {
        let (due, stops) = state.withLock { state -> ([Request], [Stop]) in
            var due: [Request] = []
            var stops: [Stop] = []
            if state.queue.contains(where: { $0.deadline <= now }) {
                due += state.queue.filter { $0.deadline <= now }
                state.queue.removeAll { $0.deadline <= now }
            }
            for index in state.slots.indices {
                let late = state.slots[index].inFlight.values.filter { $0.deadline <= now }
                guard let first = late.first else { continue }
                for request in late {
                    state.slots[index].inFlight.removeValue(forKey: request.ref)
                    state.expired.insert(request.ref)
                }
                due += late
                stops.append(Self.requestStop(&state.slots[index], reason: "request \(first.ref) timed out"))
            }
            return (due, stops)
        }
        for stop in stops { stop.perform() }
        for request in due {
            request.complete(.failed(StanzaError(.wait, .remoteServerTimeout), reason: "worker did not answer in time"))
        }
    }

    private func sweepDeadlines() async {
        while !isShuttingDown {
            do { try await Task.sleep(for: Self.deadlineSweep) } catch { return }
            expireDue(now: .now)
        }
    }

    /// What stopping a process takes once the lock is released: closing its stdin and pulling its kill switch.
    struct Stop {
        let input: WorkerInput?
        let killSwitch: CheckedContinuation<Void, Never>?

        func perform() {
            input?.close()
            killSwitch?.resume()
        }
    }

    /// Marks the slot's process for stopping; returns what to do outside the lock.
    private static func requestStop(_ slot: inout Slot, reason: String) -> Stop {
        let input = stopAccepting(&slot)
        if slot.stopReason == nil { slot.stopReason = reason }
        slot.stopRequested = true
        defer { slot.stop = nil }
        return Stop(input: input, killSwitch: slot.stop)
    }

    // MARK: Reader side

    private enum AnswerResult { case ok, unknownRef(String), recycle }

    private func deliver(_ answer: WorkerProtocol.Answer, from index: Int, settings: Settings) -> AnswerResult {
        let (request, sends, closing, result) = state.withLock {
            state -> (Request?, [Send], WorkerInput?, AnswerResult) in
            guard let request = state.slots[index].inFlight.removeValue(forKey: answer.ref) else {
                if state.expired.remove(answer.ref) != nil { return (nil, [], nil, .ok) }
                return (nil, [], nil, .unknownRef(answer.ref))
            }
            state.slots[index].served += 1
            if settings.maxRequests > 0, state.slots[index].served >= settings.maxRequests {
                // Recycled: stdin closes now, the worker finishes what it has and exits.
                return (request, [], Self.stopAccepting(&state.slots[index]), .recycle)
            }
            // Capacity freed: the next queued request goes to this worker.
            return (request, Self.fill(&state, index, inFlight: settings.inFlight), nil, .ok)
        }
        // The next request goes out before this answer is turned into replies: the worker stays busy meanwhile.
        closing?.close()
        perform(sends)
        request?.complete(.answered(answer.replies))
        return result
    }

    // MARK: Supervision

    public func run() async throws {
        await withDiscardingTaskGroup { group in
            for index in 0..<settings.workers {
                group.addTask { await self.supervise(index) }
            }
            group.addTask { await self.sweepDeadlines() }
            // Until the service group shuts down gracefully, or `stop()`.
            for await _ in stopRequests.cancelOnGracefulShutdown() {}
            beginShutdown()
        }
        logger.notice("workers stopped")
    }

    /// Shuts this pool down alone (its route is gone after a reload), as a graceful shutdown would: queued
    /// stanzas fail with service-unavailable, in-flight ones finish within `kill_grace` after the workers' stdin
    /// closes (or fail), then the workers' groups are killed and `run()` returns.
    public func stop() {
        stopRequest.finish()
    }

    private func beginShutdown() {
        let (inputs, queued) = state.withLock { state -> ([WorkerInput], [Request]) in
            state.shuttingDown = true
            var inputs: [WorkerInput] = []
            for index in state.slots.indices {
                if let input = Self.stopAccepting(&state.slots[index]) { inputs.append(input) }
            }
            let queued = Array(state.queue)
            state.queue.removeAll()
            return (inputs, queued)
        }
        // Each worker's stdin is closed and it has kill_grace to finish (see runWorker).
        for input in inputs { input.close() }
        for request in queued {
            request.complete(.failed(StanzaError(.cancel, .serviceUnavailable), reason: "shutting down"))
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
        // stdin is our own pipe too: requests are written to it by whoever places them (see `perform`).
        let input: WorkerInput
        do {
            input = try WorkerInput()
        } catch {
            _ = close(outputEnds[1])
            log.error("worker could not be started", metadata: ["problem": "cannot create its stdin: \(error)"])
            state.withLock { state in
                state.slots[index].running = false
                state.slots[index].accepting = false
            }
            return false
        }
        defer { input.close() }
        let spawn = OrphanReaper.shared.spawning()
        do {
            let result = try await Subprocess.run(
                launch, input: .fileDescriptor(FileDescriptor(rawValue: input.readEnd), closeAfterSpawningProcess: true),
                output: .fileDescriptor(FileDescriptor(rawValue: outputEnds[1]), closeAfterSpawningProcess: true),
                error: .sequence
            ) { execution -> String? in
                let processID = execution.processIdentifier.value
                OrphanReaper.shared.spawned(spawn, pid: processID)
                let sends = state.withLock { state -> [Send] in
                    state.slots[index].pid = processID
                    guard state.slots[index].generation == generation, state.slots[index].accepting else { return [] }
                    state.slots[index].input = input
                    return Self.fill(&state, index, inFlight: settings.inFlight)
                }
                if !state.withLock({ $0.slots[index].input === input }) { input.close() }
                log.notice("worker started", metadata: ["pid": "\(processID)"])
                perform(sends)
                return await withTaskGroup(of: Void.self, returning: String?.self) { group in
                    group.addTask {
                        await input.waitUntilClosed()
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
                                from: answers, index: index, settings: settings, pid: processID, log: log))
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
        // swift-subprocess has reaped the worker; what escaped its group and was adopted goes now.
        OrphanReaper.shared.spawned(spawn, pid: nil)
        if let pid { OrphanReaper.shared.reaped(spawn, pid: pid) }
        let escaped = await OrphanReaper.shared.sweepOffThePool()
        if escaped > 0 {
            log.notice("adopted processes killed after the worker ended", metadata: ["escaped_killed": "\(escaped)"])
        }

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
            request.complete(.failed(StanzaError(.cancel, .internalServerError), reason: "worker ended (\(status))"))
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
    private func readAnswers(from fd: Int32, index: Int, settings: Settings, pid: Int32, log: Logger) -> String? {
        let maxLine = settings.maxLine
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
                switch deliver(answer, from: index, settings: settings) {
                case .ok: break
                case .recycle: log.info("worker reached max_requests; recycling", metadata: ["pid": "\(pid)"])
                case .unknownRef(let ref): return "worker answered unknown ref \(JID.quoted(ref))"
                }
            }
        }
    }

    private func stopWorker(_ index: Int, generation: Int, reason: String) {
        let stop = state.withLock { state -> Stop? in
            guard state.slots[index].generation == generation else { return nil }
            return Self.requestStop(&state.slots[index], reason: reason)
        }
        stop?.perform()
    }

    /// stdout ended: no more requests to this process, and its kill switch task may finish.
    private func finishSlot(_ index: Int, generation: Int) {
        let stop = state.withLock { state -> Stop? in
            guard state.slots[index].generation == generation else { return nil }
            let input = Self.stopAccepting(&state.slots[index])
            defer { state.slots[index].stop = nil }
            // The process is ending on its own; the switch only has to let its task finish.
            state.slots[index].running = false
            return Stop(input: input, killSwitch: state.slots[index].stop)
        }
        stop?.perform()
    }
}
