// The hardened XML parser on libxml2's SAX2 push interface. Takes bytes in any split and yields the
// stream header, complete stanzas and the stream close, enforcing SPEC §12 (restricted XML, no network,
// depth, per-stanza byte cap, UTF-8). On a stream, a stanza over a per-stanza limit is skipped to its end and
// reported on its own; only a broken stream fails. The same machinery parses standalone fragments (REST
// bodies, handler output) into stanzas, where any limit fails the whole fragment.

internal import CLibXML2

#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// What the parser saw.
package enum XMLStreamEvent: Hashable, Sendable {
    /// The stream header: the root element's name, namespace and attributes (no children).
    case streamOpened(Element)
    /// A complete top-level element (a stanza, or any other first-level child such as `<handshake/>`).
    case stanza(Element)
    /// `</stream:stream>`.
    case streamClosed
    /// A top-level element over a per-stanza limit (depth, attributes, size), skipped to its end without being
    /// built; the stream goes on. Streams only: in a fragment the same limits fail the parse.
    indirect case refused(RefusedStanza)
}

/// What is known of a top-level element that was refused for breaking a per-stanza limit: its name and the
/// addressing attributes of its start tag, enough to answer the sender with an error.
package struct RefusedStanza: Hashable, Sendable {
    /// The element's local name (`message`, `presence`, `iq`, or anything else at the first level).
    package var name: String
    package var namespace: String?
    package var id: String?
    package var from: String?
    package var to: String?
    package var type: String?
    /// Which limit it broke; the message says it in words ("stanza nested deeper than 64 levels").
    package var reason: XMLStreamError

    package init(
        name: String, namespace: String? = nil, id: String? = nil, from: String? = nil, to: String? = nil,
        type: String? = nil, reason: XMLStreamError
    ) {
        self.name = name
        self.namespace = namespace
        self.id = id
        self.from = from
        self.to = to
        self.type = type
        self.reason = reason
    }
}

/// Why the input was refused.
package struct XMLStreamError: Error, Hashable, Sendable, CustomStringConvertible {
    package struct Code: Hashable, Sendable, CustomStringConvertible {
        let value: String
        package var description: String { value }
        /// Malformed XML (libxml2's verdict).
        package static let notWellFormed = Code(value: "not-well-formed")
        /// A DTD, entity declaration, comment or processing instruction (RFC 6120 §11.1).
        package static let restrictedXML = Code(value: "restricted-xml")
        /// Elements nested deeper than the limit.
        package static let depthExceeded = Code(value: "depth-exceeded")
        /// One stanza larger than the byte cap.
        package static let stanzaTooLarge = Code(value: "stanza-too-large")
        /// An element with more attributes than the limit.
        package static let tooManyAttributes = Code(value: "too-many-attributes")
        /// Bytes that are not UTF-8.
        package static let invalidUTF8 = Code(value: "invalid-utf8")
        /// A fragment that must hold one stanza holds more than one root element.
        package static let multipleRoots = Code(value: "multiple-roots")
        /// A fragment with no element at all.
        package static let empty = Code(value: "empty")
        /// Character data outside any element.
        package static let textOutsideElement = Code(value: "text-outside-element")
    }

    package var code: Code
    package var message: String

    package init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    package var description: String { "\(code): \(message)" }

    /// The stream error condition to send before closing a stream that failed this way.
    package var streamCondition: String {
        switch code {
        case .restrictedXML: "restricted-xml"
        case .stanzaTooLarge, .depthExceeded, .tooManyAttributes: "policy-violation"
        case .invalidUTF8: "unsupported-encoding"
        default: "not-well-formed"
        }
    }
}

/// Limits applied while parsing.
package struct XMLLimits: Hashable, Sendable {
    /// Deepest nesting inside one stanza; the stanza element itself is level 1.
    package var maxDepth: Int
    /// Largest stanza in bytes, as received.
    package var maxStanzaBytes: Int
    /// Most attributes on one element (namespace declarations not counted). Real stanzas carry a dozen at most;
    /// libxml2 itself sets no limit.
    package var maxAttributes: Int

    package init(maxDepth: Int = 64, maxStanzaBytes: Int = 524_288, maxAttributes: Int = 64) {
        self.maxDepth = maxDepth
        self.maxStanzaBytes = maxStanzaBytes
        self.maxAttributes = maxAttributes
    }
}

/// libxml2 needs `xmlInitParser` once per process before concurrent use.
enum LibXML2 {
    static let initialized: Bool = {
        xmlInitParser()
        return true
    }()

    static var version: String { LIBXML_DOTTED_VERSION }
}

