import Testing
import XMPPCore

@testable import Routing

private func stanza(_ xml: String) throws -> Stanza {
    try #require(Stanza(try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)[0]))
}

private let chat = "<message type='chat' id='m1' from='alice@example.org/phone' to='echo@bot.example.org' xml:lang='en'><body>hi &amp; bye</body></message>"

@Suite struct HandlerInputTests {
    @Test func stdinPerFormat() throws {
        let incoming = try stanza(chat)
        #expect(String(decoding: try HandlerInput.stdin(for: incoming, format: .text), as: UTF8.self) == "hi & bye")
        let json = String(decoding: try HandlerInput.stdin(for: incoming, format: .json), as: UTF8.self)
        #expect(json.hasSuffix("}\n"))
        let object = try JSONValue.parse(json)
        #expect(object["body"]?.stringValue == "hi & bye")
        #expect(object["stanza"]?.stringValue?.hasPrefix("<message ") == true)
        let xml = String(decoding: try HandlerInput.stdin(for: incoming, format: .xml), as: UTF8.self)
        #expect(xml.hasPrefix("<message ") && !xml.contains("xmlns") && xml.contains("<body>hi &amp; bye</body>"))
    }

    @Test func environmentIsCleanAndComplete() throws {
        let env = HandlerInput.environment(
            for: try stanza(chat), route: "echo", component: "bot.example.org", env: ["GREETING": "hello"],
            passEnv: ["HOME", "MISSING"], parent: ["PATH": "/custom/bin", "HOME": "/home/bot", "SECRET": "x"])
        #expect(env == [
            "PATH": "/custom/bin", "LANG": "C.UTF-8", "HOME": "/home/bot", "GREETING": "hello",
            "STANZA_KIND": "message", "STANZA_TYPE": "chat", "STANZA_ID": "m1", "STANZA_FROM": "alice@example.org/phone",
            "STANZA_TO": "echo@bot.example.org", "STANZA_LANG": "en", "STANZAD_ROUTE": "echo",
            "STANZAD_COMPONENT": "bot.example.org",
        ])
    }

    @Test func controlCharactersAreNeverPassed() throws {
        let incoming = try stanza("<message id='a&#10;b' from='alice@example.org' to='bot.example.org'><body>x</body></message>")
        let env = HandlerInput.environment(for: incoming, route: "r", component: "bot.example.org", env: [:], passEnv: [], parent: [:])
        #expect(env["STANZA_ID"] == nil)
        #expect(env["PATH"] == "/usr/local/bin:/usr/bin:/bin")
    }
}

@Suite struct HandlerOutputTests {
    @Test func textDropsOneTrailingNewline() throws {
        let replies = try HandlerOutput.replies(from: Array("two\nlines\n\n".utf8), format: .text, incoming: try stanza(chat))
        #expect(replies.count == 1 && replies[0].body == "two\nlines\n")
        #expect(try HandlerOutput.replies(from: Array("\n".utf8), format: .text, incoming: try stanza(chat)).isEmpty)
    }

    @Test func jsonObjectOrArray() throws {
        let incoming = try stanza(chat)
        let one = try HandlerOutput.replies(from: Array(#"{"body": "pong"}"#.utf8), format: .json, incoming: incoming)
        #expect(one.count == 1 && one[0].body == "pong" && one[0].to == "alice@example.org/phone" && one[0].type == "chat")
        let two = try HandlerOutput.replies(from: Array(#"[{"body": "a"}, {"kind": "presence", "show": "away"}]"#.utf8), format: .json, incoming: incoming)
        #expect(two.map(\.kind) == [.message, .presence])
        #expect(try HandlerOutput.replies(from: Array(" \n".utf8), format: .json, incoming: incoming).isEmpty)
    }

    @Test func modRestWrapperForSeveralStanzas() throws {
        let incoming = try stanza(chat)
        let json = try HandlerOutput.replies(from: Array(#"{"xmpp": [{"body": "a"}, {"body": "b"}]}"#.utf8), format: .json, incoming: incoming)
        #expect(json.map(\.body) == ["a", "b"])
        let xml = try HandlerOutput.replies(
            from: Array("<xmpp xmlns='jabber:client'><message><body>a</body></message><presence/></xmpp>".utf8), format: .xml, incoming: incoming)
        #expect(xml.map(\.kind) == [.message, .presence])
    }

    @Test func xmlStanzas() throws {
        let out = "<message><body>a</body></message>\n<presence type='unavailable'/>"
        let replies = try HandlerOutput.replies(from: Array(out.utf8), format: .xml, incoming: try stanza(chat))
        #expect(replies.map(\.kind) == [.message, .presence])
    }

    @Test(arguments: [
        ("{\"body\": ", HandlerFormat.json, "not valid JSON"),
        ("42", .json, "not a stanza"),
        ("<message><body>a</body>", .xml, "not well-formed XML"),
        ("<html><body/></html>", .xml, "is not a stanza"),
        ("<!DOCTYPE x [<!ENTITY a 'b'>]><message/>", .xml, "not well-formed XML"),
    ])
    func badOutputIsAProblem(output: String, format: HandlerFormat, expected: String) throws {
        let incoming = try stanza(chat)
        do {
            _ = try HandlerOutput.replies(from: Array(output.utf8), format: format, incoming: incoming)
            Issue.record("accepted \(output)")
        } catch {
            #expect(error.description.contains(expected), "\(error.description)")
        }
    }

    @Test func invalidUTF8IsAProblemWithAnExcerpt() throws {
        let incoming = try stanza(chat)
        do {
            _ = try HandlerOutput.replies(from: [0x68, 0x69, 0xFF, 0xFE], format: .text, incoming: incoming)
            Issue.record("accepted invalid UTF-8")
        } catch {
            #expect(error.description.contains("not valid UTF-8"))
            #expect(error.excerpt == "hi\\xff\\xfe")
        }
    }

    @Test func exitCodesMapToSpecConditions() {
        let table: [(Int32, StanzaError.ErrorType, StanzaError.Condition)] = [
            (64, .modify, .badRequest), (65, .modify, .notAcceptable), (66, .cancel, .itemNotFound),
            (67, .cancel, .itemNotFound), (68, .cancel, .itemNotFound), (69, .cancel, .serviceUnavailable),
            (75, .wait, .resourceConstraint), (77, .auth, .forbidden), (1, .cancel, .internalServerError),
            (70, .cancel, .internalServerError),
        ]
        for (code, type, condition) in table {
            let error = HandlerOutput.error(forExitCode: code)
            #expect(error.type == type && error.condition == condition, "exit \(code)")
        }
    }

    @Test func failingTextHandlerOutputBecomesTheErrorText() throws {
        let outcome = HandlerOutput.failure(exitCode: 77, stdout: Array("only admins\n".utf8), format: .text, incoming: try stanza(chat))
        #expect(outcome.failure?.condition == .forbidden && outcome.failure?.text == "only admins")
    }

    @Test func failingXMLHandlerErrorStanzaIsSentAsGiven() throws {
        let out = "<message type='error'><error type='modify'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        let outcome = HandlerOutput.failure(exitCode: 1, stdout: Array(out.utf8), format: .xml, incoming: try stanza(chat))
        #expect(outcome.failure == nil && outcome.replies.first?.error?.condition == .notAcceptable)
    }
}
