// An `exec` route's handler (SPEC §5): one process per stanza, stanza on stdin, reply on stdout.

import Logging
import Routing
import XMPPCore

package struct ProcessHandler: StanzaHandler {
    package struct Settings: Sendable {
        package var argv: [String]
        package var format: HandlerFormat
        package var timeout: Duration
        package var killGrace: Duration
        package var env: [String: String]
        package var passEnv: [String]
        /// stanzad's own environment, for PATH and `pass_env` only.
        package var parentEnvironment: [String: String]
        package var workdir: String
        package var maxOutput: Int
        package var maxStanza: Int

        package init(argv: [String], format: HandlerFormat, timeout: Duration = .seconds(10), killGrace: Duration = .seconds(2),
                    env: [String: String] = [:], passEnv: [String] = [], parentEnvironment: [String: String] = [:],
                    workdir: String = ".", maxOutput: Int = 262_144, maxStanza: Int = 524_288) {
            self.argv = argv
            self.format = format
            self.timeout = timeout
            self.killGrace = killGrace
            self.env = env
            self.passEnv = passEnv
            self.parentEnvironment = parentEnvironment
            self.workdir = workdir
            self.maxOutput = maxOutput
            self.maxStanza = maxStanza
        }
    }

    package let settings: Settings
    /// `[limits] max_processes`, shared by every process-running route.
    package let processes: AdmissionGate

    package init(settings: Settings, processes: AdmissionGate) {
        self.settings = settings
        self.processes = processes
    }

    package func handle(_ stanza: Stanza, context: HandlerContext) async -> HandlerOutcome {
        let input: [UInt8]
        do {
            input = try HandlerInput.stdin(for: stanza, format: settings.format, room: context.room)
        } catch {
            return .failed(.modify, .badRequest, metadata: ["problem": "\(error)"])
        }
        let environment = HandlerInput.environment(
            for: stanza, route: context.route, component: context.component, env: settings.env,
            passEnv: settings.passEnv, parent: settings.parentEnvironment, room: context.room)
        guard let result = await run(stdin: input, environment: environment, logger: context.logger) else {
            return .leftAtShutdown
        }
        return outcome(of: result, for: stanza, logger: context.logger)
    }

    /// Runs the program once with `stdin` and `environment` within `[limits] max_processes`, its stderr logged.
    /// nil: it never started (the task was cancelled or stanzad shuts down while waiting for the process limit).
    package func run(stdin input: [UInt8], environment: [String: String], logger: Logger) async -> ProcessResult? {
        let spec = ProcessSpec(
            argv: settings.argv, environment: environment,
            workdir: settings.workdir, stdin: input, timeout: settings.timeout, killGrace: settings.killGrace,
            maxOutput: settings.maxOutput)

        // Waiting for the process limit ends without a process when the task is cancelled or stanzad shuts down.
        guard await processes.acquire() else { return nil }
        if Task.isCancelled {
            processes.release()
            return nil
        }
        let result = await ProcessRunner.run(spec) { line, pid in
            logger.warning("handler stderr", metadata: ["pid": "\(pid)", "line": "\(line)"])
        }
        processes.release()
        return result
    }

    /// Shutdown: stanzas waiting for `[limits] max_processes` never start a process.
    package func shutDown() {
        processes.close()
    }

    /// Maps a finished process to replies or an error (SPEC §5.2, §5.3).
    func outcome(of result: ProcessResult, for stanza: Stanza, logger: Logger) -> HandlerOutcome {
        var metadata: Logger.Metadata = [:]
        if let pid = result.pid { metadata["pid"] = "\(pid)" }
        if result.escapedKilled > 0 {
            metadata["escaped_killed"] = "\(result.escapedKilled)"
            logger.notice("adopted processes killed after the handler ended", metadata: metadata)
        }
        switch result.ending {
        case .exited(0):
            metadata["exit"] = "0"
            do {
                let replies = try HandlerOutput.replies(
                    from: result.stdout, format: settings.format, incoming: stanza, maxStanza: settings.maxStanza)
                return HandlerOutcome(replies: replies, metadata: metadata)
            } catch {
                logger.error("handler output rejected", metadata: [
                    "problem": "\(error.description)", "excerpt": "\(error.excerpt)",
                ])
                metadata["problem"] = "\(error.description)"
                return .failed(.cancel, .internalServerError, metadata: metadata)
            }
        case .exited(let code):
            metadata["exit"] = "\(code)"
            var outcome = HandlerOutput.failure(exitCode: code, stdout: result.stdout, format: settings.format, incoming: stanza)
            outcome.metadata = metadata
            return outcome
        case .signaled(let signal):
            metadata["signal"] = "\(signal)"
            return .failed(.cancel, .internalServerError, metadata: metadata)
        case .timedOut:
            metadata["timeout_s"] = "\(settings.timeout.components.seconds)"
            logger.warning("handler timed out; its process group was killed", metadata: metadata)
            return .failed(.wait, .remoteServerTimeout, metadata: metadata)
        case .outputTooLarge:
            metadata["problem"] = "stdout over max_output (\(settings.maxOutput) bytes)"
            logger.error("handler output rejected", metadata: ["problem": "stdout over max_output (\(settings.maxOutput) bytes); the handler was stopped"])
            return .failed(.cancel, .internalServerError, metadata: metadata)
        case .statusLost:
            metadata["problem"] = "exit status lost"
            logger.error("handler exit status lost; its output is discarded", metadata: [
                "problem": "the process was reaped by someone else (ECHILD), so how it ended is unknown",
            ])
            return .failed(.cancel, .internalServerError, metadata: metadata)
        case .spawnFailed(let reason):
            logger.error("handler could not be started", metadata: [
                "argv0": "\(settings.argv.first ?? "")", "problem": "\(reason)",
                "hint": "check that the file exists, is executable (chmod +x) and that workdir exists; `stanzad check` tests this",
            ])
            metadata["problem"] = "spawn failed"
            return .failed(.cancel, .internalServerError, metadata: metadata)
        }
    }
}