/// A push parser for one XMPP stream (one per connection: a context is never reused across streams).
/// Not thread-safe; own it from one place (e.g. one channel handler).
package final class XMLStreamParser {
    enum Mode {
        case stream
        /// Fragment parsing: the first-level element is an internal wrapper, its children are the results.
        case fragment
    }

    package let limits: XMLLimits
    let mode: Mode
    private var context: xmlParserCtxtPtr?

    // Parse state. `@exclusivity(unchecked)`: the parser is confined to one thread and no access to these
    // properties is held across a call into libxml2 (whose callbacks mutate them), so the dynamic exclusivity
    // checks Swift inserts for class properties can never fire; they cost about a seventh of the parse time.

    // Tree under construction (index 0 is the outermost open element below the root).
    @exclusivity(unchecked) private var stack: [Element] = []
    /// Character data not yet added to the innermost open element. Only the innermost element can have pending
    /// text: a child's start tag and every end tag flush it.
    @exclusivity(unchecked) private var pendingText = ByteBuffer()
    @exclusivity(unchecked) private var depth = 0  // 1 = inside the root
    /// Streams: the top-level element being skipped for breaking a per-stanza limit. While set, callbacks only
    /// count depth; the element's end tag hands it over as `.refused`. `skipping` mirrors `refusal != nil` for the
    /// hot callbacks (a Bool test instead of an optional struct's).
    @exclusivity(unchecked) private var skipping = false
    private var refusal: RefusedStanza?
    @exclusivity(unchecked) private var events: [XMLStreamEvent] = []
    @exclusivity(unchecked) private var failure: XMLStreamError?
    private var libxmlMessage: String?
    private var halted = false
    @exclusivity(unchecked) private var closed = false
    @exclusivity(unchecked) private var utf8 = UTF8Validator()
    @exclusivity(unchecked) private var bytesFed = 0
    /// Byte offset (in xmlByteConsumed terms) where the current stanza began: the end of what came before.
    @exclusivity(unchecked) private var boundary = 0
    @exclusivity(unchecked) private var names = InternedNames()
    @exclusivity(unchecked) private var values = RecentValues()
    /// libxml2's namespace and prefix pointers (dictionary strings: stable for the parser's life) and their qualifier.
    @exclusivity(unchecked) private var lastQualifier:
        (uri: UnsafePointer<xmlChar>?, prefix: UnsafePointer<xmlChar>?, qualifier: Attribute.Qualifier)?
    var wrapperCloseFed = false
    /// In fragments, the wrapper start tag shifts columns on its line; error positions are reported without it.
    var columnAdjustment: (line: Int, columns: Int)?

    /// A parser for a stream. Feed it the bytes as they arrive.
    package convenience init(limits: XMLLimits = XMLLimits()) {
        self.init(limits: limits, mode: .stream)
    }

    init(limits: XMLLimits, mode: Mode) {
        _ = LibXML2.initialized
        self.limits = limits
        self.mode = mode
        var handler = xmlSAXHandler()
        Self.install(&handler)
        let userData = Unmanaged.passUnretained(self).toOpaque()
        context = xmlCreatePushParserCtxt(&handler, userData, nil, 0, nil)
        let options =
            XML_PARSE_NONET.rawValue | XML_PARSE_NOERROR.rawValue | XML_PARSE_NOWARNING.rawValue
            | XML_PARSE_IGNORE_ENC.rawValue
        if let context { xmlCtxtUseOptions(context, Int32(options)) }
    }

    deinit {
        if let context { xmlFreeParserCtxt(context) }
        values.deallocate()
        pendingText.deallocate()
    }

    /// True once the stream has been closed or has failed; feed nothing more.
    package var isFinished: Bool { closed || failure != nil }

    /// What is held of the stanza being built: open elements and character data not yet added (for tests that
    /// check a skipped stanza is not built).
    var retained: (openElements: Int, pendingTextBytes: Int) { (stack.count, pendingText.count) }

    /// Feeds bytes; returns the events they completed. After an error the parser is finished; events
    /// completed earlier in the same call are dropped (use `feed(_:into:)` to keep them).
    package func feed(_ bytes: some Collection<UInt8>) throws(XMLStreamError) -> [XMLStreamEvent] {
        var events: [XMLStreamEvent] = []
        try feed(bytes, into: &events)
        return events
    }

    /// Feeds bytes, appending each completed event to `events` as it completes; throws at the first error,
    /// with everything completed before it already appended. After an error the parser is finished.
    package func feed(_ bytes: some Collection<UInt8>, into events: inout [XMLStreamEvent]) throws(XMLStreamError) {
        let done: Result<Void, XMLStreamError>? = bytes.withContiguousStorageIfAvailable { buffer in
            Result { () throws(XMLStreamError) in try feed(UnsafeRawBufferPointer(buffer), into: &events) }
        }
        if let done { return try done.get() }
        let copied: Result<Void, XMLStreamError> = Array(bytes).withUnsafeBytes { buffer in
            Result { () throws(XMLStreamError) in try feed(buffer, into: &events) }
        }
        try copied.get()
    }

    /// Feeds bytes from a raw buffer (see `feed(_:into:)`).
    package func feed(_ buffer: UnsafeRawBufferPointer, into output: inout [XMLStreamEvent]) throws(XMLStreamError) {
        defer { handOver(into: &output) }
        if let failure { throw failure }
        if closed {
            if buffer.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }) { return }
            throw fail(.notWellFormed, "data after the end of the stream")
        }
        guard validateUTF8(buffer) else { throw fail(.invalidUTF8, "input is not valid UTF-8") }
        // Parse in slices so the per-stanza cap is checked before a huge chunk is buffered whole.
        let slice = 16 * 1024
        var offset = 0
        while offset < buffer.count {
            let count = min(slice, buffer.count - offset)
            try parseChunk(buffer.baseAddress.map { $0 + offset }, count: count, terminate: false)
            offset += count
            if closed && offset < buffer.count {
                let rest = UnsafeRawBufferPointer(rebasing: buffer[offset...])
                if !rest.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }) {
                    throw fail(.notWellFormed, "data after the end of the stream")
                }
                break
            }
        }
    }

    /// Feeds a final empty chunk with the terminate flag (fragments only).
    func finish(into output: inout [XMLStreamEvent]) throws(XMLStreamError) {
        defer { handOver(into: &output) }
        if let failure { throw failure }
        guard utf8.isAtBoundary else { throw fail(.invalidUTF8, "input ends inside a UTF-8 sequence") }
        try parseChunk(nil, count: 0, terminate: true)
    }

    /// Appends the events completed so far to `output` and forgets them.
    private func handOver(into output: inout [XMLStreamEvent]) {
        if events.isEmpty { return }
        if output.isEmpty {
            // Hand the array over instead of copying it element by element.
            swap(&output, &events)
        } else {
            output += events
        }
        events.removeAll(keepingCapacity: true)
    }

    /// `utf8.feed(buffer)`, skipping runs of ASCII between complete sequences eight bytes at a time (the validator
    /// passes over them without changing state, so the result is the same).
    private func validateUTF8(_ buffer: UnsafeRawBufferPointer) -> Bool {
        guard let base = buffer.baseAddress else { return true }
        let count = buffer.count
        var index = 0
        while index < count {
            if utf8.isAtBoundary {
                while index + 8 <= count,
                    base.loadUnaligned(fromByteOffset: index, as: UInt64.self) & 0x8080_8080_8080_8080 == 0
                {
                    index += 8
                }
                while index < count, base.load(fromByteOffset: index, as: UInt8.self) < 0x80 { index += 1 }
                if index == count { break }
            }
            // A run of non-ASCII bytes (or, inside an unfinished sequence, at least the next byte).
            var end = index + 1
            while end < count, base.load(fromByteOffset: end, as: UInt8.self) >= 0x80 { end += 1 }
            guard utf8.feed(UnsafeRawBufferPointer(rebasing: buffer[index..<end])) else { return false }
            index = end
        }
        return true
    }

    private func parseChunk(_ pointer: UnsafeRawPointer?, count: Int, terminate: Bool) throws(XMLStreamError) {
        guard let context else { throw fail(.notWellFormed, "parser could not be created") }
        let status = xmlParseChunk(
            context, pointer?.assumingMemoryBound(to: CChar.self), Int32(count), terminate ? 1 : 0)
        bytesFed += count
        if let failure { throw failure }
        if status != 0 {
            var message = libxmlMessage ?? "malformed XML (libxml2 error \(status))"
            if let error = xmlCtxtGetLastError(context), let described = describe(error) { message = described }
            throw fail(.notWellFormed, message)
        }
        // Bytes received for the stanza being built (or held by libxml2 waiting for '>').
        if bytesFed - boundary > limits.maxStanzaBytes { try stanzaOverCap() }
    }

    /// The refusal reason for a stanza over the byte cap (one text, wherever the cap is noticed).
    private var tooLarge: XMLStreamError {
        XMLStreamError(.stanzaTooLarge, "stanza larger than \(limits.maxStanzaBytes) bytes")
    }

    /// More bytes than the cap have arrived since the current stanza began. On a stream, a stanza whose start tag
    /// has been read is skipped from here on: libxml2 goes on parsing it (bounded: it holds only what it cannot
    /// parse yet), nothing more is built. A start tag that alone outgrows the cap, which libxml2 would have to
    /// hold whole, fails the stream, as does any overflow in a fragment.
    private func stanzaOverCap() throws(XMLStreamError) {
        if mode == .fragment || (!skipping && stack.isEmpty) || bytesFed - consumed > limits.maxStanzaBytes {
            throw fail(.stanzaTooLarge, tooLarge.message)
        }
        if !skipping, let top = stack.first { beginSkipping(refused(top, tooLarge)) }
    }

    /// libxml2's message with the position (in fragments, as if the internal wrapper were not there).
    private func describe(_ error: UnsafePointer<xmlError>) -> String? {
        guard let text = error.pointee.message else { return nil }
        var column = Int(error.pointee.int2)
        if let adjust = columnAdjustment, adjust.line == Int(error.pointee.line) { column = max(1, column - adjust.columns) }
        return String(cString: text).trimmingWhitespace() + " (line \(error.pointee.line), column \(column))"
    }

    @discardableResult
    private func fail(_ code: XMLStreamError.Code, _ message: String) -> XMLStreamError {
        let error = failure ?? XMLStreamError(code, message)
        failure = error
        return error
    }

    /// Records an error from inside a callback and stops libxml2.
    private func stop(_ code: XMLStreamError.Code, _ message: String) {
        fail(code, message)
        halt()
    }

    /// Stops libxml2 (once) from inside a SAX callback, after a failure was recorded.
    private func halt() {
        guard !halted else { return }
        halted = true
        if let context { xmlStopParser(context) }
    }

    private var consumed: Int {
        guard let context else { return bytesFed }
        return Int(xmlByteConsumed(context))
    }

    private func name(_ pointer: UnsafePointer<xmlChar>?) -> String? {
        guard let pointer else { return nil }
        return names.string(pointer)
    }

    /// A namespace URI. It comes from an `xmlns` attribute value, where libxml2 hands '&' over as "&#38;" as in
    /// any attribute value (see `readAttributes`); names cannot hold '&', so the shared cache stays exact.
    private func namespace(_ pointer: UnsafePointer<xmlChar>?) -> String? {
        guard let pointer else { return nil }
        return names.string(pointer, unescapingAmpersands: true)
    }

    // MARK: SAX events

    fileprivate func startElement(
        localname: UnsafePointer<xmlChar>?, uri: UnsafePointer<xmlChar>?,
        attributeCount: Int, attributes: UnsafeMutablePointer<UnsafePointer<xmlChar>?>?
    ) {
        guard failure == nil else { return halt() }
        depth += 1
        if skipping { return }
        let elementName = name(localname) ?? ""
        let namespace = namespace(uri)
        if depth == 1 {
            if mode == .stream {
                var header = Element(elementName, namespace: namespace)
                header.attributes = readAttributes(count: attributeCount, attributes)
                events.append(.streamOpened(header))
            }
            // The start tag has been read up to its '>', which is the current byte.
            boundary = consumed + (currentByte == UInt8(ascii: ">") ? 1 : 0)
            return
        }
        if depth == 2 && mode == .stream && consumed - boundary > limits.maxStanzaBytes {
            return startTagTooLarge()
        }
        if depth - 1 > limits.maxDepth || attributeCount > limits.maxAttributes {
            return limitBroken(elementName, namespace, attributeCount, attributes)
        }
        flushText()
        stack.append(Element(elementName, namespace: namespace, attributes: readAttributes(count: attributeCount, attributes)))
    }

    /// A start tag that alone outgrows the cap: the same verdict as when libxml2 holds it across reads.
    @inline(never)
    private func startTagTooLarge() {
        stop(.stanzaTooLarge, tooLarge.message)
    }

    /// The element starting now is too deep or has too many attributes: on a stream its stanza is skipped, a
    /// fragment fails. Out of line, to keep `startElement` small.
    @inline(never)
    private func limitBroken(
        _ elementName: String, _ namespace: String?, _ attributeCount: Int,
        _ attributes: UnsafeMutablePointer<UnsafePointer<xmlChar>?>?
    ) {
        let reason =
            depth - 1 > limits.maxDepth
            ? XMLStreamError(.depthExceeded, "stanza nested deeper than \(limits.maxDepth) levels")
            : XMLStreamError(.tooManyAttributes, "element with more than \(limits.maxAttributes) attributes")
        guard mode == .stream else { return stop(reason.code, reason.message) }
        if let top = stack.first {
            beginSkipping(refused(top, reason))
        } else {
            // The top-level element itself: read only its addressing attributes.
            beginSkipping(refusedStart(elementName, namespace, attributeCount, attributes, reason))
        }
    }

    private var currentByte: UInt8? {
        guard let input = context?.pointee.input, let cur = input.pointee.cur else { return nil }
        if let end = input.pointee.end, cur >= end { return nil }
        return cur.pointee
    }

    private func readAttributes(count: Int, _ attributes: UnsafeMutablePointer<UnsafePointer<xmlChar>?>?) -> [Attribute] {
        guard count > 0, let attributes else { return [] }
        var result: [Attribute] = []
        result.reserveCapacity(count)
        for index in 0..<count {
            let base = attributes + index * 5
            guard let begin = base[3], let end = base[4] else { continue }
            let value = attributeValue(begin, end)
            let attributeName = name(base[0]) ?? ""
            result.append(Attribute(name: attributeName, value: value, qualifier: qualifier(uri: base[2], prefix: base[1])))
        }
        return result
    }

    @inline(__always)
    private func attributeValue(_ begin: UnsafePointer<xmlChar>, _ end: UnsafePointer<xmlChar>) -> String {
        let bytes = UnsafeBufferPointer(start: begin, count: max(0, end - begin))
        // libxml2 hands '&' in attribute values over as "&#38;" (and only '&'): undo exactly that.
        if bytes.contains(UInt8(ascii: "&")) { return Self.unescapingAmpersands(bytes) }
        return values.string(bytes)
    }

    // MARK: Skipping a stanza over a per-stanza limit

    private func refused(_ top: Element, _ reason: XMLStreamError) -> RefusedStanza {
        RefusedStanza(
            name: top.name, namespace: top.namespace, id: top[attribute: "id"], from: top[attribute: "from"],
            to: top[attribute: "to"], type: top[attribute: "type"], reason: reason)
    }

    /// A refused top-level element from its start tag: the addressing attributes, without building the others.
    private func refusedStart(
        _ elementName: String, _ namespace: String?, _ count: Int, _ attributes: UnsafeMutablePointer<UnsafePointer<xmlChar>?>?,
        _ reason: XMLStreamError
    ) -> RefusedStanza {
        var refused = RefusedStanza(name: elementName, namespace: namespace, reason: reason)
        guard count > 0, let attributes else { return refused }
        for index in 0..<count {
            let base = attributes + index * 5
            // Unqualified attributes only, as `Element[attribute:]` reads them.
            guard base[2] == nil, let begin = base[3], let end = base[4] else { continue }
            switch name(base[0]) {
            case "id": refused.id = attributeValue(begin, end)
            case "from": refused.from = attributeValue(begin, end)
            case "to": refused.to = attributeValue(begin, end)
            case "type": refused.type = attributeValue(begin, end)
            default: continue
            }
        }
        return refused
    }

    /// Drops what was built of the current stanza; from here on callbacks only count depth.
    private func beginSkipping(_ refused: RefusedStanza) {
        refusal = refused
        skipping = true
        stack.removeAll(keepingCapacity: true)
        pendingText.removeAll()
    }

    /// The skipped stanza's end tag: report it, and the next stanza starts here.
    private func endSkipping() {
        skipping = false
        boundary = consumed
        if let refusal { events.append(.refused(refusal)) }
        refusal = nil
    }

    /// `String(decoding: bytes, as: UTF8.self).replacingAll(libxmlAmpersand, with: "&")` in one pass over the bytes
    /// (the generic replacement costs about 3000 instructions for a URL with one '&').
    private static func unescapingAmpersands(_ bytes: UnsafeBufferPointer<UInt8>) -> String {
        String(unsafeUninitializedCapacity: bytes.count) { output in
            let count = bytes.count
            var index = 0
            var written = 0
            while index < count {
                let byte = bytes[index]
                if byte == UInt8(ascii: "&"), index + 5 <= count, bytes[index + 1] == UInt8(ascii: "#"),
                    bytes[index + 2] == UInt8(ascii: "3"), bytes[index + 3] == UInt8(ascii: "8"),
                    bytes[index + 4] == UInt8(ascii: ";")
                {
                    index += 5
                } else {
                    index += 1
                }
                output[written] = byte
                written += 1
            }
            return written
        }
    }

    /// The namespace and prefix of an attribute: nil for an unprefixed one, else shared with the last attribute
    /// that had the same ones (in practice `xml:lang`).
    private func qualifier(uri: UnsafePointer<xmlChar>?, prefix: UnsafePointer<xmlChar>?) -> Attribute.Qualifier? {
        if uri == nil && prefix == nil { return nil }
        if let last = lastQualifier, last.uri == uri, last.prefix == prefix { return last.qualifier }
        let qualifier = Attribute.Qualifier(namespace: namespace(uri), prefix: name(prefix))
        lastQualifier = (uri, prefix, qualifier)
        return qualifier
    }

    fileprivate func endElement() {
        guard failure == nil else { return halt() }
        defer { depth -= 1 }
        if skipping {
            if depth == 2 { endSkipping() }
            return
        }
        if depth == 1 {
            if mode == .fragment && !wrapperCloseFed {
                stop(.notWellFormed, "closing tag without a matching start tag")
                return
            }
            closed = true
            events.append(.streamClosed)
            return
        }
        flushText()
        guard let element = stack.popLast() else { return }
        if stack.isEmpty {
            let end = consumed
            if end - boundary > limits.maxStanzaBytes {
                guard mode == .stream else {
                    return stop(.stanzaTooLarge, "stanza of \(end - boundary) bytes is larger than \(limits.maxStanzaBytes) bytes")
                }
                // Complete before a slice ended: refused here rather than skipped.
                boundary = end
                events.append(.refused(refused(element, tooLarge)))
                return
            }
            boundary = end
            events.append(.stanza(element))
        } else {
            appendChild(.element(element))
        }
    }

    fileprivate func characters(_ pointer: UnsafePointer<xmlChar>?, _ length: Int) {
        guard failure == nil else { return halt() }
        guard let pointer, length > 0, !skipping else { return }
        if stack.isEmpty {
            // Between stanzas: whitespace keepalives are fine; anything else is not.
            let buffer = UnsafeBufferPointer(start: pointer, count: length)
            if buffer.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }) {
                if depth == 1 { boundary = max(boundary, consumed) }
                return
            }
            stop(.textOutsideElement, "character data outside a stanza")
            return
        }
        pendingText.append(pointer, count: length)
    }

    private func flushText() {
        guard !stack.isEmpty, !pendingText.isEmpty else { return }
        let text = values.string(pendingText.bytes)
        pendingText.removeAll()
        appendChild(.text(text))
    }

    /// Adds a child to the innermost open element. The first child reserves room for four: most elements with
    /// children have one to four, and growing 1 → 2 → 4 costs two reallocations and moves.
    @inline(__always)
    private func appendChild(_ node: Node) {
        let last = stack.count - 1
        if stack[last].children.isEmpty { stack[last].children.reserveCapacity(4) }
        stack[last].children.append(node)
    }

    fileprivate func restricted(_ what: String) {
        guard failure == nil else { return }
        stop(.restrictedXML, "\(what) not allowed (restricted XML)")
    }

    /// libxml2's structured error report. Most errors also make `xmlParseChunk` fail; namespace errors (an
    /// undeclared prefix, `xmlns:p=""`, a malformed QName, a reserved namespace misused) are only reported and
    /// parsing goes on with a mangled name, so they are made fatal here (RFC 6120 §11.2: namespace
    /// well-formedness). The callback only records the failure: libxml2 is in the middle of a start tag, so every
    /// SAX callback after it is ignored and the next one stops the parser.
    ///
    /// Not fatal: XML_WAR_NS_URI ("not a valid URI", reported at error level despite its name). It is no
    /// namespace constraint, and libxml2 checks the value with '&' already turned into "&#38;", so any URI with
    /// two '&' (`urn:x?a=1&b=2`) would fail it.
    fileprivate func libxmlError(_ error: UnsafePointer<xmlError>) {
        let isNamespaceError =
            error.pointee.domain == Int32(XML_FROM_NAMESPACE.rawValue)
            && error.pointee.level.rawValue >= XML_ERR_ERROR.rawValue
            && error.pointee.code != Int32(XML_WAR_NS_URI.rawValue)
        if isNamespaceError {
            if failure == nil { fail(.notWellFormed, describe(error) ?? "namespace error") }
        } else if libxmlMessage == nil, let text = error.pointee.message {
            libxmlMessage = String(cString: text).trimmingWhitespace()
        }
    }

    // MARK: Callback table

    private static func parser(_ userData: UnsafeMutableRawPointer?) -> XMLStreamParser? {
        guard let userData else { return nil }
        return Unmanaged<XMLStreamParser>.fromOpaque(userData).takeUnretainedValue()
    }

    /// The hot callbacks: the parser is kept alive by whoever called `feed`, so no retain/release per callback.
    private static func withParser(_ userData: UnsafeMutableRawPointer?, _ body: (XMLStreamParser) -> Void) {
        guard let userData else { return }
        Unmanaged<XMLStreamParser>.fromOpaque(userData)._withUnsafeGuaranteedRef(body)
    }

    private static func install(_ h: inout xmlSAXHandler) {
        h.initialized = XML_SAX2_MAGIC
        h.startElementNs = { ctx, localname, _, uri, _, _, attributeCount, _, attributes in
            XMLStreamParser.withParser(ctx) {
                $0.startElement(localname: localname, uri: uri, attributeCount: Int(attributeCount), attributes: attributes)
            }
        }
        h.endElementNs = { ctx, _, _, _ in XMLStreamParser.withParser(ctx) { $0.endElement() } }
        h.characters = { ctx, ch, len in XMLStreamParser.withParser(ctx) { $0.characters(ch, Int(len)) } }
        h.ignorableWhitespace = { ctx, ch, len in XMLStreamParser.withParser(ctx) { $0.characters(ch, Int(len)) } }
        h.cdataBlock = { ctx, ch, len in XMLStreamParser.withParser(ctx) { $0.characters(ch, Int(len)) } }
        h.comment = { ctx, _ in XMLStreamParser.parser(ctx)?.restricted("comments are") }
        h.processingInstruction = { ctx, _, _ in XMLStreamParser.parser(ctx)?.restricted("processing instructions are") }
        h.internalSubset = { ctx, _, _, _ in XMLStreamParser.parser(ctx)?.restricted("a DOCTYPE is") }
        h.externalSubset = { ctx, _, _, _ in XMLStreamParser.parser(ctx)?.restricted("an external DTD is") }
        h.entityDecl = { ctx, _, _, _, _, _ in XMLStreamParser.parser(ctx)?.restricted("entity declarations are") }
        h.unparsedEntityDecl = { ctx, _, _, _, _ in XMLStreamParser.parser(ctx)?.restricted("entity declarations are") }
        h.notationDecl = { ctx, _, _, _ in XMLStreamParser.parser(ctx)?.restricted("notation declarations are") }
        h.elementDecl = { ctx, _, _, _ in XMLStreamParser.parser(ctx)?.restricted("element declarations are") }
        h.attributeDecl = { ctx, _, _, _, _, _, _ in XMLStreamParser.parser(ctx)?.restricted("attribute declarations are") }
        h.serror = { ctx, error in
            guard let error else { return }
            XMLStreamParser.parser(ctx)?.libxmlError(error)
        }
    }
}

