import NIOCore
import Testing

@testable import FastCGIFront

/// Records as nginx sends them, the decoder fed byte by byte, and the connection state machine's answers.
@Suite struct FastCGIConnectionStateMachineTests {
    static func begin(_ id: UInt16, role: UInt16 = 1, keep: Bool = false) -> FastCGIRecord {
        var content = ByteBuffer()
        content.writeInteger(role)
        content.writeInteger(UInt8(keep ? 1 : 0))
        content.writeRepeatingByte(0, count: 5)
        return FastCGIRecord(.beginRequest, requestID: id, content: content)
    }

    static func params(_ id: UInt16, _ pairs: [(String, String)]) -> FastCGIRecord {
        FastCGIRecord(.params, requestID: id, content: FastCGIParams.encode(pairs))
    }

    static func stdin(_ id: UInt16, _ text: String) -> FastCGIRecord {
        FastCGIRecord(.stdin, requestID: id, content: ByteBuffer(string: text))
    }

    static func bytes(_ records: [FastCGIRecord]) -> ByteBuffer {
        var out = ByteBuffer()
        for record in records { record.write(into: &out) }
        return out
    }

    static let request: [FastCGIRecord] = [
        begin(1),
        params(1, [("REQUEST_METHOD", "POST"), ("DOCUMENT_URI", "/rest"), ("CONTENT_LENGTH", "5"),
                   ("HTTP_AUTHORIZATION", "Bearer " + String(repeating: "x", count: 200))]),
        FastCGIRecord(.params, requestID: 1),
        stdin(1, "hel"), stdin(1, "lo"),
        FastCGIRecord(.stdin, requestID: 1),
    ]

    @Test func decoderFramesRecordsFedOneByteAtATime() throws {
        let wire = Self.bytes(Self.request)
        var decoder = FastCGIRecordDecoder()
        var buffer = ByteBuffer()
        var decoded: [FastCGIRecord] = []
        for byte in wire.readableBytesView {
            buffer.writeInteger(byte)
            while let record = try decoder.decode(buffer: &buffer) { decoded.append(record) }
        }
        #expect(decoded == Self.request)
        #expect(buffer.readableBytes == 0)
    }

    @Test func decoderRefusesWhatIsNotFastCGI() {
        var decoder = FastCGIRecordDecoder()
        var buffer = ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n")
        #expect(throws: FastCGIProtocolError.self) { try decoder.decode(buffer: &buffer) }
    }

    @Test func paramsWithLongNamesAndValuesRoundTrip() throws {
        let pairs = [("A", String(repeating: "v", count: 300)), (String(repeating: "N", count: 130), ""), ("QUERY_STRING", "a=1")]
        let decoded = try FastCGIParams.decode(FastCGIParams.encode(pairs))
        #expect(decoded == Dictionary(uniqueKeysWithValues: pairs))
    }

    @Test func truncatedParamsCloseTheConnectionWithAReason() {
        var machine = FastCGIConnectionStateMachine(limits: .init(maxBody: 100))
        _ = machine.received(Self.begin(1))
        var broken = FastCGIParams.encode([("NAME", "value")])
        broken.moveWriterIndex(to: broken.writerIndex - 2)
        _ = machine.received(FastCGIRecord(.params, requestID: 1, content: broken))
        let action = machine.received(FastCGIRecord(.params, requestID: 1))
        #expect(action == .close(FastCGIProtocolError(description: "truncated FastCGI name-value pair in PARAMS")))
    }

    @Test func aCompleteRequestIsDispatchedOnceWithItsBody() {
        var machine = FastCGIConnectionStateMachine(limits: .init(maxBody: 100))
        var actions: [FastCGIConnectionStateMachine.Action] = []
        for record in Self.request {
            #expect(machine.isReading)
            actions.append(machine.received(record))
        }
        #expect(actions.dropLast().allSatisfy { $0 == .none })
        guard case .dispatch(let request) = actions.last else {
            Issue.record("not dispatched: \(actions)")
            return
        }
        #expect(request.requestID == 1 && !request.bodyTooLarge)
        #expect(String(buffer: request.body) == "hello")
        #expect(request.params["DOCUMENT_URI"] == "/rest")
        #expect(!machine.isReading)  // the read deadline stops while the API works (a long-poll)
        #expect(machine.responseSent() == .close(nil))  // no FCGI_KEEP_CONN: one request per connection
    }

    @Test func aKeptConnectionServesTheNextRequest() {
        var machine = FastCGIConnectionStateMachine(limits: .init(maxBody: 100))
        for id: UInt16 in [1, 2] {
            _ = machine.received(Self.begin(id, keep: true))
            _ = machine.received(Self.params(id, [("REQUEST_METHOD", "GET")]))
            _ = machine.received(FastCGIRecord(.params, requestID: id))
            guard case .dispatch = machine.received(FastCGIRecord(.stdin, requestID: id)) else {
                Issue.record("request \(id) not dispatched")
                return
            }
            #expect(machine.responseSent() == .none)
            #expect(machine.isIdle && machine.isReading)
        }
    }

