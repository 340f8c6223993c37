// Turns the configured `[[route]]` tables into routing rules with their handlers.

import Executor
import Logging
import Routing
import XMPPCore

enum RouteFactory {
    /// The routes, and the worker pools among their handlers (services the ServiceGroup must run).
    static func build(_ config: StanzadConfig, environment: [String: String], logger: Logger) -> (routes: [Route], pools: [WorkerPool]) {
        let processes = AdmissionGate(concurrency: config.maxProcesses, queue: nil)
        var pools: [WorkerPool] = []
        let routes = config.routes.map { route in
            let format = HandlerFormat(rawValue: route.format) ?? .text
            let rule = RouteRule(
                kinds: Set(route.kinds), types: route.types.map(Set.init), to: route.to, from: route.from,
                body: route.body.flatMap { try? BodyPattern($0) }, requiresBody: format == .text)
            let handler: any StanzaHandler
            switch route.target {
            case .exec(let argv):
                handler = ProcessHandler(
                    settings: .init(
                        argv: argv, format: format, timeout: .seconds(route.timeout), killGrace: .seconds(config.killGrace),
                        env: route.env, passEnv: route.passEnv, parentEnvironment: environment, workdir: route.workdir,
                        maxOutput: route.maxOutput, maxStanza: config.component.maxStanza),
                    processes: processes)
            case .worker(let argv):
                let pool = WorkerPool(
                    settings: .init(
                        route: route.name, argv: argv,
                        environment: HandlerInput.baseEnvironment(
                            route: route.name, component: config.component.jid, env: route.env, passEnv: route.passEnv,
                            parent: environment),
                        workdir: route.workdir, workers: route.workers, inFlight: route.inFlight,
                        maxRequests: route.maxRequests, timeout: .seconds(route.timeout),
                        killGrace: .seconds(config.killGrace), maxLine: route.maxOutput),
                    logger: logger)
                pools.append(pool)
                handler = WorkerHandler(pool: pool)
            case .webhook:
                handler = NotYetAvailableHandler(target: "webhook")
            }
            return Route(name: route.name, rule: rule, handler: handler, concurrency: route.concurrency, queue: route.queue)
        }
        return (routes, pools)
    }
}

/// Stands in for targets this build does not run yet: answers feature-not-implemented and says so.
struct NotYetAvailableHandler: StanzaHandler {
    let target: String

    func handle(_ stanza: Stanza, context: HandlerContext) async -> HandlerOutcome {
        context.logger.error("route target not available in this build", metadata: ["target": "\(target)"])
        return .failed(.cancel, .featureNotImplemented, text: "\(target) routes are not available in this build of stanzad")
    }
}

extension StanzadConfig {
    /// The built-in responders of SPEC §10 for this configuration.
    func builtInResponder() -> BuiltInResponder {
        BuiltInResponder(
            domain: component.jid, discoName: discoName, presenceAuto: presenceAuto,
            items: routes.flatMap { $0.to ?? [] }.map(\.pattern).filter { !$0.contains("*") && $0.contains("@") },
            softwareVersion: StanzadVersion.string)
    }
}
