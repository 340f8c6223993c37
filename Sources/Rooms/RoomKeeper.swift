// Keeps stanzad in its rooms (SPEC §14): the I/O shell around one RoomStateMachine per room. It joins on every
// link-up, reads the rooms' presence before the routes see it, sleeps until the earliest room deadline
// (rejoins, join timeouts, self-pings), and follows reloads. It never blocks the link: every step is a lock,
// some state changes and `send`s.

import ComponentLink
import Foundation
import Logging
import Routing
import ServiceLifecycle
import Synchronization
import XMPPCore

/// One `[[room]]`.
package struct RoomSettings: Sendable, Hashable {
    /// The room's bare JID (lower-cased).
    package var jid: String
    package var nick: String
    /// Our occupant's real JID: the `from` of everything we send to the room.
    package var from: String
    package var password: String?
    /// `<history maxstanzas>` asked for on join.
    package var history: Int

    package init(jid: String, nick: String, from: String, password: String? = nil, history: Int = 0) {
        self.jid = jid.lowercased()
        self.nick = nick
        self.from = from
        self.password = password
        self.history = history
    }
}

/// `[rooms]`.
package struct RoomsSettings: Sendable, Hashable {
    /// nil: no self-pings.
    package var selfPing: Duration?
    package var rejoinDelay: Duration
    package var acceptInvites: [JIDPattern]
    package var joinTimeout: Duration
    /// Nick and `from` for rooms joined on an invite.
    package var defaultNick: String
    package var defaultFrom: String

    package init(selfPing: Duration? = .seconds(300), rejoinDelay: Duration = .seconds(5), acceptInvites: [JIDPattern] = [],
                 joinTimeout: Duration = .seconds(30), defaultNick: String, defaultFrom: String) {
        self.selfPing = selfPing
        self.rejoinDelay = rejoinDelay
        self.acceptInvites = acceptInvites
        self.joinTimeout = joinTimeout
        self.defaultNick = defaultNick
        self.defaultFrom = defaultFrom
    }
}

/// A room as `GET /rest/rooms` lists it.
package struct RoomStatus: Sendable, Hashable {
    package var room: String
    package var nick: String
    package var state: String
    package var since: Date
    package var occupants: [String]
}

