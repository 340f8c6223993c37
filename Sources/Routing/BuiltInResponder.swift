// What the component answers by itself when no route takes a stanza (SPEC §10): presence
// subscriptions, disco#info/#items, ping, version, time; service-unavailable for the rest.

import Foundation
import XMPPCore

package enum DiscoNamespace {
    package static let info = "http://jabber.org/protocol/disco#info"
    package static let items = "http://jabber.org/protocol/disco#items"
    package static let ping = "urn:xmpp:ping"
    package static let version = "jabber:iq:version"
    package static let time = "urn:xmpp:time"
}

package struct BuiltInResponder: Sendable {
    package var domain: String
    package var discoName: String
    package var presenceAuto: Bool
    /// Namespaces answered by iq routes, advertised as features.
    package var routedFeatures: [String]
    /// Bare JIDs named literally in routes' `to`, listed by disco#items on the domain.
    package var items: [String]
    package var softwareName: String
    package var softwareVersion: String

    package init(
        domain: String, discoName: String = "stanzad", presenceAuto: Bool = true, routedFeatures: [String] = [],
        items: [String] = [], softwareName: String = "stanzad", softwareVersion: String
    ) {
        self.domain = domain.lowercased()
        self.discoName = discoName
        self.presenceAuto = presenceAuto
        self.routedFeatures = routedFeatures
        self.items = items
        self.softwareName = softwareName
        self.softwareVersion = softwareVersion
    }

    /// The replies to `stanza` (possibly none). Never replies to error or result stanzas.
    package func respond(to stanza: Stanza, now: Date = Date()) -> [Stanza] {
        guard stanza.allowsReply, let to = JID.parse(stanza.to), to.domain == domain else { return [] }
        switch stanza.kind {
        case .presence: return presence(stanza, to: to)
        case .iq: return iq(stanza, to: to, now: now)
        case .message:
            let type = stanza.type ?? "normal"
            guard type == "chat" || type == "normal" else { return [] }
            return [stanza.errorReply(StanzaError(.cancel, .serviceUnavailable, by: domain))]
        }
    }

    private func presence(_ stanza: Stanza, to: JID) -> [Stanza] {
        guard presenceAuto, let from = stanza.from, let sender = JID.parse(from) else { return [] }
        let own = to.bare.description
        func presence(_ type: String?) -> Stanza {
            Stanza(kind: .presence, type: type, id: RandomID.make(), from: own, to: sender.bare.description)
        }
        switch stanza.type {
        case "subscribe": return [presence("subscribed"), presence(nil)]
        case "probe": return [presence(nil)]
        case "unsubscribe": return [presence("unsubscribed")]
        default: return []
        }
    }

    private func iq(_ stanza: Stanza, to: JID, now: Date) -> [Stanza] {
        guard stanza.isRequest else { return [] }
        let payloads = stanza.element.elements
        guard payloads.count == 1, let payload = payloads.first else {
            return [stanza.errorReply(StanzaError(.modify, .badRequest, text: "an iq get/set needs exactly one child element", by: domain))]
        }
        var reply = stanza.replySkeleton()
        reply.from = stanza.to
        switch (stanza.type, payload.name, payload.namespace) {
        case ("get", "query", DiscoNamespace.info):
            if let node = payload[attribute: "node"], !node.isEmpty {
                return [stanza.errorReply(StanzaError(.cancel, .itemNotFound, text: "no such node: \(node)", by: domain))]
            }
            var query = Element("query", namespace: DiscoNamespace.info)
            var identity = Element("identity", namespace: DiscoNamespace.info)
            if to.localpart == nil {
                identity[attribute: "category"] = "component"
                identity[attribute: "type"] = "generic"
            } else {
                identity[attribute: "category"] = "client"
                identity[attribute: "type"] = "bot"
            }
            identity[attribute: "name"] = discoName
            query.append(identity)
            var seen = Set<String>()
            for feature in [DiscoNamespace.info, DiscoNamespace.items, DiscoNamespace.ping, DiscoNamespace.version, DiscoNamespace.time] + routedFeatures
            where seen.insert(feature).inserted {
                var element = Element("feature", namespace: DiscoNamespace.info)
                element[attribute: "var"] = feature
                query.append(element)
            }
            reply.element.append(query)
        case ("get", "query", DiscoNamespace.items):
            var query = Element("query", namespace: DiscoNamespace.items)
            if let node = payload[attribute: "node"], !node.isEmpty {
                return [stanza.errorReply(StanzaError(.cancel, .itemNotFound, text: "no such node: \(node)", by: domain))]
            }
            if to.localpart == nil {
                for jid in items {
                    var item = Element("item", namespace: DiscoNamespace.items)
                    item[attribute: "jid"] = jid
                    query.append(item)
                }
            }
            reply.element.append(query)
        case ("get", "ping", DiscoNamespace.ping):
            break
        case ("get", "query", DiscoNamespace.version):
            var query = Element("query", namespace: DiscoNamespace.version)
            query.append(Element("name", namespace: DiscoNamespace.version, text: softwareName))
            query.append(Element("version", namespace: DiscoNamespace.version, text: softwareVersion))
            reply.element.append(query)
        case ("get", "time", DiscoNamespace.time):
            var time = Element("time", namespace: DiscoNamespace.time)
            time.append(Element("tzo", namespace: DiscoNamespace.time, text: "+00:00"))
            time.append(Element("utc", namespace: DiscoNamespace.time, text: Self.utc(now)))
            reply.element.append(time)
        default:
            return [stanza.errorReply(StanzaError(.cancel, .serviceUnavailable, by: domain))]
        }
        return [reply]
    }

    /// XEP-0082 date-time in UTC, e.g. 2026-11-22T03:08:28Z.
    static func utc(_ date: Date) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? calendar.timeZone
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        func two(_ n: Int?) -> String { let v = n ?? 0; return v < 10 ? "0\(v)" : "\(v)" }
        return "\(c.year ?? 1970)-\(two(c.month))-\(two(c.day))T\(two(c.hour)):\(two(c.minute)):\(two(c.second))Z"
    }
}
