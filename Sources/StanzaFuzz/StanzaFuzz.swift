// libFuzzer target for the XML stream parser, the serializer and the JSON mapping.
//
// Built by `scripts/fuzz` with `-sanitize=fuzzer,address -DFUZZING`: then this file exports
// `LLVMFuzzerTestOneInput` and libFuzzer provides `main`. In a normal build it is a replayer:
// `swift run StanzaFuzz crash-… corpus-dir/ …` runs every named file (or every file in a named directory)
// through the same checks, so a crash file can be debugged without the sanitizer toolchain.
//
// Input layout: byte 0 picks the mode (its low two bits), byte 1 parameterises it, the rest is the payload.
// The seed corpus (Tests/Fuzz/corpus) uses ASCII digits, so a seed reads e.g. "02<message …":
//   '0', '1'  stream:   a fixed Prosody-like stream header + payload, fed whole and in chunks; byte 1's low two
//                       bits pick the largest chunk (2, 9, 100, 1500 bytes), all of it seeds the split positions
//   '2'       fragment: `XMLStreamParser.parseFragment` on the payload; byte 1 picks maxElements, the default
//                       namespace and whether to compare with a stream parse of the same bytes
//   '3'       JSON:     `StanzaJSON.decode` on the payload, then serialize, re-parse and JSON round trips (`fuzzJSON`)
//
// Every invariant violation ends in `fatalError` with a description; libFuzzer then saves the input.

import XMPPCore

#if FUZZING

@_cdecl("LLVMFuzzerTestOneInput")
package func stanzaFuzzTestOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    FuzzTarget.run(UnsafeBufferPointer(start: data, count: size))
    return 0
}

// SwiftPM links every executable product with `--defsym main=<Module>_main` (so that tests can link the
// module), which hides libFuzzer's own `main`. Provide that symbol and hand over to libFuzzer's driver, which
// is exactly what libFuzzer's `main` does. (A plain `swiftc -sanitize=fuzzer -parse-as-library` build does
// not need this and still uses libFuzzer's `main`.)
@_silgen_name("LLVMFuzzerRunDriver")
func llvmFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

@_cdecl("StanzaFuzz_main")
package func stanzaFuzzMain(
    _ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
) -> CInt {
    var argc = argc
    var argv = argv
    return llvmFuzzerRunDriver(&argc, &argv, stanzaFuzzTestOneInput)
}

#else

import Foundation

@main
enum StanzaFuzzReplayer {
    static func main() {
        let arguments = CommandLine.arguments.dropFirst()
        if arguments.isEmpty {
            print("usage: StanzaFuzz FILE|DIR …   (replays inputs through the fuzz checks; build with -DFUZZING for libFuzzer)")
            exit(2)
        }
        var files: [String] = []
        for argument in arguments {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: argument, isDirectory: &isDirectory) else {
                print("no such file: \(argument)")
                exit(2)
            }
            if isDirectory.boolValue {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: argument)) ?? []
                files += names.sorted().map { argument + "/" + $0 }
            } else {
                files.append(argument)
            }
        }
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else {
                print("cannot read \(file)")
                exit(2)
            }
            print("replaying \(file) (\(data.count) bytes)")
            let bytes = [UInt8](data)
            bytes.withUnsafeBufferPointer { FuzzTarget.run($0) }
        }
        print("ok: \(files.count) input(s), no invariant violated")
    }
}

#endif

// MARK: The fuzz body

enum FuzzTarget {
    static func run(_ input: UnsafeBufferPointer<UInt8>) {
        guard input.count >= 2 else { return }
        let mode = input[0] & 3
        let parameter = input[1]
        let payload = Array(input[2...])
        switch mode {
        case 0, 1: fuzzStream(payload, splitSeed: parameter)
        case 2: fuzzFragment(payload, parameter: parameter)
        default: fuzzJSON(payload)
        }
    }
}

/// Limits small enough that the fuzzer reaches them.
let fuzzLimits = XMLLimits(maxDepth: 16, maxStanzaBytes: 4096)

/// What Prosody sends to a component (modulo the id).
let streamHeader = Array(
    ("<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xml:lang='en' "
        + "xmlns='jabber:component:accept' id='5f9b1c3e-fuzz' from='fuzz.localhost'>").utf8)

// MARK: Stream mode

