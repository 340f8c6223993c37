// What a webhook route sends (SPEC §6): the URL rendered from the stanza, the body by format, the headers,
// and the HMAC signature. Pure, so it is tested without HTTP.

import Crypto
import Routing
import XMPPCore

package struct WebhookSettings: Sendable {
    /// The URL with {kind} {type} {to} {from} {id} placeholders.
    package var urlTemplate: String
    package var format: HandlerFormat
    /// `format = "auto"`: the body format is negotiated with an OPTIONS probe (`format` is unused then).
    package var negotiate: Bool
    package var headers: [String: String]
    package var hmacSecret: String?
    /// Per attempt.
    package var timeout: Duration
    /// Extra attempts for messages (SPEC §6 retries).
    package var retries: Int
    /// Response bytes accepted (`max_output`).
    package var maxBody: Int
    package var maxStanza: Int
    package var userAgent: String

    package init(urlTemplate: String, format: HandlerFormat, negotiate: Bool = false, headers: [String: String] = [:],
                hmacSecret: String? = nil, timeout: Duration = .seconds(10), retries: Int = 0, maxBody: Int = 262_144,
                maxStanza: Int = 524_288, userAgent: String = "stanzad") {
        self.urlTemplate = urlTemplate
        self.format = format
        self.negotiate = negotiate
        self.headers = headers
        self.hmacSecret = hmacSecret
        self.timeout = timeout
        self.retries = retries
        self.maxBody = maxBody
        self.maxStanza = maxStanza
        self.userAgent = userAgent
    }
}

/// One POST, before it is sent.
package struct WebhookRequest: Sendable, Equatable {
    package var url: String
    package var headers: [(String, String)]
    package var body: [UInt8]

    package static func == (a: Self, b: Self) -> Bool {
        a.url == b.url && a.body == b.body && a.headers.map { "\($0.0): \($0.1)" } == b.headers.map { "\($0.0): \($0.1)" }
    }

    init(url: String, headers: [(String, String)], body: [UInt8]) {
        self.url = url
        self.headers = headers
        self.body = body
    }

    package static let accept = "application/xmpp+xml, application/json, text/plain"

    /// The request for `stanza`; `delivery` is the Stanzad-Delivery id (the same for every retry). `body` overrides
    /// the settings' format (the negotiated one of `format = "auto"`).
    package init(stanza: Stanza, settings: WebhookSettings, delivery: String, room: RoomOrigin? = nil,
                 body format: WebhookBody? = nil) throws(XMLSerializationError) {
        url = Self.render(settings.urlTemplate, stanza)
        let contentType: String
        switch format ?? WebhookBody(rawValue: settings.format.rawValue) ?? .text {
        case .form:
            body = Self.form(StanzaJSON.encode(stanza))
            contentType = "application/x-www-form-urlencoded"
        case .xml:
            body = Array(try stanza.serialized().utf8)
            contentType = "application/xmpp+xml"
        case .json:
            body = HandlerInput.json(for: stanza, room: room).serializedBytes()
            contentType = "application/json"
        case .text:
            body = Array((stanza.body ?? "").utf8)
            contentType = "text/plain; charset=utf-8"
        }
        var headers: [(String, String)] = [
            ("Content-Type", contentType), ("Accept", Self.accept), ("User-Agent", settings.userAgent),
            ("Stanzad-Delivery", delivery),
        ]
        // Only a well-formed language tag (BCP 47: letters, digits, hyphens) becomes a header; anything else in
        // xml:lang (spaces, line breaks) is not forwarded rather than breaking the request.
        if let lang = stanza.lang, !lang.isEmpty, lang.utf8.count <= 64, lang.utf8.allSatisfy({
            ($0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "z")) || ($0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z"))
                || ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || $0 == UInt8(ascii: "-")
        }) {
            headers.append(("Content-Language", lang))
        }
        // A message from a room (any format; JSON has them in the body too): the room and the sender's nick,
        // percent-encoded as the URL placeholders are (a nick may hold anything).
        if let room {
            headers.append(("Stanzad-Room", Self.percentEncode(room.room)))
            headers.append(("Stanzad-Nick", Self.percentEncode(room.nick)))
        }
        for (name, value) in settings.headers.sorted(by: { $0.key < $1.key }) { headers.append((name, value)) }
        if let secret = settings.hmacSecret {
            headers.append(("Stanzad-Signature", Self.signature(body, secret: secret)))
        }
        self.headers = headers
    }

    /// mod_rest's form body: the top-level strings and numbers of the JSON mapping, `true` as an empty value;
    /// objects and arrays are left out.
    static func form(_ json: JSONValue) -> [UInt8] {
        guard case .object(let object) = json else { return [] }
        var pairs: [String] = []
        for key in object.keys.sorted() {
            let value: String
            switch object[key] {
            case .string(let string)?: value = string
            case .int(let number)?: value = String(number)
            case .double(let number)?: value = number.description
            case .bool(true)?: value = ""
            default: continue
            }
            pairs.append(percentEncode(key) + "=" + percentEncode(value))
        }
        return Array(pairs.joined(separator: "&").utf8)
    }

    /// `sha256=<lowercase hex HMAC-SHA256 of the body>`.
    package static func signature(_ body: [UInt8], secret: String) -> String {
        let mac = HMAC<SHA256>.authenticationCode(for: body, using: SymmetricKey(data: Array(secret.utf8)))
        return "sha256=" + mac.map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }

    /// Fills {kind} {type} {to} {from} {id}, each percent-encoded (RFC 3986 unreserved characters stay).
    /// A missing value renders as empty.
    package static func render(_ template: String, _ stanza: Stanza) -> String {
        // Most URLs have no placeholder: no values to gather, nothing to copy.
        guard template.utf8.contains(UInt8(ascii: "{")) else { return template }
        return render(template, values: [
            "kind": stanza.kind.rawValue,
            "type": stanza.type ?? (stanza.kind == .presence ? "available" : (stanza.kind == .message ? "normal" : "")),
            "to": stanza.to ?? "", "from": stanza.from ?? "", "id": stanza.id ?? "",
        ])
    }

    /// The template with these placeholder values.
    static func render(_ template: String, values: [String: String]) -> String {
        var result = ""
        var rest = Substring(template)
        while let open = rest.firstIndex(of: "{") {
            result += rest[..<open]
            let afterOpen = rest.index(after: open)
            if let close = rest[afterOpen...].firstIndex(of: "}"), let value = values[String(rest[afterOpen..<close])] {
                result += percentEncode(value)
                rest = rest[rest.index(after: close)...]
            } else {
                result += "{"
                rest = rest[afterOpen...]
            }
        }
        return result + rest
    }

    static func percentEncode(_ value: String) -> String {
        var out = ""
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = String(byte, radix: 16, uppercase: true)
                out += "%" + (byte < 16 ? "0" + hex : hex)
            }
        }
        return out
    }
}
