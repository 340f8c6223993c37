import Testing
import XMPPCore

@testable import Routing

private func stanza(_ xml: String) throws -> Stanza {
    try #require(Stanza(try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)[0]))
}

private let ns = AdHocCommand.namespace

/// XEP-0050 requests, the json contract (SPEC §15), replies and errors; disco listing by the built-in responder.
@Suite struct AdHocCommandTests {
    @Test func aRequestIsReadWithItsActionSessionAndForm() throws {
        let iq = try stanza("""
            <iq type='set' id='c1' from='a@example.org/r' to='bot.example.org'><command xmlns='\(ns)' node='remind' action='complete' \
            sessionid='s1'><x xmlns='jabber:x:data' type='submit'><field var='what'><value>milk</value></field></x></command></iq>
            """)
        let request = try AdHocCommand.request(in: iq).get()
        #expect(request.node == "remind")
        #expect(request.action == .complete)
        #expect(request.sessionID == "s1")
        #expect(request.form?.fields.first?.values == ["milk"])
        let first = try AdHocCommand.request(in: try stanza("<iq type='set' id='c2' to='bot.example.org'><command xmlns='\(ns)' node='remind'/></iq>")).get()
        #expect(first.action == .execute)
        #expect(first.sessionID == nil)
    }

    @Test func anUnknownActionIsAMalformedActionError() throws {
        let iq = try stanza("<iq type='set' id='c1' from='a@example.org/r' to='bot.example.org'><command xmlns='\(ns)' node='remind' action='jump'/></iq>")
        guard case .failure(let failure) = AdHocCommand.request(in: iq) else {
            Issue.record("an unknown action was accepted")
            return
        }
        #expect(try failure.reply(to: iq, by: "bot.example.org").serialized() == """
            <iq from="bot.example.org" to="a@example.org/r" id="c1" type="error"><error type="modify" by="bot.example.org">\
            <bad-request xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/><text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">\
            unknown action "jump" (XEP-0050 knows execute, next, prev, complete and cancel)</text>\
            <malformed-action xmlns="http://jabber.org/protocol/commands"/></error></iq>
            """)
    }

    @Test func theJSONHandlerInputHasCommandDataTypedByThePreviousFormAndSession() throws {
        let iq = try stanza("""
            <iq type='set' id='c1' from='a@example.org/r' to='bot.example.org'><command xmlns='\(ns)' node='remind' action='next' \
            sessionid='s1'><x xmlns='jabber:x:data' type='submit'><field var='what'><value>milk</value></field></x></command></iq>
            """)
        let request = try AdHocCommand.request(in: iq).get()
        let previous = DataForm(fields: [.init(variable: "what", type: "text-single")])
        guard case .object(let input) = AdHocCommand.input(for: iq, request: request, sessionID: "s1", session: ["step": 1], previousForm: previous) else {
            Issue.record("input is not an object")
            return
        }
        #expect(input["kind"] == "iq")
        #expect(input["from"] == "a@example.org/r")
        #expect(input["command"] == .object(["node": "remind", "action": "next", "sessionid": "s1", "data": .object(["what": "milk"])]))
        #expect(input["session"] == .object(["step": 1]))
        #expect(input["stanza"] != nil)
        guard case .object(let first) = AdHocCommand.input(for: iq, request: request, sessionID: "s1", session: nil, previousForm: nil) else { return }
        #expect(first["session"] == nil)
    }

    @Test func aJSONAnswerWithAFormIsExecutingAndKeepsItsSession() throws {
        let answer = try AdHocCommand.jsonAnswer(Array("""
            {"command": {"form": {"title": "T", "fields": [{"var": "what", "type": "text-single"}]},
             "actions": {"execute": "complete", "complete": true}, "note": {"type": "warn", "text": "careful"}}, "session": {"n": 1}}
            """.utf8))
        #expect(answer.status == .executing)
        #expect(answer.form?.type == "form")
        #expect(answer.session == .object(["n": 1]))
        #expect(answer.allowedNext == [.execute, .complete, .cancel])
        let iq = try stanza("<iq type='set' id='c1' from='a@example.org/r' to='bot.example.org'><command xmlns='\(ns)' node='remind'/></iq>")
        #expect(try AdHocCommand.reply(to: iq, node: "remind", sessionID: "s9", answer: answer).serialized() == """
            <iq from="bot.example.org" to="a@example.org/r" id="c1" type="result"><command xmlns="\(ns)" node="remind" sessionid="s9" \
            status="executing"><actions execute="complete"><complete/></actions><note type="warn">careful</note>\
            <x xmlns="jabber:x:data" type="form"><title>T</title><field var="what" type="text-single"/></x></command></iq>
            """)
    }

    @Test func emptyOutputCompletesAndTextOutputIsAnInfoNote() throws {
        #expect(try AdHocCommand.jsonAnswer(Array(" \n".utf8)) == .init(status: .completed))
        #expect(try AdHocCommand.jsonAnswer(objects: []) == .init(status: .completed))
        #expect(try AdHocCommand.textAnswer(Array("up 3 days\n".utf8)) == .init(status: .completed, note: .init(.info, "up 3 days")))
        #expect(try AdHocCommand.textAnswer([]) == .init(status: .completed))
        #expect(try AdHocCommand.jsonAnswer(Array(#"{"command": {"status": "completed", "note": {"text": "done"}}}"#.utf8))
            == .init(status: .completed, note: .init(.info, "done")))
    }

    @Test func malformedAnswersAreProblemsThatSayWhat() {
        func problem(_ text: String) -> String? {
            do { _ = try AdHocCommand.jsonAnswer(Array(text.utf8)); return nil } catch { return error.description }
        }
        #expect(problem("not json")?.hasPrefix("the command's output is not valid JSON") == true)
        #expect(problem("[1]") == "the command's answer must be an object {\"command\": {…}, \"session\": …}, not an array")
        #expect(problem(#"{"session": 1}"#) == "the command's answer has no \"command\" object")
        #expect(problem(#"{"command": {"form": {"fields": [{"var": "x", "value": 42}]}}}"#)
            == "the command's form is malformed: fields[0].value must be a string or an array of strings, not a number")
        #expect(problem(#"{"command": {"status": "done"}}"#) == "command.status must be \"executing\" or \"completed\", not \"done\"")
        #expect(problem(#"{"command": {"note": "hi"}}"#)?.hasPrefix("command.note must be") == true)
        #expect(problem(#"{"command": {"status": "executing", "actions": {"execute": "next"}}}"#)
            == "command.actions.execute is \"next\" but that action is not offered (set \"next\": true)")
        #expect(problem(#"{"command": {"actions": {"next": true}}}"#) == "a completed command offers no actions (use \"status\": \"executing\" with actions)")
        #expect(problem(#"{"command": {"actions": {"jump": true}, "status": "executing"}}"#)
            == "unknown key \"jump\" in command.actions (allowed: execute, next, prev, complete)")
    }

    @Test func aSpecificConditionGoesInsideTheError() throws {
        let iq = try stanza("<iq type='set' id='c1' from='a@example.org/r' to='bot.example.org'><command xmlns='\(ns)' node='remind' sessionid='x'/></iq>")
        let xml = try AdHocCommand.Failure(StanzaError(.modify, .badRequest, text: "no session"), specific: "bad-sessionid").reply(to: iq, by: "bot.example.org").serialized()
        #expect(xml.contains("<bad-request xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\"/>"))
        #expect(xml.hasSuffix("<bad-sessionid xmlns=\"\(ns)\"/></error></iq>"))
    }
}

@Suite struct CommandDiscoTests {
    let responder = BuiltInResponder(
        domain: "bot.example.org", discoName: "My Bot", softwareVersion: "1",
        commands: [
            CommandListing(jid: "bot.example.org", node: "uptime", name: "Uptime", from: nil),
            CommandListing(jid: "bot.example.org", node: "deploy", name: "Deploy", from: [JIDPattern("*@admins.example.org")]),
            CommandListing(jid: "remind@bot.example.org", node: "remind", name: "Set a reminder", from: nil),
        ])

    func ask(_ from: String, _ to: String, _ query: String) throws -> String {
        let replies = responder.respond(to: try stanza("<iq type='get' id='q' from='\(from)' to='\(to)'>\(query)</iq>"))
        return try #require(replies.first).serialized()
    }

    @Test func theCommandsNodeListsWhatTheRequesterMayRun() throws {
        let items = "<query xmlns='http://jabber.org/protocol/disco#items' node='\(ns)'/>"
        #expect(try ask("a@example.org/r", "bot.example.org", items) == """
            <iq from="bot.example.org" to="a@example.org/r" id="q" type="result"><query xmlns="http://jabber.org/protocol/disco#items" \
            node="\(ns)"><item jid="bot.example.org" node="uptime" name="Uptime"/></query></iq>
            """)
        let admin = try ask("root@admins.example.org/r", "bot.example.org", items)
        #expect(admin.contains("node=\"uptime\"") && admin.contains("<item jid=\"bot.example.org\" node=\"deploy\" name=\"Deploy\"/>"))
        #expect(try ask("a@example.org/r", "remind@bot.example.org", items).contains("<item jid=\"remind@bot.example.org\" node=\"remind\" name=\"Set a reminder\"/>"))
        #expect(try ask("a@example.org/r", "other@bot.example.org", items).hasSuffix("node=\"\(ns)\"/></iq>"))
    }

    @Test func aCommandNodeIsAnAutomationCommandNodeForThoseWhoMaySeeIt() throws {
        let info = try ask("a@example.org/r", "bot.example.org", "<query xmlns='http://jabber.org/protocol/disco#info' node='uptime'/>")
        #expect(info.contains("<identity category=\"automation\" type=\"command-node\" name=\"Uptime\"/>"))
        #expect(info.contains("<feature var=\"\(ns)\"/>") && info.contains("<feature var=\"jabber:x:data\"/>"))
        #expect(try ask("a@example.org/r", "bot.example.org", "<query xmlns='http://jabber.org/protocol/disco#info' node='deploy'/>").contains("item-not-found"))
        #expect(try ask("a@example.org/r", "bot.example.org", "<query xmlns='http://jabber.org/protocol/disco#info' node='\(ns)'/>")
            .contains("<identity category=\"automation\" type=\"command-list\"/>"))
    }

    @Test func theOfferingJIDAdvertisesTheCommandsFeature() throws {
        let info = "<query xmlns='http://jabber.org/protocol/disco#info'/>"
        #expect(try ask("a@example.org/r", "bot.example.org", info).contains("<feature var=\"\(ns)\"/>"))
        #expect(try ask("a@example.org/r", "remind@bot.example.org", info).contains("<feature var=\"\(ns)\"/>"))
        #expect(try !ask("a@example.org/r", "echo@bot.example.org", info).contains(ns))
    }

    @Test func aCommandNobodyOffersHereIsItemNotFound() throws {
        let replies = responder.respond(to: try stanza("<iq type='set' id='x' from='a@example.org/r' to='bot.example.org'><command xmlns='\(ns)' node='nope'/></iq>"))
        let xml = try #require(replies.first).serialized()
        #expect(xml.contains("<item-not-found xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\"/>"))
        #expect(xml.contains("no command \"nope\" at bot.example.org"))
    }
}
