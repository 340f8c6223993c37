// The FastCGI front (SPEC §9): nginx's FastCGI connections on one SwiftNIO event loop of the front's own, each
// connection a FastCGIConnectionStateMachine in a FastCGIChannelHandler. Reading a request costs no thread, so a
// slow or idle client holds only its own connection until `read_timeout`. A complete request is answered through
// a callback: a long-poll holds neither a thread nor a task, and a client that goes away cancels its request.

#if canImport(Glibc)
import CMalloc
import Glibc
#endif
import Logging
import Metrics
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import XMPPCore

package struct FastCGIError: Error, CustomStringConvertible {
    package var description: String
}

package final class FastCGIServer: Service, Sendable {
    package let listen: String
    package let socketMode: UInt16
    let api: RestAPI
    let logger: Logger
    let fd: Int32
    /// A request (params and body) must be complete this long after the connection opened or its last response.
    let readTimeout: Duration
    /// Connections at once; beyond it new ones are closed at once (long-polls are bounded by max_pending).
    let maxConnections: Int
    private let lastRefusalLog = Mutex<ContinuousClock.Instant?>(nil)
    /// Accepts and serves every connection: no hop between the two (bench/rest at 2 connections). stanzad passes
    /// the component link's loop: a REST iq is then written to the link, and its answer to nginx, without a hop
    /// between threads. Without one, the front has a loop of its own.
    private let acceptLoop: any EventLoop
    /// The front's own loop's group (shut down with it); nil when it was given one.
    private let ownGroup: MultiThreadedEventLoopGroup?
    /// Requests the API has not answered yet, for shutdown.
    private let outstanding = Mutex(Outstanding())

    private struct Outstanding {
        var exchanges: [ObjectIdentifier: FastCGIExchange] = [:]
        var shuttingDown = false
    }

    /// Open connections, and the most open at once since memory was last given back.
    private let connectionCount = Mutex((open: 0, peak: 0))
    /// `stanzad_rest_requests_total{status}`, each counter made once.
    private let requestsByStatus = MadeOncePerKey<Int, Counter> {
        Counter(label: "stanzad_rest_requests_total", dimensions: [("status", "\($0)")])
    }

    /// A burst of at least this many connections is followed by `malloc_trim` once all but a 64th of them
    /// have closed (kept-alive nginx connections stay open).
    static let trimAfterBurst = 256

    /// `fd` is the listening socket from `ListeningSocket.open` (opened before the ServiceGroup starts, so a
    /// bad `listen` stops stanzad at once with a clear error).
    package init(listen: String, socketMode: UInt16, fd: Int32, api: RestAPI, logger: Logger,
                readTimeout: Duration = .seconds(10), maxConnections: Int? = nil, eventLoop: (any EventLoop)? = nil) {
        if let eventLoop {
            acceptLoop = eventLoop
            ownGroup = nil
        } else {
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            acceptLoop = group.next()
            ownGroup = group
        }
        self.listen = listen
        self.socketMode = socketMode
        self.fd = fd
        self.api = api
        self.logger = logger
        self.readTimeout = readTimeout
        self.maxConnections = maxConnections ?? (api.settings.maxPending + 1024)
    }

    /// The path of a unix socket, or nil for TCP.
    var socketPath: String? {
        listen.hasPrefix("unix:") ? String(listen.dropFirst(5)) : nil
    }

    package func run() async throws {
        let limits = FastCGIConnectionStateMachine.Limits(maxBody: api.settings.maxBody)
        let readTimeout = TimeAmount(readTimeout)
        let logger = self.logger
        let server: any Channel
        do {
            server = try await ServerBootstrap(group: acceptLoop, childGroup: acceptLoop)
                .serverChannelOption(.maxMessagesPerRead, value: 64)
                // Each connection keeps its receive buffer while it waits: 1 KiB (nginx's params and a small body)
                // instead of NIO's 2 KiB start is 10 MB less for 10,000 long-polls; larger requests grow it.
                .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 256, initial: 1024, maximum: 65_536))
                .childChannelInitializer { [self] channel in
                    guard self.admit(channel) else { return channel.close() }
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FastCGIRecordDecoder()))
                        try channel.pipeline.syncOperations.addHandler(
                            FastCGIChannelHandler(limits: limits, readTimeout: readTimeout, logger: logger) { self.start($0) })
                    }
                }
                .withBoundSocket(fd).get()
            // NIO listens on an adopted socket with its default backlog (128); a burst of long-polls needs more.
            _ = Glibc.listen(fd, 4096)
        } catch {
            logger.error("REST API cannot accept connections", metadata: ["listen": "\(listen)", "error": "\(error)"])
            throw error
        }
        logger.notice("REST API listening", metadata: ["listen": "\(listen)", "path": "\(api.settings.path)"])

        // Graceful shutdown: no new connections; a request arriving on a kept connection is not read (its
        // connection is closed, so nginx sends it again on a fresh one). Requests under way get `drainGrace` to
        // be answered (a message waiting for its spool commit); those still waiting then (long-polls) answer 503.
        try? await gracefulShutdown()
        try? await server.close()
        outstanding.withLock { $0.shuttingDown = true }
        let deadline = ContinuousClock.now + Self.drainGrace
        while ContinuousClock.now < deadline, outstanding.withLock({ !$0.exchanges.isEmpty }) {
            try? await Task.sleep(for: .milliseconds(10))  // polled: exchanges end on other threads, no event to await
        }
        let waiting: [FastCGIExchange] = outstanding.withLock { state in
            defer { state.exchanges.removeAll() }
            return Array(state.exchanges.values)
        }
        for exchange in waiting { exchange.abandon(with: Self.shuttingDown) }
        if let path = socketPath { unlink(path) }
        try? await ownGroup?.shutdownGracefully()
        logger.notice("REST API stopped", metadata: ["answered_503": "\(waiting.count)"])
    }

    static let shuttingDown = RestResponse(status: 503, headers: [("Retry-After", "5")])
    /// How long shutdown waits for requests under way (enough for a spool commit or a ping's round trip; a
    /// long-poll waits longer and is answered 503).
    static let drainGrace: Duration = .milliseconds(250)

    /// For the systemd watchdog: runs `done` on the front's own event loop (not while it is stuck).
    package func probe(_ done: @escaping @Sendable () -> Void) {
        acceptLoop.execute(done)
    }

    /// Runs a complete request: the API answers at once or when the link has done its part. No task and no
    /// thread waits for it; the exchange is remembered only so that shutdown can answer it.
    private func start(_ exchange: FastCGIExchange) {
        let key = ObjectIdentifier(exchange)
        let refused: Bool = outstanding.withLock { state in
            guard !state.shuttingDown else { return true }
            state.exchanges[key] = exchange
            return false
        }
        guard !refused else {
            exchange.refuseByClosing()
            return
        }
        let cancellation = api.handle(exchange.request) { response in
            self.requestsByStatus[response.status].increment()
            self.outstanding.withLock { state in
                state.exchanges.removeValue(forKey: key)
                if state.exchanges.isEmpty && state.exchanges.capacity > 64 { state.exchanges = [:] }  // keeps its capacity otherwise
            }
            exchange.respond(response)
        }
        exchange.attach(cancellation)
    }

    /// Counts a new connection; false (and the connection is closed) beyond `maxConnections`.
    private func admit(_ channel: any Channel) -> Bool {
        let count: Int = connectionCount.withLock { count in
            count.open += 1
            count.peak = max(count.peak, count.open)
            return count.open
        }
        channel.closeFuture.whenComplete { _ in self.connectionClosed() }
        guard count > maxConnections else { return true }
        let now = ContinuousClock.now
        let log: Bool = lastRefusalLog.withLock { last in
            if let last, now - last < .seconds(10) { return false }
            last = now
            return true
        }
        if log {
            logger.warning("FastCGI connection refused: too many connections", metadata: ["max_connections": "\(maxConnections)"])
        }
        return false
    }

    /// After a burst (thousands of long-polls) the allocator keeps the freed memory in its arenas: once the burst's
    /// connections have closed, the free pages go back to the system, so RSS returns to its level before the burst
    /// (a few milliseconds, once per burst).
    ///
    /// Some of a burst's memory is freed only after that: the last connections close, and the replies on other
    /// threads finish. A second trim follows `settleAfterBurst` later, then "memory given back after a burst" is
    /// logged (at info). Measured without it: RSS sometimes stayed at the burst's peak (about 120 MiB for 10,000
    /// long-polls) instead of returning to about 50 MiB.
    private func connectionClosed() {
        let burstPeak: Int? = connectionCount.withLock { count in
            count.open -= 1
            guard count.peak >= Self.trimAfterBurst, count.open <= count.peak / 64 else { return nil }
            defer { count.peak = count.open }
            return count.peak
        }
        guard let burstPeak else { return }
        #if canImport(Glibc)
        _ = malloc_trim(0)
        #endif
        acceptLoop.scheduleTask(in: Self.settleAfterBurst) { [logger] in
            #if canImport(Glibc)
            _ = malloc_trim(0)
            #endif
            logger.info("memory given back after a burst of connections", metadata: ["peak_connections": "\(burstPeak)"])
        }
    }

    /// How long after a burst's end the second trim comes.
    static let settleAfterBurst: TimeAmount = .milliseconds(500)
}
