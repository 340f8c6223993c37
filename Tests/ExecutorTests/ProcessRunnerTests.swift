// Real processes, no XMPP: the failure modes of research/executor-anchors.md that a handler run must survive.

import Foundation
import Logging
import Routing
import Testing
import XMPPCore

@testable import Executor

private func spec(_ script: String, stdin: String = "", timeout: Duration = .seconds(10), maxOutput: Int = 262_144) -> ProcessSpec {
    ProcessSpec(
        argv: ["/bin/sh", "-c", script], environment: ["PATH": "/usr/bin:/bin"], workdir: "/tmp", stdin: Array(stdin.utf8),
        timeout: timeout, killGrace: .milliseconds(500), maxOutput: maxOutput)
}

private func run(_ spec: ProcessSpec, stderrLine: @escaping @Sendable (String, Int32) -> Void = { _, _ in }) async -> (ProcessResult, [String]) {
    let lines = LineLog()
    let result = await ProcessRunner.run(spec) { line, pid in
        lines.append(line)
        stderrLine(line, pid)
    }
    return (result, lines.items)
}

/// Live processes whose argv is exactly `argv`.
private func processes(withCommandLine argv: [String]) -> [Int32] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    let wanted = Data(argv.joined(separator: "\0").utf8) + Data([0])
    return entries.compactMap { Int32($0) }.filter { pid in
        (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) == wanted
    }
}

/// Live (not zombie) processes whose process group is `group`.
private func liveMembers(ofGroup group: Int32) -> [Int32] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap { Int32($0) }.filter { pid in
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 2 && fields[0] != "Z" && Int32(fields[2]) == group
    }
}

/// Waits (up to 3 s) until the group has no live member: SIGKILL is sent before `run` returns, but the
/// kernel takes a moment to end the processes, more so on a loaded machine.
private func groupEmpties(_ group: Int32) async -> Bool {
    let deadline = ContinuousClock.now + .seconds(3)
    while !liveMembers(ofGroup: group).isEmpty {
        if ContinuousClock.now > deadline { return false }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return true
}

final class LineLog: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [String] = []
    func append(_ line: String) { lock.withLock { storage.append(line) } }
    var items: [String] { lock.withLock { storage } }
}

@Suite struct ProcessRunnerTests {
    @Test func stdinToStdout() async {
        let (result, _) = await run(spec("cat", stdin: "hello"))
        #expect(result.ending == .exited(0))
        #expect(String(decoding: result.stdout, as: UTF8.self) == "hello")
    }

    @Test func exitStatusAndStderrLines() async {
        let (result, lines) = await run(spec("echo one >&2; printf 'two\\nthree' >&2; exit 77"))
        #expect(result.ending == .exited(77))
        #expect(lines == ["one", "two", "three"])
    }

    @Test func killedBySignal() async {
        let (result, _) = await run(spec("kill -9 $$"))
        #expect(result.ending == .signaled(9))
    }

    @Test func handlerNotReadingStdinStillAnswers() async {
        let (result, _) = await run(spec("echo done", stdin: String(repeating: "x", count: 300_000)))
        #expect(result.ending == .exited(0))
        #expect(String(decoding: result.stdout, as: UTF8.self) == "done\n")
    }

    @Test func timeoutKillsTheWholeGroup() async throws {
        let (result, _) = await run(spec("for i in $(seq 50); do sleep 300 & done; sleep 300", timeout: .milliseconds(500)))
        #expect(result.ending == .timedOut)
        #expect(result.duration < .seconds(5))
        let group = try #require(result.pid)
        #expect(await groupEmpties(group))
    }

    @Test func timeoutEscalatesToSIGKILLWhenTERMIsIgnored() async {
        let (result, _) = await run(spec("trap '' TERM; sleep 300 & wait; sleep 300", timeout: .milliseconds(300)))
        #expect(result.ending == .timedOut)
        #expect(result.duration < .seconds(5))
    }

    @Test func outputOverTheCapStopsTheHandler() async {
        let (result, _) = await run(spec("head -c 10000000 /dev/zero", maxOutput: 262_144))
        #expect(result.ending == .outputTooLarge)
    }

    @Test func grandchildHoldingStdoutNeitherDelaysTheReplyNorSurvives() async throws {
        let (result, _) = await run(spec("echo reply; (sleep 300) & exit 0"))
        #expect(result.ending == .exited(0))
        #expect(String(decoding: result.stdout, as: UTF8.self) == "reply\n")
        #expect(result.duration < .seconds(5))
        let group = try #require(result.pid)
        #expect(await groupEmpties(group))
    }

    @Test func aDaemonThatEscapedTheGroupWithSetsidDoesNotSurviveTheHandler() async throws {
        #expect(OrphanReaper.adoptOrphans(), "stanzad is the subreaper of what its handlers leave behind")
        // setsid leaves the handler's session; its shell backgrounds a sleep and exits (a double fork), so the
        // sleep is orphaned while the handler still runs, and it keeps the handler's stdout open.
        let marker = "300.\(UInt32.random(in: 100_000...999_999))"
        let (result, _) = await run(spec("setsid sh -c 'sleep \(marker) &'; echo reply"))
        defer { for pid in processes(withCommandLine: ["sleep", marker]) { kill(pid, SIGKILL) } }
        #expect(result.ending == .exited(0))
        #expect(String(decoding: result.stdout, as: UTF8.self) == "reply\n")
        // Killed and reaped before `run` returned: nothing to wait for.
        #expect(processes(withCommandLine: ["sleep", marker]).isEmpty, "the escaped sleep was killed and reaped")
        print("escaped daemon: reply after \(result.duration)")
    }

