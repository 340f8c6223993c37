import Synchronization
import Testing

@testable import XMPPCore

private func parseOne(_ xml: String) throws -> Element {
    try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)[0]
}

@Suite struct SerializerTests {
    @Test func escapesTextAndAttributes() throws {
        var message = Element("message", namespace: Namespace.client)
        message[attribute: "id"] = "a\"b<c>&d'\t\n"
        message.append(Element("body", namespace: Namespace.client, text: "x < y & z > w \"q\" 'a'\r\n"))
        let xml = try message.serialized()
        #expect(xml == "<message id=\"a&quot;b&lt;c&gt;&amp;d'&#9;&#10;\"><body>x &lt; y &amp; z &gt; w \"q\" 'a'&#13;\n</body></message>")
        #expect(try parseOne(xml) == message, "serialize → parse round-trips exactly, including \\r and attribute whitespace")
    }

    @Test func namespacesDeclaredOnlyWhereTheyChange() throws {
        let xml = """
            <message to='a@b'><body>hi</body><active xmlns='http://jabber.org/protocol/chatstates'/>\
            <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>in</body></message></forwarded></message>
            """
        let element = try parseOne(xml)
        let out = try element.serialized()
        #expect(out == "<message to=\"a@b\"><body>hi</body><active xmlns=\"http://jabber.org/protocol/chatstates\"/><forwarded xmlns=\"urn:xmpp:forward:0\"><message xmlns=\"jabber:client\"><body>in</body></message></forwarded></message>")
        #expect(try parseOne(out) == element)
    }

    @Test func componentNamespaceStanzaOmitsXmlnsButKeepsNestedJabberClient() throws {
        var stanza = Element("message", namespace: Namespace.componentAccept)
        stanza.append(Element("body", namespace: Namespace.componentAccept, text: "x"))
        var forwarded = Element("forwarded", namespace: "urn:xmpp:forward:0")
        forwarded.append(Element("message", namespace: Namespace.client))
        stanza.append(forwarded)
        #expect(try stanza.serialized() == "<message><body>x</body><forwarded xmlns=\"urn:xmpp:forward:0\"><message xmlns=\"jabber:client\"/></forwarded></message>")
    }

    @Test func prefixedAttributesGetDeclarations() throws {
        let element = try parseOne("<message xml:lang='de'><x:data xmlns:x='jabber:x:data' x:type='form'/></message>")
        let out = try element.serialized()
        #expect(out.contains("xml:lang=\"de\""))
        #expect(try parseOne(out) == element)
    }

    @Test func nonStanzaTopElementDeclaresItsNamespace() throws {
        let error = StanzaError(.cancel, .itemNotFound, text: "gone").element(namespace: nil)
        #expect(try error.serialized() == "<error type=\"cancel\"><item-not-found xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\"/><text xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\">gone</text></error>")
        let query = Element("query", namespace: "jabber:iq:version")
        #expect(try query.serialized() == "<query xmlns=\"jabber:iq:version\"/>")
    }

    @Test(arguments: ["\u{0}", "\u{1}", "\u{8}", "\u{B}", "\u{C}", "\u{1F}", "\u{FFFE}", "\u{FFFF}"])
    func forbiddenCharactersAreRefused(_ bad: String) {
        let body = Element("body", text: "ok" + bad)
        #expect(throws: XMLSerializationError.self) { try body.serialized() }
        var attr = Element("x")
        attr[attribute: "a"] = bad
        #expect(throws: XMLSerializationError.self) { try attr.serialized() }
    }

    @Test func allowedEdgeCharactersPass() throws {
        let text = "\t\n\u{20}\u{D7FF}\u{E000}\u{FFFD}\u{10000}\u{10FFFF}"
        let body = Element("body", namespace: Namespace.client, text: text)
        #expect(try parseOne(try body.serialized()).text == text)
    }

    @Test func xmlLangRoundTripsWithoutDeclaringTheXMLNamespace() throws {
        var message = Element("message", namespace: Namespace.client)
        message[attribute: "xml:lang"] = "de"
        var body = Element("body", namespace: Namespace.client, text: "hallo")
        body.attributes.append(.lang("de-AT"))
        message.append(body)
        let out = try message.serialized()
        #expect(out == "<message xml:lang=\"de\"><body xml:lang=\"de-AT\">hallo</body></message>")
        #expect(try parseOne(out) == message)
    }

