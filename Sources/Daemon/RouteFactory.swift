// Turns the configured `[[route]]` tables into routing rules with their handlers.

import Executor
import Logging
import Routing
import Webhooks
import XMPPCore

enum RouteFactory {
    /// The routes, and the worker pools among their handlers (services the ServiceGroup must run).
    /// `client` is the HTTP client for webhook routes (created only when there are any; shut it down at exit).
    static func build(_ config: StanzadConfig, environment: [String: String], logger: Logger)
        -> (routes: [Route], pools: [WorkerPool], client: WebhookClient?)
    {
        let processes = AdmissionGate(concurrency: config.maxProcesses, queue: nil)
        var pools: [WorkerPool] = []
        let client: WebhookClient? = config.routes.contains { if case .webhook = $0.target { true } else { false } }
            ? WebhookClient() : nil
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
            case .webhook(let url):
                handler = WebhookHandler(
                    settings: WebhookSettings(
                        urlTemplate: url, format: format, headers: route.headers, hmacSecret: route.hmacSecret,
                        timeout: .seconds(route.timeout), retries: route.retries, maxBody: route.maxOutput,
                        maxStanza: config.component.maxStanza, userAgent: "stanzad/\(StanzadVersion.string)"),
                    client: client ?? WebhookClient())
            }
            return Route(name: route.name, rule: rule, handler: handler, concurrency: route.concurrency, queue: route.queue)
        }
        return (routes, pools, client)
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
