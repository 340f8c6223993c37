// Turns the configured `[[route]]` tables into routing rules with their handlers. Kept for the daemon's
// life, so a reload (SIGHUP) shares the process limit and the HTTP client and keeps worker pools (and their
// queued stanzas) by route name; pools whose route a reload removed are stopped.

import Executor
import FastCGIFront
import Logging
import Rooms
import Routing
import ServiceLifecycle
import Synchronization
import Webhooks
import XMPPCore

final class RouteFactory: Sendable {
    let processes: AdmissionGate
    let client: WebhookClient
    let host: WorkerHost
    let environment: [String: String]
    let logger: Logger
    /// The ad-hoc command sessions (SPEC §15), kept across reloads.
    let sessions: CommandSessions
    private let pools = Mutex<[String: WorkerPool]>([:])
    /// The pull routes' queues by route name, kept across reloads (their updates with them).
    private let updateQueues = Mutex<[String: UpdateQueue]>([:])

    /// Every pull route's queue now (for metrics).
    var allQueues: [UpdateQueue] { updateQueues.withLock { Array($0.values) } }
    /// With `[storage]`: where the queues keep their updates, and what it kept from before (taken by the queues as
    /// they are made).
    private let updateStore = Mutex<(store: (any UpdateStore)?, stored: [String: [StoredUpdate]])>((nil, [:]))

    /// Keeps the pull routes' updates in `store`; `stored` is what it kept from before, by route.
    func setUpdateStore(_ store: any UpdateStore, stored: [String: [StoredUpdate]]) {
        updateStore.withLock { $0 = (store, stored) }
    }

    /// The queue of the pull route `name`, if there is one.
    func queue(named name: String) -> UpdateQueue? {
        updateQueues.withLock { $0[name] }
    }

    /// The queues of the pull routes `config` has (removed routes' queues are dropped).
    func queues(for config: StanzadConfig) -> [UpdateQueue] {
        let names = Set(config.routes.filter { $0.target == .pull }.map(\.name))
        let (kept, removed) = updateQueues.withLock { queues -> ([UpdateQueue], [UpdateQueue]) in
            let gone = queues.keys.filter { !names.contains($0) }
            let removed = gone.compactMap { queues.removeValue(forKey: $0) }
            return (Array(queues.values), removed)
        }
        // Their clients are told: long-polls answer empty, event streams end.
        for queue in removed { queue.close() }
        return kept
    }

    init(maxProcesses: Int, environment: [String: String], logger: Logger) {
        self.processes = AdmissionGate(concurrency: maxProcesses, queue: nil)
        self.client = WebhookClient()
        self.host = WorkerHost()
        self.sessions = CommandSessions(logger: logger)
        self.environment = environment
        self.logger = logger
    }

    /// The routes of `config` (only those named in `only`, when given: `stanzad try` starts no other route's
    /// workers). Worker routes reuse the pool of the same name (reloaded with the new settings); new ones start on
    /// the WorkerHost.
    func routes(for config: StanzadConfig, only: Set<String>? = nil) -> [Route] {
        // Commands first: their rules are narrow (an iq set naming their node), so a broad iq route cannot hide them.
        commandRoutes(for: config, only: only) + stanzaRoutes(for: config, only: only)
    }

