// The stanzad configuration (SPEC §4): TOML, unknown keys rejected, every error with file:line.

import Foundation
import XMPPCore
import Routing

struct StanzadConfig: Sendable {
    struct Component: Sendable, Equatable {
        var jid: String
        var host: String
        var port: Int
        var secret: String
        var reconnectMax = 60
        var pingInterval = 60
        var pingTimeout = 20
        var pingTo: String?
        /// This instance's own domain (SPEC §20): a second link that carries the iq requests this instance
        /// originates, so their results come back to it when the server balances `jid` over several instances.
        var instanceJID: String?
        var sendQueue = 1000
        /// `send_queue` was given (else, with `[storage]`, the spool holds up to 10,000).
        var sendQueueGiven = false
        var sendQueueTTL = 60
        var maxStanza = 524_288
    }

    struct Rest: Sendable {
        var listen = "unix:/run/stanzad/fastcgi.sock"
        var socketMode: UInt16 = 0o660
        var path = "/rest"
        var credentials: [String] = []
        var iqTimeout = 120
        var maxIQTimeout = 300
        var maxBody = 196_608
        var maxPending = 10_000
        var sendWait = 5
        var readTimeout = 10
    }

    enum Target: Sendable, Equatable {
        case exec([String])
        case worker([String])
        case webhook(String)
        /// Stanzas wait in the route's update queue for `GET {rest.path}/updates/{route}` (SPEC §17).
        case pull
    }

    struct Route: Sendable {
        var name: String
        var line: Int
        var kinds: [StanzaKind] = [.message]
        var types: [String]?
        var to: [JIDPattern]?
        var from: [JIDPattern]?
        var body: String?
        var target: Target
        var format: String = "text"
        var timeout = 10
        var concurrency = 4
        var queue = 100
        var env: [String: String] = [:]
        var passEnv: [String] = []
        var workdir: String
        var maxOutput = 262_144
        var headers: [String: String] = [:]
        var hmacSecret: String?
        var retries = 0
        var workers = 1
        var maxRequests = 0
        var inFlight = 1
        /// Takes messages and presences from the component's own addresses (off: the loop guard).
        var fromSelf = false
        /// Rooms whose messages this route takes (SPEC §14); nil: no group chat.
        var rooms: [JIDPattern]?
        /// Only group chat messages that mention our nick.
        var mentions = false
        /// Pull routes: seconds an update is kept.
        var retention = 86_400
    }

    /// A `[[room]]` (SPEC §14).
    struct Room: Sendable, Equatable {
        var jid: String
        var line: Int
        /// nil: `[disco] name`.
        var nick: String?
        /// nil: the component's domain.
        var from: String?
        var password: String?
        var history = 0
    }

    /// `[rooms]`.
    struct Rooms: Sendable, Equatable {
        var selfPing = 300
        var rejoinDelay = 5
        var acceptInvites: [JIDPattern] = []
    }

    /// A `[[hook]]` (SPEC §16): `POST {rest.path}/hooks/{name}` runs `argv` with the body on stdin.
    struct Hook: Sendable {
        enum Auth: String, Sendable {
            case credentials, hmac, none
        }

        var name: String
        var line: Int
        var argv: [String]
        var to: [String] = []
        var auth: Auth = .credentials
        var hmacSecret: String?
        var hmacHeader = "X-Hub-Signature-256"
        var timeout = 10
        var env: [String: String] = [:]
        var passEnv: [String] = []
        var workdir: String
        var maxOutput = 262_144
    }

    /// A `[[command]]` (SPEC §15): an ad-hoc command run by an exec or worker handler.
    struct Command: Sendable {
        var node: String
        var line: Int
        var name: String
        /// The offering bare JID (the component domain or an address in it).
        var to: String
        var target: Target
        var format = "text"
        var from: [JIDPattern]?
        var timeout = 10
        var sessionTimeout = 600
        var maxSessions = 1000
        var concurrency = 4
        var queue = 100
        var env: [String: String] = [:]
        var passEnv: [String] = []
        var workdir: String
        var maxOutput = 262_144
        var workers = 1
        var maxRequests = 0
        var inFlight = 1
        /// Its route's name in logs and metrics: `command:<node>` (`command:<jid>/<node>` at an address other than the domain).
        var routeName = ""
    }

    /// `[metrics]` (SPEC §19): the Prometheus text on the FastCGI front.
    struct Metrics: Sendable, Equatable {
        var path = "/metrics"
        var credentials: [String] = []
    }

    /// `[storage]` (SPEC §18): the spool file; nil keeps everything in memory.
    struct Storage: Sendable, Equatable {
        var path: String
        var sync = "normal"
    }

    var file: String
    var component: Component
    var rest: Rest?
    var metrics: Metrics?
    var storage: Storage?
    var hooks: [Hook] = []
    var presenceAuto = true
    var discoName = "stanzad"
    var routes: [Route] = []
    var commands: [Command] = []
    var rooms: [Room] = []
    var roomDefaults = Rooms()
    var maxProcesses = 64
    var killGrace = 2
    /// `[limits] per_sender`: stanzas per sender (bare JID) that reach handlers; nil: no limit.
    var perSender: RateLimitSpec?
    /// Non-fatal findings (e.g. a secret file readable by others), for `check` and the log.
    var warnings: [ConfigError] = []
}