/// Recently seen attribute values and short texts, so that a value repeated across stanzas (a `to` JID, a caps
/// node, a disco feature) shares one String instead of allocating and decoding it again. Direct-mapped on a hash of
/// the bytes: a miss takes the slot over (its String is kept from the second sighting on). Only lengths that would need an allocation and often repeat are kept
/// (up to 15 bytes a String is stored inline). Each slot keeps a copy of its bytes for the comparison.
fileprivate struct RecentValues {
    static let slotBits = 10
    static let slotCount = 1 << slotBits
    static let kept = 16...64
    private var strings: [String] = []
    /// Per slot: the length, then the bytes (`kept.upperBound` of them).
    private var keys: UnsafeMutablePointer<UInt8>?

    static let stride = 8 + kept.upperBound

    mutating func string(_ bytes: UnsafeBufferPointer<UInt8>) -> String {
        let count = bytes.count
        guard count >= Self.kept.lowerBound, count <= Self.kept.upperBound, let base = bytes.baseAddress else {
            return Self.makeString(bytes)
        }
        let keys = self.keys ?? allocate()
        let slot = Self.slot(base, count)
        let key = keys + slot * Self.stride
        let header = UnsafeRawPointer(key).load(as: Int.self)
        if header & Self.lengthMask == count && memcmp(key + 8, base, count) == 0 {
            if header & Self.holdsString != 0 { return strings[slot] }
            // Seen for the second time: keep it.
            let value = Self.makeString(bytes)
            strings[slot] = value
            UnsafeMutableRawPointer(key).storeBytes(of: count | Self.holdsString, as: Int.self)
            return value
        }
        // Seen for the first time: remember the bytes only. Most such values (ids, hashes) never come again, and
        // keeping their String would cost an atomic retain now and an atomic release when the slot is taken over.
        UnsafeMutableRawPointer(key).storeBytes(of: count, as: Int.self)
        (key + 8).update(from: base, count: count)
        return Self.makeString(bytes)
    }

    /// `String(decoding: bytes, as: UTF8.self)`, repairing invalid UTF-8 the same way, with less work: the bytes
    /// are copied straight into the new string's storage and validated there (about 40 instructions less per
    /// string, and short ASCII strings skip validation).
    private static func makeString(_ bytes: UnsafeBufferPointer<UInt8>) -> String {
        String(unsafeUninitializedCapacity: bytes.count) { output in
            guard let target = output.baseAddress, let source = bytes.baseAddress else { return 0 }
            target.initialize(from: source, count: bytes.count)
            return bytes.count
        }
    }

    /// The slot header: the length in the low bits, and whether `strings` holds the slot's String.
    private static let lengthMask = 0xFFFF
    private static let holdsString = 0x1_0000

    private mutating func allocate() -> UnsafeMutablePointer<UInt8> {
        let keys = UnsafeMutablePointer<UInt8>.allocate(capacity: Self.slotCount * Self.stride)
        keys.initialize(repeating: 0, count: Self.slotCount * Self.stride)
        strings = Array(repeating: "", count: Self.slotCount)
        self.keys = keys
        return keys
    }

    mutating func deallocate() {
        keys?.deallocate()
        keys = nil
    }

    /// A multiplicative hash over 8-byte words (the tail as one zero-padded word).
    private static func slot(_ base: UnsafePointer<UInt8>, _ count: Int) -> Int {
        let raw = UnsafeRawPointer(base)
        var hash = UInt64(truncatingIfNeeded: count) &* 0x9E37_79B9_7F4A_7C15
        var offset = 0
        while offset + 8 <= count {
            hash = (hash ^ raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) &* 0xFF51_AFD7_ED55_8CCD
            hash ^= hash >> 32
            offset += 8
        }
        if offset < count {
            // The last 8 bytes (count >= 8), overlapping what the loop read.
            hash = (hash ^ raw.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self)) &* 0xFF51_AFD7_ED55_8CCD
        }
        return Int(truncatingIfNeeded: (hash &* 0x9E37_79B9_7F4A_7C15) >> UInt64(64 - slotBits))
    }
}

