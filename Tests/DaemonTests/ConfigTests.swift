import Foundation
import Testing

@testable import Daemon
import Routing

private let minimal = """
    [component]
    jid = "bot.example.org"
    server = "127.0.0.1:5347"
    secret = "s3cret"
    """

@Suite struct ConfigTests {
    @Test func minimalConfigGetsDefaults() throws {
        let config = try load(minimal).get()
        #expect(config.component.jid == "bot.example.org")
        #expect(config.component.host == "127.0.0.1")
        #expect(config.component.port == 5347)
        #expect(config.component.reconnectMax == 60)
        #expect(config.component.maxStanza == 524_288)
        #expect(config.rest == nil)
        #expect(config.presenceAuto)
        #expect(config.routes.isEmpty)
    }

    @Test func textRouteForIqsIsWarnedAbout() throws {
        let text = minimal + "\n[[route]]\nname = \"q\"\nkinds = [\"iq\"]\nexec = [\"/bin/cat\"]\n"
        let config = try load(text).get()
        #expect(config.warnings.map(\.description) == [
            "/etc/stanzad/stanzad.toml:7: route \"q\" has format \"text\", which takes only messages with a body; its iq will never match (use format = \"json\" or \"xml\")",
        ])
    }

    @Test func aWorkerRouteWhoseConcurrencyLeavesWorkerCapacityUnusedIsWarnedAbout() throws {
        let route = "\n[[route]]\nname = \"hot\"\nworker = [\"/bin/cat\"]\nformat = \"json\"\nworkers = 2\nin_flight = 32\n"
        #expect(try load(minimal + route).get().warnings.map(\.description) == [
            "/etc/stanzad/stanzad.toml:10: route \"hot\" lets 4 requests at once (concurrency, default 4) reach its 2 workers × 32 in_flight = 64; set concurrency = 64 to use them all",
        ])
        #expect(try load(minimal + route + "concurrency = 16\n").get().warnings.map(\.description) == [
            "/etc/stanzad/stanzad.toml:11: route \"hot\" lets 16 requests at once (concurrency) reach its 2 workers × 32 in_flight = 64; set concurrency = 64 to use them all",
        ])
        #expect(try load(minimal + route + "concurrency = 64\n").get().warnings.isEmpty)
        // The SPEC's own example: 4 workers of one request each, the default concurrency of 4.
        #expect(try load(minimal + "\n[[route]]\nname = \"w\"\nworker = [\"/bin/cat\"]\nformat = \"json\"\nworkers = 4\n").get().warnings.isEmpty)
    }

    @Test func perSenderLimitAndFromSelfAreReadAndCheckedWithFileLine() throws {
        let text = minimal + "\n[limits]\nper_sender = \"20/10s\"\n\n[[route]]\nname = \"a\"\nexec = [\"/bin/cat\"]\nfrom_self = true\n"
        let config = try load(text).get()
        #expect(config.perSender == RateLimitSpec(count: 20, seconds: 10))
        #expect(config.routes.first?.fromSelf == true)
        #expect(try load(minimal).get().perSender == nil)
        #expect(errors(minimal + "\n[limits]\nper_sender = \"20 per minute\"\n") == [
            "/etc/stanzad/stanzad.toml:6: per_sender \"20 per minute\" is not a rate such as \"20/10s\" (stanzas per seconds)",
        ])
        #expect(errors(minimal + "\n[[route]]\nname = \"a\"\nexec = [\"/bin/cat\"]\nfrom_self = \"yes\"\n") == [
            "/etc/stanzad/stanzad.toml:8: from_self must be true or false, not a string",
        ])
    }

    @Test func unknownKeyIsReportedWithFileLineAndSuggestion() {
        let text = minimal + "\nreconect_max = 5\n"
        #expect(errors(text) == ["/etc/stanzad/stanzad.toml:5: unknown key \"reconect_max\" in [component] (did you mean reconnect_max?); allowed: jid, server, secret, secret_file, reconnect_max, ping_interval, ping_timeout, ping_to, send_queue, send_queue_ttl, max_stanza, instance_jid"])
    }

    @Test func wrongTypeIsReportedWithFileLine() {
        let text = minimal + "\nping_interval = \"60\"\n"
        #expect(errors(text) == ["/etc/stanzad/stanzad.toml:5: ping_interval must be an integer, not a string"])
    }

    @Test func unknownSectionAndRouteKey() {
        let text = minimal + """

            [presense]
            auto = true

            [[route]]
            name = "echo"
            exec = ["handlers/echo.sh"]
            tiemout = 3
            """
        let found = errors(text)
        #expect(found.count == 2)
        #expect(found[0].hasPrefix("/etc/stanzad/stanzad.toml:5: unknown key \"presense\" at the top level (did you mean presence?)"))
        #expect(found[1].hasPrefix("/etc/stanzad/stanzad.toml:11: unknown key \"tiemout\" in [route] (did you mean timeout?)"))
    }

    @Test func missingComponentKeys() {
        #expect(errors("[component]\njid = \"bot.example.org\"\n") == [
            "/etc/stanzad/stanzad.toml:1: missing required key \"server\"",
            "/etc/stanzad/stanzad.toml:1: missing secret (or secret_file)",
        ])
        #expect(errors("[disco]\nname = \"x\"\n") == ["/etc/stanzad/stanzad.toml:1: missing [component] section (jid, server and secret are required)"])
    }

    @Test func badValues() {
        let text = """
            [component]
            jid = "user@bot.example.org"
            server = "localhost"
            secret = "x"
            max_stanza = 100
            """
        #expect(errors(text) == [
            "/etc/stanzad/stanzad.toml:2: component jid \"user@bot.example.org\" must be a bare domain such as bot.example.org (no user@, no /resource)",
            "/etc/stanzad/stanzad.toml:3: server \"localhost\" must be host:port, e.g. 127.0.0.1:5347",
            "/etc/stanzad/stanzad.toml:5: max_stanza must be at least 10000, not 100",
        ])
    }

    @Test func tomlSyntaxError() {
        let found = errors("[component\njid = 1\n")
        #expect(found.count == 1)
        #expect(found[0].hasPrefix("/etc/stanzad/stanzad.toml:1: TOML syntax error"))
    }

    @Test func routesParseAndResolveRelativePaths() throws {
        let text = minimal + """

            [[route]]
            name = "echo"
            kinds = ["message", "iq"]
            to = ["echo@bot.example.org"]
            body = "^!"
            exec = ["handlers/echo.sh", "--flag"]
            env = { LANG = "C.UTF-8" }

            [[route]]
            name = "app"
            webhook = "http://127.0.0.1:9999/stanzas/{kind}"
            format = "xml"
            """
        let config = try load(text).get()
        #expect(config.routes.map(\.name) == ["echo", "app"])
        #expect(config.routes[0].target == .exec(["/etc/stanzad/handlers/echo.sh", "--flag"]))
        #expect(config.routes[0].line == 5)
        #expect(config.routes[1].line == 13)
        #expect(config.routes[0].env == ["LANG": "C.UTF-8"])
        #expect(config.routes[1].target == .webhook("http://127.0.0.1:9999/stanzas/{kind}"))
    }

    @Test func autoFormatIsForWebhooks() throws {
        let webhook = minimal + """

            [[route]]
            name = "app"
            kinds = ["message", "iq"]
            webhook = "http://127.0.0.1:5000/api"
            format = "auto"
            """
        let config = try load(webhook).get()
        #expect(config.routes[0].format == "auto")
        let exec = minimal + """

            [[route]]
            name = "proc"
            exec = ["a"]
            format = "auto"
            """
        #expect(errors(exec).contains { $0.hasSuffix("format \"auto\" is for webhook routes (it asks the webhook with an OPTIONS request)") })
    }

    @Test func routeTargetRules() {
        let text = minimal + """

            [[route]]
            name = "none"

            [[route]]
            name = "both"
            exec = ["a"]
            webhook = "http://x"

            [[route]]
            name = "badregex"
            exec = ["a"]
            body = "(["
            format = "yaml"
            kinds = ["mesage"]
            """
        let found = errors(text)
        #expect(found.contains("/etc/stanzad/stanzad.toml:5: route \"none\" needs exactly one of exec, worker, webhook or pull = true"))
        #expect(found.contains("/etc/stanzad/stanzad.toml:8: route \"both\" needs exactly one of exec, worker, webhook or pull = true (found exec, webhook)"))
        #expect(found.contains { $0.hasPrefix("/etc/stanzad/stanzad.toml:16: body regex \"([\" does not compile") })
        #expect(found.contains("/etc/stanzad/stanzad.toml:17: unknown format \"yaml\" (use text, json or xml; auto for a webhook)"))
        #expect(found.contains("/etc/stanzad/stanzad.toml:18: unknown kind \"mesage\" (use message, presence or iq)"))
    }

    @Test func secretFromFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stanzad-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try "  from-file  \nsecond line\n".write(to: dir.appendingPathComponent("secret"), atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: dir.appendingPathComponent("secret").path)
        let file = dir.appendingPathComponent("stanzad.toml").path
        try "[component]\njid = \"bot.example.org\"\nserver = \"127.0.0.1:5347\"\nsecret_file = \"secret\"\n".write(toFile: file, atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(file: file)
        #expect(config.component.secret == "from-file")
        #expect(config.warnings.map(\.message) == ["secret_file: \(dir.appendingPathComponent("secret").path) is readable by every user; chmod o-r it"])
    }

    @Test func restSection() throws {
        let config = try load(minimal + """

            [rest]
            listen = "unix:run/fcgi.sock"
            socket_mode = "0600"
            credentials = ["Bearer abc"]
            iq_timeout = 10
            """).get()
        let rest = try #require(config.rest)
        #expect(rest.listen == "unix:/etc/stanzad/run/fcgi.sock")
        #expect(rest.socketMode == 0o600)
        #expect(rest.credentials == ["Bearer abc"])
        #expect(rest.iqTimeout == 10)
        #expect(errors(minimal + "\n[rest]\niq_timeout = 500\n") == ["/etc/stanzad/stanzad.toml:6: iq_timeout (500) is larger than max_iq_timeout (300)"])
    }
}

