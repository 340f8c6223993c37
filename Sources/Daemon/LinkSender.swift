// Connects the REST API to the component link.

import ComponentLink
import FastCGIFront
import XMPPCore

struct LinkSender: StanzaSender {
    let connection: ComponentConnection

    var linkState: String { connection.health.rawValue }

    func deliver(_ stanza: Stanza, wait: Duration,
                 completion: @escaping @Sendable (Result<Void, SendError>) -> Void) -> RestCancellation? {
        let task = Task {
            do throws(SendError) {
                try await connection.sendAndWait(stanza, wait: wait)
                completion(.success(()))
            } catch {
                completion(.failure(error))
            }
        }
        return RestCancellation { task.cancel() }
    }

    func ask(_ iq: Stanza, timeout: Duration, maxPending: Int,
             completion: @escaping @Sendable (Result<Stanza, SendError>) -> Void) -> RestCancellation? {
        let task = Task {
            do throws(SendError) {
                completion(.success(try await connection.request(iq, timeout: timeout, maxPending: maxPending)))
            } catch {
                completion(.failure(error))
            }
        }
        return RestCancellation { task.cancel() }
    }
}
