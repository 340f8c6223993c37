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

    func validate() throws {
        if (route == nil) == (hook == nil) { throw ValidationError("give either --route NAME or --hook NAME") }
        if hook != nil, body != nil { throw ValidationError("--body is for routes; a hook reads its request body from stdin") }
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

    func run() async throws {
        _ = route.gate.admit()
        let replies = await dispatcher.run(stanza, on: route, room: room)
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
