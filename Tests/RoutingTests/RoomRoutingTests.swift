import Testing
import XMPPCore

@testable import Routing

private func stanza(_ xml: String) throws -> Stanza {
    try #require(Stanza(try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)[0]))
}

private let room = "ops@conference.example.org"
private let groupchat = "<message type='groupchat' id='g1' from='ops@conference.example.org/alice' to='bot.example.org'><body>bot: status?</body></message>"
private let chatter = "<message type='groupchat' id='g2' from='ops@conference.example.org/alice' to='bot.example.org'><body>lunch anyone?</body></message>"
private let privateMessage = "<message type='chat' id='p1' from='ops@conference.example.org/alice' to='bot.example.org'><body>psst</body></message>"
private let inRoom = RoomOrigin(room: room, nick: "alice", ownNick: "bot", isGroupchat: true)
private let privately = RoomOrigin(room: room, nick: "alice", ownNick: "bot", isGroupchat: false)

/// SPEC §14 routing: `rooms` and `mentions` on routes, the room variables, and replies into rooms.
@Suite struct RoomRoutingTests {
    @Test func groupChatMatchesOnlyRoutesThatNameItsRoom() throws {
        let message = try stanza(groupchat)
        #expect(!RouteRule().matches(message, room: inRoom), "a route without rooms never takes group chat")
        #expect(RouteRule(rooms: [JIDPattern("*")]).matches(message, room: inRoom))
        #expect(RouteRule(rooms: [JIDPattern("ops@conference.example.org")]).matches(message, room: inRoom))
        #expect(RouteRule(rooms: [JIDPattern("*@conference.example.org")]).matches(message, room: inRoom))
        #expect(!RouteRule(rooms: [JIDPattern("dev@conference.example.org")]).matches(message, room: inRoom))
        #expect(!RouteRule(rooms: [JIDPattern("*")]).matches(try stanza(chat), room: nil), "a rooms route takes only room messages")
    }

    @Test func mentionsPassOnlyMessagesNamingOurNick() throws {
        let rule = RouteRule(rooms: [JIDPattern("*")], mentions: true)
        #expect(rule.matches(try stanza(groupchat), room: inRoom))
        #expect(!rule.matches(try stanza(chatter), room: inRoom))
        #expect(rule.matches(try stanza(privateMessage), room: privately), "a private message is always for us")
    }

    @Test(arguments: [
        ("bot: hi", true), ("Bot, hi", true), ("BOT:hi", true), ("hey bot", true), ("hey bot!", true), ("ask (bot) now", true),
        ("robot", false), ("bots", false), ("bot_: hi", false), ("abot", false), ("", false),
    ])
    func mentions(body: String, mentioned: Bool) {
        #expect(Mention.contains(body, nick: "bot") == mentioned)
    }

    @Test func mentionsOfNicksWithSpacesAndUnderscores() {
        #expect(Mention.contains("Test Bot: deploy", nick: "test bot"))
        #expect(Mention.contains("bot_: hello", nick: "bot_"))
        #expect(!Mention.contains("bot: hello", nick: "bot_"))
    }

    @Test func privateMessagesFromOccupantsAlsoMatchOrdinaryChatRoutes() throws {
        #expect(RouteRule(types: ["chat"]).matches(try stanza(privateMessage), room: privately))
    }

    @Test func handlersGetTheRoomAndTheNick() throws {
        let message = try stanza(groupchat)
        let env = HandlerInput.environment(for: message, route: "r", component: "bot.example.org", env: [:], passEnv: [], parent: [:], room: inRoom)
        #expect(env["STANZA_ROOM"] == room)
        #expect(env["STANZA_NICK"] == "alice")
        let plain = HandlerInput.environment(for: try stanza(chat), route: "r", component: "bot.example.org", env: [:], passEnv: [], parent: [:])
        #expect(plain["STANZA_ROOM"] == nil && plain["STANZA_NICK"] == nil)
        let json = try JSONValue.parse(try HandlerInput.stdin(for: message, format: .json, room: inRoom))
        #expect(json["room"]?.stringValue == room)
        #expect(json["room_nick"]?.stringValue == "alice")
        #expect(json["type"]?.stringValue == "groupchat")
    }

    @Test func aGroupChatReplyGoesToTheRoomFromOurOccupant() throws {
        let stamper = ReplyStamper(domain: "bot.example.org")
        let (replies, refusal) = stamper.stamp(HandlerOutcome(replies: [Stanza(kind: .message)]), replyingTo: try stanza(groupchat), fromRoom: true)
        #expect(refusal == nil)
        let reply = try #require(replies.first)
        #expect(reply.to == room)
        #expect(reply.from == "bot.example.org")
        #expect(reply.type == "groupchat")
    }

    @Test func aPrivateReplyGoesBackToTheOccupant() throws {
        let stamper = ReplyStamper(domain: "bot.example.org")
        let (replies, _) = stamper.stamp(HandlerOutcome(replies: [Stanza(kind: .message)]), replyingTo: try stanza(privateMessage), fromRoom: true)
        #expect(replies.first?.to == "ops@conference.example.org/alice")
        #expect(replies.first?.type == "chat")
    }

    @Test func noErrorEverGoesToARoomOrAnOccupant() throws {
        let stamper = ReplyStamper(domain: "bot.example.org")
        for (xml, fromRoom) in [(groupchat, false), (groupchat, true), (privateMessage, true)] {
            let incoming = try stanza(xml)
            #expect(stamper.stamp(.failed(.cancel, .internalServerError), replyingTo: incoming, fromRoom: fromRoom).stanzas.isEmpty)
            #expect(stamper.errorReply(to: incoming, StanzaError(.wait, .resourceConstraint), fromRoom: fromRoom).isEmpty)
            let handlerError = incoming.errorReply(StanzaError(.modify, .badRequest))
            #expect(stamper.stamp(HandlerOutcome(replies: [handlerError]), replyingTo: incoming, fromRoom: fromRoom).stanzas.isEmpty)
        }
        // Outside rooms, errors still go out.
        #expect(stamper.errorReply(to: try stanza(chat), StanzaError(.wait, .resourceConstraint)).count == 1)
    }

    @Test func builtInsNeverAnswerRoomMessages() throws {
        let dispatcher = Dispatcher(routes: [], builtIns: BuiltInResponder(domain: "bot.example.org", softwareVersion: "1"), logger: .init(label: "test"))
        #expect(dispatcher.answerBuiltIn(try stanza(privateMessage), room: privately).isEmpty)
        #expect(dispatcher.answerBuiltIn(try stanza(privateMessage)).count == 1, "the same chat from a non-room gets service-unavailable")
    }
}

private let chat = "<message type='chat' id='m1' from='alice@example.org/phone' to='echo@bot.example.org'><body>hi</body></message>"
