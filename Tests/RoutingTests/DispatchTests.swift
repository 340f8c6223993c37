import Foundation
import Logging
import Synchronization
import Testing
import XMPPCore

@testable import Routing

private func stanza(_ xml: String) throws -> Stanza {
    try #require(Stanza(try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)[0]))
}

@Suite struct RouteRuleTests {
    @Test func kindsTypesAndAddresses() throws {
        let rule = RouteRule(
            kinds: [.message], types: ["chat"], to: [JIDPattern("echo@bot.example.org")], from: [JIDPattern("*@example.org")])
        #expect(rule.matches(try stanza("<message type='chat' from='a@example.org/r' to='echo@bot.example.org'><body>x</body></message>")))
        #expect(!rule.matches(try stanza("<message type='groupchat' from='a@example.org/r' to='echo@bot.example.org'><body>x</body></message>")))
        #expect(!rule.matches(try stanza("<message type='chat' from='a@evil.org/r' to='echo@bot.example.org'><body>x</body></message>")))
        #expect(!rule.matches(try stanza("<message type='chat' from='a@example.org/r' to='other@bot.example.org'><body>x</body></message>")))
        #expect(!rule.matches(try stanza("<presence from='a@example.org/r' to='echo@bot.example.org'/>")))
    }

    @Test func implicitTypes() throws {
        let presence = RouteRule(kinds: [.presence], types: ["available"])
        #expect(presence.matches(try stanza("<presence from='a@example.org/r' to='bot.example.org'/>")))
        #expect(!presence.matches(try stanza("<presence type='unavailable' from='a@example.org/r' to='bot.example.org'/>")))
        let normal = RouteRule(kinds: [.message], types: ["normal"])
        #expect(normal.matches(try stanza("<message from='a@example.org/r' to='bot.example.org'><body>x</body></message>")))
    }

    @Test func bodyRegexAndTextRoutesNeedABody() throws {
        let rule = RouteRule(kinds: [.message, .iq], body: try BodyPattern("^!"), requiresBody: true)
        #expect(rule.matches(try stanza("<message from='a@example.org/r' to='bot.example.org'><body>!help</body></message>")))
        #expect(!rule.matches(try stanza("<message from='a@example.org/r' to='bot.example.org'><body>help</body></message>")))
        #expect(!rule.matches(try stanza("<message from='a@example.org/r' to='bot.example.org'><subject>x</subject></message>")))
        #expect(!rule.matches(try stanza("<iq type='get' id='1' from='a@example.org/r' to='bot.example.org'><ping xmlns='urn:xmpp:ping'/></iq>")))
    }
}

@Suite struct ReplyStamperTests {
    let stamper = ReplyStamper(domain: "bot.example.org", maxStanzaBytes: 2000)

    @Test func messageReplyGetsAddressesTypeThreadAndFreshID() throws {
        let incoming = try stanza("<message type='normal' id='m1' from='a@example.org/r' to='echo@bot.example.org'><body>x</body><thread>t1</thread></message>")
        var reply = Stanza(kind: .message)
        reply.element.append(Element("body", namespace: Namespace.client, text: "y"))
        let (stanzas, refusal) = stamper.stamp(HandlerOutcome(replies: [reply]), replyingTo: incoming)
        #expect(refusal == nil)
        let out = try #require(stanzas.first)
        #expect(out.from == "echo@bot.example.org" && out.to == "a@example.org/r" && out.type == "normal")
        #expect(out.id != nil && out.id != "m1")
        #expect(out.thread?.text == "t1")
    }

    @Test func iqRequestGetsExactlyOneAnswer() throws {
        let incoming = try stanza("<iq type='get' id='q1' from='a@example.org/r' to='bot.example.org'><query xmlns='urn:x'/></iq>")
        let none = stamper.stamp(HandlerOutcome(), replyingTo: incoming).stanzas
        #expect(none.count == 1 && none[0].type == "result" && none[0].id == "q1" && none[0].from == "bot.example.org")
        let two = stamper.stamp(HandlerOutcome(replies: [Stanza(kind: .iq), Stanza(kind: .iq)]), replyingTo: incoming).stanzas
        #expect(two.count == 1 && two[0].id == "q1" && two[0].type == "result")
    }