@Suite struct RoomConfigTests {
    @Test func roomsWithDefaults() throws {
        let text = minimal + """

            [disco]
            name = "Ops Bot"

            [[room]]
            jid = "Ops@Conference.Example.org"

            [[room]]
            jid = "dev@conference.example.org"
            nick = "deploy"
            from = "bot@bot.example.org"
            password = "sesame"
            history = 3

            [rooms]
            self_ping = 0
            rejoin_delay = 2
            accept_invites = ["*@example.org"]

            [[route]]
            name = "ops"
            rooms = ["*"]
            mentions = true
            exec = ["/bin/cat"]
            """
        let config = try load(text).get()
        let rooms = config.roomSettings()
        #expect(rooms.map(\.jid) == ["ops@conference.example.org", "dev@conference.example.org"])
        #expect(rooms[0].nick == "Ops Bot")
        #expect(rooms[0].from == "bot.example.org")
        #expect(rooms[0].history == 0)
        #expect(rooms[1].nick == "deploy" && rooms[1].from == "bot@bot.example.org" && rooms[1].password == "sesame" && rooms[1].history == 3)
        let settings = config.roomsSettings()
        #expect(settings.selfPing == nil)
        #expect(settings.rejoinDelay == .seconds(2))
        #expect(settings.acceptInvites.map(\.pattern) == ["*@example.org"])
        #expect(config.routes[0].rooms?.map(\.pattern) == ["*"])
        #expect(config.routes[0].mentions)
        #expect(config.roomDefaults.selfPing == 0)
    }

    @Test func badRoomsAreErrorsThatSayWhatToDo() {
        let text = minimal + """

            [[room]]
            jid = "conference.example.org"

            [[room]]
            jid = "ops@conference.example.org"
            from = "bot@elsewhere.org"
            history = -1

            [[room]]
            jid = "ops@conference.example.org"
            nik = "x"

            [rooms]
            rejoin_delay = 0

            [[route]]
            name = "m"
            mentions = true
            exec = ["/bin/cat"]
            """
        let found = errors(text)
        #expect(found.contains { $0.contains("room jid \"conference.example.org\" must be a bare room JID") })
        #expect(found.contains { $0.contains("from \"bot@elsewhere.org\" must be the component domain bot.example.org") })
        #expect(found.contains { $0.contains("history must be at least 0") })
        #expect(found.contains { $0.contains("room ops@conference.example.org is configured twice") })
        #expect(found.contains { $0.contains("unknown key \"nik\" in [[room]] (did you mean nick?)") })
        #expect(found.contains { $0.contains("rejoin_delay must be at least 1") })
        #expect(found.contains { $0.contains("route \"m\" has mentions = true but no rooms; add rooms = [\"*\"]") })
    }
}
