// `stanzad try`: one stanza through one route exactly as production runs it, without an XMPP server.

import ArgumentParser
import Executor
import FastCGIFront
import Foundation
import Logging
import Routing
import ServiceLifecycle
import XMPPCore

struct Try: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one stanza through a route, or one request body through a hook (no XMPP server needed); print the stanzas.",
        discussion: """
            With --route: the stanza is a message built from --body, or an XML stanza read from stdin. The replies \
            are printed as XML on stdout; the handler's stderr, exit status and timing go to stderr. \
            With --hook: the request body is read from stdin (e.g. `stanzad try --hook alertmanager < alert.json`); \
            the stanzas the hook would send are printed as XML and the HTTP status it would answer goes to stderr. \
            Nothing is sent.
            """)

    @OptionGroup var options: CommonOptions

    @Option(name: .long, help: "The route to run (its name in the config).")
    var route: String?

    @Option(name: .long, help: "The hook to run (its name in the config); the request body is read from stdin.")
    var hook: String?

    @Option(name: .long, help: "With --hook: the request's Content-Type (default: application/json).")
    var contentType: String?

    @Option(name: .long, help: "The ad-hoc command to run one step of (its node); stdin: the submitted form as JSON {var: value}, or nothing.")
    var command: String?

    @Option(name: .long, help: "With --command: the action (execute, next, prev, complete; default execute).")
    var action: String?

    @Option(name: .long, help: "With --command: the JSON `session` of the previous step (a later step); without it, the first step.")
    var session: String?

    func validate() throws {
        if [route, hook, command].compactMap({ $0 }).count != 1 {
            throw ValidationError("give one of --route NAME, --hook NAME or --command NODE")
        }
        if hook != nil || command != nil, body != nil {
            throw ValidationError("--body is for routes; a hook or a command reads stdin")
        }
        if command == nil, action != nil || session != nil { throw ValidationError("--action and --session go with --command") }
    }

    @Option(name: .long, help: "Sender JID (default: user@example.org/try).")
    var from: String?

    @Option(name: .long, help: "Recipient JID (default: the route's first literal `to`, else the component).")
    var to: String?

    @Option(name: .long, help: "Stanza type (default for --body: chat).")
    var type: String?

    @Option(name: .long, help: "Message body; without it an XML stanza is read from stdin.")
    var body: String?

    func run() async throws {
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
        if let hook {
            try await runHook(hook, config: config, logger: logger)
            return
        }
        if let command {
            try await runCommand(command, config: config, logger: logger)
            return
        }
        guard let route else { return }
        guard let configured = config.routes.first(where: { $0.name == route }) else {
            let names = config.routes.map(\.name)
            throw ValidationError(
                "no route named \"\(route)\" in \(config.file)" + (names.isEmpty ? " (it has no routes)" : "; routes: \(names.joined(separator: ", "))"))
        }
        var stanza = try makeStanza(defaultTo: configured.to?.first { !$0.pattern.contains("*") }?.pattern ?? config.component.jid)
        if stanza.id == nil { stanza.id = RandomID.make() }
        // Created only now: from here on every path shuts its HTTP client down.
        let factory = RouteFactory(maxProcesses: config.maxProcesses, environment: ProcessInfo.processInfo.environment, logger: logger)
        // Only this route: no other route's workers are started.
        let routes = factory.routes(for: config, only: [route])
        guard let selected = routes.first(where: { $0.name == route }) else {
            await factory.client.shutdown()
            throw ExitCode(ExitStatus.internalError)
        }
        // A message from `room/nick` of a configured [[room]] runs as one from that room (SPEC §14).
        let room = config.roomSettings().first { $0.jid == JID.parse(stanza.from)?.bare.description.lowercased() }.flatMap { room -> RoomOrigin? in
            guard stanza.kind == .message, let nick = JID.parse(stanza.from)?.resource else { return nil }
            return RoomOrigin(room: room.jid, nick: nick, ownNick: room.nick, isGroupchat: stanza.type == "groupchat")
        }
        if !selected.rule.matches(stanza, room: room) {
            FileHandle.standardError.write(Data("note: in production route \"\(route)\" would not take this stanza (its kinds/types/to/from/body/rooms/mentions do not match)\n".utf8))
        }
        let dispatcher = Dispatcher(routes: routes, builtIns: config.builtInResponder(), maxStanzaBytes: config.component.maxStanza, logger: logger)
        let once = TryOnce(dispatcher: dispatcher, route: selected, stanza: stanza, room: room)
        // Worker routes need their pools running, as in production.
        let services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: factory.client),
            .init(service: factory.host),
            .init(service: once, successTerminationBehavior: .gracefullyShutdownGroup),
        ]
        do {
            try await ServiceGroup(configuration: ServiceGroupConfiguration(services: services, logger: logger)).run()
        } catch {
            await factory.client.shutdown()  // in case the group failed before the client's service ran
            throw error
        }
    }

    /// `--hook`: the body from stdin through the hook's handler, as `POST {path}/hooks/{name}` would run it
    /// (auth is not checked); prints the stanzas and the HTTP status.
    private func runHook(_ name: String, config: StanzadConfig, logger: Logger) async throws {
        guard let settings = config.hookSettings.first(where: { $0.name == name }) else {
            let names = config.hooks.map(\.name)
            throw ValidationError(
                "no hook named \"\(name)\" in \(config.file)" + (names.isEmpty ? " (it has no [[hook]])" : "; hooks: \(names.joined(separator: ", "))"))
        }
        let body = [UInt8](FileHandle.standardInput.readDataToEndOfFile())
        let executor = HookExecutor(
            hooks: config.hookPrograms, processes: AdmissionGate(concurrency: 1, queue: nil), killGrace: .seconds(config.killGrace),
            parentEnvironment: ProcessInfo.processInfo.environment, component: config.component.jid, logger: logger)
        let path = config.rest?.path ?? "/rest"
        let request = RestRequest(method: "POST", path: "\(path)/hooks/\(name)", contentType: contentType ?? "application/json",
                                  contentLength: body.count, body: body)
        let invocation = HookInvocation(hook: name, stdin: body, environment: RestAPI.hookEnvironment(request, hook: settings))
        let ending = await withCheckedContinuation { (continuation: CheckedContinuation<HookEnding, Never>) in
            executor.run(invocation) { continuation.resume(returning: $0) }
        }
        let status: Int
        switch ending {
        case .exited(0, let stdout):
            let api = RestAPI(settings: RestSettings(domain: config.component.jid, path: path, credentials: []), sender: NothingSent())
            let stanzas: [Stanza]
            do {
                stanzas = try api.hookStanzas(stdout, hook: settings)
            } catch {
                FileHandle.standardError.write(Data("HTTP 500: the handler's output cannot be sent: \(error)\n".utf8))
                throw ExitCode(1)
            }
            for stanza in stanzas { print((try? stanza.serialized()) ?? "") }
            FileHandle.standardError.write(Data("HTTP 202 {\"sent\": \(stanzas.count)}\n".utf8))
            return
        case .exited(let code, _):
            status = RestAPI.hookStatus(exit: code)
            FileHandle.standardError.write(Data("HTTP \(status): the handler exited with \(code)\n".utf8))
        case .timedOut:
            FileHandle.standardError.write(Data("HTTP 504: the handler did not finish within its timeout\n".utf8))
        case .failed(let reason):
            FileHandle.standardError.write(Data("HTTP 500: \(reason)\n".utf8))
        case .busy:
            FileHandle.standardError.write(Data("HTTP 503: no handler slot\n".utf8))
        }
        throw ExitCode(1)
    }

    /// `--command`: one step of an ad-hoc command as a requester's iq would run it (from stdin: the submitted form as
    /// JSON formdata, an `<iq>` with a `<command/>`, or nothing); prints the reply iq, and the step's status and
    /// `session` on stderr.
    private func runCommand(_ node: String, config: StanzadConfig, logger: Logger) async throws {
        let candidates = config.commands.filter { $0.node == node && (to == nil || $0.to == JID.parse(to)?.bare.description.lowercased()) }
        guard let configured = candidates.first else {
            let nodes = config.commands.map { "\($0.node) at \($0.to)" }
            throw ValidationError(
                "no command \"\(node)\"\(to.map { " at \($0)" } ?? "") in \(config.file)" + (nodes.isEmpty ? " (it has no [[command]])" : "; commands: \(nodes.joined(separator: ", "))"))
        }
        let actionValue = action ?? "execute"
        guard let parsedAction = AdHocCommand.Action(rawValue: actionValue), parsedAction != .cancel else {
            throw ValidationError("--action must be execute, next, prev or complete (cancel is answered by stanzad without a step)")
        }
        var sessionValue: JSONValue?
        if let session {
            do { sessionValue = try JSONValue.parse(session) } catch {
                throw ValidationError("--session is not JSON: \(error.message)")
            }
        }
        let input = FileHandle.standardInput.readDataToEndOfFile()
        let text = String(decoding: input, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        var stanza: Stanza
        if text.hasPrefix("<") {
            guard let element = try? XMLStreamParser.parseFragment(input, maxElements: 1).first, let parsed = Stanza(element) else {
                throw ValidationError("stdin is not one <iq> stanza")
            }
            stanza = parsed
        } else {
            stanza = Stanza(kind: .iq, type: "set", id: RandomID.make())
            var element = Element("command", namespace: AdHocCommand.namespace)
            element[attribute: "node"] = node
            element[attribute: "action"] = parsedAction.rawValue
            if !text.isEmpty {
                do {
                    element.append(try DataForm(formData: try JSONValue.parse(input)).element)
                } catch let error as DataForm.Problem {
                    throw ValidationError("stdin: \(error.description)")
                } catch {
                    throw ValidationError("stdin is neither an <iq> nor JSON form data {\"var\": \"value\"}: \(error)")
                }
            }
            stanza.element.append(element)
        }
        if stanza.id == nil { stanza.id = RandomID.make() }
        stanza.from = from ?? stanza.from ?? "user@example.org/try"
        stanza.to = to ?? stanza.to ?? configured.to
        let factory = RouteFactory(maxProcesses: config.maxProcesses, environment: ProcessInfo.processInfo.environment, logger: logger)
        let routes = factory.routes(for: config, only: [configured.routeName])
        guard let selected = routes.first else {
            await factory.client.shutdown()
            throw ExitCode(ExitStatus.internalError)
        }
        if let sessionValue {
            // A later step: a session as the previous step left it, offering every action.
            guard case .success(let id) = factory.sessions.open(
                command: configured.routeName, node: configured.node, jid: configured.to, owner: stanza.from ?? "", limit: .max)
            else {
                await factory.client.shutdown()
                throw ExitCode(ExitStatus.internalError)
            }
            factory.sessions.park(id: id, value: sessionValue, form: nil, allowed: Set(AdHocCommand.Action.allCases), timeout: .seconds(configured.sessionTimeout))
            var children = stanza.element.children
            for (index, child) in children.enumerated() {
                if case .element(var element) = child, element.name == "command" {
                    element[attribute: "sessionid"] = id
                    children[index] = .element(element)
                }
            }
            stanza.element.children = children
        }
        if !selected.rule.matches(stanza) {
            FileHandle.standardError.write(Data("note: in production command \"\(node)\" would not take this stanza (it needs an iq set with <command node='\(node)'/> to \(configured.to))\n".utf8))
        }
        let dispatcher = Dispatcher(routes: routes, builtIns: config.builtInResponder(), maxStanzaBytes: config.component.maxStanza, logger: logger)
        let once = TryOnce(dispatcher: dispatcher, route: selected, stanza: stanza, room: nil) { replies in
            for reply in replies {
                guard let command = reply.element.elements.first(where: { $0.name == "command" }) else { continue }
                let status = command[attribute: "status"] ?? "?"
                var line = "command status \(status)"
                if status == "executing", let id = command[attribute: "sessionid"],
                   let open = factory.sessions.session(id: id) {
                    line += "; session: \(open.value.map { $0.serialized() } ?? "null")"
                }
                FileHandle.standardError.write(Data((line + "\n").utf8))
            }
        }
        let services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: factory.client),
            .init(service: factory.host),
            .init(service: once, successTerminationBehavior: .gracefullyShutdownGroup),
        ]
        do {
            try await ServiceGroup(configuration: ServiceGroupConfiguration(services: services, logger: logger)).run()
        } catch {
            await factory.client.shutdown()
            throw error
        }
    }

    private func makeStanza(defaultTo: String) throws -> Stanza {
        var stanza: Stanza
        if let body {
            stanza = Stanza(kind: .message, type: type ?? "chat")
            stanza.element.append(Element("body", namespace: Namespace.client, text: body))
        } else {
            let input = FileHandle.standardInput.readDataToEndOfFile()
            let elements: [Element]
            do {
                elements = try XMLStreamParser.parseFragment(input, maxElements: 1)
            } catch {
                throw ValidationError("stdin is not one XML stanza: \(error.message) (or use --body TEXT)")
            }
            guard let element = elements.first, let parsed = Stanza(element) else {
                throw ValidationError("stdin must hold one <message>, <presence> or <iq> (or use --body TEXT)")
            }
            stanza = parsed
            if let type { stanza.type = type }
        }
        if let from { stanza.from = from }
        if let to { stanza.to = to }
        if stanza.from == nil { stanza.from = "user@example.org/try" }
        if stanza.to == nil { stanza.to = defaultTo }
        for (name, value) in [("from", stanza.from), ("to", stanza.to)] {
            if let value, JID.parse(value) == nil {
                throw ValidationError("--\(name) \"\(value)\" is not a valid JID")
            }
        }
        return stanza
    }
}

