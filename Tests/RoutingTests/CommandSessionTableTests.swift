import Testing
import XMPPCore

@testable import Routing

/// The ad-hoc command session table (SPEC §15) with time as an input.
@Suite struct CommandSessionTableTests {
    let t0 = ContinuousClock.now

    func opened(_ ids: [String] = ["s1"], limit: Int = 1000) -> CommandSessionTable {
        var table = CommandSessionTable()
        for id in ids {
            #expect(table.open(id: id, command: "command:remind", node: "remind", jid: "bot.example.org", owner: "a@example.org/r", limit: limit) == nil)
        }
        return table
    }

    @Test func aSessionRunsThenWaitsAndKeepsTheHandlersValue() throws {
        var table = opened()
        #expect(table.count == 1)
        // Running: a second step at the same time is refused.
        #expect(table.resume(id: "s1", node: "remind", jid: "bot.example.org", owner: "a@example.org/r", action: .execute, now: t0) == .failure(.busy))
        table.park(id: "s1", value: .object(["step": "ask"]), form: DataForm(fields: [.init(variable: "what", type: "text-single")]),
                   allowed: [.execute, .complete, .cancel], until: t0 + .seconds(600))
        let session = try table.resume(id: "s1", node: "remind", jid: "bot.example.org", owner: "a@example.org/r", action: .complete, now: t0 + .seconds(1)).get()
        #expect(session.value == .object(["step": "ask"]))
        #expect(session.form?.typesByVariable == ["what": "text-single"])
        #expect(table.sessions["s1"]?.state == .running)
    }

    @Test func onlyTheOwnerAtTheSameNodeAndJIDMayContinue() {
        var table = opened()
        table.park(id: "s1", value: nil, form: nil, allowed: [.execute, .cancel], until: t0 + .seconds(600))
        for (node, jid, owner) in [("other", "bot.example.org", "a@example.org/r"), ("remind", "x@bot.example.org", "a@example.org/r"),
                                   ("remind", "bot.example.org", "a@example.org/other"), ("remind", "bot.example.org", "m@example.org/r")] {
            #expect(table.resume(id: "s1", node: node, jid: jid, owner: owner, action: .execute, now: t0) == .failure(.unknownSession))
        }
        #expect(table.resume(id: "nope", node: "remind", jid: "bot.example.org", owner: "a@example.org/r", action: .execute, now: t0) == .failure(.unknownSession))
        #expect(table.close(id: "s1", owner: "m@example.org/r") == nil)
        #expect(table.count == 1)
    }

    @Test func anActionTheStepDidNotOfferIsRefusedAndTheSessionStaysAsItWas() {
        var table = opened()
        table.park(id: "s1", value: "v", form: nil, allowed: [.execute, .next, .cancel], until: t0 + .seconds(600))
        #expect(table.resume(id: "s1", node: "remind", jid: "bot.example.org", owner: "a@example.org/r", action: .prev, now: t0)
            == .failure(.actionNotOffered(allowed: [.execute, .next, .cancel])))
        #expect(table.sessions["s1"]?.state == .waiting(until: t0 + .seconds(600)))
    }

    @Test func theLimitCountsPerCommandAndFreesOnClose() {
        var table = opened(["a", "b"], limit: 2)
        #expect(table.open(id: "c", command: "command:remind", node: "remind", jid: "bot.example.org", owner: "x@example.org/r", limit: 2) == .limitReached(limit: 2))
        #expect(table.open(id: "d", command: "command:other", node: "other", jid: "bot.example.org", owner: "x@example.org/r", limit: 2) == nil)
        #expect(table.countsByCommand == ["command:remind": 2, "command:other": 1])
        #expect(table.close(id: "a")?.id == "a")
        #expect(table.open(id: "c", command: "command:remind", node: "remind", jid: "bot.example.org", owner: "x@example.org/r", limit: 2) == nil)
        #expect(table.count == 3)
    }

    @Test func waitingSessionsExpireAtTheirDeadlineRunningOnesNever() {
        var table = opened(["a", "b", "c"])
        table.park(id: "a", value: nil, form: nil, allowed: [.execute], until: t0 + .seconds(10))
        table.park(id: "b", value: nil, form: nil, allowed: [.execute], until: t0 + .seconds(5))
        #expect(table.nextDeadline == t0 + .seconds(5))
        #expect(table.expire(now: t0 + .seconds(4)).isEmpty)
        #expect(table.expire(now: t0 + .seconds(5)).map(\.id) == ["b"])
        #expect(table.nextDeadline == t0 + .seconds(10))
        #expect(table.expire(now: t0 + .seconds(3600)).map(\.id) == ["a"])
        // "c" is running (a step with the handler): it is not expired and sets no deadline.
        #expect(table.nextDeadline == nil)
        #expect(table.count == 1)
        #expect(table.countsByCommand == ["command:remind": 1])
    }

    @Test func aSessionPastItsDeadlineButNotYetSweptIsExpiredOnResume() {
        var table = opened()
        table.park(id: "s1", value: nil, form: nil, allowed: [.execute], until: t0 + .seconds(5))
        #expect(table.resume(id: "s1", node: "remind", jid: "bot.example.org", owner: "a@example.org/r", action: .execute, now: t0 + .seconds(5)) == .failure(.expired))
        #expect(table.count == 0)
        #expect(table.countsByCommand.isEmpty)
    }
}
