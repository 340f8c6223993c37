"""The differential corpus (test_compat.py): stanzas written from the XEPs, one or more per key of mod_rest's
JSON mapping (SPEC §7), results and errors included. An `xml` case goes XML → JSON through both /rest/echo's,
then mod_rest's JSON back to XML through both; a `json` case goes JSON → XML, then mod_rest's XML back to JSON.
Every case names its `to` and `id` so stamping does not differ."""

from __future__ import annotations

A = "to='alice@example.test/phone' id='c1'"
CL = "xmlns='jabber:client'"

XML_CASES: list[tuple[str, str]] = [
    # message basics (RFC 6121)
    ("message-basics", f"<message {A} type='chat' xml:lang='en'><body>Hello</body><subject>Greeting</subject>"
                       "<thread parent='p1'>t1</thread></message>"),
    ("message-normal-empty-body", f"<message {A}><body/></message>"),
    ("message-headline", f"<message {A} type='headline'><body>news</body></message>"),
    ("message-groupchat", f"<message to='room@muc.example.test' id='c1' type='groupchat'><body>hi all</body></message>"),
    # XEP-0071
    ("html", f"<message {A}><body>Hi</body><html xmlns='http://jabber.org/protocol/xhtml-im'>"
             "<body xmlns='http://www.w3.org/1999/xhtml'><p>Hi <em>there</em></p></body></html></message>"),
    # XEP-0085
    ("state-composing", f"<message {A} type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"),
    ("state-gone", f"<message {A} type='chat'><gone xmlns='http://jabber.org/protocol/chatstates'/></message>"),
    # XEP-0066 (message) and oob_url
    ("oob", f"<message {A}><body>pic</body><x xmlns='jabber:x:oob'><url>https://example.test/a.png</url>"
            "<desc>A picture</desc></x></message>"),
    # XEP-0308
    ("replace", f"<message {A}><body>fixed</body><replace xmlns='urn:xmpp:message-correct:0' id='m0'/></message>"),
    # XEP-0444
    ("reactions", f"<message {A} type='chat'><reactions xmlns='urn:xmpp:reactions:0' id='m0'><reaction>👍</reaction>"
                  "<reaction>🎉</reaction></reactions></message>"),
    # XEP-0461 + XEP-0428
    ("reply-fallback", f"<message {A} type='chat'><body>&gt; quoted\nanswer</body>"
                       "<reply xmlns='urn:xmpp:reply:0' to='bob@example.test/x' id='m0'/>"
                       "<fallback xmlns='urn:xmpp:fallback:0'/></message>"),
    # XEP-0372
    ("reference", f"<message {A}><body>hi alice</body><reference xmlns='urn:xmpp:reference:0' begin='3' end='8' "
                  "type='mention' uri='xmpp:alice@example.test'/></message>"),
    # XEP-0333
    ("markable", f"<message {A} type='chat'><body>read me</body><markable xmlns='urn:xmpp:chat-markers:0'/></message>"),
    ("displayed", f"<message {A} type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='m0'/></message>"),
    # XEP-0359
    ("stanza-ids", f"<message {A}><body>x</body><stanza-id xmlns='urn:xmpp:sid:0' id='s1' by='example.test'/>"
                   "<stanza-id xmlns='urn:xmpp:sid:0' id='s2' by='muc.example.test'/></message>"),
    # XEP-0421
    ("occupant-id", f"<message {A} type='groupchat'><body>x</body><occupant-id xmlns='urn:xmpp:occupant-id:0' id='o1'/></message>"),
    # XEP-0380
    ("encryption", f"<message {A}><body>This message is encrypted</body>"
                   "<encryption xmlns='urn:xmpp:eme:0' namespace='eu.siacs.conversations.axolotl'/></message>"),
    # XEP-0367
    ("attach-to", f"<message {A}><body>attached</body><attach-to xmlns='urn:xmpp:message-attaching:1' id='m0'/></message>"),
    # XEP-0249
    ("invite", f"<message {A}><x xmlns='jabber:x:conference' jid='room@muc.example.test' password='pw' "
               "reason='join us' thread='t1' continue='true'/></message>"),
    # XEP-0297 + XEP-0203
    ("forwarded", f"<message {A}><forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' "
                  "stamp='2024-01-01T10:00:00Z'/><message xmlns='jabber:client' from='bob@example.test/x' "
                  "to='carol@example.test' type='chat' id='f1'><body>forwarded body</body></message></forwarded></message>"),
    # XEP-0313 result in a message
    ("archive-result", f"<message {A}><result xmlns='urn:xmpp:mam:2' queryid='q1' id='a1'>"
                       "<forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2024-01-01T10:00:00Z'/>"
                       "<message xmlns='jabber:client' from='bob@example.test' to='alice@example.test' type='chat'>"
                       "<body>old</body></message></forwarded></result></message>"),
    # XEP-0203, XEP-0172
    ("delay-nick", f"<message {A}><body>late</body><delay xmlns='urn:xmpp:delay' stamp='2024-01-01T10:00:00Z'/>"
                   "<nick xmlns='http://jabber.org/protocol/nick'>Ishmael</nick></message>"),
    # XEP-0432
    ("payload", f"<message {A}><payload xmlns='urn:xmpp:json-msg:0' datatype='urn:example:t'>"
                "{&quot;a&quot;:[1,2,{&quot;b&quot;:null}],&quot;c&quot;:&quot;d&quot;}</payload></message>"),
    # XEP-0004 in a message
    ("dataform-message", f"<message {A}><x xmlns='jabber:x:data' type='form'><title>Survey</title>"
                         "<instructions>Fill in</instructions>"
                         "<field var='FORM_TYPE' type='hidden'><value>urn:example:survey</value></field>"
                         "<field var='name' type='text-single' label='Name'><desc>Your name</desc><required/></field>"
                         "<field var='tags' type='list-multi' label='Tags'><value>a</value><value>b</value>"
                         "<option label='A'><value>a</value></option><option label='B'><value>b</value></option></field>"
                         "<field var='color' type='list-single'><value>red</value><option><value>red</value></option></field>"
                         "<field var='notes' type='text-multi'><value>line 1</value><value>line 2</value></field>"
                         "<field var='ok' type='boolean'><value>1</value></field>"
                         "<field var='who' type='jid-multi'><value>a@example.test</value></field>"
                         "<field type='fixed'><value>Just text</value></field></x></message>"),
    # errors
    ("message-error", f"<message {A} type='error'><body>lost</body><error type='cancel' by='example.test'>"
                      "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                      "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>nobody here</text></error></message>"),

    # presence (RFC 6121)
    ("presence-available", f"<presence {A}><show>away</show><status>out</status><priority>5</priority></presence>"),
    ("presence-negative-priority", f"<presence {A}><priority>-3</priority></presence>"),
    ("presence-unavailable", f"<presence {A} type='unavailable'><status>bye</status></presence>"),
    ("presence-subscribe", f"<presence {A} type='subscribe'/>"),
    # XEP-0115
    ("caps", f"<presence {A}><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://example.test' "
             "ver='QgayPKawpkPSDYmwT/WM94uAlu0=' ext='a b'/></presence>"),
    # XEP-0319
    ("idle-since", f"<presence {A}><show>xa</show><idle xmlns='urn:xmpp:idle:1' since='2024-01-01T10:00:00Z'/></presence>"),
    # XEP-0153
    ("vcard-update", f"<presence {A}><x xmlns='vcard-temp:x:update'><photo>01b87fcd030b72895ff8e88db57ec525450f000d</photo></x></presence>"),
    ("vcard-update-empty", f"<presence {A}><x xmlns='vcard-temp:x:update'><photo/></x></presence>"),
    # XEP-0045
    ("muc-join", f"<presence to='room@muc.example.test/me' id='c1'><x xmlns='http://jabber.org/protocol/muc'/></presence>"),
    ("muc-history", f"<presence to='room@muc.example.test/me' id='c1'><x xmlns='http://jabber.org/protocol/muc'>"
                    "<history maxchars='65000' maxstanzas='20' seconds='180' since='2024-01-01T10:00:00Z'/></x></presence>"),
    ("presence-error", f"<presence {A} type='error'><error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                       "</error></presence>"),
    ("presence-nick", f"<presence {A} type='subscribe'><nick xmlns='http://jabber.org/protocol/nick'>Al</nick></presence>"),

    # iq (requests, results, errors)
    ("ping", f"<iq {A} type='get'><ping xmlns='urn:xmpp:ping'/></iq>"),
    ("iq-result-empty", f"<iq {A} type='result'/>"),
    ("version-get", f"<iq {A} type='get'><query xmlns='jabber:iq:version'/></iq>"),
    ("version-result", f"<iq {A} type='result'><query xmlns='jabber:iq:version'><name>stanzad</name>"
                       "<version>1.0</version><os>Linux</os></query></iq>"),
    ("disco-get", f"<iq {A} type='get'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
    ("disco-node", f"<iq {A} type='get'><query xmlns='http://jabber.org/protocol/disco#info' node='n1'/></iq>"),
    ("disco-result", f"<iq {A} type='result'><query xmlns='http://jabber.org/protocol/disco#info' node='n1'>"
                     "<identity category='component' type='generic' name='Bot'/>"
                     "<feature var='urn:xmpp:ping'/><feature var='jabber:iq:version'/>"
                     "<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'>"
                     "<value>urn:xmpp:dataforms:softwareinfo</value></field>"
                     "<field var='software'><value>stanzad</value></field></x></query></iq>"),
    ("items-get", f"<iq {A} type='get'><query xmlns='http://jabber.org/protocol/disco#items' node='n1'/></iq>"),
    ("items-result", f"<iq {A} type='result'><query xmlns='http://jabber.org/protocol/disco#items'>"
                     "<item jid='bot.example.test' node='a' name='A'/><item jid='other.example.test'/></query></iq>"),
    # XEP-0050
    ("command-execute", f"<iq {A} type='set'><command xmlns='http://jabber.org/protocol/commands' node='remind' "
                        "action='execute'/></iq>"),
    ("command-form", f"<iq {A} type='result'><command xmlns='http://jabber.org/protocol/commands' node='remind' "
                     "sessionid='s1' status='executing'><actions execute='next'><next/><complete/></actions>"
                     "<x xmlns='jabber:x:data' type='form'><title>Remind</title>"
                     "<field var='what' type='text-single' label='What'><required/></field></x></command></iq>"),
    ("command-completed", f"<iq {A} type='result'><command xmlns='http://jabber.org/protocol/commands' node='remind' "
                          "sessionid='s1' status='completed'><note type='info'>Done</note></command></iq>"),
    ("command-submit", f"<iq {A} type='set'><command xmlns='http://jabber.org/protocol/commands' node='remind' "
                       "sessionid='s1'><x xmlns='jabber:x:data' type='submit'><field var='what'><value>tea</value>"
                       "</field></x></command></iq>"),
    ("command-cancel", f"<iq {A} type='set'><command xmlns='http://jabber.org/protocol/commands' node='remind' "
                       "sessionid='s1' action='cancel'/></iq>"),
    # XEP-0313 + XEP-0059
    ("archive-query", f"<iq {A} type='set'><query xmlns='urn:xmpp:mam:2' queryid='q1'><x xmlns='jabber:x:data' type='submit'>"
                      "<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>"
                      "<field var='with'><value>bob@example.test</value></field></x>"
                      "<set xmlns='http://jabber.org/protocol/rsm'><max>10</max><after>a0</after></set></query></iq>"),
    ("archive-fin", f"<iq {A} type='result'><fin xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'>"
                    "<first>a1</first><last>a9</last><count>9</count></set></fin></iq>"),
    ("rsm-iq", f"<iq {A} type='get'><ping xmlns='urn:xmpp:ping'/><set xmlns='http://jabber.org/protocol/rsm'>"
               "<before/><index>0</index></set></iq>"),
    # XEP-0215
    ("extdisco-get", f"<iq {A} type='get'><services xmlns='urn:xmpp:extdisco:2' type='turn'/></iq>"),
    ("extdisco-result", f"<iq {A} type='result'><services xmlns='urn:xmpp:extdisco:2'>"
                        "<service type='stun' host='stun.example.test' port='3478' transport='udp'/>"
                        "<service type='turn' host='turn.example.test' port='3478' transport='udp' username='u' "
                        "password='p' expires='2024-01-01T10:00:00Z' restricted='1' name='TURN'/></services></iq>"),
    # XEP-0100
    ("gateway", f"<iq {A} type='result'><query xmlns='jabber:iq:gateway'><desc>Enter the number</desc>"
                "<prompt>Number</prompt><jid>123@gw.example.test</jid></query></iq>"),
    # XEP-0012
    ("lastactivity-get", f"<iq {A} type='get'><query xmlns='jabber:iq:last'/></iq>"),
    ("lastactivity-result", f"<iq {A} type='result'><query xmlns='jabber:iq:last' seconds='903'>Heading home</query></iq>"),
    # XEP-0066 iq
    ("iq-oob", f"<iq {A} type='set'><query xmlns='jabber:iq:oob'><url>https://example.test/f.txt</url>"
               "<desc>A file</desc></query></iq>"),
    # XEP-0077
    ("register-get", f"<iq {A} type='get'><query xmlns='jabber:iq:register'/></iq>"),
    ("register-result", f"<iq {A} type='result'><query xmlns='jabber:iq:register'><instructions>Choose</instructions>"
                        "<registered/><username>al</username><password/><email/></query></iq>"),
    ("register-set", f"<iq {A} type='set'><query xmlns='jabber:iq:register'><username>al</username>"
                     "<password>pw</password><email>al@example.test</email><nick>Al</nick></query></iq>"),
    ("register-remove", f"<iq {A} type='set'><query xmlns='jabber:iq:register'><remove/></query></iq>"),
    # XEP-0039
    ("stats-get", f"<iq {A} type='get'><query xmlns='http://jabber.org/protocol/stats'/></iq>"),
    ("stats-result", f"<iq {A} type='result'><query xmlns='http://jabber.org/protocol/stats'>"
                     "<stat name='users/online' unit='users' value='12'/><stat name='load' value='0.5'/></query></iq>"),
    # XEP-0363
    ("upload-request", f"<iq {A} type='get'><request xmlns='urn:xmpp:http:upload:0' filename='a.png' size='2048' "
                       "content-type='image/png'/></iq>"),
    ("upload-slot", f"<iq {A} type='result'><slot xmlns='urn:xmpp:http:upload:0'>"
                    "<put url='https://up.example.test/a.png'><header name='Authorization'>Basic Zm9v</header>"
                    "<header name='Expires'>Tue, 01 Jan 2030 00:00:00 GMT</header></put>"
                    "<get url='https://dl.example.test/a.png'/></slot></iq>"),
    # XEP-0191 (+ XEP-0377): newer mod_rest keys
    ("block", f"<iq {A} type='set'><block xmlns='urn:xmpp:blocking'><item jid='spam@example.test'>"
              "<report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'/></item></block></iq>"),
    ("blocklist", f"<iq {A} type='result'><blocklist xmlns='urn:xmpp:blocking'><item jid='a@example.test'/>"
                  "<item jid='b@example.test'/></blocklist></iq>"),
    # iq errors
    ("iq-error", f"<iq {A} type='error'><ping xmlns='urn:xmpp:ping'/><error type='cancel'>"
                 "<feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                 "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no ping here</text></error></iq>"),
    ("iq-error-no-condition", f"<iq {A} type='error'><error type='wait'/></iq>"),
]

T = {"to": "alice@example.test/phone", "id": "c1"}

JSON_CASES: list[tuple[str, dict]] = [
    ("json-message", {**T, "kind": "message", "type": "chat", "body": "hi", "lang": "en", "thread": {"id": "t1"}}),
    ("json-kind-from-type", {**T, "type": "headline", "body": "news"}),
    ("json-kind-from-keys-iq", {**T, "ping": True}),
    ("json-kind-from-keys-presence", {**T, "show": "dnd", "status": "busy"}),
    ("json-kind-default-message", {**T, "nick": "x"}),
    ("json-presence-available", {**T, "kind": "presence", "type": "available", "priority": 1}),
    ("json-join", {"to": "room@muc.example.test/me", "id": "c1", "kind": "presence", "join": True}),
    ("json-muc", {"to": "room@muc.example.test/me", "id": "c1", "muc": {"history": {"maxstanzas": 0}}, "kind": "presence"}),
    ("json-oob-url", {**T, "kind": "message", "body": "f", "oob_url": "https://example.test/f"}),
    ("json-html", {**T, "kind": "message", "body": "b", "html": "<body><p>b <strong>x</strong></p></body>"}),
    ("json-formdata", {**T, "kind": "message", "formdata": {"FORM_TYPE": "urn:example:f", "a": "1", "b": ["x", "y"]}}),
    ("json-dataform", {**T, "kind": "message", "dataform": {
        "type": "form", "title": "T", "fields": [
            {"var": "c", "type": "list-single", "label": "C", "value": "r",
             "options": [{"label": "Red", "value": "r"}, {"label": "Blue", "value": "b"}]},
            {"var": "n", "type": "text-single", "required": True, "desc": "d"}]}}),
    ("json-command-node", {**T, "command": "uptime"}),
    ("json-command-data", {**T, "kind": "iq", "command": {"node": "remind", "sessionid": "s1", "data": {"what": "tea"}}}),
    ("json-command-result", {**T, "kind": "iq", "type": "result", "command": {
        "node": "remind", "sessionid": "s1", "status": "executing", "actions": {"execute": "complete", "complete": True,
                                                                                 "prev": True},
        "form": {"type": "form", "fields": [{"var": "when", "type": "text-single"}]}}}),
    ("json-command-note", {**T, "kind": "iq", "type": "result", "command": {
        "node": "remind", "status": "completed", "note": {"type": "warn", "text": "careful"}}}),
    ("json-archive-shortcuts", {**T, "archive": {"with": "bob@example.test", "start": "2024-01-01T00:00:00Z", "max": 5,
                                                  "after": "a1"}}),
    ("json-archive-ids", {**T, "archive": {"ids": "a,b", "queryid": "q"}}),
    ("json-archive-form", {**T, "kind": "iq", "type": "set", "archive": {"queryid": "q", "form": {
        "type": "submit", "fields": [{"var": "FORM_TYPE", "type": "hidden", "values": ["urn:xmpp:mam:2"]}]},
        "page": {"max": 3}}}),
    ("json-disco", {**T, "disco": True}),
    ("json-disco-node", {**T, "disco": "n1"}),
    ("json-disco-object", {**T, "kind": "iq", "type": "result", "disco": {
        "identities": [{"category": "client", "type": "bot", "name": "B"}], "features": ["urn:xmpp:ping"]}}),
    ("json-items", {**T, "kind": "iq", "type": "result", "items": [{"jid": "a.example.test", "name": "A"}, "b.example.test"]}),
    ("json-version", {**T, "kind": "iq", "type": "result", "version": {"name": "n", "version": "1", "os": "o"}}),
    ("json-reactions", {**T, "kind": "message", "reactions": {"id": "m0", "reactions": ["❤️"]}}),
    ("json-stanza-ids", {**T, "kind": "message", "stanza_ids": [{"id": "s1", "by": "example.test"}]}),
    ("json-markers", {**T, "kind": "message", "markable": True, "fallback": True, "displayed": "m0"}),
    ("json-invite", {**T, "kind": "message", "invite": {"jid": "room@muc.example.test", "continue": False}}),
    ("json-forwarded", {**T, "kind": "message", "forwarded": {
        "delay": "2024-01-01T10:00:00Z", "message": {"body": "inner", "type": "chat", "from": "bob@example.test"}}}),
    ("json-stats", {**T, "kind": "iq", "type": "result", "stats": [{"name": "a", "unit": "u", "value": 2}]}),
    ("json-upload-request", {**T, "kind": "iq", "upload_request": {"filename": "f.txt", "size": 10, "content-type": "text/plain"}}),
    ("json-upload-slot", {**T, "kind": "iq", "type": "result", "upload_slot": {
        "put": {"url": "https://u.example.test/p", "headers": [{"name": "Cookie", "value": "c=1"}]},
        "get": {"url": "https://u.example.test/g"}}}),
    ("json-extdisco", {**T, "kind": "iq", "extdisco": {"type": "stun"}}),
    ("json-lastactivity", {**T, "kind": "iq", "type": "result", "lastactivity": {"seconds": 10, "status": "away"}}),
    ("json-register", {**T, "kind": "iq", "type": "set", "register": {"username": "u", "password": "p", "remove": False}}),
    ("json-gateway", {**T, "kind": "iq", "type": "set", "gateway": {"prompt": "123"}}),
    ("json-iq-oob", {**T, "kind": "iq", "type": "set", "oob": {"url": "https://example.test/f"}}),
    ("json-caps-idle-vcard", {**T, "kind": "presence", "caps": {"hash": "sha-1", "node": "n", "ver": "v"},
                              "idle_since": "2024-01-01T10:00:00Z", "vcard_update": {"photo": "abc"}}),
    ("json-payload", {**T, "kind": "message", "payload": {"datatype": "urn:example:t", "data": {"k": [1, "v"]}}}),
    ("json-rsm", {**T, "kind": "iq", "ping": True, "rsm": {"max": 10, "before": ""}}),
    ("json-error", {**T, "kind": "iq", "type": "error", "ping": True,
                    "error": {"type": "cancel", "condition": "item-not-found", "text": "gone"}}),
    ("json-error-message", {**T, "kind": "message", "type": "error", "body": "x",
                            "error": {"type": "modify", "condition": "bad-request", "by": "example.test"}}),
    ("json-block", {**T, "kind": "iq", "type": "set", "block": [{"jid": "spam@example.test"}]}),
    ("json-kind-from-type-probe", {**T, "type": "probe"}),
    ("json-kind-from-type-error", {**T, "type": "error", "error": {"type": "cancel", "condition": "gone"}}),
    ("json-legacy-error-code", {**T, "kind": "message", "type": "error", "body": "Not found", "error_code": 404}),
    ("json-blocklist", {**T, "kind": "iq", "type": "get", "blocklist": {}}),
]
