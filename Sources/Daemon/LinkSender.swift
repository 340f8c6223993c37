// Connects the REST API to the component link, callback to callback: a waiting REST request holds no task.

import ComponentLink
import FastCGIFront
import Foundation
import Rooms
import XMPPCore

struct LinkSender: StanzaSender {
    let connection: ComponentConnection
    /// Carries the iq requests when this instance has its own domain (SPEC §20).
    var instance: InstanceLink?

    var linkState: String { connection.health.rawValue }

    var instanceLinkState: (jid: String, state: String)? {
        instance.map { ($0.addressing.instance, $0.connection.health.rawValue) }
    }

    func deliver(_ stanza: Stanza, wait: Duration,
                 completion: @escaping @Sendable (Result<Void, SendFailure>) -> Void) -> RestCancellation? {
        connection.sendDurably(stanza, wait: wait) { completion($0.mapError(Self.failure)) }.map(RestCancellation.init)
    }

    func ask(_ iq: Stanza, timeout: Duration, maxPending: Int,
             completion: @escaping @Sendable (Result<Stanza, SendFailure>) -> Void) -> RestCancellation? {
        if let instance {
            return instance.addressing.request(iq, over: instance.connection, timeout: timeout, maxPending: maxPending) {
                completion($0.mapError(Self.failure))
            }.map(RestCancellation.init)
        }
        return connection.request(iq, timeout: timeout, maxPending: maxPending) { completion($0.mapError(Self.failure)) }
            .map(RestCancellation.init)
    }

    func ask(_ iq: Stanza, collecting: @escaping @Sendable (Stanza) -> Bool, timeout: Duration, maxPending: Int,
             completion: @escaping @Sendable (Result<[Stanza], SendFailure>) -> Void) -> RestCancellation? {
        if let instance {
            // The query goes from the instance domain, so its results come back there: taken on that link and
            // addressed back as the reply is.
            let original = iq.from
            let moved = instance.addressing.outbound(from: original)
            let collectors = instance.connection.collectors
            let token = collectors.start { stanza in
                stanza.to == moved && collecting(instance.addressing.inbound(stanza, original: original))
            }
            return instance.addressing.request(iq, over: instance.connection, timeout: timeout, maxPending: maxPending) { result in
                let taken = collectors.finish(token).map { instance.addressing.inbound($0, original: original) }
                completion(result.map { taken + [$0] }.mapError(Self.failure))
            }.map(RestCancellation.init)
        }
        let collectors = connection.collectors
        let token = collectors.start(collecting)
        return connection.request(iq, timeout: timeout, maxPending: maxPending) { result in
            let taken = collectors.finish(token)
            completion(result.map { taken + [$0] }.mapError(Self.failure))
        }.map(RestCancellation.init)
    }

    /// The link's error as the REST API's.
    static func failure(_ error: SendError) -> SendFailure {
        switch error.code {
        case .timeout: SendFailure(.timeout, error.message)
        case .linkLost: SendFailure(.linkLost, error.message)
        case .tooManyPending: SendFailure(.tooManyPending, error.message)
        case .tooLarge: SendFailure(.tooLarge, error.message)
        case .invalidFrom: SendFailure(.invalidFrom, error.message)
        case .invalidTo, .unserializable: SendFailure(.invalidStanza, error.message)
        case .duplicateID: SendFailure(.duplicateID, error.message)
        default: SendFailure(.unavailable(error.code.description), error.message)
        }
    }
}

/// Connects the REST API to the room keeper.
struct RoomDirectoryAdapter: RoomDirectory {
    let keeper: RoomKeeper

    func listing() -> JSONValue {
        let formatter = ISO8601DateFormatter()
        return .array(keeper.status.map { room in
            .object([
                "room": .string(room.room), "nick": .string(room.nick), "state": .string(room.state),
                "since": .string(formatter.string(from: room.since)),
                "occupants": .array(room.occupants.map { .string($0) }),
            ])
        })
    }

    func occupantJID(inRoom room: String) -> String? {
        keeper.occupantJID(inRoom: room)
    }
}
