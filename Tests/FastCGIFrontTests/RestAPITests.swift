import Synchronization
import Testing
import XMPPCore

@testable import FastCGIFront

/// A sender that answers as told, and remembers what it was given.
final class FakeSender: StanzaSender, Sendable {
    enum Answer: Sendable {
        case delivered
        case reply(Stanza)
        case failure(SendFailure)
        /// Keeps the request waiting until cancelled (then it fails as the link would at shutdown).
        case wait
    }

    private let state = Mutex<(answer: Answer, link: String, sent: [Stanza], cancelled: Int)>((.delivered, "connected", [], 0))
    let instanceLinkState: (jid: String, state: String)?

    init(_ answer: Answer = .delivered, link: String = "connected", instance: (jid: String, state: String)? = nil) {
        instanceLinkState = instance
        state.withLock { $0.answer = answer; $0.link = link }
    }

    var sent: [Stanza] { state.withLock { $0.sent } }
    var cancelled: Int { state.withLock { $0.cancelled } }
    var linkState: String { state.withLock { $0.link } }

    func deliver(_ stanza: Stanza, wait: Duration, completion: @escaping @Sendable (Result<Void, SendFailure>) -> Void) -> RestCancellation? {
        answer(stanza) { result in completion(result.map { _ in () }) }
    }

    func ask(_ iq: Stanza, timeout: Duration, maxPending: Int, completion: @escaping @Sendable (Result<Stanza, SendFailure>) -> Void) -> RestCancellation? {
        answer(iq, completion)
    }

    private func answer(_ stanza: Stanza, _ completion: @escaping @Sendable (Result<Stanza, SendFailure>) -> Void) -> RestCancellation? {
        let answer = state.withLock { state in
            state.sent.append(stanza)
            return state.answer
        }
        switch answer {
        case .delivered: completion(.success(stanza))
        case .reply(let reply): completion(.success(reply))
        case .failure(let error): completion(.failure(error))
        case .wait:
            return RestCancellation { [self] in
                state.withLock { $0.cancelled += 1 }
                completion(.failure(SendFailure(.unavailable("shutting-down"), "cancelled")))
            }
        }
        return nil
    }
}

@Suite struct RestAPITests {
    static let token = "Bearer dG9rZW4="

    static func api(_ sender: FakeSender) -> RestAPI {
        RestAPI(settings: RestSettings(domain: "bot.example.org", credentials: [token], maxBody: 128), sender: sender)
    }

    static func post(_ body: String, path: String = "/rest", type: String = "application/xmpp+xml",
                     accept: String? = "application/json", timeout: String? = nil) -> RestRequest {
        RestRequest(method: "POST", path: path, contentType: type, body: Array(body.utf8), authorization: token,
                    accept: accept, timeout: timeout)
    }

    static let message = "<message to='alice@example.org'><body>hi</body></message>"
    static let ping = "<iq type='get' to='example.org' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>"

    private func condition(_ response: RestResponse) -> String? {
        guard case .object(let top)? = try? JSONValue.parse(response.body), case .object(let error)? = top["error"],
              case .string(let condition)? = error["condition"] else { return nil }
        return condition
    }

    @Test func aMessageIsStampedFromTheComponentAndAnswered202() async throws {
        let sender = FakeSender()
        let response = await Self.api(sender).handle(Self.post(Self.message))
        #expect(response.status == 202)
        let sent = try #require(sender.sent.first)
        #expect(sent.from == "bot.example.org" && sent.to == "alice@example.org" && sent.id != nil)
    }

    @Test func anIqGetsItsReplyAs200() async throws {
        var reply = Stanza(kind: .iq, type: "result", id: "p1", from: "example.org", to: "bot.example.org")
        reply.element.append(Element("pong", namespace: "urn:x"))
        let response = await Self.api(FakeSender(.reply(reply))).handle(Self.post(Self.ping, accept: "application/xmpp+xml"))
        #expect(response.status == 200)
        #expect(response.header("Content-Type") == "application/xmpp+xml")
        #expect(String(decoding: response.body, as: UTF8.self).contains("type=\"result\""))
    }

