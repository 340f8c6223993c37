// The open ad-hoc command sessions (SPEC §15), as a pure state machine: time comes in with each event and
// the table says when it next needs to expire something. A session is `running` while one of its steps is
// with the handler, and `waiting` (until a deadline) between steps.

import XMPPCore

package struct CommandSessionTable: Sendable {
    package enum State: Hashable, Sendable {
        case running
        case waiting(until: ContinuousClock.Instant)
    }

    package struct Session: Hashable, Sendable {
        package var id: String
        /// The command's route name (several commands share the table; each has its own limit).
        package var command: String
        package var node: String
        /// The offering JID the session was started at.
        package var jid: String
        /// The requester's full JID: only it may continue the session.
        package var owner: String
        /// What the handler returned with its last step.
        package var value: JSONValue?
        /// The form of the last step: its field types read the submitted data.
        package var form: DataForm?
        /// What the requester may send next.
        package var allowed: Set<AdHocCommand.Action>
        /// What `execute` means at the next step (the `execute` attribute of the last step's `<actions/>`).
        package var defaultAction: AdHocCommand.Action? = nil
        package var state: State
    }

    /// Why a session cannot be opened or continued; each becomes a XEP-0050 error.
    package enum Refusal: Error, Hashable, Sendable {
        /// The command has `limit` sessions open already.
        case limitReached(limit: Int)
        /// No such session for this requester, node and JID (never existed, completed, canceled, or expired and swept).
        case unknownSession
        /// The session was there but its time ran out.
        case expired
        /// A step of the session is still with the handler.
        case busy
        /// The action is not one the last step offered.
        case actionNotOffered(allowed: Set<AdHocCommand.Action>)
    }

    package private(set) var sessions: [String: Session] = [:]
    private var counts: [String: Int] = [:]

    package init() {}

    package var count: Int { sessions.count }

    /// Open sessions by command.
    package var countsByCommand: [String: Int] { counts }

    package func count(command: String) -> Int { counts[command] ?? 0 }

    /// A first step: a new session `id`, running. Refused when `command` has `limit` sessions.
    package mutating func open(id: String, command: String, node: String, jid: String, owner: String, limit: Int) -> Refusal? {
        guard count(command: command) < limit else { return .limitReached(limit: limit) }
        sessions[id] = Session(id: id, command: command, node: node, jid: jid, owner: owner, value: nil, form: nil,
                               allowed: [], state: .running)
        counts[command, default: 0] += 1
        return nil
    }

    /// A later step of session `id`: it must belong to `owner` at this node and JID, wait for a step, not be expired
    /// and offer `action` (cancel is `close`). The session is running afterwards; an offered-action refusal leaves it
    /// waiting as it was.
    package mutating func resume(id: String, node: String, jid: String, owner: String, action: AdHocCommand.Action,
                                 now: ContinuousClock.Instant) -> Result<Session, Refusal> {
        guard var session = sessions[id], session.node == node, session.jid == jid, session.owner == owner else {
            return .failure(.unknownSession)
        }
        guard case .waiting(let deadline) = session.state else { return .failure(.busy) }
        guard deadline > now else {
            remove(id)
            return .failure(.expired)
        }
        guard session.allowed.contains(action) else { return .failure(.actionNotOffered(allowed: session.allowed)) }
        session.state = .running
        sessions[id] = session
        return .success(session)
    }

    /// A step answered `executing`: the session waits for the next one until `deadline`.
    package mutating func park(id: String, value: JSONValue?, form: DataForm?, allowed: Set<AdHocCommand.Action>,
                               defaultAction: AdHocCommand.Action? = nil, until deadline: ContinuousClock.Instant) {
        guard var session = sessions[id] else { return }
        session.value = value
        session.form = form
        session.allowed = allowed
        session.defaultAction = defaultAction
        session.state = .waiting(until: deadline)
        sessions[id] = session
    }

    /// The session ends (completed, canceled, failed). Cancel checks the owner: `owner` nil skips the check.
    @discardableResult
    package mutating func close(id: String, node: String? = nil, jid: String? = nil, owner: String? = nil) -> Session? {
        guard let session = sessions[id] else { return nil }
        if let node, session.node != node { return nil }
        if let jid, session.jid != jid { return nil }
        if let owner, session.owner != owner { return nil }
        remove(id)
        return session
    }

    /// Removes the waiting sessions whose deadline is at or before `now`; returns them.
    package mutating func expire(now: ContinuousClock.Instant) -> [Session] {
        var expired: [Session] = []
        for (id, session) in sessions {
            if case .waiting(let deadline) = session.state, deadline <= now {
                expired.append(session)
                remove(id)
            }
        }
        return expired
    }

    /// The earliest deadline of a waiting session: when `expire` next has work.
    package var nextDeadline: ContinuousClock.Instant? {
        var earliest: ContinuousClock.Instant?
        for session in sessions.values {
            if case .waiting(let deadline) = session.state, earliest.map({ deadline < $0 }) ?? true { earliest = deadline }
        }
        return earliest
    }

    private mutating func remove(_ id: String) {
        guard let session = sessions.removeValue(forKey: id) else { return }
        let left = (counts[session.command] ?? 1) - 1
        counts[session.command] = left > 0 ? left : nil
    }
}