    /// The `[[command]]`s as routes: a rule matching their node at their JID, a CommandHandler on the same spawner or a
    /// worker pool of its own.
    private func commandRoutes(for config: StanzadConfig, only: Set<String>?) -> [Route] {
        config.commands.filter { only?.contains($0.routeName) ?? true }.map { command in
            let format = HandlerFormat(rawValue: command.format) ?? .text
            let rule = RouteRule(kinds: [.iq], types: ["set"], to: [JIDPattern(command.to)], commandNode: command.node)
            let runner: CommandHandler.Runner
            if case .worker(let argv) = command.target {
                runner = .worker(pool(named: command.routeName, settings: WorkerPool.Settings(
                    route: command.routeName, argv: argv,
                    environment: HandlerInput.baseEnvironment(
                        route: command.routeName, component: config.component.jid, env: command.env, passEnv: command.passEnv,
                        parent: environment),
                    workdir: command.workdir, workers: command.workers, inFlight: command.inFlight,
                    maxRequests: command.maxRequests, timeout: .seconds(command.timeout),
                    killGrace: .seconds(config.killGrace), maxLine: command.maxOutput)))
            } else {
                let argv: [String]
                if case .exec(let configured) = command.target { argv = configured } else { argv = [] }
                runner = .process(ProcessHandler(
                    settings: .init(
                        argv: argv, format: format, timeout: .seconds(command.timeout), killGrace: .seconds(config.killGrace),
                        env: command.env, passEnv: command.passEnv, parentEnvironment: environment, workdir: command.workdir,
                        maxOutput: command.maxOutput, maxStanza: config.component.maxStanza),
                    processes: processes))
            }
            let handler = CommandHandler(
                settings: .init(name: command.routeName, node: command.node, jid: command.to, from: command.from, format: format,
                                sessionTimeout: .seconds(command.sessionTimeout), maxSessions: command.maxSessions),
                runner: runner, sessions: sessions)
            return Route(name: command.routeName, rule: rule, handler: handler, concurrency: command.concurrency, queue: command.queue)
        }
    }

    /// The worker pool named `name`: the existing one reloaded with `settings`, or a new one started on the host.
    private func pool(named name: String, settings: WorkerPool.Settings) -> WorkerPool {
        let (pool, isNew) = pools.withLock { pools -> (WorkerPool, Bool) in
            if let existing = pools[name] { return (existing, false) }
            let pool = WorkerPool(settings: settings, logger: logger)
            pools[name] = pool
            return (pool, true)
        }
        if isNew { host.start(pool) } else { pool.reload(settings) }
        return pool
    }

    private func stanzaRoutes(for config: StanzadConfig, only: Set<String>?) -> [Route] {
        config.routes.filter { only?.contains($0.name) ?? true }.map { route in
            // "auto" (webhooks only) negotiates; until it has, mod_rest's default body, XML.
            let format = HandlerFormat(rawValue: route.format) ?? (route.format == "auto" ? .xml : .text)
            let rule = RouteRule(
                kinds: Set(route.kinds), types: route.types.map(Set.init), to: route.to, from: route.from,
                body: route.body.flatMap { try? BodyPattern($0) }, requiresBody: format == .text && route.target != .pull,
                refusesFromDomain: route.fromSelf ? nil : config.component.jid, rooms: route.rooms, mentions: route.mentions)
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
                let settings = WorkerPool.Settings(
                    route: route.name, argv: argv,
                    environment: HandlerInput.baseEnvironment(
                        route: route.name, component: config.component.jid, env: route.env, passEnv: route.passEnv,
                        parent: environment),
                    workdir: route.workdir, workers: route.workers, inFlight: route.inFlight,
                    maxRequests: route.maxRequests, timeout: .seconds(route.timeout),
                    killGrace: .seconds(config.killGrace), maxLine: route.maxOutput)
                handler = WorkerHandler(pool: pool(named: route.name, settings: settings))
            case .webhook(let url):
                handler = WebhookHandler(
                    settings: WebhookSettings(
                        urlTemplate: url, format: format, negotiate: route.format == "auto", headers: route.headers, hmacSecret: route.hmacSecret,
                        timeout: .seconds(route.timeout), retries: route.retries, maxBody: route.maxOutput,
                        maxStanza: config.component.maxStanza, userAgent: "stanzad/\(StanzadVersion.string)"),
                    client: client)
            case .pull:
                let queue = updateQueues.withLock { queues -> UpdateQueue in
                    if let existing = queues[route.name] {
                        existing.reconfigure(capacity: route.queue, retention: .seconds(route.retention))
                        return existing
                    }
                    let name = route.name
                    let logger = self.logger
                    let capacity = route.queue
                    let (store, stored) = updateStore.withLock { state in
                        (state.store, state.stored.removeValue(forKey: name) ?? [])
                    }
                    let queue = UpdateQueue(
                        route: name, capacity: capacity, retention: .seconds(route.retention), store: store, stored: stored,
                        onDrop: { _, total in
                            logger.warning("update queue full; the oldest update was dropped", metadata: [
                                "route": "\(name)", "queue": "\(capacity)", "dropped_total": "\(total)",
                            ])
                        })
                    queues[route.name] = queue
                    return queue
                }
                handler = PullHandler(queue: queue)
                // Taking a stanza is instant: the route's gate never holds one back.
                return Route(name: route.name, rule: rule, handler: handler, concurrency: route.concurrency, queue: 100)
            }
            return Route(name: route.name, rule: rule, handler: handler, concurrency: route.concurrency, queue: route.queue)
        }
    }

    /// After a reload: the pools of worker routes `config` no longer has (removed, renamed, or now exec or
    /// webhook) stop gracefully, so their processes do not run on for good.
    func stopRemovedPools(keeping config: StanzadConfig) {
        var kept = Set<String>()
        for route in config.routes {
            if case .worker = route.target { kept.insert(route.name) }
        }
        for command in config.commands {
            if case .worker = command.target { kept.insert(command.routeName) }
        }
        let removed = pools.withLock { pools -> [(String, WorkerPool)] in
            let names = pools.keys.filter { !kept.contains($0) }
            return names.compactMap { name in pools.removeValue(forKey: name).map { (name, $0) } }
        }
        for (name, pool) in removed {
            logger.notice("worker route removed; stopping its workers", metadata: ["route": "\(name)"])
            pool.stop()
        }
    }
}

