import Routing
import Testing
import XMPPCore

@testable import Webhooks

private func stanza(_ xml: String) throws -> Stanza {
    try #require(Stanza(try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)[0]))
}

private let chat = "<message type='chat' id='m 1' from='alice@example.org/phone' to='echo@bot.example.org' xml:lang='de'><body>hi</body></message>"

@Suite struct WebhookRequestTests {
    @Test func urlPlaceholdersArePercentEncoded() throws {
        let url = WebhookRequest.render("http://127.0.0.1:9/in/{kind}/{type}/{to}?from={from}&id={id}&x={unknown}", try stanza(chat))
        #expect(url == "http://127.0.0.1:9/in/message/chat/echo%40bot.example.org?from=alice%40example.org%2Fphone&id=m%201&x={unknown}")
    }

    @Test func headersAndBodiesPerFormat() throws {
        let settings = WebhookSettings(urlTemplate: "http://h/", format: .json, headers: ["Authorization": "Bearer t"], userAgent: "stanzad/9")
        let request = try WebhookRequest(stanza: try stanza(chat), settings: settings, delivery: "d1")
        let headers = Dictionary(uniqueKeysWithValues: request.headers)
        #expect(headers["Content-Type"] == "application/json")
        #expect(headers["Accept"] == "application/xmpp+xml, application/json, text/plain")
        #expect(headers["User-Agent"] == "stanzad/9")
        #expect(headers["Stanzad-Delivery"] == "d1")
        #expect(headers["Content-Language"] == "de")
        #expect(headers["Authorization"] == "Bearer t")
        #expect(headers["Stanzad-Signature"] == nil)
        #expect(try JSONValue.parse(request.body)["body"]?.stringValue == "hi")

        var xml = settings
        xml.format = .xml
        let xmlRequest = try WebhookRequest(stanza: try stanza(chat), settings: xml, delivery: "d1")
        #expect(String(decoding: xmlRequest.body, as: UTF8.self).hasPrefix("<message "))
        #expect(Dictionary(uniqueKeysWithValues: xmlRequest.headers)["Content-Type"] == "application/xmpp+xml")
    }

    @Test func autoFormatTakesTheFirstSupportedTypeOfTheProbesAccept() {
        #expect(WebhookBody.negotiated(accept: "application/json") == .json)
        #expect(WebhookBody.negotiated(accept: "text/html, application/json, application/xmpp+xml") == .json)
        #expect(WebhookBody.negotiated(accept: "Application/XMPP+XML;q=0.5, application/json") == .xml)
        #expect(WebhookBody.negotiated(accept: "application/x-www-form-urlencoded") == .form)
        #expect(WebhookBody.negotiated(accept: "text/plain, */*") == nil)
    }

    @Test func formBodyCarriesTheTopLevelStringsAndNumbers() throws {
        let settings = WebhookSettings(urlTemplate: "http://h/", format: .xml, negotiate: true)
        let request = try WebhookRequest(stanza: try stanza(chat), settings: settings, delivery: "d1", body: .form)
        #expect(Dictionary(uniqueKeysWithValues: request.headers)["Content-Type"] == "application/x-www-form-urlencoded")
        #expect(String(decoding: request.body, as: UTF8.self)
            == "body=hi&from=alice%40example.org%2Fphone&id=m%201&kind=message&lang=de&to=echo%40bot.example.org&type=chat")
        #expect(String(decoding: WebhookRequest.form(["ping": true, "n": 3, "disco": ["node": "x"]]), as: UTF8.self) == "n=3&ping=")
    }

    @Test func aRoomMessageCarriesItsRoomAndNickInHeadersForEveryFormat() throws {
        let groupchat = "<message type='groupchat' from='ops@conference.example.org/Ada L.' to='bot@bot.example.org'><body>bot: hi</body></message>"
        let origin = RoomOrigin(room: "ops@conference.example.org", nick: "Ada L.", ownNick: "bot", isGroupchat: true)
        for format in [HandlerFormat.text, .xml, .json] {
            let settings = WebhookSettings(urlTemplate: "http://h/", format: format)
            let request = try WebhookRequest(stanza: try stanza(groupchat), settings: settings, delivery: "d1", room: origin)
            let headers = Dictionary(uniqueKeysWithValues: request.headers)
            #expect(headers["Stanzad-Room"] == "ops%40conference.example.org")
            #expect(headers["Stanzad-Nick"] == "Ada%20L.")
        }
        let plain = try WebhookRequest(stanza: try stanza(chat), settings: WebhookSettings(urlTemplate: "http://h/", format: .text), delivery: "d1")
        #expect(!plain.headers.contains { $0.0 == "Stanzad-Room" || $0.0 == "Stanzad-Nick" })
    }

    @Test func contentLanguageOnlyForAWellFormedTag() throws {
        let settings = WebhookSettings(urlTemplate: "http://h/", format: .text)
        let odd = "<message to='echo@bot.example.org' from='a@example.org/r' xml:lang='de&#13;&#10;X-Injected: 1'><body>hi</body></message>"
        let request = try WebhookRequest(stanza: try stanza(odd), settings: settings, delivery: "d1")
        #expect(!request.headers.contains { $0.0 == "Content-Language" || $0.0 == "X-Injected" })
        let fine = try WebhookRequest(stanza: try stanza("<message to='echo@bot.example.org' xml:lang='pt-BR'><body>hi</body></message>"), settings: settings, delivery: "d1")
        #expect(fine.headers.contains { $0 == ("Content-Language", "pt-BR") })
    }

    @Test func signatureIsHMACSHA256OfTheBody() {
        // Reference value from Python: hmac.new(b"k3y", b'{"a":1}', hashlib.sha256).hexdigest()
        #expect(WebhookRequest.signature(Array(#"{"a":1}"#.utf8), secret: "k3y")
            == "sha256=32db719f172c48e89dbfa56ed20d9e19cdbfdbe9f652ccdf5fa03494d2444853")
    }
}