    @Test func elementsInTheXMLNamespaceUseThePredeclaredPrefix() throws {
        // Namespaces in XML: the XML namespace may not be declared (nor be the default); its prefix is predeclared.
        var foo = Element("foo", namespace: Namespace.xml, attributes: [.lang("en")])
        foo.append(Element("bar", namespace: Namespace.client))
        foo.append(Element("baz", namespace: "urn:z"))
        var message = Element("message", namespace: Namespace.client)
        message.append(foo)
        let out = try message.serialized()
        #expect(out == "<message><xml:foo xml:lang=\"en\"><bar/><baz xmlns=\"urn:z\"/></xml:foo></message>")
        #expect(!out.contains(Namespace.xml))
        #expect(try parseOne(out) == message)

        // At the top the context's default namespace is unknown: the children's (none) is pinned.
        var top = Element("foo", namespace: Namespace.xml)
        top.append(Element("bar"))
        let topOut = try top.serialized()
        #expect(topOut == "<xml:foo xmlns=\"\"><bar/></xml:foo>")
        #expect(try XMLStreamParser.parseFragment(Array(topOut.utf8), defaultNamespace: "urn:elsewhere") == [top])
    }

    @Test func invalidNamesAreRefused() {
        for name in ["", "1abc", "a b", "a<b", "-x", "a&b", "a\"b"] {
            #expect(throws: XMLSerializationError.self, "\(name)") { try Element(name).serialized() }
        }
        #expect(throws: Never.self) { try Element("café-ok_1.x").serialized() }
    }
}

@Suite struct JIDTests {
    @Test func parsesParts() throws {
        let jid = try JID("Alice@Example.ORG./phone 1")
        #expect(jid.localpart == "Alice")
        #expect(jid.domain == "example.org")
        #expect(jid.resource == "phone 1")
        #expect(jid.description == "Alice@example.org/phone 1")
        #expect(jid.bare.description == "Alice@example.org")
        #expect(!jid.isBare)
        #expect(try JID("example.org").localpart == nil)
        #expect(try JID("a@b/c/d@e").resource == "c/d@e", "the resource is everything after the first slash")
        #expect(try JID("[::1]").domain == "[::1]")
    }

    @Test(arguments: [
        "", "@example.org", "a@", "a@example.org/", "a b@example.org", "a\"b@x", "a&b@x", "a'b@x", "a:b@x",
        "a<b@x", "a>b@x", "a@b@c", "exa mple.org", "a@x..y", "a@x/\u{7}", "a\u{0}@x",
        String(repeating: "a", count: 1024) + "@x", "a@" + String(repeating: "b", count: 64) + ".org", "[zz]",
    ])
    func rejectsInvalid(_ input: String) {
        #expect(throws: JIDError.self) { try JID(input) }
    }

