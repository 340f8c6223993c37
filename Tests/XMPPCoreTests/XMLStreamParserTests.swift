import Testing

@testable import XMPPCore

/// Feeds `bytes` in the given split and collects events, or the error that ended the stream.
private func run(_ bytes: [UInt8], split: Int?, limits: XMLLimits = XMLLimits()) -> (events: [XMLStreamEvent], error: XMLStreamError?) {
    let parser = XMLStreamParser(limits: limits)
    var events: [XMLStreamEvent] = []
    let step = split ?? max(bytes.count, 1)
    var index = 0
    while index < bytes.count {
        let end = min(index + step, bytes.count)
        do {
            try parser.feed(bytes[index..<end], into: &events)
        } catch {
            return (events, error)
        }
        index = end
    }
    return (events, nil)
}

/// The same input whole, byte at a time and in 7-byte pieces must give identical results.
private func parseAllSplits(_ text: String, limits: XMLLimits = XMLLimits()) -> (events: [XMLStreamEvent], error: XMLStreamError?) {
    let bytes = Array(text.utf8)
    let whole = run(bytes, split: nil, limits: limits)
    let single = run(bytes, split: 1, limits: limits)
    let seven = run(bytes, split: 7, limits: limits)
    #expect(whole.events == single.events, "byte-at-a-time events differ from whole")
    #expect(whole.error?.code == single.error?.code, "byte-at-a-time error differs: \(String(describing: whole.error)) vs \(String(describing: single.error))")
    #expect(whole.events == seven.events)
    #expect(whole.error?.code == seven.error?.code)
    return whole
}

private func stanzas(_ events: [XMLStreamEvent]) -> [Element] {
    events.compactMap { if case .stanza(let e) = $0 { e } else { nil } }
}

private func refusals(_ events: [XMLStreamEvent]) -> [RefusedStanza] {
    events.compactMap { if case .refused(let r) = $0 { r } else { nil } }
}

/// The input cut in two at every byte boundary must give the same events and error as the input whole (and byte
/// at a time, and in 7-byte pieces: `parseAllSplits`).
private func parseAtEveryCut(_ text: String, limits: XMLLimits = XMLLimits()) -> (events: [XMLStreamEvent], error: XMLStreamError?) {
    let whole = parseAllSplits(text, limits: limits)
    let bytes = Array(text.utf8)
    for cut in 1..<bytes.count {
        let parser = XMLStreamParser(limits: limits)
        var events: [XMLStreamEvent] = []
        var error: XMLStreamError?
        do {
            try parser.feed(bytes[..<cut], into: &events)
            try parser.feed(bytes[cut...], into: &events)
        } catch let e {
            error = e
        }
        #expect(events == whole.events, "cut at \(cut): events differ from whole")
        #expect(error?.code == whole.error?.code, "cut at \(cut): error differs from whole")
        if events != whole.events || error?.code != whole.error?.code { break }
    }
    return whole
}

let prosodyHeader =
    "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xml:lang='en' "
    + "id='0f5c4ab2-6c5e-4b7e-9a8b-3c1d2e4f5a6b' from='bot.example.org' xmlns='jabber:component:accept'>"

@Suite struct XMLStreamParserTests {
    @Test func prosodyHeaderAndHandshake() throws {
        let result = parseAllSplits(prosodyHeader + "<handshake/>")
        #expect(result.error == nil)
        #expect(result.events.count == 2)
        guard case .streamOpened(let header) = result.events.first else {
            Issue.record("no header")
            return
        }
        #expect(header.name == "stream")
        #expect(header.namespace == Namespace.stream)
        #expect(header[attribute: "id"] == "0f5c4ab2-6c5e-4b7e-9a8b-3c1d2e4f5a6b")
        #expect(header[attribute: "from"] == "bot.example.org")
        #expect(header[attribute: "xml:lang"] == "en")
        #expect(stanzas(result.events) == [Element("handshake", namespace: Namespace.componentAccept)])
    }

