// The stream parser as a NIO decoder: bytes in any split → stream events, limits enforced inside.

import NIOCore
import XMPPCore

/// Decodes a component stream. One decoder (and so one libxml2 context) per connection.
package final class XMLStreamDecoder: ByteToMessageDecoder {
    package typealias InboundOut = XMLStreamEvent

    private let parser: XMLStreamParser
    private var events: [XMLStreamEvent] = []

    package init(limits: XMLLimits) {
        self.parser = XMLStreamParser(limits: limits)
    }

    package func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard buffer.readableBytes > 0 else { return .needMoreData }
        events.removeAll(keepingCapacity: true)
        let result: Result<Void, XMLStreamError> = buffer.withUnsafeReadableBytes { bytes in
            Result { () throws(XMLStreamError) in try parser.feed(bytes, into: &events) }
        }
        buffer.moveReaderIndex(to: buffer.writerIndex)
        for event in events { context.fireChannelRead(wrapInboundOut(event)) }
        try result.get()
        return .needMoreData
    }

    package func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

@available(*, unavailable)
extension XMLStreamDecoder: Sendable {}