    @Test func everyForbiddenCharacterIsRefusedWhereRFC7622ForbidsIt() throws {
        for character in "\"&'/:<>@" where character != "/" && character != "@" {
            #expect(throws: JIDError.self, "localpart with \(character)") { try JID("a\(character)b@example.org") }
        }
        for character in "\"&':<>[]\\,;=?!#$%()*+^`{|}~" {
            #expect(throws: JIDError.self, "domain with \(character)") { try JID("a@exa\(character)mple.org") }
        }
        // Non-ASCII whitespace (no-break space, ideographic space) and C1 controls are refused too.
        for character in ["\u{A0}", "\u{3000}", "\u{85}", "\u{2028}"] {
            #expect(throws: JIDError.self, "localpart with U+\(String(character.unicodeScalars.first!.value, radix: 16))") {
                try JID("a\(character)b@example.org")
            }
        }
        // What stays allowed: non-ASCII letters, and the characters only the domain forbids, in a localpart.
        #expect(try JID("zoë+tag!#$%=~@café.example").localpart == "zoë+tag!#$%=~")
        #expect(try JID("a@example.org/with space & <stuff>").resource == "with space & <stuff>")
    }

    @Test func errorsSayWhy() {
        do {
            _ = try JID("a b@example.org")
            Issue.record("accepted")
        } catch {
            #expect(error.description == "invalid JID \"a b@example.org\": localpart contains a space or control character")
        }
    }

    /// The one-pass reading of common JIDs gives what the full check gives, and leaves everything else to it.
    @Test func theQuickPathAgreesWithTheFullCheck() throws {
        var inputs = [
            "a@example.org", "example.org", "a@example.org/r", "load@example.test/bench", "a@b/c/d@e", "a@b/with space",
            "x.y.z", "a@1.2.3.4", "a@x-y.example", "a+b!#$%=~@example.org", String(repeating: "a", count: 63) + ".org",
            "Alice@Example.ORG./phone 1", "a@example.org.", "[::1]", "a@[::1]/r", "zoë@café.example", "a@b/ré",
            "a@b/\u{85}", "a@b/\u{7F}", "a@b/\u{9}", "", "@x", "a@", "a@x/", "/r", "a@/r", ".x", "x.", "a@x..y",
            "a@" + String(repeating: "b", count: 64) + ".org", String(repeating: "a", count: 1020) + "@x",
            String(repeating: "a", count: 1024) + "@x", "a@b@c", "a b@x", "a@x y", "a@x/\u{0}",
        ]
        // And strings drawn from an alphabet of the characters that matter (seeded: a failure repeats).
        let alphabet = Array("aZ.@/ \"&'<>[]:;\u{7F}\u{1}é-_9")
        var generator = SplitMix(state: 7622)
        for _ in 0..<5_000 {
            let length = Int.random(in: 1...12, using: &generator)
            inputs.append(String((0..<length).map { _ in alphabet.randomElement(using: &generator) ?? "a" }))
        }
        var quick = 0
        for input in inputs {
            let full = Result { () throws(JIDError) in try JID(checking: input) }
            guard let simple = JID.simpleASCII(input) else { continue }
            quick += 1
            #expect((try? full.get()) == simple, "\(JID.quoted(input))")
        }
        #expect(quick > 20, "the quick path took the common shapes")
        #expect(JID.simpleASCII("a@example.org") != nil && JID.simpleASCII("Alice@Example.ORG") == nil)
        // `isValid` (the outbound check, which builds no JID on the quick path) says what parsing says.
        for input in inputs {
            let parsed = JID.parse(input)
            #expect(JID.isValid(input) == (parsed != nil), "\(JID.quoted(input))")
            for domain in ["a", "x", "example.org", "b"] {
                #expect(JID.isValid(input, domain: domain) == (parsed?.domain == domain), "\(JID.quoted(input)) in \(domain)")
            }
        }
        #expect(JID.isValid("echo@bot.example.org/r", domain: "bot.example.org"))
        #expect(!JID.isValid("echo@bot.example.org/r", domain: "example.org"), "the domain, not a suffix of it")
        #expect(JID.isValid("echo@Bot.Example.ORG", domain: "bot.example.org"), "the slow path normalises the domain")
        #expect(!JID.isValid("echo@bot.example.org/", domain: "bot.example.org"))
    }

    /// A pattern without `*` is compared part by part; it must say what the glob says.
    @Test func patternsWithoutAStarMatchAsTheGlobDoes() throws {
        let patterns = ["echo@bot.example.org", "Echo@bot.example.org", "echo@BOT.example.org", "bot.example.org",
                        "example.org", "echo@", "@bot.example.org", "a@b@c", "", "zoë@café.example", "zoe\u{308}@café.example",
                        "echo@bot.example.org/res"]
        let jids = try ["echo@bot.example.org", "echo@Bot.Example.org/res", "Echo@bot.example.org", "bot.example.org",
                        "bot.example.org/x", "a@example.org", "zoë@café.example", "zoe\u{308}@café.example"].map { try JID($0) }
        for text in patterns {
            let pattern = JIDPattern(text)
            for jid in jids {
                let glob = JIDPattern.glob(Array(pattern.pattern.unicodeScalars), Array(jid.bare.description.unicodeScalars))
                #expect(pattern.matches(jid) == glob, "\(text) against \(jid)")
            }
        }
        #expect(JIDPattern("echo@BOT.example.org").matches(try JID("echo@bot.example.org")))
        #expect(!JIDPattern("zoë@café.example").matches(try JID("zoe\u{308}@café.example")), "scalars compare exactly")
    }

    @Test func globs() throws {
        let jid = try JID("echo@Bot.Example.org/res")
        #expect(JIDPattern("*@bot.example.org").matches(jid))
        #expect(JIDPattern("echo@BOT.example.org").matches(jid))
        #expect(JIDPattern("*").matches(jid))
        #expect(JIDPattern("e*o@*.org").matches(jid))
        #expect(!JIDPattern("bot.example.org").matches(jid))
        #expect(JIDPattern("bot.example.org").matches(try JID("bot.example.org/x")))
        #expect(!JIDPattern("Echo@bot.example.org").matches(jid), "localparts compare exactly")
        #expect(!JIDPattern("*@example.org").matches(jid))
        #expect(JIDPattern("*a*a*a*a*b").matches(try JID(String(repeating: "a", count: 200) + "b@x")) == false)
    }
}

