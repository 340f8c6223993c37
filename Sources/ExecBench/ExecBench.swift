// bench/exec: replies per second through stanzad's executor against a raw posix_spawn loop of the same
// handler at the same concurrency, in the same process, interleaved over several rounds. The ratio
// ours/baseline goes into docs/PERFORMANCE.md (goal ≥ 0.8).
//
//   ExecBench [--stanzas N] [--rounds R] [--concurrency C] [--only ours|baseline] [--phases]   (defaults: 1000, 5, 4)
//
// `--only` (for profiling) runs one contender; its ratio is then meaningless. `--phases` (for profiling) runs,
// interleaved, the baseline, ProcessRunner.run alone (session, input writer, stderr reader, deadline timer,
// group kill) and the whole dispatcher path, and prints each one's rate and our process's CPU per reply.
//
// The handler is a two-line shell script (`#!/bin/sh` + `exec cat`) in a temporary directory, run with
// format `text`: the body goes to stdin, stdout comes back as the reply's body.
//
// ours:     Dispatcher.admit + Dispatcher.run for each stanza (route match, admission gate, ProcessHandler:
//           stdin bytes, clean environment, the process-limit gate, ProcessRunner (posix_spawn into its
//           own session on the process loop's thread, which also captures stdout, reads stderr, times the
//           deadline and kills the group), output parsing, reply stamping, the per-stanza log line into a no-op log handler), C stanzas in flight from a task group.
// baseline: C OS threads (outside Swift's cooperative pool), each looping: pipe2(O_CLOEXEC) ×2, posix_spawn of
//           the script with stdin/stdout dup'd onto the pipes and the same small environment, write the body,
//           close stdin, read stdout to EOF, waitpid. Nothing else.
//
// Both check every reply's text against the stanza's body.

import Executor
import Logging
import Routing
import Synchronization
import XMPPCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@main
enum ExecBench {
    static func main() async {
        var options = Options()
        do { options = try Options.parse(Array(CommandLine.arguments.dropFirst())) } catch {
            print("error: \(error.text)")
            print("usage: ExecBench [--stanzas N] [--rounds R] [--concurrency C] [--only ours|baseline] [--phases]")
            exit(2)
        }
        // As stanzad does (ProcessRunner sets it too): a handler that closes stdin early must not end us.
        signal(SIGPIPE, SIG_IGN)

        let handler = makeHandlerScript()
        defer { removeHandlerScript(handler) }
        let stanzas = makeStanzas(options.stanzas)
        let bodies = stanzas.map { $0.body ?? "" }
        let dispatcher = makeDispatcher(script: handler.script, concurrency: options.concurrency, queue: options.stanzas)
        let environment = baselineEnvironment()

        if options.phases {
            await runPhases(options, script: handler.script, stanzas: stanzas, dispatcher: dispatcher, environment: environment)
            return
        }

        print("stanzad exec benchmark")
        print("  handler: \(handler.script) (#!/bin/sh, exec cat), format text; \(options.stanzas) stanzas per round, "
            + "concurrency \(options.concurrency), \(options.rounds) rounds (+1 warm-up)")
        print("  baseline: \(options.concurrency) threads, each posix_spawn + stdin/stdout pipes + write + read to EOF + waitpid")
        print("  ours:     Dispatcher.admit/run → ProcessHandler → ProcessRunner (posix_spawn, watching thread), \(options.concurrency) in flight")
        print("")

        var baselineRates: [Double] = []
        var oursRates: [Double] = []
        var baselineCPU: [Double] = []
        var oursCPU: [Double] = []
        let header = "round   baseline replies/s   ours replies/s   ratio   stanzad CPU µs/reply: baseline    ours"
        print(header)
        print(String(repeating: "-", count: header.count))
        for round in 0...options.rounds {
            var baseline = Sample.none
            var ours = Sample.none
            // Alternate which one runs first so that neither always follows the other.
            if round % 2 == 0 || options.only != nil {
                if options.only != "ours" {
                    baseline = Sample.take { measureBaseline(script: handler.script, bodies: bodies, environment: environment, concurrency: options.concurrency) }
                }
                if options.only != "baseline" {
                    ours = await Sample.take { await measureOurs(dispatcher, stanzas: stanzas, concurrency: options.concurrency) }
                }
            } else {
                ours = await Sample.take { await measureOurs(dispatcher, stanzas: stanzas, concurrency: options.concurrency) }
                baseline = Sample.take { measureBaseline(script: handler.script, bodies: bodies, environment: environment, concurrency: options.concurrency) }
            }
            let n = Double(options.stanzas)
            print(row(round == 0 ? "warm" : String(round), n / baseline.wall, n / ours.wall,
                      baseline.cpu / n * 1e6, ours.cpu / n * 1e6))
            if round > 0 {
                baselineRates.append(n / baseline.wall)
                oursRates.append(n / ours.wall)
                baselineCPU.append(baseline.cpu / n * 1e6)
                oursCPU.append(ours.cpu / n * 1e6)
            }
        }
        print(String(repeating: "-", count: header.count))
        let baselineMedian = median(baselineRates)
        let oursMedian = median(oursRates)
        print(row("median", baselineMedian, oursMedian, median(baselineCPU), median(oursCPU)))
        print("")
        print("baseline: \(format(baselineMedian, 0)) replies/s")
        print("ours:     \(format(oursMedian, 0)) replies/s")
        print("ratio: \(format(oursMedian / baselineMedian, 2))")
    }