    @Test func messageWithNestedForeignNamespaces() throws {
        let xml = prosodyHeader + """
            <message from='alice@example.org/phone' to='echo@bot.example.org' type='chat' id='m1'>\
            <body>hi</body><active xmlns='http://jabber.org/protocol/chatstates'/>\
            <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' to='x@y'><body>inner</body></message>\
            </forwarded><x:data xmlns:x='jabber:x:data' x:type='form'><x:field var='a'/></x:data></message>
            """
        let result = parseAllSplits(xml)
        #expect(result.error == nil)
        let message = try #require(stanzas(result.events).first)
        #expect(message.namespace == Namespace.componentAccept)
        #expect(message.child("body")?.text == "hi")
        #expect(message.child("body")?.namespace == Namespace.componentAccept)
        #expect(message.child("active")?.namespace == "http://jabber.org/protocol/chatstates")
        let inner = try #require(message.child("forwarded")?.child("message"))
        #expect(inner.namespace == Namespace.client)
        #expect(inner.child("body")?.text == "inner")
        let data = try #require(message.child("data", namespace: "jabber:x:data"))
        #expect(data.attributes.first?.namespace == "jabber:x:data")
        #expect(data.child("field")?[attribute: "var"] == "a")
    }

    @Test func ampersandsInAttributesAndText() throws {
        let xml = prosodyHeader + """
            <message to='a@b' id='Tom &amp; Jerry &#38; &lt;co&gt; &quot;q&quot; &apos;' type='chat'>\
            <body>x &amp; y &lt; z &#38; &#x26;amp; &gt;</body></message>
            """
        let result = parseAllSplits(xml)
        #expect(result.error == nil)
        let message = try #require(stanzas(result.events).first)
        #expect(message[attribute: "id"] == "Tom & Jerry & <co> \"q\" '")
        #expect(message.child("body")?.text == "x & y < z & &amp; >")
    }

    @Test func doubleEscapedAmpersandStaysEscapedOnce() throws {
        let result = parseAllSplits(prosodyHeader + "<iq id='a&amp;amp;b' type='get' to='x'/>")
        let iq = try #require(stanzas(result.events).first)
        #expect(iq[attribute: "id"] == "a&amp;b")
    }

    @Test func cdataIsText() throws {
        let result = parseAllSplits(prosodyHeader + "<message to='a@b'><body><![CDATA[<b>bold</b> & raw]]> tail</body></message>")
        #expect(result.error == nil)
        #expect(try #require(stanzas(result.events).first).child("body")?.text == "<b>bold</b> & raw tail")
    }

    @Test func utf8BeyondTheBMP() throws {
        let text = "héllo 𝄞 🎉 日本語 \u{10FFFD}"
        let result = parseAllSplits(prosodyHeader + "<message to='a@b' id='🎉'><body>\(text)</body></message>")
        #expect(result.error == nil)
        let message = try #require(stanzas(result.events).first)
        #expect(message.child("body")?.text == text)
        #expect(message[attribute: "id"] == "🎉")
    }

    @Test func whitespaceKeepalivesBetweenStanzasAndClose() throws {
        let result = parseAllSplits(prosodyHeader + " \n <presence to='a@b'/> \t <iq type='get' id='1' to='a'/>  </stream:stream>")
        #expect(result.error == nil)
        #expect(stanzas(result.events).map(\.name) == ["presence", "iq"])
        #expect(result.events.last == .streamClosed)
    }

    @Test func attributeWhitespaceAndNewlinesInText() throws {
        let result = parseAllSplits(prosodyHeader + "<message to='a@b'><body>line1\nline2\r\nline3</body></message>")
        #expect(try #require(stanzas(result.events).first).child("body")?.text == "line1\nline2\nline3")
    }

    // MARK: Rejections (stream)

