// The libfcgi front (SPEC §9 FastCGI): one dedicated acceptor thread; a fresh heap-allocated FCGX_Request
// per connection, handed to Swift concurrency and finished from a thread pool (never on an event loop or
// in the cooperative pool), so a long-poll holds no thread. Stopped by shutdown() on the listening socket.

#if canImport(Glibc)
import Glibc
#endif
import CFastCGI
import Foundation
import Logging
import NIOPosix
import ServiceLifecycle
import XMPPCore

public enum FastCGILibrary {
    /// The libfcgi version the daemon was built against (libfcgi has no run-time version call).
    public static let version: String = VERSION

    /// `FCGX_Init`. Call before the ServiceGroup starts: libfcgi installs SIGTERM/SIGPIPE handlers, and
    /// swift-service-lifecycle must install its own afterwards.
    public static func initialize() -> Bool {
        FCGX_Init() == 0
    }
}

/// One accepted request, owned by one task at a time until it is finished.
final class FastCGIExchange: @unchecked Sendable {
    let request: UnsafeMutablePointer<FCGX_Request>

    init(request: UnsafeMutablePointer<FCGX_Request>) {
        self.request = request
    }

    func param(_ name: String) -> String? {
        guard let value = FCGX_GetParam(name, request.pointee.envp) else { return nil }
        return String(cString: value)
    }

    /// Reads the body, at most `limit` + 1 bytes (one more tells "too large").
    func readBody(limit: Int) -> [UInt8] {
        var body: [UInt8] = []
        var buffer = [CChar](repeating: 0, count: 16_384)
        while body.count <= limit {
            let count = buffer.withUnsafeMutableBufferPointer { pointer in
                FCGX_GetStr(pointer.baseAddress, Int32(min(pointer.count, limit + 1 - body.count)), request.pointee.in)
            }
            if count <= 0 { break }
            buffer.withUnsafeBufferPointer { pointer in
                pointer.prefix(Int(count)).withMemoryRebound(to: UInt8.self) { body.append(contentsOf: $0) }
            }
        }
        return body
    }

    /// Writes the response and finishes the request (blocking: run on the thread pool).
    func finish(_ response: RestResponse) {
        var head = "Status: \(response.status) \(Self.reason(response.status))\r\n"
        for (name, value) in response.headers { head += "\(name): \(value)\r\n" }
        if response.header("Content-Type") == nil && !response.body.isEmpty { head += "Content-Type: text/plain\r\n" }
        head += "Content-Length: \(response.body.count)\r\n\r\n"
        let out = request.pointee.out
        _ = head.withCString { FCGX_PutStr($0, Int32(strlen($0)), out) }
        if !response.body.isEmpty {
            _ = response.body.withUnsafeBufferPointer { pointer in
                pointer.withMemoryRebound(to: CChar.self) { FCGX_PutStr($0.baseAddress, Int32($0.count), out) }
            }
        }
        close()
    }

    /// Finishes and frees the request (closing the connection: one request per connection).
    func close() {
        FCGX_Finish_r(request)
        FCGX_Free(request, 1)
        request.deallocate()
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 202: "Accepted"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 409: "Conflict"
        case 413: "Content Too Large"
        case 415: "Unsupported Media Type"
        case 422: "Unprocessable Content"
        case 500: "Internal Server Error"
        case 502: "Bad Gateway"
        case 503: "Service Unavailable"
        case 504: "Gateway Timeout"
        default: "Status"
        }
    }
}

public struct FastCGIError: Error, CustomStringConvertible {
    public var description: String
}

public final class FastCGIServer: Service, Sendable {
    public let listen: String
    public let socketMode: UInt16
    let api: RestAPI
    let logger: Logger
    let pool: NIOThreadPool

    let fd: Int32