    @Test func aBodyOverMaxBodyIsDispatchedAsTooLargeAndTheRestIsReadBeforeClosing() {
        var machine = FastCGIConnectionStateMachine(limits: .init(maxBody: 4))
        _ = machine.received(Self.begin(1))
        _ = machine.received(Self.params(1, [("REQUEST_METHOD", "POST")]))  // no CONTENT_LENGTH: found by counting
        _ = machine.received(FastCGIRecord(.params, requestID: 1))
        #expect(machine.received(Self.stdin(1, "abc")) == .none)
        guard case .dispatch(let request) = machine.received(Self.stdin(1, "defgh")) else {
            Issue.record("not dispatched at max_body")
            return
        }
        #expect(request.bodyTooLarge && request.body.readableBytes == 0)
        #expect(machine.received(Self.stdin(1, "more")) == .none)
        #expect(machine.responseSent() == .none)  // lingering: the body is still coming
        #expect(machine.isReading)
        #expect(machine.received(FastCGIRecord(.stdin, requestID: 1)) == .close(nil))
    }

    @Test func aContentLengthOverMaxBodyIsDispatchedBeforeTheBody() {
        var machine = FastCGIConnectionStateMachine(limits: .init(maxBody: 4))
        _ = machine.received(Self.begin(1))
        _ = machine.received(Self.params(1, [("CONTENT_LENGTH", "5000")]))
        guard case .dispatch(let request) = machine.received(FastCGIRecord(.params, requestID: 1)) else {
            Issue.record("not dispatched on CONTENT_LENGTH")
            return
        }
        #expect(request.bodyTooLarge)
    }

    @Test func paramsOverTheirLimitCloseTheConnection() {
        var machine = FastCGIConnectionStateMachine(limits: .init(maxParams: 64, maxBody: 100))
        _ = machine.received(Self.begin(1))
        let action = machine.received(Self.params(1, [("HTTP_X", String(repeating: "y", count: 100))]))
        #expect(action == .close(FastCGIProtocolError(description: "FastCGI PARAMS over 64 bytes")))
    }

    @Test func otherRolesAndSecondRequestsAreRefusedWithEndRequest() {
        var machine = FastCGIConnectionStateMachine(limits: .init(maxBody: 100))
        var expected = ByteBuffer()
        FastCGIRecord.endRequest(requestID: 1, appStatus: 0, protocolStatus: .unknownRole).write(into: &expected)
        #expect(machine.received(Self.begin(1, role: 2, keep: true)) == .write(expected))
        #expect(machine.isIdle)
        _ = machine.received(Self.begin(2))
        var refused = ByteBuffer()
        FastCGIRecord.endRequest(requestID: 3, appStatus: 0, protocolStatus: .cantMultiplex).write(into: &refused)
        #expect(machine.received(Self.begin(3)) == .write(refused))
    }

    @Test func abortOfADispatchedRequestCancelsIt() {
        var machine = FastCGIConnectionStateMachine(limits: .init(maxBody: 100))
        for record in Self.request { _ = machine.received(record) }
        #expect(machine.received(FastCGIRecord(.abortRequest, requestID: 1)) == .abort)
    }

    @Test func managementRecordsAreAnswered() throws {
        var machine = FastCGIConnectionStateMachine(limits: .init(maxBody: 100))
        let ask = FastCGIRecord(.getValues, requestID: 0, content: FastCGIParams.encode([("FCGI_MPXS_CONNS", "")]))
        guard case .write(var out) = machine.received(ask) else {
            Issue.record("GET_VALUES not answered")
            return
        }
        var decoder = FastCGIRecordDecoder()
        let answer = try #require(try decoder.decode(buffer: &out))
        #expect(answer.kind == .getValuesResult)
        #expect(try FastCGIParams.decode(answer.content) == ["FCGI_MPXS_CONNS": "0"])
        guard case .write = machine.received(FastCGIRecord(type: 42, requestID: 0, content: ByteBuffer())) else {
            Issue.record("unknown management type not answered")
            return
        }
    }

    @Test func responsesAreSplitIntoRecordsAndEnded() throws {
        let body = ByteBuffer(repeating: 0x61, count: 70_000)
        var wire = FastCGIRecord.response(requestID: 7, bytes: body)
        var decoder = FastCGIRecordDecoder()
        var kinds: [FastCGIRecord.Kind?] = []
        var total = 0
        while let record = try decoder.decode(buffer: &wire) {
            #expect(record.requestID == 7)
            kinds.append(record.kind)
            if record.kind == .stdout { total += record.content.readableBytes }
        }
        #expect(kinds == [.stdout, .stdout, .stdout, .endRequest])
        #expect(total == 70_000)
    }
}
