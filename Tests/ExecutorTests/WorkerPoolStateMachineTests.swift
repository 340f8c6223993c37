// The worker pool's bookkeeping without processes: placement, answers, recycling, timeouts, crashes, reload
// and shutdown as transitions of WorkerPoolStateMachine. Time is an input (`expire(now:)`).

import Testing

@testable import Executor

private struct Job: WorkerRequest, Equatable {
    let ref: String
    let deadline: ContinuousClock.Instant
}

private typealias Machine = WorkerPoolStateMachine<Job>

private let start = ContinuousClock.now

private func job(_ ref: String, timeout: Duration = .seconds(10)) -> Job {
    Job(ref: ref, deadline: start + timeout)
}

/// A worker's state in a word (and its drain reason), for comparisons.
private func phase(_ state: Machine.WorkerState) -> String {
    switch state {
    case .idle: "idle"
    case .starting: "starting"
    case .running: "running"
    case .draining(_, let why): "draining(\(why))"
    case .stopping(_, let reason): "stopping(\(reason))"
    }
}

private func inFlight(_ state: Machine.WorkerState) -> Set<String> {
    switch state {
    case .running(let process), .draining(let process, _), .stopping(let process, _): Set(process.inFlight.keys)
    case .idle, .starting: []
    }
}

/// The generation of each worker's first process.
private let first = 1

/// A pool whose workers have all started (their first processes).
private func runningPool(workers: Int, inFlight: Int) -> Machine {
    var machine = Machine(workers: workers, inFlight: inFlight)
    for index in 0..<workers {
        let generation = machine.starting(index)
        #expect(generation == first)
        #expect(machine.started(index, generation: generation).start == .running)
    }
    return machine
}

@Suite struct WorkerPoolStateMachineTests {
    @Test func requestsGoToTheFirstWorkerWithRoomThenWaitInTheQueue() {
        var machine = runningPool(workers: 2, inFlight: 1)
        #expect(machine.submit(job("r1")) == .send(worker: 0))
        #expect(machine.submit(job("r2")) == .send(worker: 1))
        #expect(machine.submit(job("r3")) == .queued)
        #expect(machine.queue.map(\.ref) == ["r3"])
    }

