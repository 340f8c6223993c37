// One room's membership (SPEC §14) as a pure value: the keeper reports what happened and when (link up/down,
// our self-presence, join errors, self-ping answers, the clock), performs the actions it returns and sleeps until
// `nextDeadline`. No I/O and no timer inside.

import XMPPCore

package struct RoomStateMachine: Sendable {
    package typealias Instant = ContinuousClock.Instant

    package struct Settings: Sendable, Hashable {
        /// The nick asked for; a taken nick gets `_` appended (`nick_`, `nick__`).
        package var nick: String
        /// The first wait before a rejoin after a kick or an unexpected leave; doubled after each failed try.
        package var rejoinDelay: Duration
        /// Time between XEP-0410 self-pings while joined; nil: off.
        package var selfPing: Duration?
        /// No self-presence (and no error) this long after a join: the join is retried.
        package var joinTimeout: Duration
        /// The cap of the rejoin backoff.
        package var backoffCap: Duration
        /// Nicks tried on conflicts before the room counts as failed (SPEC: three).
        package var nickTries: Int

        package init(nick: String, rejoinDelay: Duration = .seconds(5), selfPing: Duration? = .seconds(300),
                     joinTimeout: Duration = .seconds(30), backoffCap: Duration = .seconds(300), nickTries: Int = 3) {
            self.nick = nick
            self.rejoinDelay = rejoinDelay
            self.selfPing = selfPing
            self.joinTimeout = joinTimeout
            self.backoffCap = backoffCap
            self.nickTries = max(1, nickTries)
        }
    }

    /// The state `GET /rest/rooms` reports.
    package enum Phase: String, Sendable, Hashable {
        case joining, joined, rejoining, banned, failed
        /// Left on purpose (the room was removed from the configuration); nothing more happens.
        case left
    }

    package enum State: Sendable, Hashable {
        /// The link is down (or never came up): the room is joined when it comes up.
        case offline
        /// A join presence for `nick` (try `attempt`, from 0) is out; retried at `deadline` without an answer.
        case joining(nick: String, attempt: Int, deadline: Instant)
        /// Our self-presence (status 110) came back as `nick`. `nextPing` is when the next self-ping is due; nil
        /// while one is out (or self-pings are off).
        case joined(nick: String, nextPing: Instant?)
        /// Out of the room; joined again at `until` (`failed`: for a reason an operator should look at).
        case waiting(until: Instant, failed: Bool)
        /// Banned (301 or forbidden on join): never rejoined.
        case banned
        case left
    }

    /// Why the room was left or could not be joined, for the log.
    package enum Report: Sendable, Hashable {
        case joined(nick: String)
        /// The nick was taken; the next join tries `next`.
        case nickTaken(nick: String, next: String)
        /// All nicks were taken.
        case nickExhausted(tried: [String])
        /// Out of the room with these status codes (307 kick, 332 shutdown, 321/322 affiliation, or none).
        case removed(codes: [Int])
        case destroyed(reason: String?)
        case banned
        /// The join was refused with this condition.
        case joinRefused(condition: String)
        case joinTimedOut
        /// A self-ping said we are no longer an occupant (a condition, or "timeout").
        case selfPingFailed(condition: String)
        /// The room refused a message of ours because we are not an occupant.
        case notAnOccupant
        /// The rejoin is due in `after`.
        case rejoinScheduled(after: Duration)
    }

    package enum Action: Sendable, Hashable {
        /// Send the join presence (muc `<x>` with password and history) to room/nick.
        case join(nick: String)
        /// Ask for a new nick while joined: presence without `<x>` to room/nick.
        case changeNick(to: String)
        /// Send unavailable presence to room/nick.
        case leave(nick: String)
        /// Send an XEP-0410 ping to room/nick and report the answer with `selfPingAnswered`.
        case selfPing(nick: String)
        /// Log this.
        case report(Report)
    }

    /// What our own presence in the room said.
    package enum SelfPresence: Sendable, Hashable {
        /// Available with status 110, as `nick`.
        case available(nick: String)
        /// Unavailable with status 110 (and these codes); `newNick` with 303 (a nick change, not a leave);
        /// `destroyed` when it carries `<destroy/>` (its reason, if any).
        case unavailable(codes: [Int], newNick: String?, destroyed: Bool, reason: String?)
        /// A presence error from room/nick (a refused join or nick change).
        case error(condition: String)
    }

    /// How a self-ping ended.
    package enum PingAnswer: Sendable, Hashable {
        case result
        case error(condition: String)
        case timeout
    }

    package private(set) var settings: Settings
    package private(set) var state: State = .offline
    /// Failed tries since we were last joined: the exponent of the backoff.
    package private(set) var failures = 0
    private var linkUp = false
    /// The link has been up at least once: before that a room is still to be joined, after it to be rejoined.
    private var linkSeen = false

    package init(settings: Settings) {
        self.settings = settings
    }

    package var phase: Phase {
        switch state {
        case .offline: linkSeen ? .rejoining : .joining
        case .joining: .joining
        case .joined: .joined
        case .waiting(_, let failed): failed ? .failed : .rejoining
        case .banned: .banned
        case .left: .left
        }
    }

    /// Our nick while joined (or the one being tried).
    package var nick: String {
        switch state {
        case .joined(let nick, _), .joining(let nick, _, _): nick
        default: settings.nick
        }
    }

    package var isJoined: Bool { if case .joined = state { true } else { false } }

    /// When `due(at:)` next has something to do; nil when nothing is due until an event.
    package var nextDeadline: Instant? {
        switch state {
        case .joining(_, _, let deadline): deadline
        case .joined(_, let nextPing): nextPing
        case .waiting(let until, _): linkUp ? until : nil
        case .offline, .banned, .left: nil
        }
    }

    // MARK: Events

    /// The link came up (every time): join now, unless banned or left.
    package mutating func linkUp(at now: Instant) -> [Action] {
        linkUp = true
        linkSeen = true
        switch state {
        case .banned, .left: return []
        case .waiting(let until, _) where until > now: return []
        default: return join(at: now, attempt: 0)
        }
    }

    /// The link went down: the room is joined again when it is back (a waiting rejoin keeps its time).
    package mutating func linkDown(at now: Instant) {
        linkUp = false
        switch state {
        case .joining, .joined: state = .offline
        case .offline, .waiting, .banned, .left: break
        }
    }

    /// Our own presence arrived from the room.
    package mutating func selfPresence(_ presence: SelfPresence, at now: Instant) -> [Action] {
        if case .left = state { return [] }
        if case .banned = state { return [] }
        switch presence {
        case .available(let nick):
            let wasJoined = isJoined
            failures = 0
            state = .joined(nick: nick, nextPing: settings.selfPing.map { now + $0 })
            return wasJoined ? [] : [.report(.joined(nick: nick))]
        case .unavailable(let codes, let newNick, let destroyed, let reason):
            if codes.contains(303), let newNick, case .joined(_, let nextPing) = state {
                // Our nick changed (we asked for it): the available presence with the new nick follows.
                state = .joined(nick: newNick, nextPing: nextPing)
                return []
            }
            if codes.contains(301) {
                state = .banned
                return [.report(.banned)]
            }
            let report: Report = destroyed ? .destroyed(reason: reason) : .removed(codes: codes)
            return [.report(report)] + waitThenRejoin(at: now, failed: false)
        case .error(let condition):
            return joinError(condition, at: now)
        }
    }

    /// A self-ping was answered (or not). XEP-0410 §3.2: a result, service-unavailable and
    /// feature-not-implemented mean still joined; remote-server-not-found / -timeout mean the room cannot be
    /// reached just now (ask again later); anything else, and no answer at all, means we are out: rejoin.
    package mutating func selfPingAnswered(_ answer: PingAnswer, at now: Instant) -> [Action] {
        guard case .joined(let nick, nil) = state, settings.selfPing != nil else { return [] }
        let condition: String
        switch answer {
        case .result:
            state = .joined(nick: nick, nextPing: settings.selfPing.map { now + $0 })
            return []
        case .error(let value) where Self.stillJoined.contains(value) || Self.unreachable.contains(value):
            state = .joined(nick: nick, nextPing: settings.selfPing.map { now + $0 })
            return []
        case .error(let value):
            condition = value
        case .timeout:
            condition = "timeout"
        }
        return [.report(.selfPingFailed(condition: condition))] + join(at: now, attempt: 0)
    }

    /// The room refused one of our messages with not-acceptable (XEP-0045 §7.4: not an occupant): it lost us
    /// without telling. Rejoin at once, as after a failed self-ping.
    package mutating func refusedAsNonOccupant(at now: Instant) -> [Action] {
        guard isJoined else { return [] }
        return [.report(.notAnOccupant)] + join(at: now, attempt: 0)
    }

    static let stillJoined: Set<String> = ["service-unavailable", "feature-not-implemented"]
    static let unreachable: Set<String> = ["remote-server-not-found", "remote-server-timeout"]

    /// The clock: joins that got no answer are retried, waits end, self-pings go out.
    package mutating func due(at now: Instant) -> [Action] {
        switch state {
        case .joining(_, _, let deadline) where now >= deadline:
            return [.report(.joinTimedOut)] + waitThenRejoin(at: now, failed: false)
        case .waiting(let until, _) where linkUp && now >= until:
            return join(at: now, attempt: 0)
        case .joined(let nick, let nextPing?) where now >= nextPing:
            state = .joined(nick: nick, nextPing: nil)
            return [.selfPing(nick: nick)]
        default:
            return []
        }
    }

    /// The room was removed from the configuration: leave it for good.
    package mutating func leave() -> [Action] {
        defer { state = .left }
        switch state {
        case .joined(let nick, _), .joining(let nick, _, _): return linkUp ? [.leave(nick: nick)] : []
        default: return []
        }
    }

    /// A reload changed the settings: a new nick is asked for at once while joined, and used for every later join;
    /// self-pings turned on start now.
    package mutating func update(_ settings: Settings, at now: Instant) -> [Action] {
        let old = self.settings
        self.settings = settings
        if old.selfPing == nil, let interval = settings.selfPing, case .joined(let nick, nil) = state {
            state = .joined(nick: nick, nextPing: now + interval)
        }
        guard old.nick != settings.nick else { return [] }
        switch state {
        case .joined(let nick, let nextPing) where linkUp && nick != settings.nick:
            state = .joined(nick: nick, nextPing: nextPing)
            return [.changeNick(to: settings.nick)]
        default:
            return []
        }
    }

    // MARK: Helpers

    /// `nick`, `nick_`, `nick__`, … for try `attempt`.
    package func nick(forAttempt attempt: Int) -> String {
        settings.nick + String(repeating: "_", count: attempt)
    }

    private mutating func join(at now: Instant, attempt: Int) -> [Action] {
        guard linkUp else {
            state = .offline
            return []
        }
        let nick = nick(forAttempt: attempt)
        state = .joining(nick: nick, attempt: attempt, deadline: now + settings.joinTimeout)
        return [.join(nick: nick)]
    }

    private mutating func joinError(_ condition: String, at now: Instant) -> [Action] {
        guard case .joining(let nick, let attempt, _) = state else {
            // An error while joined (e.g. a refused nick change) leaves us where we are.
            return []
        }
        switch condition {
        case "conflict":
            if attempt + 1 < settings.nickTries {
                let next = self.nick(forAttempt: attempt + 1)
                return [.report(.nickTaken(nick: nick, next: next))] + join(at: now, attempt: attempt + 1)
            }
            let tried = (0..<settings.nickTries).map { self.nick(forAttempt: $0) }
            return [.report(.nickExhausted(tried: tried))] + waitThenRejoin(at: now, failed: true)
        case "forbidden":
            state = .banned
            return [.report(.banned)]
        case "not-authorized", "registration-required", "not-allowed", "jid-malformed", "not-acceptable":
            // Wrong password, members only, room creation refused, bad nick: an operator must act; tried again slowly.
            return [.report(.joinRefused(condition: condition))] + waitThenRejoin(at: now, failed: true)
        default:
            return [.report(.joinRefused(condition: condition))] + waitThenRejoin(at: now, failed: false)
        }
    }

    /// Out of the room: the next join after `rejoinDelay × 2^failures`, capped.
    private mutating func waitThenRejoin(at now: Instant, failed: Bool) -> [Action] {
        let delay = backoff()
        failures += 1
        state = .waiting(until: now + delay, failed: failed)
        return [.report(.rejoinScheduled(after: delay))]
    }

    package func backoff() -> Duration {
        var delay = settings.rejoinDelay
        for _ in 0..<min(failures, 20) {
            delay *= 2
            if delay >= settings.backoffCap { return settings.backoffCap }
        }
        return min(delay, settings.backoffCap)
    }
}