    @Test func fromOutsideTheDomainIsRefused() throws {
        let incoming = try stanza("<message type='chat' id='m1' from='a@example.org/r' to='bot.example.org'><body>x</body></message>")
        let reply = Stanza(kind: .message, from: "admin@example.org")
        let (stanzas, refusal) = stamper.stamp(HandlerOutcome(replies: [reply]), replyingTo: incoming)
        #expect(refusal?.description.contains("outside the component domain") == true)
        #expect(stanzas.count == 1 && stanzas[0].error?.condition == .internalServerError && stanzas[0].error?.by == "bot.example.org")
    }

    @Test func oversizedReplyIsRefused() throws {
        let incoming = try stanza("<message type='chat' id='m1' from='a@example.org/r' to='bot.example.org'><body>x</body></message>")
        var reply = Stanza(kind: .message)
        reply.element.append(Element("body", namespace: Namespace.client, text: String(repeating: "a", count: 3000)))
        let (stanzas, refusal) = stamper.stamp(HandlerOutcome(replies: [reply]), replyingTo: incoming)
        #expect(refusal?.description.contains("exceeds max_stanza") == true)
        #expect(stanzas.first?.error?.condition == .internalServerError)
    }

    @Test func neverAnErrorToAnErrorOrResult() throws {
        let incoming = try stanza("<iq type='result' id='q1' from='a@example.org/r' to='bot.example.org'/>")
        #expect(stamper.stamp(.failed(.cancel, .internalServerError), replyingTo: incoming).stanzas.isEmpty)
    }
}

@Suite struct AdmissionGateTests {
    @Test func admitsConcurrencyPlusQueueThenRefuses() async {
        let gate = AdmissionGate(concurrency: 2, queue: 3)
        let admitted = (0..<10).filter { _ in gate.admit() }.count
        #expect(admitted == 5)
        for _ in 0..<5 { gate.release() }
        #expect(gate.load == 0)
        #expect(gate.admit())
    }

    @Test func waitersRunInOrderAsSlotsFree() async {
        let gate = AdmissionGate(concurrency: 1, queue: 10)
        #expect(gate.admit())
        #expect(await gate.acquire())
        let order = OrderLog()
        await withTaskGroup(of: Void.self) { group in
            for index in 0..<3 {
                #expect(gate.admit())
                group.addTask {
                    #expect(await gate.acquire())
                    await order.append(index)
                    gate.release()
                }
                // Let each waiter enqueue before the next one, so the order is defined.
                while gate.waiting < index + 1 { await Task.yield() }
            }
            gate.release()
        }
        #expect(await order.items == [0, 1, 2])
    }

    /// Shutdown turns waiters away, but a stanza admitted before it whose task asks only afterwards runs if a slot
    /// is free: it would not have waited (a take-over's last stanzas are otherwise bounced for nothing).
    @Test func closingTurnsWaitersAwayButAFreeSlotIsStillTaken() async {
        let gate = AdmissionGate(concurrency: 1, queue: 10)
        #expect(gate.admit())
        #expect(await gate.acquire())
        #expect(gate.admit())
        let waiter = Task { await gate.acquire() }
        while gate.waiting < 1 { await Task.yield() }
        #expect(gate.admit())  // admitted before the close; its task asks later
        gate.close()
        #expect(await waiter.value == false)
        #expect(await gate.acquire() == false)  // the slot is still taken: it would wait, so it is turned away
        #expect(gate.admit())
        gate.release()
        #expect(await gate.acquire())  // now a slot is free: it runs
        gate.release()
        #expect(gate.load == 0)
    }
}

actor OrderLog {
    var items: [Int] = []
    func append(_ item: Int) { items.append(item) }
}

@Suite struct DirectStartTests {
    /// A handler that takes the stanza at once and answers from a thread of its own, like a worker pool.
    struct ThreadAnswering: StanzaHandler {
        var startsWithoutWaiting: Bool { true }

