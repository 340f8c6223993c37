import Testing
import XMPPCore

@testable import Rooms

/// SPEC §14's membership rules on a fake clock: every instant is `start` plus seconds; nothing sleeps.
@Suite struct RoomStateMachineTests {
    typealias Machine = RoomStateMachine
    let start = ContinuousClock.now

    func at(_ seconds: Double) -> ContinuousClock.Instant { start + .milliseconds(Int(seconds * 1000)) }

    func machine(selfPing: Int? = 300, rejoinDelay: Int = 5) -> Machine {
        Machine(settings: .init(nick: "bot", rejoinDelay: .seconds(rejoinDelay), selfPing: selfPing.map { .seconds($0) }, joinTimeout: .seconds(30)))
    }

    /// A machine joined as "bot" at `start`.
    func joined(selfPing: Int? = 300, rejoinDelay: Int = 5) -> Machine {
        var room = machine(selfPing: selfPing, rejoinDelay: rejoinDelay)
        _ = room.linkUp(at: start)
        _ = room.selfPresence(.available(nick: "bot"), at: start)
        return room
    }

    func kick(_ codes: [Int] = [110, 307]) -> Machine.SelfPresence {
        .unavailable(codes: codes, newNick: nil, destroyed: false, reason: nil)
    }

    @Test func joinsWhenTheLinkComesUpAndIsJoinedOnItsSelfPresence() {
        var room = machine()
        #expect(room.phase == .joining)
        #expect(room.nextDeadline == nil, "nothing happens before the link is up")
        #expect(room.linkUp(at: start) == [.join(nick: "bot")])
        #expect(room.phase == .joining)
        #expect(room.nextDeadline == at(30), "an unanswered join is retried")
        #expect(room.selfPresence(.available(nick: "bot"), at: at(1)) == [.report(.joined(nick: "bot"))])
        #expect(room.phase == .joined)
        #expect(room.isJoined)
        #expect(room.nextDeadline == at(301), "the first self-ping")
    }

    @Test func everyLinkUpJoinsAgain() {
        var room = joined()
        room.linkDown(at: at(10))
        #expect(room.phase == .rejoining)
        #expect(room.nextDeadline == nil)
        #expect(room.due(at: at(1000)) == [])
        #expect(room.linkUp(at: at(20)) == [.join(nick: "bot")])
        #expect(room.selfPresence(.available(nick: "bot"), at: at(21)) == [.report(.joined(nick: "bot"))])
    }

