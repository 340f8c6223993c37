// A `worker` route's long-lived processes (SPEC §5.4): `workers` processes started at boot, each taking up
// to `inFlight` requests from one shared queue, answered in any order by `ref`. A worker that exits, crashes,
// writes garbage or an unknown ref, or lets a request time out is stopped (its group killed) and restarted
// with backoff; its in-flight stanzas fail. `maxRequests` recycles a worker: it gets no new requests, its
// stdin is closed once the last answer is in, and a fresh one starts. On shutdown stdin is closed, the
// workers get `killGrace` to exit, then their groups are killed.
//
// The bookkeeping (which worker is starting, running, draining or stopping, which request is where) is
// WorkerPoolStateMachine; this shell holds it under one lock with each worker's stdin and kill switch and
// performs what its events return. The processes themselves are WorkerProcess, on the process loop.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DequeModule
import Logging
import Routing
import ServiceLifecycle
import Synchronization
import XMPPCore

package final class WorkerPool: Service, Sendable {
    package struct Settings: Sendable {
        package var route: String
        package var argv: [String]
        /// The worker's whole environment (built like an exec handler's, without the STANZA_* variables).
        package var environment: [String: String]
        package var workdir: String
        package var workers: Int
        package var inFlight: Int
        /// 0: never recycle.
        package var maxRequests: Int
        package var timeout: Duration
        package var killGrace: Duration
        /// Longest answer line accepted (`max_output`).
        package var maxLine: Int

        package init(route: String, argv: [String], environment: [String: String], workdir: String, workers: Int = 1,
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
    package enum Reply: Sendable {
        case answered([JSONValue])
        case failed(StanzaError, reason: String)
    }

    struct Request: WorkerRequest {
        let ref: String
        let line: [UInt8]
        let deadline: ContinuousClock.Instant
        /// Called exactly once with the request's fate, from whichever thread settles it.
        let complete: @Sendable (Reply) -> Void
    }

    struct State {
        var machine: WorkerPoolStateMachine<Request>
        /// Each worker's stdin while its process takes requests (the machine has it `running`).
        var inputs: [WorkerInput?]
        /// Each worker's kill switch while its process runs (SIGTERM to its group, kill grace, SIGKILL).
        var killSwitches: [(@Sendable () -> Void)?]
        var nextRef = 0

        init(workers: Int, inFlight: Int) {
            machine = WorkerPoolStateMachine(workers: workers, inFlight: inFlight)
            inputs = Array(repeating: nil, count: machine.workers.count)
            killSwitches = Array(repeating: nil, count: machine.workers.count)
        }

        /// Worker `index`'s stdin, to close outside the lock; it takes no more requests.
        mutating func takeInput(_ index: Int) -> WorkerInput? {
            defer { inputs[index] = nil }
            return inputs[index]
        }

        /// What stopping worker `index` takes once the lock is released.
        mutating func takeStop(_ index: Int) -> Stop {
            defer { killSwitches[index] = nil }
            return Stop(input: takeInput(index), killSwitch: killSwitches[index])
        }
    }

    /// The current settings (replaced by `reload`).
    package var settings: Settings { current.withLock { $0 } }
    private let current: Mutex<Settings>
    let logger: Logger
    private let state: Mutex<State>
    /// Finished by `stop()`: the pool shuts down as on the service group's graceful shutdown.
    private let stopRequests: AsyncStream<Void>
    private let stopRequest: AsyncStream<Void>.Continuation

    package init(settings: Settings, logger: Logger) {
        (stopRequests, stopRequest) = AsyncStream.makeStream()
        self.current = Mutex(settings)
        var logger = logger
        logger[metadataKey: "route"] = "\(settings.route)"
        self.logger = logger
        self.state = Mutex(State(workers: settings.workers, inFlight: settings.inFlight))
    }

    /// SIGHUP: new settings for the next processes. Every worker is recycled: it takes no new requests,
    /// finishes the ones it has, gets EOF and is replaced by one started with the new settings. Queued
    /// stanzas stay queued for the new workers. The number of workers is fixed until restart.
    package func reload(_ settings: Settings) {
        var settings = settings
        let count = state.withLock { $0.machine.workers.count }
        if settings.workers != count {
            logger.warning("workers count changes take effect at restart", metadata: ["workers": "\(count)", "configured": "\(settings.workers)"])
            settings.workers = count
        }
        current.withLock { $0 = settings }
        let inFlight = settings.inFlight
        let inputs = state.withLock { state -> [WorkerInput] in
            state.machine.inFlightLimit = max(1, inFlight)
            return state.machine.reload().compactMap { state.takeInput($0) }
        }
        for input in inputs { input.close() }
        logger.notice("worker settings reloaded; recycling workers")
    }

    // MARK: Requests

    /// Sends `stanza` to a worker and waits for its answer, at most `timeout`.
    package func submit(_ stanza: Stanza, room: RoomOrigin? = nil) async -> Reply {
        await withCheckedContinuation { (continuation: CheckedContinuation<Reply, Never>) in
            submit(stanza, room: room) { continuation.resume(returning: $0) }
        }
    }

    /// Sends `stanza` to a worker without waiting; `completion` gets the answer (or the failure) exactly once, at
    /// most `timeout` later, on the thread that settles it (the process loop, the deadline sweep, a supervisor).
    package func submit(_ stanza: Stanza, room: RoomOrigin? = nil, completion: @escaping @Sendable (Reply) -> Void) {
        let ref = state.withLock { state -> String in
            state.nextRef += 1
            return "r\(state.nextRef)"
        }
        let line = WorkerProtocol.requestLine(for: stanza, ref: ref, room: room)
        let deadline = ContinuousClock.now + settings.timeout
        enqueue(Request(ref: ref, line: line, deadline: deadline, complete: completion))
    }

    /// Sends a request object of its own (an ad-hoc command step, SPEC §15) and waits for the answer; `ref` is added.
    package func submit(object: [String: JSONValue]) async -> Reply {
        await withCheckedContinuation { (continuation: CheckedContinuation<Reply, Never>) in
            let ref = state.withLock { state -> String in
                state.nextRef += 1
                return "r\(state.nextRef)"
            }
            var object = object
            object["ref"] = .string(ref)
            let line = JSONValue.object(object).serializedBytes() + [0x0A]
            enqueue(Request(ref: ref, line: line, deadline: ContinuousClock.now + settings.timeout) { continuation.resume(returning: $0) })
        }
    }

    private func enqueue(_ request: Request) {
        let (placement, send) = state.withLock { state -> (WorkerPoolStateMachine<Request>.Placement, Send?) in
            let placement = state.machine.submit(request)
            guard case .send(let index) = placement else { return (placement, nil) }
            // A running worker always has its stdin; without it the write fails and the request is placed again.
            return (placement, Send(index: index, generation: state.machine.workers[index].generation,
                                    input: state.inputs[index], request: request))
        }
        switch placement {
        case .refused: request.complete(.failed(StanzaError(.cancel, .serviceUnavailable), reason: "shutting down"))
        case .send: if let send { perform([send]) }
        case .queued: break
        }
    }

    /// A request placed with a worker, to be written to its stdin outside the lock.
    struct Send {
        let index: Int
        let generation: Int
        let input: WorkerInput?
        let request: Request
    }

    /// Writes each request line to its worker's stdin, straight from the calling thread. A worker whose stdin was
    /// closed or broke in the meantime takes no more requests; its request is placed again.
    private func perform(_ sends: [Send]) {
        for send in sends where !(send.input?.send(send.request.line) ?? false) {
            let (closing, retry) = state.withLock { state -> (WorkerInput?, Request?) in
                guard state.machine.workers[send.index].generation == send.generation else { return (nil, nil) }
                let (close, retry) = state.machine.sendFailed(send.request.ref, worker: send.index)
                return (close ? state.takeInput(send.index) : nil, retry)
            }
            closing?.close()
            if let retry { enqueue(retry) }
        }
    }

    /// The sends for requests the machine gave worker `index`. Call with the lock held; `perform` them after it.
    private static func sends(_ requests: [Request], to index: Int, in state: State) -> [Send] {
        let generation = state.machine.workers[index].generation
        return requests.map { Send(index: index, generation: generation, input: state.inputs[index], request: $0) }
    }

    /// How often deadlines are checked: a request fails at most this long after its timeout. One sweep for
    /// the whole pool instead of a timer per request (arming and cancelling a dispatch timer per stanza woke the
    /// dispatch manager thread twice per request).
    static let deadlineSweep: Duration = .milliseconds(50)

    /// Requests whose deadline passed fail with remote-server-timeout; a worker holding one is restarted.
    private func expireDue(now: ContinuousClock.Instant) {
        let (due, stops) = state.withLock { state -> ([Request], [Stop]) in
            let (late, stopping) = state.machine.expire(now: now)
            return (late, stopping.map { state.takeStop($0.worker) })
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

    // MARK: Reader side

    enum AnswerResult { case ok, unknownRef(String), recycle }

    func deliver(_ answer: WorkerProtocol.Answer, from index: Int, settings: Settings) -> AnswerResult {
        let (outcome, sends, closing) = state.withLock {
            state -> (WorkerPoolStateMachine<Request>.Answer, [Send], WorkerInput?) in
            let outcome = state.machine.answered(answer.ref, worker: index, maxRequests: settings.maxRequests)
            guard case .deliver(_, let requests, let recycle) = outcome else { return (outcome, [], nil) }
            // Recycled: stdin closes now, the worker finishes what it has and exits. Otherwise the capacity freed
            // goes to the next queued request.
            return (outcome, Self.sends(requests, to: index, in: state), recycle ? state.takeInput(index) : nil)
        }
        switch outcome {
        case .ignored: return .ok
        case .unknownRef: return .unknownRef(answer.ref)
        case .deliver(let request, _, let recycle):
            // The next request goes out before this answer is turned into replies: the worker stays busy meanwhile.
            closing?.close()
            perform(sends)
            request.complete(.answered(answer.replies))
            return recycle ? .recycle : .ok
        }
    }

    // MARK: Supervision

    package func run() async throws {
        await withDiscardingTaskGroup { group in
            for index in 0..<settings.workers {
                group.addTask { await self.supervise(index) }
            }
            group.addTask { await self.sweepDeadlines() }
            // Until the service group shuts down gracefully, or `stop()`.
            for await _ in stopRequests.cancelOnGracefulShutdown() {}
            beginShutdown()
        }
        state.withLock { $0.machine.finished() }
        logger.notice("workers stopped")
    }

    /// Shuts this pool down alone (its route is gone after a reload), as a graceful shutdown would: queued
    /// stanzas fail with service-unavailable, in-flight ones finish within `kill_grace` after the workers' stdin
    /// closes (or fail), then the workers' groups are killed and `run()` returns.
    package func stop() {
        stopRequest.finish()
    }

    private func beginShutdown() {
        let (inputs, queued) = state.withLock { state -> ([WorkerInput], [Request]) in
            let (queued, closing) = state.machine.beginShutdown()
            return (closing.compactMap { state.takeInput($0) }, queued)
        }
        // Each worker's stdin is closed and it has kill_grace to finish (see WorkerProcess).
        for input in inputs { input.close() }
        for request in queued {
            request.complete(.failed(StanzaError(.cancel, .serviceUnavailable), reason: "shutting down"))
        }
    }

    var isShuttingDown: Bool { state.withLock { !$0.machine.isRunning } }

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
        let generation = state.withLock { $0.machine.starting(index) }
        var workerLogger = logger
        workerLogger[metadataKey: "worker"] = "\(index)"
        let log = workerLogger
        // stdin is our own pipe: requests are written to it by whoever places them (see `perform`).
        let input: WorkerInput
        do {
            input = try WorkerInput()
        } catch {
            log.error("worker could not be started", metadata: ["problem": "cannot create its stdin: \(error)"])
            _ = state.withLock { $0.machine.exited(index, generation: generation) }
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
        let (end, leftover) = state.withLock { state -> (WorkerPoolStateMachine<Request>.Ending, Stop) in
            (state.machine.exited(index, generation: generation), state.takeStop(index))
        }
        leftover.input?.close()
        let (failed, reason, planned) = (end.failed, end.reason, end.planned)
        let status = ending.status
        for request in failed {
            request.complete(.failed(StanzaError(.cancel, .internalServerError), reason: "worker ended (\(status))"))
        }
        if let garbage = ending.garbage { log.error("worker output rejected; restarting it", metadata: ["problem": "\(garbage)"]) }
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
        let (outcome, sends) = state.withLock { state -> (WorkerPoolStateMachine<Request>.StartOutcome, [Send]) in
            let (outcome, requests) = state.machine.started(index, generation: generation)
            guard outcome != .stop else { return (outcome, []) }
            state.killSwitches[index] = killSwitch
            guard outcome == .running else { return (outcome, []) }
            state.inputs[index] = input
            return (outcome, Self.sends(requests, to: index, in: state))
        }
        if outcome != .running { input.close() }
        perform(sends)
        return outcome == .stop
    }

    func stopWorker(_ index: Int, generation: Int, reason: String) {
        let stop = state.withLock { state -> Stop? in
            state.machine.stop(index, generation: generation, reason: reason) ? state.takeStop(index) : nil
        }
        stop?.perform()
    }

    /// stdout ended or the process exited: no more requests to this process.
    func finishSlot(_ index: Int, generation: Int) {
        let input = state.withLock { state -> WorkerInput? in
            state.machine.outputEnded(index, generation: generation) ? state.takeInput(index) : nil
        }
        input?.close()
    }
}