@Suite struct WebhookResponseTests {
    func outcome(_ status: Int, _ contentType: String? = nil, _ body: String = "", reason: String? = nil) throws -> (HandlerOutcomeView, String?) {
        let (outcome, problem) = WebhookResponse.outcome(
            status: status, reason: reason, contentType: contentType, body: Array(body.utf8), incoming: try stanza(chat), maxStanza: 524_288)
        return (HandlerOutcomeView(replies: outcome.replies, failure: outcome.failure), problem)
    }

    struct HandlerOutcomeView {
        var replies: [Stanza]
        var failure: StanzaError?
    }

    @Test(arguments: [202, 204, 200])
    func noReplyForAcceptedNoContentOrEmpty(status: Int) throws {
        let (view, _) = try outcome(status, "application/json", status == 200 ? "" : "{\"body\": \"ignored\"}")
        #expect(view.replies.isEmpty && view.failure == nil)
    }

    @Test func bodiesByContentTypeWithParameters() throws {
        #expect(try outcome(200, "application/xmpp+xml; charset=utf-8", "<message><body>x</body></message>").0.replies.first?.body == "x")
        #expect(try outcome(200, "application/json; charset=UTF-8", #"{"body": "y"}"#).0.replies.first?.body == "y")
        #expect(try outcome(201, "text/plain; charset=utf-8", "z\n").0.replies.first?.body == "z")
    }

    @Test func unsupportedContentTypeIsAnInternalErrorWithAReason() throws {
        let (view, problem) = try outcome(200, "text/html", "<p>hi</p>")
        #expect(view.failure?.condition == .internalServerError)
        #expect(problem?.contains("unsupported content type") == true)
    }

    @Test func errorBodyWins() throws {
        let xml = "<message type='error'><error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        #expect(try outcome(500, "application/xmpp+xml", xml).0.replies.first?.error?.condition == .forbidden)
        let json = #"{"error": {"type": "modify", "condition": "not-acceptable", "text": "no"}}"#
        #expect(try outcome(400, "application/json", json).0.replies.first?.error?.condition == .notAcceptable)
    }

    @Test(arguments: [
        (301, "cancel", "undefined-condition"), (400, "modify", "bad-request"), (401, "auth", "not-authorized"),
        (402, "auth", "payment-required"), (403, "auth", "forbidden"), (404, "cancel", "item-not-found"),
        (405, "cancel", "not-allowed"), (406, "modify", "not-acceptable"), (407, "auth", "registration-required"),
        (408, "wait", "remote-server-timeout"), (409, "cancel", "conflict"), (410, "cancel", "gone"),
        (411, "modify", "bad-request"), (412, "cancel", "conflict"), (413, "modify", "resource-constraint"),
        (414, "modify", "resource-constraint"), (415, "cancel", "feature-not-implemented"), (416, "modify", "bad-request"),
        (422, "modify", "bad-request"), (423, "wait", "resource-constraint"), (429, "wait", "resource-constraint"),
        (431, "modify", "resource-constraint"), (451, "auth", "forbidden"), (500, "wait", "internal-server-error"),
        (501, "cancel", "feature-not-implemented"), (502, "wait", "remote-server-timeout"),
        (503, "cancel", "service-unavailable"), (504, "wait", "remote-server-timeout"), (507, "wait", "resource-constraint"),
        (511, "auth", "not-authorized"), (599, "cancel", "undefined-condition"),
    ])
    func statusTable(status: Int, type: String, condition: String) throws {
        let (view, _) = try outcome(status, "text/html", "<h1>oops</h1>", reason: "Custom Reason")
        #expect(view.failure?.type.rawValue == type)
        #expect(view.failure?.condition.rawValue == condition)
        #expect(view.failure?.text == "Custom Reason")
    }

    @Test func retryAfterSeconds() {
        #expect(WebhookResponse.retryAfter("3") == .seconds(3))
        #expect(WebhookResponse.retryAfter("Wed, 21 Oct 2015 07:28:00 GMT") == nil)
        #expect([429, 502, 503, 504].allSatisfy(WebhookResponse.isRetryable) && !WebhookResponse.isRetryable(500))
    }
}
