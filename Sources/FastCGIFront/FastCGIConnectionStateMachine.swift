// One FastCGI connection of the responder role, as a pure state machine: records in, actions out. No I/O and no
// clock: the channel handler keeps one read deadline while `isReading` and performs the actions.

import NIOCore

struct FastCGIConnectionStateMachine {
    struct Limits {
        /// All PARAMS content of one request (nginx sends 1–3 KB).
        var maxParams = 65_536
        /// The REST API's max_body: a larger body is not kept (the request is dispatched with `bodyTooLarge`).
        var maxBody: Int
    }

    /// A request whose params (and body) are complete.
    struct Request: Equatable {
        var requestID: UInt16
        var params: [String: String]
        var body: ByteBuffer
        /// The body (or CONTENT_LENGTH) exceeded max_body: `body` is incomplete and must not be used.
        var bodyTooLarge: Bool
    }

    enum Action: Equatable {
        case none
        /// Write these records (management answers, refusals) and go on reading.
        case write(ByteBuffer)
        /// Hand the request to the API; answer with `responseSent()` once its response is written.
        case dispatch(Request)
        /// The API must stop working on the dispatched request (FCGI_ABORT_REQUEST); the connection closes.
        case abort
        /// Close the connection; an error means the peer broke the protocol (logged).
        case close(FastCGIProtocolError?)
    }

    private enum State {
        /// Waiting for FCGI_BEGIN_REQUEST: a new connection, or a kept one after a response.
        case idle
        case params(id: UInt16, keep: Bool, bytes: ByteBuffer)
        case body(id: UInt16, keep: Bool, params: [String: String], bytes: ByteBuffer)
        /// The API has the request. `draining`: STDIN is still arriving (a body over max_body) and is discarded.
        case dispatched(id: UInt16, keep: Bool, draining: Bool)
        /// The response is written, but the peer is still sending a discarded body: read it to its end before
        /// closing, so the close is a FIN and not a reset that could destroy the response in flight.
        case lingering(id: UInt16)
        case closed
    }

    private var state = State.idle
    let limits: Limits

    init(limits: Limits) {
        self.limits = limits
    }

    /// True while the connection waits for bytes of a request: the read deadline runs. False while the API works
    /// on a request (a long-poll may take minutes) and once closed.
    var isReading: Bool {
        switch state {
        case .idle, .params, .body, .lingering: true
        case .dispatched, .closed: false
        }
    }

    /// True while a request is with the API.
    var isDispatched: Bool {
        if case .dispatched = state { return true }
        return false
    }

    /// True before the first byte of a request arrived (an idle connection, or a kept one between requests).
    var isIdle: Bool {
        if case .idle = state { return true }
        return false
    }