    @Test func requestsWaitUntilAWorkerHasStartedAndItTakesUpToInFlight() {
        var machine = Machine(workers: 1, inFlight: 2)
        let generation = machine.starting(0)
        for ref in ["r1", "r2", "r3"] { #expect(machine.submit(job(ref)) == .queued) }
        #expect(phase(machine.workers[0]) == "starting")
        let (outcome, sends) = machine.started(0, generation: generation)
        #expect(outcome == .running)
        #expect(sends.map(\.ref) == ["r1", "r2"])
        #expect(machine.queue.map(\.ref) == ["r3"])
    }

    @Test func anAnswerFreesRoomForTheNextQueuedRequest() {
        var machine = runningPool(workers: 1, inFlight: 1)
        _ = machine.submit(job("r1"))
        _ = machine.submit(job("r2"))
        guard case .deliver(let request, let sends, let recycle) = machine.answered("r1", worker: 0, maxRequests: 0) else {
            Issue.record("r1 was in flight")
            return
        }
        #expect(request.ref == "r1")
        #expect(sends.map(\.ref) == ["r2"])
        #expect(!recycle)
        #expect(inFlight(machine.workers[0]) == ["r2"])
    }

    @Test func anUnknownRefIsGarbageButALateAnswerToATimedOutRequestIsIgnored() {
        var machine = runningPool(workers: 1, inFlight: 2)
        _ = machine.submit(job("r1", timeout: .seconds(1)))
        guard case .unknownRef = machine.answered("r9", worker: 0, maxRequests: 0) else {
            Issue.record("r9 was never sent")
            return
        }
        #expect(phase(machine.workers[0]) == "running", "an unknown ref leaves the worker as it was")
        #expect(inFlight(machine.workers[0]) == ["r1"])
        let (late, stops) = machine.expire(now: start + .seconds(2))
        #expect(late.map(\.ref) == ["r1"])
        #expect(stops.map(\.worker) == [0])
        guard case .ignored = machine.answered("r1", worker: 0, maxRequests: 0) else {
            Issue.record("a late answer to a timed-out request is not garbage")
            return
        }
    }

    @Test func aTimeoutStopsTheWorkerAndItsOtherRequestsFailWhenItExits() {
        var machine = runningPool(workers: 1, inFlight: 2)
        _ = machine.submit(job("r1", timeout: .seconds(1)))
        _ = machine.submit(job("r2", timeout: .seconds(5)))
        #expect(machine.expire(now: start + .milliseconds(500)).late.isEmpty, "nothing is late before its deadline")
        let (late, stops) = machine.expire(now: start + .seconds(2))
        #expect(late.map(\.ref) == ["r1"])
        #expect(stops.map(\.ref) == ["r1"])
        #expect(phase(machine.workers[0]) == "stopping(request r1 timed out)")
        #expect(machine.submit(job("r3")) == .queued, "a stopping worker takes no requests")
        let ending = machine.exited(0, generation: first)
        #expect(ending.failed.map(\.ref) == ["r2"])
        #expect(!ending.planned)
        #expect(ending.reason == "request r1 timed out")
        #expect(phase(machine.workers[0]) == "idle")
    }

    @Test func aCrashFailsTheRequestsInFlightAndIsNotPlanned() {
        var machine = runningPool(workers: 1, inFlight: 2)
        _ = machine.submit(job("r1"))
        let ending = machine.exited(0, generation: first)
        #expect(ending.failed.map(\.ref) == ["r1"])
        #expect(!ending.planned)
        #expect(ending.reason == nil)
        #expect(machine.starting(0) == first + 1, "the restart is a new generation")
    }

    @Test func maxRequestsRecyclesTheWorkerAsPlanned() {
        var machine = runningPool(workers: 1, inFlight: 2)
        _ = machine.submit(job("r1"))
        _ = machine.submit(job("r2"))
        guard case .deliver(_, let sends, let recycle) = machine.answered("r1", worker: 0, maxRequests: 1) else {
            Issue.record("r1 was in flight")
            return
        }
        #expect(recycle, "its stdin closes")
        #expect(sends.isEmpty)
        #expect(phase(machine.workers[0]) == "draining(recycled)")
        #expect(machine.submit(job("r3")) == .queued, "a draining worker takes no requests")
        guard case .deliver = machine.answered("r2", worker: 0, maxRequests: 1) else {
            Issue.record("a draining worker's answers are delivered")
            return
        }
        #expect(machine.outputEnded(0, generation: first) == false, "stdin is closed already")
        let ending = machine.exited(0, generation: first)
        #expect(ending.planned)
        #expect(ending.failed.isEmpty)
    }

    @Test func stdoutEndingDrainsTheWorkerButItsEndIsACrash() {
        var machine = runningPool(workers: 1, inFlight: 1)
        let drained = machine.outputEnded(0, generation: first)
        #expect(drained)
        #expect(phase(machine.workers[0]) == "draining(outputEnded)")
        #expect(!machine.exited(0, generation: first).planned)
    }

    @Test func aFailedWriteDrainsTheWorkerAndPlacesTheRequestAgain() {
        var machine = runningPool(workers: 2, inFlight: 1)
        _ = machine.submit(job("r1"))
        let (close, retry) = machine.sendFailed("r1", worker: 0)
        #expect(close)
        #expect(retry?.ref == "r1")
        #expect(phase(machine.workers[0]) == "draining(outputEnded)")
        #expect(machine.submit(job("r1")) == .send(worker: 1))
        #expect(!machine.exited(0, generation: first).planned)
    }

    @Test func reloadRecyclesRunningWorkersAndOneThatIsStillStarting() {
        var machine = Machine(workers: 2, inFlight: 1)
        #expect(machine.starting(0) == first)
        #expect(machine.started(0, generation: first).start == .running)
        let second = machine.starting(1)
        _ = machine.submit(job("r1"))
        #expect(machine.reload() == [0], "the running worker's stdin closes")
        #expect(phase(machine.workers[0]) == "draining(reloaded)")
        #expect(machine.submit(job("r2")) == .queued, "queued stanzas wait for the new workers")
        #expect(machine.started(1, generation: second).start == .draining, "started after the reload: replaced too")
        guard case .deliver = machine.answered("r1", worker: 0, maxRequests: 0) else {
            Issue.record("the old worker finishes what it has")
            return
        }
        #expect(machine.exited(0, generation: first).planned)
        #expect(machine.exited(1, generation: second).planned)
        #expect(machine.queue.map(\.ref) == ["r2"])
    }

    @Test func shutdownRefusesNewAndQueuedRequestsAndDrainsTheWorkers() {
        var machine = runningPool(workers: 1, inFlight: 1)
        _ = machine.submit(job("r1"))
        _ = machine.submit(job("r2"))
        let (queued, closing) = machine.beginShutdown()
        #expect(queued.map(\.ref) == ["r2"])
        #expect(closing == [0])
        #expect(machine.pool == .stopping)
        #expect(machine.submit(job("r3")) == .refused)
        #expect(phase(machine.workers[0]) == "draining(shutdown)")
        // The grace elapses: the worker is killed; at shutdown that is planned.
        let killed = machine.stop(0, generation: first, reason: "shutdown grace elapsed")
        #expect(killed)
        let ending = machine.exited(0, generation: first)
        #expect(ending.planned)
        #expect(ending.failed.map(\.ref) == ["r1"])
        machine.finished()
        #expect(machine.pool == .stopped)
    }

    @Test func aWorkerStartedDuringShutdownTakesNoRequests() {
        var machine = Machine(workers: 1, inFlight: 1)
        let generation = machine.starting(0)
        _ = machine.beginShutdown()
        #expect(machine.started(0, generation: generation).start == .draining)
    }

    @Test func aStopWhileStartingKillsTheWorkerAsSoonAsItRuns() {
        var machine = Machine(workers: 1, inFlight: 1)
        let generation = machine.starting(0)
        let killed = machine.stop(0, generation: generation, reason: "garbage")
        #expect(!killed, "nothing to kill yet")
        let (outcome, sends) = machine.started(0, generation: generation)
        #expect(outcome == .stop)
        #expect(sends.isEmpty)
        #expect(machine.exited(0, generation: generation).reason == "garbage")
    }

    @Test func eventsAboutAnEarlierProcessOfTheWorkerAreIgnored() {
        var machine = runningPool(workers: 1, inFlight: 1)
        _ = machine.exited(0, generation: first)
        let next = machine.starting(0)
        #expect(machine.started(0, generation: next).start == .running)
        let killed = machine.stop(0, generation: first, reason: "late")
        #expect(!killed)
        let drained = machine.outputEnded(0, generation: first)
        #expect(!drained)
        #expect(machine.exited(0, generation: first).failed.isEmpty)
        #expect(phase(machine.workers[0]) == "running")
    }
}
