import Testing

@testable import XMPPCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

private func xmlElement(_ xml: String) throws -> Element {
    try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)[0]
}

private func xmlStanza(_ xml: String) throws -> Stanza {
    try #require(Stanza(try xmlElement(xml)))
}

private func json(_ text: String) throws -> JSONValue {
    try JSONValue.parse(text)
}

/// The mapping error for `text`, or nil when it maps.
private func mappingError(_ text: String, defaults: ReplyDefaults? = nil) -> JSONMappingError? {
    do {
        _ = try StanzaJSON.decode(parsing: text.utf8, defaults: defaults)
        return nil
    } catch {
        return error
    }
}

/// One stanza in both forms. Attributes are written in the order the decoder builds them (type, id, from, to,
/// xml:lang) and children in its canonical order, so XML → JSON → XML compares as equal elements.
struct MappingCase: CustomTestStringConvertible, Sendable {
    let name: String
    let xml: String
    let json: String
    var testDescription: String { name }
}

@Suite struct StanzaJSONRoundTripTests {
    static let cases: [MappingCase] = [
        MappingCase(
            name: "empty message", xml: "<message/>", json: #"{"kind":"message"}"#),
        MappingCase(
            name: "message attributes, body, subject, thread",
            xml: """
                <message type="chat" id="m1" from="alice@example.org/phone" to="bot.example.org" xml:lang="en">\
                <body>Hello &lt;world&gt; 😀</body><subject>Greeting</subject><thread parent="p1">t1</thread></message>
                """,
            json: #"""
                {"kind":"message","type":"chat","id":"m1","from":"alice@example.org/phone","to":"bot.example.org",
                 "lang":"en","body":"Hello <world> 😀","subject":"Greeting","thread":{"id":"t1","parent":"p1"}}
                """#),
        MappingCase(
            name: "thread without parent", xml: "<message><thread>t2</thread></message>",
            json: #"{"kind":"message","thread":{"id":"t2"}}"#),
        MappingCase(
            name: "empty body", xml: "<message><body/></message>", json: #"{"kind":"message","body":""}"#),
        MappingCase(
            name: "html",
            xml: """
                <message to="bob@example.org"><body>Hi there</body><html xmlns="http://jabber.org/protocol/xhtml-im">\
                <body xmlns="http://www.w3.org/1999/xhtml"><p style="font-weight:bold">Hi <em>there</em> &amp; you</p></body></html></message>
                """,
            json: #"""
                {"kind":"message","to":"bob@example.org","body":"Hi there",
                 "html":"<body><p style=\"font-weight:bold\">Hi <em>there</em> &amp; you</p></body>"}
                """#),
        MappingCase(
            name: "chat state", xml: #"<message type="chat"><composing xmlns="http://jabber.org/protocol/chatstates"/></message>"#,
            json: #"{"kind":"message","type":"chat","state":"composing"}"#),
        MappingCase(
            name: "oob",
            xml: #"<message><body>file</body><x xmlns="jabber:x:oob"><url>https://example.org/a.png</url><desc>A picture</desc></x></message>"#,
            json: #"""
                {"kind":"message","body":"file","oob":{"url":"https://example.org/a.png","desc":"A picture"},
                 "oob_url":"https://example.org/a.png"}
                """#),
        MappingCase(
            name: "oob without desc",
            xml: #"<message><x xmlns="jabber:x:oob"><url>https://example.org/</url></x></message>"#,
            json: #"{"kind":"message","oob":{"url":"https://example.org/"},"oob_url":"https://example.org/"}"#),
        MappingCase(
            name: "replace",
            xml: #"<message id="m2"><body>fixed</body><replace xmlns="urn:xmpp:message-correct:0" id="m1"/></message>"#,
            json: #"{"kind":"message","id":"m2","body":"fixed","replace":"m1"}"#),
        MappingCase(
            name: "delay",
            xml: #"<message><body>old</body><delay xmlns="urn:xmpp:delay" stamp="2002-09-10T23:08:25Z"/></message>"#,
            json: #"{"kind":"message","body":"old","delay":"2002-09-10T23:08:25Z"}"#),
        MappingCase(
            name: "message nick",
            xml: #"<message><body>hi</body><nick xmlns="http://jabber.org/protocol/nick">Alice</nick></message>"#,
            json: #"{"kind":"message","body":"hi","nick":"Alice"}"#),
        MappingCase(
            name: "message payload",
            xml: #"<message><payload xmlns="urn:xmpp:json-msg:0" datatype="urn:example:data">{"a":[1,2.5,"x"],"b":null}</payload></message>"#,
            json: #"{"kind":"message","payload":{"datatype":"urn:example:data","data":{"a":[1,2.5,"x"],"b":null}}}"#),
        MappingCase(
            name: "message error",
            xml: """
                <message type="error" id="e1" from="bot.example.org" to="alice@example.org">\
                <error type="cancel" by="bot.example.org"><service-unavailable xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>\
                <text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">Nobody here</text></error></message>
                """,
            json: #"""
                {"kind":"message","type":"error","id":"e1","from":"bot.example.org","to":"alice@example.org",
                 "error":{"type":"cancel","condition":"service-unavailable","text":"Nobody here","by":"bot.example.org"}}
                """#),
        MappingCase(
            name: "available presence with show, status, priority, nick",
            xml: """
                <presence from="bot.example.org" to="alice@example.org"><show>away</show><status>Out to lunch</status>\
                <priority>-5</priority><nick xmlns="http://jabber.org/protocol/nick">Bot</nick></presence>
                """,
            json: #"""
                {"kind":"presence","type":"available","from":"bot.example.org","to":"alice@example.org",
                 "show":"away","status":"Out to lunch","priority":-5,"nick":"Bot"}
                """#),
        MappingCase(
            name: "unavailable presence", xml: #"<presence type="unavailable"/>"#,
            json: #"{"kind":"presence","type":"unavailable"}"#),
        MappingCase(
            name: "subscribe presence", xml: #"<presence type="subscribe" to="bot.example.org"/>"#,
            json: #"{"kind":"presence","type":"subscribe","to":"bot.example.org"}"#),
        MappingCase(
            name: "presence with delay",
            xml: #"<presence><delay xmlns="urn:xmpp:delay" stamp="2024-01-02T03:04:05Z"/></presence>"#,
            json: #"{"kind":"presence","type":"available","delay":"2024-01-02T03:04:05Z"}"#),
        MappingCase(
            name: "ping", xml: #"<iq type="get" id="p1" to="bot.example.org"><ping xmlns="urn:xmpp:ping"/></iq>"#,
            json: #"{"kind":"iq","type":"get","id":"p1","to":"bot.example.org","ping":true}"#),
        MappingCase(
            name: "pong (empty result)", xml: #"<iq type="result" id="p1"/>"#,
            json: #"{"kind":"iq","type":"result","id":"p1"}"#),
        MappingCase(
            name: "version query", xml: #"<iq type="get" id="v1"><query xmlns="jabber:iq:version"/></iq>"#,
            json: #"{"kind":"iq","type":"get","id":"v1","version":{}}"#),
        MappingCase(
            name: "version result",
            xml: #"<iq type="result" id="v1"><query xmlns="jabber:iq:version"><name>stanzad</name><version>1.0</version><os>Linux</os></query></iq>"#,
            json: #"{"kind":"iq","type":"result","id":"v1","version":{"name":"stanzad","version":"1.0","os":"Linux"}}"#),
        MappingCase(
            name: "disco#info query", xml: #"<iq type="get" id="d1"><query xmlns="http://jabber.org/protocol/disco#info"/></iq>"#,
            json: #"{"kind":"iq","type":"get","id":"d1","disco":true}"#),
        MappingCase(
            name: "disco#info node query",
            xml: #"<iq type="get" id="d2"><query xmlns="http://jabber.org/protocol/disco#info" node="urn:x:commands"/></iq>"#,
            json: #"{"kind":"iq","type":"get","id":"d2","disco":"urn:x:commands"}"#),
        MappingCase(
            name: "disco#info result",
            xml: """
                <iq type="result" id="d3"><query xmlns="http://jabber.org/protocol/disco#info" node="n1">\
                <identity category="component" type="generic" name="Bot"/><identity category="client" type="bot"/>\
                <feature var="http://jabber.org/protocol/disco#info"/><feature var="urn:xmpp:ping"/></query></iq>
                """,
            json: #"""
                {"kind":"iq","type":"result","id":"d3","disco":{"node":"n1",
                 "identities":[{"category":"component","type":"generic","name":"Bot"},{"category":"client","type":"bot"}],
                 "features":["http://jabber.org/protocol/disco#info","urn:xmpp:ping"]}}
                """#),
        MappingCase(
            name: "disco#items query", xml: #"<iq type="get" id="i1"><query xmlns="http://jabber.org/protocol/disco#items"/></iq>"#,
            json: #"{"kind":"iq","type":"get","id":"i1","items":true}"#),
        MappingCase(
            name: "disco#items node query",
            xml: #"<iq type="get" id="i2"><query xmlns="http://jabber.org/protocol/disco#items" node="music"/></iq>"#,
            json: #"{"kind":"iq","type":"get","id":"i2","items":"music"}"#),
        MappingCase(
            name: "disco#items result",
            xml: """
                <iq type="result" id="i3"><query xmlns="http://jabber.org/protocol/disco#items">\
                <item jid="echo@bot.example.org" name="Echo"/><item jid="bot.example.org" node="n"/></query></iq>
                """,
            json: #"""
                {"kind":"iq","type":"result","id":"i3",
                 "items":[{"jid":"echo@bot.example.org","name":"Echo"},{"jid":"bot.example.org","node":"n"}]}
                """#),
        MappingCase(
            name: "iq payload",
            xml: #"<iq type="set" id="j1"><payload xmlns="urn:xmpp:json-msg:0" datatype="urn:example:cmd">"run"</payload></iq>"#,
            json: #"{"kind":"iq","type":"set","id":"j1","payload":{"datatype":"urn:example:cmd","data":"run"}}"#),
        MappingCase(
            name: "iq error",
            xml: """
                <iq type="error" id="p9"><error type="wait">\
                <resource-constraint xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></iq>
                """,
            json: #"{"kind":"iq","type":"error","id":"p9","error":{"type":"wait","condition":"resource-constraint"}}"#),
    ]

    @Test(arguments: cases)
    func xmlToJSON(_ c: MappingCase) throws {
        let encoded = StanzaJSON.encode(try xmlStanza(c.xml))
        #expect(encoded == (try json(c.json)))
    }

    @Test(arguments: cases)
    func jsonToXML(_ c: MappingCase) throws {
        let decoded = try StanzaJSON.decode(try json(c.json))
        #expect(decoded.element == (try xmlElement(c.xml)))
    }

    @Test(arguments: cases)
    func xmlToJSONToXML(_ c: MappingCase) throws {
        let original = try xmlElement(c.xml)
        let stanza = try #require(Stanza(original))
        let text = StanzaJSON.encode(stanza).serialized()
        let back = try StanzaJSON.decode(parsing: text.utf8)
        #expect(back.element == original)
        // And the rebuilt stanza serializes and re-parses to the same tree.
        #expect(try xmlElement(try back.serialized()) == original)
    }

    @Test(arguments: StanzaJSON.chatStates)
    func everyChatState(_ state: String) throws {
        let xml = #"<message><\#(state) xmlns="http://jabber.org/protocol/chatstates"/></message>"#
        let encoded = StanzaJSON.encode(try xmlStanza(xml))
        #expect(encoded["state"] == .string(state))
        #expect(try StanzaJSON.decode(encoded).element == (try xmlElement(xml)))
    }

    @Test(arguments: ["away", "chat", "dnd", "xa"])
    func everyShow(_ show: String) throws {
        let xml = "<presence><show>\(show)</show></presence>"
        let encoded = StanzaJSON.encode(try xmlStanza(xml))
        #expect(encoded["show"] == .string(show))
        #expect(try StanzaJSON.decode(encoded).element == (try xmlElement(xml)))
    }

    @Test func componentNamespaceStanzaReadsItsChildren() throws {
        let stanza = try #require(Stanza(try XMLStreamParser.parseFragment(
            Array("<message type='chat'><body>hi</body><subject>s</subject></message>".utf8),
            defaultNamespace: Namespace.componentAccept, maxElements: 1)[0]))
        let encoded = StanzaJSON.encode(stanza)
        #expect(encoded == ["kind": "message", "type": "chat", "body": "hi", "subject": "s"])
    }

    @Test func includeStanzaCarriesTheWholeXMLAndDecodesBackLosslessly() throws {
        let xml = """
            <message type="chat" id="x1" from="alice@example.org/a" to="echo@bot.example.org"><body>hi</body>\
            <unknown xmlns="urn:example:ext" a="1"><deep>kept</deep></unknown></message>
            """
        let stanza = try xmlStanza(xml)
        let encoded = StanzaJSON.encode(stanza, includeStanza: true)
        #expect(encoded["stanza"] == .string(try stanza.element.serialized()))
        #expect(encoded["body"] == "hi")
        #expect(StanzaJSON.encode(stanza)["stanza"] == nil)
        // Without `stanza`, the unknown extension is dropped; with it, nothing is lost.
        #expect(try StanzaJSON.decode(encoded).element == stanza.element)
        var lossy = try #require(encoded.objectValue)
        lossy["stanza"] = nil
        #expect(try StanzaJSON.decode(.object(lossy)).element.child("unknown") == nil)
    }

    @Test func unknownKeysAreIgnored() throws {
        let plain = try StanzaJSON.decode(try json(#"{"kind":"message","to":"a@example.org","body":"hi"}"#))
        let extra = try StanzaJSON.decode(try json(#"""
            {"kind":"message","to":"a@example.org","body":"hi","x-custom":{"deep":[1,2]},"ref":"r7",
             "muc":{},"show":"away","priority":5,"ping":true}
            """#))
        #expect(extra == plain, "unknown keys and keys of other kinds are ignored")
    }

    @Test func nullCountsAsAbsent() throws {
        let decoded = try StanzaJSON.decode(try json(#"{"kind":"message","id":null,"body":"hi","subject":null,"type":null}"#))
        #expect(decoded.element == (try xmlElement("<message><body>hi</body></message>")))
    }

    @Test func payloadWithInvalidJSONIsLeftOut() throws {
        let encoded = StanzaJSON.encode(try xmlStanza(#"<message><payload xmlns="urn:xmpp:json-msg:0">{nope</payload></message>"#))
        #expect(encoded == ["kind": "message"])
    }

    @Test func payloadNullDataIsCarried() throws {
        let decoded = try StanzaJSON.decode(try json(#"{"payload":{"data":null}}"#))
        #expect(decoded.element == (try xmlElement(#"<message><payload xmlns="urn:xmpp:json-msg:0">null</payload></message>"#)))
    }

    @Test func htmlWithoutBodyWrapperIsWrapped() throws {
        let decoded = try StanzaJSON.decode(try json(#"{"html":"Hello <b>you</b>"}"#))
        let expected = try xmlElement(
            #"<message><html xmlns="http://jabber.org/protocol/xhtml-im"><body xmlns="http://www.w3.org/1999/xhtml">Hello <b>you</b></body></html></message>"#)
        #expect(decoded.element == expected)
    }

    @Test func htmlKeepsForeignNamespacesDeclared() throws {
        let xml = #"<message><html xmlns="http://jabber.org/protocol/xhtml-im"><body xmlns="http://www.w3.org/1999/xhtml"><p>a</p><x xmlns="urn:other">b</x></body></html></message>"#
        let encoded = StanzaJSON.encode(try xmlStanza(xml))
        #expect(encoded["html"] == #"<body><p>a</p><x xmlns="urn:other">b</x></body>"#)
        #expect(try StanzaJSON.decode(encoded).element == (try xmlElement(xml)))
    }

    @Test func convenienceInputForms() throws {
        let decoded = try StanzaJSON.decode(try json(#"""
            {"kind":"message","thread":"t9","oob":"https://example.org/f"}
            """#))
        #expect(decoded.element == (try xmlElement("""
            <message><thread>t9</thread><x xmlns="jabber:x:oob"><url>https://example.org/f</url></x></message>
            """)))
        // An error object (or condition string) makes an error stanza that carries only the error, as mod_rest's does.
        let error = try StanzaJSON.decode(try json(#"{"kind":"message","body":"dropped","error":"item-not-found"}"#))
        #expect(error.element == (try xmlElement("""
            <message type="error"><error type="cancel"><item-not-found xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></message>
            """)))
        // An error stanza read from XML keeps the keys the schema reads beside the error.
        let encoded = StanzaJSON.encode(try xmlStanza("""
            <iq type="error" id="p9"><ping xmlns="urn:xmpp:ping"/><error type="wait">\
            <resource-constraint xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></iq>
            """))
        #expect(encoded == (try json(#"{"kind":"iq","type":"error","id":"p9","ping":true,"error":{"type":"wait","condition":"resource-constraint"}}"#)))
        let items = try StanzaJSON.decode(try json(#"{"type":"result","items":["a@example.org",{"jid":"b@example.org"}]}"#))
        #expect(items.element == (try xmlElement("""
            <iq type="result"><query xmlns="http://jabber.org/protocol/disco#items"><item jid="a@example.org"/>\
            <item jid="b@example.org"/></query></iq>
            """)))
        let nodeItems = try StanzaJSON.decode(try json(#"{"type":"result","items":{"node":"n","items":[{"jid":"a@example.org"}]}}"#))
        #expect(nodeItems.element == (try xmlElement("""
            <iq type="result"><query xmlns="http://jabber.org/protocol/disco#items" node="n"><item jid="a@example.org"/></query></iq>
            """)))
        let noPing = try StanzaJSON.decode(try json(#"{"kind":"iq","ping":false,"version":true}"#))
        #expect(noPing.element == (try xmlElement(#"<iq type="get"><query xmlns="jabber:iq:version"/></iq>"#)))
    }

    @Test func jidsAreNormalised() throws {
        let decoded = try StanzaJSON.decode(try json(#"{"to":"Alice@Example.ORG./Phone","from":"bot.example.org"}"#))
        #expect(decoded.to == "Alice@example.org/Phone")
        #expect(decoded.from == "bot.example.org")
    }

    @Test func errorMakesAnErrorStanzaWhateverTheType() throws {
        // mod_rest: an `error` object answers the stanza `type` describes (kind from the type, type error).
        let decoded = try StanzaJSON.decode(try json(#"{"type":"chat","body":"x","error":{"condition":"gone"}}"#))
        #expect(decoded.kind == .message && decoded.type == "error")
        #expect(decoded.element.child("body", namespace: Namespace.client) == nil)
    }

    @Test func errorWithoutTypeGetsTypeError() throws {
        let decoded = try StanzaJSON.decode(try json(#"{"kind":"iq","id":"q","error":{"condition":"bad-request","text":"why"}}"#))
        #expect(decoded.type == "error")
        #expect(decoded.error == StanzaError(.cancel, .badRequest, text: "why"))
    }
}

@Suite struct StanzaJSONInferenceTests {
    struct Row: CustomTestStringConvertible, Sendable {
        let json: String
        let kind: StanzaKind
        let type: String?
        var testDescription: String { json }
    }

    static let rows: [Row] = [
        Row(json: #"{}"#, kind: .message, type: nil),
        Row(json: #"{"type":"get"}"#, kind: .iq, type: "get"),
        Row(json: #"{"type":"set"}"#, kind: .iq, type: "set"),
        Row(json: #"{"type":"result"}"#, kind: .iq, type: "result"),
        Row(json: #"{"type":"normal"}"#, kind: .message, type: "normal"),
        Row(json: #"{"type":"chat"}"#, kind: .message, type: "chat"),
        Row(json: #"{"type":"headline"}"#, kind: .message, type: "headline"),
        Row(json: #"{"type":"groupchat"}"#, kind: .message, type: "groupchat"),
        Row(json: #"{"type":"available"}"#, kind: .presence, type: nil),
        Row(json: #"{"type":"unavailable"}"#, kind: .presence, type: "unavailable"),
        Row(json: #"{"type":"subscribe"}"#, kind: .presence, type: "subscribe"),
        Row(json: #"{"type":"subscribed"}"#, kind: .presence, type: "subscribed"),
        Row(json: #"{"type":"unsubscribe"}"#, kind: .presence, type: "unsubscribe"),
        Row(json: #"{"type":"unsubscribed"}"#, kind: .presence, type: "unsubscribed"),
        Row(json: #"{"type":"probe"}"#, kind: .presence, type: "probe"),
        Row(json: #"{"command":"list"}"#, kind: .iq, type: "set"),
        Row(json: #"{"archive":{}}"#, kind: .iq, type: "set"),
        Row(json: #"{"command":"list","type":"get"}"#, kind: .iq, type: "get"),
        Row(json: #"{"disco":true}"#, kind: .iq, type: "get"),
        Row(json: #"{"items":true}"#, kind: .iq, type: "get"),
        Row(json: #"{"ping":true}"#, kind: .iq, type: "get"),
        Row(json: #"{"version":{}}"#, kind: .iq, type: "get"),
        Row(json: #"{"body":"x"}"#, kind: .message, type: nil),
        Row(json: #"{"html":"<body/>"}"#, kind: .message, type: nil),
        Row(json: #"{"replace":"m1"}"#, kind: .message, type: nil),
        Row(json: #"{"state":"active"}"#, kind: .message, type: nil),
        Row(json: #"{"subject":"s"}"#, kind: .message, type: nil),
        Row(json: #"{"thread":{"id":"t"}}"#, kind: .message, type: nil),
        Row(json: #"{"join":true}"#, kind: .presence, type: nil),
        Row(json: #"{"priority":1}"#, kind: .presence, type: nil),
        Row(json: #"{"show":"dnd"}"#, kind: .presence, type: nil),
        Row(json: #"{"status":"here"}"#, kind: .presence, type: nil),
        // Mixed keys: iq keys first, then message keys, then presence keys.
        Row(json: #"{"status":"s","body":"b","ping":true}"#, kind: .iq, type: "get"),
        Row(json: #"{"show":"away","body":"b"}"#, kind: .message, type: nil),
        Row(json: #"{"thread":"t","version":{}}"#, kind: .iq, type: "get"),
        // The type decides before the keys; `kind` before both.
        Row(json: #"{"type":"chat","ping":true}"#, kind: .message, type: "chat"),
        Row(json: #"{"kind":"presence","body":"x"}"#, kind: .presence, type: nil),
        Row(json: #"{"kind":"iq"}"#, kind: .iq, type: "get"),
        Row(json: #"{"kind":"presence","type":"available"}"#, kind: .presence, type: nil),
        Row(json: #"{"type":"error","error":{"condition":"gone"}}"#, kind: .message, type: "error"),
        // Keys the mapping does not know don't decide anything.
        Row(json: #"{"nick":"n","delay":"2020-01-01T00:00:00Z","payload":{"data":1}}"#, kind: .message, type: nil),
    ]

    @Test(arguments: rows)
    func infersKindAndType(_ row: Row) throws {
        let stanza = try StanzaJSON.decode(try JSONValue.parse(row.json))
        #expect(stanza.kind == row.kind)
        #expect(stanza.type == row.type)
        #expect(stanza.element.namespace == Namespace.client)
    }

    @Test func mixedKeysAreDeterministic() throws {
        // Same keys, any insertion order: the same answer every time.
        for _ in 0..<50 {
            var object: [String: JSONValue] = [:]
            for key in ["status", "body", "items", "show", "thread"].shuffled() { object[key] = key == "items" ? true : "x" }
            #expect(try StanzaJSON.decode(.object(object)).kind == .iq)
        }
    }
}

@Suite struct StanzaJSONDefaultsTests {
    static let incoming = """
        <message type="groupchat" id="in1" from="room@muc.example.org/alice" to="echo@bot.example.org">\
        <body>ping</body><thread parent="tp">t1</thread></message>
        """

    @Test func replyDefaultsFillWhatTheJSONLeavesOut() throws {
        let defaults = ReplyDefaults(replyingTo: try xmlStanza(Self.incoming))
        #expect(defaults == ReplyDefaults(
            to: "room@muc.example.org/alice", from: "echo@bot.example.org", messageType: "groupchat",
            thread: "t1", threadParent: "tp"))
        let reply = try StanzaJSON.decode(try JSONValue.parse(#"{"body":"pong"}"#), defaults: defaults)
        #expect(reply.element == (try xmlElement("""
            <message type="groupchat" from="echo@bot.example.org" to="room@muc.example.org/alice">\
            <body>pong</body><thread parent="tp">t1</thread></message>
            """)))
    }

    @Test func jsonFieldsWinOverDefaults() throws {
        let defaults = ReplyDefaults(replyingTo: try xmlStanza(Self.incoming))
        let reply = try StanzaJSON.decode(
            try JSONValue.parse(#"{"type":"chat","to":"bob@example.org","from":"other@bot.example.org","id":"r1","body":"x","thread":{"id":"t2"}}"#),
            defaults: defaults)
        #expect(reply.element == (try xmlElement("""
            <message type="chat" id="r1" from="other@bot.example.org" to="bob@example.org"><body>x</body><thread>t2</thread></message>
            """)))
    }

    @Test func messageTypeDefaultsToChat() throws {
        let plain = try xmlStanza(#"<message from="a@example.org" to="bot.example.org"><body>x</body></message>"#)
        #expect(ReplyDefaults(replyingTo: plain).messageType == "chat")
        let presence = try xmlStanza(#"<presence type="subscribe" from="a@example.org" to="bot.example.org"/>"#)
        let defaults = ReplyDefaults(replyingTo: presence)
        #expect(defaults.messageType == "chat")
        #expect(defaults.kind == nil)
        // A presence reply gets no message type.
        let reply = try StanzaJSON.decode(try JSONValue.parse(#"{"type":"subscribed"}"#), defaults: defaults)
        #expect(reply.element == (try xmlElement(#"<presence type="subscribed" from="bot.example.org" to="a@example.org"/>"#)))
    }

    @Test func iqReplyDefaults() throws {
        let request = try xmlStanza(#"<iq type="get" id="q1" from="a@example.org/r" to="bot.example.org"><query xmlns="jabber:iq:version"/></iq>"#)
        let defaults = ReplyDefaults(replyingTo: request)
        #expect(defaults.kind == .iq && defaults.iqType == "result" && defaults.id == "q1")
        let reply = try StanzaJSON.decode(try JSONValue.parse(#"{"version":{"name":"bot"}}"#), defaults: defaults)
        #expect(reply.element == (try xmlElement("""
            <iq type="result" id="q1" from="bot.example.org" to="a@example.org/r"><query xmlns="jabber:iq:version"><name>bot</name></query></iq>
            """)))
        // With nothing else to go on, the kind is the default one.
        let error = try StanzaJSON.decode(try JSONValue.parse(#"{"error":{"type":"modify","condition":"bad-request"}}"#), defaults: defaults)
        #expect(error.kind == .iq && error.type == "error" && error.id == "q1")
    }

    @Test func stanzaFieldWinsAndKeepsDefaults() throws {
        let defaults = ReplyDefaults(to: "alice@example.org", from: "echo@bot.example.org", id: "d1", messageType: "chat", thread: "t")
        let reply = try StanzaJSON.decode(
            try JSONValue.parse(#"""
                {"stanza":"<message type='headline'><body>from xml</body></message>","kind":"iq","body":"from json","type":"get"}
                """#),
            defaults: defaults)
        // Only to/from/id are filled in: the XML's type, thread and content are as written.
        #expect(reply.element == (try xmlElement("""
            <message type="headline" to="alice@example.org" from="echo@bot.example.org" id="d1"><body>from xml</body></message>
            """)))
    }

    @Test func stanzaFieldAttributesWinThenJSONThenDefaults() throws {
        let defaults = ReplyDefaults(to: "alice@example.org", from: "echo@bot.example.org", id: "d1")
        let reply = try StanzaJSON.decode(
            try JSONValue.parse(#"{"stanza":"<iq type='set' to='x@example.org'><ping xmlns='urn:xmpp:ping'/></iq>","id":"j1"}"#),
            defaults: defaults)
        #expect(reply.to == "x@example.org")
        #expect(reply.id == "j1")
        #expect(reply.from == "echo@bot.example.org")
        #expect(reply.element.child("ping", namespace: "urn:xmpp:ping") != nil)
    }

    @Test func stanzaFieldWithoutDefaults() throws {
        let xml = #"<presence type="probe" from="bot.example.org" to="a@example.org"><x xmlns="urn:example">keep</x></presence>"#
        let text = JSONValue.object(["stanza": .string(xml)]).serialized()
        #expect(try StanzaJSON.decode(parsing: text.utf8).element == (try xmlElement(xml)))
    }
}

@Suite struct StanzaJSONErrorTests {
    struct Bad: CustomTestStringConvertible, Sendable {
        let json: String
        let code: JSONMappingError.Code
        let field: String?
        /// Words the message must contain.
        let says: [String]
        var testDescription: String { json }
    }

    static let bad: [Bad] = [
        Bad(json: "", code: .invalidJSON, field: nil, says: ["empty"]),
        Bad(json: "   \n", code: .invalidJSON, field: nil, says: ["empty"]),
        Bad(json: #"{"body":"x""#, code: .invalidJSON, field: nil, says: ["invalid JSON"]),
        Bad(json: #"{'body':'x'}"#, code: .invalidJSON, field: nil, says: ["invalid JSON"]),
        Bad(json: #"[{"body":"x"}]"#, code: .notAnObject, field: nil, says: ["must be an object", "an array"]),
        Bad(json: #""body""#, code: .notAnObject, field: nil, says: ["a string"]),
        Bad(json: #"{"kind":"mesage"}"#, code: .unknownKind, field: "kind", says: [#""mesage""#, "message", "presence", "iq"]),
        Bad(json: #"{"kind":3}"#, code: .unknownKind, field: "kind", says: ["kind", "3"]),
        Bad(json: #"{"type":5}"#, code: .invalidField, field: "type", says: [#""type" must be a string"#, "5"]),
        Bad(json: #"{"kind":"message","type":"get"}"#, code: .invalidField, field: "type", says: [#""get""#, "message", "chat"]),
        Bad(json: #"{"kind":"iq","type":"chat"}"#, code: .invalidField, field: "type", says: ["iq", "result"]),
        Bad(json: #"{"body":5}"#, code: .invalidField, field: "body", says: [#""body" must be a string"#, "got 5"]),
        Bad(json: #"{"body":"nul\u0000byte"}"#, code: .invalidField, field: "body", says: ["U+0000", "XML"]),
        Bad(json: #"{"to":"bot.example.org","id":"a\u0001"}"#, code: .invalidField, field: "id", says: ["U+0001"]),
        Bad(json: #"{"to":"not a jid"}"#, code: .invalidJID, field: "to", says: [#""to" is not a valid JID"#]),
        Bad(json: #"{"from":"@example.org"}"#, code: .invalidJID, field: "from", says: ["from", "empty localpart"]),
        // Found by StanzaFuzz: JIDs were not checked for characters XML cannot carry, so decode accepted a stanza
        // that could not be serialized.
        Bad(json: #"{"kind":"presence","to":"room@muc/nick\uFFFE"}"#, code: .invalidField, field: "to", says: ["to", "U+FFFE"]),
        Bad(json: #"{"items":["a@b/\uFFFF"]}"#, code: .invalidField, field: "items[0]", says: ["items[0]", "U+FFFF"]),
        Bad(json: #"{"error":{"condition":"gone","by":"a@b/\uFFFE"}}"#, code: .invalidField, field: "error.by", says: ["U+FFFE"]),
        Bad(json: #"{"to":["a@b"]}"#, code: .invalidField, field: "to", says: ["must be a string", "an array"]),
        Bad(json: #"{"priority":"high"}"#, code: .invalidField, field: "priority", says: ["priority", "-128 to 127", #""high""#]),
        Bad(json: #"{"priority":200}"#, code: .invalidField, field: "priority", says: ["-128 to 127", "200"]),
        Bad(json: #"{"priority":1.5}"#, code: .invalidField, field: "priority", says: ["integer", "1.5"]),
        Bad(json: #"{"priority":true}"#, code: .invalidField, field: "priority", says: ["integer", "true"]),
        Bad(json: #"{"show":"busy"}"#, code: .invalidField, field: "show", says: ["away, chat, dnd, xa", #""busy""#]),
        Bad(json: #"{"state":"typing"}"#, code: .invalidField, field: "state", says: ["active, inactive, gone, composing, paused", "typing"]),
        Bad(json: #"{"thread":5}"#, code: .invalidField, field: "thread", says: ["thread", "object", "or a string"]),
        Bad(json: #"{"oob":[]}"#, code: .invalidField, field: "oob", says: ["oob", "URL string", "an array"]),
        Bad(json: #"{"error":true}"#, code: .invalidField, field: "error", says: ["error", "condition string"]),
        Bad(json: #"{"thread":{"id":7}}"#, code: .invalidField, field: "thread.id", says: [#""thread.id" must be a string"#]),
        Bad(json: #"{"html":"<body><p>unclosed</body>"}"#, code: .invalidField, field: "html", says: ["html", "well-formed"]),
        Bad(json: #"{"html":"<body/><body/>"}"#, code: .invalidField, field: "html", says: ["html"]),
        Bad(json: #"{"html":"<bodyx/>"}"#, code: .invalidField, field: "html", says: ["<body>"]),
        Bad(json: #"{"oob":{"desc":"no url"}}"#, code: .invalidField, field: "oob.url", says: ["url"]),
        Bad(json: #"{"replace":""}"#, code: .invalidField, field: "replace", says: ["replace", "id"]),
        Bad(json: #"{"ping":"yes"}"#, code: .invalidField, field: "ping", says: [#""ping" must be true"#]),
        Bad(json: #"{"ping":true,"version":{}}"#, code: .invalidField, field: "version", says: ["one payload", "ping", "version"]),
        Bad(json: #"{"kind":"iq","disco":true,"payload":{"data":1}}"#, code: .invalidField, field: "payload", says: ["one payload"]),
        Bad(json: #"{"version":[]}"#, code: .invalidField, field: "version", says: ["version", "an array"]),
        Bad(json: #"{"version":{"name":1}}"#, code: .invalidField, field: "version.name", says: ["version.name"]),
        Bad(json: #"{"disco":5}"#, code: .invalidField, field: "disco", says: ["disco"]),
        Bad(json: #"{"disco":{"identities":[{"type":"bot"}]}}"#, code: .invalidField, field: "disco.identities[0].category", says: ["disco.identities[0]", "category"]),
        Bad(json: #"{"disco":{"features":["a",1]}}"#, code: .invalidField, field: "disco.features[1]", says: ["disco.features[1]"]),
        Bad(json: #"{"items":[{"name":"x"}]}"#, code: .invalidField, field: "items[0].jid", says: ["items[0]", "jid"]),
        Bad(json: #"{"items":["not a jid"]}"#, code: .invalidJID, field: "items[0]", says: ["items[0]", "JID"]),
        Bad(json: #"{"payload":{"datatype":"x"}}"#, code: .invalidField, field: "payload", says: ["data"]),
        Bad(json: #"{"payload":"x"}"#, code: .invalidField, field: "payload", says: ["payload", "object"]),
        Bad(json: #"{"type":"error"}"#, code: .invalidField, field: "error", says: ["needs an \"error\" object"]),
        Bad(json: #"{"error":{"type":"fatal"}}"#, code: .invalidField, field: "error.type", says: ["auth, cancel, continue, modify, wait", "fatal"]),
        Bad(json: #"{"error":{"condition":"oops"}}"#, code: .invalidField, field: "error.condition", says: ["oops", "item-not-found"]),
        Bad(json: #"{"error":{"condition":"gone","by":"x y"}}"#, code: .invalidJID, field: "error.by", says: ["error.by"]),
        Bad(json: #"{"stanza":"<message><body>x</message>"}"#, code: .invalidStanza, field: "stanza", says: ["stanza", "well-formed"]),
        Bad(json: #"{"stanza":"<message/><message/>"}"#, code: .invalidStanza, field: "stanza", says: ["one"]),
        Bad(json: #"{"stanza":"<handshake/>"}"#, code: .invalidStanza, field: "stanza", says: ["<message/>, <presence/> or <iq/>", "<handshake>"]),
        Bad(json: #"{"stanza":"<message xmlns='urn:other'/>"}"#, code: .invalidStanza, field: "stanza", says: ["urn:other"]),
        Bad(json: #"{"stanza":""}"#, code: .invalidStanza, field: "stanza", says: ["no XML element"]),
        Bad(json: #"{"stanza":"<!DOCTYPE x><message/>"}"#, code: .invalidStanza, field: "stanza", says: ["DOCTYPE"]),
        Bad(json: #"{"stanza":"<message to='a b'/>"}"#, code: .invalidJID, field: "stanza@to", says: ["stanza@to"]),
        Bad(json: #"{"stanza":"<message/>","to":"a b"}"#, code: .invalidJID, field: "to", says: ["to"]),
        Bad(json: #"{"stanza":5}"#, code: .invalidField, field: "stanza", says: [#""stanza" must be a string"#]),
    ]

    @Test(arguments: bad)
    func refusesWithAClearMessage(_ b: Bad) throws {
        let error = try #require(mappingError(b.json))
        #expect(error.code == b.code, "\(error)")
        #expect(error.field == b.field, "\(error)")
        for word in b.says {
            #expect(error.message.contains(word), "\(error.message) should mention \(word)")
        }
        #expect(error.description == error.message)
    }

    @Test func invalidUTF8IsNamed() {
        let error = #expect(throws: JSONMappingError.self) {
            try StanzaJSON.decode(parsing: [0x7B, 0x22, 0xFF, 0x22, 0x3A, 0x31, 0x7D])
        }
        #expect(error?.code == .invalidJSON)
        #expect(error?.message.contains("UTF-8") == true)
    }

    @Test func everyDecodedStanzaSerializes() throws {
        // Whatever decode accepts can be written: names and characters were checked on the way in.
        for row in StanzaJSONInferenceTests.rows {
            _ = try StanzaJSON.decode(try JSONValue.parse(row.json)).serialized()
        }
        for c in StanzaJSONRoundTripTests.cases {
            _ = try StanzaJSON.decode(try JSONValue.parse(c.json)).serialized()
        }
    }
}

@Suite struct StanzaJSONValueTests {
    @Test func unicodeBeyondTheBMP() throws {
        let escaped = try JSONValue.parse(#""\ud83d\ude00 \u00e9 \u4e2d""#)
        let raw = try JSONValue.parse(#""😀 é 中""#)
        #expect(escaped == .string("😀 é 中"))
        #expect(raw == escaped)
        #expect(raw.serialized() == #""😀 é 中""#)
        #expect(JSONValue.string("𝄞").serializedBytes() == [0x22, 0xF0, 0x9D, 0x84, 0x9E, 0x22])
    }

    @Test func loneSurrogateIsInvalid() {
        #expect(throws: JSONMappingError.self) { try JSONValue.parse(#""\ud800""#) }
    }

    @Test func escapes() throws {
        let value = JSONValue.string("q\" b\\ s/ n\n r\r t\t b\u{8} f\u{C} 0\u{0} 1f\u{1F} del\u{7F} ls\u{2028} ps\u{2029}")
        let text = value.serialized()
        #expect(text == #""q\" b\\ s/ n\n r\r t\t b\b f\f 0\u0000 1f\u001f del\u007f ls\u2028 ps\u2029""#)
        #expect(try JSONValue.parse(text) == value)
        #expect(try JSONValue.parse(#""\/\u0041\"""#) == .string("/A\""))
    }

    @Test func nestedValuesSerializeCompactWithSortedKeys() throws {
        let value = try JSONValue.parse(#"  { "b" : [ 1 , 2.5 , { "z" : null , "a" : false } ] , "a" : true , "é" : {} , "B" : [] }  "#)
        #expect(value.serialized() == #"{"B":[],"a":true,"b":[1,2.5,{"a":false,"z":null}],"é":{}}"#)
        #expect(value["b"]?[2]?["a"] == .bool(false))
        #expect(value["b"]?[9] == nil)
        #expect(value["missing"] == nil)
        #expect(value.description == value.serialized())
    }

    @Test func serializationIsDeterministic() {
        let keys = (0..<40).map { "k\($0)" }
        var outputs: Set<String> = []
        for _ in 0..<20 {
            var object: [String: JSONValue] = [:]
            for key in keys.shuffled() { object[key] = .int(Int64(key.count)) }
            outputs.insert(JSONValue.object(object).serialized())
        }
        #expect(outputs.count == 1)
    }

    @Test func boolsAndNumbersStayApart() throws {
        #expect(try JSONValue.parse("true") == .bool(true))
        #expect(try JSONValue.parse("false") == .bool(false))
        #expect(try JSONValue.parse("1") == .int(1))
        #expect(try JSONValue.parse("0") == .int(0))
        #expect(try JSONValue.parse("-42") == .int(-42))
        #expect(try JSONValue.parse("[true,1,0,false]") == [true, 1, 0, false])
        #expect(JSONValue.bool(true) != JSONValue.int(1))
        #expect(JSONValue.bool(true).intValue == nil)
        #expect(JSONValue.int(1).boolValue == nil)
    }

    @Test func numbers() throws {
        #expect(try JSONValue.parse("9223372036854775807") == .int(.max))
        #expect(try JSONValue.parse("-9223372036854775808") == .int(.min))
        #expect(try JSONValue.parse("9223372036854775808") == .double(9_223_372_036_854_775_808))
        #expect(try JSONValue.parse("1.5") == .double(1.5))
        #expect(try JSONValue.parse("-2.5e-3") == .double(-0.0025))
        // A number with an exact integer value is an integer, however it is written.
        #expect(try JSONValue.parse("3.0") == .int(3))
        #expect(try JSONValue.parse("1e2") == .int(100))
        #expect(JSONValue.int(3).serialized() == "3")
        #expect(JSONValue.int(-7).serialized() == "-7")
        #expect(JSONValue.double(2.5).serialized() == "2.5")
        #expect(JSONValue.double(1e300).serialized() == "1e+300")
        #expect(JSONValue.double(.nan).serialized() == "null")
        #expect(JSONValue.double(.infinity).serialized() == "null")
        #expect(JSONValue.double(3).intValue == 3)
        #expect(JSONValue.double(3.5).intValue == nil)
        #expect(JSONValue.int(2).doubleValue == 2)
        let tooLarge = #expect(throws: JSONMappingError.self) { try JSONValue.parse("1e400") }
        #expect(tooLarge?.message.contains("number") == true)
        let nested = #expect(throws: JSONMappingError.self) { try JSONValue.parse(#"{"a":[1,01]}"#) }
        #expect(nested?.message == "invalid JSON: the number at $.a[1] is malformed or too large for a double")
    }

    @Test(arguments: [
        JSONValue.null, true, 0, -1, 0.1, 1e-7, 123456.789, "", "a\"b\\c\u{1}", "𝄞",
        [], [:], [1, [2, [3, [4]]]], ["k": ["n": [.null, "x", 1.25]], "": "empty key"],
    ])
    func roundTrips(_ value: JSONValue) throws {
        #expect(try JSONValue.parse(value.serialized()) == value)
    }

    @Test func topLevelScalars() throws {
        #expect(try JSONValue.parse("null") == .null)
        #expect(try JSONValue.parse(#""x""#) == "x")
        #expect(try JSONValue.parse(" 12 ") == 12)
    }

    @Test(arguments: ["", "{", "[1,", "{\"a\" 1}", "nul", "tru", "{\"a\":1}x", "'x'", "01x", "[1 2]", "{a:1}"])
    func invalidJSON(_ text: String) {
        let error = #expect(throws: JSONMappingError.self) { try JSONValue.parse(text) }
        #expect(error?.code == .invalidJSON)
        #expect(error?.message.hasPrefix("invalid JSON") == true)
    }

    @Test func stringsAndEscapes() throws {
        #expect(try JSONValue.parse(#""a\"b\\c\/d\b\f\n\r\t""#) == .string("a\"b\\c/d\u{8}\u{C}\n\r\t"))
        #expect(try JSONValue.parse(#""\u00e9\u00E9 \ud834\udd1e é 𝄞""#) == .string("éé 𝄞 é 𝄞"))
        #expect(try JSONValue.parse(#"{"k":1,"k":2}"#) == ["k": 2], "a repeated key keeps its last value")
        #expect(try JSONValue.parse(" \n\t[ 1 , { \"a\" : [ ] } ]\r\n") == [1, ["a": []]])
        // U+2028/U+2029 and DEL are escaped on output; everything else non-ASCII is written as UTF-8.
        #expect(JSONValue.string("a\u{2028}b\u{2029}c\u{7F}é").serialized() == #""a\u2028b\u2029c\u007fé""#)
        // U+FFFE/U+FFFF are JSON but not XML: escaped, JSON text always fits in a stanza (found by the fuzzer in a
        // `payload` object key).
        let noncharacters = JSONValue.object(["k\u{FFFF}": .string("v\u{FFFE}")])
        #expect(noncharacters.serialized() == #"{"k\uffff":"v\ufffe"}"#)
        #expect(try JSONValue.parse(noncharacters.serialized()) == noncharacters)
        #expect(JSONValue.object(["b": 1, "a": 2, "é": 3, "Z": 4]).serialized() == #"{"Z":4,"a":2,"b":1,"é":3}"#)
    }

    @Test(arguments: [
        (#""\ud834""#, "a lone high surrogate"), (#""\udd1e""#, "a lone low surrogate"),
        (#""\ud834\u0041""#, "a high surrogate before a non-surrogate"), (#""\x41""#, "an unknown escape"),
        (#""\u12""#, "a short \\u escape"), ("\"a\u{1}b\"", "a raw control character"), (#""abc"#, "an unterminated string"),
        ("-", "a lone minus"), ("1.", "a fraction without digits"), ("1e", "an exponent without digits"),
        ("-01", "a leading zero"), ("+1", "a plus sign"), (".5", "a leading dot"), ("[1,]", "a trailing comma"),
        (#"{"a":1,}"#, "a trailing comma in an object"), ("[01]", "a leading zero in an array"), ("NaN", "NaN"),
    ] as [(String, String)])
    func malformedTextIsRefused(_ text: String, _ what: String) {
        let error = #expect(throws: JSONMappingError.self, "\(what)") { try JSONValue.parse(text) }
        #expect(error?.code == .invalidJSON)
        #expect(error?.message.hasPrefix("invalid JSON: ") == true)
    }

    @Test func failuresNameTheirCause() {
        func message(_ bytes: [UInt8]) -> String? {
            do { _ = try JSONValue.parse(bytes); return nil } catch { return error.message }
        }
        #expect(message(Array("  \n".utf8)) == "invalid JSON: the input is empty")
        #expect(message([0x22, 0xC3, 0x28, 0x22]) == "invalid JSON: the input is not valid UTF-8")
        #expect(message(Array("[1 2]".utf8))?.contains("not well-formed JSON text") == true)
        #expect(message(Array("1e400".utf8)) == "invalid JSON: the number is malformed or too large for a double")
        #expect(message(Array(#"[{"x":{"y":[0,1e999]}}]"#.utf8))
            == "invalid JSON: the number at $[0].x.y[1] is malformed or too large for a double")
    }

    @Test func nestingIsBounded() throws {
        let limit = String(repeating: "[", count: 512) + String(repeating: "]", count: 512)
        #expect(try JSONValue.parse(limit).serialized() == limit, "512 levels are allowed")
        let over = String(repeating: "{\"a\":", count: 513) + "1" + String(repeating: "}", count: 513)
        #expect(throws: JSONMappingError.self, "513 are not") { try JSONValue.parse(over) }
        let shallow = String(repeating: "[", count: 200) + String(repeating: "]", count: 200)
        #expect(try JSONValue.parse(shallow).serialized() == shallow)
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(throws: JSONMappingError.self) { try JSONValue.parse(deep) }
    }

    @Test func accessors() {
        let value: JSONValue = ["s": "x", "b": true, "i": 3, "d": 1.5, "a": [1], "o": ["k": "v"], "n": .null]
        #expect(value["s"]?.stringValue == "x")
        #expect(value["b"]?.boolValue == true)
        #expect(value["i"]?.intValue == 3)
        #expect(value["d"]?.doubleValue == 1.5)
        #expect(value["a"]?.arrayValue == [1])
        #expect(value["o"]?.objectValue == ["k": "v"])
        #expect(value["n"]?.isNull == true)
        #expect(value["s"]?.intValue == nil)
        #expect(value["s"]?[0] == nil)
        #expect(value.kindDescription == "an object")
    }

    @Test func codableThroughFoundation() throws {
        let value: JSONValue = ["list": [1, 2.5, "three", true, .null], "nested": ["x": [:]]]
        struct Envelope: Codable, Equatable { var ref: String; var data: JSONValue }
        let bytes = try JSONEncoder().encode(Envelope(ref: "r1", data: value))
        let back = try JSONDecoder().decode(Envelope.self, from: bytes)
        #expect(back == Envelope(ref: "r1", data: value))
    }
}