    /// `fd` is the listening socket from `ListeningSocket.open` (opened before the ServiceGroup starts, so a
    /// bad `listen` stops stanzad at once with a clear error).
    public init(listen: String, socketMode: UInt16, fd: Int32, api: RestAPI, logger: Logger) {
        self.listen = listen
        self.socketMode = socketMode
        self.fd = fd
        self.api = api
        self.logger = logger
        self.pool = NIOThreadPool(numberOfThreads: 2)
    }

    /// The path of a unix socket, or nil for TCP.
    var socketPath: String? {
        listen.hasPrefix("unix:") ? String(listen.dropFirst(5)) : nil
    }

    public func run() async throws {
        let fd = self.fd
        pool.start()
        let (requests, continuation) = AsyncStream.makeStream(of: FastCGIExchange.self)
        let maxBody = api.settings.maxBody
        let acceptor = Thread { [logger] in
            Self.acceptLoop(fd: fd, maxBody: maxBody, logger: logger, yield: { continuation.yield($0) })
            continuation.finish()
        }
        acceptor.name = "stanzad-fastcgi-accept"
        acceptor.start()
        logger.notice("REST API listening", metadata: ["listen": "\(listen)", "path": "\(api.settings.path)"])

        await withDiscardingTaskGroup { group in
            group.addTask {
                // Graceful shutdown: wake the blocked FCGX_Accept_r (it returns EINVAL) so the thread ends.
                try? await gracefulShutdown()
                shutdown(fd, Int32(SHUT_RDWR))
            }
            for await exchange in requests {
                group.addTask { await self.serve(exchange) }
            }
            // Requests still waiting (long-polls) are cancelled: they answer 503.
            group.cancelAll()
        }
        Glibc.close(fd)
        if let path = socketPath { unlink(path) }
        try? await pool.shutdownGracefully()
        logger.notice("REST API stopped")
    }

    private func serve(_ exchange: FastCGIExchange) async {
        var request = RestRequest(method: exchange.param("REQUEST_METHOD") ?? "GET", path: "/")
        let uri = exchange.param("DOCUMENT_URI") ?? exchange.param("REQUEST_URI") ?? "/"
        request.path = String(uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "/")
        request.query = exchange.param("QUERY_STRING") ?? ""
        request.contentType = exchange.param("CONTENT_TYPE").flatMap { $0.isEmpty ? nil : $0 }
        request.contentLength = exchange.param("CONTENT_LENGTH").flatMap { Int($0) }
        request.authorization = exchange.param("HTTP_AUTHORIZATION")
        request.accept = exchange.param("HTTP_ACCEPT")
        request.timeout = exchange.param("HTTP_REST_TIMEOUT") ?? exchange.param("HTTP_PROSODY_REST_TIMEOUT")
        // max_body is checked before reading (SPEC §9): the body of an oversized request is never read.
        if (request.contentLength ?? 0) <= api.settings.maxBody {
            request.body = await run { exchange.readBody(limit: self.api.settings.maxBody) }
        }
        var response = await api.handle(request)
        if Task.isCancelled && response.status >= 500 {
            response = RestResponse(status: 503, headers: [("Retry-After", "5")])
        }
        let final = response
        await run { exchange.finish(final) }
    }

    /// Runs blocking libfcgi calls on the thread pool.
    private func run<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
        do {
            return try await pool.runIfActive(work)
        } catch {
            return work()  // the pool is gone only at shutdown; finish the request anyway
        }
    }

    private static func acceptLoop(fd: Int32, maxBody: Int, logger: Logger, yield: (FastCGIExchange) -> Void) {
        while true {
            let request = UnsafeMutablePointer<FCGX_Request>.allocate(capacity: 1)
            FCGX_InitRequest(request, fd, 0)
            let result = FCGX_Accept_r(request)
            if result < 0 {
                FCGX_Free(request, 1)
                request.deallocate()
                if result == -EINVAL || result == -EBADF { return }  // shutdown() on the socket
                logger.warning("FastCGI accept failed", metadata: ["errno": "\(-result)"])
                usleep(100_000)
                continue
            }
            yield(FastCGIExchange(request: request))
        }
    }
}
