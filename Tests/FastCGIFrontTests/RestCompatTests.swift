import Synchronization
import Testing
import XMPPCore

@testable import FastCGIFront

/// A sender whose archive queries bring result messages before the reply (as a MAM service sends them).
final class ArchiveSender: StanzaSender, Sendable {
    let results: [Stanza]
    let collected = Mutex<[Stanza]>([])
    init(results: [Stanza]) { self.results = results }
    var linkState: String { "connected" }

    func deliver(_ stanza: Stanza, wait: Duration, completion: @escaping @Sendable (Result<Void, SendFailure>) -> Void) -> RestCancellation? {
        completion(.success(()))
        return nil
    }

    func ask(_ iq: Stanza, timeout: Duration, maxPending: Int, completion: @escaping @Sendable (Result<Stanza, SendFailure>) -> Void) -> RestCancellation? {
        completion(.success(Stanza(kind: .iq, type: "result", id: iq.id, from: iq.to, to: iq.from)))
        return nil
    }

    func ask(_ iq: Stanza, collecting: @escaping @Sendable (Stanza) -> Bool, timeout: Duration, maxPending: Int,
             completion: @escaping @Sendable (Result<[Stanza], SendFailure>) -> Void) -> RestCancellation? {
        let taken = results.filter(collecting)
        collected.withLock { $0 = taken }
        return ask(iq, timeout: timeout, maxPending: maxPending) { completion($0.map { taken + [$0] }) }
    }
}

@Suite struct RestCompatTests {
    static func get(_ path: String, query: String = "", accept: String = "application/json") -> RestRequest {
        RestRequest(method: "GET", path: path, query: query, authorization: RestAPITests.token, accept: accept)
    }

    @Test(arguments: [
        ("archive", "with=b%40example.org&max=5", "query", "urn:xmpp:mam:2", "set"),
        ("extdisco", "type=stun", "services", "urn:xmpp:extdisco:2", "get"),
        ("lastactivity", "", "query", "jabber:iq:last", "get"),
        ("oob", "", "query", "jabber:iq:oob", "get"),
        ("payload", "datatype=urn%3Ax&data=1", "payload", "urn:xmpp:json-msg:0", "get"),
        ("stats", "", "query", "http://jabber.org/protocol/stats", "get"),
        ("upload_request", "filename=a.txt&size=12", "request", "urn:xmpp:http:upload:0", "get"),
        ("command", "node=uptime", "command", "http://jabber.org/protocol/commands", "set"),
        ("disco", "node=n", "query", "http://jabber.org/protocol/disco#info", "get"),
        ("ping", "", "ping", "urn:xmpp:ping", "get"),
    ])
    func getShortcutAsksTheQuery(name: String, query: String, element: String, namespace: String, type: String) async throws {
        let sender = FakeSender(.reply(Stanza(kind: .iq, type: "result", id: "x")))
        let response = await RestAPITests.api(sender).handle(Self.get("/rest/\(name)/example.org", query: query))
        #expect(response.status == 200)
        let sent = try #require(sender.sent.first)
        #expect(sent.type == type && sent.to == "example.org")
        let payload = try #require(sent.element.elements.first)
        #expect(payload.name == element && payload.namespace == namespace)
        if name == "upload_request" { #expect(payload[attribute: "size"] == "12") }
        if name == "disco" || name == "command" { #expect(payload[attribute: "node"] == (name == "disco" ? "n" : "uptime")) }
    }

    @Test func unknownShortcutIs404() async {
        let response = await RestAPITests.api(FakeSender()).handle(Self.get("/rest/frobnicate/example.org"))
        #expect(response.status == 404)
    }

    @Test func echoEncodesResultsAndErrorsWithoutATo() async throws {
        let api = RestAPITests.api(FakeSender())
        for xml in ["<iq type='result' id='r'/>",
                    "<iq type='error' id='e'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"] {
            let response = await api.handle(RestAPITests.post(xml, path: "/rest/echo"))
            #expect(response.status == 200)
            let json = try JSONValue.parse(response.body)
            #expect(json["kind"] == "iq" && json["from"] == "bot.example.org")
        }
        // Sending the same is still refused.
        #expect(await api.handle(RestAPITests.post("<iq type='result' id='r' to='a@example.org'/>")).status == 422)
    }

    @Test func aPathSegmentStartingWithACombiningCharacterStillSplits() async {
        // "/" + U+1F3FB (an emoji modifier) is one Character; the route must still see two segments.
        let response = await RestAPITests.api(FakeSender()).handle(Self.get("/rest/stats/\u{1F3FB}"))
        #expect(response.status != 404)
    }

    @Test func archiveQueryAnswersItsResultsAndTheReplyTogether() async throws {
        func result(_ n: Int, queryID: String?) -> Stanza {
            var message = Stanza(kind: .message, id: "m\(n)", from: "room@muc.example.org", to: "bot.example.org")
            var result = Element("result", namespace: "urn:xmpp:mam:2", attributes: [Attribute(name: "id", value: "a\(n)")])
            result[attribute: "queryid"] = queryID
            message.element.append(result)
            return message
        }
        let sender = ArchiveSender(results: [result(1, queryID: nil), result(2, queryID: "other"), result(3, queryID: nil)])
        let response = await RestAPI(settings: RestSettings(domain: "bot.example.org", credentials: [RestAPITests.token]), sender: sender)
            .handle(Self.get("/rest/archive/room@muc.example.org", query: "max=10"))
        #expect(response.status == 200)
        let json = try JSONValue.parse(response.body)
        let stanzas = try #require(json["xmpp"]?.arrayValue)
        #expect(stanzas.map { $0["id"] } == ["m1", "m3", stanzas.last?["id"]])
        #expect(stanzas.last?["kind"] == "iq")
        let xml = await RestAPI(settings: RestSettings(domain: "bot.example.org", credentials: [RestAPITests.token]), sender: sender)
            .handle(Self.get("/rest/archive/room@muc.example.org", accept: "application/xmpp+xml"))
        #expect(String(decoding: xml.body, as: UTF8.self).hasPrefix("<xmpp"))
    }
}
