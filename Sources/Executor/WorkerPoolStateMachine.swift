// The bookkeeping of a worker pool (SPEC §5.4) without processes, pipes or clocks: which worker takes which
// request, what each worker's process is doing, which requests are late. Every event returns what the shell
// (WorkerPool) must do: write a request, close a worker's stdin, pull its kill switch, settle a request.

/// What the state machine needs of a request; the rest (its line, its completion) is the shell's.
protocol WorkerRequest {
    var ref: String { get }
    var deadline: ContinuousClock.Instant { get }
}

struct WorkerPoolStateMachine<Request: WorkerRequest> {
    enum PoolState: Equatable {
        /// Takes requests.
        case running
        /// Shutting down: refuses requests, workers drain then are killed after kill_grace.
        case stopping
        /// Every worker has ended.
        case stopped
    }

    /// Why a worker takes no more requests while it finishes the ones it has.
    enum Drain: Equatable {
        /// It reached max_requests.
        case recycled
        /// Settings were reloaded: it is replaced by a worker with the new ones.
        case reloaded
        case shutdown
        /// Its stdout ended or its stdin broke: it is going.
        case outputEnded
    }

    /// One process of a worker.
    struct Process {
        let generation: Int
        var served = 0
        var inFlight: [String: Request] = [:]
    }

    enum WorkerState {
        /// No process: before the first start, or between an exit and the restart.
        case idle(lastGeneration: Int)
        /// Being spawned; takes requests once started. `drain` is set when it must not take any (a reload or the
        /// shutdown came meanwhile); `stop` when it must be killed as soon as it runs.
        case starting(generation: Int, drain: Drain?, stop: String?)
        /// Takes requests, up to in_flight.
        case running(Process)
        /// Takes no new requests, finishes those it has, then exits (its stdin is closed).
        case draining(Process, Drain)
        /// Being killed (a request timed out, garbage, shutdown grace elapsed): a crash unless at shutdown.
        case stopping(Process, reason: String)

        var generation: Int {
            switch self {
            case .idle(let generation): generation
            case .starting(let generation, _, _): generation
            case .running(let process), .draining(let process, _), .stopping(let process, _): process.generation
            }
        }
    }

    /// in_flight (reloadable).
    var inFlightLimit: Int
    private(set) var pool: PoolState = .running
    private(set) var workers: [WorkerState]
    private(set) var queue: [Request] = []
    /// Refs whose requests timed out; a late answer to one is ignored rather than treated as garbage.
    private var expired: Set<String> = []

    init(workers: Int, inFlight: Int) {
        self.workers = Array(repeating: .idle(lastGeneration: 0), count: max(1, workers))
        self.inFlightLimit = max(1, inFlight)
    }

    // MARK: Requests

    enum Placement: Equatable {
        case refused
        case queued
        /// Write it to this worker's stdin.
        case send(worker: Int)
    }

    /// A new request: to the first running worker with room, else to the queue; refused while stopping.
    mutating func submit(_ request: Request) -> Placement {
        guard pool == .running else { return .refused }
        for index in workers.indices {
            guard case .running(var process) = workers[index], process.inFlight.count < inFlightLimit else { continue }
            workers[index] = .idle(lastGeneration: process.generation)  // the table is now referenced once: no copy
            process.inFlight[request.ref] = request
            workers[index] = .running(process)
            return .send(worker: index)
        }
        queue.append(request)
        return .queued
    }

    /// Writing `ref` to `worker` failed (its stdin is closed or broken): the worker takes no more requests and the
    /// request is placed again. Returns whether the worker's stdin must be closed, and the request to place again.
    mutating func sendFailed(_ ref: String, worker index: Int) -> (closeInput: Bool, retry: Request?) {
        switch workers[index] {
        case .running(var process):
            let request = process.inFlight.removeValue(forKey: ref)
            workers[index] = .draining(process, .outputEnded)
            return (true, request)
        case .draining(var process, let why):
            let request = process.inFlight.removeValue(forKey: ref)
            workers[index] = .draining(process, why)
            return (false, request)
        case .stopping(var process, let reason):
            let request = process.inFlight.removeValue(forKey: ref)
            workers[index] = .stopping(process, reason: reason)
            return (false, request)
        case .idle, .starting:
            return (false, nil)
        }
    }

