// A `worker` route's handler: hands the stanza to the route's WorkerPool and maps its answer (SPEC §5.4).

import Logging
import Routing
import XMPPCore

package struct WorkerHandler: StanzaHandler {
    package let pool: WorkerPool

    package init(pool: WorkerPool) {
        self.pool = pool
    }

    package func handle(_ stanza: Stanza, context: HandlerContext) async -> HandlerOutcome {
        Self.outcome(await pool.submit(stanza, room: context.room), for: stanza, context: context)
    }

    /// A worker request needs no task: it is written to the worker's stdin at once and answered from the process
    /// loop, which reads every worker's stdout.
    package var startsWithoutWaiting: Bool { true }

    package func start(_ stanza: Stanza, context: HandlerContext, completion: @escaping @Sendable (HandlerOutcome) -> Void) {
        pool.submit(stanza, room: context.room) { reply in completion(Self.outcome(reply, for: stanza, context: context)) }
    }

    static func outcome(_ reply: WorkerPool.Reply, for stanza: Stanza, context: HandlerContext) -> HandlerOutcome {
        switch reply {
        case .answered(let objects):
            let defaults = ReplyDefaults(replyingTo: stanza)
            var replies: [Stanza] = []
            for object in objects {
                do {
                    replies.append(try StanzaJSON.decode(object, defaults: defaults))
                } catch {
                    context.logger.error("worker reply rejected", metadata: [
                        "problem": "\(error.message)", "excerpt": "\(HandlerOutput.excerpt(object.serializedBytes()))",
                    ])
                    return .failed(.cancel, .internalServerError, metadata: ["problem": "worker reply is not a stanza"])
                }
            }
            return HandlerOutcome(replies: replies)
        case .failed(let error, let reason):
            return HandlerOutcome(failure: error, metadata: ["problem": "\(reason)"])
        }
    }
}