        func handle(_ stanza: Stanza, context: HandlerContext) async -> HandlerOutcome {
            Issue.record("the task path was taken")
            return HandlerOutcome()
        }

        func start(_ stanza: Stanza, context: HandlerContext, completion: @escaping @Sendable (HandlerOutcome) -> Void) {
            let body = stanza.body ?? ""
            Thread.detachNewThread {
                var reply = Stanza(kind: .message)
                reply.element.append(Element("body", namespace: Namespace.client, text: "echo: " + body))
                completion(HandlerOutcome(replies: [reply]))
            }
        }
    }

    struct TaskOnly: StanzaHandler {
        func handle(_ stanza: Stanza, context: HandlerContext) async -> HandlerOutcome { HandlerOutcome() }
    }

    static let builtIns = BuiltInResponder(domain: "bot.example.org", discoName: "Bot", routedFeatures: [], items: [],
                                           softwareVersion: "1")

    @Test func aHandlerThatStartsWithoutWaitingAnswersThroughTheCompletionWithStampedReplies() async throws {
        let route = Route(name: "direct", rule: RouteRule(kinds: [.message]), handler: ThreadAnswering(), concurrency: 1, queue: 0)
        let dispatcher = Dispatcher(routes: [route], builtIns: Self.builtIns, logger: Logger(label: "test"))
        let incoming = try stanza("<message type='chat' id='m1' from='a@example.org/r' to='echo@bot.example.org'><body>hi</body></message>")
        guard case .admitted(let admitted) = dispatcher.admit(incoming) else {
            Issue.record("not admitted")
            return
        }
        let replies = await withCheckedContinuation { (continuation: CheckedContinuation<[Stanza]?, Never>) in
            let started = dispatcher.start(incoming, on: admitted) { continuation.resume(returning: $0) }
            if !started { continuation.resume(returning: nil) }
        }
        let reply = try #require(replies?.first)
        #expect(reply.body == "echo: hi")
        #expect(reply.from == "echo@bot.example.org" && reply.to == "a@example.org/r" && reply.type == "chat")
        #expect(route.gate.load == 0, "the run slot and the admission were given back")
    }

    @Test func otherHandlersAndFullRoutesTakeTheTaskPath() throws {
        let incoming = try stanza("<message type='chat' id='m1' from='a@example.org/r' to='echo@bot.example.org'><body>hi</body></message>")
        let plain = Route(name: "plain", rule: RouteRule(kinds: [.message]), handler: TaskOnly(), concurrency: 1, queue: 0)
        #expect(!Dispatcher(routes: [plain], builtIns: Self.builtIns, logger: Logger(label: "test"))
            .start(incoming, on: plain) { _ in Issue.record("completed") })

        let busy = Route(name: "busy", rule: RouteRule(kinds: [.message]), handler: ThreadAnswering(), concurrency: 1, queue: 5)
        #expect(busy.gate.admit() && busy.gate.tryAcquire(), "the only run slot is taken")
        #expect(busy.gate.admit())
        #expect(!Dispatcher(routes: [busy], builtIns: Self.builtIns, logger: Logger(label: "test"))
            .start(incoming, on: busy) { _ in Issue.record("completed") }, "no free slot: the stanza waits in a task")
        #expect(busy.gate.load == 2, "nothing was given back by the refused start")
    }
}