@Suite struct RandomIDTests {
    @Test func idsAre24URLSafeCharactersAndDoNotRepeat() {
        let allowed = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        var seen = Set<String>()
        var used = Set<Character>()
        // 10,000 ids span many refills of the 4 KiB pool.
        for _ in 0..<10_000 {
            let id = RandomID.make()
            #expect(id.count == 24)
            #expect(id.allSatisfy(allowed.contains))
            seen.insert(id)
            used.formUnion(id)
        }
        #expect(seen.count == 10_000)
        #expect(used == allowed, "every symbol of the alphabet turns up")
    }
}

@Suite struct StanzaErrorTests {
    @Test func errorReplySwapsAddressesAndKeepsId() throws {
        let incoming = try #require(Stanza(try parseOne("<iq type='get' id='q1' from='alice@example.org/res' to='bot.example.org'><query xmlns='urn:x'/></iq>")))
        let reply = incoming.errorReply(StanzaError(.cancel, .serviceUnavailable, text: "nobody home", by: "bot.example.org"))
        #expect(try reply.serialized() == "<iq from=\"bot.example.org\" to=\"alice@example.org/res\" id=\"q1\" type=\"error\"><error type=\"cancel\" by=\"bot.example.org\"><service-unavailable xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\"/><text xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\">nobody home</text></error></iq>")
        #expect(reply.error == StanzaError(.cancel, .serviceUnavailable, text: "nobody home", by: "bot.example.org"))
    }

    @Test func repliesAllowedAndRequests() throws {
        func stanza(_ xml: String) throws -> Stanza { try #require(Stanza(try parseOne(xml))) }
        #expect(try !stanza("<message type='error'/>").allowsReply)
        #expect(try !stanza("<iq type='result' id='1'/>").allowsReply)
        #expect(try stanza("<message/>").allowsReply)
        #expect(try stanza("<iq type='set' id='1'/>").isRequest)
        #expect(try !stanza("<iq type='result' id='1'/>").isRequest)
        #expect(Stanza(Element("handshake", namespace: Namespace.componentAccept)) == nil)
        #expect(Stanza(Element("message", namespace: "urn:other")) == nil)
    }

    @Test func replySkeleton() throws {
        let iq = try #require(Stanza(try parseOne("<iq type='get' id='7' from='a@b/c' to='bot.example.org'/>")))
        #expect(try iq.replySkeleton().serialized() == "<iq from=\"bot.example.org\" to=\"a@b/c\" id=\"7\" type=\"result\"/>")
    }

    @Test(arguments: [
        (400, "modify", "bad-request"), (411, "modify", "bad-request"), (416, "modify", "bad-request"),
        (422, "modify", "bad-request"), (401, "auth", "not-authorized"), (511, "auth", "not-authorized"),
        (402, "auth", "payment-required"), (403, "auth", "forbidden"), (451, "auth", "forbidden"),
        (404, "cancel", "item-not-found"), (405, "cancel", "not-allowed"), (406, "modify", "not-acceptable"),
        (407, "auth", "registration-required"), (408, "wait", "remote-server-timeout"),
        (502, "wait", "remote-server-timeout"), (504, "wait", "remote-server-timeout"), (409, "cancel", "conflict"),
        (412, "cancel", "conflict"), (410, "cancel", "gone"), (413, "modify", "resource-constraint"),
        (414, "modify", "resource-constraint"), (431, "modify", "resource-constraint"),
        (415, "cancel", "feature-not-implemented"), (501, "cancel", "feature-not-implemented"),
        (423, "wait", "resource-constraint"), (429, "wait", "resource-constraint"), (507, "wait", "resource-constraint"),
        (500, "wait", "internal-server-error"), (503, "cancel", "service-unavailable"),
        (418, "cancel", "undefined-condition"), (302, "cancel", "undefined-condition"), (599, "cancel", "undefined-condition"),
    ])
    func httpStatusTable(_ status: Int, _ type: String, _ condition: String) {
        let error = HTTPStanzaErrors.error(forStatus: status)
        #expect(error.type.rawValue == type)
        #expect(error.condition.rawValue == condition)
        #expect(error.text == HTTPStanzaErrors.reasonPhrase(status))
    }

    @Test func reasonPhrases() {
        #expect(HTTPStanzaErrors.reasonPhrase(503) == "Service Unavailable")
        #expect(HTTPStanzaErrors.reasonPhrase(599) == "599 Unassigned")
    }

    @Test func readsErrorElements() throws {
        let element = try parseOne("<message type='error'><error type='wait' by='x'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>busy</text></error></message>")
        let stanza = try #require(Stanza(element))
        #expect(stanza.error == StanzaError(.wait, .resourceConstraint, text: "busy", by: "x"))
    }
}

@Suite struct UTF8ValidatorTests {
    @Test func acceptsValidInAnySplit() {
        let bytes = Array("aé日𝄞🎉\u{10FFFF}".utf8)
        for split in 1...bytes.count {
            var v = UTF8Validator()
            var ok = true
            var i = 0
            while i < bytes.count {
                let end = min(i + split, bytes.count)
                ok = ok && bytes[i..<end].withUnsafeBytes { v.feed($0) }
                i = end
            }
            #expect(ok && v.isAtBoundary, "split \(split)")
        }
    }

