// bench/parser: stanzas per second of `XMLStreamParser` against a no-op libxml2 SAX2 push loop over the same
// bytes, in the same process, interleaved over several rounds. The ratio ours/baseline goes into
// docs/PERFORMANCE.md (goal ≥ 0.5).
//
//   ParserBench [--stanzas N] [--rounds R] [--chunk BYTES] [--seed S] [--cpu-time]
//
// --cpu-time times each contender by the thread's CPU time instead of the wall clock: on a loaded machine
// (other builds on the same cores) preemption then does not count against whichever contender it hits.
//
// The input is a deterministic, realistic component stream: a Prosody-like stream header, then N stanzas —
// chat messages (bodies, threads, chat states, receipts, XHTML-IM), presences (show, status, priority, caps,
// vCard avatar hashes, MUC), iq get/set/result (disco#info/items, version, ping, roster, pubsub), some with
// xml:lang, nested foreign namespaces and prefixed attributes, some with non-ASCII text and escaped characters,
// with whitespace keepalives between some stanzas. Both parsers get the same 4 KiB chunks.

import CLibXML2
import XMPPCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@main
enum ParserBench {
    static func main() {
        var options = Options()
        do { options = try Options.parse(Array(CommandLine.arguments.dropFirst())) } catch {
            print("error: \(error.text)")
            print("usage: ParserBench [--stanzas N] [--rounds R] [--chunk BYTES] [--seed S] [--cpu-time]")
            exitProcess(2)
        }
        xmlInitParser()

        var generator = StreamGenerator(seed: options.seed)
        let stream = generator.stream(stanzas: options.stanzas)
        let megabytes = Double(stream.count) / 1_000_000
        print("stanzad parser benchmark")
        print("  libxml2 \(XMLLibrary.version), \(options.stanzas) stanzas, \(format(megabytes, 2)) MB "
            + "(\(stream.count / options.stanzas) bytes/stanza on average), \(options.chunk)-byte chunks, "
            + "\(options.rounds) rounds (+1 warm-up), \(options.cpuTime ? "thread CPU time" : "wall clock")")
        print("  baseline: libxml2 SAX2 push parser, no-op callbacks, counting ends of depth-2 elements")
        print("  ours:     XMPPCore.XMLStreamParser.feed(_:into:), element trees for every stanza")
        print("")

        var baselineRates: [Double] = []
        var oursRates: [Double] = []
        let header = "round   baseline stanzas/s      MB/s   ours stanzas/s      MB/s   ratio"
        print(header)
        print(String(repeating: "-", count: header.count))
        for round in 0...options.rounds {
            // Alternate which one runs first so that neither always gets the warmer caches.
            var baselineTime = Duration.zero
            var oursTime = Duration.zero
            if round % 2 == 0 {
                baselineTime = measure(options.stanzas, options.cpuTime) { runBaseline(stream, chunk: options.chunk) }
                oursTime = measure(options.stanzas, options.cpuTime) { runOurs(stream, chunk: options.chunk) }
            } else {
                oursTime = measure(options.stanzas, options.cpuTime) { runOurs(stream, chunk: options.chunk) }
                baselineTime = measure(options.stanzas, options.cpuTime) { runBaseline(stream, chunk: options.chunk) }
            }
            let baseline = Double(options.stanzas) / baselineTime.seconds
            let ours = Double(options.stanzas) / oursTime.seconds
            let label = round == 0 ? "warm" : String(round)
            print(row(label, baseline, baselineRate: megabytes / baselineTime.seconds, ours,
                oursRate: megabytes / oursTime.seconds))
            if round > 0 {
                baselineRates.append(baseline)
                oursRates.append(ours)
            }
        }
        print(String(repeating: "-", count: header.count))
        let baselineMedian = median(baselineRates)
        let oursMedian = median(oursRates)
        let perStanza = megabytes / Double(options.stanzas)
        print(row("median", baselineMedian, baselineRate: baselineMedian * perStanza, oursMedian,
            oursRate: oursMedian * perStanza))
        print("")
        print("ratio: \(format(oursMedian / baselineMedian, 2))")
        jsonCodec(stream, options: options, megabytes: megabytes)
    }