/// Loads and validates a configuration file, collecting every error.
struct ConfigLoader {
    let file: String
    let directory: String
    private(set) var errors: [ConfigError] = []
    private(set) var warnings: [ConfigError] = []

    init(file: String) {
        self.file = file
        let url = URL(fileURLWithPath: file)
        self.directory = url.deletingLastPathComponent().path
    }

    /// Reads, parses and validates `file`.
    static func load(file: String) throws(ConfigErrors) -> StanzadConfig {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw ConfigErrors(errors: [ConfigError(file: file, line: 0, message: "cannot read the configuration file (does it exist, and is it readable?)")])
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigErrors(errors: [ConfigError(file: file, line: 1, message: "the configuration file is not UTF-8")])
        }
        return try load(text: text, file: file)
    }

    static func load(text: String, file: String) throws(ConfigErrors) -> StanzadConfig {
        let document = try ConfigDocument.parse(text, file: file)
        var loader = ConfigLoader(file: file)
        let config = loader.build(document)
        if let config, loader.errors.isEmpty {
            var result = config
            result.warnings = loader.warnings
            return result
        }
        throw ConfigErrors(errors: loader.errors.sorted { $0.line < $1.line })
    }

    // MARK: Building

    private mutating func build(_ root: ConfigTable) -> StanzadConfig? {
        allow(root, ["component", "rest", "presence", "disco", "route", "command", "limits", "hook", "metrics", "room", "rooms", "storage"], section: nil)
        guard case .table(let componentTable)? = root["component"] else {
            error(root.line(of: "component"), root["component"] == nil
                ? "missing [component] section (jid, server and secret are required)"
                : "component must be a table ([component])")
            return nil
        }
        let component = buildComponent(componentTable)
        var config = StanzadConfig(file: file, component: component ?? .init(jid: "", host: "", port: 0, secret: ""))
        if let value = root["rest"] {
            if case .table(let t) = value { config.rest = buildRest(t) } else { error(root.line(of: "rest"), "rest must be a table ([rest])") }
        }
        if let value = root["metrics"] {
            if case .table(let t) = value {
                allow(t, ["path", "credentials"], section: "metrics")
                var metrics = StanzadConfig.Metrics()
                if let path = string(t, "path") {
                    if path.hasPrefix("/"), !path.contains(where: { $0 == " " || $0 == "?" || $0 == "#" }) { metrics.path = path } else {
                        error(t.line(of: "path"), "metrics path \"\(path)\" must be a URL path starting with /, e.g. \"/metrics\"")
                    }
                }
                metrics.credentials = stringArray(t, "credentials") ?? []
                if config.rest == nil {
                    error(root.line(of: "metrics"), "[metrics] is served on the FastCGI front: add a [rest] section (its listen socket serves both)")
                } else if let rest = config.rest, metrics.path == rest.path || metrics.path.hasPrefix(rest.path + "/") {
                    if ["/health", "/echo"].contains(String(metrics.path.dropFirst(rest.path.count))) || metrics.path == rest.path {
                        error(t.line(of: "path"), "metrics path \"\(metrics.path)\" collides with the REST API's own path")
                    }
                }
                config.metrics = metrics
            } else { error(root.line(of: "metrics"), "metrics must be a table ([metrics])") }
        }
        if let value = root["storage"] {
            if case .table(let t) = value {
                allow(t, ["path", "sync"], section: "storage")
                if let path = string(t, "path", required: true, section: "storage") {
                    if path.isEmpty {
                        error(t.line(of: "path"), "storage path is empty: give the spool file, e.g. \"/var/lib/stanzad/stanzad.sqlite\"")
                    } else {
                        var storage = StanzadConfig.Storage(path: path.hasPrefix("/") ? path : directory + "/" + path)
                        if let sync = string(t, "sync") {
                            if ["normal", "full"].contains(sync) { storage.sync = sync } else {
                                error(t.line(of: "sync"), "storage sync \"\(sync)\" must be \"normal\" (survives a crash of stanzad) or \"full\" (also a power loss)")
                            }
                        }
                        config.storage = storage
                    }
                }
            } else { error(root.line(of: "storage"), "storage must be a table ([storage])") }
        }
        if let value = root["presence"] {
            if case .table(let t) = value {
                allow(t, ["auto"], section: "presence")
                config.presenceAuto = bool(t, "auto") ?? true
            } else { error(root.line(of: "presence"), "presence must be a table ([presence])") }
        }
        if let value = root["disco"] {
            if case .table(let t) = value {
                allow(t, ["name"], section: "disco")
                config.discoName = string(t, "name") ?? "stanzad"
            } else { error(root.line(of: "disco"), "disco must be a table ([disco])") }
        }
        if let value = root["limits"] {
            if case .table(let t) = value {
                allow(t, ["max_processes", "kill_grace", "per_sender"], section: "limits")
                config.maxProcesses = int(t, "max_processes", min: 1) ?? 64
                config.killGrace = int(t, "kill_grace", min: 0) ?? 2
                if let text = string(t, "per_sender") {
                    switch RateLimitSpec.parse(text) {
                    case .success(let spec): config.perSender = spec
                    case .failure(let failure): error(t.line(of: "per_sender"), "per_sender \(failure.description)")
                    }
                }
            } else { error(root.line(of: "limits"), "limits must be a table ([limits])") }
        }
        if let value = root["route"] {
            if case .array(let items) = value {
                var names = Set<String>()
                for item in items {
                    guard case .table(let t) = item else {
                        error(root.line(of: "route"), "route must be an array of tables ([[route]])")
                        continue
                    }
                    if let route = buildRoute(t, componentDomain: component?.jid) {
                        if route.target == .pull, root["rest"] == nil {
                            error(t.line(of: "pull"), "route \"\(route.name)\" has pull = true but there is no [rest] section; updates are fetched at GET {rest.path}/updates/\(route.name)")
                        }
                        if !names.insert(route.name).inserted {
                            error(t.line(of: "name"), "route name \"\(route.name)\" is used twice; route names must be unique")
                        }
                        config.routes.append(route)
                    }
                }
            } else {
                error(root.line(of: "route"), "route must be an array of tables ([[route]])")
            }
        }
        if let value = root["command"] {
            if case .array(let items) = value {
                var seen = Set<String>()
                for item in items {
                    guard case .table(let t) = item else {
                        error(root.line(of: "command"), "command must be an array of tables ([[command]])")
                        continue
                    }
                    guard let command = buildCommand(t, componentDomain: component?.jid) else { continue }
                    if !seen.insert(command.routeName).inserted {
                        error(t.line(of: "node"), "command node \"\(command.node)\" is offered twice at \(command.to); each [[command]] at one JID needs its own node")
                    }
                    if config.routes.contains(where: { $0.name == command.routeName }) {
                        error(t.line(of: "node"), "command \"\(command.node)\" would be named \(command.routeName), which a [[route]] already uses; rename that route")
                    }
                    config.commands.append(command)
                }
            } else {
                error(root.line(of: "command"), "command must be an array of tables ([[command]])")
            }
        }
        if let value = root["room"] {
            if case .array(let items) = value {
                var seen = Set<String>()
                for item in items {
                    guard case .table(let t) = item else {
                        error(root.line(of: "room"), "room must be an array of tables ([[room]])")
                        continue
                    }
                    if let room = buildRoom(t, componentDomain: component?.jid) {
                        if !seen.insert(room.jid).inserted {
                            error(t.line(of: "jid"), "room \(room.jid) is configured twice; each [[room]] needs its own jid")
                        }
                        config.rooms.append(room)
                    }
                }
            } else {
                error(root.line(of: "room"), "room must be an array of tables ([[room]])")
            }
        }
        if let value = root["rooms"] {
            if case .table(let t) = value {
                allow(t, ["self_ping", "rejoin_delay", "accept_invites"], section: "rooms")
                config.roomDefaults.selfPing = int(t, "self_ping", min: 0) ?? 300
                config.roomDefaults.rejoinDelay = int(t, "rejoin_delay", min: 1) ?? 5
                config.roomDefaults.acceptInvites = stringArray(t, "accept_invites")?.map(JIDPattern.init) ?? []
            } else { error(root.line(of: "rooms"), "rooms must be a table ([rooms]); a room itself is [[room]]") }
        }
        for route in config.routes where route.mentions && route.rooms == nil {
            error(route.line, "route \"\(route.name)\" has mentions = true but no rooms; add rooms = [\"*\"] (or the rooms it is for)")
        }
        if let value = root["hook"] {
            if case .array(let items) = value {
                var names = Set<String>()
                for item in items {
                    guard case .table(let t) = item else {
                        error(root.line(of: "hook"), "hook must be an array of tables ([[hook]])")
                        continue
                    }
                    guard let hook = buildHook(t) else { continue }
                    if !names.insert(hook.name).inserted {
                        error(t.line(of: "name"), "hook name \"\(hook.name)\" is used twice; hook names must be unique")
                    }
                    if hook.auth == .credentials, config.rest.map({ $0.credentials.isEmpty }) ?? false {
                        error(t.line(of: "auth"), "hook \"\(hook.name)\" has auth = \"credentials\" but [rest] has no credentials; add credentials to [rest] or use auth = \"hmac\"")
                    }
                    config.hooks.append(hook)
                }
                if config.rest == nil, !items.isEmpty {
                    error(root.line(of: "hook"), "[[hook]] needs the REST API: add a [rest] section (hooks are served at POST {rest.path}/hooks/{name})")
                }
            } else {
                error(root.line(of: "hook"), "hook must be an array of tables ([[hook]])")
            }
        }
        return component == nil ? nil : config
    }

    private mutating func buildCommand(_ t: ConfigTable, componentDomain: String?) -> StanzadConfig.Command? {
        allow(t, ["node", "name", "to", "exec", "worker", "format", "from", "timeout", "session_timeout", "max_sessions",
                  "concurrency", "queue", "env", "pass_env", "workdir", "max_output", "workers", "max_requests", "in_flight"],
              section: "[command]")
        let node = string(t, "node", required: true, section: "[[command]]")
        if let node, node.isEmpty || node.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            error(t.line(of: "node"), "command node \"\(node)\" must be a non-empty name without control characters, e.g. \"deploy\"")
        }
        if node == AdHocCommand.namespace {
            error(t.line(of: "node"), "command node must not be \(AdHocCommand.namespace): that node lists the commands")
        }
        if t["webhook"] != nil || t["pull"] != nil {
            error(t.line, "a command runs an exec or worker handler (webhook and pull are for routes)")
        }
        let targets = ["exec", "worker"].filter { t[$0] != nil }
        var target: StanzadConfig.Target?
        if targets.count != 1 {
            error(t.line, "command \(node.map { "\"\($0)\" " } ?? "")needs exactly one of exec or worker" + (targets.isEmpty ? "" : " (found both)"))
        } else if let argv = stringArray(t, "exec") {
            if argv.isEmpty { error(t.line(of: "exec"), "exec must name a program: exec = [\"handlers/remind.py\"]") } else {
                target = .exec([resolveProgram(argv[0])] + argv.dropFirst())
            }
        } else if let argv = stringArray(t, "worker") {
            if argv.isEmpty { error(t.line(of: "worker"), "worker must name a program: worker = [\"handlers/commands.py\"]") } else {
                target = .worker([resolveProgram(argv[0])] + argv.dropFirst())
            }
        }
        var to = componentDomain ?? ""
        if let text = string(t, "to") {
            if let jid = JID.parse(text), jid.resource == nil, jid.domain == componentDomain {
                to = jid.description.lowercased()
            } else {
                error(t.line(of: "to"), "command to \"\(text)\" must be the component domain \(componentDomain ?? "") or a bare address in it, e.g. bot@\(componentDomain ?? "bot.example.org")")
            }
        }
        var command = StanzadConfig.Command(node: node ?? "", line: t.line, name: node ?? "", to: to, target: target ?? .exec([]), workdir: directory)
        if let name = string(t, "name") {
            if name.isEmpty || !name.unicodeScalars.allSatisfy(HandlerOutput.isXMLCharacter) {
                error(t.line(of: "name"), "command name must be non-empty text (it is shown in the client's list)")
            }
            command.name = name
        }
        if let format = string(t, "format") {
            if ["text", "json"].contains(format) { command.format = format } else {
                error(t.line(of: "format"), "unknown command format \"\(format)\" (use text or json; a command has no xml contract)")
            }
        }
        if case .worker? = target, command.format != "json" {
            error(t.line(of: "worker"), "a worker command speaks JSON lines: set format = \"json\"")
        }
        if let from = stringArray(t, "from") {
            if from.isEmpty { error(t.line(of: "from"), "from must not be empty (leave it out to let anyone run the command)") }
            command.from = from.map(JIDPattern.init)
        }
        command.timeout = int(t, "timeout", min: 1) ?? 10
        command.sessionTimeout = int(t, "session_timeout", min: 1) ?? 600
        command.maxSessions = int(t, "max_sessions", min: 1) ?? 1000
        command.concurrency = int(t, "concurrency", min: 1) ?? 4
        command.queue = int(t, "queue", min: 0) ?? 100
        command.env = stringTable(t, "env") ?? [:]
        for key in command.env.keys where !Self.isEnvName(key) {
            error(t.line(of: "env"), "env name \"\(key)\" is not a valid environment variable name")
        }
        command.passEnv = stringArray(t, "pass_env") ?? []
        if let workdir = string(t, "workdir") { command.workdir = resolve(workdir) }
        command.maxOutput = int(t, "max_output", min: 1) ?? 262_144
        command.workers = int(t, "workers", min: 1) ?? 1
        command.maxRequests = int(t, "max_requests", min: 0) ?? 0
        command.inFlight = int(t, "in_flight", min: 1) ?? 1
        command.routeName = "command:" + (to == componentDomain ? "" : to + "/") + command.node
        guard node != nil, target != nil, !to.isEmpty else { return nil }
        return command
    }

    private mutating func buildRoom(_ t: ConfigTable, componentDomain: String?) -> StanzadConfig.Room? {
        allow(t, ["jid", "nick", "from", "password", "password_file", "history"], section: "[room]")
        guard let text = string(t, "jid", required: true, section: "[[room]]") else { return nil }
        guard let jid = JID.parse(text), jid.localpart != nil, jid.resource == nil else {
            error(t.line(of: "jid"), "room jid \"\(text)\" must be a bare room JID such as ops@conference.example.org (no /nick)")
            return nil
        }
        var room = StanzadConfig.Room(jid: jid.description.lowercased(), line: t.line)
        if let nick = string(t, "nick") {
            if nick.isEmpty || nick.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) || (try? JID(localpart: jid.localpart, domain: jid.domain, resource: nick)) == nil {
                error(t.line(of: "nick"), "nick \"\(nick)\" is not a valid nick (non-empty, no control characters, at most 1023 bytes)")
            } else {
                room.nick = nick
            }
        }
        if let from = string(t, "from") {
            if let parsed = JID.parse(from), parsed.domain == componentDomain {
                room.from = parsed.description
            } else {
                error(t.line(of: "from"), "from \"\(from)\" must be the component domain \(componentDomain ?? "") or an address in it, e.g. bot@\(componentDomain ?? "bot.example.org")")
            }
        }
        room.password = secretValue(t, "password", required: false)
        room.history = int(t, "history", min: 0) ?? 0
        return room
    }

    private mutating func buildHook(_ t: ConfigTable) -> StanzadConfig.Hook? {
        allow(t, ["name", "exec", "worker", "to", "auth", "hmac_secret", "hmac_secret_file", "hmac_header", "timeout", "env",
                  "pass_env", "workdir", "max_output"], section: "hook")
        let name = string(t, "name", required: true, section: "[[hook]]")
        if let name, name.isEmpty || !name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") }) {
            error(t.line(of: "name"), "hook name \"\(name)\" must be letters, digits, '-', '_' or '.' (it is a URL path segment)")
        }
        var argv: [String]?
        if t["worker"] != nil {
            error(t.line(of: "worker"), "hooks run exec handlers only for now: use exec = [...]")
        }
        if let values = stringArray(t, "exec") {
            if values.isEmpty { error(t.line(of: "exec"), "exec must name a program: exec = [\"handlers/alertmanager.py\"]") } else {
                argv = [resolveProgram(values[0])] + values.dropFirst()
            }
        } else if t["exec"] == nil {
            error(t.line, "hook \(name.map { "\"\($0)\" " } ?? "")needs exec = [\"program\", …]")
        }
        var hook = StanzadConfig.Hook(name: name ?? "", line: t.line, argv: argv ?? [], workdir: directory)
        if let to = stringArray(t, "to") {
            for jid in to where JID.parse(jid) == nil {
                error(t.line(of: "to"), "to: \"\(jid)\" is not a valid JID")
            }
            hook.to = to
        }
        if let auth = string(t, "auth") {
            if let value = StanzadConfig.Hook.Auth(rawValue: auth) { hook.auth = value } else {
                error(t.line(of: "auth"), "unknown auth \"\(auth)\" (use credentials, hmac or none)")
            }
        }
        hook.hmacSecret = secretValue(t, "hmac_secret", required: hook.auth == .hmac)
        if hook.auth != .hmac, hook.hmacSecret != nil {
            error(t.line(of: "hmac_secret"), "hmac_secret is set but auth is \"\(hook.auth.rawValue)\"; set auth = \"hmac\" to check signatures")
        }
        if let header = string(t, "hmac_header") {
            if header.isEmpty || !header.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }) {
                error(t.line(of: "hmac_header"), "hmac_header \"\(header)\" must be an HTTP header name (letters, digits and '-')")
            }
            hook.hmacHeader = header
        }
        hook.timeout = int(t, "timeout", min: 1) ?? 10
        hook.env = stringTable(t, "env") ?? [:]
        for key in hook.env.keys where !Self.isEnvName(key) {
            error(t.line(of: "env"), "env name \"\(key)\" is not a valid environment variable name")
        }
        hook.passEnv = stringArray(t, "pass_env") ?? []
        if let workdir = string(t, "workdir") { hook.workdir = resolve(workdir) }
        hook.maxOutput = int(t, "max_output", min: 1) ?? 262_144
        guard name != nil, argv != nil else { return nil }
        return hook
    }

    private mutating func buildComponent(_ t: ConfigTable) -> StanzadConfig.Component? {
        allow(t, ["jid", "server", "secret", "secret_file", "reconnect_max", "ping_interval", "ping_timeout", "ping_to",
                  "send_queue", "send_queue_ttl", "max_stanza", "instance_jid"], section: "component")
        let jidText = string(t, "jid", required: true)
        var jid: String?
        if let jidText {
            if let parsed = JID.parse(jidText), parsed.localpart == nil, parsed.resource == nil {
                jid = parsed.domain
            } else {
                error(t.line(of: "jid"), "component jid \"\(jidText)\" must be a bare domain such as bot.example.org (no user@, no /resource)")
            }
        }
        var host: String?
        var port: Int?
        if let server = string(t, "server", required: true) {
            if let (h, p) = Self.hostPort(server) {
                host = h
                port = p
            } else {
                error(t.line(of: "server"), "server \"\(server)\" must be host:port, e.g. 127.0.0.1:5347")
            }
        }
        let secret = secretValue(t, "secret", required: true)
        var component = StanzadConfig.Component(jid: jid ?? "", host: host ?? "", port: port ?? 0, secret: secret ?? "")
        component.reconnectMax = int(t, "reconnect_max", min: 1) ?? 60
        component.pingInterval = int(t, "ping_interval", min: 1) ?? 60
        component.pingTimeout = int(t, "ping_timeout", min: 1) ?? 20
        component.sendQueue = int(t, "send_queue", min: 0) ?? 1000
        component.sendQueueGiven = t["send_queue"] != nil
        component.sendQueueTTL = int(t, "send_queue_ttl", min: 1) ?? 60
        component.maxStanza = int(t, "max_stanza", min: 10_000) ?? 524_288
        if let pingTo = string(t, "ping_to") {
            if let parsed = JID.parse(pingTo) { component.pingTo = parsed.description } else {
                error(t.line(of: "ping_to"), "ping_to \"\(pingTo)\" is not a valid JID")
            }
        }
        if let instanceText = string(t, "instance_jid") {
            if let parsed = JID.parse(instanceText), parsed.localpart == nil, parsed.resource == nil {
                if parsed.domain == jid {
                    error(t.line(of: "instance_jid"), "instance_jid \"\(instanceText)\" must differ from jid: it is this instance's own domain, e.g. i1.\(parsed.domain)")
                } else {
                    component.instanceJID = parsed.domain
                }
            } else {
                error(t.line(of: "instance_jid"), "instance_jid \"\(instanceText)\" must be a bare domain such as i1.bot.example.org (no user@, no /resource)")
            }
        }
        guard jid != nil, host != nil, secret != nil else { return nil }
        return component
    }

    private mutating func buildRest(_ t: ConfigTable) -> StanzadConfig.Rest {
        allow(t, ["listen", "socket_mode", "path", "credentials", "credentials_file", "iq_timeout", "max_iq_timeout",
                  "max_body", "max_pending", "send_wait", "read_timeout"], section: "rest")
        var rest = StanzadConfig.Rest()
        if let listen = string(t, "listen") {
            if listen.hasPrefix("unix:") {
                let path = String(listen.dropFirst(5))
                if path.isEmpty { error(t.line(of: "listen"), "listen \"unix:\" needs a socket path") }
                rest.listen = "unix:" + resolve(path)
            } else if listen == "systemd" || Self.hostPort(listen) != nil {
                rest.listen = listen
            } else {
                error(t.line(of: "listen"), "listen \"\(listen)\" must be unix:/path/to.sock, host:port or \"systemd\" (socket activation)")
            }
        }
        if let mode = string(t, "socket_mode") {
            if let value = UInt16(mode, radix: 8), value <= 0o777 { rest.socketMode = value } else {
                error(t.line(of: "socket_mode"), "socket_mode \"\(mode)\" must be an octal mode such as \"0660\"")
            }
        }
        if let path = string(t, "path") {
            if path.hasPrefix("/") { rest.path = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path } else {
                error(t.line(of: "path"), "path \"\(path)\" must start with /")
            }
        }
        let inline = stringArray(t, "credentials")
        if let file = string(t, "credentials_file") {
            if inline != nil { error(t.line(of: "credentials_file"), "give either credentials or credentials_file, not both") }
            if let text = readSecretFile(file, line: t.line(of: "credentials_file"), key: "credentials_file", wholeFile: true) {
                rest.credentials = text.split(separator: "\n").map { String($0).trimmingCharacters() }.filter { !$0.isEmpty && !$0.hasPrefix("#") }
            }
        } else {
            rest.credentials = inline ?? []
        }
        if rest.credentials.isEmpty {
            warning(t.line, "[rest] has no credentials: every request except /health will get 401")
        }
        rest.iqTimeout = int(t, "iq_timeout", min: 1) ?? 120
        rest.maxIQTimeout = int(t, "max_iq_timeout", min: 1) ?? 300
        if rest.iqTimeout > rest.maxIQTimeout {
            error(t.line(of: "iq_timeout"), "iq_timeout (\(rest.iqTimeout)) is larger than max_iq_timeout (\(rest.maxIQTimeout))")
        }
        rest.maxBody = int(t, "max_body", min: 1) ?? 196_608
        rest.maxPending = int(t, "max_pending", min: 1) ?? 10_000
        rest.sendWait = int(t, "send_wait", min: 0) ?? 5
        rest.readTimeout = int(t, "read_timeout", min: 1) ?? 10
        return rest
    }

    private mutating func buildRoute(_ t: ConfigTable, componentDomain: String?) -> StanzadConfig.Route? {
        allow(t, ["name", "kinds", "types", "to", "from", "body", "exec", "worker", "webhook", "format", "timeout",
                  "concurrency", "queue", "env", "pass_env", "workdir", "max_output", "headers", "hmac_secret",
                  "hmac_secret_file", "retries", "workers", "max_requests", "in_flight", "from_self", "pull", "retention",
                  "rooms", "mentions"],
              section: "route")
        let name = string(t, "name", required: true, section: "[[route]]")
        var kinds: [StanzaKind] = [.message]
        if let values = stringArray(t, "kinds") {
            kinds = []
            for value in values {
                if let kind = StanzaKind(rawValue: value) { kinds.append(kind) } else {
                    error(t.line(of: "kinds"), "unknown kind \"\(value)\" (use message, presence or iq)")
                }
            }
            if values.isEmpty { error(t.line(of: "kinds"), "kinds must not be empty") }
        }
        let pull = bool(t, "pull") ?? false
        let targets = ["exec", "worker", "webhook"].filter { t[$0] != nil } + (pull ? ["pull"] : [])
        var target: StanzadConfig.Target?
        if targets.count != 1 {
            error(t.line, "route \(name.map { "\"\($0)\"" } ?? "") needs exactly one of exec, worker, webhook or pull = true" + (targets.isEmpty ? "" : " (found \(targets.joined(separator: ", ")))"))
        } else if pull {
            target = .pull
        } else if let argv = stringArray(t, "exec") {
            if argv.isEmpty { error(t.line(of: "exec"), "exec must name a program: exec = [\"handlers/echo.sh\"]") } else {
                target = .exec([resolveProgram(argv[0])] + argv.dropFirst())
            }
        } else if let argv = stringArray(t, "worker") {
            if argv.isEmpty { error(t.line(of: "worker"), "worker must name a program: worker = [\"handlers/worker.py\"]") } else {
                target = .worker([resolveProgram(argv[0])] + argv.dropFirst())
            }
        } else if let url = string(t, "webhook") {
            if url.hasPrefix("http://") || url.hasPrefix("https://") { target = .webhook(url) } else {
                error(t.line(of: "webhook"), "webhook \"\(url)\" must be an http:// or https:// URL")
            }
        }
        var route = StanzadConfig.Route(name: name ?? "", line: t.line, kinds: kinds, target: target ?? .exec([]), workdir: directory)
        route.types = stringArray(t, "types")
        route.to = stringArray(t, "to")?.map(JIDPattern.init)
        route.from = stringArray(t, "from")?.map(JIDPattern.init)
        route.fromSelf = bool(t, "from_self") ?? false
        if let rooms = stringArray(t, "rooms") {
            if rooms.isEmpty { error(t.line(of: "rooms"), "rooms must not be empty; use rooms = [\"*\"] for every room") }
            for pattern in rooms where !pattern.contains("*") && JID.parse(pattern)?.localpart == nil {
                error(t.line(of: "rooms"), "rooms entry \"\(pattern)\" is not a room JID (room@conference.example.org) or a glob with *")
            }
            route.rooms = rooms.map(JIDPattern.init)
        }
        route.mentions = bool(t, "mentions") ?? false
        if let body = string(t, "body") {
            do { _ = try Regex(body) } catch {
                self.error(t.line(of: "body"), "body regex \"\(body)\" does not compile: \(error)")
            }
            route.body = body
        }
        if let format = string(t, "format") {
            if ["text", "json", "xml"].contains(format) {
                route.format = format
            } else if format == "auto" {
                // mod_rest's negotiation (an OPTIONS probe) needs an HTTP peer.
                if t["webhook"] == nil {
                    error(t.line(of: "format"), "format \"auto\" is for webhook routes (it asks the webhook with an OPTIONS request)")
                }
                route.format = format
            } else {
                error(t.line(of: "format"), "unknown format \"\(format)\" (use text, json or xml; auto for a webhook)")
            }
        }
        route.timeout = int(t, "timeout", min: 1) ?? 10
        route.concurrency = int(t, "concurrency", min: 1) ?? 4
        route.queue = int(t, "queue", min: 0) ?? (pull ? 10_000 : 100)
        route.retention = int(t, "retention", min: 1) ?? 86_400
        if !pull, t["retention"] != nil {
            error(t.line(of: "retention"), "retention applies to pull routes only (pull = true)")
        }
        route.env = stringTable(t, "env") ?? [:]
        for key in route.env.keys where !Self.isEnvName(key) {
            error(t.line(of: "env"), "env name \"\(key)\" is not a valid environment variable name")
        }
        route.passEnv = stringArray(t, "pass_env") ?? []
        if let workdir = string(t, "workdir") { route.workdir = resolve(workdir) }
        route.maxOutput = int(t, "max_output", min: 1) ?? 262_144
        route.headers = stringTable(t, "headers") ?? [:]
        route.hmacSecret = secretValue(t, "hmac_secret", required: false)
        route.retries = int(t, "retries", min: 0) ?? 0
        route.workers = int(t, "workers", min: 1) ?? 1
        route.maxRequests = int(t, "max_requests", min: 0) ?? 0
        route.inFlight = int(t, "in_flight", min: 1) ?? 1
        if case .worker = target, route.concurrency < route.workers * route.inFlight {
            let capacity = route.workers * route.inFlight
            warning(t.line(of: t["concurrency"] == nil ? "in_flight" : "concurrency"),
                    "route \"\(route.name)\" lets \(route.concurrency) requests at once (concurrency\(t["concurrency"] == nil ? ", default 4" : "")) reach its \(route.workers) worker\(route.workers == 1 ? "" : "s") × \(route.inFlight) in_flight = \(capacity); set concurrency = \(capacity) to use them all")
        }
        if route.format == "text", !pull, route.kinds.contains(where: { $0 != .message }) {
            warning(t.line(of: "kinds"), "route \"\(route.name)\" has format \"text\", which takes only messages with a body; its \(route.kinds.filter { $0 != .message }.map(\.rawValue).joined(separator: " and ")) will never match (use format = \"json\" or \"xml\")")
        }
        guard name != nil, target != nil else { return nil }
        return route
    }

    // MARK: Typed accessors

    private mutating func allow(_ t: ConfigTable, _ keys: [String], section: String?) {
        for entry in t.entries where !keys.contains(entry.key) {
            let place = section.map { "in [\($0)]" } ?? "at the top level"
            let suggestion = keys.min { Self.distance($0, entry.key) < Self.distance($1, entry.key) }
                .flatMap { Self.distance($0, entry.key) <= 2 ? " (did you mean \($0)?)" : nil } ?? ""
            error(entry.line, "unknown key \"\(entry.key)\" \(place)\(suggestion); allowed: \(keys.joined(separator: ", "))")
        }
    }

    private mutating func string(_ t: ConfigTable, _ key: String, required: Bool = false, section: String? = nil) -> String? {
        guard let value = t[key] else {
            if required { error(t.line, "missing required key \"\(key)\"" + (section.map { " in \($0)" } ?? "")) }
            return nil
        }
        guard case .string(let s) = value else {
            error(t.line(of: key), "\(key) must be a string, not \(value.typeName)")
            return nil
        }
        return s
    }

    private mutating func int(_ t: ConfigTable, _ key: String, min: Int) -> Int? {
        guard let value = t[key] else { return nil }
        guard case .int(let n) = value else {
            error(t.line(of: key), "\(key) must be an integer, not \(value.typeName)")
            return nil
        }
        guard n >= min else {
            error(t.line(of: key), "\(key) must be at least \(min), not \(n)")
            return nil
        }
        return n
    }

    private mutating func bool(_ t: ConfigTable, _ key: String) -> Bool? {
        guard let value = t[key] else { return nil }
        guard case .bool(let b) = value else {
            error(t.line(of: key), "\(key) must be true or false, not \(value.typeName)")
            return nil
        }
        return b
    }

    private mutating func stringArray(_ t: ConfigTable, _ key: String) -> [String]? {
        guard let value = t[key] else { return nil }
        guard case .array(let items) = value else {
            error(t.line(of: key), "\(key) must be an array of strings, e.g. \(key) = [\"…\"], not \(value.typeName)")
            return nil
        }
        var result: [String] = []
        for item in items {
            guard case .string(let s) = item else {
                error(t.line(of: key), "\(key) must contain only strings, found \(item.typeName)")
                return nil
            }
            result.append(s)
        }
        return result
    }

    private mutating func stringTable(_ t: ConfigTable, _ key: String) -> [String: String]? {
        guard let value = t[key] else { return nil }
        guard case .table(let table) = value else {
            error(t.line(of: key), "\(key) must be a table of strings, e.g. \(key) = { NAME = \"value\" }, not \(value.typeName)")
            return nil
        }
        var result: [String: String] = [:]
        for entry in table.entries {
            guard case .string(let s) = entry.value else {
                error(entry.line, "\(key).\(entry.key) must be a string, not \(entry.value.typeName)")
                continue
            }
            result[entry.key] = s
        }
        return result
    }

    /// `key` inline or `key_file` (first line of the file, trimmed); exactly one when required.
    private mutating func secretValue(_ t: ConfigTable, _ key: String, required: Bool) -> String? {
        let inline = string(t, key)
        let fileKey = key + "_file"
        guard let path = string(t, fileKey) else {
            if inline == nil && required { error(t.line, "missing \(key) (or \(fileKey))") }
            if let inline, inline.isEmpty { error(t.line(of: key), "\(key) must not be empty") }
            return inline
        }
        if inline != nil { error(t.line(of: fileKey), "give either \(key) or \(fileKey), not both") }
        return readSecretFile(path, line: t.line(of: fileKey), key: fileKey, wholeFile: false)
    }

    private mutating func readSecretFile(_ path: String, line: Int, key: String, wholeFile: Bool) -> String? {
        let resolved = resolve(path)
        guard let data = FileManager.default.contents(atPath: resolved), let text = String(data: data, encoding: .utf8) else {
            error(line, "\(key): cannot read \(resolved)")
            return nil
        }
        if let attributes = try? FileManager.default.attributesOfItem(atPath: resolved),
            let mode = attributes[.posixPermissions] as? NSNumber, mode.intValue & 0o004 != 0
        {
            warning(line, "\(key): \(resolved) is readable by every user; chmod o-r it")
        }
        if wholeFile { return text }
        let first = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        let secret = first.trimmingCharacters()
        if secret.isEmpty { error(line, "\(key): the first line of \(resolved) is empty") }
        return secret
    }

    // MARK: Helpers

    private func resolve(_ path: String) -> String {
        path.hasPrefix("/") ? path : URL(fileURLWithPath: directory).appendingPathComponent(path).standardizedFileURL.path
    }

    /// A program given with a slash is a path (relative to the config file); a bare name is looked up in PATH.
    private func resolveProgram(_ program: String) -> String {
        program.contains("/") ? resolve(program) : program
    }

    static func hostPort(_ text: String) -> (String, Int)? {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else { return nil }
        return (host, port)
    }

    static func isEnvName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, first == "_" || (first.isASCII && first.properties.isAlphabetic) else { return false }
        return name.unicodeScalars.allSatisfy { $0 == "_" || ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) }
    }

    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var row = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var previous = row[0]
            row[0] = i
            for j in stride(from: 1, through: b.count, by: 1) {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return row[b.count]
    }

    private mutating func error(_ line: Int, _ message: String) {
        errors.append(ConfigError(file: file, line: line, message: message))
    }

    private mutating func warning(_ line: Int, _ message: String) {
        warnings.append(ConfigError(file: file, line: line, message: message))
    }
}