    static func row(_ label: String, _ baseline: Double, _ ours: Double, _ baselineCPU: Double, _ oursCPU: Double) -> String {
        pad(label, 6) + pad(format(baseline, 0), 21, right: true) + pad(format(ours, 0), 17, right: true)
            + pad(format(ours / baseline, 2), 8, right: true) + pad(format(baselineCPU, 0), 32, right: true)
            + pad(format(oursCPU, 0), 8, right: true)
    }
}

/// One contender's round: wall time, and the CPU time (user + system, all threads) of this process only —
/// what stanzad itself spends per reply, without the handlers' own CPU.
struct Sample {
    var wall: Double
    var cpu: Double
    /// CPU of the reaped handler processes (sh, then cat), for comparison between contenders.
    var childCPU: Double = .nan

    static let none = Sample(wall: .nan, cpu: .nan)

    static func take(_ body: () -> Duration) -> Sample {
        let before = processCPU(), childrenBefore = processCPU(RUSAGE_CHILDREN)
        let wall = body().seconds
        return Sample(wall: wall, cpu: processCPU() - before, childCPU: processCPU(RUSAGE_CHILDREN) - childrenBefore)
    }

    static func take(isolation: isolated (any Actor)? = #isolation, _ body: () async -> Duration) async -> Sample {
        let before = processCPU(), childrenBefore = processCPU(RUSAGE_CHILDREN)
        let wall = await body().seconds
        return Sample(wall: wall, cpu: processCPU() - before, childCPU: processCPU(RUSAGE_CHILDREN) - childrenBefore)
    }
}

