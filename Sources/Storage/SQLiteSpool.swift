// SPEC §18: the spool as one SQLite file (WAL) through GRDB. One thread of its own does every read and write:
// appends and confirmations that arrive while it commits wait for the next commit, so a burst costs one commit,
// not one per stanza. Several processes may open the file at once (a take-over restart): each registers itself,
// owns the entries it appended, and adopts the entries nobody owns any more (released at a clean stop, or left by
// a process that died).

import ComponentLink
import Dispatch
import Foundation
import GRDB
import Logging
import ServiceLifecycle
import Synchronization

/// `[storage]` (SPEC §18).
package struct StorageSettings: Sendable, Equatable {
    package enum Sync: String, Sendable, Equatable, CaseIterable {
        /// Survives a crash or kill -9 of stanzad (WAL; fsync at checkpoints).
        case normal
        /// Also survives a power loss: every commit is fsynced.
        case full
    }

    package var path: String
    package var sync: Sync = .normal
    /// How often the spool looks for entries another process released or left.
    package var adoptInterval: Duration = .seconds(1)

    package init(path: String, sync: Sync = .normal) {
        self.path = path
        self.sync = sync
    }
}

/// A pull route's update as the spool keeps it (SPEC §17, §18).
package struct SpooledUpdate: Sendable, Equatable {
    package var seq: Int64
    package var id: Int64
    package var json: [UInt8]
    package var arrived: Date
}

/// A change to the stored updates, committed with the next batch.
enum UpdateOp: Sendable {
    case keepInbound(xml: String)
    case save(route: String, id: Int64, json: [UInt8], arrived: Double)
    case deleteBelow(route: String, id: Int64)
    case renumber(seq: Int64, id: Int64)
}

extension UpdateOp {
    var name: String {
        switch self {
        case .keepInbound: "inbound stanza"
        case .save: "update"
        case .deleteBelow: "update acknowledgement"
        case .renumber: "update renumbering"
        }
    }
}

/// Why the spool cannot be used.
package struct StorageError: Error, CustomStringConvertible, Sendable {
    package var description: String
}