/// A growable byte buffer for pending character data: appending a text and emptying the buffer are a copy and a
/// store, where `[UInt8]`'s generic `append(contentsOf:)` and `removeAll(keepingCapacity:)` cost about 200
/// instructions per text. The owner calls `deallocate()`.
fileprivate struct ByteBuffer {
    private var base: UnsafeMutablePointer<UInt8>?
    private var capacity = 0
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }
    var bytes: UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(start: base, count: count) }

    mutating func append(_ pointer: UnsafePointer<UInt8>, count added: Int) {
        if count + added > capacity { grow(to: count + added) }
        guard let base else { return }
        (base + count).initialize(from: pointer, count: added)
        count += added
    }

    mutating func removeAll() { count = 0 }

    private mutating func grow(to needed: Int) {
        let newCapacity = max(needed, capacity * 2, 256)
        let newBase = UnsafeMutablePointer<UInt8>.allocate(capacity: newCapacity)
        if let base {
            newBase.initialize(from: base, count: count)
            base.deallocate()
        }
        base = newBase
        capacity = newCapacity
    }

    mutating func deallocate() {
        base?.deallocate()
        base = nil
        capacity = 0
        count = 0
    }
}

/// How libxml2 (without XML_PARSE_NOENT) hands over every '&' in an attribute value, including `xmlns` values:
/// "&amp;", "&#38;" and "&#x26;" in the source all arrive as this character reference, and no literal '&' does.
let libxmlAmpersand = "&#38;"