func processCPU(_ who: __rusage_who = RUSAGE_SELF) -> Double {
    var usage = rusage()
    getrusage(who.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
        + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
}

// MARK: The handler and the stanzas

struct HandlerScript {
    var directory: String
    var script: String
}

func makeHandlerScript() -> HandlerScript {
    var template = Array("/tmp/stanzad-execbench-XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
        print("error: mkdtemp failed: \(String(cString: strerror(errno)))")
        exit(1)
    }
    let directory = String(cString: made)
    let script = directory + "/echo.sh"
    let text = Array("#!/bin/sh\nexec cat\n".utf8)
    let fd = open(script, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
    guard fd >= 0, text.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == text.count else {
        print("error: cannot write \(script): \(String(cString: strerror(errno)))")
        exit(1)
    }
    close(fd)
    return HandlerScript(directory: directory, script: script)
}

func removeHandlerScript(_ handler: HandlerScript) {
    unlink(handler.script)
    rmdir(handler.directory)
}

/// N chat messages from alice@example.org/r to echo@bot.example.org, each with its own id and body.
func makeStanzas(_ count: Int) -> [Stanza] {
    let words = ["hello", "echo", "this", "please", "stanza", "number", "bench", "ok", "reply", "café", "👍"]
    var stanzas: [Stanza] = []
    stanzas.reserveCapacity(count)
    for index in 0..<count {
        var body = "message \(index):"
        for word in 0..<(3 + index % 9) { body += " " + words[(index + word * 7) % words.count] }
        let xml = "<message type='chat' id='m\(index)' from='alice@example.org/r' to='echo@bot.example.org'>"
            + "<body>\(body)</body></message>"
        do {
            guard let stanza = Stanza(try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)[0]) else {
                print("error: not a stanza: \(xml)")
                exit(1)
            }
            stanzas.append(stanza)
        } catch {
            print("error: cannot parse \(xml): \(error)")
            exit(1)
        }
    }
    return stanzas
}

// MARK: Ours: the dispatcher with one exec route

/// What RouteFactory builds for `[[route]] name="echo" to=["echo@bot.example.org"] exec=[script] format="text"`,
/// with `concurrency` = C, a queue large enough never to refuse, and `[limits] max_processes` = 64 (the default).
func makeDispatcher(script: String, concurrency: Int, queue: Int) -> Dispatcher {
    let logger = Logger(label: "stanzad.execbench", factory: { _ in SwiftLogNoOpLogHandler() })
    let processes = AdmissionGate(concurrency: 64, queue: nil)
    let handler = ProcessHandler(
        settings: .init(argv: [script], format: .text, timeout: .seconds(10), killGrace: .seconds(2),
                        parentEnvironment: ["PATH": "/usr/local/bin:/usr/bin:/bin"], workdir: "/tmp"),
        processes: processes)
    let rule = RouteRule(kinds: [.message], to: [JIDPattern("echo@bot.example.org")], requiresBody: true)
    let route = Route(name: "echo", rule: rule, handler: handler, concurrency: concurrency, queue: queue)
    let builtIns = BuiltInResponder(domain: "bot.example.org", softwareVersion: "bench")
    return Dispatcher(routes: [route], builtIns: builtIns, logger: logger)
}

/// Pushes every stanza through `admit` + `run`, `concurrency` at a time; checks each reply.
func measureOurs(_ dispatcher: Dispatcher, stanzas: [Stanza], concurrency: Int) async -> Duration {
    let clock = ContinuousClock()
    let started = clock.now
    let replies = await withTaskGroup(of: (Int, [Stanza]).self) { group in
        var next = 0
        var replies = 0
        func start() {
            let index = next
            next += 1
            let stanza = stanzas[index]
            guard case .admitted(let route) = dispatcher.admit(stanza) else {
                print("error: stanza \(index) was not admitted to the route")
                exit(1)
            }
            group.addTask { (index, await dispatcher.run(stanza, on: route)) }
        }
        while next < min(concurrency, stanzas.count) { start() }
        while let (index, answer) = await group.next() {
            guard answer.count == 1, answer[0].type == "chat", answer[0].to == "alice@example.org/r",
                  answer[0].body == stanzas[index].body
            else {
                print("error: stanza \(index): unexpected replies \(answer.map { (try? $0.serialized()) ?? "?" })")
                exit(1)
            }
            replies += 1
            if next < stanzas.count { start() }
        }
        return replies
    }
    let elapsed = clock.now - started
    if replies != stanzas.count {
        print("error: \(replies) replies, expected \(stanzas.count)")
        exit(1)
    }
    return elapsed
}

// MARK: Baseline: a raw posix_spawn loop on OS threads

/// PATH, LANG and the STANZA_* variables, about what HandlerInput.environment gives the handler.
func baselineEnvironment() -> [String] {
    ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "STANZA_KIND=message", "STANZA_TYPE=chat", "STANZA_ID=m0",
     "STANZA_FROM=alice@example.org/r", "STANZA_TO=echo@bot.example.org", "STANZAD_ROUTE=echo",
     "STANZAD_COMPONENT=bot.example.org"]
}

/// Shared by the baseline threads: the next stanza to take, and failures.
final class BaselineWork: @unchecked Sendable {
    let script: String
    let bodies: [[UInt8]]
    let environment: [String]
    let next = Atomic<Int>(0)
    let failures = Atomic<Int>(0)

    init(script: String, bodies: [String], environment: [String]) {
        self.script = script
        self.bodies = bodies.map { Array($0.utf8) }
        self.environment = environment
    }
}