@Suite struct HandlerContextTests {
    @Test func aHandlersLoggerCarriesTheRouteTheStanzaIDAndTheRoom() {
        var base = Logger(label: "test")
        base[metadataKey: "component"] = "bot.example.org"
        let room = RoomOrigin(room: "den@conference.example.org", nick: "ann", ownNick: "bot", isGroupchat: true)
        let context = HandlerContext(route: "echo", component: "bot.example.org", routeLogger: base, stanzaID: "m1", room: room)
        let logger = context.logger
        #expect(logger[metadataKey: "component"] == "bot.example.org")
        #expect(logger[metadataKey: "route"] == "echo")
        #expect(logger[metadataKey: "stanza.id"] == "m1")
        #expect(logger[metadataKey: "room"] == "den@conference.example.org")

        let noID = HandlerContext(route: "echo", component: "bot.example.org", routeLogger: base, stanzaID: nil, room: nil)
        #expect(noID.logger[metadataKey: "stanza.id"] == "")
        #expect(noID.logger[metadataKey: "room"] == nil)

        var replaced = context
        replaced.logger = Logger(label: "other")
        #expect(replaced.logger[metadataKey: "route"] == nil, "a logger set by hand is used as it is")
        #expect(HandlerContext(route: "echo", component: "c", logger: base).logger[metadataKey: "route"] == nil)
    }
}

@Suite struct LoopGuardAndRateLimitTests {
    static let builtIns = DirectStartTests.builtIns

    @Test func messagesAndPresencesFromTheComponentItselfReachOnlyRoutesThatOptIn() throws {
        let guarded = RouteRule(kinds: [.message, .presence, .iq], refusesFromDomain: "Bot.Example.org")
        let optedIn = RouteRule(kinds: [.message, .presence, .iq])
        let fromSelf = try stanza("<message type='chat' from='a@bot.example.org' to='b@bot.example.org'><body>x</body></message>")
        let fromDomain = try stanza("<presence from='bot.example.org' to='b@bot.example.org'/>")
        let fromUser = try stanza("<message type='chat' from='a@example.org/r' to='b@bot.example.org'><body>x</body></message>")
        let iqFromSelf = try stanza("<iq type='get' id='q' from='bot.example.org' to='slow@bot.example.org'><q xmlns='urn:x'/></iq>")
        #expect(!guarded.matches(fromSelf) && !guarded.matches(fromDomain))
        #expect(guarded.matches(fromUser))
        #expect(guarded.matches(iqFromSelf), "an iq get/set is answered by a result, which is never answered: no loop")
        #expect(optedIn.matches(fromSelf) && optedIn.matches(fromDomain))
    }

    @Test func aSenderOverItsLimitGetsPolicyViolationAndTheHandlerDoesNotRun() throws {
        let route = Route(name: "echo", rule: RouteRule(kinds: [.message]), handler: DirectStartTests.TaskOnly(), concurrency: 10, queue: 10)
        let dispatcher = Dispatcher(routes: [route], builtIns: Self.builtIns, logger: Logger(label: "test"))
        dispatcher.setRateLimit(RateLimitSpec(count: 2, seconds: 60))
        let message = try stanza("<message type='chat' id='m1' from='a@example.org/r' to='echo@bot.example.org'><body>hi</body></message>")
        let other = try stanza("<message type='chat' id='m2' from='b@example.org/r' to='echo@bot.example.org'><body>hi</body></message>")
        var admitted = 0
        var refusals: [[Stanza]] = []
        for _ in 0..<5 {
            switch dispatcher.admit(message) {
            case .admitted: admitted += 1
            case .limited(_, let replies): refusals.append(replies)
            default: Issue.record("unexpected admission")
            }
        }
        #expect(admitted == 2 && refusals.count == 3)
        let error = try #require(refusals.first?.first?.error)
        #expect(error.type == .wait && error.condition == .policyViolation)
        #expect(error.text == "rate limit: at most 2 stanzas per 60 s; try again later")
        guard case .admitted = dispatcher.admit(other) else {
            Issue.record("another sender was limited too")
            return
        }
        let errorMessage = try stanza("<message type='error' id='m3' from='a@example.org/r' to='echo@bot.example.org'/>")
        guard case .limited(_, let replies) = dispatcher.admit(errorMessage) else {
            Issue.record("an error stanza bypassed the limit")
            return
        }
        #expect(replies.isEmpty, "an error is never answered with an error")
    }
}

/// A handler that records each stanza it gets and holds the one with id "m1" until `releaseAll()`.
final class HeldHandler: StanzaHandler {
    private let state = Mutex<(received: [String], held: [CheckedContinuation<Void, Never>])>(([], []))
    let started = AsyncStream<String>.makeStream()

