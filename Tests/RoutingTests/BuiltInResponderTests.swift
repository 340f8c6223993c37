import Foundation
import Testing
import XMPPCore

@testable import Routing

private func stanza(_ xml: String) throws -> Stanza {
    try #require(Stanza(try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)[0]))
}

@Suite struct BuiltInResponderTests {
    let responder = BuiltInResponder(
        domain: "bot.example.org", discoName: "My Bot", routedFeatures: ["urn:example:weather"],
        items: ["echo@bot.example.org"], softwareVersion: "1.2.3")

    @Test func discoInfoOnTheDomain() throws {
        let replies = responder.respond(to: try stanza("<iq type='get' id='d1' from='alice@example.org/r' to='bot.example.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"))
        #expect(replies.count == 1)
        let xml = try replies[0].serialized()
        #expect(xml.hasPrefix("<iq from=\"bot.example.org\" to=\"alice@example.org/r\" id=\"d1\" type=\"result\"><query xmlns=\"http://jabber.org/protocol/disco#info\"><identity category=\"component\" type=\"generic\" name=\"My Bot\"/>"))
        for feature in ["disco#info", "disco#items", "urn:xmpp:ping", "jabber:iq:version", "urn:xmpp:time", "urn:example:weather"] {
            #expect(xml.contains(feature), "\(feature)")
        }
    }

    @Test func discoInfoOnANodeJIDIsABot() throws {
        let replies = responder.respond(to: try stanza("<iq type='get' id='d2' from='a@example.org/r' to='echo@bot.example.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"))
        #expect(try replies[0].serialized().contains("<identity category=\"client\" type=\"bot\" name=\"My Bot\"/>"))
    }

    @Test func discoItemsListsRouteJIDs() throws {
        let domain = responder.respond(to: try stanza("<iq type='get' id='i1' from='a@example.org/r' to='bot.example.org'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"))
        #expect(try domain[0].serialized().contains("<item jid=\"echo@bot.example.org\"/>"))
        let node = responder.respond(to: try stanza("<iq type='get' id='i2' from='a@example.org/r' to='echo@bot.example.org'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"))
        #expect(try node[0].serialized() == "<iq from=\"echo@bot.example.org\" to=\"a@example.org/r\" id=\"i2\" type=\"result\"><query xmlns=\"http://jabber.org/protocol/disco#items\"/></iq>")
    }

    @Test func pingVersionTime() throws {
        let ping = responder.respond(to: try stanza("<iq type='get' id='p' from='a@example.org/r' to='bot.example.org'><ping xmlns='urn:xmpp:ping'/></iq>"))
        #expect(try ping[0].serialized() == "<iq from=\"bot.example.org\" to=\"a@example.org/r\" id=\"p\" type=\"result\"/>")
        let version = responder.respond(to: try stanza("<iq type='get' id='v' from='a@example.org/r' to='bot.example.org'><query xmlns='jabber:iq:version'/></iq>"))
        #expect(try version[0].serialized().contains("<name>stanzad</name><version>1.2.3</version>"))
        let time = responder.respond(
            to: try stanza("<iq type='get' id='t' from='a@example.org/r' to='bot.example.org'><time xmlns='urn:xmpp:time'/></iq>"),
            now: Date(timeIntervalSince1970: 1_795_000_000))
        #expect(try time[0].serialized().contains("<tzo>+00:00</tzo><utc>2026-11-18T"))
    }

    @Test func unknownIqGetsServiceUnavailable() throws {
        for xml in [
            "<iq type='get' id='u' from='a@example.org/r' to='bot.example.org'><query xmlns='urn:unknown'/></iq>",
            "<iq type='set' id='u' from='a@example.org/r' to='bot.example.org'><ping xmlns='urn:xmpp:ping'/></iq>",
        ] {
            let replies = responder.respond(to: try stanza(xml))
            #expect(replies.count == 1)
            #expect(replies[0].error?.condition == .serviceUnavailable)
            #expect(replies[0].error?.type == .cancel)
            #expect(replies[0].id == "u")
        }
    }

    @Test func neverRepliesToErrorsOrResults() throws {
        #expect(responder.respond(to: try stanza("<iq type='result' id='r' from='a@example.org' to='bot.example.org'/>")).isEmpty)
        #expect(responder.respond(to: try stanza("<iq type='error' id='r' from='a@example.org' to='bot.example.org'/>")).isEmpty)
        #expect(responder.respond(to: try stanza("<message type='error' from='a@example.org' to='bot.example.org'/>")).isEmpty)
    }

    @Test func presenceSubscriptions() throws {
        let subscribe = responder.respond(to: try stanza("<presence type='subscribe' from='alice@example.org' to='echo@bot.example.org/x'/>"))
        #expect(subscribe.map(\.type) == ["subscribed", nil])
        #expect(subscribe.allSatisfy { $0.from == "echo@bot.example.org" && $0.to == "alice@example.org" })
        #expect(responder.respond(to: try stanza("<presence type='probe' from='alice@example.org' to='bot.example.org'/>")).map(\.type) == [nil])
        #expect(responder.respond(to: try stanza("<presence type='unsubscribe' from='alice@example.org' to='bot.example.org'/>")).map(\.type) == ["unsubscribed"])
        #expect(responder.respond(to: try stanza("<presence from='alice@example.org/r' to='bot.example.org'/>")).isEmpty)
        var off = responder
        off.presenceAuto = false
        #expect(off.respond(to: try stanza("<presence type='subscribe' from='alice@example.org' to='bot.example.org'/>")).isEmpty)
    }

    @Test func unhandledChatGetsServiceUnavailableOthersDropped() throws {
        let chat = responder.respond(to: try stanza("<message type='chat' id='m' from='a@example.org/r' to='bot.example.org'><body>hi</body></message>"))
        #expect(chat.first?.error?.condition == .serviceUnavailable)
        #expect(responder.respond(to: try stanza("<message from='a@example.org/r' to='bot.example.org'><body>hi</body></message>")).count == 1)
        #expect(responder.respond(to: try stanza("<message type='headline' from='a@example.org/r' to='bot.example.org'><body>hi</body></message>")).isEmpty)
        #expect(responder.respond(to: try stanza("<message type='groupchat' from='a@example.org/r' to='bot.example.org'><body>hi</body></message>")).isEmpty)
    }

    @Test func otherDomainsAreIgnored() throws {
        #expect(responder.respond(to: try stanza("<iq type='get' id='x' from='a@example.org' to='other.example.org'><ping xmlns='urn:xmpp:ping'/></iq>")).isEmpty)
    }
}