    @Test(arguments: [
        (SendFailure.Reason.timeout, true, 504, "remote-server-timeout"),
        (.linkLost, true, 502, "recipient-unavailable"),
        (.tooManyPending, true, 503, "resource-constraint"),
        (.tooLarge, false, 413, "resource-constraint"),
        (.invalidFrom, false, 403, "forbidden"),
        (.invalidStanza, false, 422, "bad-request"),
        (.duplicateID, true, 409, "conflict"),
        (.unavailable("queue-full"), false, 503, "service-unavailable"),
        (.unavailable("expired"), false, 503, "service-unavailable"),
        (.unavailable("shutting-down"), true, 503, "service-unavailable"),
    ])
    func sendErrorsBecomeTheirStatus(reason: SendFailure.Reason, iq: Bool, status: Int, expected: String) async {
        let api = Self.api(FakeSender(.failure(SendFailure(reason, "test"))))
        let response = await api.handle(Self.post(iq ? Self.ping : Self.message))
        #expect(response.status == status)
        #expect(condition(response) == expected)
        if status == 503 { #expect(response.header("Retry-After") != nil) }
    }

    @Test func requestProblemsAreAnsweredWithoutSending() async {
        let sender = FakeSender()
        let api = Self.api(sender)
        var noAuth = Self.post(Self.message)
        noAuth.authorization = nil
        var wrongAuth = Self.post(Self.message)
        wrongAuth.authorization = "Bearer nope"
        var get = Self.post(Self.message)
        get.method = "GET"
        let cases: [(RestRequest, Int)] = [
            (noAuth, 401), (wrongAuth, 403), (get, 405),
            (Self.post(Self.message, path: "/elsewhere"), 404),
            (Self.post(String(repeating: "x", count: 129), type: "text/plain"), 413),
            (Self.post("<message", type: "application/xmpp+xml"), 400),
            (Self.post("<message/>"), 422),
            (Self.post("x", type: "image/png"), 415),
            (Self.post(Self.ping, timeout: "soon"), 400),
        ]
        for (request, status) in cases {
            #expect(await api.handle(request).status == status, "\(request.path) \(request.method)")
        }
        #expect(sender.sent.isEmpty)
    }

    @Test func healthFollowsTheLinkWithoutCredentials() async {
        let request = RestRequest(method: "GET", path: "/rest/health")
        #expect(await Self.api(FakeSender(link: "connected")).handle(request).status == 200)
        #expect(await Self.api(FakeSender(link: "connecting")).handle(request).status == 503)
    }

    @Test func healthNeedsTheInstanceLinkTooAndShowsIt() async throws {
        let request = RestRequest(method: "GET", path: "/rest/health")
        let up = await Self.api(FakeSender(instance: ("i1.bot.example.org", "connected"))).handle(request)
        #expect(up.status == 200)
        let body = try JSONValue.parse(up.body)
        #expect(body == .object(["component": .string("connected"), "jid": .string("bot.example.org"),
                                 "instance": .string("connected"), "instance_jid": .string("i1.bot.example.org")]))
        #expect(await Self.api(FakeSender(instance: ("i1.bot.example.org", "connecting"))).handle(request).status == 503,
                "a balancer sends iqs only where their results can come back")
        #expect(await Self.api(FakeSender(link: "failed", instance: ("i1.bot.example.org", "connected"))).handle(request).status == 503)
    }

    @Test func aWaitingRequestIsAnsweredOnceItsCancellationRuns() async {
        let sender = FakeSender(.wait)
        let answers = Mutex<[Int]>([])
        let cancellation = Self.api(sender).handle(Self.post(Self.ping)) { response in
            answers.withLock { $0.append(response.status) }
        }
        #expect(answers.withLock { $0 }.isEmpty, "a long-poll waits without a task")
        cancellation?.cancel()
        #expect(answers.withLock { $0 } == [503])
        #expect(sender.cancelled == 1)
    }
}