func measureBaseline(script: String, bodies: [String], environment: [String], concurrency: Int) -> Duration {
    let work = BaselineWork(script: script, bodies: bodies, environment: environment)
    let clock = ContinuousClock()
    let started = clock.now
    var threads: [pthread_t] = []
    for _ in 0..<concurrency {
        let context = Unmanaged.passRetained(work).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let work = Unmanaged<BaselineWork>.fromOpaque(raw!).takeRetainedValue()
            baselineWorker(work)
            return nil
        }, context)
        guard rc == 0 else {
            print("error: pthread_create: \(rc)")
            exit(1)
        }
        threads.append(thread)
    }
    for thread in threads { pthread_join(thread, nil) }
    let elapsed = clock.now - started
    let failures = work.failures.load(ordering: .relaxed)
    if failures > 0 {
        print("error: baseline: \(failures) runs failed")
        exit(1)
    }
    return elapsed
}

func baselineWorker(_ work: BaselineWork) {
    // argv and envp as C strings, built once per thread (the loop itself allocates nothing Swift-side but the
    // output buffer).
    let argv: [UnsafeMutablePointer<CChar>?] = [strdup(work.script), nil]
    let envp: [UnsafeMutablePointer<CChar>?] = work.environment.map { strdup($0) } + [nil]
    defer {
        for pointer in argv { free(pointer) }
        for pointer in envp { free(pointer) }
    }
    var output = [UInt8](repeating: 0, count: 65_536)
    while true {
        let index = work.next.add(1, ordering: .relaxed).oldValue
        guard index < work.bodies.count else { return }
        let body = work.bodies[index]
        guard let produced = spawnOnce(argv: argv, envp: envp, input: body, output: &output), produced == body else {
            work.failures.add(1, ordering: .relaxed)
            continue
        }
    }
}

/// glibc's pipe2 (Glibc does not import it without _GNU_SOURCE). Close-on-exec pipes created atomically, so a
/// child spawned by another thread never inherits this run's pipe ends (which would delay its EOF).
let pipe2: @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32 = {
    guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "pipe2") else {
        print("error: pipe2 not found")
        exit(1)
    }
    return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32).self)
}()

