// What routing needs to know about group chats (SPEC §14): which room a message came from and who sent it.
// The room keeper (target Rooms) decides; the router asks it before a stanza reaches the routes.

import XMPPCore

/// The room a routed message came from.
package struct RoomOrigin: Sendable, Hashable {
    /// The room's bare JID.
    package var room: String
    /// The sender's nick.
    package var nick: String
    /// Our own nick in the room (what a mention names).
    package var ownNick: String
    /// True for a groupchat message, false for a private message from an occupant (type chat from room/nick).
    package var isGroupchat: Bool

    package init(room: String, nick: String, ownNick: String, isGroupchat: Bool) {
        self.room = room
        self.nick = nick
        self.ownNick = ownNick
        self.isGroupchat = isGroupchat
    }
}

/// What the room keeper says about an inbound stanza.
package enum RoomVerdict: Sendable, Hashable {
    /// Nothing to do with rooms: route it as usual.
    case notFromRoom
    /// Taken (our room presence, an invite) or dropped (our reflection, history, a subject, a room we are not in).
    case taken
    /// A message from an occupant of a joined room: route it with this origin, and never answer it with an error.
    case route(RoomOrigin)
}

/// Looks at each inbound stanza before the routes do.
package protocol RoomFilter: Sendable {
    func classify(_ stanza: Stanza) -> RoomVerdict
}

package enum Mention {
    /// Whether `body` mentions `nick` (SPEC §14): it starts with `nick:` or `nick,`, or has the nick as a whole
    /// word, case-insensitively.
    package static func contains(_ body: String, nick: String) -> Bool {
        guard !nick.isEmpty else { return false }
        let text = Array(body.lowercased().unicodeScalars)
        let name = Array(nick.lowercased().unicodeScalars)
        guard text.count >= name.count else { return false }
        func isWordScalar(_ s: Unicode.Scalar) -> Bool {
            s.properties.isAlphabetic || s.properties.numericType != nil || s == "_" || s == "-"
        }
        var start = 0
        while start + name.count <= text.count {
            if Array(text[start..<start + name.count]) == name {
                let before = start == 0 || !isWordScalar(text[start - 1])
                let end = start + name.count
                let after = end == text.count || !isWordScalar(text[end])
                if before && after { return true }
            }
            start += 1
        }
        return false
    }
}