    @Test func aTakenNickIsTriedWithUnderscoresThreeTimesThenTheRoomFails() {
        var room = machine()
        _ = room.linkUp(at: start)
        #expect(room.selfPresence(.error(condition: "conflict"), at: at(1)) == [.report(.nickTaken(nick: "bot", next: "bot_")), .join(nick: "bot_")])
        #expect(room.nick == "bot_")
        #expect(room.selfPresence(.error(condition: "conflict"), at: at(2)) == [.report(.nickTaken(nick: "bot_", next: "bot__")), .join(nick: "bot__")])
        #expect(room.selfPresence(.error(condition: "conflict"), at: at(3)) == [
            .report(.nickExhausted(tried: ["bot", "bot_", "bot__"])), .report(.rejoinScheduled(after: .seconds(5))),
        ])
        #expect(room.phase == .failed)
        #expect(room.due(at: at(7.9)) == [])
        #expect(room.due(at: at(8)) == [.join(nick: "bot")], "after the backoff, from the configured nick again")
    }

    @Test func joinedAsTheSecondNick() {
        var room = machine()
        _ = room.linkUp(at: start)
        _ = room.selfPresence(.error(condition: "conflict"), at: at(1))
        #expect(room.selfPresence(.available(nick: "bot_"), at: at(2)) == [.report(.joined(nick: "bot_"))])
        #expect(room.nick == "bot_")
        #expect(room.failures == 0)
    }

    @Test(arguments: [[110, 307], [110, 332], [110, 321], [110, 322], [110], []])
    func removedFromTheRoomRejoinsAfterRejoinDelay(codes: [Int]) {
        var room = joined()
        let actions = room.selfPresence(kick(codes), at: at(10))
        #expect(actions == [.report(.removed(codes: codes)), .report(.rejoinScheduled(after: .seconds(5)))])
        #expect(room.phase == .rejoining)
        #expect(room.nextDeadline == at(15))
        #expect(room.due(at: at(14.9)) == [])
        #expect(room.due(at: at(15)) == [.join(nick: "bot")])
    }

    @Test func rejoinsBackOffExponentiallyUpToFiveMinutes() {
        var room = joined(rejoinDelay: 5)
        var now = 10.0
        _ = room.selfPresence(kick(), at: at(now))
        var delays: [Int64] = []
        for _ in 0..<9 {
            guard case .waiting(let until, _) = room.state else {
                Issue.record("not waiting: \(room.state)")
                return
            }
            delays.append((until - at(now)).components.seconds)
            now = Double((until - start).components.seconds)
            #expect(room.due(at: at(now)) == [.join(nick: "bot")])
            // The room refuses us again (e.g. it is full).
            _ = room.selfPresence(.error(condition: "service-unavailable"), at: at(now))
        }
        #expect(delays == [5, 10, 20, 40, 80, 160, 300, 300, 300])
        // Joined again: the backoff starts over.
        _ = room.due(at: at(now + 300))
        _ = room.selfPresence(.available(nick: "bot"), at: at(now + 301))
        #expect(room.failures == 0)
        #expect(room.selfPresence(kick(), at: at(now + 400)).contains(.report(.rejoinScheduled(after: .seconds(5)))))
    }

    @Test func bannedStaysOut() {
        var room = joined()
        #expect(room.selfPresence(kick([110, 301]), at: at(10)) == [.report(.banned)])
        #expect(room.phase == .banned)
        #expect(room.nextDeadline == nil)
        #expect(room.due(at: at(10_000)) == [])
        room.linkDown(at: at(20))
        #expect(room.linkUp(at: at(30)) == [], "not even after a reconnect")
        #expect(room.phase == .banned)
    }

    @Test func forbiddenOnJoinIsABan() {
        var room = machine()
        _ = room.linkUp(at: start)
        #expect(room.selfPresence(.error(condition: "forbidden"), at: at(1)) == [.report(.banned)])
        #expect(room.phase == .banned)
    }

    @Test func aDestroyedRoomIsRetriedWithTheCappedBackoff() {
        var room = joined()
        let actions = room.selfPresence(.unavailable(codes: [110], newNick: nil, destroyed: true, reason: "gone"), at: at(10))
        #expect(actions == [.report(.destroyed(reason: "gone")), .report(.rejoinScheduled(after: .seconds(5)))])
        #expect(room.due(at: at(15)) == [.join(nick: "bot")])
        // Not there yet: the join is refused (item-not-found) and retried later, each time longer.
        #expect(room.selfPresence(.error(condition: "item-not-found"), at: at(16)) == [
            .report(.joinRefused(condition: "item-not-found")), .report(.rejoinScheduled(after: .seconds(10))),
        ])
        #expect(room.phase == .rejoining)
    }

    @Test func aWrongPasswordFailsAndIsRetriedSlowly() {
        var room = machine()
        _ = room.linkUp(at: start)
        #expect(room.selfPresence(.error(condition: "not-authorized"), at: at(1)) == [
            .report(.joinRefused(condition: "not-authorized")), .report(.rejoinScheduled(after: .seconds(5))),
        ])
        #expect(room.phase == .failed)
    }

    @Test func anUnansweredJoinIsRetried() {
        var room = machine()
        _ = room.linkUp(at: start)
        #expect(room.due(at: at(29)) == [])
        #expect(room.due(at: at(30)) == [.report(.joinTimedOut), .report(.rejoinScheduled(after: .seconds(5)))])
        #expect(room.due(at: at(35)) == [.join(nick: "bot")])
    }

    @Test func selfPingsGoOutWhileJoinedAndAResultKeepsTheRoom() {
        var room = joined(selfPing: 60)
        #expect(room.due(at: at(59)) == [])
        #expect(room.due(at: at(60)) == [.selfPing(nick: "bot")])
        #expect(room.nextDeadline == nil, "one self-ping at a time; its timeout is the request's")
        #expect(room.due(at: at(61)) == [])
        #expect(room.selfPingAnswered(.result, at: at(61)) == [])
        #expect(room.nextDeadline == at(121))
    }

    @Test(arguments: ["service-unavailable", "feature-not-implemented", "remote-server-not-found", "remote-server-timeout"])
    func selfPingErrorsThatMeanStillJoined(condition: String) {
        var room = joined(selfPing: 60)
        _ = room.due(at: at(60))
        #expect(room.selfPingAnswered(.error(condition: condition), at: at(61)) == [])
        #expect(room.isJoined)
        #expect(room.nextDeadline == at(121))
    }

    @Test(arguments: ["not-acceptable", "item-not-found", "bad-request"])
    func selfPingErrorsThatMeanGoneRejoinAtOnce(condition: String) {
        var room = joined(selfPing: 60)
        _ = room.due(at: at(60))
        #expect(room.selfPingAnswered(.error(condition: condition), at: at(61)) == [
            .report(.selfPingFailed(condition: condition)), .join(nick: "bot"),
        ])
        #expect(room.phase == .joining)
    }

    @Test func anUnansweredSelfPingRejoins() {
        var room = joined(selfPing: 60)
        _ = room.due(at: at(60))
        #expect(room.selfPingAnswered(.timeout, at: at(90)) == [.report(.selfPingFailed(condition: "timeout")), .join(nick: "bot")])
    }

    @Test func aMessageRefusedAsFromANonOccupantRejoins() {
        var room = joined()
        #expect(room.refusedAsNonOccupant(at: at(5)) == [.report(.notAnOccupant), .join(nick: "bot")])
        #expect(room.refusedAsNonOccupant(at: at(6)) == [], "only while we think we are joined")
    }

    @Test func selfPingsOff() {
        var room = joined(selfPing: nil)
        #expect(room.nextDeadline == nil)
        var settings = room.settings
        settings.selfPing = .seconds(60)
        #expect(room.update(settings, at: at(10)) == [])
        #expect(room.nextDeadline == at(70), "turned on by a reload: the first self-ping is one interval away")
    }

    @Test func aStaleSelfPingAnswerIsIgnored() {
        var room = joined(selfPing: 60)
        #expect(room.selfPingAnswered(.timeout, at: at(10)) == [], "no ping is out")
    }

    @Test func leavingSendsUnavailableOnceAndNothingAfter() {
        var room = joined()
        #expect(room.leave() == [.leave(nick: "bot")])
        #expect(room.phase == .left)
        #expect(room.linkUp(at: at(10)) == [])
        #expect(room.selfPresence(.available(nick: "bot"), at: at(11)) == [])
        #expect(room.nextDeadline == nil)
    }

    @Test func aNewNickIsAskedForWhileJoined() {
        var room = joined()
        var settings = room.settings
        settings.nick = "robot"
        #expect(room.update(settings, at: at(4)) == [.changeNick(to: "robot")])
        // The room answers with 303 then our new self-presence.
        #expect(room.selfPresence(.unavailable(codes: [110, 303], newNick: "robot", destroyed: false, reason: nil), at: at(5)) == [])
        #expect(room.isJoined)
        #expect(room.selfPresence(.available(nick: "robot"), at: at(5)) == [])
        #expect(room.nick == "robot")
        // Later joins use it.
        room.linkDown(at: at(6))
        #expect(room.linkUp(at: at(7)) == [.join(nick: "robot")])
    }

    @Test func aWaitingRejoinKeepsItsTimeOverALinkDrop() {
        var room = joined()
        _ = room.selfPresence(kick(), at: at(10))
        room.linkDown(at: at(11))
        #expect(room.nextDeadline == nil)
        #expect(room.linkUp(at: at(12)) == [], "still within rejoin_delay")
        #expect(room.due(at: at(15)) == [.join(nick: "bot")])
    }
}