    @Test func aHandlerReapedBySomeoneElseIsNotASuccess() async throws {
        // The stderr callback runs on the thread watching the handler: reaping the handler there, before that
        // thread learns of its exit, leaves it only ECHILD.
        let (result, _) = await run(spec("echo reply; echo up >&2; exec 2>&-; exit 0"), stderrLine: { line, pid in
            guard line == "up" else { return }
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
        })
        #expect(result.ending == .statusLost)
        #expect(result.stdout.isEmpty, "the output of a handler whose ending is unknown is not a reply")
        let handler = ProcessHandler(settings: .init(argv: ["/bin/true"], format: .text), processes: AdmissionGate(concurrency: 1, queue: nil))
        let xml = "<message from='a@example.org/r' to='bot.example.org' type='chat' id='m1'><body>hi</body></message>"
        let incoming = try #require(Stanza(try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)[0]))
        let outcome = handler.outcome(of: result, for: incoming, logger: Logger(label: "test"))
        #expect(outcome.replies.isEmpty)
        #expect(outcome.failure?.type == .cancel)
        #expect(outcome.failure?.condition == .internalServerError)
    }

    @Test func missingExecutableIsASpawnFailure() async {
        let result = await ProcessRunner.run(ProcessSpec(
            argv: ["/nonexistent/handler"], environment: [:], workdir: "/tmp", stdin: [], timeout: .seconds(5),
            killGrace: .seconds(1), maxOutput: 100)) { _, _ in }
        guard case .spawnFailed = result.ending else {
            Issue.record("expected spawnFailed, got \(result.ending)")
            return
        }
    }

    @Test func ownSessionAndOnlyTheGivenEnvironment() async {
        let (result, _) = await run(spec("ps -o sid= -p $$ | tr -d ' '; echo $$; env | sort"))
        let lines = String(decoding: result.stdout, as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(lines.count >= 3)
        #expect(lines[0] == lines[1], "session id equals the handler's pid")
        let env = lines.dropFirst(2).filter { !$0.hasPrefix("PWD=") && !$0.hasPrefix("SHLVL=") && !$0.hasPrefix("_=") }
        #expect(env == ["PATH=/usr/bin:/bin"])
    }

    @Test(.timeLimit(.minutes(1))) func cancellingTheCallerStopsTheWholeGroup() async throws {
        // The handler and a background child announce themselves on stderr, then sleep far past any test.
        let started = AsyncStream<Int32>.makeStream()
        let task = Task {
            await ProcessRunner.run(spec("sleep 300 & echo up >&2; sleep 300", timeout: .seconds(300))) { line, pid in
                if line == "up" { started.continuation.yield(pid) }
            }
        }
        var announced: Int32?
        for await pid in started.stream {
            announced = pid
            break
        }
        let group = try #require(announced)
        let clock = ContinuousClock.now
        task.cancel()
        let result = await task.value
        #expect(ContinuousClock.now - clock < .seconds(5), "SIGTERM ends sh at once; no wait for the timeout")
        #expect(result.ending == .signaled(15))
        #expect(await groupEmpties(group))
    }

    @Test func commandsWithoutASlashAreSearchedInTheHandlersPath() async {
        var byName = spec("")
        byName.argv = ["printf", "found"]
        let (found, _) = await run(byName)
        #expect(found.ending == .exited(0))
        #expect(String(decoding: found.stdout, as: UTF8.self) == "found")

        byName.environment = ["PATH": "/nonexistent"]
        let (missing, _) = await run(byName)
        #expect(missing.ending == .spawnFailed("printf: not found in PATH"))
    }
}

@Suite struct ProcessLimitAtShutdownTests {
    static func waiting(for marker: String) throws -> (ProcessHandler, AdmissionGate, Task<HandlerOutcome, Never>) {
        let processes = AdmissionGate(concurrency: 1, queue: nil)
        #expect(processes.tryAcquire(), "the only process slot is taken")
        let handler = ProcessHandler(settings: .init(argv: ["/bin/sh", "-c", "touch \(marker)"], format: .text), processes: processes)
        let xml = "<message from='a@example.org/r' to='bot.example.org' type='chat' id='m1'><body>hi</body></message>"
        let incoming = try #require(Stanza(try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1)[0]))
        let context = HandlerContext(route: "r", component: "bot.example.org", logger: Logger(label: "test"))
        return (handler, processes, Task { await handler.handle(incoming, context: context) })
    }

    static func expectShuttingDownWithoutAProcess(_ outcome: HandlerOutcome, marker: String) {
        #expect(outcome.failure?.type == .cancel)
        #expect(outcome.failure?.condition == .serviceUnavailable)
        #expect(outcome.failure?.text == "stanzad is shutting down")
        #expect(outcome.metadata["pid"] == nil, "no process was started")
        #expect(!FileManager.default.fileExists(atPath: marker), "the handler never ran")
    }

    @Test(.timeLimit(.minutes(1))) func aStanzaWaitingForTheProcessLimitAtShutdownNeverStartsAProcess() async throws {
        let marker = NSTemporaryDirectory() + "stanzad-never-\(UUID().uuidString)"
        let (handler, processes, task) = try Self.waiting(for: marker)
        while processes.waiting < 1 { await Task.yield() }
        handler.shutDown()
        processes.release()
        Self.expectShuttingDownWithoutAProcess(await task.value, marker: marker)
    }

    @Test(.timeLimit(.minutes(1))) func aCancelledStanzaWaitingForTheProcessLimitNeverStartsAProcess() async throws {
        let marker = NSTemporaryDirectory() + "stanzad-never-\(UUID().uuidString)"
        let (_, processes, task) = try Self.waiting(for: marker)
        while processes.waiting < 1 { await Task.yield() }
        task.cancel()
        processes.release()
        Self.expectShuttingDownWithoutAProcess(await task.value, marker: marker)
        #expect(processes.load == 0)
    }
}
