import Foundation
import Routing
import Testing
import XMPPCore

@testable import Daemon

private let base = """
    [component]
    jid = "bot.example.org"
    server = "127.0.0.1:5347"
    secret = "s3cret"

    """

/// `[[command]]` (SPEC §15): what is read, and every mistake with its file:line and what to do.
@Suite struct CommandConfigTests {
    @Test func aCommandIsReadWithItsDefaults() throws {
        let config = try load(base + """
            [[command]]
            node = "deploy"
            name = "Deploy a branch"
            to = "bot@bot.example.org"
            exec = ["handlers/deploy.py"]
            format = "json"
            from = ["*@example.org"]
            timeout = 30
            """).get()
        let command = try #require(config.commands.first)
        #expect(command.node == "deploy")
        #expect(command.name == "Deploy a branch")
        #expect(command.to == "bot@bot.example.org")
        #expect(command.target == .exec(["/etc/stanzad/handlers/deploy.py"]))
        #expect(command.format == "json")
        #expect(command.from == [JIDPattern("*@example.org")])
        #expect(command.timeout == 30)
        #expect(command.sessionTimeout == 600)
        #expect(command.maxSessions == 1000)
        #expect(command.routeName == "command:bot@bot.example.org/deploy")
        let listing = config.builtInResponder().commands
        #expect(listing == [CommandListing(jid: "bot@bot.example.org", node: "deploy", name: "Deploy a branch", from: [JIDPattern("*@example.org")])])
        #expect(config.builtInResponder().items == ["bot@bot.example.org"])
    }

    @Test func theDefaultsAreTheDomainTheNodeAsNameAndText() throws {
        let command = try #require(try load(base + "[[command]]\nnode = \"uptime\"\nexec = [\"/bin/uptime\"]\nsession_timeout = 5\nmax_sessions = 3\n").get().commands.first)
        #expect(command.to == "bot.example.org")
        #expect(command.name == "uptime")
        #expect(command.format == "text")
        #expect(command.from == nil)
        #expect(command.routeName == "command:uptime")
        #expect(command.sessionTimeout == 5)
        #expect(command.maxSessions == 3)
    }

    @Test func mistakesAreReportedWithFileLine() {
        let file = "/etc/stanzad/stanzad.toml"
        #expect(errors(base + "[[command]]\nexec = [\"/bin/true\"]\n") == ["\(file):5: missing required key \"node\" in [[command]]"])
        #expect(errors(base + "[[command]]\nnode = \"a\"\n") == ["\(file):5: command \"a\" needs exactly one of exec or worker"])
        #expect(errors(base + "[[command]]\nnode = \"a\"\nexec = [\"/bin/true\"]\nworker = [\"/bin/cat\"]\nformat = \"json\"\n")
            == ["\(file):5: command \"a\" needs exactly one of exec or worker (found both)"])
        let webhook: [String] = errors(base + "[[command]]\nnode = \"a\"\nwebhook = \"http://x\"\n")
        #expect(webhook.contains("\(file):5: a command runs an exec or worker handler (webhook and pull are for routes)"))
        #expect(webhook.contains("\(file):5: command \"a\" needs exactly one of exec or worker"))
        #expect(webhook.contains { $0.hasPrefix("\(file):7: unknown key \"webhook\" in [[command]]") })
        #expect(errors(base + "[[command]]\nnode = \"a\"\nexec = [\"/bin/true\"]\nformat = \"xml\"\n")
            == ["\(file):8: unknown command format \"xml\" (use text or json; a command has no xml contract)"])
        #expect(errors(base + "[[command]]\nnode = \"a\"\nworker = [\"/bin/cat\"]\n")
            == ["\(file):7: a worker command speaks JSON lines: set format = \"json\""])
        #expect(errors(base + "[[command]]\nnode = \"a\"\nexec = [\"/bin/true\"]\nto = \"bot@elsewhere.org\"\n")
            == ["\(file):8: command to \"bot@elsewhere.org\" must be the component domain bot.example.org or a bare address in it, e.g. bot@bot.example.org"])
        #expect(errors(base + "[[command]]\nnode = \"a\"\nexec = [\"/bin/true\"]\nsession_timeout = 0\n")
            == ["\(file):8: session_timeout must be at least 1, not 0"])
        #expect(errors(base + "[[command]]\nnode = \"a\"\nexec = [\"/bin/true\"]\nmax_sessions = 0\n")
            == ["\(file):8: max_sessions must be at least 1, not 0"])
        #expect(errors(base + "[[command]]\nnode = \"a\"\nexec = [\"/bin/true\"]\nfrom = []\n")
            == ["\(file):8: from must not be empty (leave it out to let anyone run the command)"])
        #expect(errors(base + "[[command]]\nnode = \"\"\nexec = [\"/bin/true\"]\n")
            == ["\(file):6: command node \"\" must be a non-empty name without control characters, e.g. \"deploy\""])
        #expect(errors(base + "[[command]]\nnode = \"a\"\nexec = [\"/bin/true\"]\n\n[[command]]\nnode = \"a\"\nexec = [\"/bin/true\"]\n")
            == ["\(file):10: command node \"a\" is offered twice at bot.example.org; each [[command]] at one JID needs its own node"])
        #expect(errors(base + "[[command]]\nnode = \"a\"\nexec = [\"/bin/true\"]\nsession_timeot = 5\n")
            == ["\(file):8: unknown key \"session_timeot\" in [[command]] (did you mean session_timeout?); allowed: node, name, to, exec, worker, format, from, timeout, session_timeout, max_sessions, concurrency, queue, env, pass_env, workdir, max_output, workers, max_requests, in_flight"])
        #expect(errors("command = 3\n" + base) == ["\(file):1: command must be an array of tables ([[command]])"])
    }

    @Test func theSameNodeMayBeOfferedAtTwoJIDs() throws {
        let config = try load(base + "[[command]]\nnode = \"a\"\nexec = [\"/bin/true\"]\n\n[[command]]\nnode = \"a\"\nto = \"x@bot.example.org\"\nexec = [\"/bin/true\"]\n").get()
        #expect(config.commands.map(\.routeName) == ["command:a", "command:x@bot.example.org/a"])
    }
}