    /// The JSON codec (SPEC §7) over the same stanzas: StanzaJSON.encode + serialize, and parse + StanzaJSON.decode
    /// of that JSON, each timed per round beside the libxml2 baseline, whose rate the ratios are taken against
    /// (so machine noise largely cancels in an A/B).
    static func jsonCodec(_ stream: [UInt8], options: Options, megabytes: Double) {
        let stanzas = collectStanzas(stream, chunk: options.chunk)
        let documents = stanzas.map { StanzaJSON.encode($0).serializedBytes() }
        let jsonMegabytes = Double(documents.reduce(0) { $0 + $1.count }) / 1_000_000
        print("")
        print("JSON codec: \(stanzas.count) stanzas, \(format(jsonMegabytes, 2)) MB of JSON")
        let header = "round   baseline stanzas/s   encode stanzas/s   decode stanzas/s"
        print(header)
        print(String(repeating: "-", count: header.count))
        var baselineRates: [Double] = []
        var encodeRates: [Double] = []
        var decodeRates: [Double] = []
        for round in 0...options.rounds {
            let baseline = measure(options.stanzas, options.cpuTime) { runBaseline(stream, chunk: options.chunk) }
            let encode = measure(stanzas.count, options.cpuTime) {
                var count = 0
                for stanza in stanzas where !StanzaJSON.encode(stanza).serializedBytes().isEmpty { count += 1 }
                return count
            }
            let decode = measure(stanzas.count, options.cpuTime) {
                var count = 0
                for document in documents where (try? StanzaJSON.decode(parsing: document)) != nil { count += 1 }
                return count
            }
            let rates = (Double(options.stanzas) / baseline.seconds, Double(stanzas.count) / encode.seconds,
                         Double(stanzas.count) / decode.seconds)
            print(pad(round == 0 ? "warm" : String(round), 6) + pad(format(rates.0, 0), 20, right: true)
                + pad(format(rates.1, 0), 19, right: true) + pad(format(rates.2, 0), 19, right: true))
            if round > 0 {
                baselineRates.append(rates.0)
                encodeRates.append(rates.1)
                decodeRates.append(rates.2)
            }
        }
        print(String(repeating: "-", count: header.count))
        let baseline = median(baselineRates)
        print(pad("median", 6) + pad(format(baseline, 0), 20, right: true) + pad(format(median(encodeRates), 0), 19, right: true)
            + pad(format(median(decodeRates), 0), 19, right: true))
        print("")
        print("ratio json-encode: \(format(median(encodeRates) / baseline, 3))")
        print("ratio json-decode: \(format(median(decodeRates) / baseline, 3))")
        // The same with plain chat messages (addresses, type, id, body, thread): keys every version maps, so an A/B
        // between versions compares the same work (the mixed stream's JSON grows with every key a version maps).
        var generator = StreamGenerator(seed: options.seed)
        let plain = (0..<20_000).compactMap { n -> Stanza? in
            var message = Stanza(kind: .message, type: "chat", id: "p\(n)", from: generator.jid(), to: generator.jid())
            message.element.append(Element("body", namespace: Namespace.client, text: generator.sentence()))
            if n % 3 == 0 { message.element.append(Element("thread", namespace: Namespace.client, text: "t\(n % 17)")) }
            return message
        }
        let plainDocuments = plain.map { StanzaJSON.encode($0).serializedBytes() }
        var plainEncode: [Double] = []
        var plainDecode: [Double] = []
        var plainBaseline: [Double] = []
        for round in 0...options.rounds {
            let base = measure(options.stanzas, options.cpuTime) { runBaseline(stream, chunk: options.chunk) }
            let encode = measure(plain.count, options.cpuTime) {
                var count = 0
                for stanza in plain where !StanzaJSON.encode(stanza).serializedBytes().isEmpty { count += 1 }
                return count
            }
            let decode = measure(plain.count, options.cpuTime) {
                var count = 0
                for document in plainDocuments where (try? StanzaJSON.decode(parsing: document)) != nil { count += 1 }
                return count
            }
            if round > 0 {
                plainBaseline.append(Double(options.stanzas) / base.seconds)
                plainEncode.append(Double(plain.count) / encode.seconds)
                plainDecode.append(Double(plain.count) / decode.seconds)
            }
        }
        print("plain chat messages: encode \(format(median(plainEncode), 0))/s, decode \(format(median(plainDecode), 0))/s")
        print("ratio json-encode-plain: \(format(median(plainEncode) / median(plainBaseline), 3))")
        print("ratio json-decode-plain: \(format(median(plainDecode) / median(plainBaseline), 3))")
    }