package final class SQLiteSpool: OutboundSpool, Service, Sendable {
    struct Pending: Sendable {
        var appends: [(xml: String, completion: @Sendable (Result<Int64, SendError>) -> Void)] = []
        var confirms: [Int64] = []
        var updateOps: [UpdateOp] = []
        var adopted: (@Sendable ([SpooledStanza]) -> Void)?
        var adoptedUpdates: (@Sendable (String, [SpooledUpdate]) -> Void)?
        var keptInbound: (@Sendable ([String]) -> Void)?
        var adoptNow = false
        var stopping = false
        /// The writer thread has been signalled and has not taken the work yet.
        var signalled = false
    }

    package let settings: StorageSettings
    /// This process in the spool's `instance` table.
    package let owner: String
    let database: DatabaseQueue
    let pending = Mutex(Pending())
    private let wake = DispatchSemaphore(value: 0)
    private let logger: Logger
    let finished = Mutex<(done: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))
    private let depthCounter = Atomic<Int>(0)

    /// Opens (creates, migrates) the spool and registers this process in it. Blocking: call it at start-up.
    package init(settings: StorageSettings, logger: Logger) throws(StorageError) {
        self.settings = settings
        self.logger = logger
        let identity = ProcessIdentity.current
        owner = "\(identity.pid):\(identity.startTime)"
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        configuration.label = "stanzad.spool"
        let sync = settings.sync
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA journal_mode = WAL")
            try db.execute(sql: "PRAGMA synchronous = \(sync == .full ? "FULL" : "NORMAL")")
            // The writer thread checkpoints once a second (with `normal`, the only fsync), not inside a commit.
            try db.execute(sql: "PRAGMA wal_autocheckpoint = 0")
        }
        do {
            let directory = (settings.path as NSString).deletingLastPathComponent
            if !directory.isEmpty, !FileManager.default.fileExists(atPath: directory) {
                throw StorageError(description: "the directory \(directory) does not exist (create it, writable by stanzad)")
            }
            database = try DatabaseQueue(path: settings.path, configuration: configuration)
            try Self.migrator.migrate(database)
            try database.write { db in
                try db.execute(
                    sql: "INSERT OR REPLACE INTO instance (owner, pid, start_time, started) VALUES (?, ?, ?, ?)",
                    arguments: [owner, identity.pid, identity.startTime, Date().timeIntervalSince1970])
            }
        } catch let error as StorageError {
            throw StorageError(description: "cannot open the spool \(settings.path): \(error.description)")
        } catch {
            throw StorageError(description: "cannot open the spool \(settings.path): \(error)")
        }
        let thread = Thread { [self] in self.writerLoop() }
        thread.name = "stanzad-spool"
        thread.start()
    }

    /// The schema, versioned: each step runs once per file.
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE outbox (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    xml TEXT NOT NULL,
                    owner TEXT,
                    created REAL NOT NULL
                );
                CREATE TABLE instance (
                    owner TEXT PRIMARY KEY,
                    pid INTEGER NOT NULL,
                    start_time INTEGER NOT NULL,
                    started REAL NOT NULL
                );
                """)
        }
        migrator.registerMigration("v2 updates") { db in
            try db.execute(sql: """
                CREATE TABLE updates (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    route TEXT NOT NULL,
                    id INTEGER NOT NULL,
                    json BLOB NOT NULL,
                    arrived REAL NOT NULL,
                    owner TEXT
                );
                CREATE INDEX updates_route_id ON updates (route, id);
                """)
        }
        migrator.registerMigration("v3 deliveries") { db in
            // Inbound stanzas a process did not handle because it stopped (first: webhook deliveries waiting for a
            // retry; since: stanzas still queued or read after its router stopped too).
            try db.execute(sql: """
                CREATE TABLE deliveries (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    xml TEXT NOT NULL,
                    created REAL NOT NULL
                );
                """)
        }
        migrator.registerMigration("v4 take-over") { db in
            // A take-over (SPEC §18): the process being replaced sets `holding` once it writes nothing more to its link
            // (`note(.holding)`); the process replacing it sets `linked` once its own link is up (`note(.linked)`).
            try db.execute(sql: "ALTER TABLE instance ADD COLUMN holding INTEGER NOT NULL DEFAULT 0")
            try db.execute(sql: "ALTER TABLE instance ADD COLUMN linked INTEGER NOT NULL DEFAULT 0")
        }
        return migrator
    }

    /// Entries in the spool that this process appended or adopted and the server has not confirmed.
    package var depth: Int { depthCounter.load(ordering: .relaxed) }

    /// Other processes registered in the spool that still run (a take-over stops them). Blocking: a read of the
    /// file; call it off the event loops (it runs once, when a take-over's link is up).
    package func otherProcesses() -> [Int32] {
        let rows = (try? database.read { db in
            try Row.fetchAll(db, sql: "SELECT pid, start_time FROM instance WHERE owner != ?", arguments: [owner])
        }) ?? []
        return rows.compactMap { row in
            let pid: Int32 = row["pid"]
            let startTime: Int64 = row["start_time"]
            return ProcessIdentity.isRunning(pid: pid, startTime: startTime) && pid != getpid() ? pid : nil
        }
    }

    /// What a process notes about itself in the spool during a take-over (columns of `instance`).
    package enum TakeoverMark: String, Sendable {
        /// This process has stopped writing to its component link, so the process taking over may connect (see
        /// `waitUntilHolding`).
        case holding
        /// This process's link is up, so the process it replaces may stop waiting for the server to close its link
        /// (see `isLinked`).
        case linked
    }

    /// Notes `mark` for this process. Blocking: a write of the file; call it off the event loops.
    package func note(_ mark: TakeoverMark) {
        do {
            try note(mark, for: owner)
        } catch {
            logger.warning("spool: cannot note a take-over step", metadata: ["step": "\(mark.rawValue)", "path": "\(settings.path)", "error": "\(error)"])
        }
    }

    func note(_ mark: TakeoverMark, for owner: String) throws {
        try database.write { db in
            try db.execute(sql: "UPDATE instance SET \(mark.rawValue) = 1 WHERE owner = ?", arguments: [owner])
        }
    }

    /// A take-over: whether one of `pids` has its link up (`note(.linked)`). Blocking: a read of the file.
    package func isLinked(_ pids: [Int32]) -> Bool {
        let rows = (try? database.read { db in
            try Row.fetchAll(db, sql: "SELECT pid FROM instance WHERE owner != ? AND linked = 1", arguments: [owner])
        }) ?? []
        return rows.contains { row in pids.contains(row["pid"]) }
    }

    /// A take-over: waits until each of `pids` holds its link (`note(.holding)`) or no longer runs, looking every
    /// 10 ms, for at most `timeout`. Returns the pids that still write to their links. Blocking: call it on a thread
    /// of its own.
    package func waitUntilHolding(_ pids: [Int32], timeout: Duration) -> [Int32] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let rows = (try? database.read { db in
                try Row.fetchAll(db, sql: "SELECT pid, start_time, holding FROM instance WHERE owner != ?", arguments: [owner])
            }) ?? []
            let writing: [Int32] = rows.compactMap { row in
                let pid: Int32 = row["pid"]
                let startTime: Int64 = row["start_time"]
                let holding: Int = row["holding"]
                guard pids.contains(pid), holding == 0, ProcessIdentity.isRunning(pid: pid, startTime: startTime) else { return nil }
                return pid
            }
            if writing.isEmpty || ContinuousClock.now >= deadline { return writing }
            usleep(10_000)
        }
    }

    // MARK: OutboundSpool

    package func append(_ xml: String, completion: @escaping @Sendable (Result<Int64, SendError>) -> Void) {
        let refused: Bool = pending.withLock { state in
            guard !state.stopping else { return true }
            state.appends.append((xml, completion))
            return false
        }
        if refused {
            completion(.failure(SendError(.shuttingDown, "stanzad is shutting down")))
            return
        }
        signal()
    }

    /// Deletions do not wake the writer: they ride with the next commit, or the writer's next round (at most
    /// `adoptInterval` later). A confirmed entry left a moment longer costs nothing but a duplicate after a crash.
    package func confirm(_ seqs: [Int64]) {
        guard !seqs.isEmpty else { return }
        pending.withLock { $0.confirms.append(contentsOf: seqs) }
    }

    // MARK: Updates (pull routes)

    /// The updates kept from before, by route, now owned by this process (those of a process still running
    /// stay its own). Blocking: call it at start-up, before the writer has work.
    package func takeStoredUpdates() throws(StorageError) -> [String: [SpooledUpdate]] {
        do {
            let rows: [Row] = try database.write { db in
                try markDeadInstances(db)
                return try Row.fetchAll(db, sql: """
                    UPDATE updates SET owner = ?
                    WHERE owner IS NULL OR owner = ? OR owner NOT IN (SELECT owner FROM instance)
                    RETURNING seq, route, id, json, arrived
                    """, arguments: [owner, owner])
            }
            let byRoute = Self.updatesByRoute(rows)
            return byRoute
        } catch {
            throw StorageError(description: "cannot read the stored updates from \(settings.path): \(error)")
        }
    }

    /// Updates another process stores from now on and leaves (a take-over) go to `adopted`, route by route, on
    /// the spool's thread.
    package func startAdoptingUpdates(_ adopted: @escaping @Sendable (String, [SpooledUpdate]) -> Void) {
        pending.withLock { $0.adoptedUpdates = adopted }
    }

    // MARK: Inbound stanzas a stopping process did not handle

    /// Keeps an inbound stanza this process will not handle because it stops (a webhook retry still waiting, a
    /// stanza still queued or read after the router stopped); committed before the spool closes. The next process on
    /// the spool routes it (`startTakingKeptInbound`). False: the spool has closed and did not take it (the caller
    /// answers the stanza instead).
    package func keepInbound(_ xml: String) -> Bool {
        enqueue(.keepInbound(xml: xml))
    }

    /// From now on, every second (and once at once), the inbound stanzas kept by a stopping process (this file's
    /// earlier runs, or the process a take-over replaces while it stops) are removed from the spool and handed to
    /// `taken`, oldest first, on the spool's thread: the caller routes them again.
    package func startTakingKeptInbound(_ taken: @escaping @Sendable ([String]) -> Void) {
        pending.withLock { state in
            state.keptInbound = taken
            state.adoptNow = true
        }
        signal()
    }

    /// This process stops routing: it no longer takes kept stanzas (it would only keep them again).
    package func stopTakingKeptInbound() {
        pending.withLock { $0.keptInbound = nil }
    }

    private func takeKeptInbound(_ taken: @Sendable ([String]) -> Void) {
        do {
            let kept: [String] = try database.write { db in
                let rows = try Row.fetchAll(db, sql: "DELETE FROM deliveries RETURNING seq, xml")
                return rows.map { (seq: $0["seq"] as Int64, xml: $0["xml"] as String) }.sorted { $0.seq < $1.seq }.map(\.xml)
            }
            if !kept.isEmpty { taken(kept) }
        } catch {
            logger.error("spool read failed", metadata: ["path": "\(settings.path)", "error": "\(error)"])
        }
    }

    package func saveUpdate(route: String, id: Int64, json: [UInt8], arrived: Date) {
        enqueue(.save(route: route, id: id, json: json, arrived: arrived.timeIntervalSince1970))
    }

    package func deleteUpdates(route: String, below id: Int64) {
        enqueue(.deleteBelow(route: route, id: id))
    }

    package func renumberUpdate(seq: Int64, id: Int64) {
        enqueue(.renumber(seq: seq, id: id))
    }

    /// False: the spool has closed; `op` was not taken.
    @discardableResult
    private func enqueue(_ op: UpdateOp) -> Bool {
        let stopping: Bool = pending.withLock { state in
            guard !state.stopping else { return true }
            state.updateOps.append(op)
            return false
        }
        if stopping {
            logger.warning("spool already closed; not kept", metadata: ["what": "\(op.name)"])
            return false
        }
        signal()
        return true
    }

    package func startAdopting(_ adopted: @escaping @Sendable ([SpooledStanza]) -> Void) {
        pending.withLock { state in
            state.adopted = adopted
            state.adoptNow = true
        }
        signal()
    }

    // MARK: Service

    /// Runs until shutdown; then commits what is left, gives this process's entries back to the spool (the next
    /// process adopts them) and closes.
    package func run() async throws {
        try? await gracefulShutdown()
        await stop()
    }

    /// Commits what is left, releases this process's entries and closes; returns when that is done.
    func stop() async {
        pending.withLock { $0.stopping = true }
        signal()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done: Bool = finished.withLock { state in
                if state.done { return true }
                state.waiter = continuation
                return false
            }
            if done { continuation.resume() }
        }
    }

    // MARK: The writer thread

    func signal() {
        let needed: Bool = pending.withLock { state in
            if state.signalled { return false }
            state.signalled = true
            return true
        }
        if needed { wake.signal() }
    }

    private func writerLoop() {
        var lastAdopt = ContinuousClock.now - settings.adoptInterval
        while true {
            let seconds = Double(settings.adoptInterval.components.seconds)
                + Double(settings.adoptInterval.components.attoseconds) / 1e18
            _ = wake.wait(timeout: .now() + seconds)
            let work = pending.withLock { state -> Pending in
                let taken = state
                state.appends.removeAll(keepingCapacity: true)
                state.confirms.removeAll(keepingCapacity: true)
                state.updateOps.removeAll(keepingCapacity: true)
                state.adoptNow = false
                state.signalled = false
                return taken
            }
            if !work.appends.isEmpty || !work.confirms.isEmpty || !work.updateOps.isEmpty { commit(work) }
            if !work.stopping, work.adopted != nil || work.keptInbound != nil,
                work.adoptNow || ContinuousClock.now - lastAdopt >= settings.adoptInterval
            {
                lastAdopt = .now
                if let adopted = work.adopted { adopt(adopted) }
                if let adoptedUpdates = work.adoptedUpdates { adoptUpdates(adoptedUpdates) }
                if let keptInbound = work.keptInbound { takeKeptInbound(keptInbound) }
                checkpoint()
            }
            if work.stopping {
                let more = pending.withLock { !$0.appends.isEmpty || !$0.confirms.isEmpty || !$0.updateOps.isEmpty }
                if more { continue }
                release()
                break
            }
        }
        let waiter: CheckedContinuation<Void, Never>? = finished.withLock { state in
            state.done = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// One transaction for everything that arrived since the last one.
    private func commit(_ work: Pending) {
        let now = Date().timeIntervalSince1970
        do {
            let seqs: [Int64] = try database.write { db in
                if !work.confirms.isEmpty {
                    let delete = try db.cachedStatement(sql: "DELETE FROM outbox WHERE seq = ?")
                    for seq in work.confirms { try delete.execute(arguments: [seq]) }
                }
                for op in work.updateOps {
                    switch op {
                    case .keepInbound(let xml):
                        try db.execute(sql: "INSERT INTO deliveries (xml, created) VALUES (?, ?)", arguments: [xml, now])
                    case .save(let route, let id, let json, let arrived):
                        try db.cachedStatement(sql: "INSERT INTO updates (route, id, json, arrived, owner) VALUES (?, ?, ?, ?, ?)")
                            .execute(arguments: [route, id, Data(json), arrived, owner])
                    case .deleteBelow(let route, let id):
                        try db.cachedStatement(sql: "DELETE FROM updates WHERE route = ? AND id < ? AND owner = ?")
                            .execute(arguments: [route, id, owner])
                    case .renumber(let seq, let id):
                        try db.cachedStatement(sql: "UPDATE updates SET id = ?, owner = ? WHERE seq = ?")
                            .execute(arguments: [id, owner, seq])
                    }
                }
                var seqs: [Int64] = []
                seqs.reserveCapacity(work.appends.count)
                let insert = try db.cachedStatement(sql: "INSERT INTO outbox (xml, owner, created) VALUES (?, ?, ?)")
                for entry in work.appends {
                    try insert.execute(arguments: [entry.xml, owner, now])
                    seqs.append(db.lastInsertedRowID)
                }
                return seqs
            }
            depthCounter.add(seqs.count - work.confirms.count, ordering: .relaxed)
            for (entry, seq) in zip(work.appends, seqs) { entry.completion(.success(seq)) }
        } catch {
            // The kept stanzas and update changes of this commit are lost (they are not retried: one that cannot be
            // written would stop every later commit); the line says how many.
            let kept = work.updateOps.filter { if case .keepInbound = $0 { true } else { false } }.count
            logger.error("spool write failed", metadata: [
                "path": "\(settings.path)", "error": "\(error)",
                "kept_stanzas_lost": "\(kept)", "update_changes_lost": "\(work.updateOps.count - kept)",
            ])
            // Confirmations are retried with the next commit; the appends' senders hear the failure now.
            if !work.confirms.isEmpty { pending.withLock { $0.confirms.append(contentsOf: work.confirms) } }
            let failure = SendError(.storageFailed, "the spool could not store the stanza: \(error)")
            for entry in work.appends { entry.completion(.failure(failure)) }
        }
    }

    /// Takes over the entries of processes that stopped (released, owner NULL) or died (their instance row names
    /// a process that no longer runs) and hands them to `adopted`.
    private func adopt(_ adopted: @Sendable ([SpooledStanza]) -> Void) {
        do {
            let entries: [SpooledStanza] = try database.write { db in
                try markDeadInstances(db)
                let rows = try Row.fetchAll(db, sql: """
                    UPDATE outbox SET owner = ?
                    WHERE owner IS NULL OR owner NOT IN (SELECT owner FROM instance)
                    RETURNING seq, xml
                    """, arguments: [owner])
                return rows.map { SpooledStanza(seq: $0["seq"], xml: $0["xml"]) }.sorted { $0.seq < $1.seq }
            }
            guard !entries.isEmpty else { return }
            depthCounter.add(entries.count, ordering: .relaxed)
            logger.notice("spool: sending stanzas another process left", metadata: ["count": "\(entries.count)"])
            adopted(entries)
        } catch {
            logger.error("spool read failed", metadata: ["path": "\(settings.path)", "error": "\(error)"])
        }
    }

    /// Copies the log into the database file and lets the log start over (SQLite's automatic checkpoint is off so
    /// that it never runs inside a commit a sender waits for).
    private func checkpoint() {
        do {
            try database.writeWithoutTransaction { db in _ = try Row.fetchAll(db, sql: "PRAGMA wal_checkpoint(PASSIVE)") }
        } catch {
            logger.warning("spool checkpoint failed", metadata: ["path": "\(settings.path)", "error": "\(error)"])
        }
    }

    /// Forgets the processes that no longer run (their entries then belong to nobody).
    private func markDeadInstances(_ db: Database) throws {
        let others = try Row.fetchAll(db, sql: "SELECT owner, pid, start_time FROM instance WHERE owner != ?", arguments: [owner])
        for row in others {
            let pid: Int32 = row["pid"]
            let startTime: Int64 = row["start_time"]
            if !ProcessIdentity.isRunning(pid: pid, startTime: startTime) {
                let dead: String = row["owner"]
                try db.execute(sql: "DELETE FROM instance WHERE owner = ?", arguments: [dead])
            }
        }
    }

    /// Rows of `updates` (seq, route, id, json, arrived) by route.
    private static func updatesByRoute(_ rows: [Row]) -> [String: [SpooledUpdate]] {
        var byRoute: [String: [SpooledUpdate]] = [:]
        for row in rows {
            let route: String = row["route"]
            let json: Data = row["json"]
            let arrived: Double = row["arrived"]
            byRoute[route, default: []].append(
                SpooledUpdate(seq: row["seq"], id: row["id"], json: Array(json), arrived: Date(timeIntervalSince1970: arrived)))
        }
        return byRoute
    }

    /// Updates a stopped or dead process left: taken over and handed to the queues (which renumber them).
    private func adoptUpdates(_ adopted: @Sendable (String, [SpooledUpdate]) -> Void) {
        do {
            let rows: [Row] = try database.write { db in
                try Row.fetchAll(db, sql: """
                    UPDATE updates SET owner = ?
                    WHERE owner IS NULL OR owner NOT IN (SELECT owner FROM instance)
                    RETURNING seq, route, id, json, arrived
                    """, arguments: [owner])
            }
            guard !rows.isEmpty else { return }
            let byRoute = Self.updatesByRoute(rows)
            logger.notice("spool: taking over updates another process left", metadata: ["count": "\(rows.count)"])
            for (route, updates) in byRoute { adopted(route, updates) }
        } catch {
            logger.error("spool read failed", metadata: ["path": "\(settings.path)", "error": "\(error)"])
        }
    }

    /// A clean stop: this process's entries go back to the spool for whoever runs next.
    private func release() {
        do {
            let left: Int = try database.write { db in
                try db.execute(sql: "UPDATE outbox SET owner = NULL WHERE owner = ?", arguments: [owner])
                let left = db.changesCount
                try db.execute(sql: "UPDATE updates SET owner = NULL WHERE owner = ?", arguments: [owner])
                try db.execute(sql: "DELETE FROM instance WHERE owner = ?", arguments: [owner])
                return left
            }
            if left > 0 {
                logger.notice("spool: stanzas not confirmed by the server are kept for the next start",
                              metadata: ["count": "\(left)", "path": "\(settings.path)"])
            }
            try database.close()
        } catch {
            logger.error("spool release failed", metadata: ["path": "\(settings.path)", "error": "\(error)"])
        }
    }
}

/// A process as the spool knows it: its pid and its start time (so that a reused pid does not pass for it).
struct ProcessIdentity {
    var pid: Int32
    var startTime: Int64

    static var current: ProcessIdentity {
        let pid = getpid()
        return ProcessIdentity(pid: pid, startTime: startTime(of: pid) ?? 0)
    }

    /// Field 22 of /proc/PID/stat (clock ticks since boot), read after the command's closing parenthesis.
    static func startTime(of pid: Int32) -> Int64? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After ")": state is field 3, so field 22 is at index 19.
        guard fields.count > 19 else { return nil }
        return Int64(fields[19])
    }

    static func isRunning(pid: Int32, startTime: Int64) -> Bool {
        guard let actual = self.startTime(of: pid) else { return false }
        return actual == startTime
    }
}

// MARK: - For tests

extension SQLiteSpool {
    /// Stops as a graceful shutdown would (commit, release, close).
    func stopForTests() async throws {
        await stop()
    }

    func registerForTests(owner: String, pid: Int32, startTime: Int64) throws {
        try database.write { db in
            try db.execute(sql: "INSERT INTO instance (owner, pid, start_time, started) VALUES (?, ?, ?, 0)",
                           arguments: [owner, pid, startTime])
        }
    }

    /// The take-over marks this process has noted about itself.
    func ownMarksForTests() throws -> [TakeoverMark] {
        let row = try database.read { db in
            try Row.fetchOne(db, sql: "SELECT holding, linked FROM instance WHERE owner = ?", arguments: [owner])
        }
        guard let row else { return [] }
        let holding: Int = row["holding"]
        let linked: Int = row["linked"]
        return (holding == 1 ? [.holding] : []) + (linked == 1 ? [.linked] : [])
    }

    func insertForTests(xml: String, owner: String) throws {
        try database.write { db in
            try db.execute(sql: "INSERT INTO outbox (xml, owner, created) VALUES (?, ?, 0)", arguments: [xml, owner])
        }
    }
}
