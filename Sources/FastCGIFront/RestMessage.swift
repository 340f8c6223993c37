// The REST API's request and response, independent of FastCGI (SPEC §9), so the API is unit-testable.

public struct RestRequest: Sendable {
    public var method: String
    /// The URI path, percent-encoded as received, without the query string.
    public var path: String
    public var query: String
    public var contentType: String?
    /// From CONTENT_LENGTH: checked against max_body before the body is read.
    public var contentLength: Int?
    public var body: [UInt8]
    /// The body ran past max_body and was not kept (answered 413 whatever CONTENT_LENGTH said).
    public var bodyTooLarge = false
    public var authorization: String?
    public var accept: String?
    /// `Rest-Timeout` or `Prosody-Rest-Timeout`.
    public var timeout: String?

    public init(method: String, path: String, query: String = "", contentType: String? = nil, contentLength: Int? = nil,
                body: [UInt8] = [], authorization: String? = nil, accept: String? = nil, timeout: String? = nil) {
        self.method = method
        self.path = path
        self.query = query
        self.contentType = contentType
        self.contentLength = contentLength
        self.body = body
        self.authorization = authorization
        self.accept = accept
        self.timeout = timeout
    }
}

public struct RestResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    public init(status: Int, headers: [(String, String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
}

/// What the REST API needs from the component link (ComponentConnection conforms in the Daemon).
public protocol StanzaSender: Sendable {
    /// "connected", "connecting" or "failed".
    var linkState: String { get }
    /// Writes a message or presence; waits up to `wait` for a lost link to come back.
    func deliver(_ stanza: XMPPCore.Stanza, wait: Duration) async throws(ComponentLink.SendError)
    /// Sends an iq get/set and waits for its reply.
    func ask(_ iq: XMPPCore.Stanza, timeout: Duration, maxPending: Int) async throws(ComponentLink.SendError) -> XMPPCore.Stanza
}

import ComponentLink
import XMPPCore
