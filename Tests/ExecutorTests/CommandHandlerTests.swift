import Foundation
import Logging
import Routing
import Testing
import XMPPCore

@testable import Executor

private let ns = AdHocCommand.namespace

/// A `[[command]]` through real processes (SPEC §15): sessions across steps, cancel, `from`, and failures as notes.
@Suite struct CommandHandlerTests {
    let sessions = CommandSessions(logger: Logger(label: "test"))
    let context = HandlerContext(route: "command:c", component: "bot.example.org", logger: Logger(label: "test"))

    func handler(_ script: String, format: HandlerFormat = .json, from: [JIDPattern]? = nil, maxSessions: Int = 1000) -> CommandHandler {
        CommandHandler(
            settings: .init(name: "command:c", node: "c", jid: "bot.example.org", from: from, format: format, maxSessions: maxSessions),
            runner: .process(ProcessHandler(settings: .init(argv: ["/bin/sh", "-c", script], format: format), processes: AdmissionGate(concurrency: 4, queue: nil))),
            sessions: sessions)
    }

    func iq(action: String? = nil, sessionID: String? = nil, from: String = "a@example.org/r", form: String = "") throws -> Stanza {
        let attributes = (action.map { " action='\($0)'" } ?? "") + (sessionID.map { " sessionid='\($0)'" } ?? "")
        let xml = "<iq type='set' id='i1' from='\(from)' to='bot.example.org'><command xmlns='\(ns)' node='c'\(attributes)>\(form)</command></iq>"
        return try #require(Stanza(try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)[0]))
    }

    func command(_ outcome: HandlerOutcome) throws -> Element {
        let reply = try #require(outcome.replies.first)
        return try #require(reply.element.elements.first { $0.name == "command" })
    }

