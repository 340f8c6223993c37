// A `[[command]]` (SPEC §15): an ad-hoc command whose steps are handler runs, through the same spawner
// (ProcessHandler) or worker pool as routes. stanzad owns the session: its id, the handler's `session` value
// between steps, `cancel`, the `from` allowlist, the session limit and expiry (CommandSessions).

import Logging
import Routing
import XMPPCore

package struct CommandHandler: StanzaHandler {
    package struct Settings: Sendable {
        /// The route name (`command:<node>`), also the session table's key for the limit.
        package var name: String
        package var node: String
        /// The offering bare JID.
        package var jid: String
        /// nil: anyone may run it.
        package var from: [JIDPattern]?
        /// text or json.
        package var format: HandlerFormat
        package var sessionTimeout: Duration
        package var maxSessions: Int

        package init(name: String, node: String, jid: String, from: [JIDPattern]?, format: HandlerFormat,
                     sessionTimeout: Duration = .seconds(600), maxSessions: Int = 1000) {
            self.name = name
            self.node = node
            self.jid = jid.lowercased()
            self.from = from
            self.format = format
            self.sessionTimeout = sessionTimeout
            self.maxSessions = maxSessions
        }
    }

    /// Where a step runs.
    package enum Runner: Sendable {
        case process(ProcessHandler)
        case worker(WorkerPool)
    }

    package let settings: Settings
    package let runner: Runner
    package let sessions: CommandSessions

    package init(settings: Settings, runner: Runner, sessions: CommandSessions) {
        self.settings = settings
        self.runner = runner
        self.sessions = sessions
    }

    package func shutDown() {
        if case .process(let handler) = runner { handler.shutDown() }
    }

    package func handle(_ stanza: Stanza, context: HandlerContext) async -> HandlerOutcome {
        var request: AdHocCommand.Request
        switch AdHocCommand.request(in: stanza) {
        case .success(let parsed): request = parsed
        case .failure(let failure): return refuse(stanza, failure, context: context)
        }
        let owner = stanza.from ?? ""
        guard CommandListing(jid: settings.jid, node: settings.node, name: "", from: settings.from).allows(stanza.from) else {
            return refuse(stanza, .init(StanzaError(.auth, .forbidden, text: "you may not run the command \"\(settings.node)\"")), context: context)
        }
        let sessionID: String
        var session: CommandSessionTable.Session?
        if request.action == .cancel {
            guard let id = request.sessionID else {
                return refuse(stanza, .init(StanzaError(.modify, .badRequest, text: "cancel needs the sessionid of the session to cancel"),
                                            specific: "bad-sessionid"), context: context)
            }
            guard sessions.close(id: id, node: settings.node, jid: settings.jid, owner: owner, reason: "canceled") != nil else {
                return refuse(stanza, Self.unknownSession(id), context: context)
            }
            let reply = AdHocCommand.reply(to: stanza, node: settings.node, sessionID: id, answer: .init(status: .canceled))
            return HandlerOutcome(replies: [reply], metadata: ["command_status": "canceled", "session": "\(id)"])
        } else if let id = request.sessionID {
            switch sessions.resume(id: id, node: settings.node, jid: settings.jid, owner: owner, action: request.action) {
            case .success(let resumed):
                session = resumed
                sessionID = id
                // XEP-0050: execute is the step's default action; the handler is told which one that is.
                if request.action == .execute, let action = resumed.defaultAction { request.action = action }
            case .failure(let refusal):
                return refuse(stanza, Self.failure(for: refusal, sessionID: id, action: request.action, settings: settings), context: context)
            }
        } else {
            guard request.action == .execute else {
                return refuse(stanza, .init(
                    StanzaError(.modify, .badRequest, text: "action \"\(request.action.rawValue)\" needs the sessionid of a running session; start with execute"),
                    specific: "bad-sessionid"), context: context)
            }
            switch sessions.open(command: settings.name, node: settings.node, jid: settings.jid, owner: owner, limit: settings.maxSessions) {
            case .success(let id): sessionID = id
            case .failure(let refusal):
                return refuse(stanza, Self.failure(for: refusal, sessionID: nil, action: request.action, settings: settings), context: context)
            }
        }

        var metadata: Logger.Metadata = ["session": "\(sessionID)", "action": "\(request.action.rawValue)"]
        let answer: AdHocCommand.Answer
        switch await step(stanza, request: request, sessionID: sessionID, session: session, context: context) {
        case .success(let (result, extra)):
            answer = result
            metadata.merge(extra) { $1 }
        case .failure(let failed):
            metadata.merge(failed.metadata) { $1 }
            answer = AdHocCommand.Answer(status: .completed, note: .init(.error, failed.note))
        }
        if answer.status == .executing {
            sessions.park(id: sessionID, value: answer.session, form: answer.form, allowed: answer.allowedNext,
                          defaultAction: answer.actions?.execute, timeout: settings.sessionTimeout)
        } else {
            sessions.close(id: sessionID, reason: answer.note?.type == .error ? "failed" : "completed")
        }
        metadata["command_status"] = "\(answer.status.rawValue)"
        let reply = AdHocCommand.reply(to: stanza, node: settings.node, sessionID: sessionID, answer: answer)
        return HandlerOutcome(replies: [reply], metadata: metadata)
    }

    /// A step that did not give an answer: the note the requester reads, and log fields.
    struct StepFailure: Error {
        var note: String
        var metadata: Logger.Metadata
    }

    /// Runs one step through the handler and reads its answer.
    private func step(_ stanza: Stanza, request: AdHocCommand.Request, sessionID: String, session: CommandSessionTable.Session?,
                      context: HandlerContext) async -> Result<(AdHocCommand.Answer, Logger.Metadata), StepFailure> {
        let input = AdHocCommand.input(for: stanza, request: request, sessionID: sessionID, session: session?.value,
                                       previousForm: session?.form)
        switch runner {
        case .process(let handler):
            let stdin = settings.format == .json ? input.serializedBytes() + [0x0A] : []
            let environment = HandlerInput.environment(
                for: stanza, route: context.route, component: context.component, env: handler.settings.env,
                passEnv: handler.settings.passEnv, parent: handler.settings.parentEnvironment)
            guard let result = await handler.run(stdin: stdin, environment: environment, logger: context.logger) else {
                return .failure(StepFailure(note: "stanzad is shutting down", metadata: ["queue": "left at shutdown"]))
            }
            return answer(of: result, timeout: handler.settings.timeout, logger: context.logger)
        case .worker(let pool):
            guard case .object(let object) = input else {
                return .failure(StepFailure(note: "internal error", metadata: [:]))
            }
            switch await pool.submit(object: object) {
            case .answered(let objects):
                do {
                    return .success((try AdHocCommand.jsonAnswer(objects: objects), [:]))
                } catch {
                    return .failure(rejected(error, excerpt: HandlerOutput.excerpt(objects.first?.serializedBytes() ?? []), logger: context.logger))
                }
            case .failed(let error, let reason):
                return .failure(StepFailure(note: Self.describe(error), metadata: ["problem": "\(reason)"]))
            }
        }
    }

    /// A finished process as a step's answer (SPEC §5.2) or its failure as an error note (§5.3).
    func answer(of result: ProcessResult, timeout: Duration, logger: Logger) -> Result<(AdHocCommand.Answer, Logger.Metadata), StepFailure> {
        var metadata: Logger.Metadata = [:]
        if let pid = result.pid { metadata["pid"] = "\(pid)" }
        switch result.ending {
        case .exited(0):
            metadata["exit"] = "0"
            do {
                let answer = settings.format == .json
                    ? try AdHocCommand.jsonAnswer(result.stdout) : try AdHocCommand.textAnswer(result.stdout)
                return .success((answer, metadata))
            } catch {
                var failure = rejected(error, excerpt: HandlerOutput.excerpt(result.stdout), logger: logger)
                failure.metadata.merge(metadata) { $1 }
                return .failure(failure)
            }
        case .exited(let code):
            metadata["exit"] = "\(code)"
            var error = HandlerOutput.error(forExitCode: code)
            if settings.format == .text, UTF8Validator.isValid(result.stdout) {
                var text = String(decoding: result.stdout, as: UTF8.self)
                while text.last?.isNewline == true { text.removeLast() }
                if !text.isEmpty, text.unicodeScalars.allSatisfy(HandlerOutput.isXMLCharacter) { error.text = text }
            }
            return .failure(StepFailure(note: Self.describe(error), metadata: metadata))
        case .signaled(let signal):
            metadata["signal"] = "\(signal)"
            return .failure(StepFailure(note: Self.describe(StanzaError(.cancel, .internalServerError)), metadata: metadata))
        case .timedOut:
            metadata["timeout_s"] = "\(timeout.components.seconds)"
            logger.warning("handler timed out; its process group was killed", metadata: metadata)
            return .failure(StepFailure(
                note: "the command did not finish within \(timeout.components.seconds) s (wait/remote-server-timeout)", metadata: metadata))
        case .outputTooLarge, .statusLost, .spawnFailed:
            metadata["problem"] = "\(result.ending)"
            logger.error("command handler failed", metadata: metadata)
            return .failure(StepFailure(note: Self.describe(StanzaError(.cancel, .internalServerError)), metadata: metadata))
        }
    }

    private func rejected(_ problem: AdHocCommand.Problem, excerpt: String, logger: Logger) -> StepFailure {
        logger.error("command answer rejected", metadata: ["problem": "\(problem.description)", "excerpt": "\(excerpt)"])
        return StepFailure(note: "the command's handler gave an invalid answer: \(problem.description)",
                           metadata: ["problem": "\(problem.description)"])
    }

    private func refuse(_ stanza: Stanza, _ failure: AdHocCommand.Failure, context: HandlerContext) -> HandlerOutcome {
        HandlerOutcome(replies: [failure.reply(to: stanza, by: context.component)], metadata: ["refused": "\(failure.description)"])
    }

    /// The text of an error note: the handler's own text, or what the condition means.
    static func describe(_ error: StanzaError) -> String {
        if let text = error.text, !text.isEmpty { return text }
        return "the command failed (\(error.type.rawValue)/\(error.condition.rawValue))"
    }

    static func unknownSession(_ id: String) -> AdHocCommand.Failure {
        AdHocCommand.Failure(
            StanzaError(.modify, .badRequest, text: "no open command session \"\(id)\" for you here (it completed, was canceled or expired)"),
            specific: "bad-sessionid")
    }

    static func failure(for refusal: CommandSessionTable.Refusal, sessionID: String?, action: AdHocCommand.Action,
                        settings: Settings) -> AdHocCommand.Failure {
        switch refusal {
        case .limitReached(let limit):
            return .init(StanzaError(
                .wait, .resourceConstraint,
                text: "the command \"\(settings.node)\" has \(limit) sessions open, the most it allows; finish or cancel one, or try again later"))
        case .unknownSession:
            return unknownSession(sessionID ?? "")
        case .expired:
            return .init(StanzaError(.cancel, .notAllowed, text: "the command session expired; start the command again"),
                         specific: "session-expired")
        case .busy:
            return .init(StanzaError(.wait, .unexpectedRequest, text: "the previous step of this session is still running"))
        case .actionNotOffered(let allowed):
            let offered = AdHocCommand.Action.allCases.filter { allowed.contains($0) }.map(\.rawValue).joined(separator: ", ")
            return .init(StanzaError(.modify, .badRequest, text: "action \"\(action.rawValue)\" is not offered at this step (offered: \(offered))"),
                         specific: "bad-action")
        }
    }
}
