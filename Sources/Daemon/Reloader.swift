// SIGHUP (SPEC §11): re-reads the configuration and swaps routes and REST credentials in place. The
// component link is not touched; handlers already running finish on the old routes. A configuration with
// errors is rejected with file:line and the old one stays.

import FastCGIFront
import Logging
import Rooms
import Routing
import ServiceLifecycle
import Synchronization
import UnixSignals

final class Reloader: Service, Sendable {
    let file: String
    let factory: RouteFactory
    let dispatcher: Dispatcher
    let api: RestAPI?
    let hooks: HookExecutor?
    let rooms: RoomKeeper?
    let logger: Logger
    private let active: Mutex<StanzadConfig>

    init(config: StanzadConfig, factory: RouteFactory, dispatcher: Dispatcher, api: RestAPI?, hooks: HookExecutor? = nil,
         rooms: RoomKeeper? = nil, logger: Logger) {
        self.file = config.file
        self.factory = factory
        self.dispatcher = dispatcher
        self.api = api
        self.hooks = hooks
        self.rooms = rooms
        self.logger = logger
        self.active = Mutex(config)
    }

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            reload()
        }
    }

    func reload() {
        SystemdNotify.send("RELOADING=1\nMONOTONIC_USEC=\(SystemdNotify.monotonicMicroseconds())\nSTATUS=reloading")
        // Whatever the outcome, the daemon runs on (with the old configuration if the new one is refused).
        defer { SystemdNotify.send("READY=1\nSTATUS=running") }
        let config: StanzadConfig
        do {
            config = try ConfigLoader.load(file: file)
        } catch {
            for problem in error.errors {
                logger.error("configuration not reloaded; the previous one stays", metadata: [
                    "where": "\(problem.file):\(problem.line)", "problem": "\(problem.message)",
                ])
            }
            return
        }
        let previous = active.withLock { $0 }
        for (name, changed) in [
            ("[component]", previous.component != config.component), ("[rest] listen/path", previous.rest?.listen != config.rest?.listen || previous.rest?.path != config.rest?.path),
            ("[limits]", previous.maxProcesses != config.maxProcesses), ("[metrics]", previous.metrics != config.metrics),
        ] where changed {
            logger.warning("configuration change needs a restart", metadata: ["section": "\(name)"])
        }
        dispatcher.reload(routes: factory.routes(for: config), builtIns: config.builtInResponder())
        dispatcher.setRateLimit(config.perSender)
        // Only once no new stanza can reach them: stanzas already admitted to an old route fail or finish there.
        factory.stopRemovedPools(keeping: config)
        if let rest = config.rest { api?.reload(credentials: rest.credentials) }
        // The programs first: a hook the API newly accepts must find its program.
        hooks?.reload(config.hookPrograms)
        api?.reload(hooks: config.hookSettings)
        api?.setUpdateQueues(factory.queues(for: config))
        rooms?.reload(rooms: config.roomSettings(), settings: config.roomsSettings())
        active.withLock { $0 = config }
        logger.notice("configuration reloaded", metadata: [
            "config": "\(file)", "routes": "\(config.routes.count)", "hooks": "\(config.hooks.count)",
            "rooms": "\(config.rooms.count)",
        ])
    }
}
