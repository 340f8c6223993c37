// FastCGI 1.0 records (the responder side): framing, name-value pairs, and the records we write.
// The decoder only frames; what a record means for a connection is FastCGIConnectionStateMachine's job.

import NIOCore

/// One FastCGI record: type, request id, content (padding already dropped).
struct FastCGIRecord: Sendable, Equatable {
    enum Kind: UInt8, Sendable {
        case beginRequest = 1, abortRequest, endRequest, params, stdin, stdout, stderr, data, getValues, getValuesResult, unknownType
    }

    /// The raw type byte: unknown types are answered with FCGI_UNKNOWN_TYPE, so they are kept, not rejected.
    var type: UInt8
    var requestID: UInt16
    var content: ByteBuffer

    var kind: Kind? { Kind(rawValue: type) }

    init(type: UInt8, requestID: UInt16, content: ByteBuffer) {
        self.type = type
        self.requestID = requestID
        self.content = content
    }

    init(_ kind: Kind, requestID: UInt16, content: ByteBuffer = ByteBuffer()) {
        self.init(type: kind.rawValue, requestID: requestID, content: content)
    }

    static let headerLength = 8
    static let maxContent = 65_535

    /// Appends this record (header, content, padding to a multiple of 8) to `buffer`.
    func write(into buffer: inout ByteBuffer) {
        precondition(content.readableBytes <= Self.maxContent, "FastCGI record content over 65535 bytes")
        let length = content.readableBytes
        let padding = (8 - length % 8) % 8
        buffer.writeInteger(UInt8(1))
        buffer.writeInteger(type)
        buffer.writeInteger(requestID)
        buffer.writeInteger(UInt16(length))
        buffer.writeInteger(UInt8(padding))
        buffer.writeInteger(UInt8(0))
        var content = content
        buffer.writeBuffer(&content)
        buffer.writeRepeatingByte(0, count: padding)
    }

    /// STDOUT records for `bytes` (split at the record limit), then the empty STDOUT record and END_REQUEST.
    static func response(requestID: UInt16, bytes: ByteBuffer, appStatus: UInt32 = 0) -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(bytes.readableBytes + (bytes.readableBytes / 65_528 + 3) * 16)
        var rest = bytes
        while rest.readableBytes > 0, let chunk = rest.readSlice(length: min(rest.readableBytes, 65_528)) {
            FastCGIRecord(.stdout, requestID: requestID, content: chunk).write(into: &out)
        }
        FastCGIRecord(.stdout, requestID: requestID).write(into: &out)
        endRequest(requestID: requestID, appStatus: appStatus, protocolStatus: .requestComplete).write(into: &out)
        return out
    }

    enum ProtocolStatus: UInt8 {
        case requestComplete = 0, cantMultiplex, overloaded, unknownRole
    }

    static func endRequest(requestID: UInt16, appStatus: UInt32, protocolStatus: ProtocolStatus) -> FastCGIRecord {
        var content = ByteBuffer()
        content.writeInteger(appStatus)
        content.writeInteger(protocolStatus.rawValue)
        content.writeRepeatingByte(0, count: 3)
        return FastCGIRecord(.endRequest, requestID: requestID, content: content)
    }

    static func unknownType(_ type: UInt8) -> FastCGIRecord {
        var content = ByteBuffer()
        content.writeInteger(type)
        content.writeRepeatingByte(0, count: 7)
        return FastCGIRecord(.unknownType, requestID: 0, content: content)
    }
}

/// Why a connection's bytes are not FastCGI.
struct FastCGIProtocolError: Error, Equatable, CustomStringConvertible {
    var description: String
}

/// Frames records. A record is at most 8 + 65535 + 255 bytes, so a peer can make us hold no more than that.
struct FastCGIRecordDecoder: NIOSingleStepByteToMessageDecoder {
    typealias InboundOut = FastCGIRecord

    mutating func decode(buffer: inout ByteBuffer) throws -> FastCGIRecord? {
        guard buffer.readableBytes >= FastCGIRecord.headerLength,
              let version = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
              let type = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self),
              let requestID = buffer.getInteger(at: buffer.readerIndex + 2, as: UInt16.self),
              let length = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt16.self),
              let padding = buffer.getInteger(at: buffer.readerIndex + 6, as: UInt8.self)
        else { return nil }
        guard version == 1 else {
            throw FastCGIProtocolError(description: "FastCGI version \(version) (only version 1 exists): the peer does not speak FastCGI")
        }
        let total = FastCGIRecord.headerLength + Int(length) + Int(padding)
        guard buffer.readableBytes >= total else { return nil }
        buffer.moveReaderIndex(forwardBy: FastCGIRecord.headerLength)
        guard let content = buffer.readSlice(length: Int(length)) else { return nil }
        buffer.moveReaderIndex(forwardBy: Int(padding))
        return FastCGIRecord(type: type, requestID: requestID, content: content)
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> FastCGIRecord? {
        try decode(buffer: &buffer)
    }
}

/// FastCGI name-value pairs (PARAMS and GET_VALUES content).
enum FastCGIParams {
    /// Decodes the concatenated PARAMS stream. Names and values are bytes; non-UTF-8 is repaired (U+FFFD), as the
    /// REST API validates what it uses.
    static func decode(_ bytes: ByteBuffer) throws(FastCGIProtocolError) -> [String: String] {
        var buffer = bytes
        var params: [String: String] = [:]
        while buffer.readableBytes > 0 {
            guard let nameLength = readLength(&buffer), let valueLength = readLength(&buffer),
                  let name = buffer.readString(length: nameLength), let value = buffer.readString(length: valueLength)
            else {
                throw FastCGIProtocolError(description: "truncated FastCGI name-value pair in PARAMS")
            }
            params[name] = value
        }
        return params
    }

    private static func readLength(_ buffer: inout ByteBuffer) -> Int? {
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
        if first & 0x80 == 0 {
            buffer.moveReaderIndex(forwardBy: 1)
            return Int(first)
        }
        guard let long = buffer.readInteger(as: UInt32.self) else { return nil }
        return Int(long & 0x7fff_ffff)
    }

    static func encode(_ pairs: [(String, String)]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for (name, value) in pairs {
            for length in [name.utf8.count, value.utf8.count] {
                if length < 128 {
                    buffer.writeInteger(UInt8(length))
                } else {
                    buffer.writeInteger(UInt32(length) | 0x8000_0000)
                }
            }
            buffer.writeString(name)
            buffer.writeString(value)
        }
        return buffer
    }
}