@Suite struct MUCStanzaTests {
    @Test func readsSelfPresenceWithStatusCodes() throws {
        let xml = """
            <presence xmlns='jabber:client' from='ops@conference.example.test/bot' type='unavailable'>\
            <x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='none'><reason>spam</reason></item>\
            <status code='307'/><status code='110'/></x></presence>
            """
        let presence = try #require(OccupantPresence(try stanza(xml)))
        #expect(presence.nick == "bot")
        #expect(presence.unavailable)
        #expect(presence.codes == [307, 110])
        #expect(presence.isSelf)
        #expect(presence.reason == "spam")
        #expect(!presence.destroyed)
    }

    @Test func readsDestroy() throws {
        let xml = """
            <presence xmlns='jabber:client' from='ops@conference.example.test/bot' type='unavailable'>\
            <x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='none'/>\
            <destroy><reason>moved</reason></destroy></x></presence>
            """
        let presence = try #require(OccupantPresence(try stanza(xml)))
        #expect(presence.destroyed)
        #expect(presence.reason == "moved")
    }

    @Test func readsAJoinError() throws {
        let xml = """
            <presence xmlns='jabber:client' from='ops@conference.example.test/bot' type='error'>\
            <error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>
            """
        #expect(try #require(OccupantPresence(try stanza(xml))).errorCondition == "conflict")
    }