/// Strings for libxml2's interned names and namespace URIs, keyed by address: they live in the parser context's
/// dictionary, so a pointer identifies its string for the life of the parser. Open addressing with a
/// multiplicative hash (a `Dictionary` spends most of its time hashing); at most 4096 entries are kept.
fileprivate struct InternedNames {
    private var keys: [UInt] = []  // 0: empty slot
    private var values: [String] = []
    private var count = 0
    private var shift = 64

    static let maxCount = 4096

    /// Inlined: a hit is a few instructions, about as many as a call's register saving and restoring.
    @inline(__always)
    mutating func string(_ pointer: UnsafePointer<xmlChar>, unescapingAmpersands: Bool = false) -> String {
        let key = UInt(bitPattern: pointer)
        if count > 0 {
            let mask = keys.count - 1
            var slot = slot(for: key)
            while true {
                let found = keys[slot]
                if found == key { return values[slot] }
                if found == 0 { break }
                slot = (slot + 1) & mask
            }
        }
        return intern(pointer, key: key, unescapingAmpersands: unescapingAmpersands)
    }

    @inline(never)
    private mutating func intern(_ pointer: UnsafePointer<xmlChar>, key: UInt, unescapingAmpersands: Bool) -> String {
        var value = String(cString: pointer)
        if unescapingAmpersands && value.utf8.contains(UInt8(ascii: "&")) {
            value = value.replacingAll(libxmlAmpersand, with: "&")
        }
        if value.utf8.count > 15, let known = Self.wellKnown.first(where: { $0 == value }) { value = known }
        if count < Self.maxCount { insert(key, value) }
        return value
    }

    /// Namespaces most stanzas carry. Longer than 15 bytes, a String lives on the heap and every element that
    /// holds it retains and releases it, atomically; a string literal is immortal, so handing out the literal
    /// instead saves two atomic operations per element.
    static let wellKnown: [String] = [
        Namespace.client, Namespace.componentAccept, Namespace.server, Namespace.stream, Namespace.stanzas,
        Namespace.streams, Namespace.xml,
        "http://jabber.org/protocol/address", "http://jabber.org/protocol/caps",
        "http://jabber.org/protocol/chatstates", "http://jabber.org/protocol/commands",
        "http://jabber.org/protocol/disco#info", "http://jabber.org/protocol/disco#items",
        "http://jabber.org/protocol/ibb", "http://jabber.org/protocol/muc", "http://jabber.org/protocol/muc#admin",
        "http://jabber.org/protocol/muc#owner", "http://jabber.org/protocol/muc#user",
        "http://jabber.org/protocol/nick", "http://jabber.org/protocol/pubsub",
        "http://jabber.org/protocol/pubsub#event", "http://jabber.org/protocol/pubsub#owner",
        "http://jabber.org/protocol/rsm", "http://jabber.org/protocol/xhtml-im", "http://www.w3.org/1999/xhtml",
        "http://www.w3.org/2005/Atom", "jabber:iq:last", "jabber:iq:private", "jabber:iq:register",
        "jabber:iq:roster", "jabber:iq:search", "jabber:iq:version", "jabber:x:conference", "jabber:x:data",
        "jabber:x:oob", "urn:ietf:params:xml:ns:vcard-4.0", "urn:xmpp:avatar:data", "urn:xmpp:avatar:metadata",
        "urn:xmpp:bookmarks:1", "urn:xmpp:carbons:2", "urn:xmpp:chat-markers:0", "urn:xmpp:delay",
        "urn:xmpp:eme:0", "urn:xmpp:fallback:0", "urn:xmpp:forward:0", "urn:xmpp:hints",
        "urn:xmpp:http:upload:0", "urn:xmpp:idle:1", "urn:xmpp:jingle:1", "urn:xmpp:mam:2",
        "urn:xmpp:message-correct:0", "urn:xmpp:occupant-id:0", "urn:xmpp:omemo:2", "urn:xmpp:ping",
        "urn:xmpp:reactions:0", "urn:xmpp:receipts", "urn:xmpp:reply:0", "urn:xmpp:sid:0", "urn:xmpp:styling:0",
        "urn:xmpp:time", "vcard-temp:x:update",
    ]

    private func slot(for key: UInt) -> Int {
        Int(truncatingIfNeeded: (UInt64(key) &* 0x9E37_79B9_7F4A_7C15) >> UInt64(shift))
    }

    private mutating func insert(_ key: UInt, _ value: String) {
        if (count + 1) * 2 > keys.count { grow() }
        let mask = keys.count - 1
        var slot = slot(for: key)
        while keys[slot] != 0 { slot = (slot + 1) & mask }
        keys[slot] = key
        values[slot] = value
        count += 1
    }

    private mutating func grow() {
        let oldKeys = keys
        let oldValues = values
        let capacity = max(64, keys.count * 2)
        keys = Array(repeating: 0, count: capacity)
        values = Array(repeating: "", count: capacity)
        shift = 64 - capacity.trailingZeroBitCount
        count = 0
        for (key, value) in zip(oldKeys, oldValues) where key != 0 { insert(key, value) }
    }
}

