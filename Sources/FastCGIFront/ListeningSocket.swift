// The FastCGI listening socket, opened by stanzad itself: libfcgi's FCGX_OpenSocket calls exit() when bind
// fails, which would end the daemon without a word about why.

#if canImport(Glibc)
import Glibc
#endif
import Foundation

package enum ListeningSocket {
    /// Opens `listen` ("unix:/path" or "host:port" with an IPv4 host) for accepting; a unix socket gets `mode`.
    package static func open(_ listen: String, mode: UInt16) throws(FastCGIError) -> Int32 {
        if listen == "systemd" {
            return try activated()
        }
        if listen.hasPrefix("unix:") {
            return try openUnix(String(listen.dropFirst(5)), mode: mode)
        }
        return try openTCP(listen)
    }

    static func failure(_ listen: String, _ what: String, hint: String) -> FastCGIError {
        let reason = String(cString: strerror(errno))
        return FastCGIError(description: "cannot listen on \(listen) for FastCGI: \(what): \(reason); \(hint)")
    }

    /// Socket activation (`sd_listen_fds`): the first socket systemd passed (fd 3), when `LISTEN_PID` is this
    /// process. The variables are removed so that handlers do not see them.
    private static func activated() throws(FastCGIError) -> Int32 {
        let environment = ProcessInfo.processInfo.environment
        defer {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        guard let pid = environment["LISTEN_PID"].flatMap({ Int32($0) }), pid == getpid(),
            let count = environment["LISTEN_FDS"].flatMap({ Int($0) }), count >= 1
        else {
            throw FastCGIError(description: "[rest] listen = \"systemd\" but systemd passed no socket (LISTEN_FDS/LISTEN_PID unset or for another process): start stanzad through its socket unit (examples/systemd/stanzad.socket), or listen on unix:/path")
        }
        let fd: Int32 = 3
        var accepting: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length) == 0, accepting == 1 else {
            throw failure("systemd", "fd 3 is not a listening socket", hint: "the socket unit must have ListenStream= (one socket)")
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }

    private static func openUnix(_ path: String, mode: UInt16) throws(FastCGIError) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else {
            throw FastCGIError(description: "cannot listen on unix:\(path): the socket path must be 1 to \(capacity - 1) bytes long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            buffer.copyBytes(from: bytes)
            buffer[bytes.count] = 0
        }
        // A stale socket from an earlier run is replaced; any other file at the path is left alone.
        var info = stat()
        if lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFSOCK { unlink(path) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw failure("unix:\(path)", "socket", hint: "check the process limits") }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            let error = failure("unix:\(path)", "bind", hint: "does the directory exist and may stanzad write to it? (systemd: RuntimeDirectory=stanzad)")
            close(fd)
            throw error
        }
        guard Glibc.listen(fd, 1024) == 0 else {
            let error = failure("unix:\(path)", "listen", hint: "check the process limits")
            close(fd)
            throw error
        }
        guard chmod(path, mode_t(mode)) == 0 else {
            let error = failure("unix:\(path)", "chmod \(String(mode, radix: 8))", hint: "check [rest] socket_mode")
            close(fd)
            throw error
        }
        return fd
    }

    private static func openTCP(_ listen: String) throws(FastCGIError) -> Int32 {
        guard let colon = listen.lastIndex(of: ":"), let port = UInt16(listen[listen.index(after: colon)...]) else {
            throw FastCGIError(description: "cannot listen on \(listen): use \"unix:/path/to.sock\" or \"127.0.0.1:9000\"")
        }
        var host = String(listen[..<colon])
        if host.isEmpty || host == "*" { host = "0.0.0.0" }
        if host == "localhost" { host = "127.0.0.1" }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
            throw FastCGIError(description: "cannot listen on \(listen): \(host) is not an IPv4 address (use e.g. 127.0.0.1:9000, or a unix socket)")
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw failure(listen, "socket", hint: "check the process limits") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, Glibc.listen(fd, 1024) == 0 else {
            let error = failure(listen, "bind", hint: "is the port free and the address local?")
            close(fd)
            throw error
        }
        return fd
    }
}