    static let billionLaughs = """
        <?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\
        <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">\
        <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
        """
    static let externalEntity = "<!DOCTYPE foo [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>"

    @Test func billionLaughsIsRestricted() {
        let result = parseAllSplits(Self.billionLaughs + "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'><message><body>&lol4;</body></message>")
        #expect(result.error?.code == .restrictedXML)
        #expect(result.events.isEmpty)
    }

    @Test func externalEntityIsRestricted() {
        let result = parseAllSplits(Self.externalEntity + "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'><message><body>&xxe;</body></message>")
        #expect(result.error?.code == .restrictedXML)
    }

    @Test func undeclaredEntityIsNotWellFormed() {
        let result = parseAllSplits(prosodyHeader + "<message to='a@b'><body>&xxe;</body></message>")
        #expect(result.error?.code == .notWellFormed)
        #expect(stanzas(result.events).isEmpty)
    }

    @Test func doctypeIsRestricted() {
        let result = parseAllSplits("<!DOCTYPE stream><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>")
        #expect(result.error?.code == .restrictedXML)
    }

    @Test func commentIsRestricted() {
        let result = parseAllSplits(prosodyHeader + "<message to='a@b'><!-- hi --><body/></message>")
        #expect(result.error?.code == .restrictedXML)
        #expect(result.error?.streamCondition == "restricted-xml")
    }

    @Test func processingInstructionIsRestricted() {
        let result = parseAllSplits(prosodyHeader + "<message to='a@b'><?php echo 1; ?></message>")
        #expect(result.error?.code == .restrictedXML)
    }

    /// A stanza whose innermost element is at `levels` (the stanza itself is level 1).
    static func nested(_ levels: Int) -> String {
        "<message to='a@b'>" + String(repeating: "<x>", count: levels - 1) + String(repeating: "</x>", count: levels - 1) + "</message>"
    }

    @Test func nesting64IsAcceptedAnd65IsRefusedWithoutEndingTheStream() {
        let ok = parseAllSplits(prosodyHeader + Self.nested(64))
        #expect(ok.error == nil)
        #expect(stanzas(ok.events).count == 1)
        let deep = parseAllSplits(prosodyHeader + Self.nested(65) + "<message to='a@b' id='next'/>")
        #expect(deep.error == nil, "a too-deep stanza costs that stanza, not the stream")
        #expect(refusals(deep.events).map(\.reason.code) == [.depthExceeded])
        #expect(stanzas(deep.events).map { $0[attribute: "id"] } == ["next"])
    }

    /// A message nested `levels` deep with addressing attributes, the way a client sends it.
    static func deepMessage(_ levels: Int, id: String) -> String {
        "<message from='alice@example.test/x' to='echo@bot.example.test' type='chat' id='\(id)'>"
            + String(repeating: "<x>", count: levels - 1) + "text" + String(repeating: "</x>", count: levels - 1)
            + "</message>"
    }