    @Test func aTwoStepCommandKeepsItsSessionAndSeesTheSubmittedData() async throws {
        // Step 1 asks; step 2 echoes what it was given (stdin) in its note.
        let script = """
            input=$(cat)
            case "$input" in
            *'"session"'*) printf '{"command": {"status": "completed", "note": {"type": "info", "text": %s}}}' "$(printf '%s' "$input" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps(json.dumps([d["command"], d["session"]])))')" ;;
            *) echo '{"command": {"form": {"fields": [{"var": "what", "type": "text-single"}]}, "actions": {"execute": "complete", "complete": true}}, "session": {"n": 1}}' ;;
            esac
            """
        let command = handler(script)
        let first = try self.command(await command.handle(try iq(), context: context))
        #expect(first[attribute: "status"] == "executing")
        let id = try #require(first[attribute: "sessionid"])
        #expect(sessions.count == 1)
        let form = "<x xmlns='jabber:x:data' type='submit'><field var='what'><value>milk</value></field></x>"
        let second = try self.command(await command.handle(try iq(action: "complete", sessionID: id, form: form), context: context))
        #expect(second[attribute: "status"] == "completed")
        #expect(second[attribute: "sessionid"] == id)
        let note = try #require(second.child("note", namespace: ns))
        #expect(try JSONValue.parse(note.text) == .array([
            .object(["node": "c", "action": "complete", "sessionid": .string(id), "data": .object(["what": "milk"])]), .object(["n": 1]),
        ]))
        #expect(sessions.count == 0)
    }

    @Test func executeOnALaterStepIsTheStepsDefaultAction() async throws {
        let script = """
            input=$(cat)
            case "$input" in
            *'"session"'*) printf '{"command": {"note": {"text": "%s"}}}' "$(printf '%s' "$input" | grep -o '"action":"[a-z]*"' | tr -d '"')" ;;
            *) echo '{"command": {"status": "executing", "actions": {"execute": "complete", "complete": true}}, "session": 1}' ;;
            esac
            """
        let command = handler(script)
        let id = try #require(try self.command(await command.handle(try iq(), context: context))[attribute: "sessionid"])
        let done = try self.command(await command.handle(try iq(action: "execute", sessionID: id), context: context))
        #expect(done.child("note", namespace: ns)?.text == "action:complete")
    }

    @Test func cancelIsAnsweredWithoutTheHandlerAndEndsTheSession() async throws {
        let command = handler(#"echo '{"command": {"status": "executing", "form": {"fields": []}}}'"#)
        let id = try #require(try self.command(await command.handle(try iq(), context: context))[attribute: "sessionid"])
        let canceled = try self.command(await command.handle(try iq(action: "cancel", sessionID: id), context: context))
        #expect(canceled[attribute: "status"] == "canceled")
        #expect(sessions.count == 0)
        let again = try #require(await command.handle(try iq(action: "next", sessionID: id), context: context).replies.first)
        #expect(again.type == "error")
        #expect(again.error?.condition == .badRequest)
        #expect(try again.serialized().contains("<bad-sessionid xmlns=\"\(ns)\"/>"))
    }

    @Test func aRequesterOutsideFromIsForbiddenAndNothingRuns() async throws {
        let marker = FileManager.default.temporaryDirectory.appendingPathComponent("cmd-\(UUID().uuidString)").path
        let command = handler("touch \(marker)", format: .text, from: [JIDPattern("*@admins.example.org")])
        let reply = try #require(await command.handle(try iq(), context: context).replies.first)
        #expect(reply.error == StanzaError(.auth, .forbidden, text: "you may not run the command \"c\"", by: "bot.example.org"))
        #expect(!FileManager.default.fileExists(atPath: marker))
        #expect(sessions.count == 0)
    }

    @Test func aTextCommandsOutputIsAnInfoNoteAndItsFailureAnErrorNote() async throws {
        let ok = try self.command(await handler("echo \"hello $STANZA_FROM\"", format: .text).handle(try iq(), context: context))
        #expect(ok[attribute: "status"] == "completed")
        #expect(ok.child("note", namespace: ns)?.text == "hello a@example.org/r")
        #expect(ok.child("note", namespace: ns)?[attribute: "type"] == "info")
        let failed = try self.command(await handler("echo 'no such branch'; exit 65", format: .text).handle(try iq(), context: context))
        #expect(failed[attribute: "status"] == "completed")
        #expect(failed.child("note", namespace: ns)?[attribute: "type"] == "error")
        #expect(failed.child("note", namespace: ns)?.text == "no such branch")
        let silent = try self.command(await handler("exit 77", format: .text).handle(try iq(), context: context))
        #expect(silent.child("note", namespace: ns)?.text == "the command failed (auth/forbidden)")
        #expect(sessions.count == 0)
    }

    @Test func aMalformedFormFromTheHandlerIsAnErrorNoteAndNoSession() async throws {
        let command = handler(#"echo '{"command": {"status": "executing", "form": {"fields": [{"var": "x", "value": 42}]}}}'"#)
        let reply = try self.command(await command.handle(try iq(), context: context))
        #expect(reply[attribute: "status"] == "completed")
        #expect(reply.child("note", namespace: ns)?[attribute: "type"] == "error")
        #expect(reply.child("note", namespace: ns)?.text
            == "the command's handler gave an invalid answer: the command's form is malformed: fields[0].value must be a string or an array of strings, not a number")
        #expect(sessions.count == 0)
    }

    @Test func theSessionLimitRefusesANewSessionWithResourceConstraint() async throws {
        let command = handler(#"echo '{"command": {"status": "executing"}}'"#, maxSessions: 2)
        for _ in 0..<2 { _ = try self.command(await command.handle(try iq(), context: context)) }
        let refused = try #require(await command.handle(try iq(), context: context).replies.first)
        #expect(refused.error?.type == .wait)
        #expect(refused.error?.condition == .resourceConstraint)
        #expect(refused.error?.text == "the command \"c\" has 2 sessions open, the most it allows; finish or cancel one, or try again later")
        #expect(sessions.count == 2)
    }

    @Test func anotherRequesterCannotContinueSomeonesSession() async throws {
        let command = handler(#"echo '{"command": {"status": "executing"}}'"#)
        let id = try #require(try self.command(await command.handle(try iq(), context: context))[attribute: "sessionid"])
        let stolen = try #require(await command.handle(try iq(action: "next", sessionID: id, from: "mallory@example.org/r"), context: context).replies.first)
        #expect(try stolen.serialized().contains("<bad-sessionid xmlns=\"\(ns)\"/>"))
        let prev = try #require(await command.handle(try iq(action: "prev", sessionID: id), context: context).replies.first)
        #expect(try prev.serialized().contains("<bad-action xmlns=\"\(ns)\"/>"))
        #expect(sessions.count == 1)
    }
}
