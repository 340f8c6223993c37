// The `stanzad` command line (SPEC §3).

import ArgumentParser
import ComponentLink
import Executor
import FastCGIFront
import Foundation
import Logging
import NIOPosix
import Rooms
import Routing
import ServiceLifecycle
import Storage
import Synchronization
import XMPPCore

@main
struct Stanzad: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stanzad",
        abstract: "Makes XMPP programmable with ordinary Unix tools (XEP-0114 component).",
        version: StanzadVersion.string,
        subcommands: [Run.self, Check.self, Try.self, Version.self])
}

enum StanzadVersion {
    static let string = "0.1.0"
}

/// sysexits(3) codes.
enum ExitStatus {
    static let usage: Int32 = 64
    static let internalError: Int32 = 70
    static let config: Int32 = 78
}

struct CommonOptions: ParsableArguments {
    @Option(name: .long, help: "Configuration file (default: $STANZAD_CONFIG, then ./stanzad.toml).")
    var config: String?

    @Option(name: .long, help: "trace, debug, info, notice, warning or error.")
    var logLevel: String = "info"

    @Option(name: .long, help: "text or json.")
    var logFormat: String = "text"

    var configPath: String {
        if let config { return config }
        if let env = ProcessInfo.processInfo.environment["STANZAD_CONFIG"], !env.isEmpty { return env }
        return "stanzad.toml"
    }

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("unknown --log-level \"\(logLevel)\" (use trace, debug, info, notice, warning or error)")
        }
        guard LogFormat(rawValue: logFormat) != nil else {
            throw ValidationError("unknown --log-format \"\(logFormat)\" (use text or json)")
        }
    }

    func bootstrapLogging() -> Logger {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        let format = LogFormat(rawValue: logFormat) ?? .text
        LoggingSystem.bootstrap { label in StderrLogHandler(label: label, level: level, format: format) }
        return Logger(label: "stanzad")
    }

    /// Loads the configuration or prints every error as file:line and exits 78.
    func loadConfig() throws -> StanzadConfig {
        do {
            return try ConfigLoader.load(file: configPath)
        } catch {
            for item in error.errors { FileHandle.standardError.write(Data("\(item)\n".utf8)) }
            throw ExitCode(ExitStatus.config)
        }
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the daemon in the foreground.")

    @OptionGroup var options: CommonOptions

    @Flag(name: .long, help: "Take over from a running stanzad of the same spool: ask it to stop (SIGTERM), connect once it holds its link, and send through the spool what it still held. Needs [storage].")
    var takeover = false

    func run() async throws {
        // Writing to a handler that exited must be an error, not the end of stanzad.
        signal(SIGPIPE, SIG_IGN)
        let logger = options.bootstrapLogging()
        // Descendants that escape a handler's process group are re-parented to stanzad (not init) and killed when
        // a handler ends (SPEC §5.3).
        if !OrphanReaper.adoptOrphans() {
            logger.warning("cannot adopt escaped handler descendants; they may outlive their handler", metadata: [
                "problem": "prctl(PR_SET_CHILD_SUBREAPER) failed: errno \(errno)",
            ])
        }
        let config = try options.loadConfig()
        for warning in config.warnings {
            logger.warning("configuration warning", metadata: ["where": "\(warning.file):\(warning.line)", "problem": "\(warning.message)"])
        }
        var settings = ComponentSettings(
            jid: config.component.jid, host: config.component.host, port: config.component.port,
            secret: config.component.secret, pingTarget: config.component.pingTo)
        settings.reconnectMax = .seconds(config.component.reconnectMax)
        settings.pingInterval = .seconds(config.component.pingInterval)
        settings.pingTimeout = .seconds(config.component.pingTimeout)
        // The spool is on disk: by default it holds ten times what memory does.
        settings.sendQueue = config.storage != nil && !config.component.sendQueueGiven ? 10_000 : config.component.sendQueue
        settings.sendQueueTTL = .seconds(config.component.sendQueueTTL)
        settings.maxStanza = config.component.maxStanza
        // Before any route or counter exists: they bind to the backend bootstrapped here.
        let metrics = config.metrics.map { _ in DaemonMetrics() }
        var spool: SQLiteSpool?
        if let storage = config.storage {
            do {
                // Opening (and migrating) the file blocks: on a thread of its own, not the cooperative pool.
                spool = try await onOwnThread {
                    try SQLiteSpool(
                        settings: StorageSettings(path: storage.path, sync: StorageSettings.Sync(rawValue: storage.sync) ?? .normal),
                        logger: logger)
                }
            } catch {
                logger.error("the spool cannot be opened", metadata: ["problem": "\(error)"])
                throw ExitCode(ExitStatus.config)
            }
        }
        if takeover && spool == nil {
            logger.error("--takeover needs [storage]: the process being replaced hands over what it holds through the spool")
            throw ExitCode(ExitStatus.config)
        }
        if takeover, let instanceJID = config.component.instanceJID {
            // ejabberd 23.01 with component_number: a connection made while every slot is taken gets none, and the
            // slot the old process leaves stays empty (its senders' stanzas are dropped) until a connection is made.
            logger.warning("--takeover with instance_jid: on ejabberd's domain_balancing this link gets no balancing slot while the old process holds it, and the slot it leaves stays empty; restart instead (stop, then start)", metadata: [
                "instance_jid": "\(instanceJID)",
            ])
        }
        // SPEC §20: the instance link has the same server, secret and timers under this instance's own domain, and
        // no spool (it carries only requests whose waiters are in this process). The main link's own pings go from
        // the instance domain too, so that their answers come back to this process (over the instance link).
        var instanceSettings = settings
        if let instanceJID = config.component.instanceJID {
            instanceSettings.jid = instanceJID
            instanceSettings.pingIDPrefix = "stanzad-instance-ping-"
            settings.pingFrom = instanceJID
        }
        // The link, the REST front and the webhooks' connections share one event loop: a stanza, a REST request
        // and their answers then cross no thread between reading and writing.
        let mainLoop = MultiThreadedEventLoopGroup.singleton.next()
        let connection = ComponentConnection(settings: settings, logger: logger, group: mainLoop, spool: spool)
        let instance: InstanceLink? = config.component.instanceJID.map { instanceJID in
            let link = ComponentConnection(settings: instanceSettings, logger: logger, group: mainLoop)
            let inbound = InstanceInbound(connection: link, main: connection, logger: logger)
            link.setDirectInbound { inbound.take($0) }
            return InstanceLink(connection: link, addressing: InstanceAddressing(domain: config.component.jid, instance: instanceJID))
        }
        if let metrics {
            connection.setLinkObserver { event in
                if event == .down { metrics.linkLost() }
            }
        }
        // Another process took the link over: this one drains and stops.
        let shutdown = ShutdownTrigger()
        connection.setLinkObserver { event in
            if event == .replaced { shutdown.trigger() }
        }
        if takeover, let spool {
            // Before the link connects: the running process is asked to stop, and first to hold its link (write
            // nothing more to the server, see `ComponentConnection.hold`); this one connects once it does.
            connection.setStartGate {
                _ = try? await onOwnThread { Stanzad.askToStop(spool: spool, logger: logger) }
            }
            // Once this link is up, the process being replaced stops waiting for the server to close its link.
            let marked = Mutex(false)
            connection.setLinkObserver { event in
                guard event == .up, !marked.withLock({ let was = $0; $0 = true; return was }) else { return }
                Thread.detachNewThread { spool.note(.linked) }
            }
        }
        let builtIns = config.builtInResponder()
        let factory = RouteFactory(maxProcesses: config.maxProcesses, environment: ProcessInfo.processInfo.environment, logger: logger)
        if let spool {
            // The pull routes' updates kept from before: each queue takes its own as it is made.
            do {
                let stored = try await onOwnThread { try spool.takeStoredUpdates() }.mapValues { updates in
                    updates.map { StoredUpdate(seq: $0.seq, id: $0.id, json: $0.json, arrived: $0.arrived) }
                }
                let count = stored.values.reduce(0) { $0 + $1.count }
                if count > 0 { logger.notice("spool: updates kept from before", metadata: ["count": "\(count)"]) }
                factory.setUpdateStore(spool, stored: stored)
            } catch {
                logger.error("the spool cannot be read", metadata: ["problem": "\(error)"])
                throw ExitCode(ExitStatus.config)
            }
            spool.startAdoptingUpdates { route, updates in
                factory.queue(named: route)?.adopt(updates.map { StoredUpdate(seq: $0.seq, id: $0.id, json: $0.json, arrived: $0.arrived) })
            }
        }
        // With a spool, what this process will not handle because it stops is kept there for the next process:
        // webhook retries still waiting, stanzas still queued, stanzas read after the router stopped.
        var keepInbound: (@Sendable (Stanza) -> Bool)?
        if let spool {
            let keep: @Sendable (Stanza) -> Bool = { stanza in
                guard let xml = try? stanza.serialized() else { return false }
                // A stopping process does not route kept stanzas again (the next one does).
                spool.stopTakingKeptInbound()
                return spool.keepInbound(xml)
            }
            keepInbound = keep
            factory.client.keepWaitingDeliveries(keep)
            // Once the link is up, and every second from then on (a process a take-over replaces keeps its last
            // stanzas while this one runs).
            let taking = Mutex(false)
            connection.setLinkObserver { event in
                guard event == .up, !taking.withLock({ let was = $0; $0 = true; return was }) else { return }
                spool.startTakingKeptInbound { kept in
                    logger.notice("spool: routing again stanzas a stopped stanzad kept", metadata: ["count": "\(kept.count)"])
                    for xml in kept {
                        guard let element = (try? XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1))?.first,
                            let stanza = Stanza(element)
                        else {
                            logger.error("spool: a kept stanza is not a stanza; dropped", metadata: ["xml": "\(xml.prefix(200))"])
                            continue
                        }
                        connection.redeliver(stanza)
                    }
                }
            }
        }
        let dispatcher = Dispatcher(
            routes: factory.routes(for: config), builtIns: builtIns, maxStanzaBytes: config.component.maxStanza, logger: logger)
        dispatcher.setRateLimit(config.perSender)
        if let keepInbound { dispatcher.keepLeftStanzas(keepInbound) }
        let rooms = RoomKeeper(connection: connection, rooms: config.roomSettings(), settings: config.roomsSettings(), logger: logger)
        let router = Router(connection: connection, dispatcher: dispatcher, logger: logger, rooms: rooms)
        var front: FastCGIServer?
        var api: RestAPI?
        let hooks = HookExecutor(
            hooks: config.hookPrograms, processes: factory.processes, killGrace: .seconds(config.killGrace),
            parentEnvironment: ProcessInfo.processInfo.environment, component: config.component.jid, logger: logger)
        if let rest = config.rest {
            let rest = RestAPI(
                settings: RestSettings(
                    domain: config.component.jid, path: rest.path, credentials: rest.credentials,
                    iqTimeout: .seconds(rest.iqTimeout), maxIQTimeout: .seconds(rest.maxIQTimeout), maxBody: rest.maxBody,
                    maxPending: rest.maxPending, sendWait: .seconds(rest.sendWait), maxStanza: config.component.maxStanza),
                sender: LinkSender(connection: connection, instance: instance), hooks: config.hookSettings, hookRunner: hooks, logger: logger,
                rooms: RoomDirectoryAdapter(keeper: rooms))
            rest.setUpdateQueues(factory.queues(for: config))
            if let metrics, let endpoint = config.metrics {
                rest.setMetrics(.init(path: endpoint.path, credentials: endpoint.credentials) {
                    metrics.render(connection: connection, dispatcher: dispatcher, queues: factory.allQueues, rooms: rooms.countsByState,
                                   commandSessions: factory.sessions.countsByCommand, instance: instance?.connection)
                })
            }
            api = rest
            let listen = config.rest?.listen ?? ""
            let socketMode = config.rest?.socketMode ?? 0o660
            let fd: Int32
            do {
                fd = try ListeningSocket.open(listen, mode: socketMode)
            } catch {
                logger.error("REST API cannot start", metadata: ["problem": "\(error.description)"])
                await factory.client.shutdown()  // an HTTP client must be shut down before it goes away
                throw ExitCode(ExitStatus.config)
            }
            front = FastCGIServer(
                listen: listen, socketMode: socketMode, fd: fd, api: rest, logger: logger,
                readTimeout: .seconds(config.rest?.readTimeout ?? 10), eventLoop: mainLoop)
        }
        let reloader = Reloader(config: config, factory: factory, dispatcher: dispatcher, api: api, hooks: hooks, rooms: rooms, logger: logger)
        logger.notice("stanzad starting", metadata: [
            "version": "\(StanzadVersion.string)", "config": "\(config.file)", "component": "\(config.component.jid)",
            "server": "\(config.component.host):\(config.component.port)",
            "instance_jid": "\(config.component.instanceJID ?? "-")",
        ])
        // The spool, first, stops last: what the link and the router leave is committed before it closes.
        let storageServices: [ServiceGroupConfiguration.ServiceConfiguration] = spool.map { [.init(service: $0)] } ?? []
        // Before the router stops taking stanzas: a successor on the spool gets the link first.
        let handoverServices: [ServiceGroupConfiguration.ServiceConfiguration] =
            spool.map { [.init(service: Handover(connection: connection, spool: $0, logger: logger))] } ?? []
        // Stops after the main link: the answers to the main link's last barrier, which shutdown waits for, come
        // back over it (and after the REST front and the router, whose requests end first).
        let instanceServices: [ServiceGroupConfiguration.ServiceConfiguration] = instance.map { [.init(service: $0.connection)] } ?? []
        let group: ServiceGroup = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: storageServices + [
                    .init(service: SignalEscalation(logger: logger)),
                ] + instanceServices + [
                    .init(service: connection),
                    // Stops after the router has drained: its pending retries end, then its connections close.
                    .init(service: factory.client),
                    .init(service: factory.host),
                    .init(service: factory.sessions),
                    .init(service: reloader),
                    // Stops before the link: the rooms are left while it still sends.
                    .init(service: rooms),
                ] + [
                    // Services stop in reverse order: the REST front first (waiting requests get 503), then the
                    // router (no new stanzas; running handlers finish while workers and the link are still up).
                    .init(service: router),
                ] + handoverServices + (front.map { [.init(service: $0)] } ?? []) + [
                    // Last: READY=1 once everything runs; the first to hear of a shutdown (STOPPING=1).
                    .init(service: SystemdService(logger: logger, probes: front.map { front in [{ front.probe($0) }] } ?? [])),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        shutdown.set(group)
        do {
            try await group.run()
        } catch {
            await factory.client.shutdown()  // in case the group failed before the client's service ran
            throw error
        }
        logger.notice("stanzad stopped")
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate the configuration and every handler; print the route table.")

    @OptionGroup var options: CommonOptions

    func run() throws {
        let config = try options.loadConfig()
        var problems: [String] = []
        for route in config.routes {
            switch route.target {
            case .exec(let argv), .worker(let argv):
                if let program = argv.first, let problem = HandlerCheck.problem(program: program) {
                    problems.append("\(config.file):\(route.line): route \"\(route.name)\": \(problem)")
                }
            case .webhook, .pull:
                break
            }
        }
        for hook in config.hooks {
            if let program = hook.argv.first, let problem = HandlerCheck.problem(program: program) {
                problems.append("\(config.file):\(hook.line): hook \"\(hook.name)\": \(problem)")
            }
        }
        for command in config.commands {
            switch command.target {
            case .exec(let argv), .worker(let argv):
                if let program = argv.first, let problem = HandlerCheck.problem(program: program) {
                    problems.append("\(config.file):\(command.line): command \"\(command.node)\": \(problem)")
                }
            case .webhook, .pull:
                break
            }
        }
        for warning in config.warnings { print("warning: \(warning)") }
        print("component \(config.component.jid) via \(config.component.host):\(config.component.port)"
              + (config.component.instanceJID.map { ", instance \($0)" } ?? ""))
        if let rest = config.rest { print("rest \(rest.listen) path \(rest.path), \(rest.credentials.count) credential(s)") }
        for hook in config.hooks {
            print("hook \(hook.name): POST \(config.rest?.path ?? "/rest")/hooks/\(hook.name) → \(hook.argv.joined(separator: " ")) (auth \(hook.auth.rawValue)\(hook.to.isEmpty ? "" : ", to \(hook.to.joined(separator: ", "))"))")
        }
        print(RouteTable.render(config.routes))
        for command in config.commands {
            let target: String
            switch command.target {
            case .exec(let argv): target = "exec " + argv.joined(separator: " ")
            case .worker(let argv): target = "worker " + argv.joined(separator: " ")
            case .webhook, .pull: target = "?"
            }
            print("command \(command.node) (\"\(command.name)\") at \(command.to) → \(target), format \(command.format), from "
                  + (command.from?.map(\.pattern).joined(separator: ",") ?? "anyone")
                  + ", timeout \(command.timeout) s, sessions \(command.maxSessions) for \(command.sessionTimeout) s")
        }
        for room in config.roomSettings() {
            print("room \(room.jid) as \(room.nick) from \(room.from)" + (room.password == nil ? "" : ", with a password") + ", history \(room.history)")
        }
        if !config.rooms.isEmpty || !config.roomDefaults.acceptInvites.isEmpty {
            let settings = config.roomDefaults
            print("rooms: self_ping \(settings.selfPing == 0 ? "off" : "\(settings.selfPing) s"), rejoin_delay \(settings.rejoinDelay) s"
                  + (settings.acceptInvites.isEmpty ? "" : ", invites accepted from \(settings.acceptInvites.map(\.pattern).joined(separator: ", "))"))
        }
        if !problems.isEmpty {
            for problem in problems { FileHandle.standardError.write(Data("\(problem)\n".utf8)) }
            throw ExitCode(ExitStatus.config)
        }
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version and the library versions.")

    func run() {
        print("stanzad \(StanzadVersion.string)")
        print("libxml2 \(XMLLibrary.version)")
        print("FastCGI responder built in (SwiftNIO)")
    }
}

enum HandlerCheck {
    /// Why `program` cannot run, or nil.
    static func problem(program: String) -> String? {
        if program.contains("/") {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: program, isDirectory: &isDirectory) else {
                return "handler \(program) does not exist"
            }
            if isDirectory.boolValue { return "handler \(program) is a directory" }
            guard FileManager.default.isExecutableFile(atPath: program) else {
                return "handler \(program) is not executable (chmod +x \(program))"
            }
            return nil
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for directory in path.split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(directory)/\(program)") {
            return nil
        }
        return "handler \(program) is not found in PATH"
    }
}

enum RouteTable {
    static func render(_ routes: [StanzadConfig.Route]) -> String {
        guard !routes.isEmpty else { return "no routes: only the built-in responders answer" }
        var rows = [["#", "name", "kinds", "types", "to", "from", "rooms", "body", "target", "format"]]
        for (index, route) in routes.enumerated() {
            let target: String
            switch route.target {
            case .exec(let argv): target = "exec " + argv.joined(separator: " ")
            case .worker(let argv): target = "worker " + argv.joined(separator: " ")
            case .webhook(let url): target = "webhook " + url
            case .pull: target = "pull (GET …/updates/\(route.name))"
            }
            rows.append([
                "\(index + 1)", route.name, route.kinds.map(\.rawValue).joined(separator: ","),
                route.types?.joined(separator: ",") ?? "*", route.to?.map(\.pattern).joined(separator: ",") ?? "*",
                route.from?.map(\.pattern).joined(separator: ",") ?? "*",
                (route.rooms?.map(\.pattern).joined(separator: ",") ?? "-") + (route.mentions ? " (mentions)" : ""),
                route.body ?? "*", target, route.format,
            ])
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
        }.joined(separator: "\n")
    }
}

/// Starts a graceful shutdown of the service group from a callback (the link was taken over).
final class ShutdownTrigger: Sendable {
    private let state = Mutex<(group: ServiceGroup?, pending: Bool)>((nil, false))

    func set(_ group: ServiceGroup) {
        let pending = state.withLock { state in
            state.group = group
            return state.pending
        }
        if pending { start(group) }
    }

    func trigger() {
        let group: ServiceGroup? = state.withLock { state in
            state.pending = true
            return state.group
        }
        if let group { start(group) }
    }

    private func start(_ group: ServiceGroup) {
        Task { await group.triggerGracefulShutdown() }
    }
}

extension Stanzad {
    /// How long a take-over waits for the running process to hold its link before it connects anyway.
    static let holdWait: Duration = .seconds(5)

    /// A take-over, before its link connects (blocking: spool reads; on a thread of its own): asks the other
    /// processes on the spool to stop and waits until they hold their links.
    static func askToStop(spool: SQLiteSpool, logger: Logger) {
        let others = spool.otherProcesses()
        guard !others.isEmpty else {
            logger.notice("taking over: no other stanzad runs on this spool")
            return
        }
        for pid in others {
            logger.notice("taking over: asking the running stanzad to stop", metadata: ["pid": "\(pid)"])
            kill(pid, SIGTERM)
        }
        let writing = spool.waitUntilHolding(others, timeout: holdWait)
        if writing.isEmpty {
            logger.notice("taking over: the running stanzad holds its link; connecting", metadata: ["pids": "\(others)"])
        } else {
            logger.warning("taking over: the running stanzad did not hold its link in time; connecting anyway (Prosody may drop stanzas it routes to the old process at the switch; is the old process an older stanzad?)",
                           metadata: ["pids": "\(writing)", "waited": "\(holdWait)"])
        }
    }
}

/// At shutdown, when another stanzad runs on the same spool (it was started with --takeover), hands it the link
/// before the router stops taking stanzas. First the link is held (nothing more is written; see
/// `ComponentConnection.hold`) and the spool says so, which lets the other process connect. Prosody
/// (`kick_old`) closes this link as the other's comes up, after writing out what it routed here. ejabberd admits
/// both links: when the other's link is up (the spool says so) and this one is still open `kickWait` later, this
/// process leaves it itself, and the server routes only to the other process. What arrives until then is handled;
/// replies of running handlers go into the spool, and the other process sends them.
final class Handover: Service {
    /// How long a held link stays open after the other process's link is up before this process leaves it: the
    /// server that closes it (Prosody's kick_old) does so at once, while it lets the other process in.
    static let kickWait: Duration = .milliseconds(500)
    /// How long a held link waits for the other process's link at most (it may not connect).
    static let holdLimit: Duration = .seconds(10)
    /// How long the router has to take the last stanzas the link read.
    static let takeWait: Duration = .seconds(2)

    let connection: ComponentConnection
    let spool: SQLiteSpool
    let logger: Logger

    init(connection: ComponentConnection, spool: SQLiteSpool, logger: Logger) {
        self.connection = connection
        self.spool = spool
        self.logger = logger
    }

    func run() async throws {
        try? await gracefulShutdown()
        let spool = self.spool
        // A read of the spool file, on a thread of its own.
        let others: [Int32] = await withCheckedContinuation { continuation in
            Thread.detachNewThread { continuation.resume(returning: spool.otherProcesses()) }
        }
        guard !others.isEmpty else { return }
        await connection.hold()
        _ = try? await onOwnThread { spool.note(.holding) }
        logger.notice("another stanzad runs on this spool: link held for it (nothing more is written)", metadata: ["pids": "\(others)"])
        if await !serverClosedLink(others: others) {
            logger.notice("another stanzad runs on this spool: handing it the component link", metadata: ["pids": "\(others)"])
            await connection.leave()
        }
        // The stanzas the server sent before it closed the link are taken by the router before it stops taking any;
        // what it has not taken by then is kept in the spool (`Router.leave`), and the other process routes it.
        if await !connection.waitUntilInboundTaken(timeout: Self.takeWait) {
            logger.notice("stanzas read before the link closed were not all routed in time; the rest is kept in the spool for the process taking over",
                          metadata: ["waited": "\(Self.takeWait)"])
        }
    }
}

extension Handover {
    /// Waits, with the link held, until the server closes it (true) or until the other process's link has been up
    /// for `kickWait` without that (false: a server that admits both), at most `holdLimit`.
    private func serverClosedLink(others: [Int32]) async -> Bool {
        let start = ContinuousClock.now
        var otherLinked: ContinuousClock.Instant?
        let spool = self.spool
        while true {
            // Every 20 ms: the session's end is heard at once, the spool is looked at between.
            if await connection.waitForSessionEnd(timeout: .milliseconds(20)) { return true }
            let now = ContinuousClock.now
            if otherLinked == nil, (try? await onOwnThread { spool.isLinked(others) }) == true { otherLinked = now }
            if let otherLinked, now - otherLinked >= Self.kickWait { return false }
            if now - start >= Self.holdLimit {
                logger.warning("the stanzad taking over has no link yet; leaving the link anyway", metadata: ["waited": "\(Self.holdLimit)"])
                return false
            }
        }
    }
}

extension SQLiteSpool: UpdateStore {}

/// Runs blocking `work` (a file's first read or write) on a thread of its own and returns its result.
func onOwnThread<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try work() }) }
    }
}
