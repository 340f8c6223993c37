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
import Synchronization
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
        /// The kill switch of the current process (SIGTERM to its group, kill grace, SIGKILL).
        var stop: (@Sendable () -> Void)?
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
    /// most `timeout` later, on the thread that settles it (the process loop, the deadline sweep, a supervisor).
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
        let killSwitch: (@Sendable () -> Void)?

        func perform() {
            input?.close()
            killSwitch?()
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

    enum AnswerResult { case ok, unknownRef(String), recycle }

    func deliver(_ answer: WorkerProtocol.Answer, from index: Int, settings: Settings) -> AnswerResult {
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

    var isShuttingDown: Bool { state.withLock { $0.shuttingDown } }

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
        var workerLogger = logger
        workerLogger[metadataKey: "worker"] = "\(index)"
        let log = workerLogger
        // stdin is our own pipe: requests are written to it by whoever places them (see `perform`).
        let input: WorkerInput
        do {
            input = try WorkerInput()
        } catch {
            log.error("worker could not be started", metadata: ["problem": "cannot create its stdin: \(error)"])
            state.withLock { state in
                state.slots[index].running = false
                state.slots[index].accepting = false
            }
            return false
        }
        defer { input.close() }
        let process = WorkerProcess(pool: self, index: index, generation: generation, settings: settings, input: input, log: log)
        let ending = await withCheckedContinuation { (continuation: CheckedContinuation<WorkerProcess.Ending, Never>) in
            // Set before the loop sees the process (the hand-over through `execute` orders the two).
            process.completion = { continuation.resume(returning: $0) }
            ProcessLoop.shared.execute { process.start() }
        }
        if let problem = ending.startProblem {
            log.error("worker could not be started", metadata: [
                "argv0": "\(settings.argv.first ?? "")", "problem": "\(problem)",
                "hint": "check that the file exists and is executable (chmod +x); `stanzad check` tests this",
            ])
        }
        // What escaped the worker's group and was adopted goes now.
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
            state.slots[index].stop = nil
            let recycled = (slot.recycling || (settings.maxRequests > 0 && slot.served >= settings.maxRequests)) && !slot.stopRequested
            return (failed, slot.stopReason, recycled)
        }
        let status = ending.status
        for request in failed {
            request.complete(.failed(StanzaError(.cancel, .internalServerError), reason: "worker ended (\(status))"))
        }
        if let garbage = ending.garbage { log.error("worker output rejected; restarting it", metadata: ["problem": "\(garbage)"]) }
        let planned = recycled || isShuttingDown
        if planned {
            log.info("worker ended", metadata: ["status": "\(status)", "failed_requests": "\(failed.count)"])
        } else {
            log.error("worker ended unexpectedly", metadata: [
                "status": "\(status)", "failed_requests": "\(failed.count)", "reason": "\(reason ?? "it exited")",
            ])
        }
        return planned && ending.garbage == nil && ending.startProblem == nil
    }

    /// The process of slot `index` has started: it takes requests (unless it is already being stopped) and its
    /// kill switch is armed. Returns true when it must be stopped at once. Called on the process loop.
    func workerStarted(_ index: Int, generation: Int, pid: Int32, input: WorkerInput,
                       killSwitch: @escaping @Sendable () -> Void) -> Bool {
        let inFlight = settings.inFlight
        let (sends, stopNow) = state.withLock { state -> ([Send], Bool) in
            state.slots[index].pid = pid
            let slot = state.slots[index]
            guard slot.generation == generation, slot.running, !slot.stopRequested else { return ([], true) }
            state.slots[index].stop = killSwitch
            guard slot.accepting else { return ([], false) }
            state.slots[index].input = input
            return (Self.fill(&state, index, inFlight: inFlight), false)
        }
        if !state.withLock({ $0.slots[index].input === input }) { input.close() }
        perform(sends)
        return stopNow
    }

    func stopWorker(_ index: Int, generation: Int, reason: String) {
        let stop = state.withLock { state -> Stop? in
            guard state.slots[index].generation == generation else { return nil }
            return Self.requestStop(&state.slots[index], reason: reason)
        }
        stop?.perform()
    }

    /// stdout ended or the process exited: no more requests to this process; its kill switch is disarmed.
    func finishSlot(_ index: Int, generation: Int) {
        let input = state.withLock { state -> WorkerInput? in
            guard state.slots[index].generation == generation else { return nil }
            state.slots[index].stop = nil
            state.slots[index].running = false
            return Self.stopAccepting(&state.slots[index])
        }
        input?.close()
    }
}