    @Test func deepStanzaIsSkippedAndTheNextOneArrivesAtEveryCut() {
        let text = prosodyHeader + Self.deepMessage(100, id: "deep") + " <message to='a@b' id='after'><body>hi</body></message>"
        let result = parseAtEveryCut(text)
        #expect(result.error == nil)
        guard case .streamOpened = result.events.first, result.events.count == 3 else {
            Issue.record("expected header, refusal, stanza: \(result.events)")
            return
        }
        #expect(
            result.events[1]
                == .refused(
                    RefusedStanza(
                        name: "message", namespace: Namespace.componentAccept, id: "deep", from: "alice@example.test/x",
                        to: "echo@bot.example.test", type: "chat",
                        reason: XMLStreamError(.depthExceeded, "stanza nested deeper than 64 levels"))))
        #expect(stanzas(result.events).first?.child("body")?.text == "hi")
    }

    @Test func depthIsCountedWhileSkippingSoTheStanzasEndIsFound() {
        // Inside the skipped stanza: elements named like the stanza, and the stanza's own name, at every level.
        let inner = String(repeating: "<message>", count: 70) + String(repeating: "</message>", count: 70)
        let text = prosodyHeader + "<message id='deep'>" + inner + "<body/></message><iq type='get' id='q'/></stream:stream>"
        let result = parseAtEveryCut(text)
        #expect(result.error == nil)
        #expect(refusals(result.events).map(\.id) == ["deep"])
        #expect(stanzas(result.events).map { $0[attribute: "id"] } == ["q"])
        #expect(result.events.last == .streamClosed)
    }

    @Test func stanzaThousandsOfLevelsDeepIsSkippedToo() {
        // libxml2's own depth limit (256, in its pull parser) does not apply to push parsing: the stream goes on.
        let result = parseAllSplits(prosodyHeader + Self.deepMessage(5000, id: "deeper") + "<message to='a@b' id='after'/>")
        #expect(result.error == nil)
        #expect(refusals(result.events).map(\.id) == ["deeper"])
        #expect(stanzas(result.events).map { $0[attribute: "id"] } == ["after"])
    }

    @Test func brokenXMLInsideASkippedStanzaStillEndsTheStream() {
        let bad = parseAllSplits(prosodyHeader + "<message>" + String(repeating: "<x>", count: 70) + "</y>")
        #expect(bad.error?.code == .notWellFormed)
        let restricted = parseAllSplits(prosodyHeader + "<message>" + String(repeating: "<x>", count: 70) + "<!-- c -->")
        #expect(restricted.error?.code == .restrictedXML)
    }

    @Test func elementWithTooManyAttributesIsRefused() {
        let many = (0..<65).map { " a\($0)='v'" }.joined()
        // On a nested element: the stanza's addressing comes from its start tag, already read.
        let nested = parseAtEveryCut(
            prosodyHeader + "<iq type='get' id='i1' from='alice@example.test/x' to='bot.example.test'><query\(many)/></iq><iq type='get' id='i2'/>",
            limits: XMLLimits(maxAttributes: 64))
        #expect(nested.error == nil)
        #expect(
            refusals(nested.events)
                == [
                    RefusedStanza(
                        name: "iq", namespace: Namespace.componentAccept, id: "i1", from: "alice@example.test/x",
                        to: "bot.example.test", type: "get",
                        reason: XMLStreamError(.tooManyAttributes, "element with more than 64 attributes"))
                ])
        #expect(stanzas(nested.events).map { $0[attribute: "id"] } == ["i2"])
        // On the stanza itself: only its addressing attributes are read.
        let top = parseAllSplits(prosodyHeader + "<message\(many) id='m&amp;1' to='bot.example.test' xml:lang='en'><body/></message><message id='m2'/>")
        #expect(top.error == nil)
        #expect(refusals(top.events).map { [$0.id, $0.to, $0.from] } == [["m&1", "bot.example.test", nil]])
        #expect(stanzas(top.events).map { $0[attribute: "id"] } == ["m2"])
        // 64 attributes are fine.
        let sixtyFour = (0..<62).map { " a\($0)='v'" }.joined()
        let ok = parseAllSplits(prosodyHeader + "<message id='ok' to='a@b'\(sixtyFour)/>")
        #expect(ok.error == nil && stanzas(ok.events).count == 1)
    }

    /// A message of exactly `size` bytes.
    static func stanza(ofSize size: Int) -> String {
        let head = "<message to='a@b'><body>", tail = "</body></message>"
        return head + String(repeating: "a", count: size - head.utf8.count - tail.utf8.count) + tail
    }

    @Test func stanzaAtTheCapPassesAndOneByteOverIsRefusedAlone() {
        let limits = XMLLimits(maxStanzaBytes: 1000)
        let atCap = parseAllSplits(prosodyHeader + Self.stanza(ofSize: 1000) + Self.stanza(ofSize: 1000), limits: limits)
        #expect(atCap.error == nil)
        #expect(stanzas(atCap.events).count == 2)
        let over = parseAtEveryCut(
            prosodyHeader + Self.stanza(ofSize: 1000) + Self.stanza(ofSize: 1001) + Self.stanza(ofSize: 1000), limits: limits)
        #expect(over.error == nil, "an oversized stanza costs that stanza, not the stream")
        #expect(stanzas(over.events).count == 2, "the stanzas before and after the oversized one are delivered")
        #expect(refusals(over.events) == [RefusedStanza(name: "message", namespace: Namespace.componentAccept, to: "a@b",
                                                        reason: XMLStreamError(.stanzaTooLarge, "stanza larger than 1000 bytes"))])
        #expect(over.events.count == 4 && over.events[2] == .refused(refusals(over.events)[0]), "in stream order")
    }

    @Test func startTagLargerThanTheCapEndsTheStream() {
        // libxml2 must hold a start tag whole until its '>': that cannot be skipped without buffering it.
        let limits = XMLLimits(maxStanzaBytes: 1000)
        let text = prosodyHeader + "<message to='a@b' x='" + String(repeating: "a", count: 1200) + "'><body/></message>"
        let result = parseAllSplits(text, limits: limits)
        #expect(result.error?.code == .stanzaTooLarge)
        #expect(result.error?.streamCondition == "policy-violation")
    }

    @Test func keepaliveWhitespaceDoesNotCountAgainstTheNextStanza() {
        let limits = XMLLimits(maxStanzaBytes: 1000)
        let spaced = parseAllSplits(prosodyHeader + "   " + Self.stanza(ofSize: 1000) + " \n " + Self.stanza(ofSize: 1000), limits: limits)
        #expect(spaced.error == nil)
        #expect(stanzas(spaced.events).count == 2)
    }

    @Test func hugeStanzaIsSkippedWithoutBufferingIt() throws {
        let parser = XMLStreamParser(limits: XMLLimits(maxStanzaBytes: 10_000))
        var events = try parser.feed(Array((prosodyHeader + "<message to='a@b' id='huge'><body>").utf8))
        let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 4096)
        var maxRetained = 0
        for _ in 0..<2500 {  // 10 MB
            try parser.feed(chunk, into: &events)
            maxRetained = max(maxRetained, parser.retained.pendingTextBytes + parser.retained.openElements)
        }
        #expect(maxRetained <= 10_000 + 4096, "held \(maxRetained) bytes of a stanza it was skipping")
        #expect(parser.retained.openElements == 0)
        try parser.feed(Array("</body></message><message to='a@b' id='next'/>".utf8), into: &events)
        #expect(refusals(events).map(\.id) == ["huge"])
        #expect(stanzas(events).map { $0[attribute: "id"] } == ["next"])
    }

    @Test func invalidUTF8IsRejected() {
        var bytes = Array((prosodyHeader + "<message to='a@b'><body>").utf8)
        bytes += [0xC3, 0x28]  // invalid continuation
        bytes += Array("</body></message>".utf8)
        let whole = run(bytes, split: nil)
        let single = run(bytes, split: 1)
        #expect(whole.error?.code == .invalidUTF8)
        #expect(single.error?.code == .invalidUTF8)
        #expect(whole.error?.streamCondition == "unsupported-encoding")
        // Overlong encodings and surrogates are invalid too.
        for bad: [UInt8] in [[0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xFF]] {
            let result = run(Array(prosodyHeader.utf8) + bad, split: 1)
            #expect(result.error?.code == .invalidUTF8, "\(bad)")
        }
    }

    @Test func forbiddenControlCharacterIsNotWellFormed() {
        let result = parseAllSplits(prosodyHeader + "<message to='a@b'><body>a\u{01}b</body></message>")
        #expect(result.error?.code == .notWellFormed)
    }

    @Test func malformedXMLGivesLibxmlMessage() {
        let result = parseAllSplits(prosodyHeader + "<message to='a@b'><body></message>")
        #expect(result.error?.code == .notWellFormed)
        #expect(result.error?.message.contains("mismatch") == true, "\(String(describing: result.error))")
    }

    @Test func textBetweenStanzasIsRejected() {
        let result = parseAllSplits(prosodyHeader + "hello<message to='a@b'/>")
        #expect(result.error?.code == .textOutsideElement)
    }

    @Test func dataAfterStreamCloseIsRejected() {
        let result = parseAllSplits(prosodyHeader + "</stream:stream><message/>")
        #expect(result.events.last == .streamClosed)
        #expect(result.error?.code == .notWellFormed)
    }

    // Namespace well-formedness (RFC 6120 §11.2). libxml2 reports these as recoverable namespace errors and would
    // go on with a mangled name (`<p:x/>` as `x` in no namespace); the parser makes them fatal.
    static let namespaceErrors = [
        "<message to='a@b'><p:x/></message>",  // undeclared element prefix
        "<message to='a@b'><x p:y='1'/></message>",  // undeclared attribute prefix
        "<message to='a@b'><x xmlns:p=''/></message>",  // empty prefixed declaration
        "<message to='a@b'><p:q:x xmlns:p='urn:p'/></message>",  // two colons in a QName
        "<message to='a@b'><x xmlns='http://www.w3.org/XML/1998/namespace'/></message>",  // XML namespace as default
        "<message to='a@b'><x xmlns:xml='urn:not-xml'/></message>",  // rebinding the xml prefix
    ]

    @Test(arguments: namespaceErrors)
    func namespaceErrorsAreNotWellFormed(_ stanza: String) {
        let result = parseAllSplits(prosodyHeader + "<presence to='a@b'/>" + stanza + "<presence to='c@d'/>")
        #expect(result.error?.code == .notWellFormed, "\(stanza) gave \(String(describing: result.error))")
        #expect(result.error?.streamCondition == "not-well-formed")
        #expect(stanzas(result.events).map(\.name) == ["presence"], "parsing stops at the bad stanza")
    }

    @Test func undeclaredPrefixErrorSaysWhere() {
        let result = parseAllSplits(prosodyHeader + "<message to='a@b'><foo:bar/></message>")
        #expect(result.error?.message.contains("foo") == true, "\(String(describing: result.error))")
        #expect(result.error?.message.contains("line 1") == true, "\(String(describing: result.error))")
    }

    @Test func ampersandInNamespaceURIsIsUnescapedOnce() throws {
        let xml = prosodyHeader + """
            <message to='a@b'><x xmlns='urn:a&amp;b' xmlns:p='urn:p&#38;q&amp;amp;' p:at='v'><p:y/></x></message>
            """
        let result = parseAllSplits(xml)
        #expect(result.error == nil)
        let x = try #require(stanzas(result.events).first?.elements.first)
        #expect(x.namespace == "urn:a&b")
        #expect(x.attributes == [Attribute(name: "at", value: "v", namespace: "urn:p&q&amp;", prefix: "p")])
        #expect(x.elements.first?.namespace == "urn:p&q&amp;")
        // The serializer escapes it again, and the round trip is stable.
        let out = try x.serialized()
        let reparsed = try XMLStreamParser.parseFragment(Array(out.utf8), maxElements: 1)
        #expect(reparsed == [x], "\(out)")
    }

    @Test func namespaceThatLibxmlCallsAnInvalidURIIsAccepted() throws {
        // libxml2 checks the "&#38;" form, where a second '&' makes a second '#'; the URI itself is fine.
        let result = parseAllSplits(prosodyHeader + "<message to='a@b'><x xmlns='urn:x?a=1&amp;b=2&amp;c'/></message>")
        #expect(result.error == nil)
        #expect(try #require(stanzas(result.events).first).elements.first?.namespace == "urn:x?a=1&b=2&c")
    }

    @Test func elementInTheXMLNamespaceParses() throws {
        let result = parseAllSplits(prosodyHeader + "<message to='a@b'><xml:foo xml:lang='en'><bar/></xml:foo></message>")
        #expect(result.error == nil)
        let foo = try #require(stanzas(result.events).first?.elements.first)
        #expect(foo.name == "foo")
        #expect(foo.namespace == Namespace.xml)
        #expect(foo[attribute: "xml:lang"] == "en")
        #expect(foo.elements.first?.namespace == Namespace.componentAccept)
    }

    @Test func repeatedAndCollidingValuesKeepTheirOwnText() throws {
        // Attribute values and texts of 16 to 64 bytes go through a direct-mapped cache of 1024 slots: 3000 distinct
        // values of equal length must collide, and repeats must hit; every stanza keeps exactly its own value.
        let values = (0..<3000).map { n in "user" + String(repeating: "0", count: 6 - String(n).count) + String(n) + "@example.org" }
        var xml = prosodyHeader
        for (index, value) in values.enumerated() {
            xml += "<message to='\(value)' id='\(index)'><body>\(values[(index * 7) % values.count])</body></message>"
            xml += "<presence from='\(values[index / 2])'><status>\(value)</status></presence>"
        }
        let parsed = stanzas(try XMLStreamParser().feed(Array(xml.utf8)))
        #expect(parsed.count == 2 * values.count)
        for (index, value) in values.enumerated() {
            let message = parsed[2 * index], presence = parsed[2 * index + 1]
            #expect(message[attribute: "to"] == value)
            #expect(message.child("body")?.text == values[(index * 7) % values.count])
            #expect(presence[attribute: "from"] == values[index / 2])
            #expect(presence.child("status")?.text == value)
        }
    }

    @Test func parserIsFinishedAfterAnError() {
        let parser = XMLStreamParser()
        #expect(throws: XMLStreamError.self) { try parser.feed(Array((prosodyHeader + "<!-- x -->").utf8)) }
        #expect(parser.isFinished)
        #expect(throws: XMLStreamError.self) { try parser.feed(Array("<message/>".utf8)) }
    }

    @Test func eachStreamGetsAFreshParser() throws {
        // Two streams back to back in two parsers (a context is never reused).
        for _ in 0..<2 {
            let result = parseAllSplits(prosodyHeader + "<handshake/></stream:stream>")
            #expect(result.error == nil)
        }
    }
}