/// Runs the worker pools, including those a reload adds. Stopping it stops them all.
final class WorkerHost: Service, Sendable {
    private let pools: AsyncStream<WorkerPool>
    private let continuation: AsyncStream<WorkerPool>.Continuation

    init() {
        (pools, continuation) = AsyncStream.makeStream(of: WorkerPool.self)
    }

    func start(_ pool: WorkerPool) {
        continuation.yield(pool)
    }

    func run() async throws {
        await withDiscardingTaskGroup { group in
            // Each pool sees the graceful shutdown of this service (it is inherited by child tasks).
            for await pool in pools.cancelOnGracefulShutdown() {
                group.addTask { try? await pool.run() }
            }
        }
    }
}

extension StanzadConfig {
    /// The `[[room]]`s with their defaults filled in (nick: `[disco] name`, from: the component domain).
    func roomSettings() -> [RoomSettings] {
        rooms.map { room in
            RoomSettings(jid: room.jid, nick: room.nick ?? discoName, from: room.from ?? component.jid,
                         password: room.password, history: room.history)
        }
    }

    /// `[rooms]`.
    func roomsSettings() -> RoomsSettings {
        RoomsSettings(
            selfPing: roomDefaults.selfPing > 0 ? .seconds(roomDefaults.selfPing) : nil,
            rejoinDelay: .seconds(roomDefaults.rejoinDelay), acceptInvites: roomDefaults.acceptInvites,
            defaultNick: discoName, defaultFrom: component.jid)
    }

    /// The built-in responders of SPEC §10 for this configuration.
    func builtInResponder() -> BuiltInResponder {
        let routeItems = routes.flatMap { $0.to ?? [] }.map(\.pattern).filter { !$0.contains("*") && $0.contains("@") }
        return BuiltInResponder(
            domain: component.jid, discoName: discoName, presenceAuto: presenceAuto,
            items: routeItems + commands.map(\.to).filter { $0.contains("@") && !routeItems.contains($0) },
            softwareVersion: StanzadVersion.string,
            commands: commands.map { CommandListing(jid: $0.to, node: $0.node, name: $0.name, from: $0.from) })
    }
}
