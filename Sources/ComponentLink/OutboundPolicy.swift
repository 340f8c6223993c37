// SPEC §8: what may be written to the server. Anything else is refused here, before it can make the
// server close the whole component stream.

import XMPPCore

/// Why a stanza was not sent.
package struct SendError: Error, Hashable, Sendable, CustomStringConvertible {
    package struct Code: Hashable, Sendable, CustomStringConvertible {
        let value: String
        package var description: String { value }
        /// `from` missing or outside the component domain.
        package static let invalidFrom = Code(value: "invalid-from")
        /// `to` missing or not a JID.
        package static let invalidTo = Code(value: "invalid-to")
        /// Larger than `max_stanza` once serialized.
        package static let tooLarge = Code(value: "too-large")
        /// Cannot be serialized (forbidden characters).
        package static let unserializable = Code(value: "unserializable")
        /// The send queue is full.
        package static let queueFull = Code(value: "queue-full")
        /// Waited in the queue longer than `send_queue_ttl`.
        package static let expired = Code(value: "expired")
        /// The link went down after the iq was sent.
        package static let linkLost = Code(value: "link-lost")
        /// No reply to the iq within the timeout.
        package static let timeout = Code(value: "timeout")
        /// Too many iqs waiting for replies.
        package static let tooManyPending = Code(value: "too-many-pending")
        /// The daemon is shutting down.
        package static let shuttingDown = Code(value: "shutting-down")
        /// An iq with this id is already waiting.
        package static let duplicateID = Code(value: "duplicate-id")
        /// The spool (SPEC §18) could not write the stanza.
        package static let storageFailed = Code(value: "storage-failed")
    }

    package var code: Code
    package var message: String

    package init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    package var description: String { "\(code): \(message)" }
}

/// Validates and serializes outgoing stanzas.
package struct OutboundPolicy: Sendable {
    package let domain: String
    package let maxStanzaBytes: Int

    /// Names these settings on a stanza this policy checked (`Stanza.checked`).
    private let key: String

    package init(domain: String, maxStanzaBytes: Int) {
        self.domain = domain.lowercased()
        self.maxStanzaBytes = maxStanzaBytes
        key = "\(maxStanzaBytes) \(self.domain)"
    }

    /// Checks `stanza` as `serialize` does and keeps the bytes on it: a policy with the same settings (the link's)
    /// then writes them without serializing the stanza again, unless it was changed since.
    package func check(_ stanza: inout Stanza) throws(SendError) {
        stanza.keepChecked(try serialize(stanza), by: key)
    }

    /// The bytes to write for `stanza`, or why it must not be written.
    package func serialize(_ stanza: Stanza) throws(SendError) -> String {
        if let checked = stanza.checked, checked.key == key { return checked.xml }
        guard let fromValue = stanza.from else {
            throw SendError(.invalidFrom, "stanza has no from")
        }
        guard JID.isValid(fromValue, domain: domain) else {
            throw SendError(.invalidFrom, "from \(JID.quoted(fromValue)) is outside the component domain \(domain)")
        }
        guard let toValue = stanza.to else {
            throw SendError(.invalidTo, "stanza has no to")
        }
        guard JID.isValid(toValue) else {
            throw SendError(.invalidTo, "to \(JID.quoted(toValue)) is not a valid JID")
        }
        let xml: String
        do {
            xml = try stanza.serialized()
        } catch {
            throw SendError(.unserializable, error.description)
        }
        let size = xml.utf8.count
        guard size <= maxStanzaBytes else {
            throw SendError(.tooLarge, "stanza of \(size) bytes exceeds max_stanza (\(maxStanzaBytes) bytes)")
        }
        return xml
    }
}