/// Everything one way of feeding produced: the events returned, and the error that ended it, if any.
struct Outcome: Equatable, CustomStringConvertible {
    var events: [XMLStreamEvent] = []
    var error: XMLStreamError.Code?
    var message = ""

    static func == (a: Outcome, b: Outcome) -> Bool { a.events == b.events && a.error == b.error }

    var description: String {
        var lines = events.map { event -> String in
            switch event {
            case .streamOpened(let e): "  opened \(e.xmlDescription)"
            case .stanza(let e): "  stanza \(e.xmlDescription)"
            case .streamClosed: "  closed"
            case .refused(let refused): "  refused <\(refused.name)> id=\(refused.id ?? "-"): \(refused.reason)"
            }
        }
        lines.append("  error: \(error.map { "\($0) (\(message))" } ?? "none")")
        return lines.joined(separator: "\n")
    }
}

/// Feeds `bytes` cut into `chunks` (lengths summing to `bytes.count`) into one parser with `feed(_:into:)`,
/// which keeps the events completed before an error.
func feedStream(_ bytes: [UInt8], chunks: [Int]) -> Outcome {
    let parser = XMLStreamParser(limits: fuzzLimits)
    var outcome = Outcome()
    var offset = 0
    for length in chunks {
        let chunk = bytes[offset..<(offset + length)]
        offset += length
        do {
            try parser.feed(chunk, into: &outcome.events)
        } catch {
            outcome.error = error.code
            outcome.message = error.message
            checkStaysFailed(parser, error)
            return outcome
        }
    }
    return outcome
}

/// A failed parser stays failed, with the same error.
func checkStaysFailed(_ parser: XMLStreamParser, _ error: XMLStreamError) {
    guard parser.isFinished else { fatalError("parser not finished after throwing \(error)") }
    do {
        let more = try parser.feed(Array("<message/>".utf8))
        fatalError("failed parser accepted more input: \(more)")
    } catch let again {
        guard again == error else { fatalError("failed parser changed its error: \(error) then \(again)") }
    }
}

/// Chunk lengths for `count` bytes, from a small deterministic generator seeded by the input.
func splitPlan(count: Int, seed: UInt8) -> [Int] {
    let maxChunk = [2, 9, 100, 1500][Int(seed & 3)]
    var state = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(count)
    var plan: [Int] = []
    var remaining = count
    while remaining > 0 {
        // splitmix64
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        let length = min(remaining, Int(z % UInt64(maxChunk)) + 1)
        plan.append(length)
        remaining -= length
    }
    return plan
}

func fuzzStream(_ payload: [UInt8], splitSeed: UInt8) {
    let bytes = streamHeader + payload
    let whole = feedStream(bytes, chunks: [bytes.count])
    let split = feedStream(bytes, chunks: splitPlan(count: bytes.count, seed: splitSeed))

    for outcome in [whole, split] {
        checkEventOrder(outcome)
        for case .stanza(let stanza) in outcome.events { checkStanza(stanza) }
    }

    func report(_ what: String) -> Never {
        fatalError("stream mode: \(what)\nwhole:\n\(whole)\nsplit:\n\(split)")
    }

    // The array-returning `feed(_:)` agrees with `feed(_:into:)`: the same events, or the same error.
    let arrayParser = XMLStreamParser(limits: fuzzLimits)
    do {
        let events = try arrayParser.feed(bytes)
        if whole.error != nil || events != whole.events { report("feed(_:) returned \(events.count) events") }
    } catch {
        if error.code != whole.error { report("feed(_:) threw \(error)") }
        checkStaysFailed(arrayParser, error)
    }

    // After `</stream:stream>` the parser refuses any later non-whitespace chunk, while bytes after the close in
    // the chunk holding it are left to libxml2, which fails on some ("Extra content") and waits on others (an
    // unfinished comment or PI). Either way the stream is over, with the same events; errors after it may differ.
    if whole.events.last == .streamClosed && split.events == whole.events { return }

    let prefixConsistent = whole.events.starts(with: split.events) || split.events.starts(with: whole.events)
    switch (whole.error, split.error) {
    case (nil, nil):
        // Nothing failed: every split produces exactly the same events.
        if split.events != whole.events { report("split feeding differs from whole feeding") }
    case (nil, _?):
        // The whole feed may just be waiting where a chunked feed has already found the error: libxml2 checks some
        // constructs (e.g. a long unterminated CDATA section) piece by piece, and where the pieces fall depends on
        // the chunks. That is only legitimate if the input really is unfinished or wrong: closing the stream right
        // after it must not succeed.
        let closed = feedStream(bytes + Array("</stream:stream>".utf8), chunks: [bytes.count + 16])
        if (closed.error == nil && closed.events.last == .streamClosed) || !whole.events.starts(with: split.events) {
            report("split feeding fails where whole feeding does not")
        }
    case (_?, nil):
        // libxml2's push parser defers work until a byte arrives that can complete the current construct (e.g. a
        // '>' outside quotes for a tag), so a chunked feed may still be waiting for more input where the whole feed
        // already saw the error. Waiting is fine; having accepted the end of the stream, or more, is not.
        if split.events.last == .streamClosed || !whole.events.starts(with: split.events) {
            report("split feeding accepts what whole feeding refuses")
        }
    case (let a?, let b?) where a == b && a != .stanzaTooLarge && a != .invalidUTF8:
        // Events are delivered in stream order as they complete, and the error is found at the same construct.
        if split.events != whole.events { report("same error, different events") }
    case (let a?, let b?):
        // Checks made per chunk outside libxml2 may fire earlier or later than libxml2's own errors.
        if a != b && !differenceIsChunkOrder(whole, split, bytes) { report("the error depends on how the input is split") }
        if !prefixConsistent { report("the events before the error depend on how the input is split") }
    }
}