    var received: [String] { state.withLock { $0.received } }

    func handle(_ stanza: Stanza, context: HandlerContext) async -> HandlerOutcome {
        await withCheckedContinuation { continuation in
            let hold = state.withLock { state -> Bool in
                state.received.append(stanza.id ?? "")
                if stanza.id == "m1" { state.held.append(continuation) }
                return stanza.id == "m1"
            }
            started.continuation.yield(stanza.id ?? "")
            if !hold { continuation.resume() }
        }
        var reply = Stanza(kind: .message)
        reply.element.append(Element("body", namespace: Namespace.client, text: "done"))
        return HandlerOutcome(replies: [reply])
    }

    func releaseAll() {
        for continuation in state.withLock({ state in defer { state.held = [] }; return state.held }) { continuation.resume() }
    }
}

/// A keeper that takes every stanza left at shutdown (a spool that never fails) and records their ids in order.
final class KeptIDs: Sendable {
    private let ids = Mutex<[String]>([])
    var all: [String] { ids.withLock { $0 } }

    init(keeping dispatcher: Dispatcher) {
        dispatcher.keepLeftStanzas { stanza in
            self.record(stanza)
            return true
        }
    }

    private func record(_ stanza: Stanza) {
        ids.withLock { $0.append(stanza.id ?? "") }
    }
}

@Suite struct QueuedAtShutdownTests {
    static let builtIns = BuiltInResponder(domain: "bot.example.org", discoName: "Bot", routedFeatures: [], items: [],
                                           softwareVersion: "1")

    static func message(_ id: String) throws -> Stanza {
        try stanza("<message type='chat' id='\(id)' from='a@example.org/r' to='held@bot.example.org'><body>hi</body></message>")
    }

    /// One stanza running (held by the handler), one waiting in the route's queue.
    static func oneRunningOneQueued() async throws -> (HeldHandler, Route, Dispatcher, Task<[Stanza], Never>, Task<[Stanza], Never>) {
        let handler = HeldHandler()
        let route = Route(name: "held", rule: RouteRule(kinds: [.message]), handler: handler, concurrency: 1, queue: 5)
        let dispatcher = Dispatcher(routes: [route], builtIns: builtIns, logger: Logger(label: "test"))
        let first = try message("m1"), second = try message("m2")
        #expect(route.gate.admit() && route.gate.admit())
        let running = Task { await dispatcher.run(first, on: route) }
        for await id in handler.started.stream where id == "m1" { break }
        let queued = Task { await dispatcher.run(second, on: route) }
        while route.gate.waiting < 1 { await Task.yield() }
        return (handler, route, dispatcher, running, queued)
    }

    static func expectShuttingDown(_ replies: [Stanza], id: String) {
        #expect(replies.count == 1)
        #expect(replies.first?.type == "error" && replies.first?.id == id)
        #expect(replies.first?.error?.type == .cancel)
        #expect(replies.first?.error?.condition == .serviceUnavailable)
        #expect(replies.first?.error?.text == "stanzad is shutting down")
    }

    @Test(.timeLimit(.minutes(1))) func aStanzaQueuedAtShutdownIsAnsweredShuttingDownAndNeverRuns() async throws {
        let (handler, route, dispatcher, running, queued) = try await Self.oneRunningOneQueued()
        dispatcher.shutDown()
        #expect(route.gate.waiting == 0)
        handler.releaseAll()
        Self.expectShuttingDown(await queued.value, id: "m2")
        #expect(await running.value.first?.body == "done", "the running handler finishes as usual")
        #expect(handler.received == ["m1"], "the queued stanza never reached the handler")
        #expect(route.gate.load == 0)
    }