    mutating func received(_ record: FastCGIRecord) -> Action {
        if record.requestID == 0 { return management(record) }
        switch (state, record.kind) {
        case (.closed, _):
            return .none

        case (.idle, .beginRequest?):
            var content = record.content
            guard let role = content.readInteger(as: UInt16.self), let flags = content.readInteger(as: UInt8.self) else {
                return fail("FCGI_BEGIN_REQUEST shorter than 8 bytes")
            }
            let keep = flags & 1 == 1
            guard role == 1 else {
                // Only the responder role exists here; the connection stays usable when the peer keeps it.
                var out = ByteBuffer()
                FastCGIRecord.endRequest(requestID: record.requestID, appStatus: 0, protocolStatus: .unknownRole).write(into: &out)
                if !keep { state = .closed }
                return .write(out)
            }
            state = .params(id: record.requestID, keep: keep, bytes: ByteBuffer())
            return .none

        case (.params(let id, _, _), .beginRequest?), (.body(let id, _, _, _), .beginRequest?),
             (.dispatched(let id, _, _), .beginRequest?), (.lingering(let id), .beginRequest?):
            guard record.requestID != id else { return fail("a second FCGI_BEGIN_REQUEST for request \(id)") }
            // One request at a time (FCGI_MPXS_CONNS = 0): refuse the other one, keep serving ours.
            var out = ByteBuffer()
            FastCGIRecord.endRequest(requestID: record.requestID, appStatus: 0, protocolStatus: .cantMultiplex).write(into: &out)
            return .write(out)

        case (.params(let id, let keep, var bytes), .params?) where record.requestID == id:
            if record.content.readableBytes == 0 {
                let params: [String: String]
                do {
                    params = try FastCGIParams.decode(bytes)
                } catch {
                    return fail(error.description)
                }
                if let length = params["CONTENT_LENGTH"].flatMap({ Int($0) }), length > limits.maxBody {
                    // Answer 413 at once; the body that follows is read and dropped.
                    state = .dispatched(id: id, keep: keep, draining: true)
                    return .dispatch(Request(requestID: id, params: params, body: ByteBuffer(), bodyTooLarge: true))
                }
                state = .body(id: id, keep: keep, params: params, bytes: ByteBuffer())
                return .none
            }
            guard bytes.readableBytes + record.content.readableBytes <= limits.maxParams else {
                return fail("FastCGI PARAMS over \(limits.maxParams) bytes")
            }
            var content = record.content
            state = .closed  // no copy-on-write of `bytes` while it grows
            bytes.writeBuffer(&content)
            state = .params(id: id, keep: keep, bytes: bytes)
            return .none

        case (.body(let id, let keep, let params, var bytes), .stdin?) where record.requestID == id:
            if record.content.readableBytes == 0 {
                state = .dispatched(id: id, keep: keep, draining: false)
                return .dispatch(Request(requestID: id, params: params, body: bytes, bodyTooLarge: false))
            }
            guard bytes.readableBytes + record.content.readableBytes <= limits.maxBody else {
                state = .dispatched(id: id, keep: keep, draining: true)
                return .dispatch(Request(requestID: id, params: params, body: ByteBuffer(), bodyTooLarge: true))
            }
            var content = record.content
            state = .closed
            bytes.writeBuffer(&content)
            state = .body(id: id, keep: keep, params: params, bytes: bytes)
            return .none

        case (.dispatched(let id, let keep, true), .stdin?) where record.requestID == id:
            if record.content.readableBytes == 0 { state = .dispatched(id: id, keep: keep, draining: false) }
            return .none

        case (.lingering(let id), .stdin?) where record.requestID == id:
            guard record.content.readableBytes == 0 else { return .none }
            state = .closed
            return .close(nil)

        case (.dispatched(let id, _, _), .abortRequest?) where record.requestID == id:
            state = .closed
            return .abort

        case (.params(let id, _, _), .abortRequest?) where record.requestID == id,
             (.body(let id, _, _, _), .abortRequest?) where record.requestID == id,
             (.lingering(let id), .abortRequest?) where record.requestID == id:
            state = .closed
            return .close(nil)

        case (_, .data?):
            return .none  // the filter role's second stream; never dispatched here

        default:
            return fail("unexpected FastCGI record type \(record.type) for request \(record.requestID)")
        }
    }

    /// The response to the dispatched request is written: keep the connection for the next request, or close it.
    mutating func responseSent() -> Action {
        guard case .dispatched(let id, let keep, let draining) = state else { return .none }
        if draining {
            state = .lingering(id: id)
            return .none
        }
        if keep {
            state = .idle
            return .none
        }
        state = .closed
        return .close(nil)
    }

    /// The read deadline passed, or the peer closed its side.
    mutating func closed() {
        state = .closed
    }

    private mutating func fail(_ reason: String) -> Action {
        state = .closed
        return .close(FastCGIProtocolError(description: reason))
    }

    private func management(_ record: FastCGIRecord) -> Action {
        var out = ByteBuffer()
        guard record.kind == .getValues else {
            FastCGIRecord.unknownType(record.type).write(into: &out)
            return .write(out)
        }
        let asked = (try? FastCGIParams.decode(record.content)) ?? [:]
        let known = ["FCGI_MAX_CONNS": "10000", "FCGI_MAX_REQS": "10000", "FCGI_MPXS_CONNS": "0"]
        let answer = known.filter { asked[$0.key] != nil }.sorted { $0.key < $1.key }
        FastCGIRecord(.getValuesResult, requestID: 0, content: FastCGIParams.encode(answer)).write(into: &out)
        return .write(out)
    }
}