@Suite struct FragmentParserTests {
    func parse(_ text: String, max: Int? = 1, limits: XMLLimits = XMLLimits()) -> Result<[Element], XMLStreamError> {
        Result { () throws(XMLStreamError) in try XMLStreamParser.parseFragment(Array(text.utf8), limits: limits, maxElements: max) }
    }

    func error(_ text: String, max: Int? = 1, limits: XMLLimits = XMLLimits()) -> XMLStreamError? {
        if case .failure(let e) = parse(text, max: max, limits: limits) { return e }
        return nil
    }

    @Test func singleStanzaGetsJabberClient() throws {
        let elements = try parse("<message to='a@b' type='chat'><body>hi &amp; bye</body></message>").get()
        #expect(elements.count == 1)
        #expect(elements[0].namespace == Namespace.client)
        #expect(elements[0].child("body")?.text == "hi & bye")
    }

    @Test func xmlDeclarationAndBOMAreAccepted() throws {
        let elements = try parse("\u{FEFF}<?xml version='1.0' encoding='UTF-8'?>\n<presence/>").get()
        #expect(elements.map(\.name) == ["presence"])
    }

    @Test func severalStanzasWhenAllowed() throws {
        let elements = try parse("<message/>\n<presence/><iq type='get'/>", max: nil).get()
        #expect(elements.map(\.name) == ["message", "presence", "iq"])
    }