/// One run: returns the handler's stdout, nil on any failure.
func spawnOnce(argv: [UnsafeMutablePointer<CChar>?], envp: [UnsafeMutablePointer<CChar>?], input: [UInt8],
               output: inout [UInt8]) -> [UInt8]? {
    var stdinPipe: [Int32] = [-1, -1]
    var stdoutPipe: [Int32] = [-1, -1]
    guard pipe2(&stdinPipe, O_CLOEXEC) == 0 else { return nil }
    guard pipe2(&stdoutPipe, O_CLOEXEC) == 0 else {
        close(stdinPipe[0]); close(stdinPipe[1])
        return nil
    }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_adddup2(&actions, stdinPipe[0], 0)
    posix_spawn_file_actions_adddup2(&actions, stdoutPipe[1], 1)
    var pid: pid_t = 0
    let rc = argv.withUnsafeBufferPointer { args in
        envp.withUnsafeBufferPointer { env in
            posix_spawn(&pid, args[0]!, &actions, nil, args.baseAddress!, env.baseAddress!)
        }
    }
    posix_spawn_file_actions_destroy(&actions)
    close(stdinPipe[0])
    close(stdoutPipe[1])
    guard rc == 0 else {
        close(stdinPipe[1]); close(stdoutPipe[0])
        return nil
    }
    var written = 0
    input.withUnsafeBytes { bytes in
        while written < bytes.count {
            let n = write(stdinPipe[1], bytes.baseAddress! + written, bytes.count - written)
            if n < 0 { if errno == EINTR { continue } else { break } }
            written += n
        }
    }
    close(stdinPipe[1])
    var result: [UInt8] = []
    output.withUnsafeMutableBytes { buffer in
        while true {
            let n = read(stdoutPipe[0], buffer.baseAddress, buffer.count)
            if n < 0 { if errno == EINTR { continue } else { break } }
            if n == 0 { break }
            result.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
    }
    close(stdoutPipe[0])
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    // WIFEXITED && WEXITSTATUS == 0
    guard status & 0x7F == 0, (status >> 8) & 0xFF == 0 else { return nil }
    return result
}

// MARK: Profiling: the layers one by one

func runPhases(_ options: Options, script: String, stanzas: [Stanza], dispatcher: Dispatcher, environment: [String]) async {
    let bodies = stanzas.map { Array(($0.body ?? "").utf8) }
    let stringBodies = stanzas.map { $0.body ?? "" }
    let processes = AdmissionGate(concurrency: 64, queue: nil)
    let handlerEnvironment = HandlerInput.environment(
        for: stanzas[0], route: "echo", component: "bot.example.org", env: [:], passEnv: [],
        parent: ["PATH": "/usr/local/bin:/usr/bin:/bin"])
    let n = Double(options.stanzas)
    let names = ["baseline (posix_spawn threads)", "ProcessRunner.run", "Dispatcher.run (ours)"]
    var rates: [[Double]] = Array(repeating: [], count: names.count)
    var cpu: [[Double]] = Array(repeating: [], count: names.count)
    var childCPU: [[Double]] = Array(repeating: [], count: names.count)
    print("stanzad exec benchmark, layers: \(options.stanzas) stanzas, concurrency \(options.concurrency), "
        + "\(options.rounds) rounds (+1 warm-up)")
    for round in 0...options.rounds {
        var order = Array(0..<names.count)
        if round % 2 == 1 { order.reverse() }
        for layer in order {
            let sample: Sample
            switch layer {
            case 0:
                sample = Sample.take { measureBaseline(script: script, bodies: stringBodies, environment: environment, concurrency: options.concurrency) }
            case 1:
                sample = await Sample.take {
                    await drive(options.stanzas, concurrency: options.concurrency) { index in
                        let spec = ProcessSpec(
                            argv: [script], environment: handlerEnvironment, workdir: "/tmp", stdin: bodies[index],
                            timeout: .seconds(10), killGrace: .seconds(2), maxOutput: 262_144)
                        guard await processes.acquire() else { return false }
                        let result = await ProcessRunner.run(spec) { _, _ in }
                        processes.release()
                        return result.ending == .exited(0) && result.stdout == bodies[index]
                    }
                }
            default:
                sample = await Sample.take { await measureOurs(dispatcher, stanzas: stanzas, concurrency: options.concurrency) }
            }
            if round > 0 {
                rates[layer].append(n / sample.wall)
                cpu[layer].append(sample.cpu / n * 1e6)
                childCPU[layer].append(sample.childCPU / n * 1e6)
            }
        }
    }
    print("")
    print(pad("layer (medians)", 34) + pad("replies/s", 12, right: true) + pad("vs baseline", 13, right: true)
        + pad("CPU µs/reply", 14, right: true) + pad("handlers' CPU µs/reply", 24, right: true))
    for layer in 0..<names.count {
        print(pad(names[layer], 34) + pad(format(median(rates[layer]), 0), 12, right: true)
            + pad(format(median(rates[layer]) / median(rates[0]), 2), 13, right: true)
            + pad(format(median(cpu[layer]), 0), 14, right: true)
            + pad(format(median(childCPU[layer]), 0), 24, right: true))
    }
}

/// Runs `one(index)` for every index, `concurrency` at a time in a task group; exits on a failed check.
func drive(_ count: Int, concurrency: Int, _ one: @escaping @Sendable (Int) async -> Bool) async -> Duration {
    let clock = ContinuousClock()
    let started = clock.now
    await withTaskGroup(of: (Int, Bool).self) { group in
        var next = 0
        while next < min(concurrency, count) {
            let index = next
            group.addTask { (index, await one(index)) }
            next += 1
        }
        while let (index, ok) = await group.next() {
            if !ok {
                print("error: run \(index) failed its check")
                exit(1)
            }
            if next < count {
                let index = next
                group.addTask { (index, await one(index)) }
                next += 1
            }
        }
    }
    return clock.now - started
}

// MARK: Small helpers

struct Options {
    var stanzas = 1000
    var rounds = 5
    var concurrency = 4
    /// Profiling aid: run only "ours" or only "baseline".
    var only: String?
    /// Profiling aid: where the time goes, layer by layer (see `runPhases`).
    var phases = false

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
            case "--concurrency": options.concurrency = try value("--concurrency")
            case "--phases": options.phases = true
            case "--only":
                index += 1
                guard index < arguments.count, ["ours", "baseline"].contains(arguments[index]) else {
                    throw Failure(text: "--only needs ours or baseline")
                }
                options.only = arguments[index]
            default: throw Failure(text: "unknown argument \(arguments[index])")
            }
            index += 1
        }
        return options
    }
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