/// Runs the one stanza of `stanzad try` and prints the replies.
struct TryOnce: Service {
    let dispatcher: Dispatcher
    let route: Route
    let stanza: Stanza
    let room: RoomOrigin?
    /// Told the replies before they are printed (`try --command` reports the step's status and session).
    var inspect: @Sendable ([Stanza]) -> Void = { _ in }

    func run() async throws {
        _ = route.gate.admit()
        let replies = await dispatcher.run(stanza, on: route, room: room)
        inspect(replies)
        for reply in replies {
            do {
                print(try reply.serialized())
            } catch {
                FileHandle.standardError.write(Data("reply cannot be written as XML: \(error)\n".utf8))
            }
        }
    }
}

/// `try --hook` sends nothing.
private struct NothingSent: StanzaSender {
    var linkState: String { "try" }

    func deliver(_ stanza: Stanza, wait: Duration, completion: @escaping @Sendable (Result<Void, SendFailure>) -> Void) -> RestCancellation? {
        completion(.success(()))
        return nil
    }

    func ask(_ iq: Stanza, timeout: Duration, maxPending: Int,
             completion: @escaping @Sendable (Result<Stanza, SendFailure>) -> Void) -> RestCancellation? {
        completion(.failure(SendFailure(.unavailable("try"), "stanzad try sends nothing")))
        return nil
    }
}
