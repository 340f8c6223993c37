import ComponentLink
import Foundation
import Logging
import Synchronization
import Testing

@testable import Storage

/// The spool file itself: commits, confirmations, what a stopped or dead process leaves, and what a bad path says.
@Suite struct SQLiteSpoolTests {
    let directory: URL = FileManager.default.temporaryDirectory.appendingPathComponent("spool-\(UUID().uuidString)")
    let logger = Logger(label: "test")

    init() throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    var path: String { directory.appendingPathComponent("spool.sqlite").path }

    func open() throws -> SQLiteSpool {
        var settings = StorageSettings(path: path)
        settings.adoptInterval = .milliseconds(50)
        return try SQLiteSpool(settings: settings, logger: logger)
    }

    func append(_ spool: SQLiteSpool, _ xml: String) async -> Result<Int64, SendError> {
        await withCheckedContinuation { continuation in spool.append(xml) { continuation.resume(returning: $0) } }
    }

    func adopted(_ spool: SQLiteSpool) async -> [SpooledStanza] {
        await withCheckedContinuation { (continuation: CheckedContinuation<[SpooledStanza], Never>) in
            let once = Mutex(false)
            spool.startAdopting { entries in
                if once.withLock({ let first = !$0; $0 = true; return first }) { continuation.resume(returning: entries) }
            }
        }
    }

    func stop(_ spool: SQLiteSpool) async throws {
        // A spool's service ends at graceful shutdown; here it is run in a group that is shut down at once.
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await spool.stopForTests() }
            try await group.waitForAll()
        }
    }

    @Test func appendsGetIncreasingSequenceNumbersAndConfirmedOnesAreDeleted() async throws {
        let spool = try open()
        let first = try await append(spool, "<message id='1'/>").get()
        let second = try await append(spool, "<message id='2'/>").get()
        #expect(second > first)
        #expect(spool.depth == 2)
        spool.confirm([first])
        _ = try await append(spool, "<message id='3'/>").get()  // commits with the confirmation before it
        #expect(spool.depth == 2)
        try await stop(spool)
        let next = try open()
        let left = await adopted(next)
        #expect(left.map(\.xml) == ["<message id='2'/>", "<message id='3'/>"], "released at stop, in order")
        try await stop(next)
    }

    @Test func entriesOfALiveProcessAreNotTakenButThoseOfADeadOneAre() async throws {
        let spool = try open()
        _ = try await append(spool, "<message id='mine'/>").get()
        // Another (live) owner: this process itself under a second registration keeps its entries.
        try spool.registerForTests(owner: "other-live", pid: getpid(), startTime: ProcessIdentity.current.startTime)
        try spool.insertForTests(xml: "<message id='live'/>", owner: "other-live")
        try spool.registerForTests(owner: "other-dead", pid: 999_999, startTime: 1)
        try spool.insertForTests(xml: "<message id='dead'/>", owner: "other-dead")
        let taken = await adopted(spool)
        #expect(taken.map(\.xml) == ["<message id='dead'/>"])
        try await stop(spool)
    }

    /// A take-over's steps through the spool: the new process waits until the old one holds its link (or is gone),
    /// at most its timeout; the old one sees when the new one's link is up.
    @Test func takeOverMarksAreSeenByTheOtherProcess() async throws {
        let spool = try open()
        let alive = getpid()
        try spool.registerForTests(owner: "old-live", pid: alive, startTime: ProcessIdentity.current.startTime)
        try spool.registerForTests(owner: "old-dead", pid: 999_999, startTime: 1)
        #expect(spool.waitUntilHolding([alive, 999_999], timeout: .milliseconds(30)) == [alive],
                "a live process that does not hold yet is reported at the timeout; a dead one is not waited for")
        try spool.note(.holding, for: "old-live")
        #expect(spool.waitUntilHolding([alive], timeout: .seconds(30)).isEmpty)
        #expect(spool.isLinked([alive]) == false)
        try spool.note(.linked, for: "old-live")
        #expect(spool.isLinked([alive]))
        #expect(spool.isLinked([4_242]) == false, "only the pids asked about count")
        #expect(try spool.ownMarksForTests().isEmpty)
        spool.note(.holding)
        spool.note(.linked)
        #expect(try spool.ownMarksForTests() == [.holding, .linked])
        try await stop(spool)
    }

    /// Inbound stanzas a stopping process keeps reach a running one that takes them (a take-over's new process),
    /// oldest first, without a restart; a process that stopped taking leaves them for the next.
    @Test func keptInboundStanzasAreTakenWhileRunningInOrder() async throws {
        let running = try open()
        let batches = AsyncStream.makeStream(of: [String].self)
        running.startTakingKeptInbound { batches.continuation.yield($0) }
        var iterator = batches.stream.makeAsyncIterator()
        // The stopping one: another process on the same file.
        let stopping = try open()
        #expect(stopping.keepInbound("<message id='k1'/>"))
        #expect(stopping.keepInbound("<message id='k2'/>"))
        try await stop(stopping)
        #expect(!stopping.keepInbound("<message id='late'/>"), "a closed spool says it did not keep the stanza")
        var taken: [String] = []
        while taken.count < 2, let batch = await iterator.next() { taken += batch }
        #expect(taken == ["<message id='k1'/>", "<message id='k2'/>"])
        running.stopTakingKeptInbound()
        #expect(running.keepInbound("<message id='k3'/>"))
        try await stop(running)
        let next = try open()
        let later = AsyncStream.makeStream(of: [String].self)
        next.startTakingKeptInbound { later.continuation.yield($0) }
        var laterIterator = later.stream.makeAsyncIterator()
        #expect(await laterIterator.next() == ["<message id='k3'/>"], "kept for the next process, not taken back")
        try await stop(next)
    }

    @Test func aSpoolInAMissingDirectorySaysWhatToDo() {
        let settings = StorageSettings(path: directory.appendingPathComponent("missing/spool.sqlite").path)
        #expect {
            _ = try SQLiteSpool(settings: settings, logger: logger)
        } throws: { error in
            "\(error)".contains("does not exist (create it, writable by stanzad)")
        }
    }

    @Test func aFileThatIsNotADatabaseIsAClearError() throws {
        try Data("not sqlite at all, just text".utf8).write(to: URL(fileURLWithPath: path))
        #expect {
            _ = try SQLiteSpool(settings: StorageSettings(path: path), logger: logger)
        } throws: { error in
            "\(error)".contains("cannot open the spool \(path)")
        }
    }
}
