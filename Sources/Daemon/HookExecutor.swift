// Runs `[[hook]]` handlers (SPEC §16) for the REST API: one process per request on the executor's process loop,
// under the shared `[limits] max_processes`, with the clean environment of SPEC §5.1 plus the hook's variables.

import Executor
import FastCGIFront
import Logging
import Routing
import Synchronization

final class HookExecutor: HookRunner {
    struct Hook: Sendable {
        var argv: [String]
        var timeout: Duration
        var env: [String: String]
        var passEnv: [String]
        var workdir: String
        var maxOutput: Int
    }

    let processes: AdmissionGate
    let killGrace: Duration
    let parentEnvironment: [String: String]
    let component: String
    let logger: Logger
    private let hooks: Mutex<[String: Hook]>

    init(hooks: [String: Hook], processes: AdmissionGate, killGrace: Duration, parentEnvironment: [String: String],
         component: String, logger: Logger) {
        self.hooks = Mutex(hooks)
        self.processes = processes
        self.killGrace = killGrace
        self.parentEnvironment = parentEnvironment
        self.component = component
        self.logger = logger
    }

    /// SIGHUP: the hooks from now on.
    func reload(_ hooks: [String: Hook]) {
        self.hooks.withLock { $0 = hooks }
    }

    @discardableResult
    func run(_ invocation: HookInvocation, completion: @escaping @Sendable (HookEnding) -> Void) -> RestCancellation? {
        guard let hook = hooks.withLock({ $0[invocation.hook] }) else {
            completion(.failed("hook \(invocation.hook) is no longer configured"))
            return nil
        }
        // A hook never waits for a handler slot: the HTTP client is told to come back instead.
        guard processes.tryAcquire() else {
            completion(.busy)
            return nil
        }
        var environment = HandlerInput.baseEnvironment(
            route: invocation.hook, component: component, env: hook.env, passEnv: hook.passEnv, parent: parentEnvironment)
        environment["STANZAD_ROUTE"] = nil
        // The operator's env and pass_env win over a request header of the same name.
        environment.merge(invocation.environment) { configured, _ in configured }
        let spec = ProcessSpec(
            argv: hook.argv, environment: environment, workdir: hook.workdir, stdin: invocation.stdin, timeout: hook.timeout,
            killGrace: killGrace, maxOutput: hook.maxOutput)
        var handlerLogger = logger
        handlerLogger[metadataKey: "hook"] = "\(invocation.hook)"
        let log = handlerLogger
        let processes = self.processes
        // Stopped like at its timeout when its client goes away or stanzad shuts down.
        let stop = ProcessRunner.start(spec, stderrLine: { line, pid in
            log.warning("handler stderr", metadata: ["pid": "\(pid)", "line": "\(line)"])
        }) { result in
            processes.release()
            switch result.ending {
            case .exited(let code):
                completion(.exited(code, stdout: result.stdout))
            case .timedOut:
                completion(.timedOut)
            case .signaled(let signal):
                completion(.failed("killed by signal \(signal)"))
            case .outputTooLarge:
                completion(.failed("output over max_output (\(hook.maxOutput) bytes)"))
            case .spawnFailed(let reason):
                completion(.failed("cannot start \(hook.argv.first ?? ""): \(reason)"))
            case .statusLost:
                completion(.failed("exit status lost"))
            }
        }
        return RestCancellation(stop)
    }
}

extension StanzadConfig {
    /// The hooks as the REST API checks them.
    var hookSettings: [HookSettings] {
        hooks.map { hook in
            let auth: HookSettings.Auth
            switch hook.auth {
            case .credentials: auth = .credentials
            case .hmac: auth = .hmac(secret: Array((hook.hmacSecret ?? "").utf8), header: hook.hmacHeader)
            case .none: auth = .none
            }
            return HookSettings(name: hook.name, auth: auth, to: hook.to)
        }
    }

    /// The hooks as the executor runs them.
    var hookPrograms: [String: HookExecutor.Hook] {
        Dictionary(hooks.map { hook in
            (hook.name, HookExecutor.Hook(argv: hook.argv, timeout: .seconds(hook.timeout), env: hook.env,
                                         passEnv: hook.passEnv, workdir: hook.workdir, maxOutput: hook.maxOutput))
        }, uniquingKeysWith: { $1 })
    }
}