    /// Runs `body`, checks it saw every stanza, returns the time it took (wall clock or this thread's CPU time).
    static func measure(_ expected: Int, _ cpuTime: Bool, _ body: () -> Int) -> Duration {
        var count = 0
        let elapsed: Duration
        if cpuTime {
            let start = threadCPUTime()
            count = body()
            elapsed = threadCPUTime() - start
        } else {
            elapsed = ContinuousClock().measure { count = body() }
        }
        if count != expected {
            print("error: counted \(count) stanzas, expected \(expected)")
            exitProcess(1)
        }
        return elapsed
    }

    static func row(_ label: String, _ baseline: Double, baselineRate: Double, _ ours: Double, oursRate: Double) -> String {
        pad(label, 6) + pad(format(baseline, 0), 20, right: true) + pad(format(baselineRate, 1), 10, right: true)
            + pad(format(ours, 0), 17, right: true) + pad(format(oursRate, 1), 10, right: true)
            + pad(format(ours / baseline, 2), 8, right: true)
    }
}

// MARK: The two contenders

/// Our parser, fed the chunks; every completed stanza is handed over (and dropped) per chunk.
func runOurs(_ stream: [UInt8], chunk: Int) -> Int {
    let parser = XMLStreamParser(limits: XMLLimits())
    var events: [XMLStreamEvent] = []
    var stanzas = 0
    stream.withUnsafeBytes { buffer in
        var offset = 0
        while offset < buffer.count {
            let end = min(offset + chunk, buffer.count)
            do {
                try parser.feed(UnsafeRawBufferPointer(rebasing: buffer[offset..<end]), into: &events)
            } catch {
                print("error: our parser refused the stream at byte \(offset): \(error)")
                exitProcess(1)
            }
            for case .stanza in events { stanzas += 1 }
            events.removeAll(keepingCapacity: true)
            offset = end
        }
    }
    return stanzas
}

/// Every stanza of the stream, parsed once (the JSON codec's input).
func collectStanzas(_ stream: [UInt8], chunk: Int) -> [Stanza] {
    let parser = XMLStreamParser(limits: XMLLimits())
    var events: [XMLStreamEvent] = []
    var stanzas: [Stanza] = []
    stream.withUnsafeBytes { buffer in
        var offset = 0
        while offset < buffer.count {
            let end = min(offset + chunk, buffer.count)
            try? parser.feed(UnsafeRawBufferPointer(rebasing: buffer[offset..<end]), into: &events)
            for case .stanza(let element) in events {
                if let stanza = Stanza(element) { stanzas.append(stanza) }
            }
            events.removeAll(keepingCapacity: true)
            offset = end
        }
    }
    return stanzas
}

/// State of the no-op SAX loop.
struct BaselineState {
    var depth = 0
    var stanzas = 0
}

