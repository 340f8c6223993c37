// `stanzad try`: one stanza through one route exactly as production runs it, without an XMPP server.

import ArgumentParser
import Executor
import Foundation
import Logging
import Routing
import ServiceLifecycle
import XMPPCore

struct Try: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one stanza through a route (no XMPP server needed); print the reply stanzas.",
        discussion: """
            The stanza is a message built from --body, or an XML stanza read from stdin. The replies are printed \
            as XML on stdout; the handler's stderr, exit status and timing go to stderr.
            """)

    @OptionGroup var options: CommonOptions

    @Option(name: .long, help: "The route to run (its name in the config).")
    var route: String

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
        if !selected.rule.matches(stanza) {
            FileHandle.standardError.write(Data("note: in production route \"\(route)\" would not take this stanza (its kinds/types/to/from/body do not match)\n".utf8))
        }
        let dispatcher = Dispatcher(routes: routes, builtIns: config.builtInResponder(), maxStanzaBytes: config.component.maxStanza, logger: logger)
        let once = TryOnce(dispatcher: dispatcher, route: selected, stanza: stanza)
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

    func run() async throws {
        _ = route.gate.admit()
        let replies = await dispatcher.run(stanza, on: route)
        for reply in replies {
            do {
                print(try reply.serialized())
            } catch {
                FileHandle.standardError.write(Data("reply cannot be written as XML: \(error)\n".utf8))
            }
        }
    }
}
