// What a process handler receives (SPEC §5.1): the stdin bytes for its format and the clean environment.

import XMPPCore

package enum HandlerInput {
    /// The bytes written to the handler's stdin.
    package static func stdin(for stanza: Stanza, format: HandlerFormat, room: RoomOrigin? = nil) throws(XMLSerializationError) -> [UInt8] {
        switch format {
        case .text:
            return Array((stanza.body ?? "").utf8)
        case .json:
            return json(for: stanza, room: room).serializedBytes() + [0x0A]
        case .xml:
            // mod_rest's callback bytes: no xmlns on the top element, so the default is jabber:client.
            return Array(try stanza.serialized().utf8)
        }
    }

    /// The §7 JSON handed to handlers, workers and webhooks: with `stanza`, and `room` / `room_nick` for a message
    /// from a room (SPEC §14).
    package static func json(for stanza: Stanza, room: RoomOrigin?) -> JSONValue {
        let value = StanzaJSON.encode(stanza, includeStanza: true)
        guard let room, case .object(var object) = value else { return value }
        object["room"] = .string(room.room)
        object["room_nick"] = .string(room.nick)
        return .object(object)
    }

    /// The handler's whole environment: PATH, LANG, the route's `env` and `pass_env`, and the STANZA_*
    /// variables. Nothing else from stanzad's own environment.
    package static func environment(
        for stanza: Stanza, route: String, component: String, env: [String: String], passEnv: [String],
        parent: [String: String], room: RoomOrigin? = nil
    ) -> [String: String] {
        var result = baseEnvironment(route: route, component: component, env: env, passEnv: passEnv, parent: parent)
        func set(_ name: String, _ value: String?) {
            guard let value, !value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { return }
            result[name] = value
        }
        set("STANZA_KIND", stanza.kind.rawValue)
        set("STANZA_TYPE", stanza.type ?? (stanza.kind == .presence ? "available" : nil))
        set("STANZA_ID", stanza.id)
        set("STANZA_FROM", JID.parse(stanza.from)?.description)
        set("STANZA_TO", JID.parse(stanza.to)?.description)
        set("STANZA_LANG", stanza.lang)
        set("STANZA_ROOM", room?.room)
        set("STANZA_NICK", room?.nick)
        return result
    }

    /// The environment without the per-stanza variables: what a worker (which serves many stanzas) gets.
    package static func baseEnvironment(
        route: String, component: String, env: [String: String], passEnv: [String], parent: [String: String]
    ) -> [String: String] {
        var result: [String: String] = [:]
        result["PATH"] = parent["PATH"].flatMap { $0.isEmpty ? nil : $0 } ?? "/usr/local/bin:/usr/bin:/bin"
        result["LANG"] = "C.UTF-8"
        for name in passEnv {
            if let value = parent[name] { result[name] = value }
        }
        for (name, value) in env { result[name] = value }
        result["STANZAD_ROUTE"] = route
        result["STANZAD_COMPONENT"] = component
        return result
    }
}
