// The XEP-0045 stanzas stanzad sends (join, nick change, leave, XEP-0410 self-ping) and reads (occupant
// presence with its status codes, history, subjects, invites). Pure: elements in, values out.

import XMPPCore

package enum MUCNamespace {
    package static let muc = "http://jabber.org/protocol/muc"
    package static let user = "http://jabber.org/protocol/muc#user"
    package static let delay = "urn:xmpp:delay"
    package static let conference = "jabber:x:conference"
    package static let ping = "urn:xmpp:ping"
}

/// An occupant's presence as the room sent it.
package struct OccupantPresence: Sendable, Hashable {
    package var nick: String
    package var unavailable: Bool
    /// Status codes of the muc#user `<x>` (110: this is our own presence).
    package var codes: [Int]
    /// With 303: the occupant's new nick.
    package var newNick: String?
    package var destroyed: Bool
    package var reason: String?
    /// type="error": the condition.
    package var errorCondition: String?

    package var isSelf: Bool { codes.contains(110) }

    /// Reads a presence from `room/nick`; nil for a presence without a nick (from the bare room).
    package init?(_ stanza: Stanza) {
        guard stanza.kind == .presence, let from = JID.parse(stanza.from), let nick = from.resource else { return nil }
        self.nick = nick
        unavailable = stanza.type == "unavailable"
        errorCondition = stanza.type == "error" ? (stanza.error?.condition.rawValue ?? "undefined-condition") : nil
        codes = []
        destroyed = false
        if let x = stanza.element.child("x", namespace: MUCNamespace.user) {
            for status in x.elements where status.name == "status" {
                if let code = status[attribute: "code"].flatMap({ Int($0) }) { codes.append(code) }
            }
            if let item = x.child("item", namespace: MUCNamespace.user) {
                newNick = item[attribute: "nick"]
                reason = item.child("reason", namespace: MUCNamespace.user)?.text
            }
            if let destroy = x.child("destroy", namespace: MUCNamespace.user) {
                destroyed = true
                reason = destroy.child("reason", namespace: MUCNamespace.user)?.text ?? reason
            }
        }
    }
}

package enum MUCStanza {
    /// The join presence: `<x xmlns=muc>` with the password and `<history maxstanzas>`.
    package static func join(room: String, nick: String, from: String, password: String?, history: Int) -> Stanza {
        var presence = Stanza(kind: .presence, id: RandomID.make(), from: from, to: "\(room)/\(nick)")
        var x = Element("x", namespace: MUCNamespace.muc)
        var historyElement = Element("history", namespace: MUCNamespace.muc)
        historyElement[attribute: "maxstanzas"] = "\(history)"
        x.append(historyElement)
        if let password { x.append(Element("password", namespace: MUCNamespace.muc, text: password)) }
        presence.element.append(x)
        return presence
    }

    /// Available presence to a new nick (XEP-0045 §7.6), or unavailable to leave.
    package static func presence(room: String, nick: String, from: String, unavailable: Bool = false) -> Stanza {
        Stanza(kind: .presence, type: unavailable ? "unavailable" : nil, id: RandomID.make(), from: from, to: "\(room)/\(nick)")
    }

    /// XEP-0410: a ping to our own occupant JID.
    package static func selfPing(room: String, nick: String, from: String) -> Stanza {
        var iq = Stanza(kind: .iq, type: "get", id: RandomID.make(), from: from, to: "\(room)/\(nick)")
        iq.element.append(Element("ping", namespace: MUCNamespace.ping))
        return iq
    }

    /// History sent on join carries `<delay>` (XEP-0203) stamped by the room (or without `from`, as some servers send it).
    package static func isHistory(_ message: Stanza, room: String) -> Bool {
        message.element.elements.contains { element in
            guard element.name == "delay", element.namespace == MUCNamespace.delay else { return false }
            guard let from = element[attribute: "from"], let jid = JID.parse(from) else { return true }
            return jid.description.lowercased() == room
        }
    }

    /// A subject change: a `<subject>` and no body.
    package static func isSubjectChange(_ message: Stanza) -> Bool {
        message.element.child("subject", namespace: message.element.namespace) != nil && message.body == nil
    }

    /// An invitation: XEP-0249 direct (`<x xmlns=jabber:x:conference jid>`) or XEP-0045 mediated (from the room,
    /// `<x xmlns=muc#user><invite from>`). Returns the room, the inviter and the password, if any.
    package static func invite(_ message: Stanza) -> (room: String, inviter: String, password: String?)? {
        guard message.kind == .message, message.type != "error", message.type != "groupchat",
              let from = JID.parse(message.from) else { return nil }
        // Mediated first: a room may add a XEP-0249 element to the invite it forwards (Prosody does), from itself.
        // Prosody 0.12 also keeps the inviter's own `<x>` (invite `to`, no `from`) before the one it adds.
        for x in message.element.elements where x.name == "x" && x.namespace == MUCNamespace.user && from.localpart != nil {
            guard let invite = x.child("invite", namespace: MUCNamespace.user),
                  let inviter = JID.parse(invite[attribute: "from"]) else { continue }
            return (from.bare.description, inviter.bare.description, x.child("password", namespace: MUCNamespace.user)?.text)
        }
        if let x = message.element.child("x", namespace: MUCNamespace.conference),
           let room = JID.parse(x[attribute: "jid"]), room.localpart != nil {
            return (room.bare.description, from.bare.description, x[attribute: "password"])
        }
        return nil
    }
}
