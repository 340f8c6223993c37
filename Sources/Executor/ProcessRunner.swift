// One handler process on swift-subprocess: its own session and process group, a clean environment, stdin
// written then closed, stdout captured up to a cap, stderr read concurrently and handed over line by line,
// a deadline with SIGTERM → grace → SIGKILL to the whole group, and whatever is left of the group killed
// after the handler exits (so a grandchild holding a pipe neither stalls the reply nor survives it).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Subprocess
import Synchronization
import SystemPackage

/// What to run and with which limits.
public struct ProcessSpec: Sendable {
    public var argv: [String]
    public var environment: [String: String]
    public var workdir: String
    public var stdin: [UInt8]
    public var timeout: Duration
    public var killGrace: Duration
    public var maxOutput: Int
    /// stderr bytes logged; the rest is read and dropped.
    public var maxStderr: Int

    public init(argv: [String], environment: [String: String], workdir: String, stdin: [UInt8], timeout: Duration,
                killGrace: Duration, maxOutput: Int, maxStderr: Int = 65_536) {
        self.argv = argv
        self.environment = environment
        self.workdir = workdir
        self.stdin = stdin
        self.timeout = timeout
        self.killGrace = killGrace
        self.maxOutput = maxOutput
        self.maxStderr = maxStderr
    }
}

/// How a handler process ended.
public struct ProcessResult: Sendable {
    public enum Ending: Sendable, Hashable {
        case exited(Int32)
        case signaled(Int32)
        /// Killed at the deadline.
        case timedOut
        /// Wrote more than `maxOutput` bytes to stdout.
        case outputTooLarge
        /// Could not be started (missing, not executable, bad workdir…).
        case spawnFailed(String)
    }

    public var ending: Ending
    public var stdout: [UInt8]
    public var pid: Int32?
    public var duration: Duration
}

public enum ProcessRunner {
    /// A handler that exits without reading all of stdin makes our write fail with EPIPE; without this the
    /// default SIGPIPE disposition would end stanzad instead. Children get default dispositions back at spawn.
    private static let ignoreBrokenPipes: Void = { _ = signal(SIGPIPE, SIG_IGN) }()

    /// Runs `spec` to completion. `stderrLine` gets each stderr line (without its newline) as it arrives.
    public static func run(_ spec: ProcessSpec, stderrLine: @escaping @Sendable (String, Int32) -> Void) async -> ProcessResult {
        _ = ignoreBrokenPipes
        let started = ContinuousClock.now
        let pid = PIDBox()
        // The run is a child task we can cancel at the deadline: cancelling it makes swift-subprocess tear the
        // group down (SIGTERM, kill_grace, SIGKILL), then it reaps the handler and returns.
        let run = Task { await execute(spec, pid: pid, stderrLine: stderrLine) }
        let deadlinePassed = Flag()
        let timer = OneShotTimer(after: spec.timeout) {
            deadlinePassed.set()
            run.cancel()
        }
        var result = await withTaskCancellationHandler {
            await run.value
        } onCancel: {
            run.cancel()
        }
        timer.cancel()
        let timedOut = deadlinePassed.isSet

        // Whatever the handler left behind in its process group goes now. The group id cannot be reused
        // while any member lives, so this never hits an unrelated process.
        if let leader = pid.value.withLock({ $0 }) {
            _ = kill(-leader, SIGKILL)
        }
        if timedOut, result.pid != nil {
            result.ending = .timedOut
        }
        result.duration = ContinuousClock.now - started
        return result
    }