    /// With a spool (SPEC §18) a stanza still queued at shutdown is kept for the next process: no answer now.
    @Test(.timeLimit(.minutes(1))) func aStanzaQueuedAtShutdownIsKeptWhenItCanBe() async throws {
        let (handler, route, dispatcher, running, queued) = try await Self.oneRunningOneQueued()
        let kept = KeptIDs(keeping: dispatcher)
        dispatcher.shutDown()
        handler.releaseAll()
        #expect(await queued.value.isEmpty, "kept: the sender hears from the next process")
        #expect(kept.all == ["m2"])
        #expect(await running.value.first?.body == "done")
        #expect(handler.received == ["m1"])
        #expect(route.gate.load == 0)
    }

    /// A keeper that cannot keep it (it could not be stored), and a stanza from a room (the next process has not
    /// joined the room yet), are answered as without a spool; nothing goes back to a room (SPEC §14).
    @Test func aStanzaThatCannotBeKeptIsAnsweredShuttingDown() throws {
        let dispatcher = Dispatcher(routes: [], builtIns: Self.builtIns, logger: Logger(label: "test"))
        let offered = Mutex(0)
        dispatcher.keepLeftStanzas { _ in
            offered.withLock { $0 += 1 }
            return false
        }
        Self.expectShuttingDown(dispatcher.leftAtShutdown(try Self.message("m4"), route: nil, room: nil), id: "m4")
        #expect(offered.withLock { $0 } == 1)
        let fromRoom = try stanza("<message type='chat' id='m5' from='room@muc.example.org/nick' to='held@bot.example.org'><body>hi</body></message>")
        let room = RoomOrigin(room: "room@muc.example.org", nick: "nick", ownNick: "bot", isGroupchat: false)
        #expect(dispatcher.leftAtShutdown(fromRoom, route: nil, room: room).isEmpty)
        #expect(offered.withLock { $0 } == 1, "a room's stanza is not offered to the keeper")
    }

    /// A handler that never ran its stanza because stanzad stops (a process handler still waiting under
    /// `max_processes`) says so; the stanza is then kept like a queued one, or answered "shutting down".
    @Test func aStanzaItsHandlerNeverStartedIsKeptOrAnsweredShuttingDown() async throws {
        struct NeverStarts: StanzaHandler {
            func handle(_ stanza: Stanza, context: HandlerContext) async -> HandlerOutcome { .leftAtShutdown }
        }
        let route = Route(name: "limited", rule: RouteRule(kinds: [.message]), handler: NeverStarts(), concurrency: 2, queue: 0)
        let dispatcher = Dispatcher(routes: [route], builtIns: Self.builtIns, logger: Logger(label: "test"))
        #expect(route.gate.admit())
        Self.expectShuttingDown(await dispatcher.run(try Self.message("m6"), on: route), id: "m6")
        let kept = KeptIDs(keeping: dispatcher)
        #expect(route.gate.admit())
        #expect(await dispatcher.run(try Self.message("m7"), on: route).isEmpty, "kept: no reply from this process")
        #expect(kept.all == ["m7"])
        #expect(dispatcher.keptCount == 1)
        #expect(route.gate.load == 0)
    }