    /// Moves queued requests to `worker` while it has room; the shell writes them.
    private mutating func fill(_ index: Int) -> [Request] {
        guard pool == .running, case .running(var process) = workers[index] else { return [] }
        workers[index] = .idle(lastGeneration: process.generation)  // the table is now referenced once: no copy
        var sends: [Request] = []
        while process.inFlight.count < inFlightLimit, !queue.isEmpty {
            let request = queue.removeFirst()
            process.inFlight[request.ref] = request
            sends.append(request)
        }
        workers[index] = .running(process)
        return sends
    }

    enum Answer {
        /// Settle the request; write `sends` to the same worker; close its stdin when `recycle` (max_requests).
        case deliver(Request, sends: [Request], recycle: Bool)
        /// A late answer to a request that already timed out.
        case ignored
        /// Garbage: the worker must be stopped.
        case unknownRef
    }

    /// `worker` answered `ref`.
    mutating func answered(_ ref: String, worker index: Int, maxRequests: Int) -> Answer {
        var process: Process
        let rebuild: (Process) -> WorkerState
        switch workers[index] {
        case .running(let current):
            process = current
            rebuild = { .running($0) }
        case .draining(let current, let why):
            process = current
            rebuild = { .draining($0, why) }
        case .stopping(let current, let reason):
            process = current
            rebuild = { .stopping($0, reason: reason) }
        case .idle, .starting:
            return expired.remove(ref) != nil ? .ignored : .unknownRef
        }
        let wasRunning = if case .running = workers[index] { true } else { false }
        // With the slot cleared the table is referenced once, and taking the request out does not copy it.
        workers[index] = .idle(lastGeneration: process.generation)
        guard let request = process.inFlight.removeValue(forKey: ref) else {
            workers[index] = rebuild(process)
            return expired.remove(ref) != nil ? .ignored : .unknownRef
        }
        process.served += 1
        if wasRunning, maxRequests > 0, process.served >= maxRequests {
            workers[index] = .draining(process, .recycled)
            return .deliver(request, sends: [], recycle: true)
        }
        workers[index] = rebuild(process)
        return .deliver(request, sends: fill(index), recycle: false)
    }

    /// Requests whose deadline passed: they fail with remote-server-timeout, and each worker that held one is
    /// stopped (returned with the ref that was late).
    mutating func expire(now: ContinuousClock.Instant) -> (late: [Request], stop: [(worker: Int, ref: String)]) {
        var late = queue.filter { $0.deadline <= now }
        if !late.isEmpty { queue.removeAll { $0.deadline <= now } }
        var stops: [(worker: Int, ref: String)] = []
        for index in workers.indices {
            guard var process = Self.process(of: workers[index]) else { continue }
            let due = process.inFlight.values.filter { $0.deadline <= now }.sorted { $0.deadline < $1.deadline }
            guard let first = due.first else { continue }
            for request in due {
                process.inFlight.removeValue(forKey: request.ref)
                expired.insert(request.ref)
            }
            late += due
            workers[index] = Self.replacing(process, in: workers[index])
            if stop(index, generation: process.generation, reason: "request \(first.ref) timed out") {
                stops.append((index, first.ref))
            }
        }
        return (late, stops)
    }

    // MARK: Processes

    /// The supervisor starts a process for `worker`; returns its generation.
    mutating func starting(_ index: Int) -> Int {
        let generation = workers[index].generation + 1
        workers[index] = .starting(generation: generation, drain: pool == .running ? nil : .shutdown, stop: nil)
        return generation
    }

    /// The process of `generation` runs. Returns the queued requests it takes, or what to do with it instead.
    mutating func started(_ index: Int, generation: Int) -> (start: StartOutcome, sends: [Request]) {
        guard case .starting(generation, let drain, let stop) = workers[index] else { return (.stop, []) }
        let process = Process(generation: generation)
        if let stop {
            workers[index] = .stopping(process, reason: stop)
            return (.stop, [])
        }
        if let drain {
            workers[index] = .draining(process, drain)
            return (.draining, [])
        }
        workers[index] = .running(process)
        return (.running, fill(index))
    }

