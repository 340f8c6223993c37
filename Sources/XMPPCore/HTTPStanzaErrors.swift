// HTTP status → stanza error (Prosody's net.http.errors registry, built on XEP-0086). Used by webhooks.

package enum HTTPStanzaErrors {
    /// The stanza error for an HTTP status; `text` is usually the reason phrase.
    package static func error(forStatus status: Int, text: String? = nil) -> StanzaError {
        let (type, condition) = mapping(status)
        return StanzaError(type, condition, text: text ?? reasonPhrase(status))
    }

    package static func mapping(_ status: Int) -> (StanzaError.ErrorType, StanzaError.Condition) {
        switch status {
        case 400, 411, 416, 422: (.modify, .badRequest)
        case 401, 511: (.auth, .notAuthorized)
        case 402: (.auth, .paymentRequired)
        case 403, 451: (.auth, .forbidden)
        case 404: (.cancel, .itemNotFound)
        case 405: (.cancel, .notAllowed)
        case 406: (.modify, .notAcceptable)
        case 407: (.auth, .registrationRequired)
        case 408, 502, 504: (.wait, .remoteServerTimeout)
        case 409, 412: (.cancel, .conflict)
        case 410: (.cancel, .gone)
        case 413, 414, 431: (.modify, .resourceConstraint)
        case 415, 501: (.cancel, .featureNotImplemented)
        case 423, 429, 507: (.wait, .resourceConstraint)
        case 500: (.wait, .internalServerError)
        case 503: (.cancel, .serviceUnavailable)
        default: (.cancel, .undefinedCondition)
        }
    }

    /// The standard reason phrase, or "<n> Unassigned".
    package static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 100: "Continue"
        case 101: "Switching Protocols"
        case 200: "OK"
        case 201: "Created"
        case 202: "Accepted"
        case 204: "No Content"
        case 300: "Multiple Choices"
        case 301: "Moved Permanently"
        case 302: "Found"
        case 303: "See Other"
        case 304: "Not Modified"
        case 307: "Temporary Redirect"
        case 308: "Permanent Redirect"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 402: "Payment Required"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 406: "Not Acceptable"
        case 407: "Proxy Authentication Required"
        case 408: "Request Timeout"
        case 409: "Conflict"
        case 410: "Gone"
        case 411: "Length Required"
        case 412: "Precondition Failed"
        case 413: "Content Too Large"
        case 414: "URI Too Long"
        case 415: "Unsupported Media Type"
        case 416: "Range Not Satisfiable"
        case 417: "Expectation Failed"
        case 418: "I'm a teapot"
        case 421: "Misdirected Request"
        case 422: "Unprocessable Content"
        case 423: "Locked"
        case 424: "Failed Dependency"
        case 425: "Too Early"
        case 426: "Upgrade Required"
        case 428: "Precondition Required"
        case 429: "Too Many Requests"
        case 431: "Request Header Fields Too Large"
        case 451: "Unavailable For Legal Reasons"
        case 500: "Internal Server Error"
        case 501: "Not Implemented"
        case 502: "Bad Gateway"
        case 503: "Service Unavailable"
        case 504: "Gateway Timeout"
        case 505: "HTTP Version Not Supported"
        case 506: "Variant Also Negotiates"
        case 507: "Insufficient Storage"
        case 508: "Loop Detected"
        case 510: "Not Extended"
        case 511: "Network Authentication Required"
        default: "\(status) Unassigned"
        }
    }
}

/// Content-Type values, for the HTTP sides (REST API, webhooks).
package enum HTTPMediaType {
    /// The media type without parameters, lower-cased: "Application/JSON; charset=utf-8" → "application/json".
    package static func essence(_ contentType: String?) -> String {
        guard let contentType else { return "" }
        // Already bare and lower-case (the usual "application/json"): the value itself, nothing allocated.
        if contentType.utf8.allSatisfy({ byte in
            byte < 0x80 && byte != UInt8(ascii: ";") && byte != UInt8(ascii: " ") && byte != UInt8(ascii: "\t")
                && !(UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
        }) {
            return contentType
        }
        // ASCII, as media types are: byte by byte (this runs for every webhook answer and REST request).
        var bytes: [UInt8] = []
        bytes.reserveCapacity(contentType.utf8.count)
        for byte in contentType.utf8 {
            switch byte {
            case UInt8(ascii: ";"): return String(decoding: bytes, as: UTF8.self)
            case UInt8(ascii: " "), UInt8(ascii: "\t"): continue
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): bytes.append(byte + 32)
            case 0..<0x80: bytes.append(byte)
            default:
                let base = contentType.split(separator: ";", maxSplits: 1).first ?? ""
                return base.filter { $0 != " " && $0 != "\t" }.lowercased()
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