/// libxml2's push parser with SAX2 callbacks that only track depth and count ends of depth-2 elements. Same
/// parser options as `XMLStreamParser`.
func runBaseline(_ stream: [UInt8], chunk: Int) -> Int {
    var handler = xmlSAXHandler()
    handler.initialized = XML_SAX2_MAGIC
    handler.startElementNs = { ctx, _, _, _, _, _, _, _, _ in
        ctx?.assumingMemoryBound(to: BaselineState.self).pointee.depth += 1
    }
    handler.endElementNs = { ctx, _, _, _ in
        guard let state = ctx?.assumingMemoryBound(to: BaselineState.self) else { return }
        if state.pointee.depth == 2 { state.pointee.stanzas += 1 }
        state.pointee.depth -= 1
    }
    handler.characters = { _, _, _ in }
    handler.ignorableWhitespace = { _, _, _ in }
    handler.cdataBlock = { _, _, _ in }
    handler.serror = { _, _ in }

    let state = UnsafeMutablePointer<BaselineState>.allocate(capacity: 1)
    state.initialize(to: BaselineState())
    defer { state.deallocate() }
    guard let context = xmlCreatePushParserCtxt(&handler, state, nil, 0, nil) else {
        print("error: xmlCreatePushParserCtxt failed")
        exitProcess(1)
    }
    defer { xmlFreeParserCtxt(context) }
    let options = XML_PARSE_NONET.rawValue | XML_PARSE_NOERROR.rawValue | XML_PARSE_NOWARNING.rawValue
        | XML_PARSE_IGNORE_ENC.rawValue
    xmlCtxtUseOptions(context, Int32(options))
    stream.withUnsafeBytes { buffer in
        var offset = 0
        while offset < buffer.count {
            let end = min(offset + chunk, buffer.count)
            let pointer = (buffer.baseAddress! + offset).assumingMemoryBound(to: CChar.self)
            if xmlParseChunk(context, pointer, Int32(end - offset), 0) != 0 {
                print("error: libxml2 refused the stream at byte \(offset)")
                exitProcess(1)
            }
            offset = end
        }
    }
    return state.pointee.stanzas
}

// MARK: The stream

extension SplitMix {
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}

struct StreamGenerator {
    var random: SplitMix
    var counter = 0

    init(seed: UInt64) { random = SplitMix(state: seed) }

    static let users = [
        "juliet@capulet.example", "romeo@montague.example", "nurse@capulet.example", "benvolio@montague.example",
        "mercutio@verona.example", "tybalt@capulet.example", "zoë@café.example", "ana.lópez@example.es",
        "user12345@jabber.example.org", "bot@service.example.net",
    ]
    static let resources = ["balcony", "orchard", "gajim.X7Q2", "Conversations.a8Kd", "mobile", "laptop-2", "東京"]
    static let words = [
        "hello", "there", "how", "are", "you", "today", "meeting", "at", "noon", "the", "build", "is", "green",
        "again", "thanks", "see", "link", "deploy", "tomorrow", "ok", "great", "coffee", "later", "review", "please",
    ]
    static let phrases = [
        "Grüße aus München", "¿Qué tal?", "Привет, как дела?", "こんにちは、元気ですか", "你好", "שלום",
        "مرحبا", "Ça va très bien, merci", "🎉 shipped it 🚀", "👍", "naïve café résumé", "Ελληνικά",
    ]
    static let statuses = ["Out for a walk", "In a meeting", "Busy 🔴", "Working from home", "Zzz", "Déjeuner"]

    mutating func id() -> String {
        counter += 1
        return "id-\(counter)-\(String(random.next() & 0xFFFF_FFFF, radix: 36))"
    }

    mutating func jid(full: Bool = true) -> String {
        let user = random.pick(Self.users)
        return full ? user + "/" + random.pick(Self.resources) : user
    }

    mutating func sentence() -> String {
        if random.chance(20) { return random.pick(Self.phrases) }
        var text: [String] = []
        for _ in 0..<(3 + random.below(20)) { text.append(random.pick(Self.words)) }
        var sentence = text.joined(separator: " ")
        if random.chance(10) { sentence += " &amp; \"quotes\" &lt;tags&gt; it's" }
        if random.chance(5) { sentence += "\nsecond line\n  indented" }
        return sentence
    }