    @Test func secondRootIsRejected() {
        #expect(error("<message/><message/>")?.code == .multipleRoots)
    }

    @Test func foreignNamespaceIsKept() throws {
        let elements = try parse("<message xmlns='urn:other'/>").get()
        #expect(elements[0].namespace == "urn:other")
    }

    @Test func rejections() {
        #expect(error(XMLStreamParserTests.billionLaughs + "<message><body>&lol4;</body></message>")?.code == .restrictedXML)
        #expect(error(XMLStreamParserTests.externalEntity + "<message><body>&xxe;</body></message>")?.code == .restrictedXML)
        #expect(error("<!DOCTYPE message><message/>")?.code == .restrictedXML)
        #expect(error("<message><!-- c --></message>")?.code == .restrictedXML)
        #expect(error("<?php x?><message/>")?.code == .restrictedXML)
        #expect(error("<message>")?.code == .notWellFormed)
        #expect(error("<message/></stanzad-fragment-b1f4><x/>")?.code == .notWellFormed)
        #expect(error("hello")?.code == .textOutsideElement)
        #expect(error(XMLStreamParserTests.nested(65))?.code == .depthExceeded, "fragments fail on per-stanza limits")
        #expect(error("<message" + (0..<65).map { " a\($0)='v'" }.joined() + "/>")?.code == .tooManyAttributes)
        #expect(error(XMLStreamParserTests.nested(64)) == nil)
        #expect(error(XMLStreamParserTests.stanza(ofSize: 501), limits: XMLLimits(maxStanzaBytes: 500))?.code == .stanzaTooLarge)
        #expect(error(XMLStreamParserTests.stanza(ofSize: 500), limits: XMLLimits(maxStanzaBytes: 500)) == nil)
    }

