// SPEC §11: the first SIGTERM/SIGINT shuts down gracefully (ServiceGroup); a second one exits at once.
// Listed first in the ServiceGroup, so it is the last service asked to stop and listens throughout.

#if canImport(Glibc)
import Glibc
#endif
import Logging
import ServiceLifecycle
import UnixSignals

struct SignalEscalation: Service {
    let logger: Logger

    func run() async throws {
        var seen = 0
        for await signal in await UnixSignalsSequence(trapping: .sigterm, .sigint).cancelOnGracefulShutdown() {
            seen += 1
            if seen >= 2 {
                logger.warning("second signal during shutdown: exiting now", metadata: ["signal": "\(signal)"])
                let number: Int32 = signal == .sigint ? SIGINT : SIGTERM
                _exit(128 + number)
            }
        }
    }
}
