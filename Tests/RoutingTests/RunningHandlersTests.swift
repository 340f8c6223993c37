import Testing

@testable import Routing

/// The router's drain at shutdown: woken by the last handler to finish, not by polling.
@Suite(.timeLimit(.minutes(1))) struct RunningHandlersTests {
    /// A deadline no test reaches: a drain that returns did so because it was woken.
    let never = ContinuousClock.now + .seconds(3600)

    @Test func withNoHandlerRunningTheDrainIsDoneAtOnce() async {
        let running = RunningHandlers()
        #expect(await running.drained(by: never))
    }

    @Test func theLastHandlerToFinishEndsTheDrain() async {
        let running = RunningHandlers()
        running.enter()
        running.enter()
        // A child task: the suite's time limit cancels it, so a drain nobody wakes fails instead of hanging.
        async let drain = running.drained(by: never)
        while running.waiting == 0 { await Task.yield() }  // the drain waits before the handlers finish
        running.leave()
        #expect(running.count == 1)
        running.leave()
        #expect(await drain, "woken by the second leave; the deadline is an hour away")
    }

    @Test func aHandlerStillRunningAtTheDeadlineEndsTheDrainUndrained() async {
        let running = RunningHandlers()
        running.enter()
        #expect(await running.drained(by: .now) == false)
        #expect(running.count == 1)
        running.leave()
        #expect(await running.drained(by: .now))
    }

    @Test func aCancelledDrainReturnsWithoutWaitingForTheDeadline() async {
        let running = RunningHandlers()
        running.enter()
        let drain = Task { await running.drained(by: never) }
        drain.cancel()
        #expect(await drain.value == false)
        running.leave()
    }

    @Test func aDrainStartedWhileHandlersComeAndGoSeesTheEnd() async {
        let running = RunningHandlers()
        for _ in 0..<100 { running.enter() }
        async let drain = running.drained(by: never)
        while running.waiting == 0 { await Task.yield() }
        await withDiscardingTaskGroup { group in
            for _ in 0..<100 { group.addTask { running.leave() } }
        }
        #expect(await drain)
    }
}