    mutating func stream(stanzas: Int) -> [UInt8] {
        var out = "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' "
            + "xml:lang='en' xmlns='jabber:component:accept' id='b2d8e1c0-bench' from='bench.localhost'>"
        out.reserveCapacity(stanzas * 450)
        for _ in 0..<stanzas {
            let roll = random.below(100)
            if roll < 50 {
                out += message()
            } else if roll < 80 {
                out += presence()
            } else {
                out += iq()
            }
            if random.chance(5) { out += "\n" }
        }
        return Array(out.utf8)
    }

    mutating func message() -> String {
        let lang = random.chance(15) ? " xml:lang='\(random.pick(["de", "fr", "ja", "es", "ru"]))'" : ""
        var s = "<message from='\(jid())' to='component.bench.localhost' type='chat' id='\(id())'\(lang)>"
        let kind = random.below(10)
        if kind < 2 {
            // Chat state notification only.
            s += "<\(random.pick(["composing", "paused", "active"])) xmlns='http://jabber.org/protocol/chatstates'/>"
            if random.chance(50) { s += "<no-store xmlns='urn:xmpp:hints'/>" }
        } else {
            s += "<body>\(sentence())</body>"
            if random.chance(40) { s += "<thread>\(String(random.next(), radix: 16))</thread>" }
            s += "<active xmlns='http://jabber.org/protocol/chatstates'/>"
            if random.chance(50) { s += "<request xmlns='urn:xmpp:receipts'/>" }
            if random.chance(40) { s += "<origin-id xmlns='urn:xmpp:sid:0' id='\(id())'/>" }
            if random.chance(15) {
                s += "<html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>"
                    + "<p>\(random.pick(Self.words)) <strong>\(random.pick(Self.words))</strong> "
                    + "<a href='https://example.org/?a=1&amp;b=2'>link</a></p></body></html>"
            }
            if random.chance(10) {
                s += "<x xmlns='jabber:x:oob'><url>https://upload.example/\(id())/photo.jpg</url></x>"
            }
            if random.chance(8) {
                s += "<reply xmlns='urn:xmpp:reply:0' to='\(jid())' id='\(id())'/>"
                    + "<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='0' end='12'/></fallback>"
            }
            if random.chance(5) {
                s += "<delay xmlns='urn:xmpp:delay' from='capulet.example' stamp='2026-11-22T03:14:15Z'/>"
            }
        }
        return s + "</message>"
    }

    mutating func presence() -> String {
        if random.chance(15) {
            return "<presence from='\(jid())' to='component.bench.localhost' type='unavailable'/>"
        }
        var s = "<presence from='\(jid())' to='component.bench.localhost'"
        if random.chance(20) { s += " id='\(id())'" }
        if random.chance(10) { s += " xml:lang='en'" }
        s += ">"
        if random.chance(60) { s += "<show>\(random.pick(["away", "chat", "dnd", "xa"]))</show>" }
        if random.chance(50) { s += "<status>\(random.pick(Self.statuses))</status>" }
        s += "<priority>\(random.below(50))</priority>"
        s += "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='\(random.pick(["https://gajim.org", "http://conversations.im", "https://dino.im"]))' "
            + "ver='\(String(random.next(), radix: 36))Q='/>"
        if random.chance(40) {
            s += "<x xmlns='vcard-temp:x:update'><photo>\(String(random.next(), radix: 16))\(String(random.next(), radix: 16))</photo></x>"
        }
        if random.chance(10) {
            s += "<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='member' role='participant' "
                + "jid='\(jid())'/><status code='110'/></x>"
        }
        return s + "</presence>"
    }

