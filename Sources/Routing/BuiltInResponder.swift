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

/// A `[[command]]` as disco lists it (SPEC §15).
package struct CommandListing: Hashable, Sendable {
    /// The offering bare JID, lower-cased.
    package var jid: String
    package var node: String
    package var name: String
    /// Who may see and run it; nil: anyone.
    package var from: [JIDPattern]?

    package init(jid: String, node: String, name: String, from: [JIDPattern]?) {
        self.jid = jid.lowercased()
        self.node = node
        self.name = name
        self.from = from
    }

    package func allows(_ requester: String?) -> Bool {
        guard let from else { return true }
        guard let jid = JID.parse(requester) else { return false }
        return from.contains { $0.matches(jid) }
    }
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
    /// The ad-hoc commands (SPEC §15), listed on the commands node of their JID.
    package var commands: [CommandListing]

    package init(
        domain: String, discoName: String = "stanzad", presenceAuto: Bool = true, routedFeatures: [String] = [],
        items: [String] = [], softwareName: String = "stanzad", softwareVersion: String, commands: [CommandListing] = []
    ) {
        self.commands = commands
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
                guard let query = commandNodeInfo(node, at: to, for: stanza.from) else {
                    return [stanza.errorReply(StanzaError(.cancel, .itemNotFound, text: "no such node: \(node)", by: domain))]
                }
                reply.element.append(query)
                return [reply]
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
            let commandFeature = visibleCommands(at: to, for: stanza.from).isEmpty ? [] : [AdHocCommand.namespace]
            for feature in [DiscoNamespace.info, DiscoNamespace.items, DiscoNamespace.ping, DiscoNamespace.version, DiscoNamespace.time]
                + routedFeatures + commandFeature
            where seen.insert(feature).inserted {
                var element = Element("feature", namespace: DiscoNamespace.info)
                element[attribute: "var"] = feature
                query.append(element)
            }
            reply.element.append(query)
        case ("get", "query", DiscoNamespace.items):
            var query = Element("query", namespace: DiscoNamespace.items)
            if let node = payload[attribute: "node"], !node.isEmpty {
                guard node == AdHocCommand.namespace else {
                    return [stanza.errorReply(StanzaError(.cancel, .itemNotFound, text: "no such node: \(node)", by: domain))]
                }
                // XEP-0050 §2.2: the commands this requester may run here.
                query[attribute: "node"] = node
                for command in visibleCommands(at: to, for: stanza.from) {
                    var item = Element("item", namespace: DiscoNamespace.items)
                    item[attribute: "jid"] = to.bare.description
                    item[attribute: "node"] = command.node
                    item[attribute: "name"] = command.name
                    query.append(item)
                }
                reply.element.append(query)
                return [reply]
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
        case ("set", "command", AdHocCommand.namespace):
            // A command no `[[command]]` offers at this JID (those that do are routes and never get here).
            let node = payload[attribute: "node"] ?? ""
            return [stanza.errorReply(StanzaError(.cancel, .itemNotFound, text: "no command \"\(node)\" at \(to.bare)", by: domain))]
        default:
            return [stanza.errorReply(StanzaError(.cancel, .serviceUnavailable, by: domain))]
        }
        return [reply]
    }

    /// The commands offered at `to` that `requester` may see, in configuration order.
    private func visibleCommands(at to: JID, for requester: String?) -> [CommandListing] {
        let jid = to.bare.description.lowercased()
        return commands.filter { $0.jid == jid && $0.allows(requester) }
    }

    /// disco#info of the commands node (identity automation/command-list) or of a command's node (XEP-0050 §2.3:
    /// automation/command-node); nil: no such node here for this requester.
    private func commandNodeInfo(_ node: String, at to: JID, for requester: String?) -> Element? {
        let visible = visibleCommands(at: to, for: requester)
        var query = Element("query", namespace: DiscoNamespace.info)
        query[attribute: "node"] = node
        var identity = Element("identity", namespace: DiscoNamespace.info)
        identity[attribute: "category"] = "automation"
        let features: [String]
        if node == AdHocCommand.namespace {
            guard !visible.isEmpty else { return nil }
            identity[attribute: "type"] = "command-list"
            features = [DiscoNamespace.info, DiscoNamespace.items]
        } else {
            guard let command = visible.first(where: { $0.node == node }) else { return nil }
            identity[attribute: "type"] = "command-node"
            identity[attribute: "name"] = command.name
            features = [AdHocCommand.namespace, DataForm.namespace]
        }
        query.append(identity)
        for feature in features {
            var element = Element("feature", namespace: DiscoNamespace.info)
            element[attribute: "var"] = feature
            query.append(element)
        }
        return query
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