/// Some checks run per chunk, outside libxml2: UTF-8 validation of the whole chunk before parsing it, the byte
/// cap after parsing it, and "data after the end of the stream" for a chunk that arrives after the close. When the
/// input breaks one of those rules and also has an XML error, which one is reported depends on where the chunks
/// end. That is accepted (both refuse the stream), but only when the input really does break the rule.
func differenceIsChunkOrder(_ a: Outcome, _ b: Outcome, _ bytes: [UInt8]) -> Bool {
    guard let first = a.error, let second = b.error else { return false }
    let codes: Set = [first, second]
    if codes.contains(.invalidUTF8) && String(validating: bytes, as: UTF8.self) == nil { return true }
    if codes.contains(.stanzaTooLarge) && bytes.count - streamHeader.count > fuzzLimits.maxStanzaBytes { return true }
    if codes.contains(.notWellFormed) && (a.events.last == .streamClosed || b.events.last == .streamClosed) { return true }
    return false
}

/// Expected header event, parsed once from the header alone.
let expectedHeader: XMLStreamEvent = {
    guard let events = try? XMLStreamParser(limits: fuzzLimits).feed(streamHeader), events.count == 1 else {
        fatalError("the fixed stream header does not parse")
    }
    return events[0]
}()

func checkEventOrder(_ outcome: Outcome) {
    let events = outcome.events
    guard let first = events.first else { return }
    guard first == expectedHeader else { fatalError("first event is not the stream header: \(outcome)") }
    for (index, event) in events.enumerated().dropFirst() {
        switch event {
        case .streamOpened: fatalError("second stream header: \(outcome)")
        case .streamClosed where index != events.count - 1: fatalError("events after the stream close: \(outcome)")
        default: continue
        }
    }
}

// MARK: Fragment mode