    enum StartOutcome: Equatable { case running, draining, stop }

    /// Stops `worker`'s process of `generation` (a problem with it); returns whether the kill switch must be pulled
    /// and its stdin closed (false when that process is gone or already stopping).
    @discardableResult
    mutating func stop(_ index: Int, generation: Int, reason: String) -> Bool {
        guard workers[index].generation == generation else { return false }
        switch workers[index] {
        case .running(let process):
            workers[index] = .stopping(process, reason: reason)
            return true
        case .draining(let process, _):
            workers[index] = .stopping(process, reason: reason)
            return true
        case .starting(let generation, let drain, nil):
            workers[index] = .starting(generation: generation, drain: drain, stop: reason)
            return false
        case .starting, .stopping, .idle:
            return false
        }
    }

    /// The worker's stdout ended: it takes no more requests. Returns whether its stdin must be closed.
    mutating func outputEnded(_ index: Int, generation: Int) -> Bool {
        guard workers[index].generation == generation, case .running(let process) = workers[index] else { return false }
        workers[index] = .draining(process, .outputEnded)
        return true
    }

    struct Ending {
        /// In-flight requests: they fail with internal-server-error.
        var failed: [Request]
        /// A recycle, a reload or the shutdown, not a crash.
        var planned: Bool
        /// Why it was stopped, if it was.
        var reason: String?
    }

    /// The process of `generation` has exited.
    mutating func exited(_ index: Int, generation: Int) -> Ending {
        let state = workers[index]
        guard state.generation == generation else { return Ending(failed: [], planned: false, reason: nil) }
        workers[index] = .idle(lastGeneration: generation)
        let shuttingDown = pool != .running
        switch state {
        case .running(let process):
            return Ending(failed: Array(process.inFlight.values), planned: shuttingDown, reason: nil)
        case .draining(let process, let why):
            return Ending(failed: Array(process.inFlight.values), planned: why != .outputEnded || shuttingDown, reason: nil)
        case .stopping(let process, let reason):
            return Ending(failed: Array(process.inFlight.values), planned: shuttingDown, reason: reason)
        case .starting(_, _, let stop):
            return Ending(failed: [], planned: shuttingDown, reason: stop)
        case .idle:
            return Ending(failed: [], planned: shuttingDown, reason: nil)
        }
    }

    // MARK: Pool

    /// New settings: every worker is recycled. Returns the workers whose stdin must be closed.
    mutating func reload() -> [Int] {
        var closing: [Int] = []
        for index in workers.indices {
            switch workers[index] {
            case .running(let process):
                workers[index] = .draining(process, .reloaded)
                closing.append(index)
            case .draining(let process, .outputEnded):
                workers[index] = .draining(process, .reloaded)
            case .starting(let generation, nil, let stop):
                workers[index] = .starting(generation: generation, drain: .reloaded, stop: stop)
            default:
                break
            }
        }
        return closing
    }

    /// Shutdown: queued requests are refused, every worker drains (its stdin closes). Returns the queued requests
    /// and the workers whose stdin must be closed.
    mutating func beginShutdown() -> (queued: [Request], closing: [Int]) {
        guard pool == .running else { return ([], []) }
        pool = .stopping
        let queued = queue
        queue = []
        var closing: [Int] = []
        for index in workers.indices {
            switch workers[index] {
            case .running(let process):
                workers[index] = .draining(process, .shutdown)
                closing.append(index)
            case .starting(let generation, _, let stop):
                workers[index] = .starting(generation: generation, drain: .shutdown, stop: stop)
            default:
                break
            }
        }
        return (queued, closing)
    }

    /// Every supervisor has returned.
    mutating func finished() {
        pool = .stopped
    }

    var isRunning: Bool { pool == .running }

    private static func process(of state: WorkerState) -> Process? {
        switch state {
        case .running(let process), .draining(let process, _), .stopping(let process, _): process
        case .idle, .starting: nil
        }
    }

    private static func replacing(_ process: Process, in state: WorkerState) -> WorkerState {
        switch state {
        case .running: .running(process)
        case .draining(_, let why): .draining(process, why)
        case .stopping(_, let reason): .stopping(process, reason: reason)
        case .idle, .starting: state
        }
    }
}
