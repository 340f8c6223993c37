// Hooks (SPEC §16): `POST {path}/hooks/{name}` runs the hook's handler with the request body on stdin and sends
// what it prints as stanzas. The API checks the hook's auth, builds the handler's environment, turns its output
// into stanzas (JSON, XML or plain text) and its exit status into the HTTP status; running the handler is the
// `HookRunner`'s (the Daemon gives it the executor), so this module starts no process itself.

import Crypto
import Foundation
import Logging
import XMPPCore

/// One `[[hook]]`, as the API needs it.
package struct HookSettings: Sendable {
    package enum Auth: Sendable, Equatable {
        /// The REST API's credentials (Authorization header).
        case credentials
        /// Hex HMAC-SHA256 of the body in `header` (`sha256=<hex>` or bare hex).
        case hmac(secret: [UInt8], header: String)
        /// Anyone who can reach the URL (keep it behind nginx rules).
        case none
    }

    package var name: String
    package var auth: Auth
    /// Default recipients: `STANZAD_TO`, and where plain text and stanzas without `to` go (a room stanzad keeps
    /// gets plain text as group chat from our occupant).
    package var to: [String]

    package init(name: String, auth: Auth, to: [String]) {
        self.name = name
        self.auth = auth
        self.to = to
    }
}

/// What a hook's handler gets.
package struct HookInvocation: Sendable {
    package var hook: String
    package var stdin: [UInt8]
    /// The CGI-like variables of SPEC §16 (the runner adds the clean base environment).
    package var environment: [String: String]

    package init(hook: String, stdin: [UInt8], environment: [String: String]) {
        self.hook = hook
        self.stdin = stdin
        self.environment = environment
    }
}

/// How a hook's handler ended.
package enum HookEnding: Sendable, Equatable {
    case exited(Int32, stdout: [UInt8])
    /// Killed at its timeout (its process group is gone).
    case timedOut
    /// Could not start, was killed by a signal, printed more than max_output: the reason for the log.
    case failed(String)
    /// `[limits] max_processes` handlers run already.
    case busy
}

/// Runs hook handlers (the Daemon's executor). `completion` runs exactly once. The returned cancellation stops
/// the handler (its client went away, or stanzad is shutting down).
package protocol HookRunner: Sendable {
    @discardableResult
    func run(_ invocation: HookInvocation, completion: @escaping @Sendable (HookEnding) -> Void) -> RestCancellation?
}

extension RestAPI {
    /// `POST {path}/hooks/{name}`.
    func hook(_ name: String, request: RestRequest, output: String,
              respond: @escaping @Sendable (RestResponse) -> Void) throws -> RestCancellation? {
        guard let hook = hooks.withLock({ $0[name] }), let runner = hookRunner else {
            throw RestFailure(404, .cancel, .itemNotFound, "no hook named \(JID.quoted(name)); hooks are configured with [[hook]]")
        }
        try allow(request, ["POST"])
        switch hook.auth {
        case .credentials:
            try authorize(request)
        case .hmac(let secret, let header):
            try Self.verifySignature(request, secret: secret, header: header)
        case .none:
            break
        }
        try checkBodySize(request)
        let invocation = HookInvocation(hook: name, stdin: request.body, environment: Self.hookEnvironment(request, hook: hook))
        let started = ContinuousClock.now
        return runner.run(invocation) { [self] ending in
            respond(self.finishHook(hook, ending: ending, output: output, started: started))
        }
    }