    static func execute(_ spec: ProcessSpec, pid: PIDBox, stderrLine: @escaping @Sendable (String, Int32) -> Void) async -> ProcessResult {
        guard let program = spec.argv.first else {
            return ProcessResult(ending: .spawnFailed("empty argv"), stdout: [], pid: nil, duration: .zero)
        }
        let launch = HandlerLaunch.configuration(
            program: program, arguments: Array(spec.argv.dropFirst()), environment: spec.environment,
            workdir: spec.workdir, killGrace: spec.killGrace)
        let input = spec.stdin
        let maxStderr = spec.maxStderr
        do {
            let execution = try await Subprocess.run(
                launch,
                input: .inputWriter,
                output: .bytes(limit: spec.maxOutput),
                error: .sequence
            ) { execution in
                let processID = execution.processIdentifier.value
                pid.value.withLock { $0 = processID }
                let writer = execution.standardInputWriter
                async let written: Void = {
                    // A handler may exit without reading stdin: EPIPE here is not an error of the run.
                    _ = try? await writer.write(input)
                    try? await writer.finish()
                }()
                var lines = StderrLines(limit: maxStderr)
                do {
                    for try await buffer in execution.standardError {
                        buffer.withUnsafeBytes { lines.feed($0) { stderrLine($0, processID) } }
                    }
                } catch {
                    // Reading ends with an error when the run is torn down; nothing to keep.
                }
                lines.finish { stderrLine($0, processID) }
                await written
            }
            let ending: ProcessResult.Ending
            switch execution.terminationStatus {
            case .exited(let code): ending = .exited(code)
            case .signaled(let signal): ending = .signaled(signal)
            }
            return ProcessResult(ending: ending, stdout: execution.standardOutput, pid: execution.processIdentifier.value, duration: .zero)
        } catch let error as SubprocessError where error.code == .outputLimitExceeded {
            return ProcessResult(ending: .outputTooLarge, stdout: [], pid: pid.value.withLock { $0 }, duration: .zero)
        } catch {
            let processID = pid.value.withLock { $0 }
            if processID != nil {
                // Started, then torn down (deadline) or failed while running.
                return ProcessResult(ending: .signaled(SIGKILL), stdout: [], pid: processID, duration: .zero)
            }
            return ProcessResult(ending: .spawnFailed("\(error)"), stdout: [], pid: nil, duration: .zero)
        }
    }
}

/// How every handler process (exec and worker) is started.
enum HandlerLaunch {
    /// Its own session and process group, on swift-subprocess's posix_spawn path (no uid/gid, no
    /// processGroupID), exactly `environment`, and a teardown of SIGTERM to the group, `killGrace`, then
    /// SIGKILL to the group.
    static func configuration(program: String, arguments: [String], environment: [String: String], workdir: String,
                              killGrace: Duration) -> Configuration {
        var options = PlatformOptions()
        options.createSession = true
        options.teardownSequence = teardown(killGrace)
        var keys: [Environment.Key: String] = [:]
        for (name, value) in environment {
            if let key = Environment.Key(rawValue: name) { keys[key] = value }
        }
        return Configuration(
            executable: program.contains("/") ? .path(FilePath(program)) : .name(program),
            arguments: Arguments(arguments), environment: .custom(keys), workingDirectory: FilePath(workdir),
            platformOptions: options)
    }

    static func teardown(_ killGrace: Duration) -> [TeardownStep] {
        [.gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: killGrace)]
    }
}

/// Set once, read from anywhere.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .sequentiallyConsistent) }
    var isSet: Bool { value.load(ordering: .sequentiallyConsistent) }
}

/// The handler's pid, learnt inside the run and needed after it.
final class PIDBox: Sendable {
    let value = Mutex<Int32?>(nil)
}

/// Splits stderr into lines, keeping at most `limit` bytes in all (the rest is counted and dropped).
struct StderrLines {
    let limit: Int
    private var pending: [UInt8] = []
    private var kept = 0
    private(set) var dropped = 0

    init(limit: Int) { self.limit = limit }

    mutating func feed(_ bytes: UnsafeRawBufferPointer, emit: (String) -> Void) {
        for byte in bytes {
            if kept >= limit {
                dropped += 1
                continue
            }
            kept += 1
            if byte == 0x0A {
                emit(Self.text(pending))
                pending.removeAll(keepingCapacity: true)
            } else {
                pending.append(byte)
            }
        }
    }

    mutating func finish(emit: (String) -> Void) {
        if !pending.isEmpty { emit(Self.text(pending)) }
        pending.removeAll()
        if dropped > 0 { emit("[stanzad: \(dropped) more bytes of stderr dropped (limit \(limit))]") }
    }

    /// Lossy UTF-8 without control characters (they could forge log lines).
    static func text(_ bytes: [UInt8]) -> String {
        var line = bytes
        if line.last == 0x0D { line.removeLast() }
        return String(String(decoding: line, as: UTF8.self).unicodeScalars.map {
            $0.value < 0x20 && $0 != "\t" ? "\u{FFFD}" : Character($0)
        })
    }
}
