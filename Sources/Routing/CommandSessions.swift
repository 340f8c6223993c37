// The ad-hoc command sessions of the daemon (SPEC §15): CommandSessionTable under a lock, and a service that
// sleeps until the table's next deadline and expires what is due (woken early when a session gets an earlier
// deadline). Kept across reloads; one table for every command, each with its own limit.

import Logging
import ServiceLifecycle
import Synchronization
import XMPPCore

package final class CommandSessions: Service, Sendable {
    private struct State {
        var table = CommandSessionTable()
        /// The deadline the expiry loop sleeps until (nil: it waits for a wake-up).
        var armed: ContinuousClock.Instant?
    }

    private let state = Mutex(State())
    private let wakes: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation
    let logger: Logger

    package init(logger: Logger) {
        (wakes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        self.logger = logger
    }

    package var count: Int { state.withLock { $0.table.count } }
    package var countsByCommand: [String: Int] { state.withLock { $0.table.countsByCommand } }

    /// The open session `id`, as it is now.
    package func session(id: String) -> CommandSessionTable.Session? {
        state.withLock { $0.table.sessions[id] }
    }

    /// A first step: a new session id, or why not.
    package func open(command: String, node: String, jid: String, owner: String, limit: Int) -> Result<String, CommandSessionTable.Refusal> {
        let id = RandomID.make()
        let (refusal, open) = state.withLock { state in
            (state.table.open(id: id, command: command, node: node, jid: jid, owner: owner, limit: limit), state.table.count)
        }
        if let refusal {
            logger.warning("command session limit reached; the request is refused", metadata: [
                "command": "\(command)", "from": "\(owner)", "limit": "\(limit)",
            ])
            return .failure(refusal)
        }
        logger.debug("command session opened", metadata: ["command": "\(command)", "session": "\(id)", "open": "\(open)"])
        return .success(id)
    }

    package func resume(id: String, node: String, jid: String, owner: String, action: AdHocCommand.Action) -> Result<CommandSessionTable.Session, CommandSessionTable.Refusal> {
        state.withLock { $0.table.resume(id: id, node: node, jid: jid, owner: owner, action: action, now: .now) }
    }

    /// The step answered `executing`: the session waits `timeout` for the next one.
    package func park(id: String, value: JSONValue?, form: DataForm?, allowed: Set<AdHocCommand.Action>,
                      defaultAction: AdHocCommand.Action? = nil, timeout: Duration) {
        let deadline = ContinuousClock.now + timeout
        let wakeUp = state.withLock { state -> Bool in
            state.table.park(id: id, value: value, form: form, allowed: allowed, defaultAction: defaultAction, until: deadline)
            guard state.armed.map({ deadline < $0 }) ?? true else { return false }
            state.armed = deadline
            return true
        }
        if wakeUp { wake.yield() }
    }

    @discardableResult
    package func close(id: String, node: String? = nil, jid: String? = nil, owner: String? = nil, reason: String) -> CommandSessionTable.Session? {
        let (session, open) = state.withLock { state in
            (state.table.close(id: id, node: node, jid: jid, owner: owner), state.table.count)
        }
        if let session {
            logger.debug("command session closed", metadata: [
                "command": "\(session.command)", "session": "\(id)", "reason": "\(reason)", "open": "\(open)",
            ])
        }
        return session
    }

    /// Expires what is due now; returns the next deadline (armed: the loop sleeps until it).
    func expireDue() -> ContinuousClock.Instant? {
        let now = ContinuousClock.now
        let (expired, open, next) = state.withLock { state in
            let expired = state.table.expire(now: now)
            let next = state.table.nextDeadline
            state.armed = next
            return (expired, state.table.count, next)
        }
        if !expired.isEmpty {
            var byCommand: [String: Int] = [:]
            for session in expired { byCommand[session.command, default: 0] += 1 }
            logger.notice("command sessions expired", metadata: [
                "expired": "\(expired.count)", "open": "\(open)",
                "commands": "\(byCommand.keys.sorted().map { "\($0):\(byCommand[$0] ?? 0)" }.joined(separator: ","))",
            ])
        }
        return next
    }

    package func run() async throws {
        var wakes = self.wakes.cancelOnGracefulShutdown().makeAsyncIterator()
        while true {
            let deadline = expireDue()
            let wake = self.wake
            // A fresh group per round: the sleeper of the last round is cancelled once anything wakes the loop.
            let more = await withDiscardingTaskGroup(returning: Bool.self) { group in
                if let deadline {
                    group.addTask {
                        guard (try? await Task.sleep(until: deadline, clock: .continuous)) != nil else { return }
                        wake.yield()
                    }
                }
                let more = await wakes.next() != nil
                group.cancelAll()
                return more
            }
            if !more { return }
        }
    }
}
