import Logging
import Testing
import XMPPCore

@testable import Routing

/// The expiry loop of CommandSessions: it sleeps until the table's next deadline and is woken early by a session
/// with an earlier one.
@Suite struct CommandSessionsTests {
    /// Waits (up to `limit`) until `condition` holds; false if it never did.
    func eventually(within limit: Duration = .seconds(5), _ condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition()
    }

    func open(_ sessions: CommandSessions, owner: String) throws -> String {
        try sessions.open(command: "command:c", node: "c", jid: "bot.example.org", owner: owner, limit: 10).get()
    }

    @Test func anEarlierDeadlineWakesTheLoopAndOnlyThatSessionExpires() async throws {
        let sessions = CommandSessions(logger: Logger(label: "test"))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await sessions.run() }
            let long = try open(sessions, owner: "a@example.org/r")
            sessions.park(id: long, value: nil, form: nil, allowed: [.execute], timeout: .seconds(60))
            // The loop now sleeps until the 60 s deadline; a 100 ms session must not wait for it.
            try await Task.sleep(for: .milliseconds(50))
            let short = try open(sessions, owner: "b@example.org/r")
            sessions.park(id: short, value: nil, form: nil, allowed: [.execute], timeout: .milliseconds(100))
            let started = ContinuousClock.now
            #expect(await eventually { sessions.session(id: short) == nil })
            #expect(ContinuousClock.now - started < .seconds(2))
            #expect(sessions.session(id: long) != nil)
            #expect(sessions.count == 1)
            group.cancelAll()
        }
    }
}