    @Test(arguments: [[0x80], [0xC0, 0x80], [0xC1, 0xBF], [0xE0, 0x80, 0x80], [0xED, 0xA0, 0x80], [0xF0, 0x80, 0x80, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xF5], [0xFE], [0xC3, 0x41]] as [[UInt8]])
    func rejectsInvalid(_ bytes: [UInt8]) {
        var v = UTF8Validator()
        #expect(!bytes.withUnsafeBytes { v.feed($0) })
    }
}

@Suite struct HTTPMediaTypeTests {
    @Test func theEssenceIsTheTypeWithoutParametersOrSpacesInLowerCase() {
        #expect(HTTPMediaType.essence("Application/JSON; charset=utf-8") == "application/json")
        #expect(HTTPMediaType.essence(" text/plain ;charset=UTF-8") == "text/plain")
        #expect(HTTPMediaType.essence("application/xmpp+xml") == "application/xmpp+xml")
        #expect(HTTPMediaType.essence("\tAPPLICATION/X-WWW-FORM-URLENCODED") == "application/x-www-form-urlencoded")
        #expect(HTTPMediaType.essence(";") == "")
        #expect(HTTPMediaType.essence(nil) == "")
        // Not ASCII (no media type is): lower-cased all the same, so it matches none of ours.
        #expect(HTTPMediaType.essence("TÉXT/Plain; x=1") == "téxt/plain")
    }
}

@Suite struct MadeOncePerKeyTests {
    private final class Made: Sendable {
        let key: Int
        init(_ key: Int) { self.key = key }
    }

    @Test func eachKeyIsMadeOnceEvenWhenAskedForAtOnce() async {
        let makes = Mutex([Int: Int]())
        let cache = MadeOncePerKey<Int, Made> { key in
            makes.withLock { $0[key, default: 0] += 1 }
            return Made(key)
        }
        let seen = await withTaskGroup(of: [ObjectIdentifier].self) { group in
            for _ in 0..<8 {
                group.addTask { (0..<200).map { ObjectIdentifier(cache[$0 % 5]) } }
            }
            return await group.reduce(into: Set<ObjectIdentifier>()) { $0.formUnion($1) }
        }
        #expect(makes.withLock { $0 } == [0: 1, 1: 1, 2: 1, 3: 1, 4: 1])
        #expect(seen.count == 5, "every caller of a key got the same object")
        #expect(cache[3].key == 3)
    }
}