    /// The exit status as SPEC §16 maps it; on success every stanza is handed to the link before the 202.
    private func finishHook(_ hook: HookSettings, ending: HookEnding, output: String, started: ContinuousClock.Instant) -> RestResponse {
        let stdout: [UInt8]
        switch ending {
        case .exited(0, let bytes):
            stdout = bytes
        case .exited(let code, _):
            let failure: RestFailure
            switch Self.hookStatus(exit: code) {
            case 400:
                failure = RestFailure(400, .modify, .badRequest, "hook \(hook.name) refused the request (exit \(code))")
            case 403:
                failure = RestFailure(403, .auth, .forbidden, "hook \(hook.name) refused the request (exit 77)")
            case 503:
                failure = RestFailure(503, .wait, .serviceUnavailable, "hook \(hook.name) is temporarily unavailable (exit 75); try again later",
                                      headers: [("Retry-After", "30")])
            default:
                failure = RestFailure(500, .wait, .internalServerError, "hook \(hook.name) failed (exit \(code)); see stanzad's log")
            }
            hookLog(hook, status: failure.status, started: started, problem: "exit \(code)")
            return errorResponse(failure, output: output)
        case .timedOut:
            hookLog(hook, status: 504, started: started, problem: "timed out")
            return errorResponse(RestFailure(504, .wait, .remoteServerTimeout, "hook \(hook.name) did not finish within its timeout"), output: output)
        case .busy:
            hookLog(hook, status: 503, started: started, problem: "max_processes reached")
            return errorResponse(RestFailure(503, .wait, .resourceConstraint, "every handler slot is taken (max_processes); try again later",
                                             headers: [("Retry-After", "5")]), output: output)
        case .failed(let reason):
            hookLog(hook, status: 500, started: started, problem: reason)
            return errorResponse(RestFailure(500, .wait, .internalServerError, "hook \(hook.name) failed; see stanzad's log"), output: output)
        }
        let stanzas: [Stanza]
        do {
            stanzas = try hookStanzas(stdout, hook: hook)
        } catch let failure as RestFailure {
            // Nothing is sent when any part of the output is wrong, and the output is never echoed to the client.
            hookLog(hook, status: 500, started: started, problem: failure.error.text ?? "invalid output")
            return errorResponse(RestFailure(500, .wait, .internalServerError, "hook \(hook.name) printed output stanzad cannot send; see stanzad's log"), output: output)
        } catch {
            hookLog(hook, status: 500, started: started, problem: "\(error)")
            return errorResponse(RestFailure(500, .wait, .internalServerError, "hook \(hook.name) printed output stanzad cannot send; see stanzad's log"), output: output)
        }
        for stanza in stanzas {
            // Queued for the link (written at once while it is up); a full queue is logged, not retried.
            _ = sender.deliver(stanza, wait: settings.sendWait) { [self] result in
                if case .failure(let failure) = result {
                    self.logger?.warning("hook stanza not sent", metadata: ["hook": "\(hook.name)", "problem": "\(failure.message)"])
                }
            }
        }
        hookLog(hook, status: 202, started: started, problem: nil, sent: stanzas.count)
        let body = JSONValue.object(["sent": .int(Int64(stanzas.count))]).serializedBytes()
        return RestResponse(status: 202, headers: [("Content-Type", Self.json)], body: body)
    }

    /// SPEC §16: the HTTP status of a hook handler's exit status.
    package static func hookStatus(exit code: Int32) -> Int {
        switch code {
        case 0: 202
        case 64, 65: 400
        case 77: 403
        case 75: 503
        default: 500
        }
    }

    private func hookLog(_ hook: HookSettings, status: Int, started: ContinuousClock.Instant, problem: String?, sent: Int? = nil) {
        let elapsed = ContinuousClock.now - started
        let milliseconds = elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000
        var metadata: Logger.Metadata = ["hook": "\(hook.name)", "http_status": "\(status)", "duration_ms": "\(milliseconds)"]
        if let problem {
            metadata["problem"] = "\(problem)"
            logger?.warning("hook failed", metadata: metadata)
        } else {
            metadata["sent"] = "\(sent ?? 0)"
            logger?.info("hook handled", metadata: metadata)
        }
    }

    /// The handler's stdout as stanzas: JSON (an object, an array, or one object per line), XML stanzas, or plain
    /// text (one chat message to each of the hook's `to`). Each is stamped as a REST stanza is (SPEC §8).
    package func hookStanzas(_ stdout: [UInt8], hook: HookSettings) throws -> [Stanza] {
        guard let text = String(validating: stdout, as: UTF8.self) else {
            throw RestFailure(500, .wait, .internalServerError, "output is not UTF-8")
        }
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.isEmpty { return [] }
        var parsed: [Stanza] = []
        if trimmed.first == "<" {
            let elements: [Element]
            do {
                elements = try XMLStreamParser.parseFragment(Array(trimmed.utf8), limits: XMLLimits(maxStanzaBytes: settings.maxStanza))
            } catch {
                throw RestFailure(500, .wait, .internalServerError, "output is not well-formed XML: \(error.message)")
            }
            for element in elements {
                guard let stanza = Stanza(element) else {
                    throw RestFailure(500, .wait, .internalServerError, "output element <\(element.name)> is not a stanza")
                }
                parsed.append(contentsOf: try fanOut(stanza, hook: hook))
            }
        } else if let values = Self.jsonOutput(trimmed) {
            for value in values {
                let stanza = try fromJSON(value, kind: nil, type: nil, to: nil)
                parsed.append(contentsOf: try fanOut(stanza, hook: hook))
            }
        } else {
            // Plain text, even when it starts like JSON ("[FIRING:2] …").
            guard !hook.to.isEmpty else {
                throw RestFailure(500, .wait, .internalServerError, "plain-text output but the hook has no `to`")
            }
            for recipient in hook.to {
                // A room stanzad keeps gets a group chat message from our occupant (stamp sets the `from`).
                let isRoom = JID.parse(recipient).map { rooms?.occupantJID(inRoom: $0.bare.description) != nil } ?? false
                var message = Stanza(kind: .message, type: isRoom ? "groupchat" : "chat", to: recipient)
                message.element.append(Element("body", namespace: Namespace.client, text: trimmed))
                parsed.append(message)
            }
        }
        return try parsed.map { try stamp($0) }
    }