// MARK: Fragments

extension XMLStreamParser {
    static let wrapperName = "stanzad-fragment-b1f4"

    /// Parses a standalone fragment (a REST body, handler output) into its top-level elements, with the same
    /// restrictions as the stream. An XML declaration at the start is allowed. `maxElements` = 1 refuses a
    /// second root. Unprefixed elements without `xmlns` get `defaultNamespace`.
    package static func parseFragment(
        _ bytes: some Collection<UInt8>, defaultNamespace: String = Namespace.client,
        limits: XMLLimits = XMLLimits(), maxElements: Int? = nil
    ) throws(XMLStreamError) -> [Element] {
        var input = Array(bytes)
        if input.starts(with: [0xEF, 0xBB, 0xBF]) { input.removeFirst(3) }
        let parser = XMLStreamParser(limits: limits, mode: .fragment)
        var index = skipWhitespace(input, from: 0)
        var prologue: [UInt8] = []
        if input[index...].starts(with: Array("<?xml".utf8)),
            index + 5 < input.count, [0x20, 0x09, 0x0A, 0x0D].contains(input[index + 5])
        {
            if let end = find(Array("?>".utf8), in: input, from: index) {
                prologue = Array(input[..<(end + 2)])
                index = skipWhitespace(input, from: end + 2)
            }
        }
        var events: [XMLStreamEvent] = []
        if !prologue.isEmpty { try parser.feed(prologue, into: &events) }
        if input[index...].starts(with: Array("<!DOCTYPE".utf8)) {
            // Let libxml2 see it where it is legal so the DTD is refused as restricted XML, not as a syntax error.
            try parser.feed(input[index...], into: &events)
            try parser.finish(into: &events)
            throw XMLStreamError(.restrictedXML, "a DOCTYPE is not allowed (restricted XML)")
        }
        var namespaceValue = ""
        try? XMLWriter.escape(defaultNamespace, attribute: true, into: &namespaceValue)
        let wrapper = Array("<\(wrapperName) xmlns=\"\(namespaceValue)\">".utf8)
        parser.columnAdjustment = (1 + prologue.count { $0 == 0x0A } + input[prologue.count..<index].count { $0 == 0x0A }, wrapper.count)
        try parser.feed(wrapper, into: &events)
        try parser.feed(input[index...], into: &events)
        parser.wrapperCloseFed = true
        do {
            try parser.feed(Array("</\(wrapperName)>".utf8), into: &events)
            try parser.finish(into: &events)
        } catch {
            // Errors found at the end name our internal wrapper; say "the end of the input" instead.
            var message = error.message.replacingAll("and \(wrapperName)", with: "and the end of the input")
            message = message.replacingAll(wrapperName, with: "the input")
            throw XMLStreamError(error.code, message)
        }
        var elements: [Element] = []
        for case .stanza(let element) in events {
            elements.append(element)
            if let maxElements, elements.count > maxElements {
                throw XMLStreamError(.multipleRoots, "expected \(maxElements == 1 ? "one element" : "at most \(maxElements) elements"), found more")
            }
        }
        guard events.contains(.streamClosed) else {
            throw XMLStreamError(.notWellFormed, "unexpected end of input")
        }
        return elements
    }

    private static func skipWhitespace(_ bytes: [UInt8], from start: Int) -> Int {
        var i = start
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x09 || bytes[i] == 0x0A || bytes[i] == 0x0D { i += 1 }
        return i
    }

    private static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
        guard needle.count <= haystack.count else { return nil }
        var i = start
        while i + needle.count <= haystack.count {
            if haystack[i] == needle[0] && Array(haystack[i..<(i + needle.count)]) == needle { return i }
            i += 1
        }
        return nil
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let c = s.first, c.isWhitespace { s.removeFirst() }
        while let c = s.last, c.isWhitespace { s.removeLast() }
        return String(s)
    }

    func replacingAll(_ target: String, with replacement: String) -> String {
        let t = Array(target.utf8)
        let bytes = Array(utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            if bytes[i] == t[0], i + t.count <= bytes.count, bytes[i..<(i + t.count)].elementsEqual(t) {
                out += replacement.utf8
                i += t.count
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Facts about the XML library in use.
package enum XMLLibrary {
    /// libxml2's version, e.g. "2.9.14".
    package static var version: String { LibXML2.version }
}