    @Test func theJoinPresenceAsksForHistoryAndGivesThePassword() throws {
        let join = MUCStanza.join(room: "ops@conference.example.test", nick: "bot", from: "bot.example.test", password: "pw", history: 0)
        let xml = try join.serialized()
        #expect(join.to == "ops@conference.example.test/bot")
        #expect(xml.contains("<x xmlns=\"http://jabber.org/protocol/muc\"><history maxstanzas=\"0\"/><password>pw</password></x>"), "\(xml)")
    }

    @Test func historyAndSubjects() throws {
        let history = try stanza("""
            <message xmlns='jabber:client' type='groupchat' from='ops@conference.example.test/alice'><body>old</body>\
            <delay xmlns='urn:xmpp:delay' from='ops@conference.example.test' stamp='2026-01-01T00:00:00Z'/></message>
            """)
        #expect(MUCStanza.isHistory(history, room: "ops@conference.example.test"))
        let live = try stanza("<message xmlns='jabber:client' type='groupchat' from='ops@conference.example.test/alice'><body>new</body></message>")
        #expect(!MUCStanza.isHistory(live, room: "ops@conference.example.test"))
        // A live message the sender's own server delayed (offline queue) is not the room's history.
        let delayedBySender = try stanza("""
            <message xmlns='jabber:client' type='groupchat' from='ops@conference.example.test/alice'><body>late</body>\
            <delay xmlns='urn:xmpp:delay' from='example.test' stamp='2026-01-01T00:00:00Z'/></message>
            """)
        #expect(!MUCStanza.isHistory(delayedBySender, room: "ops@conference.example.test"))
        let subject = try stanza("<message xmlns='jabber:client' type='groupchat' from='ops@conference.example.test/alice'><subject>topic</subject></message>")
        #expect(MUCStanza.isSubjectChange(subject))
        #expect(!MUCStanza.isSubjectChange(live))
    }

    @Test func invites() throws {
        let direct = try stanza("<message xmlns='jabber:client' from='alice@example.test/x' to='bot.example.test'><x xmlns='jabber:x:conference' jid='Ops@conference.example.test' password='pw'/></message>")
        let parsed = try #require(MUCStanza.invite(direct))
        #expect(parsed.room == "Ops@conference.example.test")
        #expect(parsed.inviter == "alice@example.test")
        #expect(parsed.password == "pw")
        let mediated = try stanza("<message xmlns='jabber:client' from='ops@conference.example.test' to='bot.example.test'><x xmlns='http://jabber.org/protocol/muc#user'><invite from='alice@example.test/x'/></x></message>")
        let viaRoom = try #require(MUCStanza.invite(mediated))
        #expect(viaRoom.room == "ops@conference.example.test")
        #expect(viaRoom.inviter == "alice@example.test")
        // Prosody adds a XEP-0249 element, from the room, to the invite it forwards: the inviter is still alice.
        let both = try stanza("<message xmlns='jabber:client' from='ops@conference.example.test' to='bot.example.test'><x xmlns='http://jabber.org/protocol/muc#user'><invite from='alice@example.test/x'/></x><x xmlns='jabber:x:conference' jid='ops@conference.example.test'/></message>")
        #expect(try #require(MUCStanza.invite(both)).inviter == "alice@example.test")
    }

    func stanza(_ xml: String) throws -> Stanza {
        let elements = try XMLStreamParser.parseFragment(Array(xml.utf8), limits: XMLLimits(maxStanzaBytes: 100_000), maxElements: 1)
        return try #require(elements.first.flatMap(Stanza.init))
    }
}
