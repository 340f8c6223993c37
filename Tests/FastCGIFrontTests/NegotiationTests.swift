import Testing

@testable import FastCGIFront

@Suite struct NegotiationTests {
    @Test(arguments: [
        (nil as String?, "", "application/xmpp+xml"),
        (nil, "application/json", "application/json"),
        ("application/json", "application/xmpp+xml", "application/json"),
        ("application/json;q=0.5, application/xmpp+xml;q=0.9", "application/json", "application/xmpp+xml"),
        ("*/*", "application/json", "application/json"),
        ("*/*", "text/plain", "application/xmpp+xml"),
        ("application/*;q=0.8, application/json;q=0", "", "application/xmpp+xml"),
        ("text/html", "application/json", "application/json"),
        ("application/xmpp+xml;q=0, application/json;q=0", "", "application/xmpp+xml"),
    ])
    func choosesByQualityThenRequestTypeThenXML(accept: String?, requestType: String, expected: String) {
        #expect(Negotiation.choose(accept: accept, requestType: requestType) == expected)
    }
}