    /// Stanzas queued at shutdown are left in the order they arrived (their tickets), not in the order their tasks
    /// happen to wake: here the tasks reach the queue in reverse. Each task then finds its stanza gone and returns
    /// nothing; a stanza admitted afterwards gets no ticket.
    @Test(.timeLimit(.minutes(1))) func stanzasQueuedAtShutdownAreLeftInArrivalOrder() async throws {
        for keeping in [true, false] {
            let handler = HeldHandler()
            let route = Route(name: "held", rule: RouteRule(kinds: [.message]), handler: handler, concurrency: 1, queue: 10)
            let dispatcher = Dispatcher(routes: [route], builtIns: Self.builtIns, logger: Logger(label: "test"))
            let kept = keeping ? KeptIDs(keeping: dispatcher) : nil
            #expect(route.gate.admit())
            let first = try Self.message("m1")
            let running = Task { await dispatcher.run(first, on: route) }
            for await id in handler.started.stream where id == "m1" { break }
            let ids = (2...6).map { "q\($0)" }
            var tickets: [(String, Dispatcher.Ticket)] = []
            for id in ids {
                #expect(route.gate.admit())
                let ticket = try #require(dispatcher.ticket(for: try Self.message(id), route: route, room: nil))
                tickets.append((id, ticket))
            }
            var queued: [Task<[Stanza], Never>] = []
            for (id, ticket) in tickets.reversed() {
                let message = try Self.message(id)
                queued.append(Task { await dispatcher.run(message, on: route, ticket: ticket) })
                while route.gate.waiting < queued.count { await Task.yield() }
            }
            let left = dispatcher.leaveNotStarted()
            #expect(left.map { $0.stanza.id ?? "" } == ids)
            if keeping {
                #expect(kept?.all == ids)
                #expect(left.allSatisfy { $0.replies.isEmpty })
            } else {
                for (stanza, replies) in left { Self.expectShuttingDown(replies, id: stanza.id ?? "") }
            }
            #expect(route.gate.admit())
            #expect(dispatcher.ticket(for: try Self.message("late"), route: route, room: nil) == nil)
            route.gate.withdraw()
            handler.releaseAll()
            for task in queued { #expect(await task.value.isEmpty, "left already: the task sends nothing") }
            #expect(await running.value.first?.body == "done")
            #expect(handler.received == ["m1"], "no queued stanza reached the handler")
            #expect(route.gate.load == 0 && route.gate.waiting == 0)
            #expect(dispatcher.keptCount == (keeping ? ids.count : 0))
        }
    }

    /// A stanza admitted with a run slot free, whose task had not reached the gate yet, still runs at shutdown (as
    /// `acquire` promises); only the ones that would have waited are left.
    @Test(.timeLimit(.minutes(1))) func aStanzaWithAFreeSlotStillRunsAtShutdown() async throws {
        let handler = HeldHandler()
        let route = Route(name: "held", rule: RouteRule(kinds: [.message]), handler: handler, concurrency: 2, queue: 10)
        let dispatcher = Dispatcher(routes: [route], builtIns: Self.builtIns, logger: Logger(label: "test"))
        let kept = KeptIDs(keeping: dispatcher)
        let first = try Self.message("m1")
        #expect(route.gate.admit())
        let running = Task { await dispatcher.run(first, on: route) }
        for await id in handler.started.stream where id == "m1" { break }
        var tickets: [(Stanza, Dispatcher.Ticket)] = []
        for id in ["q2", "q3", "q4"] {
            #expect(route.gate.admit())
            let message = try Self.message(id)
            tickets.append((message, try #require(dispatcher.ticket(for: message, route: route, room: nil))))
        }
        #expect(route.gate.freeSlots == 1)
        #expect(dispatcher.leaveNotStarted().map { $0.stanza.id ?? "" } == ["q3", "q4"])
        #expect(kept.all == ["q3", "q4"])
        var results: [[Stanza]] = []
        for (message, ticket) in tickets { results.append(await dispatcher.run(message, on: route, ticket: ticket)) }
        #expect(results.map { $0.first?.body } == ["done", nil, nil], "q2 ran; q3 and q4 were kept")
        handler.releaseAll()
        #expect(await running.value.first?.body == "done")
        #expect(handler.received == ["m1", "q2"])
        #expect(route.gate.load == 0 && route.gate.waiting == 0)
    }

    @Test(.timeLimit(.minutes(1))) func aCancelledStanzaLeavesTheQueueAndNeverRuns() async throws {
        let (handler, route, dispatcher, running, queued) = try await Self.oneRunningOneQueued()
        queued.cancel()
        handler.releaseAll()
        Self.expectShuttingDown(await queued.value, id: "m2")
        #expect(await running.value.first?.body == "done")
        #expect(handler.received == ["m1"], "the cancelled stanza never reached the handler")
        #expect(route.gate.load == 0 && route.gate.waiting == 0, "its place was given back")
        // The slot accounting is intact: the next stanza runs.
        #expect(route.gate.admit())
        let third = try Self.message("m3")
        #expect(await dispatcher.run(third, on: route).first?.body == "done")
        #expect(handler.received == ["m1", "m3"])
    }
}