    mutating func iq() -> String {
        let from = jid()
        switch random.below(7) {
        case 0:
            return "<iq type='get' id='\(id())' from='\(from)' to='component.bench.localhost'>"
                + "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        case 1:
            var s = "<iq type='result' id='\(id())' from='component.bench.localhost' to='\(from)'>"
                + "<query xmlns='http://jabber.org/protocol/disco#info'>"
                + "<identity category='component' type='generic' name='Bench component'/>"
            for feature in ["http://jabber.org/protocol/disco#info", "http://jabber.org/protocol/disco#items",
                "jabber:iq:version", "urn:xmpp:ping", "urn:xmpp:time", "http://jabber.org/protocol/commands"]
            {
                s += "<feature var='\(feature)'/>"
            }
            if random.chance(30) {
                s += "<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'>"
                    + "<value>urn:xmpp:dataforms:softwareinfo</value></field>"
                    + "<field var='os'><value>Linux</value></field></x>"
            }
            return s + "</query></iq>"
        case 2:
            return "<iq type='get' id='\(id())' from='\(from)' to='component.bench.localhost'>"
                + "<query xmlns='jabber:iq:version'/></iq>"
        case 3:
            return "<iq type='result' id='\(id())' from='component.bench.localhost' to='\(from)'>"
                + "<query xmlns='jabber:iq:version'><name>stanzad</name><version>0.1.0</version>"
                + "<os>Debian GNU/Linux 12</os></query></iq>"
        case 4:
            return "<iq type='get' id='\(id())' from='\(from)' to='component.bench.localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        case 5:
            return "<iq type='result' id='\(id())' from='\(from)' to='component.bench.localhost'/>"
        default:
            // A pubsub event-ish set with prefixed attributes and deeper nesting.
            return "<iq type='set' id='\(id())' from='\(from)' to='component.bench.localhost'>"
                + "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:microblog:0'>"
                + "<item id='\(id())'><entry xmlns='http://www.w3.org/2005/Atom' xmlns:geo='http://www.georss.org/georss' "
                + "xml:lang='\(random.pick(["en", "de", "ja"]))'><title type='text'>\(sentence())</title>"
                + "<geo:point>45.256 -71.92</geo:point><published>2026-11-22T03:14:15Z</published>"
                + "<link rel='alternate' type='text/html' href='https://example.org/p/\(id())'/></entry></item>"
                + "</publish></pubsub></iq>"
        }
    }
}

// MARK: Small helpers (no Foundation)

struct Options {
    var stanzas = 50_000
    var rounds = 7
    var chunk = 4096
    var seed: UInt64 = 0x5741_4E5A_4144
    var cpuTime = false

    struct Failure: Error { let text: String }

    static func parse(_ arguments: [String]) throws(Failure) -> Options {
        var options = Options()
        var index = 0
        func value(_ name: String) throws(Failure) -> Int {
            index += 1
            guard index < arguments.count, let number = Int(arguments[index]), number > 0 else {
                throw Failure(text: "\(name) needs a positive number")
            }
            return number
        }
        while index < arguments.count {
            switch arguments[index] {
            case "--stanzas": options.stanzas = try value("--stanzas")
            case "--rounds": options.rounds = try value("--rounds")
            case "--chunk": options.chunk = try value("--chunk")
            case "--seed": options.seed = UInt64(try value("--seed"))
            case "--cpu-time": options.cpuTime = true
            default: throw Failure(text: "unknown argument \(arguments[index])")
            }
            index += 1
        }
        return options
    }
}

func threadCPUTime() -> Duration {
    var spec = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &spec)
    return .seconds(spec.tv_sec) + .nanoseconds(spec.tv_nsec)
}

extension Duration {
    var seconds: Double {
        let (s, attoseconds) = components
        return Double(s) + Double(attoseconds) / 1e18
    }
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return 0 }
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

func format(_ value: Double, _ decimals: Int) -> String {
    guard value.isFinite else { return "\(value)" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let scaled = (value * scale).rounded()
    let negative = scaled < 0
    var digits = String(Int64(abs(scaled)))
    if decimals > 0 {
        while digits.count <= decimals { digits = "0" + digits }
        digits.insert(".", at: digits.index(digits.endIndex, offsetBy: -decimals))
    }
    return (negative ? "-" : "") + digits
}

func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
    let fill = String(repeating: " ", count: max(0, width - text.count))
    return right ? fill + text : text + fill
}

func exitProcess(_ code: Int32) -> Never {
    exit(code)
}
