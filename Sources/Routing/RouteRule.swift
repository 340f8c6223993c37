// The match part of a `[[route]]` (SPEC §4): kinds, types, to/from bare-JID globs, a body regex.

import XMPPCore

package struct RouteRule: Sendable {
    package var kinds: Set<StanzaKind>
    /// nil: any type. "available" stands for a presence without a type; "normal" for a message without one.
    package var types: Set<String>?
    package var to: [JIDPattern]?
    package var from: [JIDPattern]?
    package var body: BodyPattern?
    /// A `text` route takes only messages with a body (SPEC §5.1).
    package var requiresBody: Bool
    /// The component's domain when the loop guard is on: messages and presences from an address of the component
    /// itself are not taken (two of its addresses answering each other would loop forever). nil: the route opts in
    /// (`from_self = true`). iq get/set cannot loop (their answers are results, never answered) and always match.
    package var refusesFromDomain: String?
    /// Rooms (bare-JID globs, `*` for all) whose messages this route takes (SPEC §14). Group chat messages match
    /// only routes that name their room; a route with `rooms` takes only messages from those rooms.
    package var rooms: [JIDPattern]?
    /// Only group chat messages that mention our nick.
    package var mentions: Bool
    /// A `[[command]]` (SPEC §15): only iq sets whose `<command/>` names this node.
    package var commandNode: String?

    package init(kinds: Set<StanzaKind> = [.message], types: Set<String>? = nil, to: [JIDPattern]? = nil,
                from: [JIDPattern]? = nil, body: BodyPattern? = nil, requiresBody: Bool = false,
                refusesFromDomain: String? = nil, rooms: [JIDPattern]? = nil, mentions: Bool = false,
                commandNode: String? = nil) {
        self.commandNode = commandNode
        self.rooms = rooms
        self.mentions = mentions
        self.kinds = kinds
        self.types = types
        self.to = to
        self.from = from
        self.body = body
        self.requiresBody = requiresBody
        self.refusesFromDomain = refusesFromDomain?.lowercased()
    }

    package func matches(_ stanza: Stanza, room: RoomOrigin? = nil) -> Bool {
        var addresses = StanzaAddresses(stanza)
        return matches(stanza, room: room, addresses: &addresses)
    }

    /// `matches`, with the stanza's addresses parsed at most once over all the routes tried in turn.
    func matches(_ stanza: Stanza, room: RoomOrigin?, addresses: inout StanzaAddresses) -> Bool {
        guard kinds.contains(stanza.kind) else { return false }
        if let room {
            guard let rooms, let jid = JID.parse(room.room) else {
                // A private message from an occupant is also a chat message: routes without `rooms` may take it.
                if room.isGroupchat { return false }
                return matchesStanza(stanza, addresses: &addresses)
            }
            guard rooms.contains(where: { $0.matches(jid) }) else { return false }
            if mentions, room.isGroupchat, !Mention.contains(stanza.body ?? "", nick: room.ownNick) { return false }
        } else if rooms != nil {
            return false
        }
        return matchesStanza(stanza, addresses: &addresses)
    }

    private func matchesStanza(_ stanza: Stanza, addresses: inout StanzaAddresses) -> Bool {
        if let commandNode {
            guard stanza.kind == .iq, stanza.type == "set",
                  let command = stanza.element.elements.first(where: { $0.name == "command" && $0.namespace == AdHocCommand.namespace }),
                  command[attribute: "node"] == commandNode
            else { return false }
        }
        if let domain = refusesFromDomain, stanza.kind != .iq, addresses.from()?.domain == domain { return false }
        if let types {
            let type = stanza.type ?? Self.implicitType(of: stanza.kind)
            guard types.contains(type) else { return false }
        }
        if let to {
            guard let jid = addresses.to(), to.contains(where: { $0.matches(jid) }) else { return false }
        }
        if let from {
            guard let jid = addresses.from(), from.contains(where: { $0.matches(jid) }) else { return false }
        }
        if requiresBody || body != nil {
            guard stanza.kind == .message, let text = stanza.body else { return false }
            if let body, !body.matches(text) { return false }
        }
        return true
    }

    /// The type a stanza without a `type` attribute has (RFC 6120).
    static func implicitType(of kind: StanzaKind) -> String {
        switch kind {
        case .message: "normal"
        case .presence: "available"
        case .iq: ""
        }
    }
}

/// A stanza's `to` and `from`, each parsed the first time a route asks for it: the routes are tried in turn, and
/// each with a `to` or `from` pattern (or the loop guard) would otherwise parse them again.
struct StanzaAddresses {
    private let toText: String?
    private let fromText: String?
    private var parsedTo: JID??
    private var parsedFrom: JID??

    init(_ stanza: Stanza) {
        toText = stanza.to
        fromText = stanza.from
    }

    mutating func to() -> JID? {
        if let parsedTo { return parsedTo }
        let jid = JID.parse(toText)
        parsedTo = .some(jid)
        return jid
    }

    mutating func from() -> JID? {
        if let parsedFrom { return parsedFrom }
        let jid = JID.parse(fromText)
        parsedFrom = .some(jid)
        return jid
    }
}

/// A compiled body regex. Regex values are immutable, so sharing one between tasks is safe.
package struct BodyPattern: @unchecked Sendable {
    package let source: String
    private let regex: Regex<AnyRegexOutput>

    package init(_ source: String) throws {
        self.source = source
        self.regex = try Regex(source)
    }

    package func matches(_ text: String) -> Bool {
        (try? regex.firstMatch(in: text)) != nil
    }
}