package final class RoomKeeper: Service, RoomFilter, Sendable {
    private struct Room {
        var settings: RoomSettings
        var machine: RoomStateMachine
        var occupants: Set<String> = []
        var phase: RoomStateMachine.Phase
        var since = Date()
        /// Joined on an invite: kept until the next restart, untouched by reloads.
        var invited = false
    }

    private struct Shared {
        var rooms: [String: Room] = [:]
        var order: [String] = []
        var global: RoomsSettings
        var linkUp = false
        var stopping = false
    }

    /// What to do after the lock is released.
    private struct Work {
        var room: RoomSettings
        var actions: [RoomStateMachine.Action]
    }

    let connection: ComponentConnection
    let logger: Logger
    private let shared: Mutex<Shared>
    private let wakeup = Wakeup()
    /// Any room or `accept_invites` configured: without them `classify` needs no lock and no JID parsing.
    private let active = Atomic<Bool>(false)

    package init(connection: ComponentConnection, rooms: [RoomSettings], settings: RoomsSettings, logger: Logger) {
        self.connection = connection
        self.logger = logger
        var state = Shared(global: settings)
        for room in rooms where state.rooms[room.jid] == nil {
            state.rooms[room.jid] = Self.makeRoom(room, settings)
            state.order.append(room.jid)
        }
        self.shared = Mutex(state)
        active.store(!state.rooms.isEmpty || !settings.acceptInvites.isEmpty, ordering: .relaxed)
    }

    private static func makeRoom(_ room: RoomSettings, _ global: RoomsSettings, invited: Bool = false) -> Room {
        let machine = RoomStateMachine(settings: machineSettings(room, global))
        return Room(settings: room, machine: machine, phase: machine.phase, invited: invited)
    }

    private static func machineSettings(_ room: RoomSettings, _ global: RoomsSettings) -> RoomStateMachine.Settings {
        RoomStateMachine.Settings(nick: room.nick, rejoinDelay: global.rejoinDelay, selfPing: global.selfPing,
                                  joinTimeout: global.joinTimeout)
    }

    // MARK: Service

    package func run() async throws {
        connection.setLinkObserver { [self] event in linkEvent(event) }
        // The link may have come up before the observer was set.
        if connection.isConnected { linkEvent(.up) }
        await withGracefulShutdownHandler {
            while !Task.isCancelled {
                let (deadline, stopping) = shared.withLock { state in
                    (state.rooms.values.compactMap { $0.machine.nextDeadline }.min(), state.stopping)
                }
                if stopping { break }
                await wakeup.wait(until: deadline)
                tick()
            }
        } onGracefulShutdown: {
            self.shared.withLock { $0.stopping = true }
            self.wakeup.signal()
        }
        connection.setLinkObserver(nil)
        // Leave politely while the link (shut down after us) still sends.
        let work = shared.withLock { state in
            state.order.compactMap { key -> Work? in
                guard var room = state.rooms[key] else { return nil }
                let actions = room.machine.leave()
                state.rooms[key] = room
                return Work(room: room.settings, actions: actions)
            }
        }
        perform(work)
    }

    // MARK: Events

    private func linkEvent(_ event: LinkEvent) {
        let now = ContinuousClock.now
        let work = shared.withLock { state -> [Work] in
            switch event {
            case .up:
                guard !state.linkUp else { return [] }
                state.linkUp = true
                return Self.each(&state) { room in
                    room.occupants = []
                    return room.machine.linkUp(at: now)
                }
            case .replaced:
                return []  // `.down` came first; the process is stopping
            case .down:
                state.linkUp = false
                return Self.each(&state) { room in
                    room.occupants = []
                    room.machine.linkDown(at: now)
                    return []
                }
            }
        }
        perform(work)
        wakeup.signal()
    }

    private func tick() {
        let now = ContinuousClock.now
        let work = shared.withLock { state in Self.each(&state) { $0.machine.due(at: now) } }
        perform(work)
    }

    /// Runs `body` on every room and records phase changes.
    private static func each(_ state: inout Shared, _ body: (inout Room) -> [RoomStateMachine.Action]) -> [Work] {
        var work: [Work] = []
        for key in state.order {
            guard var room = state.rooms[key] else { continue }
            let actions = body(&room)
            note(&room)
            state.rooms[key] = room
            if !actions.isEmpty { work.append(Work(room: room.settings, actions: actions)) }
        }
        return work
    }

    private static func note(_ room: inout Room) {
        let phase = room.machine.phase
        guard phase != room.phase else { return }
        room.phase = phase
        room.since = Date()
        // Occupants seen while joining stay (they arrive before our own presence); out of the room, nobody is known.
        if phase != .joining && phase != .joined { room.occupants = [] }
    }

    private func pingAnswered(room key: String, nick: String, _ answer: RoomStateMachine.PingAnswer) {
        let now = ContinuousClock.now
        let work = shared.withLock { state -> [Work] in
            guard var room = state.rooms[key], room.machine.nick == nick else { return [] }
            let actions = room.machine.selfPingAnswered(answer, at: now)
            Self.note(&room)
            state.rooms[key] = room
            return [Work(room: room.settings, actions: actions)]
        }
        perform(work)
        wakeup.signal()
    }

    // MARK: Inbound (RoomFilter)

    package func classify(_ stanza: Stanza) -> RoomVerdict {
        guard stanza.kind != .iq else { return .notFromRoom }
        guard active.load(ordering: .relaxed) else {
            // Group chat from a room we are not in is never routed.
            return stanza.kind == .message && stanza.type == "groupchat" ? .taken : .notFromRoom
        }
        guard let from = JID.parse(stanza.from) else { return .notFromRoom }
        if stanza.kind == .message, let invite = MUCStanza.invite(stanza) {
            accept(invite, to: stanza.to)
            return .taken
        }
        let key = from.bare.description.lowercased()
        let now = ContinuousClock.now
        var verdict = RoomVerdict.taken
        let work = shared.withLock { state -> [Work] in
            guard var room = state.rooms[key] else {
                // Group chat from a room we are not in is never routed; anything else is not ours to judge.
                verdict = stanza.kind == .message && stanza.type == "groupchat" ? .taken : .notFromRoom
                return []
            }
            var actions: [RoomStateMachine.Action] = []
            switch stanza.kind {
            case .presence:
                actions = Self.presence(stanza, in: &room, at: now)
            case .message where stanza.type == "error":
                // Our message bounced. not-acceptable: the room does not count us as an occupant any more.
                if from.resource == nil, stanza.error?.condition == .notAcceptable {
                    actions = room.machine.refusedAsNonOccupant(at: now)
                }
            case .message:
                verdict = Self.message(stanza, from: from, in: room)
            case .iq:
                verdict = .notFromRoom
            }
            Self.note(&room)
            state.rooms[key] = room
            return actions.isEmpty ? [] : [Work(room: room.settings, actions: actions)]
        }
        if !work.isEmpty {
            perform(work)
            wakeup.signal()
        }
        return verdict
    }

    private static func presence(_ stanza: Stanza, in room: inout Room, at now: ContinuousClock.Instant) -> [RoomStateMachine.Action] {
        guard let occupant = OccupantPresence(stanza) else { return [] }
        // Our own presence carries status 110. Without it, only what comes for the nick we hold or are trying counts
        // as ours (an error to our join; a `<destroy/>` some servers send without 110): once we are out, somebody
        // else may take that nick.
        let ownNick = room.machine.nick
        let holdsNick = occupant.nick == ownNick && (room.phase == .joining || room.phase == .joined)
        if let condition = occupant.errorCondition {
            return holdsNick ? room.machine.selfPresence(.error(condition: condition), at: now) : []
        }
        if occupant.unavailable {
            room.occupants.remove(occupant.nick)
            if let newNick = occupant.newNick, occupant.codes.contains(303) { room.occupants.insert(newNick) }
            guard occupant.isSelf || holdsNick else { return [] }
            return room.machine.selfPresence(
                .unavailable(codes: occupant.codes, newNick: occupant.newNick, destroyed: occupant.destroyed, reason: occupant.reason),
                at: now)
        }
        room.occupants.insert(occupant.nick)
        guard occupant.isSelf else { return [] }
        return room.machine.selfPresence(.available(nick: occupant.nick), at: now)
    }

    private static func message(_ stanza: Stanza, from: JID, in room: Room) -> RoomVerdict {
        guard room.machine.isJoined, let nick = from.resource else { return .taken }
        let ownNick = room.machine.nick
        switch stanza.type {
        case "groupchat":
            if nick == ownNick || MUCStanza.isHistory(stanza, room: room.settings.jid) || MUCStanza.isSubjectChange(stanza) {
                return .taken
            }
            return .route(RoomOrigin(room: room.settings.jid, nick: nick, ownNick: ownNick, isGroupchat: true))
        case nil, "chat", "normal":
            return .route(RoomOrigin(room: room.settings.jid, nick: nick, ownNick: ownNick, isGroupchat: false))
        default:
            return .taken
        }
    }

    private func accept(_ invite: (room: String, inviter: String, password: String?), to: String?) {
        let now = ContinuousClock.now
        let work = shared.withLock { state -> [Work] in
            guard let inviter = JID.parse(invite.inviter),
                  state.global.acceptInvites.contains(where: { $0.matches(inviter) }) else {
                var metadata: Logger.Metadata = ["room": "\(invite.room)", "inviter": "\(invite.inviter)"]
                if invite.inviter.lowercased() == invite.room.lowercased() {
                    // A semi-anonymous room forwards the invite from the inviter's occupant JID: who sent it is unknown.
                    metadata["hint"] = "the room hides the inviter's real JID; invite directly (XEP-0249) or make the room non-anonymous"
                }
                logger.info("room invite ignored", metadata: metadata)
                return []
            }
            let key = invite.room.lowercased()
            guard state.rooms[key] == nil else { return [] }
            var from = state.global.defaultFrom
            if let to = JID.parse(to), to.domain == connection.settings.jid { from = to.bare.description }
            let settings = RoomSettings(jid: key, nick: state.global.defaultNick, from: from, password: invite.password)
            var room = Self.makeRoom(settings, state.global, invited: true)
            let actions = state.linkUp ? room.machine.linkUp(at: now) : []
            Self.note(&room)
            state.rooms[key] = room
            state.order.append(key)
            logger.notice("room invite accepted", metadata: ["room": "\(key)", "inviter": "\(invite.inviter)"])
            return [Work(room: settings, actions: actions)]
        }
        perform(work)
        wakeup.signal()
    }

    // MARK: Reload

    /// SIGHUP: rooms no longer configured are left, new ones joined, changed nicks asked for.
    package func reload(rooms: [RoomSettings], settings: RoomsSettings) {
        let now = ContinuousClock.now
        let work = shared.withLock { state -> [Work] in
            var work: [Work] = []
            state.global = settings
            let wanted = Set(rooms.map(\.jid))
            for key in state.order {
                guard var room = state.rooms[key] else { continue }
                if !wanted.contains(key) && !room.invited {
                    let actions = room.machine.leave()
                    work.append(Work(room: room.settings, actions: actions))
                    state.rooms[key] = nil
                    logger.notice("room removed from the configuration; leaving it", metadata: ["room": "\(key)"])
                    continue
                }
                if let new = rooms.first(where: { $0.jid == key }) { room.settings = new }
                let actions = room.machine.update(Self.machineSettings(room.settings, settings), at: now)
                Self.note(&room)
                state.rooms[key] = room
                if !actions.isEmpty { work.append(Work(room: room.settings, actions: actions)) }
            }
            state.order.removeAll { state.rooms[$0] == nil }
            active.store(!rooms.isEmpty || !settings.acceptInvites.isEmpty || !state.rooms.isEmpty, ordering: .relaxed)
            for room in rooms where state.rooms[room.jid] == nil {
                var entry = Self.makeRoom(room, settings)
                let actions = state.linkUp ? entry.machine.linkUp(at: now) : []
                Self.note(&entry)
                state.rooms[room.jid] = entry
                state.order.append(room.jid)
                logger.notice("room added to the configuration; joining it", metadata: ["room": "\(room.jid)"])
                work.append(Work(room: room, actions: actions))
            }
            return work
        }
        perform(work)
        wakeup.signal()
    }

    // MARK: Queries

    /// Every room, in configuration order.
    package var status: [RoomStatus] {
        shared.withLock { state in
            state.order.compactMap { key in
                state.rooms[key].map {
                    RoomStatus(room: key, nick: $0.machine.nick, state: $0.phase.rawValue, since: $0.since, occupants: $0.occupants.sorted())
                }
            }
        }
    }

    /// How many rooms are in each state (the `stanzad_rooms` gauge).
    package var countsByState: [String: Int] {
        shared.withLock { state in
            state.rooms.values.reduce(into: [:]) { counts, room in counts[room.phase.rawValue, default: 0] += 1 }
        }
    }

    /// Our occupant's real JID in `room` (a configured or invited room), for messages sent there.
    package func occupantJID(inRoom room: String) -> String? {
        shared.withLock { $0.rooms[room.lowercased()]?.settings.from }
    }

    // MARK: Actions

    private func perform(_ work: [Work]) {
        for item in work {
            for action in item.actions { perform(action, in: item.room) }
        }
    }

    private func perform(_ action: RoomStateMachine.Action, in room: RoomSettings) {
        var metadata: Logger.Metadata = ["room": "\(room.jid)"]
        switch action {
        case .join(let nick):
            metadata["nick"] = "\(nick)"
            logger.info("joining room", metadata: metadata)
            send(MUCStanza.join(room: room.jid, nick: nick, from: room.from, password: room.password, history: room.history), room: room)
        case .changeNick(let nick):
            metadata["nick"] = "\(nick)"
            logger.notice("changing nick in room", metadata: metadata)
            send(MUCStanza.presence(room: room.jid, nick: nick, from: room.from), room: room)
        case .leave(let nick):
            logger.notice("leaving room", metadata: metadata)
            send(MUCStanza.presence(room: room.jid, nick: nick, from: room.from, unavailable: true), room: room)
        case .selfPing(let nick):
            let timeout = shared.withLock { $0.global.selfPing.map { min($0, .seconds(30)) } } ?? .seconds(30)
            let key = room.jid
            connection.request(MUCStanza.selfPing(room: room.jid, nick: nick, from: room.from), timeout: timeout) { [self] result in
                let answer: RoomStateMachine.PingAnswer
                switch result {
                case .success(let reply) where reply.type == "error":
                    answer = .error(condition: reply.error?.condition.rawValue ?? "undefined-condition")
                case .success:
                    answer = .result
                case .failure(let error) where error.code == .timeout:
                    answer = .timeout
                case .failure:
                    // The link went down or the queue refused it: the link's own events decide what happens next.
                    return
                }
                logger.debug("self-ping answered", metadata: ["room": "\(key)", "answer": "\(answer)"])
                pingAnswered(room: key, nick: nick, answer)
            }
        case .report(let report):
            log(report, metadata: metadata)
        }
    }

    private func send(_ stanza: Stanza, room: RoomSettings) {
        do {
            try connection.send(stanza)
        } catch {
            logger.warning("room presence not sent", metadata: ["room": "\(room.jid)", "error": "\(error)"])
        }
    }

    private func log(_ report: RoomStateMachine.Report, metadata: Logger.Metadata) {
        var metadata = metadata
        switch report {
        case .joined(let nick):
            metadata["nick"] = "\(nick)"
            logger.notice("room joined", metadata: metadata)
        case .nickTaken(let nick, let next):
            metadata["nick"] = "\(nick)"
            metadata["next"] = "\(next)"
            logger.warning("nick taken in room; trying another", metadata: metadata)
        case .nickExhausted(let tried):
            metadata["tried"] = "\(tried.joined(separator: ","))"
            logger.error("every nick is taken in room; set another nick in [[room]]", metadata: metadata)
        case .removed(let codes):
            metadata["status"] = "\(codes.map(String.init).joined(separator: ","))"
            metadata["reason"] = "\(Self.reason(codes))"
            logger.warning("removed from room", metadata: metadata)
        case .destroyed(let reason):
            metadata["reason"] = "\(reason ?? "")"
            logger.warning("room destroyed", metadata: metadata)
        case .banned:
            logger.error("banned from room; not rejoining (after an unban: restart, or reload without the room and then with it)", metadata: metadata)
        case .joinRefused(let condition):
            metadata["condition"] = "\(condition)"
            metadata["hint"] = "\(Self.hint(condition))"
            logger.error("room join refused", metadata: metadata)
        case .joinTimedOut:
            logger.warning("no answer to the room join", metadata: metadata)
        case .selfPingFailed(let condition):
            metadata["condition"] = "\(condition)"
            logger.warning("self-ping says we are no longer in room; rejoining", metadata: metadata)
        case .notAnOccupant:
            logger.warning("room refused our message as from a non-occupant; rejoining", metadata: metadata)
        case .rejoinScheduled(let delay):
            metadata["after_s"] = "\(delay.components.seconds)"
            logger.notice("rejoining room later", metadata: metadata)
        }
    }

    static func reason(_ codes: [Int]) -> String {
        if codes.contains(307) { return "kicked" }
        if codes.contains(332) { return "room service shut down" }
        if codes.contains(321) || codes.contains(322) { return "affiliation changed" }
        return "unexpected leave"
    }

    static func hint(_ condition: String) -> String {
        switch condition {
        case "not-authorized": "wrong or missing password (password / password_file in [[room]])"
        case "registration-required": "the room is members-only: make stanzad's JID a member"
        case "not-allowed": "the room does not exist and may not be created by stanzad"
        case "jid-malformed", "not-acceptable": "the nick is not accepted: set another nick in [[room]]"
        case "service-unavailable": "the room is full or the service refuses new occupants"
        default: "retried with backoff"
        }
    }
}

/// Wakes the keeper's loop early: `signal` ends the current (or the next) `wait`.
final class Wakeup: Sendable {
    private struct State {
        var pending = false
        var continuation: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    func signal() {
        let continuation = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let continuation = state.continuation else {
                state.pending = true
                return nil
            }
            state.continuation = nil
            return continuation
        }
        continuation?.resume()
    }

    /// Returns at `deadline` (never, when nil), on `signal`, or when the task is cancelled.
    func wait(until deadline: ContinuousClock.Instant?) async {
        await withTaskGroup(of: Void.self) { group in
            if let deadline {
                group.addTask { try? await Task.sleep(until: deadline, clock: .continuous) }
            }
            group.addTask { await self.waitForSignal() }
            _ = await group.next()
            group.cancelAll()
        }
    }

    private func waitForSignal() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if state.pending {
                        state.pending = false
                        return true
                    }
                    state.continuation = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            signal()
        }
    }
}