func fuzzFragment(_ payload: [UInt8], parameter: UInt8) {
    let maxElements: Int? = parameter & 1 == 0 ? nil : Int(parameter >> 1 & 3)
    let namespace = parameter & 8 == 0 ? Namespace.client : "urn:example:fuzz"
    let elements: [Element]
    do {
        elements = try XMLStreamParser.parseFragment(
            payload, defaultNamespace: namespace, limits: fuzzLimits, maxElements: maxElements)
    } catch {
        return
    }
    if let maxElements, elements.count > maxElements {
        fatalError("parseFragment returned \(elements.count) elements with maxElements \(maxElements)")
    }
    for element in elements { checkStanza(element) }
    // Fragments are parsed by the same machinery as streams: the same bytes as one stanza of a stream whose
    // default namespace is the fragment's must give the same element.
    if elements.count == 1, parameter & 16 != 0 {
        var stream = Array("<stream xmlns='\(namespace)'>".utf8)
        stream += payload.drop { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
        let parser = XMLStreamParser(limits: XMLLimits())
        guard !payload.starts(with: Array("<?xml".utf8)), !payload.starts(with: [0xEF, 0xBB, 0xBF]),
            let events = try? parser.feed(stream)
        else { return }
        let stanzas = events.compactMap { event -> Element? in if case .stanza(let e) = event { e } else { nil } }
        if let first = stanzas.first, canonical(first) != canonical(elements[0]) {
            fatalError("fragment and stream parse differ:\n  fragment \(elements[0].xmlDescription)\n  stream   \(first.xmlDescription)")
        }
    }
}

// MARK: Invariants on every parsed element

/// Attribute prefixes are presentation, not content: the serializer may rename them. Compare without them.
func canonical(_ element: Element) -> Element {
    var copy = element
    for index in copy.attributes.indices where copy.attributes[index].namespace != Namespace.xml {
        copy.attributes[index].prefix = nil
    }
    copy.children = copy.children.map { node in
        if case .element(let child) = node { .element(canonical(child)) } else { node }
    }
    return copy
}

/// A parsed element serializes (unless it holds a character XML 1.0 cannot carry) and re-parses to itself;
/// its depth is within the limit and it has no empty or adjacent text nodes (the parser merges character data).
func checkStanza(_ element: Element) {
    checkShape(element, level: 1, maxDepth: fuzzLimits.maxDepth)
    let xml: String
    do {
        xml = try element.serialized()
    } catch {
        if error.code == .forbiddenCharacter { return }
        fatalError("parsed element does not serialize: \(error)\n\(String(reflecting: element))")
    }
    // The serialization may be larger than the input (escaping), so parse it without the small byte cap.
    checkReparses(element, xml, limits: XMLLimits(maxDepth: fuzzLimits.maxDepth))
    if let stanza = Stanza(element) { checkJSONOfParsed(stanza) }
}

/// `xml`, the serialization of `element`, parses back to `element` (up to attribute prefixes).
func checkReparses(_ element: Element, _ xml: String, limits: XMLLimits) {
    let reparsed: [Element]
    do {
        // The default namespace an unprefixed top element without `xmlns` takes. The XML namespace cannot be a
        // default; an element in it is written with the `xml:` prefix and needs none.
        let context = element.namespace == Namespace.xml ? "" : element.namespace ?? ""
        reparsed = try XMLStreamParser.parseFragment(
            Array(xml.utf8), defaultNamespace: context, limits: limits, maxElements: 1)
    } catch {
        fatalError("serialization does not re-parse: \(error)\n  xml: \(xml)\n  element: \(String(reflecting: element))")
    }
    guard reparsed.count == 1, canonical(reparsed[0]) == canonical(element) else {
        fatalError(
            "round trip changed the element\n  xml:      \(xml)\n  before:   \(String(reflecting: element))\n"
                + "  after:    \(reparsed.map { String(reflecting: $0) })")
    }
}

func checkShape(_ element: Element, level: Int, maxDepth: Int) {
    guard level <= maxDepth else { fatalError("element deeper than maxDepth: \(element.xmlDescription)") }
    guard !element.name.isEmpty else { fatalError("element with an empty name") }
    var previousWasText = false
    for child in element.children {
        switch child {
        case .text(let text):
            guard !text.isEmpty else { fatalError("empty text node in \(element.xmlDescription)") }
            guard !previousWasText else { fatalError("adjacent text nodes in \(String(reflecting: element))") }
            previousWasText = true
        case .element(let e):
            previousWasText = false
            checkShape(e, level: level + 1, maxDepth: maxDepth)
        }
    }
}

// MARK: JSON mode

/// JSON → stanza never crashes (a refusal is a `JSONMappingError`); whatever it accepts serializes, re-parses to
/// itself and survives the JSON round trips below. Any JSON value accepted at all round-trips through its text.
func fuzzJSON(_ bytes: [UInt8]) {
    // Any JSON value the reader accepts is written as text that reads back as the same value.
    if let value = try? JSONValue.parse(bytes) {
        let text = value.serialized()
        guard let again = try? JSONValue.parse(text), again == value else {
            fatalError("JSON mode: a value does not read back\n  input:   \(String(decoding: bytes, as: UTF8.self))\n  written: \(text)")
        }
    }
    let stanza: Stanza
    do {
        stanza = try StanzaJSON.decode(parsing: bytes)
    } catch {
        return
    }
    func report(_ what: String) -> Never {
        fatalError("JSON mode: \(what)\n  input:  \(String(decoding: bytes, as: UTF8.self))\n  stanza: \(String(reflecting: stanza.element))")
    }
    guard Namespace.isStanzaNamespace(stanza.element.namespace), Stanza(stanza.element) != nil else {
        report("decoded element is not a stanza")
    }
    // A decoded stanza carries only characters XML can carry: JSON refuses the others field by field.
    let xml: String
    do {
        xml = try stanza.serialized()
    } catch {
        report("decoded stanza does not serialize: \(error)")
    }
    // No depth or size cap here: `html` and `stanza` are parsed with the default limits one or two levels below
    // the top, and escaping makes the text longer.
    let unlimited = XMLLimits(maxDepth: .max, maxStanzaBytes: .max, maxAttributes: .max)
    checkShape(stanza.element, level: 1, maxDepth: .max)
    checkReparses(stanza.element, xml, limits: unlimited)

    // With `stanza`, the JSON form is lossless.
    checkLosslessJSON(stanza, expected: stanza.element)
    // Without it, the mapping keeps only what it knows; a stanza that came from the mapping itself (no `stanza`
    // field) must map back. For any stanza, once mapped back, the mapping is at a fixed point.
    let fromMapping = (try? JSONValue.parse(bytes))?["stanza"]?.stringValue == nil
    checkLossyJSON(stanza, mustDecode: fromMapping)
}

/// A parsed stanza (stream or fragment mode) through JSON: the lossless form decodes to the same stanza, as the
/// REST API and the handlers would see it (in `jabber:client`, like any stanza XML without `xmlns`).
func checkJSONOfParsed(_ stanza: Stanza) {
    // `decode` refuses a `stanza` whose to/from are not JIDs; that is the mapping's rule, not a round-trip failure.
    for name in ["to", "from"] {
        if let value = stanza.element[attribute: name], (try? JID(value)) == nil { return }
    }
    guard (try? stanza.serialized()) != nil else { return }  // `encode` then leaves `stanza` out
    checkLosslessJSON(stanza, expected: rebased(stanza.element, from: stanza.element.namespace, to: Namespace.client))
    checkLossyJSON(stanza, mustDecode: false)
}

func checkLosslessJSON(_ stanza: Stanza, expected: Element) {
    let json = StanzaJSON.encode(stanza, includeStanza: true)
    let text = json.serializedBytes()
    do {
        let decoded = try StanzaJSON.decode(parsing: text)
        if canonical(decoded.element) != canonical(expected) {
            fatalError(
                "JSON with \"stanza\" does not decode to the same stanza\n  json:    \(json)\n"
                    + "  before:  \(String(reflecting: expected))\n  after:   \(String(reflecting: decoded.element))")
        }
    } catch {
        fatalError("JSON with \"stanza\" does not decode: \(error)\n  json: \(json)\n  stanza: \(String(reflecting: stanza.element))")
    }
}

/// encode → decode → encode → decode → encode: the second and third JSON forms are equal (the first may still
/// lose what the mapping cannot hold, or gain defaults such as `undefined-condition`).
func checkLossyJSON(_ stanza: Stanza, mustDecode: Bool) {
    let first = StanzaJSON.encode(stanza)
    let second: JSONValue
    do {
        let decoded = try StanzaJSON.decode(parsing: first.serializedBytes())
        second = StanzaJSON.encode(decoded)
    } catch {
        if mustDecode { fatalError("the JSON form of a decoded stanza does not decode: \(error)\n  json: \(first)") }
        return
    }
    do {
        let decoded = try StanzaJSON.decode(parsing: second.serializedBytes())
        let third = StanzaJSON.encode(decoded)
        if third != second {
            fatalError("the JSON mapping is not at a fixed point\n  first:  \(first)\n  second: \(second)\n  third:  \(third)")
        }
    } catch {
        fatalError("re-encoded JSON does not decode: \(error)\n  first:  \(first)\n  second: \(second)")
    }
}

/// `element` with the namespace `old` replaced by `new` where it is inherited from the top, as when XML written
/// without the top `xmlns` is read in a context whose default namespace is `new`.
func rebased(_ element: Element, from old: String?, to new: String) -> Element {
    guard element.namespace == old else { return element }
    var copy = element
    copy.namespace = new
    copy.children = copy.children.map { node in
        if case .element(let child) = node { .element(rebased(child, from: old, to: new)) } else { node }
    }
    return copy
}
