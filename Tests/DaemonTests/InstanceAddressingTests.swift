import Testing
import XMPPCore

@testable import Daemon

/// How iq requests move to the instance domain and their replies back (SPEC §20).
@Suite struct InstanceAddressingTests {
    let addressing = InstanceAddressing(domain: "bot.example.org", instance: "i1.bot.example.org")

    @Test func theSenderMovesToTheInstanceDomainKeepingNodeAndResource() {
        #expect(addressing.outbound(from: nil) == "i1.bot.example.org")
        #expect(addressing.outbound(from: "bot.example.org") == "i1.bot.example.org")
        #expect(addressing.outbound(from: "news@bot.example.org") == "news@i1.bot.example.org")
        #expect(addressing.outbound(from: "news@bot.example.org/feed") == "news@i1.bot.example.org/feed")
        #expect(addressing.outbound(from: "alice@example.org") == "i1.bot.example.org", "never outside the component domain")
        #expect(addressing.outbound(from: "not a jid@") == "i1.bot.example.org")
    }

    @Test func aReplyIsAddressedAsTheRequestWas() {
        let reply = Stanza(kind: .iq, type: "result", id: "p1", from: "example.org", to: "news@i1.bot.example.org/feed")
        let back = addressing.inbound(reply, original: "news@bot.example.org/feed")
        #expect(back.to == "news@bot.example.org/feed")
        #expect(back.from == "example.org")
        #expect(back.id == "p1")
        #expect(addressing.inbound(reply, original: nil).to == "bot.example.org")
    }
}