    @Test func invalidUTF8Fragment() {
        let bytes: [UInt8] = Array("<message><body>".utf8) + [0xE2, 0x82] + Array("</body></message>".utf8)
        #expect(throws: XMLStreamError.self) { try XMLStreamParser.parseFragment(bytes) }
        do {
            _ = try XMLStreamParser.parseFragment(bytes)
        } catch {
            #expect(error.code == .invalidUTF8)
        }
        #expect(throws: XMLStreamError.self) { try XMLStreamParser.parseFragment(Array("<message/>".utf8) + [0xE2]) }
    }

    @Test func errorPositionsIgnoreTheInternalWrapper() {
        let message = error("<message><body>x</bdy></message>")?.message ?? ""
        #expect(message.contains("line 1, column 23"), "\(message)")
        #expect(!message.contains("stanzad-fragment"))
    }

    @Test(arguments: XMLStreamParserTests.namespaceErrors)
    func namespaceErrorsAreNotWellFormed(_ stanza: String) {
        #expect(error(stanza)?.code == .notWellFormed)
    }

    @Test func namespaceErrorPositionIgnoresTheInternalWrapper() {
        let message = error("<message><p:x/></message>")?.message ?? ""
        #expect(message.contains("line 1, column 14"), "\(message)")
        #expect(!message.contains("stanzad-fragment"))
    }

    @Test func ampersandInNamespaceURI() throws {
        let elements = try parse("<x xmlns='urn:a&amp;b'/>").get()
        #expect(elements.first?.namespace == "urn:a&b")
    }

    @Test func emptyFragmentHasNoElements() throws {
        #expect(try parse("  \n", max: nil).get().isEmpty)
    }
}

@Suite struct FragmentErrorMessageTests {
    @Test func unclosedElementErrorDoesNotNameTheInternalWrapper() {
        do {
            _ = try XMLStreamParser.parseFragment(Array("<message><body>".utf8))
            Issue.record("accepted an unclosed element")
        } catch {
            #expect(!error.message.contains(XMLStreamParser.wrapperName), "\(error.message)")
            #expect(error.message.contains("end of the input") || error.message.contains("the input"), "\(error.message)")
        }
    }
}