    /// JSON output: one object, an array of objects, or one object per line; nil when the text is not that.
    static func jsonOutput(_ text: String) -> [JSONValue]? {
        guard text.first == "{" || text.first == "[" else { return nil }
        if let value = try? JSONValue.parse(Array(text.utf8)) {
            switch value {
            case .object: return [value]
            case .array(let items) where items.allSatisfy({ if case .object = $0 { true } else { false } }): return items
            default: return nil
            }
        }
        var values: [JSONValue] = []
        for line in text.split(separator: "\n") where !line.allSatisfy(\.isWhitespace) {
            guard let value = try? JSONValue.parse(Array(line.utf8)), case .object = value else { return nil }
            values.append(value)
        }
        return values
    }

    /// A stanza without `to` goes to each of the hook's recipients.
    private func fanOut(_ stanza: Stanza, hook: HookSettings) throws -> [Stanza] {
        guard stanza.to == nil || stanza.to?.isEmpty == true else { return [stanza] }
        guard !hook.to.isEmpty else {
            throw RestFailure(500, .wait, .internalServerError, "a stanza without `to` and the hook has no `to`")
        }
        return hook.to.map { recipient in
            var copy = stanza
            copy.to = recipient
            return copy
        }
    }

    /// SPEC §16: `STANZAD_HOOK`, `STANZAD_TO`, `REQUEST_METHOD`, `QUERY_STRING`, `CONTENT_TYPE` and `HTTP_*` for the
    /// request's headers except credentials, cookies and the signature.
    package static func hookEnvironment(_ request: RestRequest, hook: HookSettings) -> [String: String] {
        var environment: [String: String] = [
            "STANZAD_HOOK": hook.name, "STANZAD_TO": hook.to.joined(separator: ","), "REQUEST_METHOD": request.method.uppercased(),
            "QUERY_STRING": request.query, "CONTENT_TYPE": request.contentType ?? "",
        ]
        var withheld: Set<String> = ["HTTP_AUTHORIZATION", "HTTP_COOKIE", "HTTP_PROXY_AUTHORIZATION", "HTTP_PROXY"]
        if case .hmac(_, let header) = hook.auth { withheld.insert(cgiName(header)) }
        for (name, value) in request.params where name.hasPrefix("HTTP_") && !withheld.contains(name) {
            environment[name] = value
        }
        return environment
    }

    /// `X-Hub-Signature-256` → `HTTP_X_HUB_SIGNATURE_256`.
    static func cgiName(_ header: String) -> String {
        "HTTP_" + String(header.uppercased().map { $0 == "-" ? "_" : $0 })
    }

    /// Checks the body's HMAC-SHA256 in `header` against `secret`, in constant time; 403 when it is missing or wrong.
    static func verifySignature(_ request: RestRequest, secret: [UInt8], header: String) throws {
        guard var presented = request.params[cgiName(header)]?.trimmingCharacters(in: .whitespaces), !presented.isEmpty else {
            throw RestFailure(403, .auth, .forbidden, "signature required (\(header) header)")
        }
        if presented.lowercased().hasPrefix("sha256=") { presented.removeFirst(7) }
        let mac = HMAC<SHA256>.authenticationCode(for: request.body, using: SymmetricKey(data: secret))
        let expected = Array(mac.map { String(format: "%02x", $0) }.joined().utf8)
        guard constantTimeEqual(Array(presented.lowercased().utf8), expected) else {
            throw RestFailure(403, .auth, .forbidden, "signature does not match the body (\(header))")
        }
    }
}
