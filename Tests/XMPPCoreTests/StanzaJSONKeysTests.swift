import Testing

@testable import XMPPCore

private func stanza(_ xml: String) throws -> Stanza {
    try #require(Stanza(try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)[0]))
}

/// One key of mod_rest's mapping: the XML, the JSON it reads as, and back.
struct KeyCase: CustomTestStringConvertible, Sendable {
    let key: String
    let xml: String
    let json: String
    var testDescription: String { key }
}

/// The keys added for mod_rest parity (SPEC §7), each XML → JSON and JSON → XML → JSON.
@Suite struct StanzaJSONKeysTests {
    static let cases: [KeyCase] = [
        KeyCase(key: "reactions", xml: "<message><reactions xmlns='urn:xmpp:reactions:0' id='m0'><reaction>👍</reaction><reaction>🎉</reaction></reactions></message>",
                json: #"{"kind":"message","reactions":{"id":"m0","reactions":["👍","🎉"]}}"#),
        KeyCase(key: "reply", xml: "<message><reply xmlns='urn:xmpp:reply:0' to='b@example.org/r' id='m0'/></message>",
                json: #"{"kind":"message","reply":{"to":"b@example.org/r","id":"m0"}}"#),
        KeyCase(key: "fallback", xml: "<message><fallback xmlns='urn:xmpp:fallback:0'/></message>", json: #"{"kind":"message","fallback":true}"#),
        KeyCase(key: "reference", xml: "<message><reference xmlns='urn:xmpp:reference:0' begin='0' end='5' type='mention' uri='xmpp:a@example.org'/></message>",
                json: #"{"kind":"message","reference":{"begin":0,"end":5,"type":"mention","uri":"xmpp:a@example.org"}}"#),
        KeyCase(key: "markable", xml: "<message><markable xmlns='urn:xmpp:chat-markers:0'/></message>", json: #"{"kind":"message","markable":true}"#),
        KeyCase(key: "displayed", xml: "<message><displayed xmlns='urn:xmpp:chat-markers:0' id='m0'/></message>", json: #"{"kind":"message","displayed":"m0"}"#),
        KeyCase(key: "stanza_ids", xml: "<message><stanza-id xmlns='urn:xmpp:sid:0' id='s1' by='example.org'/><stanza-id xmlns='urn:xmpp:sid:0' id='s2' by='muc.example.org'/></message>",
                json: #"{"kind":"message","stanza_ids":[{"id":"s1","by":"example.org"},{"id":"s2","by":"muc.example.org"}]}"#),
        KeyCase(key: "occupant_id", xml: "<message><occupant-id xmlns='urn:xmpp:occupant-id:0' id='o1'/></message>", json: #"{"kind":"message","occupant_id":"o1"}"#),
        KeyCase(key: "encryption", xml: "<message><encryption xmlns='urn:xmpp:eme:0' namespace='urn:xmpp:openpgp:0'/></message>",
                json: #"{"kind":"message","encryption":"urn:xmpp:openpgp:0"}"#),
        KeyCase(key: "attach_to", xml: "<message><attach-to xmlns='urn:xmpp:message-attaching:1' id='m0'/></message>", json: #"{"kind":"message","attach_to":"m0"}"#),
        KeyCase(key: "invite", xml: "<message><x xmlns='jabber:x:conference' jid='r@muc.example.org' reason='come' continue='1'/></message>",
                json: #"{"kind":"message","invite":{"jid":"r@muc.example.org","reason":"come","continue":true}}"#),
        KeyCase(key: "forwarded",
                xml: "<message><forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2024-01-01T00:00:00Z'/><message xmlns='jabber:client' from='b@example.org' type='chat'><body>hi</body></message></forwarded></message>",
                json: #"{"kind":"message","forwarded":{"delay":"2024-01-01T00:00:00Z","message":{"from":"b@example.org","type":"chat","body":"hi"}}}"#),
        KeyCase(key: "archive (message)",
                xml: "<message><result xmlns='urn:xmpp:mam:2' queryid='q' id='a1'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>old</body></message></forwarded></result></message>",
                json: #"{"kind":"message","archive":{"queryid":"q","id":"a1","forward":{"message":{"body":"old"}}}}"#),
        KeyCase(key: "oob_url", xml: "<message><x xmlns='jabber:x:oob'><url>https://example.org/f</url></x></message>",
                json: #"{"kind":"message","oob":{"url":"https://example.org/f"},"oob_url":"https://example.org/f"}"#),
        KeyCase(key: "rsm", xml: "<iq type='result'><set xmlns='http://jabber.org/protocol/rsm'><first>a</first><last>b</last><count>2</count></set></iq>",
                json: #"{"kind":"iq","type":"result","rsm":{"first":"a","last":"b","count":2}}"#),
        KeyCase(key: "dataform",
                xml: "<message><x xmlns='jabber:x:data' type='form'><title>T</title><field var='a' type='list-multi' label='A'><desc>d</desc><required/><value>1</value><value>2</value><option label='One'><value>1</value></option></field><field var='n' type='text-multi'><value>x</value><value>y</value></field></x></message>",
                json: #"""
                    {"kind":"message","dataform":{"type":"form","title":"T","fields":[
                     {"var":"a","type":"list-multi","label":"A","desc":"d","required":true,"value":["1","2"],"options":[{"label":"One","value":"1"}]},
                     {"var":"n","type":"text-multi","value":"x\ny"}]}}
                    """#),
        KeyCase(key: "caps", xml: "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/></presence>",
                json: #"{"kind":"presence","type":"available","caps":{"hash":"sha-1","node":"n","ver":"v"}}"#),
        KeyCase(key: "idle_since", xml: "<presence><idle xmlns='urn:xmpp:idle:1' since='2024-01-01T00:00:00Z'/></presence>",
                json: #"{"kind":"presence","type":"available","idle_since":"2024-01-01T00:00:00Z"}"#),
        KeyCase(key: "vcard_update", xml: "<presence><x xmlns='vcard-temp:x:update'><photo>abc</photo></x></presence>",
                json: #"{"kind":"presence","type":"available","vcard_update":{"photo":"abc"}}"#),
        KeyCase(key: "muc", xml: "<presence><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='5'/></x></presence>",
                json: #"{"kind":"presence","type":"available","muc":{"history":{"maxstanzas":5}}}"#),
        KeyCase(key: "command",
                xml: "<iq type='result'><command xmlns='http://jabber.org/protocol/commands' node='n' sessionid='s' status='executing'><actions execute='next'><next/></actions><x xmlns='jabber:x:data' type='form'><field var='w' type='text-single'/></x></command></iq>",
                json: #"""
                    {"kind":"iq","type":"result","command":{"node":"n","sessionid":"s","status":"executing",
                     "actions":{"execute":"next","next":true},"form":{"type":"form","fields":[{"var":"w","type":"text-single"}]}}}
                    """#),
        KeyCase(key: "command note",
                xml: "<iq type='result'><command xmlns='http://jabber.org/protocol/commands' node='n' status='completed'><note type='info'>ok</note></command></iq>",
                json: #"{"kind":"iq","type":"result","command":{"node":"n","status":"completed","note":{"type":"info","text":"ok"}}}"#),
        KeyCase(key: "archive (iq)",
                xml: "<iq type='set'><query xmlns='urn:xmpp:mam:2' queryid='q'><set xmlns='http://jabber.org/protocol/rsm'><max>5</max></set></query></iq>",
                json: #"{"kind":"iq","type":"set","archive":{"queryid":"q","page":{"max":5}}}"#),
        KeyCase(key: "result", xml: "<iq type='result'><fin xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><last>z</last></set></fin></iq>",
                json: #"{"kind":"iq","type":"result","result":{"page":{"last":"z"}}}"#),
        KeyCase(key: "extdisco",
                xml: "<iq type='result'><services xmlns='urn:xmpp:extdisco:2'><service type='turn' host='h' port='3478' restricted='1'/></services></iq>",
                json: #"{"kind":"iq","type":"result","extdisco":{"services":[{"type":"turn","host":"h","port":3478,"restricted":true}]}}"#),
        KeyCase(key: "gateway", xml: "<iq type='result'><query xmlns='jabber:iq:gateway'><desc>d</desc><prompt>p</prompt></query></iq>",
                json: #"{"kind":"iq","type":"result","gateway":{"desc":"d","prompt":"p"}}"#),
        KeyCase(key: "lastactivity", xml: "<iq type='result'><query xmlns='jabber:iq:last' seconds='9'>away</query></iq>",
                json: #"{"kind":"iq","type":"result","lastactivity":{"seconds":9,"status":"away"}}"#),
        KeyCase(key: "oob (iq)", xml: "<iq type='set'><query xmlns='jabber:iq:oob'><url>https://example.org/f</url></query></iq>",
                json: #"{"kind":"iq","type":"set","oob":{"url":"https://example.org/f"}}"#),
        KeyCase(key: "register", xml: "<iq type='result'><query xmlns='jabber:iq:register'><registered/><username>u</username></query></iq>",
                json: #"{"kind":"iq","type":"result","register":{"registered":true,"username":"u"}}"#),
        KeyCase(key: "stats", xml: "<iq type='result'><query xmlns='http://jabber.org/protocol/stats'><stat name='a' unit='u' value='1.5'/></query></iq>",
                json: #"{"kind":"iq","type":"result","stats":[{"name":"a","unit":"u","value":1.5}]}"#),
        KeyCase(key: "upload_request", xml: "<iq type='get'><request xmlns='urn:xmpp:http:upload:0' filename='f' size='3' content-type='text/plain'/></iq>",
                json: #"{"kind":"iq","type":"get","upload_request":{"filename":"f","size":3,"content-type":"text/plain"}}"#),
        KeyCase(key: "upload_slot",
                xml: "<iq type='result'><slot xmlns='urn:xmpp:http:upload:0'><put url='https://u/p'><header name='Cookie'>c=1</header></put><get url='https://u/g'/></slot></iq>",
                json: #"{"kind":"iq","type":"result","upload_slot":{"put":{"url":"https://u/p","headers":[{"name":"Cookie","value":"c=1"}]},"get":{"url":"https://u/g"}}}"#),
        KeyCase(key: "block",
                xml: "<iq type='set'><block xmlns='urn:xmpp:blocking'><item jid='s@example.org'><report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'/></item></block></iq>",
                json: #"{"kind":"iq","type":"set","block":[{"jid":"s@example.org","report":{"reason":"urn:xmpp:reporting:spam"}}]}"#),
        KeyCase(key: "blocklist", xml: "<iq type='result'><blocklist xmlns='urn:xmpp:blocking'><item jid='a@example.org'/></blocklist></iq>",
                json: #"{"kind":"iq","type":"result","blocklist":[{"jid":"a@example.org"}]}"#),
        KeyCase(key: "disco extensions",
                xml: "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='component' type='generic'/><x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'><value>urn:example</value></field><field var='k'><value>v</value></field></x></query></iq>",
                json: #"""
                    {"kind":"iq","type":"result","disco":{"identities":[{"category":"component","type":"generic"}],"features":[],
                     "extensions":{"urn:example":{"k":["v"]}}}}
                    """#),
    ]

    @Test(arguments: cases)
    func readsTheKeyFromXML(_ c: KeyCase) throws {
        #expect(StanzaJSON.encode(try stanza(c.xml)) == (try JSONValue.parse(c.json)))
    }

    @Test(arguments: cases)
    func writesTheKeyAndReadsItBack(_ c: KeyCase) throws {
        let json = try JSONValue.parse(c.json)
        let decoded = try StanzaJSON.decode(json)
        #expect(StanzaJSON.encode(decoded) == json)
        // And the XML says the same as the original (children in any order).
        #expect(StanzaJSON.encode(try stanza(try decoded.serialized())) == StanzaJSON.encode(try stanza(c.xml)))
    }

    @Test func formdataSubmitsAForm() throws {
        let decoded = try StanzaJSON.decode(try JSONValue.parse(#"{"kind":"message","formdata":{"a":"1","b":["x","y"],"c":true}}"#))
        let form = try #require(decoded.element.child("x", namespace: "jabber:x:data"))
        #expect(form[attribute: "type"] == nil)
        #expect(form.elements.map { $0[attribute: "var"] } == ["a", "b", "c"])
        #expect(form.elements.map { $0.elements.map(\.text) } == [["1"], ["x", "y"], ["1"]])
        // Read back it is a dataform (formdata exists only towards XML, as in mod_rest).
        #expect(StanzaJSON.encode(decoded)["dataform"] != nil)
    }

    @Test func commandDataIsASubmitForm() throws {
        let decoded = try StanzaJSON.decode(try JSONValue.parse(#"{"command":{"node":"n","sessionid":"s","data":{"w":"tea"}}}"#))
        #expect(decoded.kind == .iq && decoded.type == "set")
        let command = try #require(decoded.element.child("command", namespace: "http://jabber.org/protocol/commands"))
        #expect(command.child("x", namespace: "jabber:x:data")?[attribute: "type"] == "submit")
        #expect(try StanzaJSON.decode(try JSONValue.parse(#"{"command":"uptime"}"#)).element.elements.first?[attribute: "node"] == "uptime")
    }

    @Test func archiveShortcutsBuildTheQueryForm() throws {
        let decoded = try StanzaJSON.decode(try JSONValue.parse(#"{"archive":{"with":"b@example.org","ids":"a,b","max":"5","after":"x"}}"#))
        #expect(decoded.kind == .iq && decoded.type == "set")
        let json = StanzaJSON.encode(decoded)
        let archive = try #require(json["archive"])
        #expect(archive["page"] == .object(["max": 5, "after": "x"]))
        let fields = try #require(archive["form"]?["fields"]?.arrayValue)
        #expect(fields.first == .object(["var": "FORM_TYPE", "values": ["urn:xmpp:mam:2"]]))
        #expect(fields.contains(.object(["var": "ids", "values": ["a", "b"]])))
        #expect(fields.contains(.object(["var": "with", "values": ["b@example.org"]])))
    }

    @Test func joinIsAnEmptyMUCElement() throws {
        let decoded = try StanzaJSON.decode(try JSONValue.parse(#"{"kind":"presence","join":true}"#))
        #expect(decoded.element.child("x", namespace: "http://jabber.org/protocol/muc") != nil)
    }

    @Test func legacyErrorCodeBecomesADefinedConditionThatKeepsTheCode() throws {
        let decoded = try StanzaJSON.decode(try JSONValue.parse(#"{"type":"error","body":"Not found","error_code":404}"#))
        #expect(decoded.kind == .message && decoded.type == "error")
        let error = try #require(decoded.element.child("error", namespace: Namespace.client))
        #expect(error[attribute: "code"] == "404")
        #expect(decoded.error == StanzaError(.cancel, .itemNotFound, text: "Not found"))
        #expect(throws: JSONMappingError.self) { try StanzaJSON.decode(try JSONValue.parse(#"{"type":"error","error_code":"soon"}"#)) }
    }

    @Test func emptyObjectIsAnEmptyList() throws {
        let decoded = try StanzaJSON.decode(try JSONValue.parse(#"{"kind":"iq","blocklist":{}}"#))
        #expect(decoded.element.elements.first?.name == "blocklist")
        #expect(StanzaJSON.encode(decoded)["blocklist"] == .object([:]))
    }

    struct Bad: CustomTestStringConvertible, Sendable {
        let json: String
        let field: String
        let says: String
        var testDescription: String { json }
    }

    static let bad: [Bad] = [
        Bad(json: #"{"dataform":{"fields":{}}}"#, field: "dataform.fields", says: "an array of objects"),
        Bad(json: #"{"dataform":{"fields":[{"var":"a","type":"text-tiny"}]}}"#, field: "dataform.fields[0].type", says: "XEP-0004 field type"),
        Bad(json: #"{"dataform":{"type":"draft"}}"#, field: "dataform.type", says: "one of cancel, form, result, submit"),
        Bad(json: #"{"dataform":{"fields":[{"var":"a","required":"yes"}]}}"#, field: "dataform.fields[0].required", says: "true or false"),
        Bad(json: #"{"dataform":{"fields":[{"var":"a","options":[{"label":"x"}]}]}}"#, field: "dataform.fields[0].options[0].value", says: "needs a string"),
        Bad(json: #"{"dataform":{"fields":[{"var":"a","value":{"x":1}}]}}"#, field: "dataform.fields[0].value", says: "a string, an array of strings"),
        Bad(json: #"{"formdata":{"a":{"b":1}}}"#, field: "formdata.a", says: "a string, an array of strings"),
        Bad(json: #"{"command":5}"#, field: "command", says: "a node string"),
        Bad(json: #"{"command":{"node":"n","actions":{"next":"yes"}}}"#, field: "command.actions.next", says: "true or false"),
        Bad(json: #"{"kind":"message","stanza_ids":"s1"}"#, field: "stanza_ids", says: "an array"),
        Bad(json: #"{"kind":"message","reference":{"begin":-1}}"#, field: "reference.begin", says: "at least 0"),
        Bad(json: #"{"kind":"message","fallback":"yes"}"#, field: "fallback", says: "true or false"),
        Bad(json: #"{"kind":"iq","upload_request":{"size":"big"}}"#, field: "upload_request.size", says: "an integer"),
        Bad(json: #"{"kind":"iq","upload_slot":{"put":{"headers":[{"name":"X-Evil","value":"1"}]}}}"#,
            field: "upload_slot.put.headers[0].name", says: "one of Authorization, Cookie, Expires"),
        Bad(json: #"{"kind":"iq","stats":[5]}"#, field: "stats[0]", says: "an object"),
        Bad(json: #"{"kind":"presence","muc":{"history":{"maxstanzas":-2}}}"#, field: "muc.history.maxstanzas", says: "at least 0"),
        Bad(json: #"{"kind":"iq","archive":"all"}"#, field: "archive", says: "an object"),
    ]

    @Test(arguments: bad)
    func badInputNamesTheKey(_ c: Bad) throws {
        do {
            _ = try StanzaJSON.decode(parsing: c.json.utf8)
            Issue.record("\(c.json) was accepted")
        } catch {
            #expect(error.code == .invalidField)
            #expect(error.field == c.field, "\(error.message)")
            #expect(error.message.contains(c.says), "\(error.message)")
        }
    }
}
